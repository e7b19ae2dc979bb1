//! Every CPU: each one the devicetree lists, and can be started, runs the kernel, sleeps on
//! its own timer, maps from its own pool area, and moves data on every disk at the same time
//! as the others.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use spin::Mutex;

use crate::block::{self, Disk};
use crate::dma_platform::{DmaDevice, Route};
use crate::testing::{ensure, kernel_test, skip};
use crate::tests::block::{PAGE_OFFSETS, page_aligned};
use crate::tests::virtio::pattern;
use platform::devicetree::CpuStart;

/// Runs `check(cpu)` on every online CPU at once; fails with every CPU's problem, each named
/// by its CPU.
fn on_every_cpu_checking(check: &(dyn Fn(usize) -> Result<(), String> + Sync)) -> Result<(), String> {
    let failures = Mutex::new(Vec::new());
    crate::smp::on_every_cpu(&|cpu| {
        if let Err(problem) = check(cpu) {
            failures.lock().push(format!("CPU {cpu}: {problem}"));
        }
    });
    let failures = failures.into_inner();
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Skips unless a second CPU runs.
macro_rules! needs_two_cpus {
    () => {
        if crate::smp::online() < 2 {
            skip!("one CPU online");
        }
    };
}

kernel_test! {
    /// Every CPU the devicetree lists with a way to start it that the machine has is online,
    /// and each reported the MPIDR the devicetree gives it: the one started is the one named.
    fn every_cpu_the_devicetree_lists_is_online() {
        let devicetree = &crate::machine().devicetree;
        let cpus = devicetree.cpu_list().map_err(|error| alloc::format!("{error}"))?;
        let psci = crate::power::psci().is_some();
        let startable = cpus.iter().filter(|cpu| match cpu.start {
            CpuStart::Psci => psci,
            CpuStart::SpinTable { .. } => true,
            CpuStart::None => false,
        });
        let me = arch::smp::this_cpu_mpidr();
        let expected = startable.filter(|cpu| cpu.mpidr != me).count() + 1;
        ensure!(
            crate::smp::online() == expected,
            "{} of {} CPUs online ({} startable)",
            crate::smp::online(),
            cpus.len(),
            expected
        );
        for (index, cpu) in cpus.iter().enumerate() {
            if let Some(seen) = crate::smp::seen(index) {
                ensure!(seen == cpu.mpidr, "{} (MPIDR {:#x}) reported MPIDR {seen:#x}", cpu.name, cpu.mpidr);
            }
        }
        Ok(())
    }
}

kernel_test! {
    /// Every CPU maps and unmaps through one bounce pool at the same time, each its own
    /// pattern, and checks its bounce copy while it holds it: a slot handed to two CPUs at once
    /// would show the other's bytes. Afterwards the pool is as full as before, the audit has
    /// seen no DMA address outside a live mapping, and every CPU did all its rounds.
    fn every_cpu_maps_and_unmaps_through_one_pool_at_once() {
        const ROUNDS: usize = 300;
        needs_two_cpus!();
        let device = crate::tests::dma::restricted_device()?;
        let pool = device.bounce_pool().ok_or("the restricted device has no pool")?;
        let in_use = pool.bounce.stats().slots_in_use;
        let failures = spin::Mutex::new(alloc::vec::Vec::new());
        let rounds = core::sync::atomic::AtomicUsize::new(0);
        crate::smp::on_every_cpu(&|cpu| {
            for round in 0..ROUNDS {
                let data = crate::tests::virtio::pattern((cpu * 1000 + round) as u64, 512 + 64 * cpu + round % 7);
                let mapping = match device.map_to_device(&data) {
                    Ok(mapping) => mapping,
                    Err(error) => return failures.lock().push(alloc::format!("CPU {cpu} round {round}: {error}")),
                };
                let copy = crate::tests::dma::dma_to_pool_phys(mapping.dma());
                for _ in 0..50 {
                    core::hint::spin_loop();
                }
                if crate::tests::dma::bytes_at(copy, data.len()) != data {
                    failures.lock().push(alloc::format!("CPU {cpu} round {round}: its bounce copy at {copy} holds other bytes"));
                }
                if let Err(error) = mapping.unmap() {
                    failures.lock().push(alloc::format!("CPU {cpu} round {round}: unmap: {error}"));
                }
                rounds.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{} failures, first: {}", failures.len(), failures[0]);
        let done = rounds.into_inner();
        ensure!(done == ROUNDS * crate::smp::online(), "{done} rounds, not {ROUNDS} on each of {} CPUs", crate::smp::online());
        let now = pool.bounce.stats().slots_in_use;
        ensure!(now == in_use, "{now} slots in use afterwards, {in_use} before");
        ensure!(device.audit_report().violations == 0, "the audit saw DMA addresses outside live mappings");
        Ok(())
    }
}

kernel_test! {
    /// Each CPU sleeps on a timer of its own: a 2 ms wait for something that never happens
    /// ends at its deadline, on every CPU at once, each woken by its own timer's interrupt.
    fn every_cpu_sleeps_until_its_own_timer_interrupt() {
        needs_two_cpus!();
        Ok(on_every_cpu_checking(&|_| {
            ensure!(crate::interrupts::waits_sleep(), "its timer interrupt did not arrive at start, so it polls");
            let (ticks, started) = (crate::interrupts::timer_interrupts(), arch::timer::uptime());
            let happened = crate::interrupts::wait_for(Duration::from_millis(2), || false);
            let (slept, woken) = (arch::timer::uptime() - started, crate::interrupts::timer_interrupts() - ticks);
            ensure!(!happened, "a wait for nothing said it happened");
            ensure!(slept >= Duration::from_millis(2), "woke after {slept:?}, before its 2 ms deadline");
            ensure!(woken >= 1, "slept 2 ms without its own timer interrupt");
            Ok(())
        })?)
    }
}

kernel_test! {
    /// A map starts in the area of the CPU that makes it (the area's lock and cursor are that
    /// CPU's, as in Linux): each CPU maps a small buffer through the restricted pool at once,
    /// and each copy lies in that CPU's area.
    fn each_cpu_maps_first_in_its_own_pool_area() {
        needs_two_cpus!();
        let device = crate::tests::dma::restricted_device()?;
        let pool = device.bounce_pool().ok_or("the restricted device has no pool")?;
        let geometry = *pool.bounce.geometry();
        let expected = swiotlb::PoolConfig::per_cpu(crate::smp::listed(), pool.range.size(), arch::smp::this_cpu).areas;
        if expected < 2 {
            skip!("the restricted pool is too small to cut per CPU: one area");
        }
        ensure!(geometry.areas == expected, "the restricted pool has {} areas, not {expected}, one per CPU", geometry.areas);
        let area_bytes = (geometry.area_slots * swiotlb::SLOT_SIZE) as u64;
        Ok(on_every_cpu_checking(&|cpu| {
            let data = pattern(cpu as u64, 512);
            let mapping = device.map_to_device(&data).map_err(|error| format!("{error}"))?;
            let area = mapping.dma().offset_from(geometry.dma_base).map(|offset| offset / area_bytes);
            let own = (cpu & (geometry.areas - 1)) as u64;
            let dma = mapping.dma();
            let _ = mapping.unmap();
            ensure!(area == Some(own), "mapped at {dma} in area {area:?}, not its own {own}");
            Ok(())
        })?)
    }
}

kernel_test! {
    /// A device interrupt the GIC delivers to one CPU wakes the driver sleeping on another:
    /// a second CPU reads a block of every disk that interrupts, while the interrupts go to
    /// the CPU that routed them. Each read completes, and the reader was never woken by the
    /// timer it set for its deadline; at least one wake-up was sent (an NVMe queue's interrupt
    /// goes to its own CPU and needs none, virtio's do; and a read done before its driver
    /// slept needs none, so the reads go round the disks again until one did).
    fn a_completion_taken_on_one_cpu_wakes_the_reader_on_another() {
        needs_two_cpus!();
        if crate::interrupts::polling() {
            skip!("drivers poll (kernel.poll, or no timer interrupt)");
        }
        let me = arch::smp::this_cpu();
        let reader = (0..crate::smp::listed()).find(|&cpu| cpu != me && crate::smp::seen(cpu).is_some());
        let reader = reader.ok_or("no second CPU reported itself online")?;
        let failures = Mutex::new(Vec::new());
        let interrupting = AtomicUsize::new(0);
        let disks = block::disks();
        let wake_ups = crate::interrupts::wake_ups();
        crate::smp::on_every_cpu(&|cpu| {
            if cpu != reader {
                return;
            }
            // A read done before its driver slept needs no wake-up: read again until one did,
            // a few rounds at most.
            for disk in (0..READ_ROUNDS).flat_map(|_| &disks) {
                if crate::interrupts::wake_ups() > wake_ups {
                    break;
                }
                disk.with(&mut |disk| {
                    if disk.interrupts_taken().is_none() {
                        return;
                    }
                    interrupting.fetch_add(1, Ordering::Relaxed);
                    let ticks = crate::interrupts::timer_interrupts();
                    let mut buffer = vec![0u8; disk.block_size()];
                    let problem = match block::read(disk, 0, &mut buffer) {
                        Err(error) => Some(format!("read: {error}")),
                        Ok(()) if crate::interrupts::timer_interrupts() != ticks => {
                            Some("the reader slept until its deadline timer: the interrupt's CPU did not wake it".into())
                        }
                        Ok(()) => None,
                    };
                    if let Some(problem) = problem {
                        failures.lock().push(format!("CPU {cpu}, {}: {problem}", disk.describe()));
                    }
                });
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{}", failures.join("; "));
        if interrupting.into_inner() == 0 {
            skip!("no disk interrupts");
        }
        ensure!(
            crate::interrupts::wake_ups() > wake_ups,
            "in {READ_ROUNDS} reads of each disk, no completion was taken on another CPU than the reader's: nothing was tested"
        );
        Ok(())
    }
}

/// Reads of each disk at most, in [`a_completion_taken_on_one_cpu_wakes_the_reader_on_another`].
const READ_ROUNDS: usize = 10;

/// Round trips each CPU makes on each disk in [`every_cpu_moves_data_on_every_disk_at_once`].
const DISK_ROUNDS: usize = 6;

kernel_test! {
    /// Every CPU writes and reads back blocks of its own on every disk at the same time, each
    /// CPU starting on a different disk, a disk's lock held for one request at a time so that
    /// the CPUs' requests interleave. Every byte is compared; afterwards no bounce slot, IOVA
    /// mapping or audit violation is left that was not there before, and the SMMU saw no fault.
    fn every_cpu_moves_data_on_every_disk_at_once() {
        needs_two_cpus!();
        let disks = block::disks();
        if disks.is_empty() {
            skip!("no disk");
        }
        let before = leftovers(&disks);
        let _ = crate::iommu::take_faults();
        let failures = Mutex::new(Vec::new());
        let moved = AtomicUsize::new(0);
        crate::smp::on_every_cpu(&|cpu| {
            for round in 0..DISK_ROUNDS {
                for step in 0..disks.len() {
                    let disk = &disks[(cpu + step) % disks.len()];
                    match round_trip(disk, cpu, round) {
                        Ok(bytes) => _ = moved.fetch_add(bytes, Ordering::Relaxed),
                        Err(problem) => failures.lock().push(format!("CPU {cpu} round {round}: {problem}")),
                    }
                }
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{} failures, first: {}", failures.len(), failures[0]);
        log::info!(
            "{} CPUs moved {} KiB over {} disks at once",
            crate::smp::online(),
            moved.into_inner() >> 10,
            disks.len()
        );
        let after = leftovers(&disks);
        ensure!(after == before, "left behind, per disk (pool slots, IOVA mappings, audit violations): {after:?}, before {before:?}");
        let faults = crate::iommu::take_faults();
        ensure!(faults.is_empty(), "the SMMU reported {} faults, first: {}", faults.len(), faults[0]);
        Ok(())
    }
}

/// Writes a pattern of this CPU, disk and round to blocks of the CPU's own part of the disk,
/// then reads it back elsewhere in memory and compares; the disk is locked for each request
/// alone. The sizes go from one block to past three pages, at the R6 page offsets. Returns the
/// bytes moved.
fn round_trip(disk: &Disk, cpu: usize, round: usize) -> Result<usize, String> {
    let mut shape = None;
    disk.with(&mut |disk| shape = Some((disk.block_size(), disk.blocks(), disk.describe())));
    let (block_size, capacity, name) = shape.ok_or("the disk's driver is gone")?;
    let size = [block_size, 4096, 3 * 4096 + block_size][round % 3].next_multiple_of(block_size);
    let blocks = (size / block_size) as u64;
    let part = capacity / crate::smp::listed() as u64;
    ensure!(part >= blocks * DISK_ROUNDS as u64, "{name}: {capacity} blocks are too few to give each CPU its own");
    let block = cpu as u64 * part + round as u64 * blocks;
    let offset = PAGE_OFFSETS[(cpu + round) % PAGE_OFFSETS.len()];
    let data = pattern(((cpu as u64) << 32) + (capacity << 8) + round as u64, size);
    let mut storage = vec![0u8; size + 2 * 4096];
    let buffer = page_aligned(&mut storage);
    buffer[offset..offset + size].copy_from_slice(&data);
    let mut result = Ok(());
    disk.with(&mut |disk| result = block::write(disk, block, &buffer[offset..offset + size]));
    result.map_err(|error| format!("{name}: write {size} bytes at block {block}: {error}"))?;
    let read_offset = (offset + 0x3c8) % 4096;
    buffer.fill(0);
    let mut result = Ok(());
    disk.with(&mut |disk| result = block::read(disk, block, &mut buffer[read_offset..read_offset + size]));
    result.map_err(|error| format!("{name}: read {size} bytes at block {block}: {error}"))?;
    let differs = (0..size).find(|&index| buffer[read_offset + index] != data[index]);
    ensure!(differs.is_none(), "{name}: {size} bytes at block {block}: byte {differs:?} differs from what was written");
    Ok(2 * size)
}

/// Per disk: bounce slots in use in its pool, live IOVA mappings in its domain, and audit
/// violations.
fn leftovers(disks: &[Disk]) -> Vec<(usize, usize, u64)> {
    let mut counts = Vec::new();
    for disk in disks {
        disk.with(&mut |disk| counts.push(leftovers_of(disk.dma_device())));
    }
    counts
}

fn leftovers_of(device: &DmaDevice) -> (usize, usize, u64) {
    let slots = device.bounce_pool().map_or(0, |pool| pool.bounce.stats().slots_in_use);
    let mappings = match &device.route {
        Route::Iommu { domain, .. } => domain.live_mappings(),
        _ => 0,
    };
    (slots, mappings, device.audit_report().violations)
}

kernel_test! {
    /// Every CPU started after boot runs on a stack of its own in the stack window, with an
    /// unmapped guard page below it, as the boot stack has: a local variable of each CPU lies
    /// on that CPU's stack, the stack's lowest page is mapped, and the page below is not, so an
    /// overflow faults instead of overwriting the memory below.
    fn every_cpu_runs_on_its_own_stack_above_a_guard_page() {
        needs_two_cpus!();
        let me = arch::smp::this_cpu();
        Ok(on_every_cpu_checking(&|cpu| {
            if cpu == me {
                return Ok(());
            }
            let marker = 0u8;
            let here = addr::VirtAddr::from_ptr(core::hint::black_box(&marker));
            let bottom = crate::smp::stack_bottom(cpu).ok_or("no stack recorded")?;
            let on_it = here >= bottom && here.as_u64() - bottom.as_u64() < crate::smp::STACK_BYTES as u64;
            ensure!(on_it, "a local variable at {here}, not on its stack from {bottom}");
            ensure!(arch::mmu::walk(bottom).is_some(), "its stack's lowest page {bottom} is not mapped");
            let below = addr::VirtAddr::new(bottom.as_u64() - 1);
            ensure!(arch::mmu::walk(below).is_none(), "the page below its stack ({bottom}) is mapped: no guard");
            Ok(())
        })?)
    }
}
