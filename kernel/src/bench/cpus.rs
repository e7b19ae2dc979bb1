//! How the DMA paths scale with CPUs: the same work on 1, 2 and 4 CPUs at once, in one boot.
//!
//! Each measurement runs for [`RUN_FOR`] with one CPU, then two, then four (as many as are
//! online), every CPU working flat out at once:
//!
//! - `pool map+unmap 4KiB`: a 4 KiB buffer mapped for the device and unmapped, through a bounce
//!   pool (the restricted device's). Each CPU starts in its own area of the pool, under that
//!   area's lock, as in Linux; what they share is the pool's counters.
//! - `one-area pool map+unmap 4KiB` and `per-cpu pool map+unmap 4KiB`: the same on two pools
//!   the benchmark builds over 4 MiB of its own heap, alike but for their areas: one, which
//!   every CPU takes in turn, and one per CPU. Their ratio is what the areas buy.
//! - `iommu map+unmap 4KiB`: the same through a trusted disk's IOMMU domain: its page tables
//!   under the domain's lock, then a strict unmap whose invalidation and `CMD_SYNC` go through
//!   the one SMMU command queue every CPU shares.
//! - `disks read 64KiB`: reads from every disk, the disks dealt out among the CPUs so that none
//!   waits for another's disk, each CPU asleep until its disk interrupts. (Polling, as the rest
//!   of the benchmark does, two CPUs spinning flat out take the host's cores from the
//!   emulator's own threads, which complete the requests: 2 CPUs then read at a quarter of
//!   one's speed.)
//!
//! Each line reads `bench: cpus NAME N CPUs ops/s = VALUE` (or `MB/s`); xtask divides the 2- and
//! 4-CPU figures by the 1-CPU one. Under QEMU TCG every virtual CPU is a host thread: past the
//! host's own cores (two on the CI machines) more CPUs cannot add throughput, so the figures
//! say whether the kernel's locks let CPUs work side by side, not how a Pi 4 would scale.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::time::Duration;

use log::{error, info};

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use swiotlb::{BouncePool, PoolConfig};

use crate::block::{self, Disk};
use crate::dma_platform::{DmaDevice, Route};
use crate::dma_platform::{KernelMemory, kernel_memory};

/// How long each measurement runs at each CPU count.
const RUN_FOR: Duration = Duration::from_millis(300);
/// The CPU counts measured (those up to the CPUs online).
const CPU_COUNTS: [usize; 3] = [1, 2, 4];
/// The size of each disk read.
const READ_BYTES: usize = 64 << 10;

/// Runs every measurement at every CPU count; says whether all of them worked.
pub fn measure() -> bool {
    let disks = block::disks();
    let mut devices = Vec::new();
    for disk in &disks {
        disk.with(&mut |disk| devices.push(disk.dma_device()));
    }
    let pooled = devices.iter().copied().find(|device| matches!(device.route, Route::Restricted(_)));
    let translated =
        devices.iter().copied().find(|device| matches!(device.route, Route::Iommu { untrusted: false, .. }));
    let (one_area, per_cpu) = (own_pool(PoolConfig::default()), own_pool(per_cpu_config()));
    let mut worked = true;
    for cpus in CPU_COUNTS.into_iter().filter(|&cpus| cpus <= crate::smp::online()) {
        let plural = if cpus == 1 { "CPU" } else { "CPUs" };
        for (name, pool) in [("one-area", &one_area), ("per-cpu", &per_cpu)] {
            let Some(pool) = pool else { continue };
            match together(cpus, &|_| pool.map_and_unmap()) {
                Ok(operations) => {
                    info!(
                        "bench: cpus {name} pool map+unmap 4KiB {cpus} {plural} ops/s = {:.0}",
                        per_second(operations)
                    )
                }
                Err(()) => worked = false,
            }
        }
        for (name, device) in [("pool", pooled), ("iommu", translated)] {
            let Some(device) = device else { continue };
            match together(cpus, &|_| map_and_unmap(device)) {
                Ok(operations) => {
                    info!("bench: cpus {name} map+unmap 4KiB {cpus} {plural} ops/s = {:.0}", per_second(operations))
                }
                Err(()) => worked = false,
            }
        }
        if !disks.is_empty() {
            // Asleep until each disk interrupts: CPUs polling flat out would take the host's
            // cores from the emulator's own threads, which complete the requests.
            crate::interrupts::set_polling(false);
            let read = together(cpus, &|rank| read_round(&disks, rank, cpus));
            crate::interrupts::set_polling(true);
            match read {
                Ok(bytes) => {
                    info!("bench: cpus disks read 64KiB {cpus} {plural} MB/s = {:.1}", per_second(bytes) / 1e6)
                }
                Err(()) => worked = false,
            }
        }
    }
    worked
}

fn per_second(count: usize) -> f64 {
    count as f64 / RUN_FOR.as_secs_f64()
}

/// Runs `step(rank)` over and over on `cpus` CPUs at once (`rank` 0 to `cpus - 1`), until
/// [`RUN_FOR`] has passed, and adds up what the steps return. The other CPUs sit out. A step's
/// error is logged and stops every CPU.
fn together(cpus: usize, step: &(dyn Fn(usize) -> Result<usize, alloc::string::String> + Sync)) -> Result<usize, ()> {
    let (next_rank, total, failed) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    let ready = AtomicUsize::new(0);
    crate::smp::on_every_cpu(&|_| {
        let rank = next_rank.fetch_add(1, Ordering::Relaxed);
        if rank >= cpus {
            return;
        }
        // Every CPU starts at once: the last to arrive starts the clock for all.
        ready.fetch_add(1, Ordering::AcqRel);
        while ready.load(Ordering::Acquire) < cpus {
            core::hint::spin_loop();
        }
        let end = arch::timer::uptime() + RUN_FOR;
        let mut mine = 0;
        while arch::timer::uptime() < end && !failed.load(Ordering::Relaxed) {
            match step(rank) {
                Ok(done) => mine += done,
                Err(problem) => {
                    error!("bench: cpus: CPU {} of {cpus}: {problem}", rank + 1);
                    failed.store(true, Ordering::Relaxed);
                }
            }
        }
        total.fetch_add(mine, Ordering::Relaxed);
    });
    if failed.into_inner() { Err(()) } else { Ok(total.into_inner()) }
}

/// Bytes of each pool the benchmark builds for itself.
const OWN_POOL_BYTES: usize = 4 << 20;

/// A bounce pool over heap memory of its own, and a 4 KiB buffer to map through it.
struct OwnPool {
    pool: BouncePool<KernelMemory>,
    buffer: PhysAddr,
}

impl OwnPool {
    fn map_and_unmap(&self) -> Result<usize, alloc::string::String> {
        let constraints = swiotlb::Constraints::NONE;
        let mapping = self.pool.map(self.buffer, 4096, swiotlb::DmaDirection::ToDevice, &constraints);
        let mapping = mapping.map_err(|error| alloc::format!("own pool: map: {error}"))?;
        self.pool.unmap(mapping.dma, 4096).map_err(|error| alloc::format!("own pool: unmap: {error}"))?;
        Ok(1)
    }
}

/// The cut the kernel's own pools get (`dma_platform::pools`), for a pool of
/// [`OWN_POOL_BYTES`].
fn per_cpu_config() -> PoolConfig {
    PoolConfig::per_cpu(crate::smp::listed(), OWN_POOL_BYTES as u64, arch::smp::this_cpu)
}

/// A pool cut as `config` says over [`OWN_POOL_BYTES`] of heap, which lives for good (a pool
/// is never taken down), plus a page to map; `None`, logged, if one cannot be built.
fn own_pool(config: PoolConfig) -> Option<OwnPool> {
    let memory = vec![0u8; OWN_POOL_BYTES + 2 * 4096].leak();
    let start = memory.as_ptr().align_offset(4096);
    let physical = |offset: usize| arch::layout::linear_virt_to_phys(VirtAddr::from_ptr(memory[offset..].as_ptr()));
    let (Some(base), Some(buffer)) = (physical(start), physical(start + OWN_POOL_BYTES)) else {
        error!("bench: cpus: the heap is not in the linear map");
        return None;
    };
    let range = PhysRange::new(base, OWN_POOL_BYTES as u64)?;
    let pool = BouncePool::new(*kernel_memory(), range, DmaAddr::new(base.as_u64()), config);
    match pool {
        Ok(pool) => Some(OwnPool { pool, buffer }),
        Err(problem) => {
            error!("bench: cpus: a pool of its own: {problem}");
            None
        }
    }
}

/// Maps a 4 KiB buffer for `device` and unmaps it: one operation.
fn map_and_unmap(device: &DmaDevice) -> Result<usize, alloc::string::String> {
    let buffer = [0x5au8; 4096];
    let mapping = device.map_to_device(&buffer).map_err(|error| alloc::format!("{}: map: {error}", device.name))?;
    mapping.unmap().map_err(|error| alloc::format!("{}: unmap: {error}", device.name))?;
    Ok(1)
}

/// One 64 KiB read from each disk of this CPU's share (disk `n` is rank `n % cpus`'s), from
/// the disk's start; the bytes read. No two CPUs share a disk, so none waits for another's
/// request: what is left to share is the pools, the SMMU and the emulator.
fn read_round(disks: &[Disk], rank: usize, cpus: usize) -> Result<usize, alloc::string::String> {
    if rank >= disks.len() {
        // No disk of its own: it sleeps through the run rather than spin next to the others.
        crate::interrupts::wait_for(RUN_FOR, || false);
        return Ok(0);
    }
    let mut storage = vec![0u8; READ_BYTES + 4096];
    let start = storage.as_ptr().align_offset(4096);
    let buffer = &mut storage[start..start + READ_BYTES];
    let mut bytes = 0;
    for disk in disks.iter().skip(rank).step_by(cpus) {
        let mut result = Ok(());
        disk.with(&mut |disk| {
            if (disk.blocks() as usize).saturating_mul(disk.block_size()) < READ_BYTES
                || !READ_BYTES.is_multiple_of(disk.block_size())
            {
                return;
            }
            result = block::read(disk, 0, buffer)
                .map(|()| bytes += READ_BYTES)
                .map_err(|error| alloc::format!("{}: read: {error}", disk.describe()));
        });
        result?;
    }
    Ok(bytes)
}
