//! Unmapping, in three passes, so that a refused request changes nothing.
//!
//! 1. *Check* that every granule of the range is mapped. A hole is an error
//!    ([`Error::NotMapped`]) before any entry is touched: a caller that unmaps what it never
//!    mapped has lost track of its mappings, and tearing down whatever lies around the hole
//!    would only spread the damage.
//! 2. *Split* the blocks that reach outside the range, with break-before-make (see the crate
//!    documentation). Blocks are aligned and never overlap, so only two can: the one holding
//!    the first address of the range and the one holding the last. A split changes no
//!    translation, only its granularity, so if table memory runs out half way the tree still
//!    maps exactly what it mapped before.
//! 3. *Clear* every block and page of the range, now all wholly inside it: write the entry
//!    invalid, ask for its invalidation, and finish with one `sync`.
//!
//! Every invalidation concerns a block or page entry, never a table entry: splits replace
//! blocks, and tables are never removed. So the last-level forms suffice: `TLBI VALE1IS`
//! on the CPU, `CMD_TLBI_NH_VA` with `Leaf = 1` on the SMMU (SMMUv3, IHI 0070, 4.4.2.4).

use addr::PhysAddr;

use crate::descriptor::Descriptor;
use crate::{Error, Leaf, PageTable, TableMemory};

/// The TLB maintenance of whoever walks the tables: a CPU's MMU or an SMMU.
///
/// For the CPU (Arm ARM DDI 0487, "TLB maintenance instructions"): `invalidate` is
/// `DSB ISHST` (the walker must see the invalid entry before the TLB forgets the old one),
/// then `TLBI VALE1IS` with the address (and ASID); `sync` is `DSB ISH; ISB`. For an SMMU:
/// `invalidate` queues `CMD_TLBI_NH_VA` (4.4.2.4), whose `TTL` hint may carry `level`
/// (4.4.1.1), and `sync` issues `CMD_SYNC` and waits for its completion (4.7.3). The barrier
/// before the queue's `PROD` write (3.21.2) also makes the table writes visible to the SMMU,
/// if its table walks are coherent; if not, the caller must clean them to memory first.
pub trait TlbMaintenance {
    /// The entry that translated `input` at `level` was removed or replaced: drop any cached
    /// translation of it (may be queued).
    fn invalidate(&mut self, input: u64, level: u32);
    /// Wait until every invalidation issued so far has completed.
    fn sync(&mut self);
}

impl<M: TableMemory> PageTable<M> {
    /// Removes the mapping of `[input, input + size)`, which must be wholly mapped, and has
    /// `tlb` invalidate every removed entry before returning (strict mode).
    ///
    /// A block that reaches outside the range is split, with break-before-make, into a
    /// table that keeps mapping the rest; while it is being split, the whole block is
    /// briefly unmapped. Tables the unmap leaves empty stay in place: mapping the range
    /// again works, but with pages where a split block used to be.
    ///
    /// Errors change nothing: a misaligned or out-of-range request, or a range with an
    /// unmapped hole, is refused before any entry is written. If table memory runs out
    /// while splitting, nothing is unmapped, though blocks split so far stay split.
    pub fn unmap(&mut self, input: u64, size: u64, tlb: &mut impl TlbMaintenance) -> Result<(), Error> {
        let granule = self.granule.size();
        if (input | size) & (granule - 1) != 0 {
            return Err(Error::MisalignedUnmap { input, size, granule });
        }
        if size == 0 {
            return Ok(());
        }
        self.check_range(input, size)?;
        self.check_mapped(input, size)?;
        self.split_around(input, tlb)?;
        // The first address after the range, unless the range ends the address space.
        if let Some(end) = input.checked_add(size) {
            self.split_around(end, tlb)?;
        }
        self.clear(input, size, tlb);
        tlb.sync();
        Ok(())
    }

    fn check_mapped(&self, input: u64, size: u64) -> Result<(), Error> {
        let mut done = 0;
        while done < size {
            let at = input + done;
            let run = self.leaf_run(at, size - done).ok_or(Error::NotMapped { input: at })?;
            let span = self.entry_span(run.level);
            // Skip to the end of the run's last block or page.
            done += run.count * span - (at & (span - 1));
        }
        Ok(())
    }

    /// Splits the block around `boundary`, and then the smaller block around it, until
    /// `boundary` is the first address of a block or page (or nothing maps it).
    fn split_around(&mut self, boundary: u64, tlb: &mut impl TlbMaintenance) -> Result<(), Error> {
        while let Some(leaf) = self.leaf(boundary) {
            let span = self.entry_span(leaf.level);
            if boundary & (span - 1) == 0 {
                break;
            }
            self.split(leaf, boundary & !(span - 1), tlb)?;
        }
        Ok(())
    }

    /// Replaces `block`, which translates from `block_input` on, by a table of next-level
    /// entries with the same output addresses and attributes: break-before-make.
    fn split(&mut self, block: Leaf, block_input: u64, tlb: &mut impl TlbMaintenance) -> Result<(), Error> {
        let table = self.memory.allocate_table().ok_or(Error::OutOfTables)?;
        self.fill_with_parts(table, block.descriptor, block.level + 1);
        // Break.
        // SAFETY: `block.entry` points into a table owned by this tree.
        unsafe { block.entry.write_volatile(Descriptor::INVALID.bits()) };
        tlb.invalidate(block_input, block.level);
        tlb.sync();
        // Make, now that no TLB can hold the block.
        // SAFETY: as above.
        unsafe { block.entry.write_volatile(Descriptor::table(table).bits()) };
        Ok(())
    }

    /// Fills the fresh `table` at `level` with the entries that together map `block`.
    fn fill_with_parts(&self, table: PhysAddr, block: Descriptor, level: u32) {
        let span = self.entry_span(level);
        let start = block.output_address(self.granule);
        let entries = self.memory.table_pointer(table);
        for index in 0..1u64 << self.granule.index_bits() {
            let part = block.part(start.add(index * span), level == 3);
            // SAFETY: `index` is below the number of entries in one table, which is ours.
            unsafe { entries.add(index as usize).write_volatile(part.bits()) };
        }
    }

    /// Invalidates every block and page of the range; after the splits, each starts inside it.
    /// Each walk clears a run of entries along one table.
    fn clear(&mut self, input: u64, size: u64, tlb: &mut impl TlbMaintenance) {
        let mut done = 0;
        while done < size {
            let run = self.leaf_run(input + done, size - done).expect("checked mapped, and splits keep it so");
            let span = self.entry_span(run.level);
            for index in 0..run.count {
                // SAFETY: the run's entries lie in one table owned by this tree.
                unsafe { run.first.add(index as usize).write_volatile(Descriptor::INVALID.bits()) };
                tlb.invalidate(input + done, run.level);
                done += span;
            }
        }
    }
}
