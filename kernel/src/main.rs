//! The kernel: boots from the devicetree, prints what it found, then runs its tests or its
//! demo and powers off.
//!
//! By the time [`kernel_main`] runs, `arch` has turned the MMU on and the kernel executes at
//! its link address, with only the devicetree mapped besides the image. Boot then goes:
//!
//! 1. validate the devicetree ([`platform::devicetree`]); a malformed one is reported on the
//!    first UART that can be found in it anyway, and the CPU parks;
//! 2. find the console through `/chosen/stdout-path` ([`board`]) and start the logger; a
//!    `stdout-path` that leads nowhere usable is reported the same way, and boot stops;
//! 3. compute the memory map, build the linear map of RAM, start the heap ([`memory`]);
//! 4. run the kernel tests (`kernel.test` on the command line) or the demo;
//! 5. power off ([`power`]).
// The kernel is a binary: its public items are not an API (see the workspace lints).
#![allow(missing_docs)]
#![no_std]
#![no_main]

extern crate alloc;

mod bench;
mod block;
mod board;
mod console;
mod demo;
mod dma_engine;
mod dma_platform;
mod edu;
mod interrupts;
mod iommu;
mod its;
mod memory;
mod msi;
mod net;
mod nvme;
mod pci;
mod power;
mod smp;
mod testing;
mod tests;
mod virtio;

use addr::PhysRange;
use arch::BootInfo;
use log::{error, info, warn};
use platform::devicetree::Devicetree;
use spin::Once;

/// What boot discovered, for everything that runs after it.
pub struct Machine {
    pub boot: BootInfo,
    pub devicetree: Devicetree<'static>,
    pub memory: memory::Memory,
}

static MACHINE: Once<Machine> = Once::new();

/// The machine, once boot has finished discovering it.
pub fn machine() -> &'static Machine {
    MACHINE.get().expect("machine described at boot")
}

/// Words of `/chosen/bootargs` the kernel understands.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootOptions {
    /// `kernel.test`: run the kernel tests instead of the demo.
    pub run_tests: bool,
    /// `kernel.semihosting`: a semihosting host (QEMU `-semihosting`) takes the exit status.
    pub semihosting: bool,
    /// `kernel.fault-demo`: read an unmapped address, to show how the kernel reports a crash.
    pub fault_demo: bool,
    /// `kernel.bench`: measure disk throughput on every route instead of the demo.
    pub bench: bool,
    /// `kernel.poll`: drivers poll for completions instead of sleeping until an interrupt.
    pub poll: bool,
}

impl BootOptions {
    /// The options in `bootargs`, and the first `kernel.` word the kernel does not know (other
    /// prefixes, `iommu.` and `test.`, belong to the code that reads them).
    fn parse(bootargs: &str) -> (Self, Option<&str>) {
        let mut options = Self::default();
        let mut unknown = None;
        for word in bootargs.split_whitespace() {
            match word {
                "kernel.test" => options.run_tests = true,
                "kernel.semihosting" => options.semihosting = true,
                "kernel.fault-demo" => options.fault_demo = true,
                "kernel.bench" => options.bench = true,
                "kernel.poll" => options.poll = true,
                _ if word.starts_with("kernel.") => unknown = unknown.or(Some(word)),
                _ => {}
            }
        }
        (options, unknown)
    }
}

#[unsafe(no_mangle)]
pub fn kernel_main(boot: BootInfo) -> ! {
    // Without a devicetree there is no console to complain on: stop where a debugger sees it.
    let blob = devicetree_blob(boot.devicetree).unwrap_or_else(|| arch::power::park());
    let devicetree = Devicetree::parse(blob, devicetree_storage()).unwrap_or_else(|error| {
        // Nothing of the blob can be trusted, not even how to power off: say what is wrong on
        // whatever console can be found, and stop.
        if board::rescue_console(blob).is_some() {
            console::start_logger();
            error!("{error}");
            error!("the devicetree is malformed: halting");
        }
        arch::power::park()
    });
    let (options, unknown) = BootOptions::parse(devicetree.bootargs());
    power::set_semihosting(options.semihosting);
    let console = board::start_console(&devicetree);
    console::start_logger();
    match console {
        Ok(name) => info!("console: {name}"),
        Err(problem) => rescue_console(blob, &devicetree, problem),
    }
    // Before anything else can fail: every error from here on ends in a power-off.
    start_power_off(&devicetree);
    if let Some(word) = unknown {
        warn!(
            "bootargs: `{word}` is not a kernel option (known: kernel.test, kernel.semihosting, kernel.fault-demo, kernel.bench, kernel.poll)"
        );
    }
    interrupts::set_polling(options.poll);
    if let Err(message) = describe_machine(boot, devicetree) {
        error!("boot failed: {message}");
        power::stop(power::Outcome::Failure);
    }
    if options.fault_demo {
        provoke_fault();
    }
    let outcome = match (options.run_tests, options.bench) {
        (true, _) => testing::run_all(),
        (false, true) => bench::run(),
        (false, false) => demo::run(),
    };
    power::stop(outcome)
}

/// Room for the kernel's canonical copy of the devicetree (QEMU's is 36 KiB, the Pi 4's 55 KiB).
const DEVICETREE_CAPACITY: usize = 256 << 10;
static mut DEVICETREE_COPY: [u8; DEVICETREE_CAPACITY] = [0; DEVICETREE_CAPACITY];

/// The devicetree blob the loader passed, as it is; `None` if there is none.
fn devicetree_blob(blob: PhysRange) -> Option<&'static [u8]> {
    if blob.is_empty() {
        return None;
    }
    let start = arch::layout::phys_to_virt(blob.start());
    // SAFETY: the boot code mapped the blob read-only in the linear map, for good.
    Some(unsafe { core::slice::from_raw_parts(start.as_ptr::<u8>(), blob.size() as usize) })
}

/// Where the validated, canonical copy of the devicetree lives.
fn devicetree_storage() -> &'static mut [u8] {
    // SAFETY: called once, at boot, before anything else could refer to the copy.
    unsafe { core::slice::from_raw_parts_mut((&raw mut DEVICETREE_COPY).cast::<u8>(), DEVICETREE_CAPACITY) }
}

/// The devicetree names no console the kernel can start: find one by other means, say what is
/// wrong, and stop with a failure (the devicetree needs fixing; booting on would hide it).
fn rescue_console(blob: &'static [u8], devicetree: &Devicetree<'static>, problem: board::ConsoleError<'static>) -> ! {
    start_power_off(devicetree);
    // With no console at all, the status is all there is.
    let Some(console) = board::rescue_console(blob) else { power::stop(power::Outcome::Failure) };
    error!("console: {problem}");
    error!("console: using {} ({}, {}) instead", console.name, console.compatible, console.found_by);
    for guess in &console.guesses {
        warn!("console: {guess}");
    }
    error!("boot failed: the devicetree names no console this kernel can start");
    power::stop(power::Outcome::Failure)
}

// `MemoryError` is large, and this runs before the heap exists to box it (see `memory`).
#[allow(clippy::result_large_err)]
fn describe_machine(boot: BootInfo, devicetree: Devicetree<'static>) -> Result<(), memory::MemoryError> {
    info!("machine: {}", devicetree.model());
    let cpus = devicetree.cpus();
    info!("cpus: {} (secondary start: {}), entered at EL{}", cpus.count, cpus.enable_method, boot.entry_el);
    info!("timer: {} Hz", arch::timer::frequency());
    info!("kernel image: {} (linked at {:#x})", boot.image, arch::layout::KERNEL_IMAGE_BASE);
    info!("devicetree: {} ({} bytes in use)", boot.devicetree, devicetree.size_in_bytes());
    smp::number_boot_cpu(&devicetree);
    let plan = dma_platform::pools::plan(&devicetree)?;
    let memory = memory::init(&boot, &devicetree, &plan)?;
    if let Err(problem) = interrupts::start(&devicetree) {
        error!("interrupts: {problem}: every driver polls");
    }
    smp::start_all(&devicetree);
    dma_platform::start_checker(devicetree.bootargs());
    dma_platform::start_tracer(devicetree.bootargs());
    board::start_dma_devices(&devicetree, &plan.devices);
    board::start_pci_devices(&devicetree);
    interrupts::log_routes();
    MACHINE.call_once(|| Machine { boot, devicetree, memory });
    Ok(())
}

/// Finds how to power off: PSCI, or else the Raspberry Pi's watchdog.
fn start_power_off(devicetree: &Devicetree<'static>) {
    let psci = devicetree.psci().unwrap_or_else(|error| {
        warn!("{error}: powering off will not be possible");
        None
    });
    power::set_psci(psci);
    if psci.is_none() {
        board::start_watchdog(devicetree);
    }
}

/// Reads a low address, which nothing maps once boot is done: the exception handler reports
/// the data abort in words and the panic handler stops the machine.
fn provoke_fault() {
    const UNMAPPED: usize = 0x1000;
    info!("fault demo: reading {UNMAPPED:#x}, which is not mapped");
    // SAFETY: nothing is mapped at this address, so the read cannot alias or change memory: it
    // raises a synchronous data abort, which the exception handler reports and turns into a
    // panic that stops the machine (were it mapped after all, the read only returns a value).
    let value = unsafe { (UNMAPPED as *const u64).read_volatile() };
    info!("fault demo: read {value:#x}, but the address should not be mapped");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::emergency_print(format_args!("\nkernel panic: {info}\n"));
    testing::report_panic_during_test();
    power::stop(power::Outcome::Failure)
}
