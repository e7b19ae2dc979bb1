//! `cargo xtask exercise edu [--solution]`: do an exercise and see how far it has come.
//!
//! An exercise is a file of the kernel with its interesting part removed (the skeleton), the
//! kernel tests that pass only once that part is written, and the reference solution the
//! kernel normally builds. `cargo xtask exercise edu` builds the kernel with the skeleton (the
//! cargo feature `edu-exercise`, in a target directory of its own so that the image everything
//! else boots stays the solution), boots it on QEMU `virt` with the SMMU and runs the edu tests
//! (`test.only=edu::`), then says which pass and which fail and why. `--solution` runs the same
//! tests against the reference solution. `cargo xtask test` runs the skeleton once too, to
//! check that it builds and that exactly the tests it should fail fail, with its message.
//!
//! The exercise is `docs/exercise-edu.md`; the skeleton `exercises/edu/driver.rs`.

use std::path::Path;
use std::time::Duration;

use crate::devicetree::PoolForm;
use crate::prerequisites::ensure_qemu;
use crate::qemu::{self, IommuGranule, Machine, Virt};
use crate::{Result, image};

/// The exercises there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Exercise {
    /// A DMA driver for QEMU's `edu` device, behind the SMMU (docs/exercise-edu.md).
    Edu,
}

impl Exercise {
    fn name(self) -> &'static str {
        match self {
            Exercise::Edu => "edu",
        }
    }

    /// The kernel's cargo feature that builds the skeleton instead of the solution.
    fn feature(self) -> &'static str {
        match self {
            Exercise::Edu => "edu-exercise",
        }
    }

    /// The prefix of the kernel tests that judge it.
    fn tests(self) -> &'static str {
        match self {
            Exercise::Edu => "edu::",
        }
    }

    fn skeleton(self) -> &'static str {
        match self {
            Exercise::Edu => "exercises/edu/driver.rs",
        }
    }

    fn solution(self) -> &'static str {
        match self {
            Exercise::Edu => "kernel/src/edu/driver.rs",
        }
    }

    fn document(self) -> &'static str {
        match self {
            Exercise::Edu => "docs/exercise-edu.md",
        }
    }

    /// Tests that the skeleton passes: the plumbing it is given.
    fn given(self) -> &'static [&'static str] {
        match self {
            Exercise::Edu => &["edu::answers_its_liveness_check"],
        }
    }

    /// The machine the exercise runs on: `virt` with the SMMU, as `cargo xtask qemu` boots it.
    fn machine(self) -> Machine {
        Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K)), "cortex-a72")
    }
}

/// Generous: the edu tests take a few seconds; only a hang takes this long.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// The verdict of every test the kernel ran, in the order it ran them, from its console:
/// `test NAME ... ok`, `... skipped: REASON`, or `... FAILED` and the message on the next line.
fn outcomes(console: &str) -> Vec<(String, Outcome)> {
    let mut lines = console.lines().peekable();
    let mut found = Vec::new();
    while let Some(line) = lines.next() {
        let Some((name, verdict)) = line.strip_prefix("test ").and_then(|rest| rest.split_once(" ... ")) else {
            continue;
        };
        let outcome = match verdict {
            "ok" => Outcome::Passed,
            _ if verdict.starts_with("skipped") => {
                Outcome::Skipped(verdict.trim_start_matches("skipped").trim_start_matches(':').trim().into())
            }
            _ if verdict.starts_with("FAILED") => {
                let message = match lines.peek() {
                    Some(next) if next.starts_with("    ") => lines.next().unwrap_or_default().trim().to_string(),
                    _ => verdict.trim_start_matches("FAILED").trim().to_string(),
                };
                Outcome::Failed(message)
            }
            _ => continue,
        };
        found.push((name.to_string(), outcome));
    }
    found
}

/// What one run of an exercise's tests showed.
struct Report {
    tests: Vec<(String, Outcome)>,
    exit_code: Option<i32>,
}

/// Builds the kernel (the skeleton, or the solution) and runs the exercise's tests.
fn run_tests(exercise: Exercise, solution: bool) -> Result<Report> {
    ensure_qemu()?;
    let kernel = match solution {
        true => image::build()?,
        false => image::build_variant(exercise.feature(), &[exercise.feature()])?,
    };
    let machine = exercise.machine();
    let what = if solution { exercise.solution() } else { exercise.skeleton() };
    println!("xtask: exercise {}: the tests {}* on {}, with {what}", exercise.name(), exercise.tests(), machine.name());
    run_on(exercise, &machine, &kernel)
}

fn run_on(exercise: Exercise, machine: &Machine, kernel: &Path) -> Result<Report> {
    let bootargs = format!("{} test.only={}", qemu::test_arguments(machine), exercise.tests());
    let run = qemu::run_captured(machine, kernel, &bootargs, TIMEOUT)?;
    let tests: Vec<(String, Outcome)> = outcomes(&run.console);
    if !tests.iter().any(|(name, _)| name.starts_with(exercise.tests())) {
        return Err(format!(
            "exercise {}: the kernel ran no test {}* (QEMU exit status {:?}; its console is above)",
            exercise.name(),
            exercise.tests(),
            run.exit_code
        ));
    }
    Ok(Report { tests, exit_code: run.exit_code })
}

/// `cargo xtask exercise NAME [--solution]`: runs the tests and says which pass and which
/// fail, with each failure's message. Fails while any fails.
pub fn run(exercise: Exercise, solution: bool) -> Result<()> {
    let report = run_tests(exercise, solution)?;
    println!();
    let (mut failing, mut others_failing) = (0, 0);
    for (name, outcome) in &report.tests {
        if !name.starts_with(exercise.tests()) {
            others_failing += usize::from(matches!(outcome, Outcome::Failed(_)));
            continue;
        }
        match outcome {
            Outcome::Passed => println!("  pass     {name}"),
            Outcome::Skipped(reason) => println!("  skipped  {name}: {reason}"),
            Outcome::Failed(message) => {
                failing += 1;
                println!("  FAIL     {name}\n           {message}");
            }
        }
    }
    let own = || report.tests.iter().filter(|(name, _)| name.starts_with(exercise.tests()));
    let passed = own().filter(|(_, outcome)| *outcome == Outcome::Passed).count();
    let ran = own().filter(|(_, outcome)| !matches!(outcome, Outcome::Skipped(_))).count();
    let name = exercise.name();
    println!();
    if others_failing > 0 {
        println!("exercise {name}: {others_failing} other kernel test(s) failed too (see the console above)");
    }
    match (failing + others_failing, report.exit_code) {
        (0, Some(0)) if solution => {
            println!("exercise {name}: the reference solution passes all {passed} tests ({})", exercise.solution());
            Ok(())
        }
        (0, Some(0)) => {
            println!("exercise {name}: done, all {passed} tests pass. Compare with {}", exercise.solution());
            Ok(())
        }
        (0, status) => Err(format!("exercise {name}: no test failed, but the kernel stopped with status {status:?}")),
        _ => Err(format!(
            "exercise {name}: {passed} of {ran} tests pass, {failing} fail; edit {} (guide: {})",
            if solution { exercise.solution() } else { exercise.skeleton() },
            exercise.document()
        )),
    }
}

/// For `cargo xtask test`: the skeleton builds, passes the tests of what it is given, and
/// fails every other test that runs with its "not implemented" message: the tests pass only
/// once the exercise is done. Returns a one-line summary.
pub fn check_skeleton(exercise: Exercise) -> Result<String> {
    let report = run_tests(exercise, false)?;
    let name = exercise.name();
    let mut failed = 0;
    for (test, outcome) in report.tests.iter().filter(|(test, _)| test.starts_with(exercise.tests())) {
        let given = exercise.given().contains(&test.as_str());
        match (outcome, given) {
            (Outcome::Passed, true) | (Outcome::Skipped(_), false) => {}
            (Outcome::Failed(message), false) if message.contains("not implemented") => failed += 1,
            (Outcome::Passed, false) => {
                return Err(format!("exercise {name}: the skeleton passes {test}, which only the solution should"));
            }
            (outcome, _) => {
                return Err(format!("exercise {name}: with the skeleton, {test} ended {outcome:?}"));
            }
        }
    }
    if failed == 0 {
        return Err(format!("exercise {name}: no test failed with the skeleton"));
    }
    Ok(format!(
        "exercise {name}: the skeleton builds; {failed} tests fail with \"not implemented\" until it is done, {} given pass",
        exercise.given().len()
    ))
}

#[cfg(test)]
mod tests {
    use super::{Outcome, outcomes};

    #[test]
    fn reads_each_tests_verdict_and_message() {
        let console = "[   0.1] INFO  pci 00:06.0: edu 1.0\n\
                       test edu::answers_its_liveness_check ... ok\n\
                       test edu::translated_round_trips_keep_every_byte ... FAILED\n    \
                       filling the device's buffer: not implemented: Edu::dma_to_device\n\
                       test edu::untranslated_28_bit_dma_reaches_no_ram ... skipped: an SMMUv3 translates edu\n\
                       test edu::panics ... FAILED (panicked)\n\
                       kernel: 1 passed, 2 failed, 1 skipped\n";
        assert_eq!(
            outcomes(console),
            [
                ("edu::answers_its_liveness_check".to_string(), Outcome::Passed),
                (
                    "edu::translated_round_trips_keep_every_byte".into(),
                    Outcome::Failed("filling the device's buffer: not implemented: Edu::dma_to_device".into())
                ),
                (
                    "edu::untranslated_28_bit_dma_reaches_no_ram".into(),
                    Outcome::Skipped("an SMMUv3 translates edu".into())
                ),
                ("edu::panics".into(), Outcome::Failed("(panicked)".into())),
            ]
        );
    }
}
