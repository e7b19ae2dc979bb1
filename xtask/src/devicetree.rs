//! The devicetree QEMU boots the kernel with: QEMU's own, plus what the kernel is tested on.
//!
//! QEMU generates `virt`'s devicetree from its command line, so xtask asks QEMU for it
//! (`-machine dumpdtb=FILE` with the same options) and rewrites it with:
//!
//! - a `/memreserve/` entry and a `no-map` `/reserved-memory` node, which the heap must avoid;
//! - a `restricted-dma-pool` under `/reserved-memory`, static (`reg`) or dynamic (`size` and
//!   `alignment`, placed by the kernel), with a `phandle`;
//! - `memory-region = <that phandle>` on every `virtio_mmio` node, so that every virtio
//!   transfer bounces through the pool (contract rule 12);
//! - with the dynamic pool, the virtio nodes are also declared `dma-noncoherent` (QEMU marks
//!   the whole machine `dma-coherent`): the kernel then maps the pool uncached, so both ways of
//!   sharing a pool with devices are tested.

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
/// The static restricted pool this far into RAM.
const POOL_OFFSET: u64 = 512 << 20;
const POOL_SIZE: u64 = 4 << 20;
/// The dynamic pool's alignment.
const POOL_ALIGNMENT: u64 = 2 << 20;

/// Which form of `restricted-dma-pool` to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolForm {
    /// `reg`: the devicetree fixes where the pool is.
    Static,
    /// `size` and `alignment`: the kernel carves it out of RAM.
    Dynamic,
}

/// `qemu_blob` with the test reservations and the restricted pool added.
pub fn for_kernel(qemu_blob: &[u8], pool: PoolForm) -> Result<Vec<u8>> {
    let mut storage = vec![0; qemu_blob.len()];
    let canonical = canonical_copy(qemu_blob, &mut storage).map_err(|error| format!("QEMU's devicetree: {error}"))?;
    let fdt = Fdt::new(canonical).map_err(|error| format!("QEMU's devicetree: {error:?}"))?;
    let root = fdt.find_node("/").ok_or("QEMU's devicetree has no root")?;
    let ram_base = ram_base(&fdt)?;
    let additions = Additions { ram_base, pool, pool_phandle: highest_phandle(&fdt) + 1 };

    let mut writer = FdtWriter::new();
    for reservation in fdt.memory_reservations() {
        writer.reserve_memory(reservation.address() as u64, reservation.size() as u64);
    }
    writer.reserve_memory(ram_base + MEMRESERVE_OFFSET, MEMRESERVE_SIZE);
    let has_reserved_memory = root.children().any(|child| child.name == "reserved-memory");
    copy_node(&mut writer, root, "", &additions, has_reserved_memory);
    Ok(writer.finish())
}

struct Additions {
    ram_base: u64,
    pool: PoolForm,
    pool_phandle: u32,
}

fn is_virtio(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| name.starts_with("virtio_mmio@"))
}

impl Additions {
    fn declares_non_coherent(&self, path: &str) -> bool {
        self.pool == PoolForm::Dynamic && is_virtio(path)
    }

    /// Whether the node at `path` keeps its property `name`.
    fn keeps(&self, path: &str, name: &str) -> bool {
        !(name == "dma-coherent" && self.declares_non_coherent(path))
    }

    /// Properties to add to the node at `path`, after its own.
    fn properties(&self, writer: &mut FdtWriter, path: &str) {
        if is_virtio(path) {
            writer.property_cells("memory-region", &[self.pool_phandle]);
        }
        if self.declares_non_coherent(path) {
            writer.property("dma-noncoherent", &[]);
        }
    }

    /// Children to add to `/reserved-memory`.
    fn reserved_children(&self, writer: &mut FdtWriter) {
        let reserved = self.ram_base + RESERVED_OFFSET;
        writer.begin_node(&format!("test-reserved@{reserved:x}"));
        writer.property_reg64("reg", &[(reserved, RESERVED_SIZE)]);
        writer.property("no-map", &[]);
        writer.end_node();

        let pool = self.ram_base + POOL_OFFSET;
        match self.pool {
            PoolForm::Static => {
                writer.begin_node(&format!("restricted-dma@{pool:x}"));
                writer.property_reg64("reg", &[(pool, POOL_SIZE)]);
            }
            PoolForm::Dynamic => {
                writer.begin_node("restricted-dma");
                writer.property_cells("size", &split(POOL_SIZE));
                writer.property_cells("alignment", &split(POOL_ALIGNMENT));
            }
        }
        // No `no-map`: the kernel must map a restricted pool, since the CPU copies through it.
        writer.property_string("compatible", "restricted-dma-pool");
        writer.property_cells("phandle", &[self.pool_phandle]);
        writer.end_node();
    }
}

fn split(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

/// Copies `node` and everything below it, with the additions.
fn copy_node(writer: &mut FdtWriter, node: FdtNode<'_, '_>, path: &str, additions: &Additions, has_reserved: bool) {
    writer.begin_node(if path.is_empty() { "" } else { node.name });
    for property in node.properties().filter(|property| additions.keeps(path, property.name)) {
        writer.property(property.name, property.value);
    }
    additions.properties(writer, path);
    for child in node.children() {
        copy_node(writer, child, &format!("{path}/{}", child.name), additions, has_reserved);
    }
    if path == "/reserved-memory" {
        additions.reserved_children(writer);
    }
    if path.is_empty() && !has_reserved {
        writer.begin_node("reserved-memory");
        writer.property_cells("#address-cells", &[2]);
        writer.property_cells("#size-cells", &[2]);
        writer.property("ranges", &[]);
        additions.reserved_children(writer);
        writer.end_node();
    }
    writer.end_node();
}

fn ram_base(fdt: &Fdt<'_>) -> Result<u64> {
    let memory = fdt.find_node("/memory").ok_or("QEMU's devicetree has no /memory")?;
    let first = memory.reg().and_then(|mut regions| regions.next()).ok_or("/memory has no reg")?;
    Ok(first.starting_address as u64)
}

fn highest_phandle(fdt: &Fdt<'_>) -> u32 {
    let phandle = |node: FdtNode<'_, '_>| {
        let value = node.property("phandle")?.value;
        Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
    };
    fdt.all_nodes().filter_map(phandle).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::devicetree::Devicetree;

    /// A small stand-in for QEMU's `virt` devicetree.
    fn qemu_like() -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[2]);
        w.property("dma-coherent", &[]);
        w.begin_node("memory@40000000");
        w.property_string("device_type", "memory");
        w.property_reg64("reg", &[(0x4000_0000, 1 << 30)]);
        w.end_node();
        w.begin_node("intc@8000000");
        w.property_cells("phandle", &[0x8001]);
        w.end_node();
        for address in [0xa00_0000u64, 0xa00_0200] {
            w.begin_node(&format!("virtio_mmio@{address:x}"));
            w.property_string("compatible", "virtio,mmio");
            w.property_reg64("reg", &[(address, 0x200)]);
            w.property("dma-coherent", &[]);
            w.end_node();
        }
        w.end_node();
        w.finish()
    }

    #[test]
    fn both_pool_forms_parse_and_every_virtio_node_names_the_pool() {
        for form in [PoolForm::Static, PoolForm::Dynamic] {
            let blob = for_kernel(&qemu_like(), form).unwrap();
            let dt = Devicetree::parse(&blob, Box::leak(vec![0; blob.len()].into_boxed_slice())).unwrap();
            let pools = dt.restricted_pools().unwrap();
            assert_eq!(pools.len(), 1, "{form:?}");
            assert_eq!(pools[0].phandle, Some(0x8002), "{form:?}: a phandle no other node has");
            let virtio = dt.compatible_devices(&["virtio,mmio"]).unwrap();
            assert_eq!(virtio.len(), 2);
            assert!(virtio.iter().all(|device| device.dma.pool == Some(pools[0].name)), "{form:?}");
            let coherent = form == PoolForm::Static;
            assert!(virtio.iter().all(|device| device.dma.coherent == coherent), "{form:?}: dma-coherent");
            assert_eq!(dt.reservations().unwrap().len(), 2 + usize::from(form == PoolForm::Static), "{form:?}");
        }
    }
}
