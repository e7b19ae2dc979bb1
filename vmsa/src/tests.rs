extern crate std;

use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const RAM: Attributes = Attributes::new(MemoryType::Normal, Access::ReadWrite, false);
const CODE: Attributes = Attributes::new(MemoryType::Normal, Access::ReadOnly, true);
const MMIO: Attributes = Attributes::new(MemoryType::Device, Access::ReadWrite, false);
/// A buffer a device may read but not write, as an IOMMU domain maps it for `DMA_TO_DEVICE`.
const DEVICE_READS: Attributes = Attributes::new(MemoryType::Normal, Access::ReadOnly, false);
/// Where the fake tables live in the fake physical address space.
const TABLE_BASE: u64 = 0x8000_0000;
/// Each granule, and the size of its level-2 blocks.
const GRANULES: [(Granule, u64); 3] =
    [(Granule::Size4KiB, 2 * MIB), (Granule::Size16KiB, 32 * MIB), (Granule::Size64KiB, 512 * MIB)];

/// One table's entries: `Cell`s, because they are written through pointers that every
/// clone of [`HostTables`] hands out.
type HostTable = Box<[Cell<u64>]>;

/// Tables in host memory, at made-up physical addresses `TABLE_BASE + n * granule`.
/// Clones share the tables, so a test can walk a tree while `unmap` is changing it.
#[derive(Clone)]
struct HostTables {
    granule: Granule,
    tables: Rc<RefCell<Vec<HostTable>>>,
    limit: usize,
}

impl HostTables {
    fn new(granule: Granule, limit: usize) -> Self {
        Self { granule, tables: Rc::default(), limit }
    }

    fn count(&self) -> usize {
        self.tables.borrow().len()
    }
}

impl TableMemory for HostTables {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        let mut tables = self.tables.borrow_mut();
        if tables.len() == self.limit {
            return None;
        }
        let entries = (self.granule.size() / 8) as usize;
        tables.push(vec![Cell::new(0); entries].into_boxed_slice());
        Some(PhysAddr::new(TABLE_BASE + (tables.len() as u64 - 1) * self.granule.size()))
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        let index = (table.as_u64() - TABLE_BASE) / self.granule.size();
        self.tables.borrow()[index as usize].as_ptr() as *mut u64
    }
}

fn table(granule: Granule) -> PageTable<HostTables> {
    PageTable::new(granule, 48, HostTables::new(granule, 64)).unwrap()
}

fn pa(value: u64) -> PhysAddr {
    PhysAddr::new(value)
}

/// One call a [`RecordingTlb`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Invalidate { input: u64, level: u32 },
    Sync,
}

/// Records every call, and at each one walks the very tables being changed, as a TLB
/// refilling at that moment would: `seen[n]` is what `probe` translated to at `calls[n]`.
struct RecordingTlb {
    view: PageTable<HostTables>,
    probe: u64,
    calls: Vec<Call>,
    seen: Vec<Option<Translation>>,
}

impl RecordingTlb {
    fn watching(tables: &PageTable<HostTables>, probe: u64) -> Self {
        // SAFETY: the view shares the tree's tables, and only ever walks them.
        let view = unsafe { PageTable::from_root(tables.root(), tables.granule(), 48, tables.memory().clone()) };
        Self { view, probe, calls: Vec::new(), seen: Vec::new() }
    }

    fn record(&mut self, call: Call) {
        self.calls.push(call);
        self.seen.push(self.view.translate(self.probe));
    }
}

impl TlbMaintenance for RecordingTlb {
    fn invalidate(&mut self, input: u64, level: u32) {
        self.record(Call::Invalidate { input, level });
    }

    fn sync(&mut self) {
        self.record(Call::Sync);
    }
}

#[test]
fn levels_follow_the_granule() {
    assert_eq!(Granule::Size4KiB.start_level(48), 0);
    assert_eq!(Granule::Size16KiB.start_level(48), 0, "16 KiB: level 0 holds just 2 entries");
    assert_eq!(Granule::Size64KiB.start_level(48), 1);
    assert_eq!(Granule::Size4KiB.start_level(39), 1);
    assert_eq!(Granule::Size4KiB.level_shift(1), 30);
    assert_eq!(Granule::Size16KiB.level_shift(2), 25, "32 MiB blocks");
    assert_eq!(Granule::Size64KiB.level_shift(2), 29, "512 MiB blocks");
}

#[test]
fn aligned_gigabyte_becomes_one_level_1_block() {
    let mut tables = table(Granule::Size4KiB);
    tables.map(0x4000_0000, pa(0x4000_0000), GIB, RAM).unwrap();
    let translation = tables.translate(0x4123_4567).unwrap();
    assert_eq!(translation, Translation { output: pa(0x4123_4567), attributes: RAM, level: 1 });
    assert_eq!(tables.memory().count(), 2, "root and one level-1 table");
}

#[test]
fn unaligned_range_uses_pages_then_blocks_then_pages() {
    let mut tables = table(Granule::Size4KiB);
    let start = 2 * MIB - 8 * KIB;
    tables.map(start, pa(0x4000_0000 + start), 4 * MIB + 16 * KIB, RAM).unwrap();
    assert_eq!(tables.translate(start).unwrap().level, 3);
    assert_eq!(tables.translate(2 * MIB).unwrap().level, 2);
    assert_eq!(tables.translate(4 * MIB).unwrap().level, 2);
    assert_eq!(tables.translate(6 * MIB).unwrap().level, 3);
    assert_eq!(tables.translate(6 * MIB + 4 * KIB).unwrap().output, pa(0x4000_0000 + 6 * MIB + 4 * KIB));
    assert_eq!(tables.translate(6 * MIB + 8 * KIB), None, "one past the end");
    assert_eq!(tables.translate(start - 1), None, "one before the start");
}

#[test]
fn blocks_need_both_addresses_aligned() {
    let mut tables = table(Granule::Size4KiB);
    tables.map(0, pa(0x4000_1000), 2 * MIB, RAM).unwrap();
    assert_eq!(tables.translate(0).unwrap().level, 3, "output not 2 MiB-aligned: pages only");
    assert_eq!(tables.translate(2 * MIB - 1).unwrap().output, pa(0x4020_0fff));
}

#[test]
fn sixteen_and_sixty_four_kib_granules_map_blocks_and_pages() {
    for (granule, block) in [(Granule::Size16KiB, 32 * MIB), (Granule::Size64KiB, 512 * MIB)] {
        let mut tables = table(granule);
        let page = granule.size();
        tables.map(block - page, pa(0x1_0000_0000 + block - page), block + 2 * page, RAM).unwrap();
        assert_eq!(tables.translate(block - page).unwrap().level, 3, "{granule:?}");
        assert_eq!(tables.translate(block).unwrap().level, 2, "{granule:?}");
        assert_eq!(tables.translate(2 * block).unwrap().level, 3, "{granule:?}");
        assert_eq!(tables.translate(2 * block + page - 1).unwrap().output, pa(0x1_0000_0000 + 2 * block + page - 1));
        assert_eq!(tables.translate(2 * block + page), None);
    }
}

#[test]
fn kernel_half_addresses_use_the_low_48_bits() {
    let mut tables = table(Granule::Size4KiB);
    let image = 0xffff_ffff_8000_0000;
    tables.map(image, pa(0x4020_0000), 64 * KIB, CODE).unwrap();
    assert_eq!(tables.translate(image + 0x10).unwrap().output, pa(0x4020_0010));
    assert_eq!(tables.translate(image + 0x10).unwrap().attributes, CODE);
    let mixed = 0x1234_ffff_8000_0000;
    assert!(matches!(tables.map(mixed, pa(0), 4 * KIB, RAM), Err(Error::OutOfRange { .. })));
    assert!(matches!(tables.map(0xffff_ffff_f000, pa(0), 8 * KIB, RAM), Err(Error::OutOfRange { .. })));
}

#[test]
fn identical_remapping_is_accepted_and_conflicts_are_refused() {
    let mut tables = table(Granule::Size4KiB);
    tables.map(0, pa(0x4000_0000), 4 * MIB, RAM).unwrap();
    tables.map(MIB, pa(0x4010_0000), 4 * KIB, RAM).unwrap();
    assert_eq!(tables.map(MIB, pa(0x5000_0000), 4 * KIB, RAM), Err(Error::AlreadyMapped { input: MIB }));
    assert_eq!(tables.map(MIB, pa(0x4010_0000), 4 * KIB, MMIO), Err(Error::AlreadyMapped { input: MIB }));
    // A new region next to an existing one shares the tables.
    let before = tables.memory().count();
    tables.map(4 * MIB, pa(0x900_0000), 4 * KIB, MMIO).unwrap();
    assert_eq!(tables.memory().count(), before + 1, "one new level-3 table");
}

#[test]
fn misaligned_requests_are_refused_before_anything_is_written() {
    let mut tables = table(Granule::Size16KiB);
    let error = tables.map(4 * KIB, pa(0), 16 * KIB, RAM).unwrap_err();
    assert_eq!(error, Error::Misaligned { input: 4 * KIB, output: pa(0), size: 16 * KIB, granule: 16 * KIB });
    assert_eq!(tables.memory().count(), 1);
}

#[test]
fn running_out_of_tables_is_an_error() {
    let mut tables = PageTable::new(Granule::Size4KiB, 48, HostTables::new(Granule::Size4KiB, 3)).unwrap();
    assert_eq!(tables.map(0, pa(0x1000), 4 * KIB, RAM), Err(Error::OutOfTables));
}

#[test]
fn descriptor_bits_match_the_architecture() {
    let page = Descriptor::leaf(pa(0x4020_0000), CODE, true).bits();
    assert_eq!(page & 0b11, 0b11, "valid page");
    assert_eq!(page & (1 << 10), 1 << 10, "access flag");
    assert_eq!((page >> 8) & 0b11, 0b11, "inner shareable");
    assert_eq!(page & (1 << 7), 1 << 7, "read-only");
    assert_eq!(page & (1 << 53), 0, "executable at EL1");
    assert_eq!(page & (1 << 54), 1 << 54, "never executable at EL0");
    assert_eq!(page & 0x0000_ffff_ffff_f000, 0x4020_0000);

    let block = Descriptor::leaf(pa(0x900_0000), MMIO, false).bits();
    assert_eq!(block & 0b11, 0b01, "valid block");
    assert_eq!((block >> 2) & 0b111, 1, "MAIR index 1: Device-nGnRE");
    assert_eq!(block & (1 << 53), 1 << 53, "device memory is never executable");
    assert_eq!((MAIR >> 8) & 0xff, 0x04);
}

#[test]
fn unmapping_pages_invalidates_each_and_syncs_once() {
    for (granule, _) in GRANULES {
        let page = granule.size();
        let output = 0x1_0000_0000 + page;
        let mut tables = table(granule);
        tables.map(0, pa(output), 4 * page, RAM).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, 0);
        tables.unmap(page, 2 * page, &mut tlb).unwrap();
        let expected =
            [Call::Invalidate { input: page, level: 3 }, Call::Invalidate { input: 2 * page, level: 3 }, Call::Sync];
        assert_eq!(tlb.calls, expected, "{granule:?}");
        assert_eq!(tables.translate(0).unwrap().output, pa(output), "{granule:?}");
        assert_eq!(tables.translate(page), None, "{granule:?}");
        assert_eq!(tables.translate(3 * page - 1), None, "{granule:?}");
        assert_eq!(tables.translate(3 * page).unwrap().output, pa(output + 3 * page), "{granule:?}");

        tables.map(page, pa(output + page), 2 * page, RAM).unwrap();
        assert_eq!(tables.translate(2 * page).unwrap().output, pa(output + 2 * page), "{granule:?}: mapped again");
    }
}

#[test]
fn unmapping_a_whole_block_invalidates_it_once_at_its_level() {
    for (granule, block) in GRANULES {
        let mut tables = table(granule);
        tables.map(block, pa(4 * block), block, RAM).unwrap();
        let before = tables.memory().count();
        let mut tlb = RecordingTlb::watching(&tables, block);
        tables.unmap(block, block, &mut tlb).unwrap();
        assert_eq!(tlb.calls, [Call::Invalidate { input: block, level: 2 }, Call::Sync], "{granule:?}");
        assert_eq!(tables.translate(block), None, "{granule:?}");
        assert_eq!(tables.translate(2 * block - 1), None, "{granule:?}");
        assert_eq!(tables.memory().count(), before, "{granule:?}: no table needed");

        tables.map(block, pa(4 * block), block, RAM).unwrap();
        let translation = Translation { output: pa(4 * block + 5), attributes: RAM, level: 2 };
        assert_eq!(tables.translate(block + 5), Some(translation), "{granule:?}: a block again");
    }
}

#[test]
fn unmapping_part_of_a_block_splits_it_with_break_before_make() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let output = 4 * block;
        let mut tables = table(granule);
        tables.map(block, pa(output), block, DEVICE_READS).unwrap();
        let before = tables.memory().count();
        let hole = block + 5 * page;
        // The probe is the block's first page, which stays mapped throughout.
        let mut tlb = RecordingTlb::watching(&tables, block);
        tables.unmap(hole, page, &mut tlb).unwrap();

        let in_block = |offset| Some(Translation { output: pa(output + offset), attributes: DEVICE_READS, level: 3 });
        let expected = [
            Call::Invalidate { input: block, level: 2 },
            Call::Sync,
            Call::Invalidate { input: hole, level: 3 },
            Call::Sync,
        ];
        assert_eq!(tlb.calls, expected, "{granule:?}");
        // Break: the block was invalid when invalidated and until the invalidation completed.
        // Make: only then did the new table appear.
        assert_eq!(tlb.seen, [None, None, in_block(0), in_block(0)], "{granule:?}");
        assert_eq!(tables.memory().count(), before + 1, "{granule:?}: one new table");
        assert_eq!(tables.translate(hole), None, "{granule:?}");
        for offset in [0, 5 * page - 1, 6 * page, block - 1] {
            assert_eq!(tables.translate(block + offset), in_block(offset), "{granule:?} at +{offset:#x}");
        }

        tables.map(hole, pa(output + 5 * page), page, DEVICE_READS).unwrap();
        assert_eq!(tables.translate(hole), in_block(5 * page), "{granule:?}: mapped again");
    }
}

#[test]
fn unmapping_a_page_of_a_gigabyte_block_splits_down_to_pages() {
    let mut tables = table(Granule::Size4KiB);
    tables.map(GIB, pa(GIB), GIB, RAM).unwrap();
    let second_block = GIB + 2 * MIB;
    let hole = second_block + MIB;
    let mut tlb = RecordingTlb::watching(&tables, second_block);
    tables.unmap(hole, 4 * KIB, &mut tlb).unwrap();

    let expected = [
        Call::Invalidate { input: GIB, level: 1 },
        Call::Sync,
        Call::Invalidate { input: second_block, level: 2 },
        Call::Sync,
        Call::Invalidate { input: hole, level: 3 },
        Call::Sync,
    ];
    assert_eq!(tlb.calls, expected);
    let page = Some(Translation { output: pa(second_block), attributes: RAM, level: 3 });
    assert_eq!(tlb.seen, [None, None, None, None, page, page], "each split broke before it made");
    assert_eq!(tables.translate(GIB).unwrap().level, 2, "other 2 MiB blocks stay blocks");
    assert_eq!(
        tables.translate(2 * GIB - 1).unwrap(),
        Translation { output: pa(2 * GIB - 1), attributes: RAM, level: 2 }
    );
    assert_eq!(tables.translate(hole), None);
    assert_eq!(
        tables.translate(hole + 4 * KIB).unwrap(),
        Translation { output: pa(hole + 4 * KIB), attributes: RAM, level: 3 }
    );
}

#[test]
fn unmapping_across_blocks_splits_only_the_two_ends() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let mut tables = table(granule);
        tables.map(0, pa(4 * block), 3 * block, RAM).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, 0);
        tables.unmap(page, 3 * block - 2 * page, &mut tlb).unwrap();

        let splits = [
            Call::Invalidate { input: 0, level: 2 },
            Call::Sync,
            Call::Invalidate { input: 2 * block, level: 2 },
            Call::Sync,
        ];
        assert_eq!(tlb.calls[..4], splits, "{granule:?}");
        assert!(
            tlb.calls[4..].contains(&Call::Invalidate { input: block, level: 2 }),
            "{granule:?}: middle block whole"
        );
        let pages_per_block = block / page;
        let cleared = 2 * (pages_per_block - 1) + 1;
        assert_eq!(tlb.calls.len(), 4 + cleared as usize + 1, "{granule:?}");
        assert_eq!(tlb.calls.last(), Some(&Call::Sync), "{granule:?}");
        assert_eq!(tables.translate(0).unwrap().output, pa(4 * block), "{granule:?}");
        assert_eq!(tables.translate(3 * block - page).unwrap().output, pa(7 * block - page), "{granule:?}");
        for unmapped in [page, block - 1, block, 2 * block, 3 * block - page - 1] {
            assert_eq!(tables.translate(unmapped), None, "{granule:?} at {unmapped:#x}");
        }
    }
}

#[test]
fn unmapping_pages_and_blocks_together_invalidates_each_at_its_level() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let mut tables = table(granule);
        tables.map(block - page, pa(block - page), block + 2 * page, RAM).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, block);
        tables.unmap(block - page, block + 2 * page, &mut tlb).unwrap();
        let expected = [
            Call::Invalidate { input: block - page, level: 3 },
            Call::Invalidate { input: block, level: 2 },
            Call::Invalidate { input: 2 * block, level: 3 },
            Call::Sync,
        ];
        assert_eq!(tlb.calls, expected, "{granule:?}");
    }
}

/// Runs of pages are written and cleared along one table per walk: across a table's end, past
/// a page already mapped the same way, up to a conflicting one, and around a hole in the
/// middle of a table, every page is handled as if walked alone.
#[test]
fn runs_of_pages_cross_table_ends_and_stop_at_what_is_there() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let (start, pages) = (block - 4 * page, 8);
        let output = |input: u64| pa(0x1_0000_0000 + input);
        let mut tables = table(granule);
        // Already there, as the map below asks: accepted in the middle of a run.
        tables.map(block - 2 * page, output(block - 2 * page), page, RAM).unwrap();
        tables.map(start, output(start), pages * page, RAM).unwrap();
        for at in (start..start + pages * page).step_by(page as usize) {
            let translation = tables.translate(at).unwrap();
            assert_eq!((translation.output, translation.level), (output(at), 3), "{granule:?}, {at:#x}");
        }
        // A different mapping further on stops the next run exactly there.
        let conflict = start + (pages + 3) * page;
        tables.map(conflict, pa(0x2_0000_0000), page, RAM).unwrap();
        let refused = tables.map(start + pages * page, output(start + pages * page), 4 * page, RAM);
        assert_eq!(refused, Err(Error::AlreadyMapped { input: conflict }), "{granule:?}");
        assert_eq!(tables.translate(conflict - page).unwrap().output, output(conflict - page), "{granule:?}");

        // Unmapping over a hole refuses at the hole and clears nothing.
        let mut tlb = RecordingTlb::watching(&tables, start);
        tables.unmap(block + page, page, &mut tlb).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, start);
        let whole = tables.unmap(start, pages * page, &mut tlb);
        assert_eq!(whole, Err(Error::NotMapped { input: block + page }), "{granule:?}");
        assert_eq!(tlb.calls, [], "{granule:?}");
        // Unmapping across the table's end invalidates each page once, in order, then syncs.
        tables.unmap(start, 5 * page, &mut tlb).unwrap();
        let invalidated: Vec<Call> =
            (0..5).map(|index| Call::Invalidate { input: start + index * page, level: 3 }).collect();
        assert_eq!(tlb.calls, [invalidated, vec![Call::Sync]].concat(), "{granule:?}");
        assert_eq!(tables.translate(block), None, "{granule:?}");
        assert_eq!(tables.translate(block + 2 * page).unwrap().output, output(block + 2 * page), "{granule:?}");
    }
}

#[test]
fn a_hole_in_the_range_is_refused_before_anything_changes() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let mut tables = table(granule);
        tables.map(block, pa(4 * block), block, RAM).unwrap();
        // A page after a one-page hole at 2 * block.
        tables.map(2 * block + page, pa(8 * block), page, RAM).unwrap();
        let before = tables.memory().count();
        let mut tlb = RecordingTlb::watching(&tables, block);
        let result = tables.unmap(block + page, block + page, &mut tlb);
        assert_eq!(result, Err(Error::NotMapped { input: 2 * block }), "{granule:?}");
        assert_eq!(tlb.calls, [], "{granule:?}");
        assert_eq!(tables.memory().count(), before, "{granule:?}: the block was not split");
        assert_eq!(tables.translate(block + page).unwrap().level, 2, "{granule:?}");
        assert_eq!(tables.translate(2 * block + page).unwrap().output, pa(8 * block), "{granule:?}");
        assert_eq!(tables.unmap(2 * block, page, &mut tlb), Err(Error::NotMapped { input: 2 * block }));
    }
}

#[test]
fn misaligned_and_out_of_range_unmaps_are_refused() {
    for (granule, _) in GRANULES {
        let page = granule.size();
        let mut tables = table(granule);
        tables.map(0, pa(0x4000_0000), 2 * page, RAM).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, 0);
        let misaligned = |input, size| Err(Error::MisalignedUnmap { input, size, granule: page });
        assert_eq!(tables.unmap(page / 2, page, &mut tlb), misaligned(page / 2, page), "{granule:?}");
        assert_eq!(tables.unmap(0, page + page / 2, &mut tlb), misaligned(0, page + page / 2), "{granule:?}");
        let out_of_range = Err(Error::OutOfRange { input: 1 << 48, size: page, input_bits: 48 });
        assert_eq!(tables.unmap(1 << 48, page, &mut tlb), out_of_range, "{granule:?}");
        assert_eq!(tables.unmap(page, 0, &mut tlb), Ok(()), "{granule:?}: nothing to unmap");
        assert_eq!(tlb.calls, [], "{granule:?}");
        assert_eq!(tables.translate(2 * page - 1).unwrap().output, pa(0x4000_0000 + 2 * page - 1), "{granule:?}");
    }
}

#[test]
fn the_last_page_of_the_kernel_half_can_be_unmapped() {
    let mut tables = table(Granule::Size4KiB);
    let last = 0xffff_ffff_ffff_f000;
    tables.map(last, pa(0x4000_0000), 4 * KIB, RAM).unwrap();
    let mut tlb = RecordingTlb::watching(&tables, last);
    tables.unmap(last, 4 * KIB, &mut tlb).unwrap();
    assert_eq!(tlb.calls, [Call::Invalidate { input: last, level: 3 }, Call::Sync]);
    assert_eq!(tables.translate(last), None);
}

#[test]
fn running_out_of_tables_while_splitting_leaves_the_block_mapped() {
    for (granule, block) in GRANULES {
        let page = granule.size();
        let mut sizing = table(granule);
        sizing.map(block, pa(4 * block), block, RAM).unwrap();
        let just_enough = sizing.memory().count();

        let mut tables = PageTable::new(granule, 48, HostTables::new(granule, just_enough)).unwrap();
        tables.map(block, pa(4 * block), block, RAM).unwrap();
        let mut tlb = RecordingTlb::watching(&tables, block);
        assert_eq!(tables.unmap(block + page, page, &mut tlb), Err(Error::OutOfTables), "{granule:?}");
        assert_eq!(tlb.calls, [], "{granule:?}: the block was never broken");
        for offset in [0, page, block - 1] {
            let translation = Translation { output: pa(4 * block + offset), attributes: RAM, level: 2 };
            assert_eq!(tables.translate(block + offset), Some(translation), "{granule:?} at +{offset:#x}");
        }
    }
}

#[test]
fn running_out_of_tables_halfway_down_unmaps_nothing() {
    let mut sizing = table(Granule::Size4KiB);
    sizing.map(GIB, pa(GIB), GIB, RAM).unwrap();
    let one_split = sizing.memory().count() + 1;

    let mut tables = PageTable::new(Granule::Size4KiB, 48, HostTables::new(Granule::Size4KiB, one_split)).unwrap();
    tables.map(GIB, pa(GIB), GIB, RAM).unwrap();
    let mut tlb = RecordingTlb::watching(&tables, GIB);
    let hole = GIB + 3 * MIB;
    assert_eq!(tables.unmap(hole, 4 * KIB, &mut tlb), Err(Error::OutOfTables));
    assert_eq!(tlb.calls, [Call::Invalidate { input: GIB, level: 1 }, Call::Sync], "the 1 GiB block was split");
    for address in [GIB, hole, hole + 4 * KIB, 2 * GIB - 1] {
        let translation = Translation { output: pa(address), attributes: RAM, level: 2 };
        assert_eq!(tables.translate(address), Some(translation), "at {address:#x}: same mapping, in 2 MiB blocks");
    }
}

#[test]
fn smmu_read_only_mappings_are_read_only_accessed_and_inner_shareable() {
    let page = Descriptor::leaf(pa(0x4000_0000), DEVICE_READS, true).bits();
    assert_eq!(page & (1 << 7), 1 << 7, "AP[2]: read-only, for the device too");
    assert_eq!(page & (1 << 6), 0, "AP[1]: privileged accesses only");
    assert_eq!(page & (1 << 10), 1 << 10, "AF: no Access flag fault, whatever CD.AFFD says");
    assert_eq!((page >> 8) & 0b11, 0b11, "SH: inner shareable");
    assert_eq!((page >> 2) & 0b111, MemoryType::Normal as u64, "AttrIndx: Normal write-back");
}

#[test]
fn parts_of_a_block_keep_every_attribute_bit() {
    let block = Descriptor::leaf(pa(0x4000_0000), DEVICE_READS, false);
    let page = Descriptor::leaf(pa(0x4000_3000), DEVICE_READS, true);
    assert_eq!(block.part(pa(0x4000_3000), true), page);
    assert_eq!(block.part(pa(0x4020_0000), false), Descriptor::leaf(pa(0x4020_0000), DEVICE_READS, false));
    let not_global = 1 << 11;
    let part = Descriptor::from_bits(block.bits() | not_global).part(pa(0x4000_3000), true);
    assert_eq!(part.bits(), page.bits() | not_global, "bits leaf() never sets survive too");
}

#[test]
fn errors_say_what_was_wrong() {
    use std::string::ToString;
    assert_eq!(Error::NotMapped { input: 0x2000 }.to_string(), "0x2000 is not mapped, so the range cannot be unmapped");
    let misaligned = Error::MisalignedUnmap { input: 0x800, size: 0x1000, granule: 0x1000 };
    assert_eq!(misaligned.to_string(), "input 0x800 and size 0x1000 must both be multiples of the 0x1000-byte granule");
}
