//! What the devicetree says about the machine.
//!
//! The boot loader (QEMU's `-kernel` loader, the Raspberry Pi firmware) hands the kernel the
//! physical address of a flattened devicetree (DTB) in `x0`. Nothing else about the machine is
//! assumed: RAM, reservations, the console UART, the power-off method and the CPUs all come
//! from here. This module checks the blob before trusting it, then answers the questions boot
//! asks.
//!
//! Two details of the format matter for addresses:
//! - A `reg` property is a list of (address, size) pairs whose widths in 32-bit cells are set
//!   by the *parent* node's `#address-cells` and `#size-cells` (defaults 2 and 1).
//! - A `reg` address is in the parent bus's address space. Each ancestor's `ranges` property
//!   translates child-bus addresses to its own parent's space, up to the root, whose space is
//!   the CPU's physical address space. On a Raspberry Pi 4, `/soc` maps bus `0x7e00_0000` to
//!   CPU `0xfe00_0000`, so the PL011 at `reg = <0x7e201000 …>` is at physical `0xfe20_1000`:
//!
//! ```text
//!   serial@7e201000  reg    = <0x7e201000 0x200>
//!   soc              ranges = <0x7e000000  0x0 0xfe000000  0x1800000>
//!                              child addr  parent addr     size
//!   ⇒ 0x7e201000 - 0x7e000000 + 0xfe000000 = 0xfe201000 (physical)
//! ```
//!
//! Devices reach memory the other way round, through `dma-ranges`, and may be confined to a
//! restricted DMA pool: each [`Device`] carries its [`DmaDescription`], computed by
//! [`crate::dma_config`] from the node and the buses above it.

use addr::{PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use core::fmt;
use fdt::Fdt;
use fdt::node::FdtNode;

use crate::dma_config::{self, DmaDescription, MAX_POOLS, PoolProblem, RestrictedPool};
use crate::memmap::Size;

mod rescue;
pub use rescue::{FoundBy, Guess, RescuedConsole, rescue_console};

/// How deep nodes may nest; real devicetrees stay below 8.
pub const MAX_DEPTH: usize = 16;
/// How many ranges one list (RAM, reservations, a device's `reg`) may hold.
pub const MAX_RANGES: usize = 32;

/// A list of physical ranges, bounded so that it needs no heap (it is read before one exists).
pub type RangeList = ArrayVec<PhysRange, MAX_RANGES>;

pub(crate) const MAGIC: u32 = 0xd00d_feed;
pub(crate) const HEADER_SIZE: usize = 40;
// Structure block tokens (devicetree specification, section 5.4.1).
pub(crate) const TOKEN_BEGIN_NODE: u32 = 1;
pub(crate) const TOKEN_END_NODE: u32 = 2;
pub(crate) const TOKEN_PROP: u32 = 3;
pub(crate) const TOKEN_NOP: u32 = 4;
pub(crate) const TOKEN_END: u32 = 9;

/// Why a devicetree could not be used. Every variant prints as a sentence that names what is
/// wrong and where, so that a boot that stops on it says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<'a> {
    /// Fewer bytes than a header, or than the header's `totalsize`.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The first word is not the devicetree magic `0xd00dfeed`: not a devicetree at all.
    BadMagic {
        /// The word found instead.
        found: u32,
    },
    /// A header version this parser does not read (it reads 17, and 16-compatible blobs).
    UnsupportedVersion {
        /// The blob's version.
        version: u32,
        /// The oldest version it says it is compatible with.
        last_compatible_version: u32,
    },
    /// A block named by the header lies outside the blob's `totalsize` bytes.
    BlockOutOfBounds {
        /// Which block: the structure, strings or memory reservation block.
        block: &'static str,
        /// Its offset from the blob's start.
        offset: u32,
        /// Its size.
        size: u32,
        /// The blob's `totalsize`.
        total_size: usize,
    },
    /// The structure block is not a well-formed token stream; `offset` is from the blob's start.
    Malformed {
        /// Where, from the blob's start.
        offset: usize,
        /// What is wrong there.
        problem: &'static str,
    },
    /// A node nested deeper than [`MAX_DEPTH`] levels, at `offset` from the blob's start.
    TooDeep {
        /// Where, from the blob's start.
        offset: usize,
    },
    /// A property that has a fixed shape has another one.
    BadProperty {
        /// The node.
        node: &'a str,
        /// The property.
        property: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `#address-cells` or `#size-cells` holds a count this kernel cannot use.
    BadCellCount {
        /// The node.
        node: &'a str,
        /// The property.
        property: &'static str,
        /// Its value.
        value: u32,
    },
    /// A `ranges` whose length is not a whole number of (child address, parent address, size)
    /// entries.
    RangesShape {
        /// The bus node.
        bus: &'a str,
        /// How many cells `ranges` has.
        cells: usize,
        /// Its `#address-cells`.
        child_address_cells: usize,
        /// Its parent's `#address-cells`.
        parent_address_cells: usize,
        /// Its `#size-cells`.
        size_cells: usize,
    },
    /// An address that no `ranges` of an ancestor translates.
    Untranslatable {
        /// The node.
        node: &'a str,
        /// The address, as its bus states it.
        address: u64,
    },
    /// No `/memory` node describes any RAM.
    NoMemory,
    /// More ranges than a list holds ([`MAX_RANGES`]).
    TooManyRanges {
        /// Which list.
        what: &'static str,
    },
    /// `/chosen/stdout-path` names a node that does not exist, directly or through `alias`.
    StdoutNotFound {
        /// The path or alias as stated.
        path: &'a str,
        /// The alias it went through, if any.
        alias: Option<&'a str>,
    },
    /// `/chosen/stdout-path` names an alias that `/aliases` does not define.
    StdoutAliasUndefined {
        /// The alias.
        alias: &'a str,
    },
    /// The blob is larger than the storage the kernel keeps devicetrees in.
    TooLarge {
        /// The blob's size.
        size: usize,
        /// The storage's capacity.
        capacity: usize,
    },
    /// A `restricted-dma-pool` node that cannot serve as a bounce pool.
    BadPool {
        /// The pool's node.
        node: &'a str,
        /// What is wrong with it.
        problem: PoolProblem,
    },
    /// A `memory-region` phandle (on `carrier`, inherited by `device`) that cannot be followed.
    BadMemoryRegion {
        /// The device that inherits the property.
        device: &'a str,
        /// The node that carries `memory-region`.
        carrier: &'a str,
        /// The phandle.
        phandle: u32,
        /// Why it cannot be followed.
        problem: &'static str,
    },
    /// The `dma-ranges` of the buses above `node` share no address: it can reach no memory.
    DmaUnreachable {
        /// The device.
        node: &'a str,
        /// The bus whose `dma-ranges` leave nothing.
        bus: &'a str,
    },
    /// A property made of fixed-size entries whose length is not a whole number of them.
    BadEntryLength {
        /// The node.
        node: &'a str,
        /// The property.
        property: &'static str,
        /// How many cells it has.
        cells: usize,
        /// How many cells one entry takes.
        entry_cells: usize,
        /// What one entry holds, in words.
        layout: &'static str,
    },
    /// A phandle in `property` that no node carries.
    UnknownPhandle {
        /// The node.
        node: &'a str,
        /// The property.
        property: &'static str,
        /// The phandle no node carries.
        phandle: u32,
    },
    /// A PCI host bridge whose ECAM region cannot hold the configuration space of its buses.
    EcamTooSmall {
        /// The bridge's node.
        node: &'a str,
        /// The ECAM region's size.
        ecam_size: u64,
        /// How many buses `bus-range` names.
        buses: u16,
    },
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, available } => {
                write!(f, "devicetree truncated: needs {needed} bytes, {available} available")
            }
            Error::BadMagic { found } => {
                write!(f, "not a devicetree: magic {found:#010x}, expected {MAGIC:#010x}")
            }
            Error::UnsupportedVersion { version, last_compatible_version } => write!(
                f,
                "devicetree version {version} (compatible back to version {last_compatible_version}) is not \
                 supported: this kernel reads versions 16 and 17"
            ),
            Error::BlockOutOfBounds { block, offset, size, total_size } => {
                let end = u64::from(offset) + u64::from(size);
                write!(
                    f,
                    "devicetree {block} block truncated: the header places it at [{offset:#x}..{end:#x}), \
                     but the blob ends at {total_size:#x} (its totalsize)"
                )
            }
            Error::Malformed { offset, problem } => {
                write!(f, "devicetree structure malformed at offset {offset:#x}: {problem}")
            }
            Error::TooDeep { offset } => write!(
                f,
                "devicetree structure malformed at offset {offset:#x}: nodes nested more than {MAX_DEPTH} deep"
            ),
            Error::BadProperty { node, property, problem } => {
                write!(f, "devicetree node '{node}': property '{property}' {problem}")
            }
            Error::BadCellCount { node, property, value } => write!(
                f,
                "devicetree node '{node}': {property} is {value}; this kernel reads addresses and sizes \
                 of 0, 1 or 2 cells (at most 64 bits)"
            ),
            Error::RangesShape { bus, cells, child_address_cells, parent_address_cells, size_cells } => write!(
                f,
                "devicetree node '{bus}': 'ranges' holds {cells} cells, not a whole number of \
                 (child address, parent address, size) entries of {child_address_cells} + \
                 {parent_address_cells} + {size_cells} cells"
            ),
            Error::Untranslatable { node, address } => write!(
                f,
                "devicetree node '{node}': address {address:#x} is not translated by the \
                 'ranges' of its parent buses"
            ),
            Error::NoMemory => write!(f, "devicetree has no /memory node with a non-empty 'reg'"),
            Error::TooManyRanges { what: "CPUs" } => {
                write!(f, "devicetree lists more than {MAX_CPUS} enabled CPUs")
            }
            Error::TooManyRanges { what } => {
                write!(f, "devicetree lists more than {MAX_RANGES} {what}")
            }
            Error::TooLarge { size, capacity } => {
                write!(f, "devicetree of {size} bytes exceeds the kernel's {capacity}-byte copy")
            }
            Error::StdoutNotFound { path, alias: None } => {
                write!(f, "/chosen/stdout-path names '{path}', which is not in the devicetree")
            }
            Error::StdoutNotFound { path, alias: Some(alias) } => write!(
                f,
                "/chosen/stdout-path names alias '{alias}', which /aliases points at '{path}', which is \
                 not in the devicetree"
            ),
            Error::StdoutAliasUndefined { alias } => {
                write!(f, "/chosen/stdout-path names alias '{alias}', which /aliases does not define")
            }
            Error::BadPool { node, problem } => write!(f, "restricted DMA pool '{node}' {problem}"),
            Error::BadMemoryRegion { device, carrier, phandle, problem } if device == carrier => {
                write!(f, "devicetree node '{device}': memory-region phandle {phandle:#x} {problem}")
            }
            Error::BadMemoryRegion { device, carrier, phandle, problem } => write!(
                f,
                "devicetree node '{device}': memory-region phandle {phandle:#x}, inherited from \
                 '{carrier}', {problem}"
            ),
            Error::DmaUnreachable { node, bus } => write!(
                f,
                "devicetree node '{node}': the 'dma-ranges' of '{bus}' and the buses below it share no \
                 address, so the device can reach no memory"
            ),
            Error::BadEntryLength { node, property, cells, entry_cells, layout } => write!(
                f,
                "devicetree node '{node}': property '{property}' holds {cells} cells, not a whole number of \
                 {entry_cells}-cell entries ({layout})"
            ),
            Error::UnknownPhandle { node, property, phandle } => write!(
                f,
                "devicetree node '{node}': property '{property}' names phandle {phandle:#x}, which no node has"
            ),
            Error::EcamTooSmall { node, ecam_size, buses } => write!(
                f,
                "PCI host bridge '{node}': its ECAM region of {} cannot hold the configuration space of \
                 {buses} buses (1 MiB each)",
                Size(ecam_size)
            ),
        }
    }
}

/// Reads the `totalsize` field of a devicetree header: how many bytes the blob occupies.
///
/// Boot code calls this before anything else, to know how much memory to map.
pub fn blob_size(header: &[u8; 8]) -> Result<usize, Error<'static>> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    Ok(u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

/// A devicetree that passed validation. Queries on it do not panic: validation establishes
/// everything the `fdt` crate assumes of a blob (see [`canonical_copy`]), and every lookup
/// here walks down from the root, so none depends on how `fdt` resolves aliases.
pub struct Devicetree<'a> {
    fdt: Fdt<'a>,
    /// The canonical copy `fdt` reads, for the lenient console search.
    bytes: &'a [u8],
}

/// How a PSCI call reaches the firmware (`/psci/method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciConduit {
    /// `hvc #0`: the hypervisor (EL2) implements PSCI.
    Hvc,
    /// `smc #0`: the secure monitor (EL3), or a model of it such as QEMU's, implements PSCI.
    Smc,
}

impl fmt::Display for PsciConduit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PsciConduit::Hvc => "hvc",
            PsciConduit::Smc => "smc",
        })
    }
}

/// A memory reservation: bytes of RAM the kernel must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation<'a> {
    /// The reserved bytes.
    pub range: PhysRange,
    /// Where it came from: a `/reserved-memory` child's name, or `/memreserve/`.
    pub label: &'a str,
    /// Kept out of the linear map: the devicetree's `no-map` (not even speculative reads may
    /// touch it), or a restricted DMA pool, which the kernel maps apart with the attributes its
    /// devices need.
    pub no_map: bool,
}

/// A device node: its name, compatible strings, `reg` ranges in physical addresses, and how
/// it reaches memory.
#[derive(Debug, Clone)]
pub struct Device<'a> {
    /// The node name with its unit address (`virtio_mmio@a000000`, `serial@7e201000`). Tables
    /// use it to tell devices apart: the unit address is the device's first `reg` address on
    /// its bus, so two devices share a name only if they sit at the same address on two
    /// different buses, which real devicetrees avoid.
    pub name: &'a str,
    compatible: &'a [u8],
    /// Its registers, in CPU physical addresses (each `reg` entry translated through the buses' `ranges`).
    pub regs: RangeList,
    /// How it reaches memory: restricted pool, `dma-ranges` windows, coherence.
    pub dma: DmaDescription<'a>,
}

impl<'a> Device<'a> {
    /// The `compatible` strings, most specific first.
    pub fn compatible(&self) -> impl Iterator<Item = &'a str> + 'a + use<'a> {
        self.compatible.split(|&byte| byte == 0).filter(|s| !s.is_empty()).filter_map(|s| core::str::from_utf8(s).ok())
    }

    /// Whether `wanted` is one of its `compatible` strings.
    pub fn is_compatible(&self, wanted: &str) -> bool {
        self.compatible().any(|c| c == wanted)
    }
}

/// The CPUs listed under `/cpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus<'a> {
    /// How many CPUs are listed.
    pub count: usize,
    /// How secondary CPUs are started: `psci`, `spin-table`, or `none`.
    pub enable_method: &'a str,
}

/// How many CPUs [`Devicetree::cpu_list`] describes at most.
pub const MAX_CPUS: usize = 8;

/// The affinity fields of MPIDR_EL1 (Aff3 in bits 39..32, Aff2..Aff0 in bits 23..0): all a
/// CPU's `reg` may hold, as Linux's `MPIDR_HWID_BITMASK` says.
pub const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// One CPU of `/cpus`, and how it is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu<'a> {
    /// Its node name (`cpu@1`).
    pub name: &'a str,
    /// Its `reg`: the affinity fields of its MPIDR, what PSCI names it by.
    pub mpidr: u64,
    /// Its `enable-method`.
    pub start: CpuStart,
}

/// How a secondary CPU is started (Linux `Documentation/devicetree/bindings/arm/cpus.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuStart {
    /// `psci`: the PSCI firmware's `CPU_ON`.
    Psci,
    /// `spin-table`: the entry point is written at `cpu-release-addr`, a physical address.
    SpinTable {
        /// Where the parked CPU reads its entry point.
        release: PhysAddr,
    },
    /// No `enable-method`, or one this kernel does not know: the CPU cannot be started.
    None,
}

/// A node found by walking from the root, with every node above it (root first).
pub(crate) struct Located<'b, 'a> {
    pub(crate) node: FdtNode<'b, 'a>,
    pub(crate) ancestors: ArrayVec<FdtNode<'b, 'a>, MAX_DEPTH>,
}

impl<'a> Devicetree<'a> {
    /// Validates `blob` and keeps a canonical copy of it in `storage`.
    ///
    /// The copy has no `FDT_NOP` tokens. Boot loaders edit devicetrees with libfdt, which
    /// blanks out deleted nodes and properties with NOPs (QEMU does so with `/memory`), and
    /// the `fdt` crate's path lookup stops at them. `blob` may be longer than the devicetree.
    pub fn parse(blob: &[u8], storage: &'a mut [u8]) -> Result<Self, Error<'a>> {
        let bytes: &'a [u8] = canonical_copy(blob, storage)?;
        // The copy holds a whole header with the right magic and `totalsize`, the only things
        // `Fdt::new` checks, so this cannot fail; it is mapped to an error rather than unwrapped.
        let fdt = Fdt::new(bytes).map_err(|_| Error::Malformed { offset: 0, problem: "header" })?;
        Ok(Self { fdt, bytes })
    }

    /// How many bytes of the blob are in use (its `totalsize`).
    pub fn size_in_bytes(&self) -> usize {
        self.fdt.total_size()
    }

    /// A UART with one of the `drivers` compatible strings, found by the lenient walk of
    /// [`rescue_console`] (the one `stdout-path` names if it can be read at all, else the
    /// first): the console to use when [`Self::stdout`] names none, or one that cannot be used.
    pub fn rescue_console(&self, drivers: &[&str]) -> Option<RescuedConsole<'a>> {
        rescue_console(self.bytes, drivers)
    }

    /// The root node's `model`, or its first `compatible` string.
    pub fn model(&self) -> &'a str {
        let model = self
            .root()
            .and_then(|root| string_property(&root, "model").or_else(|| string_property(&root, "compatible")));
        model.unwrap_or("unknown machine")
    }

    /// The kernel command line (`/chosen/bootargs`).
    pub fn bootargs(&self) -> &'a str {
        self.node("/chosen").and_then(|chosen| string_property(&chosen, "bootargs")).unwrap_or("")
    }

    /// The CPUs under `/cpus` and how the secondary ones start.
    pub fn cpus(&self) -> Cpus<'a> {
        let mut cpus = Cpus { count: 0, enable_method: "none" };
        let Some(parent) = self.node("/cpus") else { return cpus };
        for cpu in parent.children().filter(|node| string_property(node, "device_type") == Some("cpu")) {
            cpus.count += 1;
            if let Some(method) = string_property(&cpu, "enable-method") {
                cpus.enable_method = method;
            }
        }
        cpus
    }

    /// Every enabled CPU of `/cpus` (`device_type = "cpu"`, `status` absent or okay), in the
    /// order listed, the boot CPU among them: the caller skips its own MPIDR. No `/cpus` is an
    /// empty list. A CPU whose `enable-method` is absent or unknown is listed with
    /// [`CpuStart::None`]: it cannot be started, which is not an error.
    ///
    /// An error names the CPU whose `reg` is missing, is not `#address-cells` of `/cpus` long
    /// or has bits outside the MPIDR's affinity fields, or repeats another CPU's; a
    /// `spin-table` CPU without a two-cell `cpu-release-addr`; a `/cpus` whose
    /// `#address-cells` is not 1 or 2; more than [`MAX_CPUS`] CPUs.
    pub fn cpu_list(&self) -> Result<ArrayVec<Cpu<'a>, MAX_CPUS>, Error<'a>> {
        let mut list = ArrayVec::new();
        let Some(parent) = self.node("/cpus") else { return Ok(list) };
        let reg_cells = address_cells(&parent)?;
        if reg_cells == 0 {
            return Err(bad(&parent, "#address-cells", "is 0: a CPU's reg, its MPIDR, takes 1 or 2 cells"));
        }
        let cpus = parent.children().filter(|node| string_property(node, "device_type") == Some("cpu"));
        for node in cpus.filter(is_enabled) {
            let reg = node.property("reg").ok_or(bad(&node, "reg", "is missing: the CPU has no MPIDR"))?;
            let mpidr = match read_cells(reg.value, reg_cells) {
                Some((mpidr, [])) => mpidr,
                _ => return Err(bad(&node, "reg", "is not #address-cells of /cpus long")),
            };
            if mpidr & !MPIDR_AFFINITY != 0 {
                return Err(bad(&node, "reg", "has bits outside the MPIDR's affinity fields (Aff3..Aff0)"));
            }
            if list.iter().any(|cpu: &Cpu<'_>| cpu.mpidr == mpidr) {
                return Err(bad(&node, "reg", "repeats the MPIDR of another CPU"));
            }
            let start = match string_property(&node, "enable-method") {
                Some("psci") => CpuStart::Psci,
                Some("spin-table") => {
                    let release = node.property("cpu-release-addr").map(|property| read_cells(property.value, 2));
                    match release {
                        Some(Some((address, []))) => CpuStart::SpinTable { release: PhysAddr::new(address) },
                        _ => return Err(bad(&node, "cpu-release-addr", "is not one 64-bit address (two cells)")),
                    }
                }
                _ => CpuStart::None,
            };
            let cpu = Cpu { name: node.name, mpidr, start };
            list.try_push(cpu).map_err(|_| Error::TooManyRanges { what: "CPUs" })?;
        }
        Ok(list)
    }

    /// Every RAM range of every `/memory` node, in the order listed.
    pub fn memory(&self) -> Result<RangeList, Error<'a>> {
        let Some(root) = self.root() else { return Err(Error::NoMemory) };
        let mut ram = RangeList::new();
        let memory_nodes =
            root.children().filter(|node| string_property(node, "device_type") == Some("memory") && is_enabled(node));
        for node in memory_nodes {
            for range in parse_reg(&node, &root)? {
                if !range.is_empty() {
                    ram.try_push(range).map_err(|_| Error::TooManyRanges { what: "RAM ranges" })?;
                }
            }
        }
        if ram.is_empty() {
            return Err(Error::NoMemory);
        }
        Ok(ram)
    }

    /// The `/memreserve/` entries and the static (`reg`) children of `/reserved-memory`.
    ///
    /// Dynamic reservations (`size` without `reg`) ask the kernel to choose a place; they are
    /// not reservations of fixed bytes and are not listed here.
    pub fn reservations(&self) -> Result<ArrayVec<Reservation<'a>, MAX_RANGES>, Error<'a>> {
        let mut reservations = ArrayVec::new();
        let too_many = |_| Error::TooManyRanges { what: "memory reservations" };
        for entry in self.fdt.memory_reservations() {
            let range = checked_range(entry.address() as u64, entry.size() as u64, "/memreserve/")?;
            if !range.is_empty() {
                reservations.try_push(Reservation { range, label: "/memreserve/", no_map: false }).map_err(too_many)?;
            }
        }
        let Some(parent) = self.node("/reserved-memory") else { return Ok(reservations) };
        for child in parent.children().filter(is_enabled) {
            if child.property("reg").is_none() {
                continue;
            }
            let no_map = child.property("no-map").is_some();
            for range in parse_reg(&child, &parent)? {
                reservations.try_push(Reservation { range, label: child.name, no_map }).map_err(too_many)?;
            }
        }
        Ok(reservations)
    }

    /// Every enabled `restricted-dma-pool` child of `/reserved-memory`, validated as Linux
    /// validates them (see [`crate::dma_config`]). Static pools are also in
    /// [`Self::reservations`], under the same name.
    pub fn restricted_pools(&self) -> Result<ArrayVec<RestrictedPool<'a>, MAX_POOLS>, Error<'a>> {
        dma_config::restricted_pools(&self.fdt)
    }

    /// The device named by `/chosen/stdout-path` (an alias or a path, options after `:`).
    pub fn stdout(&self) -> Result<Option<Device<'a>>, Error<'a>> {
        let Some(chosen) = self.node("/chosen") else { return Ok(None) };
        let Some(stdout_path) = string_property(&chosen, "stdout-path") else { return Ok(None) };
        let name = stdout_path.split(':').next().unwrap_or(stdout_path);
        let (path, alias) = if name.starts_with('/') {
            (name, None)
        } else {
            // An alias names a path, never another alias, so this is one step, not a chain.
            let path = self
                .node("/aliases")
                .and_then(|aliases| string_property(&aliases, name))
                .ok_or(Error::StdoutAliasUndefined { alias: name })?;
            (path, Some(name))
        };
        let located = self.locate(path).ok_or(Error::StdoutNotFound { path, alias })?;
        self.device(&located).map(Some)
    }

    /// The PSCI conduit, if the machine has PSCI firmware (`/psci` node).
    pub fn psci(&self) -> Result<Option<PsciConduit>, Error<'a>> {
        let Some(psci) = self.node("/psci") else { return Ok(None) };
        match string_property(&psci, "method") {
            Some("hvc") => Ok(Some(PsciConduit::Hvc)),
            Some("smc") => Ok(Some(PsciConduit::Smc)),
            _ => Err(Error::BadProperty { node: psci.name, property: "method", problem: "is not \"hvc\" or \"smc\"" }),
        }
    }

    /// A one-cell property of `device` (`brcm,dma-channel-mask`, say); `None` if absent.
    /// Devices are told apart by node name, as [`Device::name`] explains.
    pub fn u32_property(&self, device: &Device<'_>, property: &'static str) -> Result<Option<u32>, Error<'a>> {
        let Some(node) = self.fdt.all_nodes().find(|node| node.name == device.name) else { return Ok(None) };
        let Some(value) = node.property(property) else { return Ok(None) };
        let not_one_cell = Error::BadProperty { node: node.name, property, problem: "is not one 32-bit cell" };
        let cell: [u8; 4] = value.value.try_into().map_err(|_| not_one_cell)?;
        Ok(Some(u32::from_be_bytes(cell)))
    }

    /// Every enabled device with one of the given `compatible` strings, in document order.
    pub fn compatible_devices(&self, wanted: &[&str]) -> Result<ArrayVec<Device<'a>, MAX_RANGES>, Error<'a>> {
        let mut found = ArrayVec::new();
        self.visit_compatible(wanted, &mut |located| {
            let device = self.device(located)?;
            found.try_push(device).map_err(|_| Error::TooManyRanges { what: "matching devices" })
        })?;
        Ok(found)
    }

    /// Calls `visit` on every enabled node with one of the given `compatible` strings, in
    /// document order, stopping at the first error.
    pub(crate) fn visit_compatible<'b>(
        &'b self,
        wanted: &[&str],
        visit: &mut dyn FnMut(&Located<'b, 'a>) -> Result<(), Error<'a>>,
    ) -> Result<(), Error<'a>> {
        let Some(root) = self.root() else { return Ok(()) };
        Self::walk_compatible(root, &mut ArrayVec::new(), wanted, visit)
    }

    /// Recurses once per level: validation bounded the nesting to [`MAX_DEPTH`], and the
    /// ancestor list, as long as that, stops the walk should it ever be deeper.
    fn walk_compatible<'b>(
        node: FdtNode<'b, 'a>,
        ancestors: &mut ArrayVec<FdtNode<'b, 'a>, MAX_DEPTH>,
        wanted: &[&str],
        visit: &mut dyn FnMut(&Located<'b, 'a>) -> Result<(), Error<'a>>,
    ) -> Result<(), Error<'a>> {
        let matches = node.compatible().is_some_and(|c| c.all().any(|c| wanted.contains(&c)));
        if matches && is_enabled(&node) {
            visit(&Located { node, ancestors: ancestors.clone() })?;
        }
        if ancestors.try_push(node).is_err() {
            return Ok(());
        }
        for child in node.children() {
            Self::walk_compatible(child, ancestors, wanted, visit)?;
        }
        ancestors.pop();
        Ok(())
    }

    /// The node whose `phandle` property is `phandle`.
    pub(crate) fn node_by_phandle(&self, phandle: u32) -> Option<FdtNode<'_, 'a>> {
        self.fdt.find_phandle(phandle)
    }

    /// The root node: the first node of the structure block, which validation checked is
    /// there. `fdt`'s own `root()` panics when its lookup of `/` fails.
    fn root(&self) -> Option<FdtNode<'_, 'a>> {
        self.fdt.all_nodes().next()
    }

    /// The node at `path`. Unlike `Fdt::find_node`, a path that is not found is not tried again
    /// as an alias name.
    fn node(&self, path: &str) -> Option<FdtNode<'_, 'a>> {
        self.locate(path).map(|located| located.node)
    }

    /// Walks from the root along `path`, remembering the nodes passed on the way. A component
    /// without a unit address matches the first child of that name whatever its address.
    pub(crate) fn locate(&self, path: &str) -> Option<Located<'_, 'a>> {
        let mut node = self.root()?;
        let mut ancestors = ArrayVec::new();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let child = node.children().find(|child| {
                child.name == component || (!component.contains('@') && child.name.split('@').next() == Some(component))
            })?;
            ancestors.try_push(node).ok()?;
            node = child;
        }
        Some(Located { node, ancestors })
    }

    /// The first node named `name` (with its unit address) in document order, with every node
    /// above it: how a [`Device`] is found again, as [`Device::name`] explains.
    pub(crate) fn locate_named(&self, name: &str) -> Option<Located<'_, 'a>> {
        Self::find_first(self.root()?, &mut ArrayVec::new(), &|node| node.name == name)
    }

    /// The first enabled node, in document order, with one of the given `compatible` strings:
    /// what [`Self::visit_compatible`] visits first, found without walking the rest of the tree.
    pub(crate) fn first_compatible(&self, wanted: &[&str]) -> Option<Located<'_, 'a>> {
        let matches = |node: &FdtNode<'_, 'a>| {
            node.compatible().is_some_and(|c| c.all().any(|c| wanted.contains(&c))) && is_enabled(node)
        };
        Self::find_first(self.root()?, &mut ArrayVec::new(), &matches)
    }

    /// [`Self::first_compatible`]'s node, without the nodes above it: found by one linear pass
    /// over the structure block, which reads each property once, where a walk down from the root
    /// reads a node's properties again at every level above it.
    pub(crate) fn first_compatible_node(&self, wanted: &[&str]) -> Option<FdtNode<'_, 'a>> {
        self.fdt
            .all_nodes()
            .find(|node| node.compatible().is_some_and(|c| c.all().any(|c| wanted.contains(&c))) && is_enabled(node))
    }

    /// The first node at or below `node`, in document order, that `matches`. Recurses once per
    /// level, bounded as [`Self::walk_compatible`] is.
    fn find_first<'b>(
        node: FdtNode<'b, 'a>,
        ancestors: &mut ArrayVec<FdtNode<'b, 'a>, MAX_DEPTH>,
        matches: &dyn Fn(&FdtNode<'b, 'a>) -> bool,
    ) -> Option<Located<'b, 'a>> {
        if matches(&node) {
            return Some(Located { node, ancestors: ancestors.clone() });
        }
        ancestors.try_push(node).ok()?;
        let found = node.children().find_map(|child| Self::find_first(child, ancestors, matches));
        ancestors.pop();
        found
    }

    pub(crate) fn device(&self, located: &Located<'_, 'a>) -> Result<Device<'a>, Error<'a>> {
        let node = &located.node;
        let regs = translated_regs(located)?;
        let compatible = node.property("compatible").map_or(&[][..], |p| p.value);
        let dma = dma_config::describe(&self.fdt, node, &located.ancestors)?;
        Ok(Device { name: node.name, compatible, regs, dma })
    }
}

/// The `reg` ranges of a located node, each translated through the `ranges` of the buses above
/// it to CPU physical addresses. None for the root, which has no parent to shape a `reg`.
pub(crate) fn translated_regs<'a>(located: &Located<'_, 'a>) -> Result<RangeList, Error<'a>> {
    let node = &located.node;
    let mut regs = RangeList::new();
    if let Some(parent) = located.ancestors.last() {
        for range in parse_reg(node, parent)? {
            let start = translate(node.name, range.start().as_u64(), &located.ancestors)?;
            let range = checked_range(start, range.size(), node.name)?;
            regs.try_push(range).map_err(|_| Error::TooManyRanges { what: "reg entries" })?;
        }
    }
    Ok(regs)
}

/// Translates a bus address of a node below `ancestors` (root first) to a physical address,
/// through the `ranges` of each ancestor below the root.
pub(crate) fn translate<'a>(node: &'a str, mut address: u64, ancestors: &[FdtNode<'_, 'a>]) -> Result<u64, Error<'a>> {
    for pair in ancestors.windows(2).rev() {
        let (parent, bus) = (&pair[0], &pair[1]);
        let Some(ranges) = bus.property("ranges") else {
            return Err(Error::Untranslatable { node, address });
        };
        if ranges.value.is_empty() {
            continue; // An empty `ranges` is the identity mapping.
        }
        let child_cells = address_cells(bus)?;
        let parent_cells = address_cells(parent)?;
        let size_cells = size_cells(bus)?;
        let entry = (child_cells + parent_cells + size_cells) * 4;
        if entry == 0 || !ranges.value.len().is_multiple_of(entry) {
            return Err(Error::RangesShape {
                bus: bus.name,
                cells: ranges.value.len() / 4,
                child_address_cells: child_cells,
                parent_address_cells: parent_cells,
                size_cells,
            });
        }
        let translated = ranges.value.chunks_exact(entry).find_map(|raw| {
            let (child_base, rest) = read_cells(raw, child_cells)?;
            let (parent_base, rest) = read_cells(rest, parent_cells)?;
            let (size, _) = read_cells(rest, size_cells)?;
            let offset = address.checked_sub(child_base).filter(|&offset| offset < size)?;
            parent_base.checked_add(offset)
        });
        address = translated.ok_or(Error::Untranslatable { node, address })?;
    }
    Ok(address)
}

/// The (address, size) pairs of `node`'s `reg`, in its parent's bus address space.
pub(crate) fn parse_reg<'a>(node: &FdtNode<'_, 'a>, parent: &FdtNode<'_, 'a>) -> Result<RangeList, Error<'a>> {
    let mut ranges = RangeList::new();
    let Some(reg) = node.property("reg") else { return Ok(ranges) };
    let address_cells = address_cells(parent)?;
    let size_cells = size_cells(parent)?;
    let entry = (address_cells + size_cells) * 4;
    let shape_error =
        Error::BadProperty { node: node.name, property: "reg", problem: reg_shape(address_cells, size_cells) };
    if entry == 0 || !reg.value.len().is_multiple_of(entry) {
        return Err(shape_error);
    }
    for raw in reg.value.chunks_exact(entry) {
        let parsed =
            read_cells(raw, address_cells).and_then(|(address, rest)| Some((address, read_cells(rest, size_cells)?.0)));
        let (address, size) = parsed.ok_or(shape_error)?;
        let range = checked_range(address, size, node.name)?;
        ranges.try_push(range).map_err(|_| Error::TooManyRanges { what: "reg entries" })?;
    }
    Ok(ranges)
}

/// Why a `reg` does not fit its parent's cell counts, in words that give the counts.
fn reg_shape(address_cells: usize, size_cells: usize) -> &'static str {
    // The problem is a `&'static str` (callers match on the variant), so each of the nine
    // layouts cell_count() lets through has its sentence spelled out.
    macro_rules! sentence {
        ($address:literal, $size:literal) => {
            concat!(
                "is not a whole number of (address, size) entries of ",
                $address,
                " + ",
                $size,
                " cells, as its parent's #address-cells = <",
                $address,
                "> and #size-cells = <",
                $size,
                "> shape them"
            )
        };
    }
    match (address_cells, size_cells) {
        (0, 0) => sentence!(0, 0),
        (0, 1) => sentence!(0, 1),
        (0, _) => sentence!(0, 2),
        (1, 0) => sentence!(1, 0),
        (1, 1) => sentence!(1, 1),
        (1, _) => sentence!(1, 2),
        (_, 0) => sentence!(2, 0),
        (_, 1) => sentence!(2, 1),
        (_, _) => sentence!(2, 2),
    }
}

fn checked_range(address: u64, size: u64, node: &str) -> Result<PhysRange, Error<'_>> {
    PhysRange::new(PhysAddr::new(address), size).ok_or(Error::BadProperty {
        node,
        property: "reg",
        problem: "describes a range that wraps past the top of the address space",
    })
}

/// Reads a big-endian number of `cells` 32-bit cells (at most two) from the front of `bytes`.
pub(crate) fn read_cells(bytes: &[u8], cells: usize) -> Option<(u64, &[u8])> {
    if cells > 2 || bytes.len() < cells * 4 {
        return None;
    }
    let (number, rest) = bytes.split_at(cells * 4);
    let value = number
        .chunks_exact(4)
        .fold(0u64, |value, cell| (value << 32) | u64::from(u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]])));
    Some((value, rest))
}

pub(crate) fn address_cells<'a>(node: &FdtNode<'_, 'a>) -> Result<usize, Error<'a>> {
    cell_count(node, "#address-cells", 2)
}

pub(crate) fn size_cells<'a>(node: &FdtNode<'_, 'a>) -> Result<usize, Error<'a>> {
    cell_count(node, "#size-cells", 1)
}

/// `#address-cells` or `#size-cells` of `node`, which must be at most 2 for a 64-bit machine.
fn cell_count<'a>(node: &FdtNode<'_, 'a>, property: &'static str, default: usize) -> Result<usize, Error<'a>> {
    let Some(value) = node.property(property) else { return Ok(default) };
    match read_cells(value.value, 1) {
        Some((cells @ 0..=2, [])) => Ok(cells as usize),
        Some((cells, [])) => Err(Error::BadCellCount { node: node.name, property, value: cells as u32 }),
        // Validation refuses these, but a query answers rather than assumes.
        _ => Err(Error::BadProperty { node: node.name, property, problem: "is not one cell" }),
    }
}

/// A one-cell property; `None` if absent.
pub(crate) fn one_cell<'a>(node: &FdtNode<'_, 'a>, property: &'static str) -> Result<Option<u32>, Error<'a>> {
    let Some(value) = node.property(property) else { return Ok(None) };
    match read_cells(value.value, 1) {
        Some((cell, [])) => Ok(Some(cell as u32)),
        _ => Err(bad(node, property, "is not one 32-bit cell")),
    }
}

/// The big-endian cells of `bytes`, whose length is a multiple of 4.
pub(crate) fn cells(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|cell| u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]))
}

/// [`Error::BadProperty`] for `property` of `node`.
pub(crate) fn bad<'a>(node: &FdtNode<'_, 'a>, property: &'static str, problem: &'static str) -> Error<'a> {
    Error::BadProperty { node: node.name, property, problem }
}

/// [`Error::BadEntryLength`] for `property` of `node`, `bytes` long.
pub(crate) fn entry_length_error<'a>(
    node: &FdtNode<'_, 'a>,
    property: &'static str,
    bytes: usize,
    entry_cells: usize,
    layout: &'static str,
) -> Error<'a> {
    Error::BadEntryLength { node: node.name, property, cells: bytes / 4, entry_cells, layout }
}

fn string_property<'a>(node: &FdtNode<'_, 'a>, name: &str) -> Option<&'a str> {
    let value = node.property(name)?.value;
    let text = value.split(|&byte| byte == 0).next()?;
    core::str::from_utf8(text).ok()
}

pub(crate) fn is_enabled(node: &FdtNode<'_, '_>) -> bool {
    matches!(string_property(node, "status"), None | Some("okay") | Some("ok"))
}

/// Checks the header and walks the structure block, and writes the blob into `storage`
/// without NOP tokens:
///
/// ```text
///  storage: header │ memory reservations │ structure (NOPs dropped) │ strings
/// ```
///
/// The `fdt` crate panics, or recurses without end, on blobs that break what it assumes, so
/// the checks here are exactly those assumptions, each refused with an error that names it:
/// - every block lies inside the blob, and the reservation block ends with a zero entry;
/// - tokens are known, nodes balanced and at most [`MAX_DEPTH`] deep, under one root node
///   whose name is empty (`fdt` finds `/` by that empty name);
/// - a node's properties all come before its first child (`fdt` skips a child by reading
///   properties, then children, then `FDT_END_NODE`, and asserts on anything else);
/// - names are NUL-terminated UTF-8 inside their block, values inside the structure block,
///   `#address-cells` and `#size-cells` one cell;
/// - no `/aliases` property has a `/` in its name. `Fdt::find_node` retries a path it does
///   not find as an alias name, and follows the alias's value with `find_node` again; an
///   alias named `/psci` whose value is `/psci` sends it round for ever. Alias names are
///   letters, digits and `-` (devicetree specification 3.3), so refusing `/` costs nothing
///   real and makes every lookup of a path stop after one alias step.
pub fn canonical_copy<'s>(blob: &[u8], storage: &'s mut [u8]) -> Result<&'s [u8], Error<'static>> {
    if blob.len() < HEADER_SIZE {
        return Err(Error::Truncated { needed: HEADER_SIZE, available: blob.len() });
    }
    let field = |index: usize| -> u32 {
        let at = index * 4;
        u32::from_be_bytes([blob[at], blob[at + 1], blob[at + 2], blob[at + 3]])
    };
    if field(0) != MAGIC {
        return Err(Error::BadMagic { found: field(0) });
    }
    let total_size = field(1) as usize;
    if total_size > blob.len() || total_size < HEADER_SIZE {
        return Err(Error::Truncated { needed: total_size.max(HEADER_SIZE), available: blob.len() });
    }
    let (version, last_compatible_version) = (field(5), field(6));
    if version < 16 || last_compatible_version > 17 {
        return Err(Error::UnsupportedVersion { version, last_compatible_version });
    }
    let blob = &blob[..total_size];
    let structure = block(blob, field(2), field(9), "structure")?;
    let strings = block(blob, field(3), field(8), "strings")?;
    let reservations = reservation_block(blob, field(4))?;
    let needed = HEADER_SIZE + reservations.len() + structure.len() + strings.len();
    if storage.len() < needed {
        return Err(Error::TooLarge { size: needed, capacity: storage.len() });
    }

    let structure_offset = HEADER_SIZE + reservations.len();
    storage[HEADER_SIZE..structure_offset].copy_from_slice(reservations);
    let structure_size = copy_structure(structure, field(2) as usize, strings, &mut storage[structure_offset..])?;
    let strings_offset = structure_offset + structure_size;
    let copy_size = strings_offset + strings.len();
    storage[strings_offset..copy_size].copy_from_slice(strings);
    let header = [
        MAGIC,
        copy_size as u32,
        structure_offset as u32,
        strings_offset as u32,
        HEADER_SIZE as u32,
        17,
        16,
        field(7),
        strings.len() as u32,
        structure_size as u32,
    ];
    for (index, value) in header.iter().enumerate() {
        storage[index * 4..index * 4 + 4].copy_from_slice(&value.to_be_bytes());
    }
    Ok(&storage[..copy_size])
}

fn block<'a>(blob: &'a [u8], offset: u32, size: u32, name: &'static str) -> Result<&'a [u8], Error<'static>> {
    let start = offset as usize;
    let end = start.checked_add(size as usize).filter(|&end| end <= blob.len());
    match end {
        Some(end) => Ok(&blob[start..end]),
        None => Err(Error::BlockOutOfBounds { block: name, offset, size, total_size: blob.len() }),
    }
}

/// The reservation block: 16-byte (address, size) entries up to and including a zero entry.
fn reservation_block(blob: &[u8], offset: u32) -> Result<&[u8], Error<'static>> {
    let start = offset as usize;
    let Some(entries) = blob.get(start..) else {
        return Err(Error::BlockOutOfBounds { block: "memory reservation", offset, size: 0, total_size: blob.len() });
    };
    if !start.is_multiple_of(8) {
        return Err(Error::Malformed { offset: start, problem: "the memory reservation block is not 8-byte aligned" });
    }
    let terminator = entries.chunks_exact(16).position(|entry| entry.iter().all(|&byte| byte == 0));
    let Some(count) = terminator.map(|index| index + 1) else {
        let problem = "the memory reservation block has no all-zero entry to end it before the blob ends";
        return Err(Error::Malformed { offset: start, problem });
    };
    Ok(&entries[..count * 16])
}

/// Walks the token stream, checking what [`canonical_copy`] lists; copies every token but
/// NOPs to `out`. Returns the bytes written.
fn copy_structure(structure: &[u8], base: usize, strings: &[u8], out: &mut [u8]) -> Result<usize, Error<'static>> {
    let mut reader = TokenReader { bytes: structure, position: 0, base };
    let mut depth = 0usize;
    let mut seen_root = false;
    // Whether the node open at each depth has had a child yet (index 0 is outside the root).
    let mut has_child = [false; MAX_DEPTH + 1];
    // Whether the node open at depth 2 (a child of the root) is an `/aliases` node.
    let mut in_aliases = false;
    let mut written = 0;
    loop {
        let token_start = reader.position;
        let at_token = |problem| Error::Malformed { offset: base + token_start, problem };
        let token = reader.u32()?;
        match token {
            TOKEN_BEGIN_NODE => {
                if seen_root && depth == 0 {
                    return Err(at_token("a second root node after the first one ended"));
                }
                if depth == MAX_DEPTH {
                    return Err(Error::TooDeep { offset: base + token_start });
                }
                has_child[depth] = true;
                depth += 1;
                has_child[depth] = false;
                let name = reader.c_string()?;
                if !seen_root && !name.is_empty() {
                    return Err(at_token("the root node has a name; the root's name must be empty"));
                }
                if depth == 2 {
                    in_aliases = name.split('@').next() == Some("aliases");
                }
                seen_root = true;
            }
            TOKEN_END_NODE => {
                depth = depth.checked_sub(1).ok_or(at_token("FDT_END_NODE with no node open"))?;
            }
            TOKEN_PROP => {
                if depth == 0 {
                    return Err(at_token("a property outside any node"));
                }
                if has_child[depth] {
                    return Err(at_token("a property after a child node; a node's properties must come first"));
                }
                let length = reader.u32()? as usize;
                let name_offset = reader.u32()? as usize;
                let name = property_name(strings, name_offset)
                    .ok_or(at_token("a property name that is not NUL-terminated UTF-8 inside the strings block"))?;
                let value = reader.take(length)?;
                let is_cell_count = name == "#address-cells" || name == "#size-cells";
                if is_cell_count && value.len() != 4 {
                    return Err(at_token("#address-cells or #size-cells is not one cell"));
                }
                if depth == 2 && in_aliases && name.contains('/') {
                    return Err(at_token(
                        "an /aliases property whose name holds '/'; alias names are letters, digits and '-'",
                    ));
                }
            }
            TOKEN_NOP => continue,
            TOKEN_END if depth == 0 && seen_root => {}
            TOKEN_END if seen_root => return Err(at_token("FDT_END while a node is still open")),
            TOKEN_END => return Err(at_token("FDT_END before the root node")),
            _ => return Err(at_token("an unknown token")),
        }
        let token_bytes = &structure[token_start..reader.position];
        out[written..written + token_bytes.len()].copy_from_slice(token_bytes);
        written += token_bytes.len();
        if token == TOKEN_END {
            return Ok(written);
        }
    }
}

/// The NUL-terminated UTF-8 string at `offset` in the strings block.
pub(crate) fn property_name(strings: &[u8], offset: usize) -> Option<&str> {
    let rest = strings.get(offset..)?;
    let length = rest.iter().position(|&byte| byte == 0)?;
    core::str::from_utf8(&rest[..length]).ok()
}

struct TokenReader<'a> {
    bytes: &'a [u8],
    position: usize,
    /// Offset of the structure block in the blob, so errors name blob offsets.
    base: usize,
}

impl<'a> TokenReader<'a> {
    fn error(&self, problem: &'static str) -> Error<'static> {
        Error::Malformed { offset: self.base + self.position, problem }
    }

    fn u32(&mut self) -> Result<u32, Error<'static>> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Takes `length` bytes and skips the padding to the next 4-byte boundary.
    fn take(&mut self, length: usize) -> Result<&'a [u8], Error<'static>> {
        let end = self.position.checked_add(length).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(self.error("a token runs past the end of the structure block"))?;
        let taken = &self.bytes[self.position..end];
        self.position = end.next_multiple_of(4).min(self.bytes.len());
        Ok(taken)
    }

    fn c_string(&mut self) -> Result<&'a str, Error<'static>> {
        let rest = &self.bytes[self.position..];
        let length = rest
            .iter()
            .position(|&byte| byte == 0)
            .ok_or(self.error("a node name with no NUL before the block ends"))?;
        let name = core::str::from_utf8(&rest[..length]).map_err(|_| self.error("a node name that is not UTF-8"))?;
        self.take(length + 1)?;
        Ok(name)
    }
}
