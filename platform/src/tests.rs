//! Host tests on crafted devicetree blobs.

use alloc::format;
use alloc::vec::Vec;

use addr::{PhysAddr, PhysRange};

use crate::devicetree::{Devicetree, Error as DtError, PsciConduit, Reservation};
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
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
    w.property_cells("dma-ranges", &[0xc000_0000, 0, 0, 0x4000_0000]);
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
    assert!(matches!(parse(&unknown_token), Err(DtError::Malformed { problem: "unknown token", .. })));

    let mut long_property = virt_like(true);
    patch_structure(&mut long_property, 12, 0x10_0000);
    assert!(matches!(parse(&long_property), Err(DtError::Malformed { .. })));

    let mut bad_name = virt_like(true);
    patch_structure(&mut bad_name, 16, 0xffff);
    assert!(matches!(
        parse(&bad_name),
        Err(DtError::Malformed { problem: "property name outside the strings block", .. })
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
    assert!(matches!(dt.memory(), Err(DtError::BadProperty { node: "memory@0", property: "reg", .. })));
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
    assert_eq!(dt.stdout().unwrap_err(), DtError::StdoutNotFound { path: "serial0" });
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
