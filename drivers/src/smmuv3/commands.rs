//! Commands: 16-byte entries of the command queue (IHI 0070, chapter 4 "Commands").
//!
//! The SMMU caches what it reads from memory: stream table entries and context descriptors
//! (configuration caches) and translations (TLBs, tagged by ASID). After software changes any
//! of these structures it must tell the SMMU which cached copies to drop, with `CMD_CFGI_*`
//! for configuration and `CMD_TLBI_*` for translations. Commands complete in no particular
//! order; `CMD_SYNC` is the barrier: once the SMMU has consumed it, every command before it has
//! taken effect (chapter 4, CMD_SYNC). With CS = SIG_NONE the driver learns that by watching CMDQ_CONS move
//! past the sync.
//!
//! The low byte of the first word is the opcode; the other fields depend on the command:
//!
//! ```text
//!  word 0  [7:0] opcode  [11] SSV  [31:12] SubstreamID | NUM, SCALE | CS
//!  word 0  [63:32] StreamID | [47:32] VMID, [63:48] ASID
//!  word 1  [0] Leaf | [4:0] Range     [63:12] address
//! ```
//!
//! When the SMMU cannot execute a command it stops the queue with CMDQ_CONS pointing at it,
//! puts the reason in CMDQ_CONS.ERR and raises GERROR.CMDQ_ERR (7.1 "Command queue errors").

use core::fmt;

use tock_registers::fields::FieldValue;
use tock_registers::{LocalRegisterCopy, register_bitfields};

register_bitfields! {
    u64,

    /// The first 64-bit word of a command.
    COMMAND0 [
        OPCODE OFFSET(0) NUMBITS(8) [
            CfgiSte = 0x03,
            CfgiSteRange = 0x04,
            CfgiCd = 0x05,
            TlbiNhAsid = 0x11,
            TlbiNhVa = 0x12,
            TlbiEl2All = 0x20,
            TlbiNsnhAll = 0x30,
            Sync = 0x46
        ],
        /// SubstreamID of a `CMD_CFGI_CD` (substream 0 when substreams are off).
        SUBSTREAM_ID OFFSET(12) NUMBITS(20) [],
        /// Completion signal of a `CMD_SYNC`: none, interrupt or SEV. Polling needs none.
        SYNC_CS OFFSET(12) NUMBITS(2) [
            SignalNone = 0
        ],
        STREAM_ID OFFSET(32) NUMBITS(32) [],
        VMID OFFSET(32) NUMBITS(16) [],
        ASID OFFSET(48) NUMBITS(16) []
    ],

    /// The second 64-bit word of a command.
    COMMAND1 [
        /// Invalidate only the leaf entry (the last-level STE, CD or page entry), not the
        /// walk caches above it.
        LEAF OFFSET(0) NUMBITS(1) [],
        /// `CMD_CFGI_STE_RANGE`: 2^(Range + 1) StreamIDs; 31 covers them all.
        RANGE OFFSET(0) NUMBITS(5) [
            All = 31
        ],
        /// Address bits [63:12] of a `CMD_TLBI_*_VA`.
        ADDRESS OFFSET(12) NUMBITS(52) []
    ]
}

/// The commands this driver issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// Drop cached copies of one STE (4.3, CMD_CFGI_STE).
    CfgiSte { stream_id: u32 },
    /// Drop every cached STE and CD: `CMD_CFGI_ALL`, which is `CMD_CFGI_STE_RANGE` with
    /// Range = 31 (4.3, CMD_CFGI_STE_RANGE and CMD_CFGI_ALL).
    CfgiAll,
    /// Drop cached copies of the CD of `stream_id`, substream 0 (4.3, CMD_CFGI_CD).
    CfgiCd { stream_id: u32 },
    /// Drop every non-secure EL1 translation tagged `asid`, VMID 0 (4.4, CMD_TLBI_NH_ASID).
    TlbiNhAsid { asid: u16 },
    /// Drop the EL1 leaf translation of `address` tagged `asid`, VMID 0 (4.4, CMD_TLBI_NH_VA).
    TlbiNhVa { asid: u16, address: u64 },
    /// Drop every EL2 translation (4.4, CMD_TLBI_EL2_ALL).
    TlbiEl2All,
    /// Drop every non-secure, non-hypervisor translation (4.4, CMD_TLBI_NSNH_ALL).
    TlbiNsnhAll,
    /// Complete every command before it; no signal (chapter 4, CMD_SYNC).
    Sync,
}

/// Words per command queue entry.
pub(super) const COMMAND_WORDS: usize = 2;

impl Command {
    /// The entry as the SMMU reads it: two little-endian 64-bit words.
    pub(super) fn encode(self) -> [u64; COMMAND_WORDS] {
        use COMMAND0::OPCODE;
        let (first, second): (FieldValue<u64, COMMAND0::Register>, FieldValue<u64, COMMAND1::Register>) = match self {
            Command::CfgiSte { stream_id } => {
                (OPCODE::CfgiSte + COMMAND0::STREAM_ID.val(stream_id.into()), COMMAND1::LEAF::SET)
            }
            Command::CfgiAll => (OPCODE::CfgiSteRange, COMMAND1::RANGE::All),
            Command::CfgiCd { stream_id } => (
                OPCODE::CfgiCd + COMMAND0::STREAM_ID.val(stream_id.into()) + COMMAND0::SUBSTREAM_ID.val(0),
                COMMAND1::LEAF::SET,
            ),
            Command::TlbiNhAsid { asid } => {
                (OPCODE::TlbiNhAsid + COMMAND0::ASID.val(asid.into()) + COMMAND0::VMID.val(0), COMMAND1::LEAF::CLEAR)
            }
            Command::TlbiNhVa { asid, address } => (
                OPCODE::TlbiNhVa + COMMAND0::ASID.val(asid.into()) + COMMAND0::VMID.val(0),
                COMMAND1::LEAF::SET + COMMAND1::ADDRESS.val(address >> 12),
            ),
            Command::TlbiEl2All => (OPCODE::TlbiEl2All, COMMAND1::LEAF::CLEAR),
            Command::TlbiNsnhAll => (OPCODE::TlbiNsnhAll, COMMAND1::LEAF::CLEAR),
            Command::Sync => (OPCODE::Sync + COMMAND0::SYNC_CS::SignalNone, COMMAND1::LEAF::CLEAR),
        };
        [first.value, second.value]
    }
}

/// The spec's name of a command opcode, for error messages.
pub fn command_name(opcode: u8) -> &'static str {
    match opcode {
        0x01 => "CMD_PREFETCH_CONFIG",
        0x02 => "CMD_PREFETCH_ADDR",
        0x03 => "CMD_CFGI_STE",
        0x04 => "CMD_CFGI_STE_RANGE",
        0x05 => "CMD_CFGI_CD",
        0x06 => "CMD_CFGI_CD_ALL",
        0x10 => "CMD_TLBI_NH_ALL",
        0x11 => "CMD_TLBI_NH_ASID",
        0x12 => "CMD_TLBI_NH_VA",
        0x13 => "CMD_TLBI_NH_VAA",
        0x20 => "CMD_TLBI_EL2_ALL",
        0x28 => "CMD_TLBI_S12_VMALL",
        0x2a => "CMD_TLBI_S2_IPA",
        0x30 => "CMD_TLBI_NSNH_ALL",
        0x40 => "CMD_ATC_INV",
        0x41 => "CMD_PRI_RESP",
        0x44 => "CMD_RESUME",
        0x45 => "CMD_STALL_TERM",
        0x46 => "CMD_SYNC",
        _ => "an unknown command",
    }
}

/// Why the SMMU stopped on a command: CMDQ_CONS.ERR (7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorKind {
    /// CERROR_NONE: GERROR.CMDQ_ERR was raised without a reason.
    None,
    /// CERROR_ILL: an unknown opcode, or a field the SMMU cannot accept.
    Illegal,
    /// CERROR_ABT: reading the command from memory was aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: an ATS invalidation behind a CMD_SYNC timed out.
    AtcInvalidationSync,
    /// An implementation-defined or reserved reason.
    Other(u8),
}

impl CommandErrorKind {
    /// The kind of error for CMDQ_CONS.ERR code `code` (7.1).
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::None,
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvalidationSync,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for CommandErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "CERROR_NONE (no reason given)"),
            Self::Illegal => write!(f, "CERROR_ILL (illegal command or field)"),
            Self::Abort => write!(f, "CERROR_ABT (reading the command from memory was aborted)"),
            Self::AtcInvalidationSync => write!(f, "CERROR_ATC_INV_SYNC (an ATS invalidation timed out)"),
            Self::Other(code) => write!(f, "error code {code:#x}"),
        }
    }
}

/// A command the SMMU refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFailure {
    /// The opcode (CMD_* number, bits 7:0) of the refused command.
    pub opcode: u8,
    /// Why the SMMU refused it.
    pub kind: CommandErrorKind,
}

impl CommandFailure {
    /// Decodes CMDQ_CONS.ERR and the first word of the command it points at.
    pub(super) fn new(error_code: u8, command: [u64; COMMAND_WORDS]) -> Self {
        let first = LocalRegisterCopy::<u64, COMMAND0::Register>::new(command[0]);
        Self { opcode: first.read(COMMAND0::OPCODE) as u8, kind: CommandErrorKind::from_code(error_code) }
    }
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} (opcode {:#04x})", self.kind, command_name(self.opcode), self.opcode)
    }
}
