//! DMA pools: from the devicetree's description to bounce pools in memory.
//!
//! Two kinds of pool exist, as in Linux:
//! - a *restricted* pool (`restricted-dma-pool`) is named by its devices' `memory-region`;
//!   every one of their transfers is copied through it (force bounce);
//! - the *default* pool, [`DEFAULT_POOL`], is the kernel's own, carved low in RAM when some
//!   direct device cannot reach all of RAM (the Raspberry Pi 4's legacy DMA engine sees only
//!   the first GiB through `/soc`'s `dma-ranges`). Those devices use buffers they can reach in
//!   place and bounce the others through it, as Linux's swiotlb does for ZONE_DMA devices.
//!   Untrusted devices behind an IOMMU bounce through it too (buffers that do not fill whole
//!   granules), so a PCIe bridge with an `iommu-map` also calls for it.
//!
//! At boot, before the heap exists:
//! 1. [`plan`] reads every `restricted-dma-pool` and every DMA-capable device, decides whether
//!    the default pool is needed, and works out for each pool the lowest DMA limit of its
//!    devices and whether they all snoop caches;
//! 2. the memory map checks a static pool against everything else reserved, or carves a
//!    dynamic one out of free RAM below that limit ([`crate::memory`]);
//! 3. [`create`] maps each pool into the linear map (uncached if any of its devices does not
//!    snoop the caches, so neither copies nor virtqueues need cache maintenance) and builds
//!    its bounce pool, at the DMA address its devices see it at.

// `MemoryError` is large (see `crate::memory`), and these run before the heap exists.
#![allow(clippy::result_large_err)]

use addr::{DmaAddr, PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use log::info;
use platform::devicetree::{Device, Devicetree, MAX_RANGES};
use platform::dma_config::{self, MAX_POOLS, PoolPlacement, RestrictedPool as PoolNode};
use platform::memmap::Size;
use platform::pci::MAX_HOST_BRIDGES;
use spin::Once;
use swiotlb::{BouncePool, PoolConfig};
use vmsa::{Access, MemoryType};

use super::{DmaPool, KernelMemory};
use crate::memory::MemoryError;

/// The devices the kernel drives that do DMA, by `compatible`.
pub const DMA_MASTERS: &[&str] = &["virtio,mmio", drivers::bcm2835_dma::Controller::COMPATIBLE];

/// The default pool's name, as Linux calls its own.
pub const DEFAULT_POOL: &str = "swiotlb";
/// Linux's default is 64 MiB for a whole distribution's drivers; the few transfers in flight
/// here at once fit many times over in 4 MiB (2048 slots).
const DEFAULT_POOL_SIZE: u64 = 4 << 20;
/// Aligned so that the pool's mapping can use 2 MiB blocks.
const DEFAULT_POOL_ALIGNMENT: u64 = 2 << 20;

/// What the devicetree asks for, before any memory is touched.
pub struct Plan {
    pub pools: ArrayVec<PoolRequest, MAX_POOLS>,
    pub devices: ArrayVec<Device<'static>, MAX_RANGES>,
    /// PCIe host bridges with no `iommu-map`: their functions' DMA is direct, through the
    /// bridge's `dma-ranges` (or its `memory-region`), so they use pools as direct devices do.
    pub untranslated_bridges: ArrayVec<Device<'static>, MAX_HOST_BRIDGES>,
    /// One past the highest byte of RAM.
    pub ram_end: PhysAddr,
}

/// One pool and what its devices need of it.
pub struct PoolRequest {
    /// The devicetree node, or for the default pool a node-like description of it.
    pub node: PoolNode<'static>,
    pub restricted: bool,
    /// One past the highest physical address every device of the pool can reach.
    pub limit: Option<PhysAddr>,
    /// Whether every device of the pool snoops the CPU caches.
    pub coherent: bool,
}

impl PoolRequest {
    /// Whether `device` bounces through this pool (always, or for buffers it cannot reach).
    pub fn serves(&self, device: &Device<'_>, ram_end: PhysAddr) -> bool {
        match self.restricted {
            true => device.dma.pool == Some(self.node.name),
            false => needs_default_pool(device, ram_end),
        }
    }
}

/// A direct device needs the default pool if it cannot reach all of RAM, or if it does not
/// snoop the caches: coherent memory for it must then be uncached, and the heap is not.
fn needs_default_pool(device: &Device<'_>, ram_end: PhysAddr) -> bool {
    let limited = device.dma.limit().is_some_and(|limit| limit < ram_end);
    device.dma.pool.is_none() && (limited || !device.dma.coherent)
}

pub fn plan(devicetree: &Devicetree<'static>) -> Result<Plan, MemoryError> {
    let devices = devicetree.compatible_devices(DMA_MASTERS).map_err(MemoryError::Devicetree)?;
    let ram = devicetree.memory().map_err(MemoryError::Devicetree)?;
    let ram_end = ram.iter().map(PhysRange::end).max().unwrap_or(PhysAddr::new(0));
    let restricted = devicetree.restricted_pools().map_err(MemoryError::Devicetree)?;
    let default = PoolNode {
        name: DEFAULT_POOL,
        phandle: None,
        placement: PoolPlacement::Dynamic {
            size: DEFAULT_POOL_SIZE,
            alignment: DEFAULT_POOL_ALIGNMENT,
            alloc_ranges: Default::default(),
        },
    };
    // Untrusted devices behind an IOMMU bounce what does not fill whole granules, through the
    // default pool: a translated PCIe bridge needs it, whether or not a direct device does.
    let bridges = devicetree.pci_host_bridges().map_err(MemoryError::Devicetree)?;
    let translated: ArrayVec<bool, MAX_RANGES> =
        bridges.iter().filter(|bridge| !bridge.iommu_map.is_empty()).map(|bridge| bridge.coherent).collect();
    let untranslated_bridges: ArrayVec<Device<'static>, MAX_HOST_BRIDGES> = devicetree
        .compatible_devices(&[platform::pci::HOST_BRIDGE_COMPATIBLE])
        .map_err(MemoryError::Devicetree)?
        .into_iter()
        .filter(|device| bridges.iter().any(|bridge| bridge.name == device.name && bridge.iommu_map.is_empty()))
        .collect();
    let requests = restricted.into_iter().map(|node| (node, true)).chain([(default, false)]);
    let mut pools = ArrayVec::new();
    for (node, restricted) in requests {
        let request = PoolRequest { node, restricted, limit: None, coherent: true };
        let users = || {
            let masters = devices.iter().chain(&untranslated_bridges);
            masters.filter(|device| request.serves(device, ram_end)).map(|device| &device.dma)
        };
        let translated_users = if restricted { &[][..] } else { &translated[..] };
        if !restricted && users().next().is_none() && translated_users.is_empty() {
            continue; // Every direct device reaches all of RAM, and no device is translated.
        }
        let limit = dma_config::lowest_limit(users());
        let coherent = users().all(|dma| dma.coherent) && translated_users.iter().all(|&coherent| coherent);
        pools.try_push(PoolRequest { limit, coherent, ..request }).map_err(|_| MemoryError::TooManyPools)?;
    }
    Ok(Plan { pools, devices, untranslated_bridges, ram_end })
}

static POOLS: Once<ArrayVec<DmaPool, MAX_POOLS>> = Once::new();
static KERNEL_MEMORY: Once<KernelMemory> = Once::new();
static MAPPED_RAM: Once<ArrayVec<PhysRange, { 3 * MAX_RANGES }>> = Once::new();
static RAM_END: Once<PhysAddr> = Once::new();

/// The kernel's CPU window onto RAM and pools (valid once [`create`] ran).
pub fn kernel_memory() -> &'static KernelMemory {
    KERNEL_MEMORY.get().expect("DMA pools created at boot")
}

pub fn pools() -> &'static [DmaPool] {
    POOLS.get().map_or(&[], |pools| pools.as_slice())
}

pub fn pool(name: &str) -> Option<&'static DmaPool> {
    pools().iter().find(|pool| pool.name == name)
}

/// The default pool, for a device the plan made it for (its bus address and caching were
/// chosen for those devices only).
pub fn default_pool_for(device: &Device<'_>) -> Option<&'static DmaPool> {
    let ram_end = *RAM_END.get()?;
    pools().iter().find(|pool| !pool.restricted).filter(|_| needs_default_pool(device, ram_end))
}

/// The default pool, for an untrusted device behind the IOMMU: the IOMMU reaches any RAM, so
/// neither the pool's placement nor its bus address matter to it.
pub fn default_pool() -> Option<&'static DmaPool> {
    pools().iter().find(|pool| !pool.restricted)
}

/// Maps and builds every pool; `placed` holds where each of `plan.pools` ended up, and
/// `writable_ram` what the linear map covers read-write.
pub fn create(
    plan: &Plan,
    placed: &[PhysRange],
    image: PhysRange,
    writable_ram: &[PhysRange],
) -> Result<(), MemoryError> {
    let mapped: ArrayVec<PhysRange, { 3 * MAX_RANGES }> = writable_ram.iter().chain(placed).copied().collect();
    let memory = KERNEL_MEMORY.call_once(|| KernelMemory::new(image, MAPPED_RAM.call_once(|| mapped)));
    RAM_END.call_once(|| plan.ram_end);
    let mut pools = ArrayVec::new();
    for (request, &range) in plan.pools.iter().zip(placed) {
        let memory_type = if request.coherent { MemoryType::Normal } else { MemoryType::NormalNonCacheable };
        arch::mmu::map_linear(range, memory_type, Access::ReadWrite)
            .map_err(|error| MemoryError::LinearMap(range, error))?;
        let dma_base = bus_address(plan, request, range)?;
        let config = if request.restricted {
            PoolConfig::restricted(crate::smp::listed(), range.size(), arch::smp::this_cpu)
        } else {
            PoolConfig::per_cpu(crate::smp::listed(), range.size(), arch::smp::this_cpu)
        };
        let bounce = BouncePool::new(*memory, range, dma_base, config)
            .map_err(|error| MemoryError::Pool(request.node.name, error))?;
        let form = match (request.restricted, &request.node.placement) {
            (false, _) => "the kernel's default pool",
            (true, PoolPlacement::Static(_)) => "static",
            (true, PoolPlacement::Dynamic { .. }) => "dynamic",
        };
        let caching = if request.coherent { "cached" } else { "uncached: its devices do not snoop caches" };
        let kind = if request.restricted { "restricted pool" } else { "bounce pool" };
        let geometry = bounce.geometry();
        let areas = match geometry.areas {
            1 => alloc::string::String::from("one area"),
            areas => alloc::format!("{areas} areas, a map starting in its CPU's"),
        };
        info!(
            "{kind} '{}': {range} {}, {form}, DMA address {dma_base}, {caching}; {areas}, segments of {}",
            request.node.name,
            Size(range.size()),
            Size((geometry.segment_slots * swiotlb::SLOT_SIZE) as u64)
        );
        let (name, restricted, coherent) = (request.node.name, request.restricted, request.coherent);
        pools.push(DmaPool { name, restricted, range, coherent, bounce });
    }
    POOLS.call_once(|| pools);
    Ok(())
}

/// The pool's base as its devices address it; they must all agree.
fn bus_address(plan: &Plan, request: &PoolRequest, range: PhysRange) -> Result<DmaAddr, MemoryError> {
    let masters = plan.devices.iter().chain(&plan.untranslated_bridges);
    let users = masters.filter(|device| request.serves(device, plan.ram_end));
    dma_config::pool_bus_address(request.node.name, range, users.map(|device| (device.name, &device.dma)))
        .map_err(MemoryError::PoolReach)
}
