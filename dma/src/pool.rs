//! DMA pools as the API sees them: a bounce pool with a name, a place and a caching.
//!
//! Two kinds exist, as in Linux: a *restricted* pool (`restricted-dma-pool` in the devicetree)
//! through which every transfer of its devices is copied, and the *default* pool (Linux's
//! swiotlb) for what a device cannot reach in place. Where they come from is the kernel's
//! business (it reads the devicetree and reserves the memory); how a pool cuts itself into
//! slots is [`swiotlb`]'s.

use addr::{DmaAddr, PhysRange};
use swiotlb::BouncePool;

use crate::platform::Platform;

/// A DMA pool: reserved RAM that transfers are copied through.
pub struct DmaPool<P: Platform> {
    /// Its devicetree node name, or `swiotlb` for the default pool.
    pub name: &'static str,
    /// Named by the devicetree (`restricted-dma-pool`), rather than the kernel's default pool.
    pub restricted: bool,
    /// Where it lies in physical memory.
    pub range: PhysRange,
    /// Whether every device using the pool snoops the CPU caches. If not, the CPU maps the
    /// pool uncached, so neither the copies nor coherent memory from it need maintenance.
    pub coherent: bool,
    /// The slots, the copies and their records.
    pub bounce: BouncePool<P::Memory>,
}

impl<P: Platform> DmaPool<P> {
    /// Whether `[dma, dma + size)` lies inside the pool.
    pub fn holds(&self, dma: DmaAddr, size: u64) -> bool {
        let base = self.bounce.geometry().dma_base;
        dma.offset_from(base).is_some_and(|offset| offset.checked_add(size).is_some_and(|end| end <= self.range.size()))
    }
}
