//! Copying DMA buffers: 64 bytes per loop with the SIMD registers.
//!
//! A bounce buffer costs one copy per transfer, so the copy *is* the cost of bouncing
//! (`swiotlb`'s `copy_to_device` / `copy_to_cpu`). The `memmove` that `compiler_builtins`
//! gives a `no_std` target moves one 64-bit word per loop: four instructions per 8 bytes.
//! Here each loop moves 64 bytes with two pairs of 128-bit loads and stores (`LDP`/`STP` of
//! `Q` registers, Arm ARM C7.2.190 and C7.2.330): about a fifth of the instructions for the
//! same bytes. On a real core the load/store units decide; under QEMU's TCG, which runs
//! every guest instruction in software, the instruction count is the cost, so a 1 MiB
//! bounce copy takes a fraction of the time.
//!
//! Unaligned `LDP`/`STP` are allowed on Normal memory with `SCTLR_EL1.A` clear (Arm ARM
//! B2.5.2, "Alignment of data accesses"), which is how this kernel runs once the MMU is on.
//! They fault on Device memory and with the MMU off, so this is for RAM the linear map
//! reaches, never for MMIO or the boot code.

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

unsafe extern "C" {
    fn copy_forward_simd(destination: *mut u8, source: *const u8, len: usize);
}

/// Copy `len` bytes from `source` to `destination`, 64 bytes per loop. Ranges that overlap
/// are copied as `memmove` does (a forward loop would read bytes it had already written).
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
    // SAFETY: the caller's promise is the routine's: valid, Normal, and (checked above)
    // disjoint. It touches x0-x3 and q0-q3, all caller-saved in the AAPCS64, and no stack.
    unsafe { copy_forward_simd(destination, source, len) }
}
