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

use alloc::string::String;
use core::time::Duration;

use virtio_drivers::device::blk::{BlkReq, BlkResp};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use zerocopy::IntoBytes;

use super::device::Device;
use super::hal::Carved;
use super::hal::{Lease, VirtioHal, queue_memory};
use super::{StartError, VirtioError};
use crate::block::{BlockDevice, BlockError};
use crate::dma_platform::DmaDevice;

const QUEUE: u16 = 0;
/// One request is in flight at a time, and takes three descriptors.
const QUEUE_SIZE: usize = 4;
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
/// The header, then the status byte.
const HEADER_BYTES: usize = 16;
/// How long one request may take. QEMU answers in microseconds; a real disk within seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A virtio-blk disk whose DMA goes through slot `SLOT`.
pub struct Disk<const SLOT: usize, T: Transport> {
    queue: VirtQueue<VirtioHal<SLOT>, QUEUE_SIZE>,
    device: Device<SLOT, T>,
    /// The request header and, after it, the status: coherent memory the device sees.
    request: Carved,
    block_size: usize,
    blocks: u64,
    read_only: bool,
    flush_supported: bool,
}

impl<const SLOT: usize, T: Transport> Disk<SLOT, T> {
    /// Starts the disk on `transport`, named `name` in messages.
    pub fn start(transport: T, dma: &'static DmaDevice, name: &'static str) -> Result<Self, StartError> {
        let lease = Lease::take(dma, queue_memory(&[QUEUE_SIZE]) + HEADER_BYTES + 1)?;
        let mut device = Device::new(transport, lease, name);
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
        let request = device.lease().carve(HEADER_BYTES + 1, HEADER_BYTES)?;
        device.finish();
        Ok(Self {
            queue,
            device,
            request,
            block_size,
            blocks: sectors / (block_size / SECTOR_SIZE) as u64,
            read_only: features & VIRTIO_BLK_F_RO != 0,
            flush_supported: features & VIRTIO_BLK_F_FLUSH != 0,
        })
    }

    /// Reads `buffer.len()` bytes, whole blocks, from `block` on, in one request.
    pub fn read_blocks(&mut self, block: u64, buffer: &mut [u8]) -> Result<(), VirtioError> {
        self.check(block, buffer.len())?;
        // SAFETY: one request at a time: the last one was completed or the device stopped.
        let (header, status) = unsafe { self.request_area(VIRTIO_BLK_T_IN, block) };
        self.device.run(&mut self.queue, QUEUE, &[header], &mut [buffer, &mut *status], "read", REQUEST_TIMEOUT)?;
        check_status("read", status[0])
    }

    /// Writes `buffer`, whole blocks, from `block` on, in one request.
    pub fn write_blocks(&mut self, block: u64, buffer: &[u8]) -> Result<(), VirtioError> {
        self.check(block, buffer.len())?;
        if self.read_only {
            return Err(VirtioError::ReadOnly);
        }
        // SAFETY: as in `read_blocks`.
        let (header, status) = unsafe { self.request_area(VIRTIO_BLK_T_OUT, block) };
        self.device.run(&mut self.queue, QUEUE, &[header, buffer], &mut [&mut *status], "write", REQUEST_TIMEOUT)?;
        check_status("write", status[0])
    }

    /// Makes completed writes durable. A device that does not offer `VIRTIO_BLK_F_FLUSH` keeps
    /// no volatile write cache (Linux's virtio_blk assumes the same): there is nothing to do.
    pub fn flush(&mut self) -> Result<(), VirtioError> {
        if !self.flush_supported {
            return Ok(());
        }
        // SAFETY: as in `read_blocks`.
        let (header, status) = unsafe { self.request_area(VIRTIO_BLK_T_FLUSH, 0) };
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
        // SAFETY: as in `read_blocks`; the caller keeps `buffer` until the completion.
        unsafe {
            let (header, status) = self.request_area(VIRTIO_BLK_T_IN, block);
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
            let (header, status) = self.request_area_as_submitted();
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

    /// Writes the header of a request of `kind` at `block`, marks the status unwritten, and
    /// returns both as the buffers to submit.
    ///
    /// # Safety
    ///
    /// No request may be in flight: the device reads the header and writes the status of one.
    unsafe fn request_area<'r>(&mut self, kind: u32, block: u64) -> (&'r [u8], &'r mut [u8]) {
        let sector = block * (self.block_size / SECTOR_SIZE) as u64;
        // SAFETY: as the caller promises.
        let (header, status) = unsafe { self.request_area_as_submitted() };
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[4..8].fill(0);
        header[8..].copy_from_slice(&sector.to_le_bytes());
        status[0] = u8::MAX;
        (header, status)
    }

    /// The header and status buffers, as the last request left them.
    ///
    /// # Safety
    ///
    /// The caller must not write them while a request is in flight.
    unsafe fn request_area_as_submitted<'r>(&mut self) -> (&'r mut [u8], &'r mut [u8]) {
        // SAFETY: 17 bytes carved from the disk's reservation for it alone; coherent memory
        // the kernel maps for as long as the disk exists.
        let area = unsafe { core::slice::from_raw_parts_mut(self.request.virt.as_mut_ptr::<u8>(), HEADER_BYTES + 1) };
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

/// virtio-blk: one request per call, as big as one mapping of the DMA route takes.
impl<const SLOT: usize, T: Transport> BlockDevice for Disk<SLOT, T> {
    fn describe(&self) -> String {
        self.device.name.into()
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

    fn read_request(&mut self, block: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        Ok(self.read_blocks(block, buffer)?)
    }

    fn write_request(&mut self, block: u64, buffer: &[u8]) -> Result<(), BlockError> {
        Ok(self.write_blocks(block, buffer)?)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(Disk::flush(self)?)
    }
}
