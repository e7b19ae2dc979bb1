//! Board code: which driver serves which device the devicetree lists.
//!
//! Nothing here names an address or a board. A new board adds a `compatible` match here and
//! a driver in `drivers`; the generic kernel does not change. The Raspberry Pi 4 came in this
//! way: its console is the mini UART, not the PL011 that QEMU `virt` has.

use alloc::string::String;

use addr::PhysRange;
use drivers::bcm2835_dma::Controller;
use drivers::bcm2835_pm::PowerManagement;
use drivers::mini_uart::MiniUart;
use drivers::pl011::Pl011;
use log::{info, warn};
use platform::devicetree::{Device, Devicetree, RescuedConsole};
use swiotlb::Constraints;

use crate::console::{self, ConsoleDevice};
use crate::dma_platform::{self, DmaDevice, Route, pools};
use crate::interrupts::Source;
use crate::iommu;
use crate::pci::{self, PciFunction};

/// virtio devices address all 64 bits (virtio 1.x, 2.4 "Virtqueues").
const VIRTIO_DMA_MASK: u64 = u64::MAX;
/// NVMe PRP entries are 64-bit addresses (NVMe Base 2.0, 4.3.1).
const NVME_DMA_MASK: u64 = u64::MAX;

/// The UARTs the kernel has a driver for, by `compatible`.
const CONSOLE_DRIVERS: [&str; 2] = [Pl011::COMPATIBLE, MiniUart::COMPATIBLE];

/// Why the console named by `/chosen/stdout-path` could not be started.
#[derive(Debug)]
pub enum ConsoleError<'a> {
    NoStdoutPath,
    Devicetree(platform::devicetree::Error<'a>),
    NoRegisters(&'a str),
    NoDriver(&'a str),
    Mapping(&'a str),
}

impl core::fmt::Display for ConsoleError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConsoleError::NoStdoutPath => write!(f, "the devicetree has no /chosen/stdout-path"),
            ConsoleError::Devicetree(error) => write!(f, "{error}"),
            ConsoleError::NoRegisters(name) => write!(f, "the console {name} has no `reg`"),
            ConsoleError::NoDriver(name) => {
                write!(f, "the console {name} is none of the UARTs this kernel drives ({})", CONSOLE_DRIVERS.join(", "))
            }
            ConsoleError::Mapping(name) => write!(f, "the console {name}'s registers cannot be mapped"),
        }
    }
}

/// Starts the console named by `/chosen/stdout-path`; returns its node name.
pub fn start_console(devicetree: &Devicetree<'static>) -> Result<&'static str, ConsoleError<'static>> {
    let device = devicetree.stdout().map_err(ConsoleError::Devicetree)?.ok_or(ConsoleError::NoStdoutPath)?;
    let registers = *device.regs.first().ok_or(ConsoleError::NoRegisters(device.name))?;
    let compatible = CONSOLE_DRIVERS
        .into_iter()
        .find(|compatible| device.is_compatible(compatible))
        .ok_or(ConsoleError::NoDriver(device.name))?;
    start_uart(compatible, registers).map_err(|()| ConsoleError::Mapping(device.name))?;
    Ok(device.name)
}

/// Starts a console the devicetree does not name as one, or names wrongly: the UART
/// `stdout-path` leads to if it can be read at all, else the first UART with a driver, read
/// leniently from `blob` even if it failed validation. Returns what was found, for the log.
pub fn rescue_console(blob: &'static [u8]) -> Option<RescuedConsole<'static>> {
    let console = platform::devicetree::rescue_console(blob, &CONSOLE_DRIVERS)?;
    start_uart(console.compatible, console.registers).ok()?;
    Some(console)
}

/// Maps the UART with `compatible` at `registers` and makes it the console.
fn start_uart(compatible: &str, registers: PhysRange) -> Result<(), ()> {
    let mapped = arch::mmu::map_device(registers).map_err(|_| ())?;
    let uart = match compatible == Pl011::COMPATIBLE {
        // SAFETY: freshly mapped as device memory; the console is the UART's only user.
        true => ConsoleDevice::Pl011(unsafe { Pl011::new(mapped.as_mut_ptr()) }),
        // SAFETY: as above.
        false => ConsoleDevice::MiniUart(unsafe { MiniUart::new(mapped.as_mut_ptr()) }),
    };
    console::install(uart);
    Ok(())
}

/// Finds the Raspberry Pi's power-management watchdog, the way to power off without PSCI.
pub fn start_watchdog(devicetree: &Devicetree<'static>) {
    let Ok(found) = devicetree.compatible_devices(&[PowerManagement::COMPATIBLE]) else { return };
    let Some(&registers) = found.first().and_then(|device| device.regs.first()) else { return };
    match arch::mmu::map_device(registers) {
        // SAFETY: the PM block's registers, freshly mapped as device memory, for power-off only.
        Ok(mapped) => crate::power::set_watchdog(unsafe { PowerManagement::new(mapped.as_mut_ptr()) }),
        Err(error) => warn!("watchdog {registers}: cannot map its registers ({error:?}): powering off will halt"),
    }
}

/// Starts a driver for every DMA-capable device that has one, each with its own DMA handle,
/// and prints the DMA table: one row per device, how its transfers reach memory. Devices start
/// in ascending register address, the order virtio devices are numbered in (`virtio-blk0` is
/// the lowest-addressed disk).
pub fn start_dma_devices(devicetree: &Devicetree<'static>, devices: &[Device<'static>]) {
    info!("DMA devices:");
    let mut by_address: alloc::vec::Vec<&Device<'static>> = devices.iter().collect();
    by_address.sort_by_key(|device| device.regs.first().map(|registers| registers.start()));
    for device in by_address {
        let started = if device.is_compatible(Controller::COMPATIBLE) {
            start_dma_engine(devicetree, device)
        } else {
            start_virtio(devicetree, device)
        };
        match started {
            Ok(Some(name)) => info!("  {:<22} {name:<11} {}", device.name, device.dma),
            Ok(None) => {} // an empty virtio-mmio slot
            Err(problem) => warn!("  {:<22} not started: {problem}", device.name),
        }
    }
}

fn start_virtio(devicetree: &Devicetree<'static>, device: &Device<'static>) -> Result<Option<String>, String> {
    let registers = *device.regs.first().ok_or("no registers")?;
    let Some(transport) = crate::virtio::open_transport(registers)? else { return Ok(None) };
    let dma = dma_device(device, VIRTIO_DMA_MASK)?;
    // A virtio-mmio device has one interrupt (virtio 1.2, 4.2.2); without it, it is polled.
    let interrupt = devicetree.gic_interrupts(device).map_err(|error| alloc::format!("{error}"))?.first().copied();
    match crate::virtio::start_mmio(transport, dma, interrupt.map(Into::into)) {
        Ok(name) => Ok(Some(name.into())),
        Err(not_started) => Err(alloc::format!("{not_started}")),
    }
}

fn start_dma_engine(devicetree: &Devicetree<'static>, device: &Device<'static>) -> Result<Option<String>, String> {
    let dma = dma_device(device, crate::dma_engine::ENGINE_DMA_MASK)?;
    Ok(Some(crate::dma_engine::start(devicetree, device, dma)?))
}

/// Starts the SMMU, enumerates PCIe, gives each function behind the SMMU a domain of its
/// own and starts its driver; prints the PCIe device table.
pub fn start_pci_devices(devicetree: &Devicetree<'static>) {
    match iommu::start(devicetree) {
        Ok(_) => {}
        Err(problem) => warn!("iommu: not started: {problem}; devices behind it stay off"),
    }
    let bus = match pci::start(devicetree) {
        Ok(Some(bus)) => bus,
        Ok(None) => return,
        Err(problem) => return warn!("pci: {problem}"),
    };
    report_force_bounce(devicetree, bus);
    info!("PCIe devices:");
    info!(
        "  {:<8} {:<9} {:<6} {:<8} {:<6} {:<7} {:<9} {:<6}",
        "address", "id", "driver", "stream", "domain", "granule", "trust", "interrupt"
    );
    for function in &bus.functions {
        let id = alloc::format!("{:04x}:{:04x}", function.info.vendor_id, function.info.device_id);
        if function.info.class == PCI_CLASS_BRIDGE {
            info!("  {:<8} {id:<9} bridge (no DMA of its own)", function.address);
            continue;
        }
        let driver = match (crate::nvme::is_nvme(&function.info), crate::virtio::is_pci_disk(&function.info)) {
            (true, _) => PciDriver::Nvme,
            (false, true) => PciDriver::VirtioBlock,
            (false, false) if crate::edu::is_edu(&function.info) => PciDriver::Edu,
            (false, false) => {
                warn!("  {:<8} {id:<9} not started: no driver", function.address);
                continue;
            }
        };
        let name: &'static str = alloc::boxed::Box::leak(function.name().into_boxed_str());
        let (dma, row) = match pci_dma_device(devicetree, bus, name, function, driver.constraints()) {
            Ok(device) => device,
            Err(problem) => {
                warn!("  {:<8} {id:<9} not started: {problem}", function.address);
                continue;
            }
        };
        pci::enable_dma(bus, function);
        let (interrupt, route) = driver.interrupt(bus, function, &dma);
        match driver.start(name, function, dma, interrupt) {
            Ok(()) => info!("  {:<8} {id:<9} {:<6} {row} {route}", function.address, driver.name()),
            Err(problem) => {
                warn!("  {:<8} {id:<9} not started: {problem}", function.address);
                // Its vectors must not outlive its driver: MSI-X off, INTx as it was.
                if let Some(Source::Message { .. }) = interrupt
                    && let Err(problem) = pci::disable_msix(bus, function)
                {
                    warn!("  {:<8} MSI-X left on: {problem}", function.address);
                }
            }
        }
    }
}

/// The PCIe functions this kernel drives.
#[derive(Clone, Copy)]
enum PciDriver {
    VirtioBlock,
    Nvme,
    /// QEMU's teaching device (`docs/exercise-edu.md`).
    Edu,
}

impl PciDriver {
    fn name(self) -> &'static str {
        match self {
            PciDriver::VirtioBlock => "block",
            PciDriver::Nvme => "nvme",
            PciDriver::Edu => "edu",
        }
    }

    /// What the device imposes on every streaming mapping: NVMe's PRP entries carry the
    /// buffer's offset within its 4 KiB page, so mappings must keep it (contract rule 1);
    /// `edu` reaches only 28 address bits, which the IOMMU domain's IOVA limit follows.
    fn constraints(self) -> Constraints {
        match self {
            PciDriver::VirtioBlock => Constraints::NONE.with_dma_mask(VIRTIO_DMA_MASK),
            PciDriver::Nvme => {
                Constraints::NONE.with_dma_mask(NVME_DMA_MASK).with_min_align_mask(crate::nvme::MIN_ALIGN_MASK)
            }
            PciDriver::Edu => Constraints::NONE.with_dma_mask(crate::edu::DMA_MASK),
        }
    }

    /// The interrupt the driver will wait on, and how the device table shows it: an MSI-X
    /// vector through the ITS where the driver uses one and the machine has an ITS, else INTx.
    fn interrupt(self, bus: &pci::PciBus, function: &PciFunction, dma: &DmaDevice) -> (Option<Source>, String) {
        let intx = match function.intx {
            Some(line) => (Some(Source::Wired(line)), alloc::format!("INTx {} {}", line.kind, line.number)),
            None => (None, "-".into()),
        };
        // NVMe asks for a vector per CPU, one for each I/O queue it will create.
        let (vector, count) = match self {
            PciDriver::Nvme => (crate::nvme::MSIX_VECTOR, crate::nvme::io_queues_wanted()),
            PciDriver::VirtioBlock => (crate::virtio::MSIX_VECTOR, 1),
            PciDriver::Edu => return intx,
        };
        if crate::interrupts::polling() || crate::its::doorbell().is_none() {
            return intx;
        }
        match crate::msi::route(bus, function, dma, vector, count) {
            Ok(route) => (Some(Source::Message { lpi: route.lpi, vectors: route.vectors }), alloc::format!("{route}")),
            Err(problem) => {
                warn!("  {:<8} MSI-X not used ({problem}): INTx instead", function.address);
                intx
            }
        }
    }

    fn start(
        self,
        name: &'static str,
        function: &PciFunction,
        dma: DmaDevice,
        interrupt: Option<Source>,
    ) -> Result<(), String> {
        match self {
            PciDriver::VirtioBlock => {
                crate::virtio::start_pci(function, dma, interrupt).map_err(|error| alloc::format!("{error}"))
            }
            PciDriver::Nvme => {
                crate::nvme::start(name, function, dma, interrupt).map_err(|error| alloc::format!("{error}"))
            }
            PciDriver::Edu => crate::edu::start(name, function, dma).map_err(|error| alloc::format!("{error}")),
        }
    }
}

/// A bridge whose `memory-region` names a restricted pool asks that its devices bounce every
/// transfer through it (force bounce). Behind an IOMMU that is declined, and said so: the SMMU
/// already confines each device to what is mapped for it, in place, and bouncing would only
/// add copies (contract R11; Linux's iommu-dma ignores `swiotlb=force` for the same reason: the
/// "iommu/dma: Respect SWIOTLB force_bounce" thread, 2024, docs/dma-contract.md#thread-force-bounce).
/// Untrusted devices still bounce what does not fill whole granules. A bridge without an
/// IOMMU is granted force bounce, as any direct device is (rule 12).
fn report_force_bounce(devicetree: &Devicetree<'static>, bus: &pci::PciBus) {
    let Some(pool) = bridge_pool(devicetree, bus.bridge.name) else { return };
    match bus.bridge.iommu_map.is_empty() {
        false => warn!(
            "{}: memory-region names restricted pool '{pool}' (force bounce); declined: its devices are behind the IOMMU, which isolates them in place",
            bus.bridge.name
        ),
        true => info!(
            "{}: memory-region names restricted pool '{pool}': with no IOMMU, its devices bounce every transfer through it (force bounce)",
            bus.bridge.name
        ),
    }
}

/// The restricted pool a PCIe host bridge's `memory-region` names, if any.
pub fn bridge_pool(devicetree: &Devicetree<'static>, bridge: &str) -> Option<&'static str> {
    let bridges = devicetree.compatible_devices(&["pci-host-ecam-generic"]).ok()?;
    bridges.iter().find(|device| device.name == bridge)?.dma.pool
}

/// PCI base class 0x06: host and PCI-to-PCI bridges (PCI Code and ID Assignment, 1.7).
const PCI_CLASS_BRIDGE: u8 = 0x06;

/// The DMA handle of a PCIe function, and its device-table columns: translated through a
/// domain of its own when `iommu-map` names the running SMMU; direct, as for any device, when
/// the bridge has no `iommu-map` at all.
fn pci_dma_device(
    devicetree: &Devicetree<'static>,
    bus: &pci::PciBus,
    name: &'static str,
    function: &PciFunction,
    constraints: Constraints,
) -> Result<(DmaDevice, String), String> {
    const UNTRANSLATED: &str = "its DMA would reach an IOMMU the kernel does not drive";
    if bus.bridge.iommu_map.is_empty() {
        return untranslated_pci_device(devicetree, bus, name, constraints);
    }
    let stream = function.stream.ok_or(alloc::format!(
        "no `iommu-map` entry of the host bridge covers requester ID {:#06x}: {UNTRANSLATED}",
        function.address.requester_id()
    ))?;
    let (Some(policy), Some((smmu, phandle))) = (iommu::policy(), iommu::running()) else {
        return Err(alloc::format!(
            "its `iommu-map` names the IOMMU with phandle {:#x}, which is not running: {UNTRANSLATED}",
            stream.iommu
        ));
    };
    if !iommu::translates_for(stream.iommu) {
        let running = phandle.map_or("no phandle".into(), |phandle| alloc::format!("phandle {phandle:#x}"));
        return Err(alloc::format!(
            "its `iommu-map` names phandle {:#x}, which is not the running SMMU {smmu} ({running}): {UNTRANSLATED}",
            stream.iommu
        ));
    }
    let untrusted = policy.is_untrusted(function.address);
    let domain = iommu::attach(name, stream.stream_id, constraints.dma_mask, untrusted)
        .map_err(|error| alloc::format!("cannot attach to the IOMMU {smmu}: {error}"))?;
    let route = Route::Iommu { domain, untrusted, bounce: pools::default_pool() };
    let coherent = crate::pci::bus().is_some_and(|bus| bus.bridge.coherent);
    let trust = if untrusted { "untrusted" } else { "trusted" };
    let row = alloc::format!(
        "{:<8} {:<6} {:<7} {trust:<9}",
        alloc::format!("{:#06x}", stream.stream_id),
        domain.id,
        alloc::format!("{}K", domain.granule_size() >> 10)
    );
    Ok((dma_platform::device(name, route, coherent, constraints), row))
}

/// The DMA handle of a function behind a bridge without an IOMMU: the bridge's DMA description
/// is its devices', so they take the route any direct device takes (its restricted pool, or its
/// `dma-ranges` with the default pool for what they do not reach).
fn untranslated_pci_device(
    devicetree: &Devicetree<'static>,
    bus: &pci::PciBus,
    name: &'static str,
    constraints: Constraints,
) -> Result<(DmaDevice, String), String> {
    let bridges = devicetree
        .compatible_devices(&[platform::pci::HOST_BRIDGE_COMPATIBLE])
        .map_err(|error| alloc::format!("{error}"))?;
    let bridge =
        bridges.iter().find(|device| device.name == bus.bridge.name).ok_or("its bridge is not in the devicetree")?;
    let (route, kind) = match bridge.dma.pool {
        Some(pool) => {
            (Route::Restricted(pools::pool(pool).ok_or("its restricted pool was not created")?), "restricted")
        }
        None => (Route::Direct { windows: bridge.dma.clone(), bounce: pools::default_pool_for(bridge) }, "direct"),
    };
    let row = alloc::format!("{:<8} {:<6} {:<7} {kind:<9}", "-", "-", "-");
    Ok((dma_platform::device(name, route, bridge.dma.coherent, constraints), row))
}

/// The DMA handle for `device`: through its restricted pool if it names one (force bounce,
/// contract rule 12), otherwise direct through its bus windows, bouncing what they do not
/// reach through the default pool. `dma_mask` is what the device itself can address.
pub fn dma_device(device: &Device<'static>, dma_mask: u64) -> Result<DmaDevice, &'static str> {
    let route = match device.dma.pool {
        Some(name) => Route::Restricted(pools::pool(name).ok_or("its restricted pool was not created")?),
        None => Route::Direct { windows: device.dma.clone(), bounce: pools::default_pool_for(device) },
    };
    let constraints = Constraints::NONE.with_dma_mask(dma_mask);
    Ok(dma_platform::device(device.name, route, device.dma.coherent, constraints))
}
