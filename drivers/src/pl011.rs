//! The Arm PrimeCell PL011 UART (`compatible = "arm,pl011"`): the console of QEMU `virt` and
//! of the Raspberry Pi 4's GPIO 14/15 pins.
//!
//! Register offsets and bits from the PL011 Technical Reference Manual (Arm DDI 0183G),
//! section 3.2 "Summary of registers". The kernel only transmits. It leaves the baud rate as
//! the firmware set it (QEMU ignores it; the Pi firmware programs it from `config.txt`), so
//! the driver needs no clock information.

use core::fmt;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

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

register_structs! {
    Registers {
        (0x00 => dr: WriteOnly<u32>),
        (0x04 => _reserved0),
        (0x18 => fr: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x2c => lcr_h: ReadWrite<u32, LCR_H::Register>),
        (0x30 => cr: ReadWrite<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x44 => icr: WriteOnly<u32, ICR::Register>),
        (0x48 => @END),
    }
}

/// A PL011 whose registers are mapped at some virtual address.
pub struct Pl011 {
    registers: &'static Registers,
}

// SAFETY: a Pl011 is the only handle on its registers, and MMIO is reachable from every CPU,
// so moving it to another CPU (inside the console lock) is sound.
unsafe impl Send for Pl011 {}

impl Pl011 {
    /// The compatible string this driver binds to.
    pub const COMPATIBLE: &'static str = "arm,pl011";

    /// Takes over the UART: 8 data bits, FIFOs on, transmit and receive enabled.
    ///
    /// # Safety
    /// `registers` is the virtual address of a PL011's registers, mapped as device memory,
    /// and no other code drives this UART.
    pub unsafe fn new(registers: *mut u8) -> Self {
        // SAFETY: the caller vouches for the mapping; Registers matches the PL011 layout.
        let registers = unsafe { &*(registers as *const Registers) };
        let uart = Self { registers };
        uart.flush();
        uart.registers.cr.set(0);
        uart.registers.icr.write(ICR::ALL::SET);
        uart.registers.lcr_h.write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        uart.registers.cr.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
        uart
    }

    pub fn write_byte(&mut self, byte: u8) {
        while self.registers.fr.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        self.registers.dr.set(u32::from(byte));
    }

    /// Waits until every byte written has left the UART.
    pub fn flush(&self) {
        while self.registers.fr.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        crate::write_terminal_text(text, |byte| self.write_byte(byte));
        Ok(())
    }
}
