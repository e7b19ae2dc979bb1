//! Translation table descriptors (Arm ARM DDI 0487, D8.3 "Translation table descriptor formats").
//!
//! ```text
//!  63     55 54  53  52 .. 48 47 ..................... 12 11 10  9 8  7  6  5  4   2  1  0
//! ┌────────┬───┬───┬────────┬──────────────────────────┬──┬──┬────┬─────┬──┬──────┬──┬──┐
//! │ ignored│UXN│PXN│  res0  │ output address [47:shift]│nG│AF│ SH │AP2:1│NS│AttrIx│T │V │
//! └────────┴───┴───┴────────┴──────────────────────────┴──┴──┴────┴─────┴──┴──────┴──┴──┘
//! ```
//!
//! `V` marks the entry valid. `T` (bit 1) set means "table" at levels 0-2 and "page" at
//! level 3; clear at levels 1-2 means "block". `AttrIndx` selects one of the eight memory
//! types programmed in `MAIR` (the CPU's `MAIR_EL1`, or the SMMU context descriptor's MAIR).
//!
//! The same leaves serve SMMUv3 stage 1 (SMMUv3, IHI 0070, 5.4 "CD" with `AA64` = 1). There,
//! AP[2] makes a mapping read-only for the device as well; SH = inner shareable gives a
//! coherent device the CPUs' view of Normal memory; and AF is always set, because with
//! AF = 0 an SMMU takes an Access flag fault unless `CD.AFFD` (or `CD.HA`) says otherwise.
//! AP[1] stays 0, so only privileged accesses are allowed: a stream whose device issues
//! unprivileged transactions needs `STE.PRIVCFG` = 0b11 (privileged) to use these tables.

use addr::PhysAddr;

use crate::Granule;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_INDEX_SHIFT: u32 = 2;
const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
/// AP[2]: read-only at every exception level.
const READ_ONLY: u64 = 1 << 7;
/// SH = 0b11: inner shareable, so every CPU (and a coherent device) sees the same data.
const INNER_SHAREABLE: u64 = 0b11 << 8;
/// AF: without it the first access faults (software access-flag management).
const ACCESSED: u64 = 1 << 10;
/// PXN: not executable at EL1.
const PRIVILEGED_EXECUTE_NEVER: u64 = 1 << 53;
/// UXN: not executable at EL0.
const UNPRIVILEGED_EXECUTE_NEVER: u64 = 1 << 54;
const OUTPUT_ADDRESS_BITS: u64 = (1 << 48) - 1;
/// Bits 47..12: where a block or page points (its low bits are zero), or the next table.
const ADDRESS_FIELD: u64 = OUTPUT_ADDRESS_BITS & !0xfff;

/// The memory types this kernel uses, and their `MAIR` indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// RAM: write-back cacheable, read- and write-allocate.
    Normal = 0,
    /// MMIO registers: Device-nGnRE (no gathering, no reordering, early write acknowledgement).
    Device = 1,
    /// RAM that bypasses the caches, for sharing with devices that do not snoop them.
    NormalNonCacheable = 2,
}

/// `MAIR_EL1` value matching [`MemoryType`]: attribute byte `n` describes index `n`.
/// 0xff = Normal, inner/outer write-back non-transient, read/write-allocate;
/// 0x04 = Device-nGnRE; 0x44 = Normal, inner/outer non-cacheable (D19.2, MAIR_EL1).
pub const MAIR: u64 = 0xff | (0x04 << 8) | (0x44 << 16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What the translation lets its user (the CPU at EL1, or a device through the SMMU) do.
pub enum Access {
    /// Reads only: a write faults (a permission fault).
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// What a mapping allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    /// How the memory is cached and ordered (MAIR index).
    pub memory: MemoryType,
    /// Reads, or reads and writes.
    pub access: Access,
    /// Whether the kernel (EL1) may execute from it. EL0 never may.
    pub executable: bool,
}

impl Attributes {
    /// Attributes of memory of `memory` type, with `access`, executable by EL1 if `executable`.
    pub const fn new(memory: MemoryType, access: Access, executable: bool) -> Self {
        Self { memory, access, executable }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descriptor(u64);

impl Descriptor {
    /// V = 0: translates nothing, and is never held in a TLB.
    pub(crate) const INVALID: Self = Self(0);

    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    pub(crate) fn table(table: PhysAddr) -> Self {
        Self(table.as_u64() | TABLE_OR_PAGE | VALID)
    }

    /// A block (levels 1-2) or page (level 3) descriptor.
    pub(crate) fn leaf(output: PhysAddr, attributes: Attributes, is_page: bool) -> Self {
        let mut bits = output.as_u64() | VALID | ACCESSED | UNPRIVILEGED_EXECUTE_NEVER;
        bits |= (attributes.memory as u64) << ATTR_INDEX_SHIFT;
        if is_page {
            bits |= TABLE_OR_PAGE;
        }
        if attributes.memory != MemoryType::Device {
            bits |= INNER_SHAREABLE;
        }
        if attributes.access == Access::ReadOnly {
            bits |= READ_ONLY;
        }
        if !attributes.executable {
            bits |= PRIVILEGED_EXECUTE_NEVER;
        }
        Self(bits)
    }

    /// The entry, one level down, for the part of this block that maps to `output`: every
    /// attribute bit kept, so the part means exactly what the block meant there.
    pub(crate) fn part(self, output: PhysAddr, is_page: bool) -> Self {
        let attributes = self.0 & !ADDRESS_FIELD & !TABLE_OR_PAGE;
        let kind = if is_page { TABLE_OR_PAGE } else { 0 };
        Self(attributes | output.as_u64() | kind)
    }

    pub(crate) fn is_valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// At levels 0-2: points at a table rather than mapping a block.
    pub(crate) fn is_table(self) -> bool {
        self.0 & TABLE_OR_PAGE != 0
    }

    pub(crate) fn output_address(self, granule: Granule) -> PhysAddr {
        PhysAddr::new(self.0 & OUTPUT_ADDRESS_BITS & !(granule.size() - 1))
    }

    pub(crate) fn attributes(self) -> Attributes {
        let memory = match (self.0 & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT {
            0 => MemoryType::Normal,
            2 => MemoryType::NormalNonCacheable,
            _ => MemoryType::Device,
        };
        let access = if self.0 & READ_ONLY != 0 { Access::ReadOnly } else { Access::ReadWrite };
        Attributes { memory, access, executable: self.0 & PRIVILEGED_EXECUTE_NEVER == 0 }
    }
}
