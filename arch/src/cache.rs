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
fn line_size() -> u64 {
    let ctr: u64;
    // SAFETY: CTR_EL0 is a read-only identification register.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Discards every cache line holding part of `[start, start + size)` without writing it back.
///
/// Used at boot with the MMU off, on memory the boot code wrote with the caches off.
pub fn invalidate_to_poc(start: u64, size: u64) {
    let line = line_size();
    let mut address = start & !(line - 1);
    while address < start + size {
        // SAFETY: invalidation changes no memory; the caller owns the range.
        unsafe { core::arch::asm!("dc ivac, {}", in(reg) address, options(nostack)) };
        address += line;
    }
    barrier::dsb(barrier::SY);
}
