extern crate std;

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const RAM: Attributes = Attributes::new(MemoryType::Normal, Access::ReadWrite, false);
const CODE: Attributes = Attributes::new(MemoryType::Normal, Access::ReadOnly, true);
const MMIO: Attributes = Attributes::new(MemoryType::Device, Access::ReadWrite, false);
/// Where the fake tables live in the fake physical address space.
const TABLE_BASE: u64 = 0x8000_0000;

/// Tables in host memory, at made-up physical addresses `TABLE_BASE + n * granule`.
struct HostTables {
    granule: Granule,
    tables: Vec<Box<[u64]>>,
    limit: usize,
}

impl HostTables {
    fn new(granule: Granule, limit: usize) -> Self {
        Self { granule, tables: Vec::new(), limit }
    }
}

impl TableMemory for HostTables {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        if self.tables.len() == self.limit {
            return None;
        }
        let entries = (self.granule.size() / 8) as usize;
        self.tables.push(vec![0u64; entries].into_boxed_slice());
        Some(PhysAddr::new(TABLE_BASE + (self.tables.len() as u64 - 1) * self.granule.size()))
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        let index = (table.as_u64() - TABLE_BASE) / self.granule.size();
        self.tables[index as usize].as_ptr() as *mut u64
    }
}

fn table(granule: Granule) -> PageTable<HostTables> {
    PageTable::new(granule, 48, HostTables::new(granule, 64)).unwrap()
}

fn pa(value: u64) -> PhysAddr {
    PhysAddr::new(value)
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
    assert_eq!(tables.memory().tables.len(), 2, "root and one level-1 table");
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
    let before = tables.memory().tables.len();
    tables.map(4 * MIB, pa(0x900_0000), 4 * KIB, MMIO).unwrap();
    assert_eq!(tables.memory().tables.len(), before + 1, "one new level-3 table");
}

#[test]
fn misaligned_requests_are_refused_before_anything_is_written() {
    let mut tables = table(Granule::Size16KiB);
    let error = tables.map(4 * KIB, pa(0), 16 * KIB, RAM).unwrap_err();
    assert_eq!(error, Error::Misaligned { input: 4 * KIB, output: pa(0), size: 16 * KIB, granule: 16 * KIB });
    assert_eq!(tables.memory().tables.len(), 1);
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
