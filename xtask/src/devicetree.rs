//! The devicetrees the kernel boots with: QEMU `virt`'s and the Raspberry Pi 4's, each
//! rewritten with what the kernel is tested on.
//!
//! A DTB cannot be edited in place without shifting every offset after the edit, so a rewrite
//! copies the blob node by node into a [`FdtWriter`], dropping and adding properties and nodes
//! on the way ([`Edits`]).
//!
//! QEMU generates `virt`'s devicetree from its command line, so xtask asks QEMU for it
//! (`-machine dumpdtb=FILE` with the same options) and rewrites it with ([`for_kernel`]):
//!
//! - a `/memreserve/` entry and a `no-map` `/reserved-memory` node, which the heap must avoid;
//! - a `restricted-dma-pool` under `/reserved-memory`, static (`reg`) or dynamic (`size` and
//!   `alignment`, placed by the kernel), with a `phandle`;
//! - `memory-region = <that phandle>` on every `virtio_mmio` node, so that every virtio
//!   transfer bounces through the pool (contract rule 12);
//! - with the dynamic pool, the virtio nodes are also declared `dma-noncoherent` (QEMU marks
//!   the whole machine `dma-coherent`): the kernel then maps the pool uncached, so both ways of
//!   sharing a pool with devices are tested.
//!
//! The Raspberry Pi 4's devicetree (`bcm2711-rpi-4-b.dtb`, from Linux) is rewritten for the
//! SD card and for QEMU `raspi4b` ([`for_raspi`]) with:
//!
//! - optionally, a dynamic `restricted-dma-pool` in the first GiB, named by `memory-region` on
//!   the legacy DMA controller (`brcm,bcm2835-dma`). That engine reaches only the first GiB:
//!   `/soc`'s `dma-ranges = <0xc0000000 0x0 0x0 0x40000000>` maps bus `0xc000_0000` to CPU 0
//!   for 1 GiB. The pool's numbers are written with the cell counts `/reserved-memory`
//!   declares (2 address cells and 1 size cell on the Pi, unlike `virt`'s 2 and 2);
//! - optionally, a second RAM bank node. QEMU `raspi4b` has 2 GiB but writes only the first
//!   960 MiB into `/memory` (its `modify_dtb` compares the VideoCore base, not the RAM size, to
//!   decide whether RAM goes past 1 GiB); the real firmware lists all of RAM itself.

use fdt::Fdt;
use fdt::node::FdtNode;
use platform::devicetree::canonical_copy;
use platform::fdt_writer::FdtWriter;

use crate::Result;

/// Where the test reservations and the static pool go, as fractions of the RAM QEMU was
/// started with (`-m`), so that any size of RAM boots: a `/memreserve/` entry at 3/16 of RAM
/// (past the devicetree, which QEMU puts at 128 MiB in 1 GiB), a `no-map` `/reserved-memory`
/// child at 1/4, the static restricted pool at 1/2.
const MEMRESERVE_AT: (u64, u64) = (3, 16);
const MEMRESERVE_SIZE: u64 = 64 << 10;
const RESERVED_AT: (u64, u64) = (1, 4);
const RESERVED_SIZE: u64 = 2 << 20;
const POOL_AT: (u64, u64) = (1, 2);
/// The restricted pool's size unless asked otherwise.
pub const POOL_SIZE: u64 = 4 << 20;
/// The dynamic pool's alignment.
const POOL_ALIGNMENT: u64 = 2 << 20;

/// How error messages name the two source devicetrees.
const QEMU_SOURCE: &str = "QEMU's devicetree";
const PI_SOURCE: &str = "the Raspberry Pi devicetree";
/// The Pi 4's legacy DMA engine (channels 0 to 10), which sees only the first GiB.
pub const PI_LEGACY_DMA: &str = "brcm,bcm2835-dma";
/// Where the Pi's restricted pool may be placed: the legacy DMA engine's reach.
const PI_POOL_ALLOC_RANGE: (u64, u64) = (0, 1 << 30);
/// The Pi's pool node: dynamic, so no unit address.
pub const PI_POOL_NAME: &str = "restricted-dma";

/// Which form of `restricted-dma-pool` to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolForm {
    /// `reg`: the devicetree fixes where the pool is.
    Static,
    /// `size` and `alignment`: the kernel carves it out of RAM.
    Dynamic,
}

/// The restricted pool xtask describes on `virt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtPool {
    pub form: PoolForm,
    pub size: u64,
    /// The PCIe host bridge names the pool too (`memory-region`): declined behind the SMMU
    /// (R11), force bounce without one. Without it, PCIe without an SMMU is direct (bypass).
    pub pcie: bool,
}

/// What `/chosen/stdout-path` says: QEMU's own (the PL011), or, to test how the kernel copes
/// with a devicetree that names no usable console, a node that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StdoutPath {
    /// QEMU's own: its PL011.
    #[value(name = "qemu")]
    AsQemuWroteIt,
    /// A node that does not exist.
    Missing,
}

/// The path a broken `stdout-path` names.
pub const MISSING_CONSOLE: &str = "/no-such-uart@9000000";

/// `qemu_blob` with the test reservations and the restricted pool added, placed by the size of
/// the RAM QEMU describes.
pub fn for_kernel(qemu_blob: &[u8], pool: VirtPool, stdout: StdoutPath) -> Result<Vec<u8>> {
    rewrite(qemu_blob, QEMU_SOURCE, |fdt| {
        let root = fdt.find_node("/").ok_or(format!("{QEMU_SOURCE} has no root"))?;
        let (ram_base, ram_size) = first_ram_bank(fdt)?;
        let at = |(numerator, denominator): (u64, u64)| ram_base + ram_size / denominator * numerator;
        let pool_base = at(POOL_AT);
        if pool.form == PoolForm::Static && pool_base + pool.size > ram_base + ram_size {
            return Err(format!(
                "a static pool of {} KiB at {pool_base:#x} does not fit in the {} MiB of RAM at {ram_base:#x}",
                pool.size >> 10,
                ram_size >> 20
            ));
        }
        Ok(VirtAdditions {
            memreserve: at(MEMRESERVE_AT),
            reserved: at(RESERVED_AT),
            pool_base,
            pool,
            pool_phandle: highest_phandle(fdt) + 1,
            has_reserved_memory: root.children().any(|child| child.name == "reserved-memory"),
            stdout,
        })
    })
}

/// Whether the Pi's legacy DMA engine bounces through a restricted pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaspiPool {
    /// No pool in the devicetree: the kernel carves its own low bounce pool.
    Default,
    /// A dynamic `restricted-dma-pool` in the first GiB, named by the legacy DMA controller.
    Restricted,
}

/// `pi_blob` (Linux's `bcm2711-rpi-4-b.dtb`) with the pool, and a RAM bank at
/// `extra_memory = (base, size)` if given (see the module doc for why QEMU needs one).
pub fn for_raspi(pi_blob: &[u8], pool: RaspiPool, extra_memory: Option<(u64, u64)>) -> Result<Vec<u8>> {
    rewrite(pi_blob, PI_SOURCE, |fdt| {
        let pool = match pool {
            RaspiPool::Default => None,
            RaspiPool::Restricted => Some(PiPool::plan(fdt)?),
        };
        let extra_memory = extra_memory.map(|(base, size)| MemoryBank::plan(fdt, base, size)).transpose()?;
        Ok(RaspiAdditions { pool, extra_memory })
    })
}

/// What a rewrite changes while it copies a devicetree. `path` is a node's full path, `""`
/// for the root.
trait Edits {
    /// `/memreserve/` entries to add after the blob's own.
    fn memory_reservations(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }

    /// Whether the node at `path` keeps its property `name`.
    fn keeps(&self, _path: &str, _name: &str) -> bool {
        true
    }

    /// Properties to add to the node at `path`, after its own.
    fn add_properties(&self, _writer: &mut FdtWriter, _path: &str) {}

    /// Nodes to add inside the node at `path`, after its own children.
    fn add_children(&self, _writer: &mut FdtWriter, _path: &str) {}

    /// Nodes to add right after the node at `path`, as its siblings.
    fn add_siblings(&self, _writer: &mut FdtWriter, _path: &str) {}
}

/// Copies `blob` with the edits `plan` decides on after looking at it. `source` names the
/// blob in error messages.
fn rewrite<E: Edits>(blob: &[u8], source: &str, plan: impl FnOnce(&Fdt<'_>) -> Result<E>) -> Result<Vec<u8>> {
    let mut storage = vec![0; blob.len()];
    let canonical = canonical_copy(blob, &mut storage).map_err(|error| format!("{source}: {error}"))?;
    let fdt = Fdt::new(canonical).map_err(|error| format!("{source}: {error:?}"))?;
    let root = fdt.find_node("/").ok_or(format!("{source} has no root"))?;
    let edits = plan(&fdt)?;

    let mut writer = FdtWriter::new();
    for reservation in fdt.memory_reservations() {
        writer.reserve_memory(reservation.address() as u64, reservation.size() as u64);
    }
    for (address, size) in edits.memory_reservations() {
        writer.reserve_memory(address, size);
    }
    copy_node(&mut writer, root, "", &edits);
    Ok(writer.finish())
}

/// Copies `node` and everything below it, with the edits.
fn copy_node(writer: &mut FdtWriter, node: FdtNode<'_, '_>, path: &str, edits: &impl Edits) {
    writer.begin_node(if path.is_empty() { "" } else { node.name });
    for property in node.properties().filter(|property| edits.keeps(path, property.name)) {
        writer.property(property.name, property.value);
    }
    // Properties must come before subnodes in a DTB's structure block.
    edits.add_properties(writer, path);
    for child in node.children() {
        let child_path = format!("{path}/{}", child.name);
        copy_node(writer, child, &child_path, edits);
        edits.add_siblings(writer, &child_path);
    }
    edits.add_children(writer, path);
    writer.end_node();
}

/// QEMU `virt`: test reservations and a restricted pool for every virtio device.
struct VirtAdditions {
    memreserve: u64,
    reserved: u64,
    pool_base: u64,
    pool: VirtPool,
    pool_phandle: u32,
    has_reserved_memory: bool,
    stdout: StdoutPath,
}

fn is_virtio(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| name.starts_with("virtio_mmio@"))
}

/// QEMU `virt`'s PCIe host bridge. It names the restricted pool too: a force-bounce request
/// for devices the SMMU translates, which the kernel must report and decline (contract R11).
fn is_pcie_bridge(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| name.starts_with("pcie@"))
}

impl VirtAdditions {
    fn declares_non_coherent(&self, path: &str) -> bool {
        self.pool.form == PoolForm::Dynamic && is_virtio(path)
    }

    /// Children to add to `/reserved-memory`, which has 2 address and 2 size cells on `virt`.
    fn reserved_children(&self, writer: &mut FdtWriter) {
        let reserved = self.reserved;
        writer.begin_node(&format!("test-reserved@{reserved:x}"));
        writer.property_reg64("reg", &[(reserved, RESERVED_SIZE)]);
        writer.property("no-map", &[]);
        writer.end_node();

        let pool = self.pool_base;
        match self.pool.form {
            PoolForm::Static => {
                writer.begin_node(&format!("restricted-dma@{pool:x}"));
                writer.property_reg64("reg", &[(pool, self.pool.size)]);
            }
            PoolForm::Dynamic => {
                writer.begin_node("restricted-dma");
                writer.property_cells("size", &split(self.pool.size));
                writer.property_cells("alignment", &split(POOL_ALIGNMENT));
            }
        }
        // No `no-map`: the kernel must map a restricted pool, since the CPU copies through it.
        writer.property_string("compatible", "restricted-dma-pool");
        writer.property_cells("phandle", &[self.pool_phandle]);
        writer.end_node();
    }
}

impl Edits for VirtAdditions {
    fn memory_reservations(&self) -> Vec<(u64, u64)> {
        vec![(self.memreserve, MEMRESERVE_SIZE)]
    }

    fn keeps(&self, path: &str, name: &str) -> bool {
        let replaced_console = path == "/chosen" && name == "stdout-path" && self.stdout == StdoutPath::Missing;
        let made_non_coherent = name == "dma-coherent" && self.declares_non_coherent(path);
        !made_non_coherent && !replaced_console
    }

    fn add_properties(&self, writer: &mut FdtWriter, path: &str) {
        if path == "/chosen" && self.stdout == StdoutPath::Missing {
            writer.property_string("stdout-path", MISSING_CONSOLE);
        }
        if is_virtio(path) || (self.pool.pcie && is_pcie_bridge(path)) {
            writer.property_cells("memory-region", &[self.pool_phandle]);
        }
        if self.declares_non_coherent(path) {
            writer.property("dma-noncoherent", &[]);
        }
    }

    fn add_children(&self, writer: &mut FdtWriter, path: &str) {
        if path == "/reserved-memory" {
            self.reserved_children(writer);
        }
        if path.is_empty() && !self.has_reserved_memory {
            writer.begin_node("reserved-memory");
            writer.property_cells("#address-cells", &[2]);
            writer.property_cells("#size-cells", &[2]);
            writer.property("ranges", &[]);
            self.reserved_children(writer);
            writer.end_node();
        }
    }
}

fn split(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

/// Base and size of the first RAM bank: QEMU `virt` has one, as large as `-m`.
fn first_ram_bank(fdt: &Fdt<'_>) -> Result<(u64, u64)> {
    let memory = fdt.find_node("/memory").ok_or(format!("{QEMU_SOURCE} has no /memory"))?;
    let first = memory.reg().and_then(|mut regions| regions.next()).ok_or("/memory has no reg")?;
    let size = first.size.ok_or("/memory's reg has no size")?;
    Ok((first.starting_address as u64, size as u64))
}

fn highest_phandle(fdt: &Fdt<'_>) -> u32 {
    let phandle = |node: FdtNode<'_, '_>| {
        let value = node.property("phandle")?.value;
        Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
    };
    fdt.all_nodes().filter_map(phandle).max().unwrap_or(0)
}

/// The Raspberry Pi 4: a restricted pool for the legacy DMA engine, a RAM bank QEMU omits.
struct RaspiAdditions {
    pool: Option<PiPool>,
    extra_memory: Option<MemoryBank>,
}

/// The dynamic pool under `/reserved-memory` and the DMA controller that names it.
struct PiPool {
    phandle: u32,
    /// `/reserved-memory`'s cell counts, which `size`, `alignment` and `alloc-ranges` use.
    cells: Cells,
    /// Path of the legacy DMA controller (`/soc/dma@7e007000` on the Pi 4).
    controller: String,
}

impl PiPool {
    fn plan(fdt: &Fdt<'_>) -> Result<Self> {
        let reserved = fdt.find_node("/reserved-memory").ok_or(format!("{PI_SOURCE} has no /reserved-memory"))?;
        let root = fdt.find_node("/").ok_or(format!("{PI_SOURCE} has no root"))?;
        let controller = path_of_compatible(root, "", PI_LEGACY_DMA)
            .ok_or(format!("{PI_SOURCE} has no node compatible with \"{PI_LEGACY_DMA}\""))?;
        Ok(Self { phandle: highest_phandle(fdt) + 1, cells: Cells::of(&reserved, "/reserved-memory")?, controller })
    }

    /// The pool node. No `no-map`: the kernel must map a restricted pool, since the CPU copies
    /// through it.
    fn write(&self, writer: &mut FdtWriter) {
        let (range_start, range_size) = PI_POOL_ALLOC_RANGE;
        writer.begin_node(PI_POOL_NAME);
        writer.property_string("compatible", "restricted-dma-pool");
        writer.property_cells("size", &self.cells.size(POOL_SIZE));
        writer.property_cells("alignment", &self.cells.size(POOL_ALIGNMENT));
        writer.property_cells("alloc-ranges", &self.cells.entry(range_start, range_size));
        writer.property_cells("phandle", &[self.phandle]);
        writer.end_node();
    }
}

/// A RAM bank node (`device_type = "memory"`), placed right after the first `/memory` node.
///
/// It is named `sdram@<base>`, not `memory@<base>`: QEMU deletes every node named `memory*`
/// from a `-dtb` before writing its own `/memory@0`. What makes a node RAM is its
/// `device_type`, which the kernel (and Linux) go by.
struct MemoryBank {
    name: String,
    /// Path of the `/memory` node it follows.
    after: String,
    /// The root's cell counts, which `reg` uses.
    cells: Cells,
    base: u64,
    size: u64,
}

impl MemoryBank {
    fn plan(fdt: &Fdt<'_>, base: u64, size: u64) -> Result<Self> {
        let root = fdt.find_node("/").ok_or(format!("{PI_SOURCE} has no root"))?;
        let cells = Cells::of(&root, "the root node")?;
        cells.check(base, size)?;
        let is_ram = |node: &FdtNode<'_, '_>| node.property("device_type").is_some_and(|p| p.value == b"memory\0");
        let listed = root.children().filter(is_ram).flat_map(|node| node.reg().into_iter().flatten());
        let overlaps = |region: fdt::standard_nodes::MemoryRegion| {
            let start = region.starting_address as u64;
            start < base + size && base < start + region.size.unwrap_or(0) as u64
        };
        if listed.into_iter().any(overlaps) {
            return Err(format!("{PI_SOURCE} already lists RAM in [{base:#x}, {:#x})", base + size));
        }
        let name = format!("sdram@{base:x}");
        let first_memory = root.children().find(|child| child.name == "memory" || child.name.starts_with("memory@"));
        let after = first_memory.ok_or(format!("{PI_SOURCE} has no /memory node"))?.name;
        Ok(Self { name, after: format!("/{after}"), cells, base, size })
    }

    fn write(&self, writer: &mut FdtWriter) {
        writer.begin_node(&self.name);
        writer.property_string("device_type", "memory");
        writer.property_cells("reg", &self.cells.entry(self.base, self.size));
        writer.end_node();
    }
}

impl Edits for RaspiAdditions {
    fn keeps(&self, path: &str, name: &str) -> bool {
        // The controller names our pool alone: a region it named before would be a second,
        // conflicting answer to "where may this device DMA".
        !(name == "memory-region" && self.pool.as_ref().is_some_and(|pool| pool.controller == path))
    }

    fn add_properties(&self, writer: &mut FdtWriter, path: &str) {
        if let Some(pool) = self.pool.as_ref().filter(|pool| pool.controller == path) {
            writer.property_cells("memory-region", &[pool.phandle]);
        }
    }

    fn add_children(&self, writer: &mut FdtWriter, path: &str) {
        if let Some(pool) = self.pool.as_ref().filter(|_| path == "/reserved-memory") {
            pool.write(writer);
        }
    }

    fn add_siblings(&self, writer: &mut FdtWriter, path: &str) {
        if let Some(bank) = self.extra_memory.as_ref().filter(|bank| bank.after == path) {
            bank.write(writer);
        }
    }
}

/// The first node below `node` (at `path`) with `compatible` among its compatible strings.
fn path_of_compatible(node: FdtNode<'_, '_>, path: &str, compatible: &str) -> Option<String> {
    node.children().find_map(|child| {
        let child_path = format!("{path}/{}", child.name);
        if child.compatible().is_some_and(|list| list.all().any(|c| c == compatible)) {
            return Some(child_path);
        }
        path_of_compatible(child, &child_path, compatible)
    })
}

/// `#address-cells` and `#size-cells` of a node: how many 32-bit cells its children's
/// addresses and sizes take.
#[derive(Debug, Clone, Copy)]
struct Cells {
    address: usize,
    size: usize,
}

impl Cells {
    /// The counts `node` declares; when a property is absent, the devicetree specification's
    /// defaults (v0.4, 2.3.5): 2 address cells, 1 size cell.
    fn of(node: &FdtNode<'_, '_>, name: &str) -> Result<Self> {
        let count = |property: &str, default: usize| -> Result<usize> {
            match node.property(property) {
                None => Ok(default),
                Some(value) => match value.as_usize() {
                    Some(cells @ 1..=2) => Ok(cells),
                    _ => Err(format!("{PI_SOURCE}: {name} has {property} other than 1 or 2")),
                },
            }
        };
        Ok(Self { address: count("#address-cells", 2)?, size: count("#size-cells", 1)? })
    }

    /// Fails unless `address` and `size` fit in this many cells.
    fn check(self, address: u64, size: u64) -> Result<()> {
        let fits = |value: u64, cells: usize| cells == 2 || value <= u64::from(u32::MAX);
        if fits(address, self.address) && fits(size, self.size) {
            Ok(())
        } else {
            Err(format!(
                "{PI_SOURCE}: {address:#x} + {size:#x} does not fit in {} address and {} size cells",
                self.address, self.size
            ))
        }
    }

    /// `value` as `#size-cells` cells.
    fn size(self, value: u64) -> Vec<u32> {
        encode(value, self.size)
    }

    /// One (address, size) entry, as in `reg` and `alloc-ranges`.
    fn entry(self, address: u64, size: u64) -> Vec<u32> {
        let mut cells = encode(address, self.address);
        cells.extend(encode(size, self.size));
        cells
    }
}

/// `value` as one or two big-endian cells (the caller checked that it fits).
fn encode(value: u64, cells: usize) -> Vec<u32> {
    match cells {
        1 => vec![value as u32],
        _ => split(value).to_vec(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use addr::{PhysAddr, PhysRange};
    use platform::devicetree::Devicetree;
    use platform::dma_config::PoolPlacement;

    fn parse(blob: &[u8]) -> Devicetree<'static> {
        Devicetree::parse(blob, Box::leak(vec![0; blob.len()].into_boxed_slice())).unwrap()
    }

    fn range(start: u64, size: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), size).unwrap()
    }

    /// A small stand-in for QEMU's `virt` devicetree, with `ram` bytes of RAM.
    fn qemu_like(ram: u64) -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[2]);
        w.property("dma-coherent", &[]);
        w.begin_node("chosen");
        w.property_string("stdout-path", "/pl011@9000000");
        w.end_node();
        w.begin_node("memory@40000000");
        w.property_string("device_type", "memory");
        w.property_reg64("reg", &[(0x4000_0000, ram)]);
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
            let pool = VirtPool { form, size: POOL_SIZE, pcie: true };
            let dt = parse(&for_kernel(&qemu_like(1 << 30), pool, StdoutPath::AsQemuWroteIt).unwrap());
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

    #[test]
    fn reservations_and_the_static_pool_follow_the_size_of_ram() {
        for ram in [256u64 << 20, 512 << 20, 1 << 30, 4 << 30] {
            let pool = VirtPool { form: PoolForm::Static, size: POOL_SIZE, pcie: true };
            let dt = parse(&for_kernel(&qemu_like(ram), pool, StdoutPath::AsQemuWroteIt).unwrap());
            let ram = range(0x4000_0000, ram);
            for reservation in dt.reservations().unwrap() {
                assert!(ram.covers(&reservation.range), "{ram}: {reservation:?} outside RAM");
            }
            let pools = dt.restricted_pools().unwrap();
            let PoolPlacement::Static(placed) = pools[0].placement else { panic!("{ram}: dynamic pool") };
            assert_eq!(placed, range(ram.start().as_u64() + ram.size() / 2, POOL_SIZE), "{ram}");
        }
        let pool = VirtPool { form: PoolForm::Static, size: 512 << 20, pcie: true };
        let error = for_kernel(&qemu_like(512 << 20), pool, StdoutPath::AsQemuWroteIt).unwrap_err();
        assert!(error.contains("does not fit in the 512 MiB of RAM at 0x40000000"), "{error}");
    }

    #[test]
    fn a_missing_console_replaces_stdout_path() {
        let pool = VirtPool { form: PoolForm::Dynamic, size: POOL_SIZE, pcie: true };
        let blob = for_kernel(&qemu_like(1 << 30), pool, StdoutPath::Missing).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        let paths: Vec<&str> =
            chosen.properties().filter(|property| property.name == "stdout-path").filter_map(|p| p.as_str()).collect();
        assert_eq!(paths, [MISSING_CONSOLE]);
    }

    /// What QEMU `raspi4b` puts in the first `/memory` node: 960 MiB.
    const PI_LOW_RAM: u64 = 960 << 20;
    /// The highest phandle in [`pi_like`].
    const PI_HIGHEST_PHANDLE: u32 = 0x30;

    /// A small stand-in for `bcm2711-rpi-4-b.dtb`, as QEMU `raspi4b` hands it over.
    pub(crate) fn pi_like() -> Vec<u8> {
        pi_like_with(Cells { address: 2, size: 1 }, true)
    }

    /// [`pi_like`] with `/reserved-memory`'s cell counts, and with or without the legacy DMA
    /// controller.
    fn pi_like_with(reserved: Cells, legacy_dma: bool) -> Vec<u8> {
        let root = Cells { address: 2, size: 1 };
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_string("compatible", "raspberrypi,4-model-b");
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[1]);
        w.begin_node("reserved-memory");
        w.property_cells("#address-cells", &[reserved.address as u32]);
        w.property_cells("#size-cells", &[reserved.size as u32]);
        w.property("ranges", &[]);
        // Linux's CMA area: a shared-dma-pool, which must not count as a restricted pool.
        w.begin_node("linux,cma");
        w.property_string("compatible", "shared-dma-pool");
        w.property_cells("size", &reserved.size(64 << 20));
        w.property("reusable", &[]);
        w.property_cells("alloc-ranges", &reserved.entry(0, 1 << 30));
        w.end_node();
        w.end_node();
        w.begin_node("soc");
        w.property_string("compatible", "simple-bus");
        w.property_cells("#address-cells", &[1]);
        w.property_cells("#size-cells", &[1]);
        w.property_cells("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
        w.property_cells("dma-ranges", &[0xc000_0000, 0, 0, 0x4000_0000]);
        let controllers = [("dma@7e007000", PI_LEGACY_DMA, 0x1b), ("dma@7e007b00", "brcm,bcm2711-dma", 0x1c)];
        for (name, compatible, phandle) in controllers.into_iter().skip(usize::from(!legacy_dma)) {
            w.begin_node(name);
            w.property_string("compatible", compatible);
            w.property_cells("reg", &[0x7e00_7000, 0xb00]);
            w.property_cells("phandle", &[phandle]);
            w.end_node();
        }
        w.end_node();
        w.begin_node("memory@0");
        w.property_string("device_type", "memory");
        w.property_cells("reg", &root.entry(0, PI_LOW_RAM));
        w.end_node();
        w.begin_node("interrupt-controller@40041000");
        w.property_cells("phandle", &[PI_HIGHEST_PHANDLE]);
        w.end_node();
        w.end_node();
        w.finish()
    }

    #[test]
    fn the_pi_pool_is_dynamic_in_the_first_gib_and_named_by_the_legacy_dma_engine_only() {
        let dt = parse(&for_raspi(&pi_like(), RaspiPool::Restricted, None).unwrap());
        let pools = dt.restricted_pools().unwrap();
        assert_eq!(pools.len(), 1, "the CMA shared-dma-pool is not a restricted pool");
        let pool = &pools[0];
        assert_eq!(pool.name, PI_POOL_NAME);
        assert_eq!(pool.phandle, Some(PI_HIGHEST_PHANDLE + 1), "a phandle no other node has");
        let PoolPlacement::Dynamic { size, alignment, alloc_ranges } = &pool.placement else {
            panic!("static pool: {:?}", pool.placement);
        };
        assert_eq!((*size, *alignment), (4 << 20, 2 << 20));
        assert_eq!(alloc_ranges.as_slice(), [range(0, 1 << 30)]);

        let legacy = dt.compatible_devices(&[PI_LEGACY_DMA]).unwrap();
        assert_eq!(legacy.len(), 1);
        assert_eq!(legacy[0].dma.pool, Some(PI_POOL_NAME));
        assert_eq!(legacy[0].dma.pool_named_by, Some("dma@7e007000"));
        assert!(legacy[0].dma.reaches(alloc_ranges[0]), "the engine reaches every byte the pool may take");
        let dma4 = dt.compatible_devices(&["brcm,bcm2711-dma"]).unwrap();
        assert_eq!(dma4[0].dma.pool, None, "the 40-bit DMA4 engine reaches all RAM and keeps direct DMA");
        assert_eq!(dt.memory().unwrap().as_slice(), [range(0, PI_LOW_RAM)], "no extra bank asked for");
    }

    #[test]
    fn the_pi_pool_uses_the_cell_counts_reserved_memory_declares() {
        for (address, size) in [(1, 1), (2, 1), (2, 2), (1, 2)] {
            let cells = Cells { address, size };
            let blob = for_raspi(&pi_like_with(cells, true), RaspiPool::Restricted, None).unwrap();
            let fdt = Fdt::new(&blob).unwrap();
            let node = fdt.find_node("/reserved-memory/restricted-dma").unwrap();
            assert_eq!(node.property("size").unwrap().value.len(), 4 * size, "{cells:?}");
            assert_eq!(node.property("alloc-ranges").unwrap().value.len(), 4 * (address + size), "{cells:?}");
            let pools = parse(&blob).restricted_pools().unwrap();
            let PoolPlacement::Dynamic { size, alignment, alloc_ranges } = &pools[0].placement else {
                panic!("{cells:?}: static pool");
            };
            assert_eq!((*size, *alignment, alloc_ranges.as_slice()), (4 << 20, 2 << 20, &[range(0, 1 << 30)][..]));
        }
    }

    #[test]
    fn the_extra_memory_bank_follows_memory_at_0() {
        let blob = for_raspi(&pi_like(), RaspiPool::Default, Some((1 << 30, 1 << 30))).unwrap();
        let dt = parse(&blob);
        assert_eq!(dt.memory().unwrap().as_slice(), [range(0, PI_LOW_RAM), range(1 << 30, 1 << 30)]);
        assert!(dt.restricted_pools().unwrap().is_empty());
        assert_eq!(dt.compatible_devices(&[PI_LEGACY_DMA]).unwrap()[0].dma.pool, None);
        // Right after memory@0: boot code looking up "/memory" still finds the first bank.
        let fdt = Fdt::new(&blob).unwrap();
        let names: Vec<&str> = fdt.find_node("/").unwrap().children().map(|node| node.name).collect();
        let first = names.iter().position(|&name| name == "memory@0").unwrap();
        assert_eq!(names[first + 1], "sdram@40000000");
    }

    #[test]
    fn with_nothing_to_add_the_pi_rewrite_is_a_copy() {
        let original = pi_like();
        assert_eq!(for_raspi(&original, RaspiPool::Default, None).unwrap(), original);
    }

    #[test]
    fn the_pi_rewrite_refuses_what_it_cannot_do() {
        let no_legacy_dma = pi_like_with(Cells { address: 2, size: 1 }, false);
        let error = for_raspi(&no_legacy_dma, RaspiPool::Restricted, None).unwrap_err();
        assert!(error.contains("brcm,bcm2835-dma"), "{error}");
        let error = for_raspi(&pi_like(), RaspiPool::Default, Some((0, 1 << 30))).unwrap_err();
        assert!(error.contains("already lists RAM in [0x0, 0x40000000)"), "{error}");
        let error = for_raspi(&pi_like(), RaspiPool::Default, Some((1 << 32, 1 << 32))).unwrap_err();
        assert!(error.contains("does not fit in 2 address and 1 size cells"), "{error}");
        let error = for_raspi(b"not a devicetree", RaspiPool::Default, None).unwrap_err();
        assert!(error.starts_with("the Raspberry Pi devicetree: "), "{error}");
    }
}
