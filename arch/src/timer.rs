//! The generic timer's counter (Arm ARM D11, "The Generic Timer").
//!
//! Every core has a 64-bit counter that ticks at a fixed frequency (`CNTFRQ_EL0`, set by the
//! firmware: 62.5 MHz on QEMU `virt`, 54 MHz on a Raspberry Pi 4). The kernel uses the
//! *virtual* count, `CNTVCT_EL0`, which EL1 may always read; at EL2 entry the boot code sets
//! the offset between virtual and physical counts to zero.
//!
//! Beside the counter, each core has timers that raise an interrupt when the count passes a
//! deadline. The kernel uses the *virtual* timer (Arm ARM D11.2.4, "The EL1 virtual timer"):
//! `CNTV_CVAL_EL0` holds the deadline, `CNTV_CTL_EL0` enables it (bit 0) and masks it (bit 1).
//! Its interrupt is a PPI, the same number on every core; the devicetree's timer node says
//! which (the third entry: PPI 11, INTID 27, on QEMU `virt` and the Raspberry Pi 4). The
//! interrupt is level-sensitive: it stays asserted while the deadline is past and the timer
//! enabled, so its handler must disable or move the deadline ([`stop`], [`fire_at`]).

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTVCT_EL0, Readable, Writeable};
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

/// The count `after` from now (saturating).
pub fn ticks_after(after: Duration) -> u64 {
    let delta = u128::from(frequency()) * after.as_nanos() / 1_000_000_000;
    ticks().saturating_add(u64::try_from(delta).unwrap_or(u64::MAX))
}

/// Arms the virtual timer: its interrupt asserts once the count reaches `deadline`.
pub fn fire_at(deadline: u64) {
    CNTV_CVAL_EL0.set(deadline);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
    barrier::isb(barrier::SY);
}

/// Disables the virtual timer, which lowers its interrupt.
pub fn stop() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::CLEAR);
    barrier::isb(barrier::SY);
}

/// Whether the virtual timer is enabled and its deadline has passed (`CNTV_CTL_EL0.ISTATUS`).
pub fn has_fired() -> bool {
    CNTV_CTL_EL0.matches_all(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::ISTATUS::SET)
}
