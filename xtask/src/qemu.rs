//! Running the kernel on QEMU: `virt`, or `raspi4b` with the Raspberry Pi firmware's devicetree.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::devicetree::{PoolForm, RaspiPool, StdoutPath, VirtPool};
use crate::prerequisites::ensure_qemu;
use crate::{Result, devicetree, firmware, image};

const QEMU: &str = "qemu-system-aarch64";

/// Which board QEMU emulates, and how its devicetree describes DMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Board {
    /// `-M virt`: virtio-mmio devices, every transfer through a restricted pool; on PCIe two
    /// virtio-blk-pci disks and two NVMe controllers, behind an SMMUv3 when there is one.
    Virt(Virt),
    /// `-M raspi4b` (2 GiB), with the devicetree the Pi firmware uses: a legacy DMA engine
    /// that reaches only the first GiB.
    Raspi4b { pool: RaspiPool },
}

/// Everything `virt` can be asked to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virt {
    pub el2: bool,
    pub pool: VirtPool,
    pub iommu: Option<IommuGranule>,
    /// How many virtio-mmio disks.
    pub disks: usize,
    /// The logical block size of every disk, virtio and NVMe.
    pub block_size: u32,
    pub network: Network,
    pub stdout: StdoutPath,
    pub gic: GicVersion,
    /// CPUs (`-smp`).
    pub cpus: u32,
}

impl Virt {
    /// What `cargo xtask qemu` boots unless told otherwise: with an SMMU, a GICv3 (whose ITS
    /// turns a PCIe device's MSI write into an interrupt); without, QEMU's default GICv2.
    pub fn standard(el2: bool, pool: PoolForm, iommu: Option<IommuGranule>) -> Self {
        Self {
            el2,
            pool: VirtPool { form: pool, size: devicetree::POOL_SIZE, pcie: true },
            iommu,
            disks: 1,
            block_size: 512,
            network: Network::User,
            stdout: StdoutPath::AsQemuWroteIt,
            gic: if iommu.is_some() { GicVersion::V3 } else { GicVersion::V2 },
            cpus: 2,
        }
    }
}

/// virt's interrupt controller (`gic-version=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GicVersion {
    /// GICv2 with a GICv2m MSI frame (QEMU's default).
    #[value(name = "2")]
    V2,
    /// GICv3 with an ITS.
    #[value(name = "3")]
    V3,
}

/// The backend of virt's network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// QEMU's user network, whose gateway 10.0.2.2 answers ARP.
    User,
    /// A hub port with nothing else on the hub: the card never takes a packet, nobody answers.
    Silent,
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
/// The PCIe slot of QEMU's `edu` teaching device (docs/exercise-edu.md): 28-bit DMA, trusted.
const EDU_SLOT: u8 = 6;

/// A QEMU machine configuration.
pub struct Machine {
    pub board: Board,
    /// `-cpu` value; the Pi has its own Cortex-A72.
    pub cpu: String,
    /// The exception level the kernel is entered at.
    pub entry_el: u8,
    /// The user's own QEMU arguments (after `--`). They reach the devicetree dump too, so that
    /// the devicetree describes the machine QEMU actually starts (`-smp 4`, `-m 512M`).
    pub extra_arguments: Vec<String>,
}

/// Size of the virtio block device's disk image.
const DISK_SIZE: u64 = 16 << 20;
/// QEMU's raspi4b has 2 GiB of RAM but writes only the first 960 MiB into the devicetree
/// (its `raspi4_modify_dtb` compares the VideoCore base, not the RAM size, with 1 GiB). The
/// real firmware lists every bank; xtask, acting as the firmware, adds the upper GiB.
const RASPI4B_UPPER_RAM: (u64, u64) = (1 << 30, 1 << 30);

/// A disk image xtask creates, and the `-drive` id it goes by.
struct Disk {
    id: String,
    path: PathBuf,
}

impl Machine {
    pub fn virt(virt: Virt, cpu: &str) -> Self {
        let entry_el = if virt.el2 { 2 } else { 1 };
        Self { board: Board::Virt(virt), cpu: cpu.into(), entry_el, extra_arguments: Vec::new() }
    }

    /// The Pi's firmware (and QEMU in its place) starts the kernel at EL2.
    pub fn raspi4b(pool: RaspiPool) -> Self {
        Self { board: Board::Raspi4b { pool }, cpu: "cortex-a72".into(), entry_el: 2, extra_arguments: Vec::new() }
    }

    pub fn with_extra_arguments(mut self, arguments: Vec<String>) -> Self {
        self.extra_arguments = arguments;
        self
    }

    fn machine(&self) -> String {
        match &self.board {
            Board::Virt(virt) => {
                let mut machine = String::from("virt");
                if virt.el2 {
                    machine.push_str(",virtualization=on");
                }
                if virt.iommu.is_some() {
                    machine.push_str(",iommu=smmuv3");
                }
                if virt.gic == GicVersion::V3 {
                    machine.push_str(",gic-version=3");
                }
                machine
            }
            Board::Raspi4b { .. } => "raspi4b".into(),
        }
    }

    /// What the kernel is told besides the caller's command line: that QEMU takes its exit
    /// status through semihosting, and the IOMMU policy.
    fn kernel_arguments(&self) -> String {
        match &self.board {
            Board::Virt(Virt { iommu: Some(granule), .. }) => {
                format!(
                    "kernel.semihosting iommu.granule={} iommu.untrusted=00:{UNTRUSTED_DISK_SLOT:02x}.0,00:{UNTRUSTED_NVME_SLOT:02x}.0",
                    granule.name()
                )
            }
            _ => "kernel.semihosting".into(),
        }
    }

    pub fn name(&self) -> String {
        let name = match &self.board {
            Board::Virt(virt) => {
                let granule = virt.iommu.map_or(String::new(), |granule| format!(", {} IOMMU granule", granule.name()));
                let standard = Virt::standard(virt.el2, virt.pool.form, virt.iommu);
                let size = match virt.pool.size == standard.pool.size {
                    true => String::new(),
                    false => format!(" of {} KiB", virt.pool.size >> 10),
                };
                let mut name = format!(
                    "{} -cpu {} (EL{}, {:?} pool{size}{granule}",
                    self.machine(),
                    self.cpu,
                    self.entry_el,
                    virt.pool.form
                );
                if !virt.pool.pcie {
                    name.push_str(", PCIe without the pool");
                }
                if virt.disks != standard.disks {
                    name.push_str(&format!(", {} virtio disks", virt.disks));
                }
                if virt.block_size != standard.block_size {
                    name.push_str(&format!(", {}-byte blocks", virt.block_size));
                }
                if virt.network != standard.network {
                    name.push_str(&format!(", {:?} network", virt.network).to_lowercase());
                }
                if virt.stdout != standard.stdout {
                    name.push_str(&format!(", stdout-path {}", devicetree::MISSING_CONSOLE));
                }
                if virt.cpus != standard.cpus {
                    name.push_str(&format!(", {} CPUs", virt.cpus));
                }
                if virt.gic != standard.gic {
                    name.push_str(&format!(", GICv{}", if virt.gic == GicVersion::V3 { 3 } else { 2 }));
                }
                name + ")"
            }
            Board::Raspi4b { pool: RaspiPool::Default } => "raspi4b (EL2, the kernel's default bounce pool)".into(),
            Board::Raspi4b { pool: RaspiPool::Restricted } => {
                "raspi4b (EL2, restricted pool, as on the SD card)".into()
            }
        };
        match self.extra_arguments.is_empty() {
            true => name,
            false => format!("{name} {}", self.extra_arguments.join(" ")),
        }
    }

    /// The disk images `virt` boots with: virtio-mmio disks, then the PCIe pair and the NVMe
    /// pair (behind the SMMU when there is one; on the bus's own route otherwise).
    fn disks(&self) -> Vec<Disk> {
        let Board::Virt(virt) = &self.board else { return Vec::new() };
        let mut ids: Vec<String> = (0..virt.disks).map(|index| format!("disk{index}")).collect();
        ids.extend(["pcidisk0", "pcidisk1", "nvme0", "nvme1"].map(String::from));
        let directory = image::build_directory();
        ids.into_iter().map(|id| Disk { path: directory.join(format!("{id}.img")), id }).collect()
    }

    /// virtio devices on the MMIO transport: disks, an entropy source, a network card.
    /// `force-legacy=false` asks for virtio 1.x ("modern") transports. The Pi's devices are
    /// its own.
    fn devices(&self) -> Vec<String> {
        let Board::Virt(virt) = &self.board else { return Vec::new() };
        let blocks = virt.block_size;
        let sizes = format!("logical_block_size={blocks},physical_block_size={blocks}");
        let mut arguments: Vec<String> = vec!["-global".into(), "virtio-mmio.force-legacy=false".into()];
        for disk in self.disks() {
            arguments
                .extend(["-drive".into(), format!("if=none,format=raw,id={},file={}", disk.id, disk.path.display())]);
            let device = match disk.id.as_str() {
                // `iommu_platform=on` puts the device's DMA behind the SMMU (the driver must
                // accept VIRTIO_F_ACCESS_PLATFORM); `disable-legacy=on` makes it virtio 1.x.
                // Without an SMMU the device uses bus addresses, as a real one does.
                "pcidisk0" | "pcidisk1" => {
                    let slot = if disk.id == "pcidisk0" { TRUSTED_DISK_SLOT } else { UNTRUSTED_DISK_SLOT };
                    let platform = if virt.iommu.is_some() { "iommu_platform=on," } else { "" };
                    format!("virtio-blk-pci,drive={},{platform}disable-legacy=on,addr={slot},{sizes}", disk.id)
                }
                // An NVMe controller's DMA always goes through the IOMMU: it has no
                // `iommu_platform` switch to bypass it, as a real PCIe device has none.
                "nvme0" | "nvme1" => {
                    let slot = if disk.id == "nvme0" { TRUSTED_NVME_SLOT } else { UNTRUSTED_NVME_SLOT };
                    format!("nvme,drive={0},serial=dma-os-{0},addr={slot},{sizes}", disk.id)
                }
                _ => format!("virtio-blk-device,drive={},{sizes}", disk.id),
            };
            arguments.extend(["-device".into(), device]);
        }
        // QEMU's teaching device, for the `edu` exercise: a DMA engine that reaches 28 address
        // bits, behind the SMMU when there is one. It has no option ROM.
        arguments.extend(["-device".into(), format!("edu,addr={EDU_SLOT}")]);
        let netdev = match virt.network {
            Network::User => "user,id=net0",
            Network::Silent => "hubport,id=net0,hubid=0",
        };
        #[rustfmt::skip]
        arguments.extend([
            "-device", "virtio-rng-device",
            "-netdev", netdev, "-device", "virtio-net-device,netdev=net0",
        ].map(String::from));
        arguments
    }

    /// The machine without its devices: what the devicetree dump and the boot share.
    fn base_arguments(&self) -> Vec<String> {
        let cpus = match &self.board {
            Board::Virt(virt) => virt.cpus.to_string(),
            Board::Raspi4b { .. } => String::new(),
        };
        let arguments: &[&str] = match self.board {
            Board::Virt { .. } => &["-cpu", &self.cpu, "-smp", &cpus, "-m", "1G", "-serial", "mon:stdio"],
            // The Pi 4's console is its mini UART, QEMU's second serial port (`stdout-path` is
            // `serial1`); the first, the PL011, goes nowhere.
            Board::Raspi4b { .. } => &["-serial", "null", "-serial", "mon:stdio"],
        };
        // `-nodefaults`: no device QEMU would add by itself. `virt` would otherwise get a
        // virtio-net-pci NIC whose option ROM (`efi-virtio.rom`) comes from the optional
        // `ipxe-qemu` package: without it QEMU refuses to start. Every device is named below.
        let mut all = vec!["-M".to_string(), self.machine(), "-nodefaults".into(), "-nographic".into()];
        all.extend(arguments.iter().map(|argument| argument.to_string()));
        // The kernel reports its outcome as QEMU's exit status (semihosting `SYS_EXIT`), and a
        // reset ends QEMU instead of restarting the kernel.
        all.extend(["-semihosting".into(), "-no-reboot".into()]);
        all.extend(self.extra_arguments.iter().cloned());
        all
    }

    /// The devicetree the kernel boots with.
    fn devicetree(&self) -> Result<PathBuf> {
        match &self.board {
            Board::Virt(virt) => self.virt_devicetree(virt),
            Board::Raspi4b { pool } => {
                let files = firmware::pi_files(None)?;
                let source = &files.devicetree;
                let blob =
                    std::fs::read(source).map_err(|error| format!("cannot read {}: {error}", source.display()))?;
                let blob = devicetree::for_raspi(&blob, *pool, Some(RASPI4B_UPPER_RAM))?;
                let path = firmware::raspi_directory().join(format!("qemu-raspi4b-{pool:?}.dtb").to_lowercase());
                std::fs::write(&path, blob).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
                Ok(path)
            }
        }
    }

    /// QEMU generates `virt`'s devicetree from its options: dumped (with the same machine
    /// options, the user's included), then given the kernel's test reservations and pool.
    fn virt_devicetree(&self, virt: &Virt) -> Result<PathBuf> {
        let dumped = image::build_directory().join("virt.qemu.dtb");
        let augmented = image::build_directory().join("virt.dtb");
        let _ = std::fs::remove_file(&dumped);
        let mut arguments = self.base_arguments();
        arguments[1] = format!("{},dumpdtb={}", self.machine(), dumped.display());
        arguments.extend(self.devices());
        let output =
            Command::new(QEMU).args(&arguments).output().map_err(|error| format!("cannot run {QEMU}: {error}"))?;
        let blob = std::fs::read(&dumped).map_err(|_| {
            format!("QEMU did not dump its devicetree: {}", String::from_utf8_lossy(&output.stderr).trim())
        })?;
        let blob = devicetree::for_kernel(&blob, virt.pool, virt.stdout)?;
        std::fs::write(&augmented, blob).map_err(|error| format!("cannot write {}: {error}", augmented.display()))?;
        Ok(augmented)
    }

    /// Every argument of the boot, devicetree and kernel command line included.
    fn arguments(&self, kernel: &Path, devicetree: &Path, bootargs: &str) -> Vec<String> {
        let mut arguments = self.base_arguments();
        let bootargs = format!("{} {bootargs}", self.kernel_arguments());
        arguments.extend(["-kernel".into(), kernel.display().to_string(), "-dtb".into()]);
        arguments.extend([devicetree.display().to_string(), "-append".into(), bootargs.trim().to_string()]);
        arguments.extend(self.devices());
        arguments
    }

    /// The QEMU command that boots `kernel` with `bootargs`, its disks fresh and zeroed.
    fn command(&self, kernel: &Path, bootargs: &str) -> Result<Command> {
        for disk in self.disks() {
            create_disk(&disk.path)?;
        }
        let devicetree = self.devicetree()?;
        let mut command = Command::new(QEMU);
        command.args(self.arguments(kernel, &devicetree, bootargs));
        Ok(command)
    }
}

/// A command's arguments as one line, to show what xtask runs.
pub fn arguments_line(command: &Command) -> String {
    let arguments: Vec<String> = command.get_args().map(|argument| argument.to_string_lossy().into_owned()).collect();
    arguments.join(" ")
}

/// A fresh, zeroed disk image.
fn create_disk(disk: &Path) -> Result<()> {
    let file = std::fs::File::create(disk).map_err(|error| format!("cannot create {}: {error}", disk.display()))?;
    file.set_len(DISK_SIZE).map_err(|error| format!("cannot size {}: {error}", disk.display()))
}

/// What `cargo xtask qemu` boots: the demo, or the kernel's own tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Demo,
    Tests,
}

/// `cargo xtask qemu`: boot with the console on this terminal. The kernel's status (through
/// semihosting) becomes xtask's: a failed test or a boot error is a failure here too.
pub fn run_interactive(machine: &Machine, run: Run, bootargs: &str) -> Result<()> {
    ensure_qemu()?;
    let kernel = image::build()?;
    let bootargs = match run {
        Run::Demo => bootargs.to_string(),
        Run::Tests => format!("{} {bootargs}", test_arguments(machine)),
    };
    println!("xtask: booting on {} (quit QEMU with Ctrl-A X)", machine.name());
    let mut command = machine.command(&kernel, &bootargs)?;
    println!("xtask: {QEMU} {}", arguments_line(&command));
    let status = command.status().map_err(|error| format!("cannot run {QEMU}: {error}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(format!("the kernel stopped with status {code} on {}", machine.name())),
        None => Err(format!("QEMU was killed ({status})")),
    }
}

/// The command line of a kernel test run: the tests, and the exception level they must find.
pub fn test_arguments(machine: &Machine) -> String {
    format!("kernel.test test.entry-el={}", machine.entry_el)
}

/// What a kernel test run printed and how it ended.
pub struct TestRun {
    pub console: String,
    pub exit_code: Option<i32>,
}

/// Boots the kernel, streaming the console; returns what it printed and how QEMU exited.
pub fn run_captured(machine: &Machine, kernel: &Path, bootargs: &str, timeout: Duration) -> Result<TestRun> {
    let mut child = machine
        .command(kernel, bootargs)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot run {QEMU}: {error}"))?;
    let stdout = child.stdout.take().ok_or("no QEMU output")?;
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
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
    // QEMU has exited: the reader ends at the end of its output, every line read.
    let _ = reader.join();
    let console = received.try_iter().collect::<Vec<_>>().join("\n");
    Ok(TestRun { console, exit_code: status.code() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU devices that need no option ROM, so no optional package (`ipxe-qemu`): every
    /// device xtask asks for must be one of these. A PCI network card (`virtio-net-pci`,
    /// `e1000`) would need `romfile=` set empty first.
    const NEEDS_NO_ROM: [&str; 6] =
        ["virtio-blk-device", "virtio-rng-device", "virtio-net-device", "virtio-blk-pci", "nvme", "edu"];

    fn machines() -> Vec<Machine> {
        let mut machines = vec![Machine::raspi4b(RaspiPool::Default), Machine::raspi4b(RaspiPool::Restricted)];
        for iommu in [None, Some(IommuGranule::Size4K), Some(IommuGranule::Size64K)] {
            for form in [PoolForm::Static, PoolForm::Dynamic] {
                machines.push(Machine::virt(Virt::standard(iommu.is_some(), form, iommu), "cortex-a72"));
            }
        }
        let mut odd = Virt::standard(false, PoolForm::Static, None);
        (odd.disks, odd.block_size, odd.network, odd.stdout) = (3, 4096, Network::Silent, StdoutPath::Missing);
        machines.push(Machine::virt(odd, "max"));
        machines
    }

    fn values_of<'a>(arguments: &'a [String], option: &str) -> Vec<&'a str> {
        arguments.windows(2).filter(|pair| pair[0] == option).map(|pair| pair[1].as_str()).collect()
    }

    #[test]
    fn no_command_line_depends_on_an_optional_package() {
        for machine in machines() {
            let boot = machine.arguments(Path::new("kernel8.img"), Path::new("board.dtb"), "");
            let mut dump = machine.base_arguments();
            dump.extend(machine.devices());
            for arguments in [&boot, &dump] {
                let name = machine.name();
                assert!(arguments.iter().any(|argument| argument == "-nodefaults"), "{name}: {arguments:?}");
                assert!(!arguments.iter().any(|argument| argument == "-nic" || argument == "-net"), "{name}");
                for device in values_of(arguments, "-device") {
                    let model = device.split(',').next().unwrap_or_default();
                    assert!(NEEDS_NO_ROM.contains(&model), "{name}: {model} may need an option ROM");
                }
            }
        }
    }

    #[test]
    fn every_drive_and_netdev_has_its_device() {
        for machine in machines() {
            let arguments = machine.arguments(Path::new("kernel8.img"), Path::new("board.dtb"), "");
            let devices = values_of(&arguments, "-device").join(" ");
            for drive in values_of(&arguments, "-drive") {
                let id = drive.split(',').find_map(|field| field.strip_prefix("id=")).expect("a drive id");
                assert_eq!(devices.matches(&format!("drive={id},")).count(), 1, "{}: {id}", machine.name());
            }
            for netdev in values_of(&arguments, "-netdev") {
                let id = netdev.split(',').find_map(|field| field.strip_prefix("id=")).expect("a netdev id");
                assert_eq!(devices.matches(&format!("netdev={id}")).count(), 1, "{}: {id}", machine.name());
            }
        }
    }

    #[test]
    fn every_virt_machine_has_one_edu_on_its_own_slot() {
        for machine in machines() {
            let arguments = machine.arguments(Path::new("kernel8.img"), Path::new("board.dtb"), "");
            let devices = values_of(&arguments, "-device");
            let edu: Vec<&str> = devices.iter().copied().filter(|device| device.starts_with("edu")).collect();
            match machine.board {
                Board::Virt(_) => {
                    assert_eq!(edu, [format!("edu,addr={EDU_SLOT}")], "{}", machine.name());
                    let slot = format!("addr={EDU_SLOT},");
                    assert!(
                        !devices.iter().any(|device| device.contains(&slot)),
                        "{}: slot {EDU_SLOT} taken",
                        machine.name()
                    );
                }
                Board::Raspi4b { .. } => assert!(edu.is_empty(), "{}: {edu:?}", machine.name()),
            }
        }
    }

    #[test]
    fn the_devicetree_dump_sees_the_users_arguments() {
        let extra = vec!["-smp".to_string(), "4".into(), "-m".into(), "512M".into()];
        let machine = Machine::virt(Virt::standard(false, PoolForm::Static, None), "cortex-a72");
        let machine = machine.with_extra_arguments(extra.clone());
        let dump = machine.base_arguments();
        let at = dump.len() - extra.len();
        assert_eq!(dump[at..], extra, "last, so that QEMU takes them over xtask's defaults");
        let boot = machine.arguments(Path::new("kernel8.img"), Path::new("board.dtb"), "");
        assert!(boot.windows(4).any(|window| window == extra.as_slice()));
    }

    #[test]
    fn the_kernel_is_told_about_semihosting_and_the_iommu() {
        let machine = Machine::virt(Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size16K)), "max");
        let arguments = machine.arguments(Path::new("k"), Path::new("d"), "kernel.test");
        let bootargs = values_of(&arguments, "-append")[0];
        assert!(bootargs.starts_with("kernel.semihosting iommu.granule=16K iommu.untrusted=00:03.0,00:05.0"));
        assert!(bootargs.ends_with(" kernel.test"));
        assert!(arguments.iter().any(|argument| argument == "-semihosting"));
    }
}
