//! The Raspberry Pi 4's DMA engine behind the kernel's DMA API: memory-to-memory copies.
//!
//! The engine is the textbook device with a DMA limit. It addresses RAM with 32-bit bus
//! addresses, and `/soc`'s `dma-ranges` gives it only the first GiB, at bus `0xC000_0000`.
//! A copy therefore goes:
//!
//! ```text
//!  source ──map ToDevice──▶ bus address ◀─┐            ┌─▶ bus address ◀──map FromDevice── destination
//!   (above 1 GiB: bounced into the pool)  control block (coherent memory)   (bounced back at unmap)
//!                                          └── engine: CONBLK_AD, CS.ACTIVE ──┘
//! ```
//!
//! The driver never turns a CPU address into a bus address itself: the device's [`DmaDevice`]
//! does, and refuses what the engine cannot reach. Long copies are split into a chain of
//! control blocks, each within the channel's `TXFR_LEN` limit.

use core::time::Duration;

use alloc::vec::Vec;

use addr::DmaAddr;
use drivers::bcm2835_dma::{Channel, ChannelStuck, ControlBlock, Controller, MAX_BLOCK_LENGTH, Status, TransferError};
use platform::devicetree::{Device, Devicetree};
use spin::Mutex;

use crate::dma_platform::{Coherent, DmaDevice};
use crate::interrupts::Line;
use dma::{DmaApiError, MapError};

/// The engine moves 32-bit words; QEMU's model even assumes whole words (it would run past
/// the end of a shorter tail), so copies are whole words everywhere.
pub const WORD: usize = 4;
/// A copy that has not finished after this long is aborted.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The engine's own address width: its registers and control blocks hold 32-bit addresses.
pub const ENGINE_DMA_MASK: u64 = u32::MAX as u64;

/// The started engine, if the devicetree has one.
pub static DMA_ENGINE: Mutex<Option<DmaEngine>> = Mutex::new(None);

/// Why a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// Source and destination differ in length, or the length is not whole words.
    BadLength {
        source: usize,
        destination: usize,
    },
    Dma(DmaApiError),
    /// A bus address that does not fit the engine's 32 bits.
    AddressTooWide(DmaAddr),
    /// The engine flagged an error; `stuck` if the channel would not even reset after it.
    Engine {
        error: TransferError,
        stuck: Option<ChannelStuck>,
    },
    TimedOut {
        after: Duration,
        stuck: Option<ChannelStuck>,
    },
}

impl From<DmaApiError> for CopyError {
    fn from(error: DmaApiError) -> Self {
        CopyError::Dma(error)
    }
}

impl From<MapError> for CopyError {
    fn from(error: MapError) -> Self {
        CopyError::Dma(error.error())
    }
}

impl core::fmt::Display for CopyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CopyError::BadLength { source, destination } => write!(
                f,
                "cannot copy {source} bytes into {destination}: lengths must be equal, non-zero, whole {WORD}-byte words"
            ),
            CopyError::Dma(error) => write!(f, "{error}"),
            CopyError::AddressTooWide(dma) => write!(f, "bus address {dma} does not fit the engine's 32 bits"),
            CopyError::Engine { error, stuck } => {
                write!(f, "the engine failed: {error}")?;
                stuck_note(f, *stuck)
            }
            CopyError::TimedOut { after, stuck } => {
                write!(f, "the engine had not finished after {after:?}; aborted")?;
                stuck_note(f, *stuck)
            }
        }
    }
}

fn stuck_note(f: &mut core::fmt::Formatter<'_>, stuck: Option<ChannelStuck>) -> core::fmt::Result {
    match stuck {
        Some(ChannelStuck { index }) => write!(f, "; channel {index} then stayed in reset"),
        None => Ok(()),
    }
}

/// What the engine was given for one copy: enough to check that it only saw addresses within
/// its reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub source: DmaAddr,
    pub destination: DmaAddr,
    pub first_block: DmaAddr,
    pub blocks: usize,
}

/// The engine: one channel the firmware leaves to the ARM, and the device's DMA handle.
pub struct DmaEngine {
    pub dma: DmaDevice,
    channel: Channel,
    /// The channel's interrupt (`interrupt-names` "dmaN"), when the end of a copy is waited
    /// for asleep; else it is polled.
    line: Mutex<Option<Line>>,
}

/// Maps the controller, picks its first usable full (non-Lite) channel and installs the engine.
/// Returns a description for the boot log's DMA table.
pub fn start(
    devicetree: &Devicetree<'static>,
    device: &Device<'static>,
    dma: DmaDevice,
) -> Result<alloc::string::String, &'static str> {
    let registers = *device.regs.first().ok_or("no registers in the devicetree")?;
    let mask = devicetree
        .u32_property(device, Controller::CHANNEL_MASK_PROPERTY)
        .map_err(|_| "malformed brcm,dma-channel-mask")?
        .ok_or("no brcm,dma-channel-mask: which channels the firmware leaves free is unknown")?;
    let mapped = arch::mmu::map_device(registers).map_err(|_| "cannot map the registers")?;
    // SAFETY: the controller's registers, freshly mapped as device memory; the channel mask
    // comes from the firmware's devicetree, so those channels are the kernel's.
    let mut controller = unsafe { Controller::new(mapped.as_mut_ptr(), registers.size() as usize, mask) };
    let channel = controller.take_full_channel().ok_or("no full (not Lite) channel in brcm,dma-channel-mask")?;
    channel.reset().map_err(|_| "the channel stays in reset")?;
    let description = alloc::format!("engine ch{}", channel.index);
    log::info!("DMA engine: channel {} of the firmware's mask {mask:#x}, a full (not Lite) channel", channel.index);
    let interrupt_name = alloc::format!("dma{}", channel.index);
    let interrupt = devicetree.named_gic_interrupt(device, &interrupt_name).ok().flatten();
    let line =
        crate::interrupts::line_for(interrupt.map(Into::into), &alloc::format!("DMA engine channel {}", channel.index));
    *DMA_ENGINE.lock() = Some(DmaEngine { dma, channel, line: Mutex::new(line) });
    Ok(description)
}

impl DmaEngine {
    /// Copies `source` into `destination` with the engine; both lent to it for the copy only.
    pub fn copy(&self, source: &[u8], destination: &mut [u8]) -> Result<CopyReport, CopyError> {
        self.copy_in_blocks(source, destination, MAX_BLOCK_LENGTH as usize)
    }

    /// [`Self::copy`] with control blocks of at most `block_length` bytes (whole words, at
    /// most the channel's limit): a chain, when the copy is longer.
    pub fn copy_in_blocks(
        &self,
        source: &[u8],
        destination: &mut [u8],
        block_length: usize,
    ) -> Result<CopyReport, CopyError> {
        let block_length = block_length.min(MAX_BLOCK_LENGTH as usize) / WORD * WORD;
        let bad_length = CopyError::BadLength { source: source.len(), destination: destination.len() };
        let whole_words = !source.is_empty() && source.len().is_multiple_of(WORD);
        if source.len() != destination.len() || !whole_words || block_length == 0 {
            return Err(bad_length);
        }
        let length = source.len();
        let reading = self.dma.map_to_device(source)?;
        let writing = self.dma.map_from_device(destination)?;
        let chain = Chain { source: reading.dma(), destination: writing.dma(), length, block_length };
        let blocks = self.control_blocks(&chain)?;
        let finished = self.run(blocks.dma());
        let report = CopyReport {
            source: chain.source,
            destination: chain.destination,
            first_block: blocks.dma(),
            blocks: chain.count(),
        };
        // Unmapping copies a bounced destination back, so it must come after the engine
        // stops; all three clean-ups run whatever happened, and the engine's verdict wins.
        let cleaned = [reading.unmap(), writing.unmap(), blocks.free()];
        finished?;
        cleaned.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(report)
    }

    /// The chain's control blocks, written into coherent memory.
    /// (On a failure the memory is dropped, which frees it; the failure is what is reported.)
    fn control_blocks(&self, chain: &Chain) -> Result<Coherent<'_>, CopyError> {
        let memory = self.dma.alloc_coherent(chain.count() * size_of::<ControlBlock>())?;
        chain.write(&memory)?;
        Ok(memory)
    }

    /// How many interrupts the channel has raised; `None` if its copies are polled.
    pub fn interrupts_taken(&self) -> Option<u64> {
        self.line.lock().as_ref().map(Line::fired)
    }

    /// Starts the chain and waits for the engine to finish it, fail, or time out.
    fn run(&self, first_block: DmaAddr) -> Result<(), CopyError> {
        // The blocks are in coherent memory: ordering the writes before the doorbell is enough.
        arch::cache::order_writes_before_doorbell();
        let mut line = self.line.lock();
        self.channel.start(bus32(first_block)?);
        // `start` cleared the previous copy's `CS.INT`: the line may be unmasked again.
        if let Some(line) = line.as_mut() {
            line.rearm(&mut || {});
        }
        let started = arch::timer::uptime();
        loop {
            match self.channel.status() {
                Status::Done => {
                    // What the engine wrote is read only after its status said it was done.
                    arch::cache::order_reads_after_status();
                    return Ok(());
                }
                Status::Failed(error) => {
                    let stuck = self.channel.reset().err();
                    return Err(CopyError::Engine { error, stuck });
                }
                Status::Running if arch::timer::uptime() - started > TIMEOUT => {
                    let stuck = self.channel.abort().err();
                    return Err(CopyError::TimedOut { after: TIMEOUT, stuck });
                }
                Status::Running => match line.as_mut() {
                    Some(line) => {
                        let running = || self.channel.status() == Status::Running;
                        // Nothing to acknowledge before sleeping: only the last block interrupts,
                        // so an interrupt of this copy means a stopped channel, and `wait`
                        // returns on that before it would acknowledge; one left from the
                        // previous copy was cleared by `start`. Clearing `CS.INT` here could
                        // only clear this copy's own, had it just finished: lost, with the
                        // line still masked from the previous copy.
                        line.wait(started + TIMEOUT, || !running(), || {});
                    }
                    None => core::hint::spin_loop(),
                },
            }
        }
    }
}

/// One copy cut into control blocks of `block_length` bytes (the last one shorter).
struct Chain {
    source: DmaAddr,
    destination: DmaAddr,
    length: usize,
    block_length: usize,
}

impl Chain {
    fn count(&self) -> usize {
        self.length.div_ceil(self.block_length)
    }

    /// Writes block `i` at `memory + 32 * i`, linked to block `i + 1`; the last links to 0.
    fn write(&self, memory: &Coherent<'_>) -> Result<(), CopyError> {
        let blocks = memory.as_ptr().as_ptr().cast::<ControlBlock>();
        for index in 0..self.count() {
            let offset = index * self.block_length;
            let length = (self.length - offset).min(self.block_length) as u32;
            let source = bus32(self.source.add(offset as u64))?;
            let destination = bus32(self.destination.add(offset as u64))?;
            let mut block = ControlBlock::memory_to_memory(source, destination, length);
            match index + 1 < self.count() {
                true => block.next = bus32(memory.dma().add(((index + 1) * size_of::<ControlBlock>()) as u64))?,
                // The last block raises the channel's interrupt: the copy is done.
                false => block = block.interrupting(),
            }
            // SAFETY: coherent memory sized for `count` blocks, page-aligned (so 32-byte
            // aligned), owned by this copy; volatile because the engine reads it.
            unsafe { blocks.add(index).write_volatile(block) };
        }
        Ok(())
    }
}

fn bus32(dma: DmaAddr) -> Result<u32, CopyError> {
    u32::try_from(dma.as_u64()).map_err(|_| CopyError::AddressTooWide(dma))
}
