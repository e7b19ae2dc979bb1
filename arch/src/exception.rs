//! Exceptions: what the CPU tells us when an instruction cannot complete.
//!
//! On a synchronous exception the CPU records *why* in `ESR_EL1` (the exception syndrome:
//! its class in bits 31:26, class-specific detail below), *which address* was involved in
//! `FAR_EL1` (for aborts), and *where* in `ELR_EL1` (the faulting instruction), then jumps to
//! the vector table (`exception.s`). This module turns those numbers into words:
//!
//! ```text
//!   synchronous exception: data abort from EL1, translation fault at level 0, on a read
//!     ESR 0x96000004  FAR 0x0000000000001000  ELR 0xffffffff80012345
//! ```
//!
//! IRQs go to the handler the kernel registered ([`crate::interrupt`]). Any other exception the
//! kernel did not expect stops it (through the panic handler, which reports and powers off).
//! One kind is expected: a *probe* ([`probe_read`], [`probe_write`]) asks
//! whether an access faults, which is how tests check that unmapped and read-only memory
//! really are.

use core::fmt;

use addr::VirtAddr;

core::arch::global_asm!(include_str!("exception.s"));

/// The registers saved on exception entry, in the order `exception.s` stores them.
#[repr(C)]
pub struct Frame {
    /// General-purpose registers x0 to x30, as the interrupted code left them.
    pub x: [u64; 31],
    /// `ELR_EL1`: where the exception was taken, and where `eret` returns.
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted code's PSTATE.
    pub spsr: u64,
    /// `ESR_EL1`: why (the syndrome).
    pub esr: u64,
    /// `FAR_EL1`: the faulting address, for aborts.
    pub far: u64,
    _padding: u64,
    /// The FP/SIMD registers q0 to q31, which Rust code uses for copies and comparisons.
    pub simd: [u128; 32],
    /// `FPCR` and `FPSR`: rounding mode and cumulative flags.
    pub fpcr: u64,
    /// See `fpcr`.
    pub fpsr: u64,
}

// `exception.s` lays the frame out by hand: 288 bytes of general registers, then the SIMD ones.
const _: () = assert!(core::mem::offset_of!(Frame, simd) == 288 && size_of::<Frame>() == 288 + 512 + 16);

/// The vector the exception came through: which kind of exception, from where.
const VECTOR_NAMES: [&str; 16] = [
    // The kernel runs on SP_EL0: its own exceptions come through these four.
    "synchronous",
    "IRQ",
    "FIQ",
    "SError",
    // SP_EL1 is the exception stack: these mean an exception inside an exception handler.
    "synchronous (in an exception handler)",
    "IRQ (in an exception handler)",
    "FIQ (in an exception handler)",
    "SError (in an exception handler)",
    "synchronous (from EL0, AArch64)",
    "IRQ (from EL0, AArch64)",
    "FIQ (from EL0, AArch64)",
    "SError (from EL0, AArch64)",
    "synchronous (from EL0, AArch32)",
    "IRQ (from EL0, AArch32)",
    "FIQ (from EL0, AArch32)",
    "SError (from EL0, AArch32)",
];

/// Index of "current EL with SP_EL0, synchronous": the kernel runs on SP_EL0 (see `entry.s`),
/// so this and the IRQ below are the only vectors it expects.
const CURRENT_EL_SYNCHRONOUS: u64 = 0;
/// "Current EL with SP_EL0, IRQ": an interrupt, taken while the kernel ran with IRQs unmasked.
const CURRENT_EL_IRQ: u64 = 1;

/// An exception syndrome (`ESR_EL1`) decoded for people (Arm ARM D19.2.37).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syndrome(pub u64);

impl Syndrome {
    /// The exception class, `ESR_EL1.EC` (bits 31:26).
    pub fn class(self) -> u64 {
        (self.0 >> 26) & 0x3f
    }

    /// The exception class in words.
    pub fn class_name(self) -> &'static str {
        match self.class() {
            0x00 => "unknown reason",
            0x01 => "trapped WFI/WFE",
            0x07 => "trapped FP/SIMD access",
            0x0e => "illegal execution state",
            0x15 => "SVC from AArch64",
            0x16 => "HVC from AArch64",
            0x17 => "SMC from AArch64",
            0x18 => "trapped system register access",
            0x19 => "trapped SVE access",
            0x20 => "instruction abort from a lower EL",
            0x21 => "instruction abort from EL1",
            0x22 => "misaligned PC",
            0x24 => "data abort from a lower EL",
            0x25 => "data abort from EL1",
            0x26 => "misaligned SP",
            0x2c => "floating-point exception",
            0x2f => "SError",
            0x30 | 0x31 => "breakpoint",
            0x32 | 0x33 => "software step",
            0x34 | 0x35 => "watchpoint",
            0x3c => "BRK instruction",
            _ => "other exception class",
        }
    }

    /// Whether it is a data abort taken from EL1 (the kernel's own access).
    pub fn is_data_abort_from_el1(self) -> bool {
        self.class() == 0x25
    }

    fn is_abort(self) -> bool {
        matches!(self.class(), 0x20 | 0x21 | 0x24 | 0x25)
    }

    /// For aborts: the fault status code, `ESR[5:0]` (DFSC or IFSC).
    pub fn fault_status(self) -> u64 {
        self.0 & 0x3f
    }

    /// For aborts: which kind of fault and at which translation level.
    pub fn fault(self) -> Option<Fault> {
        if !self.is_abort() {
            return None;
        }
        let status = self.fault_status();
        let level = (status & 0b11) as u8;
        Some(match status >> 2 {
            0b0001 => Fault::Translation { level },
            0b0010 => Fault::AccessFlag { level },
            0b0011 => Fault::Permission { level },
            _ if status == 0b10_0001 => Fault::Alignment,
            _ => Fault::Other { status },
        })
    }

    /// For data aborts: whether a write (WnR, ESR bit 6) caused it.
    pub fn is_write(self) -> bool {
        self.0 & (1 << 6) != 0
    }
}

/// The kinds of abort the kernel distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No valid entry at that level of the tables: the address is not mapped.
    Translation {
        /// The table level the walk stopped at.
        level: u8,
    },
    /// The entry's access flag is clear (the kernel sets it in every entry it writes).
    AccessFlag {
        /// The table level of the entry.
        level: u8,
    },
    /// Mapped, but not for this kind of access (a write to read-only memory, say).
    Permission {
        /// The table level of the entry.
        level: u8,
    },
    /// A misaligned access to memory that requires alignment (device memory).
    Alignment,
    /// Any other fault status.
    Other {
        /// `ESR_EL1.ISS.DFSC`/`IFSC`, the fault status code.
        status: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Translation { level } => write!(f, "translation fault at level {level}"),
            Fault::AccessFlag { level } => write!(f, "access flag fault at level {level}"),
            Fault::Permission { level } => write!(f, "permission fault at level {level}"),
            Fault::Alignment => write!(f, "alignment fault"),
            Fault::Other { status } => write!(f, "fault status {status:#x}"),
        }
    }
}

impl fmt::Display for Syndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class_name())?;
        if let Some(fault) = self.fault() {
            let access = if self.is_write() { "write" } else { "read" };
            write!(f, ", {fault}")?;
            if matches!(self.class(), 0x24 | 0x25) {
                write!(f, ", on a {access}")?;
            }
        }
        Ok(())
    }
}

/// A faulting access caught by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    /// `FAR_EL1`: the address the access used.
    pub address: VirtAddr,
    /// `ESR_EL1`: what kind of fault.
    pub syndrome: Syndrome,
}

#[repr(C)]
struct ProbeResult {
    value_or_address: u64,
    syndrome: u64,
}

unsafe extern "C" {
    fn __probe_read_u64(address: u64) -> ProbeResult;
    fn __probe_write_u64(address: u64, value: u64) -> ProbeResult;
    static __probe_read_access: u8;
    static __probe_write_access: u8;
    static __probe_fault: u8;
}

/// Reads 8 bytes at `address`, or reports the abort the read caused.
pub fn probe_read(address: VirtAddr) -> Result<u64, ProbeFault> {
    // SAFETY: the probe catches its own fault; a successful read has no side effect on memory.
    probe_result(unsafe { __probe_read_u64(address.as_u64()) })
}

/// Writes 8 bytes at `address`, or reports the abort the write caused.
///
/// # Safety
/// If the write succeeds it changes memory: `address` must be memory the caller may write.
pub unsafe fn probe_write(address: VirtAddr, value: u64) -> Result<(), ProbeFault> {
    // SAFETY: the probe catches its own fault; the caller vouches for the write.
    probe_result(unsafe { __probe_write_u64(address.as_u64(), value) }).map(|_| ())
}

fn probe_result(result: ProbeResult) -> Result<u64, ProbeFault> {
    match result.syndrome {
        0 => Ok(result.value_or_address),
        esr => Err(ProbeFault { address: VirtAddr::new(result.value_or_address), syndrome: Syndrome(esr) }),
    }
}

/// If the exception is a data abort at a probe's access instruction, resumes the probe with
/// the fault as its result.
fn fix_up_probe(frame: &mut Frame) -> bool {
    let is_probe = [&raw const __probe_read_access, &raw const __probe_write_access]
        .iter()
        .any(|&access| access as u64 == frame.elr);
    if !is_probe || !Syndrome(frame.esr).is_data_abort_from_el1() {
        return false;
    }
    frame.x[0] = frame.far;
    frame.x[1] = frame.esr;
    frame.elr = &raw const __probe_fault as u64;
    true
}

#[unsafe(no_mangle)]
extern "C" fn __handle_exception(frame: &mut Frame, vector: u64) {
    if vector == CURRENT_EL_SYNCHRONOUS && fix_up_probe(frame) {
        return;
    }
    if vector == CURRENT_EL_IRQ && crate::interrupt::dispatch() {
        return;
    }
    let syndrome = Syndrome(frame.esr);
    let vector_name = VECTOR_NAMES.get(vector as usize).copied().unwrap_or("unknown vector");
    log::error!("{vector_name} exception: {syndrome}");
    log::error!(
        "  ESR {:#010x}  FAR {:#018x}  ELR {:#018x}  SPSR {:#010x}",
        frame.esr,
        frame.far,
        frame.elr,
        frame.spsr
    );
    for (pair, registers) in frame.x.chunks(2).enumerate() {
        match registers {
            [first, second] => log::error!("  x{:<2} {first:#018x}  x{:<2} {second:#018x}", 2 * pair, 2 * pair + 1),
            [last] => log::error!("  x{:<2} {last:#018x}", 2 * pair),
            _ => {}
        }
    }
    panic!("unhandled {vector_name} exception: {syndrome} at ELR {:#x}", frame.elr);
}
