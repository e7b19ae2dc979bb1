//! Host tests for the GIC, the architected timer's interrupts and devices' interrupts: on QEMU
//! 10's own `virt` devicetrees (GICv2 with a GICv2m frame; GICv3 with an ITS), on a blob shaped
//! like the Raspberry Pi 4's, and on broken ones.

use alloc::format;
use alloc::vec::Vec;

use crate::devicetree::{Device, Devicetree, Error as DtError};
use crate::fdt_writer::FdtWriter;
use crate::interrupts::{GicInterrupt, GicVersion, InterruptKind, MsiController, Trigger};
use crate::tests::{parse, range};

/// QEMU 10 `-M virt,iommu=smmuv3 -cpu cortex-a72`, as `cargo xtask qemu` hands it over: GICv2
/// (`arm,cortex-a15-gic`) with a GICv2m frame.
const QEMU_GICV2: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-smmuv3.dtb");
/// QEMU 10 `-M virt,gic-version=3,iommu=smmuv3 -cpu cortex-a72 -m 1G`, from `dumpdtb` (packed to
/// its used bytes): GICv3 with one redistributor region and an ITS.
const QEMU_GICV3_ITS: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv3-its.dtb");

const GIC_PHANDLE: u32 = 0x10;
const GIC: &str = "intc@8000000";

fn spi(number: u32, trigger: Trigger) -> GicInterrupt {
    GicInterrupt { kind: InterruptKind::Spi, number, trigger }
}

fn ppi(number: u32, trigger: Trigger) -> GicInterrupt {
    GicInterrupt { kind: InterruptKind::Ppi, number, trigger }
}

/// The one enabled device with `compatible`.
fn only<'a>(dt: &Devicetree<'a>, compatible: &str) -> Device<'a> {
    let devices = dt.compatible_devices(&[compatible]).unwrap();
    let [device] = devices.as_slice() else { panic!("one {compatible} expected, found {}", devices.len()) };
    device.clone()
}

/// The cells of `property` of the node at `path`, read raw.
fn raw_cells(dt: &Devicetree<'_>, path: &str, property: &str) -> Vec<u32> {
    let node = dt.locate(path).unwrap_or_else(|| panic!("{path} not found")).node;
    let value = node.property(property).unwrap_or_else(|| panic!("{path} has no {property}")).value;
    value.chunks_exact(4).map(|cell| u32::from_be_bytes(cell.try_into().unwrap())).collect()
}

#[test]
fn qemu_virt_has_a_gicv2_with_its_cpu_interface_and_a_v2m_frame() {
    let dt = parse(QEMU_GICV2).unwrap();
    let gic = dt.gic().unwrap().expect("QEMU virt has a GIC");
    assert_eq!(gic.name, GIC);
    assert_eq!(gic.version, GicVersion::V2);
    assert_eq!(gic.distributor, range(0x0800_0000, 0x1_0000));
    assert_eq!(gic.cpu_interface, Some(range(0x0801_0000, 0x1_0000)));
    assert!(gic.redistributors.is_empty(), "a GICv2 has no redistributors");
    assert_eq!(gic.its, None);
    let frame = MsiController { name: "v2m@8020000", registers: range(0x0802_0000, 0x1000), phandle: Some(0x8004) };
    assert_eq!(gic.v2m, Some(frame));
    // The host bridge sends its MSIs to that frame: msi-map = <RID base, phandle, base, length>.
    assert_eq!(raw_cells(&dt, "/pcie@10000000", "msi-map")[1], 0x8004);
}

#[test]
fn qemu_virt_timer_interrupts_are_ppis_with_the_virtual_timer_at_intid_27() {
    let dt = parse(QEMU_GICV2).unwrap();
    let timer = dt.timer_interrupts().unwrap().expect("QEMU virt has an arm,armv8-timer node");
    // `<1 13 0x304>, <1 14 0x304>, <1 11 0x304>, <1 10 0x304>`: CPU mask 0x03 in bits 15:8.
    assert_eq!(timer.secure_physical, Some(ppi(13, Trigger::LevelHigh)));
    assert_eq!(timer.physical, ppi(14, Trigger::LevelHigh));
    assert_eq!(timer.virtual_timer, ppi(11, Trigger::LevelHigh));
    assert_eq!(timer.hypervisor, Some(ppi(10, Trigger::LevelHigh)));
    assert_eq!(timer.virtual_timer.intid(), 27);
    assert_eq!(timer.physical.intid(), 30);
    assert_eq!(timer.hypervisor.map(|hypervisor| hypervisor.intid()), Some(26));
    assert_eq!(format!("{}", timer.virtual_timer), "PPI 11 (INTID 27, level-high)");
}

#[test]
fn qemu_virt_mmio_devices_have_spis_at_intid_32_plus_their_number() {
    let dt = parse(QEMU_GICV2).unwrap();
    let slots = dt.compatible_devices(&["virtio,mmio"]).unwrap();
    assert_eq!(slots.len(), 32);
    for slot in &slots {
        // Slot n, at 0xa000000 + n * 0x200, has SPI 16 + n.
        let number = 16 + ((slot.regs[0].start().as_u64() - 0x0a00_0000) / 0x200) as u32;
        let interrupts = dt.gic_interrupts(slot).unwrap();
        assert_eq!(interrupts.as_slice(), &[spi(number, Trigger::EdgeRising)], "{}", slot.name);
        assert_eq!(interrupts[0].intid(), 32 + number);
    }
    let first = dt.gic_interrupts(&slots[0]).unwrap()[0];
    assert_eq!(format!("{first}"), "SPI 16 (INTID 48, edge-rising)");

    let uart = only(&dt, "arm,pl011");
    let interrupts = dt.gic_interrupts(&uart).unwrap();
    assert_eq!(interrupts.as_slice(), &[spi(1, Trigger::LevelHigh)]);
    assert_eq!(format!("{}", interrupts[0]), "SPI 1 (INTID 33, level-high)");
    assert_eq!(dt.named_gic_interrupt(&uart, "irq").unwrap(), None, "the PL011 names no interrupt");
}

#[test]
fn qemu_virt_smmu_interrupts_are_found_by_their_names() {
    let dt = parse(QEMU_GICV2).unwrap();
    let smmu = only(&dt, "arm,smmu-v3");
    let named = |name| dt.named_gic_interrupt(&smmu, name).unwrap();
    assert_eq!(named("eventq"), Some(spi(0x4a, Trigger::EdgeRising)));
    assert_eq!(named("priq"), Some(spi(0x4b, Trigger::EdgeRising)));
    assert_eq!(named("cmdq-sync"), Some(spi(0x4c, Trigger::EdgeRising)));
    assert_eq!(named("gerror"), Some(spi(0x4d, Trigger::EdgeRising)));
    assert_eq!(named("gerror").map(|gerror| gerror.intid()), Some(32 + 0x4d));
    assert_eq!(named("combined"), None, "QEMU's SMMU has no combined interrupt");
    assert_eq!(named(""), None, "the NUL that ends the last name does not start an empty one");
    assert_eq!(dt.gic_interrupts(&smmu).unwrap().len(), 4);
}

#[test]
fn a_device_without_interrupts_has_none() {
    let dt = parse(QEMU_GICV2).unwrap();
    let bridge = only(&dt, "pci-host-ecam-generic");
    assert!(dt.gic_interrupts(&bridge).unwrap().is_empty(), "INTx goes through interrupt-map, not interrupts");
    assert_eq!(dt.named_gic_interrupt(&bridge, "intx").unwrap(), None);
}

#[test]
fn qemu_virt_gicv3_has_one_redistributor_region_and_an_its_the_pcie_msi_map_names() {
    let dt = parse(QEMU_GICV3_ITS).unwrap();
    let gic = dt.gic().unwrap().expect("QEMU virt has a GIC");
    assert_eq!(gic.name, GIC);
    assert_eq!(gic.version, GicVersion::V3);
    assert_eq!(gic.distributor, range(0x0800_0000, 0x1_0000));
    assert_eq!(gic.cpu_interface, None, "a GICv3's CPU interface is system registers");
    assert_eq!(gic.redistributors.as_slice(), &[range(0x080a_0000, 0xf6_0000)]);
    assert_eq!(gic.v2m, None);
    let its = gic.its.expect("gic-version=3 comes with an ITS");
    assert_eq!(its.name, "its@8080000");
    assert_eq!(its.registers, range(0x0808_0000, 0x2_0000));
    let msi_map = raw_cells(&dt, "/pcie@10000000", "msi-map");
    assert_eq!(msi_map, [0, 0x8003, 0, 0x1_0000]);
    assert_eq!(its.phandle, Some(msi_map[1]), "the host bridge's msi-map names the ITS");

    let timer = dt.timer_interrupts().unwrap().unwrap();
    assert_eq!(timer.virtual_timer, ppi(11, Trigger::LevelHigh), "flags 4, without a CPU mask");
    let virtio = &dt.compatible_devices(&["virtio,mmio"]).unwrap()[0];
    assert_eq!(dt.gic_interrupts(virtio).unwrap().as_slice(), &[spi(16, Trigger::EdgeRising)]);
}

/// A blob shaped like the Raspberry Pi 4's `bcm2711-rpi-4-b.dtb` (Linux's, as the firmware
/// passes it), with its values: the GIC-400 under `/soc`, whose third `ranges` entry maps bus
/// `0x40000000` to CPU `0xff800000`; the timer's PPIs level-low, CPU mask `0xf`; the DMA engine's
/// eleven named SPIs, two pairs of channels sharing one.
fn pi4_like() -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property("compatible", b"raspberrypi,4-model-b\0brcm,bcm2711\0");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("interrupt-parent", &[1]);
    w.begin_node("soc");
    w.property_string("compatible", "simple-bus");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    #[rustfmt::skip]
    w.property_cells("ranges", &[
        0x7e00_0000, 0x0, 0xfe00_0000, 0x180_0000,
        0x7c00_0000, 0x0, 0xfc00_0000, 0x200_0000,
        0x4000_0000, 0x0, 0xff80_0000, 0x80_0000,
    ]);
    w.property_cells("dma-ranges", &[0xc000_0000, 0x0, 0x0, 0x4000_0000]);
    w.begin_node("interrupt-controller@40041000");
    w.property("interrupt-controller", &[]);
    w.property_cells("#interrupt-cells", &[3]);
    w.property_string("compatible", "arm,gic-400");
    // Distributor, CPU interface, virtual interface control, virtual CPU interface.
    w.property_cells("reg", &[0x4004_1000, 0x1000, 0x4004_2000, 0x2000, 0x4004_4000, 0x2000, 0x4004_6000, 0x2000]);
    w.property_cells("interrupts", &[1, 9, 0xf04]);
    w.property_cells("phandle", &[1]);
    w.end_node();
    w.begin_node("dma@7e007000");
    w.property_string("compatible", "brcm,bcm2835-dma");
    w.property_cells("reg", &[0x7e00_7000, 0xb00]);
    let interrupts: Vec<u32> =
        [0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x57, 0x58, 0x58].iter().flat_map(|&n| [0, n, 4]).collect();
    w.property_cells("interrupts", &interrupts);
    w.property("interrupt-names", b"dma0\0dma1\0dma2\0dma3\0dma4\0dma5\0dma6\0dma7\0dma8\0dma9\0dma10\0");
    w.property_cells("#dma-cells", &[1]);
    w.property_cells("brcm,dma-channel-mask", &[0x7f5]);
    w.end_node();
    w.end_node();
    w.begin_node("timer");
    w.property_string("compatible", "arm,armv8-timer");
    w.property_cells("interrupts", &[1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08]);
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn the_pi4_gic_400_registers_are_translated_through_the_soc_ranges() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    let gic = dt.gic().unwrap().unwrap();
    assert_eq!(gic.name, "interrupt-controller@40041000");
    assert_eq!(gic.version, GicVersion::V2, "the GIC-400 is a GICv2");
    assert_eq!(gic.distributor, range(0xff84_1000, 0x1000));
    assert_eq!(gic.cpu_interface, Some(range(0xff84_2000, 0x2000)));
    assert_eq!(gic.v2m, None);
}

#[test]
fn the_pi4_timer_ppis_are_level_low_whatever_their_cpu_mask() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    let timer = dt.timer_interrupts().unwrap().unwrap();
    assert_eq!(timer.secure_physical, Some(ppi(13, Trigger::LevelLow)));
    assert_eq!(timer.physical, ppi(14, Trigger::LevelLow));
    assert_eq!(timer.virtual_timer, ppi(11, Trigger::LevelLow));
    assert_eq!(timer.hypervisor, Some(ppi(10, Trigger::LevelLow)));
    assert_eq!(format!("{}", timer.virtual_timer), "PPI 11 (INTID 27, level-low)");
}

#[test]
fn the_pi4_dma_engine_interrupts_are_found_by_channel_name() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    let dma = only(&dt, "brcm,bcm2835-dma");
    let named = |name| dt.named_gic_interrupt(&dma, name).unwrap();
    assert_eq!(named("dma0"), Some(spi(80, Trigger::LevelHigh)));
    assert_eq!(named("dma0").unwrap().intid(), 112);
    assert_eq!(format!("{}", named("dma0").unwrap()), "SPI 80 (INTID 112, level-high)");
    assert_eq!(named("dma7"), named("dma8"), "channels 7 and 8 share SPI 87");
    assert_eq!(named("dma10"), Some(spi(88, Trigger::LevelHigh)));
    assert_eq!(named("dma11"), None);
    assert_eq!(dt.gic_interrupts(&dma).unwrap().len(), 11);
}

/// A machine with a GIC written by `gic` and devices written by `devices`, under a root whose
/// `interrupt-parent` is [`GIC_PHANDLE`] and whose addresses and sizes are two cells.
fn machine(gic: &dyn Fn(&mut FdtWriter), devices: &dyn Fn(&mut FdtWriter)) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.property_cells("interrupt-parent", &[GIC_PHANDLE]);
    gic(&mut w);
    devices(&mut w);
    w.end_node();
    w.finish()
}

/// QEMU's GICv2 node, with `reg` as given.
fn gic_v2_with(reg: &'static [(u64, u64)]) -> impl Fn(&mut FdtWriter) {
    move |w: &mut FdtWriter| {
        w.begin_node(GIC);
        w.property_cells("phandle", &[GIC_PHANDLE]);
        w.property_reg64("reg", reg);
        w.property_string("compatible", "arm,cortex-a15-gic");
        w.property("interrupt-controller", &[]);
        w.property_cells("#interrupt-cells", &[3]);
        w.end_node();
    }
}

fn gic_v2(w: &mut FdtWriter) {
    gic_v2_with(&[(0x800_0000, 0x1_0000), (0x801_0000, 0x1_0000)])(w);
}

/// A GICv3 node with `#interrupt-cells` and `#redistributor-regions` as given (`None`: absent).
fn gic_v3_with(interrupt_cells: u32, regions: Option<u32>, reg: &'static [(u64, u64)]) -> impl Fn(&mut FdtWriter) {
    move |w: &mut FdtWriter| {
        w.begin_node(GIC);
        w.property_cells("phandle", &[GIC_PHANDLE]);
        w.property_reg64("reg", reg);
        if let Some(regions) = regions {
            w.property_cells("#redistributor-regions", &[regions]);
        }
        w.property_string("compatible", "arm,gic-v3");
        w.property("interrupt-controller", &[]);
        w.property_cells("#interrupt-cells", &[interrupt_cells]);
        w.end_node();
    }
}

/// A device node with `interrupts` (absent if `None`).
fn device(w: &mut FdtWriter, name: &str, compatible: &str, interrupts: Option<&[u32]>) {
    w.begin_node(name);
    w.property_string("compatible", compatible);
    if let Some(interrupts) = interrupts {
        w.property_cells("interrupts", interrupts);
    }
    w.end_node();
}

fn timer(interrupts: &'static [u32]) -> impl Fn(&mut FdtWriter) {
    move |w: &mut FdtWriter| device(w, "timer", "arm,armv8-timer", Some(interrupts))
}

fn bad_property(node: &'static str, property: &'static str, problem: &'static str) -> DtError<'static> {
    DtError::BadProperty { node, property, problem }
}

#[test]
fn without_a_gic_or_a_timer_there_is_nothing_to_describe() {
    let blob = machine(&|_| {}, &|_| {});
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.gic().unwrap(), None);
    assert_eq!(dt.timer_interrupts().unwrap(), None);
}

#[test]
fn a_gicv2_with_one_reg_entry_is_an_error() {
    let blob = machine(&gic_v2_with(&[(0x800_0000, 0x1_0000)]), &|_| {});
    let problem = "has fewer than two (address, size) entries: a GICv2 lists its distributor, then its CPU interface";
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "reg", problem));
}

#[test]
fn a_gicv3_with_fewer_reg_entries_than_redistributor_regions_is_an_error() {
    let problem = "has fewer (address, size) entries than a GICv3 lists: its distributor, then \
                   #redistributor-regions redistributor regions (1 if absent)";
    let two_entries: &[(u64, u64)] = &[(0x800_0000, 0x1_0000), (0x80a_0000, 0xf6_0000)];
    let blob = machine(&gic_v3_with(3, Some(2), two_entries), &|_| {});
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "reg", problem));
    let blob = machine(&gic_v3_with(3, None, &[(0x800_0000, 0x1_0000)]), &|_| {});
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "reg", problem), "no redistributor");

    let blob = machine(&gic_v3_with(3, Some(0), two_entries), &|_| {});
    let problem = "is 0, or more than the 16 redistributor regions this crate describes";
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "#redistributor-regions", problem));
}

#[test]
fn a_gicv3_lists_every_redistributor_region_and_ignores_the_frames_after_them() {
    let reg: &[(u64, u64)] =
        &[(0x2c01_0000, 0x1_0000), (0x2d00_0000, 0x80_0000), (0x2e00_0000, 0x80_0000), (0x2c04_0000, 0x2000)];
    let blob = machine(&gic_v3_with(4, Some(2), reg), &|w| device(w, "uart@1000", "arm,pl011", Some(&[0, 5, 4, 0])));
    let dt = parse(&blob).unwrap();
    let gic = dt.gic().unwrap().unwrap();
    assert_eq!(gic.redistributors.as_slice(), &[range(0x2d00_0000, 0x80_0000), range(0x2e00_0000, 0x80_0000)]);
    assert_eq!(gic.cpu_interface, None, "the GICC frame after the redistributors is for legacy software");
    let uart = only(&dt, "arm,pl011");
    assert_eq!(dt.gic_interrupts(&uart).unwrap().as_slice(), &[spi(5, Trigger::LevelHigh)], "4 cells, no partition");
}

#[test]
fn gic_nodes_that_break_the_binding_are_errors() {
    let blob = machine(
        &|w| {
            w.begin_node(GIC);
            w.property_string("compatible", "arm,gic-400");
            w.property_reg64("reg", &[(0x800_0000, 0x1000), (0x801_0000, 0x2000)]);
            w.end_node();
        },
        &|_| {},
    );
    let problem = "is missing from a node with a GIC compatible";
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "interrupt-controller", problem));

    let blob = machine(&gic_v3_with(2, None, &[(0x800_0000, 0x1_0000), (0x80a_0000, 0xf6_0000)]), &|_| {});
    let problem = "is not 3 (type, number, flags) or 4 (and a PPI partition), as a GICv3's is";
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property(GIC, "#interrupt-cells", problem));
}

#[test]
fn msi_frames_are_translated_through_the_gic_ranges() {
    // The GICv2m example of arm,gic.yaml: the frame's `reg` is an offset in the GIC's window.
    let blob = machine(
        &|w| {
            w.begin_node("interrupt-controller@e1101000");
            w.property_string("compatible", "arm,gic-400");
            w.property("interrupt-controller", &[]);
            w.property_cells("#interrupt-cells", &[3]);
            w.property_cells("#address-cells", &[2]);
            w.property_cells("#size-cells", &[2]);
            w.property_cells("ranges", &[0, 0, 0, 0xe110_0000, 0, 0x10_0000]);
            w.property_reg64("reg", &[(0xe111_0000, 0x1000), (0xe112_f000, 0x2000)]);
            w.begin_node("v2m@8000");
            w.property_string("compatible", "arm,gic-v2m-frame");
            w.property("msi-controller", &[]);
            w.property_reg64("reg", &[(0x8_0000, 0x1000)]);
            w.end_node();
            w.end_node();
        },
        &|_| {},
    );
    let gic = parse(&blob).unwrap().gic().unwrap().unwrap();
    let frame = MsiController { name: "v2m@8000", registers: range(0xe118_0000, 0x1000), phandle: None };
    assert_eq!(gic.v2m, Some(frame));

    let blob = machine(
        &|w| {
            w.begin_node(GIC);
            w.property_string("compatible", "arm,gic-v3");
            w.property("interrupt-controller", &[]);
            w.property_cells("#interrupt-cells", &[3]);
            w.property("ranges", &[]);
            w.property_cells("#address-cells", &[2]);
            w.property_cells("#size-cells", &[2]);
            w.property_reg64("reg", &[(0x800_0000, 0x1_0000), (0x80a_0000, 0xf6_0000)]);
            w.begin_node("its@8080000");
            w.property_string("compatible", "arm,gic-v3-its");
            w.property_reg64("reg", &[(0x808_0000, 0x2_0000), (0x80c_0000, 0x2_0000)]);
            w.end_node();
            w.end_node();
        },
        &|_| {},
    );
    let problem = "is not one (address, size) pair: the MSI frame's registers";
    assert_eq!(parse(&blob).unwrap().gic().unwrap_err(), bad_property("its@8080000", "reg", problem));
}

#[test]
fn a_timer_with_one_interrupt_is_an_error() {
    let blob = machine(&gic_v2, &timer(&[1, 13, 4]));
    let problem = "has fewer than three entries: secure physical, non-secure physical and virtual timer, in the \
                   binding's order";
    assert_eq!(parse(&blob).unwrap().timer_interrupts().unwrap_err(), bad_property("timer", "interrupts", problem));
}

#[test]
fn a_timer_with_an_spi_is_an_error() {
    let blob = machine(&gic_v2, &timer(&[1, 13, 4, 1, 14, 4, 0, 11, 4, 1, 10, 4]));
    let problem = "has an SPI: the architected timer's interrupts are PPIs, one per core";
    assert_eq!(parse(&blob).unwrap().timer_interrupts().unwrap_err(), bad_property("timer", "interrupts", problem));
}

#[test]
fn a_timer_without_the_secure_or_hypervisor_timers_names_its_interrupts() {
    // The form Apple's M1 uses: no secure timer, so names say which entry is which.
    let named_timer = |names: &'static [u8]| {
        move |w: &mut FdtWriter| {
            w.begin_node("timer");
            w.property_string("compatible", "arm,armv8-timer");
            w.property_cells("interrupts", &[1, 1, 8, 1, 0, 8]);
            w.property("interrupt-names", names);
            w.end_node();
        }
    };
    let blob = machine(&gic_v2, &named_timer(b"phys\0virt\0"));
    let timer = parse(&blob).unwrap().timer_interrupts().unwrap().unwrap();
    assert_eq!(timer.physical, ppi(1, Trigger::LevelLow));
    assert_eq!(timer.virtual_timer, ppi(0, Trigger::LevelLow));
    assert_eq!((timer.secure_physical, timer.hypervisor), (None, None));

    let blob = machine(&gic_v2, &named_timer(b"phys\0hyp-phys\0"));
    let problem = "does not name both a \"phys\" and a \"virt\" interrupt";
    let error = parse(&blob).unwrap().timer_interrupts().unwrap_err();
    assert_eq!(error, bad_property("timer", "interrupt-names", problem));
}

#[test]
fn interrupts_of_the_wrong_length_are_an_error() {
    let blob = machine(&gic_v2, &|w| device(w, "uart@9000000", "arm,pl011", Some(&[0, 1, 4, 0])));
    let dt = parse(&blob).unwrap();
    let error = dt.gic_interrupts(&only(&dt, "arm,pl011")).unwrap_err();
    let layout = "type, number, flags: the GIC's #interrupt-cells";
    let expected =
        DtError::BadEntryLength { node: "uart@9000000", property: "interrupts", cells: 4, entry_cells: 3, layout };
    assert_eq!(error, expected);
    assert_eq!(
        format!("{error}"),
        "devicetree node 'uart@9000000': property 'interrupts' holds 4 cells, not a whole number of 3-cell entries \
         (type, number, flags: the GIC's #interrupt-cells)"
    );
    let blob = machine(&gic_v2, &timer(&[1, 13, 4, 1, 14, 4, 1, 11]));
    let error = parse(&blob).unwrap().timer_interrupts().unwrap_err();
    assert!(matches!(error, DtError::BadEntryLength { node: "timer", property: "interrupts", cells: 8, .. }));
}

#[test]
fn a_device_whose_interrupt_parent_is_not_the_gic_is_an_error() {
    let blob = machine(&gic_v2, &|w| {
        w.begin_node("gpio@9030000");
        w.property_string("compatible", "arm,pl061");
        w.property("interrupt-controller", &[]);
        w.property_cells("#interrupt-cells", &[2]);
        w.property_cells("phandle", &[0x20]);
        w.property_cells("interrupts", &[0, 7, 4]);
        w.end_node();
        w.begin_node("buttons");
        w.property_string("compatible", "gpio-keys");
        w.property_cells("interrupt-parent", &[0x20]);
        w.property_cells("interrupts", &[3, 1]);
        w.end_node();
        // A second GIC, cascaded into the first: its interrupts are not the first GIC's INTIDs.
        w.begin_node("interrupt-controller@9100000");
        w.property_string("compatible", "arm,gic-400");
        w.property("interrupt-controller", &[]);
        w.property_cells("#interrupt-cells", &[3]);
        w.property_cells("phandle", &[0x21]);
        w.property_reg64("reg", &[(0x910_0000, 0x1000), (0x910_2000, 0x2000)]);
        w.end_node();
        w.begin_node("uart@9200000");
        w.property_string("compatible", "arm,pl011");
        w.property_cells("interrupt-parent", &[0x21]);
        w.property_cells("interrupts", &[0, 3, 4]);
        w.end_node();
    });
    let dt = parse(&blob).unwrap();
    let problem = "goes to an interrupt parent that is not the GIC, so the GIC binding cannot read it";
    let buttons = only(&dt, "gpio-keys");
    assert_eq!(dt.gic_interrupts(&buttons).unwrap_err(), bad_property("buttons", "interrupts", problem));
    assert_eq!(dt.named_gic_interrupt(&buttons, "").unwrap(), None, "no interrupt-names: nothing to look up");
    let uart = only(&dt, "arm,pl011");
    assert_eq!(dt.gic_interrupts(&uart).unwrap_err(), bad_property("uart@9200000", "interrupts", problem));
    assert_eq!(dt.gic().unwrap().unwrap().name, GIC, "the first GIC is the machine's");
    let gpio = only(&dt, "arm,pl061");
    assert_eq!(dt.gic_interrupts(&gpio).unwrap().as_slice(), &[spi(7, Trigger::LevelHigh)]);
}

#[test]
fn an_interrupt_parent_that_is_no_controller_or_no_node_is_an_error() {
    let blob = machine(&gic_v2, &|w| {
        w.begin_node("uart@9000000");
        w.property_string("compatible", "arm,pl011");
        w.property_cells("interrupt-parent", &[0x99]);
        w.property_cells("interrupts", &[0, 1, 4]);
        w.end_node();
    });
    let dt = parse(&blob).unwrap();
    let expected = DtError::UnknownPhandle { node: "uart@9000000", property: "interrupt-parent", phandle: 0x99 };
    assert_eq!(dt.gic_interrupts(&only(&dt, "arm,pl011")).unwrap_err(), expected);

    let blob = machine(&|_| {}, &|w| device(w, "uart@9000000", "arm,pl011", Some(&[0, 1, 4])));
    let dt = parse(&blob).unwrap();
    let expected = DtError::UnknownPhandle { node: "uart@9000000", property: "interrupt-parent", phandle: GIC_PHANDLE };
    assert_eq!(dt.gic_interrupts(&only(&dt, "arm,pl011")).unwrap_err(), expected, "no GIC at all");
}

#[test]
fn entries_the_gic_binding_does_not_allow_are_errors() {
    let problem = "has an entry the GIC binding does not allow: type 0 (SPI 0-987) or 1 (PPI 0-15), flags bits 3:0 \
                   one of 1, 2, 4, 8 (2 and 8 for PPIs only)";
    for entry in [[0u32, 1, 8], [1, 16, 4], [0, 988, 4], [2, 0, 4], [0, 1, 0]] {
        let blob = machine(&gic_v2, &|w| device(w, "uart@9000000", "arm,pl011", Some(&entry)));
        let dt = parse(&blob).unwrap();
        let error = dt.gic_interrupts(&only(&dt, "arm,pl011")).unwrap_err();
        assert_eq!(error, bad_property("uart@9000000", "interrupts", problem), "{entry:x?}");
    }
}

#[test]
fn interrupts_extended_is_refused_rather_than_ignored() {
    let blob = machine(&gic_v2, &|w| {
        w.begin_node("uart@9000000");
        w.property_string("compatible", "arm,pl011");
        w.property_cells("interrupts-extended", &[GIC_PHANDLE, 0, 1, 4]);
        w.end_node();
    });
    let dt = parse(&blob).unwrap();
    let problem = "is not read by this crate: list the interrupts in 'interrupts' under an 'interrupt-parent'";
    let error = dt.gic_interrupts(&only(&dt, "arm,pl011")).unwrap_err();
    assert_eq!(error, bad_property("uart@9000000", "interrupts-extended", problem));
}

#[test]
fn a_name_past_the_end_of_interrupts_is_an_error() {
    let blob = machine(&gic_v2, &|w| {
        w.begin_node("smmu@9050000");
        w.property_string("compatible", "arm,smmu-v3");
        w.property_cells("interrupts", &[0, 0x4a, 1, 0, 0x4b, 1]);
        w.property("interrupt-names", b"eventq\0priq\0gerror\0");
        w.end_node();
    });
    let dt = parse(&blob).unwrap();
    let smmu = only(&dt, "arm,smmu-v3");
    assert_eq!(dt.named_gic_interrupt(&smmu, "priq").unwrap(), Some(spi(0x4b, Trigger::EdgeRising)));
    let problem = "names more interrupts than 'interrupts' lists";
    let error = dt.named_gic_interrupt(&smmu, "gerror").unwrap_err();
    assert_eq!(error, bad_property("smmu@9050000", "interrupt-names", problem));
}

#[test]
fn ppi_flags_with_cpu_mask_bits_decode_their_trigger_from_bits_3_to_0() {
    let decode = |cells: &[u32]| GicInterrupt::from_cells(cells);
    assert_eq!(decode(&[1, 11, 0xf08]), Some(ppi(11, Trigger::LevelLow)));
    assert_eq!(decode(&[1, 11, 0xff04]), Some(ppi(11, Trigger::LevelHigh)));
    assert_eq!(decode(&[1, 9, 0x0102]), Some(ppi(9, Trigger::EdgeFalling)));
    assert_eq!(decode(&[1, 9, 0x8001]), Some(ppi(9, Trigger::EdgeRising)));
    // Through a blob: bits 15:8 set on every timer PPI.
    let blob = machine(&gic_v2, &timer(&[1, 13, 0xff08, 1, 14, 0x0108, 1, 11, 0x8004, 1, 10, 0x0301]));
    let timer = parse(&blob).unwrap().timer_interrupts().unwrap().unwrap();
    assert_eq!(timer.secure_physical, Some(ppi(13, Trigger::LevelLow)));
    assert_eq!(timer.physical, ppi(14, Trigger::LevelLow));
    assert_eq!(timer.virtual_timer, ppi(11, Trigger::LevelHigh));
    assert_eq!(timer.hypervisor, Some(ppi(10, Trigger::EdgeRising)));
}

#[test]
fn specifiers_decode_to_intids_within_the_ranges_of_their_kind() {
    let decode = |cells: &[u32]| GicInterrupt::from_cells(cells);
    assert_eq!(decode(&[0, 0, 4]).map(|i| i.intid()), Some(32), "SPI 0 is INTID 32");
    assert_eq!(decode(&[0, 987, 1]).map(|i| i.intid()), Some(1019), "the last SPI, below the special INTIDs");
    assert_eq!(decode(&[1, 0, 4]).map(|i| i.intid()), Some(16), "PPI 0 is INTID 16");
    assert_eq!(decode(&[1, 15, 4]).map(|i| i.intid()), Some(31));
    assert_eq!(decode(&[0, 4, 4, 0]), Some(spi(4, Trigger::LevelHigh)), "GICv3's fourth cell, no partition");
    assert_eq!(format!("{}", spi(4, Trigger::LevelHigh)), "SPI 4 (INTID 36, level-high)");
    for refused in [
        &[0, 988, 4][..], // past INTID 1019
        &[1, 16, 4],      // a PPI number past 15
        &[2, 0, 4],       // GICv3's extended SPI range: not read here
        &[3, 0, 4],       // extended PPI range
        &[0, 5, 0],       // no trigger
        &[0, 5, 5],       // two triggers at once
        &[0, 5, 2],       // a falling-edge SPI
        &[0, 5, 8],       // a level-low SPI
        &[1, 5, 4, 0x30], // a PPI partition
        &[0, 5],          // too short
        &[0, 5, 4, 0, 0], // too long
    ] {
        assert_eq!(decode(refused), None, "{refused:x?}");
    }
}

#[test]
fn pci_legacy_interrupts_read_the_gic_binding_the_same_way() {
    use crate::pci::InterruptSpecifier;
    let specifier = |cells: &[u32]| InterruptSpecifier { controller: GIC, cells: cells.iter().copied().collect() };
    assert_eq!(specifier(&[0, 4, 4]).gic_spi(), Some(4));
    assert_eq!(specifier(&[0, 4, 4, 0]).gic_spi(), Some(4), "a GICv3 with 4 interrupt cells");
    assert_eq!(specifier(&[1, 4, 4]).gic_spi(), None, "a PPI is no SPI");
    assert_eq!(specifier(&[0, 4, 0]).gic_spi(), None, "no trigger: the binding does not allow it");
}
