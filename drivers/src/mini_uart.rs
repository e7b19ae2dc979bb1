//! The BCM2711 mini UART (`compatible = "brcm,bcm2835-aux-uart"`), one of the three
//! "auxiliary peripherals": the Raspberry Pi 4's console on GPIO 14/15, where
//! `/chosen/stdout-path` points (`serial1`), because the PL011 drives the Bluetooth chip.
//!
//! Register offsets and bits from the BCM2711 ARM Peripherals datasheet, section 2.2.2
//! "Mini UART register details". The devicetree's `reg` starts at `AUX_MU_IO_REG`
//! (AUX base + 0x40), so offsets here are relative to it. The mini UART's baud rate divides
//! the VPU core clock, which only the firmware knows and keeps fixed when `config.txt` says
//! `enable_uart=1`; the driver leaves the baud rate alone, so it needs no clock information.

use core::fmt;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {
    u32,

    /// AUX_MU_LCR_REG, line control (2.2.2, offset 0x4c of AUX).
    LCR [
        /// Data size: 0b11 = 8 bits (the datasheet documents bit 0 only; both bits are needed).
        DATA_SIZE OFFSET(0) NUMBITS(2) [
            EightBit = 0b11
        ]
    ],

    /// AUX_MU_LSR_REG, line status (2.2.2, offset 0x54 of AUX).
    LSR [
        /// Transmitter idle: the FIFO is empty and the last bit has left.
        TX_IDLE OFFSET(6) NUMBITS(1) [],
        /// Transmitter empty: the FIFO can accept at least one byte.
        TX_EMPTY OFFSET(5) NUMBITS(1) []
    ],

    /// AUX_MU_CNTL_REG, extra control (2.2.2, offset 0x60 of AUX).
    CNTL [
        /// Transmitter enable.
        TX_ENABLE OFFSET(1) NUMBITS(1) [],
        /// Receiver enable.
        RX_ENABLE OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    Registers {
        /// AUX_MU_IO_REG: a write queues one byte for transmission.
        (0x00 => io: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x0c => lcr: ReadWrite<u32, LCR::Register>),
        (0x10 => _reserved1),
        (0x14 => lsr: ReadOnly<u32, LSR::Register>),
        (0x18 => _reserved2),
        (0x20 => cntl: ReadWrite<u32, CNTL::Register>),
        (0x24 => @END),
    }
}

/// A mini UART whose registers are mapped at some virtual address.
pub struct MiniUart {
    registers: &'static Registers,
}

// SAFETY: a MiniUart is the only handle on its registers, and MMIO is reachable from every
// CPU, so moving it to another CPU (inside the console lock) is sound.
unsafe impl Send for MiniUart {}

impl MiniUart {
    /// The compatible string this driver binds to.
    pub const COMPATIBLE: &'static str = "brcm,bcm2835-aux-uart";

    /// Takes over the UART the firmware enabled: 8 data bits, transmit and receive on.
    ///
    /// # Safety
    /// `registers` is the virtual address of a mini UART's registers (`AUX_MU_IO_REG`
    /// onwards), mapped as device memory, and no other code drives this UART. The firmware
    /// has enabled the auxiliary block (`enable_uart=1`); otherwise the registers read zero.
    pub unsafe fn new(registers: *mut u8) -> Self {
        // SAFETY: the caller vouches for the mapping; Registers matches the mini UART layout.
        let registers = unsafe { &*(registers as *const Registers) };
        let uart = Self { registers };
        uart.flush();
        uart.registers.lcr.write(LCR::DATA_SIZE::EightBit);
        uart.registers.cntl.write(CNTL::TX_ENABLE::SET + CNTL::RX_ENABLE::SET);
        uart
    }

    pub fn write_byte(&mut self, byte: u8) {
        while !self.registers.lsr.is_set(LSR::TX_EMPTY) {
            core::hint::spin_loop();
        }
        self.registers.io.set(u32::from(byte));
    }

    /// Waits until every byte written has left the UART.
    pub fn flush(&self) {
        while !self.registers.lsr.is_set(LSR::TX_IDLE) {
            core::hint::spin_loop();
        }
    }
}

impl fmt::Write for MiniUart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        crate::write_terminal_text(text, |byte| self.write_byte(byte));
        Ok(())
    }
}
