//! How the kernel stops: with an exit status for QEMU when tests ran under semihosting,
//! otherwise by asking the PSCI firmware to power off, otherwise by parking the CPU.

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

pub fn set_semihosting(enabled: bool) {
    SEMIHOSTING.call_once(|| enabled);
}

pub fn set_psci(conduit: Option<PsciConduit>) {
    PSCI.call_once(|| conduit);
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
        None => info!("no PSCI firmware to power off: halting"),
    }
    arch::power::park()
}
