//! The kernel's side of an IOMMU domain: where its page tables live and how the SMMU's TLB is
//! told about an unmap.
//!
//! A domain (`dma::Domain`) keeps an IOVA allocator, its page tables and the record of each
//! live mapping in step; it is plain logic, tested on the host. What it needs from hardware is
//! two things, answered here:
//!
//! - [`DomainTables`]: memory for its page tables, one granule each, zeroed, from the heap,
//!   never freed (a domain lives as long as its device). The SMMU walks them coherently.
//! - [`SmmuIotlb`]: a strict unmap. The domain clears entries; each one is invalidated with
//!   `CMD_TLBI_NH_VA` (IHI 0070, 4.4.2.4) and a `CMD_SYNC` (4.7.3) waits for them all, with the
//!   SMMU locked throughout, before the IOVA is reused or the memory returned (contract rule 14).

use addr::PhysAddr;
use dma::platform::{Iotlb, IotlbError};
use drivers::smmuv3::{Smmu, SmmuError, SmmuMemory};
use vmsa::{Granule, TableMemory, TlbMaintenance};

/// Page tables of a domain: one granule each, zeroed, from the heap.
pub struct DomainTables {
    pub granule: Granule,
}

impl TableMemory for DomainTables {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        let size = self.granule.size() as usize;
        super::HeapForSmmu.allocate(size, size).map(|(_, table)| table)
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        arch::layout::phys_to_virt(table).as_mut_ptr()
    }
}

/// The SMMU's TLB, as a domain's unmap sees it.
pub struct SmmuIotlb;

/// The SMMU's TLB during one unmap: invalidations queued by address, one sync.
struct SmmuTlb<'a> {
    smmu: &'a mut Smmu,
    asid: u16,
    failure: Option<SmmuError>,
}

impl TlbMaintenance for SmmuTlb<'_> {
    fn invalidate(&mut self, input: u64, _level: u32) {
        if let Err(error) = self.smmu.invalidate_va(self.asid, input) {
            self.failure.get_or_insert(error);
        }
    }

    fn sync(&mut self) {
        if let Err(error) = self.smmu.sync() {
            self.failure.get_or_insert(error);
        }
    }
}

impl Iotlb for SmmuIotlb {
    fn strictly<R>(&self, asid: u16, unmap: impl FnOnce(&mut dyn TlbMaintenance) -> R) -> Result<R, IotlbError> {
        let mut smmu = super::smmu().lock();
        let mut tlb = SmmuTlb { smmu: &mut smmu, asid, failure: None };
        let result = unmap(&mut tlb);
        match tlb.failure {
            None => Ok(result),
            Some(error) => {
                log::error!("iommu: invalidating ASID {asid}'s unmapped entries failed: {error}");
                Err(IotlbError { reason: reason(error) })
            }
        }
    }
}

/// The class of an invalidation failure, for the error value (the log has every fact).
fn reason(error: SmmuError) -> &'static str {
    match error {
        SmmuError::Timeout { .. } => "the SMMU did not complete the invalidation in time",
        SmmuError::CommandError { .. } => "the SMMU refused an invalidation command",
        _ => "the SMMU failed during the invalidation",
    }
}
