//! Streaming mappings that own their buffer's borrow, with the direction in the type.
//!
//! A streaming mapping lends an existing buffer to a device for one transfer. While the device
//! owns it, the CPU must not touch it: a read may see stale cache lines or a half-finished
//! transfer, a write may be lost or overwrite the device's data. Here that rule is a borrow:
//! [`DmaDevice::map_to_device`] takes `&[u8]` and [`DmaDevice::map_from_device`] `&mut [u8]`,
//! and the [`Streaming`] they return holds that borrow until it is unmapped (or dropped, which
//! unmaps). Safe code cannot touch the buffer in between (Asterinas' `DmaStream` makes the same
//! promise by owning the memory).
//!
//! Which syncs make sense depends on who writes the buffer while it is mapped:
//!
//! | direction       | device | CPU may read while mapped | CPU may write while mapped | copied back on unmap |
//! |-----------------|--------|---------------------------|----------------------------|----------------------|
//! | `ToDevice`      | reads  | —                         | —                          | no                   |
//! | `FromDevice`    | writes | [`Streaming::read`]       | —                          | yes                  |
//! | `Bidirectional` | both   | [`Streaming::read`]       | [`Streaming::write`]       | yes                  |
//!
//! The dashes are calls that would be bugs (Linux's DMA debug warns about them at run time);
//! here the method does not exist for that type, so they do not compile.
//!
//! A buffer the device owns cannot be touched; after the unmap it can:
//!
//! ```compile_fail
//! # use dma::sim::{Config, Machine};
//! # use dma::{Constraints, Route};
//! # let machine = Machine::new(Config::default());
//! # let ram = machine.ram();
//! # let windows = Machine::windows(ram.start(), ram.size(), 0, true);
//! # let device = machine.device("disk", Route::Direct { windows, bounce: None }, true, Constraints::NONE);
//! let buffer = machine.buffer(512, 512);
//! let mapping = device.map_from_device(buffer).unwrap();
//! buffer[0] = 1; // error[E0499]: the device owns the buffer until the mapping ends
//! mapping.unmap().unwrap();
//! ```
//!
//! ```
//! # use dma::sim::{Config, Machine};
//! # use dma::{Constraints, Route};
//! # let machine = Machine::new(Config::default());
//! # let ram = machine.ram();
//! # let windows = Machine::windows(ram.start(), ram.size(), 0, true);
//! # let device = machine.device("disk", Route::Direct { windows, bounce: None }, true, Constraints::NONE);
//! let buffer = machine.buffer(512, 512);
//! let mapping = device.map_from_device(buffer).unwrap();
//! machine.device_write(device, mapping.dma(), &[7; 512]).unwrap();
//! mapping.unmap().unwrap();
//! assert_eq!(buffer[0], 7); // the CPU's again
//! ```
//!
//! And a sync the direction cannot need does not exist:
//!
//! ```compile_fail
//! # use dma::sim::{Config, Machine};
//! # use dma::{Constraints, Route};
//! # let machine = Machine::new(Config::default());
//! # let ram = machine.ram();
//! # let windows = Machine::windows(ram.start(), ram.size(), 0, true);
//! # let device = machine.device("disk", Route::Direct { windows, bounce: None }, true, Constraints::NONE);
//! let buffer = machine.buffer(512, 512);
//! let mapping = device.map_to_device(buffer).unwrap();
//! let mut out = [0; 4];
//! mapping.read(0, &mut out).unwrap(); // error[E0599]: the device never writes a to-device buffer
//! ```

use core::marker::PhantomData;
use core::panic::Location;
use core::ptr::NonNull;

use addr::{DmaAddr, PhysRange, VirtAddr};
use swiotlb::DmaDirection;

use crate::device::DmaDevice;
use crate::error::{DmaApiError, MapError};
use crate::platform::Platform;

/// A direction of transfer, as a type.
pub trait Direction {
    /// The same direction, as a value.
    const DIRECTION: DmaDirection;
}

/// The device writes the buffer while it is mapped: the CPU may look at what it wrote.
pub trait DeviceWrites: Direction {}

/// The device only reads the buffer.
pub struct ToDevice;
/// The device only writes the buffer.
pub struct FromDevice;
/// The device reads and writes the buffer.
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
impl DeviceWrites for FromDevice {}
impl DeviceWrites for Bidirectional {}

/// A buffer lent to a device; unmapped when dropped.
pub struct Streaming<'b, P: Platform + 'static, D: Direction> {
    device: &'b DmaDevice<P>,
    cpu: NonNull<u8>,
    buffer: PhysRange,
    dma: DmaAddr,
    /// The buffer stays borrowed (shared for `ToDevice`, exclusive otherwise) until unmapped.
    borrow: PhantomData<(&'b mut [u8], D)>,
}

impl<P: Platform + 'static> DmaDevice<P> {
    /// Lends `buffer` to the device to read.
    #[track_caller]
    pub fn map_to_device<'b>(&'b self, buffer: &'b [u8]) -> Result<Streaming<'b, P, ToDevice>, MapError> {
        self.map_borrowed(NonNull::from(buffer).cast(), buffer.len(), Location::caller())
    }

    /// Lends `buffer` to the device to write.
    #[track_caller]
    pub fn map_from_device<'b>(&'b self, buffer: &'b mut [u8]) -> Result<Streaming<'b, P, FromDevice>, MapError> {
        self.map_borrowed(NonNull::from(&mut *buffer).cast(), buffer.len(), Location::caller())
    }

    /// Lends `buffer` to the device to read and write.
    #[track_caller]
    pub fn map_bidirectional<'b>(&'b self, buffer: &'b mut [u8]) -> Result<Streaming<'b, P, Bidirectional>, MapError> {
        self.map_borrowed(NonNull::from(&mut *buffer).cast(), buffer.len(), Location::caller())
    }

    #[track_caller]
    fn map_borrowed<'b, D: Direction>(
        &'b self,
        cpu: NonNull<u8>,
        size: usize,
        location: &'static Location<'static>,
    ) -> Result<Streaming<'b, P, D>, MapError> {
        let buffer =
            self.physical(VirtAddr::from_ptr(cpu.as_ptr()), size).map_err(|error| self.refused(error, location))?;
        // SAFETY: the caller's borrow of the buffer is held by the `Streaming` until the
        // mapping ends, so no safe code touches the buffer while the device owns it.
        let dma = unsafe { self.map(buffer, D::DIRECTION) }?;
        Ok(Streaming { device: self, cpu, buffer, dma, borrow: PhantomData })
    }
}

impl<P: Platform + 'static, D: Direction> Streaming<'_, P, D> {
    /// The address to give the device.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }

    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.buffer.size() as usize
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Ends the mapping and reports a refusal (dropping does the same, logging it instead).
    #[track_caller]
    pub fn unmap(self) -> Result<(), DmaApiError> {
        // SAFETY: the mapping `map_borrowed` made, ended once (`forget` skips the drop).
        let result = unsafe { self.device.unmap(self.dma, self.buffer, D::DIRECTION) };
        core::mem::forget(self);
        result
    }

    /// `[offset, offset + size)` of the mapping: its DMA address and physical range.
    fn part(&self, offset: usize, size: usize) -> Result<(DmaAddr, PhysRange), DmaApiError> {
        let (offset, size) = (offset as u64, size as u64);
        let outside = DmaApiError::OutsideMapping { offset, size, mapping_size: self.buffer.size() };
        let end = offset.checked_add(size).filter(|&end| end <= self.buffer.size()).ok_or(outside)?;
        let part = PhysRange::new(self.buffer.start().add(offset), end - offset).ok_or(outside)?;
        Ok((self.dma.add(offset), part))
    }
}

impl<P: Platform + 'static, D: DeviceWrites> Streaming<'_, P, D> {
    /// Copies what the device has written to `[offset, offset + out.len())` so far into `out`
    /// (a `sync_for_cpu` of that part, then a read).
    #[track_caller]
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaApiError> {
        let (dma, part) = self.part(offset, out.len())?;
        // SAFETY: `part` lies inside this live mapping.
        unsafe { self.device.sync_for_cpu(dma, part) }?;
        // SAFETY: `part` checked that the bytes lie inside the borrowed buffer; after the sync
        // the CPU may read them.
        unsafe { core::ptr::copy_nonoverlapping(self.cpu.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

impl<P: Platform + 'static> Streaming<'_, P, Bidirectional> {
    /// Writes `data` at `offset` for the device to read (a write, then a `sync_for_device` of
    /// that part).
    #[track_caller]
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaApiError> {
        let (dma, part) = self.part(offset, data.len())?;
        // SAFETY: `part` checked that the bytes lie inside the buffer, which is exclusively
        // borrowed (bidirectional mappings take `&mut [u8]`).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.cpu.as_ptr().add(offset), data.len()) };
        // SAFETY: `part` lies inside this live mapping.
        unsafe { self.device.sync_for_device(dma, part) }
    }
}

impl<P: Platform + 'static, D: Direction> Drop for Streaming<'_, P, D> {
    fn drop(&mut self) {
        // SAFETY: the mapping `map_borrowed` made, ended once.
        if let Err(error) = unsafe { self.device.unmap(self.dma, self.buffer, D::DIRECTION) } {
            log::error!("{}: unmapping {:?} failed: {error}", self.device.name, self.dma);
        }
    }
}
