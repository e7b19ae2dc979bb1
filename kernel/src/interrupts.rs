//! Interrupts: the GIC the devicetree names, a handler per interrupt, and counts of the rest.
//!
//! A device that finishes a transfer can say so two ways: the driver *polls* (reads a status
//! word in memory or a register until it changes), or the device raises an *interrupt* and the
//! CPU sleeps until it comes. On Arm the interrupts of every device meet in the Generic
//! Interrupt Controller (GIC, IHI 0048 for v2 and IHI 0069 for v3), which numbers them:
//!
//! ```text
//!   INTID 0-15     SGI   software-generated: one CPU signals another (or itself)
//!   INTID 16-31    PPI   private to a CPU: its timers
//!   INTID 32-1019  SPI   shared: wired device lines (virtio-mmio, PCIe INTx, the Pi's DMA)
//!   INTID 1023           "none pending": a spurious acknowledge
//!   INTID 8192+    LPI   message-signalled (GICv3 ITS): a device writes to a doorbell
//! ```
//!
//! Taking one: the CPU jumps to the IRQ vector (`arch::interrupt`), which calls [`handle`]. It
//! *acknowledges* the interrupt at the GIC (reading `GICC_IAR`, or `ICC_IAR1_EL1` on v3), which
//! says which INTID it is and marks it active; runs the handler registered for it; and ends it
//! (`GICC_EOIR`, `ICC_EOIR1_EL1`). An acknowledge that finds nothing pending (the interrupt
//! went away, or another CPU took it) returns 1023: that is *spurious*, counted and ignored. An
//! INTID nobody registered is *unexpected*: counted, disabled at the GIC so that a stuck line
//! cannot storm, and reported by whoever asks ([`statistics`]). Neither is fatal.
//!
//! Handlers run with IRQs masked, on the exception stack, and must be short: they record what
//! happened and return. They never log: the interrupted code may hold the console's lock.
//! Whatever they share with ordinary code is locked with IRQs masked there
//! ([`arch::interrupt::without`]), or an IRQ could spin forever on a lock its own CPU holds.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use addr::VirtAddr;
use arm_gic::gicv2::GicV2;
use arm_gic::gicv3::GicV3;
use arm_gic::gicv3::registers::{Gicd, GicrSgi};
use arm_gic::{IntId, InterruptGroup, Trigger, UniqueMmioPointer};
use log::info;
use platform::devicetree::Devicetree;
use platform::interrupts::{GicInterrupt, GicVersion};
use spin::{Mutex, Once};

use crate::smp::PerCpu;
use platform::devicetree::MAX_CPUS;

/// What a handler is: a closure, run once per interrupt.
pub type Handler = Box<dyn FnMut() + Send>;

/// The interrupt controller and what is registered on it.
struct Interrupts {
    gic: Mutex<Gic>,
    /// Per INTID, everyone who handles it: a PCI INTx line may be shared by several functions
    /// (the host bridge's `interrupt-map` swizzles four pins over many slots).
    handlers: Mutex<BTreeMap<u32, Vec<Registered>>>,
    next_registration: AtomicU64,
    spurious: AtomicU64,
    unexpected: AtomicU64,
    last_unexpected: AtomicU32,
    timer: Option<GicInterrupt>,
}

struct Registered {
    id: u64,
    name: String,
    /// A one-shot [`Line`]: its handler masks the INTID for everyone, so it shares with no one.
    exclusive: bool,
    /// Edge-triggered (or else level), as it was enabled: a PPI is enabled again so on each CPU
    /// that starts.
    edge: bool,
    handler: Handler,
    delivered: u64,
}

static INTERRUPTS: Once<Interrupts> = Once::new();

/// Why interrupts could not be started or an interrupt not registered.
#[derive(Debug)]
pub enum InterruptError {
    /// The devicetree describes no GIC (or describes one badly).
    NoController(String),
    /// The registers could not be mapped.
    Map(String),
    /// Interrupts were not started, so nothing can be registered.
    NotStarted,
    /// A one-shot line cannot share its INTID, nor be shared: its handler masks the INTID for
    /// every device on it, and only its own driver unmasks.
    Shared { intid: u32, with: String },
    /// The GIC refused to enable it (it does not implement that INTID).
    CannotEnable { intid: u32, problem: String },
}

impl fmt::Display for InterruptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoController(problem) => write!(f, "no interrupt controller: {problem}"),
            Self::Map(problem) => write!(f, "cannot map the GIC's registers: {problem}"),
            Self::NotStarted => f.write_str("interrupts are not started (no GIC)"),
            Self::Shared { intid, with } => {
                write!(f, "INTID {intid} is shared with {with}, and a one-shot line takes an INTID alone")
            }
            Self::CannotEnable { intid, problem } => write!(f, "the GIC cannot enable INTID {intid}: {problem}"),
        }
    }
}

/// Counts since boot, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statistics {
    /// Acknowledges that found nothing pending (INTID 1023).
    pub spurious: u64,
    /// Interrupts with no handler, each disabled when it came.
    pub unexpected: u64,
    /// The INTID of the last of those.
    pub last_unexpected: Option<u32>,
}

/// Finds the GIC, brings it up, installs the IRQ handler and unmasks IRQs. Logs one line:
/// `interrupts: GICv3 intc@8000000 (distributor 0x8000000, ...), timer PPI 11 (INTID 27)`.
pub fn start(devicetree: &Devicetree<'_>) -> Result<(), InterruptError> {
    let description = devicetree
        .gic()
        .map_err(|error| InterruptError::NoController(format!("{error}")))?
        .ok_or_else(|| InterruptError::NoController("the devicetree has no GIC node".into()))?;
    let cpus = devicetree.cpus().count.max(1);
    let gic = Gic::bring_up(&description, cpus)?;
    let timer = devicetree.timer_interrupts().ok().flatten().map(|timer| timer.virtual_timer);
    let timer_text = timer.map_or("no timer node".into(), |timer| format!("virtual timer {timer}"));
    info!("interrupts: {} {} ({}), {timer_text}", gic.version_name(), description.name, gic.layout(&description));
    INTERRUPTS.call_once(|| Interrupts {
        gic: Mutex::new(gic),
        handlers: Mutex::new(BTreeMap::new()),
        next_registration: AtomicU64::new(0),
        spurious: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        last_unexpected: AtomicU32::new(0),
        timer,
    });
    if let Some(interrupts) = INTERRUPTS.get() {
        SGI_TARGETS.mine().store(interrupts.gic.lock().sgi_target_of_this_cpu(), Ordering::Release);
    }
    arch::interrupt::set_handler(handle);
    arch::interrupt::unmask();
    start_its(&description);
    start_timer()
}

/// Brings up the GICv3's ITS, if the devicetree has one; a failure is reported and leaves
/// message-signalled interrupts out (wired interrupts work without it).
fn start_its(description: &platform::interrupts::Gic<'_>) {
    let (Some(its), Some(redistributors)) = (&description.its, description.redistributors.first()) else { return };
    let started = (|| {
        let map = |range| arch::mmu::map_device(range).map_err(|error| format!("cannot map {range}: {error:?}"));
        let registers = map(its.registers)?;
        // Each CPU finds its own redistributor in the region, by its affinity.
        let redistributors = crate::its::Redistributors { registers: map(*redistributors)?, physical: *redistributors };
        crate::its::start(its.phandle, registers, its.registers.start(), redistributors)
    })();
    match started {
        Ok(description) => info!("interrupts: {description}"),
        Err(problem) => log::error!("interrupts: {}: {problem}: no message-signalled interrupts", its.name),
    }
}

/// Timer interrupts each CPU has taken since it started. Every CPU has a virtual timer of its
/// own, raising the same PPI at its own GIC interface.
static TIMER_INTERRUPTS: PerCpu<AtomicU64> = PerCpu::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// Whether each CPU saw its timer interrupt arrive, so that its sleeps in `WFI` end.
static TIMER_WORKS: PerCpu<AtomicBool> = PerCpu::new([const { AtomicBool::new(false) }; MAX_CPUS]);
/// The timer's registration, kept for the kernel's lifetime.
static TIMER: Once<Registration> = Once::new();

/// Registers the virtual timer's handler, for every CPU, and checks this CPU's timer.
fn start_timer() -> Result<(), InterruptError> {
    let Some(timer) = timer_interrupt() else {
        log::warn!("interrupts: the devicetree has no arm,armv8-timer node: waits poll instead of sleeping");
        return Ok(());
    };
    let handler = Box::new(|| {
        // Level-sensitive: lowered only by disabling the timer (or moving its deadline). The
        // timer and the count are those of the CPU taking the interrupt: a PPI is its own.
        arch::timer::stop();
        TIMER_INTERRUPTS.mine().fetch_add(1, Ordering::Release);
    });
    let registration = register(timer, "virtual timer", handler)?;
    TIMER.call_once(|| registration);
    check_this_cpus_timer(timer);
    Ok(())
}

/// Checks that this CPU's timer interrupt arrives: one 1 ms away, waited for by polling (at
/// most [`TIMER_CHECK`]). Until it has, [`wait_for`] polls on this CPU instead of sleeping,
/// since a `WFI` that nothing ends is a hang.
fn check_this_cpus_timer(timer: GicInterrupt) {
    let before = timer_interrupts();
    let started = arch::timer::uptime();
    arch::timer::fire_at(arch::timer::ticks_after(Duration::from_millis(1)));
    while timer_interrupts() == before && arch::timer::uptime() - started < TIMER_CHECK {
        core::hint::spin_loop();
    }
    if timer_interrupts() == before {
        arch::timer::stop();
        log::error!(
            "interrupts: CPU {}'s timer interrupt ({timer}) did not arrive within {TIMER_CHECK:?}: its waits poll instead of sleeping",
            arch::smp::this_cpu()
        );
        return;
    }
    TIMER_WORKS.mine().store(true, Ordering::Release);
}

/// How long the boot check waits for the timer's first interrupt.
const TIMER_CHECK: Duration = Duration::from_millis(100);

/// Timer interrupts this CPU has taken since it started.
pub fn timer_interrupts() -> u64 {
    TIMER_INTERRUPTS.mine().load(Ordering::Acquire)
}

/// Whether this CPU's waits sleep (`WFI`, woken by interrupts) rather than poll.
pub fn waits_sleep() -> bool {
    TIMER_WORKS.mine().load(Ordering::Acquire)
}

/// Waits until `done` holds or `timeout` has passed, and says whether `done` held. The CPU
/// sleeps between interrupts, the timer set for the deadline so that the sleep ends there at
/// the latest; without a working timer interrupt it polls.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    // One deadline, in the counter's ticks, which the timer's comparator uses too.
    let deadline = arch::timer::ticks_after(timeout);
    let passed = || arch::timer::ticks() >= deadline;
    if !waits_sleep() {
        while !done() && !passed() {
            core::hint::spin_loop();
        }
        return done();
    }
    // The deadline is seen through the timer's own interrupt, not by reading the counter: the
    // CPU may wake (`WFI` may return for any reason) after the deadline but before the
    // interrupt is taken, and stopping the timer then would lose it. Asleep again, the pending
    // interrupt ends the `WFI` at once and is taken.
    let timer_before = timer_interrupts();
    arch::timer::fire_at(deadline);
    arch::interrupt::wait_until(|| done() || timer_interrupts() != timer_before);
    arch::timer::stop();
    done()
}

/// `kernel.poll` (or the benchmark, for a while): waits on a [`Line`] spin on their condition
/// instead of sleeping. The lines stay registered, and still count their interrupts.
static POLLING: AtomicBool = AtomicBool::new(false);

/// Makes drivers poll (`kernel.poll`, or `false` to sleep again), so that polling and
/// interrupts can be compared, even within one boot.
pub fn set_polling(poll: bool) {
    POLLING.store(poll, Ordering::Relaxed);
}

/// Whether drivers poll rather than sleep until their devices interrupt.
pub fn polling() -> bool {
    POLLING.load(Ordering::Relaxed) || !waits_sleep()
}

/// Where a device's interrupt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A wire into the GIC: an SoC device's line, or a PCIe function's INTx.
    Wired(GicInterrupt),
    /// Messages the device writes (MSI-X, [`crate::msi`]): `vectors` of them, delivered as
    /// consecutive LPIs from `lpi` on.
    Message { lpi: u32, vectors: u16 },
}

impl From<GicInterrupt> for Source {
    fn from(interrupt: GicInterrupt) -> Self {
        Source::Wired(interrupt)
    }
}

/// The line a driver should wait on for `source`: `None` when it must poll (`kernel.poll`,
/// no GIC, no interrupt described, or the line cannot be registered, which is logged).
pub fn line_for(source: Option<Source>, name: &str) -> Option<Line> {
    lines_for(source, name).into_iter().next().flatten()
}

/// The lines of each of `source`'s vectors (one for a wire), as [`line_for`] gives one.
pub fn lines_for(source: Option<Source>, name: &str) -> Vec<Option<Line>> {
    let line = |registered: Result<Line, InterruptError>| {
        registered.inspect_err(|problem| log::warn!("{name}: {problem}: its completions are polled")).ok()
    };
    match source.filter(|_| !polling()) {
        None => alloc::vec![None],
        Some(Source::Wired(interrupt)) => alloc::vec![line(Line::new(interrupt, name))],
        Some(Source::Message { lpi, vectors }) => {
            (lpi..lpi + u32::from(vectors.max(1))).map(|lpi| line(Line::for_lpi(lpi, name))).collect()
        }
    }
}

/// Whether [`start`] found a GIC.
pub fn started() -> bool {
    INTERRUPTS.get().is_some()
}

/// The virtual timer's interrupt, as the devicetree gives it.
pub fn timer_interrupt() -> Option<GicInterrupt> {
    INTERRUPTS.get().and_then(|interrupts| interrupts.timer)
}

/// A handler, registered until this is dropped (then, if it was the INTID's last, the INTID is
/// disabled).
pub struct Registration {
    intid: u32,
    id: u64,
}

impl Registration {
    /// The INTID it handles.
    pub fn intid(&self) -> u32 {
        self.intid
    }

    /// How many times its handler has run.
    pub fn delivered(&self) -> u64 {
        let Some(interrupts) = INTERRUPTS.get() else { return 0 };
        arch::interrupt::without(|| {
            let handlers = interrupts.handlers.lock();
            let sharers = handlers.get(&self.intid).map_or(&[][..], Vec::as_slice);
            sharers.iter().find(|entry| entry.id == self.id).map_or(0, |entry| entry.delivered)
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(interrupts) = INTERRUPTS.get() {
            arch::interrupt::without(|| {
                let mut handlers = interrupts.handlers.lock();
                let sharers = handlers.entry(self.intid).or_default();
                sharers.retain(|entry| entry.id != self.id);
                if sharers.is_empty() {
                    handlers.remove(&self.intid);
                    interrupts.gic.lock().disable(self.intid);
                }
            });
        }
    }
}

/// Runs `handler` on every `interrupt`, which is then enabled at the GIC. Several handlers may
/// share an INTID: each runs on every interrupt and checks its own device. `name` says whose
/// it is.
pub fn register(interrupt: GicInterrupt, name: &str, handler: Handler) -> Result<Registration, InterruptError> {
    register_intid(interrupt.intid(), interrupt.trigger.is_edge(), name, handler)
}

/// As [`register`], for an INTID the devicetree does not describe (an SGI).
pub fn register_intid(intid: u32, edge: bool, name: &str, handler: Handler) -> Result<Registration, InterruptError> {
    register_as(intid, edge, name, handler, false)
}

/// Registers `handler` on `intid`, alone if `exclusive`.
fn register_as(
    intid: u32,
    edge: bool,
    name: &str,
    handler: Handler,
    exclusive: bool,
) -> Result<Registration, InterruptError> {
    let interrupts = INTERRUPTS.get().ok_or(InterruptError::NotStarted)?;
    arch::interrupt::without(|| {
        let mut handlers = interrupts.handlers.lock();
        let sharers = handlers.get(&intid).map_or(&[][..], Vec::as_slice);
        if let Some(other) = sharers.iter().find(|other| exclusive || other.exclusive) {
            return Err(InterruptError::Shared { intid, with: other.name.clone() });
        }
        let id = interrupts.next_registration.fetch_add(1, Ordering::Relaxed);
        if !handlers.contains_key(&intid) {
            interrupts
                .gic
                .lock()
                .enable(intid, edge)
                .map_err(|problem| InterruptError::CannotEnable { intid, problem })?;
        }
        handlers.entry(intid).or_default().push(Registered {
            id,
            name: name.into(),
            exclusive,
            edge,
            handler,
            delivered: 0,
        });
        Ok(Registration { intid, id })
    })
}

/// A device's interrupt, taken one at a time, as Linux's `IRQF_ONESHOT` does: the handler
/// only masks the line at the GIC and notes that it fired; the driver, in its own context,
/// clears the cause at the device (its registers stay the driver's alone) and unmasks. A
/// level-triggered line that stays high until the driver has consumed the completions cannot
/// storm meanwhile, and an edge (an MSI) that comes while masked stays pending at the GIC.
///
/// A line takes its INTID alone: on a wired line two devices share (PCIe INTx swizzling), the
/// second device's driver gets no line and polls, as Linux refuses to share a one-shot IRQ with
/// a handler that is not.
pub struct Line {
    registration: Registration,
    shared: Arc<LineState>,
    seen: u64,
    edge: bool,
}

/// What a line's handler and its driver share.
struct LineState {
    /// Interrupts taken.
    fired: AtomicU64,
    /// The CPU sleeping until the line fires, or [`NO_CPU`]. The GIC delivers the interrupt to
    /// whichever CPU it routes it to; if that is another, the handler wakes this one.
    waiter: AtomicUsize,
    /// Interrupts taken on another CPU than the one waiting, which had to be woken.
    forwarded: AtomicU64,
}

/// No CPU waits on the line.
const NO_CPU: usize = usize::MAX;

impl Line {
    /// Registers the line's handler and enables it.
    pub fn new(interrupt: GicInterrupt, name: &str) -> Result<Self, InterruptError> {
        Self::on(interrupt.intid(), interrupt.trigger.is_edge(), name)
    }

    /// A line for LPI `lpi`: a message-signalled interrupt, an edge by nature.
    pub fn for_lpi(lpi: u32, name: &str) -> Result<Self, InterruptError> {
        Self::on(lpi, true, name)
    }

    /// An edge is latched once per event and cannot storm, so its handler only counts (and an
    /// LPI could not be masked from a handler anyway: that takes ITS commands). A level is
    /// masked until the driver has lowered it.
    fn on(intid: u32, edge: bool, name: &str) -> Result<Self, InterruptError> {
        let shared = Arc::new(LineState {
            fired: AtomicU64::new(0),
            waiter: AtomicUsize::new(NO_CPU),
            forwarded: AtomicU64::new(0),
        });
        let state = shared.clone();
        let handler = Box::new(move || {
            if !edge {
                mask_in_handler(intid);
            }
            // Sequentially consistent, with the waiter's store and load in `Line::wait`: either
            // it sees this count before it sleeps, or this sees it waiting and wakes it.
            state.fired.fetch_add(1, Ordering::SeqCst);
            let waiter = state.waiter.load(Ordering::SeqCst);
            if waiter != NO_CPU && waiter != arch::smp::this_cpu() {
                state.forwarded.fetch_add(1, Ordering::Relaxed);
                wake_cpu(waiter);
            }
        });
        let registration = register_as(intid, edge, name, handler, true)?;
        Ok(Self { registration, shared, seen: 0, edge })
    }

    /// The INTID.
    pub fn intid(&self) -> u32 {
        self.registration.intid()
    }

    /// How many times the line has fired.
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Acquire)
    }

    /// How many times it fired on another CPU than the one waiting for it, which its handler
    /// then woke: 0 when the interrupt is routed to the CPU that waits.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds or the uptime reaches `deadline`, sleeping between
    /// interrupts; says whether `done` held. Before sleeping, if the line fired since,
    /// `acknowledge` clears the cause at the device and the line is unmasked: not when `done`
    /// already holds, since the driver may still have to consume what lowers the line (NVMe's
    /// completion entries and head doorbell). Under [`polling`] (the benchmark's comparison) it
    /// spins, and the line, masked by its first interrupt, stays masked: at most one is taken.
    pub fn wait(&mut self, deadline: Duration, mut done: impl FnMut() -> bool, mut acknowledge: impl FnMut()) -> bool {
        if polling() {
            while !done() && arch::timer::uptime() < deadline {
                core::hint::spin_loop();
            }
            return done();
        }
        loop {
            if done() {
                return true;
            }
            self.rearm(&mut acknowledge);
            if done() {
                return true;
            }
            let now = arch::timer::uptime();
            if now >= deadline {
                return false;
            }
            let state = &self.shared;
            let seen = self.seen;
            // Said before the check in `wait_for`, which a handler's wake-up then cannot miss.
            state.waiter.store(arch::smp::this_cpu(), Ordering::SeqCst);
            wait_for(deadline - now, || state.fired.load(Ordering::SeqCst) > seen || done());
            state.waiter.store(NO_CPU, Ordering::Relaxed);
        }
    }

    /// If the line fired since last time: clear the cause (`acknowledge`), then unmask. [`wait`]
    /// does this before it sleeps. A request may be done before its driver ever sleeps (QEMU's
    /// DMA engine finishes as soon as started, a disk may answer that fast), and the line would
    /// then stay masked, its next interrupts held back: so drivers also rearm when they hand
    /// the device a new request, before telling it.
    ///
    /// [`wait`]: Self::wait
    pub fn rearm(&mut self, acknowledge: &mut impl FnMut()) {
        let fired = self.fired();
        if fired > self.seen {
            self.seen = fired;
            acknowledge();
            if let Some(interrupts) = INTERRUPTS.get().filter(|_| !self.edge) {
                // It was enabled when registered, so enabling it again cannot fail.
                let _ = arch::interrupt::without(|| interrupts.gic.lock().unmask(self.intid()));
            }
        }
    }
}

/// Masks `intid` from its own handler (IRQs are masked there, and the GIC's lock is free).
fn mask_in_handler(intid: u32) {
    if let Some(interrupts) = INTERRUPTS.get() {
        interrupts.gic.lock().disable(intid);
    }
}

/// Raises software-generated interrupt `sgi` (0-15) on this CPU.
pub fn raise_sgi_on_self(sgi: u32) -> Result<(), InterruptError> {
    let interrupts = INTERRUPTS.get().ok_or(InterruptError::NotStarted)?;
    arch::interrupt::without(|| interrupts.gic.lock().raise_sgi_on_self(sgi))
}

/// The SGI that wakes a CPU: for work (`smp::on_every_cpu`), or because the interrupt its
/// driver sleeps on was taken on another CPU ([`wake_cpu`]). The interrupt tests raise SGIs 1
/// and 2.
pub const WAKE_SGI: u32 = 8;

/// Brings up this CPU's own part of the GIC (a CPU started after boot, `index` its place in the
/// devicetree's list): its interface, the PPIs registered so far (its own timer's), which each
/// CPU enables for itself, and its SGIs, so that it can sleep in `WFI` and be woken by
/// [`wake_other_cpus`] or [`wake_cpu`]. Then takes IRQs and checks its timer interrupt comes.
pub fn start_this_cpu(index: usize) -> Result<(), InterruptError> {
    let interrupts = INTERRUPTS.get().ok_or(InterruptError::NotStarted)?;
    let refused = arch::interrupt::without(|| {
        let handlers = interrupts.handlers.lock();
        let mut gic = interrupts.gic.lock();
        gic.bring_up_this_cpu(index);
        SGI_TARGETS.mine().store(gic.sgi_target_of_this_cpu(), Ordering::Release);
        let private = handlers.iter().filter(|(intid, _)| (PPI_FIRST..SPI_FIRST).contains(*intid));
        let refused = private.filter_map(|(&intid, sharers)| {
            let edge = sharers.first().is_some_and(|entry| entry.edge);
            gic.enable(intid, edge).err().map(|problem| InterruptError::CannotEnable { intid, problem })
        });
        refused.collect::<Vec<_>>()
    });
    // Reported, not fatal: the CPU still takes SGIs, and the timer check below finds out
    // whether its waits can sleep.
    for problem in refused {
        log::error!("interrupts: CPU {index}: {problem}");
    }
    arch::interrupt::unmask();
    if let Some(timer) = interrupts.timer {
        check_this_cpus_timer(timer);
    }
    if crate::its::doorbell().is_some()
        && let Err(problem) = crate::its::start_this_cpu()
    {
        log::error!("interrupts: {problem}: no LPI can be moved to CPU {index}");
    }
    Ok(())
}

/// The first PPI and the first SPI (IHI 0069, 2.2.1): the INTIDs between are each CPU's own.
const PPI_FIRST: u32 = 16;
const SPI_FIRST: u32 = 32;

/// Wake-ups [`wake_cpu`] has sent since boot.
static WAKE_UPS: AtomicU64 = AtomicU64::new(0);

/// How many times a handler woke a CPU waiting on another ([`wake_cpu`]) since boot.
pub fn wake_ups() -> u64 {
    WAKE_UPS.load(Ordering::Relaxed)
}

/// How [`wake_cpu`] names each CPU to the GIC: a GICv3's affinity, a GICv2's CPU interface bit.
static SGI_TARGETS: PerCpu<AtomicU64> = PerCpu::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// Raises [`WAKE_SGI`] on CPU `cpu` (its place in the devicetree's list) alone: an interrupt
/// handler on one CPU wakes a driver sleeping on another, as Linux's `wake_up` sends the
/// sleeper's CPU a reschedule IPI.
pub fn wake_cpu(cpu: usize) {
    let (Some(interrupts), Some(target)) = (INTERRUPTS.get(), SGI_TARGETS.of(cpu)) else { return };
    WAKE_UPS.fetch_add(1, Ordering::Relaxed);
    let target = target.load(Ordering::Acquire);
    arch::interrupt::without(|| interrupts.gic.lock().raise_sgi_on(WAKE_SGI, target));
}

/// Raises [`WAKE_SGI`] on every other CPU.
pub fn wake_other_cpus() -> Result<(), InterruptError> {
    let interrupts = INTERRUPTS.get().ok_or(InterruptError::NotStarted)?;
    arch::interrupt::without(|| interrupts.gic.lock().raise_sgi_on_others(WAKE_SGI));
    Ok(())
}

/// Logs who handles which INTID, one line each, in INTID order (sharers of a line together):
/// `interrupts: INTID 36 virtio-blk0 (virtio_mmio@a003e00), 1 taken so far`. Without a GIC,
/// says that everything polls.
pub fn log_routes() {
    let Some(interrupts) = INTERRUPTS.get() else {
        info!("interrupts: none (no GIC): every driver polls");
        return;
    };
    if POLLING.load(Ordering::Relaxed) {
        info!("interrupts: kernel.poll: drivers poll for completions; the timer still interrupts");
    }
    let routes: Vec<String> = arch::interrupt::without(|| {
        let handlers = interrupts.handlers.lock();
        let each = handlers.iter().flat_map(|(intid, sharers)| sharers.iter().map(move |entry| (*intid, entry)));
        each.map(|(intid, entry)| format!("INTID {intid:<4} {}, {} taken so far", entry.name, entry.delivered))
            .collect()
    });
    for route in routes {
        info!("interrupts: {route}");
    }
}

/// The counts so far.
pub fn statistics() -> Statistics {
    let Some(interrupts) = INTERRUPTS.get() else {
        return Statistics { spurious: 0, unexpected: 0, last_unexpected: None };
    };
    let unexpected = interrupts.unexpected.load(Ordering::Acquire);
    Statistics {
        spurious: interrupts.spurious.load(Ordering::Relaxed),
        unexpected,
        last_unexpected: (unexpected > 0).then(|| interrupts.last_unexpected.load(Ordering::Relaxed)),
    }
}

/// The IRQ handler `arch::interrupt` calls: acknowledge, run the INTID's handler, end.
fn handle() {
    let Some(interrupts) = INTERRUPTS.get() else { return };
    let Some((intid, raw)) = interrupts.gic.lock().acknowledge() else {
        interrupts.spurious.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut handled = false;
    for entry in interrupts.handlers.lock().get_mut(&raw).into_iter().flatten() {
        entry.delivered += 1;
        (entry.handler)();
        handled = true;
    }
    let mut gic = interrupts.gic.lock();
    // Nobody will lower a level-triggered line: keep it from coming back at once. An LPI is an
    // edge and cannot storm; disabling one would take the ITS's lock and commands in here.
    if !handled {
        if raw < crate::its::FIRST_LPI {
            gic.disable(raw);
        }
        interrupts.last_unexpected.store(raw, Ordering::Relaxed);
        interrupts.unexpected.fetch_add(1, Ordering::Release);
    }
    gic.end(intid);
}

/// This CPU's affinity, `MPIDR_EL1`'s Aff3-Aff0 alone (Arm ARM D19.2.87), as `GICD_IROUTER`
/// and `ICC_SGI1R_EL1` name CPUs. Not the whole register: its bit 31 is RES1, and in
/// `GICD_IROUTER` bit 31 is IRM, "route to any CPU" (IHI 0069, 12.9.22), which `arm-gic`'s
/// `set_routing` keeps: with a second CPU online, SPIs went there.
fn this_cpu_affinity() -> u64 {
    arch::smp::this_cpu_mpidr()
}

/// The GICv3 SGI target that is the one CPU of affinity `mpidr` (`ICC_SGI1R_EL1`, IHI 0069,
/// 12.11.22: Aff3.Aff2.Aff1 name a cluster, the target list a bit per Aff0 in it).
fn affinity_target(mpidr: u64) -> arm_gic::gicv3::SgiTarget {
    arm_gic::gicv3::SgiTarget::List {
        affinity3: (mpidr >> 32) as u8,
        affinity2: (mpidr >> 16) as u8,
        affinity1: (mpidr >> 8) as u8,
        target_list: 1 << (mpidr & 0xf),
    }
}

/// `GICD_ITARGETSR<n>` (IHI 0048B, 4.3.12): one byte per INTID, the CPUs a GICv2 SPI goes to.
const GICD_ITARGETSR: u64 = 0x800;

/// Sends SPI `intid` to the CPU running this, on a GICv2: its targets reset to none, and an
/// SPI without a target is never delivered. The bytes of the first eight registers (SGIs and
/// PPIs) read as the reading CPU's own bit, which is the one to write.
fn route_to_this_cpu(distributor: VirtAddr, intid: u32) {
    // SAFETY: the distributor is mapped as Device memory for the kernel's lifetime;
    // GICD_ITARGETSR is byte-accessible, INTID 0's byte is read-only, `intid`'s (an SPI, below
    // 1020) lies inside the 4 KiB distributor frame.
    unsafe {
        let own = distributor.add(GICD_ITARGETSR).as_ptr::<u8>().read_volatile();
        distributor.add(GICD_ITARGETSR + u64::from(intid)).as_mut_ptr::<u8>().write_volatile(own);
    }
}

/// The two GIC architectures, behind one set of operations.
enum Gic {
    /// The driver, and the distributor's registers for what it leaves out (SPI targets).
    V2(GicV2<'static>, VirtAddr),
    V3(GicV3<'static>),
}

impl Gic {
    fn bring_up(description: &platform::interrupts::Gic<'_>, cpus: usize) -> Result<Self, InterruptError> {
        let map = |range| arch::mmu::map_device(range).map_err(|error| InterruptError::Map(format!("{error:?}")));
        match description.version {
            GicVersion::V2 => {
                let cpu_interface = description.cpu_interface.ok_or_else(|| {
                    InterruptError::NoController(format!("{}: a GICv2 without its CPU interface", description.name))
                })?;
                let distributor = map(description.distributor)?;
                let cpu_interface = map(cpu_interface)?;
                // SAFETY: both are the GIC's register frames, just mapped as Device memory in
                // the kernel's device window, and this is the only driver for them.
                let mut gic = unsafe { GicV2::new(distributor.as_mut_ptr(), cpu_interface.as_mut_ptr()) };
                gic.setup();
                // `setup` enables Group 1 by its Secure-view bit (GICD_CTLR bit 1) when the GIC
                // has the Security Extensions. Seen from the Non-secure side, as on a Raspberry
                // Pi 4, that bit is reserved and bit 0 enables Group 1 (IHI 0048B, 4.3.1): set
                // it too, not trusting the firmware to have.
                gic.enable_group0(true);
                Ok(Self::V2(gic, distributor))
            }
            GicVersion::V3 => {
                let redistributors = description.redistributors.first().copied().ok_or_else(|| {
                    InterruptError::NoController(format!("{}: a GICv3 without redistributors", description.name))
                })?;
                let distributor = map(description.distributor)?;
                let redistributors = map(redistributors)?;
                let not_null = || InterruptError::Map("the device window gave a null address".into());
                let distributor = NonNull::new(distributor.as_mut_ptr::<Gicd>()).ok_or_else(not_null)?;
                let redistributors = NonNull::new(redistributors.as_mut_ptr::<GicrSgi>()).ok_or_else(not_null)?;
                // SAFETY: the distributor and the redistributor region are the GIC's, mapped as
                // Device memory in the kernel's device window; this is the only driver for them.
                let gic = unsafe { GicV3::new(UniqueMmioPointer::new(distributor), redistributors, cpus) };
                let mut gic = gic.map_err(|error| InterruptError::NoController(format!("{error}")))?;
                // `arm-gic` names a redistributor by its place in the region, which this takes to
                // be the CPU's in the devicetree's list, as on QEMU `virt`. (The ITS finds each
                // CPU's frame by its affinity instead, `its::Redistributors`.)
                gic.setup(arch::smp::this_cpu());
                // SGIs are raised only by software. A GICv2 always delivers them; a GICv3
                // only if enabled, so enable all sixteen alike.
                for sgi in 0..IntId::SGI_COUNT {
                    let _ = gic.enable_interrupt(IntId::sgi(sgi), Some(arch::smp::this_cpu()), true);
                }
                // Let every priority through the CPU interface (`ICC_PMR_EL1` resets to 0,
                // which masks them all; GICv2's `setup` sets `GICC_PMR` itself).
                arm_gic::gicv3::GicCpuInterface::set_priority_mask(0xff);
                Ok(Self::V3(gic))
            }
        }
    }

    /// This CPU's own part of the GIC, on a CPU started after boot: its CPU interface (GICv2:
    /// `GICC_CTLR`, `GICC_PMR`, banked per CPU; GICv3: its redistributor awake, the system
    /// registers on, every priority let through) and its SGIs. `index` is the CPU's
    /// redistributor (its place in the devicetree's list).
    fn bring_up_this_cpu(&mut self, index: usize) {
        match self {
            Self::V2(gic, _) => {
                // The distributor's settings `setup` writes again are global and the same; the
                // CPU interface and the first group register are this CPU's own.
                gic.setup();
                gic.enable_group0(true);
            }
            Self::V3(gic) => {
                gic.init_cpu(index);
                arm_gic::gicv3::GicCpuInterface::enable_group1(true);
                for sgi in 0..IntId::SGI_COUNT {
                    let _ = gic.set_interrupt_priority(IntId::sgi(sgi), Some(index), 0x80);
                    let _ = gic.enable_interrupt(IntId::sgi(sgi), Some(index), true);
                }
                arm_gic::gicv3::GicCpuInterface::set_priority_mask(0xff);
            }
        }
    }

    /// Raises SGI `sgi` on every CPU but this one.
    fn raise_sgi_on_others(&mut self, sgi: u32) {
        let id = IntId::sgi(sgi);
        match self {
            Self::V2(gic, _) => gic.send_sgi(id, arm_gic::gicv2::SgiTarget::All),
            Self::V3(_) => {
                // An SGI number is always valid, the only error `send_sgi` reports.
                let target = arm_gic::gicv3::SgiTarget::All;
                let _ = arm_gic::gicv3::GicCpuInterface::send_sgi(
                    id,
                    target,
                    arm_gic::gicv3::SgiTargetGroup::CurrentGroup1,
                );
            }
        }
    }

    fn version_name(&self) -> &'static str {
        match self {
            Self::V2(..) => "GICv2",
            Self::V3(_) => "GICv3",
        }
    }

    fn layout(&self, description: &platform::interrupts::Gic<'_>) -> String {
        let mut text = format!("distributor {}", description.distributor);
        if let Some(cpu_interface) = description.cpu_interface {
            text += &format!(", CPU interface {cpu_interface}");
        }
        for region in &description.redistributors {
            text += &format!(", redistributors {region}");
        }
        if let Some(its) = &description.its {
            text += &format!(", ITS {} {}", its.name, its.registers);
        }
        if let Some(frame) = &description.v2m {
            text += &format!(", GICv2m {} {}", frame.name, frame.registers);
        }
        text
    }

    fn enable(&mut self, intid: u32, edge: bool) -> Result<(), String> {
        // An LPI is enabled in its configuration byte, which the ITS re-reads.
        if intid >= crate::its::FIRST_LPI {
            return crate::its::set_enabled(intid, true);
        }
        let id = IntId::try_from(intid).map_err(|_| format!("{intid} is not an INTID"))?;
        let trigger = if edge { Trigger::Edge } else { Trigger::Level };
        match self {
            Self::V2(gic, distributor) => {
                // SGIs are always edge-triggered, and PPIs' trigger is fixed by the core.
                if id.is_spi() {
                    gic.set_trigger(id, trigger);
                    route_to_this_cpu(*distributor, intid);
                }
                gic.set_interrupt_priority(id, 0x80);
                gic.enable_interrupt(id, true).map_err(|error| format!("{error}"))
            }
            Self::V3(gic) => {
                if id.is_spi() {
                    gic.set_trigger(id, Some(arch::smp::this_cpu()), trigger).map_err(|error| format!("{error}"))?;
                    // `GICD_IROUTER` resets to an UNKNOWN value (IHI 0069, 12.9.22): route to
                    // the CPU running this.
                    let routing = gic.distributor().set_routing(id, Some(this_cpu_affinity()));
                    routing.map_err(|error| format!("{error}"))?;
                }
                gic.set_interrupt_priority(id, Some(arch::smp::this_cpu()), 0x80)
                    .map_err(|error| format!("{error}"))?;
                gic.enable_interrupt(id, Some(arch::smp::this_cpu()), true).map_err(|error| format!("{error}"))
            }
        }
    }

    /// Enables `intid` again after [`Self::disable`], its trigger and priority as they were.
    fn unmask(&mut self, intid: u32) -> Result<(), String> {
        if intid >= crate::its::FIRST_LPI {
            return crate::its::set_enabled(intid, true);
        }
        let id = IntId::try_from(intid).map_err(|_| format!("{intid} is not an INTID"))?;
        match self {
            Self::V2(gic, _) => gic.enable_interrupt(id, true).map_err(|error| format!("{error}")),
            Self::V3(gic) => {
                gic.enable_interrupt(id, Some(arch::smp::this_cpu()), true).map_err(|error| format!("{error}"))
            }
        }
    }

    fn disable(&mut self, intid: u32) {
        if intid >= crate::its::FIRST_LPI {
            let _ = crate::its::set_enabled(intid, false);
            return;
        }
        let Ok(id) = IntId::try_from(intid) else { return };
        // Disabling an INTID the GIC implements cannot fail; one it does not was never enabled.
        let _ = match self {
            Self::V2(gic, _) => gic.enable_interrupt(id, false).map_err(|_| ()),
            Self::V3(gic) => gic.enable_interrupt(id, Some(arch::smp::this_cpu()), false).map_err(|_| ()),
        };
    }

    /// The interrupt being taken, now active: the value to end it with, and its INTID; `None`
    /// if nothing was pending (spurious).
    fn acknowledge(&mut self) -> Option<(IntId, u32)> {
        let (acknowledged, intid) = match self {
            // In the Non-secure view of a GICv2 (and on one without security), `GICC_IAR`
            // acknowledges the interrupts this kernel uses: the crate's Group 0 path. An SGI
            // carries its sending CPU in bits 12:10; the INTID is bits 9:0.
            Self::V2(gic, _) => {
                let acknowledged = gic.get_and_acknowledge_interrupt(InterruptGroup::Group0)?;
                (acknowledged, u32::from(acknowledged) & 0x3ff)
            }
            // `ICC_IAR1_EL1` holds the INTID alone, up to 24 bits: LPIs are 8192 and up.
            Self::V3(_) => {
                let acknowledged =
                    arm_gic::gicv3::GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)?;
                (acknowledged, u32::from(acknowledged))
            }
        };
        // 1020-1023 are special: nothing to take.
        (!(1020..1024).contains(&intid)).then_some((acknowledged, intid))
    }

    fn end(&mut self, intid: IntId) {
        match self {
            Self::V2(gic, _) => gic.end_interrupt(intid, InterruptGroup::Group0),
            Self::V3(_) => arm_gic::gicv3::GicCpuInterface::end_interrupt(intid, InterruptGroup::Group1),
        }
    }

    /// How this CPU is named as an SGI's target: on a GICv3 its affinity (MPIDR); on a GICv2
    /// its CPU interface's bit, which `GICD_ITARGETSR0` reads as for the reading CPU (IHI
    /// 0048B, 4.3.12).
    fn sgi_target_of_this_cpu(&self) -> u64 {
        match self {
            Self::V2(_, distributor) => {
                // SAFETY: the distributor is mapped as Device memory for the kernel's lifetime;
                // GICD_ITARGETSR0 is byte-readable and banked per CPU.
                let own = unsafe { distributor.add(GICD_ITARGETSR).as_ptr::<u8>().read_volatile() };
                u64::from(own)
            }
            Self::V3(_) => this_cpu_affinity(),
        }
    }

    /// Raises SGI `sgi` on the one CPU `target` names ([`Self::sgi_target_of_this_cpu`]).
    fn raise_sgi_on(&mut self, sgi: u32, target: u64) {
        let id = IntId::sgi(sgi);
        match self {
            Self::V2(gic, _) => {
                let filter = arm_gic::gicv2::SgiTargetListFilter::CPUTargetList;
                gic.send_sgi(
                    id,
                    arm_gic::gicv2::SgiTarget::List { target_list_filter: filter, target_list: target as u16 },
                );
            }
            Self::V3(_) => {
                // An SGI number is always valid, the only error `send_sgi` reports.
                let _ = arm_gic::gicv3::GicCpuInterface::send_sgi(
                    id,
                    affinity_target(target),
                    arm_gic::gicv3::SgiTargetGroup::CurrentGroup1,
                );
            }
        }
    }

    fn raise_sgi_on_self(&mut self, sgi: u32) -> Result<(), InterruptError> {
        let not_sgi = || InterruptError::CannotEnable { intid: sgi, problem: "not an SGI (0-15)".into() };
        let id = IntId::try_from(sgi).ok().filter(|id| id.is_sgi()).ok_or_else(not_sgi)?;
        match self {
            Self::V2(gic, _) => {
                let target = arm_gic::gicv2::SgiTarget::List {
                    target_list_filter: arm_gic::gicv2::SgiTargetListFilter::ForwardSelfOnly,
                    target_list: 0,
                };
                gic.send_sgi(id, target);
                Ok(())
            }
            Self::V3(_) => {
                let target = affinity_target(this_cpu_affinity());
                arm_gic::gicv3::GicCpuInterface::send_sgi(id, target, arm_gic::gicv3::SgiTargetGroup::CurrentGroup1)
                    .map_err(|error| InterruptError::CannotEnable { intid: sgi, problem: format!("{error}") })
            }
        }
    }
}
