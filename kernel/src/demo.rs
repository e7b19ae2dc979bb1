//! The demo `cargo xtask qemu` shows: a transfer on every device that does DMA, each through
//! its own route (restricted pool, IOMMU domain, the Pi's DMA engine), then what the pools and
//! the IOMMU did.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use log::{error, info};

use crate::{block, dma_engine, dma_platform, iommu, memory, net, nvme, power, virtio};

/// What `cargo xtask qemu` shows: the machine as booted, a transfer on each device, what the
/// pools did, then a clean power-off. A transfer that fails is reported and the demo carries
/// on with the next device; the outcome is then a failure.
pub fn run() -> power::Outcome {
    let failures = demo_transfers();
    for pool in dma_platform::pools::pools() {
        let kind = if pool.restricted { "restricted pool" } else { "bounce pool" };
        info!("{kind} '{}' after the demo:", pool.name);
        for line in format!("{}", pool.bounce.stats()).lines() {
            info!("  {line}");
        }
        info!("  occupancy {}", pool.bounce.occupancy_map(64));
    }
    let faults = iommu::take_faults();
    if iommu::policy().is_some() {
        info!("iommu: {} fault(s) during the demo", faults.len());
    }
    let heap = memory::heap_statistics();
    info!("heap: {} used of {}", platform::memmap::Size(heap.used as u64), platform::memmap::Size(heap.size as u64));
    match failures {
        0 => power::Outcome::Success,
        failures => {
            error!("demo: {failures} transfer(s) failed");
            power::Outcome::Failure
        }
    }
}

/// A transfer on every device, each reported; returns how many failed.
fn demo_transfers() -> usize {
    let mut failures = 0;
    let mut report = |outcome: Result<(), String>| {
        if let Err(problem) = outcome {
            error!("demo: {problem}");
            failures += 1;
        }
    };
    virtio::with_each_disk(|disk| report(demo_any_disk(disk)));
    for controller in nvme::controllers() {
        let mut controller = controller.lock();
        info!("demo: {}: {}", controller.name, controller.summary());
        controller.record_commands(true);
        report(demo_any_disk(&mut *controller));
        if let Some(received) = controller.last_received() {
            info!("demo: {}: the last command, as the controller fetched it: {received}", controller.name);
        }
        controller.record_commands(false);
    }
    virtio::with_each_entropy_source(|rng| report(demo_entropy(rng)));
    if let Some(engine) = dma_engine::DMA_ENGINE.lock().as_ref() {
        report(demo_dma_engine(engine));
    }
    virtio::with_each_network_device(|net| report(demo_network(net)));
    failures
}

/// The demo a disk's route calls for: behind the IOMMU, the one that shows the domain.
fn demo_any_disk(disk: &mut dyn block::BlockDevice) -> Result<(), String> {
    match disk.dma_device().route {
        dma_platform::Route::Iommu { .. } => demo_translated_disk(disk),
        _ => demo_disk(disk),
    }
}

/// Writes 64 KiB at block 8 and reads them back.
fn demo_disk(disk: &mut dyn block::BlockDevice) -> Result<(), String> {
    const SIZE: usize = 64 << 10;
    const BLOCK: u64 = 8;
    let written: Vec<u8> = (0..SIZE as u32).map(|index| (index * 7 + 3) as u8).collect();
    let mut read = vec![0u8; written.len()];
    let name = disk.describe();
    let failed = |what: &str, error: block::BlockError| {
        format!("block device {name}: {what} 64 KiB at block {BLOCK} failed: {error}")
    };
    block::write(disk, BLOCK, &written).map_err(|error| failed("writing", error))?;
    block::read(disk, BLOCK, &mut read).map_err(|error| failed("reading", error))?;
    if read != written {
        return Err(format!("block device {name}: returned other data than was written"));
    }
    info!(
        "demo: block device {name}, {}-byte blocks: wrote and read back 64 KiB at block {BLOCK}, identical",
        disk.block_size()
    );
    Ok(())
}

fn demo_entropy(rng: &mut dyn virtio::EntropySource) -> Result<(), String> {
    let mut entropy = [0u8; 16];
    let name = rng.describe();
    let got = rng.request_entropy(&mut entropy).map_err(|error| format!("entropy device {name}: {error}"))?;
    info!("demo: entropy device {name}: {:02x?}", &entropy[..got]);
    Ok(())
}

fn demo_dma_engine(engine: &dma_engine::DmaEngine) -> Result<(), String> {
    let source: Vec<u8> = (0..64 * 1024u32).map(|index| (index * 13 + 5) as u8).collect();
    let mut destination = vec![0u8; source.len()];
    let report = engine.copy(&source, &mut destination).map_err(|error| format!("DMA engine: {error}"))?;
    if destination != source {
        return Err("DMA engine: the copy differs from its source".into());
    }
    let at = engine.dma.physical(addr::VirtAddr::from_ptr(source.as_ptr()), source.len()).ok();
    info!(
        "demo: DMA engine: copied 64 KiB from {} identically; it was given bus addresses {} and {}",
        at.map_or("?".into(), |range| format!("{range}")),
        report.source,
        report.destination
    );
    Ok(())
}

fn demo_network(net: &mut dyn virtio::NetworkDevice) -> Result<(), String> {
    let name = net.describe();
    let gateway = net::ask_gateway(net, Duration::from_secs(3)).map_err(|error| format!("network {name}: {error}"))?;
    let route = match net.dma_device().bounce_pool() {
        Some(pool) => format!("through pool '{}'", pool.name),
        None => "in place".into(),
    };
    info!("demo: network: 10.0.2.2 is at {gateway:02x?} ({name}: ARP both ways {route})");
    Ok(())
}

/// Writes 600 KiB from page offset 0x7c8 to a disk behind the IOMMU, in as many requests as
/// its limit needs, flushes, and reads them back; shows what its route did.
fn demo_translated_disk(disk: &mut dyn block::BlockDevice) -> Result<(), String> {
    const SIZE: usize = 600 << 10;
    const PAGE_OFFSET: usize = 0x7c8;
    let device = disk.dma_device();
    let name = disk.describe();
    let dma_platform::Route::Iommu { domain, untrusted, bounce } = &device.route else {
        return Err(format!("{name}: not translated by the IOMMU"));
    };
    let before = bounce.map_or(0, |pool| pool.bounce.stats().bytes_to_device);
    let mut storage = vec![0u8; SIZE + 2 * 4096];
    let start = storage.as_ptr().align_offset(4096) + PAGE_OFFSET;
    let written: Vec<u8> = (0..SIZE as u32).map(|index| (index * 11 + 1) as u8).collect();
    storage[start..start + SIZE].copy_from_slice(&written);
    let buffer = &mut storage[start..start + SIZE];
    let stored = block::write(disk, 8, buffer).and_then(|()| disk.flush());
    buffer.fill(0);
    let moved = stored.and_then(|()| block::read(disk, 8, buffer));
    moved.map_err(|problem| format!("{name}: a transfer through the IOMMU failed: {problem}"))?;
    if *buffer != written[..] {
        return Err(format!("{name}: returned other data than was written"));
    }
    let bounced = bounce.map_or(0, |pool| pool.bounce.stats().bytes_to_device) - before;
    info!(
        "demo: {} ({}, domain {}, {} KiB granule): wrote 600 KiB from page offset {PAGE_OFFSET:#x} ({}: {} request(s)), read them back into the same buffer, identical; {bounced} bytes bounced",
        disk.describe(),
        if *untrusted { "untrusted" } else { "trusted" },
        domain.id,
        domain.granule_size() >> 10,
        block::describe_limit(disk),
        disk.max_transfer().map_or(1, |limit| SIZE.div_ceil(limit)),
    );
    Ok(())
}
