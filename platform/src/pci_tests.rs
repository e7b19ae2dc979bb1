//! Host tests for PCIe host bridges, SMMUv3 nodes and the BAR allocator, on blobs shaped like
//! QEMU 10's `-M virt,iommu=smmuv3`.

use alloc::format;
use alloc::vec::Vec;

use addr::PhysAddr;
use arrayvec::ArrayVec;

use crate::devicetree::Error as DtError;
use crate::fdt_writer::FdtWriter;
use crate::pci::{
    BarAllocator, BarAssignment, BarError, BarKind, BarRequest, BusRange, IdMapEntry, IntxPin, IommuTarget,
    MAX_PCI_WINDOWS, MsiRoute, PciFunction, PciSpace, PciWindow, StreamRoute,
};
use crate::tests::{GIB, MIB, parse, range};

const GIC_PHANDLE: u32 = 0x8002;
const SMMU_PHANDLE: u32 = 0x8004;
/// The phandle QEMU's `msi-map` names: the GICv2m frame with `gic-version=2`, the ITS with 3.
const MSI_CONTROLLER_PHANDLE: u32 = 0x8003;
const BRIDGE: &str = "pcie@10000000";
/// QEMU 10 `-M virt,gic-version=3,iommu=smmuv3`'s own devicetree: its host bridge's `msi-map`
/// names the ITS.
const QEMU_GICV3_ITS: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv3-its.dtb");

/// `interrupt-map` of QEMU's pcie@10000000, as `dtc` prints it: (unit address, pin, GIC
/// phandle, GIC unit address, GIC specifier) for devices 0 to 3 and pins INTA to INTD.
#[rustfmt::skip]
const QEMU_INTERRUPT_MAP: [u32; 160] = [
    0x0000, 0, 0, 1, 0x8002, 0, 0, 0, 3, 4,   0x0000, 0, 0, 2, 0x8002, 0, 0, 0, 4, 4,
    0x0000, 0, 0, 3, 0x8002, 0, 0, 0, 5, 4,   0x0000, 0, 0, 4, 0x8002, 0, 0, 0, 6, 4,
    0x0800, 0, 0, 1, 0x8002, 0, 0, 0, 4, 4,   0x0800, 0, 0, 2, 0x8002, 0, 0, 0, 5, 4,
    0x0800, 0, 0, 3, 0x8002, 0, 0, 0, 6, 4,   0x0800, 0, 0, 4, 0x8002, 0, 0, 0, 3, 4,
    0x1000, 0, 0, 1, 0x8002, 0, 0, 0, 5, 4,   0x1000, 0, 0, 2, 0x8002, 0, 0, 0, 6, 4,
    0x1000, 0, 0, 3, 0x8002, 0, 0, 0, 3, 4,   0x1000, 0, 0, 4, 0x8002, 0, 0, 0, 4, 4,
    0x1800, 0, 0, 1, 0x8002, 0, 0, 0, 6, 4,   0x1800, 0, 0, 2, 0x8002, 0, 0, 0, 3, 4,
    0x1800, 0, 0, 3, 0x8002, 0, 0, 0, 4, 4,   0x1800, 0, 0, 4, 0x8002, 0, 0, 0, 5, 4,
];

#[rustfmt::skip]
const QEMU_RANGES: [u32; 21] = [
    0x100_0000, 0x00, 0x00,        0x00, 0x3eff_0000,  0x00, 0x1_0000,
    0x200_0000, 0x00, 0x1000_0000, 0x00, 0x1000_0000,  0x00, 0x2eff_0000,
    0x300_0000, 0x80, 0x00,        0x80, 0x00,         0x80, 0x00,
];

/// The cell-valued properties of one node, editable before the blob is written.
struct Properties(Vec<(&'static str, Vec<u32>)>);

impl Properties {
    fn set(&mut self, name: &'static str, cells: &[u32]) {
        self.remove(name);
        self.0.push((name, cells.to_vec()));
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(existing, _)| *existing != name);
    }

    fn write(&self, w: &mut FdtWriter) {
        for (name, cells) in &self.0 {
            w.property_cells(name, cells);
        }
    }
}

/// QEMU's pcie@10000000, less its string properties.
fn qemu_bridge() -> Properties {
    Properties(alloc::vec![
        ("iommu-map", alloc::vec![0, SMMU_PHANDLE, 0, 0x1_0000]),
        ("interrupt-map-mask", alloc::vec![0x1800, 0, 0, 7]),
        ("interrupt-map", QEMU_INTERRUPT_MAP.to_vec()),
        ("#interrupt-cells", alloc::vec![1]),
        ("ranges", QEMU_RANGES.to_vec()),
        ("reg", alloc::vec![0x40, 0x1000_0000, 0, 0x1000_0000]),
        ("msi-map", alloc::vec![0, MSI_CONTROLLER_PHANDLE, 0, 0x1_0000]),
        ("dma-coherent", alloc::vec![]),
        ("bus-range", alloc::vec![0, 0xff]),
        ("linux,pci-domain", alloc::vec![0]),
        ("#size-cells", alloc::vec![2]),
        ("#address-cells", alloc::vec![3]),
    ])
}

/// QEMU's smmuv3@9050000, less its string properties.
fn qemu_smmu() -> Properties {
    Properties(alloc::vec![
        ("phandle", alloc::vec![SMMU_PHANDLE]),
        ("#iommu-cells", alloc::vec![1]),
        ("dma-coherent", alloc::vec![]),
        ("interrupts", alloc::vec![0, 0x4a, 1, 0, 0x4b, 1, 0, 0x4c, 1, 0, 0x4d, 1]),
        ("reg", alloc::vec![0, 0x905_0000, 0, 0x2_0000]),
    ])
}

/// A QEMU-`virt`-like machine: the GIC, the SMMUv3 and the host bridge, with `bridge` and `smmu`
/// as their properties.
fn virt(bridge: &Properties, smmu: &Properties) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("interrupt-parent", &[GIC_PHANDLE]);
    w.property_cells("#size-cells", &[2]);
    w.property_cells("#address-cells", &[2]);
    w.begin_node("intc@8000000");
    w.property_cells("phandle", &[GIC_PHANDLE]);
    w.property_reg64("reg", &[(0x800_0000, 0x1_0000), (0x801_0000, 0x1_0000)]);
    w.property_string("compatible", "arm,cortex-a15-gic");
    w.property("ranges", &[]);
    w.property_cells("#size-cells", &[2]);
    w.property_cells("#address-cells", &[2]);
    w.property("interrupt-controller", &[]);
    w.property_cells("#interrupt-cells", &[3]);
    w.end_node();
    w.begin_node("smmuv3@9050000");
    smmu.write(&mut w);
    w.property("interrupt-names", b"eventq\0priq\0cmdq-sync\0gerror\0");
    w.property_string("compatible", "arm,smmu-v3");
    w.end_node();
    w.begin_node(BRIDGE);
    bridge.write(&mut w);
    w.property_string("device_type", "pci");
    w.property_string("compatible", "pci-host-ecam-generic");
    w.end_node();
    w.end_node();
    w.finish()
}

fn qemu_virt() -> Vec<u8> {
    virt(&qemu_bridge(), &qemu_smmu())
}

/// The one error that describing the host bridges of `blob` gives.
fn bridge_error(bridge: &Properties) -> DtError<'static> {
    let blob = virt(bridge, &qemu_smmu());
    parse(&blob).unwrap().pci_host_bridges().unwrap_err()
}

fn function(bus: u8, device: u8, function: u8) -> PciFunction {
    PciFunction::new(bus, device, function).unwrap()
}

fn window(space: PciSpace, prefetchable: bool, pci_address: u64, cpu_address: u64, size: u64) -> PciWindow {
    PciWindow { space, prefetchable, pci_address, cpu_address: PhysAddr::new(cpu_address), size }
}

fn qemu_windows() -> ArrayVec<PciWindow, MAX_PCI_WINDOWS> {
    ArrayVec::from_iter([
        window(PciSpace::Io, false, 0, 0x3eff_0000, 0x1_0000),
        window(PciSpace::Memory32, false, 0x1000_0000, 0x1000_0000, 0x2eff_0000),
        window(PciSpace::Memory64, false, 0x80_0000_0000, 0x80_0000_0000, 512 * GIB),
    ])
}

#[test]
fn the_qemu_host_bridge_is_described_from_its_node() {
    let blob = qemu_virt();
    let dt = parse(&blob).unwrap();
    let bridges = dt.pci_host_bridges().unwrap();
    let [bridge] = bridges.as_slice() else { panic!("one host bridge expected, found {}", bridges.len()) };
    assert_eq!(bridge.name, BRIDGE);
    assert_eq!(bridge.ecam, range(0x40_1000_0000, 256 * MIB));
    assert_eq!(bridge.buses, BusRange { first: 0, last: 255 });
    assert!(bridge.coherent);
    assert_eq!(bridge.windows, qemu_windows());
    let entry = IdMapEntry { rid_base: 0, target: SMMU_PHANDLE, id_base: 0, length: 0x1_0000 };
    assert_eq!(bridge.iommu_map.entries(), &[entry]);
    assert_eq!(bridge.iommu_map.mask(), u32::MAX, "no iommu-map-mask keeps every RID bit");
    let entry = IdMapEntry { rid_base: 0, target: MSI_CONTROLLER_PHANDLE, id_base: 0, length: 0x1_0000 };
    assert_eq!(bridge.msi_map.entries(), &[entry]);
    assert_eq!(bridge.msi_map.mask(), u32::MAX, "no msi-map-mask keeps every RID bit");
    assert_eq!(format!("{}", bridge.windows[2]), "64-bit memory PCI 0x8000000000 at CPU 0x8000000000, 512 GiB");
}

#[test]
fn every_requester_is_its_own_stream_on_qemu() {
    let blob = qemu_virt();
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    let device_1 = function(0, 1, 0);
    assert_eq!(device_1.requester_id(), 0x0008);
    assert_eq!(bridge.stream_id(0x0008), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0x08 }));
    assert_eq!(bridge.stream_id(0x00ff), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0xff }));
    assert_eq!(function(0, 0x1f, 7).requester_id(), 0x00ff);
}

#[test]
fn legacy_interrupts_follow_qemus_swizzle() {
    let blob = qemu_virt();
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    let device_1_inta = bridge.legacy_interrupt(function(0, 1, 0), IntxPin::A).unwrap();
    assert_eq!(device_1_inta.cells.as_slice(), &[0, 4, 4]);
    assert_eq!(device_1_inta.gic_spi(), Some(4));
    assert_eq!(format!("{device_1_inta}"), "intc@8000000 <0x0 0x4 0x4>");
    let device_3_intb = bridge.legacy_interrupt(function(0, 3, 0), IntxPin::B).unwrap();
    assert_eq!(device_3_intb.gic_spi(), Some(3));
    // The mask keeps device bits 1:0 only, so device 4 shares device 0's lines, and so on.
    for device in 0..32u8 {
        for pin in [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D] {
            let spi = 3 + (u32::from(device) + pin as u32 - 1) % 4;
            let interrupt = bridge.legacy_interrupt(function(0, device, 0), pin).unwrap();
            assert_eq!(interrupt.gic_spi(), Some(spi), "device {device} {pin}");
            assert_eq!(interrupt.controller, "intc@8000000");
        }
    }
}

#[test]
fn an_iommu_map_mask_gives_every_function_of_a_device_one_stream() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0, SMMU_PHANDLE, 0x100, 0x100]);
    bridge.set("iommu-map-mask", &[0xfff8]);
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.iommu_map.mask(), 0xfff8);
    let stream = |rid| bridge.stream_id(rid).map(|route| route.stream_id);
    assert_eq!(stream(0x0008), Some(0x108));
    assert_eq!(stream(0x000b), Some(0x108), "function 3 of device 1 shares function 0's stream");
    assert_eq!(stream(0x0010), Some(0x110));
    assert_eq!(stream(0x0100), None, "bus 1 lies past the entry's 0x100 RIDs");
}

#[test]
fn a_rid_outside_every_entry_is_not_translated() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0, SMMU_PHANDLE, 0, 0x10, 0x100, SMMU_PHANDLE, 0x40, 0x10]);
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.stream_id(0x000f), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0x0f }));
    assert_eq!(bridge.stream_id(0x0010), None);
    assert_eq!(bridge.stream_id(0x0105), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0x45 }));
    assert_eq!(bridge.stream_id(0x0110), None);
}

#[test]
fn qemus_iommu_map_names_its_smmu_and_has_no_problem() {
    let blob = qemu_virt();
    let dt = parse(&blob).unwrap();
    let bridge = &dt.pci_host_bridges().unwrap()[0];
    assert!(dt.iommu_map_problems(bridge).is_empty());
}

#[test]
fn an_iommu_map_phandle_no_node_has_is_reported_with_the_phandle_and_the_requesters() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0, 0x99, 0, 0x100, 0x100, SMMU_PHANDLE, 0x100, 0x100]);
    let blob = virt(&bridge, &qemu_smmu());
    let dt = parse(&blob).unwrap();
    let bridges = dt.pci_host_bridges().expect("a dangling iommu-map phandle leaves the rest of the bridge usable");
    let problems = dt.iommu_map_problems(&bridges[0]);
    let [problem] = problems.as_slice() else { panic!("one problem expected: {problems:?}") };
    assert_eq!(problem.target, IommuTarget::Missing);
    assert_eq!(problem.entry, IdMapEntry { rid_base: 0, target: 0x99, id_base: 0, length: 0x100 });
    assert_eq!(
        format!("{problem}"),
        "PCI host bridge 'pcie@10000000': `iommu-map` sends requester IDs 0x0000 to 0x00ff to phandle 0x99, \
         which no node has: the DMA of those functions cannot be translated"
    );
    // The route is still what the entry says: the kernel names the phandle again per function.
    assert_eq!(bridges[0].stream_id(0x0008), Some(StreamRoute { iommu: 0x99, stream_id: 0x08 }));
}

#[test]
fn an_iommu_map_naming_another_node_or_a_disabled_smmu_is_reported_with_its_name() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0, GIC_PHANDLE, 0, 0x1_0000]);
    let blob = virt(&bridge, &qemu_smmu());
    let dt = parse(&blob).unwrap();
    let problems = dt.iommu_map_problems(&dt.pci_host_bridges().unwrap()[0]);
    assert_eq!(problems[0].target, IommuTarget::NotAnSmmu("intc@8000000"));
    let message = format!("{}", problems[0]);
    for fact in [BRIDGE, "0x0000 to 0xffff", "phandle 0x8002", "'intc@8000000'", "not an SMMUv3 (arm,smmu-v3)"] {
        assert!(message.contains(fact), "{fact:?} missing from: {message}");
    }

    let mut smmu = qemu_smmu();
    // `status = "disabled"`, NUL-padded to whole cells.
    smmu.set("status", &[u32::from_be_bytes(*b"disa"), u32::from_be_bytes(*b"bled"), 0]);
    let blob = virt(&qemu_bridge(), &smmu);
    let dt = parse(&blob).unwrap();
    let problems = dt.iommu_map_problems(&dt.pci_host_bridges().unwrap()[0]);
    assert_eq!(problems[0].target, IommuTarget::Disabled("smmuv3@9050000"));
    let message = format!("{}", problems[0]);
    assert!(
        message.contains("phandle 0x8004, which is 'smmuv3@9050000', an SMMUv3 that `status` disables"),
        "{message}"
    );
}

#[test]
fn without_an_iommu_map_nothing_is_translated() {
    let mut bridge = qemu_bridge();
    bridge.remove("iommu-map");
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert!(bridge.iommu_map.is_empty());
    assert_eq!(bridge.stream_id(0x0008), None);
}

#[test]
fn qemus_msi_map_gives_every_requester_its_own_device_id() {
    let blob = qemu_virt();
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    let device = |device_id| Some(MsiRoute { controller: MSI_CONTROLLER_PHANDLE, device_id });
    assert_eq!(bridge.msi_route(0x0000), device(0x0000));
    assert_eq!(bridge.msi_route(function(0, 1, 0).requester_id()), device(0x0008));
    assert_eq!(bridge.msi_route(function(0x12, 0x1f, 7).requester_id()), device(0x12ff));
    assert_eq!(bridge.msi_route(0xffff), device(0xffff));
}

#[test]
fn qemus_gicv3_devicetree_maps_every_requester_id_to_the_same_device_id_on_the_its() {
    let dt = parse(QEMU_GICV3_ITS).unwrap();
    let its = dt.gic().unwrap().and_then(|gic| gic.its).expect("gic-version=3 comes with an ITS");
    let its_phandle = its.phandle.expect("msi-map names the ITS by its phandle");
    let bridges = dt.pci_host_bridges().unwrap();
    let [bridge] = bridges.as_slice() else { panic!("one host bridge expected, found {}", bridges.len()) };
    let entry = IdMapEntry { rid_base: 0, target: its_phandle, id_base: 0, length: 0x1_0000 };
    assert_eq!(bridge.msi_map.entries(), &[entry]);
    assert_eq!(bridge.msi_map.mask(), u32::MAX);
    for rid in [0x0000, 0x0008, 0x0018, 0x0100, 0xffff] {
        assert_eq!(bridge.msi_route(rid), Some(MsiRoute { controller: its_phandle, device_id: u32::from(rid) }));
    }
}

#[test]
fn an_msi_map_mask_gives_every_function_of_a_device_one_device_id() {
    let mut bridge = qemu_bridge();
    bridge.set("msi-map", &[0, MSI_CONTROLLER_PHANDLE, 0x1000, 0x100]);
    bridge.set("msi-map-mask", &[0xfff8]);
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.msi_map.mask(), 0xfff8);
    assert_eq!(bridge.iommu_map.mask(), u32::MAX, "msi-map-mask leaves iommu-map alone");
    let device_id = |rid| bridge.msi_route(rid).map(|route| route.device_id);
    assert_eq!(device_id(0x0008), Some(0x1008));
    assert_eq!(device_id(0x000f), Some(0x1008), "function 7 of device 1 shares function 0's DeviceID");
    assert_eq!(device_id(0x0010), Some(0x1010));
    assert_eq!(device_id(0x0100), None, "bus 1 lies past the entry's 0x100 RIDs");
    assert_eq!(bridge.stream_id(0x000f), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0x0f }));
}

#[test]
fn a_rid_outside_every_msi_map_entry_has_no_msi_route() {
    let mut bridge = qemu_bridge();
    bridge.set("msi-map", &[0, MSI_CONTROLLER_PHANDLE, 0, 0x10, 0x100, 0x8005, 0x40, 0x10]);
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.msi_route(0x000f), Some(MsiRoute { controller: MSI_CONTROLLER_PHANDLE, device_id: 0x0f }));
    assert_eq!(bridge.msi_route(0x0010), None);
    assert_eq!(bridge.msi_route(0x0105), Some(MsiRoute { controller: 0x8005, device_id: 0x45 }));
    assert_eq!(bridge.msi_route(0x0110), None);
}

#[test]
fn without_an_msi_map_no_requester_has_an_msi_route() {
    let mut bridge = qemu_bridge();
    bridge.remove("msi-map");
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert!(bridge.msi_map.is_empty());
    assert_eq!(bridge.msi_route(0x0008), None);
    assert_eq!(bridge.stream_id(0x0008), Some(StreamRoute { iommu: SMMU_PHANDLE, stream_id: 0x08 }));
}

#[test]
fn config_space_follows_the_ecam_layout_from_the_first_bus() {
    let blob = qemu_virt();
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.config_space(function(1, 2, 3)), Some(range(0x40_1000_0000 + 0x11_3000, 0x1000)));
    assert_eq!(bridge.config_space(function(255, 31, 7)), Some(range(0x40_1fff_f000, 0x1000)));

    let mut bridge = qemu_bridge();
    bridge.set("bus-range", &[0x10, 0x1f]);
    bridge.set("reg", &[0, 0x3f00_0000, 0, 16 * MIB as u32]);
    let blob = virt(&bridge, &qemu_smmu());
    let bridge = &parse(&blob).unwrap().pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.buses.count(), 16);
    assert_eq!(bridge.config_space(function(0x10, 0, 0)), Some(range(0x3f00_0000, 0x1000)));
    assert_eq!(bridge.config_space(function(0x11, 1, 0)), Some(range(0x3f10_8000, 0x1000)));
    assert_eq!(bridge.config_space(function(0x0f, 0, 0)), None, "bus below the bridge's range");
    assert_eq!(bridge.config_space(function(0x20, 0, 0)), None, "bus above the bridge's range");
}

#[test]
fn without_bus_range_the_bridge_owns_every_bus() {
    let mut bridge = qemu_bridge();
    bridge.remove("bus-range");
    let blob = virt(&bridge, &qemu_smmu());
    assert_eq!(parse(&blob).unwrap().pci_host_bridges().unwrap()[0].buses, BusRange::ALL);
}

#[test]
fn window_cpu_addresses_are_translated_through_the_buses_above() {
    // A bridge below a bus with one-cell addresses and an offset: each `ranges` entry is
    // 3 + 1 + 2 cells, and its CPU address moves by the bus's offset.
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0x1000_0000, 0x6, 0x0, 0x4000_0000]);
    w.begin_node("pcie@30000000");
    w.property_string("compatible", "pci-host-ecam-generic");
    w.property_cells("#address-cells", &[3]);
    w.property_cells("#size-cells", &[2]);
    w.property_cells("bus-range", &[0, 0]);
    w.property_cells("reg", &[0x3000_0000, 0x10_0000]);
    w.property_cells("ranges", &[0x4200_0000, 0x0, 0x2000_0000, 0x1000_0000, 0x0, 0x1000_0000]);
    w.end_node();
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    let bridge = &dt.pci_host_bridges().unwrap()[0];
    assert_eq!(bridge.ecam, range(0x6_2000_0000, MIB));
    let expected = window(PciSpace::Memory32, true, 0x2000_0000, 0x6_0000_0000, 0x1000_0000);
    assert_eq!(bridge.windows.as_slice(), &[expected]);
    assert!(!bridge.coherent, "no dma-coherent anywhere: arm64 devices do not snoop");
    assert_eq!(bridge.legacy_interrupt(function(0, 0, 0), IntxPin::A), None, "no interrupt-map");
}

#[test]
fn disabled_bridges_are_not_described() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node(BRIDGE);
    w.property_string("compatible", "pci-host-ecam-generic");
    w.property_string("status", "disabled");
    w.end_node();
    w.end_node();
    let blob = w.finish();
    assert!(parse(&blob).unwrap().pci_host_bridges().unwrap().is_empty());
}

#[test]
fn a_ranges_entry_of_the_wrong_length_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("ranges", &QEMU_RANGES[..20]);
    let error = bridge_error(&bridge);
    assert_eq!(
        error,
        DtError::BadEntryLength {
            node: BRIDGE,
            property: "ranges",
            cells: 20,
            entry_cells: 7,
            layout: "3-cell PCI address, parent address, 2-cell size"
        }
    );
    assert_eq!(
        format!("{error}"),
        "devicetree node 'pcie@10000000': property 'ranges' holds 20 cells, not a whole number of 7-cell entries \
         (3-cell PCI address, parent address, 2-cell size)"
    );
}

#[test]
fn an_ecam_too_small_for_the_bus_range_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("reg", &[0x40, 0x1000_0000, 0, 0x800_0000]);
    let error = bridge_error(&bridge);
    assert_eq!(error, DtError::EcamTooSmall { node: BRIDGE, ecam_size: 128 * MIB, buses: 256 });
    assert_eq!(
        format!("{error}"),
        "PCI host bridge 'pcie@10000000': its ECAM region of 128 MiB cannot hold the configuration space of \
         256 buses (1 MiB each)"
    );
}

#[test]
fn an_iommu_map_that_is_not_whole_entries_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0, SMMU_PHANDLE, 0, 0x1_0000, 0x100, SMMU_PHANDLE]);
    let error = bridge_error(&bridge);
    assert!(matches!(
        error,
        DtError::BadEntryLength { node: BRIDGE, property: "iommu-map", cells: 6, entry_cells: 4, .. }
    ));
    assert_eq!(
        format!("{error}"),
        "devicetree node 'pcie@10000000': property 'iommu-map' holds 6 cells, not a whole number of 4-cell entries \
         (RID base, IOMMU phandle, StreamID base, length)"
    );
}

#[test]
fn an_msi_map_that_is_not_whole_entries_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("msi-map", &[0, MSI_CONTROLLER_PHANDLE, 0, 0x1_0000, 0x100]);
    let error = bridge_error(&bridge);
    assert!(matches!(
        error,
        DtError::BadEntryLength { node: BRIDGE, property: "msi-map", cells: 5, entry_cells: 4, .. }
    ));
    assert_eq!(
        format!("{error}"),
        "devicetree node 'pcie@10000000': property 'msi-map' holds 5 cells, not a whole number of 4-cell entries \
         (RID base, MSI controller phandle, DeviceID base, length)"
    );
}

/// Checks that `property` of the bridge, set to `cells`, is refused with `problem`.
fn assert_refused(property: &'static str, cells: &[u32], problem: &str) {
    let mut bridge = qemu_bridge();
    bridge.set(property, cells);
    match bridge_error(&bridge) {
        DtError::BadProperty { node: BRIDGE, property: named, problem: found } => {
            assert_eq!((named, found), (property, problem), "{property} = {cells:x?}");
        }
        other => panic!("{property} = {cells:x?}: unexpected {other:?}"),
    }
}

#[test]
fn malformed_bridge_properties_are_errors_that_name_them() {
    assert_refused(
        "ranges",
        &[0, 0, 0, 0, 0x1000, 0, 0x1000],
        "has a configuration-space window; ECAM reaches that space",
    );
    assert_refused(
        "ranges",
        &[0x200_0000, 1, 0, 1, 0, 0, 0x1000],
        "has an I/O or 32-bit memory window that reaches above 4 GiB",
    );
    assert_refused("ranges", &[0x300_0000, 0x80, 0, 0x80, 0, 0, 0], "has a window of size zero");
    assert_refused("bus-range", &[0x10, 0x0f], "is not two cells: first and last bus, at most 255, in order");
    assert_refused("bus-range", &[0, 0x100], "is not two cells: first and last bus, at most 255, in order");
    assert_refused("reg", &[], "is not one (address, size) pair: the ECAM region");
    assert_refused("iommu-map", &[], "is empty");
    assert_refused("iommu-map", &[0, SMMU_PHANDLE, 0, 0], "has an entry of length zero");
    assert_refused(
        "iommu-map",
        &[0xffff_ff00, SMMU_PHANDLE, 0, 0x200],
        "has an entry whose RIDs or StreamIDs run past 32 bits",
    );
    assert_refused("msi-map", &[], "is empty");
    assert_refused("msi-map", &[0, MSI_CONTROLLER_PHANDLE, 0, 0], "has an entry of length zero");
    assert_refused(
        "msi-map",
        &[0, MSI_CONTROLLER_PHANDLE, 0xffff_ff00, 0x200],
        "has an entry whose RIDs or DeviceIDs run past 32 bits",
    );
    assert_refused("#address-cells", &[2], "is not 3, the cells of a PCI address");
    assert_refused("#interrupt-cells", &[2], "is not 1 (a PCI interrupt is one pin number)");
    assert_refused("interrupt-map-mask", &[0x1800, 0, 7], "is not 4 cells (3 for the unit address, 1 for the pin)");
    assert_refused("interrupt-map", &QEMU_INTERRUPT_MAP[..15], "ends in the middle of an entry");
    assert_refused(
        "interrupt-map",
        &[0, 0, 0, 1, SMMU_PHANDLE, 0, 0, 0, 3, 4],
        "names an interrupt parent that is not an interrupt controller (maps that lead to another map are not \
         followed)",
    );
}

#[test]
fn a_rid_base_the_mask_clears_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("iommu-map", &[0x0009, SMMU_PHANDLE, 0, 1]);
    bridge.set("iommu-map-mask", &[0xfff8]);
    let problem = "has a RID base with bits that iommu-map-mask clears";
    assert_eq!(bridge_error(&bridge), DtError::BadProperty { node: BRIDGE, property: "iommu-map", problem });
}

#[test]
fn an_msi_map_rid_base_the_mask_clears_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("msi-map", &[0x0009, MSI_CONTROLLER_PHANDLE, 0, 1]);
    bridge.set("msi-map-mask", &[0xfff8]);
    let problem = "has a RID base with bits that msi-map-mask clears";
    assert_eq!(bridge_error(&bridge), DtError::BadProperty { node: BRIDGE, property: "msi-map", problem });
}

#[test]
fn an_interrupt_map_naming_an_unknown_phandle_is_an_error() {
    let mut bridge = qemu_bridge();
    bridge.set("interrupt-map", &[0, 0, 0, 1, 0x1234, 0, 0, 0, 3, 4]);
    let error = bridge_error(&bridge);
    assert_eq!(error, DtError::UnknownPhandle { node: BRIDGE, property: "interrupt-map", phandle: 0x1234 });
    assert_eq!(
        format!("{error}"),
        "devicetree node 'pcie@10000000': property 'interrupt-map' names phandle 0x1234, which no node has"
    );
}

#[test]
fn the_qemu_smmu_is_described_with_its_named_interrupts() {
    let blob = qemu_virt();
    let smmus = parse(&blob).unwrap().smmus().unwrap();
    let [smmu] = smmus.as_slice() else { panic!("one SMMU expected, found {}", smmus.len()) };
    assert_eq!(smmu.name, "smmuv3@9050000");
    assert_eq!(smmu.phandle, Some(SMMU_PHANDLE));
    assert_eq!(smmu.registers, range(0x905_0000, 0x2_0000));
    assert!(smmu.coherent);
    let spi = |interrupt: &Option<crate::pci::InterruptSpecifier<'_>>| interrupt.as_ref().and_then(|i| i.gic_spi());
    assert_eq!(spi(&smmu.event_queue_interrupt), Some(0x4a));
    assert_eq!(spi(&smmu.global_error_interrupt), Some(0x4d), "gerror is the fourth name");
}

#[test]
fn malformed_smmu_properties_are_errors() {
    let smmu_error = |smmu: &Properties| parse(&virt(&qemu_bridge(), smmu)).unwrap().smmus().unwrap_err();
    let mut smmu = qemu_smmu();
    smmu.set("#iommu-cells", &[2]);
    let problem = "is not 1 (the one cell of an SMMUv3 client is its StreamID)";
    assert_eq!(smmu_error(&smmu), DtError::BadProperty { node: "smmuv3@9050000", property: "#iommu-cells", problem });

    let mut smmu = qemu_smmu();
    smmu.set("reg", &[0, 0x905_0000, 0, 0x1_0000]);
    let problem = "is smaller than the two 64 KiB register pages of an SMMUv3";
    assert_eq!(smmu_error(&smmu), DtError::BadProperty { node: "smmuv3@9050000", property: "reg", problem });

    let mut smmu = qemu_smmu();
    smmu.set("interrupts", &[0, 0x4a, 1, 0, 0x4b, 1]);
    let problem = "names more interrupts than 'interrupts' lists";
    let expected = DtError::BadProperty { node: "smmuv3@9050000", property: "interrupt-names", problem };
    assert_eq!(smmu_error(&smmu), expected, "gerror, the fourth name, has no specifier");
}

#[test]
fn function_addresses_and_pins_are_checked() {
    assert_eq!(PciFunction::new(0, 32, 0), None);
    assert_eq!(PciFunction::new(0, 0, 8), None);
    assert_eq!(format!("{}", function(0x12, 0x1f, 7)), "12:1f.7");
    assert_eq!(function(0x12, 0x1f, 7).requester_id(), 0x12ff);
    assert_eq!(IntxPin::from_register(0), None, "0 means the function uses no INTx");
    assert_eq!(IntxPin::from_register(4), Some(IntxPin::D));
    assert_eq!(IntxPin::from_register(5), None);
}

const MEMORY32: BarKind = BarKind::Memory { is_64bit: false, prefetchable: false };
const MEMORY64: BarKind = BarKind::Memory { is_64bit: true, prefetchable: false };
const MEMORY64_PREFETCHABLE: BarKind = BarKind::Memory { is_64bit: true, prefetchable: true };

fn bar(size: u64, kind: BarKind) -> BarRequest {
    BarRequest { size, kind }
}

fn assignment(pci_address: u64, cpu_address: u64) -> BarAssignment {
    BarAssignment { pci_address, cpu_address: PhysAddr::new(cpu_address) }
}

#[test]
fn bars_are_placed_on_multiples_of_their_size() {
    let mut bars = BarAllocator::new(&qemu_windows());
    assert_eq!(bars.allocate(bar(0x1000, MEMORY32)), Ok(assignment(0x1000_0000, 0x1000_0000)));
    assert_eq!(bars.allocate(bar(0x1_0000, MEMORY32)), Ok(assignment(0x1001_0000, 0x1001_0000)));
    assert_eq!(bars.allocate(bar(0x10, MEMORY32)), Ok(assignment(0x1002_0000, 0x1002_0000)));
    assert_eq!(bars.allocate(bar(0x4000, MEMORY64)), Ok(assignment(0x80_0000_0000, 0x80_0000_0000)));
    assert_eq!(bars.allocate(bar(0x100, BarKind::Io)), Ok(assignment(0x1000, 0x3eff_1000)));
    assert_eq!(bars.allocate(bar(0x4, BarKind::Io)), Ok(assignment(0x1100, 0x3eff_1100)));
}

#[test]
fn cpu_addresses_keep_the_offset_into_the_window() {
    let windows = ArrayVec::from_iter([window(PciSpace::Memory32, false, 0x4000_0000, 0x6_0000_0000, 0x100_0000)]);
    let mut bars = BarAllocator::new(&windows);
    bars.allocate(bar(0x1000, MEMORY32)).unwrap();
    assert_eq!(bars.allocate(bar(0x2000, MEMORY32)), Ok(assignment(0x4000_2000, 0x6_0000_2000)));
}

#[test]
fn sixty_four_bit_bars_fall_back_to_the_32_bit_window() {
    // QEMU with highmem=off has no 64-bit window.
    let low_only = ArrayVec::from_iter(qemu_windows().into_iter().take(2));
    let mut bars = BarAllocator::new(&low_only);
    assert_eq!(bars.allocate(bar(0x4000, MEMORY64)), Ok(assignment(0x1000_0000, 0x1000_0000)));

    // A 64-bit window too small for the BAR: the 32-bit one takes it.
    let mut windows = qemu_windows();
    windows[2].size = 0x1000;
    let mut bars = BarAllocator::new(&windows);
    assert_eq!(bars.allocate(bar(0x1000, MEMORY64)), Ok(assignment(0x80_0000_0000, 0x80_0000_0000)));
    assert_eq!(bars.allocate(bar(0x1000, MEMORY64)), Ok(assignment(0x1000_0000, 0x1000_0000)));
}

#[test]
fn thirty_two_bit_bars_never_go_in_a_64_bit_window() {
    let windows = ArrayVec::from_iter([qemu_windows()[2]]);
    let mut bars = BarAllocator::new(&windows);
    let error = bars.allocate(bar(0x1000, MEMORY32)).unwrap_err();
    assert_eq!(error, BarError::NoWindow { kind: MEMORY32 });
    assert_eq!(format!("{error}"), "the host bridge has no window for 32-bit non-prefetchable memory BARs");
    assert_eq!(bars.allocate(bar(0x10, BarKind::Io)), Err(BarError::NoWindow { kind: BarKind::Io }));
}

#[test]
fn prefetchable_windows_take_only_prefetchable_bars() {
    let windows = ArrayVec::from_iter([
        window(PciSpace::Memory64, true, 0x80_0000_0000, 0x80_0000_0000, GIB),
        window(PciSpace::Memory64, false, 0x90_0000_0000, 0x90_0000_0000, GIB),
    ]);
    let mut bars = BarAllocator::new(&windows);
    assert_eq!(bars.allocate(bar(0x1000, MEMORY64)), Ok(assignment(0x90_0000_0000, 0x90_0000_0000)));
    assert_eq!(bars.allocate(bar(0x1000, MEMORY64_PREFETCHABLE)), Ok(assignment(0x80_0000_0000, 0x80_0000_0000)));

    let prefetchable_only = ArrayVec::from_iter([windows[0]]);
    let mut bars = BarAllocator::new(&prefetchable_only);
    assert_eq!(bars.allocate(bar(0x1000, MEMORY64)), Err(BarError::NoWindow { kind: MEMORY64 }));
}

#[test]
fn a_full_window_refuses_more_bars() {
    let windows = ArrayVec::from_iter([qemu_windows()[0]]);
    let mut bars = BarAllocator::new(&windows);
    // 64 KiB of ports less the 4 KiB of legacy ports below 0x1000: fifteen 4 KiB BARs.
    for index in 1..16 {
        assert_eq!(
            bars.allocate(bar(0x1000, BarKind::Io)),
            Ok(assignment(index * 0x1000, 0x3eff_0000 + index * 0x1000))
        );
    }
    let error = bars.allocate(bar(0x4, BarKind::Io)).unwrap_err();
    assert_eq!(error, BarError::WindowsFull { size: 4, kind: BarKind::Io });
    assert_eq!(format!("{error}"), "no window for I/O BARs has 4 B free, suitably aligned");
}

#[test]
fn bar_sizes_must_be_powers_of_two_of_at_least_the_minimum() {
    let mut bars = BarAllocator::new(&qemu_windows());
    for request in [bar(0, MEMORY32), bar(0x18, MEMORY32), bar(8, MEMORY64), bar(2, BarKind::Io)] {
        assert_eq!(bars.allocate(request), Err(BarError::BadSize { size: request.size }), "{request:?}");
    }
    assert_eq!(bars.allocate(bar(1 << 40, MEMORY32)), Err(BarError::WindowsFull { size: 1 << 40, kind: MEMORY32 }));
}

/// SplitMix64: a deterministic stream of well-mixed numbers, so that failures reproduce.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn random_request(numbers: &mut Numbers) -> BarRequest {
    let kind = match numbers.below(4) {
        0 => BarKind::Io,
        1 => MEMORY32,
        2 => MEMORY64,
        _ => MEMORY64_PREFETCHABLE,
    };
    let size_bits = match kind {
        BarKind::Io => 2 + numbers.below(10),
        BarKind::Memory { is_64bit: false, .. } => 4 + numbers.below(24),
        BarKind::Memory { .. } => 4 + numbers.below(36),
    };
    bar(1 << size_bits, kind)
}

/// Checks one placement against the window it landed in.
fn check_placement(request: BarRequest, placed: BarAssignment, windows: &[PciWindow]) {
    let end = placed.pci_address + request.size;
    let window = windows
        .iter()
        .find(|w| placed.pci_address >= w.pci_address && end <= w.pci_address + w.size)
        .unwrap_or_else(|| panic!("{request:?} placed at {placed:x?} outside every window"));
    assert_eq!(placed.pci_address % request.size, 0, "{request:?} at {placed:x?} is not naturally aligned");
    let offset = placed.pci_address - window.pci_address;
    assert_eq!(placed.cpu_address, window.cpu_address.add(offset), "{request:?} at {placed:x?}");
    match request.kind {
        BarKind::Io => assert_eq!(window.space, PciSpace::Io),
        BarKind::Memory { is_64bit, prefetchable } => {
            assert!(window.space == PciSpace::Memory32 || (is_64bit && window.space == PciSpace::Memory64));
            assert!(prefetchable || !window.prefetchable, "{request:?} in a prefetchable window");
        }
    }
}

#[test]
fn random_bars_never_overlap_and_always_fit_their_window() {
    let mut windows = qemu_windows();
    windows.push(window(PciSpace::Memory64, true, 0x100_0000_0000, 0x100_0000_0000, 64 * GIB));
    for seed in 0..20 {
        let mut numbers = Numbers(seed);
        let mut bars = BarAllocator::new(&windows);
        let mut placed: Vec<(bool, u64, u64)> = Vec::new();
        for _ in 0..500 {
            let request = random_request(&mut numbers);
            match bars.allocate(request) {
                Ok(assignment) => {
                    check_placement(request, assignment, &windows);
                    let is_io = request.kind == BarKind::Io;
                    placed.push((is_io, assignment.pci_address, assignment.pci_address + request.size));
                }
                Err(error) => assert_eq!(error, BarError::WindowsFull { size: request.size, kind: request.kind }),
            }
        }
        // I/O and memory are separate PCI address spaces; within each, no two BARs overlap.
        placed.sort_unstable();
        for pair in placed.windows(2) {
            let ((space_a, _, end_a), (space_b, start_b, _)) = (pair[0], pair[1]);
            assert!(space_a != space_b || end_a <= start_b, "seed {seed}: {pair:x?} overlap");
        }
        assert!(placed.len() > 100, "seed {seed}: only {} of 500 BARs placed", placed.len());
    }
}
