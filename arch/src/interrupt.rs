//! The CPU's side of interrupts: the mask, the handler, and sleeping until one arrives.
//!
//! An interrupt controller (the GIC, driven by the kernel) decides *which* interrupt a CPU
//! takes; the CPU decides *when*. `PSTATE.I` masks IRQs (Arm ARM D1.3.6, "Asynchronous
//! exception masking"): while it is set, a pending IRQ waits. When it is clear, the CPU stops
//! what it is doing, saves where (`ELR_EL1`, `SPSR_EL1`), sets `PSTATE.I` again and jumps to
//! the IRQ vector (`exception.s`), which calls the handler registered here.
//!
//! Sleeping: `WFI` stops the CPU until an interrupt is *pending*, even a masked one (Arm ARM
//! D1.6.2, "Wait for Interrupt"). That closes the classic race of "check, then sleep": with
//! IRQs masked, check the condition; if it does not hold, `WFI`; an interrupt that arrived
//! after the check is pending, so `WFI` returns at once; unmask to let it be taken, then check
//! again ([`wait_until`]).

use core::sync::atomic::{AtomicUsize, Ordering};

/// The kernel's IRQ handler (an `fn()` as a number; 0 until one is set).
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Makes `handler` the code every IRQ runs. It runs with IRQs masked, on the exception stack,
/// and must acknowledge the interrupt at its controller, or the IRQ is taken again at once.
pub fn set_handler(handler: fn()) {
    HANDLER.store(handler as usize, Ordering::Release);
}

/// Runs the registered handler; `false` if there is none.
pub(crate) fn dispatch() -> bool {
    match HANDLER.load(Ordering::Acquire) {
        0 => false,
        address => {
            // SAFETY: only `set_handler` stores a non-zero value, and it stores an `fn()`.
            let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(address) };
            handler();
            true
        }
    }
}

/// Lets IRQs be taken (clears `PSTATE.I`).
pub fn unmask() {
    // SAFETY: changes only the IRQ mask bit; the vectors and a handler are in place before the
    // kernel unmasks (an IRQ without a handler is reported as unexpected).
    unsafe { core::arch::asm!("msr daifclr, #2", options(nomem, nostack)) };
}

/// Holds IRQs pending (sets `PSTATE.I`).
pub fn mask() {
    // SAFETY: changes only the IRQ mask bit.
    unsafe { core::arch::asm!("msr daifset, #2", options(nomem, nostack)) };
}

/// Whether IRQs are masked now.
pub fn masked() -> bool {
    let daif: u64;
    // SAFETY: reads PSTATE's mask bits.
    unsafe { core::arch::asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack)) };
    daif & (1 << 7) != 0
}

/// Runs `work` with IRQs masked, then restores the mask as it was: for data an IRQ handler
/// also touches (under a lock that the handler would otherwise spin on forever).
pub fn without<R>(work: impl FnOnce() -> R) -> R {
    let was_masked = masked();
    mask();
    let result = work();
    if !was_masked {
        unmask();
    }
    result
}

/// Sleeps until `done` holds: checks it with IRQs masked, `WFI` if not, lets the interrupt
/// that woke the CPU be taken, and checks again. Returns with the mask as it was.
///
/// Something must make `done` true from an interrupt (or an interrupt must come to end the
/// sleep otherwise), or this sleeps forever: callers arm a timer for their deadline.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    let was_masked = masked();
    loop {
        mask();
        if done() {
            break;
        }
        // SAFETY: `wfi` only waits; a pending interrupt, masked or not, ends it.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        unmask();
        // Taken here, if one was pending.
        // SAFETY: an instruction barrier, so the unmask takes effect before the loop masks again.
        unsafe { core::arch::asm!("isb", options(nomem, nostack)) };
    }
    if !was_masked {
        unmask();
    }
}
