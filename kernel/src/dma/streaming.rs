//! Streaming mappings with the direction in the type.
//!
//! Which syncs make sense depends on who writes the buffer while it is mapped:
//!
//! | direction       | device | `sync_for_device` | `sync_for_cpu` | copy back on unmap |
//! |-----------------|--------|-------------------|----------------|--------------------|
//! | `ToDevice`      | reads  | yes               | —              | no                 |
//! | `FromDevice`    | writes | —                 | yes            | yes                |
//! | `Bidirectional` | both   | yes               | yes            | yes                |
//!
//! The dashes are calls that would be bugs (Linux warns about them at run time); here the
//! method does not exist for that type, so they do not compile.

use core::marker::PhantomData;

use addr::{DmaAddr, PhysRange};
use swiotlb::DmaDirection;

use super::{DmaApiError, DmaDevice};

pub trait Direction {
    const DIRECTION: DmaDirection;
}

/// The device reads the buffer while it is mapped.
pub trait DeviceReads: Direction {}
/// The device writes the buffer while it is mapped.
pub trait DeviceWrites: Direction {}

pub struct ToDevice;
pub struct FromDevice;
pub struct Bidirectional;

impl Direction for ToDevice {
    const DIRECTION: DmaDirection = DmaDirection::ToDevice;
}
impl Direction for FromDevice {
    const DIRECTION: DmaDirection = DmaDirection::FromDevice;
}
impl Direction for Bidirectional {
    const DIRECTION: DmaDirection = DmaDirection::Bidirectional;
}
impl DeviceReads for ToDevice {}
impl DeviceReads for Bidirectional {}
impl DeviceWrites for FromDevice {}
impl DeviceWrites for Bidirectional {}

/// A buffer lent to a device; unmapped when dropped.
pub struct Streaming<'d, D: Direction> {
    device: &'d DmaDevice,
    buffer: PhysRange,
    dma: DmaAddr,
    direction: PhantomData<D>,
}

impl<'d, D: Direction> Streaming<'d, D> {
    pub fn new(device: &'d DmaDevice, buffer: PhysRange) -> Result<Self, DmaApiError> {
        let dma = device.map(buffer, D::DIRECTION)?;
        Ok(Self { device, buffer, dma, direction: PhantomData })
    }

    /// The address to give the device.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }

    /// Ends the mapping and reports a refusal (dropping does the same, logging it instead).
    pub fn unmap(self) -> Result<(), DmaApiError> {
        let result = self.device.unmap(self.dma, self.buffer, D::DIRECTION);
        core::mem::forget(self);
        result
    }

    /// `[offset, offset + size)` of the mapping, in both address spaces.
    fn part(&self, offset: u64, size: u64) -> Result<(DmaAddr, PhysRange), DmaApiError> {
        let out_of_range = DmaApiError::OutsideMapping { offset, size, mapping_size: self.buffer.size() };
        let end = offset.checked_add(size).filter(|&end| end <= self.buffer.size()).ok_or(out_of_range)?;
        let part = PhysRange::new(self.buffer.start().add(offset), end - offset).ok_or(out_of_range)?;
        Ok((self.dma.add(offset), part))
    }
}

impl<D: DeviceWrites> Streaming<'_, D> {
    /// Shows the CPU what the device wrote to `[offset, offset + size)` so far.
    pub fn sync_for_cpu(&self, offset: u64, size: u64) -> Result<(), DmaApiError> {
        let (dma, part) = self.part(offset, size)?;
        self.device.sync_for_cpu(dma, part)
    }
}

impl<D: DeviceReads> Streaming<'_, D> {
    /// Shows the device what the CPU wrote to `[offset, offset + size)` since the mapping.
    pub fn sync_for_device(&self, offset: u64, size: u64) -> Result<(), DmaApiError> {
        let (dma, part) = self.part(offset, size)?;
        self.device.sync_for_device(dma, part)
    }
}

impl<D: Direction> Drop for Streaming<'_, D> {
    fn drop(&mut self) {
        if let Err(error) = self.device.unmap(self.dma, self.buffer, D::DIRECTION) {
            log::error!("{}: unmapping {:?} failed: {error}", self.device.name, self.dma);
        }
    }
}
