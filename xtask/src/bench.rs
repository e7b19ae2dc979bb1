//! `cargo xtask bench`: disk throughput on every DMA route, and the ratios between routes.
//!
//! Boots the kernel with `kernel.bench` (see `kernel/src/bench/`) on machines that cannot
//! share a boot, alternately, `--rounds` times each:
//!
//! - `smmu`: QEMU `virt` with the SMMUv3 at a 4 KiB granule: the virtio-mmio disk through the
//!   restricted pool, and on PCIe a trusted and an untrusted virtio-blk-pci disk and NVMe
//!   controller;
//! - `no-smmu`: the same devices with no SMMU: the PCIe disks on their bridge's route, which
//!   xtask's devicetree makes the restricted pool (force bounce);
//! - `bypass`: no SMMU and no pool named by the bridge: the PCIe disks reach memory directly,
//!   the fastest a transfer can be, which the other routes are measured against;
//! - `smmu-deferred`: the first machine with `iommu.strict=0`: the trusted devices' unmaps are
//!   deferred and flushed together (never the untrusted ones');
//! - `smmu-64k`: the first machine with a 64 KiB granule: QEMU's SMMU translates a device's
//!   accesses a granule at a time, so this shows what the emulated SMMU costs per page;
//! - `no-smmu-a72`: `no-smmu` with the Raspberry Pi 4's Cortex-A72;
//! - `smmu-4cpus`: `smmu` with four CPUs, for the scaling figures (below).
//!
//! Every machine but `no-smmu-a72` emulates QEMU's `max` CPU, which has the memory copy
//! instructions (FEAT_MOPS, Armv8.8): a bounce copy is then three instructions QEMU carries out
//! with its own `memmove`, as a recent core would at the speed of its memory system. The
//! Cortex-A72 has no such instructions, so the kernel copies with a loop of loads and stores
//! (`arch/src/copy.rs`), which QEMU runs instruction by instruction: `no-smmu-a72` shows what
//! the restricted pool costs there.
//!
//! Each disk also runs 8 requests of 4 KiB at once, which its driver keeps in flight
//! together, against one at a time (`8-in-flight/one-at-a-time`); and reads one request at a
//! time waited for asleep until its interrupt, against polled (`interrupt/poll time per
//! request`).
//!
//! The `smmu-4cpus` machine is `smmu` with four CPUs: the kernel maps and unmaps, and reads its
//! disks, with 1, 2 and 4 of them at once (`kernel/src/bench/cpus.rs`), printed as `... 2/1 CPUs`
//! and `4/1 CPUs`. Every other machine has two: four emulated CPUs on a two-core host make small
//! requests' times vary from boot to boot, which the route ratios should not inherit.
//!
//! Each figure is the median of its rounds. The output ends with one line per ratio,
//! `bench: NAME = VALUE` (for example `bench: nvme untrusted/trusted read 1MiB = 0.52`), so that
//! runs can be compared with each other. The figures are QEMU TCG's; ratios are what they are for.
//! Each ratio against `bypass` is printed a second time with the numerator's DMA layer taken
//! out (`... read 1MiB without the DMA layer = 0.98`): that says whether what is left to gain
//! is ours or the emulator's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::devicetree::PoolForm;
use crate::prerequisites::ensure_qemu;
use crate::qemu::{self, IommuGranule, Machine, Virt};
use crate::{Result, image};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The CPU every machine but `no-smmu-a72` emulates: one with the memory copy instructions.
const CPU: &str = "max";
const OPS: [&str; 2] = ["read", "write"];
const SIZES: [&str; 3] = ["4KiB", "64KiB", "1MiB"];

/// The ratios printed: a name, then the numerator's and the denominator's figure (`machine
/// disk-route`), for each operation and size.
const RATIOS: [(&str, &str, &str); 15] = [
    ("virtio-pci trusted deferred/strict", "smmu-deferred virtio-pci-trusted", "smmu virtio-pci-trusted"),
    ("nvme trusted deferred/strict", "smmu-deferred nvme-trusted", "smmu nvme-trusted"),
    ("virtio-pci trusted/bypass", "smmu virtio-pci-trusted", "bypass virtio-pci-direct"),
    ("nvme trusted/bypass", "smmu nvme-trusted", "bypass nvme-direct"),
    ("virtio-pci trusted 64KiB-granule/bypass", "smmu-64k virtio-pci-trusted", "bypass virtio-pci-direct"),
    ("nvme trusted 64KiB-granule/bypass", "smmu-64k nvme-trusted", "bypass nvme-direct"),
    ("virtio-pci restricted/bypass", "no-smmu virtio-pci-restricted", "bypass virtio-pci-direct"),
    ("nvme restricted/bypass", "no-smmu nvme-restricted", "bypass nvme-direct"),
    ("virtio-pci restricted Cortex-A72/bypass", "no-smmu-a72 virtio-pci-restricted", "bypass virtio-pci-direct"),
    ("nvme restricted Cortex-A72/bypass", "no-smmu-a72 nvme-restricted", "bypass nvme-direct"),
    ("virtio-pci untrusted/trusted", "smmu virtio-pci-untrusted", "smmu virtio-pci-trusted"),
    ("nvme untrusted/trusted", "smmu nvme-untrusted", "smmu nvme-trusted"),
    ("virtio-pci trusted/no-iommu-restricted", "smmu virtio-pci-trusted", "no-smmu virtio-pci-restricted"),
    ("nvme trusted/no-iommu-restricted", "smmu nvme-trusted", "no-smmu nvme-restricted"),
    ("virtio-mmio restricted/virtio-pci trusted", "smmu virtio-mmio-restricted", "smmu virtio-pci-trusted"),
];

/// Runs the rounds and prints every figure and ratio.
pub fn run(rounds: usize) -> Result<()> {
    ensure_qemu()?;
    let kernel = image::build()?;
    let mut bypass = Virt::standard(false, PoolForm::Static, None);
    bypass.pool.pcie = false;
    let smmu = |granule| Machine::virt(Virt::standard(false, PoolForm::Static, Some(granule)), CPU);
    // Four CPUs, for the kernel's figures with 1, 2 and 4 of them at work.
    let smmu_four_cpus = Virt { cpus: 4, ..Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K)) };
    let no_smmu = || Virt::standard(false, PoolForm::Static, None);
    let machines = [
        ("smmu", smmu(IommuGranule::Size4K), "kernel.bench"),
        ("no-smmu", Machine::virt(no_smmu(), CPU), "kernel.bench"),
        ("bypass", Machine::virt(bypass, CPU), "kernel.bench"),
        ("smmu-deferred", smmu(IommuGranule::Size4K), "kernel.bench iommu.strict=0"),
        ("smmu-64k", smmu(IommuGranule::Size64K), "kernel.bench"),
        ("no-smmu-a72", Machine::virt(no_smmu(), "cortex-a72"), "kernel.bench"),
        ("smmu-4cpus", Machine::virt(smmu_four_cpus, CPU), "kernel.bench"),
    ];
    let mut figures: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        for (tag, machine, bootargs) in &machines {
            println!("xtask: bench round {round} of {rounds} on {} ({tag})", machine.name());
            let output = qemu::run_captured(machine, &kernel, bootargs, TIMEOUT)?;
            if output.exit_code != Some(0) {
                return Err(format!("{tag}: the benchmark kernel stopped with status {:?}", output.exit_code));
            }
            for (name, value) in figures_in(&output.console) {
                figures.entry(format!("{tag} {name}")).or_default().push(value);
            }
        }
    }
    let medians: BTreeMap<String, f64> = figures.into_iter().map(|(name, values)| (name, median(values))).collect();
    for (name, value) in &medians {
        println!("bench: {name} = {value:.1}");
    }
    // The DMA layer's share of a read: its map+unmap time over the time one read takes.
    for (name, _) in medians.iter().filter(|(name, _)| name.contains(" map+unmap ")) {
        let (disk, size) = name.split_once(" map+unmap ").unwrap_or_default();
        let size = size.trim_end_matches(" µs");
        let iops = medians.get(&format!("{disk} read {size} IOPS"));
        if let (Some(&microseconds), Some(&iops)) = (medians.get(name), iops) {
            println!("bench: {disk} DMA-layer share of a read {size} = {:.2}", microseconds * iops / 1e6);
        }
    }
    // Requests kept in flight together against one at a time, on each disk of each machine.
    for (name, &queued) in medians.iter().filter(|(name, _)| name.ends_with(" 4KiBx8 MB/s")) {
        let one_at_a_time = name.replace(" 4KiBx8 ", " 4KiB ");
        if let Some(&alone) = medians.get(&one_at_a_time) {
            let (disk, op) = name.trim_end_matches(" 4KiBx8 MB/s").rsplit_once(' ').unwrap_or_default();
            println!("bench: {disk} 8-in-flight/one-at-a-time {op} 4KiB = {:.2}", queued / alone);
        }
    }
    // Waiting asleep for the interrupt against polling, per request.
    for (name, &asleep) in medians.iter().filter(|(name, _)| name.ends_with(" interrupt µs")) {
        if let Some(&polled) = medians.get(&name.replace(" interrupt µs", " poll µs")) {
            let (disk_and_op, _) = name.rsplit_once(" interrupt µs").unwrap_or_default();
            println!("bench: {disk_and_op} interrupt/poll time per request = {:.2}", asleep / polled);
        }
    }
    // The same work on 2 and 4 CPUs at once against one.
    for (name, &alone) in medians.iter().filter(|(name, _)| name.contains(" cpus ") && name.contains(" 1 CPU ")) {
        for cpus in [2, 4] {
            if let Some(&together) = medians.get(&name.replace(" 1 CPU ", &format!(" {cpus} CPUs "))) {
                let (what, _) = name.split_once(" 1 CPU ").unwrap_or_default();
                println!("bench: {what} {cpus}/1 CPUs = {:.2}", together / alone);
            }
        }
    }
    // What a pool's per-CPU areas buy: the same pool cut in one area, at each CPU count.
    for (name, &per_cpu) in medians.iter().filter(|(name, _)| name.contains(" cpus per-cpu pool ")) {
        if let Some(&one_area) = medians.get(&name.replace(" per-cpu ", " one-area ")) {
            let (machine, what) = name.split_once(" cpus per-cpu ").unwrap_or_default();
            let what = what.trim_end_matches(" ops/s");
            println!("bench: {machine} cpus per-cpu/one-area {what} = {:.2}", per_cpu / one_area);
        }
    }
    for (name, numerator, denominator) in RATIOS {
        for op in OPS {
            for size in SIZES {
                let figure = |disk: &str| medians.get(&format!("{disk} {op} {size} MB/s")).copied();
                if let (Some(above), Some(below)) = (figure(numerator), figure(denominator)) {
                    println!("bench: {name} {op} {size} = {:.2}", above / below);
                }
            }
        }
    }
    for (name, numerator, denominator) in RATIOS.iter().filter(|(_, _, below)| below.starts_with("bypass ")) {
        for size in SIZES {
            let Some(costs) = ReadCosts::of(&medians, numerator, denominator, size) else { continue };
            if let Some(ratio) = costs.ratio_without_dma_layer() {
                println!("bench: {name} read {size} without the DMA layer = {ratio:.2}");
            }
            let ratio = costs.ratio_with_only_the_dma_layer();
            println!("bench: {name} read {size} with only the DMA layer added = {ratio:.2}");
        }
    }
    Ok(())
}

/// What one read of a size costs, in µs, on the two sides of a ratio: each side's whole read,
/// and the numerator's DMA layer alone (its map+unmap with no transfer: the copies through a
/// pool, or the page tables and invalidations).
struct ReadCosts {
    numerator: f64,
    denominator: f64,
    dma_layer: f64,
}

impl ReadCosts {
    fn of(medians: &BTreeMap<String, f64>, numerator: &str, denominator: &str, size: &str) -> Option<Self> {
        let time_per_read = |disk: &str| medians.get(&format!("{disk} read {size} IOPS")).map(|iops| 1e6 / iops);
        let dma_layer = *medians.get(&format!("{numerator} map+unmap {size} µs"))?;
        Some(Self { numerator: time_per_read(numerator)?, denominator: time_per_read(denominator)?, dma_layer })
    }

    /// The ratio if the numerator's DMA layer cost nothing. Near 1, the DMA layer is the whole
    /// difference; well below 1, the rest is the emulated hardware's (QEMU's SMMU translating
    /// each page of a transfer).
    fn ratio_without_dma_layer(&self) -> Option<f64> {
        let rest = self.numerator - self.dma_layer;
        (rest > 0.0).then(|| self.denominator / rest)
    }

    /// The ratio if the numerator cost what the denominator does plus its own DMA layer,
    /// nothing overlapped: what the DMA layer alone allows. An estimate: pieces of one request
    /// in flight together overlap copies with transfers, so a measured ratio may exceed it.
    /// Through a pool the DMA layer is the two copies, whose cost under TCG is the emulator's,
    /// not the memory's.
    fn ratio_with_only_the_dma_layer(&self) -> f64 {
        self.denominator / (self.denominator + self.dma_layer)
    }
}

/// The `bench: NAME = VALUE` lines of a console.
fn figures_in(console: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    console.lines().filter_map(|line| {
        let (_, figure) = line.split_once("bench: ")?;
        let (name, value) = figure.split_once(" = ")?;
        Some((name.trim().to_string(), value.trim().parse().ok()?))
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_console_and_the_median_is_taken() {
        let console = "[   0.2] INFO  bench: nvme-trusted read 1MiB MB/s = 3195.3\n[   0.3] INFO  bench: done, 0 measurement(s) failed\nnoise";
        let figures: Vec<_> = figures_in(console).collect();
        assert_eq!(figures, vec![("nvme-trusted read 1MiB MB/s".to_string(), 3195.3)]);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn the_dma_layer_is_taken_out_of_the_numerator_or_added_to_the_denominator() {
        // A read through the pool takes 500 µs, 400 of them copying; the direct read 100 µs.
        let medians = BTreeMap::from([
            ("no-smmu nvme-restricted read 1MiB IOPS".to_string(), 2000.0),
            ("no-smmu nvme-restricted map+unmap 1MiB µs".to_string(), 400.0),
            ("bypass nvme-direct read 1MiB IOPS".to_string(), 10000.0),
        ]);
        let costs = ReadCosts::of(&medians, "no-smmu nvme-restricted", "bypass nvme-direct", "1MiB").unwrap();
        assert_eq!(costs.ratio_without_dma_layer(), Some(1.0));
        assert_eq!(costs.ratio_with_only_the_dma_layer(), 0.2, "100 µs against 100 + 400");
        assert!(ReadCosts::of(&medians, "no-smmu nvme-restricted", "bypass nvme-direct", "4KiB").is_none());
    }
}
