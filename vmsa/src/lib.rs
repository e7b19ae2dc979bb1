//! VMSAv8-64 translation tables: the page-table format of the Arm MMU and of SMMUv3 stage 1.
//!
//! An input address (a CPU virtual address, or a device's IOVA) is translated by a walk through
//! up to four levels of tables. Each table is one *granule* (4, 16 or 64 KiB) of 8-byte
//! descriptors, and each level consumes `granule_shift - 3` bits of the address
//! (Arm ARM DDI 0487, D8.2 "Translation tables and the translation process"):
//!
//! ```text
//!  4 KiB granule, 48-bit input address:
//!   47      39 38      30 29      21 20      12 11          0
//!  ┌──────────┬──────────┬──────────┬──────────┬─────────────┐
//!  │ level 0  │ level 1  │ level 2  │ level 3  │ page offset │
//!  │ 9 bits   │ 9 bits   │ 9 bits   │ 9 bits   │ 12 bits     │
//!  └──────────┴──────────┴──────────┴──────────┴─────────────┘
//!   512 GiB    1 GiB      2 MiB      4 KiB       ← what one entry covers
//! ```
//!
//! An entry is invalid, points at the next-level table, or maps a whole aligned *block*
//! (1 GiB or 2 MiB with 4 KiB granules, 32 MiB with 16 KiB, 512 MiB with 64 KiB) or, at
//! level 3, a page. Large blocks keep the tables small and the TLB effective: the kernel maps
//! RAM with 1 GiB and 2 MiB blocks where the addresses allow.
//!
//! The table memory is supplied by the user through [`TableMemory`], so the same code runs
//! on the host in tests (tables in a `Vec`), in the kernel before the MMU is on (tables at
//! their physical addresses) and after it (tables through a virtual mapping).
//!
//! # Unmapping: TLB maintenance and break-before-make
//!
//! [`PageTable::map`] only turns invalid entries valid. A TLB never holds an entry that
//! faults (Arm ARM DDI 0487, rule I_WZCBG), so nothing cached can be stale. Unmapping is the
//! other way round: the TLBs of every CPU, and of the SMMU, may hold the old translation and
//! keep using it until told to forget it. So [`PageTable::unmap`] writes each entry invalid
//! and then asks the caller's [`TlbMaintenance`] to invalidate it: `TLBI VALE1IS` on the
//! CPU, `CMD_TLBI_NH_VA` on the SMMU (SMMUv3, IHI 0070, 4.4.2.4).
//!
//! It does so in *strict* mode: before `unmap` returns, one `sync` (a `DSB ISH`, or a
//! `CMD_SYNC` the driver waits for, 4.7.3) has completed every invalidation, and with it
//! every access that used the old translation (3.21.1). Only then may the caller free the
//! buffer or hand it to someone else: no device can reach it any more. (Linux's *lazy* mode
//! batches the invalidations instead, and lives with that window.)
//!
//! Unmapping part of a block means replacing the block by a table of smaller entries that
//! map the rest. Writing the table descriptor straight over the block would let a TLB hold
//! the old block and a new page for the same address at once. The architecture makes that a
//! TLB conflict abort or CONSTRAINED UNPREDICTABLE: a translation from either entry, or a
//! mix of both ("Using break-before-make when updating translation table entries", rule
//! R_WHZWS; SMMUv3 3.21.1.1, "Translation tables update procedure"). The cure is
//! *break-before-make* (rule R_DDMVT):
//!
//! ```text
//!  1. fill a new table that maps every part of the block as before     nothing live yet
//!  2. write the block entry invalid                                     break
//!  3. invalidate the block's translation, then sync                     no TLB holds it
//!  4. write a table entry pointing at the new table                     make
//! ```
//!
//! The new table is allocated in step 1, so running out of table memory leaves the block
//! as it was. Between steps 2 and 4 the whole block is unmapped, including the part that
//! is to stay mapped: the caller must make sure nothing uses it meanwhile (no CPU running
//! from it, no device DMA into it). FEAT_BBML2, and SMMUv3.2's `SMMU_IDR3.BBML`, allow a split without
//! that window; this crate does not rely on them. Linux's io-pgtable-arm once split blocks
//! without break-before-make, and then dropped splitting altogether as not hitless on
//! SMMUv3 ("iommu/io-pgtable-arm: Remove split on unmap behavior").
//!
//! Tables that an unmap leaves empty stay in place, as in io-pgtable-arm: freeing them
//! would need the same invalidation for the table entry, and a way to give memory back.
//! So where a block was split, mapping the range again gives pages, not the block.
#![no_std]

mod descriptor;
mod unmap;

use core::fmt;

use addr::PhysAddr;

use descriptor::Descriptor;
pub use descriptor::{Access, Attributes, MAIR, MemoryType};
pub use unmap::TlbMaintenance;

/// The translation granule: the size of a page and of every table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB pages, four levels for 48 bits.
    Size4KiB,
    /// 16 KiB pages, four levels (the first with two entries) for 48 bits.
    Size16KiB,
    /// 64 KiB pages, three levels for 48 bits.
    Size64KiB,
}

impl Granule {
    /// log2 of the page size: 12, 14 or 16.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::Size4KiB => 12,
            Granule::Size16KiB => 14,
            Granule::Size64KiB => 16,
        }
    }

    /// The page size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Address bits resolved per level: a table holds `2^index_bits` 8-byte entries.
    const fn index_bits(self) -> u32 {
        self.shift() - 3
    }

    /// The first level walked for `input_bits`-wide addresses (level 0 with 4 KiB and 48 bits).
    pub const fn start_level(self, input_bits: u32) -> u32 {
        let levels = (input_bits - self.shift()).div_ceil(self.index_bits());
        4 - levels
    }

    /// Lowest address bit indexed at `level`; an entry at `level` covers `1 << level_shift`.
    pub const fn level_shift(self, level: u32) -> u32 {
        self.shift() + (3 - level) * self.index_bits()
    }

    /// Whether a block entry may stand at `level` (D8.3: 48-bit output, no FEAT_LPA2).
    const fn allows_block_at(self, level: u32) -> bool {
        match self {
            Granule::Size4KiB => level == 1 || level == 2,
            Granule::Size16KiB | Granule::Size64KiB => level == 2,
        }
    }
}

/// Why a mapping or unmapping request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// An address or size is not a multiple of the granule.
    Misaligned {
        /// The input (virtual or I/O virtual) address.
        input: u64,
        /// The output (physical) address.
        output: PhysAddr,
        /// The size asked for.
        size: u64,
        /// The granule they must be multiples of.
        granule: u64,
    },
    /// The input address or size of an unmap is not a multiple of the granule.
    MisalignedUnmap {
        /// The input address.
        input: u64,
        /// The size asked for.
        size: u64,
        /// The granule they must be multiples of.
        granule: u64,
    },
    /// The input range does not fit the table's input address width.
    OutOfRange {
        /// The input address.
        input: u64,
        /// The size asked for.
        size: u64,
        /// The table's input address width.
        input_bits: u32,
    },
    /// Part of the range is already mapped, differently.
    AlreadyMapped {
        /// The first input address already mapped differently.
        input: u64,
    },
    /// Part of a range to unmap is not mapped; `input` is its first such address.
    NotMapped {
        /// The first input address that is not mapped.
        input: u64,
    },
    /// [`TableMemory::allocate_table`] had no table to give.
    OutOfTables,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { input, output, size, granule } => write!(
                f,
                "input {input:#x}, output {output} and size {size:#x} must all be multiples of the \
                 {granule:#x}-byte granule"
            ),
            Self::MisalignedUnmap { input, size, granule } => {
                write!(f, "input {input:#x} and size {size:#x} must both be multiples of the {granule:#x}-byte granule")
            }
            Self::OutOfRange { input, size, input_bits } => {
                write!(f, "{size:#x} bytes at {input:#x} do not fit a {input_bits}-bit input address space")
            }
            Self::AlreadyMapped { input } => write!(f, "{input:#x} is already mapped, differently"),
            Self::NotMapped { input } => write!(f, "{input:#x} is not mapped, so the range cannot be unmapped"),
            Self::OutOfTables => write!(f, "no memory left for another translation table"),
        }
    }
}

impl core::error::Error for Error {}

/// Memory for translation tables.
pub trait TableMemory {
    /// A zeroed, granule-aligned table; `None` when there is no memory left.
    fn allocate_table(&mut self) -> Option<PhysAddr>;
    /// Where the CPU can read and write the table whose physical address is `table`.
    fn table_pointer(&self, table: PhysAddr) -> *mut u64;
}

impl<T: TableMemory + ?Sized> TableMemory for &mut T {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        (**self).allocate_table()
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        (**self).table_pointer(table)
    }
}

/// The result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the input translates to.
    pub output: PhysAddr,
    /// What the leaf entry allows.
    pub attributes: Attributes,
    /// The level of the entry that mapped it, and so the size of that block or page.
    pub level: u32,
}

/// A translation table tree: a root table and everything below it.
pub struct PageTable<M: TableMemory> {
    root: PhysAddr,
    granule: Granule,
    input_bits: u32,
    memory: M,
}

/// A valid block or page entry, where a walk ended.
struct Leaf {
    entry: *mut u64,
    descriptor: Descriptor,
    level: u32,
}

/// Valid block or page entries, one after the other in one table, from where a walk ended.
struct LeafRun {
    first: *mut u64,
    level: u32,
    count: u64,
}

/// The entry a mapping step stops at.
enum Slot {
    /// Write a block or page descriptor here.
    Empty { entry: *mut u64, level: u32 },
    /// Already mapped exactly as asked; `covers` bytes from the input address on.
    Same { covers: u64 },
}

impl<M: TableMemory> PageTable<M> {
    /// An empty tree for `input_bits`-wide addresses (25 to 48).
    pub fn new(granule: Granule, input_bits: u32, mut memory: M) -> Result<Self, Error> {
        assert!((25..=48).contains(&input_bits), "input address width must be 25..=48 bits");
        let root = memory.allocate_table().ok_or(Error::OutOfTables)?;
        Ok(Self { root, granule, input_bits, memory })
    }

    /// Takes over an existing tree, such as one built before the MMU was on.
    ///
    /// # Safety
    /// `root` is a table of `granule` in `memory`, and every table reachable from it was
    /// allocated from `memory` for this tree alone.
    pub unsafe fn from_root(root: PhysAddr, granule: Granule, input_bits: u32, memory: M) -> Self {
        Self { root, granule, input_bits, memory }
    }

    /// Physical address of the root table: what TTBR (or the SMMU's CD.TTB0) points at.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The table's granule.
    pub fn granule(&self) -> Granule {
        self.granule
    }

    /// The memory the tables live in.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Maps `[input, input + size)` to `[output, output + size)` with the largest blocks the
    /// alignment of both addresses allows.
    ///
    /// Ranges already mapped identically are accepted, so overlapping requests with the same
    /// attributes compose. Only invalid entries are written: replacing a live mapping needs
    /// break-before-make and TLB maintenance, which belong to an unmap. If tables run out
    /// midway, the part before stays mapped.
    pub fn map(&mut self, input: u64, output: PhysAddr, size: u64, attributes: Attributes) -> Result<(), Error> {
        let granule = self.granule.size();
        let misaligned = (input | output.as_u64() | size) & (granule - 1) != 0;
        if misaligned {
            return Err(Error::Misaligned { input, output, size, granule });
        }
        self.check_range(input, size)?;
        let mut done = 0;
        while done < size {
            let (at, to) = (input + done, output.add(done));
            match self.slot_for(at, to, size - done, attributes)? {
                Slot::Empty { entry, level } => done += self.fill_run(entry, at, to, size - done, level, attributes),
                Slot::Same { covers } => done += covers,
            }
        }
        Ok(())
    }

    /// Writes leaves at `level` from the empty `entry` on, along its table, for as long as the
    /// entries are empty and `remaining` bytes fill them; returns the bytes mapped.
    ///
    /// One walk from the root then serves every entry of the table: a 1 MiB buffer at a 4 KiB
    /// granule is one walk and 256 writes, not 256 walks. Each next entry is aligned as the
    /// first was, since input and output both advance by the entry's span.
    fn fill_run(
        &self,
        entry: *mut u64,
        input: u64,
        output: PhysAddr,
        remaining: u64,
        level: u32,
        attributes: Attributes,
    ) -> u64 {
        let span = self.entry_span(level);
        let run = self.entries_from(input, level).min(remaining / span);
        let mut written = 0;
        while written < run {
            // SAFETY: `written` is below the entries left in `entry`'s table, which is ours.
            let entry = unsafe { entry.add(written as usize) };
            // SAFETY: as above.
            if written > 0 && Descriptor::from_bits(unsafe { entry.read_volatile() }).is_valid() {
                break;
            }
            let descriptor = Descriptor::leaf(output.add(written * span), attributes, level == 3);
            // SAFETY: as above.
            unsafe { entry.write_volatile(descriptor.bits()) };
            written += 1;
        }
        written * span
    }

    /// Entries of the table at `level` that holds `input`, from `input`'s entry to its end.
    fn entries_from(&self, input: u64, level: u32) -> u64 {
        let entries = 1u64 << self.granule.index_bits();
        entries - ((input >> self.granule.level_shift(level)) & (entries - 1))
    }

    /// The leaves that map `[input, input + size)` from `input` on along one table: the
    /// entry at `input` and the valid leaves after it, up to the end of the table or of the
    /// range. `None` if nothing maps `input`. One walk serves the whole run.
    fn leaf_run(&self, input: u64, size: u64) -> Option<LeafRun> {
        let first = self.leaf(input)?;
        let span = self.entry_span(first.level);
        let limit = self.entries_from(input, first.level).min(size.div_ceil(span));
        let mut count = 1;
        while count < limit {
            // SAFETY: `count` is below the entries left in the leaf's table, which is ours.
            let next = Descriptor::from_bits(unsafe { first.entry.add(count as usize).read_volatile() });
            if !next.is_valid() || (first.level < 3 && next.is_table()) {
                break;
            }
            count += 1;
        }
        Some(LeafRun { first: first.entry, level: first.level, count })
    }

    /// Walks the tables as the MMU would.
    pub fn translate(&self, input: u64) -> Option<Translation> {
        let Leaf { descriptor, level, .. } = self.leaf(input)?;
        let offset = input & (self.entry_span(level) - 1);
        Some(Translation {
            output: descriptor.output_address(self.granule).add(offset),
            attributes: descriptor.attributes(),
            level,
        })
    }

    /// The valid block or page entry that translates `input`, if any.
    fn leaf(&self, input: u64) -> Option<Leaf> {
        self.check_range(input, 1).ok()?;
        let mut table = self.root;
        let mut level = self.granule.start_level(self.input_bits);
        loop {
            let entry = self.entry(table, input, level);
            // SAFETY: `entry` points into a table owned by this tree.
            let descriptor = Descriptor::from_bits(unsafe { entry.read_volatile() });
            if !descriptor.is_valid() {
                return None;
            }
            if level == 3 || !descriptor.is_table() {
                return Some(Leaf { entry, descriptor, level });
            }
            table = descriptor.output_address(self.granule);
            level += 1;
        }
    }

    /// How many bytes of input address one entry at `level` translates.
    fn entry_span(&self, level: u32) -> u64 {
        1 << self.granule.level_shift(level)
    }

    /// Finds (creating tables on the way) the entry at which to map `input` → `output`:
    /// the highest level whose block both addresses are aligned to and `remaining` fills.
    fn slot_for(
        &mut self,
        input: u64,
        output: PhysAddr,
        remaining: u64,
        attributes: Attributes,
    ) -> Result<Slot, Error> {
        let mut table = self.root;
        let mut level = self.granule.start_level(self.input_bits);
        loop {
            let entry = self.entry(table, input, level);
            // SAFETY: `entry` points into a table owned by this tree.
            let descriptor = Descriptor::from_bits(unsafe { entry.read_volatile() });
            let block_size = 1u64 << self.granule.level_shift(level);
            let fits = (input | output.as_u64()) & (block_size - 1) == 0 && remaining >= block_size;
            let leaf_allowed = level == 3 || (fits && self.granule.allows_block_at(level));
            if !descriptor.is_valid() && leaf_allowed {
                return Ok(Slot::Empty { entry, level });
            }
            if descriptor.is_valid() && (level == 3 || !descriptor.is_table()) {
                return self.same_mapping(descriptor, input, output, level, attributes);
            }
            table = match descriptor.is_valid() {
                true => descriptor.output_address(self.granule),
                false => self.new_table(entry)?,
            };
            level += 1;
        }
    }

    /// An existing leaf is acceptable only if it maps `input` exactly to `output` as asked.
    fn same_mapping(
        &self,
        existing: Descriptor,
        input: u64,
        output: PhysAddr,
        level: u32,
        attributes: Attributes,
    ) -> Result<Slot, Error> {
        let block_size = 1u64 << self.granule.level_shift(level);
        let offset = input & (block_size - 1);
        let same = existing.output_address(self.granule).add(offset) == output && existing.attributes() == attributes;
        match same {
            true => Ok(Slot::Same { covers: block_size - offset }),
            false => Err(Error::AlreadyMapped { input }),
        }
    }

    fn new_table(&mut self, entry: *mut u64) -> Result<PhysAddr, Error> {
        let table = self.memory.allocate_table().ok_or(Error::OutOfTables)?;
        // SAFETY: `entry` points into a table owned by this tree; the new table is zeroed.
        unsafe { entry.write_volatile(Descriptor::table(table).bits()) };
        Ok(table)
    }

    fn entry(&self, table: PhysAddr, input: u64, level: u32) -> *mut u64 {
        let index_mask = (1u64 << self.granule.index_bits()) - 1;
        let index = (input >> self.granule.level_shift(level)) & index_mask;
        // The index is below 2^index_bits, the number of entries in one table.
        self.memory.table_pointer(table).wrapping_add(index as usize)
    }

    /// The tables resolve the low `input_bits` bits; the bits above must all be equal (all
    /// zeros for TTBR0 and the SMMU, all ones for the kernel's TTBR1 half).
    fn check_range(&self, input: u64, size: u64) -> Result<(), Error> {
        let out_of_range = Error::OutOfRange { input, size, input_bits: self.input_bits };
        let last = input.checked_add(size - 1).ok_or(out_of_range)?;
        let high_bits = |address: u64| address >> self.input_bits;
        let top = (1u64 << (64 - self.input_bits)) - 1;
        let upper = high_bits(input);
        if (upper != 0 && upper != top) || high_bits(last) != upper {
            return Err(out_of_range);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
