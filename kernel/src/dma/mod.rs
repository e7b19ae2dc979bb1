//! The DMA API drivers use: one handle per device, whatever route its transfers take.
//!
//! A device does not use CPU addresses. What it needs, and what the kernel must do around each
//! transfer, depends on facts the devicetree states per device ([`platform::dma_config`]):
//!
//! ```text
//!                       ┌── direct ────────▶ DMA address = bus window(PA); caches cleaned
//!  driver ──DmaDevice───┤                     and invalidated unless the device is coherent
//!   map(buffer, dir)    └── restricted pool ─▶ the bytes are copied into the pool named by
//!                                              `memory-region` (force bounce, contract rule 12),
//!                                              the device gets the copy's DMA address
//! ```
//!
//! - *Streaming* mappings lend an existing buffer to the device for one transfer: `map`
//!   before, `unmap` after, `sync_*` in between if the CPU looks at the buffer while mapped.
//!   [`Streaming`] carries the direction in its type, so a `sync_for_cpu` on a buffer the
//!   device only reads does not compile.
//! - *Coherent* memory is shared for a long time (virtqueues): CPU and device see each other's
//!   writes without syncs. For a restricted device it comes from the pool; the pool is mapped
//!   uncached when its devices do not snoop the CPU caches, so that holds without maintenance.
//!
//! Every DMA address handed to a device is audited: for a restricted device it must lie inside
//! its pool, which is the whole point of the pool (a device restricted to it can be kept away
//! from everything else, by an IOMMU-less firewall or a hypervisor).

mod memory;
pub mod pools;
mod streaming;

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use dma::{BouncePool, Constraints, DmaDirection, DmaError};
use platform::dma_config::DmaDescription;

pub use memory::KernelMemory;
pub use streaming::{Bidirectional, FromDevice, Streaming, ToDevice};

/// A restricted DMA pool: reserved RAM every transfer of its devices is copied through.
pub struct RestrictedPool {
    pub name: &'static str,
    pub range: PhysRange,
    /// Whether every device using the pool snoops the CPU caches (the pool is then cached).
    pub coherent: bool,
    pub bounce: BouncePool<KernelMemory>,
}

impl RestrictedPool {
    fn dma_range(&self) -> (DmaAddr, u64) {
        (self.bounce.geometry().dma_base, self.range.size())
    }
}

/// How a device's transfers reach memory.
pub enum Route {
    /// Through its bus windows (`dma-ranges`), on the caller's buffer itself.
    Direct(DmaDescription<'static>),
    /// Copied through the device's restricted pool.
    Restricted(&'static RestrictedPool),
}

/// Why the DMA layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaApiError {
    /// The pool refused (no room, masks, bad address...).
    Pool(DmaError),
    /// A direct device cannot reach this buffer through its bus windows.
    Unreachable {
        buffer: PhysRange,
    },
    /// A sync of bytes outside the mapping.
    OutsideMapping {
        offset: u64,
        size: u64,
        mapping_size: u64,
    },
    /// The buffer is not in memory the kernel maps, or not physically contiguous.
    NotRam {
        address: VirtAddr,
        size: usize,
    },
    /// Coherent memory for a direct device that does not snoop the caches would need an uncached
    /// alias of heap memory; give the device a restricted pool or `dma-coherent` instead.
    NoCoherentMemory,
    OutOfMemory {
        size: usize,
    },
}

impl From<DmaError> for DmaApiError {
    fn from(error: DmaError) -> Self {
        DmaApiError::Pool(error)
    }
}

impl fmt::Display for DmaApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaApiError::Pool(error) => write!(f, "{error}"),
            DmaApiError::Unreachable { buffer } => write!(f, "buffer {buffer} is outside the device's DMA windows"),
            DmaApiError::OutsideMapping { offset, size, mapping_size } => {
                write!(f, "{size} bytes at offset {offset} are outside a {mapping_size}-byte mapping")
            }
            DmaApiError::NotRam { address, size } => {
                write!(f, "{size} bytes at {address:?} are not contiguous RAM the kernel maps")
            }
            DmaApiError::NoCoherentMemory => write!(f, "no coherent memory for a non-coherent direct device"),
            DmaApiError::OutOfMemory { size } => write!(f, "no memory for {size} coherent bytes"),
        }
    }
}

/// What the audit saw for one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// DMA addresses handed to the device.
    pub addresses: u64,
    /// Of those, how many lay outside the device's restricted pool.
    pub violations: u64,
}

#[derive(Default)]
struct Audit {
    addresses: AtomicU64,
    violations: AtomicU64,
}

/// Coherent memory: where the CPU and the device each see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoherentMemory {
    pub virt: VirtAddr,
    pub dma: DmaAddr,
    pub size: usize,
}

/// One device's door to memory.
pub struct DmaDevice {
    pub name: &'static str,
    pub route: Route,
    /// Whether the device snoops the CPU caches (`dma-coherent`).
    pub coherent: bool,
    /// Masks the device imposes on every streaming mapping.
    pub constraints: Constraints,
    memory: &'static KernelMemory,
    audit: Audit,
}

impl DmaDevice {
    pub fn new(
        name: &'static str,
        route: Route,
        coherent: bool,
        constraints: Constraints,
        memory: &'static KernelMemory,
    ) -> Self {
        Self { name, route, coherent, constraints, memory, audit: Audit::default() }
    }

    /// The physical range behind a kernel virtual buffer, if it is contiguous RAM.
    pub fn physical(&self, address: VirtAddr, size: usize) -> Result<PhysRange, DmaApiError> {
        let not_ram = DmaApiError::NotRam { address, size };
        let start = arch::mmu::walk(address).ok_or(not_ram)?.output;
        let last = address.checked_add(size.saturating_sub(1) as u64).ok_or(not_ram)?;
        let end = arch::mmu::walk(last).ok_or(not_ram)?.output;
        let range = PhysRange::new(start, size as u64).ok_or(not_ram)?;
        let contiguous = end.offset_from(start) == Some(size.saturating_sub(1) as u64);
        let mapped_back = self.memory.virt(range).is_some();
        if contiguous && mapped_back {
            Ok(range)
        } else {
            Err(not_ram)
        }
    }

    /// Lends `buffer` to the device for one transfer; returns the address to give it.
    pub fn map(&self, buffer: PhysRange, direction: DmaDirection) -> Result<DmaAddr, DmaApiError> {
        let dma = match &self.route {
            Route::Restricted(pool) => {
                pool.bounce.map(buffer.start(), buffer.size() as usize, direction, &self.constraints)?.dma
            }
            Route::Direct(description) => {
                let dma = self.direct_address(description, buffer)?;
                self.for_device(buffer);
                dma
            }
        };
        self.audit(dma, buffer.size());
        Ok(dma)
    }

    /// Ends a streaming mapping; for transfers from the device, the CPU sees its writes after.
    pub fn unmap(&self, dma: DmaAddr, buffer: PhysRange, direction: DmaDirection) -> Result<(), DmaApiError> {
        match &self.route {
            Route::Restricted(pool) => pool.bounce.unmap(dma, buffer.size() as usize)?,
            Route::Direct(_) if direction != DmaDirection::ToDevice => self.for_cpu(buffer),
            Route::Direct(_) => {}
        }
        Ok(())
    }

    /// Makes the device's writes to `[dma, dma + size)` of a live mapping visible to the CPU.
    pub fn sync_for_cpu(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        match &self.route {
            Route::Restricted(pool) => pool.bounce.sync_for_cpu(dma, buffer.size() as usize)?,
            Route::Direct(_) => self.for_cpu(buffer),
        }
        Ok(())
    }

    /// Makes the CPU's writes to a live mapping visible to the device.
    pub fn sync_for_device(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        match &self.route {
            Route::Restricted(pool) => pool.bounce.sync_for_device(dma, buffer.size() as usize)?,
            Route::Direct(_) => self.for_device(buffer),
        }
        Ok(())
    }

    /// Zeroed memory the CPU and the device share without syncs, page-aligned.
    pub fn alloc_coherent(&self, size: usize) -> Result<CoherentMemory, DmaApiError> {
        let memory = match &self.route {
            Route::Restricted(pool) => {
                let buffer = pool.bounce.alloc(size, u64::MAX)?;
                CoherentMemory { virt: buffer.virt, dma: buffer.dma, size: buffer.size }
            }
            Route::Direct(_) if !self.coherent => return Err(DmaApiError::NoCoherentMemory),
            Route::Direct(description) => {
                let layout =
                    core::alloc::Layout::from_size_align(size, 4096).map_err(|_| DmaApiError::OutOfMemory { size })?;
                // SAFETY: a non-zero-sized layout; freed in `free_coherent` with the same layout.
                let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
                let virt = VirtAddr::from_ptr(pointer);
                if pointer.is_null() {
                    return Err(DmaApiError::OutOfMemory { size });
                }
                let physical = self.physical(virt, size)?;
                CoherentMemory { virt, dma: self.direct_address(description, physical)?, size }
            }
        };
        self.audit(memory.dma, memory.size as u64);
        Ok(memory)
    }

    /// Returns coherent memory from [`Self::alloc_coherent`].
    pub fn free_coherent(&self, memory: CoherentMemory) -> Result<(), DmaApiError> {
        match &self.route {
            Route::Restricted(pool) => pool.bounce.free(memory.dma, memory.size)?,
            Route::Direct(_) => {
                let layout = core::alloc::Layout::from_size_align(memory.size, 4096)
                    .map_err(|_| DmaApiError::OutOfMemory { size: memory.size })?;
                // SAFETY: allocated in `alloc_coherent` with this layout.
                unsafe { alloc::alloc::dealloc(memory.virt.as_mut_ptr(), layout) };
            }
        }
        Ok(())
    }

    pub fn audit_report(&self) -> AuditReport {
        AuditReport {
            addresses: self.audit.addresses.load(Ordering::Relaxed),
            violations: self.audit.violations.load(Ordering::Relaxed),
        }
    }

    fn direct_address(&self, description: &DmaDescription<'_>, buffer: PhysRange) -> Result<DmaAddr, DmaApiError> {
        let unreachable = DmaApiError::Unreachable { buffer };
        let dma = description.phys_to_dma(buffer.start()).ok_or(unreachable)?;
        let last = PhysAddr::new(buffer.end().as_u64().saturating_sub(1));
        let last_dma = description.phys_to_dma(last).ok_or(unreachable)?;
        let contiguous = last_dma.offset_from(dma) == Some(buffer.size().saturating_sub(1));
        if contiguous {
            Ok(dma)
        } else {
            Err(unreachable)
        }
    }

    fn for_device(&self, buffer: PhysRange) {
        if !self.coherent {
            if let Some(virt) = self.memory.virt(buffer) {
                arch::cache::clean_to_poc(virt.as_u64(), buffer.size());
            }
        }
    }

    fn for_cpu(&self, buffer: PhysRange) {
        if !self.coherent {
            if let Some(virt) = self.memory.virt(buffer) {
                arch::cache::clean_and_invalidate_to_poc(virt.as_u64(), buffer.size());
            }
        }
    }

    /// Records an address given to the device; a restricted device's must be in its pool.
    fn audit(&self, dma: DmaAddr, size: u64) {
        self.audit.addresses.fetch_add(1, Ordering::Relaxed);
        if let Route::Restricted(pool) = &self.route {
            let (base, pool_size) = pool.dma_range();
            let inside = dma.offset_from(base).is_some_and(|offset| offset + size <= pool_size);
            if !inside {
                self.audit.violations.fetch_add(1, Ordering::Relaxed);
                log::error!("DMA audit: {} was given {dma:?} (+{size}), outside pool {}", self.name, pool.name);
            }
        }
    }
}
