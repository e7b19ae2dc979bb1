//! One test per regression case of the DMA contract, `docs/dma-contract.md`, that concerns the
//! pool. Each test's comment names the case and the Linux thread or commit it comes from.
//!
//! R11 (force-bounce requested for a device behind an IOMMU) is a policy of the per-device DMA
//! layer, not of the pool: the pool bounces whatever it is asked to. The kernel test
//! `force_bounce_behind_the_iommu_is_declined` (`kernel/src/tests/iommu.rs`) checks it. R12's
//! trusted half (a scatter list mapped as one contiguous IOVA range) is likewise IOMMU-level and
//! checked there by `trusted_scatter_list_maps_to_one_iova_range`; its untrusted half is tested
//! below through the masks the IOMMU layer passes in.

mod common;

use common::*;
use swiotlb::{Constraints, DEFAULT_SEGMENT_SLOTS, DmaDirection, DmaError, PAGE_SIZE, PhysAddr, PoolConfig, SLOT_SIZE};

const KIB: usize = 1024;

/// R1, from patch 1 in the "Fix double allocation in swiotlb_alloc()" thread (2024),
/// docs/dma-contract.md#thread-double-allocation. Restricted pool; a 2 KiB streaming map leaves
/// the search cursor on an odd slot; then a coherent 8 KiB allocation. The allocation must be
/// 8 KiB aligned (in DMA and physical address) and share no slot with the first mapping: Linux
/// returned the slot right after the cursor and double-allocated half a page.
#[test]
fn r1_coherent_alloc_after_odd_cursor_is_aligned_and_disjoint() {
    // A Raspberry Pi 4 style bus offset: the device sees RAM at 0xc000_0000 + phys.
    let pool = pool_at(0, 1 << 20, 0xc000_0000, PoolConfig::default());
    let first = pool.map(ram(0), 2 * KIB, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    assert_eq!(first.slots, 1);
    assert_eq!(first.first_slot % 2, 0, "cursor is now on slot {}", first.first_slot + 1);

    let coherent = pool.alloc(8 * KIB, u64::MAX).unwrap();
    assert_eq!(coherent.dma.as_u64() % (8 * KIB as u64), 0, "{coherent:?}");
    assert_eq!(coherent.phys.as_u64() % (8 * KIB as u64), 0, "{coherent:?}");
    let first_end = first.region.as_u64() + first.region_len as u64;
    assert!(coherent.dma.as_u64() >= first_end, "{coherent:?} overlaps {first}");
    assert!(read(&pool, coherent.phys, 8 * KIB).iter().all(|&byte| byte == 0), "zeroed");

    pool.free(coherent.dma, 8 * KIB).unwrap();
    pool.unmap(first.dma, 2 * KIB).unwrap();
    assert!(all_free(&pool));
}

/// R2, from patches 4-5 in the "Fix double allocation in swiotlb_alloc()" thread (2024),
/// docs/dma-contract.md#thread-double-allocation, and the "nvme-pci: Fix dma-iommu mapping
/// failures when PAGE_SIZE=64KB" thread (2024), docs/dma-contract.md#thread-nvme-64k-pages.
/// `alloc_align_mask = 0xffff` (64 KiB granule), `min_align_mask = 0xfff`, orig ends in
/// `0x600`, a 64 KiB mapping on an empty pool. Linux compared the 64 KiB-aligned slot with
/// orig's low bits and never found one; here it succeeds and the low 12 bits are `0x600`,
/// whatever the pool base.
#[test]
fn r2_granule_and_nvme_masks_together_succeed() {
    for base_offset in [0, 0x1000, 0x8000, 0x1_2000] {
        let pool = pool_at(base_offset, 1 << 20, 0, PoolConfig::default());
        let constraints = Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xffff);
        let orig = ram(0x3_4600);
        let data = pattern(2, 64 * KIB);
        write(&pool, orig, &data);

        let mapping = pool.map(orig, 64 * KIB, DmaDirection::ToDevice, &constraints).unwrap();
        assert_eq!(mapping.dma.as_u64() & 0xfff, 0x600, "{mapping}");
        assert_eq!(mapping.region.as_u64() & 0xffff, 0, "{mapping}");
        assert_eq!(mapping.region_len, 128 * KIB, "ALIGN(64 KiB + 0x600, 64 KiB)");
        assert_eq!(read(&pool, mapping.bounce, 64 * KIB), data);
        pool.unmap(mapping.dma, 64 * KIB).unwrap();
        assert!(all_free(&pool));
    }
}

/// R3, from Petr Tesařík's test in the "Fix double allocation in swiotlb_alloc()" thread
/// (2024), docs/dma-contract.md#thread-double-allocation. Both masks `0xfff`, orig low bits
/// `0xfa0`. The DMA address must end in `0xfa0`, not `0x7a0` (Linux kept only the offset inside
/// one slot), and unmap must free exactly what map took although the offset is larger than a
/// slot.
#[test]
fn r3_offset_larger_than_a_slot_is_preserved_and_released() {
    let pool = simple_pool();
    let constraints = Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xfff);
    let orig = ram(0x5fa0);
    let mapping = pool.map(orig, 300, DmaDirection::Bidirectional, &constraints).unwrap();
    assert_eq!(mapping.dma.as_u64() & 0xfff, 0xfa0, "the copy lost the buffer's page offset 0xfa0: {mapping}");
    assert_eq!(mapping.region.as_u64() & 0xfff, 0, "{mapping}");
    assert_eq!(mapping.region_len, 8 * KIB, "ALIGN(300 + 0xfa0, 4 KiB)");
    pool.unmap(mapping.dma, 300).unwrap();
    assert!(all_free(&pool), "unmap left slots taken: the pre-padding slot of {mapping} was never given back");
}

/// R4, from Michael Kelley's question in the "Fix double allocation in swiotlb_alloc()" thread
/// (2024), docs/dma-contract.md#thread-double-allocation. Pool base page-aligned but not 8 KiB
/// aligned, `alloc_align_mask = 0x1fff`, a request of `max_mapping_size` on an empty pool must
/// succeed.
/// With a pool of exactly one segment, Linux's answer (256 KiB) cannot be honoured at all; ours
/// is lower and does succeed, and Linux's value really fails.
#[test]
fn r4_max_mapping_size_succeeds_on_unaligned_pool_base() {
    let constraints = Constraints::NONE.with_alloc_align_mask(0x1fff);
    let big = pool_at(0x1000, 1 << 20, 0, PoolConfig::default());
    let limit = big.max_mapping_size(&constraints).unwrap();
    assert_eq!(limit, 256 * KIB, "a pool with room to spare honours Linux's value");
    big.map(ram(0), limit, DmaDirection::ToDevice, &constraints).unwrap();

    let tight = pool_at(0x1000, 256 << 10, 0, PoolConfig::default());
    let limit = tight.max_mapping_size(&constraints).unwrap();
    assert_eq!(limit, 248 * KIB, "slots 1..125 are the 8 KiB-aligned run that fits");
    let mapping = tight.map(ram(0), limit, DmaDirection::ToDevice, &constraints).unwrap();
    assert_eq!(mapping.region.as_u64() % (8 * KIB as u64), 0);
    tight.unmap(mapping.dma, limit).unwrap();
    let linux = tight.map(ram(0), 256 * KIB, DmaDirection::ToDevice, &constraints);
    assert!(matches!(linux, Err(DmaError::NoSpace { .. })), "{linux:?}");
}

/// R4, swept: for many pool base alignments, pool sizes, area counts and mask pairs, a request
/// of `max_mapping_size` succeeds on an empty pool for orig addresses in every phase and with
/// the worst offset; and a pool with two segments per area always gets Linux's value.
#[test]
fn r4_max_mapping_size_holds_for_every_base_and_mask() {
    let min_masks = [0, 0x7ff, 0xfff, 0x1fff, 0xffff];
    let alloc_masks = [0, 0xfff, 0x1fff, 0x3fff, 0xffff, 0x3_ffff];
    let mut checked = 0;
    for base_slot in [0u64, 1, 2, 3, 5, 8, 13, 16, 31, 64, 100, 127] {
        for (pool_size, areas) in [(256 << 10, 1), (512 << 10, 2), (2 << 20, 4)] {
            let config = PoolConfig { areas, ..PoolConfig::default() };
            let pool = pool_at(base_slot * SLOT_SIZE as u64, pool_size, 0, config);
            for min in min_masks {
                for alloc in alloc_masks {
                    let constraints = Constraints::NONE.with_min_align_mask(min).with_alloc_align_mask(alloc);
                    let limit = pool.max_mapping_size(&constraints).unwrap();
                    let area_slots = pool_size as usize / SLOT_SIZE / areas;
                    if area_slots >= 2 * DEFAULT_SEGMENT_SLOTS && alloc < 0x4_0000 {
                        let linux = 256 * KIB - (min as usize).div_ceil(SLOT_SIZE) * SLOT_SIZE;
                        assert_eq!(limit, linux, "min {min:#x} alloc {alloc:#x} base slot {base_slot}");
                    }
                    if limit == 0 {
                        continue;
                    }
                    for orig in phase_probes(min) {
                        let mapping =
                            pool.map(orig, limit, DmaDirection::ToDevice, &constraints).unwrap_or_else(|error| {
                                panic!(
                                    "limit {limit} refused: {error} (base slot {base_slot}, pool \
                                     {pool_size}, {areas} areas, orig {orig})"
                                )
                            });
                        pool.unmap(mapping.dma, limit).unwrap();
                        checked += 1;
                    }
                }
            }
            assert!(all_free(&pool));
        }
    }
    assert!(checked > 1000, "{checked}");
}

/// Orig addresses covering every phase a `min_align_mask` can demand (up to 16 of them), each
/// with all the in-slot bits set: the largest possible offset.
fn phase_probes(min_align_mask: u64) -> impl Iterator<Item = PhysAddr> {
    let phases = (min_align_mask + 1).div_ceil(SLOT_SIZE as u64).max(1);
    let step = (phases / 16).max(1);
    (0..phases)
        .step_by(step as usize)
        .map(move |phase| ram(0x10_0000 + phase * SLOT_SIZE as u64 + (min_align_mask & (SLOT_SIZE as u64 - 1))))
}

/// R5, from patch 6 in the "Fix double allocation in swiotlb_alloc()" thread (2024),
/// docs/dma-contract.md#thread-double-allocation. A streaming map of 4 KiB or more with no mask
/// is page aligned, even when the cursor sits on an odd slot.
#[test]
fn r5_page_or_more_without_masks_is_page_aligned() {
    let pool = pool_at(0x800 * 3, 1 << 20, 0, PoolConfig::default());
    let small = pool.map(ram(0), 100, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    for size in [4 * KIB, 5000, 8 * KIB, 12 * KIB + 1, 64 * KIB] {
        let mapping = pool.map(ram(0x1234), size, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
        assert_eq!(
            mapping.dma.as_u64() % PAGE_SIZE as u64,
            0,
            "a {size}-byte copy with no mask is not page aligned: {mapping}"
        );
        assert_eq!(mapping.bounce.as_u64() % PAGE_SIZE as u64, 0, "{mapping}");
        pool.unmap(mapping.dma, size).unwrap();
    }
    let below_page = pool.map(ram(0), 2 * KIB, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    assert_eq!(below_page.slots, 1, "under a page, a slot is enough");
    pool.unmap(below_page.dma, 2 * KIB).unwrap();
    pool.unmap(small.dma, 100).unwrap();
    assert!(all_free(&pool));
}

/// R6, from Michael Kelley's writev test in the "Fix double allocation in swiotlb_alloc()"
/// thread (2024), docs/dma-contract.md#thread-double-allocation, and the "preserve DMA offsets
/// when using swiotlb" thread (2021), docs/dma-contract.md#thread-preserve-offsets.
/// `min_align_mask = 0xfff`, orig offsets across a page, sizes spanning several pages, all live
/// at once like one writev: the data round-trips both ways and the low 12 bits are preserved.
#[test]
fn r6_nvme_offsets_round_trip() {
    let pool = pool_at(0x1000, 2 << 20, 0, PoolConfig { areas: 2, ..PoolConfig::default() });
    let constraints = Constraints::NONE.with_min_align_mask(0xfff);
    let offsets = [0, 0x200, 0x7c8, 0x800, 0x801, 0xa00, 0xfa0, 0xffc];
    let sizes = [512, 4 * KIB, 3 * 4 * KIB + 100, 10_000, 64 * KIB + 17];
    let mut live = Vec::new();
    for (index, (&offset, &size)) in offsets.iter().cycle().zip(sizes.iter().cycle()).take(40).enumerate() {
        let orig = ram(index as u64 * 0x1_8000 + offset);
        let data = pattern(index as u64, size);
        write(&pool, orig, &data);
        let mapping = pool.map(orig, size, DmaDirection::Bidirectional, &constraints).unwrap();
        assert_eq!(
            mapping.dma.as_u64() & 0xfff,
            offset,
            "the copy lost the buffer's page offset {offset:#x}: {mapping}"
        );
        assert_eq!(read(&pool, mapping.bounce, size), data, "copied in");
        let from_device = pattern(1000 + index as u64, size);
        write(&pool, mapping.bounce, &from_device);
        live.push((orig, mapping, from_device));
    }
    for (orig, mapping, from_device) in live {
        pool.unmap(mapping.dma, mapping.size).unwrap();
        assert_eq!(read(&pool, orig, mapping.size), from_device, "copied back");
    }
    assert!(all_free(&pool));
}

/// R7 (Linux 7c3940bf, docs/dma-contract.md#linux-commits). The pool is almost full and the
/// only free slots have the wrong phase for a device with `min_align_mask`: map returns a typed
/// error promptly (the search visits each word once) and changes nothing.
#[test]
fn r7_almost_full_pool_fails_promptly() {
    let pool = pool_at(0, 1 << 20, 0, PoolConfig { areas: 4, ..PoolConfig::default() });
    let slots = pool.geometry().slots;
    let fillers: Vec<_> =
        (0..slots).map(|_| pool.map(ram(0), SLOT_SIZE, DmaDirection::ToDevice, &Constraints::NONE).unwrap()).collect();
    for filler in fillers.iter().filter(|m| m.first_slot % 2 == 0).step_by(3) {
        pool.unmap(filler.dma, SLOT_SIZE).unwrap();
    }
    let before = (pool.slot_states(), pool.stats().slots_in_use);
    // Bit 11 of orig set: the region must start on an odd slot; only even slots are free.
    let constraints = Constraints::NONE.with_min_align_mask(0xfff);
    let started = std::time::Instant::now();
    let refused = pool.map(ram(0x800), 100, DmaDirection::ToDevice, &constraints);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(matches!(refused, Err(DmaError::NoSpace { free_slots, .. }) if free_slots > 0), "{refused:?}");
    assert_eq!((pool.slot_states(), pool.stats().slots_in_use), before);
    assert_eq!(pool.stats().failures.no_space, 1);
    // The same request with an even phase fits.
    pool.map(ram(0x1000), 100, DmaDirection::ToDevice, &constraints).unwrap();
}

/// R8 (Linux e8068f2d, docs/dma-contract.md#linux-commits). A mapping with pre-padding (offset
/// 0xfa0 in a 4 KiB-aligned region); `sync_for_cpu` of a sub-range copies exactly those bytes,
/// and `sync_for_device` of a sub-range exactly those the other way: offsets count from the
/// buffer, not the region.
#[test]
fn r8_partial_syncs_address_the_right_bytes() {
    let pool = simple_pool();
    let constraints = Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xfff);
    let orig = ram(0x2_0fa0);
    let size = 6000;
    let original = pattern(8, size);
    write(&pool, orig, &original);
    let mapping = pool.map(orig, size, DmaDirection::Bidirectional, &constraints).unwrap();
    assert!(mapping.dma.offset_from(mapping.region).unwrap() > SLOT_SIZE as u64, "pre-padding");

    let device = pattern(9, size);
    write(&pool, mapping.bounce, &device);
    pool.sync_for_cpu(mapping.dma.add(100), 50).unwrap();
    let mut expected = original.clone();
    expected[100..150].copy_from_slice(&device[100..150]);
    assert_eq!(read(&pool, orig, size), expected);

    let cpu = pattern(10, 300);
    write(&pool, orig.add(4000), &cpu);
    pool.sync_for_device(mapping.dma.add(4000), 300).unwrap();
    let mut expected_bounce = device.clone();
    expected_bounce[4000..4300].copy_from_slice(&cpu);
    assert_eq!(read(&pool, mapping.bounce, size), expected_bounce);
    pool.unmap(mapping.dma, size).unwrap();
}

/// R9 (Linux 2650073f, docs/dma-contract.md#linux-commits). An untrusted device, a buffer
/// smaller than the granule: every byte of the granule before and after the buffer reads as
/// zero, even where an earlier mapping left data. Without the option the stale bytes stay,
/// which is why the option exists.
#[test]
fn r9_untrusted_padding_reads_as_zero() {
    for zero_padding in [true, false] {
        let pool = simple_pool();
        let stale = pool.phys_range();
        pool.memory().fill(stale.start(), stale.size() as usize, 0xaa);
        let constraints =
            Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xfff).with_zero_padding(zero_padding);
        let data = pattern(9, 1000);
        write(&pool, ram(0x234), &data);
        let mapping = pool.map(ram(0x234), 1000, DmaDirection::ToDevice, &constraints).unwrap();
        let region = region_bytes(&pool, &mapping);
        assert_eq!(region.len(), 4 * KIB);
        assert_eq!(&region[0x234..0x234 + 1000], &data[..]);
        let stale = region[..0x234].iter().chain(&region[0x234 + 1000..]).filter(|&&b| b != 0).count();
        match zero_padding {
            true => assert_eq!(stale, 0, "{stale} padding bytes around the buffer are not zero: the device reads them"),
            false => assert_ne!(stale, 0, "without zero_padding the padding keeps the pool's old bytes"),
        }
    }
}

/// R10, from the "nvme-pci: Fix dma-iommu mapping failures when PAGE_SIZE=64KB" thread (2024),
/// docs/dma-contract.md#thread-nvme-64k-pages. `min_align_mask = 0xfff`, 4 KiB CPU pages,
/// 64 KiB granule: `max_mapping_size` is 252 KiB, and a 252 KiB mapping succeeds (with the
/// worst offset too).
#[test]
fn r10_nvme_behind_64k_granule_maps_252k() {
    let pool = pool_at(0x3000, 2 << 20, 0, PoolConfig { areas: 2, ..PoolConfig::default() });
    let constraints = Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xffff);
    let limit = pool.max_mapping_size(&constraints).unwrap();
    assert_eq!(limit, 252 * KIB);
    for offset in [0, 0x600, 0x800, 0xfff] {
        let mapping = pool.map(ram(0x4_0000 + offset), limit, DmaDirection::FromDevice, &constraints).unwrap();
        assert_eq!(mapping.dma.as_u64() & 0xfff, offset);
        assert_eq!(mapping.region.as_u64() & 0xffff, 0);
        pool.unmap(mapping.dma, limit).unwrap();
    }
    assert!(all_free(&pool));
}

/// R12, pool level, from the "Support IOMMU page sizes larger than the CPU page size" thread
/// (2021), docs/dma-contract.md#thread-large-iommu-pages. 16 KiB granule, 4 KiB CPU pages, a
/// 4 KiB buffer for an untrusted device: the IOMMU layer passes `alloc_align_mask = 0x3fff` and
/// asks for zeroed padding; each buffer lands in one 16 KiB-aligned granule of its own.
#[test]
fn r12_untrusted_buffer_gets_its_own_16k_granule() {
    let pool = simple_pool();
    let constraints = Constraints::NONE.with_alloc_align_mask(0x3fff).with_zero_padding(true);
    pool.memory().fill(pool.phys_range().start(), 1 << 20, 0x55);
    let mut regions = Vec::new();
    for index in 0..4u64 {
        let orig = ram(index * 0x1_0000);
        write(&pool, orig, &pattern(index, 4 * KIB));
        let mapping = pool.map(orig, 4 * KIB, DmaDirection::ToDevice, &constraints).unwrap();
        assert_eq!(
            mapping.region.as_u64() % (16 * KIB as u64),
            0,
            "the region does not start a 16 KiB granule: {mapping}"
        );
        assert_eq!(mapping.region_len, 16 * KIB, "the region is not one whole 16 KiB granule: {mapping}");
        let region = region_bytes(&pool, &mapping);
        let pre = mapping.dma.offset_from(mapping.region).unwrap() as usize;
        assert_eq!(&region[pre..pre + 4 * KIB], &pattern(index, 4 * KIB)[..]);
        let stale = region[..pre].iter().chain(&region[pre + 4 * KIB..]).filter(|&&b| b != 0).count();
        assert_eq!(stale, 0, "{stale} bytes of the granule around the buffer are not zero: the device reads them");
        regions.push(mapping.region.as_u64() / (16 * KIB as u64));
    }
    regions.sort();
    regions.dedup();
    assert_eq!(regions.len(), 4, "no granule holds two buffers");
}
