//! The Arm PrimeCell PL011 UART (`compatible = "arm,pl011"`): the console of QEMU `virt` and
//! of the Raspberry Pi 4's GPIO 14/15 pins.
//!
//! Register offsets and bits from the PL011 Technical Reference Manual (Arm DDI 0183G),
//! section 3.2 "Summary of registers". The kernel only transmits. It leaves the baud rate as
//! the firmware set it (QEMU ignores it; the Pi firmware programs it from `config.txt`), so
//! the driver needs no clock information.

use core::fmt;
use core::ptr::NonNull;

use safe_mmio::fields::{ReadPure, ReadPureWrite, WriteOnly};
use safe_mmio::{UniqueMmioPointer, field, field_shared};
use tock_registers::LocalRegisterCopy;
use tock_registers::register_bitfields;

use crate::mmio::register_offsets;

register_bitfields! {
    u32,

    /// Flag register (DDI 0183G 3.3.3).
    FR [
        /// Transmit FIFO full: wait before writing DR.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// UART busy: the last byte has not left the shift register yet.
        BUSY OFFSET(3) NUMBITS(1) []
    ],

    /// Line control register (DDI 0183G 3.3.7).
    LCR_H [
        /// Word length: 0b11 = 8 bits.
        WLEN OFFSET(5) NUMBITS(2) [
            EightBit = 0b11
        ],
        /// FIFO enable.
        FEN OFFSET(4) NUMBITS(1) []
    ],

    /// Control register (DDI 0183G 3.3.8).
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ],

    /// Interrupt clear register (DDI 0183G 3.3.13).
    ICR [
        /// Writing ones clears every interrupt.
        ALL OFFSET(0) NUMBITS(11) []
    ]
}

/// The PL011 registers the kernel uses (DDI 0183G 3.2, Table 3-1). DR is read-write on the
/// device, but a read pops the receive FIFO; the kernel only transmits, so it is write-only
/// here. FR, LCR_H and CR read back without side effects.
#[repr(C)]
struct Registers {
    /// UARTDR, data (3.3.1): a write queues one byte.
    dr: WriteOnly<u32>,
    _reserved0: [u32; 5],
    /// UARTFR, flags (3.3.3).
    fr: ReadPure<u32>,
    _reserved1: [u32; 4],
    /// UARTLCR_H, line control (3.3.7).
    lcr_h: ReadPureWrite<u32>,
    /// UARTCR, control (3.3.8).
    cr: ReadPureWrite<u32>,
    _reserved2: [u32; 4],
    /// UARTICR, interrupt clear (3.3.13).
    icr: WriteOnly<u32>,
}

register_offsets!(Registers { dr: 0x00, fr: 0x18, lcr_h: 0x2c, cr: 0x30, icr: 0x44 } size 0x48);

/// A PL011 whose registers are mapped at some virtual address: the console's transmitter.
///
/// It owns its registers through a [`UniqueMmioPointer`], so it moves between CPUs (inside
/// the console lock) without an `unsafe impl Send`: the pointer's contract already says the
/// registers are reachable from every CPU.
pub struct Pl011 {
    registers: UniqueMmioPointer<'static, Registers>,
}

impl Pl011 {
    /// The compatible string this driver binds to.
    pub const COMPATIBLE: &'static str = "arm,pl011";

    /// Takes over the UART: 8 data bits, FIFOs on, transmit and receive enabled.
    ///
    /// # Safety
    /// `registers` is the virtual address of a PL011's registers, mapped as device memory,
    /// and no other code drives this UART.
    pub unsafe fn new(registers: *mut u8) -> Self {
        let registers = NonNull::new(registers.cast::<Registers>()).expect("the PL011's registers at address 0");
        // SAFETY: the caller vouches for the mapping and that this driver is the UART's only
        // user; `Registers` matches the PL011 layout (checked by `register_offsets!`), and
        // device memory is reachable from every CPU.
        let registers = unsafe { UniqueMmioPointer::new(registers) };
        let mut uart = Self { registers };
        uart.flush();
        // Disabled while the line is reprogrammed (3.3.8, the procedure for reprogramming
        // UARTCR), enabled again afterwards.
        field!(uart.registers, cr).write(0);
        field!(uart.registers, icr).write(ICR::ALL::SET.value); // 3.3.13
        field!(uart.registers, lcr_h).write((LCR_H::WLEN::EightBit + LCR_H::FEN::SET).value); // 3.3.7
        field!(uart.registers, cr).write((CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET).value); // 3.3.8
        uart
    }

    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn write_byte(&mut self, byte: u8) {
        while self.flags().is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        field!(self.registers, dr).write(u32::from(byte)); // 3.3.1
    }

    /// Waits until every byte written has left the UART.
    pub fn flush(&self) {
        while self.flags().is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }

    /// FR (3.3.3): reading it changes nothing, so a shared handle may.
    fn flags(&self) -> LocalRegisterCopy<u32, FR::Register> {
        LocalRegisterCopy::new(field_shared!(self.registers, fr).read())
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        crate::write_terminal_text(text, |byte| self.write_byte(byte));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated register block: plain memory where the PL011's registers would be, reached
    /// through the same pointer type. FR reads 0 (neither busy nor full).
    #[test]
    fn new_programs_the_line_and_write_byte_fills_dr() {
        let mut block = [0u32; 0x48 / 4];
        let base = block.as_mut_ptr().cast::<u8>();
        {
            // SAFETY: `block` is as long as the register map, aligned, and outlives the UART.
            let mut uart = unsafe { Pl011::new(base) };
            fmt::Write::write_str(&mut uart, "ok").unwrap();
        }
        assert_eq!(block[0], u32::from(b'k'), "DR holds the last byte sent");
        assert_eq!(block[0x2c / 4], 0b11 << 5 | 1 << 4, "LCR_H: 8 bits, FIFOs on");
        assert_eq!(block[0x30 / 4], 1 << 9 | 1 << 8 | 1, "CR: receive, transmit, UART enabled");
        assert_eq!(block[0x44 / 4], 0x7ff, "ICR: every interrupt cleared");
    }
}
