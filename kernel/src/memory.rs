//! RAM: the memory map, the linear map and the heap.
//!
//! The devicetree lists RAM and reservations; the kernel adds the two ranges it knows from
//! boot (its image and the devicetree blob). [`platform::memmap`] turns those into free
//! ranges. Then:
//!
//! - every byte of RAM except `no-map` reservations enters the linear map, read-write, except
//!   the image and the devicetree, which stay read-only there too;
//! - the largest free range becomes the heap (`alloc::` works from here on);
//! - the lower half's identity map, needed only to turn the MMU on, is dropped.

// `MemoryError` carries the memory map's and the pools' errors by value: it is made before the
// heap exists, so nothing can be boxed.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use core::fmt;

use addr::{PhysAddr, PhysRange, VirtAddr};
use arch::BootInfo;
use arch::mmu::MapError;
use arrayvec::ArrayVec;
use linked_list_allocator::LockedHeap;
use log::info;
use platform::devicetree::{self, Devicetree, MAX_RANGES, Reservation};
use platform::dma_config::{MAX_POOLS, PoolPlacement, PoolReachError};
use platform::memmap::{self, MemoryMap, Size};
use vmsa::{Access, MemoryType};

use crate::dma_platform::pools::Plan;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// What boot decided about RAM.
pub struct Memory {
    pub map: MemoryMap<'static>,
    pub heap: PhysRange,
}

/// Why RAM could not be set up. Displayed without the heap, which does not exist yet.
#[derive(Debug, Clone)]
pub enum MemoryError {
    Devicetree(devicetree::Error<'static>),
    MemoryMap(memmap::Error<'static>),
    LinearMap(PhysRange, MapError),
    NoFreeRam,
    /// A restricted pool's bounce pool could not be built on its range.
    Pool(&'static str, swiotlb::PoolError),
    /// The devices of a pool cannot all reach it at one bus address.
    PoolReach(PoolReachError<'static>),
    TooManyPools,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::Devicetree(error) => write!(f, "{error}"),
            MemoryError::MemoryMap(error) => write!(f, "{error}"),
            MemoryError::LinearMap(range, error) => write!(f, "cannot add {range} to the linear map: {error:?}"),
            MemoryError::NoFreeRam => write!(f, "no free RAM left for the heap"),
            MemoryError::Pool(name, error) => write!(f, "DMA pool '{name}': {error}"),
            MemoryError::PoolReach(error) => write!(f, "{error}"),
            MemoryError::TooManyPools => {
                write!(f, "more than {MAX_POOLS} DMA pools (the devicetree's restricted pools and the default one)")
            }
        }
    }
}

pub struct HeapStatistics {
    pub used: usize,
    pub size: usize,
}

pub fn init(boot: &BootInfo, devicetree: &Devicetree<'static>, plan: &Plan) -> Result<Memory, MemoryError> {
    let ram = devicetree.memory().map_err(MemoryError::Devicetree)?;
    let mut reservations = devicetree.reservations().map_err(MemoryError::Devicetree)?;
    for reservation in reservations.iter_mut() {
        // The kernel maps each pool itself, with the caching its devices need.
        reservation.no_map |= plan.pools.iter().any(|pool| pool.node.name == reservation.label);
    }
    for (range, label) in [(boot.image, "kernel image"), (boot.devicetree, "devicetree")] {
        let reservation = Reservation { range, label, no_map: false };
        reservations.try_push(reservation).map_err(|_| MemoryError::MemoryMap(memmap::Error::TooManyRanges))?;
    }
    let mut map = MemoryMap::compute(&ram, &reservations).map_err(MemoryError::MemoryMap)?;
    let placed = place_pools(&mut map, plan)?;
    log_memory_map(&map);

    let linear = map.linear_map(&[boot.image, boot.devicetree]).map_err(MemoryError::MemoryMap)?;
    for piece in &linear {
        let access = if piece.writable { Access::ReadWrite } else { Access::ReadOnly };
        arch::mmu::map_linear(piece.range, MemoryType::Normal, access)
            .map_err(|error| MemoryError::LinearMap(piece.range, error))?;
    }
    arch::mmu::drop_identity_map();
    info!("linear map: RAM at {:#x} + physical address", arch::layout::LINEAR_MAP_BASE);

    let heap = map.largest_free().ok_or(MemoryError::NoFreeRam)?;
    // SAFETY: the range is free RAM, now mapped read-write, and nothing else uses it.
    unsafe { HEAP.lock().init(phys_to_virt(heap.start()).as_mut_ptr(), heap.size() as usize) };
    info!("heap: {} at {heap}", Size(heap.size()));

    // Bounce pools keep their bookkeeping on the heap.
    let writable: ArrayVec<PhysRange, { 2 * MAX_RANGES }> =
        linear.iter().filter(|piece| piece.writable).map(|piece| piece.range).collect();
    crate::dma_platform::pools::create(plan, &placed, boot.image, &writable)?;
    Ok(Memory { map, heap })
}

/// Checks each static pool against everything else reserved; carves each dynamic pool out of
/// free RAM below the DMA limit of its devices. Returns where each pool of `plan` is.
fn place_pools(map: &mut MemoryMap<'static>, plan: &Plan) -> Result<ArrayVec<PhysRange, MAX_POOLS>, MemoryError> {
    let mut placed = ArrayVec::new();
    for request in &plan.pools {
        let name = request.node.name;
        let range = match &request.node.placement {
            PoolPlacement::Static(range) => map.check_pool(name, *range).map(|()| *range),
            PoolPlacement::Dynamic { size, alignment, alloc_ranges } => {
                map.carve(name, *size, *alignment, request.limit, alloc_ranges)
            }
        };
        placed.push(range.map_err(MemoryError::MemoryMap)?);
    }
    Ok(placed)
}

fn log_memory_map(map: &MemoryMap<'_>) {
    info!("memory map:");
    for entry in map.entries() {
        info!("  {} {:>9}  {}", entry.range, Size(entry.range.size()), entry.label);
    }
}

/// Where the kernel reaches `physical` (the linear map).
pub fn phys_to_virt(physical: PhysAddr) -> VirtAddr {
    arch::layout::phys_to_virt(physical)
}

pub fn heap_statistics() -> HeapStatistics {
    let heap = HEAP.lock();
    HeapStatistics { used: heap.used(), size: heap.size() }
}
