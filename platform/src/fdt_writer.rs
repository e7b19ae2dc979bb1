//! Writing flattened devicetree blobs (DTB, devicetree specification v0.4, chapter 5).
//!
//! A DTB is a header, a memory reservation block (`/memreserve/` entries), a structure block of
//! tokens and a strings block holding every property name once:
//!
//! ```text
//!  ┌────────────┬──────────────┬───────────────────────────────────────────┬──────────────┐
//!  │ header     │ memreserve   │ BEGIN_NODE "" PROP … BEGIN_NODE "cpus" …  │ "reg\0model\0│
//!  │ (40 bytes) │ (addr, size)*│ END_NODE … END                            │  compatible" │
//!  └────────────┴──────────────┴───────────────────────────────────────────┴──────────────┘
//! ```
//!
//! Host tests use it to craft blobs (valid and broken); xtask uses it to rewrite QEMU's own
//! devicetree. Values are big-endian throughout.

use alloc::vec::Vec;

use crate::devicetree::{HEADER_SIZE, MAGIC, TOKEN_BEGIN_NODE, TOKEN_END, TOKEN_END_NODE, TOKEN_PROP};

/// Builds a DTB node by node, in document order.
#[derive(Default)]
pub struct FdtWriter {
    reservations: Vec<(u64, u64)>,
    structure: Vec<u8>,
    strings: Vec<u8>,
    open_nodes: usize,
}

impl FdtWriter {
    /// An empty blob: no node, no reservation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `/memreserve/` entry.
    pub fn reserve_memory(&mut self, address: u64, size: u64) {
        self.reservations.push((address, size));
    }

    /// Opens a node; the root node's name is the empty string.
    pub fn begin_node(&mut self, name: &str) {
        self.token(TOKEN_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad_structure();
        self.open_nodes += 1;
    }

    /// Closes the node opened last.
    pub fn end_node(&mut self) {
        self.token(TOKEN_END_NODE);
        self.open_nodes -= 1;
    }

    /// Adds property `name` with `value` to the open node.
    pub fn property(&mut self, name: &str, value: &[u8]) {
        let name_offset = self.string_offset(name);
        self.token(TOKEN_PROP);
        self.structure.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.structure.extend_from_slice(&name_offset.to_be_bytes());
        self.structure.extend_from_slice(value);
        self.pad_structure();
    }

    /// A property holding one NUL-terminated string.
    pub fn property_string(&mut self, name: &str, value: &str) {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.property(name, &bytes);
    }

    /// A property holding a list of 32-bit cells.
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) {
        let bytes: Vec<u8> = cells.iter().flat_map(|cell| cell.to_be_bytes()).collect();
        self.property(name, &bytes);
    }

    /// A property of (address, size) pairs encoded with two cells each, the usual layout of
    /// `reg` below a node with `#address-cells = <2>` and `#size-cells = <2>`.
    pub fn property_reg64(&mut self, name: &str, entries: &[(u64, u64)]) {
        let cells: Vec<u32> =
            entries.iter().flat_map(|&(address, size)| split_u64(address).into_iter().chain(split_u64(size))).collect();
        self.property_cells(name, &cells);
    }

    /// Closes the structure block and lays out the blob.
    ///
    /// # Panics
    /// If a node is still open: a bug in the code driving the writer.
    pub fn finish(mut self) -> Vec<u8> {
        assert_eq!(self.open_nodes, 0, "every begin_node needs its end_node");
        self.token(TOKEN_END);
        let reservations_offset = HEADER_SIZE.next_multiple_of(8);
        let structure_offset = reservations_offset + (self.reservations.len() + 1) * 16;
        let strings_offset = structure_offset + self.structure.len();
        let total_size = strings_offset + self.strings.len();

        let mut blob = Vec::with_capacity(total_size);
        for field in [
            MAGIC,
            total_size as u32,
            structure_offset as u32,
            strings_offset as u32,
            reservations_offset as u32,
            17, // version
            16, // last compatible version
            0,  // boot CPU
            self.strings.len() as u32,
            self.structure.len() as u32,
        ] {
            blob.extend_from_slice(&field.to_be_bytes());
        }
        blob.resize(reservations_offset, 0);
        for (address, size) in self.reservations.iter().chain([&(0, 0)]) {
            blob.extend_from_slice(&address.to_be_bytes());
            blob.extend_from_slice(&size.to_be_bytes());
        }
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        blob
    }

    fn token(&mut self, token: u32) {
        self.structure.extend_from_slice(&token.to_be_bytes());
    }

    fn pad_structure(&mut self) {
        let padded = self.structure.len().next_multiple_of(4);
        self.structure.resize(padded, 0);
    }

    fn string_offset(&mut self, name: &str) -> u32 {
        let mut offset = 0;
        for existing in self.strings.split(|&byte| byte == 0) {
            if existing == name.as_bytes() && offset < self.strings.len() {
                return offset as u32;
            }
            offset += existing.len() + 1;
        }
        let offset = self.strings.len();
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset as u32
    }
}

fn split_u64(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}
