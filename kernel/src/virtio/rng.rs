//! virtio-rng: an entropy source. The driver hands the device a buffer, the device fills some
//! or all of it with random bytes (virtio 1.2, 5.4 "Entropy Device"); one queue, no
//! configuration.

use alloc::string::String;
use core::time::Duration;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

use crate::interrupts::Source;

use super::device::Device;
use super::hal::{Lease, VirtioHal, queue_memory};
use super::{StartError, VirtioError};
use crate::dma_platform::DmaDevice;

const QUEUE: u16 = 0;
/// One request at a time, of one buffer.
const QUEUE_SIZE: usize = 2;
/// How long the device may take to fill a buffer. QEMU's backend reads the host's
/// `/dev/urandom`, within microseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What any entropy device offers, whatever its slot and transport.
pub trait EntropySource {
    /// The device's stable name and node, for messages.
    fn describe(&self) -> String;
    /// Fills the start of `buffer` with random bytes; returns how many.
    fn request_entropy(&mut self, buffer: &mut [u8]) -> Result<usize, VirtioError>;
    /// The DMA handle every transfer of the device goes through.
    fn dma_device(&self) -> &'static DmaDevice;
}

/// A virtio-rng device whose DMA goes through slot `SLOT`.
pub struct Entropy<const SLOT: usize, T: Transport> {
    queue: VirtQueue<VirtioHal<SLOT>, QUEUE_SIZE>,
    device: Device<SLOT, T>,
}

impl<const SLOT: usize, T: Transport> Entropy<SLOT, T> {
    pub fn start(
        transport: T,
        dma: &'static DmaDevice,
        name: &'static str,
        interrupt: Option<Source>,
    ) -> Result<Self, StartError> {
        let lease = Lease::take(dma, queue_memory(&[QUEUE_SIZE]))?;
        let mut device = Device::new(transport, lease, name, interrupt);
        device.negotiate(0)?;
        let queue = device.queue(QUEUE)?;
        device.finish();
        Ok(Self { queue, device })
    }
}

impl<const SLOT: usize, T: Transport> EntropySource for Entropy<SLOT, T> {
    fn describe(&self) -> String {
        self.device.name.into()
    }

    fn request_entropy(&mut self, buffer: &mut [u8]) -> Result<usize, VirtioError> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let length = buffer.len();
        let written =
            self.device.run(&mut self.queue, QUEUE, &[], &mut [buffer], "entropy request", REQUEST_TIMEOUT)?;
        // A device could claim more than it was given.
        Ok((written as usize).min(length))
    }

    fn dma_device(&self) -> &'static DmaDevice {
        self.device.dma()
    }
}
