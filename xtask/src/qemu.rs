//! Running the kernel on QEMU `virt`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::devicetree::PoolForm;
use crate::prerequisites::ensure_qemu;
use crate::{devicetree, image, Result};

const QEMU: &str = "qemu-system-aarch64";

/// A QEMU machine configuration.
pub struct Machine {
    /// `-M` value.
    pub machine: String,
    pub cpu: String,
    /// The exception level the kernel is entered at.
    pub entry_el: u8,
    /// How the devicetree describes the restricted DMA pool.
    pub pool: PoolForm,
}

/// Size of the virtio block device's disk image.
const DISK_SIZE: u64 = 16 << 20;

impl Machine {
    pub fn virt(el2: bool, cpu: &str, pool: PoolForm) -> Self {
        let machine = if el2 { "virt,virtualization=on" } else { "virt" };
        Self { machine: machine.into(), cpu: cpu.into(), entry_el: if el2 { 2 } else { 1 }, pool }
    }

    pub fn name(&self) -> String {
        format!("{} -cpu {} (EL{}, {:?} pool)", self.machine, self.cpu, self.entry_el, self.pool)
    }

    /// virtio devices on the MMIO transport: a disk, an entropy source, a network card on
    /// QEMU's user network. `force-legacy=false` asks for virtio 1.x ("modern") transports.
    fn devices(&self) -> Result<Vec<String>> {
        let disk = image::build_directory().join("virtio-disk.img");
        let file =
            std::fs::File::create(&disk).map_err(|error| format!("cannot create {}: {error}", disk.display()))?;
        file.set_len(DISK_SIZE).map_err(|error| format!("cannot size {}: {error}", disk.display()))?;
        let drive = format!("if=none,format=raw,id=disk0,file={}", disk.display());
        #[rustfmt::skip]
        let arguments = [
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", &drive, "-device", "virtio-blk-device,drive=disk0",
            "-device", "virtio-rng-device",
            "-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
        ];
        Ok(arguments.map(String::from).to_vec())
    }

    fn base_arguments(&self) -> Vec<String> {
        ["-M", &self.machine, "-cpu", &self.cpu, "-smp", "2", "-m", "1G", "-nographic", "-no-reboot"]
            .map(String::from)
            .to_vec()
    }

    /// QEMU's devicetree for this machine, with the kernel's test reservations added.
    fn devicetree(&self) -> Result<PathBuf> {
        let stem = format!("{}-{}-{:?}", self.machine.replace([',', '='], "-"), self.cpu, self.pool).to_lowercase();
        let dumped = image::build_directory().join(format!("{stem}.qemu.dtb"));
        let augmented = image::build_directory().join(format!("{stem}.dtb"));
        let mut arguments = self.base_arguments();
        arguments[1] = format!("{},dumpdtb={}", self.machine, dumped.display());
        let output =
            Command::new(QEMU).args(&arguments).output().map_err(|error| format!("cannot run {QEMU}: {error}"))?;
        let blob = std::fs::read(&dumped).map_err(|_| {
            format!("QEMU did not dump its devicetree: {}", String::from_utf8_lossy(&output.stderr).trim())
        })?;
        let blob = devicetree::for_kernel(&blob, self.pool)?;
        std::fs::write(&augmented, blob).map_err(|error| format!("cannot write {}: {error}", augmented.display()))?;
        Ok(augmented)
    }

    fn command(&self, kernel: &Path, bootargs: &str) -> Result<Command> {
        let mut command = Command::new(QEMU);
        command.args(self.base_arguments());
        command.arg("-kernel").arg(kernel).arg("-dtb").arg(self.devicetree()?).args(["-append", bootargs]);
        command.args(self.devices()?);
        Ok(command)
    }
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

/// Boots the kernel with a semihosting host for the exit status, streaming the console.
pub fn run_captured(machine: &Machine, kernel: &Path, bootargs: &str, timeout: Duration) -> Result<TestRun> {
    let bootargs = format!("kernel.semihosting {bootargs}");
    let mut child = machine
        .command(kernel, &bootargs)?
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
