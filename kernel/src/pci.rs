//! PCI Express: the host bridge the devicetree describes, its functions, their BARs.
//!
//! A PCIe host bridge (`pci-host-ecam-generic`) exposes the configuration space of every
//! function below it as memory: the Enhanced Configuration Access Mechanism gives each
//! (bus, device, function) 4 KiB at `ECAM base + (bus << 20 | device << 15 | function << 12)`
//! (PCIe Base Specification 6.0, 7.2.2 "PCI Express Enhanced Configuration Access Mechanism").
//! In it sit the vendor and device IDs, the Command register and six Base Address Registers.
//!
//! Nothing decides where a device's registers live but software: boot firmware on a PC, the
//! kernel here. Each BAR is sized (write all ones, read back which address bits stick), then
//! given a naturally aligned address inside one of the bridge's `ranges` windows (a 64-bit BAR
//! prefers the 64-bit window), and the Command register enables decoding. *Bus mastering*
//! comes last, in [`enable_dma`], once the function's IOMMU domain is attached — without
//! `BUS_MASTER` the function cannot start a DMA at all.
//!
//! Every DMA the function then makes carries its requester ID (`bus << 8 | device << 3 |
//! function`); the bridge's `iommu-map` turns it into the StreamID under which the SMMU looks
//! up the function's translation ([`crate::iommu`]).
//!
//! Legacy INTx interrupts are resolved through `interrupt-map`, shown in the device table, and
//! taken by the drivers ([`crate::interrupts::Line`]): level-triggered, and shared when the
//! bridge swizzles two functions' pins onto one line.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use platform::interrupts::GicInterrupt;

use addr::{PhysRange, VirtAddr};
use drivers::msix::{self, MsixCapability, MsixEntry};
use log::{info, warn};
use platform::devicetree::Devicetree;
use platform::pci::{self as pci_dt, BarAllocator, BarKind, BarRequest, IntxPin, PciHostBridge, StreamRoute};
use spin::{Mutex, Once};
use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, CapabilityInfo, Command, DeviceFunction, DeviceFunctionInfo, HeaderType, MemoryBarType, MmioCam,
    PciRoot,
};

/// Configuration space access through the bridge's ECAM window.
pub type Root = PciRoot<MmioCam<'static>>;

/// A function found on the bus, its BARs assigned and enabled.
pub struct PciFunction {
    /// Bus, device and function, as the devicetree's `iommu-map` and `interrupt-map` key them.
    pub address: pci_dt::PciFunction,
    pub info: DeviceFunctionInfo,
    /// Where its DMA goes: the IOMMU and StreamID `iommu-map` names, if any.
    pub stream: Option<StreamRoute>,
    /// The GIC interrupt its INTA# is routed to (`interrupt-map`), if any.
    pub intx: Option<GicInterrupt>,
    /// Where the CPU reaches each memory BAR, by BAR index.
    pub memory_bars: [Option<PhysRange>; 6],
}

impl PciFunction {
    /// The name its drivers and DMA device go by: `pci 00:04.0`.
    pub fn name(&self) -> String {
        alloc::format!("pci {}", self.address)
    }
}

/// The enumerated host bridge.
pub struct PciBus {
    pub bridge: PciHostBridge<'static>,
    /// Configuration space through `virtio-drivers`, and the lock for every access to it.
    pub root: Mutex<Root>,
    /// The ECAM window, mapped: for the registers `virtio-drivers` has no call for (MSI-X).
    ecam: VirtAddr,
    pub functions: Vec<PciFunction>,
}

static PCI: Once<PciBus> = Once::new();

/// The PCIe bus, once [`start`] enumerated it.
pub fn bus() -> Option<&'static PciBus> {
    PCI.get()
}

/// Why the host bridge could not be used.
#[derive(Debug)]
pub enum PciError {
    Devicetree(String),
    Ecam(arch::mmu::MapError),
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::Devicetree(problem) => write!(f, "{problem}"),
            PciError::Ecam(error) => write!(f, "cannot map the ECAM window: {error:?}"),
        }
    }
}

/// Finds the first ECAM host bridge, enumerates its root bus and assigns every BAR.
/// `Ok(None)` when the machine has no PCIe.
pub fn start(devicetree: &Devicetree<'static>) -> Result<Option<&'static PciBus>, PciError> {
    let bridges = devicetree.pci_host_bridges().map_err(|error| PciError::Devicetree(alloc::format!("{error}")))?;
    let Some(bridge) = bridges.into_iter().next() else { return Ok(None) };
    // Said once per entry, with the phandle: each function it covers is then reported "not
    // started" by its driver, which knows only that no running SMMU translates it.
    for problem in devicetree.iommu_map_problems(&bridge) {
        warn!("pci: {problem}");
    }
    let ecam = arch::mmu::map_device(bridge.ecam).map_err(PciError::Ecam)?;
    let base = NonNull::new(ecam.as_mut_ptr::<u8>()).expect("device window is not at 0");
    // SAFETY: the ECAM window, freshly mapped as device memory, used through this root only.
    let mut root = PciRoot::new(unsafe { MmioCam::new(base.as_ptr(), Cam::Ecam) });
    let mut windows = BarAllocator::new(&bridge.windows);
    let first_bus = bridge.buses.first;
    let mut functions = Vec::new();
    for (config, info) in root.enumerate_bus(first_bus) {
        let Some(address) = pci_dt::PciFunction::new(config.bus, config.device, config.function) else {
            warn!("pci {config}: not a valid bus:device.function; skipped");
            continue;
        };
        if info.header_type != HeaderType::Standard {
            warn!("pci {address}: {info}: bridges are not configured; nothing behind it is used");
            continue;
        }
        let memory_bars = match assign_bars(&mut root, &mut windows, address) {
            Ok(memory_bars) => memory_bars,
            Err(problem) => {
                warn!("pci {address}: {problem}; left disabled");
                continue;
            }
        };
        let stream = bridge.stream_id(address.requester_id());
        let intx = bridge
            .legacy_interrupt(address, IntxPin::A)
            .and_then(|interrupt| GicInterrupt::from_cells(&interrupt.cells));
        functions.push(PciFunction { address, info, stream, intx, memory_bars });
    }
    info!("pci: {} ({}), {} function(s) on bus {first_bus}", bridge.name, bridge.ecam, functions.len());
    Ok(Some(PCI.call_once(|| PciBus { bridge, root: Mutex::new(root), ecam, functions })))
}

/// Sizes every BAR of `address`, places it in a bridge window, then enables decoding;
/// returns where the CPU reaches each memory BAR.
fn assign_bars(
    root: &mut Root,
    windows: &mut BarAllocator,
    address: pci_dt::PciFunction,
) -> Result<[Option<PhysRange>; 6], String> {
    let address = config_address(address);
    let bars = root.bars(address).map_err(|error| alloc::format!("cannot size its BARs: {error:?}"))?;
    let mut command = Command::MEMORY_SPACE;
    let mut memory_bars = [None; 6];
    for (index, bar) in bars.iter().enumerate() {
        let Some(bar) = bar else { continue };
        let index = index as u8;
        match *bar {
            BarInfo::Memory { address_type, prefetchable, size, .. } => {
                let is_64bit = address_type == MemoryBarType::Width64;
                let request = BarRequest { size, kind: BarKind::Memory { is_64bit, prefetchable } };
                let placed = windows.allocate(request).map_err(|error| alloc::format!("BAR{index}: {error}"))?;
                match is_64bit {
                    true => root.set_bar_64(address, index, placed.pci_address),
                    false => root.set_bar_32(address, index, placed.pci_address as u32),
                }
                memory_bars[usize::from(index)] = PhysRange::new(placed.cpu_address, size);
            }
            BarInfo::IO { size, .. } => {
                let request = BarRequest { size: size.into(), kind: BarKind::Io };
                let placed = windows.allocate(request).map_err(|error| alloc::format!("BAR{index}: {error}"))?;
                root.set_bar_32(address, index, placed.pci_address as u32);
                command |= Command::IO_SPACE;
            }
        }
    }
    root.set_command(address, command);
    Ok(memory_bars)
}

/// Lets `function` master the bus: start DMA. Only once its DMA route exists.
pub fn enable_dma(bus: &PciBus, function: &PciFunction) {
    let mut root = bus.root.lock();
    let address = config_address(function.address);
    let (_, command) = root.get_status_command(address);
    root.set_command(address, command | Command::BUS_MASTER);
}

/// The function's address as `virtio-drivers`' configuration-space access takes it.
pub fn config_address(function: pci_dt::PciFunction) -> DeviceFunction {
    DeviceFunction { bus: function.bus(), device: function.device(), function: function.function() }
}

/// How many MSI-X vectors `function`'s table holds.
pub fn msix_vectors(bus: &PciBus, function: &PciFunction) -> Result<u16, String> {
    let root = bus.root.lock();
    msix_capability(bus, function, &root).map(|(_, capability)| capability.vectors)
}

/// `function`'s MSI-X capability: where it is in configuration space, and what it says.
fn msix_capability(
    bus: &PciBus,
    function: &PciFunction,
    root: &Root,
) -> Result<(CapabilityInfo, MsixCapability), String> {
    let address = config_address(function.address);
    let found = root.capabilities(address).find(|capability| capability.id == msix::CAPABILITY_ID);
    let header = found.ok_or("it has no MSI-X capability")?;
    let capability = MsixCapability::decode(header.private_header, bus.read_config(function, header.offset + 4)?)
        .map_err(|error| alloc::format!("{error}"))?;
    Ok((header, capability))
}

/// Programs `entries` as vectors 0, 1, ... of `function`'s MSI-X table and enables MSI-X, with
/// INTx disabled (the module documentation of `drivers::msix` gives the order). Returns the
/// capability. Everything that can be refused is checked before the first write, so an error
/// leaves the function as it was.
pub fn enable_msix(bus: &PciBus, function: &PciFunction, entries: &[MsixEntry]) -> Result<MsixCapability, String> {
    let root = bus.root.lock();
    let address = config_address(function.address);
    let (header, capability) = msix_capability(bus, function, &root)?;
    let last = u16::try_from(entries.len()).ok().and_then(|count| count.checked_sub(1)).ok_or("no vector asked for")?;
    capability.entry_offset(last).map_err(|error| alloc::format!("{error}"))?;
    let bar = function.memory_bars[usize::from(capability.table_bar)]
        .ok_or_else(|| alloc::format!("its MSI-X table is in BAR{}, which has no memory", capability.table_bar))?;
    let table = PhysRange::new(bar.start().add(u64::from(capability.table_offset)), capability.table_bytes())
        .filter(|table| bar.covers(table))
        .ok_or_else(|| alloc::format!("its MSI-X table runs past the end of BAR{} {bar}", capability.table_bar))?;
    let table_base =
        arch::mmu::map_device(table).map_err(|error| alloc::format!("cannot map its MSI-X table: {error:?}"))?;
    // MSI and MSI-X must not both be on (PCIe 6.0, 7.7.1.2): MSI Enable, bit 0 of its Message
    // Control, is cleared first.
    if let Some(msi) = root.capabilities(address).find(|capability| capability.id == msix::MSI_CAPABILITY_ID) {
        let dword = bus.read_config(function, msi.offset)?;
        bus.write_config(function, msi.offset, dword & !(1 << 16))?;
    }
    // Enabled with every vector masked while the entries are written (as Linux's
    // `msix_capability_init`), then unmasked as a whole. The dword's low half (ID, next) is
    // read-only and written back as read.
    let dword = bus.read_config(function, header.offset)?;
    let keep = (dword >> 16) as u16 & !(msix::ENABLE | msix::FUNCTION_MASK);
    let write_control =
        |bits: u16| bus.write_config(function, header.offset, u32::from(keep | bits) << 16 | (dword & 0xffff));
    write_control(msix::ENABLE | msix::FUNCTION_MASK)?;
    for (vector, entry) in entries.iter().enumerate() {
        // Checked above: every vector up to `last` has an entry.
        let offset = capability.entry_offset(vector as u16).unwrap_or(0) - u64::from(capability.table_offset);
        let slot = table_base.add(offset).as_mut_ptr::<u32>();
        for (word, value) in entry.words().into_iter().enumerate() {
            // SAFETY: the entry lies inside the table just mapped as device memory, which the
            // function reads only once MSI-X is enabled and unmasked.
            unsafe { slot.add(word).write_volatile(value) };
        }
        // Read back, so the entry has reached the function before the enable (a write through
        // another window, the ECAM) can overtake it.
        // SAFETY: as above.
        let _ = unsafe { slot.add(3).read_volatile() };
    }
    let (_, command) = root.get_status_command(address);
    bus.write_config(function, 4, u32::from(command.bits() | msix::INTX_DISABLE))?;
    write_control(msix::ENABLE)?;
    Ok(capability)
}

/// Turns `function`'s MSI-X off again (Function Mask set, Enable cleared) and lets INTx through:
/// for a function whose driver did not start after its vectors were set up.
pub fn disable_msix(bus: &PciBus, function: &PciFunction) -> Result<(), String> {
    let root = bus.root.lock();
    let address = config_address(function.address);
    let found = root.capabilities(address).find(|capability| capability.id == msix::CAPABILITY_ID);
    let header = found.ok_or("it has no MSI-X capability")?;
    let dword = bus.read_config(function, header.offset)?;
    let control = ((dword >> 16) as u16 | msix::FUNCTION_MASK) & !msix::ENABLE;
    bus.write_config(function, header.offset, u32::from(control) << 16 | (dword & 0xffff))?;
    let (_, command) = root.get_status_command(address);
    bus.write_config(function, 4, u32::from(command.bits() & !msix::INTX_DISABLE))
}

impl PciBus {
    /// The 32-bit configuration register at `offset` of `function`.
    pub fn read_config(&self, function: &PciFunction, offset: u8) -> Result<u32, String> {
        // SAFETY: inside the function's 4 KiB of the ECAM window, mapped as device memory.
        self.config_register(function, offset).map(|register| unsafe { register.read_volatile() })
    }

    /// Writes the 32-bit configuration register at `offset` of `function`.
    fn write_config(&self, function: &PciFunction, offset: u8, value: u32) -> Result<(), String> {
        // SAFETY: as in `read_config`; callers hold the root's lock, which orders every access.
        self.config_register(function, offset).map(|register| unsafe { register.write_volatile(value) })
    }

    fn config_register(&self, function: &PciFunction, offset: u8) -> Result<*mut u32, String> {
        let space = self.bridge.config_space(function.address).ok_or("its bus is not the bridge's")?;
        let from_ecam = space.start().offset_from(self.bridge.ecam.start()).ok_or("outside the ECAM window")?;
        Ok(self.ecam.add(from_ecam + u64::from(offset & !3)).as_mut_ptr::<u32>())
    }
}
