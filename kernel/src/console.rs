//! The console and the kernel log.
//!
//! Log lines go through the `log` facade, so every crate (arch, drivers) logs the same way,
//! and carry the generic timer's count since the kernel started:
//!
//! ```text
//! [   0.004211] INFO  machine: linux,dummy-virt
//! ```

use core::fmt::{self, Write};

use drivers::mini_uart::MiniUart;
use drivers::pl011::Pl011;
use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Mutex;

/// The UART drivers the console can use.
pub enum ConsoleDevice {
    Pl011(Pl011),
    MiniUart(MiniUart),
}

impl Write for ConsoleDevice {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        match self {
            ConsoleDevice::Pl011(uart) => uart.write_str(text),
            ConsoleDevice::MiniUart(uart) => uart.write_str(text),
        }
    }
}

static CONSOLE: Mutex<Option<ConsoleDevice>> = Mutex::new(None);
/// Counter value when the logger started: log times count from here.
static START_TICKS: spin::Once<u64> = spin::Once::new();

pub fn install(device: ConsoleDevice) {
    *CONSOLE.lock() = Some(device);
}

pub fn write_fmt(arguments: fmt::Arguments<'_>) {
    if let Some(console) = CONSOLE.lock().as_mut() {
        // A console that cannot write has nowhere to report it.
        let _ = console.write_fmt(arguments);
    }
}

/// Prints even if the panic happened while the console lock was held.
pub fn emergency_print(arguments: fmt::Arguments<'_>) {
    if CONSOLE.is_locked() {
        // SAFETY: a panic stops the kernel; whoever held the lock will never resume.
        unsafe { CONSOLE.force_unlock() };
    }
    write_fmt(arguments);
}

struct KernelLog;

static KERNEL_LOG: KernelLog = KernelLog;

pub fn start_logger() {
    START_TICKS.call_once(arch::timer::ticks);
    // The logger is only set here, once.
    let _ = log::set_logger(&KERNEL_LOG);
    log::set_max_level(LevelFilter::Info);
}

impl Log for KernelLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Other crates' progress messages would drown the kernel's own; their warnings stay.
        let threshold = if metadata.target().starts_with("virtio_drivers") { Level::Warn } else { Level::Info };
        metadata.level() <= threshold
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let elapsed = arch::timer::ticks() - START_TICKS.get().copied().unwrap_or(0);
        let frequency = arch::timer::frequency().max(1);
        let (seconds, micros) = (elapsed / frequency, (elapsed % frequency) * 1_000_000 / frequency);
        write_fmt(format_args!("[{seconds:>4}.{micros:06}] {:<5} {}\n", record.level(), record.args()));
    }

    fn flush(&self) {}
}
