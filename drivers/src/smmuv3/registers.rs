//! The SMMU's registers: two consecutive 64 KiB pages (IHI 0070, 6.1 "Memory map").
//!
//! Page 0 holds identification, control, the stream table base and the command queue. Page 1
//! holds the event queue's PROD and CONS on a page of their own, so that the indices a consumer
//! moves can be mapped apart from the controls (6.2 "Register overview"). Only the registers
//! this driver uses are named; the rest of each page is padding.
//!
//! The ID registers (`IDR*`, `AIDR`) describe what the implementation offers and are decoded
//! into [`super::Features`]. `CR0` turns the SMMU and its queues on; every change to it is
//! acknowledged in `CR0ACK` once it has taken effect. `GERROR` and `GERRORN` report global
//! errors by *toggling*: a bit that differs between them is an error not yet acknowledged, and
//! software acknowledges it by flipping its bit in `GERRORN` (6.3.18, 6.3.19).
//!
//! The driver reaches them through a `safe_mmio::UniqueMmioPointer` to [`Registers`], never
//! a reference (why: the crate documentation in `lib.rs`). No SMMU register changes when
//! read, so every read is `ReadPure`; the bit layouts below describe values only.

use safe_mmio::fields::{ReadPure, ReadPureWrite};
use tock_registers::register_bitfields;

use crate::mmio::register_offsets;

/// Offset of register page 1 from page 0.
pub(super) const PAGE_1_OFFSET: usize = 0x1_0000;

register_bitfields! {
    u32,

    /// SMMU_IDR0, the main feature register (6.3.1).
    pub(super) IDR0 [
        /// Stream table formats: linear only, or 2-level as well.
        ST_LEVEL OFFSET(27) NUMBITS(2) [
            Linear = 0,
            TwoLevel = 1
        ],
        /// 1: a terminated transaction is always aborted (CD.A must be 1).
        TERM_MODEL OFFSET(26) NUMBITS(1) [],
        /// Whether faulting transactions can (or must) stall until software resumes them.
        STALL_MODEL OFFSET(24) NUMBITS(2) [
            StallOrTerminate = 0,
            TerminateOnly = 1,
            StallForced = 2
        ],
        /// Endianness of translation tables and structures in memory.
        TTENDIAN OFFSET(21) NUMBITS(2) [
            Mixed = 0,
            Little = 2,
            Big = 3
        ],
        /// 16-bit ASIDs (otherwise 8).
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// The EL2 stream world and the `CMD_TLBI_EL2_*` commands.
        HYP OFFSET(9) NUMBITS(1) [],
        /// Coherent access to tables, queues and translated data.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// Translation table formats.
        TTF OFFSET(2) NUMBITS(2) [
            AArch32 = 1,
            AArch64 = 2,
            Both = 3
        ],
        /// Stage 1 (VA to PA for one context) is implemented.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Stage 2 (IPA to PA, for a hypervisor) is implemented.
        S2P OFFSET(0) NUMBITS(1) []
    ],

    /// SMMU_IDR1: table and queue presets and sizes (6.3.2).
    pub(super) IDR1 [
        /// STRTAB_BASE and STRTAB_BASE_CFG are fixed by the implementation.
        TABLES_PRESET OFFSET(30) NUMBITS(1) [],
        /// The queue base registers are fixed by the implementation.
        QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
        /// log2 of the largest command queue, in entries.
        CMDQS OFFSET(21) NUMBITS(5) [],
        /// log2 of the largest event queue, in entries.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// SubstreamID width (PCIe PASID).
        SSIDSIZE OFFSET(6) NUMBITS(5) [],
        /// StreamID width.
        SIDSIZE OFFSET(0) NUMBITS(6) []
    ],

    /// SMMU_IDR3: optional features (6.3.4).
    pub(super) IDR3 [
        /// Break-before-make levels supported when changing block sizes.
        BBML OFFSET(11) NUMBITS(2) [],
        /// Range invalidation (`CMD_TLBI_*` with NUM/SCALE/TG).
        RIL OFFSET(10) NUMBITS(1) []
    ],

    /// SMMU_IDR5: granules and output address size (6.3.6).
    pub(super) IDR5 [
        GRAN64K OFFSET(6) NUMBITS(1) [],
        GRAN16K OFFSET(5) NUMBITS(1) [],
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// Output address size, encoded as `ID_AA64MMFR0_EL1.PARange`.
        OAS OFFSET(0) NUMBITS(3) []
    ],

    /// SMMU_AIDR: architecture revision, SMMUv3.x (6.3.8).
    pub(super) AIDR [
        ARCH_MAJOR_REV OFFSET(4) NUMBITS(4) [],
        ARCH_MINOR_REV OFFSET(0) NUMBITS(4) []
    ],

    /// SMMU_CR0 and SMMU_CR0ACK (6.3.9, 6.3.10).
    pub(super) CR0 [
        CMDQEN OFFSET(3) NUMBITS(1) [],
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Translation on: with it clear, transactions follow SMMU_GBPA instead.
        SMMUEN OFFSET(0) NUMBITS(1) []
    ],

    /// SMMU_CR1: memory attributes of the SMMU's own table and queue accesses (6.3.11).
    pub(super) CR1 [
        TABLE_SH OFFSET(10) NUMBITS(2) [
            InnerShareable = 3
        ],
        TABLE_OC OFFSET(8) NUMBITS(2) [
            WriteBack = 1
        ],
        TABLE_IC OFFSET(6) NUMBITS(2) [
            WriteBack = 1
        ],
        QUEUE_SH OFFSET(4) NUMBITS(2) [
            InnerShareable = 3
        ],
        QUEUE_OC OFFSET(2) NUMBITS(2) [
            WriteBack = 1
        ],
        QUEUE_IC OFFSET(0) NUMBITS(2) [
            WriteBack = 1
        ]
    ],

    /// SMMU_CR2 (6.3.12).
    pub(super) CR2 [
        /// Private TLB maintenance: the SMMU ignores the CPUs' broadcast TLB invalidations.
        PTM OFFSET(2) NUMBITS(1) [],
        /// Record C_BAD_STREAMID for StreamIDs beyond the stream table.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// EL2 stream world behaves as EL2&0 (VHE).
        E2H OFFSET(0) NUMBITS(1) []
    ],

    /// SMMU_GERROR and SMMU_GERRORN (6.3.18, 6.3.19).
    pub(super) GERROR [
        CMDQ_ERR OFFSET(0) NUMBITS(1) []
    ],

    /// SMMU_STRTAB_BASE_CFG (6.3.24).
    pub(super) STRTAB_BASE_CFG [
        FMT OFFSET(16) NUMBITS(2) [
            Linear = 0
        ],
        /// log2 of the number of STEs.
        LOG2SIZE OFFSET(0) NUMBITS(6) []
    ],

    /// SMMU_CMDQ_CONS (6.3.27).
    pub(super) CMDQ_CONS [
        /// Why the command at the read index could not be consumed (7.1).
        ERR OFFSET(24) NUMBITS(7) []
    ],

    /// SMMU_EVENTQ_PROD and SMMU_EVENTQ_CONS (6.3.29, 6.3.30).
    pub(super) EVENTQ_INDEX [
        /// PROD.OVFLG toggles when events were lost; CONS.OVACKFLG acknowledges it by copying it.
        OVERFLOW OFFSET(31) NUMBITS(1) []
    ]
}

register_bitfields! {
    u64,

    /// SMMU_STRTAB_BASE (6.3.23).
    pub(super) STRTAB_BASE [
        /// Read-allocate hint for the SMMU's stream table fetches.
        RA OFFSET(62) NUMBITS(1) [],
        /// Physical address bits [51:6], aligned to the table size.
        ADDR OFFSET(6) NUMBITS(46) []
    ],

    /// SMMU_CMDQ_BASE and SMMU_EVENTQ_BASE (6.3.25, 6.3.28).
    pub(super) QUEUE_BASE [
        /// Read-allocate (command queue) or write-allocate (event queue) hint.
        ALLOCATE OFFSET(62) NUMBITS(1) [],
        /// Physical address bits [51:5], aligned to the queue size.
        ADDR OFFSET(5) NUMBITS(47) [],
        /// log2 of the number of entries.
        LOG2SIZE OFFSET(0) NUMBITS(5) []
    ]
}

/// Register pages 0 and 1, as one block: the registers of page 0 this driver uses, the rest
/// of page 0 as padding, then the event queue indices of page 1 (6.2 "Register overview").
#[repr(C)]
pub(super) struct Registers {
    /// SMMU_IDR0 (6.3.1).
    pub(super) idr0: ReadPure<u32>,
    /// SMMU_IDR1 (6.3.2).
    pub(super) idr1: ReadPure<u32>,
    _idr2: u32,
    /// SMMU_IDR3 (6.3.4).
    pub(super) idr3: ReadPure<u32>,
    _idr4: u32,
    /// SMMU_IDR5 (6.3.6).
    pub(super) idr5: ReadPure<u32>,
    _iidr: u32,
    /// SMMU_AIDR (6.3.8).
    pub(super) aidr: ReadPure<u32>,
    /// SMMU_CR0 (6.3.9).
    pub(super) cr0: ReadPureWrite<u32>,
    /// SMMU_CR0ACK (6.3.10).
    pub(super) cr0ack: ReadPure<u32>,
    /// SMMU_CR1 (6.3.11).
    pub(super) cr1: ReadPureWrite<u32>,
    /// SMMU_CR2 (6.3.12).
    pub(super) cr2: ReadPureWrite<u32>,
    _status_bypass_and_interrupts: [u32; 12],
    /// SMMU_GERROR (6.3.18).
    pub(super) gerror: ReadPure<u32>,
    /// SMMU_GERRORN (6.3.19).
    pub(super) gerrorn: ReadPureWrite<u32>,
    _gerror_interrupt: [u32; 6],
    /// SMMU_STRTAB_BASE (6.3.23).
    pub(super) strtab_base: ReadPureWrite<u64>,
    /// SMMU_STRTAB_BASE_CFG (6.3.24).
    pub(super) strtab_base_cfg: ReadPureWrite<u32>,
    _reserved: u32,
    /// SMMU_CMDQ_BASE (6.3.25).
    pub(super) cmdq_base: ReadPureWrite<u64>,
    /// SMMU_CMDQ_PROD (6.3.26): write index and wrap bit, moved by software.
    pub(super) cmdq_prod: ReadPureWrite<u32>,
    /// SMMU_CMDQ_CONS (6.3.27): read index and wrap bit, moved by the SMMU; written only while
    /// the queue is off.
    pub(super) cmdq_cons: ReadPureWrite<u32>,
    /// SMMU_EVENTQ_BASE (6.3.28).
    pub(super) eventq_base: ReadPureWrite<u64>,
    _rest_of_page_0: [u32; PAGE_1_OFFSET / 4],
    /// SMMU_EVENTQ_PROD (6.3.29), page 1: moved by the SMMU; written only while the queue is
    /// off.
    pub(super) eventq_prod: ReadPureWrite<u32>,
    /// SMMU_EVENTQ_CONS (6.3.30), page 1: moved by software.
    pub(super) eventq_cons: ReadPureWrite<u32>,
}

register_offsets!(
    Registers {
        idr0: 0x00,
        idr1: 0x04,
        idr3: 0x0c,
        idr5: 0x14,
        aidr: 0x1c,
        cr0: 0x20,
        cr0ack: 0x24,
        cr1: 0x28,
        cr2: 0x2c,
        gerror: 0x60,
        gerrorn: 0x64,
        strtab_base: 0x80,
        strtab_base_cfg: 0x88,
        cmdq_base: 0x90,
        cmdq_prod: 0x98,
        cmdq_cons: 0x9c,
        eventq_base: 0xa0,
        eventq_prod: PAGE_1_OFFSET + 0xa8,
        eventq_cons: PAGE_1_OFFSET + 0xac,
    }
    size PAGE_1_OFFSET + 0xb0
);
