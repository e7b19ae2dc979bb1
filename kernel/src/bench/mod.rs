//! `kernel.bench`: disk throughput on every DMA route this boot has, for `cargo xtask bench`.
//! Every route is measured polled; last, each disk that interrupts reads one request at a time
//! waited for asleep, then polled: what sleeping until the interrupt costs per request.
//!
//! Every disk (virtio-blk on MMIO or PCIe, NVMe) writes and reads 4 KiB, 64 KiB and 1 MiB
//! requests, page-aligned, one at a time and polled, over the same blocks, for a fixed time
//! each; then [`QUEUED`] 4 KiB requests to blocks of their own at once, in one batch the driver
//! keeps in flight (`4KiBx8`), against which one request at a time is measured. Each figure is one line, `bench: DISK ROUTE OP SIZE MB/s = VALUE` (and `IOPS`), which
//! xtask collects from several boots and turns into ratios. The DMA layer's own share is
//! measured apart: the same buffer mapped and unmapped for the device with no transfer (`map+unmap
//! µs`), what each request pays for its route (a copy each way through a pool; page tables,
//! invalidation and its sync behind the IOMMU). A disk's route is what its DMA
//! handle says: `restricted` (every byte copied through the pool), `direct`, or behind the
//! IOMMU `trusted` (mapped in place) or `untrusted` (bounced unless whole granules).
//!
//! The figures are QEMU TCG's: the CPU is emulated, so a copy costs what the emulator spends on
//! it, and a device's DMA is a memcpy in QEMU's own process. Ratios within one boot are what the
//! numbers are for. Last, the bounce copy alone: 1 MiB each way the CPU can copy, and the same
//! copy with its target at three distances from its source, which under TCG cost differently.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::time::Duration;

use log::info;

use crate::block::{self, BlockDevice, Request};

mod cpus;
use crate::dma_platform::Route;

/// How long each size and direction runs on each disk.
const RUN_FOR: Duration = Duration::from_millis(150);
/// Request sizes measured.
const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];
/// Requests of 4 KiB handed to a disk together, as many as the drivers keep in flight.
const QUEUED: usize = 8;

/// Runs every measurement; `Failure` if a transfer failed.
pub fn run() -> crate::power::Outcome {
    // Every route is measured polled, as before drivers could sleep, so that route ratios
    // compare the DMA layer and not the interrupt path; `measure_completion` compares the two.
    crate::interrupts::set_polling(true);
    let mut failures = 0;
    block::with_each_disk(|disk| {
        if let Err(problem) = measure_disk(disk) {
            log::error!("bench: {problem}");
            failures += 1;
        }
    });
    if !cpus::measure() {
        failures += 1;
    }
    measure_copy();
    info!("bench: done, {failures} measurement(s) failed");
    match failures {
        0 => crate::power::Outcome::Success,
        _ => crate::power::Outcome::Failure,
    }
}

/// The bounce copy alone, 1 MiB between two heap buffers: with the memory copy instructions
/// (when the CPU has them) and with the 64-byte loop (`copy 1MiB ... µs`).
fn measure_copy() {
    const SIZE: usize = 1 << 20;
    let (source, mut target) = (vec![0x5au8; SIZE], vec![0u8; SIZE]);
    type Copy = unsafe fn(*const u8, *mut u8, usize);
    let mut copies: alloc::vec::Vec<(&str, Copy)> = alloc::vec![("64-byte-loop", arch::copy::copy_with_simd_loop)];
    if arch::copy::has_memory_copy_instructions() {
        copies.push(("memory-copy-instructions", arch::copy::copy));
    }
    for (name, copy) in copies {
        let (started, mut copies_made) = (arch::timer::uptime(), 0u32);
        while arch::timer::uptime() - started < RUN_FOR {
            // SAFETY: two distinct heap buffers of `SIZE` bytes, Normal memory.
            unsafe { copy(source.as_ptr(), target.as_mut_ptr(), SIZE) };
            copies_made += 1;
        }
        let elapsed = arch::timer::uptime() - started;
        info!("bench: copy 1MiB {name} µs = {:.1}", elapsed.as_secs_f64() * 1e6 / f64::from(copies_made));
    }
    measure_copy_distances();
}

/// The same 1 MiB copy (`arch::copy`) with its target at three distances past its source, in
/// one allocation: `copy 1MiB target N KiB past the source µs`. On hardware they cost the same.
/// Under TCG they do not: QEMU finds each guest page's host address in a software TLB indexed
/// by the page's address bits, so a source and a target whose pages share entries keep
/// evicting each other, and the copy's cost depends on where its two buffers lie.
fn measure_copy_distances() {
    const SIZE: usize = 1 << 20;
    const DISTANCES_KIB: [usize; 3] = [1024, 1536, 1984];
    let mut storage = vec![0x5au8; 6 * SIZE];
    let source = storage.as_ptr().align_offset(2 * SIZE);
    let bytes = storage.as_mut_ptr();
    for distance in DISTANCES_KIB {
        let target = source + (distance << 10);
        let (started, mut copies_made) = (arch::timer::uptime(), 0u32);
        while arch::timer::uptime() - started < RUN_FOR / 2 {
            // SAFETY: two disjoint ranges of one heap allocation (`target` starts at least
            // 1 MiB past `source`, and ends before `6 * SIZE`), Normal memory.
            unsafe { arch::copy::copy(bytes.add(source), bytes.add(target), SIZE) };
            copies_made += 1;
        }
        let elapsed = arch::timer::uptime() - started;
        let each = elapsed.as_secs_f64() * 1e6 / f64::from(copies_made);
        info!("bench: copy 1MiB target {distance} KiB past the source µs = {each:.1}");
    }
}

/// The disk's kind and route, as one benchmark name: `nvme-untrusted`, `virtio-pci-restricted`.
fn label(disk: &dyn BlockDevice) -> String {
    let device = disk.dma_device();
    let kind = match (device.name.starts_with("pci "), disk.describe().starts_with("nvme")) {
        (true, true) => "nvme",
        (true, false) => "virtio-pci",
        (false, _) => "virtio-mmio",
    };
    let route = match &device.route {
        Route::Restricted(_) => "restricted",
        Route::Direct { .. } => "direct",
        Route::Iommu { untrusted: true, .. } => "untrusted",
        Route::Iommu { untrusted: false, .. } => "trusted",
    };
    format!("{kind}-{route}")
}

fn measure_disk(disk: &mut dyn BlockDevice) -> Result<(), String> {
    let name = label(disk);
    let capacity = usize::try_from(disk.blocks()).unwrap_or(usize::MAX).saturating_mul(disk.block_size());
    let mut storage = vec![0u8; (1 << 20) + 4096];
    let start = storage.as_ptr().align_offset(4096);
    for (size, size_name) in SIZES {
        if size > capacity || !size.is_multiple_of(disk.block_size()) {
            continue;
        }
        let buffer = &mut storage[start..start + size];
        buffer.iter_mut().enumerate().for_each(|(index, byte)| *byte = index as u8);
        // In the pieces the block layer cuts the request into.
        let piece = block::request_limit(disk, buffer).min(size);
        let (mappings, elapsed) = timed(|| {
            for part in buffer.chunks_mut(piece) {
                let mapping =
                    disk.dma_device().map_from_device(part).map_err(|error| block::BlockError::Dma(error.error()))?;
                mapping.unmap().map_err(block::BlockError::Dma)?;
            }
            Ok(())
        })
        .map_err(|problem| format!("{} ({name}): map+unmap: {problem}", disk.describe()))?;
        info!("bench: {name} map+unmap {size_name} µs = {:.1}", elapsed.as_secs_f64() * 1e6 / mappings as f64);
        for write in [true, false] {
            let (requests, elapsed) = timed(|| match write {
                true => block::write(disk, 0, buffer),
                false => block::read(disk, 0, buffer),
            })
            .map_err(|problem| format!("{} ({name}): {problem}", disk.describe()))?;
            let seconds = elapsed.as_secs_f64();
            let op = if write { "write" } else { "read" };
            let megabytes = (requests * size) as f64 / 1e6;
            info!("bench: {name} {op} {size_name} MB/s = {:.1}", megabytes / seconds);
            info!("bench: {name} {op} {size_name} IOPS = {:.0}", requests as f64 / seconds);
        }
    }
    measure_queue(disk, &name)?;
    measure_completion(disk, &name)
}

/// Reads of 4 KiB and 1 MiB, one at a time, first waited for asleep until the disk's interrupt
/// and then polled: the time per request of each (`interrupt µs`, `poll µs`). A disk with no
/// interrupt is left out.
fn measure_completion(disk: &mut dyn BlockDevice, name: &str) -> Result<(), String> {
    if disk.interrupts_taken().is_none() || !crate::interrupts::waits_sleep() {
        return Ok(());
    }
    let mut storage = vec![0u8; (1 << 20) + 4096];
    let start = storage.as_ptr().align_offset(4096);
    for (size, size_name) in [SIZES[0], SIZES[2]] {
        if size > disk.max_transfer().unwrap_or(usize::MAX) || !size.is_multiple_of(disk.block_size()) {
            continue;
        }
        let buffer = &mut storage[start..start + size];
        for (mode, poll) in [("interrupt", false), ("poll", true)] {
            crate::interrupts::set_polling(poll);
            let measured = timed(|| block::read(disk, 0, buffer));
            crate::interrupts::set_polling(true);
            let (requests, elapsed) =
                measured.map_err(|problem| format!("{} ({name}): {mode}: {problem}", disk.describe()))?;
            info!("bench: {name} read {size_name} {mode} µs = {:.1}", elapsed.as_secs_f64() * 1e6 / requests as f64);
        }
    }
    Ok(())
}

/// [`QUEUED`] page-aligned 4 KiB requests to blocks of their own, in one batch each time.
fn measure_queue(disk: &mut dyn BlockDevice, name: &str) -> Result<(), String> {
    let size = 4096usize.next_multiple_of(disk.block_size());
    let stride = (size / disk.block_size()) as u64 + 1;
    if stride * QUEUED as u64 > disk.blocks() {
        return Ok(());
    }
    let mut storage = vec![0u8; QUEUED * size + 4096];
    let start = storage.as_ptr().align_offset(4096);
    let buffers = &mut storage[start..start + QUEUED * size];
    let block = |index: usize| index as u64 * stride;
    for write in [true, false] {
        let mut deepest = 0;
        let (batches, elapsed) = timed(|| {
            let ran = match write {
                true => block::run(
                    disk,
                    buffers
                        .chunks(size)
                        .enumerate()
                        .map(|(index, buffer)| Request::Write { block: block(index), buffer }),
                ),
                false => block::run(
                    disk,
                    buffers
                        .chunks_mut(size)
                        .enumerate()
                        .map(|(index, buffer)| Request::Read { block: block(index), buffer }),
                ),
            };
            deepest = deepest.max(ran?);
            Ok(())
        })
        .map_err(|problem| format!("{} ({name}): {QUEUED} requests at once: {problem}", disk.describe()))?;
        let (requests, seconds) = ((batches * QUEUED) as f64, elapsed.as_secs_f64());
        let op = if write { "write" } else { "read" };
        info!("bench: {name} {op} 4KiBx{QUEUED} MB/s = {:.1}", requests * size as f64 / 1e6 / seconds);
        info!("bench: {name} {op} 4KiBx{QUEUED} IOPS = {:.0}", requests / seconds);
        info!("bench: {name} {op} 4KiBx{QUEUED} in flight = {deepest}");
    }
    Ok(())
}

/// Repeats `transfer` for [`RUN_FOR`]; how many times, and for how long.
fn timed(mut transfer: impl FnMut() -> Result<(), block::BlockError>) -> Result<(usize, Duration), String> {
    let started = arch::timer::uptime();
    let mut requests = 0;
    while arch::timer::uptime() - started < RUN_FOR {
        transfer().map_err(|problem| format!("{problem}"))?;
        requests += 1;
    }
    Ok((requests, arch::timer::uptime() - started))
}
