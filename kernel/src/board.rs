//! Board code: which driver serves which device the devicetree lists.
//!
//! Nothing here names an address or a board. A new board (the Raspberry Pi 4's mini UART,
//! say) adds a `compatible` match here and a driver in `drivers`; the generic kernel does not
//! change.

use dma::Constraints;
use drivers::pl011::Pl011;
use log::{info, warn};
use platform::devicetree::{Device, Devicetree};

use crate::console::{self, ConsoleDevice};
use crate::dma::{pools, DmaDevice, Route};

/// Why the console could not be started. Nothing can print this: the caller stops.
#[derive(Debug)]
pub enum ConsoleError {
    NoStdoutPath,
    Devicetree,
    NoDriver,
    Mapping,
}

/// Starts the console named by `/chosen/stdout-path`; returns its node name.
pub fn start_console(devicetree: &Devicetree<'static>) -> Result<&'static str, ConsoleError> {
    let device = devicetree.stdout().map_err(|_| ConsoleError::Devicetree)?.ok_or(ConsoleError::NoStdoutPath)?;
    let registers = *device.regs.first().ok_or(ConsoleError::Devicetree)?;
    if !device.is_compatible(Pl011::COMPATIBLE) {
        return Err(ConsoleError::NoDriver);
    }
    let mapped = arch::mmu::map_device(registers).map_err(|_| ConsoleError::Mapping)?;
    // SAFETY: freshly mapped as device memory; the console is the UART's only user.
    let uart = unsafe { Pl011::new(mapped.as_mut_ptr()) };
    console::install(ConsoleDevice::Pl011(uart));
    Ok(device.name)
}

/// Starts a driver for every DMA-capable device that has one, each with its own DMA handle,
/// and prints the DMA table: one row per device, how its transfers reach memory.
pub fn start_dma_devices(devices: &[Device<'static>]) {
    info!("DMA devices:");
    for device in devices {
        let Some(&registers) = device.regs.first() else { continue };
        let transport = match crate::virtio::open_transport(registers) {
            Ok(Some(transport)) => transport,
            Ok(None) => continue, // an empty virtio-mmio slot
            Err(problem) => {
                warn!("  {:<22} {problem}", device.name);
                continue;
            }
        };
        let dma = match dma_device(device) {
            Ok(dma) => dma,
            Err(problem) => {
                warn!("  {:<22} not started: {problem}", device.name);
                continue;
            }
        };
        match crate::virtio::start(transport, dma) {
            Ok(kind) => info!("  {:<22} {kind:<8} {}", device.name, device.dma),
            Err(problem) => warn!("  {:<22} not started: {problem}", device.name),
        }
    }
}

/// The DMA handle for `device`: through its restricted pool if it names one (force bounce,
/// contract rule 12), otherwise direct through its bus windows.
fn dma_device(device: &Device<'static>) -> Result<DmaDevice, &'static str> {
    let route = match device.dma.pool {
        Some(name) => Route::Restricted(pools::pool(name).ok_or("its restricted pool was not created")?),
        None => Route::Direct(device.dma.clone()),
    };
    let dma_mask = device.dma.limit().map_or(u64::MAX, |limit| limit.as_u64() - 1);
    let constraints = Constraints::NONE.with_dma_mask(dma_mask);
    Ok(DmaDevice::new(device.name, route, device.dma.coherent, constraints, pools::kernel_memory()))
}
