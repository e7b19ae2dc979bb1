//! What every virtio driver here does the same way: bring the device up, run a request with a
//! deadline, and take the device out of service when it fails.
//!
//! A request is prepared, submitted, waited for and completed:
//!
//! ```text
//!  prepare   map every buffer (hal::Lease::prepare)   refused ─▶ error; the device saw nothing
//!  submit    VirtQueue::add, notify the queue
//!  wait      the used ring, until the deadline         late ─────▶ stop the device (below)
//!            (asleep between the device's interrupts, or polled)
//!  complete  VirtQueue::pop_used; each unshare ends a mapping, copying a bounce back
//! ```
//!
//! A device that misses the deadline still owns the buffers it was given and may write them
//! at any moment: unmapping them then would hand their memory (a bounce slot, a page the IOMMU
//! mapped) to its next user while the device can still write it. So the driver first resets the
//! device, by writing 0 to its status (virtio 1.2, 2.4 "Device Reset"), and waits for the
//! status to read 0: from then on the device uses none of its queues. Only then are the
//! mappings ended. The device stays out of service and later requests are refused with the
//! reason, as the NVMe driver does with a controller it had to disable. A device that never
//! confirms the reset is contained as far as the DMA route allows (`Lease::contain_all`).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::time::Duration;

use virtio_drivers::PAGE_SIZE;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::hal::{Lease, VirtioHal};
use super::{StartError, VirtioError};
use crate::dma_platform::DmaDevice;
use crate::interrupts::Line;
use crate::interrupts::Source;

/// virtio 1.2, 6 "Reserved Feature Bits": the device is virtio 1.x, and a driver must accept
/// the bit when offered.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// How long a device may take to confirm a reset. QEMU resets within the register write.
const RESET_TIMEOUT: Duration = Duration::from_secs(1);

/// A virtio device under a driver: its transport, its slot, whether it is still in service.
pub struct Device<const SLOT: usize, T: Transport> {
    pub transport: T,
    /// The stable name the device table shows, such as `virtio-blk0`.
    pub name: &'static str,
    lease: Lease<SLOT>,
    out_of_service: Option<String>,
    /// Its interrupt, when completions are waited for asleep; `None`: polled.
    line: Option<Line>,
}

impl<const SLOT: usize, T: Transport> Device<SLOT, T> {
    /// A device on `transport`, interrupting on `interrupt` unless drivers poll.
    pub fn new(transport: T, lease: Lease<SLOT>, name: &'static str, interrupt: Option<Source>) -> Self {
        let line = crate::interrupts::line_for(interrupt, name);
        Self { transport, name, lease, out_of_service: None, line }
    }

    /// How many interrupts the device has raised; `None` if its completions are polled.
    pub fn interrupts_taken(&self) -> Option<u64> {
        self.line.as_ref().map(Line::fired)
    }

    pub fn lease(&self) -> &Lease<SLOT> {
        &self.lease
    }

    pub fn dma(&self) -> &'static DmaDevice {
        self.lease.device()
    }

    /// The first steps of virtio 1.2, 3.1.1 "Driver Requirements: Device Initialization":
    /// reset, ACKNOWLEDGE, DRIVER, accept the features both sides know, FEATURES_OK, and check
    /// the device kept it. Returns the features accepted.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, StartError> {
        if !self.reset() {
            return Err(StartError::ResetNotConfirmed);
        }
        let introduced = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        self.transport.set_status(introduced);
        let offered = self.transport.read_device_features();
        let accepted = offered & (wanted | VIRTIO_F_VERSION_1);
        self.transport.write_driver_features(accepted);
        self.transport.set_status(introduced | DeviceStatus::FEATURES_OK);
        // A legacy device has no FEATURES_OK to keep (virtio 1.2, 3.1.2).
        let modern = accepted & VIRTIO_F_VERSION_1 != 0;
        if modern && !self.transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(StartError::FeaturesRefused { offered, accepted });
        }
        // The legacy MMIO transport places the rings by page number.
        self.transport.set_guest_page_size(PAGE_SIZE as u32);
        Ok(accepted)
    }

    /// Sets up virtqueue `index` of `SIZE` entries in the slot's reservation.
    pub fn queue<const SIZE: usize>(&mut self, index: u16) -> Result<VirtQueue<VirtioHal<SLOT>, SIZE>, StartError> {
        VirtQueue::new(&mut self.transport, index, false, false).map_err(|error| match error {
            virtio_drivers::Error::DmaError => self.lease.shortfall(),
            error => StartError::Queue { queue: index, error },
        })
    }

    /// The last step of initialization: DRIVER_OK, the device is live.
    pub fn finish(&mut self) {
        self.transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK,
        );
    }

    /// Refuses a request once the device is out of service.
    pub fn check_in_service(&self) -> Result<(), VirtioError> {
        match &self.out_of_service {
            Some(reason) => Err(VirtioError::OutOfService { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Runs one request on `queue` (virtqueue `index`): the device reads `inputs` and writes
    /// `outputs`. Returns how many bytes the device wrote. If the device does not complete it
    /// within `timeout`, the device is stopped and taken out of service.
    pub fn run<'a, const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        index: u16,
        inputs: &'a [&'a [u8]],
        outputs: &'a mut [&'a mut [u8]],
        request: &'static str,
        timeout: Duration,
    ) -> Result<u32, VirtioError> {
        // SAFETY: the buffers are borrowed for this whole call, which ends with the request
        // completed or the device stopped.
        let token = unsafe { self.submit(queue, index, inputs, &mut *outputs)? };
        if !self.wait(queue, token, arch::timer::uptime() + timeout)? {
            return Err(self.stop(VirtioError::Timeout { request, after: timeout }));
        }
        // SAFETY: the buffers submitted with `token`, which the device has completed.
        unsafe { self.complete(queue, token, inputs, outputs) }
    }

    /// Maps the request's buffers and adds them to `queue`; returns the token to wait for.
    ///
    /// # Safety
    ///
    /// The buffers must stay valid, and be neither read nor written, until [`Self::complete`]
    /// returned for the token, or the device was stopped.
    pub unsafe fn submit<'b, const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        index: u16,
        inputs: &[&'b [u8]],
        outputs: &mut [&'b mut [u8]],
    ) -> Result<u16, VirtioError> {
        self.check_in_service()?;
        self.lease.prepare(inputs, outputs)?;
        // SAFETY: the caller keeps the buffers as `add` requires until they are popped.
        match unsafe { queue.add(inputs, outputs) } {
            Ok(token) => {
                // A line still masked from an interrupt the driver never slept for (its
                // request was done by the time it looked) is rearmed before the device is told,
                // so that this request's completion interrupts.
                let Self { transport, line, .. } = self;
                if let Some(line) = line {
                    line.rearm(&mut || {
                        transport.ack_interrupt();
                    });
                }
                if queue.should_notify() {
                    self.transport.notify(index);
                }
                Ok(token)
            }
            Err(error) => {
                self.lease.release(inputs, outputs);
                Err(VirtioError::Queue(error))
            }
        }
    }

    /// Waits until the device completed `token` (`true`) or `deadline` passed (`false`). A
    /// completion of anything else stops the device.
    pub fn wait<const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        token: u16,
        deadline: Duration,
    ) -> Result<bool, VirtioError> {
        Ok(self.wait_for_any(queue, &[token], deadline)?.is_some())
    }

    /// Waits until the device completed one of the `outstanding` requests, and returns its
    /// token; `None` once `deadline` passed. A completion of anything else stops the device.
    pub fn wait_for_any<const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        outstanding: &[u16],
        deadline: Duration,
    ) -> Result<Option<u16>, VirtioError> {
        loop {
            match queue.peek_used() {
                Some(used) if outstanding.contains(&used) => return Ok(Some(used)),
                Some(got) => {
                    let outstanding = outstanding.to_vec();
                    return Err(self.stop(VirtioError::WrongCompletion { outstanding, got }));
                }
                None if arch::timer::uptime() > deadline => return Ok(None),
                None => self.sleep_until_used(queue, deadline),
            }
        }
    }

    /// Sleeps until the device's interrupt (its used-buffer notification, virtio 1.2, 2.7.10)
    /// or `deadline`; without an interrupt line, returns at once for the caller to poll again.
    fn sleep_until_used<const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        deadline: Duration,
    ) {
        let Self { transport, line, .. } = self;
        match line {
            // Reading the interrupt status acknowledges it, which lowers the line.
            Some(line) => {
                line.wait(
                    deadline,
                    || queue.can_pop(),
                    || {
                        transport.ack_interrupt();
                    },
                );
            }
            None => core::hint::spin_loop(),
        }
    }

    /// Pops the completed request `token`, which ends its mappings; returns the bytes written.
    ///
    /// # Safety
    ///
    /// The buffers must be those submitted with `token`, and the device must have completed it.
    pub unsafe fn complete<'a, const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<VirtioHal<SLOT>, SIZE>,
        token: u16,
        inputs: &'a [&'a [u8]],
        outputs: &'a mut [&'a mut [u8]],
    ) -> Result<u32, VirtioError> {
        // SAFETY: the caller's promise.
        let used = unsafe { queue.pop_used(token, inputs, outputs) };
        let written = used.map_err(|error| self.stop(VirtioError::Queue(error)))?;
        match self.lease.take_unmap_error() {
            Some(error) => Err(VirtioError::Unmap(error)),
            None => Ok(written),
        }
    }

    /// Resets the device after `cause`, ends (or withholds) what it was given, and takes it out
    /// of service; returns the error to report.
    pub fn stop(&mut self, cause: VirtioError) -> VirtioError {
        let reset_confirmed = self.reset();
        match reset_confirmed {
            true => {
                if let Err(error) = self.lease.release_all() {
                    log::error!("{}: after the reset, ending a mapping failed: {error}", self.name);
                }
            }
            false => self.lease.contain_all(),
        }
        let error = VirtioError::Stopped { cause: Box::new(cause), reset_confirmed };
        log::error!("{}: {error}", self.name);
        self.out_of_service = Some(format!("{error}"));
        error
    }

    /// Writes 0 to the status and waits for it to read 0: the device then uses no queue.
    fn reset(&mut self) -> bool {
        self.transport.set_status(DeviceStatus::empty());
        let deadline = arch::timer::uptime() + RESET_TIMEOUT;
        while !self.transport.get_status().is_empty() {
            if arch::timer::uptime() > deadline {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }
}

impl<const SLOT: usize, T: Transport> Drop for Device<SLOT, T> {
    /// Only a device whose start failed is dropped: stop it before its queue memory is freed.
    fn drop(&mut self) {
        if !self.reset() {
            self.lease.contain_all();
        }
    }
}
