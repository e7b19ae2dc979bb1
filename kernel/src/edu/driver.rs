//! The `edu` exercise, solved: DMA between a caller's buffer and the device's own 4 KiB
//! buffer, through the streaming DMA API (the exercise is `docs/exercise-edu.md`; its skeleton,
//! `exercises/edu/driver.rs`, replaces this file under the cargo feature `edu-exercise`).
//!
//! One transfer, either way ("DMA controller" of QEMU's `docs/specs/edu.rst`):
//!
//! ```text
//!  1. check    [offset, offset + length) lies in the device's buffer, length > 0
//!  2. map      the caller's buffer: map_to_device(&[u8]) or map_from_device(&mut [u8])
//!              ─▶ the DMA address the device may use (behind the SMMU an IOVA < 256 MiB)
//!  3. program  0x80 source, 0x88 destination, 0x90 count:
//!                RAM to device:  source = mapping.dma(),        destination = 0x40000 + offset
//!                device to RAM:  source = 0x40000 + offset,    destination = mapping.dma()
//!  4. start    the command register (0x98): start, and the direction bit
//!  5. poll     until the start bit clears, at most `timeout`
//!  6. unmap    always, also after a timeout (behind the IOMMU a late access then faults);
//!              only now may the CPU read what the device wrote
//! ```
//!
//! The checks come first and cost nothing: a request that cannot be served is refused before
//! anything is mapped or programmed, so a refusal leaves no mapping behind.

use drivers::edu::Direction;

use super::{DEVICE_BUFFER, DEVICE_BUFFER_SIZE, Edu, EduError};

impl Edu {
    /// Copies `data` into the device's buffer at `device_offset` (DMA from RAM to the device).
    pub fn dma_to_device(&mut self, data: &[u8], device_offset: usize) -> Result<(), EduError> {
        let direction = Direction::RamToDevice;
        self.check_usable()?;
        let device_address = device_window(direction, device_offset, data.len())?;
        let dma = self.dma;
        let mapping = dma.map_to_device(data)?;
        self.registers.set_source(mapping.dma().as_u64());
        self.registers.set_destination(device_address);
        self.registers.set_count(data.len() as u64);
        // The device must see the buffer's bytes (and the registers) before it starts.
        arch::cache::order_writes_before_doorbell();
        self.start_transfer(direction);
        let done = self.wait_for_completion(direction, data.len());
        let unmapped = mapping.unmap();
        self.finish(done, unmapped)
    }

    /// Copies `out.len()` bytes of the device's buffer at `device_offset` into `out` (DMA from
    /// the device to RAM).
    pub fn dma_from_device(&mut self, out: &mut [u8], device_offset: usize) -> Result<(), EduError> {
        let direction = Direction::DeviceToRam;
        self.check_usable()?;
        let length = out.len();
        let device_address = device_window(direction, device_offset, length)?;
        let dma = self.dma;
        let mapping = dma.map_from_device(out)?;
        self.registers.set_source(device_address);
        self.registers.set_destination(mapping.dma().as_u64());
        self.registers.set_count(length as u64);
        arch::cache::order_writes_before_doorbell();
        self.start_transfer(direction);
        let done = self.wait_for_completion(direction, length);
        // The unmap makes the device's writes visible to the CPU (a copy back if bounced, an
        // invalidate if the device does not snoop): `out` is the caller's again after it.
        let unmapped = mapping.unmap();
        self.finish(done, unmapped)
    }

    /// Polls the command register until its start bit clears, at most `self.timeout`.
    fn wait_for_completion(&self, direction: Direction, length: usize) -> Result<(), EduError> {
        let deadline = arch::timer::uptime() + self.timeout;
        loop {
            // Late or not is decided before the read, so a transfer that ends just in time
            // still counts as done.
            let late = arch::timer::uptime() > deadline;
            if !self.registers.command().start {
                // Nothing read after this may come from before the device finished.
                arch::cache::order_reads_after_status();
                return Ok(());
            }
            if late {
                return Err(EduError::Timeout { direction, length, after: self.timeout });
            }
            core::hint::spin_loop();
        }
    }
}

/// The device address of `[offset, offset + length)` of the device's buffer, if that lies
/// inside it and is not empty.
fn device_window(direction: Direction, offset: usize, length: usize) -> Result<u64, EduError> {
    if length == 0 {
        return Err(EduError::Empty { direction });
    }
    match offset.checked_add(length) {
        Some(end) if end <= DEVICE_BUFFER_SIZE => Ok(DEVICE_BUFFER + offset as u64),
        _ => Err(EduError::OutsideDeviceBuffer { direction, offset, length }),
    }
}
