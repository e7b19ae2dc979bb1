//! What the DMA API needs from the machine, and nothing more.
//!
//! The API decides; the platform acts. Everything that touches hardware goes through
//! [`Platform`]: finding the physical memory behind a CPU buffer, cleaning and invalidating data
//! cache lines, handing out memory for coherent allocations, the page tables and TLB of IOMMU
//! domains, and saying what kind of memory a range is (for the debug checker). The kernel
//! implements it with the MMU, `DC CVAC`/`DC IVAC` and the SMMUv3; host tests implement it with
//! [`crate::sim`], a simulated machine whose write-back cache loses data exactly where real
//! hardware would.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use addr::PhysRange;
use swiotlb::PhysMemory;
use vmsa::{TableMemory, TlbMaintenance};

/// Why the API asks for a cache operation: the call that needs it.
///
/// Each variant is one place in the API where a device that does not snoop the CPU caches
/// needs maintenance. Passing the reason lets a platform trace it, and lets the host tests
/// switch each one off in turn to show that a named test fails without it
/// (`tests/cache.rs`, `every_maintenance_operation_is_needed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Maintenance {
    /// `map` of a buffer lent in place, any direction: *clean*, so that the device reads what
    /// the CPU wrote, and so that no dirty line is left to be evicted over what the device
    /// writes during the transfer.
    MapClean,
    /// `unmap` of a buffer the device may have written: *invalidate*, so that the CPU's next
    /// reads fetch the device's data, not copies cached before or during the transfer.
    UnmapInvalidate,
    /// `sync_for_cpu` of part of a live mapping: *invalidate*, as at unmap.
    SyncForCpuInvalidate,
    /// `sync_for_device` of part of a live mapping: *clean*, as at map.
    SyncForDeviceClean,
}

impl Maintenance {
    /// Every maintenance operation the API performs.
    pub const ALL: [Maintenance; 4] = [
        Maintenance::MapClean,
        Maintenance::UnmapInvalidate,
        Maintenance::SyncForCpuInvalidate,
        Maintenance::SyncForDeviceClean,
    ];

    /// Whether the operation cleans (writes back) rather than invalidates (drops) lines.
    pub fn cleans(self) -> bool {
        matches!(self, Maintenance::MapClean | Maintenance::SyncForDeviceClean)
    }
}

impl fmt::Display for Maintenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Maintenance::MapClean => "clean at map",
            Maintenance::UnmapInvalidate => "invalidate at unmap",
            Maintenance::SyncForCpuInvalidate => "invalidate at sync_for_cpu",
            Maintenance::SyncForDeviceClean => "clean at sync_for_device",
        })
    }
}

/// What a range of memory is, as far as DMA is concerned: the debug checker refuses to let a
/// device near anything but RAM that belongs to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Ordinary RAM: heap, statics, the current stack.
    Ram,
    /// The kernel's code: a device writing it would patch the kernel.
    KernelCode,
    /// The kernel's read-only data.
    KernelReadOnly,
    /// The stack of another context (another CPU, an exception stack): it changes under the
    /// transfer's feet as soon as that context runs.
    OtherStack,
    /// Device registers: a DMA to MMIO is peer-to-peer at best, a wild write at worst.
    Mmio,
    /// Not memory the kernel maps at all.
    NotMapped,
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryKind::Ram => "RAM",
            MemoryKind::KernelCode => "kernel code",
            MemoryKind::KernelReadOnly => "kernel read-only data",
            MemoryKind::OtherStack => "the stack of another context",
            MemoryKind::Mmio => "device registers (MMIO)",
            MemoryKind::NotMapped => "memory the kernel does not map",
        })
    }
}

/// Why an IOMMU's TLB invalidation did not complete: the IOMMU may still hold the old
/// translations, so the IOVA range must never be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotlbError {
    /// What failed, in the IOMMU's own words (for the SMMUv3: a timeout or a command error).
    pub reason: &'static str,
}

impl fmt::Display for IotlbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the IOMMU's TLB invalidation did not complete: {}", self.reason)
    }
}

/// An IOMMU's translation cache, as one domain's unmap sees it.
pub trait Iotlb {
    /// Runs `unmap` with the IOMMU to itself: `unmap` clears page-table entries and queues an
    /// invalidation of each through the [`TlbMaintenance`] it is given. Returns what `unmap`
    /// returned once every queued invalidation has completed (strict unmap: contract rule 14),
    /// or the first failure.
    fn strictly<R>(&self, asid: u16, unmap: impl FnOnce(&mut dyn TlbMaintenance) -> R) -> Result<R, IotlbError>;

    /// Drops every cached translation tagged `asid` and waits until that has completed: the
    /// flush of a domain whose unmaps were deferred.
    fn invalidate_all(&self, asid: u16) -> Result<(), IotlbError>;
}

/// The machine under the DMA API.
///
/// Addresses cross this boundary as physical ranges; the platform knows where the CPU reaches
/// them. Implementations must be exact: the API trusts `physical` to say where a buffer really
/// is, and the cache operations to really reach the point of coherency.
pub trait Platform {
    /// How bounce pools reach their bytes and the callers' buffers (the CPU's view of RAM).
    type Memory: PhysMemory;
    /// Memory for IOMMU page tables.
    type Tables: TableMemory;
    /// The IOMMU's TLB.
    type Iotlb: Iotlb;

    /// The physical range behind `size` bytes at CPU address `buffer`, if it is contiguous RAM
    /// the kernel maps read-write.
    fn physical(&self, buffer: NonNull<u8>, size: usize) -> Option<PhysRange>;

    /// The smallest data cache line in the system (`CTR_EL0.DminLine` on AArch64): the unit in
    /// which caches own memory, and so the unit of rule 13.
    fn cache_line_size(&self) -> usize;

    /// Writes the CPU's dirty lines covering `range` back to memory (`DC CVAC`, to the point of
    /// coherency), so that a device that does not snoop reads them.
    fn clean(&self, range: PhysRange, why: Maintenance);

    /// Drops the CPU's cached copies of `range` (`DC IVAC`), so that the CPU's next reads fetch
    /// what a device wrote to memory. Dirty bytes in those lines are lost: the API calls it only
    /// on whole lines it owns.
    fn invalidate(&self, range: PhysRange, why: Maintenance);

    /// Zeroed, cached memory for a coherent allocation; `None` when there is none.
    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>>;

    /// Returns memory from [`Self::allocate_zeroed`].
    ///
    /// # Safety
    ///
    /// `pointer` came from `allocate_zeroed(layout)` with this `layout`, and nothing uses it any
    /// more: no CPU reference and no device (its mappings are gone).
    unsafe fn deallocate(&self, pointer: NonNull<u8>, layout: Layout);

    /// What `range` is, for the debug checker.
    fn memory_kind(&self, range: PhysRange) -> MemoryKind;
}
