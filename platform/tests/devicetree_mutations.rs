//! A million randomly damaged devicetrees, and every question the kernel asks of them.
//!
//! The devicetree comes from outside the kernel: a boot loader builds it, edits it, copies it,
//! and any of them may get it wrong. The kernel reads it before it has a console, so a panic
//! there is silence, and a stack overflow is worse. The promise of `platform::devicetree` is
//! that validation refuses what it cannot read, and that every query on what it accepted
//! answers, with a value or an error, and never panics.
//!
//! This test holds it to that promise the way a fuzzer would, in bounded time. It starts from
//! realistic blobs (QEMU `virt`'s own, with a GICv2 and with a GICv3, and one shaped like a
//! Raspberry Pi 4's), damages each
//! copy a few times (bits flipped, tokens, lengths, name offsets and header fields overwritten
//! with values that matter, words deleted and duplicated, the blob cut short) and then asks
//! everything that is public: the console rescue, validation (which is `canonical_copy`), and
//! on what validates, every
//! query, the memory map built from it, the DMA descriptions, the PCIe bridges, the GIC, the
//! timer's interrupts and every device's interrupts, with each answer formatted as the kernel
//! would print it.
//!
//! Cases are numbered and each draws its damage from a generator seeded by the run's seed and
//! its number, so one case can be replayed alone:
//!
//! ```text
//!   DT_MUTATION_SEED=0x1234 cargo test --release -p platform --test devicetree_mutations
//!   DT_MUTATION_SEED=0x1234 DT_MUTATION_CASE=5678 cargo test ...   (that case only, panicking
//!                                                                   with its backtrace)
//!   DT_MUTATION_CASES=10000000 cargo test ...                        (more cases)
//! ```
//!
//! Without `DT_MUTATION_SEED` each run takes a new seed from the clock, so runs add coverage;
//! the seed is printed first. A stack overflow cannot be caught: it aborts the process, and on
//! Linux the test then prints the cases that were running, to replay one by one.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use addr::{DmaAddr, PhysAddr, PhysRange};
use platform::devicetree::{Devicetree, Reservation, blob_size, rescue_console};
use platform::dma_config::{PoolPlacement, lowest_limit};
use platform::fdt_writer::FdtWriter;
use platform::interrupts::GicInterrupt;
use platform::memmap::MemoryMap;
use platform::pci::{BarAllocator, BarKind, BarRequest, IntxPin, PciFunction};

/// How many cases a run tries unless `DT_MUTATION_CASES` says otherwise: a million in an
/// optimized build (`cargo test --release`, as `cargo xtask test` runs it: about 25 s on two
/// cores), a tenth of that unoptimized, which is ten times slower but checks arithmetic
/// for overflow.
const DEFAULT_CASES: u64 = if cfg!(debug_assertions) { 100_000 } else { 1_000_000 };

/// The console drivers the kernel has (`drivers::pl011`, `drivers::mini_uart`).
const CONSOLE_DRIVERS: [&str; 2] = ["arm,pl011", "brcm,bcm2835-aux-uart"];

/// Interrupt names to look up: the Pi's DMA channels, the SMMU's, one no device has. They are
/// asked of the devices whose interrupts the kernel looks up by name (`NAMED_INTERRUPTS`) only:
/// each lookup walks the tree, and asking every device would make each case a third slower.
const INTERRUPT_NAMES: [&str; 5] = ["dma0", "dma1", "eventq", "gerror", "none"];
const NAMED_INTERRUPTS: [&str; 2] = ["arm,smmu-v3", "brcm,bcm2835-dma"];

/// Every `compatible` the kernel looks for, and a few it does not.
const COMPATIBLES: [&str; 9] = [
    "virtio,mmio",
    "arm,pl011",
    "brcm,bcm2835-aux-uart",
    "brcm,bcm2835-dma",
    "brcm,bcm2835-pm-wdt",
    "pci-host-ecam-generic",
    "arm,smmu-v3",
    "restricted-dma-pool",
    "brcm,bcm2711-emmc2",
];

// Structure block tokens (devicetree specification, section 5.4.1).
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

#[test]
fn a_million_damaged_devicetrees_are_answered_without_a_panic() {
    let seed = match std::env::var("DT_MUTATION_SEED") {
        Ok(text) => parse_number(&text).expect("DT_MUTATION_SEED is a number (decimal, or hex after 0x)"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_nanos() as u64),
    };
    let cases = std::env::var("DT_MUTATION_CASES")
        .map_or(DEFAULT_CASES, |text| parse_number(&text).expect("DT_MUTATION_CASES is a number"));
    let corpus = [
        Original::new("QEMU virt", qemu_virt(include_bytes!("fixtures/qemu-virt-smmuv3.dtb"))),
        Original::new("QEMU virt GICv3", qemu_virt(include_bytes!("fixtures/qemu-virt-gicv3-its.dtb"))),
        Original::new("Pi 4-like", pi4_like()),
    ];
    for original in &corpus {
        let answered = exercise(&original.blob);
        assert_eq!(answered, Ok(()), "{} must validate and describe a machine unharmed", original.name);
    }
    if let Ok(case) = std::env::var("DT_MUTATION_CASE") {
        let case = parse_number(&case).expect("DT_MUTATION_CASE is a number");
        let (original, blob) = damaged(&corpus, seed, case);
        eprintln!("seed {seed:#x}, case {case}: {} damaged to {} bytes: {blob:02x?}", original.name, blob.len());
        let _ = exercise(&blob);
        return;
    }
    // Printed straight to the terminal, past the test harness's capture: if a case aborts
    // the process (a stack overflow), this line is what is left to replay it from.
    #[cfg(target_os = "linux")]
    report_running_cases_on_abort(seed);
    let _ =
        writeln!(std::io::stderr(), "devicetree mutations: seed {seed:#x}, {cases} cases (DT_MUTATION_SEED={seed:#x})");

    let started = Instant::now();
    let failure = run_cases(&corpus, seed, cases);
    let elapsed = started.elapsed();
    if let Some(Failure { case, corpus, message }) = failure {
        panic!(
            "case {case} of seed {seed:#x} ({corpus}) panicked: {message}\n\
             replay it with DT_MUTATION_SEED={seed:#x} DT_MUTATION_CASE={case}"
        );
    }
    let _ = writeln!(std::io::stderr(), "devicetree mutations: {cases} cases in {:.1} s", elapsed.as_secs_f64());
}

/// Each interrupt as the kernel logs it, with its INTID and trigger kind.
fn describe_interrupts(interrupts: &[GicInterrupt]) -> String {
    let mut text = String::new();
    for interrupt in interrupts {
        let _ = write!(text, "{interrupt} {} {} ", interrupt.intid(), interrupt.trigger.is_edge());
    }
    text
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The first case that panicked, and what the panic said.
struct Failure {
    case: u64,
    corpus: &'static str,
    message: String,
}

thread_local! {
    /// Set while a case's queries run, so the panic hook keeps quiet and records instead.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `cases` cases on every CPU, stopping at the first panic.
fn run_cases(corpus: &[Original], seed: u64, cases: u64) -> Option<Failure> {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| match IN_CASE.with(Cell::get) {
        true => LAST_PANIC.with(|last| *last.borrow_mut() = format!("{info}")),
        false => default_hook(info),
    }));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS) as u64;
    let stop = AtomicBool::new(false);
    let first_failure: Mutex<Option<Failure>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (stop, first_failure) = (&stop, &first_failure);
            scope.spawn(move || {
                let mut case = thread;
                while case < cases && !stop.load(Ordering::Relaxed) {
                    RUNNING[thread as usize].store(case, Ordering::Relaxed);
                    let (original, blob) = damaged(corpus, seed, case);
                    IN_CASE.with(|flag| flag.set(true));
                    let outcome = panic::catch_unwind(AssertUnwindSafe(|| exercise(&blob)));
                    IN_CASE.with(|flag| flag.set(false));
                    if outcome.is_err() {
                        stop.store(true, Ordering::Relaxed);
                        let message = LAST_PANIC.with(|last| last.take());
                        let mut first = first_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        if first.as_ref().is_none_or(|failure| case < failure.case) {
                            *first = Some(Failure { case, corpus: original.name, message });
                        }
                    }
                    case += threads;
                }
            });
        }
    });
    let _ = panic::take_hook(); // back to the default hook
    first_failure.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most this many worker threads.
const MAX_THREADS: usize = 64;
const IDLE: u64 = u64::MAX;
/// The case each worker thread is running, for the report of a process abort.
static RUNNING: [AtomicU64; MAX_THREADS] = [const { AtomicU64::new(IDLE) }; MAX_THREADS];
static RUN_SEED: AtomicU64 = AtomicU64::new(0);

/// Makes a process abort (Rust aborts on a stack overflow) print the cases then running.
#[cfg(target_os = "linux")]
fn report_running_cases_on_abort(seed: u64) {
    const SIGABRT: i32 = 6;
    unsafe extern "C" {
        fn signal(signal: i32, handler: extern "C" fn(i32)) -> usize;
        fn write(fd: i32, bytes: *const u8, count: usize) -> isize;
    }
    extern "C" fn on_abort(_: i32) {
        // No allocation here: the line is formatted into a buffer on the stack.
        let mut line = [0u8; 1024];
        let mut cursor = std::io::Cursor::new(&mut line[..]);
        let seed = RUN_SEED.load(Ordering::Relaxed);
        let _ = write!(cursor, "\ndevicetree mutations: the process aborted while running cases");
        for running in RUNNING.iter().map(|case| case.load(Ordering::Relaxed)).filter(|&case| case != IDLE) {
            let _ = write!(cursor, " {running}");
        }
        let _ =
            writeln!(cursor, " of seed {seed:#x}; replay each with DT_MUTATION_SEED={seed:#x} DT_MUTATION_CASE=...");
        let length = cursor.position() as usize;
        // SAFETY: write(2) may be called in a signal handler; `line` holds `length` bytes.
        unsafe { write(2, line.as_ptr(), length) };
    }
    RUN_SEED.store(seed, Ordering::Relaxed);
    // SAFETY: the handler only reads atomics, formats on its stack and calls write(2), all of
    // which a signal handler may do; the abort goes on once it returns.
    unsafe { signal(SIGABRT, on_abort) };
}

/// Asks `blob` everything public. The first error, if it did not validate or a query failed;
/// the answers themselves are formatted and thrown away.
fn exercise(blob: &[u8]) -> Result<(), String> {
    let mut out = String::new();
    if let Some(header) = blob.first_chunk::<8>() {
        let _ = write!(out, "{:?}", blob_size(header).map_err(|error| error.to_string()));
    }
    if let Some(console) = rescue_console(blob, &CONSOLE_DRIVERS) {
        let _ = write!(out, "{console:?} {}", console.found_by);
        for guess in &console.guesses {
            let _ = write!(out, "{guess}");
        }
    }
    // Blocks may overlap in a damaged header, so the copy can be larger than the blob.
    let mut storage = vec![0u8; 2 * blob.len() + 64];
    let dt = match Devicetree::parse(blob, &mut storage) {
        Ok(dt) => dt,
        Err(error) => return Err(error.to_string()),
    };
    let mut first_error = None;
    let mut note = |out: &mut String, answer: Result<String, String>| match answer {
        Ok(answer) => out.push_str(&answer),
        Err(error) => {
            out.push_str(&error);
            first_error.get_or_insert(error);
        }
    };
    let _ = write!(out, "{} {} {} {:?}", dt.size_in_bytes(), dt.model(), dt.bootargs(), dt.cpus());
    note(&mut out, dt.cpu_list().map(|cpus| format!("{cpus:?}")).map_err(|error| error.to_string()));
    let _ = write!(out, "{:?}", dt.rescue_console(&CONSOLE_DRIVERS));
    note(&mut out, dt.psci().map(|psci| format!("{psci:?}")).map_err(|error| error.to_string()));
    note(&mut out, dt.stdout().map(|stdout| format!("{stdout:?}")).map_err(|error| error.to_string()));

    // QEMU's 32 virtio-mmio slots fill a list on their own, so they are asked for apart.
    let (virtio, others) = COMPATIBLES.split_at(1);
    let mut devices = Vec::new();
    for wanted in [virtio, others] {
        let found = dt.compatible_devices(wanted);
        note(&mut out, found.as_ref().map(|found| format!("{found:?}")).map_err(|error| error.to_string()));
        devices.extend(found.into_iter().flatten());
    }
    for device in &devices {
        let _ = write!(out, "{} {:?}", device.dma, device.compatible().collect::<Vec<_>>());
        let _ = write!(out, "{:?}", dt.u32_property(device, "brcm,dma-channel-mask").map_err(|e| e.to_string()));
        for address in [0, 0x4000_0000, 0xc000_0000, u64::MAX] {
            let _ = write!(out, "{:?}", device.dma.phys_to_dma(PhysAddr::new(address)));
            let _ = write!(out, "{:?}", device.dma.dma_to_phys(DmaAddr::new(address)));
        }
        let _ = write!(out, "{:?}", device.dma.limit());
        if let Some(first) = device.regs.first() {
            let _ = write!(out, "{}", device.dma.reaches(*first));
        }
        let interrupts = dt.gic_interrupts(device);
        note(&mut out, interrupts.map(|interrupts| describe_interrupts(&interrupts)).map_err(|e| e.to_string()));
        let named = NAMED_INTERRUPTS.iter().any(|&compatible| device.is_compatible(compatible));
        for name in INTERRUPT_NAMES.iter().filter(|_| named) {
            let named = dt.named_gic_interrupt(device, name);
            note(&mut out, named.map(|named| describe_interrupts(named.as_slice())).map_err(|e| e.to_string()));
        }
    }
    let gic = dt.gic().map(|gic| gic.map_or(String::from("no GIC"), |gic| format!("{} {gic:?}", gic.version)));
    note(&mut out, gic.map_err(|error| error.to_string()));
    let timer = dt.timer_interrupts().map(|timer| {
        let Some(timer) = timer else { return String::from("no timer") };
        let listed = [timer.secure_physical, Some(timer.physical), Some(timer.virtual_timer), timer.hypervisor];
        format!("{timer:?} {}", describe_interrupts(&listed.into_iter().flatten().collect::<Vec<_>>()))
    });
    note(&mut out, timer.map_err(|error| error.to_string()));
    let lowest = lowest_limit(devices.iter().map(|device| &device.dma));

    let bridges = dt.pci_host_bridges();
    note(&mut out, bridges.as_ref().map(|bridges| format!("{bridges:?}")).map_err(|error| error.to_string()));
    for bridge in bridges.iter().flatten() {
        for (bus, device, function) in [(0, 0, 0), (0, 1, 0), (1, 31, 7), (255, 2, 1)] {
            let Some(function) = PciFunction::new(bus, device, function) else { continue };
            let _ = write!(out, "{:?}", bridge.config_space(function));
            for pin in [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D] {
                let interrupt = bridge.legacy_interrupt(function, pin);
                let _ = write!(out, "{interrupt:?} {:?}", interrupt.and_then(|interrupt| interrupt.gic_spi()));
            }
        }
        for requester in [0, 8, 0x100, 0xffff] {
            let _ = write!(out, "{:?} {:?}", bridge.stream_id(requester), bridge.msi_route(requester));
        }
        let mut bars = BarAllocator::new(&bridge.windows);
        for (size, kind) in [
            (0x100, BarKind::Io),
            (0x4000, BarKind::Memory { is_64bit: false, prefetchable: false }),
            (0x10_0000, BarKind::Memory { is_64bit: true, prefetchable: true }),
        ] {
            let _ = write!(out, "{:?}", bars.allocate(BarRequest { size, kind }).map_err(|e| e.to_string()));
        }
    }
    note(&mut out, dt.smmus().map(|smmus| format!("{smmus:?}")).map_err(|error| error.to_string()));

    let pools = dt.restricted_pools();
    note(&mut out, pools.as_ref().map(|pools| format!("{pools:?}")).map_err(|error| error.to_string()));
    let (ram, reservations) = (dt.memory(), dt.reservations());
    note(&mut out, ram.as_ref().map(|ram| format!("{ram:?}")).map_err(|error| error.to_string()));
    note(&mut out, reservations.as_ref().map(|r| format!("{r:?}")).map_err(|error| error.to_string()));
    let (Ok(ram), Ok(mut reservations)) = (ram, reservations) else { return Err(first_error.unwrap_or_default()) };
    // As the kernel does, its image is reserved too: 2 MiB into RAM, where loaders put it.
    let image_start = ram.first().map_or(0, |ram| ram.start().as_u64()).saturating_add(0x20_0000);
    let Some(kernel_image) = PhysRange::new(PhysAddr::new(image_start), 0xb_2000) else {
        return Err(format!("no room for a kernel image at {image_start:#x}"));
    };
    let _ = reservations.try_push(Reservation { range: kernel_image, label: "kernel image", no_map: false });
    let mut map = match MemoryMap::compute(&ram, &reservations) {
        Ok(map) => map,
        Err(error) => return Err(error.to_string()),
    };
    for pool in pools.iter().flatten() {
        let placed = match &pool.placement {
            PoolPlacement::Static(range) => map.check_pool(pool.name, *range).map(|()| *range),
            PoolPlacement::Dynamic { size, alignment, alloc_ranges } => {
                map.carve(pool.name, *size, *alignment, lowest, alloc_ranges)
            }
        };
        note(&mut out, placed.map(|range| format!("{range}")).map_err(|error| error.to_string()));
    }
    note(&mut out, map.linear_map(&[kernel_image]).map(|linear| format!("{linear:?}")).map_err(|e| e.to_string()));
    let _ = write!(out, "{:?} {:?}", map.entries().collect::<Vec<_>>(), map.largest_free());
    first_error.map_or(Ok(()), Err)
}

/// An undamaged blob, and where in it damage matters most.
struct Original {
    name: &'static str,
    blob: Vec<u8>,
    /// Offsets in the blob of every structure token.
    tokens: Vec<usize>,
    /// Offsets of the `FDT_PROP` tokens: the value's length follows, then the name's offset.
    properties: Vec<usize>,
    /// The `FDT_PROP` tokens of `/aliases`.
    aliases: Vec<usize>,
    /// Offsets of node names, the root's empty one included.
    node_names: Vec<usize>,
    /// Where each property name starts in the strings block, relative to the block.
    strings: Vec<u32>,
    strings_block: std::ops::Range<usize>,
}

impl Original {
    fn new(name: &'static str, blob: Vec<u8>) -> Self {
        let word = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
        let (structure, strings_start, strings_size) = (word(8) as usize, word(12) as usize, word(32) as usize);
        let strings_block = strings_start..strings_start + strings_size;
        let strings = std::iter::once(0)
            .chain(
                blob[strings_block.clone()].iter().enumerate().filter(|&(_, &b)| b == 0).map(|(at, _)| at as u32 + 1),
            )
            .filter(|&offset| (offset as usize) < strings_size)
            .collect();
        let (mut tokens, mut properties, mut aliases, mut node_names) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut depth, mut in_aliases) = (0, false);
        let mut at = structure;
        loop {
            tokens.push(at);
            match word(at) {
                BEGIN_NODE => {
                    let name = &blob[at + 4..at + 4 + blob[at + 4..].iter().position(|&b| b == 0).unwrap()];
                    depth += 1;
                    in_aliases = depth == 2 && name == b"aliases";
                    node_names.push(at + 4);
                    at = (at + 4 + name.len() + 1).next_multiple_of(4);
                }
                PROP => {
                    properties.push(at);
                    if in_aliases {
                        aliases.push(at);
                    }
                    at = (at + 12 + word(at + 4) as usize).next_multiple_of(4);
                }
                END_NODE => {
                    depth -= 1;
                    in_aliases = false;
                    at += 4;
                }
                NOP => at += 4,
                _ => break,
            }
        }
        Self { name, blob, tokens, properties, aliases, node_names, strings, strings_block }
    }
}

/// Case `case` of run `seed`: which original it damages, and the damaged copy.
fn damaged(corpus: &[Original], seed: u64, case: u64) -> (&Original, Vec<u8>) {
    let mut random = SplitMix64(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let original = &corpus[random.below(corpus.len())];
    let mut blob = original.blob.clone();
    for _ in 0..1 + random.below(3) {
        damage(&mut random, original, &mut blob);
    }
    (original, blob)
}

/// Values that make parsers take another path: token numbers, small and huge counts, sign bits.
const INTERESTING: [u32; 14] =
    [0, 1, 2, 3, 4, 5, 9, 0x10, 0x7f, 0x1000, 0x7fff_ffff, 0x8000_0000, 0xffff_fff0, 0xffff_ffff];

/// Paths the kernel looks up, for properties named as paths (an `/aliases` entry, say).
const PATHS: [&str; 7] = ["/psci", "/chosen", "/reserved-memory", "/cpus", "/aliases", "/memory", "/soc"];

/// Damages `blob` once, in one of the ways a boot loader or a bad copy could.
fn damage(random: &mut SplitMix64, original: &Original, blob: &mut Vec<u8>) {
    if blob.len() < 8 {
        return;
    }
    let interesting = |random: &mut SplitMix64| match random.below(4) {
        0 => random.next() as u32,
        1 => INTERESTING[random.below(INTERESTING.len())].wrapping_add(random.below(3) as u32).wrapping_sub(1),
        _ => INTERESTING[random.below(INTERESTING.len())],
    };
    let aligned_word = |random: &mut SplitMix64, blob: &[u8]| random.below(blob.len() / 4) * 4;
    match random.below(14) {
        0 => {
            let at = random.below(blob.len());
            blob[at] ^= 1 << random.below(8);
        }
        1 => {
            let at = random.below(blob.len());
            blob[at] = [0, 0xff, b'/', b'@', b':', 0x80, b'a'][random.below(7)];
        }
        2 => {
            let at = aligned_word(random, blob);
            put(blob, at, interesting(random));
        }
        3 => {
            let field = random.below(10) * 4;
            let value = match random.below(2) {
                0 => interesting(random),
                _ => word(blob, field).wrapping_add(random.below(33) as u32).wrapping_sub(16),
            };
            put(blob, field, value);
        }
        4 => {
            let at = pick(random, &original.tokens);
            put(blob, at, [BEGIN_NODE, END_NODE, PROP, NOP, END][random.below(5)]);
        }
        5 => {
            let length = pick(random, &original.properties) + 4;
            put(blob, length, interesting(random));
        }
        6 => {
            let name = pick(random, &original.properties) + 8;
            let value = match random.below(4) {
                0 => interesting(random),
                _ => original.strings[random.below(original.strings.len())],
            };
            put(blob, name, value);
        }
        7 => {
            // Cut the blob short, and maybe make the header agree.
            let length = random.below(blob.len());
            blob.truncate(length);
            if random.below(2) == 0 && length >= 8 {
                put(blob, 4, length as u32);
            }
        }
        8 => {
            // Delete whole words from the structure block: later tokens shift up.
            let at = pick(random, &original.tokens).min(blob.len());
            let count = (1 + random.below(8)) * 4;
            blob.drain(at..(at + count).min(blob.len()));
        }
        9 => {
            // Repeat a run of tokens: a node or property appears twice, or out of place.
            let from = pick(random, &original.tokens).min(blob.len());
            let to = pick(random, &original.tokens).min(blob.len());
            let run: Vec<u8> = blob[from..(from + (1 + random.below(16)) * 4).min(blob.len())].to_vec();
            blob.splice(to..to, run);
        }
        10 => {
            let strings = &original.strings_block;
            if !strings.is_empty() && strings.end <= blob.len() {
                let at = strings.start + random.below(strings.len());
                blob[at] = [0, b'#', b'/', b'a', 0xff][random.below(5)];
            }
        }
        11 => {
            // Rename a node (the root's empty name too): a lookup misses it, or finds it twice.
            let at = pick(random, &original.node_names);
            if at < blob.len() {
                blob[at] = [b'x', b'@', b'/', 0][random.below(4)];
            }
        }
        12 => name_a_property_as_a_path(random, original, blob),
        _ => {
            // One structure word copied over another: a plausible token in the wrong place.
            let (from, to) = (pick(random, &original.tokens), aligned_word(random, blob));
            if from + 4 <= blob.len() {
                let value = word(blob, from);
                put(blob, to, value);
            }
        }
    }
}

/// Renames a property (an alias, half the time) to a path the kernel looks up, and makes its
/// value that path too where it fits: `"/psci" = "/psci"`, an alias that names itself. The
/// name is appended to the strings block, which both originals end with.
fn name_a_property_as_a_path(random: &mut SplitMix64, original: &Original, blob: &mut Vec<u8>) {
    let path = PATHS[random.below(PATHS.len())];
    let property = match random.below(2) {
        0 if !original.aliases.is_empty() => pick(random, &original.aliases),
        _ => pick(random, &original.properties),
    };
    if blob.len() != original.blob.len() || original.strings_block.end != blob.len() {
        return; // already cut or shifted: no room to add a name
    }
    let name_offset = original.strings_block.len() as u32;
    blob.extend_from_slice(path.as_bytes());
    blob.push(0);
    let added = path.len() as u32 + 1;
    for field in [4, 32] {
        let value = word(blob, field).wrapping_add(added); // totalsize, size_dt_strings
        put(blob, field, value);
    }
    put(blob, property + 8, name_offset);
    let length = word(blob, property + 4) as usize;
    if let Some(value) = blob.get_mut(property + 12..property + 12 + length).filter(|value| value.len() > path.len()) {
        value.fill(0);
        value[..path.len()].copy_from_slice(path.as_bytes());
    }
}

fn pick(random: &mut SplitMix64, offsets: &[usize]) -> usize {
    offsets[random.below(offsets.len())]
}

fn word(blob: &[u8], at: usize) -> u32 {
    blob.get(at..at + 4).map_or(0, |bytes| u32::from_be_bytes(bytes.try_into().unwrap()))
}

fn put(blob: &mut [u8], at: usize, value: u32) {
    if let Some(bytes) = blob.get_mut(at..at + 4) {
        bytes.copy_from_slice(&value.to_be_bytes());
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): tiny, fast, and every seed gives a good stream.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0), near enough uniform for small bounds.
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// A QEMU 10 `virt` devicetree: `qemu-virt-smmuv3.dtb` is `-M virt,iommu=smmuv3 -cpu cortex-a72`
/// as `cargo xtask qemu` hands it to the kernel (with its test reservation and restricted DMA
/// pool added), with a GICv2 and its GICv2m frame; `qemu-virt-gicv3-its.dtb` is QEMU's own with
/// `gic-version=3`, a GICv3 and its ITS. Both have virtio-mmio slots, a PL011, PSCI, an SMMUv3
/// and a PCIe host bridge.
///
/// QEMU lists 32 virtio-mmio slots, alike but for their addresses; all but the first
/// [`VIRTIO_SLOTS_KEPT`] are cut out, as they would only make each case slower.
fn qemu_virt(blob: &[u8]) -> Vec<u8> {
    let word = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap()) as usize;
    let (structure_start, strings_start, structure_size) = (word(8), word(12), word(36));
    assert!(structure_start + structure_size <= strings_start, "the fixture's strings follow its structure");
    let mut structure = Vec::new();
    let mut slots = 0;
    let mut at = structure_start;
    while at < structure_start + structure_size {
        let token_start = at;
        let token = word(at) as u32;
        at += 4;
        match token {
            BEGIN_NODE => {
                let name_length = blob[at..].iter().position(|&b| b == 0).unwrap();
                let is_slot = blob[at..at + name_length].starts_with(b"virtio_mmio@");
                at = (at + name_length + 1).next_multiple_of(4);
                if is_slot {
                    slots += 1;
                    if slots > VIRTIO_SLOTS_KEPT {
                        // A slot has properties and no children: skip to its END_NODE.
                        while word(at) as u32 != END_NODE {
                            at = (at + 12 + word(at + 4)).next_multiple_of(4);
                        }
                        at += 4;
                        continue;
                    }
                }
            }
            PROP => at = (at + 8 + word(at)).next_multiple_of(4),
            _ => {}
        }
        structure.extend_from_slice(&blob[token_start..at]);
    }
    let removed = structure_size - structure.len();
    let mut trimmed = blob[..structure_start].to_vec();
    trimmed.extend_from_slice(&structure);
    trimmed.extend_from_slice(&blob[structure_start + structure_size..]);
    for (field, value) in [(4, blob.len() - removed), (12, strings_start - removed), (36, structure.len())] {
        trimmed[field..field + 4].copy_from_slice(&(value as u32).to_be_bytes());
    }
    trimmed
}

/// How many of QEMU's virtio-mmio slots [`qemu_virt`] keeps.
const VIRTIO_SLOTS_KEPT: usize = 4;

/// A blob shaped like the Raspberry Pi 4's as its firmware passes it: `/soc` with one-cell
/// addresses translated by `ranges` and `dma-ranges`, a bus below it with its own
/// `dma-ranges`, the console named through an alias, RAM in two banks, no PSCI, the GIC-400
/// under `/soc`, the architected timer's level-low PPIs, named DMA interrupts.
fn pi4_like() -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.reserve_memory(0, 0x1000);
    w.begin_node("");
    w.property_string("model", "Raspberry Pi 4 Model B Rev 1.4");
    w.property("compatible", b"raspberrypi,4-model-b\0brcm,bcm2711\0");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("interrupt-parent", &[1]);
    w.begin_node("aliases");
    w.property_string("serial0", "/soc/serial@7e215040");
    w.property_string("serial1", "/soc/serial@7e201000");
    w.property_string("emmc2bus", "/emmc2bus");
    w.end_node();
    w.begin_node("chosen");
    w.property_string("stdout-path", "serial0:115200n8");
    w.property_string("bootargs", "coherent_pool=1M 8250.nr_uarts=1 kernel.test");
    w.end_node();
    w.begin_node("reserved-memory");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property("ranges", &[]);
    w.begin_node("linux,cma");
    w.property_string("compatible", "shared-dma-pool");
    w.property_cells("size", &[0x400_0000]);
    w.property("reusable", &[]);
    w.property("linux,cma-default", &[]);
    w.end_node();
    w.begin_node("restricted@3a000000");
    w.property_string("compatible", "restricted-dma-pool");
    w.property_cells("reg", &[0, 0x3a00_0000, 0x40_0000]);
    w.property_cells("phandle", &[0x40]);
    w.end_node();
    w.begin_node("bounce");
    w.property_string("compatible", "restricted-dma-pool");
    w.property_cells("size", &[0x10_0000]);
    w.property_cells("alignment", &[0x1_0000]);
    w.property_cells("alloc-ranges", &[0, 0, 0x3b40_0000]);
    w.property_cells("phandle", &[0x41]);
    w.end_node();
    w.end_node();
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", &[0, 0, 0x3b40_0000, 1, 0, 0x8000_0000]);
    w.end_node();
    w.begin_node("soc");
    w.property("compatible", b"simple-bus\0");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    #[rustfmt::skip]
    w.property_cells("ranges", &[
        0x7e00_0000, 0, 0xfe00_0000, 0x180_0000,
        0x7c00_0000, 0, 0xfc00_0000, 0x200_0000,
        0x4000_0000, 0, 0xff80_0000, 0x80_0000,
    ]);
    w.property_cells("dma-ranges", &[0xc000_0000, 0, 0, 0x4000_0000]);
    w.begin_node("interrupt-controller@40041000");
    w.property_string("compatible", "arm,gic-400");
    w.property("interrupt-controller", &[]);
    w.property_cells("#interrupt-cells", &[3]);
    w.property_cells("reg", &[0x4004_1000, 0x1000, 0x4004_2000, 0x2000, 0x4004_4000, 0x2000, 0x4004_6000, 0x2000]);
    w.property_cells("interrupts", &[1, 9, 0xf04]);
    w.property_cells("phandle", &[1]);
    w.end_node();
    w.begin_node("watchdog@7e100000");
    w.property("compatible", b"brcm,bcm2711-pm\0brcm,bcm2835-pm-wdt\0");
    w.property_cells("reg", &[0x7e10_0000, 0x114, 0x7e00_a000, 0x24]);
    w.end_node();
    w.begin_node("dma@7e007000");
    w.property_string("compatible", "brcm,bcm2835-dma");
    w.property_cells("reg", &[0x7e00_7000, 0xb00]);
    w.property_cells("interrupts", &[0, 80, 4, 0, 81, 4]);
    w.property("interrupt-names", b"dma0\0dma1\0");
    w.property_cells("#dma-cells", &[1]);
    w.property_cells("brcm,dma-channel-mask", &[0x7f5]);
    w.property_cells("memory-region", &[0x40]);
    w.end_node();
    w.begin_node("serial@7e201000");
    w.property("compatible", b"arm,pl011\0arm,primecell\0");
    w.property_cells("reg", &[0x7e20_1000, 0x200]);
    w.property_cells("interrupts", &[0, 121, 4]);
    w.property_string("status", "okay");
    w.end_node();
    w.begin_node("serial@7e215040");
    w.property_string("compatible", "brcm,bcm2835-aux-uart");
    w.property_cells("reg", &[0x7e21_5040, 0x40]);
    w.property_string("status", "okay");
    w.end_node();
    w.begin_node("mmc@7e300000");
    w.property_string("compatible", "brcm,bcm2835-mmc");
    w.property_cells("reg", &[0x7e30_0000, 0x100]);
    w.property_string("status", "disabled");
    w.end_node();
    w.end_node();
    w.begin_node("emmc2bus");
    w.property("compatible", b"simple-bus\0");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0, 0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
    w.property_cells("dma-ranges", &[0, 0xc000_0000, 0, 0, 0x4000_0000]);
    w.begin_node("mmc@7e340000");
    w.property_string("compatible", "brcm,bcm2711-emmc2");
    w.property_cells("reg", &[0, 0x7e34_0000, 0x100]);
    w.property_cells("memory-region", &[0x41]);
    w.end_node();
    w.end_node();
    w.begin_node("timer");
    w.property_string("compatible", "arm,armv8-timer");
    w.property_cells("interrupts", &[1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08]);
    w.end_node();
    w.begin_node("cpus");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[0]);
    for (index, name) in ["cpu@0", "cpu@1", "cpu@2", "cpu@3"].into_iter().enumerate() {
        w.begin_node(name);
        w.property_string("device_type", "cpu");
        w.property_string("compatible", "arm,cortex-a72");
        w.property_cells("reg", &[index as u32]);
        w.property_string("enable-method", "spin-table");
        w.property_cells("cpu-release-addr", &[0, 0xd8 + 8 * index as u32]);
        w.end_node();
    }
    w.end_node();
    w.end_node();
    w.finish()
}
