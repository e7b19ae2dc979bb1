//! Block devices: disks of any transport behind one trait, so that the same integrity tests
//! and demo run over virtio-blk and NVMe alike.
//!
//! A disk is an array of fixed-size blocks. One request may carry only so much: the device
//! states its own limit (NVMe's MDTS), and the DMA layer states the largest mapping that always
//! succeeds (`max_mapping_size`, contract rule 7: a bounced mapping must fit the bounce pool's
//! contiguous slots). [`read`](fn@read) and [`write`](fn@write) split a larger request into pieces no larger than
//! [`BlockDevice::max_transfer`], each mapped, transferred and unmapped on its own — the way
//! Linux's block layer obeys `max_hw_sectors`, which NVMe derives from both limits (the "nvme-pci:
//! Fix dma-iommu mapping failures when PAGE_SIZE=64KB" thread, 2024,
//! docs/dma-contract.md#thread-nvme-64k-pages).
//!
//! The pieces do not wait for each other: [`run`] hands them to the disk together, and the
//! driver keeps up to its queue depth of them in flight (`drivers::block::in_flight`), so the
//! device works on one while the CPU maps or copies the next. A piece the DMA layer has no room
//! for while others run (a bounce pool full of their copies) waits for one of them to complete;
//! one refused with nothing in flight (a pool held by mappings that outlive the batch) has the
//! batch run again in shorter pieces.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use dma::DmaApiError;
use drivers::block::{self as requests, SplitError};

use crate::dma_platform::DmaDevice;

/// One request to a disk: a read into `buffer` or a write from it, from `block` on.
pub enum Request<'b> {
    Read { block: u64, buffer: &'b mut [u8] },
    Write { block: u64, buffer: &'b [u8] },
}

impl Request<'_> {
    pub fn block(&self) -> u64 {
        match self {
            Request::Read { block, .. } | Request::Write { block, .. } => *block,
        }
    }

    /// The buffer, for reading its address and length.
    pub fn buffer(&self) -> &[u8] {
        match self {
            Request::Read { buffer, .. } => buffer,
            Request::Write { buffer, .. } => buffer,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self, Request::Write { .. })
    }
}

/// A disk, whatever carries its requests.
pub trait BlockDevice {
    /// What the disk is, for messages: its transport and device.
    fn describe(&self) -> String;
    fn block_size(&self) -> usize;
    /// Capacity, in blocks.
    fn blocks(&self) -> u64;
    /// The most one request carries, in bytes (a whole number of blocks); `None` when only
    /// memory limits a request.
    fn max_transfer(&self) -> Option<usize>;
    /// The most one request carries when its buffer is lent to the device in place (see
    /// `DmaDevice::in_place_alignment`): the DMA layer's bounce limit does not apply to it.
    fn max_transfer_in_place(&self) -> Option<usize> {
        self.max_transfer()
    }
    /// How many requests the disk keeps in flight at once.
    fn queue_depth(&self) -> usize;
    /// The DMA handle every transfer of the disk goes through.
    fn dma_device(&self) -> &'static DmaDevice;
    /// How many interrupts the disk has raised since it started; `None` if it has no interrupt
    /// it can use (no GIC, none described), so that its completions are always polled.
    fn interrupts_taken(&self) -> Option<u64>;
    /// Runs `requests`, each of at most `max_transfer`, keeping up to `queue_depth` in flight
    /// (`drivers::block::in_flight`). Returns once none is in flight: the most that were in
    /// flight at once, or the first error, after which nothing more was submitted.
    fn run(&mut self, requests: &mut [Request<'_>]) -> Result<usize, BlockError>;
    /// Reads `buffer.len()` bytes from `block` on, in one request of at most `max_transfer`.
    fn read_request(&mut self, block: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        self.run(&mut [Request::Read { block, buffer }]).map(|_| ())
    }
    /// Writes `buffer` from `block` on, in one request of at most `max_transfer`.
    fn write_request(&mut self, block: u64, buffer: &[u8]) -> Result<(), BlockError> {
        self.run(&mut [Request::Write { block, buffer }]).map(|_| ())
    }
    /// Makes every completed write durable (a disk may hold them in a volatile cache).
    fn flush(&mut self) -> Result<(), BlockError>;
}

/// Why a block request failed.
#[derive(Debug)]
pub enum BlockError {
    /// Not a whole number of blocks, or beyond the end of the disk.
    OutOfRange { block: u64, bytes: usize, capacity: u64 },
    /// The request cannot be cut into the disk's commands (its limit is not whole blocks).
    Request(SplitError),
    /// The DMA layer refused the buffer.
    Dma(DmaApiError),
    /// The disk's driver refused the request or the device failed it, in the driver's own
    /// terms (`downcast_ref` recovers them: a virtio or NVMe error).
    Device(Box<dyn core::error::Error + Send + Sync>),
}

impl BlockError {
    /// A driver's error, kept whole.
    pub fn device(error: impl core::error::Error + Send + Sync + 'static) -> Self {
        BlockError::Device(Box::new(error))
    }

    /// The driver's error, if it is one and of type `E`.
    pub fn device_error<E: core::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            BlockError::Device(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { block, bytes, capacity } => {
                write!(
                    f,
                    "{bytes} bytes from block {block} are not whole blocks within the {capacity} blocks of the disk"
                )
            }
            BlockError::Request(error) => write!(f, "{error}"),
            BlockError::Dma(error) => write!(f, "{error}"),
            BlockError::Device(error) => write!(f, "{error}"),
        }
    }
}

/// Calls `visit` with every disk the kernel drives: virtio-mmio, virtio-pci, then NVMe.
pub fn with_each_disk(mut visit: impl FnMut(&mut dyn BlockDevice)) {
    for disk in disks() {
        disk.with(&mut visit);
    }
}

/// One disk, reachable on its own: [`Disk::with`] holds that disk's lock alone, so CPUs using
/// different disks at once never wait for each other.
pub struct Disk(Box<Reach>);

/// How a [`Disk`] is reached: a function that calls its argument with the disk, locked.
type Reach = dyn Fn(&mut dyn FnMut(&mut dyn BlockDevice)) + Send + Sync;

impl Disk {
    /// A disk reached through `reach`, which calls its argument with the disk, locked.
    pub fn new(reach: impl Fn(&mut dyn FnMut(&mut dyn BlockDevice)) + Send + Sync + 'static) -> Self {
        Self(Box::new(reach))
    }

    /// Calls `visit` with the disk, locked until `visit` returns (not at all if its driver has
    /// gone).
    pub fn with(&self, visit: &mut dyn FnMut(&mut dyn BlockDevice)) {
        (self.0)(visit)
    }
}

/// Every disk the kernel drives, in [`with_each_disk`]'s order.
pub fn disks() -> Vec<Disk> {
    let mut disks = crate::virtio::disks();
    for controller in crate::nvme::controllers() {
        disks.push(Disk::new(move |visit| visit(&mut *controller.lock())));
    }
    disks
}

/// Reads `buffer.len()` bytes from `block` on, in as many requests as the disk's limit needs.
pub fn read(disk: &mut dyn BlockDevice, block: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
    run(disk, [Request::Read { block, buffer }]).map(|_| ())
}

/// Writes `buffer` from `block` on, in as many requests as the disk's limit needs.
pub fn write(disk: &mut dyn BlockDevice, block: u64, buffer: &[u8]) -> Result<(), BlockError> {
    run(disk, [Request::Write { block, buffer }]).map(|_| ())
}

/// Runs `requests`, each cut into pieces the disk takes in one request, all of them kept in
/// flight up to the disk's queue depth; returns the most that were in flight at once. Every
/// request is checked before anything is submitted.
/// The pieces complete in any order, so requests of one batch must not overlap on the disk
/// where one of them writes (as with any queue of a real disk).
///
/// `max_mapping_size` promises a mapping room in an *empty* pool. A piece refused for room with
/// nothing of the batch in flight met a pool or IOVA space held by mappings that outlive the
/// batch; the batch then runs again, whole, in pieces half as long, down to one block. Running
/// a piece twice is harmless: it moves the same bytes to the same blocks.
pub fn run<'b>(
    disk: &mut dyn BlockDevice,
    requests: impl IntoIterator<Item = Request<'b>>,
) -> Result<usize, BlockError> {
    let mut batch: Vec<Request<'b>> = requests.into_iter().collect();
    for request in &batch {
        check_range(disk, request.block(), request.buffer().len())?;
    }
    let mut longest = usize::MAX;
    loop {
        let mut pieces = cut(disk, &mut batch, longest)?;
        let largest = pieces.iter().map(|piece| piece.buffer().len()).max().unwrap_or(0);
        match disk.run(&mut pieces) {
            Err(error) if wants_room(&error) && largest / 2 >= disk.block_size() => {
                longest = largest / 2 / disk.block_size() * disk.block_size();
                BATCHES_RUN_AGAIN.fetch_add(1, Ordering::Relaxed);
                log::warn!("{}: {error}; the batch runs again in pieces of at most {longest} bytes", disk.describe());
            }
            outcome => return outcome,
        }
    }
}

/// How many batches [`run`] ran again in shorter pieces since boot.
pub fn batches_run_again() -> usize {
    BATCHES_RUN_AGAIN.load(Ordering::Relaxed)
}

static BATCHES_RUN_AGAIN: AtomicUsize = AtomicUsize::new(0);

/// The pieces of `batch`, each at most what the disk takes in one request and at most
/// `longest` bytes (a whole number of blocks).
fn cut<'p>(
    disk: &dyn BlockDevice,
    batch: &'p mut [Request<'_>],
    longest: usize,
) -> Result<Vec<Request<'p>>, BlockError> {
    let mut pieces = Vec::new();
    for request in batch {
        let (block, length) = (request.block(), request.buffer().len());
        let limit = limit_within(disk, request.buffer(), longest);
        let chunks = requests::split(block, length, disk.block_size(), limit).map_err(BlockError::Request)?;
        let blocks = chunks.map(|chunk| chunk.block);
        match request {
            Request::Read { buffer, .. } => pieces
                .extend(blocks.zip(buffer.chunks_mut(limit)).map(|(block, buffer)| Request::Read { block, buffer })),
            Request::Write { buffer, .. } => {
                pieces.extend(blocks.zip(buffer.chunks(limit)).map(|(block, buffer)| Request::Write { block, buffer }))
            }
        }
    }
    Ok(pieces)
}

/// Whether `error` is the DMA layer's refusal for want of room, as the driver reports it: as it
/// is (NVMe) or as the source of its own error (virtio). Only a map refuses for room (a pool's
/// slots, an IOVA range): ending a mapping never does.
fn wants_room(error: &BlockError) -> bool {
    let refusal = match error {
        BlockError::Dma(error) => Some(error),
        BlockError::Device(error) => error.source().and_then(|source| source.downcast_ref::<DmaApiError>()),
        _ => None,
    };
    refusal.is_some_and(DmaApiError::is_no_room)
}

/// The disk's request limit, in words.
pub fn describe_limit(disk: &dyn BlockDevice) -> String {
    match disk.max_transfer() {
        Some(bytes) if bytes.is_multiple_of(1024) => format!("at most {} KiB per request", bytes >> 10),
        Some(bytes) => format!("at most {bytes} bytes per request"),
        None => "no limit per request".into(),
    }
}

/// The most one request for `buffer` carries, as a whole number of blocks even when unlimited.
/// A buffer the DMA layer lends in place is cut only where its alignment holds, so that every
/// piece maps in place too, and the bounce pool's limit does not apply to it: a large aligned
/// buffer for an untrusted device is not split at `max_mapping_size`.
pub fn request_limit(disk: &dyn BlockDevice, buffer: &[u8]) -> usize {
    limit_within(disk, buffer, usize::MAX)
}

/// [`request_limit`], at most `longest` bytes: still whole blocks, and still whole units of the
/// in-place alignment for a buffer lent in place, as long as one unit fits.
fn limit_within(disk: &dyn BlockDevice, buffer: &[u8], longest: usize) -> usize {
    let block_size = disk.block_size();
    let device = disk.dma_device();
    let in_place = device
        .physical(addr::VirtAddr::from_ptr(buffer.as_ptr()), buffer.len())
        .is_ok_and(|range| device.maps_in_place(range));
    let alignment = device.in_place_alignment().unwrap_or(1) as usize;
    let whole = |limit: Option<usize>, unit: usize| limit.unwrap_or(usize::MAX).min(longest) / unit * unit;
    let unit = block_size.max(alignment);
    match in_place {
        true if whole(disk.max_transfer_in_place(), unit) > 0 => whole(disk.max_transfer_in_place(), unit),
        _ => whole(disk.max_transfer(), block_size),
    }
}

fn check_range(disk: &dyn BlockDevice, block: u64, bytes: usize) -> Result<(), BlockError> {
    let size = disk.block_size();
    let end = bytes.is_multiple_of(size).then(|| block.checked_add((bytes / size) as u64)).flatten();
    match end {
        Some(end) if end <= disk.blocks() => Ok(()),
        _ => Err(BlockError::OutOfRange { block, bytes, capacity: disk.blocks() }),
    }
}
