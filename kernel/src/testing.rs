//! The kernel's own test runner: tests that need the real hardware (or QEMU's model of it).
//!
//! Stable Rust has no custom test frameworks, so tests register themselves with the linker:
//! [`kernel_test!`] puts a [`KernelTest`] record into the `.kernel_tests` section, and
//! `linker.ld` brackets that section with two symbols. The runner walks the records between
//! them, prints one line per test and a summary that `cargo xtask test` reads:
//!
//! ```text
//! test mmu::linear_map_translates_all_ram ... ok
//! test exceptions::unmapped_read_is_a_data_abort ... ok
//! kernel: 12 passed, 0 failed
//! ```
//!
//! A test returns `Err(message)` to fail. A panic in a test also fails it, and stops the run.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::power::Outcome;

pub type TestResult = Result<(), String>;

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
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(alloc::format!($($message)+));
        }
    };
}

pub(crate) use {ensure, kernel_test};

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

static IN_TEST: AtomicBool = AtomicBool::new(false);

pub fn run_all() -> Outcome {
    let tests = all_tests();
    crate::console::write_fmt(format_args!("running {} kernel tests\n", tests.len()));
    let mut failed = 0;
    for test in tests {
        let name = test.name.trim_start_matches("kernel::tests::");
        crate::console::write_fmt(format_args!("test {name} ... "));
        IN_TEST.store(true, Ordering::SeqCst);
        let result = (test.run)();
        IN_TEST.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => crate::console::write_fmt(format_args!("ok\n")),
            Err(message) => {
                failed += 1;
                crate::console::write_fmt(format_args!("FAILED\n    {message}\n"));
            }
        }
    }
    let passed = tests.len() - failed;
    crate::console::write_fmt(format_args!("kernel: {passed} passed, {failed} failed\n"));
    if failed == 0 {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

/// Called by the panic handler: a panic inside a test is that test's failure.
pub fn report_panic_during_test() {
    if IN_TEST.load(Ordering::SeqCst) {
        crate::console::emergency_print(format_args!("FAILED (panicked)\nkernel: run aborted by a panic\n"));
    }
}
