//! QEMU's `edu` device: a PCI function made for teaching driver writing (QEMU
//! `docs/specs/edu.rst`), whose one interesting feature here is a small DMA engine.
//!
//! Its registers are BAR0, 1 MiB of which only the start is used ("MMIO area spec"):
//!
//! ```text
//!  0x00  identification   RO  0xRRrr00ed: major RR, minor rr
//!  0x04  liveness         RW  reads back the inverse (`!`) of what was written
//!  0x08 ... 0x7f              factorial, status and interrupt registers (not used here)
//!  0x80  DMA source       RW  u64: where the transfer reads from
//!  0x88  DMA destination  RW  u64: where it writes to
//!  0x90  DMA count        RW  u64: how many bytes
//!  0x98  DMA command      RW  bit 0 start (stays set until the transfer is done),
//!                             bit 1 direction (0: RAM to device, 1: device to RAM),
//!                             bit 2 raise interrupt 0x100 when done
//! ```
//!
//! Registers below 0x80 take 4-byte accesses only, the DMA registers 4 or 8; an access of
//! another size is ignored (a read returns all ones).
//!
//! One side of every transfer is the device's own 4 KiB buffer, at device address
//! [`DEVICE_BUFFER`]; the other is a DMA address in RAM ("DMA controller"). The device puts
//! that address on the bus only after masking it with its `dma_mask`, 28 bits unless QEMU is
//! told otherwise ("Command line switches"): give it an address above 256 MiB and QEMU logs
//! "clamping DMA" and uses the wrapped address instead. Nor does it check the device side:
//! QEMU 10 logs a transfer that runs past its buffer as a guest error and copies anyway, past
//! the end of its own array. Both are the driver's to get right.
//!
//! A transfer starts when the command register is written with bit 0 set and completes 100 ms
//! of virtual time later (QEMU's `edu_dma_timer`), when bit 0 clears. Registers written while
//! a transfer runs are ignored.

use core::fmt;
use core::ptr::NonNull;

use safe_mmio::fields::{ReadPure, ReadPureWrite};
use safe_mmio::{UniqueMmioPointer, field, field_shared};
use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::mmio::register_offsets;

/// The PCI vendor ID QEMU's own devices use ("PCI specs").
pub const VENDOR_ID: u16 = 0x1234;
/// The device ID of `edu` ("PCI specs").
pub const DEVICE_ID: u16 = 0x11e8;
/// The DMA addresses `edu` can put on the bus unless `-device edu,dma_mask=` says otherwise:
/// 28 bits, below 256 MiB ("Command line switches").
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
/// Where the device's own buffer starts, in the device's address space ("DMA controller").
pub const DEVICE_BUFFER: u64 = 0x40000;
/// The size of that buffer ("DMA controller").
pub const DEVICE_BUFFER_SIZE: usize = 4096;
/// The low byte of the identification register of every `edu` ("MMIO area spec", 0x00).
const IDENTIFICATION_MAGIC: u32 = 0xed;

register_bitfields! {
    u64,

    /// The DMA command register, 0x98 ("MMIO area spec").
    CMD [
        /// Start the transfer; the device clears it when the transfer is done.
        START OFFSET(0) NUMBITS(1) [],
        /// Which way the bytes go.
        DIRECTION OFFSET(1) NUMBITS(1) [
            RamToDevice = 0,
            DeviceToRam = 1
        ],
        /// Raise interrupt 0x100 when done.
        RAISE_INTERRUPT OFFSET(2) NUMBITS(1) []
    ]
}

/// The registers of BAR0 this driver uses, at the offsets of "MMIO area spec".
#[repr(C)]
pub struct Registers {
    /// 0x00 (RO), identification: `0xRRrr00ed`.
    pub identification: ReadPure<u32>,
    /// 0x04 (RW), card liveness check: reads back the inverse of what was written.
    pub liveness: ReadPureWrite<u32>,
    /// 0x08 to 0x7f: the factorial, status and interrupt registers.
    _unused: [u32; 30],
    /// 0x80 (RW), DMA source address.
    pub dma_source: ReadPureWrite<u64>,
    /// 0x88 (RW), DMA destination address.
    pub dma_destination: ReadPureWrite<u64>,
    /// 0x90 (RW), DMA transfer count, in bytes.
    pub dma_count: ReadPureWrite<u64>,
    /// 0x98 (RW), DMA command register ([`Command`]).
    pub dma_command: ReadPureWrite<u64>,
}

register_offsets!(
    Registers {
        identification: 0x00,
        liveness: 0x04,
        dma_source: 0x80,
        dma_destination: 0x88,
        dma_count: 0x90,
        dma_command: 0x98,
    }
    size 0xa0
);

/// Which way a transfer moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a DMA address in RAM into the device's buffer (command bit 1 clear).
    RamToDevice,
    /// From the device's buffer to a DMA address in RAM (command bit 1 set).
    DeviceToRam,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Direction::RamToDevice => write!(f, "RAM to device"),
            Direction::DeviceToRam => write!(f, "device to RAM"),
        }
    }
}

/// A value of the DMA command register (0x98), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Bit 0: a transfer is running (or, written, starts one).
    pub start: bool,
    /// Bit 1: the direction.
    pub direction: Direction,
    /// Bit 2: raise interrupt 0x100 when done.
    pub raise_interrupt: bool,
}

impl Command {
    /// A command that starts a transfer in `direction`, without an interrupt (drivers here
    /// poll).
    pub fn start(direction: Direction) -> Self {
        Self { start: true, direction, raise_interrupt: false }
    }

    /// The register value.
    pub fn encode(self) -> u64 {
        let direction = match self.direction {
            Direction::RamToDevice => CMD::DIRECTION::RamToDevice,
            Direction::DeviceToRam => CMD::DIRECTION::DeviceToRam,
        };
        (CMD::START.val(u64::from(self.start)) + direction + CMD::RAISE_INTERRUPT.val(u64::from(self.raise_interrupt)))
            .value
    }

    /// Decodes a register value.
    pub fn decode(value: u64) -> Self {
        let command = LocalRegisterCopy::<u64, CMD::Register>::new(value);
        let direction = match command.is_set(CMD::DIRECTION) {
            false => Direction::RamToDevice,
            true => Direction::DeviceToRam,
        };
        Self { start: command.is_set(CMD::START), direction, raise_interrupt: command.is_set(CMD::RAISE_INTERRUPT) }
    }
}

/// The identification register (0x00), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identification {
    /// The raw value.
    pub value: u32,
}

impl Identification {
    /// `RR` of `0xRRrr00ed`.
    pub fn major(self) -> u8 {
        (self.value >> 24) as u8
    }

    /// `rr` of `0xRRrr00ed`.
    pub fn minor(self) -> u8 {
        (self.value >> 16) as u8
    }

    /// Whether the value has the form `0xRRrr00ed`.
    pub fn is_edu(self) -> bool {
        self.value & 0xffff == IDENTIFICATION_MAGIC
    }
}

impl fmt::Display for Identification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edu {}.{} ({:#010x})", self.major(), self.minor(), self.value)
    }
}

/// An `edu` function's registers, owned. Writes need `&mut self`.
pub struct EduRegisters {
    registers: UniqueMmioPointer<'static, Registers>,
}

impl EduRegisters {
    /// Takes over BAR0's registers.
    ///
    /// # Safety
    /// `base` is the virtual address of an `edu` function's BAR0, mapped as device memory for
    /// as long as the returned value lives, and nothing else accesses its registers.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        // SAFETY: the caller vouches for the mapping and for being the only user; `Registers`
        // matches BAR0's layout (checked by `register_offsets!`), and device memory is
        // reachable from every CPU.
        Self { registers: unsafe { UniqueMmioPointer::new(base.cast()) } }
    }

    /// The identification register (0x00).
    pub fn identification(&self) -> Identification {
        Identification { value: field_shared!(self.registers, identification).read() }
    }

    /// The liveness check (0x04): writes `value`, returns what the device then reads back,
    /// which is `!value` if it is alive.
    pub fn liveness(&mut self, value: u32) -> u32 {
        field!(self.registers, liveness).write(value);
        field_shared!(self.registers, liveness).read()
    }

    /// Writes the DMA source address (0x80).
    pub fn set_source(&mut self, address: u64) {
        field!(self.registers, dma_source).write(address);
    }

    /// Writes the DMA destination address (0x88).
    pub fn set_destination(&mut self, address: u64) {
        field!(self.registers, dma_destination).write(address);
    }

    /// Writes the DMA transfer count (0x90), in bytes.
    pub fn set_count(&mut self, bytes: u64) {
        field!(self.registers, dma_count).write(bytes);
    }

    /// The DMA source address (0x80), as the device holds it.
    pub fn source(&self) -> u64 {
        field_shared!(self.registers, dma_source).read()
    }

    /// The DMA destination address (0x88), as the device holds it.
    pub fn destination(&self) -> u64 {
        field_shared!(self.registers, dma_destination).read()
    }

    /// The DMA transfer count (0x90), as the device holds it.
    pub fn count(&self) -> u64 {
        field_shared!(self.registers, dma_count).read()
    }

    /// The DMA command register (0x98), decoded: `start` is set while a transfer runs.
    pub fn command(&self) -> Command {
        Command::decode(field_shared!(self.registers, dma_command).read())
    }

    /// Writes the DMA command register (0x98): with `start` set, the transfer begins.
    pub fn set_command(&mut self, command: Command) {
        field!(self.registers, dma_command).write(command.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_the_spec_numbers_them() {
        // "DMA controller": 1 starts a transfer to the device, 3 one to RAM.
        assert_eq!(Command::start(Direction::RamToDevice).encode(), 1);
        assert_eq!(Command::start(Direction::DeviceToRam).encode(), 3);
        let with_interrupt = Command { raise_interrupt: true, ..Command::start(Direction::DeviceToRam) };
        assert_eq!(with_interrupt.encode(), 7);
        for value in 0..8 {
            assert_eq!(Command::decode(value).encode(), value);
        }
        assert!(!Command::decode(2).start);
    }

    #[test]
    fn identification_reads_major_and_minor() {
        let identification = Identification { value: 0x0100_00ed };
        assert!(identification.is_edu());
        assert_eq!((identification.major(), identification.minor()), (1, 0));
        assert!(!Identification { value: 0xffff_ffff }.is_edu());
    }

    #[test]
    fn registers_are_reached_at_their_offsets() {
        let mut block = [0u64; 0xa0 / 8];
        {
            let base = NonNull::new(block.as_mut_ptr().cast::<u8>()).expect("not null");
            // SAFETY: `block` stands in for BAR0: as large as `Registers`, aligned for its u64
            // fields, alive and used only through `registers` until the end of this scope.
            let mut registers = unsafe { EduRegisters::new(base) };
            registers.set_source(0x1000);
            registers.set_destination(0x40010);
            registers.set_count(64);
            registers.set_command(Command::start(Direction::DeviceToRam));
            assert_eq!((registers.source(), registers.destination(), registers.count()), (0x1000, 0x40010, 64));
            assert_eq!(registers.command(), Command::start(Direction::DeviceToRam));
        }
        assert_eq!(block[0x80 / 8..], [0x1000, 0x40010, 64, 3]);
    }
}
