//! Running the kernel on QEMU: `virt`, or `raspi4b` with the Raspberry Pi firmware's devicetree.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::devicetree::{PoolForm, RaspiPool};
use crate::prerequisites::ensure_qemu;
use crate::{devicetree, firmware, image, Result};

const QEMU: &str = "qemu-system-aarch64";

/// Which board QEMU emulates, and how its devicetree describes DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// `-M virt`: virtio-mmio devices, every transfer through a restricted pool; with an
    /// SMMUv3 in front of PCIe, two virtio-blk-pci disks and two NVMe controllers behind it.
    Virt { el2: bool, pool: PoolForm, iommu: Option<IommuGranule> },
    /// `-M raspi4b` (2 GiB), with the devicetree the Pi firmware uses: a legacy DMA engine
    /// that reaches only the first GiB.
    Raspi4b { pool: RaspiPool },
}

/// The page size of the IOMMU's domains (`iommu.granule=`), when `virt` has an SMMUv3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IommuGranule {
    #[value(name = "4K")]
    Size4K,
    #[value(name = "16K")]
    Size16K,
    #[value(name = "64K")]
    Size64K,
}

impl IommuGranule {
    fn name(self) -> &'static str {
        match self {
            IommuGranule::Size4K => "4K",
            IommuGranule::Size16K => "16K",
            IommuGranule::Size64K => "64K",
        }
    }
}

/// The PCIe slots of the disks behind the SMMU: a virtio-blk pair and an NVMe pair, the
/// second of each untrusted.
const TRUSTED_DISK_SLOT: u8 = 2;
const UNTRUSTED_DISK_SLOT: u8 = 3;
const TRUSTED_NVME_SLOT: u8 = 4;
const UNTRUSTED_NVME_SLOT: u8 = 5;

/// A QEMU machine configuration.
pub struct Machine {
    pub board: Board,
    /// `-cpu` value; the Pi has its own Cortex-A72.
    pub cpu: String,
    /// The exception level the kernel is entered at.
    pub entry_el: u8,
}

/// Size of the virtio block device's disk image.
const DISK_SIZE: u64 = 16 << 20;
/// QEMU's raspi4b has 2 GiB of RAM but writes only the first 960 MiB into the devicetree
/// (its `raspi4_modify_dtb` compares the VideoCore base, not the RAM size, with 1 GiB). The
/// real firmware lists every bank; xtask, acting as the firmware, adds the upper GiB.
const RASPI4B_UPPER_RAM: (u64, u64) = (1 << 30, 1 << 30);

impl Machine {
    pub fn virt(el2: bool, cpu: &str, pool: PoolForm, iommu: Option<IommuGranule>) -> Self {
        Self { board: Board::Virt { el2, pool, iommu }, cpu: cpu.into(), entry_el: if el2 { 2 } else { 1 } }
    }

    /// The Pi's firmware (and QEMU in its place) starts the kernel at EL2.
    pub fn raspi4b(pool: RaspiPool) -> Self {
        Self { board: Board::Raspi4b { pool }, cpu: "cortex-a72".into(), entry_el: 2 }
    }

    fn machine(&self) -> String {
        match self.board {
            Board::Virt { el2, iommu, .. } => {
                let mut machine = String::from("virt");
                if el2 {
                    machine.push_str(",virtualization=on");
                }
                if iommu.is_some() {
                    machine.push_str(",iommu=smmuv3");
                }
                machine
            }
            Board::Raspi4b { .. } => "raspi4b".into(),
        }
    }

    /// What the kernel is told besides the caller's command line: the IOMMU policy.
    fn kernel_arguments(&self) -> String {
        match self.board {
            Board::Virt { iommu: Some(granule), .. } => {
                format!(
                    "iommu.granule={} iommu.untrusted=00:{UNTRUSTED_DISK_SLOT:02x}.0,00:{UNTRUSTED_NVME_SLOT:02x}.0",
                    granule.name()
                )
            }
            _ => String::new(),
        }
    }

    pub fn name(&self) -> String {
        match self.board {
            Board::Virt { pool, iommu, .. } => {
                let granule = iommu.map_or(String::new(), |granule| format!(", {} IOMMU granule", granule.name()));
                format!("{} -cpu {} (EL{}, {pool:?} pool{granule})", self.machine(), self.cpu, self.entry_el)
            }
            Board::Raspi4b { pool: RaspiPool::Default } => "raspi4b (EL2, the kernel's default bounce pool)".into(),
            Board::Raspi4b { pool: RaspiPool::Restricted } => {
                "raspi4b (EL2, restricted pool, as on the SD card)".into()
            }
        }
    }

    /// virtio devices on the MMIO transport: a disk, an entropy source, a network card on
    /// QEMU's user network. `force-legacy=false` asks for virtio 1.x ("modern") transports.
    /// The Pi's devices are its own.
    fn devices(&self) -> Result<Vec<String>> {
        if let Board::Raspi4b { .. } = self.board {
            return Ok(Vec::new());
        }
        #[rustfmt::skip]
        let mut arguments: Vec<String> = [
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", &disk_drive("disk0")?, "-device", "virtio-blk-device,drive=disk0",
            "-device", "virtio-rng-device",
            "-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
        ].map(String::from).to_vec();
        if let Board::Virt { iommu: Some(_), .. } = self.board {
            // `iommu_platform=on` puts the device's DMA behind the SMMU (the driver must accept
            // VIRTIO_F_ACCESS_PLATFORM); `disable-legacy=on` makes it a virtio 1.x device.
            for (id, slot) in [("pcidisk0", TRUSTED_DISK_SLOT), ("pcidisk1", UNTRUSTED_DISK_SLOT)] {
                arguments.extend(["-drive".into(), disk_drive(id)?, "-device".into()]);
                arguments.push(format!("virtio-blk-pci,drive={id},iommu_platform=on,disable-legacy=on,addr={slot}"));
            }
            // An NVMe controller's DMA always goes through the IOMMU: it has no
            // `iommu_platform` switch to bypass it, as a real PCIe device has none.
            for (id, slot) in [("nvme0", TRUSTED_NVME_SLOT), ("nvme1", UNTRUSTED_NVME_SLOT)] {
                arguments.extend(["-drive".into(), disk_drive(id)?, "-device".into()]);
                arguments.push(format!("nvme,drive={id},serial=dma-os-{id},addr={slot}"));
            }
        }
        Ok(arguments)
    }

    /// The Pi 4's console is its mini UART, QEMU's second serial port (`stdout-path` is
    /// `serial1`); the first, the PL011, goes nowhere.
    fn base_arguments(&self) -> Vec<String> {
        let arguments: &[&str] = match self.board {
            Board::Virt { .. } => &["-cpu", &self.cpu, "-smp", "2", "-m", "1G", "-serial", "mon:stdio"],
            Board::Raspi4b { .. } => &["-serial", "null", "-serial", "mon:stdio"],
        };
        // `-nodefaults`: no device QEMU would add by itself. `virt` would otherwise get a
        // virtio-net-pci NIC whose option ROM (`efi-virtio.rom`) comes from the optional
        // `ipxe-qemu` package: without it QEMU refuses to start. Every device is named below.
        let mut all = vec!["-M".to_string(), self.machine().to_string(), "-nodefaults".into(), "-nographic".into()];
        all.extend(arguments.iter().map(|argument| argument.to_string()));
        all.push("-no-reboot".into());
        all
    }

    /// The devicetree the kernel boots with.
    fn devicetree(&self) -> Result<PathBuf> {
        match self.board {
            Board::Virt { pool, .. } => self.virt_devicetree(pool),
            Board::Raspi4b { pool } => {
                let files = firmware::pi_files(None)?;
                let source = &files.devicetree;
                let blob =
                    std::fs::read(source).map_err(|error| format!("cannot read {}: {error}", source.display()))?;
                let blob = devicetree::for_raspi(&blob, pool, Some(RASPI4B_UPPER_RAM))?;
                let path = firmware::raspi_directory().join(format!("qemu-raspi4b-{pool:?}.dtb").to_lowercase());
                std::fs::write(&path, blob).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
                Ok(path)
            }
        }
    }

    /// QEMU generates `virt`'s devicetree from its options: dumped, then given the kernel's
    /// test reservations and restricted pool.
    fn virt_devicetree(&self, pool: PoolForm) -> Result<PathBuf> {
        let stem = format!("{}-{}-{:?}", self.machine().replace([',', '='], "-"), self.cpu, pool).to_lowercase();
        let dumped = image::build_directory().join(format!("{stem}.qemu.dtb"));
        let augmented = image::build_directory().join(format!("{stem}.dtb"));
        let mut arguments = self.base_arguments();
        arguments[1] = format!("{},dumpdtb={}", self.machine(), dumped.display());
        let output =
            Command::new(QEMU).args(&arguments).output().map_err(|error| format!("cannot run {QEMU}: {error}"))?;
        let blob = std::fs::read(&dumped).map_err(|_| {
            format!("QEMU did not dump its devicetree: {}", String::from_utf8_lossy(&output.stderr).trim())
        })?;
        let blob = devicetree::for_kernel(&blob, pool)?;
        std::fs::write(&augmented, blob).map_err(|error| format!("cannot write {}: {error}", augmented.display()))?;
        Ok(augmented)
    }

    fn command(&self, kernel: &Path, bootargs: &str) -> Result<Command> {
        let mut command = Command::new(QEMU);
        command.args(self.base_arguments());
        let bootargs = format!("{} {bootargs}", self.kernel_arguments());
        command.arg("-kernel").arg(kernel).arg("-dtb").arg(self.devicetree()?).args(["-append", bootargs.trim()]);
        command.args(self.devices()?);
        Ok(command)
    }
}

/// A fresh, zeroed disk image for drive `id`; its `-drive` argument.
fn disk_drive(id: &str) -> Result<String> {
    let disk = image::build_directory().join(format!("{id}.img"));
    let file = std::fs::File::create(&disk).map_err(|error| format!("cannot create {}: {error}", disk.display()))?;
    file.set_len(DISK_SIZE).map_err(|error| format!("cannot size {}: {error}", disk.display()))?;
    Ok(format!("if=none,format=raw,id={id},file={}", disk.display()))
}

/// `cargo xtask qemu`: boot the demo with the console on this terminal.
pub fn run_demo(machine: &Machine, bootargs: &str, extra_arguments: &[String]) -> Result<()> {
    ensure_qemu()?;
    let kernel = image::build()?;
    println!("xtask: booting on {} (quit QEMU with Ctrl-A X)", machine.name());
    let status = machine
        .command(&kernel, bootargs)?
        .args(extra_arguments)
        .status()
        .map_err(|error| format!("cannot run {QEMU}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("QEMU exited with {status}"))
    }
}

/// What a kernel test run printed and how it ended.
pub struct TestRun {
    pub console: String,
    pub exit_code: Option<i32>,
}

/// Boots the kernel with a semihosting host (used if `bootargs` say `kernel.semihosting`),
/// streaming the console; returns what it printed and how QEMU exited.
pub fn run_captured(machine: &Machine, kernel: &Path, bootargs: &str, timeout: Duration) -> Result<TestRun> {
    let mut child = machine
        .command(kernel, bootargs)?
        .arg("-semihosting")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot run {QEMU}: {error}"))?;
    let stdout = child.stdout.take().ok_or("no QEMU output")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            println!("    {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{}: QEMU still running after {} s: the kernel hung",
                machine.name(),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(50));
    let console = received.try_iter().collect::<Vec<_>>().join("\n");
    Ok(TestRun { console, exit_code: status.code() })
}
