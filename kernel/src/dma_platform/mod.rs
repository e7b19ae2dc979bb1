//! The kernel's side of the DMA API: the [`dma::Platform`] the `dma` crate runs on, and the
//! pools it copies through.
//!
//! The API itself (routes, mappings, coherent memory, the audit, the debug checker) lives in
//! the `dma` crate, where it is tested on the host against a simulated cache. What it needs from
//! the machine is answered here:
//!
//! | the API asks | the kernel answers with |
//! |---|---|
//! | where is this buffer in physical memory? | a walk of its own page tables (`arch::mmu::walk`) |
//! | clean / invalidate these bytes | `DC CVAC` / `DC IVAC` by virtual address (`arch::cache`) |
//! | the cache line size | `CTR_EL0.DminLine` |
//! | memory for coherent allocations | the heap |
//! | page tables and TLB of an IOMMU domain | [`crate::iommu`]: heap tables, `CMD_TLBI_NH_VA` + `CMD_SYNC` |
//! | what kind of memory is this? | the image's sections (code, read-only data) and the linear map |
//!
//! The debug checker is on unless the command line says `dma.debug=off`. `dma.trace` logs one
//! record per decision of every device (`dma::trace`); `dma.trace=TERM[,TERM...]` only of the
//! devices a term names: a route (`direct`, `restricted`, `iommu`, `trusted`, `untrusted`) or
//! part of the device's name (`00:05.0`, `virtio_mmio`).

mod memory;
pub mod pools;

use core::alloc::Layout;
use core::ptr::NonNull;

use addr::{PhysRange, VirtAddr};
use dma::{Checker, Maintenance, MemoryKind, Tracer};
use spin::Once;

pub use memory::KernelMemory;
pub use pools::kernel_memory;

use crate::iommu::{DomainTables, SmmuIotlb};

/// The machine the kernel runs on, as the DMA API sees it.
pub struct KernelPlatform;

/// The one instance every device uses.
pub static PLATFORM: KernelPlatform = KernelPlatform;

/// A device's DMA handle on this kernel.
pub type DmaDevice = dma::DmaDevice<KernelPlatform>;
/// A pool on this kernel.
pub type DmaPool = dma::DmaPool<KernelPlatform>;
/// A route on this kernel.
pub type Route = dma::Route<KernelPlatform>;
/// An IOMMU domain on this kernel.
pub type Domain = dma::Domain<KernelPlatform>;
/// Coherent memory on this kernel.
pub type Coherent<'d> = dma::Coherent<'d, KernelPlatform>;

static CHECKER: Checker = Checker::new();
static CHECKING: Once<bool> = Once::new();

/// Reads `dma.debug=on|off` (default on) once; the checker every device reports to, if on.
/// Says first, loudly, if this kernel was built with a fix of the DMA contract removed.
pub fn start_checker(bootargs: &str) {
    for fix in dma::lessons::broken() {
        log::warn!(
            "dma: THIS KERNEL IS BROKEN ON PURPOSE: built with `{fix}` for a lesson; never use it for anything else"
        );
    }
    CHECKING.call_once(|| {
        let off = bootargs.split_whitespace().any(|word| word == "dma.debug=off");
        log::info!(
            "dma: debug checker {}",
            if off { "off (dma.debug=off)" } else { "on (dma.debug=off turns it off)" }
        );
        !off
    });
}

/// The DMA debug checker, when it is on.
pub fn checker() -> Option<&'static Checker> {
    CHECKING.get().copied().unwrap_or(true).then_some(&CHECKER)
}

static TRACER: Once<Option<Tracer>> = Once::new();

/// Reads `dma.trace` or `dma.trace=TERM[,TERM...]` once: which devices' decisions are traced.
pub fn start_tracer(bootargs: &str) {
    TRACER.call_once(|| {
        let filter = bootargs.split_whitespace().find_map(|word| match word {
            "dma.trace" => Some(""),
            _ => word.strip_prefix("dma.trace="),
        })?;
        let what = if filter.is_empty() || filter == "all" { "every device" } else { filter };
        log::info!("dma: tracing the decisions of {what} (dma.trace)");
        Some(Tracer::new(filter))
    });
}

/// A new device's DMA handle on this kernel.
pub fn device(name: &'static str, route: Route, coherent: bool, constraints: dma::Constraints) -> DmaDevice {
    let tracer = TRACER.get().and_then(Option::as_ref);
    DmaDevice::new(name, route, coherent, constraints, &PLATFORM, checker()).with_tracer(tracer)
}

impl dma::Platform for KernelPlatform {
    type Memory = KernelMemory;
    type Tables = DomainTables;
    type Iotlb = SmmuIotlb;

    fn physical(&self, buffer: NonNull<u8>, size: usize) -> Option<PhysRange> {
        let address = VirtAddr::from_ptr(buffer.as_ptr());
        let start = arch::mmu::walk(address)?.output;
        let last = arch::mmu::walk(address.checked_add(size.saturating_sub(1) as u64)?)?.output;
        let range = PhysRange::new(start, size as u64)?;
        let contiguous = last.offset_from(start) == Some(size.saturating_sub(1) as u64);
        (contiguous && kernel_memory().virt(range).is_some()).then_some(range)
    }

    fn cache_line_size(&self) -> usize {
        arch::cache::line_size() as usize
    }

    fn clean(&self, range: PhysRange, _why: Maintenance) {
        if let Some(virt) = kernel_memory().virt(range) {
            arch::cache::clean_to_poc(virt.as_u64(), range.size());
        }
    }

    fn invalidate(&self, range: PhysRange, _why: Maintenance) {
        if let Some(virt) = kernel_memory().virt(range) {
            arch::cache::invalidate_to_poc(virt.as_u64(), range.size());
        }
    }

    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the API never asks for zero bytes (sizes are at least one page or granule).
        NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })
    }

    unsafe fn deallocate(&self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's promise: allocated by `allocate_zeroed` with this layout, unused.
        unsafe { alloc::alloc::dealloc(pointer.as_ptr(), layout) }
    }

    fn memory_kind(&self, range: PhysRange) -> MemoryKind {
        kernel_memory().kind(range)
    }
}
