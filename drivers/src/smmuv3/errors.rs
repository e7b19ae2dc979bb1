//! What can go wrong: requests the driver refuses, and errors the SMMU reports in GERROR
//! (IHI 0070, 6.3.18 "SMMU_GERROR").

use core::fmt;

use addr::PhysAddr;

use super::CommandErrorKind;
use super::commands::CommandFailure;

/// What the driver was waiting for when it gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// CR0ACK to match a CR0 write.
    ControlAcknowledge,
    /// Room in the command queue.
    CommandQueueSpace,
    /// CMDQ_CONS to move past a CMD_SYNC.
    CommandSync,
}

/// A memory structure the SMMU reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The stream table: one STE per StreamID (5.2).
    StreamTable,
    /// The context descriptors: one CD per attached stream (5.4).
    ContextDescriptors,
    /// The command queue (3.5.1).
    CommandQueue,
    /// The event queue (3.5.2).
    EventQueue,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Structure::StreamTable => "the stream table",
            Structure::ContextDescriptors => "the context descriptors",
            Structure::CommandQueue => "the command queue",
            Structure::EventQueue => "the event queue",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Why the SMMU driver could not do what it was asked: the SMMU or the memory it was given
/// falls short, a request is out of range, or the SMMU stopped answering.
pub enum SmmuError {
    /// The SMMU did not answer in time.
    Timeout {
        /// What the driver was waiting for.
        what: Wait,
    },
    /// The SMMU stopped on a command; the driver replaced it with a CMD_SYNC and restarted
    /// the queue.
    CommandError {
        /// The opcode of the refused command.
        opcode: u8,
        /// Why the SMMU refused it (CMDQ_CONS.ERR).
        kind: CommandErrorKind,
    },
    /// A StreamID the stream table has no entry for.
    StreamIdOutOfRange {
        /// The StreamID asked for.
        stream_id: u32,
        /// Entries in the stream table.
        streams: u64,
    },
    /// `Smmu::new` was asked for a wider stream table than the SMMU's StreamIDs.
    StreamIdBitsTooWide {
        /// StreamID bits asked for.
        requested: u32,
        /// StreamID bits the SMMU has (IDR1.SIDSIZE).
        supported: u32,
    },
    /// A stage-1 context with a granule the SMMU does not offer (IDR5.GRAN*).
    GranuleNotSupported {
        /// log2 of the granule in bytes: 12, 14 or 16.
        shift: u32,
    },
    /// A stage-1 context with an input address size outside 25 to 48 bits.
    InputSizeNotSupported {
        /// The input address size asked for, in bits.
        bits: u32,
    },
    /// An ASID wider than the SMMU's ASIDs (IDR0.ASID16).
    AsidTooWide {
        /// The ASID asked for.
        asid: u16,
        /// The SMMU's ASID width: 8 or 16.
        bits: u32,
    },
    /// A root translation table not aligned as its size requires.
    TableMisaligned {
        /// Where the table is.
        table: PhysAddr,
        /// The alignment it needs, in bytes.
        alignment: u64,
    },
    /// A root translation table the SMMU cannot address (IDR5.OAS).
    TableBeyondOutputSize {
        /// Where the table is.
        table: PhysAddr,
        /// The SMMU's output address size, in bits.
        output_bits: u32,
    },
    /// The kernel's memory could not provide a table or queue.
    NoMemory {
        /// The structure the memory was for.
        what: Structure,
        /// How much was asked for.
        bytes: usize,
    },
    /// The memory handed out is not aligned as asked.
    MemoryMisaligned {
        /// The structure the memory was for.
        what: Structure,
        /// Where the memory is.
        physical: PhysAddr,
        /// The alignment asked for, in bytes.
        alignment: usize,
    },
    /// The SMMU has no stage 1 translation (IDR0.S1P = 0).
    NotStage1,
    /// The SMMU cannot walk AArch64 translation tables (IDR0.TTF).
    NoAArch64Tables,
    /// The SMMU reads big-endian tables only (IDR0.TTENDIAN).
    NotLittleEndian,
    /// The SMMU does not snoop the CPU caches (IDR0.COHACC = 0), and this driver does no cache maintenance.
    NotCoherent,
    /// The SMMU stalls every fault (IDR0.STALL_MODEL), and this driver never resumes one.
    StallForced,
    /// The SMMU fixes its stream table or queue addresses itself (IDR1 presets).
    PresetStructures,
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmmuError::Timeout { what: Wait::ControlAcknowledge } => {
                write!(f, "the SMMU did not acknowledge a CR0 change (CR0ACK)")
            }
            SmmuError::Timeout { what: Wait::CommandQueueSpace } => {
                write!(f, "the command queue stayed full: the SMMU consumes no commands")
            }
            SmmuError::Timeout { what: Wait::CommandSync } => {
                write!(f, "the SMMU did not complete a CMD_SYNC (CMDQ_CONS never passed it)")
            }
            SmmuError::CommandError { opcode, kind } => {
                write!(f, "the SMMU refused a command: {}", CommandFailure { opcode: *opcode, kind: *kind })
            }
            SmmuError::StreamIdOutOfRange { stream_id, streams } => {
                write!(f, "StreamID {stream_id:#x} is beyond the stream table ({streams} entries)")
            }
            SmmuError::StreamIdBitsTooWide { requested, supported } => {
                write!(f, "a stream table for {requested}-bit StreamIDs, but the SMMU has {supported}-bit StreamIDs")
            }
            SmmuError::GranuleNotSupported { shift } => {
                write!(f, "the SMMU does not offer the {} KiB granule (IDR5)", (1u64 << shift) >> 10)
            }
            SmmuError::InputSizeNotSupported { bits } => {
                write!(f, "a {bits}-bit input address size; stage 1 takes 25 to 48 bits (CD.T0SZ 16 to 39)")
            }
            SmmuError::AsidTooWide { asid, bits } => write!(f, "ASID {asid} does not fit the SMMU's {bits}-bit ASIDs"),
            SmmuError::TableMisaligned { table, alignment } => {
                write!(f, "the root translation table at {table} is not aligned to {alignment} bytes")
            }
            SmmuError::TableBeyondOutputSize { table, output_bits } => {
                write!(f, "the root translation table at {table} lies beyond the {output_bits}-bit output size")
            }
            SmmuError::NoMemory { what, bytes } => write!(f, "no memory for {what} ({bytes} bytes)"),
            SmmuError::MemoryMisaligned { what, physical, alignment } => {
                write!(f, "the memory for {what} at {physical} is not aligned to {alignment} bytes")
            }
            SmmuError::NotStage1 => write!(f, "the SMMU has no stage 1 translation (IDR0.S1P = 0)"),
            SmmuError::NoAArch64Tables => write!(f, "the SMMU cannot walk AArch64 translation tables (IDR0.TTF)"),
            SmmuError::NotLittleEndian => write!(f, "the SMMU reads big-endian tables only (IDR0.TTENDIAN)"),
            SmmuError::NotCoherent => write!(
                f,
                "the SMMU does not snoop the CPU caches (IDR0.COHACC = 0): its tables and queues would need \
                 cache maintenance, which this driver does not do"
            ),
            SmmuError::StallForced => {
                write!(f, "the SMMU stalls every fault (IDR0.STALL_MODEL), and this driver does not resume them")
            }
            SmmuError::PresetStructures => {
                write!(f, "the SMMU fixes its stream table or queue addresses itself (IDR1 presets)")
            }
        }
    }
}

/// GERROR bits (6.3.18), by position.
const GLOBAL_ERRORS: [(u32, &str, &str); 10] = [
    (0, "CMDQ_ERR", "the command queue stopped on a command"),
    (2, "EVENTQ_ABT_ERR", "a write to the event queue was aborted, events were lost"),
    (3, "PRIQ_ABT_ERR", "a write to the PRI queue was aborted"),
    (4, "MSI_CMDQ_ABT_ERR", "a CMD_SYNC completion MSI was aborted"),
    (5, "MSI_EVENTQ_ABT_ERR", "an event queue MSI was aborted"),
    (6, "MSI_PRIQ_ABT_ERR", "a PRI queue MSI was aborted"),
    (7, "MSI_GERROR_ABT_ERR", "a global error MSI was aborted"),
    (8, "SFM_ERR", "the SMMU entered service failure mode"),
    (9, "CMDQP_ERR", "an enhanced command queue stopped"),
    (10, "DPT_ERR", "a device permission table lookup failed"),
];

/// Global errors the SMMU raised since the last acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalErrors {
    /// GERROR bits that differed from GERRORN.
    pub active: u32,
    /// The command the queue stopped on, when CMDQ_ERR was active.
    pub command: Option<CommandFailure>,
}

impl fmt::Display for GlobalErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        for (bit, name, meaning) in GLOBAL_ERRORS {
            if self.active & 1 << bit != 0 {
                write!(f, "{separator}{name} ({meaning})")?;
                if let (0, Some(command)) = (bit, self.command) {
                    write!(f, ": {command}")?;
                }
                separator = "; ";
            }
        }
        let unknown = self.active & !GLOBAL_ERRORS.iter().fold(0, |known, (bit, _, _)| known | 1 << bit);
        if unknown != 0 {
            write!(f, "{separator}unknown GERROR bits {unknown:#x}")?;
        }
        Ok(())
    }
}
