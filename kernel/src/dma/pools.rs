//! Restricted DMA pools: from the devicetree's description to bounce pools in memory.
//!
//! At boot, before the heap exists:
//! 1. [`plan`] reads every `restricted-dma-pool` and every DMA-capable device, and works out
//!    for each pool the lowest DMA limit of its devices and whether they all snoop caches;
//! 2. the memory map checks a static pool against everything else reserved, or carves a
//!    dynamic one out of free RAM below that limit ([`crate::memory`]);
//! 3. [`create`] maps each pool into the linear map (uncached if any of its devices does not
//!    snoop the caches, so neither copies nor virtqueues need cache maintenance) and builds
//!    its bounce pool, at the DMA address its devices see it at.

use addr::{DmaAddr, PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use dma::{BouncePool, PoolConfig};
use log::info;
use platform::devicetree::{Device, Devicetree, MAX_RANGES};
use platform::dma_config::{self, PoolPlacement, RestrictedPool as PoolNode, MAX_POOLS};
use platform::memmap::Size;
use spin::Once;
use vmsa::{Access, MemoryType};

use super::{KernelMemory, RestrictedPool};
use crate::memory::MemoryError;

/// The devices the kernel drives that do DMA, by `compatible`.
pub const DMA_MASTERS: &[&str] = &["virtio,mmio"];

/// What the devicetree asks for, before any memory is touched.
pub struct Plan {
    pub pools: ArrayVec<PoolRequest, MAX_POOLS>,
    pub devices: ArrayVec<Device<'static>, MAX_RANGES>,
}

/// One pool and what its devices need of it.
pub struct PoolRequest {
    pub node: PoolNode<'static>,
    /// One past the highest physical address every device of the pool can reach.
    pub limit: Option<PhysAddr>,
    /// Whether every device of the pool snoops the CPU caches.
    pub coherent: bool,
}

pub fn plan(devicetree: &Devicetree<'static>) -> Result<Plan, MemoryError> {
    let devices = devicetree.compatible_devices(DMA_MASTERS).map_err(MemoryError::Devicetree)?;
    let nodes = devicetree.restricted_pools().map_err(MemoryError::Devicetree)?;
    let pools = nodes
        .into_iter()
        .map(|node| {
            let users = || devices.iter().map(|device| &device.dma).filter(|dma| dma.pool == Some(node.name));
            PoolRequest {
                limit: dma_config::pool_limit(node.name, users()),
                coherent: users().all(|dma| dma.coherent),
                node,
            }
        })
        .collect();
    Ok(Plan { pools, devices })
}

static POOLS: Once<ArrayVec<RestrictedPool, MAX_POOLS>> = Once::new();
static KERNEL_MEMORY: Once<KernelMemory> = Once::new();
static MAPPED_RAM: Once<ArrayVec<PhysRange, { 3 * MAX_RANGES }>> = Once::new();

/// The kernel's CPU window onto RAM and pools (valid once [`create`] ran).
pub fn kernel_memory() -> &'static KernelMemory {
    KERNEL_MEMORY.get().expect("DMA pools created at boot")
}

pub fn pools() -> &'static [RestrictedPool] {
    POOLS.get().map_or(&[], |pools| pools.as_slice())
}

pub fn pool(name: &str) -> Option<&'static RestrictedPool> {
    pools().iter().find(|pool| pool.name == name)
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
    let mut pools = ArrayVec::new();
    for (request, &range) in plan.pools.iter().zip(placed) {
        let memory_type = if request.coherent { MemoryType::Normal } else { MemoryType::NormalNonCacheable };
        arch::mmu::map_linear(range, memory_type, Access::ReadWrite)
            .map_err(|error| MemoryError::LinearMap(range, error))?;
        let dma_base = bus_address(plan, request, range)?;
        let bounce = BouncePool::new(*memory, range, dma_base, PoolConfig::default())
            .map_err(|error| MemoryError::Pool(request.node.name, error))?;
        let form = match request.node.placement {
            PoolPlacement::Static(_) => "static",
            PoolPlacement::Dynamic { .. } => "dynamic",
        };
        let caching = if request.coherent { "cached" } else { "uncached: its devices do not snoop caches" };
        info!(
            "restricted pool '{}': {range} {}, {form}, DMA address {dma_base}, {caching}",
            request.node.name,
            Size(range.size())
        );
        pools.push(RestrictedPool { name: request.node.name, range, coherent: request.coherent, bounce });
    }
    POOLS.call_once(|| pools);
    Ok(())
}

/// The pool's base as its devices address it; they must all agree.
fn bus_address(plan: &Plan, request: &PoolRequest, range: PhysRange) -> Result<DmaAddr, MemoryError> {
    let name = request.node.name;
    let mut users = plan.devices.iter().filter(|device| device.dma.pool == Some(name));
    let unreachable = MemoryError::PoolUnreachable(name, range);
    let Some(first) = users.next() else { return Ok(DmaAddr::new(range.start().as_u64())) };
    if !first.dma.reaches(range) {
        return Err(unreachable);
    }
    let base = first.dma.phys_to_dma(range.start()).ok_or(unreachable)?;
    for device in users {
        if !device.dma.reaches(range) || device.dma.phys_to_dma(range.start()) != Some(base) {
            return Err(unreachable);
        }
    }
    Ok(base)
}
