//! Data cache maintenance by virtual address (Arm ARM D7.5.9, "Data and unified caches").
//!
//! Caches hold copies of memory in lines (64 bytes on Cortex-A72; `CTR_EL0.DminLine` says).
//! Whoever reads memory *around* the caches needs the right maintenance first:
//! - *invalidate* discards lines, so that the next read fetches what memory holds now
//!   (after someone wrote memory behind the caches' back);
//! - *clean* writes dirty lines back, so that memory holds what the CPU wrote.
//!
//! "To the point of coherency" (PoC) means as far as every observer, DMA masters included.

use aarch64_cpu::asm::barrier;

/// The smallest data cache line in the system, in bytes.
pub fn line_size() -> u64 {
    let ctr: u64;
    // SAFETY: CTR_EL0 is a read-only identification register.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// What to do to each cache line of a range.
#[derive(Clone, Copy)]
enum Operation {
    /// `DC CVAC`: write dirty lines back to memory, keep them cached.
    Clean,
    /// `DC IVAC`: drop the lines without writing them back.
    Invalidate,
    /// `DC CIVAC`: write back, then drop.
    CleanAndInvalidate,
}

fn for_each_line(start: u64, size: u64, operation: Operation) {
    let line = line_size();
    let mut address = start & !(line - 1);
    while address < start + size {
        // SAFETY: cache maintenance by VA changes no memory contents the caller does not own:
        // clean writes back what the CPU wrote; invalidate is only used on ranges the caller
        // owns and whose cached copies it wants gone.
        unsafe {
            match operation {
                Operation::Clean => core::arch::asm!("dc cvac, {}", in(reg) address, options(nostack)),
                Operation::Invalidate => core::arch::asm!("dc ivac, {}", in(reg) address, options(nostack)),
                Operation::CleanAndInvalidate => core::arch::asm!("dc civac, {}", in(reg) address, options(nostack)),
            }
        }
        address += line;
    }
    barrier::dsb(barrier::SY);
}

/// Writes the CPU's changes to `[start, start + size)` out to memory, so that a device that
/// does not snoop the caches reads them (before a transfer *to* the device).
pub fn clean_to_poc(start: u64, size: u64) {
    for_each_line(start, size, Operation::Clean);
}

/// Writes back and drops the cached copies of `[start, start + size)`, so that the CPU's next
/// reads fetch what a device wrote to memory (after a transfer *from* the device). Cleaning
/// first keeps bytes that share a line with the buffer but lie outside it.
pub fn clean_and_invalidate_to_poc(start: u64, size: u64) {
    for_each_line(start, size, Operation::CleanAndInvalidate);
}

/// Discards every cache line holding part of `[start, start + size)` without writing it back.
///
/// Used at boot with the MMU off, on memory the boot code wrote with the caches off.
pub fn invalidate_to_poc(start: u64, size: u64) {
    for_each_line(start, size, Operation::Invalidate);
}

/// Makes every memory write before it visible to devices before any write after it: what a
/// driver needs between filling a descriptor in shared memory and ringing the device's
/// doorbell register (Linux's `wmb()` before `writel`).
pub fn order_writes_before_doorbell() {
    barrier::dsb(barrier::ST);
}

/// Keeps every memory read after it from being satisfied before the device-register read
/// before it: what a driver needs between seeing a device's "done" status and reading what the
/// device wrote (the barrier Linux's `readl` carries).
pub fn order_reads_after_status() {
    barrier::dmb(barrier::OSHLD);
}
