//! How the kernel stops: by asking the PSCI firmware to power off, otherwise (a Raspberry Pi,
//! which has no PSCI) through the watchdog's halt-on-reset, otherwise by parking the CPU.
//!
//! A power-off carries no status, yet whoever started the kernel under QEMU wants to know
//! whether it failed. With `kernel.semihosting` (QEMU `-semihosting`, which xtask always
//! passes) a failure exits through the semihosting host with status 1 instead: any error, from
//! the first line on the console to the last test, ends QEMU with a non-zero status.

use drivers::bcm2835_pm::PowerManagement;
use log::{error, info};
use platform::devicetree::PsciConduit;
use spin::Once;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

static SEMIHOSTING: Once<bool> = Once::new();
static PSCI: Once<Option<PsciConduit>> = Once::new();
static WATCHDOG: Once<PowerManagement> = Once::new();

pub fn set_semihosting(enabled: bool) {
    SEMIHOSTING.call_once(|| enabled);
}

pub fn set_psci(conduit: Option<PsciConduit>) {
    PSCI.call_once(|| conduit);
}

/// How to call the PSCI firmware, if the devicetree describes one.
pub fn psci() -> Option<arch::power::Conduit> {
    PSCI.get().copied().flatten().map(calling)
}

fn calling(conduit: PsciConduit) -> arch::power::Conduit {
    match conduit {
        PsciConduit::Hvc => arch::power::Conduit::Hvc,
        PsciConduit::Smc => arch::power::Conduit::Smc,
    }
}

pub fn set_watchdog(watchdog: PowerManagement) {
    WATCHDOG.call_once(|| watchdog);
}

/// Stops the machine. A failure under a semihosting host ends QEMU with status 1, so that
/// whoever started it sees the failure; a success powers off the way the board does (PSCI, the
/// Pi's watchdog), which QEMU turns into status 0. Without any of these the CPU parks.
pub fn stop(outcome: Outcome) -> ! {
    let semihosting = SEMIHOSTING.get().copied().unwrap_or(false);
    if semihosting && outcome == Outcome::Failure {
        error!("stopping with status 1 (semihosting exit)");
        arch::power::semihosting_exit(1);
    }
    match PSCI.get().copied().flatten() {
        Some(conduit) => {
            info!("powering off: PSCI SYSTEM_OFF via {conduit}");
            let refusal = arch::power::psci_system_off(calling(conduit));
            error!("PSCI SYSTEM_OFF refused: {refusal:?}");
        }
        None => match WATCHDOG.get() {
            Some(watchdog) => {
                info!("powering off: watchdog reset into the firmware's halt partition");
                watchdog.halt_via_reset();
                // The reset takes effect a few watchdog ticks later, not at the write.
                let asked = arch::timer::uptime();
                while arch::timer::uptime() - asked < core::time::Duration::from_secs(1) {
                    core::hint::spin_loop();
                }
                error!("the watchdog did not reset the machine within a second");
            }
            None => info!("no PSCI firmware or watchdog to power off"),
        },
    }
    if semihosting {
        arch::power::semihosting_exit(0);
    }
    error!("halting");
    arch::power::park()
}
