//! virtio devices on the MMIO and PCI transports: every device found is driven, each through
//! its own DMA handle, and nothing a pool refuses or a device fails to do stops the kernel.
//!
//! The drivers here (disks, entropy sources, network cards) are this kernel's own, built on
//! `virtio-drivers`' transports and virtqueues. The crate's own device drivers wait for every
//! completion without a limit, which a device that never answers turns into a hang, and map
//! buffers from inside calls that cannot fail. So:
//!
//! - **Refusals are errors, not panics.** `virtio-drivers` asks its Hal to map a buffer while it
//!   adds the buffer to a queue, and the Hal cannot refuse. The drivers therefore map every
//!   buffer of a request through the kernel's DMA API *before* submitting it, and the Hal only
//!   looks up that mapping; the rings come from memory reserved when the device starts. A
//!   request the pool cannot serve fails with the reason, having reached nothing; a device
//!   whose queues do not fit in its pool, or would leave it no page for transfers, is not
//!   started, and the device table says why ([`hal`]).
//! - **Every wait has a deadline.** A device that misses it is reset, which makes it let go of
//!   its buffers, before they are unmapped; it stays out of service ([`device`]).
//! - **Every device is driven.** The Hal's methods take no `self`, so each device's Hal is a
//!   type of its own, `VirtioHal<SLOT>`, and a driver's type names its slot. There are
//!   [`SLOTS_PER_KIND`] slots for each kind of device, held in the tables below:
//!
//! ```text
//!  slots  0..8   virtio-mmio disks     Disk<SLOT, Mmio>     named virtio-blk0, virtio-blk1, ...
//!  slots  8..16  virtio-pci disks      Disk<SLOT, Pci>      named by PCI address
//!  slots 16..24  entropy sources       Entropy<SLOT, Mmio>  named virtio-rng0, ...
//!  slots 24..32  network cards         Network<SLOT, Mmio>  named virtio-net0, ...
//! ```
//!
//! A virtio-mmio device is named by its kind and its rank among the devices of that kind in
//! ascending register address, which is the order the device table lists them in. A name
//! depends only on the machine: a device that fails to start keeps its number, and the table
//! shows the name beside the devicetree node.

mod blk;
mod device;
mod error;
mod hal;
mod net;
mod platform_transport;
mod rng;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::interrupts::Source;
use spin::Mutex;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::DeviceFunctionInfo;
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::block::BlockDevice;
use crate::dma_platform::DmaDevice;
use crate::pci::PciFunction;
use platform_transport::{PlatformTransport, QueueVector};

pub use blk::Disk;
pub use error::{StartError, VirtioError};
pub use hal::VirtioHal;
pub use net::{Network, NetworkDevice};
pub use rng::{Entropy, EntropySource};

/// Devices of each kind the kernel drives at most: each slot is a type, so their number is
/// fixed, and generous for a machine.
pub const SLOTS_PER_KIND: usize = 8;
/// Slots of every kind together.
pub const SLOTS: usize = 4 * SLOTS_PER_KIND;
const MMIO_DISK_SLOTS: usize = 0;
const PCI_DISK_SLOTS: usize = SLOTS_PER_KIND;
const ENTROPY_SLOTS: usize = 2 * SLOTS_PER_KIND;
const NETWORK_SLOTS: usize = 3 * SLOTS_PER_KIND;

pub type Mmio = MmioTransport<'static>;
pub type Pci = PlatformTransport<PciTransport>;
/// A virtio-blk-pci disk behind the IOMMU.
pub type PciDisk<const SLOT: usize> = Disk<SLOT, Pci>;
/// The slots of the first two virtio-pci disks, which the IOMMU tests use as a pair (one
/// trusted, one not).
pub const PCI_DISK_A: usize = PCI_DISK_SLOTS;
pub const PCI_DISK_B: usize = PCI_DISK_SLOTS + 1;

/// One slot of a kind, whatever its number: holds at most one started driver.
pub trait Slot<Driver: ?Sized, T>: Sync {
    fn is_free(&self) -> bool;
    /// Starts a driver on `transport` in this slot, DMA through `dma`, named `name`, raising
    /// `interrupt` (if it has one) when it completes a request.
    fn start(
        &self,
        transport: T,
        dma: &'static DmaDevice,
        name: &'static str,
        interrupt: Option<Source>,
    ) -> Result<(), StartError>;
    /// Calls `visit` with the slot's driver, if it holds one.
    fn with(&self, visit: &mut dyn FnMut(&mut Driver));
}

macro_rules! slot_of {
    ($driver:ident as $kind:ty) => {
        impl<const SLOT: usize, T: Transport + Send + 'static> Slot<$kind, T> for Mutex<Option<$driver<SLOT, T>>> {
            fn is_free(&self) -> bool {
                // A slot whose device was never confirmed reset keeps its DMA state for good.
                self.lock().is_none() && hal::device_of(SLOT).is_none()
            }

            fn start(
                &self,
                transport: T,
                dma: &'static DmaDevice,
                name: &'static str,
                interrupt: Option<Source>,
            ) -> Result<(), StartError> {
                let driver = $driver::start(transport, dma, name, interrupt)?;
                let mut slot = self.lock();
                match *slot {
                    Some(_) => Err(StartError::SlotTaken { slot: SLOT }),
                    None => {
                        *slot = Some(driver);
                        Ok(())
                    }
                }
            }

            fn with(&self, visit: &mut dyn FnMut(&mut $kind)) {
                if let Some(driver) = self.lock().as_mut() {
                    visit(driver);
                }
            }
        }
    };
}

slot_of!(Disk as dyn BlockDevice + 'static);
slot_of!(Entropy as dyn EntropySource + 'static);
slot_of!(Network as dyn NetworkDevice + 'static);

/// The storage of one kind's slots (a driver type per slot, so a tuple), and its table.
macro_rules! slots {
    ($storage:ident, $table:ident: $driver:ident<$transport:ty> as $kind:ty, from $first:expr_2021) => {
        static $storage: (
            Mutex<Option<$driver<{ $first }, $transport>>>,
            Mutex<Option<$driver<{ $first + 1 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 2 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 3 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 4 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 5 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 6 }, $transport>>>,
            Mutex<Option<$driver<{ $first + 7 }, $transport>>>,
        ) = (
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
            Mutex::new(None),
        );
        static $table: [&'static dyn Slot<$kind, $transport>; SLOTS_PER_KIND] =
            [&$storage.0, &$storage.1, &$storage.2, &$storage.3, &$storage.4, &$storage.5, &$storage.6, &$storage.7];
    };
}

slots!(MMIO_DISK_STORAGE, MMIO_DISKS: Disk<Mmio> as dyn BlockDevice, from MMIO_DISK_SLOTS);
slots!(PCI_DISK_STORAGE, PCI_DISKS: Disk<Pci> as dyn BlockDevice, from PCI_DISK_SLOTS);
slots!(ENTROPY_STORAGE, ENTROPY_SOURCES: Entropy<Mmio> as dyn EntropySource, from ENTROPY_SLOTS);
slots!(NETWORK_STORAGE, NETWORK_DEVICES: Network<Mmio> as dyn NetworkDevice, from NETWORK_SLOTS);

/// The first two virtio-pci disks, by type: the IOMMU tests reach into them.
pub static PCI_DISK_A_DEVICE: &Mutex<Option<PciDisk<PCI_DISK_A>>> = &PCI_DISK_STORAGE.0;
pub static PCI_DISK_B_DEVICE: &Mutex<Option<PciDisk<PCI_DISK_B>>> = &PCI_DISK_STORAGE.1;

/// virtio-mmio devices found of each kind, started or not: the number in the next one's name.
static DISKS_FOUND: AtomicUsize = AtomicUsize::new(0);
static ENTROPY_SOURCES_FOUND: AtomicUsize = AtomicUsize::new(0);
static NETWORK_DEVICES_FOUND: AtomicUsize = AtomicUsize::new(0);
/// The virtio-mmio devices found but not started: name, and why in words.
static NOT_STARTED: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// A device that was found but not started, and why.
#[derive(Debug)]
pub struct NotStarted {
    pub name: &'static str,
    pub error: StartError,
}

impl fmt::Display for NotStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.error)
    }
}

/// Devices found, by name prefix, and those not started with why.
pub type Census = ([(&'static str, usize); 3], Vec<(&'static str, String)>);

/// How many virtio-mmio devices of each kind were found, by name prefix, and those not
/// started, with why (as the device table reported them).
pub fn mmio_devices_found() -> Census {
    let found = [
        ("virtio-blk", DISKS_FOUND.load(Ordering::Relaxed)),
        ("virtio-rng", ENTROPY_SOURCES_FOUND.load(Ordering::Relaxed)),
        ("virtio-net", NETWORK_DEVICES_FOUND.load(Ordering::Relaxed)),
    ];
    (found, NOT_STARTED.lock().clone())
}

/// The DMA handle of the device in `slot`, while one holds it.
pub fn dma_device(slot: usize) -> Option<&'static DmaDevice> {
    hal::device_of(slot)
}

/// The DMA handles of every virtio device started.
pub fn dma_devices() -> Vec<&'static DmaDevice> {
    hal::devices()
}

/// Calls `visit` with every virtio disk, in [`disks`]' order.
pub fn with_each_disk(mut visit: impl FnMut(&mut dyn BlockDevice)) {
    for disk in disks() {
        disk.with(&mut visit);
    }
}

/// Every virtio disk started: the virtio-mmio ones in name order, then the virtio-pci ones in
/// bus order.
pub fn disks() -> Vec<crate::block::Disk> {
    let mmio = MMIO_DISKS.iter().filter(|slot| !slot.is_free());
    let mmio = mmio.map(|&slot| crate::block::Disk::new(move |visit| slot.with(&mut |disk| visit(disk))));
    let pci = PCI_DISKS.iter().filter(|slot| !slot.is_free());
    let pci = pci.map(|&slot| crate::block::Disk::new(move |visit| slot.with(&mut |disk| visit(disk))));
    mmio.chain(pci).collect()
}

/// Calls `visit` with every entropy source, in name order.
pub fn with_each_entropy_source(mut visit: impl FnMut(&mut dyn EntropySource)) {
    ENTROPY_SOURCES.iter().for_each(|slot| slot.with(&mut |source| visit(source)));
}

/// Calls `visit` with every network device, in name order.
pub fn with_each_network_device(mut visit: impl FnMut(&mut dyn NetworkDevice)) {
    NETWORK_DEVICES.iter().for_each(|slot| slot.with(&mut |device| visit(device)));
}

/// Opens the transport at `registers`; `Ok(None)` for an empty slot (device ID 0).
pub fn open_transport(registers: addr::PhysRange) -> Result<Option<Mmio>, &'static str> {
    let mapped = arch::mmu::map_device(registers).map_err(|_| "cannot map the registers")?;
    let header = core::ptr::NonNull::new(mapped.as_mut_ptr::<VirtIOHeader>()).ok_or("registers at 0")?;
    // SAFETY: the registers of a virtio-mmio node, freshly mapped as device memory, used by
    // this transport alone.
    match unsafe { MmioTransport::new(header, registers.size() as usize) } {
        Ok(transport) => Ok(Some(transport)),
        Err(MmioError::InvalidDeviceID(_)) => Ok(None),
        Err(_) => Err("not a virtio-mmio device"),
    }
}

/// Starts the driver for the virtio-mmio device on `transport`, DMA through `dma`; returns
/// the device's name. Call in ascending register address, which the names count in.
pub fn start_mmio(transport: Mmio, dma: DmaDevice, interrupt: Option<Source>) -> Result<&'static str, NotStarted> {
    let device_type = transport.device_type();
    let (prefix, found) = match device_type {
        DeviceType::Block => ("virtio-blk", &DISKS_FOUND),
        DeviceType::EntropySource => ("virtio-rng", &ENTROPY_SOURCES_FOUND),
        DeviceType::Network => ("virtio-net", &NETWORK_DEVICES_FOUND),
        other => return Err(NotStarted { name: "virtio", error: StartError::NoDriver(other) }),
    };
    let short = leak(format!("{prefix}{}", found.fetch_add(1, Ordering::Relaxed)));
    let name = leak(format!("{short} ({})", dma.name));
    let dma: &'static DmaDevice = Box::leak(Box::new(dma));
    let started = match device_type {
        DeviceType::Block => start_in(&MMIO_DISKS, "virtio-mmio disk", transport, dma, name, interrupt),
        DeviceType::EntropySource => start_in(&ENTROPY_SOURCES, "entropy", transport, dma, name, interrupt),
        _ => start_in(&NETWORK_DEVICES, "network", transport, dma, name, interrupt),
    };
    started.map(|()| short).map_err(|error| {
        let not_started = NotStarted { name: short, error };
        NOT_STARTED.lock().push((short, format!("{not_started}")));
        not_started
    })
}

/// Whether `function` is a virtio-blk-pci disk, the virtio-pci device this kernel drives.
pub fn is_pci_disk(function: &DeviceFunctionInfo) -> bool {
    virtio_device_type(function) == Some(DeviceType::Block)
}

/// Opens the virtio-pci transport of `function` and starts a disk driver on it, DMA through
/// `dma`, its completions signalled on `interrupt`.
pub fn start_pci(function: &PciFunction, dma: DmaDevice, interrupt: Option<Source>) -> Result<(), NotStarted> {
    let name = leak(format!("virtio-blk {}", dma.name));
    let not_started = |error| NotStarted { name, error };
    let bus = crate::pci::bus().ok_or(not_started(StartError::Transport("no PCIe bus")))?;
    // Only the Hal's `mmio_phys_to_virt` is used here, the same for every slot.
    let mut transport = PciTransport::new::<VirtioHal<PCI_DISK_SLOTS>, _>(
        &mut bus.root.lock(),
        crate::pci::config_address(function.address),
    )
    .map_err(|_| not_started(StartError::Transport("not a virtio-pci device")))?;
    // Without the feature the device's DMA would bypass the IOMMU while the driver hands it
    // IOVAs. Without an IOMMU the addresses it is given are bus addresses either way.
    let translated = matches!(dma.route, crate::dma_platform::Route::Iommu { .. });
    if translated && transport.read_device_features() & platform_transport::VIRTIO_F_ACCESS_PLATFORM == 0 {
        let missing = "VIRTIO_F_ACCESS_PLATFORM: its DMA would not be translated";
        return Err(not_started(StartError::MissingFeature(missing)));
    }
    let dma: &'static DmaDevice = Box::leak(Box::new(dma));
    let vector = match interrupt {
        Some(Source::Message { .. }) => Some(queue_vector(bus, function).map_err(not_started)?),
        _ => None,
    };
    let transport = PlatformTransport::new(transport, vector);
    start_in(&PCI_DISKS, "virtio-pci disk", transport, dma, name, interrupt).map_err(not_started)
}

/// The MSI-X vector of a virtio-pci disk's one queue; configuration changes get none.
pub const MSIX_VECTOR: u16 = 0;

/// Where `function`'s queues are given [`MSIX_VECTOR`]: its common configuration structure,
/// which a vendor capability of type 1 places in a BAR (virtio 1.2, 4.1.4 and 4.1.4.3).
fn queue_vector(bus: &crate::pci::PciBus, function: &PciFunction) -> Result<QueueVector, StartError> {
    const VENDOR_CAPABILITY: u8 = 0x09;
    const COMMON_CONFIG: u16 = 1;
    let missing = || StartError::Transport("no common configuration structure for its MSI-X vector");
    let found = {
        let root = bus.root.lock();
        let address = crate::pci::config_address(function.address);
        let mut capabilities = root.capabilities(address);
        capabilities.find(|cap| cap.id == VENDOR_CAPABILITY && cap.private_header >> 8 == COMMON_CONFIG)
    };
    let capability = found.ok_or_else(missing)?;
    let read = |offset| bus.read_config(function, capability.offset + offset).map_err(|_| missing());
    let bar = function.memory_bars.get((read(4)? & 0xff) as usize).copied().flatten().ok_or_else(missing)?;
    let structure = addr::PhysRange::new(bar.start().add(u64::from(read(8)?)), platform_transport::COMMON_CONFIG_BYTES)
        .filter(|structure| bar.covers(structure))
        .ok_or_else(missing)?;
    let common_config = arch::mmu::map_device(structure).map_err(|_| missing())?;
    Ok(QueueVector { common_config, vector: MSIX_VECTOR })
}

/// Starts a driver on `transport` in the first free slot of `table`.
fn start_in<Driver: ?Sized, T>(
    table: &[&'static dyn Slot<Driver, T>],
    kind: &'static str,
    transport: T,
    dma: &'static DmaDevice,
    name: &'static str,
    interrupt: Option<Source>,
) -> Result<(), StartError> {
    let free = table.iter().find(|slot| slot.is_free());
    let slot = free.ok_or(StartError::NoFreeSlot { kind, slots: table.len() })?;
    slot.start(transport, dma, name, interrupt)
}

/// A name that lives as long as the device it names.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}
