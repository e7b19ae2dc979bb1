//! The `edu` exercise: DMA between a caller's buffer and the device's own 4 KiB buffer,
//! behind the SMMU. Read `docs/exercise-edu.md` first; run `cargo xtask exercise edu` to see
//! which tests pass.
//!
//! The kernel builds this file instead of `kernel/src/edu/driver.rs` (the reference solution:
//! look there only when done, or stuck) when its cargo feature `edu-exercise` is on, as
//! `cargo xtask exercise edu` turns it on. It is a child module of `kernel/src/edu/mod.rs`, so
//! everything there is at hand as `self.` or `super::`:
//!
//! | what | where |
//! |---|---|
//! | the device's DMA handle | `self.dma` (`map_to_device(&[u8])`, `map_from_device(&mut [u8])`; the mapping's `.dma()`, `.unmap()`) |
//! | its registers | `self.registers`: `set_source`, `set_destination`, `set_count`, `command().start` |
//! | start a transfer | `self.start_transfer(direction)`: writes the command register, and records what the device was given (the tests read that record) |
//! | refuse while out of service | `self.check_usable()?` |
//! | the deadline | `self.timeout`, `arch::timer::uptime()` |
//! | report the outcome | `self.finish(transfer_result, unmap_result)` |
//! | the device's buffer | `DEVICE_BUFFER` (its device address), `DEVICE_BUFFER_SIZE` |
//! | the errors | `EduError::{Empty, OutsideDeviceBuffer, Timeout, Dma, ...}` |
//! | barriers | `arch::cache::order_writes_before_doorbell()`, `arch::cache::order_reads_after_status()` |
//!
//! Each transfer, from QEMU's `docs/specs/edu.rst` ("DMA controller"):
//!
//! 1. refuse what the device cannot do: no bytes, or bytes outside its 4 KiB buffer (QEMU would
//!    copy past the end of its own array). Refuse before mapping anything;
//! 2. map the caller's buffer for the device, in the transfer's direction;
//! 3. program the source (0x80), destination (0x88) and count (0x90) registers: one side is
//!    the mapping's DMA address, the other `DEVICE_BUFFER + offset`;
//! 4. start the transfer (0x98);
//! 5. poll until the command register's start bit clears, giving up after `self.timeout`
//!    with `EduError::Timeout`;
//! 6. unmap, whatever happened (and only then is what the device wrote the CPU's to read).
//!
//! No `panic!`, no `todo!()`, no `unwrap()`: every failure is an `EduError` carrying the facts.

use super::{Edu, EduError};

impl Edu {
    /// Copies `data` into the device's buffer at `device_offset` (DMA from RAM to the device).
    pub fn dma_to_device(&mut self, data: &[u8], device_offset: usize) -> Result<(), EduError> {
        let _ = (data, device_offset);
        Err(EduError::NotImplemented("Edu::dma_to_device, in exercises/edu/driver.rs"))
    }

    /// Copies `out.len()` bytes of the device's buffer at `device_offset` into `out` (DMA from
    /// the device to RAM).
    pub fn dma_from_device(&mut self, out: &mut [u8], device_offset: usize) -> Result<(), EduError> {
        let _ = (out, device_offset);
        Err(EduError::NotImplemented("Edu::dma_from_device, in exercises/edu/driver.rs"))
    }
}
