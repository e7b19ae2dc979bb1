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

use tock_registers::interfaces::{ReadWriteable, Writeable};
use tock_registers::registers::ReadWrite;
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {
    u32,

    /// PM_RSTC, reset control.
    RSTC [
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        /// What the watchdog resets when it fires.
        WRCFG OFFSET(4) NUMBITS(2) [FullReset = 0b10]
    ],

    /// PM_RSTS, reset status: the firmware reads the partition to boot from it, one bit of the
    /// number in each even bit 0-10.
    RSTS [
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        /// Partition 63 (0x555 spread out): the firmware halts instead of booting.
        PARTITION OFFSET(0) NUMBITS(11) [Halt = 0x555]
    ],

    /// PM_WDOG, the watchdog countdown, in ticks of about 16 µs.
    WDOG [
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        TIME OFFSET(0) NUMBITS(20) []
    ]
}

register_structs! {
    Registers {
        (0x00 => _reserved),
        (0x1c => rstc: ReadWrite<u32, RSTC::Register>),
        (0x20 => rsts: ReadWrite<u32, RSTS::Register>),
        (0x24 => wdog: ReadWrite<u32, WDOG::Register>),
        (0x28 => @END),
    }
}

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
        self.registers.rsts.modify(RSTS::PASSWORD::Magic + RSTS::PARTITION::Halt);
        self.registers.wdog.write(WDOG::PASSWORD::Magic + WDOG::TIME.val(WDOG_SOON));
        self.registers.rstc.modify(RSTC::PASSWORD::Magic + RSTC::WRCFG::FullReset);
    }
}
