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
use core::ptr::NonNull;

use safe_mmio::fields::{ReadOnly, ReadPureWrite, WriteOnly};
use safe_mmio::{UniqueMmioPointer, field};
use tock_registers::LocalRegisterCopy;
use tock_registers::register_bitfields;

use crate::mmio::register_offsets;

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

/// The mini UART registers the kernel uses (2.2.2), from `AUX_MU_IO_REG` on. A read of
/// `AUX_MU_IO_REG` pops the receive FIFO, and a read of `AUX_MU_LSR_REG` clears its receiver
/// overrun bit: the first is write-only here (the kernel only transmits) and the second is
/// `ReadOnly`, a read with side effects, which needs the UART exclusively (`&mut`).
#[repr(C)]
struct Registers {
    /// AUX_MU_IO_REG (2.2.2, offset 0x40 of AUX): a write queues one byte for transmission.
    io: WriteOnly<u32>,
    _reserved0: [u32; 2],
    /// AUX_MU_LCR_REG (2.2.2, offset 0x4c of AUX).
    lcr: ReadPureWrite<u32>,
    _reserved1: u32,
    /// AUX_MU_LSR_REG (2.2.2, offset 0x54 of AUX).
    lsr: ReadOnly<u32>,
    _reserved2: [u32; 2],
    /// AUX_MU_CNTL_REG (2.2.2, offset 0x60 of AUX).
    cntl: ReadPureWrite<u32>,
}

register_offsets!(Registers { io: 0x00, lcr: 0x0c, lsr: 0x14, cntl: 0x20 } size 0x24);

/// A mini UART whose registers are mapped at some virtual address: the Raspberry Pi 4's
/// console transmitter.
///
/// It owns its registers through a [`UniqueMmioPointer`], which may move between CPUs
/// (inside the console lock) by the pointer's own contract: no `unsafe impl Send`.
pub struct MiniUart {
    registers: UniqueMmioPointer<'static, Registers>,
}

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
        let registers = NonNull::new(registers.cast::<Registers>()).expect("the mini UART's registers at address 0");
        // SAFETY: the caller vouches for the mapping and that this driver is the UART's only
        // user; `Registers` matches the mini UART layout (checked by `register_offsets!`),
        // and device memory is reachable from every CPU.
        let registers = unsafe { UniqueMmioPointer::new(registers) };
        let mut uart = Self { registers };
        uart.flush();
        field!(uart.registers, lcr).write(LCR::DATA_SIZE::EightBit.value); // 2.2.2 AUX_MU_LCR_REG
        field!(uart.registers, cntl).write((CNTL::TX_ENABLE::SET + CNTL::RX_ENABLE::SET).value); // 2.2.2 AUX_MU_CNTL_REG
        uart
    }

    /// Sends one byte, waiting until the transmit FIFO has room.
    pub fn write_byte(&mut self, byte: u8) {
        while !self.line_status().is_set(LSR::TX_EMPTY) {
            core::hint::spin_loop();
        }
        field!(self.registers, io).write(u32::from(byte)); // 2.2.2 AUX_MU_IO_REG
    }

    /// Waits until every byte written has left the UART. It takes `&mut self` because each
    /// poll of the line status clears the receiver overrun flag.
    pub fn flush(&mut self) {
        while !self.line_status().is_set(LSR::TX_IDLE) {
            core::hint::spin_loop();
        }
    }

    /// AUX_MU_LSR_REG (2.2.2); the read clears the receiver overrun bit.
    fn line_status(&mut self) -> LocalRegisterCopy<u32, LSR::Register> {
        LocalRegisterCopy::new(field!(self.registers, lsr).read())
    }
}

impl fmt::Write for MiniUart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        crate::write_terminal_text(text, |byte| self.write_byte(byte));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated register block reached through the same pointer type; LSR says the
    /// transmitter is idle and empty, as a quiet UART's does.
    #[test]
    fn new_programs_the_line_and_write_byte_fills_io() {
        let mut block = [0u32; 0x24 / 4];
        block[0x14 / 4] = 1 << 6 | 1 << 5;
        let base = block.as_mut_ptr().cast::<u8>();
        {
            // SAFETY: `block` is as long as the register map, aligned, and outlives the UART.
            let mut uart = unsafe { MiniUart::new(base) };
            fmt::Write::write_str(&mut uart, "\n").unwrap();
        }
        assert_eq!(block[0], u32::from(b'\n'), "IO holds the last byte sent (after the \\r)");
        assert_eq!(block[0x0c / 4], 0b11, "LCR: 8 data bits");
        assert_eq!(block[0x20 / 4], 0b11, "CNTL: transmitter and receiver on");
    }
}
