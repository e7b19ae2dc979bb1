//! What the Raspberry Pi 4's firmware does with `config.txt` and `kernel8.img`, and the check
//! that the two agree before a card is flashed.
//!
//! Nothing on a board says why a kernel did not start: the firmware either jumps to it or does
//! not, and a kernel started wrongly is as silent as one never started. So the SD card's
//! `config.txt` and the kernel's arm64 Image header are read together, and every rule the boot
//! depends on is checked on the host:
//!
//! ```text
//!  config.txt                          kernel8.img, bytes 0-63 (Linux booting.rst, "Call the
//!  arm_64bit=1  ─▶ start the cores         kernel image"): code0 code1 │ text_offset │
//!                  in AArch64              image_size │ flags │ res │ "ARM\x64" at 56
//!  kernel=F     ─▶ the file F is on the card and is an arm64 Image (the magic)
//!  kernel_address=A ─▶ loaded at A, which must be a 2 MiB boundary plus text_offset, clear
//!                  of the spin table (the armstub's first page) and inside the first GiB
//!  device_tree=D ─▶ the file D is on the card
//!  enable_uart=1, core_freq=N, core_freq_min=N ─▶ the console's clock (see `CONFIG` in
//!                  `sdcard.rs`)
//! ```
//!
//! Sources: the Raspberry Pi documentation's `config.txt` chapter (`arm_64bit`,
//! `kernel_address`: "64-bit kernels are loaded to address 0x200000 by default", `kernel`,
//! `device_tree`, `enable_uart`, `core_freq`), Linux's `Documentation/arch/arm64/booting.rst`
//! (the header and its placement), and the firmware's `armstub8.S` (the spin table at
//! 0xd8-0xf0, in the first page).

use std::collections::BTreeMap;

use crate::Result;

/// The arm64 Image header's magic, at byte 56 (booting.rst).
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
const MAGIC_OFFSET: usize = 56;
const HEADER_BYTES: usize = 64;
/// booting.rst: the Image is placed `text_offset` bytes from a 2 MiB aligned base.
const IMAGE_ALIGN: u64 = 2 << 20;
/// Header flags bits 2:1: the kernel's page size; 1 is 4 KiB.
const PAGE_SIZE_FLAGS: u64 = 0b110;
const PAGE_SIZE_4K: u64 = 0b010;
/// Where the firmware loads a 64-bit kernel without `kernel_address` (Pi documentation).
pub const DEFAULT_KERNEL_ADDRESS: u64 = 0x20_0000;
/// The armstub's page: its code and the spin table the secondary cores wait on
/// (`cpu-release-addr` 0xd8, 0xe0, 0xe8, 0xf0). A kernel loaded over it loses the other cores.
const ARMSTUB_END: u64 = 0x1000;
/// The firmware runs the ARM cores from the first GiB, below the GPU's memory at its top: a
/// kernel must load and run below it (every Pi 4 has at least this much ARM RAM there).
const LOW_MEMORY_END: u64 = 0x3b40_0000;

/// The fields of an arm64 Image header that the boot depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    pub image_size: u64,
    pub flags: u64,
}

impl ImageHeader {
    /// The header of `kernel`, or why it has none.
    pub fn read(kernel: &[u8]) -> Result<Self> {
        let header =
            kernel.get(..HEADER_BYTES).ok_or(format!("{} bytes: shorter than an Image header", kernel.len()))?;
        if &header[MAGIC_OFFSET..MAGIC_OFFSET + 4] != IMAGE_MAGIC {
            return Err(format!(
                "no arm64 Image header: bytes 56-59 are {:02x?}, not \"ARM\\x64\"",
                &header[MAGIC_OFFSET..MAGIC_OFFSET + 4]
            ));
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        Ok(Self { text_offset: word(8), image_size: word(16), flags: word(24) })
    }
}

/// `config.txt`'s settings, `name=value` lines, later lines overriding earlier ones as the
/// firmware reads them. Conditional sections (`[pi4]`, `[all]`) are refused: the card's file
/// has none, and honouring them would mean knowing which board reads it.
pub fn settings(config: &str) -> Result<BTreeMap<String, String>> {
    let mut settings = BTreeMap::new();
    for (index, line) in config.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            return Err(format!("config.txt line {}: conditional section `{line}`", index + 1));
        }
        let (name, value) =
            line.split_once('=').ok_or(format!("config.txt line {}: `{line}` is not name=value", index + 1))?;
        if value.contains('#') {
            return Err(format!(
                "config.txt line {}: `{line}`: the firmware takes a comment after a value as part of it",
                index + 1
            ));
        }
        settings.insert(name.trim().to_string(), value.trim().to_string());
    }
    Ok(settings)
}

/// Where and how the firmware will start the kernel, once the checks pass.
#[derive(Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub kernel: String,
    pub load_address: u64,
    pub devicetree: String,
}

/// Checks `config` against the kernel it names (`kernel`, the file's bytes) and the files on
/// the card (`files`): every rule of the module documentation.
pub fn check(config: &str, kernel: &[u8], files: &[&str]) -> Result<BootPlan> {
    let settings = settings(config)?;
    let get = |name: &str| settings.get(name).map(String::as_str);
    if get("arm_64bit") != Some("1") {
        return Err("config.txt: `arm_64bit=1` is missing: the firmware could start the cores in AArch32".into());
    }
    let kernel_file = get("kernel").ok_or("config.txt names no `kernel=`")?;
    let devicetree = get("device_tree").ok_or("config.txt names no `device_tree=`")?;
    for file in [kernel_file, devicetree] {
        if !files.contains(&file) {
            return Err(format!("config.txt names `{file}`, which is not on the card"));
        }
    }
    let header = ImageHeader::read(kernel).map_err(|problem| format!("{kernel_file}: {problem}"))?;
    if header.flags & PAGE_SIZE_FLAGS != PAGE_SIZE_4K && header.flags & PAGE_SIZE_FLAGS != 0 {
        return Err(format!("{kernel_file}: header flags {:#x} ask for pages other than 4 KiB", header.flags));
    }
    let load_address = match get("kernel_address") {
        Some(value) => parse_number(value).ok_or(format!("config.txt: kernel_address={value} is not a number"))?,
        None => DEFAULT_KERNEL_ADDRESS,
    };
    check_placement(load_address, &header)
        .map_err(|problem| format!("{kernel_file} at {load_address:#x}: {problem}"))?;
    if get("enable_uart") != Some("1") {
        return Err("config.txt: `enable_uart=1` is missing: the console's pins and clock are not set up".into());
    }
    check_console_clock(&settings)?;
    Ok(BootPlan { kernel: kernel_file.into(), load_address, devicetree: devicetree.into() })
}

/// booting.rst: `text_offset` bytes from a 2 MiB aligned base; the Pi: clear of the armstub,
/// and the whole image (`image_size`, .bss included) below the GPU's memory.
fn check_placement(load_address: u64, header: &ImageHeader) -> Result<()> {
    let base = load_address.checked_sub(header.text_offset).ok_or("below its own text_offset")?;
    if !base.is_multiple_of(IMAGE_ALIGN) {
        return Err(format!(
            "not text_offset ({:#x}) bytes past a 2 MiB boundary, as an arm64 Image must be",
            header.text_offset
        ));
    }
    if load_address < ARMSTUB_END {
        return Err(format!("over the armstub and its spin table (below {ARMSTUB_END:#x})"));
    }
    let end = load_address + header.image_size;
    if end > LOW_MEMORY_END {
        return Err(format!(
            "{} bytes would run to {end:#x}, past the first GiB's ARM memory ({LOW_MEMORY_END:#x})",
            header.image_size
        ));
    }
    Ok(())
}

/// The mini UART's baud rate is divided from the VPU core clock: `core_freq` and
/// `core_freq_min` must pin that clock, at one value.
fn check_console_clock(settings: &BTreeMap<String, String>) -> Result<()> {
    let core = settings.get("core_freq");
    let core_min = settings.get("core_freq_min");
    match (core, core_min) {
        (Some(core), Some(core_min)) if core == core_min => Ok(()),
        _ => Err(format!(
            "config.txt: core_freq ({}) and core_freq_min ({}) must be set, and equal, so that the mini UART's clock cannot move",
            core.map_or("unset", String::as_str),
            core_min.map_or("unset", String::as_str)
        )),
    }
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Image header with these fields (`arch/src/entry.s` writes text_offset 0 and flags
    /// 0xa, 4 KiB pages placed anywhere; `cargo xtask sdcard` checks the real one).
    fn kernel_header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut image = vec![0u8; 4096];
        image[8..16].copy_from_slice(&text_offset.to_le_bytes());
        image[16..24].copy_from_slice(&image_size.to_le_bytes());
        image[24..32].copy_from_slice(&flags.to_le_bytes());
        image[56..60].copy_from_slice(IMAGE_MAGIC);
        image
    }

    const FILES: [&str; 3] = ["kernel8.img", "bcm2711-rpi-4-b.dtb", "config.txt"];

    fn kernel() -> Vec<u8> {
        kernel_header(0, 1 << 20, 0xa)
    }

    #[test]
    fn the_cards_config_agrees_with_an_image_like_the_kernels() {
        let plan = check(crate::sdcard::CONFIG, &kernel(), &FILES).unwrap();
        assert_eq!(
            plan,
            BootPlan {
                kernel: "kernel8.img".into(),
                load_address: 0x20_0000,
                devicetree: "bcm2711-rpi-4-b.dtb".into()
            }
        );
    }

    fn refusal(config: &str, kernel: &[u8]) -> String {
        check(config, kernel, &FILES).unwrap_err()
    }

    fn without(line: &str) -> String {
        crate::sdcard::CONFIG.replace(&format!("{line}\n"), "")
    }

    #[test]
    fn every_setting_the_boot_needs_is_required_by_name() {
        for (line, named) in [
            ("arm_64bit=1", "arm_64bit=1"),
            ("kernel=kernel8.img", "kernel="),
            ("device_tree=bcm2711-rpi-4-b.dtb", "device_tree="),
            ("enable_uart=1", "enable_uart=1"),
            ("core_freq_min=500", "core_freq_min"),
        ] {
            let problem = refusal(&without(line), &kernel());
            assert!(problem.contains(named), "without `{line}`: {problem}");
        }
    }

    #[test]
    fn load_addresses_off_a_2_mib_boundary_over_the_armstub_or_past_low_memory_are_refused() {
        let at = |address: &str| {
            crate::sdcard::CONFIG.replace("kernel_address=0x200000", &format!("kernel_address={address}"))
        };
        assert!(refusal(&at("0x80000"), &kernel()).contains("2 MiB boundary"));
        assert!(refusal(&at("0x0"), &kernel()).contains("armstub"));
        assert!(refusal(&at("0x3b400000"), &kernel()).contains("past the first GiB"));
        assert!(check(&at("0x400000"), &kernel(), &FILES).is_ok());
        let offset = kernel_header(0x8_0000, 1 << 20, 0xa);
        assert!(check(&at("0x280000"), &offset, &FILES).is_ok(), "text_offset 0x80000 past 2 MiB");
        assert!(check(&without("kernel_address=0x200000"), &kernel(), &FILES).is_ok(), "the default 0x200000");
    }

    #[test]
    fn a_kernel_without_the_header_or_with_large_pages_is_refused() {
        let mut plain = kernel();
        plain[56..60].copy_from_slice(b"ELF\x7f");
        assert!(refusal(crate::sdcard::CONFIG, &plain).contains("no arm64 Image header"));
        assert!(refusal(crate::sdcard::CONFIG, &kernel_header(0, 1 << 20, 0b110)).contains("other than 4 KiB"));
        assert!(refusal(crate::sdcard::CONFIG, &[0; 10]).contains("shorter"));
    }

    #[test]
    fn files_the_config_names_must_be_on_the_card() {
        let problem = check(crate::sdcard::CONFIG, &kernel(), &["kernel8.img"]).unwrap_err();
        assert!(problem.contains("bcm2711-rpi-4-b.dtb"), "{problem}");
    }

    #[test]
    fn a_comment_after_a_value_or_a_conditional_section_is_refused() {
        assert!(settings("enable_uart=1 # console").unwrap_err().contains("comment after a value"));
        assert!(settings("[pi4]\narm_64bit=1").unwrap_err().contains("conditional section"));
        assert_eq!(settings("a=1\na=2").unwrap()["a"], "2", "a later line overrides");
    }
}
