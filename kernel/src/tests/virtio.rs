//! Real virtio devices moving real data: every virtio-mmio disk, entropy source and network
//! card the machine has, through its restricted pool, whatever the block size, the number of
//! devices or the size of the pool. What a test needs and the machine lacks (a device, room in
//! a pool) makes it skip, saying what the machine has.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use crate::block::{BlockDevice, BlockError};
use crate::dma_platform::Route;
use crate::testing::{ensure, kernel_test, skip};
use crate::tests::block::{bounce_pool, disk_pool_too_small, pool_too_small, round_trips, skip_because};
use crate::virtio::{self, VirtioError};

/// What a network device maps for an exchange: its receive buffer and the frame sent.
const FRAME_BUFFER: usize = 4096;
/// How long `network_request_is_answered` waits for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Deterministic bytes, different for each seed.
pub fn pattern(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Calls `test` with every virtio disk that is not behind the IOMMU (those have tests of their
/// own); the first failure ends the run. Returns how many disks there were, and why each one
/// `test` skipped was skipped.
fn each_mmio_disk(
    mut test: impl FnMut(&mut dyn BlockDevice) -> Result<Option<String>, String>,
) -> Result<(usize, Vec<String>), String> {
    let (mut disks, mut skipped, mut failure) = (0, Vec::new(), None);
    virtio::with_each_disk(|disk| {
        if failure.is_some() || matches!(disk.dma_device().route, Route::Iommu { .. }) {
            return;
        }
        disks += 1;
        match test(disk) {
            Ok(None) => {}
            Ok(Some(reason)) => skipped.push(reason),
            Err(problem) => failure = Some(problem),
        }
    });
    failure.map_or(Ok((disks, skipped)), Err)
}

/// The skip of a test of devices of `kind` the machine has none of: why they were not
/// started, if some were found, or `reason`.
fn absent(kind: &str, reason: &'static str) -> crate::testing::Verdict {
    let (_, not_started) = virtio::mmio_devices_found();
    let reasons: Vec<String> = not_started
        .into_iter()
        .filter(|(name, _)| name.starts_with(kind))
        .map(|(_, why)| format!("not started: {why}"))
        .collect();
    match reasons.is_empty() {
        true => crate::testing::Verdict::Skipped(reason),
        false => skip_because(reasons.join("; ")),
    }
}

/// The verdict of a test run over every disk by [`each_mmio_disk`].
fn verdict(outcome: Result<(usize, Vec<String>), String>) -> crate::testing::TestResult {
    let (disks, skipped) = outcome?;
    if disks == 0 {
        return Err(absent("virtio-blk", "no virtio-mmio disk"));
    }
    if skipped.len() == disks {
        return Err(skip_because(skipped.join("; ")));
    }
    skipped.iter().for_each(|reason| log::info!("skipped {reason}"));
    Ok(())
}

kernel_test! {
    /// Every virtio-mmio disk writes and reads back, through its restricted pool, buffers from
    /// one block to beyond the largest one request takes, starting at many offsets within a
    /// page, odd ones included; every byte is compared.
    fn every_mmio_disk_round_trips_every_size_and_offset() {
        verdict(each_mmio_disk(|disk| {
            let block = disk.block_size();
            let largest = disk.max_transfer().map_or(1 << 20, |limit| limit.min(1 << 20));
            ensure!(largest >= 8 * block, "{}: the largest request carries {largest} bytes, under 8 blocks", disk.describe());
            if let Some(reason) = disk_pool_too_small(disk, largest) {
                return Ok(Some(reason));
            }
            let sizes = [block, 2 * block, 4096, 4096 + block, 16 << 10, 60 << 10, 128 << 10, largest, largest + block];
            let offsets = [0usize, 1, 0x200, 0x7c8, 0xfa0, 0xfff];
            round_trips(disk, &sizes, &offsets, 0)?;
            Ok(None)
        }))
    }
}

kernel_test! {
    /// A request the disk's pool cannot hold is refused before it reaches the device: the
    /// caller gets the DMA layer's reason, the pool counts the refusal, and the disk carries on.
    fn requests_the_pool_cannot_hold_are_refused_in_words() {
        verdict(each_mmio_disk(|disk| {
            let name = disk.describe();
            let Some(pool) = bounce_pool(disk.dma_device()) else { return Ok(Some(format!("{name}: no bounce pool"))) };
            let block = disk.block_size();
            let too_big = (pool.range.size() as usize + block).next_multiple_of(block);
            if too_big / block > disk.blocks() as usize {
                return Ok(Some(format!("{name}: the disk is smaller than its pool '{}'", pool.name)));
            }
            let refusals = |stats: swiotlb::Stats| stats.failures.no_space + stats.failures.too_large;
            let before = refusals(pool.bounce.stats());
            let mut buffer = vec![0u8; too_big];
            let read = disk.read_request(0, &mut buffer);
            match read.as_ref().err().and_then(BlockError::device_error::<VirtioError>) {
                Some(error @ VirtioError::Map { .. }) => {
                    let words = format!("{error}");
                    ensure!(words.contains("nothing was submitted"), "{name}: the refusal does not say nothing was submitted: {words}");
                    log::info!("{name}: a {too_big}-byte read through the {} KiB pool: {words}", pool.range.size() >> 10);
                }
                _ => return Err(format!("{name}: a {too_big}-byte read through a {}-byte pool gave {read:?}", pool.range.size())),
            }
            ensure!(refusals(pool.bounce.stats()) == before + 1, "{name}: pool '{}' did not count the refusal", pool.name);
            let mut one_block = vec![0u8; block];
            disk.read_request(0, &mut one_block).map_err(|error| format!("{name}: a block after the refusal: {error}"))?;
            Ok(None)
        }))
    }
}

kernel_test! {
    /// Every virtio disk states its block size (a power of two, 512 bytes or more) and refuses
    /// a request of half a block itself, naming both sizes, instead of passing the device a
    /// request it fails with a bare I/O error; a whole block goes through after.
    fn requests_of_part_of_a_block_are_refused_in_words() {
        let (mut disks, mut failure) = (0, None);
        virtio::with_each_disk(|disk| {
            if failure.is_some() {
                return;
            }
            disks += 1;
            let (name, block) = (disk.describe(), disk.block_size());
            let outcome = (|| {
                ensure!(block.is_power_of_two() && block >= 512, "{name}: block size {block}");
                ensure!(disk.blocks() > 0, "{name}: no blocks");
                let mut half = vec![0u8; block / 2];
                let read = disk.read_request(0, &mut half);
                match read.as_ref().err().and_then(BlockError::device_error::<VirtioError>) {
                    Some(&VirtioError::NotWholeBlocks { bytes, block_size }) => {
                        ensure!((bytes, block_size) == (block / 2, block), "{name}: refused {bytes} of {block_size}");
                    }
                    _ => return Err(format!("{name}: a {}-byte read gave {read:?}", block / 2)),
                }
                if disk_pool_too_small(disk, block).is_none() {
                    let mut whole = vec![0u8; block];
                    disk.read_request(0, &mut whole).map_err(|error| format!("{name}: a whole block: {error}"))?;
                }
                Ok::<(), String>(())
            })();
            failure = outcome.err();
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if disks == 0 { skip!("no virtio disk") }
        Ok(())
    }
}

kernel_test! {
    /// Every virtio-mmio device found is driven, or reported as not started; each driven one
    /// has a DMA handle of its own and is named by its kind and its rank in ascending register
    /// address: virtio-blk0 is the lowest-addressed disk, whatever else the machine has.
    fn every_virtio_device_is_driven_under_a_stable_name() {
        let handles = virtio::dma_devices();
        for (index, handle) in handles.iter().enumerate() {
            ensure!(!handles[..index].iter().any(|other| core::ptr::eq(*other, *handle)), "{}: a DMA handle shared", handle.name);
        }
        let mut names = Vec::new();
        virtio::with_each_disk(|disk| names.push(disk.describe()));
        virtio::with_each_entropy_source(|source| names.push(source.describe()));
        virtio::with_each_network_device(|device| names.push(device.describe()));
        let driven: Vec<(&str, u64, u64)> = names.iter().filter_map(|name| parse_mmio_name(name)).collect();
        let (found, not_started) = virtio::mmio_devices_found();
        let not_started: Vec<&str> = not_started.iter().map(|&(name, _)| name).collect();
        if found.iter().all(|&(_, count)| count == 0) { skip!("no virtio-mmio device") }
        for (kind, count) in found {
            for number in 0..count as u64 {
                let name = format!("{kind}{number}");
                let is_driven = driven.iter().any(|&(driven_kind, driven_number, _)| (driven_kind, driven_number) == (kind, number));
                ensure!(is_driven != not_started.contains(&name.as_str()), "{name}: found, but neither driven nor reported as not started");
            }
        }
        for (kind, number, address) in &driven {
            for (other_kind, other_number, other_address) in &driven {
                if kind == other_kind && number < other_number && address > other_address {
                    return Err(format!("{kind}{number} at {address:#x} and {kind}{other_number} at {other_address:#x} are not numbered by address").into());
                }
            }
        }
        log::info!("virtio devices: {}; not started: {not_started:?}", names.join(", "));
        Ok(())
    }
}

/// `("virtio-blk", 0, 0xa003e00)` from `virtio-blk0 (virtio_mmio@a003e00)`.
fn parse_mmio_name(name: &str) -> Option<(&str, u64, u64)> {
    let (short, node) = name.split_once(" (virtio_mmio@")?;
    let digits = short.trim_start_matches(|c: char| !c.is_ascii_digit());
    let kind = &short[..short.len() - digits.len()];
    let address = u64::from_str_radix(node.trim_end_matches(')'), 16).ok()?;
    Some((kind, digits.parse().ok()?, address))
}

kernel_test! {
    /// Entropy read from every virtio-rng device, through its DMA route: not all zero, and new
    /// every time.
    fn entropy_devices_return_fresh_bytes() {
        let (mut sources, mut failure) = (0, None);
        virtio::with_each_entropy_source(|source| {
            sources += 1;
            let name = source.describe();
            let mut draws = [[0u8; 64]; 2];
            for draw in &mut draws {
                match source.request_entropy(draw) {
                    Ok(got) if got == draw.len() => {}
                    Ok(got) => failure = failure.take().or(Some(format!("{name}: asked for 64 bytes, got {got}"))),
                    Err(error) => failure = failure.take().or(Some(format!("{name}: {error}"))),
                }
            }
            if draws[0].iter().all(|&byte| byte == 0) || draws[0] == draws[1] {
                failure = failure.take().or(Some(format!("{name}: the bytes are all zero, or the same twice")));
            }
            if source.dma_device().audit_report().addresses == 0 {
                failure = failure.take().or(Some(format!("{name}: no DMA audited")));
            }
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if sources == 0 {
            return Err(absent("virtio-rng", "no virtio entropy device"));
        }
        Ok(())
    }
}

kernel_test! {
    /// An ARP request sent through every virtio-net device is answered by QEMU's user network:
    /// the request bounces out through the pool, the reply bounces in. Either way the exchange
    /// ends within the transmit timeout and the reply timeout. A device whose backend takes no
    /// frame (nothing behind the card), or whose pool has no room for frames, is a skip, said so.
    fn network_request_is_answered() {
        let (mut devices, mut skipped, mut failure) = (0, Vec::new(), None);
        virtio::with_each_network_device(|net| {
            devices += 1;
            let name = net.describe();
            if let Some(reason) = pool_too_small(net.dma_device(), &name, FRAME_BUFFER) {
                skipped.push(reason);
                return;
            }
            let started = arch::timer::uptime();
            let asked = crate::net::ask_gateway(net, REPLY_TIMEOUT);
            let took = arch::timer::uptime() - started;
            // The transmit timeout, the reply timeout, and a reset.
            if took > REPLY_TIMEOUT + Duration::from_secs(3) {
                failure = Some(format!("{name}: the exchange took {} ms", took.as_millis()));
                return;
            }
            match asked {
                Ok(gateway) if gateway != [0; 6] => {}
                Ok(_) => failure = Some(format!("{name}: the gateway answered with a zero MAC address")),
                Err(crate::net::GatewayError::Send(VirtioError::Stopped { cause, .. })) if matches!(*cause, VirtioError::Timeout { .. }) => {
                    skipped.push(format!("{name} has no network behind it: {cause} (after {} ms)", took.as_millis()));
                }
                Err(error) => failure = Some(format!("{name}: {error}")),
            }
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if devices == 0 {
            return Err(absent("virtio-net", "no virtio network device"));
        }
        if !skipped.is_empty() {
            return Err(skip_because(skipped.join("; ")));
        }
        Ok(())
    }
}

kernel_test! {
    /// A receive with nothing to receive ends at its deadline, leaving its buffer posted for
    /// the next: waiting for the network is bounded even when nothing comes.
    fn network_receive_ends_at_its_deadline() {
        const WAIT: Duration = Duration::from_millis(200);
        let (mut devices, mut skipped, mut failure) = (0, Vec::new(), None);
        virtio::with_each_network_device(|net| {
            devices += 1;
            let name = net.describe();
            if let Some(reason) = pool_too_small(net.dma_device(), &name, FRAME_BUFFER) {
                skipped.push(reason);
                return;
            }
            let mut frame = vec![0u8; FRAME_BUFFER];
            let deadline = arch::timer::uptime() + WAIT;
            let received = net.receive(&mut frame, deadline);
            let late = arch::timer::uptime().saturating_sub(deadline);
            failure = match received {
                Err(VirtioError::OutOfService { reason }) => {
                    skipped.push(format!("{name} is out of service: {reason}"));
                    None
                }
                Err(error) => Some(format!("{name}: {error}")),
                Ok(_) if late > Duration::from_millis(50) => {
                    Some(format!("{name}: a receive until its deadline returned {} ms after it", late.as_millis()))
                }
                Ok(_) => None,
            }
            .or(failure.take());
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if devices == 0 {
            return Err(absent("virtio-net", "no virtio network device"));
        }
        if skipped.len() == devices {
            return Err(skip_because(skipped.join("; ")));
        }
        Ok(())
    }
}

kernel_test! {
    /// The audit: every DMA address given to a restricted device lay inside its pool, and the
    /// pool carried bytes both ways.
    fn restricted_devices_only_ever_see_their_pool() {
        verdict(each_mmio_disk(|disk| {
            let bytes = 8 * disk.block_size();
            if let Some(reason) = disk_pool_too_small(disk, bytes) {
                return Ok(Some(reason));
            }
            let (data, name) = (pattern(99, bytes), disk.describe());
            let block = disk.blocks().saturating_sub(8).min(100);
            crate::block::write(disk, block, &data).map_err(|e| format!("{name}: {e}"))?;
            let mut back = vec![0u8; data.len()];
            crate::block::read(disk, block, &mut back).map_err(|e| format!("{name}: {e}"))?;
            ensure!(back == data, "{name}: data changed on the way");
            Ok(None)
        }))?;
        let mut restricted = 0;
        for device in virtio::dma_devices() {
            let Route::Restricted(pool) = &device.route else { continue };
            restricted += 1;
            let audit = device.audit_report();
            ensure!(audit.addresses > 0, "{}: no DMA address audited", device.name);
            ensure!(audit.violations == 0, "{}: {} addresses outside pool {}", device.name, audit.violations, pool.name);
            let stats = pool.bounce.stats();
            ensure!(stats.bytes_to_device > 0 && stats.bytes_to_cpu > 0, "pool {}: bounced {} out, {} in", pool.name, stats.bytes_to_device, stats.bytes_to_cpu);
        }
        ensure!(restricted > 0, "no restricted device: boot with `cargo xtask test`");
        Ok(())
    }
}
