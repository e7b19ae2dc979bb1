//! Event records: what the SMMU writes to the event queue when a transaction or a
//! configuration goes wrong (IHI 0070, 7.3 "Event records").
//!
//! A record is 32 bytes. Its first byte says what happened; the StreamID says who; the rest
//! depends on the event:
//!
//! ```text
//!  bits [7:0]     event type (F_TRANSLATION = 0x10, C_BAD_STE = 0x04, ...)
//!  bit  [11]      SSV: a SubstreamID is given in [31:12]
//!  bits [63:32]   StreamID
//!  bit  [97]      PnU: privileged access      } translation faults
//!  bit  [98]      InD: instruction fetch      } and F_UUT
//!  bit  [99]      RnW: 1 = read, 0 = write    }
//!  bits [191:128] InputAddr: the IOVA the device used
//!  bits [243:195] FetchAddr: the physical address of a structure whose fetch failed
//! ```
//!
//! `C_*` events are configuration errors: the driver wrote a structure the SMMU refuses.
//! `F_*` events are faults: a device did something its configuration does not allow, such as
//! touching an IOVA that is not mapped (F_TRANSLATION). A fault is recorded only if the context
//! descriptor says so (CD.R), which this driver always does.

use core::fmt;

use addr::PhysAddr;
use tock_registers::{LocalRegisterCopy, register_bitfields};

register_bitfields! {
    u64,

    /// Event record bits [63:0].
    EVENT0 [
        TYPE OFFSET(0) NUMBITS(8) [],
        SSV OFFSET(11) NUMBITS(1) [],
        SUBSTREAM_ID OFFSET(12) NUMBITS(20) [],
        STREAM_ID OFFSET(32) NUMBITS(32) []
    ],

    /// Event record bits [127:64].
    EVENT1 [
        PNU OFFSET(33) NUMBITS(1) [],
        IND OFFSET(34) NUMBITS(1) [],
        RNW OFFSET(35) NUMBITS(1) []
    ],

    /// Event record bits [255:192].
    EVENT3 [
        /// Physical address bits [51:3].
        FETCH_ADDR OFFSET(3) NUMBITS(49) []
    ]
}

/// Words per event queue entry.
pub(super) const EVENT_WORDS: usize = 4;

/// What an event record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// F_UUT (0x01): a transaction type the SMMU does not support.
    UnsupportedTransaction,
    /// C_BAD_STREAMID (0x02): the StreamID lies beyond the stream table.
    BadStreamId,
    /// F_STE_FETCH (0x03): reading the STE from memory failed.
    SteFetch,
    /// C_BAD_STE (0x04): the STE is invalid (V = 0) or holds an illegal setting.
    BadSte,
    /// F_STREAM_DISABLED (0x06): a transaction without SubstreamID on a stream that refuses those.
    StreamDisabled,
    /// F_TRANSL_FORBIDDEN (0x07): an already translated (ATS) transaction the stream refuses.
    TranslationForbidden,
    /// C_BAD_SUBSTREAMID (0x08): the SubstreamID lies beyond the CD table.
    BadSubstreamId,
    /// F_CD_FETCH (0x09): reading the CD from memory failed.
    CdFetch,
    /// C_BAD_CD (0x0a): the CD is invalid or holds an illegal setting.
    BadCd,
    /// F_WALK_EABT (0x0b): reading a translation table entry failed.
    WalkExternalAbort,
    /// F_TRANSLATION (0x10): no valid entry maps the address.
    TranslationFault,
    /// F_ADDR_SIZE (0x11): the address exceeds the input or output size.
    AddressSizeFault,
    /// F_ACCESS (0x12): the entry's access flag is clear.
    AccessFault,
    /// F_PERMISSION (0x13): the entry does not allow this access.
    PermissionFault,
    /// F_TLB_CONFLICT (0x20): overlapping TLB entries.
    TlbConflict,
    /// F_CFG_CONFLICT (0x21): overlapping configuration cache entries.
    ConfigConflict,
    /// Any other event type.
    Other(u8),
}

impl EventKind {
    /// The kind of event for event record type `code` (7.3, the EVENT_* numbers).
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::UnsupportedTransaction,
            0x02 => Self::BadStreamId,
            0x03 => Self::SteFetch,
            0x04 => Self::BadSte,
            0x06 => Self::StreamDisabled,
            0x07 => Self::TranslationForbidden,
            0x08 => Self::BadSubstreamId,
            0x09 => Self::CdFetch,
            0x0a => Self::BadCd,
            0x0b => Self::WalkExternalAbort,
            0x10 => Self::TranslationFault,
            0x11 => Self::AddressSizeFault,
            0x12 => Self::AccessFault,
            0x13 => Self::PermissionFault,
            0x20 => Self::TlbConflict,
            0x21 => Self::ConfigConflict,
            other => Self::Other(other),
        }
    }

    /// The spec's mnemonic, or `None` for [`EventKind::Other`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UnsupportedTransaction => "F_UUT",
            Self::BadStreamId => "C_BAD_STREAMID",
            Self::SteFetch => "F_STE_FETCH",
            Self::BadSte => "C_BAD_STE",
            Self::StreamDisabled => "F_STREAM_DISABLED",
            Self::TranslationForbidden => "F_TRANSL_FORBIDDEN",
            Self::BadSubstreamId => "C_BAD_SUBSTREAMID",
            Self::CdFetch => "F_CD_FETCH",
            Self::BadCd => "C_BAD_CD",
            Self::WalkExternalAbort => "F_WALK_EABT",
            Self::TranslationFault => "F_TRANSLATION",
            Self::AddressSizeFault => "F_ADDR_SIZE",
            Self::AccessFault => "F_ACCESS",
            Self::PermissionFault => "F_PERMISSION",
            Self::TlbConflict => "F_TLB_CONFLICT",
            Self::ConfigConflict => "F_CFG_CONFLICT",
            Self::Other(_) => return None,
        })
    }

    /// What the event means, in words.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::UnsupportedTransaction => "a transaction type the SMMU does not support",
            Self::BadStreamId => "the StreamID lies beyond the stream table",
            Self::SteFetch => "reading the stream table entry from memory failed",
            Self::BadSte => "the stream table entry is invalid or illegal",
            Self::StreamDisabled => "the stream refuses transactions without a SubstreamID",
            Self::TranslationForbidden => "the stream refuses already translated (ATS) transactions",
            Self::BadSubstreamId => "the SubstreamID lies beyond the context descriptor table",
            Self::CdFetch => "reading the context descriptor from memory failed",
            Self::BadCd => "the context descriptor is invalid or illegal",
            Self::WalkExternalAbort => "reading a translation table entry failed",
            Self::TranslationFault => "no valid entry maps the address",
            Self::AddressSizeFault => "the address exceeds the input or output size",
            Self::AccessFault => "the entry's access flag is clear",
            Self::PermissionFault => "the entry does not allow this access",
            Self::TlbConflict => "overlapping TLB entries",
            Self::ConfigConflict => "overlapping cached configurations",
            Self::Other(_) => "an event this driver does not decode",
        }
    }

    /// Events whose record carries InputAddr, and RnW/InD/PnU (7.3).
    fn describes_transaction(self) -> bool {
        matches!(
            self,
            Self::UnsupportedTransaction
                | Self::TranslationForbidden
                | Self::WalkExternalAbort
                | Self::TranslationFault
                | Self::AddressSizeFault
                | Self::AccessFault
                | Self::PermissionFault
        )
    }

    /// Events whose record carries FetchAddr (7.3).
    fn reports_fetch(self) -> bool {
        matches!(self, Self::SteFetch | Self::CdFetch | Self::WalkExternalAbort)
    }
}

/// The access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// A write rather than a read.
    pub write: bool,
    /// An instruction fetch rather than a data access.
    pub instruction: bool,
    /// A privileged access rather than an unprivileged one.
    pub privileged: bool,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let privilege = if self.privileged { "privileged " } else { "" };
        let kind = match (self.instruction, self.write) {
            (true, _) => "instruction fetch",
            (false, true) => "write",
            (false, false) => "read",
        };
        write!(f, "{privilege}{kind}")
    }
}

/// What one [`super::Smmu::drain_events`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Events handed out.
    pub events: usize,
    /// The queue overflowed since the last drain: the SMMU dropped events (EVENTQ_PROD.OVFLG,
    /// 6.3.29). QEMU never sets the flag; it drops the event and raises GERROR.EVENTQ_ABT_ERR
    /// instead (see [`super::Smmu::global_errors`]).
    pub overflowed: bool,
}

/// One decoded event record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened (the record's type).
    pub kind: EventKind,
    /// The StreamID of the device that caused it.
    pub stream_id: u32,
    /// The SubstreamID, when the transaction carried one (SSV).
    pub substream_id: Option<u32>,
    /// The IOVA of the transaction, for faults on a transaction.
    pub input_address: Option<u64>,
    /// The faulting access, for faults on a transaction.
    pub access: Option<Access>,
    /// The structure or table entry whose fetch failed.
    pub fetch_address: Option<PhysAddr>,
    /// The record as read, eight little-endian 32-bit words.
    pub raw: [u32; 8],
}

impl Event {
    /// Decodes an event record, eight little-endian 32-bit words as the SMMU wrote them (7.3).
    pub fn decode(raw: [u32; 8]) -> Self {
        let dword = |index: usize| u64::from(raw[2 * index]) | u64::from(raw[2 * index + 1]) << 32;
        let first = LocalRegisterCopy::<u64, EVENT0::Register>::new(dword(0));
        let second = LocalRegisterCopy::<u64, EVENT1::Register>::new(dword(1));
        let fourth = LocalRegisterCopy::<u64, EVENT3::Register>::new(dword(3));
        let kind = EventKind::from_code(first.read(EVENT0::TYPE) as u8);
        let transaction = kind.describes_transaction();
        Self {
            kind,
            stream_id: first.read(EVENT0::STREAM_ID) as u32,
            substream_id: first.is_set(EVENT0::SSV).then(|| first.read(EVENT0::SUBSTREAM_ID) as u32),
            input_address: transaction.then(|| dword(2)),
            access: transaction.then(|| Access {
                write: !second.is_set(EVENT1::RNW),
                instruction: second.is_set(EVENT1::IND),
                privileged: second.is_set(EVENT1::PNU),
            }),
            fetch_address: kind.reports_fetch().then(|| PhysAddr::new(fourth.read(EVENT3::FETCH_ADDR) << 3)),
            raw,
        }
    }

    /// Decodes an event queue entry as read from memory.
    pub(super) fn from_entry(entry: [u64; EVENT_WORDS]) -> Self {
        Self::decode(core::array::from_fn(|index| (entry[index / 2] >> (32 * (index % 2))) as u32))
    }
}

impl fmt::Display for Event {
    /// `F_TRANSLATION: stream 0x0008 write to IOVA 0x10000 (no valid entry maps the address)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.name() {
            Some(name) => write!(f, "{name}: stream {:#06x}", self.stream_id)?,
            None => write!(f, "event {:#04x}: stream {:#06x}", self.raw[0] & 0xff, self.stream_id)?,
        }
        if let Some(substream) = self.substream_id {
            write!(f, " substream {substream:#x}")?;
        }
        if let Some(access) = self.access {
            write!(f, " {access}")?;
        }
        if let Some(address) = self.input_address {
            write!(f, " to IOVA {address:#x}")?;
        }
        if let Some(address) = self.fetch_address {
            write!(f, ", fetching PA {address}")?;
        }
        write!(f, " ({})", self.kind.meaning())
    }
}
