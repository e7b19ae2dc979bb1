//! The files a Raspberry Pi 4 boots with besides the kernel, fetched on demand.
//!
//! A Pi 4 does not start its ARM cores itself. Its boot ROM runs the bootloader in the
//! on-board EEPROM, which reads the first FAT partition of the SD card and starts the
//! VideoCore GPU's firmware from it:
//!
//! - `start4.elf`: the GPU firmware. It reads `config.txt`, loads the devicetree and the
//!   kernel, fills in `/memory`, `/chosen/bootargs` (from `cmdline.txt`) and the board's
//!   serial numbers, and releases the ARM cores at the kernel's entry point;
//! - `fixup4.dat`: the memory layout `start4.elf` needs to split RAM between GPU and ARM. The
//!   two must come from the same firmware release;
//! - `bcm2711-rpi-4-b.dtb`: the board's devicetree, which the firmware edits and passes on.
//!
//! Debian packages all three for arm64: `raspi-firmware` (in `non-free-firmware`) has the
//! firmware, and every arm64 kernel package has Linux's devicetrees. xtask fetches the two
//! packages with apt into a private state directory under `target/raspi/` (the host's own apt
//! configuration is neither read nor changed), keeps the three files and deletes the rest.
//! apt checks every download against Debian's signed index, with Debian's archive key.
//! Whoever wants other files (a newer firmware release from the Raspberry Pi Foundation, say)
//! brings their own with `--firmware-dir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::Result;
use crate::image::workspace_root;

pub const START_ELF: &str = "start4.elf";
pub const FIXUP_DAT: &str = "fixup4.dat";
pub const DEVICETREE: &str = "bcm2711-rpi-4-b.dtb";

const FIRMWARE_PACKAGE: &str = "raspi-firmware";
const FIRMWARE_PATH: &str = "usr/lib/raspi-firmware";
/// The metapackage that depends on the current kernel, whose name changes with every ABI bump
/// (`linux-image-6.1.0-50-arm64`, ...): Debian removes superseded ones from the archive.
const KERNEL_METAPACKAGE: &str = "linux-image-arm64";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Suites of Debian 12: the kernel is updated through security and updates.
const SUITES: [(&str, &str); 3] =
    [("debian", "bookworm"), ("debian-security", "bookworm-security"), ("debian", "bookworm-updates")];

/// The Pi's boot files other than the kernel.
#[derive(Debug, Clone)]
pub struct PiFiles {
    pub start4_elf: PathBuf,
    pub fixup4_dat: PathBuf,
    pub devicetree: PathBuf,
}

impl PiFiles {
    fn in_directory(directory: &Path) -> Self {
        Self {
            start4_elf: directory.join(START_ELF),
            fixup4_dat: directory.join(FIXUP_DAT),
            devicetree: directory.join(DEVICETREE),
        }
    }

    fn paths(&self) -> [&Path; 3] {
        [&self.start4_elf, &self.fixup4_dat, &self.devicetree]
    }

    fn first_missing(&self) -> Option<&Path> {
        self.paths().into_iter().find(|path| !path.is_file())
    }
}

/// Where fetched files are kept, and where `cargo xtask sdcard` writes its image.
pub fn raspi_directory() -> PathBuf {
    workspace_root().join("target").join("raspi")
}

/// The Pi files: from `firmware_dir` if given, else from `target/raspi/`, fetched from Debian
/// the first time.
pub fn pi_files(firmware_dir: Option<&Path>) -> Result<PiFiles> {
    if let Some(directory) = firmware_dir {
        let files = PiFiles::in_directory(directory);
        return match files.first_missing() {
            Some(missing) => Err(format!("--firmware-dir: {} does not exist", missing.display())),
            None => Ok(files),
        };
    }
    let directory = raspi_directory();
    let files = PiFiles::in_directory(&directory);
    if files.first_missing().is_some() {
        fetch_from_debian(&directory).map_err(|error| {
            format!(
                "cannot fetch the Raspberry Pi firmware from Debian: {error}; \
                 or bring {START_ELF}, {FIXUP_DAT} and {DEVICETREE} with --firmware-dir DIR"
            )
        })?;
    }
    Ok(files)
}

/// Downloads the two packages, extracts the three files into `directory`, deletes the rest.
fn fetch_from_debian(directory: &Path) -> Result<()> {
    check_host_tools()?;
    let apt = Apt::new(&directory.join("debian"))?;
    println!("xtask: reading Debian's arm64 package lists");
    apt.update()?;
    let kernel = apt.current_kernel_package()?;
    println!("xtask: fetching Raspberry Pi firmware from Debian's {FIRMWARE_PACKAGE} and {kernel} packages");
    let firmware_deb = apt.download(FIRMWARE_PACKAGE)?;
    let kernel_deb = apt.download(&kernel)?;
    println!("xtask: extracting {START_ELF}, {FIXUP_DAT} and {DEVICETREE} into {}", directory.display());
    let extracted = apt.root.join("extracted");
    create_directory(&extracted)?;
    let firmware_files = [format!("{FIRMWARE_PATH}/{START_ELF}"), format!("{FIRMWARE_PATH}/{FIXUP_DAT}")];
    extract(&firmware_deb, &firmware_files, &extracted)?;
    let devicetree = format!("usr/lib/{kernel}/broadcom/{DEVICETREE}");
    extract(&kernel_deb, std::slice::from_ref(&devicetree), &extracted)?;
    for member in firmware_files.iter().chain([&devicetree]) {
        let name = Path::new(member).file_name().expect("member paths end in a file name");
        rename(&extracted.join(member), &directory.join(name))?;
    }
    std::fs::remove_dir_all(&apt.root).map_err(|error| format!("cannot delete {}: {error}", apt.root.display()))
}

/// apt and dpkg, and the key Debian signs its archive with.
fn check_host_tools() -> Result<()> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("`{tool}` not found (Debian's apt and dpkg)"));
        }
    }
    if !Path::new(DEBIAN_KEYRING).is_file() {
        return Err(format!("no {DEBIAN_KEYRING} (package debian-archive-keyring)"));
    }
    Ok(())
}

/// apt-get and apt-cache on a private state directory that lists only Debian 12's arm64
/// packages, whatever the host runs.
struct Apt {
    root: PathBuf,
    options: Vec<String>,
}

impl Apt {
    fn new(root: &Path) -> Result<Self> {
        // Left over from a fetch that failed part way: start again.
        if root.exists() {
            std::fs::remove_dir_all(root).map_err(|error| format!("cannot delete {}: {error}", root.display()))?;
        }
        for directory in ["lists/partial", "cache/archives/partial", "etc", "debs"] {
            create_directory(&root.join(directory))?;
        }
        let sources = root.join("etc/sources.list");
        let lines: String = SUITES
            .iter()
            .map(|(archive, suite)| {
                format!(
                    "deb [arch=arm64 signed-by={DEBIAN_KEYRING}] http://deb.debian.org/{archive} {suite} \
                     main non-free-firmware\n"
                )
            })
            .collect();
        std::fs::write(&sources, lines).map_err(|error| format!("cannot write {}: {error}", sources.display()))?;
        let mut options: Vec<String> = [
            "APT::Architecture=arm64".to_string(),
            "APT::Architectures::=arm64".to_string(),
            format!("Dir::State::Lists={}", root.join("lists").display()),
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::Cache={}", root.join("cache").display()),
        ]
        .map(|option| format!("-o{option}"))
        .to_vec();
        // As root, apt downloads as the unprivileged `_apt` user, which usually may not enter
        // the workspace (it warns, then downloads as root anyway). Say so up front instead.
        if is_root() {
            options.push("-oAPT::Sandbox::User=root".into());
        }
        Ok(Self { root: root.to_path_buf(), options })
    }

    fn run(&self, program: &str, arguments: &[&str], directory: &Path) -> Result<Output> {
        let command = format!("{program} {}", arguments.join(" "));
        let output = Command::new(program)
            .args(&self.options)
            .arg("-q")
            .args(arguments)
            .current_dir(directory)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run {program}: {error}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no message");
            return Err(format!("`{command}` failed ({}): {}", output.status, reason.trim()));
        }
        Ok(output)
    }

    fn update(&self) -> Result<()> {
        self.run("apt-get", &["update"], &self.root).map(drop)
    }

    /// The kernel package `linux-image-arm64` depends on now, e.g. `linux-image-6.1.0-50-arm64`.
    fn current_kernel_package(&self) -> Result<String> {
        let output = self.run("apt-cache", &["depends", KERNEL_METAPACKAGE], &self.root)?;
        // "linux-image-arm64\n  Depends: linux-image-6.1.0-50-arm64\n"
        let listing = String::from_utf8_lossy(&output.stdout);
        let dependency = listing.lines().filter_map(|line| line.trim().strip_prefix("Depends: ")).find(|package| {
            package.starts_with("linux-image-") && package.ends_with("-arm64") && *package != KERNEL_METAPACKAGE
        });
        dependency.map(str::to_owned).ok_or(format!("`apt-cache depends {KERNEL_METAPACKAGE}` names no kernel package"))
    }

    /// Downloads the `.deb` of `package`; returns its path.
    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.root.join("debs");
        self.run("apt-get", &["download", package], &debs)?;
        let prefix = format!("{package}_");
        let entries = std::fs::read_dir(&debs).map_err(|error| format!("cannot read {}: {error}", debs.display()))?;
        let found = entries
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with(&prefix)));
        found.ok_or(format!("`apt-get download {package}` left no {prefix}*.deb in {}", debs.display()))
    }
}

/// Extracts `members` (paths inside the package, without the leading `./`) from `deb` into
/// `destination`: `dpkg-deb --fsys-tarfile DEB | tar -x`, so the rest of the package (a kernel
/// package unpacks to hundreds of MiB) is never written.
fn extract(deb: &Path, members: &[String], destination: &Path) -> Result<()> {
    let mut unpack = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run dpkg-deb: {error}"))?;
    let tarfile = unpack.stdout.take().ok_or("dpkg-deb gave no output")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(destination)
        .args(members.iter().map(|member| format!("./{member}")))
        .stdin(tarfile)
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| format!("cannot run tar: {error}"))?;
    let unpacked = unpack.wait().map_err(|error| format!("dpkg-deb: {error}"))?;
    let package = deb.file_name().unwrap_or_default().to_string_lossy();
    if !tar.status.success() {
        let stderr = String::from_utf8_lossy(&tar.stderr);
        return Err(format!("cannot extract {} from {package}: {}", members.join(", "), stderr.trim()));
    }
    if !unpacked.success() {
        return Err(format!("`dpkg-deb --fsys-tarfile {package}` failed ({unpacked})"));
    }
    Ok(())
}

fn create_directory(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|error| format!("cannot create {}: {error}", path.display()))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|error| format!("cannot move {} to {}: {error}", from.display(), to.display()))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_directory(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("xtask-firmware-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    #[test]
    fn a_firmware_directory_must_hold_all_three_files() {
        let directory = scratch_directory("bring-your-own");
        for name in [START_ELF, FIXUP_DAT] {
            std::fs::write(directory.join(name), b"firmware").unwrap();
        }
        let error = pi_files(Some(&directory)).unwrap_err();
        assert!(error.contains(DEVICETREE), "names the missing file: {error}");
        std::fs::write(directory.join(DEVICETREE), b"devicetree").unwrap();
        let files = pi_files(Some(&directory)).unwrap();
        assert_eq!(files.devicetree, directory.join(DEVICETREE));
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
