//! The kernel's own test runner: tests that need the real hardware (or QEMU's model of it).
//!
//! Stable Rust has no custom test frameworks, so tests register themselves with the linker:
//! [`kernel_test!`] puts a [`KernelTest`] record into the `.kernel_tests` section, and
//! `linker.ld` brackets that section with two symbols. The runner walks the records between
//! them, prints one line per test and a summary that `cargo xtask test` reads:
//!
//! ```text
//! test mmu::linear_map_translates_all_ram ... ok
//! test dma_engine::copies_above_the_limit_through_the_bounce_pool ... skipped: no brcm,bcm2835-dma device
//! kernel: 12 passed, 0 failed, 1 skipped
//! ```
//!
//! A test returns `Err(message)` to fail. A panic in a test also fails it, and stops the run.
//! A test of a device the machine does not have says so with [`skip!`]; `cargo xtask test`
//! fails a skip on a board that has the device.

use alloc::string::String;

use spin::Mutex;

use crate::power::Outcome;

pub type TestResult = Result<(), Verdict>;

/// Why a test did not pass.
pub enum Verdict {
    Failed(String),
    /// The machine lacks what the test is about.
    Skipped(&'static str),
}

impl From<String> for Verdict {
    fn from(message: String) -> Self {
        Verdict::Failed(message)
    }
}

impl From<&str> for Verdict {
    fn from(message: &str) -> Self {
        Verdict::Failed(message.into())
    }
}

/// One test, as laid out in the `.kernel_tests` section.
pub struct KernelTest {
    pub name: &'static str,
    pub run: fn() -> TestResult,
}

/// Defines a kernel test: `kernel_test! { fn name() { ...; Ok(()) } }`.
macro_rules! kernel_test {
    ($(#[$attribute:meta])* fn $name:ident() $body:block) => {
        $(#[$attribute])*
        fn $name() -> $crate::testing::TestResult $body

        const _: () = {
            #[used]
            #[unsafe(link_section = ".kernel_tests")]
            static TEST: $crate::testing::KernelTest = $crate::testing::KernelTest {
                name: concat!(module_path!(), "::", stringify!($name)),
                run: $name,
            };
        };
    };
}

/// Fails the test with a formatted message unless `condition` holds.
macro_rules! ensure {
    ($condition:expr_2021, $($message:tt)+) => {
        if !$condition {
            return Err(alloc::format!($($message)+).into());
        }
    };
}

/// Ends the test as skipped: the machine lacks what it is about.
macro_rules! skip {
    ($reason:literal) => {
        return Err($crate::testing::Verdict::Skipped($reason))
    };
}

pub(crate) use {ensure, kernel_test, skip};

unsafe extern "C" {
    static __kernel_tests_start: u8;
    static __kernel_tests_end: u8;
}

fn all_tests() -> &'static [KernelTest] {
    let start = (&raw const __kernel_tests_start).cast::<KernelTest>();
    let end = &raw const __kernel_tests_end;
    let count = (end as usize - start as usize) / size_of::<KernelTest>();
    // SAFETY: the linker placed `count` KernelTest records between the two symbols.
    unsafe { core::slice::from_raw_parts(start, count) }
}

/// The test running now, for the panic handler.
static CURRENT_TEST: Mutex<Option<&'static str>> = Mutex::new(None);

/// Runs every test, or with `test.only=NAME[,NAME...]` on the command line only those whose
/// name starts with one of the names (a lesson runs the one test that catches its break).
pub fn run_all() -> Outcome {
    let only =
        crate::machine().devicetree.bootargs().split_whitespace().find_map(|word| word.strip_prefix("test.only="));
    let selected = |name: &str| only.is_none_or(|only| only.split(',').any(|prefix| name.starts_with(prefix)));
    let tests: alloc::vec::Vec<&KernelTest> = all_tests().iter().filter(|test| selected(test_name(test))).collect();
    match only {
        Some(only) => {
            crate::console::write_fmt(format_args!("running {} kernel tests (test.only={only})\n", tests.len()))
        }
        None => crate::console::write_fmt(format_args!("running {} kernel tests\n", tests.len())),
    }
    let (mut failed, mut skipped) = (0, 0);
    for test in &tests {
        let name = test_name(test);
        // The verdict line comes after the test, so that what the test logs stays whole.
        *CURRENT_TEST.lock() = Some(name);
        let result = (test.run)();
        *CURRENT_TEST.lock() = None;
        crate::console::write_fmt(format_args!("test {name} ... "));
        match result {
            Ok(()) => crate::console::write_fmt(format_args!("ok\n")),
            Err(Verdict::Skipped(reason)) => {
                skipped += 1;
                crate::console::write_fmt(format_args!("skipped: {reason}\n"));
            }
            Err(Verdict::Failed(message)) => {
                failed += 1;
                crate::console::write_fmt(format_args!("FAILED\n    {message}\n"));
            }
        }
    }
    let passed = tests.len() - failed - skipped;
    crate::console::write_fmt(format_args!("kernel: {passed} passed, {failed} failed, {skipped} skipped\n"));
    if failed == 0 { Outcome::Success } else { Outcome::Failure }
}

/// A test's name as the runner prints it: `module::test`.
fn test_name(test: &KernelTest) -> &'static str {
    test.name.trim_start_matches("kernel::tests::")
}

/// Called by the panic handler: a panic inside a test is that test's failure.
pub fn report_panic_during_test() {
    // A panic while the lock is held cannot be in a test: the lock is never held across one.
    if let Some(name) = CURRENT_TEST.try_lock().and_then(|current| *current) {
        crate::console::emergency_print(format_args!(
            "test {name} ... FAILED (panicked)\nkernel: run aborted by a panic\n"
        ));
    }
}
