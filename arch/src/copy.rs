//! Copying DMA buffers: with the CPU's memory copy instructions where it has them, else 64 bytes
//! per loop with the SIMD registers.
//!
//! A bounce buffer costs one copy per transfer, so the copy *is* the cost of bouncing
//! (`swiotlb`'s `copy_to_device` / `copy_to_cpu`). The `memmove` that `compiler_builtins`
//! gives a `no_std` target moves one 64-bit word per loop: four instructions per 8 bytes.
//!
//! - **FEAT_MOPS** (Armv8.8, `ID_AA64ISAR2_EL1.MOPS`): three instructions copy the whole
//!   buffer, `CPYFP`, `CPYFM`, `CPYFE` (prologue, main part, epilogue; Arm ARM
//!   "Memory Copy and Memory Set instructions"). The CPU picks how to move the bytes: a real
//!   core at the width of its memory system, QEMU with its own `memmove`, a page at a time, where
//!   a loop of loads and stores is emulated instruction by instruction. At EL1 they need
//!   `HCRX_EL2.MSCEn` when there is an EL2 (`entry.s` sets it).
//! - **Otherwise** (the Raspberry Pi 4's Cortex-A72, QEMU's `cortex-a72`): each loop moves 64
//!   bytes with two pairs of 128-bit loads and stores (`LDP`/`STP` of `Q` registers, Arm ARM
//!   C7.2.190 and C7.2.330): about a fifth of the instructions for the same bytes. On a real
//!   core the load/store units decide; under QEMU's TCG, which runs every guest instruction in
//!   software, the instruction count is the cost, so a 1 MiB bounce copy takes a fraction of
//!   the time.
//!
//! Unaligned `LDP`/`STP` are allowed on Normal memory with `SCTLR_EL1.A` clear (Arm ARM
//! B2.5.2, "Alignment of data accesses"), which is how this kernel runs once the MMU is on.
//! They fault on Device memory and with the MMU off, so this is for RAM the linear map
//! reaches, never for MMIO or the boot code.

use core::sync::atomic::{AtomicU8, Ordering};

core::arch::global_asm!(
    ".section .text.copy_forward_simd, \"ax\"",
    ".global copy_forward_simd",
    ".type copy_forward_simd, %function",
    // x0 = destination, x1 = source, x2 = length in bytes.
    "copy_forward_simd:",
    "    cmp     x2, #64",
    "    b.lo    2f",
    "1:  ldp     q0, q1, [x1]",
    "    ldp     q2, q3, [x1, #32]",
    "    add     x1, x1, #64",
    "    sub     x2, x2, #64",
    "    stp     q0, q1, [x0]",
    "    stp     q2, q3, [x0, #32]",
    "    add     x0, x0, #64",
    "    cmp     x2, #64",
    "    b.hs    1b",
    // Fewer than 64 left: words, then bytes.
    "2:  cmp     x2, #8",
    "    b.lo    4f",
    "3:  ldr     x3, [x1], #8",
    "    str     x3, [x0], #8",
    "    sub     x2, x2, #8",
    "    cmp     x2, #8",
    "    b.hs    3b",
    "4:  cbz     x2, 6f",
    "5:  ldrb    w3, [x1], #1",
    "    strb    w3, [x0], #1",
    "    subs    x2, x2, #1",
    "    b.ne    5b",
    "6:  ret",
    ".size copy_forward_simd, . - copy_forward_simd",
);

core::arch::global_asm!(
    ".section .text.copy_forward_mops, \"ax\"",
    ".arch_extension mops",
    ".global copy_forward_mops",
    ".type copy_forward_mops, %function",
    // x0 = destination, x1 = source, x2 = length in bytes; all three advance as bytes move, so
    // an interrupt between (or inside) the three resumes where it left off.
    "copy_forward_mops:",
    "    cpyfp   [x0]!, [x1]!, x2!",
    "    cpyfm   [x0]!, [x1]!, x2!",
    "    cpyfe   [x0]!, [x1]!, x2!",
    "    ret",
    ".size copy_forward_mops, . - copy_forward_mops",
);

unsafe extern "C" {
    fn copy_forward_simd(destination: *mut u8, source: *const u8, len: usize);
    fn copy_forward_mops(destination: *mut u8, source: *const u8, len: usize);
}

/// Whether this CPU has the memory copy instructions: `ID_AA64ISAR2_EL1.MOPS`, bits 19 to 16
/// (Arm ARM, "ID_AA64ISAR2_EL1"), read once. Every CPU of the system has the same features.
pub fn has_memory_copy_instructions() -> bool {
    const UNKNOWN: u8 = 0;
    const ABSENT: u8 = 1;
    const PRESENT: u8 = 2;
    static FEATURE: AtomicU8 = AtomicU8::new(UNKNOWN);
    match FEATURE.load(Ordering::Relaxed) {
        UNKNOWN => {
            let isar2: u64;
            // SAFETY: an ID register read, allowed at EL1 and without side effects.
            unsafe { core::arch::asm!("mrs {}, S3_0_C0_C6_2", out(reg) isar2, options(nomem, nostack)) };
            let present = (isar2 >> 16) & 0xf != 0;
            FEATURE.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
            present
        }
        known => known == PRESENT,
    }
}

/// Copy `len` bytes from `source` to `destination`, with the memory copy instructions where
/// the CPU has them, else 64 bytes per loop. Ranges that overlap are copied as `memmove` does
/// (a forward copy would read bytes it had already written).
///
/// # Safety
/// Both ranges must be valid for `len` bytes (reads from `source`, writes to `destination`)
/// and lie in Normal memory (RAM through the MMU, not MMIO).
pub unsafe fn copy(source: *const u8, destination: *mut u8, len: usize) {
    let (from, to) = (source as usize, destination as usize);
    if from < to.wrapping_add(len) && to < from.wrapping_add(len) {
        // SAFETY: the caller's promise; `core::ptr::copy` allows overlap.
        return unsafe { core::ptr::copy(source, destination, len) };
    }
    if has_memory_copy_instructions() {
        // SAFETY: as below; `CPYF*` copy forward, which disjoint ranges allow. The routine
        // touches x0-x2 and the flags, caller-saved, and no stack.
        return unsafe { copy_forward_mops(destination, source, len) };
    }
    // SAFETY: the caller's promise is the routine's: valid, Normal, and (checked above)
    // disjoint. It touches x0-x3 and q0-q3, all caller-saved in the AAPCS64, and no stack.
    unsafe { copy_forward_simd(destination, source, len) }
}

/// The 64-byte loop alone, whatever the CPU has: for tests and benchmarks that compare it with
/// the memory copy instructions.
///
/// # Safety
/// As for [`copy`], and the ranges must not overlap.
pub unsafe fn copy_with_simd_loop(source: *const u8, destination: *mut u8, len: usize) {
    // SAFETY: the caller's promise, as in `copy`.
    unsafe { copy_forward_simd(destination, source, len) }
}
