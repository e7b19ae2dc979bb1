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

use core::ptr::NonNull;

use safe_mmio::fields::ReadPureWrite;
use safe_mmio::{UniqueMmioPointer, field};
use tock_registers::register_bitfields;

use crate::mmio::{RegisterLock, register_offsets};

register_bitfields! {
    u32,

    /// PM_RSTC, reset control.
    RSTC [
        /// Every write must carry it, or the block ignores the write.
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        /// What the watchdog resets when it fires.
        WRCFG OFFSET(4) NUMBITS(2) [FullReset = 0b10]
    ],

    /// PM_RSTS, reset status: the firmware reads the partition to boot from it, one bit of the
    /// number in each even bit 0-10.
    RSTS [
        /// Every write must carry it, or the block ignores the write.
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        /// Partition 63 (0x555 spread out): the firmware halts instead of booting.
        PARTITION OFFSET(0) NUMBITS(11) [Halt = 0x555]
    ],

    /// PM_WDOG, the watchdog countdown, in ticks of about 16 µs.
    WDOG [
        /// Every write must carry it, or the block ignores the write.
        PASSWORD OFFSET(24) NUMBITS(8) [Magic = 0x5a],
        /// Ticks left before the watchdog fires.
        TIME OFFSET(0) NUMBITS(20) []
    ]
}

/// The three PM registers the watchdog uses (offsets from Linux's `bcm2835_wdt.c`:
/// `PM_RSTC` 0x1c, `PM_RSTS` 0x20, `PM_WDOG` 0x24). Linux reads RSTC and RSTS back to keep
/// their other bits, so reads are taken to be side-effect free.
#[repr(C)]
struct Registers {
    _reserved: [u32; 7],
    /// PM_RSTC, reset control.
    rstc: ReadPureWrite<u32>,
    /// PM_RSTS, reset status.
    rsts: ReadPureWrite<u32>,
    /// PM_WDOG, the watchdog countdown.
    wdog: ReadPureWrite<u32>,
}

register_offsets!(Registers { rstc: 0x1c, rsts: 0x20, wdog: 0x24 } size 0x28);

/// Ticks before the watchdog fires: immediately, for practical purposes.
const WDOG_SOON: u32 = 10;

/// The watchdog of the power-management block, mapped at some virtual address: how the
/// kernel powers a Raspberry Pi 4 off.
///
/// The kernel keeps it in a `static` and calls it through `&self` from whichever CPU stops
/// the machine, so its registers sit behind a `RegisterLock` (`mmio.rs`): that makes it `Sync`
/// without an `unsafe impl`.
pub struct PowerManagement {
    registers: RegisterLock<Registers>,
}

impl PowerManagement {
    /// The compatible string this driver binds to.
    pub const COMPATIBLE: &'static str = "brcm,bcm2835-pm-wdt";

    /// Takes over the PM block's watchdog. Nothing is written until [`Self::halt_via_reset`].
    ///
    /// # Safety
    /// `registers` is the virtual address of the PM block's registers (its first `reg`),
    /// mapped as device memory, used by nothing else.
    pub unsafe fn new(registers: *mut u8) -> Self {
        let registers = NonNull::new(registers.cast::<Registers>()).expect("the PM block's registers at address 0");
        // SAFETY: the caller vouches for the mapping and that nothing else uses the block;
        // `Registers` matches the PM layout (checked by `register_offsets!`), and device
        // memory is reachable from every CPU.
        let registers = unsafe { UniqueMmioPointer::new(registers) };
        Self { registers: RegisterLock::new(registers) }
    }

    /// Marks the next boot "halt" and has the watchdog reset the chip. On hardware the
    /// firmware then stays halted; returns only if the reset did not happen.
    pub fn halt_via_reset(&self) {
        self.registers.with(|registers| {
            // Each write keeps the register's other bits and carries the password, as
            // `bcm2835_power_off` and `__bcm2835_restart` in Linux's `bcm2835_wdt.c` do.
            let halt = RSTS::PASSWORD::Magic + RSTS::PARTITION::Halt;
            field!(*registers, rsts).modify(|status| halt.modify(status)); // PM_RSTS
            field!(*registers, wdog).write((WDOG::PASSWORD::Magic + WDOG::TIME.val(WDOG_SOON)).value); // PM_WDOG
            let reset = RSTC::PASSWORD::Magic + RSTC::WRCFG::FullReset;
            field!(*registers, rstc).modify(|control| reset.modify(control)); // PM_RSTC
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated PM block reached through the same pointer type: every write carries the
    /// password, and the bits outside each field survive.
    #[test]
    fn halt_via_reset_writes_partition_63_and_a_full_reset() {
        let mut block = [0u32; 0x28 / 4];
        block[0x1c / 4] = 0x31;
        block[0x20 / 4] = 0x1000;
        let base = block.as_mut_ptr().cast::<u8>();
        {
            // SAFETY: `block` is as long as the register map, aligned, and outlives the watchdog.
            let watchdog = unsafe { PowerManagement::new(base) };
            watchdog.halt_via_reset();
        }
        assert_eq!(block[0x20 / 4], 0x5a00_0000 | 0x1000 | 0x555, "RSTS: halt partition");
        assert_eq!(block[0x24 / 4], 0x5a00_0000 | WDOG_SOON, "WDOG: fire soon");
        assert_eq!(block[0x1c / 4], 0x5a00_0000 | 0x20 | 0x01, "RSTC: full reset, bit 0 kept");
    }
}
