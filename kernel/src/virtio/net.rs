//! virtio-net: Ethernet frames out and in (virtio 1.2, 5.1 "Network Device").
//!
//! Every frame travels behind a virtio-net header: 12 bytes on a virtio 1.x device, 10 on a
//! legacy one that does not merge receive buffers (5.1.6). This driver asks for no offloads,
//! so the header it sends is zero and the one it receives is skipped.
//!
//! - **Transmitting:** the frame is copied behind a header into a buffer of its own, mapped,
//!   and waited for. A device whose backend never takes it (a QEMU hub port with nothing else
//!   on the hub) is stopped after the timeout rather than waited for forever.
//! - **Receiving:** one buffer of the driver's stays posted on the receive queue until a frame
//!   arrives. A receive that reaches its deadline returns with nothing, and the buffer stays
//!   posted for the next: the device may hold it as long as it likes, since the kernel uses
//!   that memory for nothing else.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use core::time::Duration;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

use crate::interrupts::Source;

use super::device::{Device, VIRTIO_F_VERSION_1};
use super::hal::{Lease, VirtioHal, queue_memory};
use super::{StartError, VirtioError};
use crate::dma_platform::DmaDevice;

/// virtio 1.2, 5.1.2 "Virtqueues": receiveq1, then transmitq1.
const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;
/// One buffer in flight on each queue.
const QUEUE_SIZE: usize = 2;
/// virtio 1.2, 5.1.3 "Feature bits": the device has a hardware address, in `mac`.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// virtio 1.2, 5.1.4 "Device configuration layout": `mac` first.
const CONFIG_MAC: usize = 0;
const MODERN_HEADER: usize = 12;
const LEGACY_HEADER: usize = 10;
/// A header and the largest untagged Ethernet frame (1514 bytes), rounded up.
const RECEIVE_BUFFER: usize = 2048;
/// How long the device may take to take a frame. QEMU's user network takes it at once.
const TRANSMIT_TIMEOUT: Duration = Duration::from_secs(1);

/// What any network device offers, whatever its slot and transport.
pub trait NetworkDevice {
    /// The device's stable name and node, for messages.
    fn describe(&self) -> String;
    fn mac_address(&self) -> [u8; 6];
    /// Sends one Ethernet frame; returns once the device has taken it.
    fn send(&mut self, frame: &[u8]) -> Result<(), VirtioError>;
    /// Copies the next frame received before `deadline` (uptime) into `buffer` and returns its
    /// length; `Ok(None)` if none came.
    fn receive(&mut self, buffer: &mut [u8], deadline: Duration) -> Result<Option<usize>, VirtioError>;
    /// The DMA handle every transfer of the device goes through.
    fn dma_device(&self) -> &'static DmaDevice;
}

/// A virtio-net device whose DMA goes through slot `SLOT`.
pub struct Network<const SLOT: usize, T: Transport> {
    receive_queue: VirtQueue<VirtioHal<SLOT>, QUEUE_SIZE>,
    transmit_queue: VirtQueue<VirtioHal<SLOT>, QUEUE_SIZE>,
    /// Declared after the queues and before the receive buffer: dropping it resets the device,
    /// which must happen before the buffer is freed.
    device: Device<SLOT, T>,
    receive_buffer: Box<[u8]>,
    /// The receive buffer's token while it is posted.
    posted: Option<u16>,
    mac: [u8; 6],
    header: usize,
}

impl<const SLOT: usize, T: Transport> Network<SLOT, T> {
    pub fn start(
        transport: T,
        dma: &'static DmaDevice,
        name: &'static str,
        interrupt: Option<Source>,
    ) -> Result<Self, StartError> {
        let lease = Lease::take(dma, queue_memory(&[QUEUE_SIZE, QUEUE_SIZE]))?;
        let mut device = Device::new(transport, lease, name, interrupt);
        let features = device.negotiate(VIRTIO_NET_F_MAC)?;
        if features & VIRTIO_NET_F_MAC == 0 {
            return Err(StartError::MissingFeature("VIRTIO_NET_F_MAC (a hardware address)"));
        }
        let mut mac = [0u8; 6];
        for (index, byte) in mac.iter_mut().enumerate() {
            *byte = device.transport.read_config_space(CONFIG_MAC + index).map_err(StartError::Config)?;
        }
        let receive_queue = device.queue(RECEIVE_QUEUE)?;
        let transmit_queue = device.queue(TRANSMIT_QUEUE)?;
        device.finish();
        let header = if features & VIRTIO_F_VERSION_1 != 0 { MODERN_HEADER } else { LEGACY_HEADER };
        let receive_buffer = vec![0u8; RECEIVE_BUFFER].into_boxed_slice();
        Ok(Self { receive_queue, transmit_queue, device, receive_buffer, posted: None, mac, header })
    }
}

impl<const SLOT: usize, T: Transport> NetworkDevice for Network<SLOT, T> {
    fn describe(&self) -> String {
        self.device.name.into()
    }

    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), VirtioError> {
        let mut packet = vec![0u8; self.header + frame.len()];
        packet[self.header..].copy_from_slice(frame);
        let queue = &mut self.transmit_queue;
        self.device.run(queue, TRANSMIT_QUEUE, &[&packet], &mut [], "transmission", TRANSMIT_TIMEOUT)?;
        Ok(())
    }

    fn receive(&mut self, buffer: &mut [u8], deadline: Duration) -> Result<Option<usize>, VirtioError> {
        // A device stopped (reset) since the buffer was posted has let go of it: its token
        // means nothing any more.
        self.device.check_in_service()?;
        let token = match self.posted {
            Some(token) => token,
            None => {
                // SAFETY: the receive buffer is the driver's and is touched only once popped;
                // it outlives the device's use of it (see the field order).
                let token = unsafe {
                    let outputs: &mut [&mut [u8]] = &mut [&mut self.receive_buffer[..]];
                    self.device.submit(&mut self.receive_queue, RECEIVE_QUEUE, &[], outputs)?
                };
                self.posted = Some(token);
                token
            }
        };
        if !self.device.wait(&mut self.receive_queue, token, deadline)? {
            return Ok(None);
        }
        self.posted = None;
        // SAFETY: the buffer posted with `token`, which the device has completed.
        let written = unsafe {
            let outputs: &mut [&mut [u8]] = &mut [&mut self.receive_buffer[..]];
            self.device.complete(&mut self.receive_queue, token, &[], outputs)?
        };
        let frame = self.receive_buffer.get(self.header..(written as usize).min(RECEIVE_BUFFER)).unwrap_or(&[]);
        let too_large = VirtioError::FrameTooLarge { frame: frame.len(), buffer: buffer.len() };
        buffer.get_mut(..frame.len()).ok_or(too_large)?.copy_from_slice(frame);
        Ok(Some(frame.len()))
    }

    fn dma_device(&self) -> &'static DmaDevice {
        self.device.dma()
    }
}
