//! Identify data: the 4 KiB pages an Identify command fills in (NVMe Base Specification 2.0,
//! 5.17.2 "Identify Data Structures"; NVM Command Set Specification 1.0, 4.1.5.1).
//!
//! The host learns what it talks to by asking. Identify Controller (CNS 01h) says who made it,
//! how large one command's data may be (MDTS) and how many namespaces it can have; the active
//! namespace list (CNS 02h) says which namespace IDs exist; Identify Namespace (CNS 00h) says
//! how large a namespace is and how it is formatted: the size of a logical block, and the
//! metadata that comes with each.
//!
//! All multi-byte fields are little-endian, and read here byte by byte, so parsing is the same
//! on any CPU. Text fields (serial and model number, firmware revision) are ASCII padded with
//! spaces to their fixed width (4.5.2 "Serial Number (SN) and Model Number (MN)").

use core::fmt;

/// Every Identify data structure is one 4 KiB page.
pub const IDENTIFY_BYTES: usize = 4096;

/// Bytes of the Identify Controller data structure (5.17.2.1, Figure "Identify – Identify
/// Controller Data Structure, I/O Command Set Independent").
mod controller_offset {
    /// VID: PCI vendor ID.
    pub const VENDOR_ID: usize = 0;
    /// SSVID: PCI subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: usize = 2;
    /// SN, 20 bytes.
    pub const SERIAL: usize = 4;
    /// MN, 40 bytes.
    pub const MODEL: usize = 24;
    /// FR, 8 bytes.
    pub const FIRMWARE: usize = 64;
    /// MDTS: log2 of the largest transfer, in units of CAP.MPSMIN pages; 0 means no limit.
    pub const MAX_DATA_TRANSFER: usize = 77;
    /// CNTLID.
    pub const CONTROLLER_ID: usize = 78;
    /// VER: the version, encoded as the VS register.
    pub const VERSION: usize = 80;
    /// SQES: [3:0] required (smallest), [7:4] largest submission entry size, log2 of bytes.
    pub const SUBMISSION_ENTRY_SIZE: usize = 512;
    /// CQES: the same for completion entries.
    pub const COMPLETION_ENTRY_SIZE: usize = 513;
    /// NN: the largest namespace ID the controller supports.
    pub const NAMESPACES: usize = 516;
}

/// Bytes of the Identify Namespace data structure (NVM Command Set 1.0, 4.1.5.1, Figure
/// "Identify – Identify Namespace Data Structure, NVM Command Set Specific").
mod namespace_offset {
    /// NSZE: the namespace's size in logical blocks.
    pub const SIZE: usize = 0;
    /// NCAP: how many of them may be allocated at once (less than NSZE if thin-provisioned).
    pub const CAPACITY: usize = 8;
    /// NUSE: how many are allocated.
    pub const UTILIZATION: usize = 16;
    /// NLBAF: the number of LBA formats, 0-based.
    pub const FORMAT_COUNT: usize = 25;
    /// FLBAS: the format in use, and where metadata goes.
    pub const FORMATTED_SIZE: usize = 26;
    /// LBAF0, then LBAF1 ... LBAF63, four bytes each.
    pub const FORMATS: usize = 128;
}

/// FLBAS [3:0]: the low bits of the format index.
const FORMAT_INDEX_LOW: u8 = 0x0f;
/// FLBAS [4]: metadata is sent at the end of each block's data ("extended LBA"), not apart.
const METADATA_AT_END_OF_BLOCK: u8 = 1 << 4;
/// FLBAS [6:5]: the high bits of the format index, for namespaces with more than 16 formats.
const FORMAT_INDEX_HIGH_SHIFT: u32 = 5;
const FORMAT_INDEX_HIGH: u8 = 0b11 << FORMAT_INDEX_HIGH_SHIFT;
/// An LBA format entry: [15:0] MS, metadata bytes per block; [23:16] LBADS, log2 of the
/// block's data bytes; [25:24] RP, relative performance.
const FORMAT_BYTES: usize = 4;
/// The smallest block the spec allows: LBADS 9, 512 bytes.
const SMALLEST_BLOCK_SHIFT: u8 = 9;

/// What Identify Controller says about a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerIdentity {
    /// VID: the PCI vendor ID.
    pub vendor_id: u16,
    /// SSVID: the PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    serial: [u8; 20],
    model: [u8; 40],
    firmware: [u8; 8],
    /// MDTS: one command moves at most `2 ^ n` minimum-size pages; `None` when MDTS is 0, which
    /// means no limit.
    pub max_data_transfer: Option<u8>,
    /// CNTLID: the controller's ID within its NVM subsystem.
    pub controller_id: u16,
    /// VER, encoded as the VS register (`registers::Version::decode`).
    pub version: u32,
    /// NN: the largest namespace ID.
    pub namespaces: u32,
    /// SQES: log2 of the smallest and the largest submission entry the controller takes.
    pub submission_entry_size: (u8, u8),
    /// CQES: the same for completion entries.
    pub completion_entry_size: (u8, u8),
}

impl ControllerIdentity {
    /// Reads the fields this driver uses from an Identify Controller data structure.
    pub fn parse(data: &[u8; IDENTIFY_BYTES]) -> Self {
        use controller_offset::*;
        Self {
            vendor_id: read_u16(data, VENDOR_ID),
            subsystem_vendor_id: read_u16(data, SUBSYSTEM_VENDOR_ID),
            serial: read_bytes(data, SERIAL),
            model: read_bytes(data, MODEL),
            firmware: read_bytes(data, FIRMWARE),
            max_data_transfer: Some(data[MAX_DATA_TRANSFER]).filter(|&mdts| mdts != 0),
            controller_id: read_u16(data, CONTROLLER_ID),
            version: read_u32(data, VERSION),
            namespaces: read_u32(data, NAMESPACES),
            submission_entry_size: nibbles(data[SUBMISSION_ENTRY_SIZE]),
            completion_entry_size: nibbles(data[COMPLETION_ENTRY_SIZE]),
        }
    }

    /// SN, without its padding.
    pub fn serial(&self) -> &str {
        text(&self.serial)
    }

    /// MN, without its padding.
    pub fn model(&self) -> &str {
        text(&self.model)
    }

    /// FR, without its padding.
    pub fn firmware(&self) -> &str {
        text(&self.firmware)
    }

    /// The most bytes one command may move, given CAP.MPSMIN's page size; `None` when there is
    /// no limit, or one larger than the address space.
    pub fn max_transfer_bytes(&self, min_page_size: usize) -> Option<usize> {
        let pages = 1usize.checked_shl(u32::from(self.max_data_transfer?))?;
        pages.checked_mul(min_page_size)
    }
}

/// What Identify Namespace says about a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceIdentity {
    /// NSZE, in logical blocks: the last LBA is `size - 1`.
    pub size: u64,
    /// NCAP, in logical blocks.
    pub capacity: u64,
    /// NUSE, in logical blocks.
    pub utilization: u64,
    /// The LBA formats the namespace offers (NLBAF + 1).
    pub formats: u8,
    /// The format it is formatted with (FLBAS).
    pub format_index: u8,
    /// Data bytes per logical block (`1 << LBADS` of that format).
    pub block_size: u32,
    /// Metadata bytes per logical block (MS of that format).
    pub metadata_size: u16,
    /// FLBAS bit 4: metadata follows each block's data in the same buffer, rather than in a
    /// buffer of its own. Only matters when `metadata_size` is not 0.
    pub metadata_at_end_of_block: bool,
}

impl NamespaceIdentity {
    /// Reads an Identify Namespace data structure; refuses a namespace this driver cannot use.
    pub fn parse(data: &[u8; IDENTIFY_BYTES]) -> Result<Self, IdentifyError> {
        use namespace_offset::*;
        let size = read_u64(data, SIZE);
        if size == 0 {
            return Err(IdentifyError::InactiveNamespace);
        }
        // NLBAF is at most 63; a controller saying 255 must not overflow the count.
        let formats = data[FORMAT_COUNT].saturating_add(1);
        let flbas = data[FORMATTED_SIZE];
        let format_index = format_index(flbas);
        if format_index >= formats {
            return Err(IdentifyError::FormatIndexBeyondFormats { format_index, formats });
        }
        let (block_size, metadata_size) = lba_format(data, format_index)?;
        Ok(Self {
            size,
            capacity: read_u64(data, CAPACITY),
            utilization: read_u64(data, UTILIZATION),
            formats,
            format_index,
            block_size,
            metadata_size,
            metadata_at_end_of_block: flbas & METADATA_AT_END_OF_BLOCK != 0,
        })
    }
}

/// The format index FLBAS names: bits 3:0, with bits 6:5 above them.
fn format_index(flbas: u8) -> u8 {
    (flbas & FORMAT_INDEX_LOW) | ((flbas & FORMAT_INDEX_HIGH) >> FORMAT_INDEX_HIGH_SHIFT << 4)
}

/// Block size and metadata size of LBA format `format_index`.
fn lba_format(data: &[u8; IDENTIFY_BYTES], format_index: u8) -> Result<(u32, u16), IdentifyError> {
    let format = namespace_offset::FORMATS + FORMAT_BYTES * usize::from(format_index);
    let block_shift = data[format + 2];
    if block_shift < SMALLEST_BLOCK_SHIFT {
        return Err(IdentifyError::BlockSizeTooSmall { format_index, block_shift });
    }
    let block_size = 1u32
        .checked_shl(u32::from(block_shift))
        .ok_or(IdentifyError::BlockSizeTooLarge { format_index, block_shift })?;
    Ok((block_size, read_u16(data, format)))
}

/// The namespace IDs of an active namespace list (CNS 02h; 4.6.2 "Namespace List"): up to 1024
/// little-endian IDs in increasing order, the unused entries 0.
pub fn active_namespaces(data: &[u8; IDENTIFY_BYTES]) -> impl Iterator<Item = u32> + '_ {
    data.chunks_exact(4).map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]])).take_while(|&id| id != 0)
}

/// Identify data this driver cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyError {
    /// NSZE 0: the namespace ID is valid but no namespace is attached there.
    InactiveNamespace,
    /// FLBAS names a format past the NLBAF + 1 the namespace has.
    FormatIndexBeyondFormats {
        /// FLBAS's format index.
        format_index: u8,
        /// The formats the namespace has (NLBAF + 1).
        formats: u8,
    },
    /// LBADS below 9: the spec's smallest block is 512 bytes (0 marks a format not available).
    BlockSizeTooSmall {
        /// The format in use.
        format_index: u8,
        /// Its LBADS: log2 of the block size.
        block_shift: u8,
    },
    /// LBADS of 32 or more: blocks of 4 GiB and beyond.
    BlockSizeTooLarge {
        /// The format in use.
        format_index: u8,
        /// Its LBADS: log2 of the block size.
        block_shift: u8,
    },
}

impl fmt::Display for IdentifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifyError::InactiveNamespace => {
                write!(f, "the namespace is not active: Identify Namespace returned a size of 0 blocks (NSZE)")
            }
            IdentifyError::FormatIndexBeyondFormats { format_index, formats } => write!(
                f,
                "the namespace is formatted with LBA format {format_index} (FLBAS), but has only {formats} (NLBAF)"
            ),
            IdentifyError::BlockSizeTooSmall { format_index, block_shift } => write!(
                f,
                "LBA format {format_index} has blocks of 2^{block_shift} bytes (LBADS {block_shift}); the smallest is \
                 512 bytes (LBADS 9)"
            ),
            IdentifyError::BlockSizeTooLarge { format_index, block_shift } => write!(
                f,
                "LBA format {format_index} has blocks of 2^{block_shift} bytes (LBADS {block_shift}), more than this \
                 driver can count"
            ),
        }
    }
}

fn read_bytes<const N: usize>(data: &[u8; IDENTIFY_BYTES], offset: usize) -> [u8; N] {
    core::array::from_fn(|index| data[offset + index])
}

fn read_u16(data: &[u8; IDENTIFY_BYTES], offset: usize) -> u16 {
    u16::from_le_bytes(read_bytes(data, offset))
}

fn read_u32(data: &[u8; IDENTIFY_BYTES], offset: usize) -> u32 {
    u32::from_le_bytes(read_bytes(data, offset))
}

fn read_u64(data: &[u8; IDENTIFY_BYTES], offset: usize) -> u64 {
    u64::from_le_bytes(read_bytes(data, offset))
}

/// A byte's low and high nibble.
fn nibbles(byte: u8) -> (u8, u8) {
    (byte & 0x0f, byte >> 4)
}

/// An ASCII field without its trailing spaces (and NULs, which some controllers pad with);
/// `"?"` when it is not text.
fn text(field: &[u8]) -> &str {
    match core::str::from_utf8(field) {
        Ok(text) => text.trim_end_matches([' ', '\0']),
        Err(_) => "?",
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::boxed::Box;
    use std::format;
    use std::vec::Vec;

    use super::*;

    fn page() -> Box<[u8; IDENTIFY_BYTES]> {
        Box::new([0; IDENTIFY_BYTES])
    }

    fn put(data: &mut [u8; IDENTIFY_BYTES], offset: usize, bytes: &[u8]) {
        data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// `text` left-justified in `width` bytes of spaces, as the spec pads.
    fn padded(text: &str, width: usize) -> Vec<u8> {
        let mut field = text.as_bytes().to_vec();
        field.resize(width, b' ');
        field
    }

    /// Identify Controller as QEMU 10.0.2 fills it for `-device nvme,serial=dma-os-nvme0`, the
    /// bytes placed at the spec's offsets.
    fn qemu_controller() -> Box<[u8; IDENTIFY_BYTES]> {
        let mut data = page();
        put(&mut data, 0, &0x1b36u16.to_le_bytes());
        put(&mut data, 2, &0x1af4u16.to_le_bytes());
        put(&mut data, 4, &padded("dma-os-nvme0", 20));
        put(&mut data, 24, &padded("QEMU NVMe Ctrl", 40));
        put(&mut data, 64, &padded("10.0.2", 8));
        data[72] = 6; // RAB, not read
        data[77] = 7; // MDTS
        put(&mut data, 78, &0x0003u16.to_le_bytes());
        put(&mut data, 80, &0x0001_0400u32.to_le_bytes());
        data[512] = 0x66;
        data[513] = 0x44;
        put(&mut data, 516, &256u32.to_le_bytes());
        data
    }

    #[test]
    fn qemu_controller_parses() {
        let identity = ControllerIdentity::parse(&qemu_controller());
        assert_eq!((identity.vendor_id, identity.subsystem_vendor_id), (0x1b36, 0x1af4));
        assert_eq!(identity.serial(), "dma-os-nvme0");
        assert_eq!(identity.model(), "QEMU NVMe Ctrl");
        assert_eq!(identity.firmware(), "10.0.2");
        assert_eq!(identity.max_data_transfer, Some(7));
        assert_eq!(identity.controller_id, 3);
        assert_eq!(identity.version, 0x0001_0400);
        assert_eq!(identity.namespaces, 256);
        assert_eq!(identity.submission_entry_size, (6, 6));
        assert_eq!(identity.completion_entry_size, (4, 4));
        assert_eq!(identity.max_transfer_bytes(4096), Some(512 << 10));
        assert_eq!(identity.max_transfer_bytes(64 << 10), Some(8 << 20));
    }

    #[test]
    fn transfer_limits() {
        let mut data = qemu_controller();
        data[77] = 0;
        assert_eq!(ControllerIdentity::parse(&data).max_data_transfer, None);
        assert_eq!(ControllerIdentity::parse(&data).max_transfer_bytes(4096), None, "MDTS 0: no limit");
        data[77] = 200;
        assert_eq!(ControllerIdentity::parse(&data).max_transfer_bytes(4096), None, "beyond the address space");
        data[77] = 1;
        assert_eq!(ControllerIdentity::parse(&data).max_transfer_bytes(4096), Some(8192));
    }

    #[test]
    fn entry_sizes_are_two_nibbles() {
        let mut data = qemu_controller();
        data[512] = 0x76;
        data[513] = 0x54;
        let identity = ControllerIdentity::parse(&data);
        assert_eq!((identity.submission_entry_size, identity.completion_entry_size), ((6, 7), (4, 5)));
    }

    #[test]
    fn text_fields_lose_padding_and_refuse_garbage() {
        let mut data = qemu_controller();
        put(&mut data, 4, b"  left spaces stay\0\0");
        put(&mut data, 64, &[0xff, 0xfe, b'1', b' ', b' ', b' ', b' ', b' ']);
        let identity = ControllerIdentity::parse(&data);
        assert_eq!(identity.serial(), "  left spaces stay");
        assert_eq!(identity.firmware(), "?");
        let blank = ControllerIdentity::parse(&page());
        assert_eq!((blank.serial(), blank.model()), ("", ""));
    }

    /// Identify Namespace of a 16 MiB QEMU namespace: the eight LBA formats QEMU offers
    /// (512 and 4096 bytes, each with 0, 8, 16 and 64 bytes of metadata), formatted with
    /// `flbas`.
    fn qemu_namespace(flbas: u8) -> Box<[u8; IDENTIFY_BYTES]> {
        let mut data = page();
        for offset in [0, 8, 16] {
            put(&mut data, offset, &32768u64.to_le_bytes());
        }
        data[25] = 7;
        data[26] = flbas;
        for (index, (block_shift, metadata)) in
            [(9, 0), (9, 8), (9, 16), (9, 64), (12, 0), (12, 8), (12, 16), (12, 64)].into_iter().enumerate()
        {
            put(&mut data, 128 + 4 * index, &[metadata, 0, block_shift, 0]);
        }
        data
    }

    #[test]
    fn qemu_namespace_parses() {
        let identity = NamespaceIdentity::parse(&qemu_namespace(0)).unwrap();
        assert_eq!(
            identity,
            NamespaceIdentity {
                size: 32768,
                capacity: 32768,
                utilization: 32768,
                formats: 8,
                format_index: 0,
                block_size: 512,
                metadata_size: 0,
                metadata_at_end_of_block: false,
            }
        );
        assert_eq!(identity.size * u64::from(identity.block_size), 16 << 20);
    }

    #[test]
    fn the_formatted_lba_format_is_the_one_read() {
        let four_k = NamespaceIdentity::parse(&qemu_namespace(4)).unwrap();
        assert_eq!((four_k.format_index, four_k.block_size, four_k.metadata_size), (4, 4096, 0));
        let extended = NamespaceIdentity::parse(&qemu_namespace(0x10 | 7)).unwrap();
        assert_eq!((extended.format_index, extended.block_size, extended.metadata_size), (7, 4096, 64));
        assert!(extended.metadata_at_end_of_block);
        let mut counts = qemu_namespace(4);
        put(&mut counts, 8, &1000u64.to_le_bytes());
        put(&mut counts, 16, &10u64.to_le_bytes());
        let thin = NamespaceIdentity::parse(&counts).unwrap();
        assert_eq!((thin.size, thin.capacity, thin.utilization), (32768, 1000, 10));
    }

    #[test]
    fn format_index_takes_its_high_bits_from_flbas_6_5() {
        let mut data = qemu_namespace(0b0100_0011);
        data[25] = 39;
        put(&mut data, 128 + 4 * 35, &[8, 0, 13, 0]);
        let identity = NamespaceIdentity::parse(&data).unwrap();
        assert_eq!((identity.formats, identity.format_index), (40, 35));
        assert_eq!((identity.block_size, identity.metadata_size), (8192, 8));
    }

    #[test]
    fn unusable_namespaces_are_refused() {
        let mut inactive = qemu_namespace(0);
        put(&mut inactive, 0, &0u64.to_le_bytes());
        assert_eq!(NamespaceIdentity::parse(&inactive), Err(IdentifyError::InactiveNamespace));
        let beyond = NamespaceIdentity::parse(&qemu_namespace(8));
        assert_eq!(beyond, Err(IdentifyError::FormatIndexBeyondFormats { format_index: 8, formats: 8 }));
        assert_eq!(
            format!("{}", beyond.unwrap_err()),
            "the namespace is formatted with LBA format 8 (FLBAS), but has only 8 (NLBAF)"
        );
        let mut tiny = qemu_namespace(1);
        tiny[128 + 4 + 2] = 8;
        let refused = NamespaceIdentity::parse(&tiny);
        assert_eq!(refused, Err(IdentifyError::BlockSizeTooSmall { format_index: 1, block_shift: 8 }));
        assert_eq!(
            format!("{}", refused.unwrap_err()),
            "LBA format 1 has blocks of 2^8 bytes (LBADS 8); the smallest is 512 bytes (LBADS 9)"
        );
        let mut huge = qemu_namespace(2);
        huge[128 + 8 + 2] = 32;
        assert_eq!(
            NamespaceIdentity::parse(&huge),
            Err(IdentifyError::BlockSizeTooLarge { format_index: 2, block_shift: 32 })
        );
        huge[128 + 8 + 2] = 31;
        assert_eq!(NamespaceIdentity::parse(&huge).unwrap().block_size, 1 << 31);
        let mut many = qemu_namespace(0);
        many[25] = 255;
        assert_eq!(NamespaceIdentity::parse(&many).unwrap().formats, 255);
    }

    #[test]
    fn active_namespace_list_stops_at_the_first_zero() {
        let mut list = page();
        for (index, id) in [1u32, 2, 0x1_0005, 0, 9].into_iter().enumerate() {
            put(&mut list, 4 * index, &id.to_le_bytes());
        }
        assert_eq!(active_namespaces(&list).collect::<Vec<_>>(), [1, 2, 0x1_0005]);
        assert_eq!(active_namespaces(&page()).count(), 0);
        let mut full = page();
        for index in 0..1024 {
            put(&mut full, 4 * index, &(index as u32 + 1).to_le_bytes());
        }
        assert_eq!(active_namespaces(&full).count(), 1024);
        assert_eq!(active_namespaces(&full).last(), Some(1024));
    }
}
