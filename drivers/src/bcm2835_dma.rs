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
use core::ptr::NonNull;

use safe_mmio::fields::{ReadPure, ReadPureWrite};
use safe_mmio::{UniqueMmioPointer, field, field_shared};
use tock_registers::LocalRegisterCopy;
use tock_registers::register_bitfields;

use crate::mmio::{RegisterLock, register_offsets};

register_bitfields! {
    u32,

    /// CS, control and status (4.2.1.3, offset 0x00).
    CS [
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
        /// A block with `TI.INTEN` finished, and the channel's interrupt is raised (write 1 to
        /// clear, which lowers it).
        INT OFFSET(2) NUMBITS(1) [],
        /// The chain ended (write 1 to clear).
        END OFFSET(1) NUMBITS(1) [],
        /// The channel is running; writing 1 starts it at `CONBLK_AD`.
        ACTIVE OFFSET(0) NUMBITS(1) []
    ],

    /// TI, transfer information: the first word of a control block (4.2.1.2).
    TI [
        /// Increment the source address after each read.
        SRC_INC OFFSET(8) NUMBITS(1) [],
        /// Increment the destination address after each write.
        DEST_INC OFFSET(4) NUMBITS(1) [],
        /// Wait for each write's AXI response before the next one.
        WAIT_RESP OFFSET(3) NUMBITS(1) [],
        /// Raise the channel's interrupt when this block is done.
        INTEN OFFSET(0) NUMBITS(1) []
    ],

    /// DEBUG (4.2.1.3, offset 0x20): error flags are write-1-to-clear.
    DEBUG [
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

/// Distance between two channels' register blocks.
const CHANNEL_STRIDE: usize = 0x100;

/// One channel's registers (4.2.1.3 "DMA Channel Register Address Map"), padded to the
/// channel stride so that the controller's channels form an array. Reading any of them
/// changes nothing (the flags are cleared by writing ones), so every read is `ReadPure`.
#[repr(C)]
struct ChannelRegisters {
    /// CS, control and status (4.2.1.3, offset 0x00).
    cs: ReadPureWrite<u32>,
    /// CONBLK_AD (offset 0x04): bus address of the control block to load, 32-byte aligned.
    conblk_ad: ReadPureWrite<u32>,
    /// TI (offset 0x08), loaded from the control block; unused here.
    _transfer_information: u32,
    /// SOURCE_AD (offset 0x0c): the loaded block's source, read back for error reports.
    source_ad: ReadPure<u32>,
    /// DEST_AD (offset 0x10): its destination.
    dest_ad: ReadPure<u32>,
    /// TXFR_LEN (offset 0x14): what is left of its length.
    txfr_len: ReadPure<u32>,
    /// STRIDE (offset 0x18) and NEXTCONBK (offset 0x1c), loaded from the block; unused here.
    _stride_and_next: [u32; 2],
    /// DEBUG (offset 0x20).
    debug: ReadPureWrite<u32>,
    _unused: [u32; (CHANNEL_STRIDE - 0x24) / 4],
}

register_offsets!(
    ChannelRegisters { cs: 0x00, conblk_ad: 0x04, source_ad: 0x0c, dest_ad: 0x10, txfr_len: 0x14, debug: 0x20 }
    size CHANNEL_STRIDE
);

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

/// A control block as the engine reads it from memory (4.2.1.2): the engine's whole
/// instruction for one transfer. The kernel writes these into coherent memory and hands the
/// engine the bus address of the first.
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlBlock {
    /// TI: how to move (address increments, waits).
    pub transfer_information: u32,
    /// SOURCE_AD: bus address of the first byte read.
    pub source: u32,
    /// DEST_AD: bus address of the first byte written.
    pub destination: u32,
    /// TXFR_LEN: bytes to move, at most [`MAX_BLOCK_LENGTH`].
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

    /// The same block, raising the channel's interrupt when it is done (`TI.INTEN`): for the
    /// last block of a chain whose end is waited for asleep.
    pub fn interrupting(self) -> Self {
        Self { transfer_information: self.transfer_information | TI::INTEN::SET.value, ..self }
    }
}

/// The controller: channel register blocks from the devicetree's `reg`, and the channels the
/// firmware leaves to the ARM. It hands each usable channel out once, as a [`Channel`].
pub struct Controller {
    /// The channels inside the mapped registers, `CHANNEL_STRIDE` apart.
    channels: UniqueMmioPointer<'static, [ChannelRegisters]>,
    /// Channels the ARM may use that lie inside the mapped registers and were not taken yet.
    usable: u32,
}

impl Controller {
    /// The compatible string this driver binds to.
    pub const COMPATIBLE: &'static str = "brcm,bcm2835-dma";
    /// The devicetree property holding the channels the ARM may use.
    pub const CHANNEL_MASK_PROPERTY: &'static str = "brcm,dma-channel-mask";

    /// Takes over the channels of `channel_mask` that lie inside the `size` mapped bytes.
    /// Nothing is written until a channel is taken and used.
    ///
    /// # Safety
    /// `base` is the virtual address of the controller's registers, `size` bytes mapped as
    /// device memory, and the channels in `channel_mask` are this kernel's alone.
    pub unsafe fn new(base: *mut u8, size: usize, channel_mask: u32) -> Self {
        let mapped = CHANNELS.min(size / CHANNEL_STRIDE);
        let first = NonNull::new(base.cast::<ChannelRegisters>()).expect("the DMA controller's registers at address 0");
        let channels = NonNull::slice_from_raw_parts(first, mapped);
        // SAFETY: the caller maps `size` bytes, which hold the `mapped` whole channel blocks;
        // `ChannelRegisters` matches a channel's layout and stride (checked by
        // `register_offsets!`); device memory is reachable from every CPU. The channels
        // outside `channel_mask` are never written (`usable` leaves them out), so other
        // users of those (the firmware's) are not disturbed.
        let channels = unsafe { UniqueMmioPointer::new(channels) };
        let inside = (1u32 << mapped) - 1;
        Self { channels, usable: channel_mask & inside }
    }

    /// Hands out the lowest usable full (not Lite) channel, for good: each channel has one
    /// owner.
    pub fn take_full_channel(&mut self) -> Option<Channel> {
        let index = (0..self.channels.len()).filter(|index| self.usable & 1 << index != 0).find(|&index| {
            let channel = self.channels.get(index).expect("usable channels lie inside the mapping");
            // DEBUG (4.2.1.3, offset 0x20): LITE says a DMA Lite channel.
            let debug: LocalRegisterCopy<u32, DEBUG::Register> =
                LocalRegisterCopy::new(field_shared!(channel, debug).read());
            !debug.is_set(DEBUG::LITE)
        })?;
        self.usable &= !(1 << index);
        let registers = self.channels.get(index).expect("usable channels lie inside the mapping").ptr_nonnull();
        // SAFETY: a pointer to one element of `channels`, and the only one that will live:
        // the index has just left `usable`, so it is never looked at or handed out again.
        let registers = unsafe { self.channels.split_child(registers) };
        Some(Channel { registers: RegisterLock::new(registers), index: index as u8 })
    }
}

/// One DMA channel: it runs chains of control blocks, one chain at a time.
///
/// The kernel keeps it inside its DMA engine and drives it through `&self`, so its registers
/// sit behind a `RegisterLock` (`mmio.rs`).
pub struct Channel {
    registers: RegisterLock<ChannelRegisters>,
    /// Which of the controller's channels this is (what `brcm,dma-channel-mask` numbers).
    pub index: u8,
}

/// A channel whose `CS.RESET` never cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStuck {
    /// The channel that stayed in reset.
    pub index: u8,
}

/// Where a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `CS.ACTIVE`: still working through the chain.
    Running,
    /// Stopped after the last block (`CS.END`).
    Done,
    /// Stopped with an error, or stopped before the end of the chain.
    Failed(TransferError),
}

/// The error flags of `DEBUG`, and where the engine was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferError {
    /// `DEBUG.READ_ERROR`: an AXI read returned an error response.
    pub read_error: bool,
    /// `DEBUG.FIFO_ERROR`: the read FIFO over- or underflowed.
    pub fifo_error: bool,
    /// `DEBUG.READ_LAST_NOT_SET_ERROR`: an AXI read lacked its last signal.
    pub read_last_not_set: bool,
    /// The block being run: its bus address (`CONBLK_AD`)...
    pub control_block: u32,
    /// ...where it was reading (`SOURCE_AD`)...
    pub source: u32,
    /// ...where it was writing (`DEST_AD`)...
    pub destination: u32,
    /// ...and what was left of it (`TXFR_LEN`).
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
        let cleared = self.registers.with(|registers| {
            field!(*registers, cs).write(CS::RESET::SET.value); // 4.2.1.3 CS
            let cleared = (0..RESET_POLLS).any(|_| !control_status(registers).is_set(CS::RESET));
            clear_errors(registers);
            cleared
        });
        cleared.then_some(()).ok_or(ChannelStuck { index: self.index })
    }

    /// Starts the chain of control blocks at bus address `first_block` (32-byte aligned).
    /// The blocks and every buffer they name must be visible to the engine (written back
    /// from the caches) before this call.
    pub fn start(&self, first_block: u32) {
        self.registers.with(|registers| {
            clear_errors(registers);
            // 4.2.1.3 CS: write 1 to clear `END`, and `INT` of a previous chain.
            field!(*registers, cs).write((CS::END::SET + CS::INT::SET).value);
            field!(*registers, conblk_ad).write(first_block); // 4.2.1.3 CONBLK_AD
            let run = CS::ACTIVE::SET
                + CS::WAIT_FOR_OUTSTANDING_WRITES::SET
                + CS::PRIORITY.val(PRIORITY)
                + CS::PANIC_PRIORITY.val(PRIORITY);
            field!(*registers, cs).write(run.value); // 4.2.1.3 CS
        });
    }

    /// Done means stopped *and* `END` set: a channel that stopped without reaching the end of
    /// its chain (after an abort, say) failed.
    pub fn status(&self) -> Status {
        self.registers.with(|registers| {
            let cs = control_status(registers);
            match (cs.is_set(CS::ERROR), cs.is_set(CS::ACTIVE), cs.is_set(CS::END)) {
                (true, _, _) | (false, false, false) => Status::Failed(error(registers)),
                (false, true, _) => Status::Running,
                (false, false, true) => Status::Done,
            }
        })
    }

    /// Aborts the running block and stops the channel (after a timeout).
    pub fn abort(&self) -> Result<(), ChannelStuck> {
        self.registers.with(|registers| {
            let stop = CS::ABORT::SET + CS::ACTIVE::CLEAR;
            field!(*registers, cs).modify(|cs| stop.modify(cs)); // 4.2.1.3 CS
        });
        self.reset()
    }
}

/// CS (4.2.1.3, offset 0x00).
fn control_status(registers: &UniqueMmioPointer<'_, ChannelRegisters>) -> LocalRegisterCopy<u32, CS::Register> {
    LocalRegisterCopy::new(field_shared!(*registers, cs).read())
}

/// What `DEBUG` and the loaded block's registers say went wrong (4.2.1.3).
fn error(registers: &UniqueMmioPointer<'_, ChannelRegisters>) -> TransferError {
    let debug: LocalRegisterCopy<u32, DEBUG::Register> =
        LocalRegisterCopy::new(field_shared!(*registers, debug).read());
    TransferError {
        read_error: debug.is_set(DEBUG::READ_ERROR),
        fifo_error: debug.is_set(DEBUG::FIFO_ERROR),
        read_last_not_set: debug.is_set(DEBUG::READ_LAST_NOT_SET_ERROR),
        control_block: field_shared!(*registers, conblk_ad).read(), // 4.2.1.3 CONBLK_AD
        source: field_shared!(*registers, source_ad).read(),        // 4.2.1.3 SOURCE_AD
        destination: field_shared!(*registers, dest_ad).read(),     // 4.2.1.3 DEST_AD
        remaining: field_shared!(*registers, txfr_len).read(),      // 4.2.1.3 TXFR_LEN
    }
}

/// Clears the error flags of DEBUG (4.2.1.3, offset 0x20: write 1 to clear).
fn clear_errors(registers: &mut UniqueMmioPointer<'_, ChannelRegisters>) {
    let errors = DEBUG::READ_ERROR::SET + DEBUG::FIFO_ERROR::SET + DEBUG::READ_LAST_NOT_SET_ERROR::SET;
    field!(*registers, debug).write(errors.value);
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::*;

    const WORDS_PER_CHANNEL: usize = CHANNEL_STRIDE / 4;
    const CS_WORD: usize = 0;
    const CONBLK_AD_WORD: usize = 1;
    const DEBUG_WORD: usize = 8;

    /// Simulated registers of the 11 legacy channels, reached through the same pointer type
    /// as the hardware: channels 7 to 10 say Lite, as on the BCM2711.
    fn simulated_channels() -> std::vec::Vec<u32> {
        let mut words = vec![0u32; CHANNELS * WORDS_PER_CHANNEL];
        for lite in 7..CHANNELS {
            words[lite * WORDS_PER_CHANNEL + DEBUG_WORD] = 1 << 28;
        }
        words
    }

    #[test]
    fn channels_are_taken_once_lowest_full_first_and_only_inside_the_mask_and_mapping() {
        let mut words = simulated_channels();
        let size = words.len() * 4;
        // SAFETY: `words` holds every channel's registers, aligned, and outlives the controller.
        let mut controller = unsafe { Controller::new(words.as_mut_ptr().cast(), size, 0b111_1010_0100) };
        let taken: std::vec::Vec<u8> =
            core::iter::from_fn(|| controller.take_full_channel()).map(|c| c.index).collect();
        assert_eq!(taken, [2, 5], "channels 7 to 10 are Lite; 0, 1, 3, 4 and 6 are the firmware's");
        // Three whole channels mapped, and most of a fourth: channel 2 is the only one inside
        // both the mask and the mapping.
        // SAFETY: as above, with a smaller mapping.
        let mut small =
            unsafe { Controller::new(words.as_mut_ptr().cast(), 3 * CHANNEL_STRIDE + 0x24, 0b111_1010_0100) };
        assert_eq!(small.take_full_channel().map(|c| c.index), Some(2));
        assert!(small.take_full_channel().is_none());
    }

    #[test]
    fn start_writes_the_block_address_then_activates_and_status_reads_cs() {
        let mut words = simulated_channels();
        let size = words.len() * 4;
        let base = words.as_mut_ptr();
        {
            // SAFETY: `words` holds every channel's registers, aligned, and outlives the controller.
            let mut controller = unsafe { Controller::new(base.cast(), size, 1 << 3) };
            let channel = controller.take_full_channel().unwrap();
            channel.start(0x1000_0020);
            let cs = base.wrapping_add(3 * WORDS_PER_CHANNEL + CS_WORD);
            // SAFETY: a word of `words`; the simulated device "finishes" the chain.
            unsafe {
                assert_eq!(cs.read_volatile() & 1, 1, "CS.ACTIVE");
                assert_eq!(channel.status(), Status::Running);
                cs.write_volatile(1 << 1);
            }
            assert_eq!(channel.status(), Status::Done, "stopped with END");
            // SAFETY: as above; the device now reports an error in DEBUG.
            unsafe {
                cs.write_volatile(1 << 8);
                base.wrapping_add(3 * WORDS_PER_CHANNEL + DEBUG_WORD).write_volatile(0b101);
            }
            let Status::Failed(error) = channel.status() else { panic!("CS.ERROR is a failure") };
            assert!(error.read_error && !error.fifo_error && error.read_last_not_set);
            assert_eq!(error.control_block, 0x1000_0020);
        }
        assert_eq!(words[3 * WORDS_PER_CHANNEL + CONBLK_AD_WORD], 0x1000_0020);
    }

    #[test]
    fn a_reset_that_never_clears_is_reported() {
        let mut words = simulated_channels();
        let size = words.len() * 4;
        // SAFETY: `words` holds every channel's registers, aligned, and outlives the controller.
        let mut controller = unsafe { Controller::new(words.as_mut_ptr().cast(), size, 1) };
        // Memory keeps the RESET bit that real hardware clears by itself.
        let channel = controller.take_full_channel().unwrap();
        assert_eq!(channel.reset(), Err(ChannelStuck { index: 0 }));
    }
}
