//! Host tests for the devicetree's DMA configuration: restricted pools, `memory-region`,
//! `dma-ranges`, `dma-coherent`, and placing pools in the memory map.

use alloc::format;
use alloc::vec::Vec;

use addr::{DmaAddr, PhysAddr};
use arrayvec::ArrayVec;

use crate::devicetree::{Devicetree, Error as DtError, Reservation};
use crate::dma_config::{
    DmaDescription, DmaWindow, PoolPlacement, PoolProblem, PoolReachError, RestrictedPool, lowest_limit,
    pool_bus_address,
};
use crate::fdt_writer::FdtWriter;
use crate::memmap::{Error as MapError, MemoryMap};
use crate::tests::{GIB, MIB, assert_free_is_ram_minus_reservations, begin_pi4_soc, parse, range, reservation};

const STATIC_POOL: &str = "restricted-dma@50000000";
const DYNAMIC_POOL: &str = "restricted-dma-dynamic";
const STATIC_PHANDLE: u32 = 1;
const DYNAMIC_PHANDLE: u32 = 2;
const SHARED_PHANDLE: u32 = 3;

/// A QEMU-`virt`-like machine (two-cell addresses and sizes, 1 GiB of RAM at 1 GiB) whose
/// `/reserved-memory` gets `reserved`'s children and whose root gets `devices`.
fn machine(reserved: impl FnOnce(&mut FdtWriter), devices: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.begin_node("memory@40000000");
    w.property_string("device_type", "memory");
    w.property_reg64("reg", &[(0x4000_0000, GIB)]);
    w.end_node();
    w.begin_node("reserved-memory");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[2]);
    w.property("ranges", &[]);
    reserved(&mut w);
    w.end_node();
    devices(&mut w);
    w.end_node();
    w.finish()
}

/// One `restricted-dma-pool` child of `/reserved-memory`, with `properties` added.
fn pool_node(w: &mut FdtWriter, name: &str, properties: impl FnOnce(&mut FdtWriter)) {
    w.begin_node(name);
    w.property_string("compatible", "restricted-dma-pool");
    properties(w);
    w.end_node();
}

/// Both pool forms, a CMA area that is not a restricted pool, and a disabled restricted pool.
fn standard_pools(w: &mut FdtWriter) {
    pool_node(w, STATIC_POOL, |w| {
        w.property_reg64("reg", &[(0x5000_0000, 4 * MIB)]);
        w.property_cells("phandle", &[STATIC_PHANDLE]);
    });
    pool_node(w, DYNAMIC_POOL, |w| {
        w.property_cells("size", &[0, 0x80_0000]);
        w.property_cells("alignment", &[0, 0x20_0000]);
        w.property_reg64("alloc-ranges", &[(0x4000_0000, 0x4000_0000)]);
        w.property_cells("linux,phandle", &[DYNAMIC_PHANDLE]);
    });
    w.begin_node("linux,cma");
    w.property_string("compatible", "shared-dma-pool");
    w.property("reusable", &[]);
    w.property_cells("size", &[0, 0x400_0000]);
    w.property_cells("phandle", &[SHARED_PHANDLE]);
    w.end_node();
    pool_node(w, "restricted-dma-off", |w| {
        w.property_cells("size", &[0, 0x10_0000]);
        w.property_string("status", "disabled");
        w.property_cells("phandle", &[4]);
    });
}

/// A device at the root with `properties` added.
fn device(w: &mut FdtWriter, name: &str, address: u64, properties: impl FnOnce(&mut FdtWriter)) {
    w.begin_node(name);
    w.property_string("compatible", "test,dma-device");
    w.property_reg64("reg", &[(address, 0x200)]);
    properties(w);
    w.end_node();
}

fn devices(dt: &Devicetree<'static>) -> Vec<crate::devicetree::Device<'static>> {
    dt.compatible_devices(&["test,dma-device"]).unwrap().into_iter().collect()
}

fn the_device(blob: &[u8]) -> crate::devicetree::Device<'static> {
    let dt = parse(blob).unwrap();
    let mut found = devices(&dt);
    assert_eq!(found.len(), 1);
    found.remove(0)
}

fn window(cpu: u64, bus: u64, size: u64) -> DmaWindow {
    DmaWindow { cpu_start: PhysAddr::new(cpu), bus_start: DmaAddr::new(bus), size }
}

// ---- restricted pools ----------------------------------------------------------------------

#[test]
fn both_pool_forms_are_parsed_and_other_regions_are_not_pools() {
    let blob = machine(standard_pools, |_| {});
    let dt = parse(&blob).unwrap();
    let pools = dt.restricted_pools().unwrap();
    assert_eq!(
        pools.as_slice(),
        &[
            RestrictedPool {
                name: STATIC_POOL,
                phandle: Some(STATIC_PHANDLE),
                placement: PoolPlacement::Static(range(0x5000_0000, 4 * MIB)),
            },
            RestrictedPool {
                name: DYNAMIC_POOL,
                phandle: Some(DYNAMIC_PHANDLE),
                placement: PoolPlacement::Dynamic {
                    size: 8 * MIB,
                    alignment: 2 * MIB,
                    alloc_ranges: [range(0x4000_0000, GIB)].into_iter().collect(),
                },
            },
        ],
        "the shared-dma-pool and the disabled pool are not restricted pools"
    );
    assert_eq!(pools[1].placement.size(), 8 * MIB);
    let static_reservation = Reservation { range: range(0x5000_0000, 4 * MIB), label: STATIC_POOL, no_map: false };
    assert_eq!(dt.reservations().unwrap().as_slice(), &[static_reservation], "only the static pool has fixed bytes");
}

#[test]
fn a_dynamic_pool_without_alignment_is_page_aligned_and_small_alignments_round_up_to_a_page() {
    let blob = machine(
        |w| {
            pool_node(w, "plain", |w| w.property_cells("size", &[0, 0x10_0000]));
            pool_node(w, "byte-aligned", |w| {
                w.property_cells("size", &[0, 0x10_0000]);
                w.property_cells("alignment", &[0, 0x40]);
            });
        },
        |_| {},
    );
    let dt = parse(&blob).unwrap();
    for pool in dt.restricted_pools().unwrap() {
        assert!(
            matches!(pool.placement, PoolPlacement::Dynamic { alignment: 0x1000, ref alloc_ranges, .. } if alloc_ranges.is_empty())
        );
        assert_eq!(pool.phandle, None);
    }
}

/// The error `restricted_pools` reports for one pool node called `bad-pool`.
fn pool_error(properties: impl FnOnce(&mut FdtWriter)) -> DtError<'static> {
    let blob = machine(|w| pool_node(w, "bad-pool", properties), |_| {});
    parse(&blob).unwrap().restricted_pools().unwrap_err()
}

fn bad_pool(problem: PoolProblem) -> DtError<'static> {
    DtError::BadPool { node: "bad-pool", problem }
}

#[test]
fn pools_that_linux_refuses_are_errors_naming_the_node() {
    for flag in ["no-map", "reusable", "linux,cma-default", "linux,dma-default"] {
        let error = pool_error(|w| {
            w.property_reg64("reg", &[(0x5000_0000, 4 * MIB)]);
            w.property(flag, &[]);
        });
        assert_eq!(error, bad_pool(PoolProblem::ForbiddenProperty(flag)));
    }
    let error = pool_error(|w| {
        w.property_cells("size", &[0, 0x10_0000]);
        w.property("no-map", &[]);
    });
    assert_eq!(error, bad_pool(PoolProblem::ForbiddenProperty("no-map")), "dynamic pools too");
    assert_eq!(
        format!("{error}"),
        "restricted DMA pool 'bad-pool' has 'no-map', which Linux refuses too: the CPU must map a \
         bounce pool to copy buffers through it, and no other allocator may hand its pages out"
    );
}

#[test]
fn pool_sizes_must_be_whole_non_zero_pages() {
    assert_eq!(pool_error(|w| w.property_cells("size", &[0, 0])), bad_pool(PoolProblem::ZeroSize));
    assert_eq!(pool_error(|w| w.property_reg64("reg", &[(0x5000_0000, 0)])), bad_pool(PoolProblem::ZeroSize));
    let error = pool_error(|w| w.property_cells("size", &[0, 0x1800]));
    assert_eq!(error, bad_pool(PoolProblem::SizeNotPageMultiple(0x1800)));
    assert_eq!(
        format!("{error}"),
        "restricted DMA pool 'bad-pool' has size 0x1800, not a multiple of the 4096-byte page"
    );
    let error = pool_error(|w| w.property_reg64("reg", &[(0x5000_0000, 0x10_0800)]));
    assert_eq!(error, bad_pool(PoolProblem::SizeNotPageMultiple(0x10_0800)));
}

#[test]
fn pool_alignment_must_be_a_power_of_two() {
    let error = pool_error(|w| {
        w.property_cells("size", &[0, 0x10_0000]);
        w.property_cells("alignment", &[0, 0x3000]);
    });
    assert_eq!(error, bad_pool(PoolProblem::AlignmentNotPowerOfTwo(0x3000)));
    assert_eq!(format!("{error}"), "restricted DMA pool 'bad-pool' has alignment 0x3000, not a power of two");
    let zero = pool_error(|w| {
        w.property_cells("size", &[0, 0x10_0000]);
        w.property_cells("alignment", &[0, 0]);
    });
    assert_eq!(zero, bad_pool(PoolProblem::AlignmentNotPowerOfTwo(0)));
}

#[test]
fn pool_shape_errors_name_the_node() {
    assert_eq!(pool_error(|_| {}), bad_pool(PoolProblem::NoRegOrSize));
    let several = pool_error(|w| w.property_reg64("reg", &[(0x5000_0000, 0x1000), (0x6000_0000, 0x1000)]));
    assert_eq!(several, bad_pool(PoolProblem::SeveralRegEntries));
    let unaligned = pool_error(|w| w.property_reg64("reg", &[(0x5000_0800, 0x1000)]));
    assert_eq!(unaligned, bad_pool(PoolProblem::StartNotPageAligned(PhysAddr::new(0x5000_0800))));
    let malformed = [
        (pool_error(|w| w.property_cells("reg", &[0, 0x5000_0000, 0])), "reg"),
        (pool_error(|w| w.property_cells("size", &[0x10_0000])), "size"),
        (
            pool_error(|w| {
                w.property_cells("size", &[0, 0x10_0000]);
                w.property_cells("alignment", &[0, 0, 0x1000]);
            }),
            "alignment",
        ),
        (
            pool_error(|w| {
                w.property_cells("size", &[0, 0x10_0000]);
                w.property_cells("phandle", &[1, 2]);
            }),
            "phandle",
        ),
    ];
    for (error, property) in malformed {
        assert!(
            matches!(error, DtError::BadProperty { node: "bad-pool", property: p, .. } if p == property),
            "{property}: {error:?}"
        );
    }
}

#[test]
fn alloc_ranges_errors_name_the_pool_and_say_what_is_wrong() {
    let empty: &[u32] = &[];
    let cases = [
        (empty, "property 'alloc-ranges' is empty"),
        (
            &[0, 0x4000_0000, 0],
            "property 'alloc-ranges' holds 3 cells, not a whole number of 4-cell entries (address, size)",
        ),
        (&[0, 0x4000_0000, 0, 0], "property 'alloc-ranges' has an entry of size zero"),
        (&[0xffff_ffff, 0xffff_f000, 0, 0x2000], "property 'alloc-ranges' has an entry that runs past the top"),
    ];
    for (cells, problem) in cases {
        let error = pool_error(|w| {
            w.property_cells("size", &[0, 0x10_0000]);
            w.property_cells("alloc-ranges", cells);
        });
        let message = format!("{error}");
        assert!(message.contains("'bad-pool'") && message.contains(problem), "{problem:?} missing from: {message}");
    }
}

// ---- static pools in the memory map --------------------------------------------------------

/// The memory map the kernel builds: the devicetree's reservations plus the image and the DTB.
fn kernel_memory_map(dt: &Devicetree<'static>, image: (u64, u64), devicetree: (u64, u64)) -> MemoryMap<'static> {
    let mut reservations = dt.reservations().unwrap();
    reservations.push(reservation("kernel image", image.0, image.1));
    reservations.push(reservation("devicetree", devicetree.0, devicetree.1));
    MemoryMap::compute(&dt.memory().unwrap(), &reservations).unwrap()
}

fn static_pool_at(start: u64, size: u64) -> Vec<u8> {
    machine(
        |w| {
            pool_node(w, STATIC_POOL, |w| w.property_reg64("reg", &[(start, size)]));
            w.begin_node("firmware@4e000000");
            w.property_reg64("reg", &[(0x4e00_0000, 2 * MIB)]);
            w.property("no-map", &[]);
            w.end_node();
        },
        |_| {},
    )
}

#[allow(clippy::result_large_err)] // as `MemoryMap::check_pool`, whose error it returns
fn check_static_pool(start: u64, size: u64) -> Result<(), MapError<'static>> {
    let blob = static_pool_at(start, size);
    let dt = parse(&blob).unwrap();
    let map = kernel_memory_map(&dt, (0x4020_0000, 2 * MIB), (0x4800_0000, 0x1_0000));
    let pools = dt.restricted_pools().unwrap();
    let PoolPlacement::Static(range) = pools[0].placement else { panic!("a static pool") };
    let pool = &pools[0];
    map.check_pool(pool.name, range)
}

#[test]
fn a_static_pool_clear_of_everything_passes_and_its_own_entry_is_no_conflict() {
    assert_eq!(check_static_pool(0x5000_0000, 4 * MIB), Ok(()));
}

#[test]
fn a_static_pool_overlapping_the_kernel_image_is_an_error() {
    let error = check_static_pool(0x4000_0000, 4 * MIB).unwrap_err();
    assert_eq!(
        error,
        MapError::PoolOverlaps {
            pool: STATIC_POOL,
            range: range(0x4000_0000, 4 * MIB),
            other: "kernel image",
            other_range: range(0x4020_0000, 2 * MIB),
        }
    );
    assert_eq!(
        format!("{error}"),
        "memory map: restricted DMA pool 'restricted-dma@50000000' [0x0040000000..0x0040400000) overlaps \
         'kernel image' [0x0040200000..0x0040400000); a device bouncing through it would read and write \
         those bytes"
    );
}

#[test]
fn a_static_pool_overlapping_the_devicetree_is_an_error() {
    let error = check_static_pool(0x47ff_f000, 0x2000).unwrap_err();
    assert!(matches!(error, MapError::PoolOverlaps { pool: STATIC_POOL, other: "devicetree", .. }), "{error:?}");
}

#[test]
fn a_static_pool_overlapping_another_reservation_is_an_error() {
    let firmware = check_static_pool(0x4e10_0000, 2 * MIB).unwrap_err();
    assert!(matches!(firmware, MapError::PoolOverlaps { other: "firmware@4e000000", .. }), "{firmware:?}");
}

#[test]
fn a_static_pool_outside_ram_is_an_error_naming_it() {
    // The kernel lists the pool among the reservations, so computing the map already fails,
    // naming the pool's node.
    let blob = static_pool_at(0x8000_0000, 4 * MIB);
    let dt = parse(&blob).unwrap();
    let error = MemoryMap::compute(&dt.memory().unwrap(), &dt.reservations().unwrap()).unwrap_err();
    assert_eq!(error, MapError::ReservedOutsideRam { label: STATIC_POOL, range: range(0x8000_0000, 4 * MIB) });
    // check_pool says so too, for a map computed without it.
    let map = MemoryMap::compute(&dt.memory().unwrap(), &[]).unwrap();
    let error = map.check_pool(STATIC_POOL, range(0x7fe0_0000, 4 * MIB)).unwrap_err();
    assert_eq!(error, MapError::PoolOutsideRam { pool: STATIC_POOL, range: range(0x7fe0_0000, 4 * MIB) });
    assert_eq!(
        format!("{error}"),
        "memory map: restricted DMA pool 'restricted-dma@50000000' [0x007fe00000..0x0080200000) is not inside RAM"
    );
}

// ---- memory-region -------------------------------------------------------------------------

#[test]
fn a_device_with_memory_region_bounces_through_that_pool() {
    let blob = machine(standard_pools, |w| {
        device(w, "virtio_mmio@a000000", 0xa00_0000, |w| w.property_cells("memory-region", &[STATIC_PHANDLE]));
    });
    let device = the_device(&blob);
    assert_eq!(device.name, "virtio_mmio@a000000");
    assert_eq!(device.dma.pool, Some(STATIC_POOL));
    assert_eq!(device.dma.pool_named_by, Some("virtio_mmio@a000000"));
    assert!(device.dma.windows.is_empty());
    assert_eq!(device.dma.limit(), None);
    assert!(!device.dma.coherent);
    assert_eq!(
        format!("{}", device.dma),
        "bounce via 'restricted-dma@50000000' (memory-region on virtio_mmio@a000000), bus = cpu, no limit, \
         non-coherent"
    );
}

#[test]
fn a_device_inherits_the_pool_of_its_parent_bus() {
    let blob = machine(standard_pools, |w| {
        w.begin_node("pcie@10000000");
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[2]);
        w.property("ranges", &[]);
        w.property_cells("memory-region", &[DYNAMIC_PHANDLE]);
        device(w, "ethernet@10100000", 0x1010_0000, |_| {});
        device(w, "nvme@10200000", 0x1020_0000, |w| w.property_cells("memory-region", &[SHARED_PHANDLE]));
        w.end_node();
        device(w, "serial@9000000", 0x900_0000, |_| {});
    });
    let dt = parse(&blob).unwrap();
    let found = devices(&dt);
    let table: Vec<(&str, Option<&str>, Option<&str>)> =
        found.iter().map(|d| (d.name, d.dma.pool, d.dma.pool_named_by)).collect();
    assert_eq!(
        table,
        [
            ("ethernet@10100000", Some(DYNAMIC_POOL), Some("pcie@10000000")),
            // Its own memory-region decides, and names only a shared-dma-pool: not bounced.
            ("nvme@10200000", None, None),
            ("serial@9000000", None, None),
        ]
    );
}

#[test]
fn the_first_restricted_pool_in_a_memory_region_list_wins() {
    let blob = machine(standard_pools, |w| {
        device(w, "gpu@20000000", 0x2000_0000, |w| {
            w.property_cells("memory-region", &[SHARED_PHANDLE, DYNAMIC_PHANDLE, STATIC_PHANDLE])
        });
    });
    assert_eq!(the_device(&blob).dma.pool, Some(DYNAMIC_POOL));
}

fn memory_region_error(phandle: u32) -> DtError<'static> {
    let blob = machine(standard_pools, |w| {
        w.begin_node("soc");
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[2]);
        w.property("ranges", &[]);
        w.property_cells("memory-region", &[phandle]);
        device(w, "mmc@1000", 0x1000, |_| {});
        w.end_node();
        w.begin_node("not-a-region");
        w.property_string("compatible", "restricted-dma-pool");
        w.property_cells("phandle", &[9]);
        w.end_node();
    });
    let dt = parse(&blob).unwrap();
    dt.compatible_devices(&["test,dma-device"]).unwrap_err()
}

#[test]
fn a_memory_region_that_cannot_be_followed_is_an_error_naming_the_device() {
    let dangling = memory_region_error(0x77);
    assert_eq!(
        dangling,
        DtError::BadMemoryRegion { device: "mmc@1000", carrier: "soc", phandle: 0x77, problem: "names no node" }
    );
    assert_eq!(
        format!("{dangling}"),
        "devicetree node 'mmc@1000': memory-region phandle 0x77, inherited from 'soc', names no node"
    );
    let disabled = memory_region_error(4);
    assert!(
        matches!(disabled, DtError::BadMemoryRegion { device: "mmc@1000", problem, .. } if problem.contains("disabled")),
        "{disabled:?}"
    );
    let outside = memory_region_error(9);
    assert!(
        matches!(outside, DtError::BadMemoryRegion { problem, .. } if problem.contains("not a child of /reserved-memory")),
        "{outside:?}"
    );
}

#[test]
fn a_memory_region_that_is_not_a_phandle_list_is_an_error() {
    let blob = machine(standard_pools, |w| {
        device(w, "dev@1000", 0x1000, |w| w.property("memory-region", &[0, 1]));
    });
    let dt = parse(&blob).unwrap();
    let error = dt.compatible_devices(&["test,dma-device"]).unwrap_err();
    assert!(matches!(error, DtError::BadProperty { node: "dev@1000", property: "memory-region", .. }), "{error:?}");
}

// ---- dma-ranges ----------------------------------------------------------------------------

/// The Raspberry Pi 4's `/soc`: one-cell bus addresses, `ranges` for MMIO and `dma-ranges`
/// that show RAM below 1 GiB at bus address 0xc000_0000.
fn pi4_soc() -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", &[0, 0, 0x3b40_0000, 1, 0, 0x8000_0000]);
    w.end_node();
    begin_pi4_soc(&mut w);
    w.begin_node("dma@7e007000");
    w.property_string("compatible", "test,dma-device");
    w.property_cells("reg", &[0x7e00_7000, 0xb00]);
    w.end_node();
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn pi4_soc_dma_ranges_give_a_bus_offset_and_a_30_bit_limit() {
    let blob = pi4_soc();
    let device = the_device(&blob);
    assert_eq!(device.regs.as_slice(), &[range(0xfe00_7000, 0xb00)]);
    let dma = &device.dma;
    assert_eq!(dma.windows.as_slice(), &[window(0, 0xc000_0000, GIB)]);
    assert_eq!(dma.phys_to_dma(PhysAddr::new(0x1000)), Some(DmaAddr::new(0xc000_1000)));
    assert_eq!(dma.phys_to_dma(PhysAddr::new(0x3fff_ffff)), Some(DmaAddr::new(0xffff_ffff)));
    assert_eq!(dma.phys_to_dma(PhysAddr::new(0x4000_0000)), None);
    assert_eq!(dma.dma_to_phys(DmaAddr::new(0xc000_1000)), Some(PhysAddr::new(0x1000)));
    assert_eq!(dma.dma_to_phys(DmaAddr::new(0x1000)), None, "bus addresses below the window reach nothing");
    assert_eq!(dma.limit(), Some(PhysAddr::new(GIB)));
    assert_eq!(dma.limit().unwrap().as_u64(), 1 << 30, "30 bits");
    assert!(dma.reaches(range(0x3ff0_0000, MIB)));
    assert!(!dma.reaches(range(0x3ff0_0000, 2 * MIB)));
    assert_eq!(format!("{dma}"), "direct, bus = cpu + 0xc0000000, limit 0x40000000 (1 GiB), non-coherent");
}

/// root ─ scb (dma-ranges: bus 0 ↔ CPU 4 GiB, 1.5 GiB) ─ bridge (no dma-ranges)
///       ─ pcie (dma-ranges: bus 2 GiB ↔ scb 1 GiB, 1 GiB) ─ the device.
fn nested_buses(pcie_dma_ranges: &[u32]) -> Vec<u8> {
    let bus = |w: &mut FdtWriter, name: &str, dma_ranges: Option<&[u32]>| {
        w.begin_node(name);
        w.property_cells("#address-cells", &[2]);
        w.property_cells("#size-cells", &[2]);
        w.property("ranges", &[]);
        if let Some(dma_ranges) = dma_ranges {
            w.property_cells("dma-ranges", dma_ranges);
        }
    };
    machine(
        |_| {},
        |w| {
            bus(w, "scb", Some(&[0, 0, 1, 0, 0, 0x6000_0000]));
            bus(w, "bridge", None);
            bus(w, "pcie@7d500000", Some(pcie_dma_ranges));
            device(w, "nic@0", 0, |_| {});
            w.end_node();
            w.end_node();
            w.end_node();
        },
    )
}

#[test]
fn nested_dma_ranges_compose_and_clip() {
    let blob = nested_buses(&[0, 0x8000_0000, 0, 0x4000_0000, 0, 0x4000_0000]);
    let dma = the_device(&blob).dma;
    // pcie maps bus [2 GiB, 3 GiB) to scb [1 GiB, 2 GiB); scb reaches only [0, 1.5 GiB) of its
    // bus, at CPU 4 GiB: so bus [2 GiB, 2.5 GiB) ↔ CPU [5 GiB, 5.5 GiB).
    assert_eq!(dma.windows.as_slice(), &[window(0x1_4000_0000, 0x8000_0000, 0x2000_0000)]);
    assert_eq!(dma.phys_to_dma(PhysAddr::new(0x1_4000_1000)), Some(DmaAddr::new(0x8000_1000)));
    assert_eq!(dma.phys_to_dma(PhysAddr::new(0x1_6000_0000)), None, "clipped by scb");
    assert_eq!(dma.limit(), Some(PhysAddr::new(0x1_6000_0000)));
}

#[test]
fn several_dma_ranges_entries_make_several_windows() {
    let blob = nested_buses(&[0, 0, 0, 0, 0, 0x1000_0000, 0, 0x8000_0000, 0, 0x4000_0000, 0, 0x1000_0000]);
    let dma = the_device(&blob).dma;
    assert_eq!(
        dma.windows.as_slice(),
        &[window(0x1_0000_0000, 0, 0x1000_0000), window(0x1_4000_0000, 0x8000_0000, 0x1000_0000)]
    );
    assert_eq!(dma.dma_to_phys(DmaAddr::new(0x8000_0010)), Some(PhysAddr::new(0x1_4000_0010)));
    assert!(!dma.reaches(range(0x1_0000_0000, 0x5000_0000)), "a hole between the windows");
    assert_eq!(format!("{dma}"), "direct, 2 dma-ranges windows, limit 0x150000000 (5.2 GiB), non-coherent");
}

#[test]
fn dma_ranges_that_share_no_address_leave_the_device_unreachable() {
    let blob = nested_buses(&[0, 0, 0, 0x7000_0000, 0, 0x1000_0000]);
    let dt = parse(&blob).unwrap();
    let error = dt.compatible_devices(&["test,dma-device"]).unwrap_err();
    assert_eq!(error, DtError::DmaUnreachable { node: "nic@0", bus: "scb" });
}

#[test]
fn malformed_dma_ranges_are_errors_naming_the_bus() {
    for (dma_ranges, problem) in [
        (&[0, 0, 0, 0, 0][..], "does not match #address-cells/#size-cells"),
        (&[0, 0, 0, 0, 0, 0][..], "has an entry of size zero"),
        (
            &[0xffff_ffff, 0xffff_f000, 0, 0, 0, 0x2000][..],
            "describes a range that wraps past the top of the address space",
        ),
    ] {
        let blob = nested_buses(dma_ranges);
        let error = parse(&blob).unwrap().compatible_devices(&["test,dma-device"]).unwrap_err();
        assert_eq!(error, DtError::BadProperty { node: "pcie@7d500000", property: "dma-ranges", problem });
    }
}

#[test]
fn an_empty_dma_ranges_is_the_identity() {
    let blob = nested_buses(&[]);
    let dma = the_device(&blob).dma;
    assert_eq!(dma.windows.as_slice(), &[window(0x1_0000_0000, 0, 0x6000_0000)], "only scb translates");
}

// ---- dma-coherent --------------------------------------------------------------------------

#[test]
fn dma_coherent_is_inherited_and_the_nearest_node_decides() {
    let blob = machine(
        |_| {},
        |w| {
            w.begin_node("soc");
            w.property_cells("#address-cells", &[2]);
            w.property_cells("#size-cells", &[2]);
            w.property("ranges", &[]);
            w.property("dma-coherent", &[]);
            device(w, "inherits@1000", 0x1000, |_| {});
            device(w, "opts-out@2000", 0x2000, |w| w.property("dma-noncoherent", &[]));
            w.end_node();
            device(w, "own@3000", 0x3000, |w| w.property("dma-coherent", &[]));
            device(w, "default@4000", 0x4000, |_| {});
        },
    );
    let dt = parse(&blob).unwrap();
    let coherent: Vec<(&str, bool)> = devices(&dt).iter().map(|d| (d.name, d.dma.coherent)).collect();
    assert_eq!(
        coherent,
        [("inherits@1000", true), ("opts-out@2000", false), ("own@3000", true), ("default@4000", false)]
    );
}

#[test]
fn the_console_carries_its_dma_description() {
    let mut blob_with_stdout = FdtWriter::new();
    blob_with_stdout.begin_node("");
    blob_with_stdout.begin_node("chosen");
    blob_with_stdout.property_string("stdout-path", "/soc/uart@1000");
    blob_with_stdout.end_node();
    blob_with_stdout.begin_node("soc");
    blob_with_stdout.property_cells("#address-cells", &[1]);
    blob_with_stdout.property_cells("#size-cells", &[1]);
    blob_with_stdout.property("ranges", &[]);
    blob_with_stdout.property_cells("dma-ranges", &[0x8000_0000, 0, 0, 0x8000_0000]);
    blob_with_stdout.property("dma-coherent", &[]);
    blob_with_stdout.begin_node("uart@1000");
    blob_with_stdout.property_cells("reg", &[0x1000, 0x100]);
    blob_with_stdout.end_node();
    blob_with_stdout.end_node();
    blob_with_stdout.end_node();
    let blob = blob_with_stdout.finish();
    let console = parse(&blob).unwrap().stdout().unwrap().unwrap();
    assert!(console.dma.coherent);
    assert_eq!(console.dma.limit(), Some(PhysAddr::new(0x8000_0000)));
}

// ---- carving dynamic pools -----------------------------------------------------------------

/// RAM [0, 2 GiB) with the kernel image low and the devicetree just below 1 GiB.
fn low_ram_map() -> MemoryMap<'static> {
    let reservations =
        [reservation("kernel image", 0x8_0000, 2 * MIB), reservation("devicetree", 0x2eff_0000, 0x1_0000)];
    MemoryMap::compute(&[range(0, 2 * GIB)], &reservations).unwrap()
}

#[test]
fn carving_below_a_30_bit_limit_takes_the_highest_fit_and_the_heap_avoids_it() {
    let mut map = low_ram_map();
    assert_eq!(map.largest_free(), Some(range(0x2f00_0000, 2 * GIB - 0x2f00_0000)));
    let pool = map.carve("bounce", 4 * MIB, 0x1000, Some(PhysAddr::new(GIB)), &[]).unwrap();
    assert_eq!(pool, range(GIB - 4 * MIB, 4 * MIB));
    assert!(map.free().iter().all(|free| !free.overlaps(&pool)), "free no longer covers the pool");
    assert!(map.reserved().contains(&Reservation { range: pool, label: "bounce", no_map: true }));
    assert!(map.linear_map(&[]).unwrap().iter().all(|piece| !piece.range.overlaps(&pool)), "mapped apart");
    assert_free_is_ram_minus_reservations(&map);
    let heap = map.largest_free().unwrap();
    assert!(!heap.overlaps(&pool));
    assert_eq!(heap, range(GIB, GIB));
    let labels: Vec<&str> = map.entries().map(|entry| entry.label).collect();
    assert_eq!(labels, ["free", "kernel image", "free", "devicetree", "free", "bounce", "free"]);
}

#[test]
fn carving_without_a_limit_takes_the_top_of_ram() {
    let mut map = low_ram_map();
    assert_eq!(map.carve("bounce", 4 * MIB, 0x1000, None, &[]), Ok(range(2 * GIB - 4 * MIB, 4 * MIB)));
}

#[test]
fn carving_honours_the_alignment() {
    // A reservation at the top leaves a free range ending off any 16 MiB boundary.
    let reservations = [reservation("firmware", 0x7ff0_0000, MIB)];
    let mut map = MemoryMap::compute(&[range(0x4000_0000, GIB)], &reservations).unwrap();
    let pool = map.carve("bounce", 4 * MIB, 16 * MIB, None, &[]).unwrap();
    assert_eq!(pool, range(0x7f00_0000, 4 * MIB));
    assert!(pool.start().is_aligned(16 * MIB));
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn carving_stays_inside_the_alloc_ranges() {
    let mut map = low_ram_map();
    let alloc_ranges = [range(0x4800_0000, 16 * MIB), range(0x100_0000, 16 * MIB)];
    let pool = map.carve("bounce", 4 * MIB, 2 * MIB, Some(PhysAddr::new(GIB)), &alloc_ranges).unwrap();
    assert_eq!(pool, range(0x1c0_0000, 4 * MIB), "the higher alloc-range lies above the limit");
    let pool = map.carve("second", 4 * MIB, 2 * MIB, None, &alloc_ranges).unwrap();
    assert_eq!(pool, range(0x48c0_0000, 4 * MIB));
    assert_free_is_ram_minus_reservations(&map);
}

#[test]
fn carving_where_nothing_fits_is_an_error_naming_the_pool() {
    let mut map = low_ram_map();
    let before = map.free().to_vec();
    let error = map.carve("bounce", 32 * MIB, 0x1000, Some(PhysAddr::new(0x200_0000)), &[]).unwrap_err();
    assert_eq!(
        error,
        MapError::PoolDoesNotFit {
            pool: "bounce",
            size: 32 * MIB,
            alignment: 0x1000,
            below: Some(PhysAddr::new(0x200_0000)),
            alloc_ranges: Default::default(),
        }
    );
    assert_eq!(
        format!("{error}"),
        "memory map: no free range holds restricted DMA pool 'bounce' of 32 MiB aligned to 4 KiB below \
         0x2000000 (the limit of its devices)"
    );
    let error = map.carve("bounce", 64 * MIB, 0x1000, None, &[range(0x2eff_0000, 64 * MIB)]).unwrap_err();
    assert!(matches!(&error, MapError::PoolDoesNotFit { alloc_ranges, .. } if alloc_ranges.len() == 1));
    assert!(format!("{error}").ends_with("inside its alloc-ranges [0x002eff0000..0x0032ff0000)"), "{error}");
    // Every range is printed, in the devicetree's order.
    let alloc_ranges = [range(0x2eff_0000, 64 * MIB), range(0x8_0000, 2 * MIB)];
    let error = map.carve("bounce", 64 * MIB, 0x1000, Some(PhysAddr::new(GIB)), &alloc_ranges).unwrap_err();
    assert_eq!(
        format!("{error}"),
        "memory map: no free range holds restricted DMA pool 'bounce' of 64 MiB aligned to 4 KiB below 0x40000000 \
         (the limit of its devices) inside its alloc-ranges [0x002eff0000..0x0032ff0000), [0x0000080000..0x0000280000)"
    );
    assert_eq!(map.free(), before.as_slice(), "a failed carve changes nothing");
}

#[test]
fn carve_refuses_requests_that_describe_no_pool() {
    let mut map = low_ram_map();
    for (size, alignment) in [(0, 0x1000), (0x1800, 0x1000), (0x1000, 0x3000)] {
        let error = map.carve("bounce", size, alignment, None, &[]).unwrap_err();
        assert_eq!(error, MapError::BadPoolRequest { pool: "bounce", size, alignment });
    }
}

#[test]
fn a_dynamic_pool_is_carved_below_the_limit_of_every_device_that_uses_it() {
    // The Pi 4 shape: a pool used by a device behind the 30-bit /soc window and by one that
    // reaches everything; the pool must land where both can reach it.
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", &[0, 0, 0x3b40_0000, 1, 0, 0x8000_0000]);
    w.end_node();
    w.begin_node("reserved-memory");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property("ranges", &[]);
    pool_node(&mut w, "bounce", |w| {
        w.property_cells("size", &[0x40_0000]);
        w.property_cells("phandle", &[1]);
    });
    w.end_node();
    w.begin_node("soc");
    w.property_cells("#address-cells", &[1]);
    w.property_cells("#size-cells", &[1]);
    w.property("ranges", &[]);
    w.property_cells("dma-ranges", &[0xc000_0000, 0, 0, 0x4000_0000]);
    w.begin_node("mmc@7e300000");
    w.property_string("compatible", "test,dma-device");
    w.property_cells("reg", &[0x7e30_0000, 0x100]);
    w.property_cells("memory-region", &[1]);
    w.end_node();
    w.end_node();
    w.begin_node("pcie@600000000");
    w.property_string("compatible", "test,dma-device");
    w.property_cells("reg", &[6, 0, 0x1000]);
    w.property_cells("memory-region", &[1]);
    w.end_node();
    w.end_node();
    let blob = w.finish();
    let dt = parse(&blob).unwrap();
    let found = devices(&dt);
    let descriptions: Vec<&DmaDescription<'_>> = found.iter().map(|device| &device.dma).collect();
    let limit = lowest_limit(descriptions.iter().copied().filter(|dma| dma.pool == Some("bounce")));
    assert_eq!(limit, Some(PhysAddr::new(GIB)));
    let pools = dt.restricted_pools().unwrap();
    let pool = &pools[0];
    let PoolPlacement::Dynamic { size, alignment, alloc_ranges } = &pool.placement else { panic!("a dynamic pool") };
    let mut map = MemoryMap::compute(&dt.memory().unwrap(), &[]).unwrap();
    let carved = map.carve(pool.name, *size, *alignment, limit, alloc_ranges).unwrap();
    assert_eq!(carved, range(0x3b00_0000, 4 * MIB), "the top of the low RAM piece, below 1 GiB");
    assert!(descriptions.iter().all(|dma| dma.reaches(carved)));
    let bus = found[0].dma.phys_to_dma(carved.start()).unwrap();
    assert_eq!(bus, DmaAddr::new(0xfb00_0000), "the mmc sees the pool at its bus address");
}

#[test]
fn the_lowest_limit_is_the_smallest_window_end_and_unlimited_devices_impose_none() {
    let limited = DmaDescription {
        pool: Some("a"),
        pool_named_by: Some("dev"),
        windows: [window(0, 0xc000_0000, GIB)].into_iter().collect(),
        coherent: false,
    };
    let unlimited = DmaDescription { pool: Some("b"), pool_named_by: None, windows: ArrayVec::new(), coherent: true };
    assert_eq!(lowest_limit([&limited, &unlimited]), Some(PhysAddr::new(GIB)));
    assert_eq!(lowest_limit([&unlimited]), None);
}

// ---- whether the devices of a pool reach it ------------------------------------------------

const POOL_RANGE: (u64, u64) = (0x5000_0000, 4 * MIB);

fn reaching(windows: &[DmaWindow]) -> DmaDescription<'static> {
    DmaDescription {
        pool: Some(STATIC_POOL),
        pool_named_by: None,
        windows: windows.iter().copied().collect(),
        coherent: true,
    }
}

#[test]
fn a_pool_its_devices_reach_at_one_address_is_given_that_address() {
    let pool = range(POOL_RANGE.0, POOL_RANGE.1);
    let offset = reaching(&[window(0x4000_0000, 0xc000_0000, GIB)]);
    let devices = [("a", &offset), ("b", &offset)];
    assert_eq!(pool_bus_address(STATIC_POOL, pool, devices), Ok(DmaAddr::new(0xd000_0000)));
    assert_eq!(pool_bus_address(STATIC_POOL, pool, []), Ok(DmaAddr::new(0x5000_0000)), "no device: its CPU address");
}

#[test]
fn a_pool_a_device_cannot_reach_is_an_error_naming_the_device_its_windows_and_its_limit() {
    let pool = range(POOL_RANGE.0, POOL_RANGE.1);
    let below = reaching(&[window(0x4000_0000, 0x4000_0000, 256 * MIB)]);
    let error = pool_bus_address(STATIC_POOL, pool, [("virtio_mmio@a003e00", &below)]).unwrap_err();
    assert!(matches!(&error, PoolReachError::Unreachable { device: "virtio_mmio@a003e00", .. }));
    assert_eq!(
        format!("{error}"),
        "DMA pool 'restricted-dma@50000000' [0x0050000000..0x0050400000): its device 'virtio_mmio@a003e00' cannot \
         reach all of it; the device reaches [0x0040000000..0x0050000000) at bus 0x40000000, limit 0x50000000 \
         (1.2 GiB)"
    );
    // Two windows with a hole where the pool lies: both are named.
    let holed = reaching(&[window(0x4000_0000, 0, 0x1020_0000), window(0x5030_0000, 0x1030_0000, GIB)]);
    let message = format!("{}", pool_bus_address(STATIC_POOL, pool, [("dma@7e007000", &holed)]).unwrap_err());
    for fact in
        ["'dma@7e007000'", "[0x0040000000..0x0050200000) at bus 0x0", "[0x0050300000..0x0090300000) at bus 0x10300000"]
    {
        assert!(message.contains(fact), "{fact:?} missing from: {message}");
    }
}

#[test]
fn a_pool_its_devices_reach_at_different_addresses_is_an_error_naming_both() {
    let pool = range(POOL_RANGE.0, POOL_RANGE.1);
    let (direct, offset) = (reaching(&[]), reaching(&[window(0, 0xc000_0000, 2 * GIB)]));
    let error = pool_bus_address(STATIC_POOL, pool, [("first@1000", &direct), ("second@2000", &offset)]).unwrap_err();
    assert_eq!(
        format!("{error}"),
        "DMA pool 'restricted-dma@50000000' [0x0050000000..0x0050400000): its device 'first@1000' reaches it at bus \
         0x50000000, its device 'second@2000' at bus 0x110000000; the devices of one pool must agree on one bus address"
    );
}
