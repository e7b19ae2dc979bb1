//! `cargo xtask`: everything around the kernel that runs on the developer's machine.
//!
//! - `cargo xtask build`: the kernel ELF and the raw `kernel8.img` a boot loader loads.
//! - `cargo xtask qemu [--board raspi4b] [-- QEMU ARGS]`: build, boot on QEMU `virt` (or the
//!   Raspberry Pi 4 model), stream the console.
//! - `cargo xtask test`: host tests of every pure crate, then the kernel's own tests under
//!   QEMU `virt` at EL1 and EL2 on two CPU models and on `raspi4b`, then the SD card image read
//!   back; fails if anything fails or QEMU hangs.
//! - `cargo xtask sdcard`: a Raspberry Pi 4 SD card image (firmware, devicetree, kernel).
//!
//! Each command checks its prerequisites first (the Rust target, QEMU >= 9) and installs
//! them where it can, or says exactly what to run.

mod devicetree;
mod firmware;
mod image;
mod prerequisites;
mod qemu;
mod sdcard;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, boot and test the DMA unikernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the kernel ELF and kernel8.img.
    Build,
    /// Build, then boot on QEMU and stream the console.
    Qemu {
        /// The board: QEMU `virt` with virtio devices, or `raspi4b` with the Pi firmware's
        /// devicetree (fetched on demand) and its 30-bit DMA engine.
        #[arg(long, value_enum, default_value = "virt")]
        board: BoardChoice,
        /// Boot at EL2, as on a Raspberry Pi 4 (QEMU `virtualization=on`). virt only.
        #[arg(long)]
        el2: bool,
        /// CPU model. virt only.
        #[arg(long, default_value = "cortex-a72")]
        cpu: String,
        /// How the devicetree describes virt's restricted DMA pool. (raspi4b boots with the Pi
        /// firmware's devicetree as is: the kernel carves its own bounce pool.)
        #[arg(long, value_enum, default_value = "static")]
        pool: devicetree::PoolForm,
        /// The IOMMU granule of virt's SMMUv3, which translates two virtio-blk-pci disks and two
        /// NVMe controllers (the second of each untrusted); `off` boots without an SMMU. virt only.
        #[arg(long, default_value = "4K", value_parser = ["off", "4K", "16K", "64K"])]
        iommu: String,
        /// Kernel command line, e.g. `kernel.fault-demo` or `kernel.test`.
        #[arg(long, default_value = "")]
        append: String,
        /// Extra arguments for QEMU, after `--`.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Run the host tests, then the kernel tests under QEMU.
    Test,
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
        Command::Qemu { board, el2, cpu, pool, iommu, append, qemu_args } => {
            let iommu = <qemu::IommuGranule as clap::ValueEnum>::from_str(&iommu, false).ok();
            let machine = match board {
                BoardChoice::Virt => qemu::Machine::virt(el2, &cpu, pool, iommu),
                BoardChoice::Raspi4b => qemu::Machine::raspi4b(devicetree::RaspiPool::Default),
            };
            qemu::run_demo(&machine, &append, &qemu_args)
        }
        Command::Test => test::run_all(),
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
