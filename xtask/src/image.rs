//! Building the kernel and turning its ELF into the raw image boot loaders load.
//!
//! A boot loader does not read ELF: QEMU's `-kernel` and the Raspberry Pi firmware copy a
//! flat file to memory and jump to its first byte. So the file must hold the loadable
//! segments laid out exactly as in memory, starting at the image's first byte (`objcopy -O
//! binary` does the same). `.bss` and the boot stack take no bytes: the Image header's
//! `image_size` tells the loader how much memory to leave for them.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::Endianness;
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};

use crate::Result;
use crate::prerequisites::{KERNEL_TARGET, ensure_rust_target};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn build_directory() -> PathBuf {
    workspace_root().join("target").join(KERNEL_TARGET).join("release")
}

/// Builds the kernel; returns the path of `kernel8.img`.
pub fn build() -> Result<PathBuf> {
    build_in(&workspace_root().join("target"), &[])
}

/// Builds the kernel with extra cargo `features` (a lesson's removed fix, an exercise's
/// skeleton) in a target directory of its own, `target/variants/NAME`, so that the image
/// everything else boots is never one of them; returns the path of its `kernel8.img`.
pub fn build_variant(name: &str, features: &[&str]) -> Result<PathBuf> {
    build_in(&workspace_root().join("target").join("variants").join(name), features)
}

fn build_in(target_directory: &Path, features: &[&str]) -> Result<PathBuf> {
    ensure_rust_target()?;
    // Cargo shows each crate as it compiles: the first build takes a minute or two.
    match features {
        [] => println!("xtask: building the kernel for {KERNEL_TARGET}"),
        _ => println!("xtask: building the kernel for {KERNEL_TARGET} with {}", features.join(", ")),
    }
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(workspace_root()).args([
        "build",
        "--package",
        "kernel",
        "--release",
        "--target",
        KERNEL_TARGET,
    ]);
    command.arg("--target-dir").arg(target_directory);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command.status().map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err("the kernel did not build (see the errors above)".into());
    }
    let directory = target_directory.join(KERNEL_TARGET).join("release");
    let elf = directory.join("kernel");
    let image = directory.join("kernel8.img");
    let bytes = std::fs::read(&elf).map_err(|error| format!("cannot read {}: {error}", elf.display()))?;
    let flat = flatten(&bytes)?;
    std::fs::write(&image, flat).map_err(|error| format!("cannot write {}: {error}", image.display()))?;
    Ok(image)
}

/// The loadable segments of an ELF file, placed at their offsets from the first one.
fn flatten(elf: &[u8]) -> Result<Vec<u8>> {
    let file = ElfFile64::<Endianness>::parse(elf).map_err(|error| format!("kernel ELF: {error}"))?;
    let endian = file.endian();
    let mut segments: Vec<(u64, &[u8])> = Vec::new();
    for header in file.elf_program_headers() {
        if header.p_type(endian) != PT_LOAD || header.p_filesz(endian) == 0 {
            continue;
        }
        let data = header.data(endian, elf).map_err(|_| "kernel ELF: bad segment".to_string())?;
        segments.push((header.p_paddr(endian), data));
    }
    segments.sort_by_key(|(address, _)| *address);
    let base = segments.first().ok_or("kernel ELF has no loadable segment")?.0;
    let mut flat = Vec::new();
    for (address, data) in segments {
        let offset = (address - base) as usize;
        if flat.len() < offset {
            flat.resize(offset, 0);
        }
        flat.truncate(offset);
        flat.extend_from_slice(data);
    }
    Ok(flat)
}
