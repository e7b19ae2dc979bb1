//! How the kernel stops: with an exit status for QEMU when tests ran under semihosting,
//! otherwise by asking the PSCI firmware to power off, otherwise (a Raspberry Pi, which has
//! no PSCI) through the watchdog's halt-on-reset, otherwise by parking the CPU.

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

pub fn set_watchdog(watchdog: PowerManagement) {
    WATCHDOG.call_once(|| watchdog);
}

pub fn stop(outcome: Outcome) -> ! {
    if SEMIHOSTING.get().copied().unwrap_or(false) {
        arch::power::semihosting_exit(match outcome {
            Outcome::Success => 0,
            Outcome::Failure => 1,
        });
    }
    match PSCI.get().copied().flatten() {
        Some(conduit) => {
            info!("powering off: PSCI SYSTEM_OFF via {conduit}");
            let refusal = arch::power::psci_system_off(conduit);
            error!("PSCI SYSTEM_OFF refused: {refusal:?}; halting");
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
                error!("the watchdog did not reset the machine within a second; halting");
            }
            None => info!("no PSCI firmware or watchdog to power off: halting"),
        },
    }
    arch::power::park()
}
