// The exception vector table (Arm ARM D1.10.2, "Exception vectors").
//
// VBAR_EL1 points at 16 entries of 0x80 bytes: (current EL with SP_EL0, current EL with
// SP_ELx, lower EL AArch64, lower EL AArch32) x (synchronous, IRQ, FIQ, SError). Each entry
// saves x0/x1, puts its index in x0 and joins the common path, which saves the rest of the
// registers as a `Frame` (exception.rs) on the stack and calls Rust. The handler may change
// the frame (a probe fix-up moves ELR), so everything is restored from it.
//
// The frame holds the FP/SIMD registers too. Rust code on aarch64-unknown-none copies and
// compares with them, so the code an interrupt lands in may have live values in any of q0-q31,
// and the handler, being Rust, may use any of them: the AAPCS64 asks a callee to keep only the
// low 64 bits of v8-v15. An interrupt must return to code that cannot tell it happened.

.equ GPR_SIZE, 288
.equ FRAME_SIZE, GPR_SIZE + 32 * 16 + 16    // x0-x30, ELR, SPSR, ESR, FAR; q0-q31; FPCR, FPSR

.macro VECTOR index
.balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\index
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global __exception_vectors
__exception_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #240]
    mrs     x1, spsr_el1
    mrs     x2, esr_el1
    stp     x1, x2, [sp, #256]
    mrs     x1, far_el1
    str     x1, [sp, #272]
    add     x1, sp, #GPR_SIZE
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
    mrs     x2, fpcr
    mrs     x3, fpsr
    add     x4, x1, #512
    stp     x2, x3, [x4]
    mov     x1, x0                  // vector index
    mov     x0, sp                  // &mut Frame
    bl      __handle_exception
    add     x1, sp, #GPR_SIZE
    add     x4, x1, #512
    ldp     x2, x3, [x4]
    msr     fpcr, x2
    msr     fpsr, x3
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    ldp     x1, x2, [sp, #248]      // ELR, SPSR: possibly changed by the handler
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #FRAME_SIZE
    eret

// Probes: a load or store that may fault, Linux's exception-table idea in miniature. If the
// access faults, the handler finds ELR at one of the *_access labels, puts FAR in x0 and ESR
// in x1 and resumes at __probe_fault. On success x1 is 0 (no real fault has ESR 0).
.section .text.probe, "ax"
.global __probe_read_u64
__probe_read_u64:                   // x0 = address -> x0 = value, x1 = 0
    mov     x1, xzr
.global __probe_read_access
__probe_read_access:
    ldr     x0, [x0]
    ret

.global __probe_write_u64
__probe_write_u64:                  // x0 = address, x1 = value -> x0 = 0, x1 = 0
.global __probe_write_access
__probe_write_access:
    str     x1, [x0]
    mov     x0, xzr
    mov     x1, xzr
    ret

.global __probe_fault
__probe_fault:
    ret
