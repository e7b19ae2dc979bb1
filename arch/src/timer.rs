//! The generic timer's counter (Arm ARM D11, "The Generic Timer").
//!
//! Every core has a 64-bit counter that ticks at a fixed frequency (`CNTFRQ_EL0`, set by the
//! firmware: 62.5 MHz on QEMU `virt`, 54 MHz on a Raspberry Pi 4). The kernel uses the
//! *virtual* count, `CNTVCT_EL0`, which EL1 may always read; at EL2 entry the boot code sets
//! the offset between virtual and physical counts to zero.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTVCT_EL0, Readable};
use core::time::Duration;

/// Ticks per second.
pub fn frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// The current count. The barrier keeps the read from being hoisted above earlier work.
pub fn ticks() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// Time since the counter started (at power-on or reset, not at kernel entry).
pub fn uptime() -> Duration {
    let ticks = ticks();
    let frequency = frequency().max(1);
    let nanos = (u128::from(ticks) * 1_000_000_000 / u128::from(frequency)) as u64;
    Duration::from_nanos(nanos)
}
