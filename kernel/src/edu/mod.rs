//! QEMU's `edu` device, behind the SMMU: the plumbing of the driver of the `edu` exercise
//! (`docs/exercise-edu.md`). The DMA transfers themselves are in `driver.rs`, which is the
//! exercise.
//!
//! `edu` (PCI `1234:11e8`, QEMU `docs/specs/edu.rst`) is a teaching device with a one-channel
//! DMA engine between RAM and a 4 KiB buffer of its own. Its catch is its reach: it puts only
//! 28 address bits on the bus ("Command line switches"), and QEMU `virt` has no RAM below
//! 1 GiB. Without an IOMMU it cannot reach a single byte of RAM; behind the SMMU it can reach
//! any byte, because the address it is given is an IOVA of its own domain, and the domain hands
//! out IOVAs below the device's DMA mask:
//!
//! ```text
//!  board: PCI 1234:11e8 ─▶ dma_mask 0x0fff_ffff ─▶ iommu::attach(.., dma_mask, ..)
//!                                                     └─ domain: IOVAs in [granule, 256 MiB)
//!  driver: map_to_device(&buffer at PA 0x6xxx_xxxx) ─▶ IOVA 0x0000_1xxx ─▶ DMA source (0x80)
//!  edu:    reads IOVA 0x1xxx ──(StreamID)──▶ SMMU ──domain's tables──▶ PA 0x6xxx_xxxx
//! ```
//!
//! What is here, given to whoever does the exercise:
//!
//! - finding the function (vendor and device ID, [`is_edu`]), mapping BAR0
//!   (`arch::mmu::map_device`), checking the identification register ([`start`]);
//! - the registers, through `drivers::edu::EduRegisters` (volatile accesses through
//!   `safe-mmio` pointers, as every driver here);
//! - the DMA handle the board made for the function (its route: the SMMU, or without one the
//!   bridge's pool, which lies above 256 MiB too);
//! - [`Edu::start_transfer`], which writes the command register and records what the device
//!   was given ([`Programmed`]) for the tests, and [`Edu::finish`], which reports a transfer's
//!   outcome and its unmap's together;
//! - the errors ([`EduError`]), each with every fact.
//!
//! What is the exercise (`driver.rs`): [`Edu::dma_to_device`] and [`Edu::dma_from_device`],
//! a transfer each way between a caller's buffer and the device's buffer, through the
//! streaming DMA API. With the cargo feature `edu-exercise` the kernel builds
//! `exercises/edu/driver.rs` (the skeleton, whose transfers return
//! [`EduError::NotImplemented`]) instead of the reference solution beside this file.
// The skeleton leaves most of the plumbing unused until the exercise is done.
#![cfg_attr(feature = "edu-exercise", allow(dead_code))]

#[cfg(not(feature = "edu-exercise"))]
mod driver;
#[cfg(feature = "edu-exercise")]
#[path = "../../../exercises/edu/driver.rs"]
mod driver;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

use addr::{DmaAddr, PhysAddr};
use dma::iommu::Mapping;
use dma::{DmaApiError, MapError};
use drivers::edu::{Command, Direction, EduRegisters, Identification};
use spin::Mutex;
use virtio_drivers::transport::pci::bus::DeviceFunctionInfo;

use crate::dma_platform::{DmaDevice, Route};
use crate::pci::PciFunction;

pub use drivers::edu::{DEVICE_BUFFER, DEVICE_BUFFER_SIZE};

/// The device's DMA mask: 28 bits unless QEMU's `-device edu,dma_mask=` says otherwise
/// (`docs/specs/edu.rst`, "Command line switches"). The board gives it to the DMA layer, and
/// the IOMMU domain takes its IOVA limit from it.
pub const DMA_MASK: u64 = drivers::edu::DEFAULT_DMA_MASK;
/// How long a transfer may take. QEMU's `edu` finishes 100 ms (of virtual time) after the
/// command; ten times that is a device that is not coming back.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `info` is an `edu` function: PCI `1234:11e8` ("PCI specs").
pub fn is_edu(info: &DeviceFunctionInfo) -> bool {
    (info.vendor_id, info.device_id) == (drivers::edu::VENDOR_ID, drivers::edu::DEVICE_ID)
}

/// Why an `edu` could not be started or a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EduError {
    /// BAR0 was not assigned.
    NoRegisters,
    /// BAR0 could not be mapped.
    MapRegisters(arch::mmu::MapError),
    /// The identification register (0x00) is not of the form `0xRRrr00ed`.
    NotEdu(Identification),
    /// A transfer of no bytes.
    Empty { direction: Direction },
    /// `[offset, offset + length)` does not lie inside the device's 4 KiB buffer: the device
    /// itself would copy past the end of it (QEMU only logs that).
    OutsideDeviceBuffer { direction: Direction, offset: usize, length: usize },
    /// The command register still had its start bit set `after` the transfer began.
    Timeout { direction: Direction, length: usize, after: Duration },
    /// The command register said a transfer was running before this one was started.
    Busy { command: Command },
    /// An earlier transfer timed out: the device may still be moving data, so it is not used
    /// until [`Edu::recover`] sees it idle.
    Failed(String),
    /// The DMA layer refused the buffer (the route, the mask, the pool...).
    Dma(DmaApiError),
    /// The exercise's skeleton: this part of the driver is still to be written.
    #[cfg_attr(not(feature = "edu-exercise"), allow(dead_code))]
    NotImplemented(&'static str),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::NoRegisters => write!(f, "BAR0, the device's registers, is not assigned"),
            EduError::MapRegisters(error) => write!(f, "cannot map BAR0: {error:?}"),
            EduError::NotEdu(identification) => {
                write!(f, "identification register reads {:#010x}, not 0xRRrr00ed", identification.value)
            }
            EduError::Empty { direction } => write!(f, "a transfer {direction} of no bytes"),
            EduError::OutsideDeviceBuffer { direction, offset, length } => write!(
                f,
                "a {length}-byte transfer {direction} at offset {offset} of the device's buffer runs past its {DEVICE_BUFFER_SIZE} bytes"
            ),
            EduError::Timeout { direction, length, after } => write!(
                f,
                "a {length}-byte transfer {direction} had not finished after {} ms (command register bit 0 still set)",
                after.as_millis()
            ),
            EduError::Busy { command } => write!(f, "a transfer was already running (command register {command:?})"),
            EduError::Failed(reason) => write!(f, "device out of service after an earlier failure: {reason}"),
            EduError::Dma(error) => write!(f, "the DMA layer refused: {error}"),
            EduError::NotImplemented(what) => write!(f, "not implemented: {what}"),
        }
    }
}

impl From<DmaApiError> for EduError {
    fn from(error: DmaApiError) -> Self {
        EduError::Dma(error)
    }
}

impl From<MapError> for EduError {
    fn from(error: MapError) -> Self {
        EduError::Dma(error.error())
    }
}

/// What the device was given when a transfer started, read back from its registers, and
/// where its RAM-side address led at that moment: what the tests check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programmed {
    pub direction: Direction,
    /// The DMA source (0x80), destination (0x88) and count (0x90) registers.
    pub source: u64,
    pub destination: u64,
    pub count: u64,
    /// The RAM side of the transfer: the source to the device, the destination from it.
    pub ram_side: DmaAddr,
    /// The physical address the device reached at `ram_side` through its route.
    pub reached: Option<PhysAddr>,
    /// Behind the IOMMU: the live mapping of the device's domain that held the RAM side.
    pub mapping: Option<Mapping>,
}

/// One `edu` function, started.
pub struct Edu {
    pub name: &'static str,
    pub identification: Identification,
    registers: EduRegisters,
    dma: &'static DmaDevice,
    /// How long a transfer may take before it is reported as timed out.
    timeout: Duration,
    /// The last transfer started.
    programmed: Option<Programmed>,
    /// Why the device is out of service, if it is.
    failed: Option<String>,
}

static DEVICES: Mutex<Vec<&'static Mutex<Edu>>> = Mutex::new(Vec::new());

/// Every `edu` started, in bus order.
pub fn devices() -> Vec<&'static Mutex<Edu>> {
    DEVICES.lock().clone()
}

/// Starts the `edu` of `function`, its DMA through `dma`: maps BAR0 and checks the
/// identification register.
pub fn start(name: &'static str, function: &PciFunction, dma: DmaDevice) -> Result<(), EduError> {
    let bar = function.memory_bars[0].ok_or(EduError::NoRegisters)?;
    let mapped = arch::mmu::map_device(bar).map_err(EduError::MapRegisters)?;
    let base = NonNull::new(mapped.as_mut_ptr::<u8>()).ok_or(EduError::NoRegisters)?;
    // SAFETY: BAR0 of an `edu` function, freshly mapped as device memory for the kernel's
    // lifetime; this driver is its only user.
    let registers = unsafe { EduRegisters::new(base) };
    let identification = registers.identification();
    if !identification.is_edu() {
        return Err(EduError::NotEdu(identification));
    }
    let dma = Box::leak(Box::new(dma));
    let edu = Edu { name, identification, registers, dma, timeout: TRANSFER_TIMEOUT, programmed: None, failed: None };
    DEVICES.lock().push(Box::leak(Box::new(Mutex::new(edu))));
    Ok(())
}

impl Edu {
    /// The device's DMA handle.
    pub fn dma_device(&self) -> &'static DmaDevice {
        self.dma
    }

    /// The liveness check (0x04): writes `value`, returns what the device reads back (`!value`
    /// from a live device).
    pub fn liveness(&mut self, value: u32) -> u32 {
        self.registers.liveness(value)
    }

    /// What the device was given for the last transfer started.
    pub fn last_programmed(&self) -> Option<Programmed> {
        self.programmed
    }

    /// Forgets the last transfer (a test's fresh start).
    pub fn forget_programmed(&mut self) {
        self.programmed = None;
    }

    /// How long a transfer may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Lets transfers take `timeout` at most (a test's way to make one time out).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Why the device is out of service, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Puts a device that timed out back in service once its transfer has ended (it cannot be
    /// aborted: `edu` has no reset). Waits at most `TRANSFER_TIMEOUT` for that.
    pub fn recover(&mut self) -> Result<(), EduError> {
        let deadline = arch::timer::uptime() + TRANSFER_TIMEOUT;
        while self.registers.command().start {
            if arch::timer::uptime() > deadline {
                return Err(EduError::Busy { command: self.registers.command() });
            }
            core::hint::spin_loop();
        }
        self.failed = None;
        Ok(())
    }

    /// Refuses a transfer while the device is out of service, or while one is running.
    fn check_usable(&self) -> Result<(), EduError> {
        if let Some(reason) = &self.failed {
            return Err(EduError::Failed(reason.clone()));
        }
        let command = self.registers.command();
        match command.start {
            true => Err(EduError::Busy { command }),
            false => Ok(()),
        }
    }

    /// Starts the transfer the source, destination and count registers describe, in
    /// `direction`: writes the command register ("MMIO area spec", 0x98, start bit set). First
    /// records, for the tests, what the device was given and where its RAM-side address leads.
    fn start_transfer(&mut self, direction: Direction) {
        let (source, destination, count) =
            (self.registers.source(), self.registers.destination(), self.registers.count());
        let ram_side = DmaAddr::new(match direction {
            Direction::RamToDevice => source,
            Direction::DeviceToRam => destination,
        });
        let mapping = match &self.dma.route {
            Route::Iommu { domain, .. } => domain.lookup(ram_side, count),
            _ => None,
        };
        let reached = self.dma.translate(ram_side);
        self.programmed = Some(Programmed { direction, source, destination, count, ram_side, reached, mapping });
        self.registers.set_command(Command::start(direction));
    }

    /// The outcome of a transfer whose mapping was then ended: the transfer's error first, the
    /// unmap's if the transfer went well (and logged if both failed). A timed-out transfer puts
    /// the device out of service: it may still be moving data (behind the IOMMU, which the
    /// strict unmap just told to forget the buffer, a late access faults instead). A domain that
    /// defers its invalidations (`iommu.strict=0`) is flushed first, so that the IOMMU forgets
    /// the buffer now rather than at its next flush: edu has no reset to stop it otherwise.
    fn finish(&mut self, transfer: Result<(), EduError>, unmapped: Result<(), DmaApiError>) -> Result<(), EduError> {
        if let Err(error @ EduError::Timeout { .. }) = &transfer {
            self.failed = Some(alloc::format!("{error}"));
            if let crate::dma_platform::Route::Iommu { domain, .. } = &self.dma.route
                && let Err(problem) = domain.flush()
            {
                log::error!("{}: flushing the deferred invalidations after the timeout failed: {problem}", self.name);
            }
        }
        match (transfer, unmapped) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(error), Ok(())) => Err(error),
            (Ok(()), Err(error)) => Err(EduError::Dma(error)),
            (Err(error), Err(unmap_error)) => {
                log::error!("{}: after '{error}', the unmap failed too: {unmap_error}", self.name);
                Err(error)
            }
        }
    }
}
