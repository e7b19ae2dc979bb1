//! Why a virtio device did not start, and why a request failed, in words.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use virtio_drivers::transport::DeviceType;

use dma::DmaApiError;

/// Why a request failed. After [`VirtioError::Map`], [`VirtioError::NotWholeBlocks`],
/// [`VirtioError::BeyondEnd`] and [`VirtioError::ReadOnly`] nothing reached the device.
#[derive(Debug)]
pub enum VirtioError {
    /// The DMA layer refused one of the request's buffers.
    Map {
        bytes: usize,
        error: DmaApiError,
    },
    /// The device completed the request, but ending a mapping failed.
    Unmap(DmaApiError),
    /// The device did not complete the request in time.
    Timeout {
        request: &'static str,
        after: Duration,
    },
    /// The device completed a descriptor chain other than those outstanding.
    WrongCompletion {
        outstanding: Vec<u16>,
        got: u16,
    },
    /// The virtqueue refused the request, or popping it failed.
    Queue(virtio_drivers::Error),
    /// The device answered with a status other than OK (virtio 1.2, 5.2.6).
    Status {
        request: &'static str,
        status: u8,
    },
    NotWholeBlocks {
        bytes: usize,
        block_size: usize,
    },
    BeyondEnd {
        block: u64,
        blocks: u64,
        capacity: u64,
    },
    /// A write to a disk that offers `VIRTIO_BLK_F_RO`.
    ReadOnly,
    /// A received frame larger than the buffer it was to be copied into.
    FrameTooLarge {
        frame: usize,
        buffer: usize,
    },
    /// `cause` made the driver reset the device, which is now out of service.
    Stopped {
        cause: Box<VirtioError>,
        reset_confirmed: bool,
    },
    /// An earlier failure took the device out of service.
    OutOfService {
        reason: String,
    },
}

impl core::error::Error for VirtioError {
    /// What lies behind this error: the DMA layer's refusal (so that a caller can tell a
    /// refusal for room, which a shorter request may still find, from other failures), or the
    /// failure that stopped the device.
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            VirtioError::Map { error, .. } | VirtioError::Unmap(error) => Some(error),
            VirtioError::Stopped { cause, .. } => Some(cause.as_ref()),
            _ => None,
        }
    }
}

impl From<VirtioError> for crate::block::BlockError {
    fn from(error: VirtioError) -> Self {
        crate::block::BlockError::device(error)
    }
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::Map { bytes, error } => {
                write!(f, "cannot map a {bytes}-byte buffer for the device, so nothing was submitted: {error}")
            }
            VirtioError::Unmap(error) => {
                write!(f, "the device completed the request, but ending its mapping failed: {error}")
            }
            VirtioError::Timeout { request, after } => {
                write!(f, "the device did not complete the {request} within {} ms", after.as_millis())
            }
            VirtioError::WrongCompletion { outstanding, got } => {
                write!(
                    f,
                    "the device completed descriptor chain {got} while only chains {outstanding:?} were outstanding"
                )
            }
            VirtioError::Queue(error) => write!(f, "the virtqueue refused the request: {error}"),
            VirtioError::Status { request, status: 1 } => {
                write!(f, "the device reports an I/O error for the {request} (VIRTIO_BLK_S_IOERR)")
            }
            VirtioError::Status { request, status: 2 } => {
                write!(f, "the device does not support the {request} (VIRTIO_BLK_S_UNSUPP)")
            }
            VirtioError::Status { request, status } => {
                write!(f, "the device answered the {request} with unknown status {status}")
            }
            VirtioError::NotWholeBlocks { bytes, block_size } => {
                write!(f, "{bytes} bytes are not a whole, non-zero number of the disk's {block_size}-byte blocks")
            }
            VirtioError::BeyondEnd { block, blocks, capacity } => {
                write!(f, "{blocks} blocks from block {block} reach beyond the disk's {capacity} blocks")
            }
            VirtioError::ReadOnly => write!(f, "the disk is read-only (it offers VIRTIO_BLK_F_RO)"),
            VirtioError::FrameTooLarge { frame, buffer } => {
                write!(f, "a received {frame}-byte frame does not fit the {buffer}-byte buffer it was asked into")
            }
            VirtioError::Stopped { cause, reset_confirmed: true } => {
                write!(f, "{cause}; the device was reset, which made it let go of every buffer, and is out of service")
            }
            VirtioError::Stopped { cause, reset_confirmed: false } => write!(
                f,
                "{cause}; the device did not confirm its reset, so what it was given stays withheld, and it is out of service"
            ),
            VirtioError::OutOfService { reason } => write!(f, "the device is out of service: {reason}"),
        }
    }
}

/// Why a device was not started. The device was reset, and its queue memory freed.
#[derive(Debug)]
pub enum StartError {
    /// No driver here serves this device type.
    NoDriver(DeviceType),
    /// Every slot for this kind of device is taken.
    NoFreeSlot { kind: &'static str, slots: usize },
    /// The slot's Hal state is held: the tables and the Hal disagree (a bug).
    SlotTaken { slot: usize },
    /// The coherent memory for the queues could not be reserved.
    Reserve { bytes: usize, error: DmaApiError },
    /// The queues would leave the pool less than a page for transfers, in one run.
    NoRoomLeft { pool: &'static str, size: u64, bytes: usize, left: usize },
    /// The reservation did not hold what was asked of it.
    ReservationTooSmall { asked: usize, left: usize },
    /// The status did not read 0 after the driver reset the device.
    ResetNotConfirmed,
    /// The device cleared FEATURES_OK: it does not accept `accepted`.
    FeaturesRefused { offered: u64, accepted: u64 },
    /// The device lacks a feature this driver needs.
    MissingFeature(&'static str),
    /// The configuration space could not be read.
    Config(virtio_drivers::Error),
    /// The block size the device states is not one a disk can have.
    BadBlockSize(u32),
    /// A virtqueue could not be set up.
    Queue { queue: u16, error: virtio_drivers::Error },
    /// The transport could not be opened.
    Transport(&'static str),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoDriver(kind) => write!(f, "no driver for virtio device type {kind:?}"),
            StartError::NoFreeSlot { kind, slots } => write!(f, "all {slots} slots for {kind} devices are taken"),
            StartError::SlotTaken { slot } => write!(f, "virtio slot {slot} is already held by another device"),
            StartError::Reserve { bytes, error } => {
                write!(f, "cannot reserve {} KiB of coherent memory for its queues: {error}", bytes.div_ceil(1024))
            }
            StartError::NoRoomLeft { pool, size, bytes, left } => write!(
                f,
                "its queues would take {} KiB of the {} KiB pool '{pool}' and leave {left} bytes in one run, less than the page a transfer needs: it could not move a byte",
                bytes.div_ceil(1024),
                size >> 10
            ),
            StartError::ReservationTooSmall { asked, left } => {
                write!(f, "{asked} bytes of queue memory were asked for, {left} were left in its reservation")
            }
            StartError::ResetNotConfirmed => write!(f, "its status did not read 0 after a reset"),
            StartError::FeaturesRefused { offered, accepted } => {
                write!(f, "it cleared FEATURES_OK: it does not accept features {accepted:#x} (it offered {offered:#x})")
            }
            StartError::MissingFeature(feature) => write!(f, "it does not offer {feature}"),
            StartError::Config(error) => write!(f, "cannot read its configuration space: {error}"),
            StartError::BadBlockSize(size) => {
                write!(f, "it states a block size of {size} bytes, not a power of two from 512 bytes to 64 KiB")
            }
            StartError::Queue { queue, error } => write!(f, "cannot set up virtqueue {queue}: {error}"),
            StartError::Transport(problem) => write!(f, "{problem}"),
        }
    }
}
