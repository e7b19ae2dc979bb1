//! Host tests on crafted devicetree blobs.

use alloc::format;
use alloc::vec::Vec;

use addr::{PhysAddr, PhysRange};

use crate::devicetree::{
    Cpu, CpuStart, Devicetree, Error as DtError, FoundBy, Guess, MAX_CPUS, PsciConduit, Reservation, rescue_console,
};
use crate::fdt_writer::FdtWriter;
use crate::memmap::{Error as MapError, MemoryMap, Size};

pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn range(start: u64, size: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), size).unwrap()
}

pub(crate) fn reservation(label: &str, start: u64, size: u64) -> Reservation<'_> {
    Reservation { range: range(start, size), label, no_map: false }
}

/// Parses into storage that lives as long as the test.
pub(crate) fn parse(blob: &[u8]) -> Result<Devicetree<'static>, DtError<'static>> {
    Devicetree::parse(blob, alloc::vec![0u8; blob.len()].leak())
}

/// A blob shaped like QEMU `virt`'s: two-cell addresses, PL011 at the root, PSCI over HVC.
fn virt_like(memory: bool) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.reserve_memory(0x4800_0000, 0x1000);
    w.begin_node("");
    w.property_string("model", "linux,dummy-virt");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.begin_node("chosen");
    w.property_string("stdout-path", "/pl011@9000000");
    w.property_string("bootargs", "kernel.test");
    w.end_node();
    w.begin_node("psci");
    w.property_string("compatible", "arm,psci-1.0");
    w.property_string("method", "hvc");
    w.end_node();
    if memory {
        w.begin_node("memory@40000000");
        w.property_string("device_type", "memory");
        w.property_reg64("reg", &[(0x4000_0000, GIB)]);
        w.end_node();
    }
    w.begin_node("reserved-memory");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.property("ranges", &[]);
    w.begin_node("firmware@50000000");
    w.property_reg64("reg", &[(0x5000_0000, 2 * MIB)]);
    w.property("no-map", &[]);
    w.end_node();
    w.begin_node("linux,cma");
    w.property_string("compatible", "shared-dma-pool");
    w.property_cells("size", &[0, 0x400_0000]);
    w.end_node();
    w.end_node();
    w.begin_node("pl011@9000000");
    w.property("compatible", b"arm,pl011\0arm,primecell\0");
    w.property_reg64("reg", &[(0x900_0000, 0x1000)]);
    w.end_node();
    w.begin_node("cpus");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[0]);
    for (index, name) in ["cpu@0", "cpu@1"].iter().enumerate() {
        w.begin_node(name);
        w.property_string("device_type", "cpu");
        w.property_string("enable-method", "psci");
        w.property_cells("reg", &[index as u32]);
        w.end_node();
    }
    w.end_node();
    w.end_node();
    w.finish()
}

/// Opens the Raspberry Pi 4's `/soc` (its children and `end_node` are the caller's): one-cell
/// bus addresses, `ranges` putting the peripherals' bus 0x7e000000 at CPU 0xfe000000, and
/// `dma-ranges` showing the first GiB of RAM at bus 0xc0000000 (Linux's `bcm2711.dtsi`).
pub(crate) fn begin_pi4_soc(w: &mut FdtWriter) {
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
    w.property_cells("dma-ranges", &[0xc000_0000, 0, 0, 0x4000_0000]);
}

/// A blob shaped like the Raspberry Pi 4's: one-cell `/soc` addresses translated by `ranges`,
/// the console named through an alias with options, RAM in two pieces, no PSCI.
fn pi4_like() -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.reserve_memory(0, 0x1000);
    w.begin_node("");
    w.property_string("model", "Raspberry Pi 4 Model B");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("aliases");
    w.property_string("serial1", "/soc/serial@7e201000");
    w.end_node();
    w.begin_node("chosen");
    w.property_string("stdout-path", "serial1:115200n8");
    w.end_node();
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", &[1, 0, 0x8000_0000, 0, 0, 0x3b40_0000]);
    w.end_node();
    begin_pi4_soc(&mut w);
    w.begin_node("dma@7e007000");
    w.property_string("compatible", "brcm,bcm2835-dma");
    w.property_cells("reg", &[0x7e00_7000, 0xb00]);
    w.property_cells("brcm,dma-channel-mask", &[0x7f5]);
    w.property("brcm,bad-mask", &[0, 1]);
    w.end_node();
    w.begin_node("serial@7e201000");
    w.property("compatible", b"arm,pl011\0arm,primecell\0");
    w.property_cells("reg", &[0x7e20_1000, 0x200]);
    w.end_node();
    w.begin_node("serial@7e215040");
    w.property_string("compatible", "brcm,bcm2835-aux-uart");
    w.property_cells("reg", &[0x7e21_5040, 0x40]);
    w.property_string("status", "disabled");
    w.end_node();
    w.end_node();
    w.begin_node("cpus");
    w.begin_node("cpu@0");
    w.property_string("device_type", "cpu");
    w.property_string("enable-method", "spin-table");
    w.end_node();
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn virt_blob_describes_the_machine() {
    let blob = virt_like(true);
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.model(), "linux,dummy-virt");
    assert_eq!(dt.bootargs(), "kernel.test");
    assert_eq!(dt.cpus().count, 2);
    assert_eq!(dt.cpus().enable_method, "psci");
    assert_eq!(dt.psci(), Ok(Some(PsciConduit::Hvc)));
    assert_eq!(dt.memory().unwrap().as_slice(), &[range(0x4000_0000, GIB)]);
    let console = dt.stdout().unwrap().unwrap();
    assert!(console.is_compatible("arm,pl011"));
    assert_eq!(console.regs.as_slice(), &[range(0x900_0000, 0x1000)]);
}

#[test]
fn reservations_include_memreserve_and_static_reserved_memory_only() {
    let blob = virt_like(true);
    let dt = parse(&blob).unwrap();
    let reservations = dt.reservations().unwrap();
    assert_eq!(
        reservations.as_slice(),
        &[
            reservation("/memreserve/", 0x4800_0000, 0x1000),
            Reservation { no_map: true, ..reservation("firmware@50000000", 0x5000_0000, 2 * MIB) }
        ],
        "the dynamic linux,cma node (size, no reg) reserves no fixed bytes"
    );
}

#[test]
fn console_address_is_translated_through_soc_ranges_and_alias() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    let console = dt.stdout().unwrap().unwrap();
    assert_eq!(console.name, "serial@7e201000");
    assert_eq!(console.regs.as_slice(), &[range(0xfe20_1000, 0x200)]);
    assert_eq!(dt.psci(), Ok(None), "the Pi 4 starts CPUs with spin tables, not PSCI");
    assert_eq!(dt.cpus().enable_method, "spin-table");
}

#[test]
fn the_pi4_dma_engine_is_found_below_soc_with_its_channel_mask() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    let engines = dt.compatible_devices(&["brcm,bcm2835-dma"]).unwrap();
    let [engine] = engines.as_slice() else { panic!("one DMA engine expected, found {}", engines.len()) };
    assert_eq!(engine.regs.as_slice(), &[range(0xfe00_7000, 0xb00)]);
    assert_eq!(engine.dma.limit(), Some(PhysAddr::new(0x4000_0000)), "30-bit reach through /soc dma-ranges");
    assert_eq!(dt.u32_property(engine, "brcm,dma-channel-mask"), Ok(Some(0x7f5)));
    assert_eq!(dt.u32_property(engine, "brcm,absent"), Ok(None));
    let error = dt.u32_property(engine, "brcm,bad-mask").unwrap_err();
    assert_eq!(format!("{error}"), "devicetree node 'dma@7e007000': property 'brcm,bad-mask' is not one 32-bit cell");
}

#[test]
fn disabled_devices_are_not_found() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    assert!(dt.compatible_devices(&["brcm,bcm2835-aux-uart"]).unwrap().is_empty());
    let pl011 = dt.compatible_devices(&["arm,pl011"]).unwrap();
    assert_eq!(pl011.len(), 1);
    assert_eq!(pl011[0].regs[0].start(), PhysAddr::new(0xfe20_1000));
}

#[test]
fn memory_in_several_pieces_with_one_cell_sizes() {
    let blob = pi4_like();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.memory().unwrap().as_slice(), &[range(0x1_0000_0000, 0x8000_0000), range(0, 0x3b40_0000)]);
}

#[test]
fn a_devicetree_without_memory_is_an_error() {
    let blob = virt_like(false);
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.memory(), Err(DtError::NoMemory));
    assert_eq!(format!("{}", DtError::NoMemory), "devicetree has no /memory node with a non-empty 'reg'");
}

#[test]
fn bad_magic_and_truncation_are_reported() {
    let mut blob = virt_like(true);
    assert!(matches!(parse(&blob[..20]), Err(DtError::Truncated { needed: 40, available: 20 })));
    let total = blob.len();
    assert!(matches!(
        parse(&blob[..total - 8]),
        Err(DtError::Truncated { needed, available }) if needed == total && available == total - 8
    ));
    blob[0] = 0;
    assert!(matches!(parse(&blob), Err(DtError::BadMagic { found: 0x000d_feed })));
}

/// Overwrites the big-endian u32 at `offset` of the structure block.
fn patch_structure(blob: &mut [u8], offset: usize, value: u32) {
    let base = u32::from_be_bytes(blob[8..12].try_into().unwrap()) as usize;
    blob[base + offset..base + offset + 4].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn malformed_structure_is_reported_not_panicked_on() {
    // Root BEGIN_NODE is at structure offset 0, its empty name pads to offset 8, where the
    // first property (model) starts: token, length, name offset.
    let mut unknown_token = virt_like(true);
    patch_structure(&mut unknown_token, 8, 0x77);
    assert!(matches!(parse(&unknown_token), Err(DtError::Malformed { problem: "an unknown token", .. })));

    let mut long_property = virt_like(true);
    patch_structure(&mut long_property, 12, 0x10_0000);
    assert!(matches!(parse(&long_property), Err(DtError::Malformed { .. })));

    let mut bad_name = virt_like(true);
    patch_structure(&mut bad_name, 16, 0xffff);
    assert!(matches!(
        parse(&bad_name),
        Err(DtError::Malformed {
            problem: "a property name that is not NUL-terminated UTF-8 inside the strings block",
            ..
        })
    ));

    let mut unbalanced = virt_like(true);
    let structure_size = u32::from_be_bytes(unbalanced[36..40].try_into().unwrap()) as usize;
    patch_structure(&mut unbalanced, structure_size - 8, 1); // the root's END_NODE
    assert!(matches!(parse(&unbalanced), Err(DtError::Malformed { .. })));
}

#[test]
fn reg_that_does_not_match_the_cell_sizes_is_an_error() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", &[0, 0x4000_0000]); // 2 cells, but the default entry is 2 + 1
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    let error = dt.memory().unwrap_err();
    assert!(matches!(error, DtError::BadProperty { node: "memory@0", property: "reg", .. }));
    assert_eq!(
        format!("{error}"),
        "devicetree node 'memory@0': property 'reg' is not a whole number of (address, size) entries of \
         2 + 1 cells, as its parent's #address-cells = <2> and #size-cells = <1> shape them"
    );
}

#[test]
fn cell_counts_that_are_not_one_cell_are_refused_at_validation() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property("#address-cells", &[0, 0]);
    w.end_node();
    let blob = w.finish();
    assert!(matches!(parse(&blob), Err(DtError::Malformed { .. })));
}

#[test]
fn an_address_outside_the_bus_ranges_is_untranslatable() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("chosen");
    w.property_string("stdout-path", "/soc/serial@1000");
    w.end_node();
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x100_0000]);
    w.begin_node("serial@1000");
    w.property_cells("reg", &[0x1000, 0x100]);
    w.end_node();
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.stdout().unwrap_err(), DtError::Untranslatable { node: "serial@1000", address: 0x1000 });
}

#[test]
fn a_missing_stdout_node_is_named() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("chosen");
    w.property_string("stdout-path", "serial0:115200n8");
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    let error = dt.stdout().unwrap_err();
    assert_eq!(error, DtError::StdoutAliasUndefined { alias: "serial0" });
    assert_eq!(format!("{error}"), "/chosen/stdout-path names alias 'serial0', which /aliases does not define");
}

#[test]
fn memory_map_subtracts_unsorted_overlapping_reservations() {
    let ram = [range(0x4000_0000, GIB)];
    let reservations = [
        reservation("dtb", 0x4800_0000, 0x10_0000),
        reservation("kernel image", 0x4020_0000, 0x20_0000),
        reservation("/memreserve/", 0x4808_0000, 0x10_0000), // overlaps the DTB
        reservation("pool", 0x4010_0000, 0x10_0000),
    ];
    let map = MemoryMap::compute(&ram, &reservations).unwrap();
    assert_eq!(
        map.free(),
        &[
            range(0x4000_0000, 0x10_0000),
            range(0x4040_0000, 0x4800_0000 - 0x4040_0000),
            range(0x4818_0000, 0x8000_0000 - 0x4818_0000),
        ]
    );
    assert_eq!(map.largest_free(), Some(range(0x4818_0000, 0x8000_0000 - 0x4818_0000)));
    let labels: Vec<&str> = map.entries().map(|entry| entry.label).collect();
    assert_eq!(labels, ["free", "pool", "kernel image", "free", "dtb", "/memreserve/", "free"]);
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn memory_map_trims_free_ranges_to_whole_pages() {
    let ram = [range(0x4000_0100, 0x10_0000)];
    let reservations = [reservation("dtb", 0x4000_8010, 0x100)];
    let map = MemoryMap::compute(&ram, &reservations).unwrap();
    assert_eq!(map.free(), &[range(0x4000_1000, 0x7000), range(0x4000_9000, 0xf7000)]);
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn memory_map_merges_unsorted_overlapping_ram() {
    let ram = [range(0x8000_0000, GIB), range(0x4000_0000, GIB), range(0x6000_0000, 0x1000)];
    let map = MemoryMap::compute(&ram, &[]).unwrap();
    assert_eq!(map.ram(), &[range(0x4000_0000, 2 * GIB)]);
    assert_eq!(map.free(), &[range(0x4000_0000, 2 * GIB)]);
}

#[test]
fn a_reservation_outside_ram_is_an_error_naming_it() {
    let ram = [range(0x4000_0000, GIB)];
    let outside = [reservation("firmware", 0x1000_0000, 0x1000)];
    assert_eq!(
        MemoryMap::compute(&ram, &outside).unwrap_err(),
        MapError::ReservedOutsideRam { label: "firmware", range: range(0x1000_0000, 0x1000) }
    );
    let straddling = [reservation("pool", 0x7fff_f000, 0x2000)];
    let error = MemoryMap::compute(&ram, &straddling).unwrap_err();
    assert_eq!(
        format!("{error}"),
        "memory map: reservation 'pool' [0x007ffff000..0x0080001000) is not inside RAM (check \
         /memory against /reserved-memory and /memreserve/)"
    );
}

#[test]
fn a_reservation_spanning_two_touching_ram_ranges_is_inside_ram() {
    let ram = [range(0x4000_0000, 0x1000_0000), range(0x5000_0000, 0x1000_0000)];
    let across = [reservation("pool", 0x4fff_0000, 0x2_0000)];
    let map = MemoryMap::compute(&ram, &across).unwrap();
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn no_ram_is_an_error() {
    assert_eq!(MemoryMap::compute(&[], &[]).unwrap_err(), MapError::NoRam);
    assert_eq!(MemoryMap::compute(&[range(0x4000_0000, 0)], &[]).unwrap_err(), MapError::NoRam);
}

#[test]
fn memory_map_from_a_devicetree() {
    let blob = virt_like(true);
    let dt = parse(&blob).unwrap();
    let ram = dt.memory().unwrap();
    let mut reservations = dt.reservations().unwrap();
    reservations.push(reservation("kernel image", 0x4020_0000, 0x8_0000));
    let map = MemoryMap::compute(&ram, &reservations).unwrap();
    assert_eq!(map.reserved().len(), 3);
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn sizes_print_for_people() {
    assert_eq!(format!("{}", Size(512)), "512 B");
    assert_eq!(format!("{}", Size(512 << 10)), "512 KiB");
    assert_eq!(format!("{}", Size(3 << 29)), "1.5 GiB");
    assert_eq!(format!("{:>8}", Size(GIB)), "   1 GiB");
}

/// Checks every byte of RAM page by page: free exactly where no reservation touches the page.
pub(crate) fn assert_free_is_ram_minus_reservations(map: &MemoryMap<'_>) {
    let page = crate::memmap::PAGE_SIZE;
    for ram in map.ram() {
        let mut address = ram.start().align_up(page).unwrap();
        while address.as_u64() + page <= ram.end().as_u64() {
            let this_page = range(address.as_u64(), page);
            let reserved = map.reserved().iter().any(|r| r.range.overlaps(&this_page));
            let free = map.free().iter().any(|f| f.covers(&this_page));
            assert_eq!(free, !reserved, "page {this_page}");
            address = address.add(page);
        }
    }
    for free in map.free() {
        assert!(free.start().is_aligned(page) && free.end().is_aligned(page));
        assert!(map.ram().iter().any(|ram| ram.covers(free)));
    }
}

#[test]
fn linear_map_skips_no_map_and_protects_image_and_devicetree() {
    let ram = [range(0x4000_0000, GIB)];
    let reservations = [
        Reservation { no_map: true, ..reservation("secure firmware", 0x4100_0000, 0x10_0000) },
        reservation("kernel image", 0x4020_0000, 0x8_8000),
        reservation("devicetree", 0x4800_0100, 0x1_0000),
    ];
    let map = MemoryMap::compute(&ram, &reservations).unwrap();
    let read_only = [range(0x4020_0000, 0x8_8000), range(0x4800_0100, 0x1_0000)];
    let linear = map.linear_map(&read_only).unwrap();
    let pieces: Vec<(PhysRange, bool)> = linear.iter().map(|piece| (piece.range, piece.writable)).collect();
    assert_eq!(
        pieces,
        [
            (range(0x4000_0000, 0x20_0000), true),
            (range(0x4020_0000, 0x8_8000), false),
            (range(0x4028_8000, 0x4100_0000 - 0x4028_8000), true),
            (range(0x4110_0000, 0x4800_0000 - 0x4110_0000), true),
            (range(0x4800_0000, 0x1_1000), false), // the devicetree, widened to whole pages
            (range(0x4801_1000, 0x8000_0000 - 0x4801_1000), true),
        ]
    );
}

/// Blanks out the `psci` node with NOP tokens, as libfdt's `fdt_nop_node` does (QEMU treats
/// `/memory` so before adding its own).
fn with_psci_node_blanked(mut blob: Vec<u8>) -> Vec<u8> {
    let name = blob.windows(5).position(|window| window == b"psci\0").unwrap();
    let node = name - 4;
    // BEGIN_NODE "psci" (12) + compatible "arm,psci-1.0" (28) + method "hvc" (16) + END_NODE (4)
    for word in blob[node..node + 60].chunks_exact_mut(4) {
        word.copy_from_slice(&4u32.to_be_bytes());
    }
    blob
}

#[test]
fn nop_tokens_left_by_libfdt_do_not_hide_later_nodes() {
    let blob = with_psci_node_blanked(virt_like(true));
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.psci(), Ok(None), "the blanked node is gone");
    assert_eq!(dt.memory().unwrap().as_slice(), &[range(0x4000_0000, GIB)]);
    assert_eq!(dt.reservations().unwrap().len(), 2);
    assert!(dt.stdout().unwrap().unwrap().is_compatible("arm,pl011"));
    assert_eq!(dt.cpus().count, 2);
    assert_eq!(dt.size_in_bytes(), blob.len() - 60, "the copy drops the 15 NOP tokens");
}

#[test]
fn storage_too_small_for_the_devicetree_is_an_error() {
    let blob = virt_like(true);
    let mut storage = alloc::vec![0u8; 100];
    assert!(matches!(Devicetree::parse(&blob, &mut storage), Err(DtError::TooLarge { capacity: 100, .. })));
}

// ---- regressions from random mutations, and the console rescue -----------------------------

/// The drivers the kernel has for consoles: the PL011 and the Raspberry Pi's mini UART.
const CONSOLE_DRIVERS: [&str; 2] = ["arm,pl011", "brcm,bcm2835-aux-uart"];

/// The message a devicetree error prints, with the structure offset (which moves as the
/// fixtures grow) left out.
fn problem(error: DtError<'_>) -> &'static str {
    match error {
        DtError::Malformed { problem, .. } => problem,
        other => panic!("expected a malformed structure, got {other:?}"),
    }
}

#[test]
fn a_property_after_a_child_node_is_refused_in_words() {
    // bus { child {}; #address-cells = <1>; }: `fdt` skips a child by expecting END_NODE after
    // its children, and asserted ("bad node") on the property.
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("bus");
    w.begin_node("child");
    w.end_node();
    w.property_cells("#address-cells", &[1]);
    w.end_node();
    w.end_node();
    let error = parse(&w.finish()).err().unwrap();
    assert_eq!(problem(error), "a property after a child node; a node's properties must come first");
    let message = format!("{error}");
    assert!(message.starts_with("devicetree structure malformed at offset 0x"), "{message}");
    assert!(message.ends_with(": a property after a child node; a node's properties must come first"), "{message}");
}

#[test]
fn a_root_node_with_a_name_is_refused() {
    let mut w = FdtWriter::new();
    w.begin_node("root");
    w.property_string("model", "named root");
    w.end_node();
    let error = parse(&w.finish()).err().unwrap();
    assert_eq!(problem(error), "the root node has a name; the root's name must be empty");
}

/// `/aliases` with one alias, `name` = `value`, and `/chosen/stdout-path` = `stdout`; no `/psci`.
fn with_alias(name: &str, value: &str, stdout: &str) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("aliases");
    w.property_string(name, value);
    w.end_node();
    w.begin_node("chosen");
    w.property_string("stdout-path", stdout);
    w.end_node();
    w.begin_node("reserved-memory");
    w.begin_node("pool");
    w.property_string("compatible", "restricted-dma-pool");
    w.property_cells("size", &[0x10_0000]);
    w.end_node();
    w.end_node();
    w.begin_node("uart@1000");
    w.property_string("compatible", "arm,pl011");
    w.property_cells("memory-region", &[7]);
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn a_self_referential_alias_is_refused_not_followed_for_ever() {
    // `Fdt::find_node("/psci")` retries a missing path as an alias and follows the alias's
    // value the same way: "/psci" = "/psci" overflowed the stack.
    let error = parse(&with_alias("/psci", "/psci", "/uart@1000")).err().unwrap();
    assert_eq!(problem(error), "an /aliases property whose name holds '/'; alias names are letters, digits and '-'");

    // An alias that names itself the ordinary way is one step that leads nowhere.
    let dt = parse(&with_alias("serial0", "serial0", "serial0")).unwrap();
    assert_eq!(dt.psci(), Ok(None));
    assert_eq!(dt.bootargs(), "");
    assert_eq!(dt.stdout().unwrap_err(), DtError::StdoutNotFound { path: "serial0", alias: Some("serial0") });
    assert!(dt.restricted_pools().is_ok());
    let error = dt.compatible_devices(&["arm,pl011"]).unwrap_err();
    assert!(matches!(error, DtError::BadMemoryRegion { phandle: 7, problem: "names no node", .. }), "{error:?}");
}

/// QEMU `virt`'s blob with `stdout-path` naming a node that is not there.
fn virt_with_stdout(path: &str) -> Vec<u8> {
    let blob = virt_like(true);
    let old = b"/pl011@9000000\0";
    let at = blob.windows(old.len()).position(|window| window == old).unwrap();
    let mut patched = blob.clone();
    assert!(path.len() < old.len());
    patched[at..at + old.len()].fill(0);
    patched[at..at + path.len()].copy_from_slice(path.as_bytes());
    patched
}

#[test]
fn a_stdout_path_to_a_missing_node_is_named_and_the_pl011_rescued() {
    let blob = virt_with_stdout("/uart@9000000");
    let dt = parse(&blob).unwrap();
    let error = dt.stdout().unwrap_err();
    assert_eq!(error, DtError::StdoutNotFound { path: "/uart@9000000", alias: None });
    assert_eq!(format!("{error}"), "/chosen/stdout-path names '/uart@9000000', which is not in the devicetree");
    let console = dt.rescue_console(&CONSOLE_DRIVERS).unwrap();
    assert_eq!((console.name, console.compatible), ("pl011@9000000", "arm,pl011"));
    assert_eq!(console.registers, range(0x900_0000, 0x1000));
    assert_eq!(console.found_by, FoundBy::FirstWithDriver);
    assert!(console.guesses.is_empty());
    assert_eq!(rescue_console(&blob, &CONSOLE_DRIVERS), Some(console), "the raw blob reads the same");
}

#[test]
fn a_root_with_one_size_cell_names_the_mismatch_and_the_pl011_is_rescued() {
    let mut blob = virt_like(true);
    // The root's `#size-cells` is the second property: BEGIN_NODE "" (8 bytes), model
    // (12 + "linux,dummy-virt\0" padded to 20), #address-cells (16), then its token, length,
    // name offset and value.
    patch_structure(&mut blob, 8 + 32 + 16 + 12, 1);
    let dt = parse(&blob).unwrap();
    let error = dt.stdout().unwrap_err();
    assert_eq!(
        format!("{error}"),
        "devicetree node 'pl011@9000000': property 'reg' is not a whole number of (address, size) entries of \
         2 + 1 cells, as its parent's #address-cells = <2> and #size-cells = <1> shape them"
    );
    let console = dt.rescue_console(&CONSOLE_DRIVERS).unwrap();
    assert_eq!((console.name, console.registers), ("pl011@9000000", range(0x900_0000, 0x1000)));
    assert_eq!(console.found_by, FoundBy::StdoutPath);
    assert_eq!(
        console.guesses.as_slice(),
        &[Guess::CellCounts {
            node: "pl011@9000000",
            parent: "/",
            stated_address_cells: 2,
            stated_size_cells: 1,
            address_cells: 2,
            size_cells: 2,
        }]
    );
    assert_eq!(
        format!("{}", console.guesses[0]),
        "'reg' of 'pl011@9000000' is not a whole number of entries of #address-cells = <2> and #size-cells = <1> \
         (of '/'); read as 2 + 2 cells"
    );
}

/// `blob` cut `keep` bytes into its strings block, its header's `totalsize` saying so.
fn cut_in_strings_block(blob: &[u8], keep: usize) -> Vec<u8> {
    let strings = u32::from_be_bytes(blob[12..16].try_into().unwrap()) as usize;
    let mut cut = blob[..strings + keep].to_vec();
    cut[4..8].copy_from_slice(&((strings + keep) as u32).to_be_bytes());
    cut
}

#[test]
fn a_blob_truncated_in_its_strings_block_says_so_and_the_pl011_is_rescued() {
    let blob = virt_like(true);
    let strings = u32::from_be_bytes(blob[12..16].try_into().unwrap()) as usize;
    let strings_size = u32::from_be_bytes(blob[32..36].try_into().unwrap()) as usize;
    // Keep the names up to and including "reg", and half of the next one.
    let reg = blob[strings..].windows(5).position(|window| window == b"\0reg\0").unwrap() + 5;
    let cut = cut_in_strings_block(&blob, reg + 2);
    let error = parse(&cut).err().unwrap();
    assert_eq!(
        error,
        DtError::BlockOutOfBounds {
            block: "strings",
            offset: strings as u32,
            size: strings_size as u32,
            total_size: strings + reg + 2
        }
    );
    assert_eq!(
        format!("{error}"),
        format!(
            "devicetree strings block truncated: the header places it at [{strings:#x}..{:#x}), but the blob ends \
             at {:#x} (its totalsize)",
            strings + strings_size,
            strings + reg + 2
        )
    );
    let console = rescue_console(&cut, &CONSOLE_DRIVERS).unwrap();
    assert_eq!((console.name, console.registers), ("pl011@9000000", range(0x900_0000, 0x1000)));
    assert_eq!(console.found_by, FoundBy::StdoutPath);
}

#[test]
fn the_rescue_finds_the_pi_pl011_through_alias_and_soc_ranges() {
    let blob = pi4_like();
    let console = rescue_console(&blob, &CONSOLE_DRIVERS).unwrap();
    assert_eq!((console.name, console.compatible), ("serial@7e201000", "arm,pl011"));
    assert_eq!(console.registers, range(0xfe20_1000, 0x200));
    assert_eq!(console.found_by, FoundBy::StdoutPath);
    // The mini UART is disabled there, so a kernel with only its driver has no console.
    assert_eq!(rescue_console(&blob, &["brcm,bcm2835-aux-uart"]), None);
    assert_eq!(rescue_console(&blob[..39], &CONSOLE_DRIVERS), None, "shorter than a header");
}

#[test]
fn the_rescue_prefers_the_stdout_uart_over_an_earlier_one() {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#size-cells", &[7]); // unusable: the rescue falls back
    w.begin_node("chosen");
    w.property_string("stdout-path", "/soc/serial@7e215040:115200n8");
    w.end_node();
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("serial@7e201000");
    w.property_string("compatible", "arm,pl011");
    w.property_cells("reg", &[0x7e20_1000, 0x200]);
    w.end_node();
    w.begin_node("serial@7e215040");
    w.property_string("compatible", "brcm,bcm2835-aux-uart");
    w.property_cells("reg", &[0x7e21_5040, 0x40]);
    w.end_node();
    w.end_node();
    w.end_node();
    let blob = w.finish();
    assert!(parse(&blob).unwrap().stdout().is_err(), "the root's #size-cells is refused");
    let console = rescue_console(&blob, &CONSOLE_DRIVERS).unwrap();
    assert_eq!((console.name, console.found_by), ("serial@7e215040", FoundBy::StdoutPath));
    assert_eq!(console.registers, range(0x7e21_5040, 0x40));
    assert_eq!(console.guesses.as_slice(), &[Guess::Untranslated { bus: "soc", address: 0x7e21_5040 }]);
    assert_eq!(
        format!("{}", console.guesses[0]),
        "'soc' has no 'ranges' that translates 0x7e215040; taken as a physical address"
    );
}

// ---- CPUs ----------------------------------------------------------------------------------

/// One CPU node: its name, `reg` cells (none: no `reg`), `enable-method` and
/// `cpu-release-addr` cells.
type CpuNode<'a> = (&'a str, &'a [u32], Option<&'a str>, Option<&'a [u32]>);

/// A `/cpus` of the given `#address-cells`, one node per entry of `cpus`.
fn cpus_tree(address_cells: u32, cpus: &[CpuNode<'_>]) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("cpus");
    w.property_cells("#address-cells", &[address_cells]);
    w.property_cells("#size-cells", &[0]);
    for (name, reg, method, release) in cpus {
        w.begin_node(name);
        w.property_string("device_type", "cpu");
        if !reg.is_empty() {
            w.property_cells("reg", reg);
        }
        if let Some(method) = method {
            w.property_string("enable-method", method);
        }
        if let Some(release) = release {
            w.property_cells("cpu-release-addr", release);
        }
        w.end_node();
    }
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn qemu_virt_lists_its_cpus_started_by_psci() {
    let blob = virt_like(true);
    let dt = parse(&blob).unwrap();
    let cpus = dt.cpu_list().unwrap();
    assert_eq!(cpus.len(), 2);
    for (index, cpu) in cpus.iter().enumerate() {
        assert_eq!((cpu.mpidr, cpu.start), (index as u64, CpuStart::Psci), "{}", cpu.name);
    }
    // QEMU's own trees. Dumped with `-smp 2`: both CPUs start by PSCI.
    let fixture = parse(include_bytes!("../tests/fixtures/qemu-virt-smmuv3.dtb")).unwrap();
    let cpus = fixture.cpu_list().unwrap();
    assert_eq!(
        cpus.as_slice(),
        &[
            Cpu { name: "cpu@0", mpidr: 0, start: CpuStart::Psci },
            Cpu { name: "cpu@1", mpidr: 1, start: CpuStart::Psci }
        ]
    );
    // Dumped with one CPU: QEMU writes `enable-method` only when there are more.
    let fixture = parse(include_bytes!("../tests/fixtures/qemu-virt-gicv3-its.dtb")).unwrap();
    let cpus = fixture.cpu_list().unwrap();
    assert_eq!(cpus.as_slice(), &[Cpu { name: "cpu@0", mpidr: 0, start: CpuStart::None }]);
}

#[test]
fn the_pi4s_cpus_wait_on_the_armstubs_spin_table() {
    // bcm2711.dtsi: cpu-release-addr <0x0 0xd8>, <0x0 0xe0>, <0x0 0xe8>, <0x0 0xf0>.
    let spin = Some("spin-table");
    let blob = cpus_tree(
        1,
        &[
            ("cpu@0", &[0], spin, Some(&[0, 0xd8])),
            ("cpu@1", &[1], spin, Some(&[0, 0xe0])),
            ("cpu@2", &[2], spin, Some(&[0, 0xe8])),
            ("cpu@3", &[3], spin, Some(&[0, 0xf0])),
        ],
    );
    let dt = parse(&blob).unwrap();
    let cpus = dt.cpu_list().unwrap();
    assert_eq!(cpus.len(), 4);
    for (index, (cpu, release)) in cpus.iter().zip([0xd8, 0xe0, 0xe8, 0xf0]).enumerate() {
        assert_eq!(cpu.mpidr, index as u64);
        assert_eq!(cpu.start, CpuStart::SpinTable { release: PhysAddr::new(release) }, "{}", cpu.name);
    }
}

#[test]
fn a_two_cell_reg_and_an_unknown_enable_method_are_read() {
    let blob = cpus_tree(2, &[("cpu@100", &[0, 0x100], Some("acpi-parking-protocol"), None)]);
    let dt = parse(&blob).unwrap();
    let cpus = dt.cpu_list().unwrap();
    assert_eq!(cpus[0], Cpu { name: "cpu@100", mpidr: 0x100, start: CpuStart::None });
}

#[test]
fn cpus_that_cannot_be_described_are_errors_naming_them() {
    let psci = Some("psci");
    let spin = Some("spin-table");
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("no reg", cpus_tree(1, &[("cpu@1", &[], psci, None)]), "reg"),
        ("a one-cell reg under two", cpus_tree(2, &[("cpu@1", &[1], psci, None)]), "reg"),
        ("a two-cell reg under one", cpus_tree(1, &[("cpu@1", &[0, 1], psci, None)]), "reg"),
        ("bit 24 set", cpus_tree(1, &[("cpu@1", &[0x100_0001], psci, None)]), "reg"),
        ("above Aff3", cpus_tree(2, &[("cpu@1", &[0x100, 1], psci, None)]), "reg"),
        ("an MPIDR twice", cpus_tree(1, &[("cpu@0", &[0], psci, None), ("cpu@1", &[0], psci, None)]), "reg"),
        ("a spin table without release", cpus_tree(1, &[("cpu@1", &[1], spin, None)]), "cpu-release-addr"),
        ("a one-cell release", cpus_tree(1, &[("cpu@1", &[1], spin, Some(&[0xe0]))]), "cpu-release-addr"),
    ];
    for (case, blob, property) in cases {
        let dt = parse(&blob).unwrap();
        let error = dt.cpu_list().unwrap_err();
        match error {
            DtError::BadProperty { node: "cpu@1", property: named, .. } => assert_eq!(named, property, "{case}"),
            other => panic!("{case}: {other:?}"),
        }
        let message = format!("{error}");
        assert!(message.contains("'cpu@1'") && message.contains(property), "{case}: {message}");
    }
}

#[test]
fn cpus_that_are_disabled_or_not_cpus_are_not_listed() {
    // Like bcm2711.dtsi's /cpus, which also holds the L2 cache, plus a cpu-map and a CPU the
    // firmware disabled.
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.begin_node("cpus");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[0]);
    w.begin_node("cpu-map");
    w.begin_node("cluster0");
    w.end_node();
    w.end_node();
    for (name, mpidr, status) in [("cpu@0", 0, None), ("cpu@1", 1, Some("disabled")), ("cpu@2", 2, Some("okay"))] {
        w.begin_node(name);
        w.property_string("device_type", "cpu");
        w.property_cells("reg", &[mpidr]);
        w.property_string("enable-method", "psci");
        if let Some(status) = status {
            w.property_string("status", status);
        }
        w.end_node();
    }
    w.begin_node("l2-cache0");
    w.property_string("compatible", "cache");
    w.property_string("cache-level", "2");
    w.end_node();
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    let listed = dt.cpu_list().unwrap();
    let listed: Vec<_> = listed.iter().map(|cpu| (cpu.name, cpu.mpidr)).collect();
    assert_eq!(listed, [("cpu@0", 0), ("cpu@2", 2)]);
}

#[test]
fn a_tree_without_cpus_lists_none() {
    let blob = cpus_tree(1, &[]);
    assert!(parse(&blob).unwrap().cpu_list().unwrap().is_empty());
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.end_node();
    let blob = w.finish();
    assert!(parse(&blob).unwrap().cpu_list().unwrap().is_empty());
}

#[test]
fn more_cpus_than_the_list_holds_is_an_error_saying_how_many_fit() {
    let names: Vec<_> = (0..=MAX_CPUS).map(|index| format!("cpu@{index}")).collect();
    let regs: Vec<[u32; 1]> = (0..=MAX_CPUS as u32).map(|index| [index]).collect();
    let nodes: Vec<CpuNode<'_>> =
        names.iter().zip(&regs).map(|(name, reg)| (name.as_str(), &reg[..], Some("psci"), None)).collect();
    let full = cpus_tree(1, &nodes[..MAX_CPUS]);
    assert_eq!(parse(&full).unwrap().cpu_list().unwrap().len(), MAX_CPUS);
    let one_more = cpus_tree(1, &nodes);
    let error = parse(&one_more).unwrap().cpu_list().unwrap_err();
    assert_eq!(error, DtError::TooManyRanges { what: "CPUs" });
    assert_eq!(format!("{error}"), format!("devicetree lists more than {MAX_CPUS} enabled CPUs"));
}

#[test]
fn cpus_whose_reg_takes_no_cells_is_an_error_naming_cpus() {
    let blob = cpus_tree(0, &[("cpu@0", &[], Some("psci"), None)]);
    match parse(&blob).unwrap().cpu_list() {
        Err(DtError::BadProperty { node: "cpus", property: "#address-cells", .. }) => {}
        other => panic!("{other:?}"),
    }
}
