//! `VIRTIO_F_ACCESS_PLATFORM`: the feature bit that puts a virtio device behind the IOMMU.
//!
//! A virtio device that offers feature bit 33 says "my DMA goes through the platform's
//! address translation": the addresses in its virtqueues are then IOVAs, not physical
//! addresses (virtio 1.2, 6 "Reserved Feature Bits"). QEMU offers it for devices started with
//! `iommu_platform=on` and refuses `FEATURES_OK` to a driver that does not accept it, since
//! such a driver would hand out physical addresses the IOMMU would translate as IOVAs.
//!
//! `virtio-drivers` 0.13 accepts only the features it knows. [`AccessPlatform`] wraps a
//! transport, forwards everything, and adds bit 33 to the driver's features when the device
//! offers it. The kernel starts a translated device only if it offers the bit (a device that
//! does not would bypass the IOMMU). Nothing else is needed: every address `virtio-drivers`
//! writes into a queue comes from the [`Hal`](virtio_drivers::Hal), which for these devices
//! maps through the device's IOMMU domain.

use virtio_drivers::Result;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// virtio 1.2, 6: "VIRTIO_F_ACCESS_PLATFORM (33)".
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// A transport whose driver accepts `VIRTIO_F_ACCESS_PLATFORM` whenever the device offers it.
pub struct AccessPlatform<T: Transport> {
    inner: T,
    offered: bool,
}

impl<T: Transport> AccessPlatform<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, offered: false }
    }
}

impl<T: Transport> Transport for AccessPlatform<T> {
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
        self.inner.queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
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
