//! How each device reaches memory, as the devicetree describes it.
//!
//! Three properties decide what a DMA transfer of a device looks like, and each one may sit on
//! the device node or on a bus above it:
//!
//! - **`memory-region`** naming a `restricted-dma-pool` child of `/reserved-memory`: the device
//!   may only touch that pool. Every streaming mapping is bounced through it and coherent
//!   memory is allocated from it (contract rule 12). A PCI host bridge carries the property for
//!   every device below it, so the nearest node that has one decides.
//! - **`dma-ranges`** on a bus: which CPU physical addresses the bus's children can reach, and
//!   at which bus address. It is the DMA twin of `ranges`, read in the opposite direction:
//!   (child-bus address, parent-bus address, size). Levels compose up to the root. The
//!   Raspberry Pi 4's `/soc` shows both a bus offset and a limit in one entry:
//!
//! ```text
//!   soc  dma-ranges = <0xc0000000  0x0 0x00000000  0x40000000>
//!                      bus address  CPU address     size (1 GiB)
//!   ⇒ CPU 0x1000 is bus 0xc000_1000; CPU 0x4000_0000 and above are out of reach (30 bits)
//! ```
//!
//! - **`dma-coherent`** (or `dma-noncoherent`): whether the device snoops the CPU caches. The
//!   nearest node with either property decides, as Linux's `of_dma_is_coherent` does; with
//!   neither, a device on arm64 is not coherent and the kernel cleans and invalidates caches.
//!
//! Semantics chosen where the devicetree leaves room, each the one Linux follows:
//!
//! - A bus *without* `dma-ranges` translates nothing (Linux's `of_translate_one` treats a
//!   missing `dma-ranges`, unlike a missing `ranges`, as 1:1), and an empty `dma-ranges` is
//!   the identity too. A device whose buses all translate nothing has no windows: identity
//!   over the whole address space, no limit.
//! - `memory-region` entries that do not name a restricted pool (a `shared-dma-pool`, a CMA
//!   area, a framebuffer) are the driver's business and do not make the device bounce; the
//!   first entry that names a restricted pool wins (Linux's `of_dma_set_restricted_buffer`).
//!   A phandle that names no node, or names a disabled pool, is an error: a device silently
//!   falling back to direct DMA is the failure rule 12 forbids.
//! - A restricted pool must be mappable and belong to the pool alone: the CPU copies every
//!   bounce buffer through it, and no other allocator may hand its pages out. So `no-map`,
//!   `reusable`, `linux,cma-default` and `linux,dma-default` on the pool node are refused, as
//!   Linux's `rmem_swiotlb_setup` refuses them. (Where the kernel maps the pool is its own
//!   business: it keeps pools out of the linear map and maps each apart, see
//!   [`crate::memmap::MemoryMap::carve`].)

use addr::{DmaAddr, PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use core::fmt;
use fdt::Fdt;
use fdt::node::FdtNode;

use crate::devicetree::{
    Error, MAX_DEPTH, MAX_RANGES, RangeList, address_cells, is_enabled, parse_reg, read_cells, size_cells,
};
use crate::memmap::{PAGE_SIZE, Size};

/// How many restricted pools one devicetree may declare.
pub const MAX_POOLS: usize = 8;
/// How many `dma-ranges` windows one device may have after composing every bus level.
pub const MAX_WINDOWS: usize = 4;

const RESTRICTED_DMA_POOL: &str = "restricted-dma-pool";

/// Properties that make a reserved-memory node unusable as a bounce pool (see the module doc).
const FORBIDDEN_POOL_FLAGS: [&str; 4] = ["no-map", "reusable", "linux,cma-default", "linux,dma-default"];

/// A `restricted-dma-pool` child of `/reserved-memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestrictedPool<'a> {
    /// The node name, which `DmaDescription::pool` and the memory map's labels also use.
    pub name: &'a str,
    /// What `memory-region` properties refer to it by; `None` if nothing can.
    pub phandle: Option<u32>,
    /// Where its bytes are: fixed (`reg`) or chosen by the kernel (`size`).
    pub placement: PoolPlacement,
}

// The dynamic variant carries a whole `RangeList`; pools are parsed before the heap exists, so
// boxing it is not an option, and a handful of pools costs a few KiB of stack at most.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
/// Where a restricted pool's bytes come from.
pub enum PoolPlacement {
    /// `reg`: the bytes are fixed by the devicetree.
    Static(PhysRange),
    /// `size` (+ optional `alignment`, `alloc-ranges`): the kernel chooses where.
    Dynamic {
        /// How many bytes.
        size: u64,
        /// A power of two, never less than a page.
        alignment: u64,
        /// Where the pool may be placed; empty means anywhere in RAM.
        alloc_ranges: RangeList,
    },
}

impl PoolPlacement {
    /// The pool's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            PoolPlacement::Static(range) => range.size(),
            PoolPlacement::Dynamic { size, .. } => *size,
        }
    }
}

/// Why a `restricted-dma-pool` node cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolProblem {
    /// One of `no-map`, `reusable`, `linux,cma-default`, `linux,dma-default`.
    ForbiddenProperty(&'static str),
    /// `size` or `reg` says zero bytes.
    ZeroSize,
    /// The size is not whole pages.
    SizeNotPageMultiple(u64),
    /// `alignment` is not a power of two.
    AlignmentNotPowerOfTwo(u64),
    /// A static pool that starts inside a page it would share with its neighbour.
    StartNotPageAligned(PhysAddr),
    /// Neither `reg` nor `size`: nothing says how large the pool is.
    NoRegOrSize,
    /// `reg` lists several ranges; a pool is one contiguous range.
    SeveralRegEntries,
}

impl fmt::Display for PoolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PoolProblem::ForbiddenProperty(property) => write!(
                f,
                "has '{property}', which Linux refuses too: the CPU must map a bounce pool to copy \
                 buffers through it, and no other allocator may hand its pages out"
            ),
            PoolProblem::ZeroSize => write!(f, "has size zero"),
            PoolProblem::SizeNotPageMultiple(size) => {
                write!(f, "has size {size:#x}, not a multiple of the {PAGE_SIZE}-byte page")
            }
            PoolProblem::AlignmentNotPowerOfTwo(alignment) => {
                write!(f, "has alignment {alignment:#x}, not a power of two")
            }
            PoolProblem::StartNotPageAligned(start) => write!(f, "starts at {start}, not on a page boundary"),
            PoolProblem::NoRegOrSize => write!(f, "has neither 'reg' nor 'size'"),
            PoolProblem::SeveralRegEntries => write!(f, "lists several ranges in 'reg'; a pool is one range"),
        }
    }
}

/// How one device reaches memory: the CPU physical range `[cpu_start, cpu_start + size)`
/// appears to the device at bus address `bus_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWindow {
    /// Where the window starts in CPU physical addresses.
    pub cpu_start: PhysAddr,
    /// Where the device sees that start.
    pub bus_start: DmaAddr,
    /// How many bytes it covers.
    pub size: u64,
}

impl DmaWindow {
    /// One past the last CPU address of the window (saturating, for hand-built windows).
    pub fn cpu_end(&self) -> PhysAddr {
        PhysAddr::new(self.cpu_start.as_u64().saturating_add(self.size))
    }

    fn phys_to_dma(&self, phys: PhysAddr) -> Option<DmaAddr> {
        let offset = phys.offset_from(self.cpu_start).filter(|&offset| offset < self.size)?;
        self.bus_start.checked_add(offset)
    }

    fn dma_to_phys(&self, dma: DmaAddr) -> Option<PhysAddr> {
        let offset = dma.offset_from(self.bus_start).filter(|&offset| offset < self.size)?;
        self.cpu_start.checked_add(offset)
    }
}

/// One device's DMA description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaDescription<'a> {
    /// The restricted pool (its node name) named by `memory-region` on the device or on an
    /// ancestor bus; `None` = direct DMA.
    pub pool: Option<&'a str>,
    /// The node whose `memory-region` named the pool: the device itself, or the bus above it.
    pub pool_named_by: Option<&'a str>,
    /// Windows from the `dma-ranges` of every ancestor bus, composed down to the root;
    /// empty = identity over the whole address space.
    pub windows: ArrayVec<DmaWindow, MAX_WINDOWS>,
    /// `dma-coherent` on the device or an ancestor (Linux `of_dma_is_coherent` semantics): the
    /// device snoops CPU caches.
    pub coherent: bool,
}

impl DmaDescription<'_> {
    /// The bus address the device must be given for `phys`; `None` if no window covers it.
    pub fn phys_to_dma(&self, phys: PhysAddr) -> Option<DmaAddr> {
        if self.windows.is_empty() {
            return Some(DmaAddr::new(phys.as_u64()));
        }
        self.windows.iter().find_map(|window| window.phys_to_dma(phys))
    }

    /// The CPU physical address behind bus address `dma`; `None` if no window covers it.
    pub fn dma_to_phys(&self, dma: DmaAddr) -> Option<PhysAddr> {
        if self.windows.is_empty() {
            return Some(PhysAddr::new(dma.as_u64()));
        }
        self.windows.iter().find_map(|window| window.dma_to_phys(dma))
    }

    /// One past the highest CPU physical address the device can reach (Linux: the bus limit
    /// from `dma-ranges`); `None` when nothing limits it (no windows).
    ///
    /// Windows may leave holes below the limit; [`Self::reaches`] answers for a whole range.
    pub fn limit(&self) -> Option<PhysAddr> {
        self.windows.iter().map(DmaWindow::cpu_end).max()
    }

    /// Whether the device can reach every byte of `range` through one window, so that one
    /// contiguous bus range describes it (what a bounce pool needs).
    pub fn reaches(&self, range: PhysRange) -> bool {
        self.windows.is_empty()
            || self.windows.iter().any(|window| range.start() >= window.cpu_start && range.end() <= window.cpu_end())
    }
}

/// The lowest [`DmaDescription::limit`] among the devices of a pool: where the kernel must
/// place a dynamic pool so that every one of them can reach it. `None`: no limit.
pub fn lowest_limit<'d, 'a: 'd>(devices: impl IntoIterator<Item = &'d DmaDescription<'a>>) -> Option<PhysAddr> {
    devices.into_iter().filter_map(DmaDescription::limit).min()
}

impl fmt::Display for DmaDescription<'_> {
    /// One row of the boot log's DMA table: `bounce via 'pool' (memory-region on soc), bus =
    /// cpu + 0xc0000000, limit 0x40000000 (1 GiB), non-coherent`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pool, self.pool_named_by) {
            (Some(pool), Some(by)) => write!(f, "bounce via '{pool}' (memory-region on {by})")?,
            (Some(pool), None) => write!(f, "bounce via '{pool}'")?,
            (None, _) => write!(f, "direct")?,
        }
        match self.windows.as_slice() {
            [] => write!(f, ", bus = cpu")?,
            [window] => {
                let (bus, cpu) = (window.bus_start.as_u64(), window.cpu_start.as_u64());
                match bus.cmp(&cpu) {
                    core::cmp::Ordering::Equal => write!(f, ", bus = cpu")?,
                    core::cmp::Ordering::Greater => write!(f, ", bus = cpu + {:#x}", bus - cpu)?,
                    core::cmp::Ordering::Less => write!(f, ", bus = cpu - {:#x}", cpu - bus)?,
                }
            }
            windows => write!(f, ", {} dma-ranges windows", windows.len())?,
        }
        match self.limit() {
            Some(limit) => write!(f, ", limit {limit} ({})", Size(limit.as_u64()))?,
            None => write!(f, ", no limit")?,
        }
        f.write_str(if self.coherent { ", coherent" } else { ", non-coherent" })
    }
}

/// The windows of a device in words, for messages: `[0x0000000000..0x0040000000) at bus
/// 0xc0000000, limit 0x40000000 (1 GiB)`; every address when it has none.
struct Reach<'d>(&'d DmaDescription<'d>);

impl fmt::Display for Reach<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.0.windows.split_first() else { return write!(f, "every address") };
        for (index, window) in core::iter::once(first).chain(rest).enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            match PhysRange::new(window.cpu_start, window.size) {
                Some(range) => write!(f, "{separator}{range} at bus {}", window.bus_start)?,
                None => {
                    write!(f, "{separator}{} bytes from {} at bus {}", window.size, window.cpu_start, window.bus_start)?
                }
            }
        }
        match self.0.limit() {
            Some(limit) => write!(f, ", limit {limit} ({})", Size(limit.as_u64())),
            None => Ok(()),
        }
    }
}

/// Why the devices of a pool cannot all use it at one bus address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolReachError<'a> {
    /// A device of the pool cannot reach all of it through one of its windows.
    Unreachable {
        /// The pool.
        pool: &'a str,
        /// Where it lies.
        range: PhysRange,
        /// The device.
        device: &'a str,
        /// The device's view of memory.
        dma: DmaDescription<'a>,
    },
    /// Two devices of the pool reach it at different bus addresses: one pool address (a bounce
    /// slot's DMA address is the pool's plus the slot's offset) cannot serve both.
    AddressedTwoWays {
        /// The pool.
        pool: &'a str,
        /// Where it lies.
        range: PhysRange,
        /// One device and the bus address it sees the pool at.
        first: (&'a str, DmaAddr),
        /// Another device and its different bus address.
        other: (&'a str, DmaAddr),
    },
}

impl fmt::Display for PoolReachError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolReachError::Unreachable { pool, range, device, dma } => write!(
                f,
                "DMA pool '{pool}' {range}: its device '{device}' cannot reach all of it; the device reaches {}",
                Reach(dma)
            ),
            PoolReachError::AddressedTwoWays { pool, range, first, other } => write!(
                f,
                "DMA pool '{pool}' {range}: its device '{}' reaches it at bus {}, its device '{}' at bus {}; the \
                 devices of one pool must agree on one bus address",
                first.0, first.1, other.0, other.1
            ),
        }
    }
}

/// The bus address at which every one of `devices` (name, DMA description) reaches the pool
/// `pool` at CPU `range`: each must reach all of it through one window, and all at the same
/// address. With no device, the CPU address.
// The error carries the device's windows by value: this crate has no heap to box them in.
#[allow(clippy::result_large_err)]
pub fn pool_bus_address<'a: 'd, 'd>(
    pool: &'a str,
    range: PhysRange,
    devices: impl IntoIterator<Item = (&'a str, &'d DmaDescription<'a>)>,
) -> Result<DmaAddr, PoolReachError<'a>> {
    let address = |(device, dma): (&'a str, &'d DmaDescription<'a>)| match dma.phys_to_dma(range.start()) {
        Some(base) if dma.reaches(range) => Ok((device, base)),
        _ => Err(PoolReachError::Unreachable { pool, range, device, dma: dma.clone() }),
    };
    let mut devices = devices.into_iter().map(address);
    let Some(first) = devices.next().transpose()? else { return Ok(DmaAddr::new(range.start().as_u64())) };
    for other in devices {
        let other = other?;
        if other.1 != first.1 {
            return Err(PoolReachError::AddressedTwoWays { pool, range, first, other });
        }
    }
    Ok(first.1)
}

/// Every enabled `restricted-dma-pool` child of `/reserved-memory`, validated.
pub(crate) fn restricted_pools<'a>(fdt: &Fdt<'a>) -> Result<ArrayVec<RestrictedPool<'a>, MAX_POOLS>, Error<'a>> {
    let mut pools = ArrayVec::new();
    let Some(parent) = fdt.find_node("/reserved-memory") else { return Ok(pools) };
    for node in parent.children().filter(|node| is_restricted_pool(node) && is_enabled(node)) {
        let pool = RestrictedPool { name: node.name, phandle: phandle(&node)?, placement: placement(&node, &parent)? };
        pools.try_push(pool).map_err(|_| Error::TooManyRanges { what: "restricted DMA pools" })?;
    }
    Ok(pools)
}

fn placement<'a>(node: &FdtNode<'_, 'a>, parent: &FdtNode<'_, 'a>) -> Result<PoolPlacement, Error<'a>> {
    let bad_pool = |problem| Error::BadPool { node: node.name, problem };
    if let Some(flag) = FORBIDDEN_POOL_FLAGS.into_iter().find(|&flag| node.property(flag).is_some()) {
        return Err(bad_pool(PoolProblem::ForbiddenProperty(flag)));
    }
    if node.property("reg").is_some() {
        // `reg` wins over `size` when both are present, as in Linux.
        let reg = parse_reg(node, parent)?;
        let [range] = reg.as_slice() else {
            return Err(match reg.len() {
                0 => Error::BadProperty { node: node.name, property: "reg", problem: "is empty" },
                _ => bad_pool(PoolProblem::SeveralRegEntries),
            });
        };
        check_size(range.size()).map_err(bad_pool)?;
        if !range.start().is_aligned(PAGE_SIZE) {
            return Err(bad_pool(PoolProblem::StartNotPageAligned(range.start())));
        }
        return Ok(PoolPlacement::Static(*range));
    }
    let size_cells = size_cells(parent)?;
    let Some(size) = number_property(node, "size", size_cells)? else {
        return Err(bad_pool(PoolProblem::NoRegOrSize));
    };
    check_size(size).map_err(bad_pool)?;
    let alignment = number_property(node, "alignment", size_cells)?.unwrap_or(PAGE_SIZE);
    if !alignment.is_power_of_two() {
        return Err(bad_pool(PoolProblem::AlignmentNotPowerOfTwo(alignment)));
    }
    let alloc_ranges = alloc_ranges(node, parent)?;
    Ok(PoolPlacement::Dynamic { size, alignment: alignment.max(PAGE_SIZE), alloc_ranges })
}

fn check_size(size: u64) -> Result<(), PoolProblem> {
    match size {
        0 => Err(PoolProblem::ZeroSize),
        size if !size.is_multiple_of(PAGE_SIZE) => Err(PoolProblem::SizeNotPageMultiple(size)),
        _ => Ok(()),
    }
}

/// `alloc-ranges`: (address, size) pairs shaped like `reg`. Each way it can be wrong is an
/// error of its own, so that the message says which.
fn alloc_ranges<'a>(node: &FdtNode<'_, 'a>, parent: &FdtNode<'_, 'a>) -> Result<RangeList, Error<'a>> {
    let mut ranges = RangeList::new();
    let Some(property) = node.property("alloc-ranges") else { return Ok(ranges) };
    let (address_cells, size_cells) = (address_cells(parent)?, size_cells(parent)?);
    let bad = |problem| Error::BadProperty { node: node.name, property: "alloc-ranges", problem };
    let entry = (address_cells + size_cells) * 4;
    if entry == 0 {
        return Err(bad("cannot be read: /reserved-memory's #address-cells and #size-cells are both 0"));
    }
    if property.value.is_empty() {
        return Err(bad("is empty"));
    }
    if !property.value.len().is_multiple_of(entry) {
        let cells = property.value.len() / 4;
        let layout = "address, size";
        return Err(Error::BadEntryLength {
            node: node.name,
            property: "alloc-ranges",
            cells,
            entry_cells: entry / 4,
            layout,
        });
    }
    for raw in property.value.chunks_exact(entry) {
        // Whole entries of the parent's cell counts: both reads succeed.
        let (address, rest) = read_cells(raw, address_cells).ok_or(bad("is malformed"))?;
        let (size, _) = read_cells(rest, size_cells).ok_or(bad("is malformed"))?;
        if size == 0 {
            return Err(bad("has an entry of size zero"));
        }
        let range = PhysRange::new(PhysAddr::new(address), size)
            .ok_or(bad("has an entry that runs past the top of the address space"))?;
        ranges.try_push(range).map_err(|_| Error::TooManyRanges { what: "alloc-ranges entries" })?;
    }
    Ok(ranges)
}

/// A property holding exactly one number of `cells` cells; `None` if absent.
fn number_property<'a>(node: &FdtNode<'_, 'a>, property: &'static str, cells: usize) -> Result<Option<u64>, Error<'a>> {
    let Some(value) = node.property(property) else { return Ok(None) };
    match read_cells(value.value, cells) {
        Some((number, [])) if cells > 0 => Ok(Some(number)),
        _ => Err(Error::BadProperty { node: node.name, property, problem: "is not one number of #size-cells cells" }),
    }
}

/// `phandle` (or the older `linux,phandle`), which must be one cell.
fn phandle<'a>(node: &FdtNode<'_, 'a>) -> Result<Option<u32>, Error<'a>> {
    for property in ["phandle", "linux,phandle"] {
        if let Some(value) = node.property(property) {
            return match read_cells(value.value, 1) {
                Some((phandle, [])) => Ok(Some(phandle as u32)),
                _ => Err(Error::BadProperty { node: node.name, property, problem: "is not one cell" }),
            };
        }
    }
    Ok(None)
}

fn is_restricted_pool(node: &FdtNode<'_, '_>) -> bool {
    node.compatible().is_some_and(|compatible| compatible.all().any(|c| c == RESTRICTED_DMA_POOL))
}

/// The DMA description of `node`, whose ancestors (root first) are `ancestors`.
pub(crate) fn describe<'a>(
    fdt: &Fdt<'a>,
    node: &FdtNode<'_, 'a>,
    ancestors: &[FdtNode<'_, 'a>],
) -> Result<DmaDescription<'a>, Error<'a>> {
    let (pool, pool_named_by) = match restricted_pool_of(fdt, node, ancestors)? {
        Some((pool, by)) => (Some(pool), Some(by)),
        None => (None, None),
    };
    let windows = dma_windows(node.name, ancestors)?;
    Ok(DmaDescription { pool, pool_named_by, windows, coherent: is_coherent(node, ancestors) })
}

/// The device, then its ancestors nearest first: the order in which properties are inherited.
fn self_and_ancestors<'n, 'b, 'a>(
    node: &'n FdtNode<'b, 'a>,
    ancestors: &'n [FdtNode<'b, 'a>],
) -> impl Iterator<Item = &'n FdtNode<'b, 'a>> {
    core::iter::once(node).chain(ancestors.iter().rev())
}

fn is_coherent(node: &FdtNode<'_, '_>, ancestors: &[FdtNode<'_, '_>]) -> bool {
    self_and_ancestors(node, ancestors)
        .find_map(|node| match (node.property("dma-coherent"), node.property("dma-noncoherent")) {
            (Some(_), _) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        })
        .unwrap_or(false) // arm64's default: devices do not snoop
}

/// The restricted pool named by the nearest `memory-region`, and the node that carries it.
fn restricted_pool_of<'a>(
    fdt: &Fdt<'a>,
    device: &FdtNode<'_, 'a>,
    ancestors: &[FdtNode<'_, 'a>],
) -> Result<Option<(&'a str, &'a str)>, Error<'a>> {
    let Some(carrier) = self_and_ancestors(device, ancestors).find(|node| node.property("memory-region").is_some())
    else {
        return Ok(None);
    };
    let Some(list) = carrier.property("memory-region") else { return Ok(None) };
    if list.value.is_empty() || !list.value.len().is_multiple_of(4) {
        let problem = "is not a list of phandles";
        return Err(Error::BadProperty { node: carrier.name, property: "memory-region", problem });
    }
    for cell in list.value.chunks_exact(4) {
        let phandle = u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]);
        let bad_region =
            |problem| Error::BadMemoryRegion { device: device.name, carrier: carrier.name, phandle, problem };
        let target = find_phandle(fdt, phandle)?.ok_or(bad_region("names no node"))?;
        if !is_restricted_pool(&target.node) {
            continue; // a shared-dma-pool, CMA, a framebuffer: the driver's business, not bouncing
        }
        if !target.in_reserved_memory {
            return Err(bad_region("names a restricted-dma-pool that is not a child of /reserved-memory"));
        }
        if !is_enabled(&target.node) {
            return Err(bad_region("names a restricted-dma-pool that is disabled"));
        }
        return Ok(Some((target.node.name, carrier.name)));
    }
    Ok(None)
}

struct PhandleTarget<'b, 'a> {
    node: FdtNode<'b, 'a>,
    in_reserved_memory: bool,
}

fn find_phandle<'b, 'a>(fdt: &'b Fdt<'a>, wanted: u32) -> Result<Option<PhandleTarget<'b, 'a>>, Error<'a>> {
    if let Some(reserved) = fdt.find_node("/reserved-memory") {
        for node in reserved.children() {
            if phandle(&node)? == Some(wanted) {
                return Ok(Some(PhandleTarget { node, in_reserved_memory: true }));
            }
        }
    }
    for node in fdt.all_nodes() {
        if phandle(&node)? == Some(wanted) {
            return Ok(Some(PhandleTarget { node, in_reserved_memory: false }));
        }
    }
    Ok(None)
}

/// The device's windows: each bus's `dma-ranges`, from the device's parent up to the root,
/// composed. `None` while every level so far was the identity.
fn dma_windows<'a>(
    device: &'a str,
    ancestors: &[FdtNode<'_, 'a>],
) -> Result<ArrayVec<DmaWindow, MAX_WINDOWS>, Error<'a>> {
    debug_assert!(ancestors.len() <= MAX_DEPTH);
    let mut composed: Option<ArrayVec<DmaWindow, MAX_WINDOWS>> = None;
    for pair in ancestors.windows(2).rev() {
        let (parent, bus) = (&pair[0], &pair[1]);
        let Some(level) = bus.property("dma-ranges").filter(|ranges| !ranges.value.is_empty()) else {
            continue; // absent or empty: this bus does not translate
        };
        let entries = dma_ranges_entries(bus, parent, level.value)?;
        let next = compose(composed.as_deref(), &entries, bus.name)?;
        if next.is_empty() {
            return Err(Error::DmaUnreachable { node: device, bus: bus.name });
        }
        composed = Some(next);
    }
    Ok(composed.unwrap_or_default())
}

/// One bus's `dma-ranges`, as windows from its child-bus addresses (`bus_start`) to its
/// parent-bus addresses (`cpu_start`, which is a CPU address once the root is reached).
fn dma_ranges_entries<'a>(
    bus: &FdtNode<'_, 'a>,
    parent: &FdtNode<'_, 'a>,
    value: &[u8],
) -> Result<ArrayVec<DmaWindow, MAX_RANGES>, Error<'a>> {
    let child_cells = address_cells(bus)?;
    let parent_cells = address_cells(parent)?;
    let size_cells = size_cells(bus)?;
    let bad = |problem| Error::BadProperty { node: bus.name, property: "dma-ranges", problem };
    let entry = (child_cells + parent_cells + size_cells) * 4;
    if entry == 0 || !value.len().is_multiple_of(entry) {
        return Err(bad("does not match #address-cells/#size-cells"));
    }
    let mut entries = ArrayVec::new();
    for raw in value.chunks_exact(entry) {
        let parsed = read_cells(raw, child_cells).and_then(|(child, rest)| {
            let (parent, rest) = read_cells(rest, parent_cells)?;
            Some((child, parent, read_cells(rest, size_cells)?.0))
        });
        let (child, parent, size) = parsed.ok_or(bad("does not match #address-cells/#size-cells"))?;
        if size == 0 {
            return Err(bad("has an entry of size zero"));
        }
        if child.checked_add(size).is_none() || parent.checked_add(size).is_none() {
            return Err(bad("describes a range that wraps past the top of the address space"));
        }
        let window = DmaWindow { cpu_start: PhysAddr::new(parent), bus_start: DmaAddr::new(child), size };
        entries.try_push(window).map_err(|_| Error::TooManyRanges { what: "dma-ranges entries" })?;
    }
    Ok(entries)
}

/// Composes the windows found so far (device bus address → this bus's child address) with one
/// more level (child address → parent address): every overlap of the two becomes a window.
fn compose<'a>(
    below: Option<&[DmaWindow]>,
    level: &[DmaWindow],
    bus: &'a str,
) -> Result<ArrayVec<DmaWindow, MAX_WINDOWS>, Error<'a>> {
    let too_many = |_| Error::BadProperty {
        node: bus,
        property: "dma-ranges",
        problem: "composes into more windows than the kernel keeps per device",
    };
    let mut composed = ArrayVec::new();
    let Some(below) = below else {
        for window in level {
            composed.try_push(*window).map_err(too_many)?;
        }
        return Ok(composed);
    };
    for inner in below {
        for outer in level {
            // `inner.cpu_start` and `outer.bus_start` are both addresses on this bus.
            let inner_range = PhysRange::new(inner.cpu_start, inner.size);
            let outer_range = PhysRange::new(PhysAddr::new(outer.bus_start.as_u64()), outer.size);
            let Some(shared) = inner_range.zip(outer_range).and_then(|(a, b)| a.intersection(&b)) else { continue };
            let from_inner = shared.start().offset_from(inner.cpu_start).unwrap_or(0);
            let from_outer = shared.start().as_u64() - outer.bus_start.as_u64();
            // Both sums stay inside windows whose ends were checked not to wrap.
            let (Some(cpu_start), Some(bus_start)) =
                (outer.cpu_start.checked_add(from_outer), inner.bus_start.checked_add(from_inner))
            else {
                continue;
            };
            let window = DmaWindow { cpu_start, bus_start, size: shared.size() };
            composed.try_push(window).map_err(too_many)?;
        }
    }
    Ok(composed)
}
