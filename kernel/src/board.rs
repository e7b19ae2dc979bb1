//! Board code: which driver serves which device the devicetree lists.
//!
//! Nothing here names an address or a board. A new board (the Raspberry Pi 4's mini UART,
//! say) adds a `compatible` match here and a driver in `drivers`; the generic kernel does not
//! change.

use drivers::pl011::Pl011;
use platform::devicetree::Devicetree;

use crate::console::{self, ConsoleDevice};

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
