//! Commands: the 64-byte entries of a submission queue (NVMe Base Specification 2.0, 4.1
//! "Submission Queue Entry", Figure "Common Command Format").
//!
//! Every command has the same frame; what the command-specific dwords 10 to 15 mean depends
//! on the opcode:
//!
//! ```text
//!  dword  0      [7:0] opcode  [9:8] FUSE  [15:14] PSDT (00b: PRPs)  [31:16] command ID
//!  dword  1      NSID: the namespace, or 0 when the command concerns none
//!  dwords 2-3    reserved for the commands here
//!  dwords 4-5    MPTR: metadata pointer (unused: no namespace here has separate metadata)
//!  dwords 6-7    PRP1  } DPTR: where the data is, as Physical Region Page entries
//!  dwords 8-9    PRP2  } (4.3.1; `prp.rs`)
//!  dwords 10-15  command specific
//! ```
//!
//! The opcode alone does not say which command it is: admin commands (on queue 0, 5 "Admin
//! Command Set") and I/O commands (NVM Command Set Specification 1.0, 3 "I/O Commands for the
//! NVM Command Set") reuse the same numbers, so the queue a command is on is part of its name.
//!
//! The command ID is the host's: the controller copies it into the completion entry, so that
//! the host knows which command finished. Builders leave it 0; the queue sets it
//! ([`SubmissionEntry::with_command_id`]).
//!
//! The fields are host-endian `u32`/`u64` values. The controller reads them as little-endian
//! bytes, which they are only on a little-endian CPU; this kernel runs little-endian, and the
//! build refuses any other target.

use core::fmt;

/// Admin command opcodes (NVMe Base 2.0, 5 "Admin Command Set", Figure "Opcodes for Admin
/// Commands").
pub mod admin_opcode {
    /// 5.7 "Delete I/O Submission Queue command".
    pub const DELETE_IO_SUBMISSION_QUEUE: u8 = 0x00;
    /// 5.5 "Create I/O Submission Queue command".
    pub const CREATE_IO_SUBMISSION_QUEUE: u8 = 0x01;
    /// 5.6 "Delete I/O Completion Queue command".
    pub const DELETE_IO_COMPLETION_QUEUE: u8 = 0x04;
    /// 5.4 "Create I/O Completion Queue command".
    pub const CREATE_IO_COMPLETION_QUEUE: u8 = 0x05;
    /// 5.17 "Identify command".
    pub const IDENTIFY: u8 = 0x06;
    /// 5.27 "Set Features command".
    pub const SET_FEATURES: u8 = 0x09;
}

/// Set Features, CDW10 [7:0]: FID 07h, Number of Queues (5.27.1.5).
const NUMBER_OF_QUEUES: u32 = 0x07;

/// NVM command set I/O opcodes (NVM Command Set Specification 1.0, Figure "Opcodes for NVM
/// Commands").
pub mod nvm_opcode {
    /// NVMe Base 2.0, 7.1 "Flush command": make volatile writes of the namespace durable.
    pub const FLUSH: u8 = 0x00;
    /// NVM Command Set 1.0, 3.2.6 "Write command".
    pub const WRITE: u8 = 0x01;
    /// NVM Command Set 1.0, 3.2.4 "Read command".
    pub const READ: u8 = 0x02;
}

/// One submission queue entry, laid out as the controller reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// CDW0: opcode, fused operation, data pointer type, command ID.
    pub cdw0: u32,
    /// NSID: the namespace the command acts on (0 when it acts on none).
    pub nsid: u32,
    /// CDW2, command specific (reserved in the commands here).
    pub cdw2: u32,
    /// CDW3, command specific (reserved in the commands here).
    pub cdw3: u32,
    /// MPTR.
    pub metadata: u64,
    /// PRP entry 1: the first page of the data (4.3.1).
    pub prp1: u64,
    /// PRP entry 2: the second page of the data, or a PRP list for more (4.3.1).
    pub prp2: u64,
    /// CDW10, command specific (the starting LBA's low half for Read and Write).
    pub cdw10: u32,
    /// CDW11, command specific (the starting LBA's high half for Read and Write).
    pub cdw11: u32,
    /// CDW12, command specific (NLB, 0-based, for Read and Write).
    pub cdw12: u32,
    /// CDW13, command specific.
    pub cdw13: u32,
    /// CDW14, command specific.
    pub cdw14: u32,
    /// CDW15, command specific.
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<SubmissionEntry>() == 64, "a submission queue entry is 64 bytes");
const _: () = assert!(cfg!(target_endian = "little"), "entries are laid out for a little-endian CPU");

/// CDW0 [31:16]: the command identifier.
const COMMAND_ID_SHIFT: u32 = 16;
/// CDW0 [7:0]: the opcode. FUSE (bits 9:8, 00b: not fused) and PSDT (bits 15:14, 00b: PRPs)
/// stay 0 in every command built here.
const OPCODE_MASK: u32 = 0xff;

/// What an Identify command returns: the value of its Controller or Namespace Structure (CNS,
/// CDW10 bits 7:0; NVMe Base 2.0, 5.17, Figure "Identify – CNS Values").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyTarget {
    /// CNS 00h: the Identify Namespace data structure of namespace `n` (NVM Command Set 1.0,
    /// 4.1.5.1).
    Namespace(u32),
    /// CNS 01h: the Identify Controller data structure (5.17.2.1).
    Controller,
    /// CNS 02h: the active namespace IDs above NSID, which is 0 here: all of them, ascending
    /// (5.17.2.2 "Active Namespace ID list").
    ActiveNamespaces,
}

/// Create I/O Completion/Submission Queue, CDW11 bit 0: PC, Physically Contiguous.
const PHYSICALLY_CONTIGUOUS: u32 = 1 << 0;
/// Create I/O Completion Queue CDW11: IEN, interrupts enabled.
const INTERRUPTS_ENABLED: u32 = 1 << 1;
/// Create I/O Completion Queue CDW11: IV, the interrupt vector, bits 31:16.
const INTERRUPT_VECTOR_SHIFT: u32 = 16;
/// Create I/O Submission Queue, CDW11 [31:16]: CQID, the completion queue it posts to.
const COMPLETION_QUEUE_SHIFT: u32 = 16;
/// CDW10 [31:16] of both Create commands: QSIZE, the number of entries minus one.
const QUEUE_SIZE_SHIFT: u32 = 16;
/// A Read or Write moves 1 to 65536 logical blocks: CDW12 [15:0], NLB, is 0-based.
const MOST_BLOCKS: u32 = 1 << 16;

impl SubmissionEntry {
    /// An entry with `opcode`, command ID 0, not fused, data described by PRPs.
    fn new(opcode: u8) -> Self {
        Self { cdw0: u32::from(opcode), ..Self::default() }
    }

    /// Identify (5.17): 4 KiB of `target`'s identify data, written by the controller to the
    /// page at `prp1`, which must not cross a page boundary (one PRP entry, no PRP2).
    pub fn identify(target: IdentifyTarget, prp1: u64) -> Self {
        let (nsid, cns) = match target {
            IdentifyTarget::Namespace(namespace) => (namespace, 0x00),
            IdentifyTarget::Controller => (0, 0x01),
            IdentifyTarget::ActiveNamespaces => (0, 0x02),
        };
        Self { nsid, prp1, cdw10: cns, ..Self::new(admin_opcode::IDENTIFY) }
    }

    /// Set Features, Number of Queues (5.27.1.5): asks for `wanted` I/O submission and as many
    /// completion queues (CDW11: NCQR in 31:16, NSQR in 15:0, both 0-based). The controller
    /// answers with what it allocated ([`granted_queues`]); it may be fewer, or more.
    pub fn set_number_of_queues(wanted: u16) -> Self {
        let count = u32::from(wanted.max(1) - 1);
        Self { cdw10: NUMBER_OF_QUEUES, cdw11: count << 16 | count, ..Self::new(admin_opcode::SET_FEATURES) }
    }

    /// Create I/O Completion Queue (5.4): queue `queue` of `entries` 16-byte entries at `dma`,
    /// physically contiguous. With `interrupt`, the controller interrupts on that vector when
    /// it posts a completion (IEN, bit 1; IV, bits 31:16: vector 0 is the pin-based INTx or
    /// MSI-X entry 0); without, completions are polled. Fewer than 2 entries encode as QSIZE
    /// 0, which the controller refuses ("Invalid Queue Size").
    pub fn create_io_completion_queue(queue: u16, entries: u16, dma: u64, interrupt: Option<u16>) -> Self {
        let cdw10 = queue_size(entries) << QUEUE_SIZE_SHIFT | u32::from(queue);
        let enable = interrupt.map_or(0, |vector| INTERRUPTS_ENABLED | u32::from(vector) << INTERRUPT_VECTOR_SHIFT);
        let cdw11 = PHYSICALLY_CONTIGUOUS | enable;
        Self { prp1: dma, cdw10, cdw11, ..Self::new(admin_opcode::CREATE_IO_COMPLETION_QUEUE) }
    }

    /// Create I/O Submission Queue (5.5): queue `queue` of `entries` 64-byte entries at `dma`,
    /// physically contiguous, posting its completions to `completion_queue` (which must exist
    /// already), at the priority round-robin arbitration ignores.
    pub fn create_io_submission_queue(queue: u16, entries: u16, dma: u64, completion_queue: u16) -> Self {
        let cdw10 = queue_size(entries) << QUEUE_SIZE_SHIFT | u32::from(queue);
        let cdw11 = u32::from(completion_queue) << COMPLETION_QUEUE_SHIFT | PHYSICALLY_CONTIGUOUS;
        Self { prp1: dma, cdw10, cdw11, ..Self::new(admin_opcode::CREATE_IO_SUBMISSION_QUEUE) }
    }

    /// Read (NVM Command Set 1.0, 3.2.4): `blocks` logical blocks from `lba` of `namespace`
    /// into the memory PRP1 and PRP2 describe.
    pub fn read(namespace: u32, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Result<Self, CommandError> {
        Self::transfer(nvm_opcode::READ, namespace, lba, blocks, prp1, prp2)
    }

    /// Write (NVM Command Set 1.0, 3.2.6): `blocks` logical blocks to `lba` of `namespace`
    /// from the memory PRP1 and PRP2 describe.
    pub fn write(namespace: u32, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Result<Self, CommandError> {
        Self::transfer(nvm_opcode::WRITE, namespace, lba, blocks, prp1, prp2)
    }

    /// Read and Write share their layout: SLBA in CDW10 (low half) and CDW11 (high half), NLB
    /// in CDW12 [15:0]; FUA, protection information and hints in the rest stay 0.
    fn transfer(opcode: u8, namespace: u32, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Result<Self, CommandError> {
        if !(1..=MOST_BLOCKS).contains(&blocks) {
            return Err(CommandError::BlockCount { blocks });
        }
        Ok(Self {
            nsid: namespace,
            prp1,
            prp2,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: blocks - 1,
            ..Self::new(opcode)
        })
    }

    /// A Read's or Write's starting LBA (SLBA, CDW10-11).
    pub fn lba(&self) -> u64 {
        u64::from(self.cdw11) << 32 | u64::from(self.cdw10)
    }

    /// A Read's or Write's block count (NLB, CDW12 bits 15:0, 0's based).
    pub fn blocks(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// Flush (NVMe Base 2.0, 7.1): whatever `namespace` holds in a volatile write cache is
    /// made non-volatile before the command completes.
    pub fn flush(namespace: u32) -> Self {
        Self { nsid: namespace, ..Self::new(nvm_opcode::FLUSH) }
    }

    /// The same command with command identifier `id`.
    pub fn with_command_id(self, id: u16) -> Self {
        let opcode_and_flags = self.cdw0 & !(u32::from(u16::MAX) << COMMAND_ID_SHIFT);
        Self { cdw0: u32::from(id) << COMMAND_ID_SHIFT | opcode_and_flags, ..self }
    }

    /// CDW0.CID: the identifier the completion entry carries back.
    pub fn command_id(&self) -> u16 {
        (self.cdw0 >> COMMAND_ID_SHIFT) as u16
    }

    /// CDW0.OPC: which command this is.
    pub fn opcode(&self) -> u8 {
        (self.cdw0 & OPCODE_MASK) as u8
    }

    /// The command's name in the spec, for messages: `admin` says whether it is on the admin
    /// queue, since admin and I/O opcodes overlap.
    pub fn name(&self, admin: bool) -> &'static str {
        match (admin, self.opcode()) {
            (true, admin_opcode::DELETE_IO_SUBMISSION_QUEUE) => "Delete I/O Submission Queue",
            (true, admin_opcode::CREATE_IO_SUBMISSION_QUEUE) => "Create I/O Submission Queue",
            (true, admin_opcode::DELETE_IO_COMPLETION_QUEUE) => "Delete I/O Completion Queue",
            (true, admin_opcode::CREATE_IO_COMPLETION_QUEUE) => "Create I/O Completion Queue",
            (true, admin_opcode::IDENTIFY) => "Identify",
            (true, _) => "an unknown admin command",
            (false, nvm_opcode::FLUSH) => "Flush",
            (false, nvm_opcode::WRITE) => "Write",
            (false, nvm_opcode::READ) => "Read",
            (false, _) => "an unknown I/O command",
        }
    }
}

/// The I/O queue pairs a Set Features, Number of Queues completion's DW0 says were allocated
/// (NCQA in 31:16, NSQA in 15:0, both 0-based): a pair needs one of each.
pub fn granted_queues(result: u32) -> u16 {
    let (submission, completion) = (result & 0xffff, result >> 16);
    (submission.min(completion) + 1).min(u32::from(u16::MAX)) as u16
}

/// QSIZE: entries minus one; 0 (refused by the controller) for fewer than 2 entries.
fn queue_size(entries: u16) -> u32 {
    u32::from(entries.saturating_sub(1))
}

/// A command this driver refuses to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// A Read or Write of no blocks, or of more than CDW12.NLB can say.
    BlockCount {
        /// The number of blocks asked for.
        blocks: u32,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::BlockCount { blocks } => write!(
                f,
                "a transfer of {blocks} blocks: one Read or Write moves 1 to 65536 (CDW12.NLB, 16 bits, 0-based)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;

    use super::*;

    /// The entry as the controller fetches it: sixteen little-endian 32-bit dwords.
    fn dwords(entry: &SubmissionEntry) -> [u32; 16] {
        // SAFETY: a SubmissionEntry is 64 bytes of plain integers without padding.
        let bytes = unsafe { core::slice::from_raw_parts((entry as *const SubmissionEntry).cast::<u8>(), 64) };
        core::array::from_fn(|index| u32::from_le_bytes(bytes[4 * index..4 * index + 4].try_into().unwrap()))
    }

    /// Bits `[start, start + length)` of `dword`.
    fn bits(dword: u32, start: u32, length: u32) -> u32 {
        (dword >> start) & ((1u64 << length) - 1) as u32
    }

    #[test]
    fn number_of_queues_asks_zero_based_and_reads_the_smaller_grant() {
        let entry = dwords(&SubmissionEntry::set_number_of_queues(4));
        assert_eq!(bits(entry[0], 0, 8), 0x09, "Set Features");
        assert_eq!(bits(entry[10], 0, 8), 0x07, "FID: Number of Queues");
        assert_eq!((bits(entry[11], 16, 16), bits(entry[11], 0, 16)), (3, 3), "NCQR and NSQR, 0-based");
        assert_eq!(bits(dwords(&SubmissionEntry::set_number_of_queues(0))[11], 0, 16), 0, "at least one");
        assert_eq!(granted_queues(0x0003_0003), 4);
        assert_eq!(granted_queues(0x0001_0040), 2, "a pair needs a completion queue too");
        assert_eq!(granted_queues(0xffff_ffff), u16::MAX, "65536 does not fit; the most that can be used");
    }

    /// The dwords the controller ignores for these commands must stay 0.
    fn assert_zero(command: &[u32; 16], indices: &[usize]) {
        for &index in indices {
            assert_eq!(command[index], 0, "dword {index}");
        }
    }

    #[test]
    fn fields_sit_at_their_dwords() {
        let entry = SubmissionEntry {
            cdw0: 0x1000_0002,
            nsid: 1,
            cdw2: 2,
            cdw3: 3,
            metadata: 0x5_0000_0004,
            prp1: 0x7_0000_0006,
            prp2: 0x9_0000_0008,
            cdw10: 10,
            cdw11: 11,
            cdw12: 12,
            cdw13: 13,
            cdw14: 14,
            cdw15: 15,
        };
        assert_eq!(dwords(&entry), [0x1000_0002, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn identify_controller() {
        let command = dwords(&SubmissionEntry::identify(IdentifyTarget::Controller, 0x4321_5000));
        assert_eq!(bits(command[0], 0, 8), 0x06, "opcode");
        assert_eq!(bits(command[0], 8, 2), 0, "FUSE: not fused");
        assert_eq!(bits(command[0], 14, 2), 0, "PSDT: PRPs");
        assert_eq!(command[1], 0, "NSID");
        assert_eq!((command[6], command[7]), (0x4321_5000, 0), "PRP1");
        assert_eq!(bits(command[10], 0, 8), 1, "CNS 01h");
        assert_eq!(bits(command[10], 16, 16), 0, "CNTID");
        assert_zero(&command, &[2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn identify_namespace_and_active_list() {
        let namespace = dwords(&SubmissionEntry::identify(IdentifyTarget::Namespace(7), 0x1000));
        assert_eq!((namespace[1], namespace[10]), (7, 0x00), "NSID 7, CNS 00h");
        let list = dwords(&SubmissionEntry::identify(IdentifyTarget::ActiveNamespaces, 0x2000));
        assert_eq!((list[1], list[10]), (0, 0x02), "IDs above NSID 0, CNS 02h");
        assert_eq!(list[6], 0x2000);
    }

    #[test]
    fn create_io_completion_queue() {
        let command = dwords(&SubmissionEntry::create_io_completion_queue(1, 16, 0x8_1234_5000, None));
        assert_eq!(bits(command[0], 0, 8), 0x05, "opcode");
        assert_eq!((command[6], command[7]), (0x1234_5000, 0x8), "PRP1: the queue");
        assert_eq!(command[10], 15 << 16 | 1, "QSIZE 0-based, QID");
        assert_eq!(bits(command[11], 0, 1), 1, "PC");
        assert_eq!(bits(command[11], 1, 1), 0, "IEN: polled");
        assert_eq!(bits(command[11], 16, 16), 0, "IV");
        assert_zero(&command, &[1, 2, 3, 4, 5, 8, 9, 12, 13, 14, 15]);
        let interrupting = dwords(&SubmissionEntry::create_io_completion_queue(1, 16, 0x8_1234_5000, Some(3)));
        assert_eq!(bits(interrupting[11], 0, 1), 1, "PC");
        assert_eq!(bits(interrupting[11], 1, 1), 1, "IEN: interrupts");
        assert_eq!(bits(interrupting[11], 16, 16), 3, "IV");
    }

    #[test]
    fn create_io_submission_queue() {
        let command = dwords(&SubmissionEntry::create_io_submission_queue(3, 64, 0x9000, 2));
        assert_eq!(bits(command[0], 0, 8), 0x01, "opcode");
        assert_eq!(command[6], 0x9000, "PRP1: the queue");
        assert_eq!(command[10], 63 << 16 | 3, "QSIZE 0-based, QID");
        assert_eq!(command[11], 2 << 16 | 1, "CQID, QPRIO 0, PC");
        assert_zero(&command, &[1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 14, 15]);
    }

    #[test]
    fn queues_too_small_encode_as_a_size_the_controller_refuses() {
        for entries in [0, 1] {
            assert_eq!(SubmissionEntry::create_io_completion_queue(1, entries, 0, None).cdw10 >> 16, 0);
        }
        assert_eq!(SubmissionEntry::create_io_submission_queue(1, u16::MAX, 0, 1).cdw10 >> 16, 0xfffe);
    }

    #[test]
    fn read_and_write() {
        let read = SubmissionEntry::read(1, 0x1_2345_6789, 8, 0xa000_0200, 0xb000_0000).unwrap();
        let command = dwords(&read);
        assert_eq!(bits(command[0], 0, 8), 0x02, "opcode");
        assert_eq!(command[1], 1, "NSID");
        assert_eq!((command[6], command[8]), (0xa000_0200, 0xb000_0000), "PRP1 keeps the page offset, PRP2");
        assert_eq!((command[10], command[11]), (0x2345_6789, 0x1), "SLBA");
        assert_eq!(bits(command[12], 0, 16), 7, "NLB 0-based");
        assert_eq!(bits(command[12], 16, 16), 0, "no FUA, LR or protection information");
        assert_zero(&command, &[2, 3, 4, 5, 7, 9, 13, 14, 15]);
        let write = SubmissionEntry::write(1, 0x1_2345_6789, 8, 0xa000_0200, 0xb000_0000).unwrap();
        assert_eq!(write, SubmissionEntry { cdw0: 0x01, ..read });
        assert_eq!(SubmissionEntry::read(1, 0, 65536, 0, 0).unwrap().cdw12, 0xffff);
        assert_eq!((read.lba(), read.blocks()), (0x1_2345_6789, 8), "decoded back");
        assert_eq!(SubmissionEntry::read(1, 0, 65536, 0, 0).unwrap().blocks(), 65536);
    }

    #[test]
    fn block_counts_nlb_cannot_say_are_refused() {
        for blocks in [0, 65537, u32::MAX] {
            assert_eq!(SubmissionEntry::write(1, 0, blocks, 0, 0), Err(CommandError::BlockCount { blocks }));
        }
        assert_eq!(
            format!("{}", SubmissionEntry::read(1, 0, 0, 0, 0).unwrap_err()),
            "a transfer of 0 blocks: one Read or Write moves 1 to 65536 (CDW12.NLB, 16 bits, 0-based)"
        );
    }

    #[test]
    fn flush() {
        let command = dwords(&SubmissionEntry::flush(3));
        assert_eq!((bits(command[0], 0, 8), command[1]), (0x00, 3));
        assert_zero(&command, &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn command_id_goes_into_the_top_of_dword_0() {
        let entry = SubmissionEntry::identify(IdentifyTarget::Controller, 0).with_command_id(0xbeef);
        assert_eq!(entry.cdw0, 0xbeef_0006);
        assert_eq!((entry.command_id(), entry.opcode()), (0xbeef, 0x06));
        let renumbered = entry.with_command_id(3);
        assert_eq!((renumbered.cdw0, renumbered.command_id()), (0x0003_0006, 3));
    }

    #[test]
    fn names_depend_on_the_queue() {
        let identify = SubmissionEntry::identify(IdentifyTarget::Controller, 0);
        assert_eq!(identify.name(true), "Identify");
        assert_eq!(identify.name(false), "an unknown I/O command");
        let read = SubmissionEntry::read(1, 0, 1, 0, 0).unwrap();
        assert_eq!((read.name(false), read.name(true)), ("Read", "an unknown admin command"));
        let write = SubmissionEntry::write(1, 0, 1, 0, 0).unwrap();
        assert_eq!((write.name(false), write.name(true)), ("Write", "Create I/O Submission Queue"));
        let flush = SubmissionEntry::flush(1);
        assert_eq!((flush.name(false), flush.name(true)), ("Flush", "Delete I/O Submission Queue"));
    }
}
