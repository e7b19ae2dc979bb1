//! virtio-blk: a disk of the block size the device states, each request bounded in time.
//!
//! A request is a chain of three buffers (virtio 1.2, 5.2.6 "Device Operation"): a 16-byte
//! header the device reads (type, reserved, sector), the data, and a status byte the device
//! writes. The sector always counts 512-byte units, whatever the disk's block size. A disk
//! whose logical blocks are larger (`blk_size`, offered with `VIRTIO_BLK_F_BLK_SIZE`, 5.2.4)
//! fails a request that is not whole blocks with a bare I/O error; so this driver reads the
//! block size and refuses such a request itself, saying why, as the NVMe driver does.
//!
//! The header and the status live in the disk's coherent reservation, so only the data is
//! mapped per request: a request the DMA layer cannot serve fails before anything is submitted.
//! Each of the [`QUEUE_DEPTH`] requests a batch keeps in flight (`crate::block::run`) has a
//! header and status of its own; the device may complete them in any order (virtio 1.2,
//! 2.7.14 "Used Buffer Notification": the used ring says which chain it finished).

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use virtio_drivers::device::blk::{BlkReq, BlkResp};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use zerocopy::IntoBytes;

use crate::interrupts::Source;

use super::device::Device;
use super::hal::{Carved, Lease, VirtioHal, queue_memory};
use super::{StartError, VirtioError};
use crate::block::{BlockDevice, BlockError, Request};
use crate::dma_platform::DmaDevice;
use drivers::block::in_flight::{RequestQueue, run_window};

const QUEUE: u16 = 0;
/// Requests kept in flight at once.
pub const QUEUE_DEPTH: usize = 8;
/// Each request takes three descriptors; a virtqueue's size is a power of two.
const QUEUE_SIZE: usize = (3 * QUEUE_DEPTH).next_power_of_two();
/// virtio 1.2, 5.2.3 "Feature bits".
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// virtio 1.2, 5.2.6: request types.
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// The unit of the request header's sector, and of the `capacity` field.
const SECTOR_SIZE: usize = 512;
/// virtio 1.2, 5.2.4 "Device configuration layout": `capacity` (le64, read as two le32, as
/// MMIO config space must be) and `blk_size` (le32).
const CONFIG_CAPACITY: usize = 0;
const CONFIG_BLK_SIZE: usize = 20;
/// The header, then the status byte, in an area of their own for each request in flight.
const HEADER_BYTES: usize = 16;
const AREA_BYTES: usize = 2 * HEADER_BYTES;
/// How long one request may take. QEMU answers in microseconds; a real disk within seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A virtio-blk disk whose DMA goes through slot `SLOT`.
pub struct Disk<const SLOT: usize, T: Transport> {
    queue: VirtQueue<VirtioHal<SLOT>, QUEUE_SIZE>,
    device: Device<SLOT, T>,
    /// For each request in flight, its header and, after it, its status: coherent memory the
    /// device sees.
    areas: Carved,
    block_size: usize,
    blocks: u64,
    read_only: bool,
    flush_supported: bool,
}

impl<const SLOT: usize, T: Transport> Disk<SLOT, T> {
    /// Starts the disk on `transport`, named `name` in messages.
    pub fn start(
        transport: T,
        dma: &'static DmaDevice,
        name: &'static str,
        interrupt: Option<Source>,
    ) -> Result<Self, StartError> {
        let lease = Lease::take(dma, queue_memory(&[QUEUE_SIZE]) + QUEUE_DEPTH * AREA_BYTES)?;
        let mut device = Device::new(transport, lease, name, interrupt);
        let features = device.negotiate(VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH)?;
        let transport = &device.transport;
        let sectors = transport.read_consistent(|| {
            let low: u32 = transport.read_config_space(CONFIG_CAPACITY)?;
            let high: u32 = transport.read_config_space(CONFIG_CAPACITY + 4)?;
            Ok(u64::from(high) << 32 | u64::from(low))
        });
        let sectors = sectors.map_err(StartError::Config)?;
        let block_size = match features & VIRTIO_BLK_F_BLK_SIZE {
            0 => SECTOR_SIZE as u32,
            _ => transport.read_config_space::<u32>(CONFIG_BLK_SIZE).map_err(StartError::Config)?,
        };
        if !block_size.is_power_of_two() || !(SECTOR_SIZE as u32..=64 << 10).contains(&block_size) {
            return Err(StartError::BadBlockSize(block_size));
        }
        let block_size = block_size as usize;
        let queue = device.queue(QUEUE)?;
        let areas = device.lease().carve(QUEUE_DEPTH * AREA_BYTES, HEADER_BYTES)?;
        device.finish();
        Ok(Self {
            queue,
            device,
            areas,
            block_size,
            blocks: sectors / (block_size / SECTOR_SIZE) as u64,
            read_only: features & VIRTIO_BLK_F_RO != 0,
            flush_supported: features & VIRTIO_BLK_F_FLUSH != 0,
        })
    }

    /// Makes completed writes durable. A device that does not offer `VIRTIO_BLK_F_FLUSH` keeps
    /// no volatile write cache (Linux's virtio_blk assumes the same): there is nothing to do.
    pub fn flush(&mut self) -> Result<(), VirtioError> {
        if !self.flush_supported {
            return Ok(());
        }
        // SAFETY: nothing is in flight between batches (`BlockDevice::run` returns once none
        // is), so area 0 is free.
        let (header, status) = unsafe { self.request_area(0, VIRTIO_BLK_T_FLUSH, 0) };
        self.device.run(&mut self.queue, QUEUE, &[header], &mut [&mut *status], "flush", REQUEST_TIMEOUT)?;
        check_status("flush", status[0])
    }

    /// Submits a read and returns at once, for a test that watches the device while it works
    /// (the IOMMU isolation test); [`Self::peek_used`] tells when it completed. `_request` and
    /// `response` are `virtio-drivers`' types for the header and status: its header cannot be
    /// filled from outside that crate, so the disk's own header is used, and the status is
    /// copied into `response` on completion.
    ///
    /// # Safety
    ///
    /// `buffer` must stay valid and untouched, and the disk be given no other request, until
    /// [`Self::complete_read_blocks`] returned.
    pub unsafe fn read_blocks_nb(
        &mut self,
        block: u64,
        _request: &mut BlkReq,
        buffer: &mut [u8],
        _response: &mut BlkResp,
    ) -> Result<u16, VirtioError> {
        self.check(block, buffer.len())?;
        // SAFETY: the caller gives the disk no other request, so area 0 is free, and keeps
        // `buffer` until the completion.
        unsafe {
            let (header, status) = self.request_area(0, VIRTIO_BLK_T_IN, block);
            self.device.submit(&mut self.queue, QUEUE, &[header], &mut [buffer, status])
        }
    }

    /// Completes the read [`Self::read_blocks_nb`] submitted as `token`.
    ///
    /// # Safety
    ///
    /// `buffer` must be the one submitted with `token`, and the device must have completed it.
    pub unsafe fn complete_read_blocks(
        &mut self,
        token: u16,
        _request: &BlkReq,
        buffer: &mut [u8],
        response: &mut BlkResp,
    ) -> Result<(), VirtioError> {
        // SAFETY: the request area and `buffer` are what was submitted with `token`.
        let status = unsafe {
            let (header, status) = self.request_area_as_submitted(0);
            self.device.complete(&mut self.queue, token, &[header], &mut [buffer, &mut *status])?;
            status[0]
        };
        response.as_mut_bytes()[0] = status;
        check_status("read", status)
    }

    /// The token of the next completed request, if the device completed one.
    pub fn peek_used(&mut self) -> Option<u16> {
        self.queue.peek_used()
    }

    fn check(&self, block: u64, bytes: usize) -> Result<(), VirtioError> {
        if bytes == 0 || !bytes.is_multiple_of(self.block_size) {
            return Err(VirtioError::NotWholeBlocks { bytes, block_size: self.block_size });
        }
        let blocks = (bytes / self.block_size) as u64;
        match block.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(VirtioError::BeyondEnd { block, blocks, capacity: self.blocks }),
        }
    }

    /// Writes the header of a request of `kind` at `block` into area `area`, marks its status
    /// unwritten, and returns both as the buffers to submit.
    ///
    /// # Safety
    ///
    /// No request using `area` may be in flight: the device reads its header and writes its
    /// status.
    unsafe fn request_area<'r>(&mut self, area: usize, kind: u32, block: u64) -> (&'r [u8], &'r mut [u8]) {
        let sector = block * (self.block_size / SECTOR_SIZE) as u64;
        // SAFETY: as the caller promises.
        let (header, status) = unsafe { self.request_area_as_submitted(area) };
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[4..8].fill(0);
        header[8..].copy_from_slice(&sector.to_le_bytes());
        status[0] = u8::MAX;
        (header, status)
    }

    /// The header and status buffers of area `area` (< `QUEUE_DEPTH`), as the last request
    /// in it left them.
    ///
    /// # Safety
    ///
    /// The caller must not write them while a request using them is in flight.
    unsafe fn request_area_as_submitted<'r>(&mut self, area: usize) -> (&'r mut [u8], &'r mut [u8]) {
        assert!(area < QUEUE_DEPTH, "request area {area} of {QUEUE_DEPTH}");
        // SAFETY: 17 bytes of the areas carved from the disk's reservation for it alone;
        // coherent memory the kernel maps for as long as the disk exists.
        let area = unsafe {
            let start = self.areas.virt.as_mut_ptr::<u8>().add(area * AREA_BYTES);
            core::slice::from_raw_parts_mut(start, HEADER_BYTES + 1)
        };
        area.split_at_mut(HEADER_BYTES)
    }
}

fn check_status(request: &'static str, status: u8) -> Result<(), VirtioError> {
    // virtio 1.2, 5.2.6: VIRTIO_BLK_S_OK.
    match status {
        0 => Ok(()),
        status => Err(VirtioError::Status { request, status }),
    }
}

/// virtio-blk: requests as big as one mapping of the DMA route takes, several in flight.
impl<const SLOT: usize, T: Transport> BlockDevice for Disk<SLOT, T> {
    fn describe(&self) -> String {
        self.device.name.into()
    }

    fn interrupts_taken(&self) -> Option<u64> {
        self.device.interrupts_taken()
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn max_transfer(&self) -> Option<usize> {
        match self.device.dma().max_mapping_size() {
            Ok(limit) => limit.map(|limit| limit / self.block_size * self.block_size),
            Err(error) => {
                log::warn!("{}: no mapping limit known ({error}); each request maps whole", self.describe());
                None
            }
        }
    }

    fn max_transfer_in_place(&self) -> Option<usize> {
        // Nothing but the bounce pool limits one request of this driver.
        None
    }

    fn dma_device(&self) -> &'static DmaDevice {
        self.device.dma()
    }

    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }

    fn run(&mut self, requests: &mut [Request<'_>]) -> Result<usize, BlockError> {
        let count = requests.len();
        let mut batch = Batch { disk: self, requests, in_flight: Vec::with_capacity(QUEUE_DEPTH) };
        run_window(&mut batch, count, QUEUE_DEPTH)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(Disk::flush(self)?)
    }
}

/// A request in flight: its chain's token, which request of the batch it is, and its area.
struct InFlight {
    token: u16,
    request: usize,
    area: usize,
}

/// The requests of one [`BlockDevice::run`], on the disk's virtqueue.
struct Batch<'d, 'r, 'b, const SLOT: usize, T: Transport> {
    disk: &'d mut Disk<SLOT, T>,
    requests: &'r mut [Request<'b>],
    in_flight: Vec<InFlight>,
}

impl<const SLOT: usize, T: Transport> Batch<'_, '_, '_, SLOT, T> {
    /// A header and status area no request in flight holds.
    fn free_area(&self) -> usize {
        let free = (0..QUEUE_DEPTH).find(|area| self.in_flight.iter().all(|held| held.area != *area));
        free.expect("run_window keeps at most QUEUE_DEPTH requests in flight")
    }
}

impl<const SLOT: usize, T: Transport> RequestQueue for Batch<'_, '_, '_, SLOT, T> {
    type Error = BlockError;

    fn submit(&mut self, index: usize) -> Result<(), BlockError> {
        let area = self.free_area();
        let disk = &mut *self.disk;
        let request = &mut self.requests[index];
        disk.check(request.block(), request.buffer().len())?;
        if request.is_write() && disk.read_only {
            return Err(VirtioError::ReadOnly.into());
        }
        let token = match request {
            Request::Read { block, buffer } => {
                // SAFETY: no request in flight uses `area`; the buffer is borrowed by the batch,
                // which touches it no more until its completion or the device's stop
                // (`run_window` returns only once nothing is in flight).
                unsafe {
                    let (header, status) = disk.request_area(area, VIRTIO_BLK_T_IN, *block);
                    disk.device.submit(&mut disk.queue, QUEUE, &[header], &mut [&mut **buffer, status])?
                }
            }
            Request::Write { block, buffer } => {
                // SAFETY: as for a read.
                unsafe {
                    let (header, status) = disk.request_area(area, VIRTIO_BLK_T_OUT, *block);
                    disk.device.submit(&mut disk.queue, QUEUE, &[header, buffer], &mut [status])?
                }
            }
        };
        self.in_flight.push(InFlight { token, request: index, area });
        Ok(())
    }

    fn complete_next(&mut self) -> Result<Result<(), BlockError>, BlockError> {
        let disk = &mut *self.disk;
        let outstanding: Vec<u16> = self.in_flight.iter().map(|held| held.token).collect();
        let deadline = arch::timer::uptime() + REQUEST_TIMEOUT;
        let Some(token) = disk.device.wait_for_any(&mut disk.queue, &outstanding, deadline)? else {
            let oldest = self.in_flight.first().map(|held| &self.requests[held.request]);
            let request = if oldest.is_some_and(Request::is_write) { "write" } else { "read" };
            self.in_flight.clear();
            return Err(disk.device.stop(VirtioError::Timeout { request, after: REQUEST_TIMEOUT }).into());
        };
        let position = self.in_flight.iter().position(|held| held.token == token);
        // In submission order, so that the first one left is the oldest (for a timeout's message).
        let held = self.in_flight.remove(position.expect("wait_for_any returns an outstanding token"));
        // SAFETY: the area and buffer are those submitted with `token`, which the device completed.
        let completed = unsafe {
            let (header, status) = disk.request_area_as_submitted(held.area);
            match &mut self.requests[held.request] {
                Request::Read { buffer, .. } => {
                    disk.device.complete(&mut disk.queue, token, &[header], &mut [&mut **buffer, &mut *status])
                }
                Request::Write { buffer, .. } => {
                    disk.device.complete(&mut disk.queue, token, &[header, buffer], &mut [&mut *status])
                }
            }
            .map(|_| status[0])
        };
        match (completed, disk.device.check_in_service()) {
            // Popping the request failed and stopped the device: nothing is in flight any more.
            (Err(error), Err(_)) => {
                self.in_flight.clear();
                Err(error.into())
            }
            (completed, _) => {
                let kind = if self.requests[held.request].is_write() { "write" } else { "read" };
                Ok(completed.and_then(|status| check_status(kind, status)).map_err(BlockError::from))
            }
        }
    }
}
