// The first instructions of the kernel, from the loader's jump to Rust at virtual addresses.
//
// The loader (QEMU's -kernel, the Raspberry Pi firmware) treats the image like a Linux arm64
// Image: it reads the 64-byte header below, copies the image to a 2 MiB boundary plus
// text_offset (anywhere, if flags bit 3 says so), and jumps to its first byte with the MMU
// off, x0 = physical address of the devicetree. Until the MMU is on, every address here is
// physical and only PC-relative addressing (adr, adrp, b, bl) gives right answers.
// Documentation/arch/arm64/booting.rst in Linux describes the contract.

.section .text.head, "ax"
.global _start
_start:
    b       primary_entry           // code0: jump over the header
    .long   0                       // code1
    .quad   0                       // text_offset: from a 2 MiB-aligned base
    .quad   __image_size            // image_size: bytes of memory the image needs, .bss included
    .quad   0xa                     // flags: little-endian, 4 KiB pages (bit 1), anywhere (bit 3)
    .quad   0, 0, 0                 // reserved
    .ascii  "ARM\x64"               // magic
    .long   0                       // no PE/COFF header

primary_entry:
    mov     x19, x0                 // devicetree, physical
    adr     x20, _start             // where the loader put the image, physical
    mrs     x21, CurrentEL
    ubfx    x21, x21, #2, #2        // the exception level we were entered at
    cmp     x21, #2
    b.ne    1f
    bl      drop_from_el2_to_el1
1:  cmp     x21, #3
    b.eq    park                    // EL3 entry would need secure-monitor set-up: unsupported

    // Rust code uses the FP/SIMD registers for plain copies: stop CPACR_EL1.FPEN trapping them.
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb

    adrp    x0, __boot_stack_top
    add     x0, x0, :lo12:__boot_stack_top
    mov     sp, x0

    // Build the boot page tables and turn the MMU on (Rust, still at physical addresses).
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      __early_enable_mmu

    // From here on the image runs at its link address: load absolute addresses from literals.
    // Exceptions taken at EL1 always switch to SP_EL1; the kernel itself runs on SP_EL0. So a
    // handler has a stack of its own even when the kernel's overflowed into the guard page.
    ldr     x0, =__exception_stack_top
    mov     sp, x0
    msr     spsel, #0
    ldr     x0, =__boot_stack_top
    mov     sp, x0
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
2:  cmp     x0, x1
    b.hs    3f
    stp     xzr, xzr, [x0], #16
    b       2b
3:  ldr     x0, =__exception_vectors
    msr     vbar_el1, x0
    isb
    ldr     x0, =__virtual_entry
    br      x0

park:
    wfe
    b       park

// Entered at EL2 (QEMU virtualization=on, Raspberry Pi 4 firmware): configure EL2 to let EL1
// run undisturbed, then "return" to EL1 at the caller (x30).
drop_from_el2_to_el1:
    mov     x0, #(1 << 31)          // HCR_EL2.RW: EL1 is AArch64; no traps, no stage 2
    msr     hcr_el2, x0
    mrs     x0, cnthctl_el2
    orr     x0, x0, #3              // EL1PCTEN, EL1PCEN: EL1 may read the physical counter/timer
    msr     cnthctl_el2, x0
    msr     cntvoff_el2, xzr        // virtual counter = physical counter
    mov     x0, #0x33ff             // CPTR_EL2: RES1 bits, TFP clear (no FP/SIMD traps)
    msr     cptr_el2, x0
    msr     hstr_el2, xzr
    mrs     x0, id_aa64mmfr1_el1
    ubfx    x0, x0, #40, #4         // FEAT_HCX: is there an HCRX_EL2?
    cbz     x0, 5f
    mov     x0, #(1 << 11)          // HCRX_EL2.MSCEn: EL1 may use the memory copy instructions
    msr     S3_4_C1_C2_2, x0        // HCRX_EL2 (FEAT_MOPS; UNDEFINED at EL1 while it is clear)
                                    // Needs SCR_EL3.HXEn from any EL3 firmware (as Linux's
                                    // booting.rst asks); QEMU virt has no EL3, the Pi 4 no FEAT_HCX.
5:  mrs     x0, id_aa64pfr0_el1
    ubfx    x0, x0, #24, #4         // GIC system-register interface implemented?
    cbz     x0, 4f
    mrs     x0, S3_4_C12_C9_5       // ICC_SRE_EL2
    mov     x1, #0x9                // SRE | Enable: EL1 may use the ICC_* registers
    orr     x0, x0, x1
    msr     S3_4_C12_C9_5, x0
    isb
4:  ldr     x0, =0x30d00800         // SCTLR_EL1: RES1 bits only; MMU and caches off
    msr     sctlr_el1, x0
    mov     x0, #0x3c5              // SPSR_EL2: EL1h, interrupts masked
    msr     spsr_el2, x0
    msr     elr_el2, x30
    eret

// A secondary CPU's first instructions, started by PSCI CPU_ON or released from the spin table,
// MMU off, at EL2 or EL1 like the boot CPU. Whatever x0 holds (PSCI's context, the spin table's
// 0), the CPU reads what it needs from SECONDARY_START, which the boot CPU filled and cleaned
// to memory before starting it (`arch::smp`). One CPU starts at a time.
.section .text, "ax"
.global secondary_entry
secondary_entry:
    mrs     x21, CurrentEL
    ubfx    x21, x21, #2, #2
    cmp     x21, #2
    b.ne    1f
    bl      drop_from_el2_to_el1
1:  mov     x0, #(3 << 20)          // CPACR_EL1.FPEN: no FP/SIMD traps
    msr     cpacr_el1, x0
    isb
    adrp    x9, SECONDARY_START     // its physical address: the MMU is off
    add     x9, x9, :lo12:SECONDARY_START
    ldp     x0, x1, [x9]            // MAIR_EL1, TCR_EL1 (TTBR0 walks on, for the next lines)
    msr     mair_el1, x0
    msr     tcr_el1, x1
    ldp     x0, x1, [x9, #16]       // TTBR0_EL1 (the image's identity map), TTBR1_EL1 (the kernel)
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x0, [x9, #32]           // SCTLR_EL1: MMU and caches on, as on the boot CPU
    msr     sctlr_el1, x0
    isb
    ldp     x0, x1, [x9, #40]       // exception stack top, kernel stack top (virtual)
    mov     sp, x0
    msr     spsel, #0
    mov     sp, x1
    ldr     x0, =__exception_vectors
    msr     vbar_el1, x0
    isb
    ldp     x1, x0, [x9, #56]       // the Rust entry (virtual), this CPU's index
    br      x1
