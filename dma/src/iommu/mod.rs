//! An IOMMU domain: one device's private I/O address space.
//!
//! A domain is three things kept in step under one lock:
//!
//! ```text
//!   IovaAllocator          which IOVA ranges are in use        ([`iova`])
//!   PageTable              IOVA granule → physical granule     (vmsa, read by the IOMMU)
//!   mappings               what each live range is for         (this module)
//! ```
//!
//! A mapping always covers whole granules, because that is what a page table entry maps:
//! a buffer `[phys, phys + size)` gets the granules that enclose it, and the device is told
//! `IOVA base + (phys & (granule - 1))` — the buffer's offset inside its granule is kept
//! (Linux's `iova_offset`). Whatever else lies in those granules is exposed to the device
//! too; that is why untrusted devices bounce buffers that do not fill their granules
//! ([`crate::DmaDevice`]).
//!
//! Unmapping is strict: the entries are cleared, every cached translation of them is
//! invalidated (on the SMMUv3, `CMD_TLBI_NH_VA`) and the unmap waits for that to finish
//! (`CMD_SYNC`) before the IOVA is reused or the memory returned ([`Iotlb::strictly`]). Until
//! then the device could still reach the old page through a stale TLB entry (contract rule 14).
//!
//! A domain may instead defer its invalidations ([`Domain::deferring_invalidation`], Linux's
//! `iommu.strict=0`): an unmap clears the entries and keeps the IOVA range out of use, and one
//! invalidation of the whole address space, waited for, ends [`DEFERRED_UNMAPS`] of them at
//! once (or an IOVA allocation that finds no room). Until then the device may still reach
//! memory it was given before, through its TLB. That is a trade of isolation for speed, fit
//! only for a trusted device; rule 14 forbids it for an untrusted one.
//!
//! ## The MSI doorbell
//!
//! A PCIe function signals a message-signalled interrupt by *writing* its event number to an
//! address it was given; with a GICv3 that address is the ITS's `GITS_TRANSLATER` register. On
//! the bus this is a DMA write like any other: behind an SMMU it carries the function's
//! StreamID, and its address is an IOVA that the SMMU translates through the function's domain
//! (QEMU's `virt` and real hardware alike). So every domain of a device that uses MSIs must map
//! the doorbell, at an IOVA no buffer can ever be given: [`Domain::new`] reserves the window
//! `[MSI_IOVA_BASE, MSI_IOVA_BASE + MSI_IOVA_SIZE)` in the IOVA allocator (Linux's
//! `IOMMU_RESV_SW_MSI` region), and [`Domain::map_msi_doorbell`] maps the doorbell at its start
//! (Linux's `iommu_dma_prepare_msi`), as Device memory. An entry maps a whole granule, so the
//! device can reach the whole 4, 16 or 64 KiB around the register, and the IOVA keeps the
//! register's offset in it. On the ITS that exposes nothing else: `GITS_TRANSLATER` is the only
//! register of its 64 KiB translation frame. Without the mapping the SMMU faults the write
//! (`F_TRANSLATION`, an event on its queue), the ITS never sees it and no interrupt arrives;
//! [`Domain::unmap_msi_doorbell`] lets an isolation test show exactly that.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use addr::{DmaAddr, PhysAddr, PhysRange};
use spin::Mutex;
pub mod iova;

use iova::{IovaAllocator, IovaError};
use vmsa::{Access, Attributes, Granule, MemoryType, PageTable, TlbMaintenance};

use crate::platform::{Iotlb, IotlbError, Platform};

/// IOVA width of every domain: the SMMU walks 48-bit inputs (T0SZ = 16) like the CPU.
pub const INPUT_BITS: u32 = 48;

/// How many unmaps a deferring domain lets wait for one flush.
pub const DEFERRED_UNMAPS: usize = 32;

/// Start of the IOVA window every domain keeps for the MSI doorbell: Linux's arm-smmu-v3
/// `MSI_IOVA_BASE` (`drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c`), 64 KiB aligned, so the window
/// starts on a granule boundary at every granule.
pub const MSI_IOVA_BASE: u64 = 0x800_0000;

/// Size of the MSI window: Linux's arm-smmu-v3 `MSI_IOVA_LENGTH` (1 MiB). Only its first granule
/// is ever mapped; the rest is kept out of use as Linux keeps it.
pub const MSI_IOVA_SIZE: u64 = 0x10_0000;

/// What a live IOVA range was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A caller's buffer, lent in place.
    Buffer,
    /// A bounce buffer in a pool; `pool_dma` is the pool's own address of the copy.
    Bounce {
        /// The copy's address in the pool (what the pool's `unmap` takes).
        pool_dma: DmaAddr,
    },
    /// Coherent memory the domain's user allocated.
    Coherent,
}

/// One live mapping: `size` bytes of whole granules at `iova`; the mapped buffer (or scatter
/// list, in total) is `length` bytes and starts `offset` bytes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The first mapped granule.
    pub iova: DmaAddr,
    /// Bytes mapped: whole granules.
    pub size: u64,
    /// Where the buffer starts in the first granule.
    pub offset: u64,
    /// The buffer's length (a scatter list's total).
    pub length: u64,
    /// What the range was made for.
    pub origin: Origin,
    /// How many buffers share the range: more than one for a scatter list.
    pub segments: usize,
    /// Its entries were removed while the mapping stayed on record ([`Domain::revoke`]).
    pub revoked: bool,
}

impl Mapping {
    /// Whether `[dma, dma + size)` lies within the mapped bytes: the buffer itself, or for a
    /// scatter list (whose buffers sit in granules of their own) the mapped granules.
    fn contains(&self, dma: DmaAddr, size: u64) -> bool {
        let (start, end) = match self.segments {
            1 => (self.offset, self.offset + self.length),
            _ => (self.offset, self.size),
        };
        dma.offset_from(self.iova).is_some_and(|at| at >= start && at.checked_add(size).is_some_and(|last| last <= end))
    }
}

/// Why a domain refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainError {
    /// The IOVA allocator refused (no space, a bad free).
    Iova(IovaError),
    /// The page tables refused (no table memory, a range already mapped).
    Tables(vmsa::Error),
    /// The IOMMU did not confirm an invalidation: the range is kept out of use for good.
    Iotlb(IotlbError),
    /// A buffer of no bytes: mapping it would still expose a whole granule.
    EmptyBuffer,
    /// No live mapping of this kind starts at this address with this size.
    UnknownMapping {
        /// The address given.
        dma: DmaAddr,
        /// The size given.
        size: u64,
    },
    /// The granules around a buffer would run past the end of the address space.
    OutOfRange,
    /// The domain has no MSI window: its device cannot address all of it.
    NoMsiWindow {
        /// The end of the domain's IOVA space.
        space_end: DmaAddr,
    },
    /// The MSI window maps another doorbell already.
    MsiDoorbellTaken {
        /// The doorbell mapped.
        mapped: PhysAddr,
        /// The doorbell asked for.
        asked: PhysAddr,
        /// The IOVA the device writes for the mapped one.
        iova: DmaAddr,
    },
    /// No doorbell is mapped in the MSI window.
    MsiDoorbellNotMapped {
        /// The window's start.
        window: DmaAddr,
    },
    /// An unmap of the doorbell was not confirmed by the IOMMU: the window's translation may
    /// still be cached, so the window is never mapped again.
    MsiWindowRetired {
        /// The window's start.
        window: DmaAddr,
    },
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::Iova(error) => write!(f, "IOVA space: {error}"),
            DomainError::Tables(error) => write!(f, "IOMMU page tables: {error}"),
            DomainError::Iotlb(error) => write!(f, "{error}"),
            DomainError::EmptyBuffer => write!(f, "an empty buffer cannot be mapped"),
            DomainError::UnknownMapping { dma, size } => {
                write!(f, "no live IOMMU mapping of {size} bytes at {dma:?}")
            }
            DomainError::OutOfRange => write!(f, "the granules around the buffer run past the end of memory"),
            DomainError::NoMsiWindow { space_end } => write!(
                f,
                "no MSI window: the domain's IOVA space ends at {space_end}, short of the window \
                 [{MSI_IOVA_BASE:#x}, {:#x})",
                MSI_IOVA_BASE + MSI_IOVA_SIZE
            ),
            DomainError::MsiDoorbellTaken { mapped, asked, iova } => write!(
                f,
                "the MSI window already maps doorbell {mapped:?} (written at {iova:?}); \
                 doorbell {asked:?} needs it unmapped first"
            ),
            DomainError::MsiDoorbellNotMapped { window } => {
                write!(f, "no MSI doorbell is mapped in the window at {window:?}")
            }
            DomainError::MsiWindowRetired { window } => write!(
                f,
                "the MSI window at {window:?} is retired: the IOMMU did not confirm the invalidation \
                 of its doorbell, whose translation may still be cached"
            ),
        }
    }
}

struct State<P: Platform> {
    tables: PageTable<P::Tables>,
    iova: IovaAllocator,
    mappings: BTreeMap<u64, Mapping>,
    /// For a deferring domain, the IOVA ranges unmapped since the last flush: their entries
    /// are gone, their translations may still be cached, so they are not handed out again.
    deferred: Option<Vec<(DmaAddr, u64)>>,
    /// The MSI window, if the IOVA space holds it.
    msi: Option<MsiWindow>,
}

/// The reserved IOVA window of the MSI doorbell, and what it maps.
#[derive(Clone, Copy)]
struct MsiWindow {
    /// Its first granule: where the doorbell's granule is mapped.
    base: DmaAddr,
    /// The doorbell mapped there, as it was given (its offset in its granule included).
    doorbell: Option<PhysAddr>,
    /// An unconfirmed invalidation left it unusable for good.
    retired: bool,
}

/// One device's address space behind the IOMMU.
pub struct Domain<P: Platform> {
    /// Also the ASID its TLB entries are tagged with.
    pub id: u16,
    /// The StreamID of the device it serves.
    pub stream_id: u32,
    /// The page size of its tables.
    pub granule: Granule,
    state: Mutex<State<P>>,
    iotlb: P::Iotlb,
}

/// For entries no device was ever told about: nothing can cache them.
struct NeverUsed;

impl TlbMaintenance for NeverUsed {
    fn invalidate(&mut self, _input: u64, _level: u32) {}
    fn sync(&mut self) {}
}

/// The IOMMU's TLB as [`Iotlb::strictly`] lends it, for the page tables' unmap.
struct Lent<'a>(&'a mut dyn TlbMaintenance);

impl TlbMaintenance for Lent<'_> {
    fn invalidate(&mut self, input: u64, level: u32) {
        // Lesson `--break strict-invalidation`: the IOMMU keeps its cached translations.
        if !cfg!(feature = "break-strict-invalidation") {
            self.0.invalidate(input, level);
        }
    }

    fn sync(&mut self) {
        self.0.sync();
    }
}

impl<P: Platform> Domain<P> {
    /// An empty domain over `tables`: no IOVA mapped, so every access by its device faults.
    /// `dma_limit` is the highest IOVA the device can put on the bus.
    ///
    /// If the IOVA space holds the whole MSI window (`dma_limit` at or above
    /// `MSI_IOVA_BASE + MSI_IOVA_SIZE - 1`), the window is reserved: never handed out for a
    /// buffer, kept for [`Self::map_msi_doorbell`]. A device whose limit falls short of it has
    /// no window, and no doorbell can be mapped for it (its MSIs cannot be translated here).
    pub fn new(
        id: u16,
        stream_id: u32,
        granule: Granule,
        dma_limit: u64,
        tables: P::Tables,
        iotlb: P::Iotlb,
    ) -> Result<Self, DomainError> {
        let tables = PageTable::new(granule, INPUT_BITS, tables).map_err(DomainError::Tables)?;
        let end = dma_limit.min((1 << INPUT_BITS) - 1).saturating_add(1) & !(granule.size() - 1);
        // IOVA 0 is never handed out: a zero address in a descriptor is always a bug.
        let mut iova = IovaAllocator::new(granule.size(), DmaAddr::new(granule.size()), DmaAddr::new(end))
            .map_err(DomainError::Iova)?;
        let msi = (MSI_IOVA_BASE >= granule.size() && MSI_IOVA_BASE + MSI_IOVA_SIZE <= end).then(|| MsiWindow {
            base: DmaAddr::new(MSI_IOVA_BASE),
            doorbell: None,
            retired: false,
        });
        if let Some(window) = msi {
            iova.reserve(window.base, MSI_IOVA_SIZE).map_err(DomainError::Iova)?;
        }
        let state = State { tables, iova, mappings: BTreeMap::new(), deferred: None, msi };
        Ok(Self { id, stream_id, granule, state: Mutex::new(state), iotlb })
    }

    /// This domain, deferring its invalidations (see the module documentation). Only for a
    /// device that is trusted.
    pub fn deferring_invalidation(self) -> Self {
        self.state.lock().deferred = Some(Vec::new());
        self
    }

    /// Whether unmaps are deferred.
    pub fn defers_invalidation(&self) -> bool {
        self.state.lock().deferred.is_some()
    }

    /// How many unmaps wait for the next flush.
    pub fn deferred_unmaps(&self) -> usize {
        self.state.lock().deferred.as_ref().map_or(0, Vec::len)
    }

    /// Ends every deferred unmap: one invalidation of the whole address space, waited for, then
    /// the IOVA ranges are free again. Nothing to do for a strict domain.
    pub fn flush(&self) -> Result<(), DomainError> {
        self.flush_locked(&mut self.state.lock())
    }

    fn flush_locked(&self, state: &mut State<P>) -> Result<(), DomainError> {
        let Some(deferred) = state.deferred.as_mut().filter(|deferred| !deferred.is_empty()) else { return Ok(()) };
        let ranges = core::mem::take(deferred);
        self.iotlb.invalidate_all(self.id).map_err(DomainError::Iotlb)?;
        for (iova, size) in ranges {
            state.iova.free(iova, size).map_err(DomainError::Iova)?;
        }
        Ok(())
    }

    /// An IOVA range of `size`; a deferring domain flushes once if there is no room.
    fn allocate(&self, state: &mut State<P>, size: u64) -> Result<DmaAddr, DomainError> {
        match state.iova.allocate(size) {
            Err(_) if state.deferred.as_ref().is_some_and(|deferred| !deferred.is_empty()) => {
                self.flush_locked(state)?;
                state.iova.allocate(size).map_err(DomainError::Iova)
            }
            result => result.map_err(DomainError::Iova),
        }
    }

    /// Physical address of the root table: the context descriptor's TTB0.
    pub fn root(&self) -> PhysAddr {
        self.state.lock().tables.root()
    }

    /// The granule in bytes.
    pub fn granule_size(&self) -> u64 {
        self.granule.size()
    }

    /// Maps the granules enclosing `buffer`; returns the IOVA of its first byte.
    pub fn map(&self, buffer: PhysRange, access: Access, origin: Origin) -> Result<DmaAddr, DomainError> {
        Ok(self.map_segments(&[buffer], access, origin)?[0])
    }

    /// Maps a scatter list into one IOVA range: each buffer gets the granules that enclose it,
    /// one after the other, so each keeps its offset in its granule; buffers that end and start
    /// on granule boundaries come out contiguous. Returns the IOVA of each buffer's first byte;
    /// one record covers them all (unmapped with the first IOVA and the total length).
    pub fn map_segments(
        &self,
        buffers: &[PhysRange],
        access: Access,
        origin: Origin,
    ) -> Result<Vec<DmaAddr>, DomainError> {
        let granule = self.granule.size();
        if buffers.is_empty() || buffers.iter().any(PhysRange::is_empty) {
            return Err(DomainError::EmptyBuffer);
        }
        let spans: Vec<(PhysAddr, u64)> = buffers
            .iter()
            .map(|buffer| self.enclosing_granules(buffer))
            .collect::<Option<_>>()
            .ok_or(DomainError::OutOfRange)?;
        let size = spans.iter().map(|(_, span)| span).sum::<u64>();
        let mut state = self.state.lock();
        let iova = self.allocate(&mut state, size)?;
        let attributes = Attributes::new(MemoryType::Normal, access, false);
        let (mut at, mut addresses) = (iova.as_u64(), Vec::with_capacity(buffers.len()));
        for (buffer, &(physical, span)) in buffers.iter().zip(&spans) {
            if let Err(error) = state.tables.map(at, physical, span, attributes) {
                // A map that runs out of tables keeps what it wrote. Nothing of the range was
                // handed out yet, so no TLB can hold it: cleared without invalidation.
                Self::clear_unused(&mut state.tables, iova.as_u64(), at + span);
                let _ = state.iova.free(iova, size);
                return Err(DomainError::Tables(error));
            }
            addresses.push(DmaAddr::new(at + (buffer.start().as_u64() & (granule - 1))));
            at += span;
        }
        let offset = addresses[0].as_u64() - iova.as_u64();
        let length = buffers.iter().map(PhysRange::size).sum();
        let mapping = Mapping { iova, size, offset, length, origin, segments: buffers.len(), revoked: false };
        state.mappings.insert(iova.as_u64(), mapping);
        Ok(addresses)
    }

    /// Clears every leaf in `[start, end)`, one whole leaf at a time so that no block is split.
    fn clear_unused(tables: &mut PageTable<P::Tables>, start: u64, end: u64) {
        let mut at = start;
        while at < end {
            let mapped =
                tables.translate(at).map(|translation| 1u64 << tables.granule().level_shift(translation.level));
            let leaf = mapped.unwrap_or(tables.granule().size());
            let leaf_start = at & !(leaf - 1);
            if mapped.is_some() {
                let _ = tables.unmap(leaf_start, leaf, &mut NeverUsed);
            }
            at = leaf_start + leaf;
        }
    }

    /// The first granule and the granule-multiple size that enclose a non-empty `buffer`.
    fn enclosing_granules(&self, buffer: &PhysRange) -> Option<(PhysAddr, u64)> {
        let mask = self.granule.size() - 1;
        let first = buffer.start().align_down(self.granule.size());
        let end = buffer.end().as_u64().checked_add(mask)? & !mask;
        Some((first, end - first.as_u64()))
    }

    /// The live mapping that holds `[dma, dma + size)`.
    pub fn lookup(&self, dma: DmaAddr, size: u64) -> Option<Mapping> {
        let state = self.state.lock();
        let (_, mapping) = state.mappings.range(..=dma.as_u64()).next_back()?;
        mapping.contains(dma, size).then_some(*mapping)
    }

    /// Ends the mapping `map` returned `dma` for (a buffer of `size` bytes), which must be
    /// coherent memory if `coherent` and a streaming mapping otherwise: clears its entries,
    /// invalidates them and waits (strict mode), then frees the IOVA range.
    pub fn unmap(&self, dma: DmaAddr, size: u64, coherent: bool) -> Result<Mapping, DomainError> {
        let mut state = self.state.lock();
        let unknown = DomainError::UnknownMapping { dma, size };
        let base = dma.as_u64() & !(self.granule.size() - 1);
        let mapping = *state.mappings.get(&base).ok_or(unknown)?;
        let same_kind = (mapping.origin == Origin::Coherent) == coherent;
        if dma != mapping.iova.add(mapping.offset) || size != mapping.length || !same_kind {
            return Err(unknown);
        }
        if state.deferred.is_some() && !mapping.revoked {
            // The entries go now; their invalidation, and the IOVA range, wait for the flush.
            let (start, size) = (mapping.iova.as_u64(), mapping.size);
            state.tables.unmap(start, size, &mut NeverUsed).map_err(DomainError::Tables)?;
            state.mappings.remove(&base);
            let deferred = state.deferred.get_or_insert_with(Vec::new);
            deferred.push((mapping.iova, mapping.size));
            if deferred.len() >= DEFERRED_UNMAPS {
                self.flush_locked(&mut state)?;
            }
            return Ok(mapping);
        }
        if !mapping.revoked {
            self.clear(&mut state, &mapping)?;
        }
        state.mappings.remove(&base);
        state.iova.free(mapping.iova, mapping.size).map_err(DomainError::Iova)?;
        Ok(mapping)
    }

    /// Removes the entries of the live mapping at `dma` (strictly invalidated) but keeps it on
    /// record, so that its owner still unmaps it: the device now faults on an IOVA its driver
    /// believes mapped — a use after unmap, made on purpose to show that the IOMMU refuses it.
    pub fn revoke(&self, dma: DmaAddr) -> Result<(), DomainError> {
        let mut state = self.state.lock();
        let base = dma.as_u64() & !(self.granule.size() - 1);
        let mapping = state.mappings.get(&base).copied().filter(|mapping| !mapping.revoked);
        let mapping = mapping.ok_or(DomainError::UnknownMapping { dma, size: 0 })?;
        self.clear(&mut state, &mapping)?;
        state.mappings.insert(base, Mapping { revoked: true, ..mapping });
        Ok(())
    }

    /// Clears a mapping's entries; returns once the IOMMU can no longer use them.
    fn clear(&self, state: &mut State<P>, mapping: &Mapping) -> Result<(), DomainError> {
        let tables = &mut state.tables;
        let cleared =
            self.iotlb.strictly(self.id, |tlb| tables.unmap(mapping.iova.as_u64(), mapping.size, &mut Lent(tlb)));
        match cleared {
            Ok(result) => result.map_err(DomainError::Tables),
            // The entries are gone but the IOMMU may still cache them: the IOVA range must
            // never be reused. It stays allocated, leaked on purpose.
            Err(error) => {
                state.mappings.remove(&mapping.iova.as_u64());
                Err(DomainError::Iotlb(error))
            }
        }
    }

    /// Maps the MSI doorbell `doorbell` (the ITS's `GITS_TRANSLATER`) at the start of the MSI
    /// window and returns the IOVA the device must write to raise an MSI: the window's start
    /// plus the doorbell's offset in its granule. The whole granule holding the doorbell is
    /// mapped, as Device memory, read-write and not executable: SMMU stage-1 permissions cannot
    /// say write-only (AP allows reads wherever it allows writes), so the device may also read
    /// the register. Mapping the same doorbell again returns the same IOVA and changes nothing.
    ///
    /// The doorbell is no buffer: it is not counted by [`Self::live_mappings`], and
    /// [`Self::lookup`] and [`Self::unmap`] refuse its IOVA like any unknown address; the table
    /// walks ([`Self::translate`], [`Self::walk`]) show it.
    ///
    /// Refused if the domain has no window ([`DomainError::NoMsiWindow`]), or if the window maps
    /// a different doorbell ([`DomainError::MsiDoorbellTaken`]).
    pub fn map_msi_doorbell(&self, doorbell: PhysAddr) -> Result<DmaAddr, DomainError> {
        let granule = self.granule.size();
        let mut state = self.state.lock();
        let mut window = Self::msi_window(&state)?;
        let iova = window.base.add(doorbell.as_u64() & (granule - 1));
        match window.doorbell {
            Some(mapped) if mapped == doorbell => return Ok(iova),
            Some(mapped) => {
                let iova = window.base.add(mapped.as_u64() & (granule - 1));
                return Err(DomainError::MsiDoorbellTaken { mapped, asked: doorbell, iova });
            }
            None => {}
        }
        let attributes = Attributes::new(MemoryType::Device, Access::ReadWrite, false);
        // One granule is one leaf: a map that runs out of tables has written no entry of it.
        let page = doorbell.align_down(granule);
        state.tables.map(window.base.as_u64(), page, granule, attributes).map_err(DomainError::Tables)?;
        window.doorbell = Some(doorbell);
        state.msi = Some(window);
        Ok(iova)
    }

    /// Removes the doorbell mapping strictly, as an unmap of a buffer in a strict domain (even
    /// in a deferring one): the entry is cleared, its cached translations invalidated, and the
    /// invalidation waited for. From then on the device's MSI writes fault (`F_TRANSLATION`)
    /// and raise no interrupt, until [`Self::map_msi_doorbell`] maps a doorbell again.
    ///
    /// Refused if the domain has no window, or no doorbell is mapped. If the IOMMU does not
    /// confirm the invalidation the window is retired: never mapped again.
    pub fn unmap_msi_doorbell(&self) -> Result<(), DomainError> {
        let granule = self.granule.size();
        let mut state = self.state.lock();
        let mut window = Self::msi_window(&state)?;
        if window.doorbell.is_none() {
            return Err(DomainError::MsiDoorbellNotMapped { window: window.base });
        }
        let tables = &mut state.tables;
        let cleared = self.iotlb.strictly(self.id, |tlb| tables.unmap(window.base.as_u64(), granule, &mut Lent(tlb)));
        let result = match cleared {
            Ok(result) => result.map_err(DomainError::Tables),
            Err(error) => {
                window.retired = true;
                Err(DomainError::Iotlb(error))
            }
        };
        if window.retired || result.is_ok() {
            window.doorbell = None;
        }
        state.msi = Some(window);
        result
    }

    /// The IOVA the device writes to raise an MSI, if a doorbell is mapped.
    pub fn msi_doorbell(&self) -> Option<DmaAddr> {
        let state = self.state.lock();
        let window = state.msi.filter(|window| !window.retired)?;
        window.doorbell.map(|doorbell| window.base.add(doorbell.as_u64() & (self.granule.size() - 1)))
    }

    /// The domain's usable MSI window.
    fn msi_window(state: &State<P>) -> Result<MsiWindow, DomainError> {
        match state.msi {
            None => Err(DomainError::NoMsiWindow { space_end: state.iova.space().1 }),
            Some(window) if window.retired => Err(DomainError::MsiWindowRetired { window: window.base }),
            Some(window) => Ok(window),
        }
    }

    /// Where the domain's tables send `iova`, read by walking them in software.
    pub fn translate(&self, iova: DmaAddr) -> Option<PhysAddr> {
        self.walk(iova).map(|(physical, _)| physical)
    }

    /// Where the domain's tables send `iova`, and what they allow the device to do there.
    pub fn walk(&self, iova: DmaAddr) -> Option<(PhysAddr, Access)> {
        let state = self.state.lock();
        state.tables.translate(iova.as_u64()).map(|translation| (translation.output, translation.attributes.access))
    }

    /// What the domain's tables allow at `iova` (memory type, access, execution), read by
    /// walking them in software.
    pub fn attributes(&self, iova: DmaAddr) -> Option<Attributes> {
        self.state.lock().tables.translate(iova.as_u64()).map(|translation| translation.attributes)
    }

    /// How many mappings are live (the MSI doorbell is not one).
    pub fn live_mappings(&self) -> usize {
        self.state.lock().mappings.len()
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests;
