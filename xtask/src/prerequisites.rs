//! What the host needs, checked before use and installed where that is safe to do.

use std::process::Command;

use crate::Result;
use crate::image::workspace_root;

pub const KERNEL_TARGET: &str = "aarch64-unknown-none";
const QEMU: &str = "qemu-system-aarch64";
const MINIMUM_QEMU_MAJOR: u32 = 9;

/// The bare-metal Rust target, for the toolchain pinned in `rust-toolchain.toml`.
pub fn ensure_rust_target() -> Result<()> {
    let installed = output("rustup", &["target", "list", "--installed"])
        .map_err(|_| "rustup not found: install Rust with rustup (https://rustup.rs)".to_string())?;
    if installed.lines().any(|line| line.trim() == KERNEL_TARGET) {
        return Ok(());
    }
    println!("xtask: installing the Rust target {KERNEL_TARGET}");
    run_visible("rustup", &["target", "add", KERNEL_TARGET])
        .map_err(|_| format!("could not install the Rust target: run `rustup target add {KERNEL_TARGET}`"))
}

/// rustup components of the pinned toolchain (`clippy`, `rustfmt`), installed if missing.
///
/// Only the toolchain `rust-toolchain.toml` pins is touched: cargo, started through rustup's
/// proxy, hands xtask that toolchain's name in `RUSTUP_TOOLCHAIN`, and rustup is told it with
/// `--toolchain` (without the variable, rustup reads `rust-toolchain.toml` itself, since xtask
/// runs it from the workspace root).
pub fn ensure_components(components: &[&str]) -> Result<()> {
    let pinned = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let toolchain: Vec<&str> = pinned.as_deref().map(|name| vec!["--toolchain", name]).unwrap_or_default();
    let list = [&["component", "list", "--installed"][..], &toolchain].concat();
    let installed = output("rustup", &list)
        .map_err(|_| "rustup not found: install Rust with rustup (https://rustup.rs)".to_string())?;
    for component in components {
        if installed.lines().any(|line| line.trim().starts_with(&format!("{component}-"))) {
            continue;
        }
        println!("xtask: installing the rustup component {component} ({})", pinned.as_deref().unwrap_or("pinned"));
        let add = [&["component", "add", component][..], &toolchain].concat();
        run_visible("rustup", &add)
            .map_err(|_| format!("could not install {component}: run `rustup component add {component}`"))?;
    }
    Ok(())
}

/// QEMU 9 or newer (for `raspi4b` and a current SMMUv3 model).
pub fn ensure_qemu() -> Result<()> {
    match qemu_major_version() {
        Some(major) if major >= MINIMUM_QEMU_MAJOR => return Ok(()),
        Some(major) => println!("xtask: {QEMU} {major}.x is too old (need >= {MINIMUM_QEMU_MAJOR})"),
        None => println!("xtask: {QEMU} not found"),
    }
    if is_debian_bookworm() && is_root() {
        install_qemu_from_backports()?;
        if qemu_major_version().is_some_and(|major| major >= MINIMUM_QEMU_MAJOR) {
            return Ok(());
        }
        return Err(format!("{QEMU} from bookworm-backports is still older than {MINIMUM_QEMU_MAJOR}"));
    }
    Err(format!(
        "need {QEMU} >= {MINIMUM_QEMU_MAJOR}. On Debian bookworm run as root: \
         echo 'deb http://deb.debian.org/debian bookworm-backports main' > \
         /etc/apt/sources.list.d/backports.list && apt-get update && \
         apt-get install -y -t bookworm-backports qemu-system-arm; elsewhere install QEMU >= 9 \
         with your package manager (Debian trixie, Ubuntu 24.10+, Fedora 40+: qemu-system-aarch64)"
    ))
}

fn qemu_major_version() -> Option<u32> {
    let version = output(QEMU, &["--version"]).ok()?;
    // "QEMU emulator version 10.0.2 (Debian ...)"
    let number = version.split_whitespace().nth(3)?;
    number.split('.').next()?.parse().ok()
}

fn is_debian_bookworm() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|release| release.contains("VERSION_CODENAME=bookworm"))
}

fn is_root() -> bool {
    output("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}

fn install_qemu_from_backports() -> Result<()> {
    const SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
    println!("xtask: installing {QEMU} from bookworm-backports");
    let already_listed = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains("bookworm-backports"))
            })
        })
        .unwrap_or(false);
    if !already_listed {
        let entry = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
                     Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        std::fs::write(SOURCES, entry).map_err(|error| format!("cannot write {SOURCES}: {error}"))?;
    }
    run_visible("apt-get", &["update", "-q"]).map_err(|_| "apt-get update failed".to_string())?;
    let install = ["install", "-y", "-q", "--no-install-recommends", "-t", "bookworm-backports", "qemu-system-arm"];
    run_visible("apt-get", &install).map_err(|_| "apt-get install qemu-system-arm failed".to_string())
}

fn output(program: &str, arguments: &[&str]) -> std::io::Result<String> {
    let output = Command::new(program).args(arguments).current_dir(workspace_root()).output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!("{program} failed")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_visible(program: &str, arguments: &[&str]) -> std::io::Result<()> {
    let status = Command::new(program)
        .args(arguments)
        .current_dir(workspace_root())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("{program} failed"))) }
}
