//! The devicetree QEMU boots the kernel with: QEMU's own, plus reservations.
//!
//! QEMU generates `virt`'s devicetree from its command line, so xtask asks QEMU for it
//! (`-machine dumpdtb=FILE` with the same options) and rewrites it with two reservations the
//! kernel must honour: a `/memreserve/` entry and a `no-map` `/reserved-memory` node. The
//! kernel tests then check that the heap avoids both.

use fdt::node::FdtNode;
use fdt::Fdt;
use platform::devicetree::canonical_copy;
use platform::fdt_writer::FdtWriter;

use crate::Result;

/// A `/memreserve/` entry this far into RAM (QEMU puts the devicetree at 128 MiB).
const MEMRESERVE_OFFSET: u64 = 192 << 20;
const MEMRESERVE_SIZE: u64 = 64 << 10;
/// A `no-map` `/reserved-memory` child this far into RAM.
const RESERVED_OFFSET: u64 = 256 << 20;
const RESERVED_SIZE: u64 = 2 << 20;

/// `qemu_blob` with the test reservations added.
pub fn with_reservations(qemu_blob: &[u8]) -> Result<Vec<u8>> {
    let mut storage = vec![0; qemu_blob.len()];
    let canonical = canonical_copy(qemu_blob, &mut storage).map_err(|error| format!("QEMU's devicetree: {error}"))?;
    let fdt = Fdt::new(canonical).map_err(|error| format!("QEMU's devicetree: {error:?}"))?;
    let root = fdt.find_node("/").ok_or("QEMU's devicetree has no root")?;
    let ram_base = ram_base(&fdt)?;
    let mut writer = FdtWriter::new();
    for reservation in fdt.memory_reservations() {
        writer.reserve_memory(reservation.address() as u64, reservation.size() as u64);
    }
    writer.reserve_memory(ram_base + MEMRESERVE_OFFSET, MEMRESERVE_SIZE);
    copy_node(&mut writer, root, "", &|writer, path| {
        if path.is_empty() && root.children().all(|child| child.name != "reserved-memory") {
            writer.begin_node("reserved-memory");
            writer.property_cells("#address-cells", &[2]);
            writer.property_cells("#size-cells", &[2]);
            writer.property("ranges", &[]);
            add_reserved_child(writer, ram_base);
            writer.end_node();
        } else if path == "/reserved-memory" {
            add_reserved_child(writer, ram_base);
        }
    });
    Ok(writer.finish())
}

fn add_reserved_child(writer: &mut FdtWriter, ram_base: u64) {
    let address = ram_base + RESERVED_OFFSET;
    writer.begin_node(&format!("test-reserved@{address:x}"));
    writer.property_reg64("reg", &[(address, RESERVED_SIZE)]);
    writer.property("no-map", &[]);
    writer.end_node();
}

/// Copies `node` and everything below it; `extend` may add children at the end of a node.
fn copy_node(writer: &mut FdtWriter, node: FdtNode<'_, '_>, path: &str, extend: &dyn Fn(&mut FdtWriter, &str)) {
    let name = if path.is_empty() { "" } else { node.name };
    writer.begin_node(name);
    for property in node.properties() {
        writer.property(property.name, property.value);
    }
    for child in node.children() {
        let child_path = format!("{path}/{}", child.name);
        copy_node(writer, child, &child_path, extend);
    }
    extend(writer, path);
    writer.end_node();
}

fn ram_base(fdt: &Fdt<'_>) -> Result<u64> {
    let memory = fdt.find_node("/memory").ok_or("QEMU's devicetree has no /memory")?;
    let first = memory.reg().and_then(|mut regions| regions.next()).ok_or("/memory has no reg")?;
    Ok(first.starting_address as u64)
}
