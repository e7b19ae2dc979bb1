//! Starting the other CPUs: each enters [`secondary_entry`](../entry.s) with its MMU off, takes
//! the boot CPU's translation tables and registers from one shared block, switches to its own
//! stacks and runs a Rust function that never returns.
//!
//! Two ways to start a CPU, as the devicetree's `enable-method` says (Linux's
//! `Documentation/arch/arm64/booting.rst`, "CPU ... enable-method"):
//!
//! - **PSCI** `CPU_ON(target MPIDR, entry point, context)` (Arm DEN 0022, 5.6): firmware (QEMU
//!   itself on `virt`) powers the CPU on at the entry point's physical address.
//! - **The spin table**: firmware parks the CPU in a loop of `WFE`, reading a 64-bit
//!   *release address* (the Raspberry Pi 4's armstub: 0xe0, 0xe8 and 0xf0 for CPUs 1 to 3).
//!   The kernel writes the entry point there, cleans it to memory (the waiting CPU reads with
//!   its caches off), and wakes it with `SEV`.
//!
//! The new CPU runs with the MMU off until it has loaded the tables: its first instructions
//! execute at physical addresses, through the identity map of the image that the boot code
//! built (TTBR0, no longer walked on the boot CPU but still there), and the block it reads
//! must be in memory, not only in the boot CPU's cache.

use aarch64_cpu::registers::*;
use addr::{PhysAddr, VirtAddr};
use smccc::{Hvc, Smc};

use crate::power::Conduit;

/// What a starting CPU loads, in the order `entry.s` reads it.
#[repr(C)]
struct SecondaryStart {
    mair: u64,
    tcr: u64,
    ttbr0: u64,
    ttbr1: u64,
    sctlr: u64,
    exception_stack_top: u64,
    stack_top: u64,
    entry: u64,
    index: u64,
}

#[unsafe(no_mangle)]
static mut SECONDARY_START: SecondaryStart = SecondaryStart {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    ttbr1: 0,
    sctlr: 0,
    exception_stack_top: 0,
    stack_top: 0,
    entry: 0,
    index: 0,
};

unsafe extern "C" {
    fn secondary_entry();
}

/// How a CPU is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// PSCI `CPU_ON` through this conduit.
    Psci(Conduit),
    /// The spin table: the entry point written at this release address.
    SpinTable(PhysAddr),
}

/// Why a CPU could not be asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The firmware refused `CPU_ON`.
    Psci(smccc::psci::Error),
    /// An address the CPU needs is not mapped.
    NotMapped(VirtAddr),
}

/// The stacks a CPU runs on: the tops of its kernel stack (SP_EL0) and exception stack (SP_EL1).
#[derive(Debug, Clone, Copy)]
pub struct Stacks {
    /// One past the highest byte of the kernel stack.
    pub kernel_top: VirtAddr,
    /// One past the highest byte of the exception stack.
    pub exception_top: VirtAddr,
}

/// This CPU's number: its place in the devicetree's list of CPUs, as the kernel recorded it
/// with [`set_this_cpu`] (0 until then). It lives in `TPIDR_EL1`, a register each CPU has
/// for itself that the hardware never uses (Arm ARM D19.2.150): one read, no memory, no lock;
/// Linux keeps its per-CPU offset there.
pub fn this_cpu() -> usize {
    TPIDR_EL1.get() as usize
}

/// Records this CPU's number for [`this_cpu`]: each CPU as soon as it runs (the boot CPU a
/// second time, once the devicetree has said which it is).
pub fn set_this_cpu(index: usize) {
    TPIDR_EL1.set(index as u64);
}

/// The MPIDR of this CPU, its affinity fields only (Arm ARM D19.2.87): what the devicetree's
/// `reg` and PSCI name a CPU by.
pub fn this_cpu_mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// Asks the CPU `mpidr` to start running `entry(index)` on `stacks`. Returns once it was asked:
/// the caller waits for the CPU to say it runs. Not for two CPUs at once: they share the block.
///
/// # Safety
/// `stacks` are mapped, writable, unused by anyone else, and live for good; `entry` never
/// returns.
pub unsafe fn start(
    mpidr: u64,
    method: Method,
    index: usize,
    stacks: Stacks,
    entry: extern "C" fn(usize) -> !,
) -> Result<(), StartError> {
    let block = &raw mut SECONDARY_START;
    // SAFETY: no other CPU reads the block now: the previous one finished with it (the caller
    // waited for it to run), and this one is not started yet.
    unsafe {
        block.write(SecondaryStart {
            mair: MAIR_EL1.get(),
            // The identity map is walked until the new CPU runs at its virtual addresses.
            tcr: TCR_EL1.get() & !(1 << 7),
            ttbr0: TTBR0_EL1.get(),
            ttbr1: TTBR1_EL1.get(),
            sctlr: SCTLR_EL1.get(),
            exception_stack_top: stacks.exception_top.as_u64(),
            stack_top: stacks.kernel_top.as_u64(),
            entry: entry as *const () as u64,
            index: index as u64,
        });
    }
    crate::cache::clean_to_poc(block as u64, size_of::<SecondaryStart>() as u64);
    let entry_point = physical(VirtAddr::new(secondary_entry as *const () as u64))?;
    match method {
        Method::Psci(Conduit::Hvc) => smccc::psci::cpu_on::<Hvc>(mpidr, entry_point.as_u64(), 0),
        Method::Psci(Conduit::Smc) => smccc::psci::cpu_on::<Smc>(mpidr, entry_point.as_u64(), 0),
        Method::SpinTable(release) => {
            let slot = crate::layout::phys_to_virt(release);
            physical(slot)?;
            // SAFETY: the release address is the firmware's, in RAM the linear map covers, and
            // only the parked CPU reads it.
            unsafe { slot.as_mut_ptr::<u64>().write_volatile(entry_point.as_u64()) };
            crate::cache::clean_to_poc(slot.as_u64(), 8);
            aarch64_cpu::asm::sev();
            Ok(())
        }
    }
    .map_err(StartError::Psci)
}

fn physical(address: VirtAddr) -> Result<PhysAddr, StartError> {
    crate::mmu::translate_in_hardware(address, false).ok_or(StartError::NotMapped(address))
}

/// Wakes every CPU waiting in [`wait_for_event`], after making this CPU's stores visible to
/// them (`DSB ISH`, then `SEV`): one that looks after waking sees what was written before.
pub fn wake_all() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
    aarch64_cpu::asm::sev();
}

/// Sleeps until an event: [`wake_all`] from another CPU, or one already pending, in which case
/// it returns at once (so a wake-up between a check and this call is not lost).
pub fn wait_for_event() {
    aarch64_cpu::asm::wfe();
}
