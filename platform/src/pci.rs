//! PCI Express host bridges, and the SMMUv3 that translates their devices' DMA.
//!
//! A PCIe host bridge (the root complex) joins the CPU's physical address space to a tree of
//! PCI buses. The devicetree describes one with a `pci-host-ecam-generic` node that answers
//! four questions, each in its own properties.
//!
//! **Where are the configuration registers?** (`reg`, `bus-range`.) Every PCI function has
//! 4 KiB of configuration space (IDs, command register, BARs, capabilities). The Enhanced
//! Configuration Access Mechanism (PCIe Base Specification 5.0, §7.2.2, Table 7-1) lays all of
//! them out in one memory region, a 1 MiB slice per bus, counted from the first bus of
//! `bus-range`:
//!
//! ```text
//!   ECAM offset = (bus - first bus) << 20 | device << 15 | function << 12 | register
//!                  bits 27:20                 19:15          14:12          11:0
//! ```
//!
//! So 256 buses need 256 MiB; QEMU `virt` has `reg = <0x40 0x10000000 0x0 0x10000000>`, 256 MiB
//! at `0x40_1000_0000` for buses 0 to 255.
//!
//! **Where may BARs go?** (`ranges`.) A device asks for address space through its Base Address
//! Registers (PCI Local Bus 3.0, §6.2.5.1); the bridge forwards CPU accesses inside its windows
//! to PCI addresses. An address on a PCI bus is three cells (IEEE 1275 PCI Bus Binding 2.1,
//! §2.2.1.1):
//!
//! ```text
//!   phys.hi   npt000ss bbbbbbbb dddddfff rrrrrrrr   n: not relocatable  p: prefetchable
//!   phys.mid  the high 32 bits of the address         t: aliased  ss: space code, 00 config,
//!   phys.lo   the low 32 bits of the address          01 I/O, 10 32-bit memory, 11 64-bit memory
//!                                                     b/d/f/r: bus, device, function, register
//! ```
//!
//! A `ranges` entry is (PCI address: 3 cells, CPU address: the parent's `#address-cells`, size:
//! 2 cells). QEMU's three windows map PCI I/O port 0 at CPU `0x3eff_0000`, and both memory
//! spaces one to one:
//!
//! ```text
//!   <0x1000000 0x00 0x00        0x00 0x3eff0000  0x00 0x10000>     I/O            64 KiB
//!   <0x2000000 0x00 0x10000000  0x00 0x10000000  0x00 0x2eff0000>  32-bit memory  ~752 MiB
//!   <0x3000000 0x80 0x00        0x80 0x00        0x80 0x00>        64-bit memory  512 GiB
//!    space     PCI address      CPU address      size
//! ```
//!
//! [`BarAllocator`] places BARs in those windows.
//!
//! **Which wire does a legacy interrupt (INTx) come in on?** (`interrupt-map`,
//! `interrupt-map-mask`, Devicetree Specification 0.4, §2.4.3.) Each entry maps a child unit
//! address and pin (1 = INTA to 4 = INTD) to an interrupt of a parent controller; the key is
//! ANDed with the mask before comparing. QEMU masks `0x1800`, device number bits 1:0, and so
//! routes (device, pin) to SPI 3 + (device + pin - 1) mod 4: the swizzle of the PCI-to-PCI
//! Bridge Architecture 1.2 (§9.1), which spreads the INTA of neighbouring slots over four
//! lines.
//!
//! ```text
//!   interrupt-map-mask = <0x1800 0x0 0x0 0x7>
//!   <0x800 0x0 0x0  0x1  0x8002  0x0 0x0  0x0 0x4 0x4>   device 1, INTA: GIC SPI 4, level high
//!    unit address   pin  parent  its unit  parent specifier
//!                                address   (GIC: type 0 = SPI, number, flags)
//! ```
//!
//! The parent's unit address has the parent's `#address-cells` cells, none when it has no such
//! property (Linux's `of_irq_parse_raw` reads it so, unlike `reg`'s default of 2).
//!
//! **Which IOMMU translates a device's DMA, and under which StreamID?** (`iommu-map`,
//! `iommu-map-mask`, Linux's `Documentation/devicetree/bindings/pci/pci-iommu.yaml`.) Every
//! PCIe request carries its Requester ID (PCIe Base 5.0, §2.2.6.2), `RID = bus << 8 | device
//! << 3 | function`; an SMMUv3 tells its clients apart by a StreamID. Each map entry is
//! (RID base, IOMMU phandle, StreamID base, length): a RID, after `& iommu-map-mask`, inside
//! `[RID base, RID base + length)` gets StreamID `base + (RID - RID base)` on that IOMMU.
//! QEMU's `<0x0 0x8004 0x0 0x10000>` makes every RID its own StreamID on `smmuv3@9050000`; a
//! mask of `0xfff8` would give all eight functions of a device one StreamID. A RID that no
//! entry covers is not translated.
//!
//! The SMMUv3 (`arm,smmu-v3`, Linux's `bindings/iommu/arm,smmu-v3.yaml`) is an ordinary device:
//! two 64 KiB register pages (Arm SMMUv3 architecture, IHI 0070, chapter 6), `#iommu-cells =
//! <1>` (the cell is the StreamID), named wired interrupts and `dma-coherent` if its table
//! walks snoop the CPU caches.
//!
//! **Which MSI controller takes a device's MSIs, and under which DeviceID?** (`msi-map`,
//! `msi-map-mask`, Linux's `Documentation/devicetree/bindings/pci/pci-msi.txt`.) A Message
//! Signalled Interrupt (PCI Local Bus 3.0, §6.8) is no wire but a memory write the device makes:
//! the data its driver chose, to the interrupt controller's doorbell. A GICv3 ITS has one
//! doorbell, `GITS_TRANSLATER`, for every device, and the data is only an EventID, which any
//! device may write; so the ITS tells devices apart by a DeviceID (IHI 0069, §5.2), which the bus
//! derives from the write's requester ID, out of the device's reach. `msi-map` is that
//! derivation, laid out and matched as `iommu-map` is: entries of (RID base, MSI controller
//! phandle, DeviceID base, length), a RID `& msi-map-mask` inside `[RID base, RID base + length)`
//! getting DeviceID `base + (RID - RID base)`. QEMU `virt,gic-version=3`'s `<0x0 0x8003 0x0
//! 0x10000>` makes the DeviceID equal to the RID on `its@8080000`. A RID that no entry covers
//! has no MSI route.
//!
//! Not handled: `msi-parent` (one MSI controller for the whole bridge, without a map),
//! `interrupts-extended`, and interrupt maps that lead to another map rather than to an
//! interrupt controller.

use addr::{PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use core::fmt;
use fdt::node::FdtNode;

use crate::devicetree::{
    Devicetree, Error, Located, address_cells, bad, cells, entry_length_error, is_enabled, one_cell, read_cells,
    translate,
};
use crate::interrupts::{GicInterrupt, InterruptController, InterruptKind, interrupt_name_index, interrupt_parent};
use crate::memmap::Size;

/// How many host bridges one devicetree may describe.
pub const MAX_HOST_BRIDGES: usize = 4;
/// How many SMMUs one devicetree may describe.
pub const MAX_SMMUS: usize = 4;
/// How many `ranges` windows one host bridge may have.
pub const MAX_PCI_WINDOWS: usize = 8;
/// How many entries one `iommu-map` or `msi-map` may have.
pub const MAX_ID_MAP_ENTRIES: usize = 16;
/// How many `interrupt-map` entries one host bridge may have (QEMU: 4 devices × 4 pins).
pub const MAX_INTERRUPT_MAP_ENTRIES: usize = 32;
/// How many cells one interrupt specifier may have (the GIC's has 3).
pub const MAX_INTERRUPT_CELLS: usize = 4;

/// The `compatible` of the host bridges this crate reads: ECAM configuration space, as QEMU `virt`
/// and many SoCs have it.
pub const HOST_BRIDGE_COMPATIBLE: &str = "pci-host-ecam-generic";
const SMMU_V3_COMPATIBLE: &str = "arm,smmu-v3";

/// ECAM gives each bus 32 devices × 8 functions × 4 KiB.
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;
const CONFIG_SPACE_SIZE: u64 = 4096;
/// Cells of an address on a PCI bus (phys.hi, phys.mid, phys.lo) and of a size.
const PCI_ADDRESS_CELLS: usize = 3;
const PCI_SIZE_CELLS: usize = 2;
/// phys.hi: the space code (bits 25:24) and the prefetchable bit (30).
const SPACE_CODE_SHIFT: u32 = 24;
const PREFETCHABLE: u32 = 1 << 30;
/// An interrupt map's key: a 3-cell unit address and the 1-cell pin.
const INTERRUPT_KEY_CELLS: usize = PCI_ADDRESS_CELLS + 1;
/// SMMUv3 register page 0 and page 1 (IHI 0070, §6.1).
const SMMU_V3_REGISTER_BYTES: u64 = 2 * 64 * 1024;
/// I/O and 32-bit memory windows must lie below 4 GiB of PCI space.
const FOUR_GIB: u64 = 1 << 32;

/// One function's address: bus, device (0..32), function (0..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciFunction {
    bus: u8,
    device: u8,
    function: u8,
}

impl PciFunction {
    /// `None` if `device` or `function` does not fit its 5 or 3 bits.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 { Some(Self { bus, device, function }) } else { None }
    }

    /// The bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// The device number (0 to 31).
    pub const fn device(self) -> u8 {
        self.device
    }

    /// The function number (0 to 7).
    pub const fn function(self) -> u8 {
        self.function
    }

    /// The Requester ID the function puts in every request it makes (PCIe Base 5.0, §2.2.6.2).
    pub const fn requester_id(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    /// phys.hi of the function's unit address, register 0 (IEEE 1275 PCI Bus Binding, §2.2.1.1).
    const fn unit_address(self) -> u32 {
        (self.requester_id() as u32) << 8
    }
}

impl fmt::Display for PciFunction {
    /// Linux's notation, `bus:device.function` in hexadecimal: `00:01.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.device, self.function)
    }
}

/// The buses a host bridge owns (`bus-range`), first and last included: `first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRange {
    /// The first bus.
    pub first: u8,
    /// The last bus.
    pub last: u8,
}

impl BusRange {
    /// Every bus (0 to 255), when `bus-range` is missing.
    pub const ALL: BusRange = BusRange { first: 0, last: 255 };

    /// Whether `bus` is in the range.
    pub fn contains(&self, bus: u8) -> bool {
        (self.first..=self.last).contains(&bus)
    }

    /// How many buses.
    pub fn count(&self) -> u16 {
        u16::from(self.last - self.first) + 1
    }
}

/// The address space a window forwards to (the space code `ss` of phys.hi).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciSpace {
    /// I/O space.
    Io,
    /// Memory below 4 GiB of PCI space.
    Memory32,
    /// Memory anywhere in 64-bit PCI space.
    Memory64,
}

impl fmt::Display for PciSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PciSpace::Io => "I/O",
            PciSpace::Memory32 => "32-bit memory",
            PciSpace::Memory64 => "64-bit memory",
        })
    }
}

/// One `ranges` entry: CPU accesses to `[cpu_address, cpu_address + size)` reach PCI addresses
/// `[pci_address, pci_address + size)` of `space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindow {
    /// The address space it opens.
    pub space: PciSpace,
    /// Reads have no side effects, so the CPU may map the window prefetchable (merged and
    /// speculative reads); only prefetchable BARs may go in it.
    pub prefetchable: bool,
    /// Where the window starts on the PCI side.
    pub pci_address: u64,
    /// Where the CPU reaches that start.
    pub cpu_address: PhysAddr,
    /// How many bytes.
    pub size: u64,
}

impl PciWindow {
    /// One past the last PCI address; windows were checked not to wrap.
    fn pci_end(&self) -> u64 {
        self.pci_address + self.size
    }
}

impl fmt::Display for PciWindow {
    /// `64-bit memory PCI 0x8000000000 at CPU 0x8000000000, 512 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} PCI {:#x} at CPU {}, {}", self.space, self.pci_address, self.cpu_address, Size(self.size))?;
        if self.prefetchable {
            f.write_str(", prefetchable")?;
        }
        Ok(())
    }
}

/// One entry of an [`IdMap`]: requester IDs `[rid_base, rid_base + length)` are IDs
/// `[id_base, id_base + length)` of the node whose phandle is `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapEntry {
    /// The first requester ID the entry covers.
    pub rid_base: u32,
    /// The phandle of the node it goes to: an IOMMU in `iommu-map`, an MSI controller in
    /// `msi-map`.
    pub target: u32,
    /// The ID of the first requester ID: a StreamID in `iommu-map`, a DeviceID in `msi-map`.
    pub id_base: u32,
    /// How many requester IDs it covers.
    pub length: u32,
}

impl IdMapEntry {
    /// The last requester ID the entry covers. Only for parsed entries: parsing checked that it
    /// fits 32 bits, and that the length is not 0.
    fn last_rid(&self) -> u32 {
        self.rid_base + (self.length - 1)
    }

    /// The ID of `rid` (already masked); `None` if the entry does not cover it.
    fn id_of(&self, rid: u32) -> Option<u32> {
        let offset = rid.checked_sub(self.rid_base).filter(|&offset| offset < self.length)?;
        // Parsing checked that `id_base + length` fits 32 bits.
        Some(self.id_base + offset)
    }
}

/// An `iommu-map` or an `msi-map`, with its mask: how the requester ID of a PCIe request
/// becomes an ID at the node that receives it (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    entries: ArrayVec<IdMapEntry, MAX_ID_MAP_ENTRIES>,
    mask: u32,
}

impl IdMap {
    /// Whether the bridge has no such map: no requester ID is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in the property's order.
    pub fn entries(&self) -> &[IdMapEntry] {
        &self.entries
    }

    /// The mask ANDed with a requester ID before it is looked up; all ones when the bridge has
    /// no `-mask` property.
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// The target's phandle and the ID that `requester_id` has there, from the first entry that
    /// covers it once masked; `None` if none does.
    pub fn lookup(&self, requester_id: u16) -> Option<(u32, u32)> {
        let rid = u32::from(requester_id) & self.mask;
        self.entries.iter().find_map(|entry| Some((entry.target, entry.id_of(rid)?)))
    }
}

/// What the phandle of an `iommu-map` entry leads to, when it is not an SMMUv3 that can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuTarget<'a> {
    /// No node carries the phandle: a dangling reference.
    Missing,
    /// A node that is not an SMMUv3 (its name).
    NotAnSmmu(&'a str),
    /// An SMMUv3 whose `status` disables it (its name).
    Disabled(&'a str),
}

/// An `iommu-map` entry whose phandle names no SMMUv3 that can run: the functions whose
/// requester IDs it covers cannot have their DMA translated. Reported, not refused: the rest of
/// the bridge still works, as in Linux, where only the devices such an entry covers fail
/// (`of_map_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IommuMapProblem<'a> {
    /// The bridge's node.
    pub bridge: &'a str,
    /// The entry.
    pub entry: IdMapEntry,
    /// What its phandle leads to.
    pub target: IommuTarget<'a>,
}

impl fmt::Display for IommuMapProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let IdMapEntry { rid_base, target, .. } = self.entry;
        let last = self.entry.last_rid();
        write!(
            f,
            "PCI host bridge '{}': `iommu-map` sends requester IDs {rid_base:#06x} to {last:#06x} to phandle {target:#x}, ",
            self.bridge
        )?;
        match self.target {
            IommuTarget::Missing => write!(f, "which no node has")?,
            IommuTarget::NotAnSmmu(node) => write!(f, "which is '{node}', not an SMMUv3 ({SMMU_V3_COMPATIBLE})")?,
            IommuTarget::Disabled(node) => write!(f, "which is '{node}', an SMMUv3 that `status` disables")?,
        }
        write!(f, ": the DMA of those functions cannot be translated")
    }
}

/// Where a requester's DMA goes: which IOMMU (its phandle), under which StreamID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRoute {
    /// The IOMMU's phandle.
    pub iommu: u32,
    /// The StreamID.
    pub stream_id: u32,
}

/// Where a requester's MSIs go: which MSI controller (its phandle), under which DeviceID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// The MSI controller's phandle (on QEMU `virt,gic-version=3`, the ITS's).
    pub controller: u32,
    /// The DeviceID the controller knows the requester by.
    pub device_id: u32,
}

/// A legacy interrupt pin, as a function's Interrupt Pin register (offset 0x3D, PCI Local Bus
/// 3.0, §6.2.4) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxPin {
    /// INTA#.
    A = 1,
    /// INTB#.
    B = 2,
    /// INTC#.
    C = 3,
    /// INTD#.
    D = 4,
}

impl IntxPin {
    /// The pin of an Interrupt Pin register value; `None` for 0 (no INTx) and reserved values.
    pub fn from_register(value: u8) -> Option<Self> {
        match value {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }
}

impl fmt::Display for IntxPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntxPin::A => "INTA",
            IntxPin::B => "INTB",
            IntxPin::C => "INTC",
            IntxPin::D => "INTD",
        })
    }
}

/// An interrupt as its controller's binding encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptSpecifier<'a> {
    /// The interrupt controller's node name.
    pub controller: &'a str,
    /// The `#interrupt-cells` cells of the specifier.
    pub cells: ArrayVec<u32, MAX_INTERRUPT_CELLS>,
}

impl InterruptSpecifier<'_> {
    /// The SPI number, reading the cells by the GIC binding (Linux's
    /// `bindings/interrupt-controller/arm,gic.yaml`): type (0 = SPI), number, flags. Its INTID
    /// is 32 + the SPI number. `None` for a PPI and for cells that binding does not allow (see
    /// [`GicInterrupt::from_cells`]); the caller knows its controller is a GIC.
    pub fn gic_spi(&self) -> Option<u32> {
        GicInterrupt::from_cells(&self.cells).filter(|interrupt| interrupt.kind == InterruptKind::Spi).map(|i| i.number)
    }
}

impl fmt::Display for InterruptSpecifier<'_> {
    /// `intc@8000000 <0x0 0x4 0x4>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <", self.controller)?;
        for (index, cell) in self.cells.iter().enumerate() {
            let separator = if index == 0 { "" } else { " " };
            write!(f, "{separator}{cell:#x}")?;
        }
        f.write_str(">")
    }
}

/// `interrupt-map` and its mask.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InterruptMap<'a> {
    /// All ones when the bridge has no `interrupt-map-mask`.
    mask: [u32; INTERRUPT_KEY_CELLS],
    entries: ArrayVec<InterruptMapEntry<'a>, MAX_INTERRUPT_MAP_ENTRIES>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InterruptMapEntry<'a> {
    key: [u32; INTERRUPT_KEY_CELLS],
    parent: InterruptSpecifier<'a>,
}

impl<'a> InterruptMap<'a> {
    /// The first entry whose key equals `key` in every bit the mask keeps.
    fn lookup(&self, key: [u32; INTERRUPT_KEY_CELLS]) -> Option<&InterruptSpecifier<'a>> {
        let matches = |entry: &&InterruptMapEntry<'a>| {
            (0..INTERRUPT_KEY_CELLS).all(|cell| (key[cell] ^ entry.key[cell]) & self.mask[cell] == 0)
        };
        self.entries.iter().find(matches).map(|entry| &entry.parent)
    }
}

/// A `pci-host-ecam-generic` node.
#[derive(Debug, Clone)]
pub struct PciHostBridge<'a> {
    /// Its node name.
    pub name: &'a str,
    /// The configuration space of every bus in `buses`, in CPU physical addresses.
    pub ecam: PhysRange,
    /// The buses it owns.
    pub buses: BusRange,
    /// The address windows it forwards from the CPU to PCI.
    pub windows: ArrayVec<PciWindow, MAX_PCI_WINDOWS>,
    /// `dma-coherent` (inherited as for any device): the bridge's devices snoop CPU caches.
    pub coherent: bool,
    /// `iommu-map` and `iommu-map-mask`: requester ID to IOMMU and StreamID. Empty when the
    /// bridge has none: its devices' DMA is not translated.
    pub iommu_map: IdMap,
    /// `msi-map` and `msi-map-mask`: requester ID to MSI controller and DeviceID. Empty when the
    /// bridge has none: its devices have no MSI route.
    pub msi_map: IdMap,
    interrupt_map: InterruptMap<'a>,
}

impl<'a> PciHostBridge<'a> {
    /// The 4 KiB of configuration space of `function`; `None` if its bus is not the bridge's.
    pub fn config_space(&self, function: PciFunction) -> Option<PhysRange> {
        if !self.buses.contains(function.bus) {
            return None;
        }
        let bus_offset = u64::from(function.bus - self.buses.first) * ECAM_BYTES_PER_BUS;
        let offset = bus_offset | u64::from(function.device) << 15 | u64::from(function.function) << 12;
        // The ECAM was checked to cover every bus of the range.
        PhysRange::new(self.ecam.start().add(offset), CONFIG_SPACE_SIZE)
    }

    /// Which IOMMU, under which StreamID, translates the DMA of `requester_id`; `None` when
    /// none does (no `iommu-map`, or no entry covers the masked RID).
    pub fn stream_id(&self, requester_id: u16) -> Option<StreamRoute> {
        let (iommu, stream_id) = self.iommu_map.lookup(requester_id)?;
        Some(StreamRoute { iommu, stream_id })
    }

    /// Which MSI controller, under which DeviceID, takes the MSIs of `requester_id`; `None` when
    /// none does (no `msi-map`, or no entry covers the masked RID).
    pub fn msi_route(&self, requester_id: u16) -> Option<MsiRoute> {
        let (controller, device_id) = self.msi_map.lookup(requester_id)?;
        Some(MsiRoute { controller, device_id })
    }

    /// The parent interrupt that `pin` of `function` raises, through `interrupt-map`; `None` if
    /// no entry matches. Only for functions on the bridge's root bus: behind a PCI-to-PCI
    /// bridge a pin is first swizzled up to the bridge's own slot (PCI-to-PCI Bridge 1.2, §9.1).
    pub fn legacy_interrupt(&self, function: PciFunction, pin: IntxPin) -> Option<&InterruptSpecifier<'a>> {
        self.interrupt_map.lookup([function.unit_address(), 0, 0, pin as u32])
    }
}

/// An `arm,smmu-v3` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smmu<'a> {
    /// Its node name.
    pub name: &'a str,
    /// What `iommu-map` entries name it by; `None` if nothing can.
    pub phandle: Option<u32>,
    /// Register pages 0 and 1.
    pub registers: PhysRange,
    /// The SMMU's own table walks and queue accesses snoop CPU caches.
    pub coherent: bool,
    /// The `eventq` interrupt: translation faults and other events were recorded.
    pub event_queue_interrupt: Option<InterruptSpecifier<'a>>,
    /// The `gerror` interrupt: a global error (a queue overflowed, a command was refused...).
    pub global_error_interrupt: Option<InterruptSpecifier<'a>>,
}

impl<'a> Devicetree<'a> {
    /// Every enabled `pci-host-ecam-generic` node, in document order.
    pub fn pci_host_bridges(&self) -> Result<ArrayVec<PciHostBridge<'a>, MAX_HOST_BRIDGES>, Error<'a>> {
        let mut bridges = ArrayVec::new();
        self.visit_compatible(&[HOST_BRIDGE_COMPATIBLE], &mut |located| {
            let bridge = self.host_bridge(located)?;
            bridges.try_push(bridge).map_err(|_| Error::TooManyRanges { what: "PCI host bridges" })
        })?;
        Ok(bridges)
    }

    /// The `iommu-map` entries of `bridge` whose phandle names no SMMUv3 that can run: a phandle
    /// no node has, a node of another kind, or a disabled SMMU.
    pub fn iommu_map_problems(&self, bridge: &PciHostBridge<'a>) -> ArrayVec<IommuMapProblem<'a>, MAX_ID_MAP_ENTRIES> {
        let target = |phandle| match self.node_by_phandle(phandle) {
            None => Some(IommuTarget::Missing),
            Some(node) if !node.compatible().is_some_and(|c| c.all().any(|c| c == SMMU_V3_COMPATIBLE)) => {
                Some(IommuTarget::NotAnSmmu(node.name))
            }
            Some(node) if !is_enabled(&node) => Some(IommuTarget::Disabled(node.name)),
            Some(_) => None,
        };
        (bridge.iommu_map.entries().iter())
            .filter_map(|entry| {
                Some(IommuMapProblem { bridge: bridge.name, entry: *entry, target: target(entry.target)? })
            })
            .collect()
    }

    /// Every enabled `arm,smmu-v3` node, in document order.
    pub fn smmus(&self) -> Result<ArrayVec<Smmu<'a>, MAX_SMMUS>, Error<'a>> {
        let mut smmus = ArrayVec::new();
        self.visit_compatible(&[SMMU_V3_COMPATIBLE], &mut |located| {
            let smmu = self.smmu(located)?;
            smmus.try_push(smmu).map_err(|_| Error::TooManyRanges { what: "SMMUs" })
        })?;
        Ok(smmus)
    }

    fn host_bridge(&self, located: &Located<'_, 'a>) -> Result<PciHostBridge<'a>, Error<'a>> {
        let node = &located.node;
        check_pci_cells(node)?;
        let device = self.device(located)?;
        let buses = bus_range(node)?;
        let ecam = ecam(node.name, &device.regs, buses)?;
        let iommu_map = id_map(node, &IOMMU_MAP)?;
        let msi_map = id_map(node, &MSI_MAP)?;
        let interrupt_map = self.interrupt_map(node)?;
        Ok(PciHostBridge {
            name: node.name,
            ecam,
            buses,
            windows: windows(located)?,
            coherent: device.dma.coherent,
            iommu_map,
            msi_map,
            interrupt_map,
        })
    }

    fn smmu(&self, located: &Located<'_, 'a>) -> Result<Smmu<'a>, Error<'a>> {
        let node = &located.node;
        let device = self.device(located)?;
        let registers = match device.regs.as_slice() {
            [registers] if registers.size() >= SMMU_V3_REGISTER_BYTES => *registers,
            [_] => return Err(bad(node, "reg", "is smaller than the two 64 KiB register pages of an SMMUv3")),
            _ => return Err(bad(node, "reg", "is not one (address, size) pair")),
        };
        if one_cell(node, "#iommu-cells")? != Some(1) {
            return Err(bad(node, "#iommu-cells", "is not 1 (the one cell of an SMMUv3 client is its StreamID)"));
        }
        Ok(Smmu {
            name: node.name,
            phandle: one_cell(node, "phandle")?,
            registers,
            coherent: device.dma.coherent,
            event_queue_interrupt: self.named_interrupt(located, "eventq")?,
            global_error_interrupt: self.named_interrupt(located, "gerror")?,
        })
    }

    /// The `interrupts` entry that `interrupt-names` calls `name`; `None` if none is.
    fn named_interrupt(
        &self,
        located: &Located<'_, 'a>,
        name: &str,
    ) -> Result<Option<InterruptSpecifier<'a>>, Error<'a>> {
        let node = &located.node;
        let Some(index) = interrupt_name_index(node, name) else { return Ok(None) };
        let phandle = interrupt_parent(located)?;
        let controller = self.interrupt_controller(node, "interrupt-parent", phandle)?;
        let interrupts = node.property("interrupts").map_or(&[][..], |interrupts| interrupts.value);
        let specifier_bytes = controller.cells * 4;
        if !interrupts.len().is_multiple_of(specifier_bytes) {
            let layout = "the interrupt parent's #interrupt-cells";
            return Err(entry_length_error(node, "interrupts", interrupts.len(), controller.cells, layout));
        }
        let Some(raw) = interrupts.chunks_exact(specifier_bytes).nth(index) else {
            return Err(bad(node, "interrupt-names", "names more interrupts than 'interrupts' lists"));
        };
        Ok(Some(InterruptSpecifier { controller: controller.name, cells: cells(raw).collect() }))
    }

    /// `interrupt-map` (no entries if absent) and `interrupt-map-mask`.
    fn interrupt_map(&self, node: &FdtNode<'_, 'a>) -> Result<InterruptMap<'a>, Error<'a>> {
        let mut entries = ArrayVec::new();
        let mask = interrupt_map_mask(node)?;
        let Some(map) = node.property("interrupt-map") else { return Ok(InterruptMap { mask, entries }) };
        if one_cell(node, "#interrupt-cells")? != Some(1) {
            return Err(bad(node, "#interrupt-cells", "is not 1 (a PCI interrupt is one pin number)"));
        }
        let mut rest = map.value;
        // Entries name their controller by phandle, nearly always the same one: each lookup walks
        // the whole tree, so the last one found is kept.
        let mut last_controller = None;
        while !rest.is_empty() {
            let (entry, after) = self.interrupt_map_entry(node, rest, &mut last_controller)?;
            entries.try_push(entry).map_err(|_| Error::TooManyRanges { what: "interrupt-map entries" })?;
            rest = after;
        }
        Ok(InterruptMap { mask, entries })
    }

    /// The `interrupt-map` entry at the front of `bytes`, and the bytes after it. `last` is the
    /// controller (and its phandle) the entry before named, if any, and becomes this entry's.
    fn interrupt_map_entry<'v>(
        &self,
        node: &FdtNode<'_, 'a>,
        bytes: &'v [u8],
        last: &mut Option<(u32, InterruptController<'a>)>,
    ) -> Result<(InterruptMapEntry<'a>, &'v [u8]), Error<'a>> {
        let cut_short = || bad(node, "interrupt-map", "ends in the middle of an entry");
        let (key_bytes, rest) = split(bytes, INTERRUPT_KEY_CELLS).ok_or_else(cut_short)?;
        let (phandle, rest) = read_cells(rest, 1).ok_or_else(cut_short)?;
        let phandle = phandle as u32;
        let controller = match *last {
            Some((known, controller)) if known == phandle => controller,
            _ => self.interrupt_controller(node, "interrupt-map", phandle)?,
        };
        *last = Some((phandle, controller));
        let (_parent_unit_address, rest) = split(rest, controller.address_cells).ok_or_else(cut_short)?;
        let (specifier, rest) = split(rest, controller.cells).ok_or_else(cut_short)?;
        let parent = InterruptSpecifier { controller: controller.name, cells: cells(specifier).collect() };
        Ok((InterruptMapEntry { key: cell_array(key_bytes), parent }, rest))
    }
}

/// A PCI bus node's own cell counts are fixed by the binding; anything else is a broken tree.
fn check_pci_cells<'a>(node: &FdtNode<'_, 'a>) -> Result<(), Error<'a>> {
    if one_cell(node, "#address-cells")? != Some(PCI_ADDRESS_CELLS as u32) {
        return Err(bad(node, "#address-cells", "is not 3, the cells of a PCI address"));
    }
    if one_cell(node, "#size-cells")? != Some(PCI_SIZE_CELLS as u32) {
        return Err(bad(node, "#size-cells", "is not 2, the cells of a PCI size"));
    }
    Ok(())
}

/// `bus-range`, or every bus if absent.
fn bus_range<'a>(node: &FdtNode<'_, 'a>) -> Result<BusRange, Error<'a>> {
    let Some(property) = node.property("bus-range") else { return Ok(BusRange::ALL) };
    let mut numbers = cells(property.value);
    match (property.value.len(), numbers.next(), numbers.next()) {
        (8, Some(first @ 0..=255), Some(last @ 0..=255)) if first <= last => {
            Ok(BusRange { first: first as u8, last: last as u8 })
        }
        _ => Err(bad(node, "bus-range", "is not two cells: first and last bus, at most 255, in order")),
    }
}

/// The one `reg` range, which must hold a 1 MiB slice for every bus of `buses`.
fn ecam<'a>(node: &'a str, regs: &[PhysRange], buses: BusRange) -> Result<PhysRange, Error<'a>> {
    let [ecam] = regs else {
        let problem = "is not one (address, size) pair: the ECAM region";
        return Err(Error::BadProperty { node, property: "reg", problem });
    };
    if ecam.size() < u64::from(buses.count()) * ECAM_BYTES_PER_BUS {
        return Err(Error::EcamTooSmall { node, ecam_size: ecam.size(), buses: buses.count() });
    }
    Ok(*ecam)
}

/// The windows of `ranges`, their CPU addresses translated up to the root.
fn windows<'a>(bridge: &Located<'_, 'a>) -> Result<ArrayVec<PciWindow, MAX_PCI_WINDOWS>, Error<'a>> {
    let node = &bridge.node;
    let mut windows = ArrayVec::new();
    // `ecam` already refused a bridge without a parent: it can have no `reg`.
    let Some(parent) = bridge.ancestors.last() else { return Ok(windows) };
    let Some(ranges) = node.property("ranges") else { return Ok(windows) };
    let parent_cells = address_cells(parent)?;
    let entry_cells = PCI_ADDRESS_CELLS + parent_cells + PCI_SIZE_CELLS;
    if !ranges.value.len().is_multiple_of(entry_cells * 4) {
        let layout = "3-cell PCI address, parent address, 2-cell size";
        return Err(entry_length_error(node, "ranges", ranges.value.len(), entry_cells, layout));
    }
    for raw in ranges.value.chunks_exact(entry_cells * 4) {
        let window = window(bridge, raw, parent_cells)?;
        windows.try_push(window).map_err(|_| Error::TooManyRanges { what: "PCI windows" })?;
    }
    Ok(windows)
}

/// One `ranges` entry, whose length was checked.
fn window<'a>(bridge: &Located<'_, 'a>, raw: &[u8], parent_cells: usize) -> Result<PciWindow, Error<'a>> {
    let node = &bridge.node;
    let wrong_length = || bad(node, "ranges", "has an entry of the wrong length");
    let (phys_hi, rest) = read_cells(raw, 1).ok_or_else(wrong_length)?;
    let (pci_address, rest) = read_cells(rest, 2).ok_or_else(wrong_length)?;
    let (parent_address, rest) = read_cells(rest, parent_cells).ok_or_else(wrong_length)?;
    let (size, _) = read_cells(rest, PCI_SIZE_CELLS).ok_or_else(wrong_length)?;
    let space = match (phys_hi as u32 >> SPACE_CODE_SHIFT) & 0b11 {
        0b00 => return Err(bad(node, "ranges", "has a configuration-space window; ECAM reaches that space")),
        0b01 => PciSpace::Io,
        0b10 => PciSpace::Memory32,
        _ => PciSpace::Memory64,
    };
    if size == 0 {
        return Err(bad(node, "ranges", "has a window of size zero"));
    }
    let pci_end = pci_address.checked_add(size).ok_or(bad(node, "ranges", "has a window that wraps past 2^64"))?;
    if space != PciSpace::Memory64 && pci_end > FOUR_GIB {
        return Err(bad(node, "ranges", "has an I/O or 32-bit memory window that reaches above 4 GiB"));
    }
    let cpu_address = translate(node.name, parent_address, &bridge.ancestors)?;
    if cpu_address.checked_add(size).is_none() {
        return Err(bad(node, "ranges", "has a window whose CPU range wraps past the top of the address space"));
    }
    let prefetchable = phys_hi as u32 & PREFETCHABLE != 0;
    Ok(PciWindow { space, prefetchable, pci_address, cpu_address: PhysAddr::new(cpu_address), size })
}

/// The names an id-map property goes by, in the devicetree and in errors. Errors carry
/// `&'static str`s, so each property spells out its own.
struct IdMapProperty {
    /// The map: `iommu-map`.
    name: &'static str,
    /// Its mask: `iommu-map-mask`.
    mask: &'static str,
    /// An entry's cells, for a map that is not whole entries.
    layout: &'static str,
    /// What [`Error::TooManyRanges`] says there are too many of.
    entries: &'static str,
    /// The problem of an entry whose RIDs or IDs run past 32 bits.
    past_32_bits: &'static str,
    /// The problem of an entry whose RID base the mask cuts.
    masked_rid_base: &'static str,
}

const IOMMU_MAP: IdMapProperty = IdMapProperty {
    name: "iommu-map",
    mask: "iommu-map-mask",
    layout: "RID base, IOMMU phandle, StreamID base, length",
    entries: "iommu-map entries",
    past_32_bits: "has an entry whose RIDs or StreamIDs run past 32 bits",
    masked_rid_base: "has a RID base with bits that iommu-map-mask clears",
};

const MSI_MAP: IdMapProperty = IdMapProperty {
    name: "msi-map",
    mask: "msi-map-mask",
    layout: "RID base, MSI controller phandle, DeviceID base, length",
    entries: "msi-map entries",
    past_32_bits: "has an entry whose RIDs or DeviceIDs run past 32 bits",
    masked_rid_base: "has a RID base with bits that msi-map-mask clears",
};

/// An id-map property (no entries if absent) and its mask (all ones if absent).
fn id_map<'a>(node: &FdtNode<'_, 'a>, property: &IdMapProperty) -> Result<IdMap, Error<'a>> {
    let mask = one_cell(node, property.mask)?.unwrap_or(u32::MAX);
    let mut entries = ArrayVec::new();
    let Some(map) = node.property(property.name) else { return Ok(IdMap { entries, mask }) };
    if map.value.is_empty() {
        return Err(bad(node, property.name, "is empty"));
    }
    if !map.value.len().is_multiple_of(16) {
        return Err(entry_length_error(node, property.name, map.value.len(), 4, property.layout));
    }
    for raw in map.value.chunks_exact(16) {
        let [rid_base, target, id_base, length] = cell_array(raw);
        let entry = IdMapEntry { rid_base, target, id_base, length };
        check_id_map_entry(node, property, &entry, mask)?;
        entries.try_push(entry).map_err(|_| Error::TooManyRanges { what: property.entries })?;
    }
    Ok(IdMap { entries, mask })
}

fn check_id_map_entry<'a>(
    node: &FdtNode<'_, 'a>,
    property: &IdMapProperty,
    entry: &IdMapEntry,
    mask: u32,
) -> Result<(), Error<'a>> {
    let past_32_bits = |base: u32| u64::from(base) + u64::from(entry.length) > FOUR_GIB;
    if entry.length == 0 {
        return Err(bad(node, property.name, "has an entry of length zero"));
    }
    if past_32_bits(entry.rid_base) || past_32_bits(entry.id_base) {
        return Err(bad(node, property.name, property.past_32_bits));
    }
    // A masked RID never has these bits, so the entry could never match (Linux refuses it too).
    if entry.rid_base & !mask != 0 {
        return Err(bad(node, property.name, property.masked_rid_base));
    }
    Ok(())
}

/// `interrupt-map-mask`: one cell per key cell, all ones if absent.
fn interrupt_map_mask<'a>(node: &FdtNode<'_, 'a>) -> Result<[u32; INTERRUPT_KEY_CELLS], Error<'a>> {
    let Some(property) = node.property("interrupt-map-mask") else { return Ok([u32::MAX; INTERRUPT_KEY_CELLS]) };
    if property.value.len() != INTERRUPT_KEY_CELLS * 4 {
        return Err(bad(node, "interrupt-map-mask", "is not 4 cells (3 for the unit address, 1 for the pin)"));
    }
    Ok(cell_array(property.value))
}

/// The first `count` cells of `bytes`, and the bytes after them.
fn split(bytes: &[u8], count: usize) -> Option<(&[u8], &[u8])> {
    bytes.split_at_checked(count.checked_mul(4)?)
}

/// The first `N` cells of `bytes`, which holds at least that many.
fn cell_array<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut array = [0; N];
    array.iter_mut().zip(cells(bytes)).for_each(|(slot, cell)| *slot = cell);
    array
}

/// The size and kind of address space a BAR asks for (PCI Local Bus 3.0, §6.2.5.1): its
/// lowest bits say which, and writing all ones then reading back says how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRequest {
    /// A power of two: a BAR decodes a naturally aligned block.
    pub size: u64,
    /// I/O or memory, 32- or 64-bit, prefetchable or not.
    pub kind: BarKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What kind of space a BAR decodes.
pub enum BarKind {
    /// Bit 0 set: I/O space.
    Io,
    /// Bit 0 clear. Bits 2:1 = 0b10 make it 64-bit (two BAR registers); bit 3 prefetchable.
    Memory {
        /// Two BAR registers, anywhere in 64-bit space.
        is_64bit: bool,
        /// Reads have no side effects: may be prefetched and merged.
        prefetchable: bool,
    },
}

impl BarKind {
    /// PCI Local Bus 3.0, §6.2.5.1: I/O BARs decode at least 4 bytes, memory BARs 16.
    fn minimum_size(self) -> u64 {
        match self {
            BarKind::Io => 4,
            BarKind::Memory { .. } => 16,
        }
    }
}

/// Where a BAR was placed: the value to program into it, and where the CPU reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarAssignment {
    /// The value to program into the BAR.
    pub pci_address: u64,
    /// Where the CPU reaches it.
    pub cpu_address: PhysAddr,
}

/// Why a BAR could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// Not a power of two, or below the minimum a BAR of its kind decodes.
    BadSize {
        /// The size asked for.
        size: u64,
    },
    /// The bridge has no window the BAR may go in.
    NoWindow {
        /// The BAR's kind.
        kind: BarKind,
    },
    /// Every window it may go in is too full.
    WindowsFull {
        /// The size asked for.
        size: u64,
        /// The BAR's kind.
        kind: BarKind,
    },
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BarKind::Io => f.write_str("I/O"),
            BarKind::Memory { is_64bit, prefetchable } => {
                let width = if is_64bit { "64-bit" } else { "32-bit" };
                let prefetch = if prefetchable { "prefetchable" } else { "non-prefetchable" };
                write!(f, "{width} {prefetch} memory")
            }
        }
    }
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BarError::BadSize { size } => {
                write!(f, "BAR size {size:#x} is not a power of two of at least the minimum for its kind")
            }
            BarError::NoWindow { kind } => write!(f, "the host bridge has no window for {kind} BARs"),
            BarError::WindowsFull { size, kind } => {
                write!(f, "no window for {kind} BARs has {} free, suitably aligned", Size(size))
            }
        }
    }
}

/// Places BARs in a host bridge's windows, each at the next free address that is a multiple
/// of its size (a BAR ignores the address bits below its size, so it must be so aligned).
///
/// Where a BAR may go:
/// - I/O BARs in I/O windows, from port `0x1000` up: below it lie the legacy ISA ports, which
///   Linux never assigns on arm64 either (`PCIBIOS_MIN_IO`).
/// - 32-bit memory BARs in 32-bit windows; 64-bit ones in 64-bit windows first, then in 32-bit
///   ones (a 64-bit BAR takes any address).
/// - Prefetchable windows take only prefetchable BARs: the CPU may merge and speculate reads
///   there, which registers with read side effects do not survive. A prefetchable BAR prefers a
///   prefetchable window of its width but may use a non-prefetchable one.
///
/// Each window is filled upwards and never reused, so no two BARs overlap. Alignment gaps are
/// lost, so callers that place the largest BARs first waste nothing, as Linux does by sorting.
pub struct BarAllocator {
    windows: ArrayVec<WindowCursor, MAX_PCI_WINDOWS>,
}

struct WindowCursor {
    window: PciWindow,
    /// The lowest PCI address not yet handed out.
    next: u64,
}

const FIRST_ASSIGNABLE_IO_PORT: u64 = 0x1000;

impl BarAllocator {
    /// An allocator over the bridge's `windows`.
    pub fn new(windows: &ArrayVec<PciWindow, MAX_PCI_WINDOWS>) -> Self {
        let cursor = |window: &PciWindow| {
            let floor = if window.space == PciSpace::Io { FIRST_ASSIGNABLE_IO_PORT } else { 0 };
            WindowCursor { window: *window, next: window.pci_address.max(floor) }
        };
        Self { windows: windows.iter().map(cursor).collect() }
    }

    /// Places a BAR: the lowest aligned place in a window of the right kind that has room.
    pub fn allocate(&mut self, request: BarRequest) -> Result<BarAssignment, BarError> {
        let BarRequest { size, kind } = request;
        if !size.is_power_of_two() || size < kind.minimum_size() {
            return Err(BarError::BadSize { size });
        }
        let mut candidates: ArrayVec<(u8, usize), MAX_PCI_WINDOWS> = (self.windows.iter().enumerate())
            .filter_map(|(index, cursor)| Some((preference(&cursor.window, kind)?, index)))
            .collect();
        if candidates.is_empty() {
            return Err(BarError::NoWindow { kind });
        }
        candidates.sort_unstable();
        let placed = candidates.iter().find_map(|&(_, index)| self.windows[index].place(size));
        placed.ok_or(BarError::WindowsFull { size, kind })
    }
}

impl WindowCursor {
    fn place(&mut self, size: u64) -> Option<BarAssignment> {
        let pci_address = self.next.checked_next_multiple_of(size)?;
        let end = pci_address.checked_add(size).filter(|&end| end <= self.window.pci_end())?;
        self.next = end;
        // Inside the window, whose CPU range was checked not to wrap.
        let cpu_address = self.window.cpu_address.add(pci_address - self.window.pci_address);
        Some(BarAssignment { pci_address, cpu_address })
    }
}

/// How well `window` suits a BAR of `kind`: lower is better, `None` means never.
fn preference(window: &PciWindow, kind: BarKind) -> Option<u8> {
    let BarKind::Memory { is_64bit, prefetchable } = kind else {
        return (window.space == PciSpace::Io).then_some(0);
    };
    if window.prefetchable && !prefetchable {
        return None;
    }
    let width_rank = match (is_64bit, window.space) {
        (true, PciSpace::Memory64) | (false, PciSpace::Memory32) => 0,
        (true, PciSpace::Memory32) => 2,
        _ => return None,
    };
    Some(width_rank + u8::from(window.prefetchable != prefetchable))
}
