//! Completions: the 16-byte entries a controller posts when a command finishes, and the status
//! each one carries (NVMe Base Specification 2.0, 4.2 "Completion Queue Entry", 4.2.3 "Status
//! Field Definition").
//!
//! ```text
//!  dword 0   command specific result (e.g. what Set Features granted)
//!  dword 1   reserved (command specific in a few commands)
//!  dword 2   [15:0] SQHD: how far the controller has read the submission queue
//!            [31:16] SQID: the submission queue the command came from
//!  dword 3   [15:0] CID: the command identifier the host chose
//!            [16] P: phase tag, inverted by the controller on each pass round the ring
//!            [31:17] status: [24:17] SC, [27:25] SCT, [29:28] CRD, [30] M, [31] DNR
//! ```
//!
//! A status is a *code type* (SCT) and a *code* (SC) within it: 0/0 is success; type 0 holds
//! errors any command can meet ("Invalid Field in Command"), type 1 errors of one particular
//! command ("Invalid Queue Size" from Create I/O Submission Queue), type 2 errors of the
//! medium ("Unrecovered Read Error"), type 3 errors of the path to the namespace. DNR (Do Not
//! Retry) says that submitting the same command again is expected to fail too; M (More) that
//! the Error Information log page has details.

use core::fmt;

/// One completion queue entry, laid out as the controller writes it (little-endian, like the
/// CPU this kernel runs on; see `command.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// DW0: the command-specific result.
    pub result: u32,
    /// DW1: reserved (command specific in some commands), kept so the layout is whole.
    pub reserved: u32,
    /// SQHD: the submission queue slot the controller will fetch next; slots before it may be
    /// reused.
    pub submission_head: u16,
    /// SQID.
    pub submission_queue: u16,
    /// CID.
    pub command_id: u16,
    /// The phase tag in bit 0, the status above it.
    pub status: u16,
}

const _: () = assert!(core::mem::size_of::<CompletionEntry>() == 16, "a completion queue entry is 16 bytes");

impl CompletionEntry {
    /// The phase tag (4.2.4): which pass round the ring the controller wrote this entry in.
    pub fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// The status field (4.2.3) without the phase tag: how the command ended.
    pub fn status(&self) -> Status {
        Status(self.status >> 1)
    }
}

/// The Status field: DW3 bits 31:17, here shifted down to bits 14:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(u16);

/// The status code type (SCT, Figure "Status Code – Status Code Type Values").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCodeType {
    /// 0h: conditions common to all commands (4.2.3.1).
    Generic,
    /// 1h: conditions of one particular command (4.2.3.2).
    CommandSpecific,
    /// 2h: media and data integrity errors (4.2.3.3).
    MediaAndDataIntegrity,
    /// 3h: the path between host and namespace (4.2.3.4).
    PathRelated,
    /// 7h: defined by the vendor.
    Vendor,
    /// 4h to 6h.
    Reserved(u8),
}

/// Bit positions within [`Status`] (DW3 bit minus 17).
const CODE_BITS: u16 = 0xff;
const CODE_TYPE_SHIFT: u16 = 8;
const CODE_TYPE_BITS: u16 = 0b111;
const MORE: u16 = 1 << 13;
const DO_NOT_RETRY: u16 = 1 << 14;

impl Status {
    /// SCT: which table the status code is from (generic, command specific, media...).
    pub fn code_type(&self) -> StatusCodeType {
        match (self.0 >> CODE_TYPE_SHIFT & CODE_TYPE_BITS) as u8 {
            0 => StatusCodeType::Generic,
            1 => StatusCodeType::CommandSpecific,
            2 => StatusCodeType::MediaAndDataIntegrity,
            3 => StatusCodeType::PathRelated,
            7 => StatusCodeType::Vendor,
            reserved => StatusCodeType::Reserved(reserved),
        }
    }

    /// SC: the status code within its type.
    pub fn code(&self) -> u8 {
        (self.0 & CODE_BITS) as u8
    }

    /// Successful Completion: generic status 00h.
    pub fn is_success(&self) -> bool {
        self.code_type() == StatusCodeType::Generic && self.code() == 0
    }

    /// DNR: the same command is expected to fail again.
    pub fn do_not_retry(&self) -> bool {
        self.0 & DO_NOT_RETRY != 0
    }

    /// M: the Error Information log page holds more about this failure.
    pub fn more(&self) -> bool {
        self.0 & MORE != 0
    }

    /// The spec's words for this status.
    pub fn description(&self) -> &'static str {
        let known = match self.code_type() {
            StatusCodeType::Generic => generic(self.code()),
            StatusCodeType::CommandSpecific => command_specific(self.code()),
            StatusCodeType::MediaAndDataIntegrity => media_and_data_integrity(self.code()),
            StatusCodeType::PathRelated => path_related(self.code()),
            StatusCodeType::Vendor => Some("Vendor Specific"),
            StatusCodeType::Reserved(_) => None,
        };
        known.unwrap_or("unknown status")
    }
}

impl fmt::Display for Status {
    /// "Invalid Field in Command (generic status 0x02)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        write!(f, "{} (", self.description())?;
        match self.code_type() {
            StatusCodeType::Generic => write!(f, "generic status {code:#04x})"),
            StatusCodeType::CommandSpecific => write!(f, "command-specific status {code:#04x})"),
            StatusCodeType::MediaAndDataIntegrity => write!(f, "media error {code:#04x})"),
            StatusCodeType::PathRelated => write!(f, "path-related status {code:#04x})"),
            StatusCodeType::Vendor => write!(f, "vendor-specific status {code:#04x})"),
            StatusCodeType::Reserved(code_type) => write!(f, "status {code:#04x} of reserved type {code_type})"),
        }
    }
}

/// Figure "Status Code – Generic Command Status Values" (4.2.3.1); 80h to 84h are those the
/// NVM Command Set Specification 1.0 defines for its commands.
fn generic(code: u8) -> Option<&'static str> {
    Some(match code {
        0x00 => "Successful Completion",
        0x01 => "Invalid Command Opcode",
        0x02 => "Invalid Field in Command",
        0x03 => "Command ID Conflict",
        0x04 => "Data Transfer Error",
        0x05 => "Commands Aborted due to Power Loss Notification",
        0x06 => "Internal Error",
        0x07 => "Command Abort Requested",
        0x08 => "Command Aborted due to SQ Deletion",
        0x09 => "Command Aborted due to Failed Fused Command",
        0x0a => "Command Aborted due to Missing Fused Command",
        0x0b => "Invalid Namespace or Format",
        0x0c => "Command Sequence Error",
        0x0d => "Invalid SGL Segment Descriptor",
        0x0e => "Invalid Number of SGL Descriptors",
        0x0f => "Data SGL Length Invalid",
        0x10 => "Metadata SGL Length Invalid",
        0x11 => "SGL Descriptor Type Invalid",
        0x12 => "Invalid Use of Controller Memory Buffer",
        0x13 => "PRP Offset Invalid",
        0x14 => "Atomic Write Unit Exceeded",
        0x15 => "Operation Denied",
        0x16 => "SGL Offset Invalid",
        0x18 => "Host Identifier Inconsistent Format",
        0x19 => "Keep Alive Timer Expired",
        0x1a => "Keep Alive Timeout Invalid",
        0x1b => "Command Aborted due to Preempt and Abort",
        0x1c => "Sanitize Failed",
        0x1d => "Sanitize In Progress",
        0x1e => "SGL Data Block Granularity Invalid",
        0x1f => "Command Not Supported for Queue in CMB",
        0x20 => "Namespace is Write Protected",
        0x21 => "Command Interrupted",
        0x22 => "Transient Transport Error",
        0x23 => "Command Prohibited by Command and Feature Lockdown",
        0x24 => "Admin Command Media Not Ready",
        0x80 => "LBA Out of Range",
        0x81 => "Capacity Exceeded",
        0x82 => "Namespace Not Ready",
        0x83 => "Reservation Conflict",
        0x84 => "Format In Progress",
        _ => return None,
    })
}

/// Figure "Status Code – Command Specific Status Values" (4.2.3.2); 80h to 83h from the NVM
/// Command Set Specification 1.0.
fn command_specific(code: u8) -> Option<&'static str> {
    Some(match code {
        0x00 => "Completion Queue Invalid",
        0x01 => "Invalid Queue Identifier",
        0x02 => "Invalid Queue Size",
        0x03 => "Abort Command Limit Exceeded",
        0x05 => "Asynchronous Event Request Limit Exceeded",
        0x06 => "Invalid Firmware Slot",
        0x07 => "Invalid Firmware Image",
        0x08 => "Invalid Interrupt Vector",
        0x09 => "Invalid Log Page",
        0x0a => "Invalid Format",
        0x0b => "Firmware Activation Requires Conventional Reset",
        0x0c => "Invalid Queue Deletion",
        0x0d => "Feature Identifier Not Saveable",
        0x0e => "Feature Not Changeable",
        0x0f => "Feature Not Namespace Specific",
        0x10 => "Firmware Activation Requires NVM Subsystem Reset",
        0x11 => "Firmware Activation Requires Controller Level Reset",
        0x12 => "Firmware Activation Requires Maximum Time Violation",
        0x13 => "Firmware Activation Prohibited",
        0x14 => "Overlapping Range",
        0x15 => "Namespace Insufficient Capacity",
        0x16 => "Namespace Identifier Unavailable",
        0x18 => "Namespace Already Attached",
        0x19 => "Namespace Is Private",
        0x1a => "Namespace Not Attached",
        0x1b => "Thin Provisioning Not Supported",
        0x1c => "Controller List Invalid",
        0x1d => "Device Self-test In Progress",
        0x1e => "Boot Partition Write Prohibited",
        0x1f => "Invalid Controller Identifier",
        0x20 => "Invalid Secondary Controller State",
        0x21 => "Invalid Number of Controller Resources",
        0x22 => "Invalid Resource Identifier",
        0x23 => "Sanitize Prohibited While Persistent Memory Region is Enabled",
        0x24 => "ANA Group Identifier Invalid",
        0x25 => "ANA Attach Failed",
        0x26 => "Insufficient Capacity",
        0x27 => "Namespace Attachment Limit Exceeded",
        0x28 => "Prohibition of Command Execution Not Supported",
        0x29 => "I/O Command Set Not Supported",
        0x2a => "I/O Command Set Not Enabled",
        0x2b => "I/O Command Set Combination Rejected",
        0x2c => "Invalid I/O Command Set",
        0x2d => "Identifier Unavailable",
        0x80 => "Conflicting Attributes",
        0x81 => "Invalid Protection Information",
        0x82 => "Attempted Write to Read Only Range",
        0x83 => "Command Size Limit Exceeded",
        _ => return None,
    })
}

/// Figure "Status Code – Media and Data Integrity Error Values" (4.2.3.3).
fn media_and_data_integrity(code: u8) -> Option<&'static str> {
    Some(match code {
        0x80 => "Write Fault",
        0x81 => "Unrecovered Read Error",
        0x82 => "End-to-end Guard Check Error",
        0x83 => "End-to-end Application Tag Check Error",
        0x84 => "End-to-end Reference Tag Check Error",
        0x85 => "Compare Failure",
        0x86 => "Access Denied",
        0x87 => "Deallocated or Unwritten Logical Block",
        0x88 => "End-to-End Storage Tag Check Error",
        _ => return None,
    })
}

/// Figure "Status Code – Path Related Status Values" (4.2.3.4).
fn path_related(code: u8) -> Option<&'static str> {
    Some(match code {
        0x00 => "Internal Path Error",
        0x01 => "Asymmetric Access Persistent Loss",
        0x02 => "Asymmetric Access Inaccessible",
        0x03 => "Asymmetric Access Transition",
        0x60 => "Controller Pathing Error",
        0x70 => "Host Pathing Error",
        0x71 => "Command Aborted By Host",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;

    use super::*;

    /// The entry the controller writes: four little-endian dwords, read as the CPU sees them.
    fn entry(dwords: [u32; 4]) -> CompletionEntry {
        let mut bytes = [0u8; 16];
        for (chunk, dword) in bytes.chunks_exact_mut(4).zip(dwords) {
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
        // SAFETY: 16 bytes make one CompletionEntry, whose fields take any bit pattern; the
        // unaligned read does not need the array's alignment.
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<CompletionEntry>()) }
    }

    /// DW3 with command ID `cid`, phase `phase` and the status fields.
    fn dword3(cid: u16, phase: bool, code_type: u32, code: u32, more: bool, do_not_retry: bool) -> u32 {
        u32::from(do_not_retry) << 31
            | u32::from(more) << 30
            | code_type << 25
            | code << 17
            | u32::from(phase) << 16
            | u32::from(cid)
    }

    fn status(code_type: u32, code: u32) -> Status {
        entry([0, 0, 0, dword3(0, true, code_type, code, false, false)]).status()
    }

    #[test]
    fn fields_sit_at_their_dwords() {
        let completion = entry([0xdead_beef, 0, 0x0001_0007, dword3(0x1234, true, 0, 0, false, false)]);
        assert_eq!(completion.result, 0xdead_beef);
        assert_eq!((completion.submission_head, completion.submission_queue), (7, 1));
        assert_eq!(completion.command_id, 0x1234);
        assert!(completion.phase());
        assert!(completion.status().is_success());
        assert_eq!(format!("{}", completion.status()), "Successful Completion (generic status 0x00)");
    }

    #[test]
    fn phase_is_apart_from_status() {
        let second_pass = entry([0, 0, 0, dword3(9, false, 0, 0, false, false)]);
        assert!(!second_pass.phase() && second_pass.status().is_success());
        let failed = entry([0, 0, 0, dword3(9, false, 1, 2, false, true)]);
        assert!(!failed.phase() && !failed.status().is_success());
    }

    #[test]
    fn invalid_field_with_do_not_retry() {
        // What QEMU posts for a command with a reserved field set: SC 02h, DNR.
        let completion = entry([0, 0, 0, dword3(1, true, 0, 0x02, false, true)]);
        let status = completion.status();
        assert_eq!((status.code_type(), status.code()), (StatusCodeType::Generic, 0x02));
        assert!(status.do_not_retry() && !status.more() && !status.is_success());
        assert_eq!(format!("{status}"), "Invalid Field in Command (generic status 0x02)");
    }

    #[test]
    fn more_information_in_the_log() {
        let status = entry([0, 0, 0, dword3(1, false, 2, 0x81, true, false)]).status();
        assert!(status.more() && !status.do_not_retry());
        assert_eq!(format!("{status}"), "Unrecovered Read Error (media error 0x81)");
    }

    #[test]
    fn statuses_in_words() {
        let cases = [
            (0, 0x0b, "Invalid Namespace or Format (generic status 0x0b)"),
            (0, 0x13, "PRP Offset Invalid (generic status 0x13)"),
            (0, 0x80, "LBA Out of Range (generic status 0x80)"),
            (1, 0x00, "Completion Queue Invalid (command-specific status 0x00)"),
            (1, 0x01, "Invalid Queue Identifier (command-specific status 0x01)"),
            (1, 0x02, "Invalid Queue Size (command-specific status 0x02)"),
            (1, 0x0c, "Invalid Queue Deletion (command-specific status 0x0c)"),
            (2, 0x80, "Write Fault (media error 0x80)"),
            (2, 0x86, "Access Denied (media error 0x86)"),
            (3, 0x02, "Asymmetric Access Inaccessible (path-related status 0x02)"),
            (7, 0xc5, "Vendor Specific (vendor-specific status 0xc5)"),
        ];
        for (code_type, code, words) in cases {
            assert_eq!(format!("{}", status(code_type, code)), words);
        }
    }

    #[test]
    fn unknown_codes_keep_their_type_and_value() {
        assert_eq!(format!("{}", status(0, 0x17)), "unknown status (generic status 0x17)");
        assert_eq!(format!("{}", status(1, 0x04)), "unknown status (command-specific status 0x04)");
        assert_eq!(format!("{}", status(2, 0x00)), "unknown status (media error 0x00)");
        assert_eq!(format!("{}", status(3, 0x50)), "unknown status (path-related status 0x50)");
        let reserved = status(5, 0x01);
        assert_eq!(reserved.code_type(), StatusCodeType::Reserved(5));
        assert!(!reserved.is_success());
        assert_eq!(format!("{reserved}"), "unknown status (status 0x01 of reserved type 5)");
        assert!(!status(1, 0x00).is_success(), "code 0 of another type is no success");
    }
}
