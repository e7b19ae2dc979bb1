//! The GICv3 Interrupt Translation Service: its commands and the sizes of its tables.
//!
//! A PCIe device signals a message-signalled interrupt by *writing* a 32-bit value (the
//! EventID) to the ITS's doorbell, `GITS_TRANSLATER`. The bus tags the write with the device's
//! DeviceID (its requester ID, through the host bridge's `msi-map`). The ITS looks the pair up
//! in tables the kernel gives it in memory, and turns it into an LPI, an INTID of 8192 or more,
//! delivered to the redistributor of the CPU its *collection* names (IHI 0069, 5.2):
//!
//! ```text
//!   device writes EventID ──▶ GITS_TRANSLATER ──▶ device table[DeviceID] ──▶ that device's
//!   (tagged with DeviceID)                        interrupt translation table (ITT)[EventID]
//!                                                 ──▶ (LPI, collection) ──▶ collection table
//!                                                 ──▶ redistributor ──▶ CPU
//! ```
//!
//! A device can only name EventIDs in *its own* ITT: that is what stops it from raising other
//! devices' interrupts. The kernel fills the tables with commands written into a ring in memory
//! (`GITS_CBASER`), each 32 bytes, and tells the ITS how far it wrote (`GITS_CWRITER`); the ITS
//! says how far it has read (`GITS_CREADR`). This module builds the commands (IHI 0069, 5.3)
//! and reads the ID widths of `GITS_TYPER` (12.19.32); the kernel owns the memory and registers.

/// One ITS command: four 64-bit words, as the command queue holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command(pub [u64; 4]);

/// Command numbers (IHI 0069, Table 5-2).
mod opcode {
    pub const MOVI: u64 = 0x01;
    pub const INT: u64 = 0x03;
    pub const SYNC: u64 = 0x05;
    pub const MAPD: u64 = 0x08;
    pub const MAPC: u64 = 0x09;
    pub const MAPTI: u64 = 0x0a;
    pub const INV: u64 = 0x0c;
}

/// The valid bit of MAPD and MAPC (DW2 bit 63): clear it to unmap.
const VALID: u64 = 1 << 63;

impl Command {
    fn with_device(code: u64, device: u32) -> [u64; 4] {
        [code | u64::from(device) << 32, 0, 0, 0]
    }

    /// MAPD (5.3.9): `device`'s interrupt translation table is at `itt` (256-byte aligned) and
    /// takes EventIDs of `event_bits` bits.
    pub fn map_device(device: u32, itt: u64, event_bits: u32) -> Self {
        let mut words = Self::with_device(opcode::MAPD, device);
        words[1] = u64::from(event_bits.clamp(1, 32) - 1);
        words[2] = VALID | (itt & 0x000f_ffff_ffff_ff00);
        Self(words)
    }

    /// MAPC (5.3.10): collection `collection` is delivered to the redistributor `target` (its
    /// processor number, or its address >> 16, as `GITS_TYPER.PTA` says).
    pub fn map_collection(collection: u16, target: u64) -> Self {
        Self([opcode::MAPC, 0, VALID | (target & 0xf_ffff_ffff) << 16 | u64::from(collection), 0])
    }

    /// MAPTI (5.3.11): `device`'s `event` raises LPI `lpi` in `collection`.
    pub fn map_event(device: u32, event: u32, lpi: u32, collection: u16) -> Self {
        let mut words = Self::with_device(opcode::MAPTI, device);
        words[1] = u64::from(lpi) << 32 | u64::from(event);
        words[2] = u64::from(collection);
        Self(words)
    }

    /// MOVI (5.3.14): `device`'s `event` keeps its LPI and is delivered from now on through
    /// `collection`: how an interrupt is steered to another CPU.
    pub fn move_event(device: u32, event: u32, collection: u16) -> Self {
        let mut words = Self::with_device(opcode::MOVI, device);
        words[1] = u64::from(event);
        words[2] = u64::from(collection);
        Self(words)
    }

    /// INV (5.3.8): re-read the configuration (priority, enable) of `device`'s `event`'s LPI.
    pub fn invalidate(device: u32, event: u32) -> Self {
        let mut words = Self::with_device(opcode::INV, device);
        words[1] = u64::from(event);
        Self(words)
    }

    /// INT (5.3.7): raise `device`'s `event` as if the device had written it: the ITS's own
    /// test of a mapping, with no device involved.
    pub fn interrupt(device: u32, event: u32) -> Self {
        let mut words = Self::with_device(opcode::INT, device);
        words[1] = u64::from(event);
        Self(words)
    }

    /// SYNC (5.3.15): every earlier command's effect on redistributor `target` is visible once
    /// the ITS has read past this one.
    pub fn sync(target: u64) -> Self {
        Self([opcode::SYNC, 0, (target & 0xf_ffff_ffff) << 16, 0])
    }
}

/// What `GITS_TYPER` (IHI 0069, 12.19.32) says about the ITS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItsType {
    /// Bytes per interrupt translation table entry.
    pub itt_entry_size: u64,
    /// Bits of an EventID.
    pub event_bits: u32,
    /// Bits of a DeviceID.
    pub device_bits: u32,
    /// Redistributors are named by address (`true`) or by processor number.
    pub physical_target_addresses: bool,
}

impl ItsType {
    /// Decodes `GITS_TYPER`.
    pub fn decode(typer: u64) -> Self {
        let field = |shift: u32, bits: u32| (typer >> shift) & ((1 << bits) - 1);
        Self {
            itt_entry_size: field(4, 4) + 1,
            event_bits: field(8, 5) as u32 + 1,
            device_bits: field(13, 5) as u32 + 1,
            physical_target_addresses: field(19, 1) == 1,
        }
    }
}

/// A `GITS_BASER<n>` (IHI 0069, 12.19.1): which table the ITS wants there, and how large an
/// entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    /// 1: devices, 4: collections (others: none or vPEs).
    pub kind: u64,
    /// Bytes per entry.
    pub entry_size: u64,
}

/// `GITS_BASER<n>.Type` of the device table.
pub const DEVICE_TABLE: u64 = 1;
/// `GITS_BASER<n>.Type` of the collection table.
pub const COLLECTION_TABLE: u64 = 4;
/// Page size the tables are given in (`GITS_BASER<n>.Page_Size` 0b10): 64 KiB, which every
/// ITS supports.
pub const TABLE_PAGE: u64 = 64 << 10;

impl TableRequest {
    /// Decodes `GITS_BASER<n>`'s read-only fields.
    pub fn decode(baser: u64) -> Self {
        Self { kind: (baser >> 56) & 0b111, entry_size: ((baser >> 48) & 0x1f) + 1 }
    }

    /// The `GITS_BASER<n>` value giving the ITS a flat table of `pages` 64 KiB pages at `base`
    /// (64 KiB aligned), valid, Inner Shareable, Write-Back cacheable: the ITS reads and writes
    /// it coherently with the CPU.
    pub fn value(&self, base: u64, pages: u64) -> u64 {
        const INNER_WRITE_BACK: u64 = 0b101 << 59;
        const INNER_SHAREABLE: u64 = 0b01 << 10;
        const PAGE_SIZE_64K: u64 = 0b10 << 8;
        let type_and_entry = (self.kind << 56) | ((self.entry_size - 1) << 48);
        VALID
            | INNER_WRITE_BACK
            | type_and_entry
            | (base & 0x0000_ffff_ffff_0000)
            | INNER_SHAREABLE
            | PAGE_SIZE_64K
            | (pages.clamp(1, 256) - 1)
    }

    /// 64 KiB pages for `entries` entries.
    pub fn pages_for(&self, entries: u64) -> u64 {
        (entries * self.entry_size).div_ceil(TABLE_PAGE).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_put_each_field_where_the_architecture_says() {
        let mapd = Command::map_device(0x0020, 0x4567_8900, 5);
        assert_eq!(mapd.0, [0x0000_0020_0000_0008, 4, VALID | 0x4567_8900, 0]);
        let mapc = Command::map_collection(3, 1);
        assert_eq!(mapc.0, [0x09, 0, VALID | 1 << 16 | 3, 0]);
        let mapti = Command::map_event(0x20, 7, 8192 + 5, 3);
        assert_eq!(mapti.0, [0x0000_0020_0000_000a, (8197u64 << 32) | 7, 3, 0]);
        assert_eq!(Command::invalidate(0x20, 7).0, [0x0000_0020_0000_000c, 7, 0, 0]);
        assert_eq!(Command::interrupt(0x20, 7).0, [0x0000_0020_0000_0003, 7, 0, 0]);
        assert_eq!(Command::move_event(0x20, 7, 2).0, [0x0000_0020_0000_0001, 7, 2, 0]);
        assert_eq!(Command::sync(1).0, [0x05, 0, 1 << 16, 0]);
    }

    #[test]
    fn the_itt_address_keeps_only_its_architected_bits() {
        let mapd = Command::map_device(1, 0xffff_ffff_ffff_ffff, 1);
        assert_eq!(mapd.0[2], VALID | 0x000f_ffff_ffff_ff00, "ITT_addr is bits 51:8");
        assert_eq!(mapd.0[1], 0, "one EventID bit is encoded as 0");
    }

    #[test]
    fn typer_and_baser_fields_decode() {
        // QEMU's ITS: ITT entries of 12 bytes, 16-bit EventIDs and DeviceIDs, PTA clear.
        let typer = (11 << 4) | (15 << 8) | (15 << 13);
        let its = ItsType::decode(typer);
        assert_eq!(
            its,
            ItsType { itt_entry_size: 12, event_bits: 16, device_bits: 16, physical_target_addresses: false }
        );
        assert!(ItsType::decode(typer | 1 << 19).physical_target_addresses);
        let devices = TableRequest::decode((DEVICE_TABLE << 56) | (7 << 48));
        assert_eq!(devices, TableRequest { kind: DEVICE_TABLE, entry_size: 8 });
        assert_eq!(devices.pages_for(1 << 16), 8, "65536 devices of 8 bytes");
        assert_eq!(devices.pages_for(1), 1);
        let value = devices.value(0x4123_0000, 8);
        assert_eq!(value & 0xff, 7, "Size: pages - 1");
        assert_eq!(value & 0x0000_ffff_ffff_f000, 0x4123_0000, "Physical_Address");
        assert_eq!((value >> 8) & 0b11, 0b10, "64 KiB pages");
        assert_eq!(value >> 63, 1, "Valid");
        assert_eq!(TableRequest::decode(value), devices, "the read-only fields are written back as read");
    }
}
