//! Stopping the machine: PSCI power-off, semihosting exit, or parking the CPU.
//!
//! PSCI (Arm DEN 0022, "Power State Coordination Interface") is firmware the kernel calls
//! with `hvc` or `smc`; the devicetree's `/psci/method` says which. Semihosting (Arm IHI
//! 0080) is a debugger interface: `hlt #0xf000` asks the debugger, here QEMU started with
//! `-semihosting`, to act; its `SYS_EXIT` makes QEMU exit with a status, which is how kernel
//! tests report to `cargo xtask test`. On a machine without a debugger that instruction
//! would trap, so only call [`semihosting_exit`] when the kernel was asked to.

use smccc::{Hvc, Smc};

/// How the kernel calls the firmware (SMCCC, Arm DEN 0028, 2.5): `hvc` to a hypervisor at EL2,
/// `smc` to secure firmware at EL3. The devicetree's `/psci/method` says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc`: firmware in a hypervisor at EL2 (QEMU `virt` with `virtualization=on`).
    Hvc,
    /// `smc`: secure firmware at EL3.
    Smc,
}

/// Asks the firmware to power the system off. Returns only if it refused.
pub fn psci_system_off(conduit: Conduit) -> smccc::psci::Error {
    let refusal = match conduit {
        Conduit::Hvc => smccc::psci::system_off::<Hvc>(),
        Conduit::Smc => smccc::psci::system_off::<Smc>(),
    };
    match refusal {
        Err(error) => error,
        Ok(()) => smccc::psci::Error::InternalFailure,
    }
}

/// `SYS_EXIT` with `ADP_Stopped_ApplicationExit` and an exit status for the host.
pub fn semihosting_exit(status: u32) -> ! {
    const SYS_EXIT: u64 = 0x18;
    const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: the caller checked that a semihosting host is listening.
    unsafe {
        core::arch::asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
    park()
}

/// Stops this CPU for good, waking only to sleep again.
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
