//! What the kernel adds to `virtio-drivers`' PCI transport: the IOMMU feature bit, and an
//! MSI-X vector for each queue.
//!
//! # `VIRTIO_F_ACCESS_PLATFORM`: the feature bit that puts a virtio device behind the IOMMU
//!
//! A virtio device that offers feature bit 33 says "my DMA goes through the platform's
//! address translation": the addresses in its virtqueues are then IOVAs, not physical
//! addresses (virtio 1.2, 6 "Reserved Feature Bits"). QEMU offers it for devices started with
//! `iommu_platform=on` and refuses `FEATURES_OK` to a driver that does not accept it, since
//! such a driver would hand out physical addresses the IOMMU would translate as IOVAs.
//!
//! `virtio-drivers` 0.13 accepts only the features it knows. [`PlatformTransport`] wraps a
//! transport, forwards everything, and adds bit 33 to the driver's features when the device
//! offers it. The kernel starts a translated device only if it offers the bit (a device that
//! does not would bypass the IOMMU). Nothing else is needed: every address `virtio-drivers`
//! writes into a queue comes from the [`Hal`](virtio_drivers::Hal), which for these devices
//! maps through the device's IOMMU domain.
//!
//! # MSI-X vectors
//!
//! Once MSI-X is enabled on a virtio-pci function ([`crate::msi`]), a queue interrupts only
//! through the vector its `queue_msix_vector` names, and a reset sets every queue's to
//! `NO_VECTOR` (0xffff): no interrupt at all (virtio 1.2, 4.1.4.3 and 4.1.5.1.2).
//! `virtio-drivers` never writes the field, so the wrapper does, in the common configuration
//! structure, just before each queue is set up, as 4.1.5.1.3 orders: select the queue, write
//! the vector, read it back (the device answers `NO_VECTOR` if it could not take it).

use addr::VirtAddr;
use virtio_drivers::Result;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// virtio 1.2, 6: "VIRTIO_F_ACCESS_PLATFORM (33)".
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// virtio 1.2, 4.1.4.3: the offsets of `queue_select` and `queue_msix_vector` in the common
/// configuration structure.
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// Its size, up to `queue_device` (virtio 1.2, 4.1.4.3).
pub const COMMON_CONFIG_BYTES: u64 = 0x38;

/// Where a function's queues are told their MSI-X vector.
#[derive(Debug, Clone, Copy)]
pub struct QueueVector {
    /// The common configuration structure, mapped.
    pub common_config: VirtAddr,
    /// The vector every queue signals.
    pub vector: u16,
}

/// A transport whose driver accepts `VIRTIO_F_ACCESS_PLATFORM` whenever the device offers it,
/// and whose queues signal `vector` (if given).
pub struct PlatformTransport<T: Transport> {
    inner: T,
    offered: bool,
    vector: Option<QueueVector>,
}

impl<T: Transport> PlatformTransport<T> {
    pub fn new(inner: T, vector: Option<QueueVector>) -> Self {
        Self { inner, offered: false, vector }
    }
}

impl QueueVector {
    /// Points `queue` at the vector; says whether the device took it.
    fn assign(&self, queue: u16) -> bool {
        let field = |offset| self.common_config.add(offset).as_mut_ptr::<u16>();
        // SAFETY: both fields lie in the common configuration structure, mapped as device
        // memory for the function's lifetime; the driver is setting up its queues, and nothing
        // else uses `queue_select` meanwhile.
        unsafe {
            field(QUEUE_SELECT).write_volatile(queue);
            field(QUEUE_MSIX_VECTOR).write_volatile(self.vector);
            field(QUEUE_MSIX_VECTOR).read_volatile() == self.vector
        }
    }
}

impl<T: Transport> Transport for PlatformTransport<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        let features = self.inner.read_device_features();
        self.offered = features & VIRTIO_F_ACCESS_PLATFORM != 0;
        features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let access_platform = if self.offered { VIRTIO_F_ACCESS_PLATFORM } else { 0 };
        self.inner.write_driver_features(driver_features | access_platform)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: virtio_drivers::PhysAddr,
        driver_area: virtio_drivers::PhysAddr,
        device_area: virtio_drivers::PhysAddr,
    ) {
        if let Some(vector) = self.vector.filter(|vector| !vector.assign(queue)) {
            log::warn!(
                "virtio-pci queue {queue}: the device refused MSI-X vector {}: it will not interrupt",
                vector.vector
            );
        }
        self.inner.queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    /// Under MSI-X there is nothing to acknowledge: the message is an edge, and the ISR status
    /// is for INTx, which it lowers when read. virtio 1.2, 4.1.5.4: with MSI-X enabled, the
    /// driver "SHOULD NOT" read it (a read is a trip to the device for nothing).
    fn ack_interrupt(&mut self) -> InterruptStatus {
        match self.vector {
            Some(_) => InterruptStatus::empty(),
            None => self.inner.ack_interrupt(),
        }
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
