//! `cargo xtask test`: every test there is.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::devicetree::{PoolForm, RaspiPool};
use crate::prerequisites::ensure_qemu;
use crate::qemu::{self, Board, IommuGranule, Machine, Virt};
use crate::{image, sdcard, Result};

/// Crates that build for the host and carry their tests with them.
const HOST_CRATES: [&str; 6] = ["addr", "platform", "vmsa", "dma", "drivers", "xtask"];
/// Generous: a kernel test run takes a few seconds; only a hang takes this long.
const KERNEL_TIMEOUT: Duration = Duration::from_secs(180);

pub fn run_all() -> Result<()> {
    let (passed, failed) = host_tests()?;
    ensure_qemu()?;
    let kernel = image::build()?;
    // Both entry levels, both CPU models, both forms of the restricted pool, every IOMMU
    // granule and a machine without an IOMMU; the Pi 4 with the kernel's own bounce pool and
    // with the SD card's restricted pool.
    let machines = [
        Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K)), "cortex-a72"),
        Machine::virt(Virt::standard(true, PoolForm::Dynamic, Some(IommuGranule::Size16K)), "cortex-a72"),
        Machine::virt(Virt::standard(false, PoolForm::Dynamic, Some(IommuGranule::Size64K)), "max"),
        Machine::virt(Virt::standard(true, PoolForm::Static, None), "max"),
        Machine::raspi4b(RaspiPool::Default),
        Machine::raspi4b(RaspiPool::Restricted),
    ];
    let mut summaries = Vec::new();
    for machine in &machines {
        println!("xtask: kernel tests on {}", machine.name());
        let run = qemu::run_captured(machine, &kernel, &qemu::test_arguments(machine), KERNEL_TIMEOUT)?;
        let summary = run.console.lines().rev().find(|line| line.starts_with("kernel: ")).map(str::to_owned);
        let summary = summary
            .ok_or(format!("{}: the kernel printed no `kernel: N passed, M failed, K skipped` line", machine.name()))?;
        if run.exit_code != Some(0) || !summary.contains(" 0 failed") {
            return Err(format!("{}: {summary} (QEMU exit status {:?})", machine.name(), run.exit_code));
        }
        if let Some(test) = unexpected_skip(&run.console, allowed_skips(machine)) {
            return Err(format!("{}: `{test}` skipped, but this board has its device", machine.name()));
        }
        summaries.push(format!("{}: {summary}", machine.name()));
    }
    summaries.push(crash_report(&machines[0], &kernel)?);
    summaries.push(raspi_demo_powers_off(&machines[5], &kernel)?);
    summaries.push(sdcard_read_back()?);
    println!();
    println!("host: {passed} passed, {failed} failed");
    for summary in summaries {
        println!("{summary}");
    }
    Ok(())
}

/// Tests of devices a board lacks skip themselves; these may skip on each board (a prefix
/// names a whole module). Any other skip is a failure: a device went missing.
fn allowed_skips(machine: &Machine) -> &'static [&'static str] {
    match machine.board {
        Board::Virt(Virt { iommu: Some(_), .. }) => &["dma_engine::"],
        Board::Virt(Virt { iommu: None, .. }) => &["dma_engine::", "iommu::", "nvme::"],
        Board::Raspi4b { pool: RaspiPool::Default } => &["virtio::", "iommu::", "nvme::"],
        // A restricted engine bounces everything: nothing is lent in place.
        Board::Raspi4b { pool: RaspiPool::Restricted } => {
            &["virtio::", "iommu::", "nvme::", "dma_engine::buffers_within_reach_are_not_bounced"]
        }
    }
}

/// The first test that skipped although `allowed` does not let it.
fn unexpected_skip<'c>(console: &'c str, allowed: &[&str]) -> Option<&'c str> {
    console
        .lines()
        .filter_map(|line| line.strip_prefix("test ")?.split_once(" ... skipped"))
        .map(|(name, _)| name)
        .find(|name| !allowed.iter().any(|prefix| name.starts_with(prefix)))
}

/// The Pi demo as a user sees it: the DMA engine's copy, then a power-off through the
/// watchdog (no semihosting, no PSCI), which QEMU's `-no-reboot` turns into an exit.
fn raspi_demo_powers_off(machine: &Machine, kernel: &std::path::Path) -> Result<String> {
    println!("xtask: demo on {}", machine.name());
    let run = qemu::run_captured(machine, kernel, "", KERNEL_TIMEOUT)?;
    let expected = ["demo: DMA engine: copied 64 KiB", "identically", "powering off: watchdog reset"];
    if let Some(missing) = expected.iter().find(|text| !run.console.contains(*text)) {
        return Err(format!("raspi4b demo: the console lacks \"{missing}\""));
    }
    if run.exit_code != Some(0) {
        return Err(format!("raspi4b demo: QEMU exit status {:?}, expected 0 after the watchdog reset", run.exit_code));
    }
    Ok("raspi4b demo: DMA engine copy verified, powered off through the watchdog".into())
}

/// `cargo xtask sdcard`'s image, built with the real Pi firmware and read back.
fn sdcard_read_back() -> Result<String> {
    println!("xtask: SD card image");
    Ok(sdcard::build(None, &sdcard::default_output(), "")?.summary)
}

/// An unexpected fault is reported in words (class, fault, FAR, ELR, registers), the panic
/// handler names where it stopped, and the machine stops with a failure status.
fn crash_report(machine: &Machine, kernel: &std::path::Path) -> Result<String> {
    println!("xtask: crash report on {}", machine.name());
    let run = qemu::run_captured(machine, kernel, "kernel.fault-demo", KERNEL_TIMEOUT)?;
    let expected = [
        "synchronous exception: data abort from EL1, translation fault at level 0, on a read",
        "FAR 0x0000000000001000",
        "kernel panic: panicked at",
        "unhandled synchronous exception",
    ];
    if let Some(missing) = expected.iter().find(|text| !run.console.contains(*text)) {
        return Err(format!("crash report: the console lacks \"{missing}\""));
    }
    if run.exit_code != Some(1) {
        return Err(format!("crash report: QEMU exit status {:?}, expected 1", run.exit_code));
    }
    Ok("crash report: data abort reported in words, FAR right, stopped with status 1".into())
}

/// Runs `cargo test` on the host crates; returns the summed pass and fail counts.
fn host_tests() -> Result<(usize, usize)> {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(image::workspace_root()).args(["test", "--release"]);
    for name in HOST_CRATES {
        command.args(["--package", name]);
    }
    let output =
        command.stderr(Stdio::inherit()).output().map_err(|error| format!("cannot run cargo test: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        return Err("host tests failed (see above)".into());
    }
    Ok(stdout.lines().filter_map(test_result_counts).fold((0, 0), |(p, f), (passed, failed)| (p + passed, f + failed)))
}

/// Reads "test result: ok. 12 passed; 0 failed; ..." lines.
fn test_result_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<usize> {
        let mut previous: Option<&str> = None;
        for token in rest.split([' ', ';', '.']).filter(|token| !token.is_empty()) {
            if token == word {
                return previous?.parse().ok();
            }
            previous = Some(token);
        }
        None
    };
    Some((number_before("passed")?, number_before("failed")?))
}

#[cfg(test)]
mod tests {
    use super::{test_result_counts, unexpected_skip};

    #[test]
    fn reads_cargo_test_summaries() {
        let line = "test result: ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(test_result_counts(line), Some((12, 3)));
        assert_eq!(test_result_counts("running 12 tests"), None);
    }

    #[test]
    fn only_allowed_tests_may_skip() {
        let console = "test virtio::block ... skipped: no virtio block device\n\
                       test dma::refused ... ok\n\
                       test dma_engine::copies ... skipped: no brcm,bcm2835-dma device\n";
        assert_eq!(unexpected_skip(console, &["virtio::", "dma_engine::"]), None);
        assert_eq!(unexpected_skip(console, &["virtio::"]), Some("dma_engine::copies"));
        assert_eq!(unexpected_skip(console, &[]), Some("virtio::block"));
    }
}
