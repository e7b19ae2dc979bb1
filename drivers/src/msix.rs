//! MSI-X: how a PCIe function is told where to write its interrupts.
//!
//! A message-signalled interrupt is not a wire. The function *writes* a 32-bit value to an
//! address, over the same bus and through the same IOMMU as its DMA; the interrupt controller
//! decodes the write (on a GICv3, the ITS's `GITS_TRANSLATER`, see [`crate::gic_its`]). MSI-X
//! (PCIe Base Specification 6.0, 7.7.2 "MSI-X Capability and Table Structure") lets the
//! function hold up to 2048 such (address, data) pairs, its *vectors*, in a table inside one
//! of its memory BARs:
//!
//! ```text
//!   configuration space                         BAR <BIR>, at the table offset
//!   ┌ cap ID 0x11 │ next │ Message Control ┐     vector 0: address low │ address high │ data │ control
//!   │ Table Offset │ BIR (bits 2:0)        │ ──▶ vector 1: ...                             bit 0: masked
//!   └ PBA Offset   │ BIR                   ┘     (16 bytes each)
//!
//!   Message Control: bits 10:0 table size - 1, bit 14 function mask, bit 15 MSI-X enable
//! ```
//!
//! To use vector *n*: write its address and data, clear its mask bit, then set MSI-X Enable
//! and clear the function mask. From then on the function raises no INTx (PCIe 6.0, 7.7.2.2),
//! and the driver sets the Command register's Interrupt Disable as well, so a function that
//! ignored the rule could not raise both.
//!
//! This module decodes the capability and encodes table entries; the kernel owns the
//! registers.

/// The capability ID of MSI-X in the capability list (PCI Code and ID Assignment, 2).
pub const CAPABILITY_ID: u8 = 0x11;
/// The capability ID of plain MSI, which must be off while MSI-X is on.
pub const MSI_CAPABILITY_ID: u8 = 0x05;
/// Message Control (the capability's bytes 2-3): MSI-X Enable.
pub const ENABLE: u16 = 1 << 15;
/// Message Control: Function Mask, masking every vector at once.
pub const FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of one table entry.
pub const ENTRY_BYTES: u64 = 16;
/// The Command register's Interrupt Disable bit (PCIe 6.0, 7.5.1.1.3): no INTx.
pub const INTX_DISABLE: u16 = 1 << 10;

/// Vector Control (the entry's fourth word): bit 0 masks the vector.
const VECTOR_MASKED: u32 = 1;
/// Bits 10:0 of Message Control: the table's size, less one.
const TABLE_SIZE_MASK: u16 = 0x7ff;
/// Bits 2:0 of the Table and PBA offset words: which BAR (BIR) holds the structure.
const BIR_MASK: u32 = 0b111;

/// Where a function's MSI-X table is and how many vectors it has, as its capability says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    /// How many vectors the table holds (1 to 2048).
    pub vectors: u16,
    /// The BAR holding the table (0-5).
    pub table_bar: u8,
    /// The table's offset into that BAR, 8-byte aligned.
    pub table_offset: u32,
}

/// Why a capability cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// The Table BIR is 6 or 7, which name no BAR.
    NoSuchBar {
        /// The BIR the capability gives.
        bir: u8,
    },
    /// A vector past the end of the table.
    NoSuchVector {
        /// The vector asked for.
        vector: u16,
        /// How many the table holds.
        vectors: u16,
    },
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MsixError::NoSuchBar { bir } => {
                write!(f, "the MSI-X table is said to be in BAR {bir}, which does not exist")
            }
            MsixError::NoSuchVector { vector, vectors } => {
                write!(f, "MSI-X vector {vector} is past the table's {vectors} vectors")
            }
        }
    }
}

impl MsixCapability {
    /// The capability from its Message Control and Table Offset/BIR words.
    pub fn decode(message_control: u16, table: u32) -> Result<Self, MsixError> {
        let bir = (table & BIR_MASK) as u8;
        if bir > 5 {
            return Err(MsixError::NoSuchBar { bir });
        }
        Ok(Self { vectors: (message_control & TABLE_SIZE_MASK) + 1, table_bar: bir, table_offset: table & !BIR_MASK })
    }

    /// Where entry `vector` is, in bytes from the start of the table's BAR.
    pub fn entry_offset(&self, vector: u16) -> Result<u64, MsixError> {
        if vector >= self.vectors {
            return Err(MsixError::NoSuchVector { vector, vectors: self.vectors });
        }
        Ok(u64::from(self.table_offset) + u64::from(vector) * ENTRY_BYTES)
    }

    /// The bytes of the table, from its offset: for mapping it.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.vectors) * ENTRY_BYTES
    }
}

/// One table entry: the write the function makes to signal the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Where the function writes: the doorbell's address *as the function sees it*, an IOVA
    /// when an IOMMU translates the function's writes.
    pub address: u64,
    /// What it writes: on a GICv3 ITS, the EventID.
    pub data: u32,
    /// Whether the vector is masked.
    pub masked: bool,
}

impl MsixEntry {
    /// The entry's four 32-bit words, in table order.
    pub fn words(&self) -> [u32; 4] {
        [self.address as u32, (self.address >> 32) as u32, self.data, if self.masked { VECTOR_MASKED } else { 0 }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_gives_the_table_size_bar_and_offset() {
        // QEMU's NVMe controller: 65 vectors, the table in BAR0 at 0x2000.
        let capability = MsixCapability::decode(0x0040, 0x2000).unwrap();
        assert_eq!(capability, MsixCapability { vectors: 65, table_bar: 0, table_offset: 0x2000 });
        assert_eq!(capability.entry_offset(0), Ok(0x2000));
        assert_eq!(capability.entry_offset(64), Ok(0x2000 + 64 * 16));
        assert_eq!(capability.table_bytes(), 65 * 16);
    }

    #[test]
    fn the_enable_and_mask_bits_do_not_change_the_table_size() {
        let capability = MsixCapability::decode(ENABLE | FUNCTION_MASK | 3, 0x1000 | 1).unwrap();
        assert_eq!((capability.vectors, capability.table_bar, capability.table_offset), (4, 1, 0x1000));
    }

    #[test]
    fn a_table_in_a_bar_that_does_not_exist_is_refused() {
        assert_eq!(MsixCapability::decode(0, 0x1006), Err(MsixError::NoSuchBar { bir: 6 }));
        assert_eq!(MsixCapability::decode(0, 0x1007), Err(MsixError::NoSuchBar { bir: 7 }));
    }

    #[test]
    fn a_vector_past_the_table_has_no_entry() {
        let capability = MsixCapability::decode(1, 0).unwrap();
        assert_eq!(capability.entry_offset(2), Err(MsixError::NoSuchVector { vector: 2, vectors: 2 }));
    }

    #[test]
    fn an_entry_is_address_low_high_data_and_the_mask_bit() {
        let entry = MsixEntry { address: 0x1_0809_0040, data: 7, masked: false };
        assert_eq!(entry.words(), [0x0809_0040, 1, 7, 0]);
        assert_eq!(MsixEntry { masked: true, ..entry }.words()[3], 1);
    }
}
