//! Every CPU the devicetree lists, started at boot.
//!
//! The loader starts one CPU; the others wait for the kernel (`arch::smp` says how: PSCI
//! `CPU_ON` on QEMU `virt`, the spin table on a Raspberry Pi 4). Each is started in turn, on a
//! kernel stack and an exception stack of its own, and says it runs by counting itself online;
//! the boot CPU waits for that, at most [`START_TIMEOUT`], before starting the next (they
//! share the block the new CPU reads its set-up from). A CPU that does not come is reported and
//! left alone: the kernel carries on with those that did.
//!
//! Once online a CPU drops the identity map its first instructions needed, records its MPIDR,
//! brings up its own part of the GIC and sleeps in `WFI` until [`on_every_cpu`] wakes it with
//! an SGI to run a function on every online CPU at once (the boot CPU too). The sleep is the
//! race-free one of `arch::interrupt::wait_until`. Without a GIC a CPU waits with `WFE` for
//! `SEV` instead; that is not the default because QEMU runs `WFE` as a yield, and a CPU spinning
//! there made the boot CPU miss device interrupts on a GICv2 (chapter 14).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use core::time::Duration;
use spin::Mutex;

use addr::VirtAddr;
use arch::smp::{Method, Stacks};
use log::{error, info, warn};
use platform::devicetree::{CpuStart, Devicetree, MAX_CPUS};

/// Each CPU's kernel stack (SP_EL0) and exception stack (SP_EL1).
pub const STACK_BYTES: usize = 64 << 10;
const EXCEPTION_STACK_BYTES: usize = 16 << 10;
/// How long a CPU may take from being asked to start to counting itself online: it first checks
/// that its timer interrupts (up to 100 ms) and starts its LPIs (ITS commands, up to 100 ms
/// each).
const START_TIMEOUT: Duration = Duration::from_secs(1);
/// Written by a CPU that has not said what it is.
const UNKNOWN: u64 = u64::MAX;

/// CPUs running the kernel, the boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// The MPIDR each CPU read from itself, by its place in the devicetree's list.
static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(UNKNOWN) }; MAX_CPUS];

/// The work [`on_every_cpu`] hands out, while it waits for it to finish.
static WORK: Mutex<Option<&'static (dyn Fn(usize) + Sync)>> = Mutex::new(None);
/// Incremented for each piece of work: a CPU runs work it has not seen.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// CPUs (besides the caller) done with the current work.
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// Each started CPU's kernel stack, its lowest address (0: none).
static STACK_BOTTOMS: PerCpu<AtomicU64> = PerCpu::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// CPUs the devicetree lists, whether or not they start (1 if the list cannot be read).
static LISTED: AtomicUsize = AtomicUsize::new(1);
/// How long the other CPUs may take to finish a piece of work before the kernel stops: they
/// would still be using what the caller lent them.
const WORK_TIMEOUT: Duration = Duration::from_secs(30);

/// One `T` per CPU, each CPU using its own: the kernel's per-CPU data. A CPU finds its own by
/// its number ([`arch::smp::this_cpu`], kept in a register of its own), so reaching it takes no
/// lock and no CPU writes another's cache line by accident of sharing one variable.
pub struct PerCpu<T>([T; MAX_CPUS]);

impl<T> PerCpu<T> {
    /// Each CPU's starting value, in the devicetree's order.
    pub const fn new(each: [T; MAX_CPUS]) -> Self {
        Self(each)
    }

    /// The running CPU's own.
    pub fn mine(&self) -> &T {
        // A CPU's number is its place in the devicetree's list, which holds at most MAX_CPUS.
        &self.0[arch::smp::this_cpu() % MAX_CPUS]
    }

    /// CPU `cpu`'s (its place in the devicetree's list), if there can be such a CPU.
    pub fn of(&self, cpu: usize) -> Option<&T> {
        self.0.get(cpu)
    }
}

/// How many CPUs run the kernel.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// The MPIDR the CPU at `index` of the devicetree's list reported, once it runs.
pub fn seen(index: usize) -> Option<u64> {
    SEEN.get(index).map(|seen| seen.load(Ordering::Acquire)).filter(|&mpidr| mpidr != UNKNOWN)
}

/// How many CPUs the devicetree lists: what per-CPU structures (the bounce pools' areas) are
/// sized for, before the others start.
pub fn listed() -> usize {
    LISTED.load(Ordering::Relaxed)
}

/// Numbers the boot CPU by its place in the devicetree's list, as every other CPU is numbered
/// ([`arch::smp::this_cpu`]), and records how many the list names. Runs before anything keeps
/// per-CPU state.
pub fn number_boot_cpu(devicetree: &Devicetree<'static>) {
    let Ok(cpus) = devicetree.cpu_list() else { return };
    let me = arch::smp::this_cpu_mpidr();
    if let Some(index) = cpus.iter().position(|cpu| cpu.mpidr == me) {
        arch::smp::set_this_cpu(index);
    }
    LISTED.store(cpus.len().max(1), Ordering::Relaxed);
}

/// Starts every CPU of the devicetree but this one, and logs how many run. Not inlined: its
/// list of CPUs would otherwise join the boot path's already large frame on the boot stack.
#[inline(never)]
pub fn start_all(devicetree: &Devicetree<'static>) {
    let cpus = match devicetree.cpu_list() {
        Ok(cpus) => cpus,
        Err(problem) => return error!("cpus: {problem}: only the boot CPU runs"),
    };
    // The SGI that wakes a waiting CPU needs a handler, or the first would count as unexpected
    // and be disabled; the wake-up itself is all it does.
    match crate::interrupts::register_intid(
        crate::interrupts::WAKE_SGI,
        true,
        "CPU wake-up",
        alloc::boxed::Box::new(|| {}),
    ) {
        Ok(registration) => core::mem::forget(registration),
        Err(problem) => warn!("cpus: no wake-up SGI ({problem}): waiting CPUs spin on WFE"),
    }
    let me = arch::smp::this_cpu_mpidr();
    for (index, cpu) in cpus.iter().enumerate() {
        if cpu.mpidr == me {
            SEEN[index].store(me, Ordering::Release);
            continue;
        }
        let method = match cpu.start {
            CpuStart::Psci => match crate::power::psci() {
                Some(conduit) => Method::Psci(conduit),
                None => {
                    warn!("cpus: {} asks for PSCI, which the devicetree does not describe: not started", cpu.name);
                    continue;
                }
            },
            CpuStart::SpinTable { release } => Method::SpinTable(release),
            CpuStart::None => {
                warn!("cpus: {} has no enable-method this kernel knows: not started", cpu.name);
                continue;
            }
        };
        if let Err(problem) = start_one(index, cpu.mpidr, method) {
            error!("cpus: {} (MPIDR {:#x}): {problem}", cpu.name, cpu.mpidr);
        }
    }
    info!("cpus: {} of {} online", online(), cpus.len());
}

/// Starts one CPU and waits until it counts itself online.
fn start_one(index: usize, mpidr: u64, method: Method) -> Result<(), alloc::string::String> {
    let kernel_stack = stack(STACK_BYTES)?;
    let stacks = Stacks {
        kernel_top: kernel_stack.add(STACK_BYTES as u64),
        exception_top: stack(EXCEPTION_STACK_BYTES)?.add(EXCEPTION_STACK_BYTES as u64),
    };
    if let Some(bottom) = STACK_BOTTOMS.of(index) {
        bottom.store(kernel_stack.as_u64(), Ordering::Relaxed);
    }
    let before = online();
    let asked = arch::timer::uptime();
    // SAFETY: the stacks were just allocated for this CPU alone and are never freed;
    // `secondary_main` never returns.
    unsafe { arch::smp::start(mpidr, method, index, stacks, secondary_main) }
        .map_err(|error| alloc::format!("cannot be started: {error:?}"))?;
    while online() == before {
        if arch::timer::uptime() - asked > START_TIMEOUT {
            return Err(alloc::format!("asked to start by {method:?}, not running after {START_TIMEOUT:?}"));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// A zeroed stack of `bytes` (whole pages) that lives for good, mapped in the stack window
/// above an unmapped guard page (`arch::mmu::map_stack`); its lowest address. Its top is
/// page-aligned, so 16-byte aligned as AAPCS64 wants.
fn stack(bytes: usize) -> Result<VirtAddr, alloc::string::String> {
    let layout = core::alloc::Layout::from_size_align(bytes, arch::layout::PAGE_SIZE as usize)
        .map_err(|error| alloc::format!("a stack of {bytes} bytes: {error}"))?;
    // SAFETY: the layout has a non-zero size; the memory is never freed (a CPU runs for good).
    let memory = unsafe { alloc::alloc::alloc_zeroed(layout) };
    let physical = (!memory.is_null())
        .then(|| arch::layout::linear_virt_to_phys(VirtAddr::from_ptr(memory)))
        .flatten()
        .and_then(|start| addr::PhysRange::new(start, bytes as u64))
        .ok_or_else(|| alloc::format!("no {bytes} bytes of linearly mapped heap for a stack"))?;
    arch::mmu::map_stack(physical).map_err(|error| alloc::format!("cannot map a stack: {error:?}"))
}

/// The lowest address of the kernel stack of the CPU at `index` of the devicetree's list, once
/// started; below it lies its guard page.
pub fn stack_bottom(index: usize) -> Option<VirtAddr> {
    let bottom = STACK_BOTTOMS.of(index)?.load(Ordering::Relaxed);
    (bottom != 0).then(|| VirtAddr::new(bottom))
}

/// Runs `work(index)` on every online CPU at once, `index` being the CPU's place in the
/// devicetree's list, and returns when every CPU has finished. A CPU that does not finish
/// within [`WORK_TIMEOUT`] stops the kernel: it may still be using `work`. One call at a time,
/// from the boot CPU (the test runner and the benchmark), and never from inside `work`: the
/// work in hand is one shared slot.
pub fn on_every_cpu(work: &(dyn Fn(usize) + Sync)) {
    // SAFETY: the reference is handed out only until every CPU has said it finished (below),
    // and this function does not return before that; so `work` outlives every use.
    let lent: &'static (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(work) };
    let others = online() - 1;
    FINISHED.store(0, Ordering::Relaxed);
    *WORK.lock() = Some(lent);
    GENERATION.fetch_add(1, Ordering::Release);
    // The SGI for the CPUs asleep in `WFI`, the event for any that waits in `WFE` (one whose
    // GIC interface could not be brought up).
    let _ = crate::interrupts::wake_other_cpus();
    arch::smp::wake_all();
    work(arch::smp::this_cpu());
    let started = arch::timer::uptime();
    while FINISHED.load(Ordering::Acquire) < others {
        if arch::timer::uptime() - started > WORK_TIMEOUT {
            error!(
                "cpus: {} of {others} CPUs did not finish their work in {WORK_TIMEOUT:?}",
                others - FINISHED.load(Ordering::Acquire)
            );
            crate::power::stop(crate::power::Outcome::Failure);
        }
        core::hint::spin_loop();
    }
    *WORK.lock() = None;
}

/// The first Rust code of a started CPU, at its virtual addresses on its own stacks: brings up
/// its part of the GIC, counts itself online, then sleeps in `WFI` until woken for work
/// ([`crate::interrupts::WAKE_SGI`]) and runs it. Without a GIC it waits with `WFE` instead.
extern "C" fn secondary_main(index: usize) -> ! {
    arch::smp::set_this_cpu(index);
    arch::mmu::drop_identity_map();
    if let Some(seen) = SEEN.get(index) {
        seen.store(arch::smp::this_cpu_mpidr(), Ordering::Release);
    }
    let sleeps = crate::interrupts::start_this_cpu(index).is_ok();
    let mut done = GENERATION.load(Ordering::Acquire);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    loop {
        let new_work = || GENERATION.load(Ordering::Acquire) != done;
        match sleeps {
            true => arch::interrupt::wait_until(new_work),
            false => {
                while !new_work() {
                    arch::smp::wait_for_event();
                }
            }
        }
        done = GENERATION.load(Ordering::Acquire);
        let work = *WORK.lock();
        if let Some(work) = work {
            work(index);
        }
        FINISHED.fetch_add(1, Ordering::AcqRel);
    }
}
