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
//!   `CMD_TLBI_NH_VA` (IHI 0070, 4.4.2.4) and a `CMD_SYNC` (4.7.3) waits for them all before
//!   the IOVA is reused or the memory returned (contract rule 14). The SMMU is locked only
//!   while the commands are queued, not while the SMMU works through them: another CPU's
//!   unmap queues its own commands meanwhile, and each waits for its own `CMD_SYNC` alone
//!   (Linux's `arm_smmu_cmdq_issue_cmdlist` goes further, without a lock at all).
//!   Past [`LEAVES_WORTH_ONE_BY_ONE`] leaves (a 1 MiB buffer is 256 of them at 4 KiB), one
//!   `CMD_TLBI_NH_ASID` replaces them: the SMMU then drops every cached translation of the
//!   domain, the live mappings' too, which only costs them a table walk on next use. Either way
//!   the unmap returns only once the `CMD_SYNC` completed: it stays strict.

use core::time::Duration;

use addr::PhysAddr;
use dma::platform::{Iotlb, IotlbError};
use drivers::smmuv3::{Smmu, SmmuError, SmmuMemory, SyncTicket, Wait};
use spin::Mutex;
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

/// How many leaf invalidations one unmap issues before one invalidation of the whole address
/// space is cheaper: each `CMD_TLBI_NH_VA` is a command the SMMU fetches and executes, and an
/// SMMU (QEMU's too) invalidates a whole ASID about as fast as one address.
pub const LEAVES_WORTH_ONE_BY_ONE: usize = 8;

/// How long a `CMD_SYNC` may take to be consumed before the SMMU counts as stuck.
const SYNC_TIMEOUT: Duration = Duration::from_millis(100);

/// The SMMU's TLB during one unmap: the leaves to invalidate, collected until the sync. Only
/// the first [`LEAVES_WORTH_ONE_BY_ONE`] addresses are kept: past them the whole ASID goes.
struct SmmuTlb<'a> {
    smmu: &'a Mutex<Smmu>,
    asid: u16,
    leaves: [u64; LEAVES_WORTH_ONE_BY_ONE],
    /// Invalidations asked for since the last sync, the ones not kept included.
    pending: usize,
    failure: Option<SmmuError>,
}

impl SmmuTlb<'_> {
    fn record(&mut self, result: Result<(), SmmuError>) {
        if let Err(error) = result {
            self.failure.get_or_insert(error);
        }
    }
}

impl TlbMaintenance for SmmuTlb<'_> {
    fn invalidate(&mut self, input: u64, _level: u32) {
        if let Some(kept) = self.leaves.get_mut(self.pending) {
            *kept = input;
        }
        self.pending += 1;
    }

    fn sync(&mut self) {
        let pending = core::mem::take(&mut self.pending);
        let (asid, leaves) = (self.asid, self.leaves);
        let queued = (|| {
            let mut smmu = self.smmu.lock();
            if pending > LEAVES_WORTH_ONE_BY_ONE {
                smmu.invalidate_asid(asid)?;
            } else {
                for &input in &leaves[..pending] {
                    smmu.invalidate_va(asid, input)?;
                }
            }
            let ticket = smmu.queue_sync()?;
            // An SMMU that is quick (QEMU's runs the commands inside the CMDQ_PROD write) is
            // done already: no second trip through the lock.
            Ok((!smmu.sync_completed(ticket)?).then_some(ticket))
        })();
        let result = queued.and_then(|waiting| waiting.map_or(Ok(()), |ticket| wait_for_sync(self.smmu, ticket)));
        self.record(result);
    }
}

/// Waits until the SMMU has consumed `ticket`'s `CMD_SYNC`, taking the lock only to look.
fn wait_for_sync(smmu: &Mutex<Smmu>, ticket: SyncTicket) -> Result<(), SmmuError> {
    let deadline = arch::timer::uptime() + SYNC_TIMEOUT;
    loop {
        if smmu.lock().sync_completed(ticket)? {
            return Ok(());
        }
        if arch::timer::uptime() > deadline {
            return Err(SmmuError::Timeout { what: Wait::CommandSync });
        }
        core::hint::spin_loop();
    }
}

impl Iotlb for SmmuIotlb {
    fn strictly<R>(&self, asid: u16, unmap: impl FnOnce(&mut dyn TlbMaintenance) -> R) -> Result<R, IotlbError> {
        let mut tlb =
            SmmuTlb { smmu: super::smmu(), asid, leaves: [0; LEAVES_WORTH_ONE_BY_ONE], pending: 0, failure: None };
        let result = unmap(&mut tlb);
        if tlb.pending > 0 {
            // Every unmap ends with a sync; should one not, its invalidations still happen here.
            tlb.sync();
        }
        match tlb.failure {
            None => Ok(result),
            Some(error) => {
                log::error!("iommu: invalidating ASID {asid}'s unmapped entries failed: {error}");
                Err(IotlbError { reason: reason(error) })
            }
        }
    }

    fn invalidate_all(&self, asid: u16) -> Result<(), IotlbError> {
        let mut smmu = super::smmu().lock();
        let done = smmu.invalidate_asid(asid).and_then(|()| smmu.sync());
        done.map_err(|error| {
            log::error!("iommu: invalidating ASID {asid} failed: {error}");
            IotlbError { reason: reason(error) }
        })
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
