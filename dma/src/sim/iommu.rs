//! The simulated IOMMU: page tables in the machine's RAM, walked like the SMMU walks them, and
//! a TLB that keeps translations until they are invalidated.
//!
//! The TLB is what makes strict unmap matter (contract rule 14): a device that used an IOVA
//! keeps reaching the old page through its cached translation until the unmap invalidates it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use addr::{DmaAddr, PhysAddr, PhysRange};
use vmsa::{Access, Granule, TableMemory, TlbMaintenance};

use super::Machine;
use crate::iommu::Domain;
use crate::platform::{Iotlb, IotlbError, Platform};

/// Why a simulated device's access did not reach memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusFault {
    /// Nothing maps the address for this device: no window, not in its pool, outside RAM.
    Unreachable {
        /// The address the device used.
        dma: DmaAddr,
    },
    /// The IOMMU has no translation for the IOVA (F_TRANSLATION).
    Translation {
        /// The IOVA.
        iova: DmaAddr,
    },
    /// The IOMMU maps the IOVA read-only and the device wrote (F_PERMISSION).
    Permission {
        /// The IOVA.
        iova: DmaAddr,
    },
}

impl fmt::Display for BusFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusFault::Unreachable { dma } => write!(f, "{dma:?} reaches no memory for this device"),
            BusFault::Translation { iova } => write!(f, "F_TRANSLATION at IOVA {iova:?}"),
            BusFault::Permission { iova } => write!(f, "F_PERMISSION at IOVA {iova:?}: a write to a read-only mapping"),
        }
    }
}

/// Cached translations: (ASID, IOVA of the granule) → (granule's physical address, access).
#[derive(Default)]
pub(super) struct Tlb {
    entries: BTreeMap<(u16, u64), (PhysAddr, Access)>,
}

/// Page tables of a simulated domain: granule-sized, from the machine's heap.
pub struct SimTables {
    machine: &'static Machine,
    granule: Granule,
}

impl SimTables {
    pub(super) fn new(machine: &'static Machine, granule: Granule) -> Self {
        Self { machine, granule }
    }
}

impl TableMemory for SimTables {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        let size = self.granule.size() as usize;
        let layout = core::alloc::Layout::from_size_align(size, size).ok()?;
        let pointer = self.machine.allocate_zeroed(layout)?;
        self.machine.physical(pointer, size).map(|range| range.start())
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        let size = self.granule.size();
        let range = PhysRange::new(table, size).expect("a table inside RAM");
        self.machine.cpu_pointer(range).expect("a table inside RAM").as_ptr().cast()
    }
}

/// The simulated IOMMU's TLB, for one domain's unmaps.
pub struct SimIotlb {
    machine: &'static Machine,
    granule: Granule,
}

impl SimIotlb {
    pub(super) fn new(machine: &'static Machine, granule: Granule) -> Self {
        Self { machine, granule }
    }
}

/// Invalidations of one unmap, as IOVA ranges, queued until the sync.
struct Invalidations {
    granule: Granule,
    queued: Vec<(u64, u64)>,
}

impl TlbMaintenance for Invalidations {
    fn invalidate(&mut self, input: u64, level: u32) {
        let span = 1u64 << self.granule.level_shift(level);
        self.queued.push((input & !(span - 1), span));
    }

    fn sync(&mut self) {}
}

impl Iotlb for SimIotlb {
    fn strictly<R>(&self, asid: u16, unmap: impl FnOnce(&mut dyn TlbMaintenance) -> R) -> Result<R, IotlbError> {
        let mut invalidations = Invalidations { granule: self.granule, queued: Vec::new() };
        let result = unmap(&mut invalidations);
        let tlb = &mut self.machine.inner.borrow_mut().tlb;
        for (start, span) in invalidations.queued {
            tlb.entries.retain(|&(entry_asid, page), _| entry_asid != asid || page < start || page >= start + span);
        }
        Ok(result)
    }

    fn invalidate_all(&self, asid: u16) -> Result<(), IotlbError> {
        self.machine.inner.borrow_mut().tlb.entries.retain(|&(entry_asid, _), _| entry_asid != asid);
        Ok(())
    }
}

impl Machine {
    /// The physical pieces of `[iova, iova + len)` through `domain`: the TLB first, then a
    /// table walk (whose result the TLB keeps).
    pub(super) fn translate_through(
        &self,
        domain: &Domain<Machine>,
        iova: DmaAddr,
        len: usize,
        write: bool,
    ) -> Result<Vec<(PhysAddr, usize)>, BusFault> {
        let granule = domain.granule_size();
        let mut pieces = Vec::new();
        let mut at = iova;
        let end = iova.as_u64() + len as u64;
        while at.as_u64() < end {
            let page = at.as_u64() & !(granule - 1);
            let cached = self.inner.borrow().tlb.entries.get(&(domain.id, page)).copied();
            let (physical, access) = match cached {
                Some(entry) => entry,
                None => {
                    let (physical, access) =
                        domain.walk(DmaAddr::new(page)).ok_or(BusFault::Translation { iova: at })?;
                    self.inner.borrow_mut().tlb.entries.insert((domain.id, page), (physical, access));
                    (physical, access)
                }
            };
            if write && access == Access::ReadOnly {
                return Err(BusFault::Permission { iova: at });
            }
            let offset = at.as_u64() - page;
            let chunk = (granule - offset).min(end - at.as_u64());
            pieces.push((physical.add(offset), chunk as usize));
            at = at.add(chunk);
        }
        Ok(pieces)
    }
}
