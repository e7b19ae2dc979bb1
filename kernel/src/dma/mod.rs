//! The DMA API drivers use: one handle per device, whatever route its transfers take.
//!
//! A device does not use CPU addresses. What it needs, and what the kernel must do around each
//! transfer, depends on facts the devicetree states per device ([`platform::dma_config`]):
//!
//! ```text
//!                       ┌── direct ────────▶ DMA address = bus window(PA); caches cleaned
//!                       │                     and invalidated unless the device is coherent;
//!                       │   └ out of reach ─▶ a buffer the windows do not reach is copied
//!  driver ──DmaDevice───┤                     through the default pool, below the limit
//!   map(buffer, dir)    ├── restricted pool ─▶ the bytes are copied into the pool named by
//!                       │                      `memory-region` (force bounce, contract rule 12),
//!                       │                      the device gets the copy's DMA address
//!                       └── IOMMU ───────────▶ the granules around the buffer are mapped in
//!                                              the device's domain, the device gets an IOVA;
//!                                              an untrusted device's partial granules are
//!                                              bounced first ([`translated`])
//! ```
//!
//! - *Streaming* mappings lend an existing buffer to the device for one transfer: `map`
//!   before, `unmap` after, `sync_*` in between if the CPU looks at the buffer while mapped.
//!   [`Streaming`] carries the direction in its type, so a `sync_for_cpu` on a buffer the
//!   device only reads does not compile.
//! - *Coherent* memory is shared for a long time (virtqueues, control blocks): CPU and device
//!   see each other's writes without syncs. It comes from the device's pool; the pool is mapped
//!   uncached when its devices do not snoop the CPU caches, so that holds without maintenance.
//!
//! Every DMA address handed to a device is audited: for a restricted device it must lie inside
//! its pool, which is the whole point of the pool (a device restricted to it can be kept away
//! from everything else, by an IOMMU-less firewall or a hypervisor); for a direct device it
//! must lie inside its bus windows; for a translated device, inside one of its live mappings.

mod memory;
pub mod pools;
mod streaming;
mod translated;

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use swiotlb::{BouncePool, Constraints, DmaDirection, DmaError};
use platform::dma_config::DmaDescription;

use crate::iommu::{self, Domain, DomainError, Origin};

pub use memory::KernelMemory;
pub use streaming::{Bidirectional, FromDevice, Streaming, ToDevice};
pub use translated::Fault;

/// A DMA pool: reserved RAM that transfers are copied through, either a restricted pool
/// (every transfer of its devices) or the default pool (transfers a device cannot reach).
pub struct DmaPool {
    pub name: &'static str,
    /// Named by the devicetree (`restricted-dma-pool`), rather than the kernel's default pool.
    pub restricted: bool,
    pub range: PhysRange,
    /// Whether every device using the pool snoops the CPU caches (the pool is then cached).
    pub coherent: bool,
    pub bounce: BouncePool<KernelMemory>,
}

impl DmaPool {
    /// Whether `[dma, dma + size)` lies inside the pool.
    pub fn holds(&self, dma: DmaAddr, size: u64) -> bool {
        let base = self.bounce.geometry().dma_base;
        dma.offset_from(base).is_some_and(|offset| offset.checked_add(size).is_some_and(|end| end <= self.range.size()))
    }
}

/// How a device's transfers reach memory.
pub enum Route {
    /// Through its bus windows (`dma-ranges`), on the caller's buffer itself when the windows
    /// reach it, otherwise through `bounce` (the default pool), if it lies within reach.
    Direct { windows: DmaDescription<'static>, bounce: Option<&'static DmaPool> },
    /// Copied through the device's restricted pool.
    Restricted(&'static DmaPool),
    /// Translated by the IOMMU through the device's own domain. An untrusted device's buffers
    /// that do not fill whole granules are copied through `bounce` first (rule 10).
    Iommu { domain: &'static Domain, untrusted: bool, bounce: Option<&'static DmaPool> },
}

/// Why the DMA layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaApiError {
    /// The pool refused (no room, masks, bad address...).
    Pool(DmaError),
    /// A direct device cannot reach this buffer through its bus windows, and no pool within
    /// its reach can bounce it.
    Unreachable {
        buffer: PhysRange,
        /// One past the highest physical address the device reaches.
        limit: Option<PhysAddr>,
        /// The default pool, if there is one: out of the device's reach too.
        pool: Option<PhysRange>,
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
    /// alias of heap memory; it needs an uncached pool in reach, or `dma-coherent`.
    NoCoherentMemory,
    OutOfMemory {
        size: usize,
    },
    /// The IOMMU refused (no IOVA space, unknown mapping, SMMU error...).
    Iommu(DomainError),
    /// An untrusted device's buffer does not fill its granules and there is no pool to
    /// bounce it through.
    NoBouncePool,
}

impl From<DomainError> for DmaApiError {
    fn from(error: DomainError) -> Self {
        DmaApiError::Iommu(error)
    }
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
            DmaApiError::Unreachable { buffer, limit, pool } => {
                write!(f, "buffer {buffer} is outside the device's DMA windows")?;
                if let Some(limit) = limit {
                    write!(f, " (it reaches below {limit:?} only)")?;
                }
                match pool {
                    Some(pool) => write!(f, ", and so is the default bounce pool {pool}"),
                    None => write!(f, ", and there is no bounce pool"),
                }
            }
            DmaApiError::OutsideMapping { offset, size, mapping_size } => {
                write!(f, "{size} bytes at offset {offset} are outside a {mapping_size}-byte mapping")
            }
            DmaApiError::NotRam { address, size } => {
                write!(f, "{size} bytes at {address:?} are not contiguous RAM the kernel maps")
            }
            DmaApiError::NoCoherentMemory => {
                write!(f, "no coherent memory: the device does not snoop the caches and has no uncached pool in reach")
            }
            DmaApiError::OutOfMemory { size } => write!(f, "no memory for {size} coherent bytes"),
            DmaApiError::Iommu(error) => write!(f, "{error}"),
            DmaApiError::NoBouncePool => {
                write!(f, "an untrusted device's buffer does not fill its IOMMU granules, and there is no bounce pool")
            }
        }
    }
}

/// What the audit saw for one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// DMA addresses handed to the device.
    pub addresses: u64,
    /// Of those, how many lay outside what the route allows (pool, windows, live mappings).
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
    injection: spin::Mutex<Option<translated::Injection>>,
}

impl DmaDevice {
    pub fn new(
        name: &'static str,
        route: Route,
        coherent: bool,
        constraints: Constraints,
        memory: &'static KernelMemory,
    ) -> Self {
        let injection = spin::Mutex::new(None);
        Self { name, route, coherent, constraints, memory, audit: Audit::default(), injection }
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
            Route::Direct { windows, bounce } => match self.direct_address(windows, buffer) {
                Some(dma) => {
                    self.for_device(buffer);
                    dma
                }
                None => {
                    let pool = self.reachable_bounce_pool(windows, *bounce, buffer)?;
                    pool.bounce.map(buffer.start(), buffer.size() as usize, direction, &self.constraints)?.dma
                }
            },
            Route::Iommu { domain, untrusted, bounce } => {
                self.map_translated(domain, *untrusted, *bounce, buffer, direction)?
            }
        };
        self.audit(dma, buffer.size());
        Ok(dma)
    }

    /// Ends a streaming mapping; for transfers from the device, the CPU sees its writes after.
    pub fn unmap(&self, dma: DmaAddr, buffer: PhysRange, direction: DmaDirection) -> Result<(), DmaApiError> {
        if let Route::Iommu { domain, bounce, .. } = &self.route {
            return self.unmap_translated(domain, *bounce, dma, buffer, direction);
        }
        match self.bounced_through(dma, buffer.size()) {
            Some(pool) => pool.bounce.unmap(dma, buffer.size() as usize)?,
            None if direction != DmaDirection::ToDevice => self.for_cpu(buffer),
            None => {}
        }
        Ok(())
    }

    /// Lends a scatter list for one transfer; returns each buffer's DMA address. Behind the
    /// IOMMU a trusted device gets one IOVA range for the whole list, each buffer keeping its
    /// offset in its granule (contract R12); every other route maps buffer by buffer.
    pub fn map_scatter(&self, buffers: &[PhysRange], direction: DmaDirection) -> Result<Vec<DmaAddr>, DmaApiError> {
        if let Route::Iommu { domain, untrusted: false, .. } = &self.route {
            buffers.iter().for_each(|buffer| self.for_device(*buffer));
            let addresses = domain.map_segments(buffers, translated::access(direction), Origin::Buffer)?;
            for (dma, buffer) in addresses.iter().zip(buffers) {
                self.audit(*dma, buffer.size());
            }
            return Ok(addresses);
        }
        let mut addresses = Vec::with_capacity(buffers.len());
        for buffer in buffers {
            match self.map(*buffer, direction) {
                Ok(dma) => addresses.push(dma),
                Err(error) => {
                    for (dma, mapped) in addresses.iter().zip(buffers) {
                        self.unmap(*dma, *mapped, direction)?;
                    }
                    return Err(error);
                }
            }
        }
        Ok(addresses)
    }

    /// Ends a mapping [`Self::map_scatter`] made; `addresses` are what it returned.
    pub fn unmap_scatter(
        &self,
        addresses: &[DmaAddr],
        buffers: &[PhysRange],
        direction: DmaDirection,
    ) -> Result<(), DmaApiError> {
        if let (Route::Iommu { domain, untrusted: false, .. }, Some(&first)) = (&self.route, addresses.first()) {
            iommu::unmap(domain, first, buffers.iter().map(PhysRange::size).sum(), false)?;
            if direction != DmaDirection::ToDevice {
                buffers.iter().for_each(|buffer| self.for_cpu(*buffer));
            }
            return Ok(());
        }
        for (dma, buffer) in addresses.iter().zip(buffers) {
            self.unmap(*dma, *buffer, direction)?;
        }
        Ok(())
    }

    /// Makes the device's writes to `[dma, dma + size)` of a live mapping visible to the CPU.
    pub fn sync_for_cpu(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        if let Route::Iommu { domain, bounce, .. } = &self.route {
            match Self::translated_bounce(domain, *bounce, dma, buffer.size())? {
                Some((pool, pool_dma)) => pool.bounce.sync_for_cpu(pool_dma, buffer.size() as usize)?,
                None => self.for_cpu(buffer),
            }
            return Ok(());
        }
        match self.bounced_through(dma, buffer.size()) {
            Some(pool) => pool.bounce.sync_for_cpu(dma, buffer.size() as usize)?,
            None => self.for_cpu(buffer),
        }
        Ok(())
    }

    /// Makes the CPU's writes to a live mapping visible to the device.
    pub fn sync_for_device(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        if let Route::Iommu { domain, bounce, .. } = &self.route {
            match Self::translated_bounce(domain, *bounce, dma, buffer.size())? {
                Some((pool, pool_dma)) => pool.bounce.sync_for_device(pool_dma, buffer.size() as usize)?,
                None => self.for_device(buffer),
            }
            return Ok(());
        }
        match self.bounced_through(dma, buffer.size()) {
            Some(pool) => pool.bounce.sync_for_device(dma, buffer.size() as usize)?,
            None => self.for_device(buffer),
        }
        Ok(())
    }

    /// Zeroed memory the CPU and the device share without syncs, page-aligned: from the
    /// heap for a coherent direct device that reaches it, otherwise from the device's pool.
    pub fn alloc_coherent(&self, size: usize) -> Result<CoherentMemory, DmaApiError> {
        let memory = match &self.route {
            Route::Restricted(pool) => Self::alloc_from_pool(pool, size)?,
            Route::Direct { windows, bounce } => match self.alloc_from_heap(windows, size) {
                Ok(memory) => memory,
                Err(refusal) => match bounce.filter(|pool| self.can_share(pool, windows)) {
                    Some(pool) => Self::alloc_from_pool(pool, size)?,
                    None => return Err(refusal),
                },
            },
            Route::Iommu { domain, .. } => self.alloc_translated(domain, size)?,
        };
        self.audit(memory.dma, memory.size as u64);
        Ok(memory)
    }

    /// Returns coherent memory from [`Self::alloc_coherent`].
    pub fn free_coherent(&self, memory: CoherentMemory) -> Result<(), DmaApiError> {
        if let Route::Iommu { domain, .. } = &self.route {
            return self.free_translated(domain, memory);
        }
        match self.bounced_through(memory.dma, memory.size as u64) {
            Some(pool) => pool.bounce.free(memory.dma, memory.size)?,
            None => {
                let layout = Self::heap_layout(memory.size)?;
                // SAFETY: allocated in `alloc_from_heap` with this layout.
                unsafe { alloc::alloc::dealloc(memory.virt.as_mut_ptr(), layout) };
            }
        }
        Ok(())
    }

    /// The pool this device's transfers bounce through: every one (restricted), or those it
    /// cannot reach in place (direct).
    pub fn bounce_pool(&self) -> Option<&'static DmaPool> {
        match &self.route {
            Route::Restricted(pool) => Some(pool),
            Route::Direct { bounce, .. } | Route::Iommu { bounce, .. } => *bounce,
        }
    }

    /// The largest streaming mapping that always succeeds (contract rule 7): the bounce
    /// pool's, under this device's masks, for a device whose buffers may be bounced; `None`
    /// when nothing but memory limits a mapping.
    pub fn max_mapping_size(&self) -> Result<Option<usize>, DmaApiError> {
        let (pool, constraints) = match &self.route {
            Route::Restricted(pool) => (*pool, self.constraints),
            Route::Direct { bounce: Some(pool), .. } => (*pool, self.constraints),
            Route::Iommu { domain, untrusted: true, bounce: Some(pool) } => {
                (*pool, self.constraints.with_alloc_align_mask(domain.granule_size() - 1))
            }
            Route::Direct { bounce: None, .. } | Route::Iommu { .. } => return Ok(None),
        };
        Ok(Some(pool.bounce.max_mapping_size(&constraints)?))
    }

    /// The physical address the device reaches at `dma` now: through its live IOMMU mapping,
    /// its restricted pool, or its bus windows. What a device was given, shown as memory.
    pub fn translate(&self, dma: DmaAddr) -> Option<PhysAddr> {
        match &self.route {
            Route::Iommu { domain, .. } => domain.translate(dma),
            Route::Restricted(pool) => {
                let offset = dma.offset_from(pool.bounce.geometry().dma_base)?;
                (offset < pool.range.size()).then(|| pool.range.start().add(offset))
            }
            Route::Direct { windows, .. } => windows.dma_to_phys(dma),
        }
    }

    pub fn audit_report(&self) -> AuditReport {
        AuditReport {
            addresses: self.audit.addresses.load(Ordering::Relaxed),
            violations: self.audit.violations.load(Ordering::Relaxed),
        }
    }

    fn alloc_from_pool(pool: &DmaPool, size: usize) -> Result<CoherentMemory, DmaApiError> {
        let buffer = pool.bounce.alloc(size, u64::MAX)?;
        Ok(CoherentMemory { virt: buffer.virt, dma: buffer.dma, size: buffer.size })
    }

    /// Heap memory is mapped cached: shareable only with a device that snoops the caches.
    fn alloc_from_heap(&self, windows: &DmaDescription<'_>, size: usize) -> Result<CoherentMemory, DmaApiError> {
        if !self.coherent {
            return Err(DmaApiError::NoCoherentMemory);
        }
        let layout = Self::heap_layout(size)?;
        // SAFETY: a non-zero-sized layout; freed in `free_coherent` with the same layout.
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            return Err(DmaApiError::OutOfMemory { size });
        }
        let virt = VirtAddr::from_ptr(pointer);
        let placed = self.physical(virt, size).and_then(|buffer| {
            let unreachable = DmaApiError::Unreachable { buffer, limit: windows.limit(), pool: None };
            self.direct_address(windows, buffer).ok_or(unreachable)
        });
        if placed.is_err() {
            // SAFETY: allocated just above with this layout, and not handed out.
            unsafe { alloc::alloc::dealloc(pointer, layout) };
        }
        Ok(CoherentMemory { virt, dma: placed?, size })
    }

    fn heap_layout(size: usize) -> Result<core::alloc::Layout, DmaApiError> {
        core::alloc::Layout::from_size_align(size, 4096).map_err(|_| DmaApiError::OutOfMemory { size })
    }

    /// Whether coherent memory from `pool` is shared without maintenance with this device:
    /// it must be within reach, and uncached unless the device snoops the caches.
    fn can_share(&self, pool: &DmaPool, windows: &DmaDescription<'_>) -> bool {
        windows.reaches(pool.range) && (self.coherent || !pool.coherent)
    }

    /// The pool a mapping or allocation at `dma` went through, if it did not go direct.
    fn bounced_through(&self, dma: DmaAddr, size: u64) -> Option<&'static DmaPool> {
        match &self.route {
            Route::Restricted(pool) => Some(pool),
            Route::Direct { bounce, .. } => bounce.filter(|pool| pool.holds(dma, size)),
            Route::Iommu { .. } => None,
        }
    }

    /// The pool to bounce `buffer` through, which the device cannot reach in place.
    fn reachable_bounce_pool(
        &self,
        windows: &DmaDescription<'_>,
        bounce: Option<&'static DmaPool>,
        buffer: PhysRange,
    ) -> Result<&'static DmaPool, DmaApiError> {
        let unreachable =
            DmaApiError::Unreachable { buffer, limit: windows.limit(), pool: bounce.map(|pool| pool.range) };
        bounce.filter(|pool| windows.reaches(pool.range)).ok_or(unreachable)
    }

    /// `buffer`'s bus address, if one window reaches all of it and the device can address
    /// every byte of it (its DMA mask: Linux's `dma_capable` checks both).
    fn direct_address(&self, windows: &DmaDescription<'_>, buffer: PhysRange) -> Option<DmaAddr> {
        let dma = windows.phys_to_dma(buffer.start())?;
        let last = windows.phys_to_dma(PhysAddr::new(buffer.end().as_u64().saturating_sub(1)))?;
        let contiguous = last.offset_from(dma) == Some(buffer.size().saturating_sub(1));
        (contiguous && last.as_u64() <= self.constraints.dma_mask).then_some(dma)
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

    /// Records an address given to the device: a restricted device's must be in its pool, a
    /// direct device's inside its bus windows.
    fn audit(&self, dma: DmaAddr, size: u64) {
        self.audit.addresses.fetch_add(1, Ordering::Relaxed);
        let (inside, allowed) = match &self.route {
            Route::Restricted(pool) => (pool.holds(dma, size), pool.name),
            Route::Direct { windows, .. } => (Self::within_windows(windows, dma, size), "its bus windows"),
            Route::Iommu { domain, .. } => (domain.lookup(dma, size).is_some(), "its live IOMMU mappings"),
        };
        if !inside {
            self.audit.violations.fetch_add(1, Ordering::Relaxed);
            log::error!("DMA audit: {} was given {dma:?} (+{size}), outside {allowed}", self.name);
        }
    }

    fn within_windows(windows: &DmaDescription<'_>, dma: DmaAddr, size: u64) -> bool {
        let Some(start) = windows.dma_to_phys(dma) else { return false };
        let last = dma.checked_add(size.saturating_sub(1)).and_then(|last| windows.dma_to_phys(last));
        last.is_some_and(|last| last.offset_from(start) == Some(size.saturating_sub(1)))
    }
}
