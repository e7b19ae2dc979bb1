//! The BCM2711 power-management block's watchdog (`compatible = "brcm,bcm2835-pm-wdt"`): how
//! a Raspberry Pi 4, which has no PSCI firmware, powers off.
//!
//! There is no "off" on a Pi. Linux (`drivers/watchdog/bcm2835_wdt.c`, `bcm2835_power_off`)
//! writes the magic partition number 63 into the reset-status register, then lets the watchdog
//! reset the chip at once; the GPU firmware, booting again, sees partition 63 and halts instead
//! of starting the ARM. QEMU's model resets (and, with `-no-reboot`, exits).
//!
//! The PM block is not in the BCM2711 ARM Peripherals datasheet; offsets, bits and the
//! password come from that Linux driver. Every write carries the password in its top byte.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;

register_structs! {
    Registers {
        (0x00 => _reserved),
        /// PM_RSTC: reset control; WRCFG (bits 4-5) chooses what the watchdog resets.
        (0x1c => rstc: ReadWrite<u32>),
        /// PM_RSTS: reset status; the firmware reads the boot partition from it.
        (0x20 => rsts: ReadWrite<u32>),
        /// PM_WDOG: watchdog countdown, in ticks of about 16 µs.
        (0x24 => wdog: ReadWrite<u32>),
        (0x28 => @END),
    }
}

const PASSWORD: u32 = 0x5a00_0000;
const RSTC_WRCFG_MASK: u32 = 0x30;
const RSTC_WRCFG_FULL_RESET: u32 = 0x20;
/// Partition 63, spread over the even bits 0-10, as the firmware reads it: "halt".
const RSTS_PARTITION_HALT: u32 = 0x555;
/// Ticks before the watchdog fires: immediately, for practical purposes.
const WDOG_SOON: u32 = 10;

/// The watchdog of the power-management block, mapped at some virtual address.
pub struct PowerManagement {
    registers: &'static Registers,
}

// SAFETY: the only handle on the PM registers; MMIO is reachable from every CPU.
unsafe impl Send for PowerManagement {}
unsafe impl Sync for PowerManagement {}

impl PowerManagement {
    pub const COMPATIBLE: &'static str = "brcm,bcm2835-pm-wdt";

    /// # Safety
    /// `registers` is the virtual address of the PM block's registers (its first `reg`),
    /// mapped as device memory, used by nothing else.
    pub unsafe fn new(registers: *mut u8) -> Self {
        // SAFETY: the caller vouches for the mapping; Registers matches the PM layout.
        Self { registers: unsafe { &*(registers as *const Registers) } }
    }

    /// Marks the next boot "halt" and has the watchdog reset the chip. On hardware the
    /// firmware then stays halted; returns only if the reset did not happen.
    pub fn halt_via_reset(&self) {
        let status = self.registers.rsts.get();
        self.registers.rsts.set(PASSWORD | status | RSTS_PARTITION_HALT);
        self.registers.wdog.set(PASSWORD | WDOG_SOON);
        let control = self.registers.rstc.get() & !RSTC_WRCFG_MASK;
        self.registers.rstc.set(PASSWORD | control | RSTC_WRCFG_FULL_RESET);
    }
}
