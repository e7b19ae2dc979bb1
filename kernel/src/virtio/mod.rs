//! virtio devices on the MMIO transport, with every transfer through the kernel's DMA API.
//!
//! The `virtio-drivers` crate drives the devices; it asks its [`Hal`] for memory the device
//! can reach. Its `Hal` methods take no `self`, yet each device has its own DMA route (its own
//! restricted pool, bus offset, coherency). So the Hal is a type per device slot,
//! `VirtioHal<SLOT>`, and each slot's [`DmaDevice`] sits in a table filled at probe time:
//!
//! ```text
//!  VirtIOBlk<VirtioHal<BLOCK>>   ─share/unshare/dma_alloc─▶  DEVICES[BLOCK]   = DmaDevice ─▶ pool
//!  VirtIORng<VirtioHal<ENTROPY>> ───────────────────────────▶ DEVICES[ENTROPY] = DmaDevice ─▶ pool
//! ```
//!
//! `share` is a streaming map (copy into the pool for a restricted device), `unshare` the unmap
//! (copy back for buffers the device wrote), `dma_alloc` coherent memory for the virtqueues
//! (from the pool, for a restricted device). That is the AOSP pvmfw pattern.

use core::ptr::NonNull;

use addr::{DmaAddr, PhysRange, VirtAddr};
use dma::DmaDirection;
use spin::{Mutex, Once};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{DeviceFunction, DeviceFunctionInfo};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

use crate::dma::DmaDevice;
use crate::pci::PciFunction;

mod access_platform;

use access_platform::AccessPlatform;

pub const BLOCK: usize = 0;
pub const ENTROPY: usize = 1;
pub const NETWORK: usize = 2;
/// Disks on the PCIe bus, behind the IOMMU: two, so that one can be trusted and one not.
pub const PCI_DISK_A: usize = 3;
pub const PCI_DISK_B: usize = 4;
const SLOTS: usize = 5;
const NETWORK_QUEUE_SIZE: usize = 16;

type Mmio = MmioTransport<'static>;
type Pci = AccessPlatform<PciTransport>;
pub type BlockDevice = VirtIOBlk<VirtioHal<BLOCK>, Mmio>;
pub type EntropyDevice = VirtIORng<VirtioHal<ENTROPY>, Mmio>;
pub type NetworkDevice = VirtIONetRaw<VirtioHal<NETWORK>, Mmio, NETWORK_QUEUE_SIZE>;
pub type PciDisk<const SLOT: usize> = VirtIOBlk<VirtioHal<SLOT>, Pci>;

static DEVICES: [Once<DmaDevice>; SLOTS] = [const { Once::new() }; SLOTS];
pub static BLOCK_DEVICE: Mutex<Option<BlockDevice>> = Mutex::new(None);
pub static ENTROPY_DEVICE: Mutex<Option<EntropyDevice>> = Mutex::new(None);
pub static NETWORK_DEVICE: Mutex<Option<NetworkDevice>> = Mutex::new(None);
pub static PCI_DISK_A_DEVICE: Mutex<Option<PciDisk<PCI_DISK_A>>> = Mutex::new(None);
pub static PCI_DISK_B_DEVICE: Mutex<Option<PciDisk<PCI_DISK_B>>> = Mutex::new(None);

/// The DMA handle of the device in `slot`, once probed.
pub fn dma_device(slot: usize) -> Option<&'static DmaDevice> {
    DEVICES.get(slot)?.get()
}

/// The `virtio-drivers` Hal for the device in `SLOT`.
pub struct VirtioHal<const SLOT: usize>;

impl<const SLOT: usize> VirtioHal<SLOT> {
    fn device() -> &'static DmaDevice {
        // The driver exists only after its slot was filled, in `start`.
        dma_device(SLOT).expect("virtio device slot filled before its driver starts")
    }

    fn buffer(device: &DmaDevice, buffer: NonNull<[u8]>) -> PhysRange {
        let address = VirtAddr::from_ptr(buffer.as_ptr() as *const u8);
        match device.physical(address, buffer.len()) {
            Ok(range) => range,
            Err(error) => panic!("{}: cannot share a buffer: {error}", device.name),
        }
    }
}

fn direction(direction: BufferDirection) -> DmaDirection {
    match direction {
        BufferDirection::DriverToDevice => DmaDirection::ToDevice,
        BufferDirection::DeviceToDriver => DmaDirection::FromDevice,
        BufferDirection::Both => DmaDirection::Bidirectional,
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned coherent memory owned by the caller until
// `dma_dealloc`; `share` returns the DMA address of a mapping of exactly the given buffer;
// `mmio_phys_to_virt` maps the registers as device memory. Failures panic (the trait leaves no
// way to report them), which stops the kernel with the reason.
unsafe impl<const SLOT: usize> Hal for VirtioHal<SLOT> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (u64, NonNull<u8>) {
        let device = Self::device();
        match device.alloc_coherent(pages * PAGE_SIZE) {
            Ok(memory) => (memory.dma.as_u64(), NonNull::new(memory.virt.as_mut_ptr()).expect("non-null")),
            Err(error) => panic!("{}: cannot allocate {pages} coherent pages: {error}", device.name),
        }
    }

    unsafe fn dma_dealloc(dma: u64, virt: NonNull<u8>, pages: usize) -> i32 {
        let memory = crate::dma::CoherentMemory {
            virt: VirtAddr::from_ptr(virt.as_ptr()),
            dma: DmaAddr::new(dma),
            size: pages * PAGE_SIZE,
        };
        match Self::device().free_coherent(memory) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(physical: u64, size: usize) -> NonNull<u8> {
        let registers = PhysRange::new(addr::PhysAddr::new(physical), size as u64).expect("MMIO range");
        match arch::mmu::map_device(registers) {
            Ok(virt) => NonNull::new(virt.as_mut_ptr()).expect("device window is not at 0"),
            Err(error) => panic!("cannot map MMIO {registers}: {error:?}"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, buffer_direction: BufferDirection) -> u64 {
        let device = Self::device();
        let range = Self::buffer(device, buffer);
        match device.map(range, direction(buffer_direction)) {
            Ok(dma) => dma.as_u64(),
            Err(error) => panic!("{}: cannot map {range} for DMA: {error}", device.name),
        }
    }

    unsafe fn unshare(dma: u64, buffer: NonNull<[u8]>, buffer_direction: BufferDirection) {
        let device = Self::device();
        let range = Self::buffer(device, buffer);
        if let Err(error) = device.unmap(DmaAddr::new(dma), range, direction(buffer_direction)) {
            panic!("{}: cannot unmap {range}: {error}", device.name);
        }
    }
}

/// Opens the transport at `registers`; `Ok(None)` for an empty slot (device ID 0).
pub fn open_transport(registers: PhysRange) -> Result<Option<Mmio>, &'static str> {
    let mapped = arch::mmu::map_device(registers).map_err(|_| "cannot map the registers")?;
    let header = NonNull::new(mapped.as_mut_ptr::<VirtIOHeader>()).ok_or("registers at 0")?;
    // SAFETY: the registers of a virtio-mmio node, freshly mapped as device memory, used by
    // this transport alone.
    match unsafe { MmioTransport::new(header, registers.size() as usize) } {
        Ok(transport) => Ok(Some(transport)),
        Err(MmioError::InvalidDeviceID(_)) => Ok(None),
        Err(_) => Err("not a virtio-mmio device"),
    }
}

/// Starts the driver for `transport`, whose DMA goes through `device`.
pub fn start(transport: Mmio, device: DmaDevice) -> Result<&'static str, &'static str> {
    match transport.device_type() {
        DeviceType::Block => start_in::<BLOCK, _>(device, &BLOCK_DEVICE, || VirtIOBlk::new(transport), "block"),
        DeviceType::EntropySource => {
            start_in::<ENTROPY, _>(device, &ENTROPY_DEVICE, || VirtIORng::new(transport), "entropy")
        }
        DeviceType::Network => {
            start_in::<NETWORK, _>(device, &NETWORK_DEVICE, || VirtIONetRaw::new(transport), "network")
        }
        _ => Err("no driver for this virtio device type"),
    }
}

fn start_in<const SLOT: usize, D>(
    device: DmaDevice,
    driver: &Mutex<Option<D>>,
    create: impl FnOnce() -> virtio_drivers::Result<D>,
    kind: &'static str,
) -> Result<&'static str, &'static str> {
    if DEVICES[SLOT].get().is_some() {
        return Err("a device of this type is already driven");
    }
    DEVICES[SLOT].call_once(|| device);
    let started = create().map_err(|_| "the driver could not initialise the device")?;
    *driver.lock() = Some(started);
    Ok(kind)
}

/// Whether `function` is a virtio-blk-pci disk, the virtio-pci device this kernel drives.
pub fn is_pci_disk(function: &DeviceFunctionInfo) -> bool {
    virtio_device_type(function) == Some(DeviceType::Block)
}

/// Opens the virtio-pci transport of `function` and starts its driver, DMA through `device`.
pub fn start_pci(function: &PciFunction, device: DmaDevice) -> Result<&'static str, &'static str> {
    let slot = if DEVICES[PCI_DISK_A].get().is_none() { PCI_DISK_A } else { PCI_DISK_B };
    if DEVICES[slot].get().is_some() {
        return Err("both PCI disk slots are taken");
    }
    DEVICES[slot].call_once(|| device);
    match slot {
        PCI_DISK_A => open_pci_disk::<PCI_DISK_A>(function.address, &PCI_DISK_A_DEVICE),
        _ => open_pci_disk::<PCI_DISK_B>(function.address, &PCI_DISK_B_DEVICE),
    }
}

/// Opens the transport of the PCI disk in `SLOT` and starts a driver on it.
fn open_pci_disk<const SLOT: usize>(
    function: DeviceFunction,
    driver: &Mutex<Option<PciDisk<SLOT>>>,
) -> Result<&'static str, &'static str> {
    let bus = crate::pci::bus().ok_or("no PCIe bus")?;
    let mut transport = PciTransport::new::<VirtioHal<SLOT>, _>(&mut bus.root.lock(), function)
        .map_err(|_| "not a virtio-pci device")?;
    // Without the feature the device's DMA would bypass the IOMMU while the driver hands it IOVAs.
    if transport.read_device_features() & access_platform::VIRTIO_F_ACCESS_PLATFORM == 0 {
        return Err("the device does not offer VIRTIO_F_ACCESS_PLATFORM: its DMA would not be translated");
    }
    let disk =
        VirtIOBlk::new(AccessPlatform::new(transport)).map_err(|_| "the driver could not initialise the device")?;
    *driver.lock() = Some(disk);
    Ok("block")
}
