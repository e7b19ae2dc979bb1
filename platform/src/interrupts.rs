//! The interrupt controller, the timer's interrupts and devices' interrupts.
//!
//! A device that needs the CPU raises a wire or writes a message; the interrupt controller
//! collects every such request, decides which CPU takes it and in what order, and raises that
//! CPU's IRQ line. On Arm it is the GIC, the Generic Interrupt Controller. It numbers every
//! interrupt with an INTID and keeps, for each, whether it is enabled, pending or active, its
//! priority, its trigger and its target CPU. A CPU acknowledges an interrupt (reading its INTID),
//! handles it, and signals its end. The parts (GIC architecture specification, IHI 0069, "The
//! Distributor and Redistributors" and "The GIC logical components"):
//!
//! - the **distributor** (GICD), one per machine: the state and routing of shared interrupts
//!   (on GICv2, of each CPU's private ones too, banked per CPU);
//! - the **CPU interface** (GICC), one per CPU, where it acknowledges and ends interrupts. On
//!   GICv2 it is a memory-mapped frame; on GICv3 a CPU reaches its own through system registers
//!   (`ICC_*_EL1`), and a GICC frame, if listed, serves only legacy software;
//! - the **redistributors** (GICR, GICv3), one per CPU, laid out in one or more contiguous
//!   regions: the state of that CPU's private interrupts, and where its LPI tables are;
//! - the **ITS** (Interrupt Translation Service, GICv3; IHI 0069, "Locality-specific Peripheral
//!   Interrupts and the ITS"): turns a device's message write (a DeviceID and an EventID) into
//!   an LPI, through tables in memory. A PCIe host bridge's `msi-map` names it;
//! - a **GICv2m frame** (specified in Arm's Server Base System Architecture, not in the GIC
//!   specification): GICv2's simpler MSI support, a register that turns a write into an SPI.
//!
//! INTIDs come in ranges (IHI 0069, "INTIDs" and "Special INTIDs"):
//!
//! ```text
//!   0-15        SGI  software generated: a CPU interrupts another, or itself
//!   16-31       PPI  private peripheral: one per CPU, such as its timers
//!   32-1019     SPI  shared peripheral: a device's wire, routed to any CPU
//!   1020-1023        special (1023: spurious, nothing to acknowledge)
//!   8192-       LPI  locality-specific peripheral: messages, through an ITS (GICv3)
//! ```
//!
//! A devicetree describes the GIC with an `interrupt-controller` node, bound by Linux's
//! `Documentation/devicetree/bindings/interrupt-controller/arm,gic.yaml` (GICv1 and v2) or
//! `arm,gic-v3.yaml` (GICv3 and v4). Its `reg` lists the distributor, then the CPU interface
//! (GICv2) or `#redistributor-regions` redistributor regions (GICv3, default 1); its MSI frames
//! are child nodes, their `reg` translated through the GIC's `ranges`. A device names its
//! interrupts in `interrupts`, `#interrupt-cells` cells each, read by the binding of the
//! controller that the nearest `interrupt-parent` (on the node or above it) names:
//!
//! ```text
//!   interrupts = <0x0 0x10 0x1>          virtio_mmio@a000000 on QEMU virt
//!                 type number flags
//!   type     0: SPI (number 0-987, INTID 32 + number), 1: PPI (number 0-15, INTID 16 + number)
//!   flags    bits 3:0   1 rising edge, 2 falling edge, 4 level high, 8 level low
//!                       (2 and 8 for PPIs only: the GIC cannot invert an SPI's wire)
//!            bits 15:8  GICv2 PPIs: which of up to 8 CPUs the PPI is wired to; not read here
//!   ⇒ SPI 16, INTID 48, edge-rising
//! ```
//!
//! The architected timer (`arm,armv8-timer`, Linux's `bindings/timer/arm,arch_timer.yaml`) gives
//! each core's timers as PPIs, in the binding's order: secure physical, non-secure physical,
//! virtual, hypervisor (and, on Armv8.1 cores, hypervisor virtual); with `interrupt-names`,
//! a machine without a secure timer leaves it out. QEMU's `<1 13 4>, <1 14 4>, <1 11 4>, <1 10 4>` are INTIDs 29, 30, 27 and
//! 26, the numbers Arm's Base System Architecture recommends.
//!
//! Not read here: GICv3's extended SPI and PPI ranges (types 2 and 3), PPI partitions (a
//! non-zero fourth cell), `interrupts-extended` (refused, not ignored), `redistributor-stride`,
//! and cascaded GICs: the first GIC in document order is the machine's.

use addr::PhysRange;
use arrayvec::ArrayVec;
use core::fmt;
use fdt::node::FdtNode;

use crate::devicetree::{
    Device, Devicetree, Error, Located, MAX_RANGES, bad, cells, entry_length_error, is_enabled, one_cell,
    translated_regs,
};
use crate::pci::MAX_INTERRUPT_CELLS;

/// How many redistributor regions a GICv3 may have.
pub const MAX_REDISTRIBUTOR_REGIONS: usize = 16;
/// How many interrupts one device may have (the Pi 4's DMA engine has 11).
pub const MAX_DEVICE_INTERRUPTS: usize = MAX_RANGES;

/// The `compatible` strings of Linux's `arm,gic.yaml`: GICv1 and GICv2, whose distributor and
/// CPU interface frames share their layout.
pub const GIC_V2_COMPATIBLES: [&str; 14] = [
    "arm,arm11mp-gic",
    "arm,arm1176jzf-devchip-gic",
    "arm,cortex-a15-gic",
    "arm,cortex-a7-gic",
    "arm,cortex-a5-gic",
    "arm,cortex-a9-gic",
    "arm,eb11mp-gic",
    "arm,gic-400",
    "arm,pl390",
    "arm,tc11mp-gic",
    "brcm,brahma-b15-gic",
    "nvidia,tegra210-agic",
    "qcom,msm-8660-qgic",
    "qcom,msm-qgic2",
];
/// The `compatible` of Linux's `arm,gic-v3.yaml` (GICv4 too).
pub const GIC_V3_COMPATIBLE: &str = "arm,gic-v3";
/// Every GIC `compatible`: GICv2's, then GICv3's.
const GIC_COMPATIBLES: [&str; 15] = {
    let mut all = [GIC_V3_COMPATIBLE; 15];
    let mut index = 0;
    while index < GIC_V2_COMPATIBLES.len() {
        all[index] = GIC_V2_COMPATIBLES[index];
        index += 1;
    }
    all
};
const ITS_COMPATIBLE: &str = "arm,gic-v3-its";
const V2M_COMPATIBLE: &str = "arm,gic-v2m-frame";
/// The architected timer's `compatible` strings (`arm,arch_timer.yaml`); both bind alike.
const TIMER_COMPATIBLES: [&str; 2] = ["arm,armv8-timer", "arm,armv7-timer"];

/// The INTID of SPI 0 and of PPI 0 (IHI 0069, "INTIDs").
const FIRST_SPI_INTID: u32 = 32;
const FIRST_PPI_INTID: u32 = 16;
/// The largest SPI and PPI numbers the bindings allow: INTIDs 1019 and 31.
const LAST_SPI: u32 = 987;
const LAST_PPI: u32 = 15;
/// Bits 3:0 of the flags cell: the trigger.
const TRIGGER_MASK: u32 = 0xf;

/// Which GIC architecture the controller implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2 (or GICv1): a memory-mapped CPU interface, up to 8 CPUs, no LPIs.
    V2,
    /// GICv3 (or GICv4): redistributors, system-register CPU interface, affinity routing, LPIs.
    V3,
}

impl fmt::Display for GicVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GicVersion::V2 => "GICv2",
            GicVersion::V3 => "GICv3",
        })
    }
}

/// The interrupt controller the devicetree describes (`interrupt-controller` node with a GIC
/// `compatible`), its registers in CPU physical addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gic<'a> {
    /// Its node name (`intc@8000000`, `interrupt-controller@40041000`).
    pub name: &'a str,
    /// Which architecture: V3 for `arm,gic-v3`, V2 for the `compatible` strings of `arm,gic.yaml`.
    pub version: GicVersion,
    /// The distributor (GICD): the first `reg` entry.
    pub distributor: PhysRange,
    /// GICv2: the CPU interface (GICC), the second `reg` entry. `None` on GICv3, whose CPUs
    /// reach their interface through system registers.
    pub cpu_interface: Option<PhysRange>,
    /// GICv3: the `#redistributor-regions` regions after the distributor (one if the property is
    /// absent). Empty on GICv2.
    pub redistributors: ArrayVec<PhysRange, MAX_REDISTRIBUTOR_REGIONS>,
    /// GICv3: the first enabled `arm,gic-v3-its` child.
    pub its: Option<MsiController<'a>>,
    /// GICv2: the first enabled `arm,gic-v2m-frame` child.
    pub v2m: Option<MsiController<'a>>,
}

/// An MSI controller: the ITS or a GICv2m frame, with its registers and phandle (a PCI host
/// bridge's `msi-map` or a device's `msi-parent` names it by that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiController<'a> {
    /// Its node name (`its@8080000`, `v2m@8020000`).
    pub name: &'a str,
    /// Its one `reg` entry, translated through the GIC's `ranges`.
    pub registers: PhysRange,
    /// What `msi-map` and `msi-parent` name it by; `None` if nothing can.
    pub phandle: Option<u32>,
}

/// Whether an interrupt is shared (and routed) or private to each CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Shared peripheral interrupt: INTID 32 + number.
    Spi,
    /// Private peripheral interrupt, one per CPU: INTID 16 + number.
    Ppi,
}

impl fmt::Display for InterruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterruptKind::Spi => "SPI",
            InterruptKind::Ppi => "PPI",
        })
    }
}

/// When the wire raises the interrupt: bits 3:0 of the flags cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// 1: on a low-to-high edge. The interrupt stays pending until acknowledged.
    EdgeRising,
    /// 2: on a high-to-low edge (PPIs only).
    EdgeFalling,
    /// 4: while the wire is high. The device must lower it, or the interrupt comes back at once.
    LevelHigh,
    /// 8: while the wire is low (PPIs only).
    LevelLow,
}

impl Trigger {
    /// The trigger of a flags cell: bits 3:0 must hold exactly one of 1, 2, 4 and 8.
    fn from_flags(flags: u32) -> Option<Self> {
        match flags & TRIGGER_MASK {
            1 => Some(Trigger::EdgeRising),
            2 => Some(Trigger::EdgeFalling),
            4 => Some(Trigger::LevelHigh),
            8 => Some(Trigger::LevelLow),
            _ => None,
        }
    }

    /// Whether the GIC latches the interrupt on an edge (rather than following a level).
    pub fn is_edge(self) -> bool {
        matches!(self, Trigger::EdgeRising | Trigger::EdgeFalling)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::EdgeRising => "edge-rising",
            Trigger::EdgeFalling => "edge-falling",
            Trigger::LevelHigh => "level-high",
            Trigger::LevelLow => "level-low",
        })
    }
}

/// One interrupt as the GIC binding encodes it (3 cells: type, number, flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicInterrupt {
    /// SPI or PPI.
    pub kind: InterruptKind,
    /// The number within its kind: 0 to 987 for an SPI, 0 to 15 for a PPI.
    pub number: u32,
    /// When the wire raises it.
    pub trigger: Trigger,
}

impl GicInterrupt {
    /// The INTID the GIC knows it by: 32 + number for an SPI, 16 + number for a PPI.
    pub fn intid(&self) -> u32 {
        match self.kind {
            InterruptKind::Spi => FIRST_SPI_INTID + self.number,
            InterruptKind::Ppi => FIRST_PPI_INTID + self.number,
        }
    }

    /// Decodes one specifier: `<type number flags>`, or GICv3's four cells with a zero fourth
    /// (no PPI partition). The trigger is read from bits 3:0 of the flags alone, so GICv2's PPI
    /// CPU mask (bits 15:8) does not matter. `None` for what the bindings do not allow: another
    /// length, a type other than 0 (SPI) and 1 (PPI), a number out of its kind's range, a
    /// trigger that is not exactly one of 1, 2, 4 and 8, or a falling-edge or level-low SPI.
    pub fn from_cells(cells: &[u32]) -> Option<Self> {
        let (kind, number, flags) = match *cells {
            [kind, number, flags] | [kind, number, flags, 0] => (kind, number, flags),
            _ => return None,
        };
        let kind = match (kind, number) {
            (0, 0..=LAST_SPI) => InterruptKind::Spi,
            (1, 0..=LAST_PPI) => InterruptKind::Ppi,
            _ => return None,
        };
        let trigger = Trigger::from_flags(flags)?;
        let inverted = matches!(trigger, Trigger::EdgeFalling | Trigger::LevelLow);
        if kind == InterruptKind::Spi && inverted {
            return None;
        }
        Some(Self { kind, number, trigger })
    }
}

impl fmt::Display for GicInterrupt {
    /// `SPI 4 (INTID 36, level-high)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (INTID {}, {})", self.kind, self.number, self.intid(), self.trigger)
    }
}

/// The architected timer's interrupts (node `arm,armv8-timer`), each a PPI: every core has its
/// own timers, each on the same INTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerInterrupts {
    /// The secure physical timer (`CNTPS`); `None` if `interrupt-names` leaves it out.
    pub secure_physical: Option<GicInterrupt>,
    /// The non-secure EL1 physical timer (`CNTP`).
    pub physical: GicInterrupt,
    /// The EL1 virtual timer (`CNTV`): counts the virtual count, which a hypervisor may offset.
    pub virtual_timer: GicInterrupt,
    /// The EL2 physical timer (`CNTHP`); `None` if not listed.
    pub hypervisor: Option<GicInterrupt>,
}

/// An interrupt controller as a specifier's reader needs it.
#[derive(Clone, Copy)]
pub(crate) struct InterruptController<'a> {
    pub(crate) name: &'a str,
    /// `#interrupt-cells`: cells of one specifier.
    pub(crate) cells: usize,
    /// `#address-cells`, 0 if absent: cells of the unit address in an `interrupt-map` entry.
    pub(crate) address_cells: usize,
}

impl<'a> Devicetree<'a> {
    /// The GIC: the first enabled node, in document order, with a GIC `compatible`. `None` if the
    /// tree has none.
    pub fn gic(&self) -> Result<Option<Gic<'a>>, Error<'a>> {
        let Some(located) = self.first_compatible(&GIC_COMPATIBLES) else { return Ok(None) };
        self.describe_gic(&located).map(Some)
    }

    /// The architected timer's interrupts, from the first enabled `arm,armv8-timer` (or
    /// `arm,armv7-timer`) node; `None` if there is none. Its interrupts must go to the GIC, and
    /// all be PPIs.
    pub fn timer_interrupts(&self) -> Result<Option<TimerInterrupts>, Error<'a>> {
        let Some(located) = self.first_compatible(&TIMER_COMPATIBLES) else { return Ok(None) };
        self.describe_timer(&located).map(Some)
    }

    /// A device's `interrupts`, each decoded by the GIC binding; empty if it has none. An error
    /// if its interrupt parent is not the GIC that [`Self::gic`] describes, if the property is
    /// not a whole number of specifiers, if an entry is one the binding does not allow, or if
    /// the device has `interrupts-extended`, which this crate does not read. The device's node is
    /// found again by its name, as [`Device::name`] explains.
    pub fn gic_interrupts(
        &self,
        device: &Device<'_>,
    ) -> Result<ArrayVec<GicInterrupt, MAX_DEVICE_INTERRUPTS>, Error<'a>> {
        let Some(located) = self.locate_named(device.name) else { return Ok(ArrayVec::new()) };
        self.located_gic_interrupts(&located)
    }

    /// The interrupt that `interrupt-names` calls `name` (`"dma0"` on the Pi's DMA engine);
    /// `None` if no entry is so named. Errors as [`Self::gic_interrupts`], and if the name's
    /// position is past the end of `interrupts`.
    pub fn named_gic_interrupt(&self, device: &Device<'_>, name: &str) -> Result<Option<GicInterrupt>, Error<'a>> {
        let Some(located) = self.locate_named(device.name) else { return Ok(None) };
        let Some(index) = interrupt_name_index(&located.node, name) else { return Ok(None) };
        let interrupts = self.located_gic_interrupts(&located)?;
        match interrupts.get(index) {
            Some(interrupt) => Ok(Some(*interrupt)),
            None => Err(bad(&located.node, "interrupt-names", "names more interrupts than 'interrupts' lists")),
        }
    }

    fn describe_gic(&self, located: &Located<'_, 'a>) -> Result<Gic<'a>, Error<'a>> {
        let node = &located.node;
        let version = gic_version(node);
        if node.property("interrupt-controller").is_none() {
            return Err(bad(node, "interrupt-controller", "is missing from a node with a GIC compatible"));
        }
        gic_interrupt_cells(node.name, one_cell(node, "#interrupt-cells")?, version)?;
        let regs = translated_regs(located)?;
        match version {
            GicVersion::V2 => {
                let [distributor, cpu_interface, ..] = regs.as_slice() else {
                    let problem = "has fewer than two (address, size) entries: a GICv2 lists its distributor, \
                                   then its CPU interface";
                    return Err(bad(node, "reg", problem));
                };
                Ok(Gic {
                    name: node.name,
                    version,
                    distributor: *distributor,
                    cpu_interface: Some(*cpu_interface),
                    redistributors: ArrayVec::new(),
                    its: None,
                    v2m: self.msi_controller(located, V2M_COMPATIBLE)?,
                })
            }
            GicVersion::V3 => {
                let regions = match one_cell(node, "#redistributor-regions")? {
                    None => 1,
                    Some(count @ 1..) if count as usize <= MAX_REDISTRIBUTOR_REGIONS => count as usize,
                    Some(_) => {
                        const _: () = assert!(MAX_REDISTRIBUTOR_REGIONS == 16, "the sentence below says 16");
                        let problem = "is 0, or more than the 16 redistributor regions this crate describes";
                        return Err(bad(node, "#redistributor-regions", problem));
                    }
                };
                let Some((distributor, redistributors)) = regs.split_first() else {
                    return Err(bad(node, "reg", gic_v3_reg_problem()));
                };
                let redistributors = redistributors.get(..regions).ok_or(bad(node, "reg", gic_v3_reg_problem()))?;
                Ok(Gic {
                    name: node.name,
                    version,
                    distributor: *distributor,
                    cpu_interface: None,
                    redistributors: redistributors.iter().copied().collect(),
                    its: self.msi_controller(located, ITS_COMPATIBLE)?,
                    v2m: None,
                })
            }
        }
    }

    /// The first enabled child of the GIC at `gic` with `compatible`, its `reg` translated
    /// through the GIC's `ranges`.
    fn msi_controller(&self, gic: &Located<'_, 'a>, compatible: &str) -> Result<Option<MsiController<'a>>, Error<'a>> {
        let is_frame = |child: &FdtNode<'_, 'a>| {
            child.compatible().is_some_and(|c| c.all().any(|c| c == compatible)) && is_enabled(child)
        };
        let Some(node) = gic.node.children().find(is_frame) else { return Ok(None) };
        let mut ancestors = gic.ancestors.clone();
        // Validation bounds the nesting to MAX_DEPTH, so a child's ancestors always fit.
        if ancestors.try_push(gic.node).is_err() {
            return Ok(None);
        }
        let child = Located { node, ancestors };
        let registers = match translated_regs(&child)?.as_slice() {
            [registers] => *registers,
            _ => return Err(bad(&node, "reg", "is not one (address, size) pair: the MSI frame's registers")),
        };
        Ok(Some(MsiController { name: node.name, registers, phandle: one_cell(&node, "phandle")? }))
    }

    fn describe_timer(&self, located: &Located<'_, 'a>) -> Result<TimerInterrupts, Error<'a>> {
        let node = &located.node;
        let interrupts = self.located_gic_interrupts(located)?;
        if interrupts.iter().any(|interrupt| interrupt.kind != InterruptKind::Ppi) {
            let problem = "has an SPI: the architected timer's interrupts are PPIs, one per core";
            return Err(bad(node, "interrupts", problem));
        }
        if node.property("interrupt-names").is_none() {
            // By position, in the binding's order.
            let [secure_physical, physical, virtual_timer, rest @ ..] = interrupts.as_slice() else {
                let problem = "has fewer than three entries: secure physical, non-secure physical and virtual \
                               timer, in the binding's order";
                return Err(bad(node, "interrupts", problem));
            };
            return Ok(TimerInterrupts {
                secure_physical: Some(*secure_physical),
                physical: *physical,
                virtual_timer: *virtual_timer,
                hypervisor: rest.first().copied(),
            });
        }
        let named = |name| -> Result<Option<GicInterrupt>, Error<'a>> {
            let Some(index) = interrupt_name_index(node, name) else { return Ok(None) };
            let interrupt = interrupts.get(index).copied();
            interrupt.map(Some).ok_or(bad(node, "interrupt-names", "names more interrupts than 'interrupts' lists"))
        };
        let (Some(physical), Some(virtual_timer)) = (named("phys")?, named("virt")?) else {
            return Err(bad(node, "interrupt-names", "does not name both a \"phys\" and a \"virt\" interrupt"));
        };
        Ok(TimerInterrupts {
            secure_physical: named("sec-phys")?,
            physical,
            virtual_timer,
            hypervisor: named("hyp-phys")?,
        })
    }

    /// The `interrupts` of a located node, decoded by the GIC binding.
    fn located_gic_interrupts(
        &self,
        located: &Located<'_, 'a>,
    ) -> Result<ArrayVec<GicInterrupt, MAX_DEVICE_INTERRUPTS>, Error<'a>> {
        let node = &located.node;
        let mut decoded = ArrayVec::new();
        if node.property("interrupts-extended").is_some() {
            let problem = "is not read by this crate: list the interrupts in 'interrupts' under an \
                           'interrupt-parent'";
            return Err(bad(node, "interrupts-extended", problem));
        }
        let Some(interrupts) = node.property("interrupts") else { return Ok(decoded) };
        let phandle = interrupt_parent(located)?;
        // The GIC that `gic()` describes, if the phandle is its own; found without looking the
        // phandle up in the whole tree, which every device's query would do again.
        let mut gic = None;
        if let Some(first) = self.first_compatible_node(&GIC_COMPATIBLES) {
            let is_parent = one_cell(&first, "phandle")? == Some(phandle);
            if is_parent && first.property("interrupt-controller").is_some() {
                gic = Some(first);
            }
        }
        let Some(gic) = gic else {
            // Say what the parent is instead: a phandle no node has, or not a controller ...
            self.interrupt_controller(node, "interrupt-parent", phandle)?;
            // ... or a controller other than the GIC.
            let problem = "goes to an interrupt parent that is not the GIC, so the GIC binding cannot read it";
            return Err(bad(node, "interrupts", problem));
        };
        let interrupt_cells = one_cell(&gic, "#interrupt-cells")?;
        gic_interrupt_cells(gic.name, interrupt_cells, gic_version(&gic))?;
        let (cells_per_entry, layout) = match interrupt_cells {
            Some(3) => (3, "type, number, flags: the GIC's #interrupt-cells"),
            _ => (4, "type, number, flags, PPI partition: the GIC's #interrupt-cells"),
        };
        let specifier_bytes = cells_per_entry * 4;
        if !interrupts.value.len().is_multiple_of(specifier_bytes) {
            return Err(entry_length_error(node, "interrupts", interrupts.value.len(), cells_per_entry, layout));
        }
        for raw in interrupts.value.chunks_exact(specifier_bytes) {
            let specifier: ArrayVec<u32, MAX_INTERRUPT_CELLS> = cells(raw).collect();
            let Some(interrupt) = GicInterrupt::from_cells(&specifier) else {
                let problem = "has an entry the GIC binding does not allow: type 0 (SPI 0-987) or 1 (PPI 0-15), \
                               flags bits 3:0 one of 1, 2, 4, 8 (2 and 8 for PPIs only)";
                return Err(bad(node, "interrupts", problem));
            };
            decoded.try_push(interrupt).map_err(|_| Error::TooManyRanges { what: "interrupts of one device" })?;
        }
        Ok(decoded)
    }

    /// The interrupt controller that `property` of `node` names by `phandle`, with the cell
    /// counts needed to read its specifiers.
    pub(crate) fn interrupt_controller(
        &self,
        node: &FdtNode<'_, 'a>,
        property: &'static str,
        phandle: u32,
    ) -> Result<InterruptController<'a>, Error<'a>> {
        let controller =
            self.node_by_phandle(phandle).ok_or(Error::UnknownPhandle { node: node.name, property, phandle })?;
        if controller.property("interrupt-controller").is_none() {
            let problem = "names an interrupt parent that is not an interrupt controller (maps that lead to \
                           another map are not followed)";
            return Err(bad(node, property, problem));
        }
        let cells = match one_cell(&controller, "#interrupt-cells")? {
            Some(cells @ 1..) if cells as usize <= MAX_INTERRUPT_CELLS => cells as usize,
            _ => return Err(bad(&controller, "#interrupt-cells", "is missing, zero, or more than 4 cells")),
        };
        let address_cells = one_cell(&controller, "#address-cells")?.unwrap_or(0) as usize;
        Ok(InterruptController { name: controller.name, cells, address_cells })
    }
}

fn gic_v3_reg_problem() -> &'static str {
    "has fewer (address, size) entries than a GICv3 lists: its distributor, then #redistributor-regions \
     redistributor regions (1 if absent)"
}

/// V3 for `arm,gic-v3`; V2 for any other GIC `compatible`.
fn gic_version(node: &FdtNode<'_, '_>) -> GicVersion {
    match node.compatible().is_some_and(|c| c.all().any(|c| c == GIC_V3_COMPATIBLE)) {
        true => GicVersion::V3,
        false => GicVersion::V2,
    }
}

/// Checks the `#interrupt-cells` of the GIC `node`: 3, or for a GICv3 3 or 4.
fn gic_interrupt_cells(node: &str, cells: Option<u32>, version: GicVersion) -> Result<(), Error<'_>> {
    let problem = match (version, cells) {
        (_, Some(3)) | (GicVersion::V3, Some(4)) => return Ok(()),
        (GicVersion::V2, _) => "is not 3 (type, number, flags), as a GICv2's is",
        (GicVersion::V3, _) => "is not 3 (type, number, flags) or 4 (and a PPI partition), as a GICv3's is",
    };
    Err(Error::BadProperty { node, property: "#interrupt-cells", problem })
}

/// The phandle of the nearest `interrupt-parent`, on the node or a node above it (Devicetree
/// Specification 0.4, §2.4.1).
pub(crate) fn interrupt_parent<'a>(located: &Located<'_, 'a>) -> Result<u32, Error<'a>> {
    let node = &located.node;
    for carrier in core::iter::once(node).chain(located.ancestors.iter().rev()) {
        if let Some(phandle) = one_cell(carrier, "interrupt-parent")? {
            return Ok(phandle);
        }
    }
    Err(bad(node, "interrupts", "has no interrupt-parent on the node or above it"))
}

/// The position of `name` in `node`'s `interrupt-names`, which is also the position of its
/// specifier in `interrupts`; `None` if it is not listed.
pub(crate) fn interrupt_name_index(node: &FdtNode<'_, '_>, name: &str) -> Option<usize> {
    let names = node.property("interrupt-names")?.value;
    // The list's last NUL ends its last name; it does not start an empty one.
    let names = names.strip_suffix(&[0]).unwrap_or(names);
    if names.is_empty() {
        return None;
    }
    names.split(|&byte| byte == 0).position(|listed| listed == name.as_bytes())
}
