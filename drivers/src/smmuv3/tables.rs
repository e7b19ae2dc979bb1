//! The configuration structures the SMMU reads from memory: stream table entries and context
//! descriptors, 64 bytes each (IHI 0070, 5.2 "Stream Table Entry", 5.4 "Context Descriptor").
//!
//! The STE decides what happens to a stream (STE.Config, 5.2):
//!
//! ```text
//!   V = 0        invalid: the transaction is aborted and C_BAD_STE recorded
//!   Config 0b000 abort: the transaction is aborted, nothing recorded
//!   Config 0b100 bypass: the address goes out untranslated
//!   Config 0b101 stage 1 translates, stage 2 is bypassed
//! ```
//!
//! With stage 1 it points (S1ContextPtr) at a context descriptor, which plays the part of the
//! CPU's TCR_EL1, TTBR0_EL1 and MAIR_EL1 for that stream: the ASID, the root of the
//! translation tables, the input size (T0SZ), the granule, cacheability of table walks, the
//! output size (IPS), and what to do on a fault (R: record it; A: abort the transaction).
//!
//! Both structures are 8 little-endian 64-bit words. The SMMU may read them at any moment, and
//! only a single 64-bit word is written atomically, so the driver changes a live STE in an
//! order that never shows the SMMU a half-written entry (see [`super::Smmu::attach_stage1`]).

use core::ptr::NonNull;

use addr::PhysAddr;
use tock_registers::{LocalRegisterCopy, register_bitfields};

use super::{Features, SmmuError};

register_bitfields! {
    u64,

    /// STE word 0, bits [63:0] (5.2).
    STE0 [
        V OFFSET(0) NUMBITS(1) [],
        CONFIG OFFSET(1) NUMBITS(3) [
            Abort = 0b000,
            Stage1Translate = 0b101
        ],
        /// Context descriptor table format: a linear table of 2^S1CDMax CDs.
        S1FMT OFFSET(4) NUMBITS(2) [
            Linear = 0
        ],
        /// Physical address bits [51:6] of the context descriptor (table).
        S1CONTEXTPTR OFFSET(6) NUMBITS(46) [],
        /// log2 of the number of CDs: 0, one CD, no substreams.
        S1CDMAX OFFSET(59) NUMBITS(5) []
    ],

    /// STE word 1, bits [127:64] (5.2).
    STE1 [
        /// Default substream behaviour; only used when S1CDMax > 0.
        S1DSS OFFSET(0) NUMBITS(2) [],
        /// Inner cacheability of CD fetches.
        S1CIR OFFSET(2) NUMBITS(2) [
            WriteBackReadAllocate = 1
        ],
        /// Outer cacheability of CD fetches.
        S1COR OFFSET(4) NUMBITS(2) [
            WriteBackReadAllocate = 1
        ],
        /// Shareability of CD fetches.
        S1CSH OFFSET(6) NUMBITS(2) [
            InnerShareable = 3
        ],
        /// Stall disable: 1 would make faults terminate even where stalling is possible.
        S1STALLD OFFSET(27) NUMBITS(1) [],
        /// PCIe ATS: translated requests from the device are refused.
        EATS OFFSET(28) NUMBITS(2) [
            Abort = 0
        ],
        /// StreamWorld: the translation regime, here non-secure EL1&0 (with CR2.E2H = 0).
        STRW OFFSET(30) NUMBITS(2) [
            El1 = 0
        ],
        /// Shareability override: keep what the translation says.
        SHCFG OFFSET(44) NUMBITS(2) [
            Incoming = 1
        ]
    ],

    /// CD word 0, bits [63:0] (5.4). Fields ending in 0 describe TTB0, in 1 TTB1.
    CD0 [
        /// Input size is 2^(64 - T0SZ) bytes.
        T0SZ OFFSET(0) NUMBITS(6) [],
        /// TTB0 granule, encoded as TCR_EL1.TG0.
        TG0 OFFSET(6) NUMBITS(2) [
            Granule4K = 0,
            Granule64K = 1,
            Granule16K = 2
        ],
        /// Inner and outer cacheability of table walks.
        IR0 OFFSET(8) NUMBITS(2) [
            WriteBackWriteAllocate = 1
        ],
        OR0 OFFSET(10) NUMBITS(2) [
            WriteBackWriteAllocate = 1
        ],
        /// Shareability of table walks.
        SH0 OFFSET(12) NUMBITS(2) [
            InnerShareable = 3
        ],
        /// Walks through TTB0 disabled.
        EPD0 OFFSET(14) NUMBITS(1) [],
        /// Big-endian tables.
        ENDI OFFSET(15) NUMBITS(1) [],
        /// Walks through TTB1 (the upper half of the address space) disabled.
        EPD1 OFFSET(30) NUMBITS(1) [],
        V OFFSET(31) NUMBITS(1) [],
        /// Output (intermediate physical) address size, encoded as IDR5.OAS.
        IPS OFFSET(32) NUMBITS(3) [],
        /// Access flag fault disable: 0 means a descriptor with AF = 0 faults.
        AFFD OFFSET(35) NUMBITS(1) [],
        /// Top byte ignored, for TTB0 and TTB1.
        TBI OFFSET(38) NUMBITS(2) [],
        /// VMSAv8-64 tables.
        AA64 OFFSET(41) NUMBITS(1) [],
        /// Hardware dirty and access flag updates.
        HD OFFSET(42) NUMBITS(1) [],
        HA OFFSET(43) NUMBITS(1) [],
        /// Stall faulting transactions.
        S OFFSET(44) NUMBITS(1) [],
        /// Record faults in the event queue.
        R OFFSET(45) NUMBITS(1) [],
        /// Terminated transactions get an abort, not read-as-zero/write-ignored.
        A OFFSET(46) NUMBITS(1) [],
        /// ASID set: 1 = these ASIDs are the SMMU's own, untouched by CPU broadcast TLBIs.
        ASET OFFSET(47) NUMBITS(1) [],
        ASID OFFSET(48) NUMBITS(16) []
    ],

    /// CD word 1, bits [127:64] (5.4).
    CD1 [
        /// Physical address bits [51:4] of the TTB0 root table.
        TTB0 OFFSET(4) NUMBITS(48) []
    ]
}

/// Bytes of one STE and of one CD.
pub(super) const ENTRY_BYTES: usize = 64;
/// Words of one STE and of one CD.
pub(super) const ENTRY_WORDS: usize = ENTRY_BYTES / 8;
/// The word of an STE that holds V, Config and S1ContextPtr.
pub(super) const STE_CONFIG_WORD: usize = 0;

/// Stage-1 translation for one stream: what its context descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1Context {
    /// Tags the stream's TLB entries. Streams with different tables need different ASIDs;
    /// streams sharing tables may share one.
    pub asid: u16,
    /// Root of the VMSAv8-64 translation tables (the `vmsa` crate's `PageTable::root`).
    pub ttb0: PhysAddr,
    /// 12, 14 or 16: 4, 16 or 64 KiB pages.
    pub granule_shift: u32,
    /// IOVAs are below `2^input_bits`, 25 to 48.
    pub input_bits: u32,
    /// Memory attributes the tables' AttrIndx fields select, as in MAIR_EL1.
    pub mair: u64,
}

/// T0SZ from 16 to 39 (5.4 CD.T0SZ; QEMU's `decode_cd` refuses anything else).
const INPUT_BITS: core::ops::RangeInclusive<u32> = 25..=48;

impl Stage1Context {
    /// Refuses a context the SMMU would reject as C_BAD_CD or walk wrongly.
    pub(super) fn check(&self, features: &Features) -> Result<(), SmmuError> {
        if !features.supports_granule(self.granule_shift) {
            return Err(SmmuError::GranuleNotSupported { shift: self.granule_shift });
        }
        if !INPUT_BITS.contains(&self.input_bits) {
            return Err(SmmuError::InputSizeNotSupported { bits: self.input_bits });
        }
        if u32::from(self.asid) >> features.asid_bits != 0 {
            return Err(SmmuError::AsidTooWide { asid: self.asid, bits: features.asid_bits });
        }
        let alignment = root_table_alignment(self.granule_shift, self.input_bits);
        if !self.ttb0.is_aligned(alignment) {
            return Err(SmmuError::TableMisaligned { table: self.ttb0, alignment });
        }
        let output_bits = features.usable_output_bits();
        if self.ttb0.as_u64() >> output_bits != 0 {
            return Err(SmmuError::TableBeyondOutputSize { table: self.ttb0, output_bits });
        }
        Ok(())
    }
}

/// Alignment of a root table: its size, and at least 64 bytes. The root level resolves what
/// the full levels below it leave of the input address, so it may hold fewer entries than a
/// granule (Arm ARM DDI 0487, D8.2 "Translation tables and the translation process").
pub(super) fn root_table_alignment(granule_shift: u32, input_bits: u32) -> u64 {
    let index_bits = granule_shift - 3;
    let levels = (input_bits - granule_shift).div_ceil(index_bits);
    let root_index_bits = input_bits - granule_shift - (levels - 1) * index_bits;
    (8u64 << root_index_bits).max(64)
}

/// One stream table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamTableEntry(pub(super) [u64; ENTRY_WORDS]);

impl StreamTableEntry {
    /// Valid, Config = abort: the stream's transactions are refused, silently.
    pub(super) fn abort() -> Self {
        let mut words = [0; ENTRY_WORDS];
        words[STE_CONFIG_WORD] = (STE0::V::SET + STE0::CONFIG::Abort).value;
        Self(words)
    }

    /// Stage 1 through the one context descriptor at `context_descriptor` (64-byte aligned),
    /// stage 2 bypassed. No substreams (S1CDMax = 0), no stalls, no ATS, EL1 regime.
    pub(super) fn stage1(context_descriptor: PhysAddr) -> Self {
        let mut words = [0; ENTRY_WORDS];
        words[STE_CONFIG_WORD] = (STE0::V::SET
            + STE0::CONFIG::Stage1Translate
            + STE0::S1FMT::Linear
            + STE0::S1CONTEXTPTR.val(context_descriptor.as_u64() >> 6)
            + STE0::S1CDMAX.val(0))
        .value;
        words[1] = (STE1::S1DSS.val(0)
            + STE1::S1CIR::WriteBackReadAllocate
            + STE1::S1COR::WriteBackReadAllocate
            + STE1::S1CSH::InnerShareable
            + STE1::S1STALLD::CLEAR
            + STE1::EATS::Abort
            + STE1::STRW::El1
            + STE1::SHCFG::Incoming)
            .value;
        Self(words)
    }

    /// Whether the entry translates through a context descriptor.
    pub(super) fn translates(&self) -> bool {
        let config = LocalRegisterCopy::<u64, STE0::Register>::new(self.0[STE_CONFIG_WORD]);
        config.is_set(STE0::V) && config.matches_all(STE0::CONFIG::Stage1Translate)
    }
}

/// One context descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContextDescriptor(pub(super) [u64; ENTRY_WORDS]);

impl ContextDescriptor {
    /// The descriptor for `context`, whose fields [`Stage1Context::check`] accepted, with
    /// output size `output_size` (an IPS encoding). Faults are recorded (R) and abort the
    /// transaction (A); the access flag is checked (AFFD = 0) since the tables set AF in every
    /// entry they create; TTB1 is off (EPD1); walks are write-back and inner shareable like the
    /// CPU's.
    pub(super) fn stage1(context: &Stage1Context, output_size: u64) -> Self {
        let granule = match context.granule_shift {
            16 => CD0::TG0::Granule64K,
            14 => CD0::TG0::Granule16K,
            _ => CD0::TG0::Granule4K,
        };
        let mut words = [0; ENTRY_WORDS];
        words[0] = (CD0::T0SZ.val(u64::from(64 - context.input_bits))
            + granule
            + CD0::IR0::WriteBackWriteAllocate
            + CD0::OR0::WriteBackWriteAllocate
            + CD0::SH0::InnerShareable
            + CD0::EPD0::CLEAR
            + CD0::ENDI::CLEAR
            + CD0::EPD1::SET
            + CD0::V::SET
            + CD0::IPS.val(output_size)
            + CD0::AFFD::CLEAR
            + CD0::TBI.val(0)
            + CD0::AA64::SET
            + CD0::HD::CLEAR
            + CD0::HA::CLEAR
            + CD0::S::CLEAR
            + CD0::R::SET
            + CD0::A::SET
            + CD0::ASET::SET
            + CD0::ASID.val(context.asid.into()))
        .value;
        words[1] = CD1::TTB0.val(context.ttb0.as_u64() >> 4).value;
        words[3] = context.mair;
        Self(words)
    }

    pub(super) fn asid(&self) -> u16 {
        LocalRegisterCopy::<u64, CD0::Register>::new(self.0[0]).read(CD0::ASID) as u16
    }
}

/// A table of STEs or CDs in memory the SMMU reads, entry `i` at `physical + 64 * i`.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntryTable {
    words: NonNull<u64>,
    physical: PhysAddr,
    entries: u64,
}

impl EntryTable {
    /// # Safety
    /// `words` points at `entries * 8` words of memory that live as long as the SMMU uses
    /// them, at physical address `physical`, and nothing else writes them.
    pub(super) unsafe fn new(words: NonNull<u64>, physical: PhysAddr, entries: u64) -> Self {
        Self { words, physical, entries }
    }

    pub(super) fn address(&self, index: u32) -> PhysAddr {
        self.physical.add(u64::from(index) * ENTRY_BYTES as u64)
    }

    fn word_pointer(&self, index: u32, word: usize) -> *mut u64 {
        assert!(
            u64::from(index) < self.entries && word < ENTRY_WORDS,
            "entry {index} word {word} is outside the table"
        );
        // SAFETY: inside the table, as just checked.
        unsafe { self.words.as_ptr().add(index as usize * ENTRY_WORDS + word) }
    }

    pub(super) fn read(&self, index: u32) -> [u64; ENTRY_WORDS] {
        // SAFETY: `word_pointer` stays inside the table (`new`).
        core::array::from_fn(|word| u64::from_le(unsafe { self.word_pointer(index, word).read_volatile() }))
    }

    /// One 64-bit store, which the SMMU observes whole.
    pub(super) fn write_word(&self, index: u32, word: usize, value: u64) {
        // SAFETY: as in `read`; the table is this driver's alone to write (`new`).
        unsafe { self.word_pointer(index, word).write_volatile(value.to_le()) };
    }

    pub(super) fn write(&self, index: u32, words: &[u64; ENTRY_WORDS]) {
        for (word, value) in words.iter().enumerate() {
            self.write_word(index, word, *value);
        }
    }
}
