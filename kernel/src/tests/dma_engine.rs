//! The Raspberry Pi 4's DMA engine through the DMA API: copies that only work because the
//! kernel bounces what the engine cannot reach, and bus addresses that always lie within it.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use addr::{PhysAddr, PhysRange, VirtAddr};
use drivers::bcm2835_dma::{ControlBlock, Controller};
use platform::dma_config::DmaDescription;

use crate::dma_engine::{CopyReport, DMA_ENGINE, DmaEngine};
use crate::dma_platform::DmaPool;
use crate::machine;
use crate::testing::{ensure, kernel_test, skip};
use crate::tests::block::skip_because;
use crate::tests::virtio::pattern;

/// Memory for a test's buffers inside `area`, found where the memory map says the machine has
/// it: a heap allocation, if it lands there, or else free RAM there that nothing uses (the
/// heap is the only allocator of free RAM, and it lies elsewhere).
enum Scratch {
    Heap(Vec<u8>),
    Free(&'static mut [u8]),
}

impl Scratch {
    /// `bytes` bytes inside `area`, page-aligned; `None` when the machine has no such RAM free.
    fn inside(area: PhysRange, bytes: usize) -> Option<Scratch> {
        let memory = &machine().memory;
        let heap = vec![0u8; bytes];
        let start = arch::layout::linear_virt_to_phys(VirtAddr::from_ptr(heap.as_ptr()))?;
        if PhysRange::new(start, bytes as u64).is_some_and(|buffer| area.covers(&buffer)) {
            return Some(Scratch::Heap(heap));
        }
        let free = memory.map.free().iter().filter(|free| !free.overlaps(&memory.heap));
        let range = free.filter_map(|free| free.intersection(&area)).find_map(|candidate| {
            let start = candidate.start().align_up(4096)?;
            PhysRange::new(start, bytes as u64).filter(|range| candidate.covers(range))
        })?;
        let virt = arch::layout::phys_to_virt(range.start());
        // SAFETY: free RAM in the linear map (read-write), which no allocator hands out: the
        // heap lies elsewhere, and pools were carved and reserved at boot. Only this test, which
        // holds the engine's lock, uses it, and only while it runs.
        Some(Scratch::Free(unsafe { core::slice::from_raw_parts_mut(virt.as_mut_ptr::<u8>(), bytes) }))
    }

    fn bytes(&mut self) -> &mut [u8] {
        match self {
            Scratch::Heap(bytes) => bytes,
            Scratch::Free(bytes) => bytes,
        }
    }
}

/// The RAM ranges of the memory map, for skip reasons.
fn ram_ranges() -> String {
    let ranges: Vec<String> = machine().memory.map.ram().iter().map(|ram| format!("{ram}")).collect();
    ranges.join(", ")
}

/// The engine's bus windows, as the devicetree gives them.
fn engine_windows() -> Result<DmaDescription<'static>, String> {
    let engines =
        machine().devicetree.compatible_devices(&[Controller::COMPATIBLE]).map_err(|e| alloc::format!("{e}"))?;
    Ok(engines.first().ok_or("no DMA engine in the devicetree")?.dma.clone())
}

/// Each bus address the engine was given maps back, through its windows, into RAM below its
/// limit, for the whole length.
fn ensure_within_reach(windows: &DmaDescription<'_>, report: &CopyReport, length: usize) -> Result<(), String> {
    let limit = windows.limit().ok_or("the engine has no DMA limit")?;
    let block_bytes = report.blocks * size_of::<ControlBlock>();
    for (what, dma, size) in [
        ("source", report.source, length),
        ("destination", report.destination, length),
        ("control blocks", report.first_block, block_bytes),
    ] {
        let last = dma.checked_add(size as u64 - 1).ok_or("address overflow")?;
        let (Some(start), Some(end)) = (windows.dma_to_phys(dma), windows.dma_to_phys(last)) else {
            return Err(alloc::format!("the engine was given {what} bus address {dma}, outside its windows"));
        };
        ensure!(end < limit && start <= end, "{what} {dma} reaches {end:?}, not below the limit {limit:?}");
        ensure!(dma.as_u64() <= u64::from(u32::MAX), "{what} {dma} does not fit 32 bits");
    }
    Ok(())
}

fn physical(engine: &DmaEngine, bytes: &[u8]) -> Result<PhysRange, String> {
    engine.dma.physical(VirtAddr::from_ptr(bytes.as_ptr()), bytes.len()).map_err(|e| alloc::format!("{e}"))
}

fn bounce_pool(engine: &DmaEngine) -> Result<&'static DmaPool, String> {
    Ok(engine
        .dma
        .bounce_pool()
        .ok_or("the engine has no bounce pool: boot with the devicetree `cargo xtask test` gives")?)
}

kernel_test! {
    /// Source and destination above the engine's limit (1 GiB on the Pi 4): every copy, at many
    /// sizes and start offsets, succeeds through the bounce pool, byte for byte, and the engine
    /// only ever sees bus addresses below its limit. The buffers lie in RAM beyond the limit,
    /// wherever the memory map has it free; a board whose RAM all lies within reach (a 1 GiB
    /// Pi 4) has nothing to bounce, and the test skips.
    fn copies_above_the_limit_through_the_bounce_pool() {
        let guard = DMA_ENGINE.lock();
        let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
        let windows = engine_windows()?;
        let limit = windows.limit().ok_or("the engine has no DMA limit")?;
        let pool = bounce_pool(engine)?;
        let before = pool.bounce.stats();
        let mut copied = 0u64;
        let sizes = [4usize, 64, 512, 2048, 4096, 3 * 4096 + 12, 65536, 128 << 10];
        let offsets = [0usize, 1, 0x7c8, 0xfa0];
        let half = sizes.iter().max().copied().unwrap_or(0) + 4096;
        let beyond = PhysRange::from_bounds(limit, PhysAddr::new(u64::MAX)).ok_or("limit beyond the address space")?;
        let Some(mut scratch) = Scratch::inside(beyond, 2 * half) else {
            if machine().memory.map.ram().iter().all(|ram| ram.end() <= limit) {
                return Err(skip_because(format!("all RAM ({}) lies within the engine's reach, below {limit:?}: nothing needs to bounce", ram_ranges())));
            }
            return Err(format!("RAM ({}) extends beyond the engine's limit {limit:?}, but none of it is free for two {half}-byte buffers", ram_ranges()).into());
        };
        let (source_bytes, destination_bytes) = scratch.bytes().split_at_mut(half);
        for (round, (&size, &offset)) in sizes.iter().flat_map(|size| offsets.iter().map(move |offset| (size, offset))).enumerate() {
            source_bytes[..size + 4096].copy_from_slice(&pattern(round as u64 + 1000, size + 4096));
            destination_bytes.fill(0);
            let source = &source_bytes[offset..offset + size];
            let destination = &mut destination_bytes[(offset * 3) % 4096..][..size];
            let (from, to) = (physical(engine, source)?, physical(engine, destination)?);
            ensure!(from.start() >= limit && to.start() >= limit, "buffers {from} and {to} are not beyond the limit {limit:?}");
            let report = engine.copy(source, destination).map_err(|e| alloc::format!("{size} bytes at offset {offset:#x}: {e}"))?;
            ensure!(destination == source, "{size} bytes at offset {offset:#x}: the copy differs");
            ensure_within_reach(&windows, &report, size)?;
            copied += size as u64;
        }
        let after = pool.bounce.stats();
        ensure!(after.bytes_to_cpu - before.bytes_to_cpu == copied, "bounced {} B back to the CPU for {copied} B copied", after.bytes_to_cpu - before.bytes_to_cpu);
        ensure!(after.bytes_to_device - before.bytes_to_device >= copied, "bounced only {} B to the engine", after.bytes_to_device - before.bytes_to_device);
        ensure!(after.slots_in_use == before.slots_in_use, "{} slots leaked", after.slots_in_use - before.slots_in_use);
        ensure!(engine.dma.audit_report().violations == 0, "the audit saw addresses outside the engine's reach");
        log::info!("DMA engine: {copied} B copied above {limit:?}; pool '{}' bounced {} B in and {} B out", pool.name, after.bytes_to_device - before.bytes_to_device, after.bytes_to_cpu - before.bytes_to_cpu);
        Ok(())
    }
}

kernel_test! {
    /// A buffer the engine reaches is lent to it in place: its bus address is the window's
    /// translation of its physical address (0xC000_0000 + PA on the Pi 4), nothing bounced
    /// (unless the devicetree restricts the engine to a pool). The buffers lie in RAM within
    /// the engine's first window, wherever the memory map has it free.
    fn buffers_within_reach_are_not_bounced() {
        let guard = DMA_ENGINE.lock();
        let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
        let pool = bounce_pool(engine)?;
        if pool.restricted {
            skip!("the devicetree restricts the engine to a pool: every transfer bounces");
        }
        let windows = engine_windows()?;
        let reach = match windows.windows.first() {
            Some(window) => PhysRange::new(window.cpu_start, window.size).ok_or("window range")?,
            None => PhysRange::from_bounds(PhysAddr::new(0), PhysAddr::new(u64::MAX)).ok_or("address space")?,
        };
        let Some(mut scratch) = Scratch::inside(reach, 2 * 16384) else {
            return Err(format!("no RAM ({}) is free within the engine's window {reach}", ram_ranges()).into());
        };
        let (source, destination) = scratch.bytes().split_at_mut(16384);
        source.copy_from_slice(&pattern(5, 16384));
        destination.fill(0);
        let from = physical(engine, source)?;
        let before = pool.bounce.stats();
        let report = engine.copy(source, destination).map_err(|e| alloc::format!("{e}"))?;
        ensure!(destination[..] == source[..], "the copy differs");
        ensure!(Some(report.source) == windows.phys_to_dma(from.start()), "source bus {} is not the buffer's own {:?}", report.source, windows.phys_to_dma(from.start()));
        let after = pool.bounce.stats();
        ensure!(after.maps == before.maps, "{} buffers were bounced", after.maps - before.maps);
        Ok(())
    }
}

kernel_test! {
    /// A copy longer than one control block runs as a chain, each block linked by its bus
    /// address; every byte arrives.
    fn long_copies_run_as_a_chain_of_control_blocks() {
        let guard = DMA_ENGINE.lock();
        let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
        let source = pattern(77, 20 * 1024 + 8);
        let mut destination: Vec<u8> = vec![0; source.len()];
        let report = engine.copy_in_blocks(&source, &mut destination, 4096).map_err(|e| alloc::format!("{e}"))?;
        ensure!(report.blocks == 6, "{} control blocks for 20 KiB + 8 B in 4 KiB blocks", report.blocks);
        ensure!(destination == source, "the chained copy differs");
        ensure_within_reach(&engine_windows()?, &report, source.len())?;
        Ok(())
    }
}

kernel_test! {
    /// Lengths the engine cannot move as whole words, and mismatched buffers, are refused
    /// before the engine sees anything.
    fn bad_lengths_are_refused_with_the_reason() {
        let guard = DMA_ENGINE.lock();
        let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
        let source = [1u8; 10];
        let mut destination = [0u8; 10];
        let refused = engine.copy(&source, &mut destination).err().ok_or("a 10-byte copy was accepted")?;
        let message = alloc::format!("{refused}");
        ensure!(message.contains("whole 4-byte words"), "unclear refusal: {message}");
        ensure!(engine.copy(&source[..8], &mut destination[..4]).is_err(), "mismatched lengths were accepted");
        ensure!(destination == [0u8; 10], "a refused copy wrote the destination");
        Ok(())
    }
}

kernel_test! {
    /// The engine's channel interrupts through the GIC (its `interrupt-names` "dmaN" entry)
    /// when a copy's last control block is done: a chained copy completes, byte for byte, and
    /// the channel's interrupt count goes up. Under `kernel.poll` the engine polls, and this
    /// says so.
    fn a_copy_completes_by_the_channels_interrupt() {
        let guard = DMA_ENGINE.lock();
        let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
        if crate::interrupts::polling() {
            skip!("drivers poll (kernel.poll, or no working timer interrupt to sleep on)");
        }
        let before = engine.interrupts_taken().ok_or("the engine polls: no usable interrupt for its channel (or kernel.poll)")?;
        let source = pattern(77, 3 * 4096);
        let mut destination = alloc::vec![0u8; source.len()];
        let report = engine.copy_in_blocks(&source, &mut destination, 4096).map_err(|error| format!("{error}"))?;
        ensure!(destination == source, "the copy ({} blocks) differs from its source", report.blocks);
        let taken = engine.interrupts_taken().unwrap_or(before) - before;
        ensure!(taken >= 1, "a chain of {} blocks completed with no interrupt from the channel", report.blocks);
        Ok(())
    }
}

kernel_test! {
    /// Every CPU copies through the engine at the same time, each its own pattern, the engine
    /// (one channel) taken in turn: every byte arrives, the pool the engine bounces through is
    /// as full afterwards as before, and the audit saw no bus address outside a live mapping.
    /// On a Pi 4 this is the DMA every CPU can do, as the disks are on `virt`.
    fn every_cpu_copies_through_the_engine_at_once() {
        const ROUNDS: usize = 20;
        if crate::smp::online() < 2 {
            skip!("one CPU online");
        }
        let slots_in_use = {
            let guard = DMA_ENGINE.lock();
            let Some(engine) = guard.as_ref() else { skip!("no brcm,bcm2835-dma device") };
            bounce_pool(engine)?.bounce.stats().slots_in_use
        };
        let failures = spin::Mutex::new(Vec::new());
        crate::smp::on_every_cpu(&|cpu| {
            for round in 0..ROUNDS {
                let source = pattern((cpu * 1000 + round) as u64, 4 * (64 + 37 * round + cpu));
                let mut destination = vec![0u8; source.len()];
                let guard = DMA_ENGINE.lock();
                let Some(engine) = guard.as_ref() else { return };
                let problem = match engine.copy(&source, &mut destination) {
                    Err(error) => Some(format!("{error}")),
                    Ok(_) if destination != source => Some("the copy differs from its source".into()),
                    Ok(_) => None,
                };
                if let Some(problem) = problem {
                    failures.lock().push(format!("CPU {cpu} round {round}: {problem}"));
                }
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{} failures, first: {}", failures.len(), failures[0]);
        let guard = DMA_ENGINE.lock();
        let engine = guard.as_ref().ok_or("the engine went away")?;
        let now = bounce_pool(engine)?.bounce.stats().slots_in_use;
        ensure!(now == slots_in_use, "{now} pool slots in use afterwards, {slots_in_use} before");
        ensure!(engine.dma.audit_report().violations == 0, "the audit saw bus addresses outside live mappings");
        Ok(())
    }
}
