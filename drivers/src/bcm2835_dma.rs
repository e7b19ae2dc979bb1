//! The BCM2711's legacy DMA controller (`compatible = "brcm,bcm2835-dma"`): the Raspberry Pi
//! 4's general-purpose DMA engine, and the classic device that cannot reach all of RAM.
//!
//! The engine does not take commands through registers: it reads *control blocks* from
//! memory. A control block (32-byte aligned, eight words) says what to move where; its last
//! used word links to the next block, so one start can run a chain. The CPU writes the bus
//! address of the first block into a channel's `CONBLK_AD` and sets `CS.ACTIVE`; the engine
//! loads the block, moves the bytes, follows `NEXTCONBK` until it is zero, then sets `CS.END`.
//!
//! Every address the engine sees (control blocks, sources, destinations) is a 32-bit *bus*
//! address. On the BCM2711 the engine reaches RAM only through the `0xC000_0000` alias of the
//! first GiB (`dma-ranges` on `/soc`), which is why the kernel must bounce buffers above
//! 1 GiB; this driver only takes bus addresses and never computes one.
//!
//! Register offsets and bits from the BCM2711 ARM Peripherals datasheet, chapter 4 "DMA
//! Controller": 4.2.1.2 "Control Block Data Structure", 4.2.1.3 "DMA Channel Register
//! Address Map" (channel `n` at offset `n * 0x100`). Channels 7 to 10 are "DMA Lite" channels
//! (`DEBUG.LITE`): half the bandwidth and at most 64 KiB per control block. Which channels
//! the ARM may use is the firmware's call, given by the devicetree's `brcm,dma-channel-mask`.

use core::fmt;

use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {
    u32,

    /// CS, control and status (4.2.1.3, offset 0x00).
    pub CS [
        /// Reset the channel (self-clearing).
        RESET OFFSET(31) NUMBITS(1) [],
        /// Abort the current control block; the engine loads the next one.
        ABORT OFFSET(30) NUMBITS(1) [],
        /// Wait until the AXI writes of a block have been acknowledged before its `END`.
        WAIT_FOR_OUTSTANDING_WRITES OFFSET(28) NUMBITS(1) [],
        /// AXI priority of panicking (`DREQ`-throttled) transfers.
        PANIC_PRIORITY OFFSET(20) NUMBITS(4) [],
        /// AXI priority of normal transfers.
        PRIORITY OFFSET(16) NUMBITS(4) [],
        /// An error is flagged in `DEBUG` (read only).
        ERROR OFFSET(8) NUMBITS(1) [],
        /// The chain ended (write 1 to clear).
        END OFFSET(1) NUMBITS(1) [],
        /// The channel is running; writing 1 starts it at `CONBLK_AD`.
        ACTIVE OFFSET(0) NUMBITS(1) []
    ],

    /// TI, transfer information: the first word of a control block (4.2.1.2).
    pub TI [
        /// Increment the source address after each read.
        SRC_INC OFFSET(8) NUMBITS(1) [],
        /// Increment the destination address after each write.
        DEST_INC OFFSET(4) NUMBITS(1) [],
        /// Wait for each write's AXI response before the next one.
        WAIT_RESP OFFSET(3) NUMBITS(1) []
    ],

    /// DEBUG (4.2.1.3, offset 0x20): error flags are write-1-to-clear.
    pub DEBUG [
        /// A DMA Lite channel.
        LITE OFFSET(28) NUMBITS(1) [],
        /// An AXI read returned an error response.
        READ_ERROR OFFSET(2) NUMBITS(1) [],
        /// The read FIFO overflowed or underflowed.
        FIFO_ERROR OFFSET(1) NUMBITS(1) [],
        /// An AXI read's last signal was missing.
        READ_LAST_NOT_SET_ERROR OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    ChannelRegisters {
        (0x00 => cs: ReadWrite<u32, CS::Register>),
        /// Bus address of the control block to load, 32-byte aligned.
        (0x04 => conblk_ad: ReadWrite<u32>),
        (0x08 => _transfer_information),
        /// The loaded control block's addresses and remaining length, read back for error
        /// reports.
        (0x0c => source_ad: ReadOnly<u32>),
        (0x10 => dest_ad: ReadOnly<u32>),
        (0x14 => txfr_len: ReadOnly<u32>),
        (0x18 => _stride),
        (0x1c => _nextconbk),
        (0x20 => debug: ReadWrite<u32, DEBUG::Register>),
        (0x24 => @END),
    }
}

/// Distance between two channels' register blocks.
const CHANNEL_STRIDE: usize = 0x100;
/// Channels 0 to 10 are the legacy engine's (0 to 6 full, 7 to 10 Lite). Channels 11 to 14,
/// at offset 0xb00, are the BCM2711's 40-bit DMA4 engines with another register layout
/// (`brcm,bcm2711-dma`), and channel 15 lives elsewhere: neither is this driver's.
const CHANNELS: usize = 11;
/// Most bytes one control block moves on a full channel: `TXFR_LEN` has 30 bits (4.2.1.2);
/// Lite channels, with 16, are never taken.
pub const MAX_BLOCK_LENGTH: u32 = (1 << 30) - 4;
/// Reads of `CS` to wait for a reset to finish.
const RESET_POLLS: usize = 100_000;
/// Middle priorities, as Linux's driver uses.
const PRIORITY: u32 = 8;

/// A control block as the engine reads it from memory (4.2.1.2).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlBlock {
    pub transfer_information: u32,
    pub source: u32,
    pub destination: u32,
    pub length: u32,
    /// 2D-mode strides; unused here.
    pub stride: u32,
    /// Bus address of the next control block, 0 to stop.
    pub next: u32,
    reserved: [u32; 2],
}

impl ControlBlock {
    /// Memory to memory: both addresses incremented, each write acknowledged before the
    /// block counts as done. 32-bit accesses (no `*_WIDTH` bits): the engine packs byte-aligned
    /// buffers itself (4.1), and wide accesses would add alignment questions for no need here.
    pub fn memory_to_memory(source: u32, destination: u32, length: u32) -> Self {
        let information = TI::SRC_INC::SET + TI::DEST_INC::SET + TI::WAIT_RESP::SET;
        Self { transfer_information: information.value, source, destination, length, ..Self::default() }
    }
}

/// The controller: channel register blocks from the devicetree's `reg`, and the channels the
/// firmware leaves to the ARM.
pub struct Controller {
    base: *mut u8,
    /// Channels the ARM may use that lie inside the mapped registers.
    usable: u32,
}

impl Controller {
    pub const COMPATIBLE: &'static str = "brcm,bcm2835-dma";
    /// The devicetree property holding the channels the ARM may use.
    pub const CHANNEL_MASK_PROPERTY: &'static str = "brcm,dma-channel-mask";

    /// # Safety
    /// `base` is the virtual address of the controller's registers, `size` bytes mapped as
    /// device memory, and the channels in `channel_mask` are this kernel's alone.
    pub unsafe fn new(base: *mut u8, size: usize, channel_mask: u32) -> Self {
        let mapped = (0..CHANNELS).filter(|index| (index + 1) * CHANNEL_STRIDE <= size);
        let inside = mapped.fold(0, |mask, index| mask | 1 << index);
        Self { base, usable: channel_mask & inside }
    }

    /// Hands out the lowest usable full (not Lite) channel, for good: each channel has one
    /// owner.
    pub fn take_full_channel(&mut self) -> Option<Channel> {
        let index = (0..CHANNELS as u8).filter(|index| self.usable & 1 << index != 0).find(|&index| {
            // SAFETY: `new` checked that the channel's block lies inside the mapped registers.
            !unsafe { self.registers(index) }.debug.is_set(DEBUG::LITE)
        })?;
        self.usable &= !(1 << index);
        // SAFETY: as above; the index is no longer usable, so this is its only handle.
        Some(Channel { registers: unsafe { self.registers(index) }, index })
    }

    /// # Safety
    /// `index` is one of the channels `new` found inside the mapped registers.
    unsafe fn registers(&self, index: u8) -> &'static ChannelRegisters {
        // SAFETY: the caller vouches that the block lies inside the mapping.
        unsafe { &*(self.base.add(usize::from(index) * CHANNEL_STRIDE) as *const ChannelRegisters) }
    }
}

/// One DMA channel.
pub struct Channel {
    registers: &'static ChannelRegisters,
    pub index: u8,
}

// SAFETY: a Channel is the only handle on its registers (`take_full_channel` hands each index
// out once), and MMIO is reachable from every CPU.
unsafe impl Send for Channel {}
unsafe impl Sync for Channel {}

/// A channel whose `CS.RESET` never cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStuck {
    pub index: u8,
}

/// Where a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Done,
    Failed(TransferError),
}

/// The error flags of `DEBUG`, and where the engine was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferError {
    pub read_error: bool,
    pub fifo_error: bool,
    pub read_last_not_set: bool,
    /// The block being run: its bus address and what was left of it.
    pub control_block: u32,
    pub source: u32,
    pub destination: u32,
    pub remaining: u32,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            (self.read_error, "an AXI read returned an error (a bus address with nothing behind it)"),
            (self.fifo_error, "the read FIFO over- or underflowed"),
            (self.read_last_not_set, "an AXI read lacked its last signal"),
        ];
        let mut described = flags.iter().filter(|(set, _)| *set).map(|(_, words)| words);
        match described.next() {
            Some(first) => write!(f, "{first}")?,
            None => write!(f, "the channel flagged an error with no cause in DEBUG")?,
        }
        for words in described {
            write!(f, "; {words}")?;
        }
        write!(
            f,
            " (control block {:#x}, source {:#x}, destination {:#x}, {} bytes left)",
            self.control_block, self.source, self.destination, self.remaining
        )
    }
}

impl Channel {
    /// Stops whatever the channel was doing and clears its flags. `RESET` clears itself
    /// within a few bus cycles; a channel that keeps it set is reported, not waited on forever.
    pub fn reset(&self) -> Result<(), ChannelStuck> {
        self.registers.cs.write(CS::RESET::SET);
        let cleared = (0..RESET_POLLS).any(|_| !self.registers.cs.is_set(CS::RESET));
        self.clear_errors();
        cleared.then_some(()).ok_or(ChannelStuck { index: self.index })
    }

    /// Starts the chain of control blocks at bus address `first_block` (32-byte aligned).
    /// The blocks and every buffer they name must be visible to the engine (written back
    /// from the caches) before this call.
    pub fn start(&self, first_block: u32) {
        self.clear_errors();
        self.registers.cs.write(CS::END::SET); // write 1 to clear
        self.registers.conblk_ad.set(first_block);
        self.registers.cs.write(
            CS::ACTIVE::SET
                + CS::WAIT_FOR_OUTSTANDING_WRITES::SET
                + CS::PRIORITY.val(PRIORITY)
                + CS::PANIC_PRIORITY.val(PRIORITY),
        );
    }

    /// Done means stopped *and* `END` set: a channel that stopped without reaching the end of
    /// its chain (after an abort, say) failed.
    pub fn status(&self) -> Status {
        let cs = self.registers.cs.extract();
        match (cs.is_set(CS::ERROR), cs.is_set(CS::ACTIVE), cs.is_set(CS::END)) {
            (true, _, _) | (false, false, false) => Status::Failed(self.error()),
            (false, true, _) => Status::Running,
            (false, false, true) => Status::Done,
        }
    }

    /// Aborts the running block and stops the channel (after a timeout).
    pub fn abort(&self) -> Result<(), ChannelStuck> {
        self.registers.cs.modify(CS::ABORT::SET + CS::ACTIVE::CLEAR);
        self.reset()
    }

    fn error(&self) -> TransferError {
        let debug = self.registers.debug.extract();
        TransferError {
            read_error: debug.is_set(DEBUG::READ_ERROR),
            fifo_error: debug.is_set(DEBUG::FIFO_ERROR),
            read_last_not_set: debug.is_set(DEBUG::READ_LAST_NOT_SET_ERROR),
            control_block: self.registers.conblk_ad.get(),
            source: self.registers.source_ad.get(),
            destination: self.registers.dest_ad.get(),
            remaining: self.registers.txfr_len.get(),
        }
    }

    fn clear_errors(&self) {
        self.registers
            .debug
            .write(DEBUG::READ_ERROR::SET + DEBUG::FIFO_ERROR::SET + DEBUG::READ_LAST_NOT_SET_ERROR::SET);
    }
}
