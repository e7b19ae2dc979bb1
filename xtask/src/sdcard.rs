//! `cargo xtask sdcard`: a disk image to flash onto a Raspberry Pi 4's SD card.
//!
//! The Pi 4's EEPROM bootloader looks for a FAT partition in the card's partition table and
//! loads the GPU firmware from it (see [`crate::firmware`]); the firmware then reads
//! `config.txt`, loads the kernel and the devicetree, and starts the ARM cores. So the image
//! is a partition table with one FAT32 partition holding six files:
//!
//! ```text
//!  0          512 B               1 MiB (LBA 2048)                              65 MiB
//!  ┌──────────┬───────────────────┬──────────────────────────────────────────────┐
//!  │ MBR      │ unused (alignment)│ FAT32, type 0x0C, bootable: start4.elf,       │
//!  │          │                   │ fixup4.dat, config.txt, cmdline.txt,          │
//!  │          │                   │ bcm2711-rpi-4-b.dtb, kernel8.img              │
//!  └──────────┴───────────────────┴──────────────────────────────────────────────┘
//! ```
//!
//! - The partition starts at 1 MiB, where partitioning tools put it: SD cards erase in
//!   blocks of up to 4 MiB and a partition aligned to a large power of two never straddles
//!   more of them than it must.
//! - FAT32 is what Raspberry Pi OS uses, and what the early boot ROMs of some boards insist
//!   on. A volume is FAT32 by its cluster count alone (at least 65525, Microsoft's FAT
//!   specification, "FAT Type Determination"), not by its size: 64 MiB in clusters of one
//!   512-byte sector gives about 129000, and one sector per cluster is one of the two layouts
//!   Raspberry Pi OS images use (the other is four).
//! - Everything is written in Rust (the `fatfs` crate), without `mkfs` or `mtools`. Every
//!   file is stamped 1980-01-01 00:00, so the same inputs give the same image byte for byte.
//!   The image is assembled in memory (65 MiB) and written sparsely: only the 4 KiB blocks
//!   that are not all zero take room on the host's disk, under 3 MiB.
//! - The devicetree on the card is Linux's with a restricted DMA pool for the legacy DMA
//!   engine ([`devicetree::for_raspi`]); the firmware fills in `/memory` itself.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use platform::devicetree::Devicetree;

use crate::devicetree::{self, PI_LEGACY_DMA, RaspiPool};
use crate::firmware::{self, DEVICETREE, FIXUP_DAT, PiFiles, START_ELF};
use crate::{Result, image, pi_boot};

const SECTOR_SIZE: usize = 512;
/// The partition's first sector: 1 MiB into the card.
const PARTITION_START_LBA: u32 = 2048;
/// 64 MiB: FAT32 with 512-byte clusters, room to spare for the ~4 MiB of files.
const PARTITION_SECTORS: u32 = 131_072;
const CLUSTER_SIZE: u32 = 512;
/// Microsoft's FAT specification: a volume with fewer clusters is FAT12 or FAT16.
const FAT32_MIN_CLUSTERS: u32 = 65_525;
/// MBR partition type 0x0C: FAT32 addressed by LBA.
const FAT32_LBA: u8 = 0x0c;
const BOOTABLE: u8 = 0x80;
const VOLUME_LABEL: [u8; 11] = *b"RPI-BOOT   ";
/// Fixed rather than random, so that images are reproducible.
const VOLUME_ID: u32 = 0x0d4a_b007;

const KERNEL: &str = "kernel8.img";
const CONFIG_TXT: &str = "config.txt";
const CMDLINE_TXT: &str = "cmdline.txt";

/// The firmware's settings ([`crate::pi_boot`] checks them against the kernel). Its parser
/// takes no comment after a value, so each comment has a line of its own.
///
/// The console is the mini UART (`stdout-path = "serial1"` in the Pi's devicetree), whose baud
/// rate is divided from the VPU core clock. The firmware sets the divisor for 115200 at boot,
/// and on a Pi 4 the clock then moves between `core_freq_min` (200 MHz) and `core_freq`
/// (500 MHz) with load: `enable_uart=1` alone does not hold it (raspberrypi/linux issues #3381,
/// "core_freq=500 core_freq_min=200" on a Pi 4, and #4123, "enable_uart=1 NOT fixing
/// core_freq", 2021). So both are pinned to the Pi 4's usual 500 MHz. The PL011 would have a
/// fixed clock, but GPIO 14/15 reach it only with Bluetooth moved off it (`dtoverlay=disable-bt`
/// and its `.dtbo` on the card); pinning one clock is the smaller change, and loses nothing at
/// the top speed.
pub(crate) const CONFIG: &str = "\
# Written by `cargo xtask sdcard`.
# Start the ARM cores in AArch64.
arm_64bit=1
# The mini UART (stdout-path serial1, GPIO 14/15) as the console.
enable_uart=1
# Its baud rate divides the core clock: hold that clock still, at the Pi 4's 500 MHz.
core_freq=500
core_freq_min=500
# The firmware's own log on the UART too.
uart_2ndstage=1
kernel=kernel8.img
# A 2 MiB boundary, as the arm64 boot protocol asks of an Image.
kernel_address=0x200000
device_tree=bcm2711-rpi-4-b.dtb
";

/// A built image and what `check_image` found in it.
pub struct SdCard {
    pub image: PathBuf,
    pub size: u64,
    pub summary: String,
}

/// The image's path when `--output` is not given.
pub fn default_output() -> PathBuf {
    firmware::raspi_directory().join("sdcard.img")
}

/// Builds the kernel, gets the Pi files, writes the image and checks it.
pub fn build(firmware_dir: Option<&Path>, output: &Path, bootargs: &str) -> Result<SdCard> {
    let kernel = image::build()?;
    let files = firmware::pi_files(firmware_dir)?;
    write_image(output, &files, &kernel, bootargs)?;
    let summary = check_image(output, &kernel)?;
    let size = std::fs::metadata(output).map_err(|error| format!("{}: {error}", output.display()))?.len();
    Ok(SdCard { image: output.to_path_buf(), size, summary })
}

/// `cargo xtask sdcard`: build the image and say how to flash it.
pub fn run(firmware_dir: Option<&Path>, output: Option<&Path>, bootargs: &str) -> Result<()> {
    let output = output.map_or_else(default_output, Path::to_path_buf);
    let card = build(firmware_dir, &output, bootargs)?;
    println!("xtask: wrote {} ({} MiB)", card.image.display(), card.size >> 20);
    println!("{}", card.summary);
    println!(
        "xtask: flash it with `sudo dd if={} of=/dev/sdX bs=4M conv=fsync` (sdX: the card, see `lsblk`), \
         or with Raspberry Pi Imager (\"Use custom\")",
        card.image.display()
    );
    Ok(())
}

/// Writes the image to `output`: the partition table, then the FAT32 partition with the Pi
/// files, `kernel`, `config.txt`, and `bootargs` as `cmdline.txt`.
pub fn write_image(output: &Path, files: &PiFiles, kernel: &Path, bootargs: &str) -> Result<()> {
    let devicetree = devicetree::for_raspi(&read(&files.devicetree)?, RaspiPool::Restricted, None)?;
    let contents = [
        (CONFIG_TXT, CONFIG.as_bytes().to_vec()),
        (CMDLINE_TXT, format!("{bootargs}\n").into_bytes()),
        (START_ELF, read(&files.start4_elf)?),
        (FIXUP_DAT, read(&files.fixup4_dat)?),
        (DEVICETREE, devicetree),
        (KERNEL, read(kernel)?),
    ];
    let mut image = vec![0; image_size()];
    image[..512].copy_from_slice(&master_boot_record());
    fill_partition(&mut image[partition_bytes()], &contents)
        .map_err(|error| format!("cannot build the FAT partition of {}: {error}", output.display()))?;
    write_sparse(output, &image)
}

/// Formats `partition` as FAT32 and writes `contents` into its root directory.
fn fill_partition(partition: &mut [u8], contents: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    let options = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(CLUSTER_SIZE)
        .volume_label(VOLUME_LABEL)
        .volume_id(VOLUME_ID);
    fatfs::format_volume(Cursor::new(&mut *partition), options)?;
    record_hidden_sectors(partition);
    let filesystem = FileSystem::new(Cursor::new(partition), FsOptions::new().time_provider(&FIXED_TIME))?;
    // Counts the free clusters, which FSInfo then records on unmount: `fsck` wants the count.
    filesystem.stats()?;
    for (name, bytes) in contents {
        filesystem.root_dir().create_file(name)?.write_all(bytes)?;
    }
    filesystem.unmount()
}

/// Writes `image` to `path`, skipping 4 KiB blocks of zeros: the file system leaves holes
/// there that read as zeros and take no room.
fn write_sparse(path: &Path, image: &[u8]) -> Result<()> {
    const BLOCK: usize = 4096;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    let failed = |error: std::io::Error| format!("cannot write {}: {error}", path.display());
    let mut file = File::create(path).map_err(failed)?;
    file.set_len(image.len() as u64).map_err(failed)?;
    for (index, block) in image.chunks(BLOCK).enumerate() {
        if block.iter().any(|&byte| byte != 0) {
            file.seek(SeekFrom::Start((index * BLOCK) as u64)).map_err(failed)?;
            file.write_all(block).map_err(failed)?;
        }
    }
    file.sync_all().map_err(failed)
}

fn image_size() -> usize {
    (PARTITION_START_LBA + PARTITION_SECTORS) as usize * SECTOR_SIZE
}

/// Where the partition lies in the image, in bytes.
fn partition_bytes() -> Range<usize> {
    PARTITION_START_LBA as usize * SECTOR_SIZE..image_size()
}

/// The classic MBR (UEFI specification 2.10, 5.2.1, tables 5-1 and 5-2):
///
/// ```text
///  offset   0  boot code (446 bytes; left zero, nothing runs it on a Pi)
///  offset 446  four 16-byte partition entries:
///                +0 boot indicator (0x80 bootable)   +1 first sector, CHS (3 bytes)
///                +4 partition type                   +5 last sector, CHS (3 bytes)
///                +8 first sector, LBA (4 bytes)     +12 size in sectors (4 bytes)
///  offset 510  signature 0x55 0xAA
/// ```
///
/// Numbers are little-endian.
fn master_boot_record() -> [u8; 512] {
    let last_lba = PARTITION_START_LBA + PARTITION_SECTORS - 1;
    let mut mbr = [0; 512];
    let entry = &mut mbr[446..462];
    entry[0] = BOOTABLE;
    entry[1..4].copy_from_slice(&chs(PARTITION_START_LBA));
    entry[4] = FAT32_LBA;
    entry[5..8].copy_from_slice(&chs(last_lba));
    entry[8..12].copy_from_slice(&PARTITION_START_LBA.to_le_bytes());
    entry[12..16].copy_from_slice(&PARTITION_SECTORS.to_le_bytes());
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    mbr
}

/// A sector's cylinder-head-sector address in the 255-head, 63-sector geometry every tool
/// assumes. Nothing on a Pi reads it, but other systems check it against the LBA.
fn chs(lba: u32) -> [u8; 3] {
    const HEADS: u32 = 255;
    const SECTORS_PER_TRACK: u32 = 63;
    let cylinder = lba / (HEADS * SECTORS_PER_TRACK);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff]; // beyond CHS: "use the LBA"
    }
    let head = (lba / SECTORS_PER_TRACK) % HEADS;
    let sector = lba % SECTORS_PER_TRACK + 1;
    // Byte 2 holds the sector in bits 0-5 and cylinder bits 8-9 in bits 6-7.
    [head as u8, sector as u8 | ((cylinder >> 2) as u8 & 0xc0), cylinder as u8]
}

/// The earliest valid DOS date and time, on every file and directory.
const EPOCH: DateTime =
    DateTime { date: Date { year: 1980, month: 1, day: 1 }, time: Time { hour: 0, min: 0, sec: 0, millis: 0 } };

/// A clock stopped at [`EPOCH`]: a fixed stamp keeps the image reproducible, and a valid one
/// keeps `fsck` quiet (`fatfs` without a clock writes month 0, day 0).
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        EPOCH.date
    }

    fn get_current_date_time(&self) -> DateTime {
        EPOCH
    }
}

/// Byte offsets in a FAT boot sector (Microsoft's FAT specification, "BPB").
const BPB_HIDDEN_SECTORS: usize = 0x1c;
const BPB_BACKUP_BOOT_SECTOR: usize = 0x32;

/// Sets `BPB_HiddSec`, the number of sectors before the partition, in the boot sector and its
/// FAT32 backup copy. `fatfs` writes 0, which is right for a volume without a partition table.
fn record_hidden_sectors(partition: &mut [u8]) {
    let backup = [partition[BPB_BACKUP_BOOT_SECTOR], partition[BPB_BACKUP_BOOT_SECTOR + 1]];
    for sector in [0, usize::from(u16::from_le_bytes(backup))] {
        let at = sector * SECTOR_SIZE + BPB_HIDDEN_SECTORS;
        partition[at..at + 4].copy_from_slice(&PARTITION_START_LBA.to_le_bytes());
    }
}

/// Reads an image back and checks everything the Pi needs from it (see the module doc), and
/// that its `kernel8.img` is `kernel`; returns a one-line summary.
pub fn check_image(path: &Path, kernel: &Path) -> Result<String> {
    let kernel = read(kernel)?;
    check(path, &kernel).map_err(|problem| format!("{}: {problem}", path.display()))
}

fn check(path: &Path, kernel: &[u8]) -> Result<String> {
    let mut image = std::fs::read(path).map_err(|error| format!("cannot read: {error}"))?;
    let partition = check_partition_table(&image)?;
    let filesystem = FileSystem::new(Cursor::new(&mut image[partition]), FsOptions::new())
        .map_err(|error| format!("the partition is not a FAT file system: {error}"))?;
    let stats = filesystem.stats().map_err(|error| format!("cannot read the FAT: {error}"))?;
    if stats.total_clusters() < FAT32_MIN_CLUSTERS {
        let clusters = stats.total_clusters();
        return Err(format!("the partition has {clusters} clusters: FAT32 needs at least {FAT32_MIN_CLUSTERS}"));
    }
    // Each file must be there and not empty; three are also looked into.
    for name in [CMDLINE_TXT, START_ELF, FIXUP_DAT] {
        read_fat_file(&filesystem, name)?;
    }
    let config = String::from_utf8_lossy(&read_fat_file(&filesystem, CONFIG_TXT)?).into_owned();
    let pool_on = check_devicetree(&read_fat_file(&filesystem, DEVICETREE)?)?;
    let on_card = read_fat_file(&filesystem, KERNEL)?;
    if on_card != kernel {
        return Err(format!("{KERNEL} differs from the kernel built"));
    }
    let files: Vec<String> =
        filesystem.root_dir().iter().flatten().filter(|e| e.is_file()).map(|e| e.file_name()).collect();
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let plan = pi_boot::check(&config, &on_card, &names)?;
    Ok(format!(
        "SD card: MBR + FAT32 ({} clusters of {} B), {} files, {pool_on}; {} loads at {:#x} in AArch64",
        stats.total_clusters(),
        stats.cluster_size(),
        files.len(),
        plan.kernel,
        plan.load_address
    ))
}

/// Checks the MBR: its signature and one bootable FAT32 partition inside the image, the
/// other three entries empty. Returns where the partition lies.
fn check_partition_table(image: &[u8]) -> Result<Range<usize>> {
    let mbr = image.get(..512).ok_or("shorter than one sector")?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(format!("no MBR signature (bytes 510-511 are {:02x} {:02x}, not 55 aa)", mbr[510], mbr[511]));
    }
    let entry = &mbr[446..462];
    if entry[4] != FAT32_LBA || entry[0] != BOOTABLE {
        return Err(format!(
            "partition 1 has type {:#04x}, flags {:#04x}: not a bootable FAT32 (0x0c, 0x80)",
            entry[4], entry[0]
        ));
    }
    if mbr[462..510].iter().any(|&byte| byte != 0) {
        return Err("partitions 2 to 4 are not empty".into());
    }
    let sectors = |at: usize| u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]]) as usize;
    let (start, end) = (sectors(8) * SECTOR_SIZE, (sectors(8) + sectors(12)) * SECTOR_SIZE);
    if start == 0 || end > image.len() {
        return Err(format!(
            "partition 1 ([{start:#x}..{end:#x}) in bytes) lies outside the {}-byte image",
            image.len()
        ));
    }
    Ok(start..end)
}

/// The devicetree parses, its restricted pools are valid, and the legacy DMA controller's
/// `memory-region` names one of them. Returns "restricted pool 'NAME' on NODE".
fn check_devicetree(blob: &[u8]) -> Result<String> {
    let mut storage = vec![0; blob.len()];
    let tree = Devicetree::parse(blob, &mut storage).map_err(|error| format!("{DEVICETREE}: {error}"))?;
    tree.restricted_pools().map_err(|error| format!("{DEVICETREE}: {error}"))?;
    let controllers = tree.compatible_devices(&[PI_LEGACY_DMA]).map_err(|error| format!("{DEVICETREE}: {error}"))?;
    let controller = controllers.first().ok_or(format!("{DEVICETREE} has no {PI_LEGACY_DMA} node"))?;
    let pool = controller.dma.pool.ok_or(format!(
        "{DEVICETREE}: {} names no restricted-dma-pool in memory-region, so its transfers would not bounce",
        controller.name
    ))?;
    Ok(format!("restricted pool '{pool}' on {}", controller.name))
}

/// The file `name` in the partition's root directory, which must not be empty.
fn read_fat_file(filesystem: &FileSystem<Cursor<&mut [u8]>>, name: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut file =
        filesystem.root_dir().open_file(name).map_err(|error| format!("no {name} on the partition: {error}"))?;
    file.read_to_end(&mut bytes).map_err(|error| format!("cannot read {name} from the partition: {error}"))?;
    if bytes.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(bytes)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devicetree::tests::pi_like;

    /// Synthetic inputs in a directory of their own, deleted on drop.
    struct Inputs {
        directory: PathBuf,
        files: PiFiles,
        kernel: PathBuf,
    }

    impl Inputs {
        fn new(test: &str) -> Self {
            let directory = std::env::temp_dir().join(format!("xtask-sdcard-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&directory);
            std::fs::create_dir_all(&directory).unwrap();
            let write = |name: &str, bytes: &[u8]| {
                let path = directory.join(name);
                std::fs::write(&path, bytes).unwrap();
                path
            };
            // Sizes that end mid-cluster, and files of many clusters.
            let files = PiFiles {
                start4_elf: write(START_ELF, &pattern(150_001, 1)),
                fixup4_dat: write(FIXUP_DAT, &pattern(5_000, 2)),
                devicetree: write(DEVICETREE, &pi_like()),
            };
            let kernel = write(KERNEL, &kernel_image(70_000, 3));
            Self { directory, files, kernel }
        }

        fn image(&self) -> PathBuf {
            self.directory.join("sdcard.img")
        }
    }

    impl Drop for Inputs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }

    /// A kernel: patterned bytes under an arm64 Image header as `arch/src/entry.s` writes it
    /// (text_offset 0, its size, flags 0xa, the magic), which the card's check reads.
    fn kernel_image(length: usize, seed: u8) -> Vec<u8> {
        let mut image = pattern(length, seed);
        image[8..16].copy_from_slice(&0u64.to_le_bytes());
        image[16..24].copy_from_slice(&(length as u64).to_le_bytes());
        image[24..32].copy_from_slice(&0xau64.to_le_bytes());
        image[56..60].copy_from_slice(b"ARM\x64");
        image
    }

    /// Bytes no two files share.
    fn pattern(length: usize, seed: u8) -> Vec<u8> {
        (0..length).map(|index| (index % 251) as u8 ^ seed.wrapping_mul(37)).collect()
    }

    #[test]
    fn the_image_checks_out_and_reads_back_file_for_file() {
        let inputs = Inputs::new("read-back");
        write_image(&inputs.image(), &inputs.files, &inputs.kernel, "kernel.test").unwrap();
        let summary = check_image(&inputs.image(), &inputs.kernel).unwrap();
        assert!(summary.starts_with("SD card: MBR + FAT32 ("), "{summary}");
        let tail =
            " 6 files, restricted pool 'restricted-dma' on dma@7e007000; kernel8.img loads at 0x200000 in AArch64";
        assert!(summary.ends_with(tail), "{summary}");

        // The MBR, byte by byte.
        let image = std::fs::read(inputs.image()).unwrap();
        assert_eq!(image.len() as u64, 65 << 20);
        assert_eq!(image[510..512], [0x55, 0xaa]);
        assert!(image[..446].iter().all(|&byte| byte == 0), "boot code left zero");
        let entry = &image[446..462];
        assert_eq!((entry[0], entry[4]), (0x80, 0x0c), "bootable, FAT32 LBA");
        assert_eq!(entry[1..4], [32, 33, 0], "CHS of LBA 2048: head 32, sector 33, cylinder 0");
        assert_eq!(u32::from_le_bytes(entry[8..12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(entry[12..16].try_into().unwrap()), 64 << 11);
        assert!(image[462..510].iter().all(|&byte| byte == 0), "one partition only");
        let boot_sector = &image[1 << 20..(1 << 20) + 512];
        assert_eq!(u32::from_le_bytes(boot_sector[0x1c..0x20].try_into().unwrap()), 2048, "BPB_HiddSec");
        assert_eq!(boot_sector[0x52..0x5a], *b"FAT32   ");
        let fs_info = &image[(1 << 20) + 512..(1 << 20) + 1024];
        assert_ne!(fs_info[488..492], [0xff; 4], "FSInfo records the free cluster count");

        // The files, through fatfs on a slice of the image.
        let mut partition = image[1 << 20..].to_vec();
        let filesystem = FileSystem::new(Cursor::new(&mut partition[..]), FsOptions::new()).unwrap();
        assert_eq!(filesystem.fat_type(), FatType::Fat32);
        assert!(filesystem.stats().unwrap().total_clusters() >= FAT32_MIN_CLUSTERS);
        let devicetree = devicetree::for_raspi(&pi_like(), RaspiPool::Restricted, None).unwrap();
        let expected = [
            (CONFIG_TXT, CONFIG.as_bytes().to_vec()),
            (CMDLINE_TXT, b"kernel.test\n".to_vec()),
            (START_ELF, std::fs::read(&inputs.files.start4_elf).unwrap()),
            (FIXUP_DAT, std::fs::read(&inputs.files.fixup4_dat).unwrap()),
            (DEVICETREE, devicetree),
            (KERNEL, std::fs::read(&inputs.kernel).unwrap()),
        ];
        let entries: Vec<_> = filesystem.root_dir().iter().map(|entry| entry.unwrap()).collect();
        assert!(entries.iter().all(|entry| entry.modified() == EPOCH), "every file stamped 1980-01-01 00:00");
        let mut names: Vec<String> = entries.iter().map(|entry| entry.file_name()).collect();
        names.sort();
        let mut expected_names: Vec<String> = expected.iter().map(|(name, _)| name.to_string()).collect();
        expected_names.sort();
        assert_eq!(names, expected_names);
        for (name, bytes) in expected {
            let mut on_card = Vec::new();
            filesystem.root_dir().open_file(name).unwrap().read_to_end(&mut on_card).unwrap();
            assert!(on_card == bytes, "{name}: {} bytes on the card, {} expected", on_card.len(), bytes.len());
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_image() {
        let inputs = Inputs::new("reproducible");
        let second = inputs.directory.join("second.img");
        write_image(&inputs.image(), &inputs.files, &inputs.kernel, "").unwrap();
        write_image(&second, &inputs.files, &inputs.kernel, "").unwrap();
        assert!(std::fs::read(inputs.image()).unwrap() == std::fs::read(second).unwrap());
    }

    #[test]
    fn a_damaged_image_or_another_kernel_is_refused() {
        let inputs = Inputs::new("refused");
        let image = inputs.image();
        write_image(&image, &inputs.files, &inputs.kernel, "").unwrap();

        std::fs::write(&inputs.kernel, kernel_image(70_000, 4)).unwrap();
        let error = check_image(&image, &inputs.kernel).unwrap_err();
        assert!(error.ends_with("kernel8.img differs from the kernel built"), "{error}");

        let mut file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        file.seek(SeekFrom::Start(510)).unwrap();
        file.write_all(&[0, 0]).unwrap();
        drop(file);
        let error = check_image(&image, &inputs.kernel).unwrap_err();
        assert_eq!(error, format!("{}: no MBR signature (bytes 510-511 are 00 00, not 55 aa)", image.display()));
    }
}
