//! One device's door to memory: [`DmaDevice`], whatever route its transfers take.
//!
//! The calls here are the *raw* API, Linux's `dma_map_single` and friends: addresses in,
//! addresses out, and the caller promises to leave the buffer alone while the device owns it.
//! That promise cannot be checked by the compiler, so these calls are `unsafe`, and the debug
//! checker ([`crate::debug`]) watches them. Drivers whose buffers are Rust borrows use the
//! typed API instead ([`crate::Streaming`], [`crate::Coherent`]), built on these calls.
//!
//! What each route does around a transfer:
//!
//! | route | map | unmap (device wrote) |
//! |---|---|---|
//! | direct, in reach, device snoops | bus address of the buffer | nothing |
//! | direct, in reach, no snooping, buffer owns its cache lines | clean the buffer, bus address | invalidate the buffer |
//! | direct, buffer shares a cache line, no snooping (rule 13) | copy into the (uncached) default pool | copy back |
//! | direct, out of reach | copy into the default pool, below the limit | copy back |
//! | restricted pool | copy into the pool (rule 12) | copy back |
//! | IOMMU | map the enclosing granules; bounce first if untrusted and the buffer does not fill them (rule 10), or if it shares a cache line with a device that does not snoop | unmap strictly, then as above |

use alloc::vec::Vec;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use platform::dma_config::DmaDescription;
use spin::Mutex;
use swiotlb::{Constraints, DmaDirection};

use crate::debug::{Checker, SyncKind};
use crate::error::{DmaApiError, MapError};
use crate::iommu::Domain;
use crate::platform::{Maintenance, Platform};
use crate::pool::DmaPool;
use crate::trace::{self, Decision, Record, Tracer};
use crate::translated::Injection;

/// How a device's transfers reach memory.
pub enum Route<P: Platform + 'static> {
    /// Through its bus windows (`dma-ranges`), on the caller's buffer itself when the windows
    /// reach it, otherwise through `bounce` (the default pool), if it lies within reach.
    Direct {
        /// The device's view of memory, from the devicetree.
        windows: DmaDescription<'static>,
        /// The default pool, for what the windows do not reach or what shares a cache line.
        bounce: Option<&'static DmaPool<P>>,
    },
    /// Copied through the device's restricted pool.
    Restricted(&'static DmaPool<P>),
    /// Translated by the IOMMU through the device's own domain. An untrusted device's buffers
    /// that do not fill whole granules are copied through `bounce` first (rule 10).
    Iommu {
        /// The device's own address space.
        domain: &'static Domain<P>,
        /// Whether the device may see only its own bytes.
        untrusted: bool,
        /// The default pool.
        bounce: Option<&'static DmaPool<P>>,
    },
}

impl<P: Platform + 'static> Route<P> {
    /// The route's name: `direct`, `restricted` or `iommu`.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Direct { .. } => "direct",
            Route::Restricted(_) => "restricted",
            Route::Iommu { .. } => "iommu",
        }
    }
}

/// Where a mapping put a buffer: the address the device gets, why, and the bounce copy if the
/// buffer was not lent in place.
pub(crate) struct Placement {
    pub dma: DmaAddr,
    pub decision: Decision,
    pub copy: Option<trace::Copy>,
}

impl Placement {
    pub fn in_place(dma: DmaAddr, decision: Decision) -> Self {
        Self { dma, decision, copy: None }
    }

    pub fn copied<P: Platform>(pool: &DmaPool<P>, mapping: swiotlb::Mapping, decision: Decision) -> Self {
        Self { dma: mapping.dma, decision, copy: Some(trace::Copy { pool: pool.name, mapping }) }
    }
}

/// What ending a mapping did: the IOMMU's invalidation (behind one), and the pool its copy was
/// released to (if bounced).
pub(crate) type Ended = (Option<trace::Invalidation>, Option<&'static str>);

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

/// One device's door to memory.
///
/// Every DMA address it hands out is audited: for a restricted device it must lie inside its
/// pool, which is the whole point of the pool (a device restricted to it can be kept away from
/// everything else by an IOMMU-less firewall or a hypervisor); for a direct device it must lie
/// inside its bus windows; for a translated device, inside one of its live mappings.
pub struct DmaDevice<P: Platform + 'static> {
    /// The device's name, in every message about it.
    pub name: &'static str,
    /// How its transfers reach memory.
    pub route: Route<P>,
    /// Whether the device snoops the CPU caches (`dma-coherent`).
    pub coherent: bool,
    /// Masks the device imposes on every streaming mapping.
    pub constraints: Constraints,
    pub(crate) platform: &'static P,
    pub(crate) checker: Option<&'static Checker>,
    /// Where this device's decisions are traced, if it is traced.
    tracer: Option<&'static Tracer>,
    audit: Audit,
    pub(crate) injection: Mutex<Option<Injection>>,
}

impl<P: Platform + 'static> DmaDevice<P> {
    /// A device on `platform`; `checker` is the DMA debug checker, if it is on.
    pub fn new(
        name: &'static str,
        route: Route<P>,
        coherent: bool,
        constraints: Constraints,
        platform: &'static P,
        checker: Option<&'static Checker>,
    ) -> Self {
        let (audit, injection) = (Audit::default(), Mutex::new(None));
        Self { name, route, coherent, constraints, platform, checker, tracer: None, audit, injection }
    }

    /// This device, its decisions traced by `tracer` if the tracer selects it.
    pub fn with_tracer(mut self, tracer: Option<&'static Tracer>) -> Self {
        let trust = match &self.route {
            Route::Iommu { untrusted: true, .. } => Some("untrusted"),
            Route::Iommu { untrusted: false, .. } => Some("trusted"),
            _ => None,
        };
        self.tracer = tracer.filter(|tracer| tracer.selects(self.name, self.route.name(), trust));
        self
    }

    /// The physical range behind a CPU buffer, if it is contiguous RAM the kernel maps.
    pub fn physical(&self, address: VirtAddr, size: usize) -> Result<PhysRange, DmaApiError> {
        let not_ram = DmaApiError::NotRam { address, size };
        let pointer = NonNull::new(address.as_mut_ptr::<u8>()).ok_or(not_ram)?;
        self.platform.physical(pointer, size).ok_or(not_ram)
    }

    /// Lends `buffer` to the device for one transfer; returns the address to give it.
    ///
    /// # Safety
    ///
    /// Until the matching [`Self::unmap`], the device owns the buffer: the caller neither reads
    /// nor writes it (except through [`Self::sync_for_cpu`] / [`Self::sync_for_device`]), and
    /// keeps it allocated.
    #[track_caller]
    pub unsafe fn map(&self, buffer: PhysRange, direction: DmaDirection) -> Result<DmaAddr, MapError> {
        let location = Location::caller();
        self.map_at(buffer, direction, location).map_err(|error| self.refused(error, location))
    }

    /// Traces `record`, if this device is traced; `record` is built only then.
    pub(crate) fn trace(&self, record: impl FnOnce() -> Record) {
        if let Some(tracer) = self.tracer {
            tracer.emit(self.name, record());
        }
    }

    pub(crate) fn refused(&self, error: DmaApiError, location: &'static Location<'static>) -> MapError {
        MapError::new(error, self.checker, self.name, location)
    }

    fn map_at(
        &self,
        buffer: PhysRange,
        direction: DmaDirection,
        location: &'static Location<'static>,
    ) -> Result<DmaAddr, DmaApiError> {
        if let Some(checker) = self.checker {
            checker.check_memory(self.name, buffer, self.platform.memory_kind(buffer), location);
        }
        let placed = match &self.route {
            Route::Restricted(pool) => {
                let copy = Self::bounce(pool, buffer, direction, &self.constraints);
                copy.map(|copy| Placement::copied(pool, copy, Decision::Restricted))
            }
            Route::Direct { windows, bounce } => self.map_direct(windows, *bounce, buffer, direction),
            Route::Iommu { domain, untrusted, bounce } => {
                self.map_translated(domain, *untrusted, *bounce, buffer, direction)
            }
        };
        let placed = placed.inspect_err(|error| self.trace(|| Record::Refused { buffer, direction, error: *error }))?;
        self.audit(placed.dma, buffer.size());
        if let Some(checker) = self.checker {
            let lines = (placed.copy.is_none() && !self.coherent).then(|| self.platform.cache_line_size());
            checker.mapped(self.name, placed.dma, buffer, Some(direction), lines, location);
        }
        self.trace(|| self.map_record(buffer, direction, &placed));
        Ok(placed.dma)
    }

    /// The trace record of a mapping made.
    fn map_record(&self, buffer: PhysRange, direction: DmaDirection, placed: &Placement) -> Record {
        let translation = match &self.route {
            Route::Iommu { domain, .. } => domain
                .lookup(placed.dma, 1)
                .map(|mapping| trace::Translation { mapping, granule: domain.granule_size() }),
            _ => None,
        };
        let constraints = match (&self.route, placed.decision) {
            (Route::Iommu { domain, .. }, Decision::PartialGranule { .. } | Decision::SharesCacheLine { .. }) => {
                self.constraints.with_alloc_align_mask(domain.granule_size() - 1).with_dma_mask(u64::MAX)
            }
            _ => self.constraints,
        };
        let (decision, dma, copy) = (placed.decision, placed.dma, placed.copy);
        Record::Map { buffer, direction, decision, constraints, dma, copy, translation }
    }

    /// The direct route: in place when the windows reach the buffer and its cache lines are
    /// its own; otherwise through the default pool.
    fn map_direct(
        &self,
        windows: &DmaDescription<'_>,
        bounce: Option<&'static DmaPool<P>>,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<Placement, DmaApiError> {
        let (pool, decision) = match self.direct_address(windows, buffer) {
            Some(dma) if self.owns_its_lines(buffer) => {
                self.clean(buffer, Maintenance::MapClean);
                return Ok(Placement::in_place(dma, Decision::InReach));
            }
            Some(_) => {
                let line = self.platform.cache_line_size();
                let pool = bounce
                    .filter(|pool| windows.reaches(pool.range))
                    .ok_or(DmaApiError::SharesCacheLine { buffer, line })?;
                (pool, Decision::SharesCacheLine { line })
            }
            None => (self.reachable_bounce_pool(windows, bounce, buffer)?, Decision::OutOfReach),
        };
        let copy = Self::bounce(pool, buffer, direction, &self.constraints)?;
        Ok(Placement::copied(pool, copy, decision))
    }

    /// Copies `buffer` into `pool` under `constraints`; returns the copy as the pool made it.
    pub(crate) fn bounce(
        pool: &DmaPool<P>,
        buffer: PhysRange,
        direction: DmaDirection,
        constraints: &Constraints,
    ) -> Result<swiotlb::Mapping, DmaApiError> {
        Ok(pool.bounce.map(buffer.start(), buffer.size() as usize, direction, constraints)?)
    }

    /// Whether a transfer may use the buffer in place as far as caches go: the device snoops
    /// them, or no cache line of the buffer holds anything else (contract rule 13).
    pub(crate) fn owns_its_lines(&self, buffer: PhysRange) -> bool {
        let mask = self.platform.cache_line_size() as u64 - 1;
        // Lesson `--break cache-line`: every buffer is lent in place, shared lines or not.
        let aligned = (buffer.start().as_u64() | buffer.end().as_u64()) & mask == 0;
        self.coherent || aligned || cfg!(feature = "break-cache-line")
    }

    /// Ends a streaming mapping; for transfers from the device, the CPU sees its writes after.
    ///
    /// # Safety
    ///
    /// `dma`, `buffer` and `direction` are those of a live mapping [`Self::map`] made. (The
    /// debug checker reports any mismatch; without it a mismatch may copy bytes to the wrong
    /// place.)
    #[track_caller]
    pub unsafe fn unmap(&self, dma: DmaAddr, buffer: PhysRange, direction: DmaDirection) -> Result<(), DmaApiError> {
        if let Some(checker) = self.checker {
            checker.check_unmap(self.name, "unmap", dma, buffer.size(), Some(direction), Location::caller());
        }
        let ended = self.end_mapping(dma, buffer, direction);
        if let (Ok(_), Some(checker)) = (&ended, self.checker) {
            checker.unmapped(self.name, dma, Some(direction));
        }
        let (invalidation, pool) = ended?;
        self.trace(|| Record::Unmap { dma, size: buffer.size(), direction, invalidation, pool });
        Ok(())
    }

    /// Ends the mapping; returns what happened to the IOMMU's translations, and the pool its
    /// copy was released to.
    fn end_mapping(&self, dma: DmaAddr, buffer: PhysRange, direction: DmaDirection) -> Result<Ended, DmaApiError> {
        if let Route::Iommu { domain, bounce, .. } = &self.route {
            return self.unmap_translated(domain, *bounce, dma, buffer, direction);
        }
        match self.bounced_through(dma, buffer.size()) {
            Some(pool) => {
                pool.bounce.unmap(dma, buffer.size() as usize)?;
                return Ok((None, Some(pool.name)));
            }
            None if direction != DmaDirection::ToDevice => self.invalidate(buffer, Maintenance::UnmapInvalidate),
            None => {}
        }
        Ok((None, None))
    }

    /// Lends a scatter list for one transfer; returns each buffer's DMA address. Behind the
    /// IOMMU a trusted device gets one IOVA range for the whole list, each buffer keeping its
    /// offset in its granule (contract R12); every other route maps buffer by buffer. If one
    /// buffer is refused, those already mapped are unmapped (as far as that works: a failure
    /// there is logged) and the refusal is returned.
    ///
    /// # Safety
    ///
    /// As for [`Self::map`], for every buffer.
    #[track_caller]
    pub unsafe fn map_scatter(&self, buffers: &[PhysRange], direction: DmaDirection) -> Result<Vec<DmaAddr>, MapError> {
        let location = Location::caller();
        if let Route::Iommu { domain, untrusted: false, .. } = &self.route
            && buffers.iter().all(|buffer| self.owns_its_lines(*buffer))
        {
            return self
                .map_segments(domain, buffers, direction, location)
                .map_err(|error| self.refused(error, location));
        }
        let mut addresses = Vec::with_capacity(buffers.len());
        for buffer in buffers {
            match self.map_at(*buffer, direction, location) {
                Ok(dma) => addresses.push(dma),
                Err(error) => {
                    for (dma, mapped) in addresses.iter().zip(buffers) {
                        // SAFETY: mapped just above with these arguments, and not handed out.
                        if let Err(undo) = unsafe { self.unmap(*dma, *mapped, direction) } {
                            log::error!("{}: undoing {dma:?} of a refused scatter list failed: {undo}", self.name);
                        }
                    }
                    return Err(self.refused(error, location));
                }
            }
        }
        Ok(addresses)
    }

    /// Ends a mapping [`Self::map_scatter`] made; `addresses` are what it returned. Every buffer
    /// is unmapped even if one fails; the first failure is returned.
    ///
    /// # Safety
    ///
    /// As for [`Self::unmap`]: the arguments are those of a live scatter mapping.
    #[track_caller]
    pub unsafe fn unmap_scatter(
        &self,
        addresses: &[DmaAddr],
        buffers: &[PhysRange],
        direction: DmaDirection,
    ) -> Result<(), DmaApiError> {
        if let Route::Iommu { domain, untrusted: false, .. } = &self.route
            && let Some(&first) = addresses.first()
            && domain.lookup(first, 1).is_some_and(|mapping| mapping.segments == buffers.len() && buffers.len() > 1)
        {
            return self.unmap_segments(domain, addresses, buffers, direction, Location::caller());
        }
        let mut first_error = None;
        for (dma, buffer) in addresses.iter().zip(buffers) {
            // SAFETY: the caller's promise, buffer by buffer.
            if let Err(error) = unsafe { self.unmap(*dma, *buffer, direction) } {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes the device's writes to `buffer`, part of a live mapping at `dma`, visible to the
    /// CPU.
    ///
    /// # Safety
    ///
    /// `dma` and `buffer` lie within a live mapping of this device (a bounce copies into
    /// `buffer`).
    #[track_caller]
    pub unsafe fn sync_for_cpu(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        if let Some(checker) = self.checker {
            checker.synced(self.name, dma, buffer.size(), SyncKind::ForCpu, Location::caller());
        }
        match self.bounce_of(dma, buffer.size())? {
            Some((pool, pool_dma)) => pool.bounce.sync_for_cpu(pool_dma, buffer.size() as usize)?,
            None => self.invalidate(buffer, Maintenance::SyncForCpuInvalidate),
        }
        Ok(())
    }

    /// Makes the CPU's writes to `buffer`, part of a live mapping at `dma`, visible to the
    /// device.
    ///
    /// # Safety
    ///
    /// As for [`Self::sync_for_cpu`].
    #[track_caller]
    pub unsafe fn sync_for_device(&self, dma: DmaAddr, buffer: PhysRange) -> Result<(), DmaApiError> {
        if let Some(checker) = self.checker {
            checker.synced(self.name, dma, buffer.size(), SyncKind::ForDevice, Location::caller());
        }
        match self.bounce_of(dma, buffer.size())? {
            Some((pool, pool_dma)) => pool.bounce.sync_for_device(pool_dma, buffer.size() as usize)?,
            None => self.clean(buffer, Maintenance::SyncForDeviceClean),
        }
        Ok(())
    }

    /// For a sync of `[dma, dma + size)`: the pool and pool address of its copy, if bounced.
    fn bounce_of(&self, dma: DmaAddr, size: u64) -> Result<Option<(&'static DmaPool<P>, DmaAddr)>, DmaApiError> {
        match &self.route {
            Route::Iommu { domain, bounce, .. } => Self::translated_bounce(domain, *bounce, dma, size),
            _ => Ok(self.bounced_through(dma, size).map(|pool| (pool, dma))),
        }
    }

    /// The pool this device's transfers bounce through: every one (restricted), or those it
    /// cannot take in place (direct, IOMMU).
    pub fn bounce_pool(&self) -> Option<&'static DmaPool<P>> {
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
            Route::Iommu { domain, untrusted, bounce: Some(pool) } if *untrusted || !self.coherent => {
                (*pool, self.constraints.with_alloc_align_mask(domain.granule_size() - 1))
            }
            Route::Direct { bounce: None, .. } | Route::Iommu { .. } => return Ok(None),
        };
        Ok(Some(pool.bounce.max_mapping_size(&constraints)?))
    }

    /// The alignment at which a buffer is lent in place, never bounced: a buffer whose start
    /// and end are multiples of it maps in place, and so does every piece of it cut at such
    /// multiples. `None` when every buffer bounces (a restricted pool). A direct device must
    /// also reach the buffer through its windows, which this does not say.
    ///
    /// This is what lets a caller leave large aligned buffers whole: [`Self::max_mapping_size`]
    /// bounds only what bounces.
    pub fn in_place_alignment(&self) -> Option<u64> {
        let line = match self.coherent {
            true => 1,
            false => self.platform.cache_line_size() as u64,
        };
        match &self.route {
            Route::Restricted(_) => None,
            Route::Direct { .. } | Route::Iommu { untrusted: false, .. } => Some(line),
            Route::Iommu { domain, untrusted: true, .. } => Some(line.max(domain.granule_size())),
        }
    }

    /// Whether `buffer` would be lent in place (see [`Self::in_place_alignment`]).
    pub fn maps_in_place(&self, buffer: PhysRange) -> bool {
        let aligned = |alignment: u64| (buffer.start().as_u64() | buffer.end().as_u64()).is_multiple_of(alignment);
        let reached = match &self.route {
            Route::Direct { windows, .. } => self.direct_address(windows, buffer).is_some(),
            _ => true,
        };
        reached && self.in_place_alignment().is_some_and(aligned)
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

    /// What the audit has seen so far.
    pub fn audit_report(&self) -> AuditReport {
        AuditReport {
            addresses: self.audit.addresses.load(Ordering::Relaxed),
            violations: self.audit.violations.load(Ordering::Relaxed),
        }
    }

    /// The debug checker watching this device, if it is on.
    pub fn checker(&self) -> Option<&'static Checker> {
        self.checker
    }

    /// The device is stopped: the debug checker reports whatever it still holds as leaked.
    #[track_caller]
    pub fn stopped(&self) {
        if let Some(checker) = self.checker {
            checker.device_stopped(self.name);
        }
    }

    /// The pool a mapping or allocation at `dma` went through, if it did not go direct.
    pub(crate) fn bounced_through(&self, dma: DmaAddr, size: u64) -> Option<&'static DmaPool<P>> {
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
        bounce: Option<&'static DmaPool<P>>,
        buffer: PhysRange,
    ) -> Result<&'static DmaPool<P>, DmaApiError> {
        let unreachable =
            DmaApiError::Unreachable { buffer, limit: windows.limit(), pool: bounce.map(|pool| pool.range) };
        bounce.filter(|pool| windows.reaches(pool.range)).ok_or(unreachable)
    }

    /// `buffer`'s bus address, if one window reaches all of it and the device can address
    /// every byte of it (its DMA mask: Linux's `dma_capable` checks both).
    pub(crate) fn direct_address(&self, windows: &DmaDescription<'_>, buffer: PhysRange) -> Option<DmaAddr> {
        let dma = windows.phys_to_dma(buffer.start())?;
        let last = windows.phys_to_dma(PhysAddr::new(buffer.end().as_u64().saturating_sub(1)))?;
        let contiguous = last.offset_from(dma) == Some(buffer.size().saturating_sub(1));
        (contiguous && last.as_u64() <= self.constraints.dma_mask).then_some(dma)
    }

    /// Cleans `buffer` for a device that does not snoop the caches.
    pub(crate) fn clean(&self, buffer: PhysRange, why: Maintenance) {
        if !self.coherent {
            self.platform.clean(buffer, why);
        }
    }

    /// Invalidates `buffer` for a device that does not snoop the caches.
    pub(crate) fn invalidate(&self, buffer: PhysRange, why: Maintenance) {
        if !self.coherent {
            self.platform.invalidate(buffer, why);
        }
    }

    /// Records an address given to the device: a restricted device's must be in its pool, a
    /// direct device's inside its bus windows, a translated device's in a live mapping.
    pub(crate) fn audit(&self, dma: DmaAddr, size: u64) {
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
