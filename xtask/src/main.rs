//! `cargo xtask`: everything around the kernel that runs on the developer's machine.
//!
//! - `cargo xtask build`: the kernel ELF and the raw `kernel8.img` a boot loader loads.
//! - `cargo xtask qemu [--board raspi4b] [-- QEMU ARGS]`: build, boot on QEMU `virt` (or the
//!   Raspberry Pi 4 model), stream the console.
//! - `cargo xtask test`: host tests of every pure crate, then the kernel's own tests under
//!   QEMU `virt` at EL1 and EL2 on two CPU models, on odd machines and on `raspi4b`, the demos
//!   and the boots that go wrong on purpose, the documentation's log excerpts, then the SD card
//!   image read back; fails if anything fails or QEMU hangs.
//! - `cargo xtask sdcard`: a Raspberry Pi 4 SD card image (firmware, devicetree, kernel).
//! - `cargo xtask excerpts`: rewrite the documentation's log excerpts from fresh runs.
//! - `cargo xtask check`: formatting, clippy (host crates and the kernel target) and the
//!   documentation, with warnings denied.
//! - `cargo xtask bench`: disk throughput on every DMA route, and the ratios between them.
//! - `cargo xtask exercise edu [--solution]`: build the kernel with an exercise's skeleton (or
//!   its reference solution) and run the tests that judge it (`docs/exercise-edu.md`).
//! - `cargo xtask lesson [NAME [--break]]`: watch one fix of the DMA contract at work, then
//!   remove it and watch the test that guards it fail.
//!
//! Each command checks its prerequisites first (the Rust target, QEMU >= 9) and installs
//! them where it can, or says exactly what to run.

// xtask is a binary: its public items are not an API (see the workspace lints).
#![allow(missing_docs)]

mod bench;
mod check;
mod devicetree;
mod excerpts;
mod exercise;
mod firmware;
mod image;
mod lesson;
mod pi_boot;
mod prerequisites;
mod qemu;
mod references;
mod scenarios;
mod sdcard;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Build, boot and test the DMA unikernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the kernel ELF and kernel8.img.
    Build,
    /// Build, then boot on QEMU and stream the console. Exits with the kernel's status.
    Qemu {
        /// The board: QEMU `virt` with virtio devices, or `raspi4b` with the Pi firmware's
        /// devicetree (fetched on demand) and its 30-bit DMA engine.
        #[arg(long, value_enum, default_value = "virt")]
        board: BoardChoice,
        /// Run the kernel's own tests instead of the demo.
        #[arg(long)]
        test: bool,
        /// Boot at EL2, as on a Raspberry Pi 4 (QEMU `virtualization=on`). virt only.
        #[arg(long)]
        el2: bool,
        /// CPU model [default: cortex-a72]. virt only.
        #[arg(long)]
        cpu: Option<String>,
        /// How the devicetree describes the restricted DMA pool [default: static]. virt only.
        /// (raspi4b boots with the Pi firmware's devicetree as is: the kernel carves its own
        /// bounce pool.)
        #[arg(long, value_enum)]
        pool: Option<devicetree::PoolForm>,
        /// The restricted pool's size, e.g. `128K` or `16M` [default: 4M]. virt only.
        #[arg(long, value_parser = parse_size)]
        pool_size: Option<u64>,
        /// The IOMMU granule of virt's SMMUv3, which translates two virtio-blk-pci disks and two
        /// NVMe controllers (the second of each untrusted); `off` boots without an SMMU
        /// [default: 4K]. virt only.
        #[arg(long, value_parser = ["off", "4K", "16K", "64K"])]
        iommu: Option<String>,
        /// How many virtio-mmio disks [default: 1]. virt only.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=8))]
        disks: Option<u8>,
        /// The logical block size of every disk, virtio and NVMe [default: 512]. virt only.
        #[arg(long, value_parser = ["512", "1024", "2048", "4096"])]
        block_size: Option<String>,
        /// The interrupt controller [default: 3 with an IOMMU, else 2]. virt only.
        #[arg(long, value_enum)]
        gic: Option<qemu::GicVersion>,
        /// How many CPUs (`-smp`) [default: 2]; the kernel starts every one. virt only.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
        cpus: Option<u32>,
        /// The network card's backend [default: user]; `silent` never takes a packet. virt only.
        #[arg(long, value_enum)]
        net: Option<qemu::Network>,
        /// What `/chosen/stdout-path` names [default: qemu]; `missing`, a node that does not
        /// exist, shows how the kernel finds a console anyway. virt only.
        #[arg(long, value_enum)]
        stdout_path: Option<devicetree::StdoutPath>,
        /// Kernel command line, e.g. `kernel.fault-demo`.
        #[arg(long, default_value = "")]
        append: String,
        /// Extra arguments for QEMU, after `--`; the devicetree follows them (`-m`, `-smp`).
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Run the host tests, then the kernel tests under QEMU.
    Test,
    /// Boot the runs the documentation quotes and rewrite its log excerpts with what they
    /// print now.
    Excerpts,
    /// Formatting, clippy and the documentation, with warnings denied (CI runs it first).
    Check,
    /// Disk throughput on every DMA route, several boots alternating, and the ratios.
    Bench {
        /// How many boots of each machine (each figure is the median).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// List the lessons; with NAME, watch that fix at work (`dma.trace`); with `--break`,
    /// remove it and watch the tests that guard it fail.
    Lesson {
        /// The lesson, e.g. `zero-padding`; none lists them.
        name: Option<String>,
        /// Build without the fix and run the tests that must catch it.
        #[arg(long = "break")]
        broken: bool,
        /// Add QEMU's own `smmuv3_*` trace events (on stderr) to the boot.
        #[arg(long)]
        qemu_trace: bool,
    },
    /// Do an exercise: build the kernel with its skeleton and run the tests that judge it on
    /// QEMU virt with the SMMU; say which pass and which fail.
    Exercise {
        /// Which exercise (`edu`: a DMA driver for QEMU's edu device, docs/exercise-edu.md).
        #[arg(value_enum)]
        exercise: exercise::Exercise,
        /// Run the tests against the reference solution instead of the skeleton.
        #[arg(long)]
        solution: bool,
    },
    /// Build a Raspberry Pi 4 SD card image: firmware, devicetree, config.txt, kernel.
    Sdcard {
        /// Take start4.elf, fixup4.dat and bcm2711-rpi-4-b.dtb from DIR instead of fetching
        /// them from Debian's packages.
        #[arg(long, value_name = "DIR")]
        firmware_dir: Option<PathBuf>,
        /// Where to write the image [default: target/raspi/sdcard.img].
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Kernel command line, written to cmdline.txt, e.g. `kernel.test`.
        #[arg(long, default_value = "")]
        append: String,
    },
}

/// A size in bytes: a number with an optional `K`, `M` or `G` (binary units).
fn parse_size(text: &str) -> Result<u64> {
    let (number, shift) = match text.strip_suffix(['K', 'k']) {
        Some(number) => (number, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(number) => (number, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(number) => (number, 30),
                None => (text, 0),
            },
        },
    };
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 128K or 4M"))?;
    value.checked_shl(shift).filter(|bytes| bytes >> shift == value).ok_or(format!("`{text}` is too large"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BoardChoice {
    Virt,
    Raspi4b,
}

/// An error for the user: one line saying what went wrong and what to do.
pub type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build => image::build().map(|image| println!("kernel: {}", image.display())),
        Command::Qemu {
            board,
            test,
            el2,
            cpu,
            pool,
            pool_size,
            iommu,
            disks,
            block_size,
            net,
            stdout_path,
            gic,
            cpus,
            append,
            qemu_args,
        } => {
            let virt_only = [
                ("--el2", el2),
                ("--cpu", cpu.is_some()),
                ("--pool", pool.is_some()),
                ("--pool-size", pool_size.is_some()),
                ("--iommu", iommu.is_some()),
                ("--disks", disks.is_some()),
                ("--block-size", block_size.is_some()),
                ("--net", net.is_some()),
                ("--stdout-path", stdout_path.is_some()),
                ("--gic", gic.is_some()),
                ("--cpus", cpus.is_some()),
            ];
            let run = if test { qemu::Run::Tests } else { qemu::Run::Demo };
            let machine = match board {
                BoardChoice::Raspi4b => match virt_only.iter().find(|(_, given)| *given) {
                    Some((flag, _)) => Err(format!("{flag} applies to --board virt only; raspi4b is a fixed board")),
                    None => Ok(qemu::Machine::raspi4b(devicetree::RaspiPool::Default)),
                },
                BoardChoice::Virt => {
                    let iommu = iommu.as_deref().unwrap_or("4K");
                    let iommu = <qemu::IommuGranule as clap::ValueEnum>::from_str(iommu, false).ok();
                    let mut virt = qemu::Virt::standard(el2, pool.unwrap_or(devicetree::PoolForm::Static), iommu);
                    virt.pool.size = pool_size.unwrap_or(virt.pool.size);
                    virt.disks = disks.map_or(virt.disks, usize::from);
                    virt.block_size = block_size.map_or(virt.block_size, |size| size.parse().expect("listed sizes"));
                    virt.network = net.unwrap_or(virt.network);
                    virt.stdout = stdout_path.unwrap_or(virt.stdout);
                    virt.gic = gic.unwrap_or(virt.gic);
                    virt.cpus = cpus.unwrap_or(virt.cpus);
                    Ok(qemu::Machine::virt(virt, cpu.as_deref().unwrap_or("cortex-a72")))
                }
            };
            machine.and_then(|machine| qemu::run_interactive(&machine.with_extra_arguments(qemu_args), run, &append))
        }
        Command::Test => test::run_all(),
        Command::Check => check::run(),
        Command::Bench { rounds } => bench::run(rounds.max(1)),
        Command::Excerpts => test::update_excerpts(),
        Command::Exercise { exercise, solution } => exercise::run(exercise, solution),
        Command::Lesson { name, broken, qemu_trace } => lesson::run(name.as_deref(), broken, qemu_trace),
        Command::Sdcard { firmware_dir, output, append } => {
            sdcard::run(firmware_dir.as_deref(), output.as_deref(), &append)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
