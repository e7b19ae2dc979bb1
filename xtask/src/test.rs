//! `cargo xtask test`: every test there is.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::devicetree::{POOL_SIZE, PoolForm, RaspiPool};
use crate::excerpts;
use crate::prerequisites::ensure_qemu;
use crate::qemu::{self, Board, GicVersion, IommuGranule, Machine, Virt};
use crate::scenarios::Scenario;
use crate::{Result, image, sdcard};

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
    // with the SD card's restricted pool; then machines nobody tuned the kernel for: three
    // disks of 4 KiB blocks, a restricted pool too small for some requests (with a GICv3, so
    // that MSIs without an IOMMU, written to the doorbell's physical address, are tested too).
    let mut three_large_disks = Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K));
    (three_large_disks.disks, three_large_disks.block_size) = (3, 4096);
    let mut small_pool = Virt::standard(false, PoolForm::Static, None);
    (small_pool.pool.size, small_pool.gic) = (SMALL_POOL, GicVersion::V3);
    // Four CPUs, as on a Pi 4, on a GICv3 with an ITS and SMMU and on a GICv2 without.
    let four_cpus = |virt: Virt| Virt { cpus: 4, ..virt };
    let machines = [
        Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K)), "cortex-a72"),
        Machine::virt(Virt::standard(true, PoolForm::Dynamic, Some(IommuGranule::Size16K)), "cortex-a72"),
        Machine::virt(four_cpus(Virt::standard(false, PoolForm::Dynamic, Some(IommuGranule::Size64K))), "max"),
        Machine::virt(four_cpus(Virt::standard(true, PoolForm::Static, None)), "max"),
        Machine::raspi4b(RaspiPool::Default),
        Machine::raspi4b(RaspiPool::Restricted),
        Machine::virt(three_large_disks, "cortex-a72"),
        Machine::virt(small_pool, "cortex-a72"),
    ];
    let mut summaries = Vec::new();
    for machine in &machines {
        summaries.push(kernel_tests(machine, &kernel)?);
    }
    summaries.push(crate::exercise::check_skeleton(crate::exercise::Exercise::Edu)?);
    let mut consoles = Vec::new();
    for run in Demo::ALL {
        let console = demo(run, &kernel)?;
        summaries.push(format!("{}: {}", run.name(), check_demo(run, &console)?));
        consoles.push((run.name(), console));
    }
    for scenario in Scenario::ALL {
        let (summary, console) = scenario.check(&kernel)?;
        summaries.push(summary);
        consoles.push((scenario.name(), console));
    }
    summaries.push(check_excerpts(&consoles)?);
    summaries.push(sdcard_read_back()?);
    println!();
    println!("host: {passed} passed, {failed} failed");
    for summary in summaries {
        println!("{summary}");
    }
    Ok(())
}

/// A restricted pool too small for the tests' 128 KiB requests, yet large enough for the
/// devices' queues: those tests skip, saying why, and the rest pass.
const SMALL_POOL: u64 = 128 << 10;

/// The kernel's own tests on `machine`: all pass, and only the tests of devices the machine
/// lacks skip.
fn kernel_tests(machine: &Machine, kernel: &Path) -> Result<String> {
    println!("xtask: kernel tests on {}", machine.name());
    let run = qemu::run_captured(machine, kernel, &qemu::test_arguments(machine), KERNEL_TIMEOUT)?;
    let summary = run.console.lines().rev().find(|line| line.starts_with("kernel: ")).map(str::to_owned);
    let summary = summary
        .ok_or(format!("{}: the kernel printed no `kernel: N passed, M failed, K skipped` line", machine.name()))?;
    if run.exit_code != Some(0) || !summary.contains(" 0 failed") {
        return Err(format!("{}: {summary} (QEMU exit status {:?})", machine.name(), run.exit_code));
    }
    if let Some(test) = unexpected_skip(&run.console, allowed_skips(machine)) {
        return Err(format!("{}: `{test}` skipped, but this board has its device", machine.name()));
    }
    Ok(format!("{}: {summary}", machine.name()))
}

/// The demos of the documented commands; the README and the book quote their consoles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    /// `cargo xtask qemu`.
    Virt,
    /// `cargo xtask qemu --board raspi4b`.
    Raspi4b,
    /// `cargo xtask qemu --append kernel.fault-demo`.
    Fault,
    /// The book's traced transfer: NVMe buffers at page offset 0xfa0 through the untrusted
    /// controller's 64 KiB-granule domain, `dma.trace=00:05.0`.
    Trace,
}

impl Demo {
    pub const ALL: [Demo; 4] = [Demo::Virt, Demo::Raspi4b, Demo::Fault, Demo::Trace];

    /// How a log excerpt names it.
    pub fn name(self) -> &'static str {
        match self {
            Demo::Virt => "virt-demo",
            Demo::Raspi4b => "raspi4b-demo",
            Demo::Fault => "fault-demo",
            Demo::Trace => "nvme-0xfa0-trace",
        }
    }
}

/// The machine and command line of each run the documentation quotes, as the command it
/// gives starts it.
fn demo_machine(run: Demo) -> (Machine, &'static str) {
    let virt = || Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K)), "cortex-a72");
    match run {
        Demo::Virt => (virt(), ""),
        Demo::Raspi4b => (Machine::raspi4b(RaspiPool::Default), ""),
        Demo::Fault => (virt(), "kernel.fault-demo"),
        Demo::Trace => (
            Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size64K)), "cortex-a72"),
            "kernel.test test.only=nvme::prp_entries_keep_the_page_offset dma.trace=00:05.0",
        ),
    }
}

/// What `run` printed.
pub fn demo(run: Demo, kernel: &Path) -> Result<String> {
    let (machine, bootargs) = demo_machine(run);
    println!("xtask: {} on {}", run.name(), machine.name());
    let output = qemu::run_captured(&machine, kernel, bootargs, KERNEL_TIMEOUT)?;
    let expected_status = if run == Demo::Fault { 1 } else { 0 };
    if output.exit_code != Some(expected_status) {
        return Err(format!("{}: QEMU exit status {:?}, expected {expected_status}", run.name(), output.exit_code));
    }
    Ok(output.console)
}

/// What each demo must show; a one-line summary of it.
fn check_demo(run: Demo, console: &str) -> Result<String> {
    let (expected, summary): (&[&str], _) = match run {
        Demo::Virt => (
            &["demo: block device", "identical", "demo: network: 10.0.2.2 is at", "powering off: PSCI SYSTEM_OFF"],
            "every device transferred, powered off through PSCI",
        ),
        // No semihosting exit on success, no PSCI: the watchdog, which `-no-reboot` turns
        // into an exit.
        Demo::Raspi4b => (
            &["demo: DMA engine: copied 64 KiB", "identically", "powering off: watchdog reset"],
            "DMA engine copy verified, powered off through the watchdog",
        ),
        // An unexpected fault is reported in words (class, fault, FAR, ELR, registers), the
        // panic handler names where it stopped, and the machine stops with a failure status.
        Demo::Fault => (
            &[
                "synchronous exception: data abort from EL1, translation fault at level 0, on a read",
                "FAR 0x0000000000001000",
                "kernel panic: panicked at",
                "unhandled synchronous exception",
            ],
            "data abort reported in words, FAR right, stopped with status 1",
        ),
        Demo::Trace => (
            &[
                "keeps offset 0xfa0; alloc_align_mask 0xffff",
                "pre-padding 0xfa0; IOVA",
                "granule(s) of 64 KiB mapped read-only; the device gets 0x",
                "unmapped, invalidated and waited for (strict)",
                "kernel: 1 passed, 0 failed, 0 skipped",
            ],
            "an NVMe buffer at 0xfa0 traced through a 64 KiB untrusted domain, map to unmap",
        ),
    };
    match expected.iter().find(|text| !console.contains(*text)) {
        Some(missing) => Err(format!("{}: the console lacks \"{missing}\"", run.name())),
        None => Ok(summary.into()),
    }
}

/// Every log excerpt in the documentation is what its run printed.
fn check_excerpts(consoles: &[(&str, String)]) -> Result<String> {
    let runs: Vec<&str> = consoles.iter().map(|(name, _)| *name).collect();
    let mut count = 0;
    for file in excerpts::documents(&image::workspace_root()) {
        let text =
            std::fs::read_to_string(&file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        for excerpt in excerpts::find(&file, &text, &runs)? {
            let console = &consoles.iter().find(|(name, _)| *name == excerpt.run).expect("a known run").1;
            excerpts::check(&excerpt, console)?;
            count += 1;
        }
    }
    Ok(format!("documentation: {count} log excerpts match the runs they quote"))
}

/// `cargo xtask excerpts`: boots each quoted run and rewrites the documentation's excerpts
/// with what it prints now.
pub fn update_excerpts() -> Result<()> {
    ensure_qemu()?;
    let kernel = image::build()?;
    let mut consoles = Vec::new();
    for run in Demo::ALL {
        consoles.push((run.name(), demo(run, &kernel)?));
    }
    for scenario in Scenario::ALL {
        consoles.push((scenario.name(), scenario.check(&kernel)?.1));
    }
    for file in excerpts::documents(&image::workspace_root()) {
        let text =
            std::fs::read_to_string(&file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let rewritten = excerpts::rewrite(&file, &text, &consoles)?;
        if rewritten != text {
            std::fs::write(&file, rewritten).map_err(|error| format!("cannot write {}: {error}", file.display()))?;
            println!("xtask: rewrote the log excerpts in {}", file.display());
        }
    }
    Ok(())
}

/// Tests of devices a board lacks skip themselves; these may skip on each board (a prefix
/// names a whole module). Any other skip is a failure: a device went missing.
fn allowed_skips(machine: &Machine) -> &'static [&'static str] {
    match machine.board {
        // A pool too small for a test's buffers: the test says so and skips.
        Board::Virt(Virt { pool, .. }) if pool.size < POOL_SIZE => &[
            "dma_engine::",
            "iommu::",
            "nvme::",
            "virtio::",
            "block::",
            "edu::translated_",
            // Too small to cut in one area per CPU.
            "smp::each_cpu_maps_first_in_its_own_pool_area",
            // Its GICv3 has an ITS, and its disks no IOMMU domain.
            "msi::the_doorbell_",
            "msi::an_msi_without_",
        ],
        // PCIe goes through the SMMU: the untranslated route has nothing to test.
        Board::Virt(Virt { iommu: Some(_), .. }) => {
            &["dma_engine::", "block::pcie_disks_without_an_iommu_take_their_bridges_route", "edu::untranslated_"]
        }
        // No SMMU: QEMU's default GICv2, which has no ITS.
        Board::Virt(Virt { iommu: None, .. }) => {
            &["dma_engine::", "iommu::", "nvme::", "edu::translated_", "interrupts::an_its_", "msi::"]
        }
        // No PCIe, so no edu.
        Board::Raspi4b { pool: RaspiPool::Default } => &[
            "virtio::",
            "iommu::",
            "nvme::",
            "block::",
            "edu::",
            "interrupts::every_disk_",
            "interrupts::an_its_",
            "msi::",
            "smp::a_completion_taken_on_one_cpu_wakes_the_reader_on_another",
            "smp::every_cpu_moves_data_on_every_disk_at_once",
        ],
        // A restricted engine bounces everything: nothing is lent in place.
        Board::Raspi4b { pool: RaspiPool::Restricted } => &[
            "virtio::",
            "iommu::",
            "nvme::",
            "block::",
            "edu::",
            "interrupts::every_disk_",
            "interrupts::an_its_",
            "msi::",
            "smp::a_completion_taken_on_one_cpu_wakes_the_reader_on_another",
            "smp::every_cpu_moves_data_on_every_disk_at_once",
            "dma_engine::buffers_within_reach_are_not_bounced",
        ],
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

/// `cargo xtask sdcard`'s image, built with the real Pi firmware and read back.
fn sdcard_read_back() -> Result<String> {
    println!("xtask: SD card image");
    Ok(sdcard::build(None, &sdcard::default_output(), "")?.summary)
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
