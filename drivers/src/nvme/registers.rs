//! The controller's registers: BAR0 of an NVMe PCIe function (NVMe Base Specification 2.0,
//! 3.1.4 "Controller Properties"; the doorbells are PCIe-specific, NVMe over PCIe Transport
//! Specification 1.0, 3.1.2).
//!
//! The base spec calls them *properties*, because over a fabric they are read with commands;
//! on PCIe they are plain memory-mapped registers:
//!
//! ```text
//!  0x00  CAP   what the controller can do: queue size, timeout, page sizes, doorbell stride
//!  0x08  VS    the NVMe version it implements
//!  0x14  CC    what the host chose: page size, entry sizes, command set; EN starts it
//!  0x1c  CSTS  RDY once started (or stopped), CFS on a fatal error
//!  0x24  AQA   sizes of the admin queues          } set while CC.EN = 0,
//!  0x28  ASQ   address of the admin submission queue } read by the controller
//!  0x30  ACQ   address of the admin completion queue } when it is enabled
//!  0x1000 + ...  doorbells: one SQ tail and one CQ head per queue, CAP.DSTRD apart
//! ```
//!
//! Starting a controller is a handshake: write the admin queue registers and CC with EN = 1,
//! then wait (at most CAP.TO) for CSTS.RDY = 1. Clearing EN resets it, and RDY = 0 says it
//! has let go of every queue (3.5.1 "Memory-based Controller Initialization").

//!
//! A driver reaches them through [`ControllerRegisters`], which owns a
//! `safe_mmio::UniqueMmioPointer` to [`Properties`], never a reference (why: the crate
//! documentation in `lib.rs`). No property changes when read, so every read is `ReadPure`.

use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

use safe_mmio::fields::{ReadPure, ReadPureWrite, WriteOnly};
use safe_mmio::{UniqueMmioPointer, field, field_shared};
use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::mmio::register_offsets;

register_bitfields! {
    u64,

    /// CAP, Controller Capabilities (3.1.4.1).
    CAP [
        /// Maximum Queue Entries Supported, 0-based: the largest I/O queue the controller takes.
        MQES OFFSET(0) NUMBITS(16) [],
        /// Contiguous Queues Required: every I/O queue must be physically contiguous.
        CQR OFFSET(16) NUMBITS(1) [],
        /// Arbitration Mechanisms Supported beyond round robin (bit 0: weighted, bit 1: vendor).
        AMS OFFSET(17) NUMBITS(2) [],
        /// Timeout: the longest CSTS.RDY may take to follow CC.EN, in 500 ms units.
        TO OFFSET(24) NUMBITS(8) [],
        /// Doorbell Stride: doorbells are `4 << DSTRD` bytes apart.
        DSTRD OFFSET(32) NUMBITS(4) [],
        /// NVM Subsystem Reset Supported (the NSSR register).
        NSSRS OFFSET(36) NUMBITS(1) [],
        /// Command Sets Supported: bit 0 the NVM command set, bit 6 I/O command sets by
        /// identifier, bit 7 admin commands only.
        CSS OFFSET(37) NUMBITS(8) [],
        /// Boot Partition Support.
        BPS OFFSET(45) NUMBITS(1) [],
        /// Memory Page Size Minimum: `2 ^ (12 + MPSMIN)` bytes.
        MPSMIN OFFSET(48) NUMBITS(4) [],
        /// Memory Page Size Maximum: `2 ^ (12 + MPSMAX)` bytes.
        MPSMAX OFFSET(52) NUMBITS(4) []
    ]
}

register_bitfields! {
    u32,

    /// VS, Version (3.1.4.2): 1.4.0 is `0x0001_0400`.
    VS [
        MJR OFFSET(16) NUMBITS(16) [],
        MNR OFFSET(8) NUMBITS(8) [],
        TER OFFSET(0) NUMBITS(8) []
    ],

    /// CC, Controller Configuration (3.1.4.5). Everything but EN and SHN is only written
    /// while the controller is disabled.
    CC [
        /// Enable: 1 starts the controller, 0 resets it.
        EN OFFSET(0) NUMBITS(1) [],
        /// I/O Command Set Selected.
        CSS OFFSET(4) NUMBITS(3) [
            Nvm = 0b000,
            AllSupported = 0b110,
            AdminOnly = 0b111
        ],
        /// Memory Page Size: `2 ^ (12 + MPS)` bytes, the unit of PRP entries.
        MPS OFFSET(7) NUMBITS(4) [],
        /// Arbitration Mechanism Selected among the submission queues.
        AMS OFFSET(11) NUMBITS(3) [
            RoundRobin = 0b000,
            WeightedRoundRobin = 0b001,
            VendorSpecific = 0b111
        ],
        /// Shutdown Notification.
        SHN OFFSET(14) NUMBITS(2) [
            NoNotification = 0b00,
            Normal = 0b01,
            Abrupt = 0b10
        ],
        /// I/O Submission Queue Entry Size, log2 of bytes.
        IOSQES OFFSET(16) NUMBITS(4) [],
        /// I/O Completion Queue Entry Size, log2 of bytes.
        IOCQES OFFSET(20) NUMBITS(4) []
    ],

    /// CSTS, Controller Status (3.1.4.6).
    CSTS [
        /// Ready: the controller follows CC.EN; it processes commands only while this is 1.
        RDY OFFSET(0) NUMBITS(1) [],
        /// Controller Fatal Status: only a reset recovers.
        CFS OFFSET(1) NUMBITS(1) [],
        /// Shutdown Status.
        SHST OFFSET(2) NUMBITS(2) [
            Normal = 0b00,
            Occurring = 0b01,
            Complete = 0b10
        ]
    ],

    /// AQA, Admin Queue Attributes (3.1.4.8): both sizes 0-based.
    AQA [
        /// Admin Submission Queue Size.
        ASQS OFFSET(0) NUMBITS(12) [],
        /// Admin Completion Queue Size.
        ACQS OFFSET(16) NUMBITS(12) []
    ]
}

/// The controller properties of BAR0 this driver uses, at their offsets of 3.1.4 "Controller
/// Properties"; the doorbells follow at 0x1000 ([`doorbell_offset`]).
#[repr(C)]
pub struct Properties {
    /// CAP, Controller Capabilities (3.1.4.1).
    pub cap: ReadPure<u64>,
    /// VS, Version (3.1.4.2).
    pub vs: ReadPure<u32>,
    /// INTMS, Interrupt Mask Set (3.1.4.3): 1 bits mask pin-based and MSI vectors.
    pub intms: WriteOnly<u32>,
    /// INTMC, Interrupt Mask Clear (3.1.4.4).
    pub intmc: WriteOnly<u32>,
    /// CC, Controller Configuration (3.1.4.5).
    pub cc: ReadPureWrite<u32>,
    _reserved0: u32,
    /// CSTS, Controller Status (3.1.4.6).
    pub csts: ReadPure<u32>,
    /// NSSR, NVM Subsystem Reset (3.1.4.7): writing "NVMe" (0x4E564D65) resets the subsystem.
    pub nssr: ReadPureWrite<u32>,
    /// AQA, Admin Queue Attributes (3.1.4.8).
    pub aqa: ReadPureWrite<u32>,
    /// ASQ, Admin Submission Queue Base Address (3.1.4.9), page-aligned.
    pub asq: ReadPureWrite<u64>,
    /// ACQ, Admin Completion Queue Base Address (3.1.4.10), page-aligned.
    pub acq: ReadPureWrite<u64>,
}

register_offsets!(
    Properties {
        cap: 0x00,
        vs: 0x08,
        intms: 0x0c,
        intmc: 0x10,
        cc: 0x14,
        csts: 0x1c,
        nssr: 0x20,
        aqa: 0x24,
        asq: 0x28,
        acq: 0x30,
    }
    size 0x38
);

/// An NVMe controller's properties, owned: how a driver reads what the controller can do and
/// starts or stops it. It holds a `UniqueMmioPointer` to BAR0, so it moves between CPUs by
/// that pointer's contract and writes need `&mut self`.
pub struct ControllerRegisters {
    properties: UniqueMmioPointer<'static, Properties>,
}

impl ControllerRegisters {
    /// Takes over BAR0's properties.
    ///
    /// # Safety
    /// `base` is the virtual address of an NVMe function's BAR0, mapped as device memory for
    /// as long as the returned value lives, and nothing else accesses its properties.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        // SAFETY: the caller vouches for the mapping and for being the only user; `Properties`
        // matches BAR0's layout (checked by `register_offsets!`), and device memory is
        // reachable from every CPU.
        Self { properties: unsafe { UniqueMmioPointer::new(base.cast()) } }
    }

    /// CAP (3.1.4.1), decoded.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::decode(field_shared!(self.properties, cap).read())
    }

    /// VS (3.1.4.2), decoded.
    pub fn version(&self) -> Version {
        Version::decode(field_shared!(self.properties, vs).read())
    }

    /// CSTS (3.1.4.6), decoded.
    pub fn status(&self) -> ControllerStatus {
        ControllerStatus::decode(field_shared!(self.properties, csts).read())
    }

    /// Masks the interrupt vectors whose bits are set in `vectors` (INTMS, 3.1.4.3).
    pub fn mask_interrupts(&mut self, vectors: u32) {
        field!(self.properties, intms).write(vectors);
    }

    /// Unmasks the interrupt vectors whose bits are set in `vectors` (INTMC, 3.1.4.4).
    pub fn unmask_interrupts(&mut self, vectors: u32) {
        field!(self.properties, intmc).write(vectors);
    }

    /// Writes AQA, ASQ and ACQ (3.1.4.8 to 3.1.4.10): the admin queues' sizes (from
    /// [`admin_queue_attributes`]) and addresses. Only while the controller is disabled.
    pub fn set_admin_queues(&mut self, attributes: u32, submission: u64, completion: u64) {
        field!(self.properties, aqa).write(attributes);
        field!(self.properties, asq).write(submission);
        field!(self.properties, acq).write(completion);
    }

    /// Writes CC (3.1.4.5): [`enabling_configuration`] starts the controller, 0 resets it.
    pub fn set_configuration(&mut self, configuration: u32) {
        field!(self.properties, cc).write(configuration);
    }
}

/// The fields of CAP that a driver needs, in units a reader can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The most entries an I/O queue may have (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// I/O queues must be physically contiguous (CAP.CQR).
    pub contiguous_queues_required: bool,
    /// How long CSTS.RDY may take to follow CC.EN (CAP.TO × 500 ms).
    pub ready_timeout: Duration,
    /// Bytes between consecutive doorbells (`4 << CAP.DSTRD`).
    pub doorbell_stride: usize,
    /// The NVM command set is supported (CAP.CSS bit 0).
    pub nvm_command_set: bool,
    /// Smallest memory page size the controller takes in CC.MPS (`1 << (12 + CAP.MPSMIN)`).
    pub min_page_size: usize,
    /// Largest memory page size (`1 << (12 + CAP.MPSMAX)`).
    pub max_page_size: usize,
}

/// CAP.TO counts in these.
const TIMEOUT_UNIT: Duration = Duration::from_millis(500);
/// CAP.CSS bit 0: the NVM command set.
const CSS_NVM: u64 = 1 << 0;
/// Memory page sizes are `2 ^ (12 + n)`: 4 KiB upwards.
const PAGE_SHIFT_BASE: u32 = 12;

impl Capabilities {
    /// Decodes a CAP value (3.1.4.1).
    pub fn decode(cap: u64) -> Self {
        let cap = LocalRegisterCopy::<u64, CAP::Register>::new(cap);
        Self {
            max_queue_entries: cap.read(CAP::MQES) as u32 + 1,
            contiguous_queues_required: cap.is_set(CAP::CQR),
            ready_timeout: TIMEOUT_UNIT * cap.read(CAP::TO) as u32,
            doorbell_stride: 4 << cap.read(CAP::DSTRD),
            nvm_command_set: cap.read(CAP::CSS) & CSS_NVM != 0,
            min_page_size: 1 << (PAGE_SHIFT_BASE + cap.read(CAP::MPSMIN) as u32),
            max_page_size: 1 << (PAGE_SHIFT_BASE + cap.read(CAP::MPSMAX) as u32),
        }
    }
}

/// The NVMe version a controller implements (VS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// MJR: the major version.
    pub major: u16,
    /// MNR: the minor version.
    pub minor: u8,
    /// TER: the tertiary version.
    pub tertiary: u8,
}

impl Version {
    /// Decodes a VS value (3.1.4.2).
    pub fn decode(vs: u32) -> Self {
        let vs = LocalRegisterCopy::<u32, VS::Register>::new(vs);
        Self { major: vs.read(VS::MJR) as u16, minor: vs.read(VS::MNR) as u8, tertiary: vs.read(VS::TER) as u8 }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.tertiary)
    }
}

/// What CSTS says about the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerStatus {
    /// CSTS.RDY: the controller has followed CC.EN to 1 (and takes commands), or to 0.
    pub ready: bool,
    /// CSTS.CFS: a fatal error; only a reset helps.
    pub fatal: bool,
}

impl ControllerStatus {
    /// Decodes a CSTS value (3.1.4.6).
    pub fn decode(csts: u32) -> Self {
        let csts = LocalRegisterCopy::<u32, CSTS::Register>::new(csts);
        Self { ready: csts.is_set(CSTS::RDY), fatal: csts.is_set(CSTS::CFS) }
    }
}

/// log2 of a submission queue entry's 64 bytes (CC.IOSQES; 4.1 "Submission Queue Entry").
const SUBMISSION_ENTRY_SHIFT: u32 = 6;
/// log2 of a completion queue entry's 16 bytes (CC.IOCQES; 4.2 "Completion Queue Entry").
const COMPLETION_ENTRY_SHIFT: u32 = 4;
/// CC.MPS is four bits: pages of 4 KiB up to 128 MiB.
const LARGEST_PAGE_SIZE: usize = 1 << (PAGE_SHIFT_BASE + 15);
/// An admin queue has 2 to 4096 entries (AQA.ASQS and ACQS: 12 bits, 0-based, at least 1).
const ADMIN_QUEUE_ENTRIES: core::ops::RangeInclusive<u16> = 2..=4096;

/// The CC value that starts a controller with `page_size` memory pages: EN, the NVM command
/// set, round-robin arbitration, 64-byte submission and 16-byte completion entries.
pub fn enabling_configuration(page_size: usize) -> Result<u32, RegisterError> {
    if !page_size.is_power_of_two() || !(1 << PAGE_SHIFT_BASE..=LARGEST_PAGE_SIZE).contains(&page_size) {
        return Err(RegisterError::UnsupportedPageSize { page_size });
    }
    let page_size_code = page_size.trailing_zeros() - PAGE_SHIFT_BASE;
    let configuration = CC::EN::SET
        + CC::CSS::Nvm
        + CC::MPS.val(page_size_code)
        + CC::AMS::RoundRobin
        + CC::SHN::NoNotification
        + CC::IOSQES.val(SUBMISSION_ENTRY_SHIFT)
        + CC::IOCQES.val(COMPLETION_ENTRY_SHIFT);
    Ok(configuration.value)
}

/// The AQA value for admin queues of `submission_entries` and `completion_entries` slots.
pub fn admin_queue_attributes(submission_entries: u16, completion_entries: u16) -> Result<u32, RegisterError> {
    if !ADMIN_QUEUE_ENTRIES.contains(&submission_entries) {
        return Err(RegisterError::AdminSubmissionQueueSize { entries: submission_entries });
    }
    if !ADMIN_QUEUE_ENTRIES.contains(&completion_entries) {
        return Err(RegisterError::AdminCompletionQueueSize { entries: completion_entries });
    }
    let attributes =
        AQA::ASQS.val(u32::from(submission_entries) - 1) + AQA::ACQS.val(u32::from(completion_entries) - 1);
    Ok(attributes.value)
}

/// The two doorbells of a queue pair; each names the queue it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// SQyTDBL: the host wrote commands up to (not including) this slot of submission queue y.
    SubmissionTail,
    /// CQyHDBL: the host consumed completions up to this slot of completion queue y.
    CompletionHead,
}

/// Where the doorbells start in BAR0.
const DOORBELLS: usize = 0x1000;

/// Offset in BAR0 of `doorbell` of queue `queue`, doorbells being `stride` bytes apart: the
/// submission tail at `0x1000 + 2y × stride`, the completion head one stride later (NVMe over
/// PCIe Transport 1.0, 3.1.2.1 SQyTDBL and 3.1.2.2 CQyHDBL).
pub fn doorbell_offset(queue: u16, doorbell: Doorbell, stride: usize) -> usize {
    let index = 2 * usize::from(queue)
        + match doorbell {
            Doorbell::SubmissionTail => 0,
            Doorbell::CompletionHead => 1,
        };
    DOORBELLS + index * stride
}

/// A register value this driver refuses to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// CC.MPS encodes powers of two from 4 KiB to 128 MiB only.
    UnsupportedPageSize {
        /// The page size asked for, in bytes.
        page_size: usize,
    },
    /// AQA.ASQS takes 2 to 4096 entries.
    AdminSubmissionQueueSize {
        /// The entries asked for.
        entries: u16,
    },
    /// AQA.ACQS takes 2 to 4096 entries.
    AdminCompletionQueueSize {
        /// The entries asked for.
        entries: u16,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::UnsupportedPageSize { page_size } => {
                write!(f, "a memory page size of {page_size} bytes: CC.MPS encodes powers of two from 4 KiB to 128 MiB")
            }
            RegisterError::AdminSubmissionQueueSize { entries } => {
                write!(f, "an admin submission queue of {entries} entries: AQA.ASQS takes 2 to 4096")
            }
            RegisterError::AdminCompletionQueueSize { entries } => {
                write!(f, "an admin completion queue of {entries} entries: AQA.ACQS takes 2 to 4096")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;

    use super::*;

    /// CAP of QEMU 10.0.2's `-device nvme`, read from BAR0 of a running instance: MQES 0x7ff,
    /// CQR, TO 0x0f, DSTRD 0, CSS bits 0 (NVM) and 6 (I/O command sets), MPSMIN 0, MPSMAX 4.
    const QEMU_CAP: u64 = 0x0040_0820_0f01_07ff;
    /// VS of the same controller: NVMe 1.4.0.
    const QEMU_VS: u32 = 0x0001_0400;

    /// Bits `[start, start + length)` of `value`.
    fn bits(value: u32, start: u32, length: u32) -> u32 {
        (value >> start) & ((1 << length) - 1)
    }

    /// The handle reads and writes the properties at their offsets: a simulated BAR0 (memory)
    /// reached through the same pointer type as the hardware.
    #[test]
    fn controller_registers_reach_each_property() {
        let mut bar = [0u64; 0x38 / 8];
        bar[0] = QEMU_CAP;
        bar[1] = u64::from(QEMU_VS);
        bar[0x18 / 8] = 0b01 << 32; // CSTS.RDY
        {
            // SAFETY: `bar` is as long as the properties, aligned, and outlives the handle.
            let mut registers = unsafe { ControllerRegisters::new(NonNull::new(bar.as_mut_ptr().cast()).unwrap()) };
            assert_eq!(registers.capabilities(), Capabilities::decode(QEMU_CAP));
            assert_eq!(registers.version(), Version { major: 1, minor: 4, tertiary: 0 });
            assert_eq!(registers.status(), ControllerStatus { ready: true, fatal: false });
            registers.mask_interrupts(u32::MAX);
            registers.set_admin_queues(0x0007_0007, 0x8000_0000, 0x8000_1000);
            registers.set_configuration(0x0046_0001);
        }
        assert_eq!(bar[1] >> 32, u64::from(u32::MAX), "INTMS at 0x0c");
        assert_eq!(bar[0x10 / 8] >> 32, 0x0046_0001, "CC at 0x14");
        assert_eq!(bar[0x20 / 8] >> 32, 0x0007_0007, "AQA at 0x24");
        assert_eq!((bar[0x28 / 8], bar[0x30 / 8]), (0x8000_0000, 0x8000_1000), "ASQ and ACQ");
    }

    #[test]
    fn qemu_capabilities_decode() {
        assert_eq!(
            Capabilities::decode(QEMU_CAP),
            Capabilities {
                max_queue_entries: 2048,
                contiguous_queues_required: true,
                ready_timeout: Duration::from_millis(7500),
                doorbell_stride: 4,
                nvm_command_set: true,
                min_page_size: 4096,
                max_page_size: 64 << 10,
            }
        );
    }

    #[test]
    fn other_capabilities_decode() {
        // MQES 0xffff, no CQR, TO 0xff, DSTRD 3, admin-only CSS, pages 64 KiB to 128 MiB.
        let cap = 0xffff | 0xff << 24 | 3 << 32 | 0x80 << 37 | 4 << 48 | 15 << 52;
        let capabilities = Capabilities::decode(cap);
        assert_eq!(capabilities.max_queue_entries, 65536);
        assert!(!capabilities.contiguous_queues_required && !capabilities.nvm_command_set);
        assert_eq!(capabilities.ready_timeout, Duration::from_millis(127_500));
        assert_eq!(capabilities.doorbell_stride, 32);
        assert_eq!((capabilities.min_page_size, capabilities.max_page_size), (64 << 10, 128 << 20));
    }

    #[test]
    fn version_and_status_decode() {
        let version = Version::decode(QEMU_VS);
        assert_eq!(version, Version { major: 1, minor: 4, tertiary: 0 });
        assert_eq!(format!("{version}"), "1.4.0");
        assert_eq!(format!("{}", Version::decode(0x0002_0001)), "2.0.1");
        assert_eq!(ControllerStatus::decode(0), ControllerStatus { ready: false, fatal: false });
        assert_eq!(ControllerStatus::decode(0b01), ControllerStatus { ready: true, fatal: false });
        assert_eq!(ControllerStatus::decode(0b10 | 0b1000), ControllerStatus { ready: false, fatal: true });
    }

    #[test]
    fn enabling_configuration_fields() {
        let cc = enabling_configuration(4096).unwrap();
        assert_eq!(cc, 0x0046_0001, "what QEMU and Linux write for 4 KiB pages");
        assert_eq!(bits(cc, 0, 1), 1, "EN");
        assert_eq!(bits(cc, 4, 3), 0, "CSS: NVM command set");
        assert_eq!(bits(cc, 7, 4), 0, "MPS: 4 KiB");
        assert_eq!(bits(cc, 11, 3), 0, "AMS: round robin");
        assert_eq!(bits(cc, 14, 2), 0, "SHN: no shutdown");
        assert_eq!(bits(cc, 16, 4), 6, "IOSQES: 64 bytes");
        assert_eq!(bits(cc, 20, 4), 4, "IOCQES: 16 bytes");
        assert_eq!(bits(enabling_configuration(64 << 10).unwrap(), 7, 4), 4);
        assert_eq!(bits(enabling_configuration(128 << 20).unwrap(), 7, 4), 15);
    }

    #[test]
    fn unencodable_page_sizes_are_refused() {
        for page_size in [0, 2048, 4097, 6 << 10, 256 << 20] {
            assert_eq!(enabling_configuration(page_size), Err(RegisterError::UnsupportedPageSize { page_size }));
        }
        assert_eq!(
            format!("{}", enabling_configuration(2048).unwrap_err()),
            "a memory page size of 2048 bytes: CC.MPS encodes powers of two from 4 KiB to 128 MiB"
        );
    }

    #[test]
    fn admin_queue_attributes_are_zero_based() {
        let aqa = admin_queue_attributes(8, 16).unwrap();
        assert_eq!((bits(aqa, 0, 12), bits(aqa, 16, 12)), (7, 15));
        assert_eq!(admin_queue_attributes(2, 4096), Ok(0x0fff_0001));
    }

    #[test]
    fn admin_queue_sizes_outside_the_range_are_refused() {
        let too_big = admin_queue_attributes(4097, 8);
        assert_eq!(too_big, Err(RegisterError::AdminSubmissionQueueSize { entries: 4097 }));
        let too_small = admin_queue_attributes(8, 1);
        assert_eq!(too_small, Err(RegisterError::AdminCompletionQueueSize { entries: 1 }));
        assert_eq!(
            format!("{}", too_small.unwrap_err()),
            "an admin completion queue of 1 entries: AQA.ACQS takes 2 to 4096"
        );
        assert_eq!(admin_queue_attributes(0, 8), Err(RegisterError::AdminSubmissionQueueSize { entries: 0 }));
    }

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(doorbell_offset(0, Doorbell::SubmissionTail, 4), 0x1000);
        assert_eq!(doorbell_offset(0, Doorbell::CompletionHead, 4), 0x1004);
        assert_eq!(doorbell_offset(1, Doorbell::SubmissionTail, 4), 0x1008);
        assert_eq!(doorbell_offset(1, Doorbell::CompletionHead, 4), 0x100c);
        // DSTRD 2: 16-byte stride.
        assert_eq!(doorbell_offset(3, Doorbell::CompletionHead, 16), 0x1000 + 7 * 16);
        assert_eq!(doorbell_offset(u16::MAX, Doorbell::CompletionHead, 4), 0x1000 + 0x1_ffff * 4);
    }
}
