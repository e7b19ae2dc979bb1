//! Rule 11: bad input is a typed error that changes nothing.
//!
//! Each test sets up a pool with live mappings, records everything observable (slot states,
//! slots in use, the bytes of the pool), makes one bad request, checks the exact error, and
//! checks that nothing observable moved and that the live mappings still work.

mod common;

use common::*;
use swiotlb::{
    BouncePool, Constraints, DmaAddr, DmaDirection, DmaError, HeapMemory, MaskKind, PhysAddr, PhysRange, PoolConfig,
    PoolError, RegionKind,
};

struct Scene {
    pool: Pool,
    streaming: swiotlb::Mapping,
    coherent: swiotlb::CoherentBuffer,
}

/// A pool with one streaming mapping that has pre-padding and one coherent allocation.
fn scene() -> Scene {
    let pool = simple_pool();
    let constraints = Constraints::NONE.with_min_align_mask(0xfff).with_alloc_align_mask(0xfff);
    write(&pool, ram(0x1fa0), &pattern(1, 3000));
    let streaming = pool.map(ram(0x1fa0), 3000, DmaDirection::Bidirectional, &constraints).unwrap();
    let coherent = pool.alloc(5000, u64::MAX).unwrap();
    Scene { pool, streaming, coherent }
}

type Snapshot = (Vec<bool>, usize, u64, u64, Vec<u8>);

fn snapshot(pool: &Pool) -> Snapshot {
    let stats = pool.stats();
    let range = pool.phys_range();
    (pool.slot_states(), stats.slots_in_use, stats.maps, stats.unmaps, read(pool, range.start(), range.size() as usize))
}

/// Run `bad`, expect `expected`, and check the scene is untouched and still usable.
fn refused(expected: DmaError, bad: impl FnOnce(&Scene) -> Result<(), DmaError>) {
    let scene = scene();
    let before = snapshot(&scene.pool);
    let failures_before = scene.pool.stats().failures;
    assert_eq!(bad(&scene), Err(expected));
    assert_eq!(snapshot(&scene.pool), before, "{expected} changed the pool");
    assert_ne!(scene.pool.stats().failures, failures_before, "refusal counted");
    assert!(!expected.to_string().is_empty());
    scene.pool.unmap(scene.streaming.dma, 3000).unwrap();
    scene.pool.free(scene.coherent.dma, 5000).unwrap();
    assert!(all_free(&scene.pool));
}

#[test]
fn unknown_addresses_are_refused() {
    let outside = DmaAddr::new(0x1000);
    refused(DmaError::UnknownAddress { dma: outside }, |s| s.pool.unmap(outside, 3000));
    refused(DmaError::UnknownAddress { dma: outside }, |s| s.pool.sync_for_cpu(outside, 1));
    let free_slot = simple_pool().geometry().slot_dma(300);
    refused(DmaError::UnknownAddress { dma: free_slot }, |s| s.pool.unmap(free_slot, 3000));
    refused(DmaError::UnknownAddress { dma: free_slot }, |s| s.pool.free(free_slot, 5000));
}

#[test]
fn pre_padding_is_not_part_of_the_buffer() {
    let scene = scene();
    let in_padding = scene.streaming.region;
    drop(scene);
    refused(DmaError::UnknownAddress { dma: in_padding }, |s| s.pool.sync_for_cpu(in_padding, 16));
}

#[test]
fn double_unmap_is_refused() {
    let scene = scene();
    let dma = scene.streaming.dma;
    scene.pool.unmap(dma, 3000).unwrap();
    let before = snapshot(&scene.pool);
    assert_eq!(scene.pool.unmap(dma, 3000), Err(DmaError::UnknownAddress { dma }));
    assert_eq!(snapshot(&scene.pool), before);
    let coherent = scene.coherent.dma;
    scene.pool.free(coherent, 5000).unwrap();
    assert_eq!(scene.pool.free(coherent, 5000), Err(DmaError::UnknownAddress { dma: coherent }));
    assert!(all_free(&scene.pool));
}

#[test]
fn wrong_sizes_are_refused() {
    let scene = scene();
    let (dma, coherent) = (scene.streaming.dma, scene.coherent.dma);
    drop(scene);
    refused(DmaError::SizeMismatch { dma, mapped: 3000, given: 2999 }, |s| s.pool.unmap(dma, 2999));
    refused(DmaError::SizeMismatch { dma: coherent, mapped: 5000, given: 8192 }, |s| s.pool.free(coherent, 8192));
}

#[test]
fn addresses_inside_a_buffer_are_not_its_start() {
    let scene = scene();
    let dma = scene.streaming.dma;
    drop(scene);
    let inside = dma.add(100);
    refused(DmaError::NotRegionStart { dma: inside, region_start: dma }, |s| s.pool.unmap(inside, 2900));
}

#[test]
fn syncs_outside_the_buffer_are_refused() {
    let scene = scene();
    let dma = scene.streaming.dma;
    drop(scene);
    let out_of_range = |at: DmaAddr, size| DmaError::OutOfRange { dma: at, size, buffer: dma, buffer_size: 3000 };
    refused(out_of_range(dma, 3001), |s| s.pool.sync_for_cpu(dma, 3001));
    refused(out_of_range(dma.add(2999), 2), |s| s.pool.sync_for_device(dma.add(2999), 2));
    refused(out_of_range(dma.add(10), usize::MAX), |s| s.pool.sync_for_cpu(dma.add(10), usize::MAX));
}

#[test]
fn zero_sizes_are_refused() {
    refused(DmaError::ZeroSize, |s| s.pool.map(ram(0), 0, DmaDirection::ToDevice, &Constraints::NONE).map(drop));
    refused(DmaError::ZeroSize, |s| s.pool.sync_for_cpu(s.streaming.dma, 0));
    refused(DmaError::ZeroSize, |s| s.pool.alloc(0, u64::MAX).map(drop));
}

#[test]
fn sizes_above_the_limit_are_refused() {
    let limit = 256 << 10;
    let too_large = |size, region| DmaError::TooLarge { size, region, limit, min_align_mask: 0, alloc_align_mask: 0 };
    refused(too_large(limit + 1, limit + 4096), |s| {
        s.pool.map(ram(0), limit + 1, DmaDirection::ToDevice, &Constraints::NONE).map(drop)
    });
    refused(too_large(usize::MAX, usize::MAX), |s| {
        s.pool.map(ram(0), usize::MAX, DmaDirection::ToDevice, &Constraints::NONE).map(drop)
    });
    refused(too_large(limit + 1, limit + 1), |s| s.pool.alloc(limit + 1, u64::MAX).map(drop));
    // A buffer that must cross a 1 KiB boundary wherever it goes.
    let crossing = Constraints::NONE.with_seg_boundary_mask(0x3ff).with_min_align_mask(0xfff);
    let expected = DmaError::TooLarge {
        size: 600,
        region: 2048,
        limit: 0x400 - 0x3ff,
        min_align_mask: 0xfff,
        alloc_align_mask: 0,
    };
    refused(expected, |s| s.pool.map(ram(0x2f0), 600, DmaDirection::ToDevice, &crossing).map(drop));
}

#[test]
fn masks_that_are_not_runs_of_low_ones_are_refused() {
    let cases = [
        (MaskKind::MinAlign, Constraints::NONE.with_min_align_mask(0x800)),
        (MaskKind::AllocAlign, Constraints::NONE.with_alloc_align_mask(0x1000)),
        (MaskKind::Dma, Constraints::NONE.with_dma_mask(0xffff_0000)),
        (MaskKind::SegmentBoundary, Constraints::NONE.with_seg_boundary_mask(0x1_0001)),
    ];
    for (kind, constraints) in cases {
        let value = match kind {
            MaskKind::MinAlign => 0x800,
            MaskKind::AllocAlign => 0x1000,
            MaskKind::Dma => 0xffff_0000,
            MaskKind::SegmentBoundary => 0x1_0001,
        };
        let expected = DmaError::InvalidMask { kind, value };
        refused(expected, |s| s.pool.map(ram(0), 64, DmaDirection::ToDevice, &constraints).map(drop));
        assert_eq!(simple_pool().max_mapping_size(&constraints), Err(expected));
    }
    let expected = DmaError::InvalidMask { kind: MaskKind::Dma, value: 0x1234 };
    refused(expected, |s| s.pool.alloc(4096, 0x1234).map(drop));
}

#[test]
fn kinds_do_not_mix() {
    let scene = scene();
    let (dma, coherent) = (scene.streaming.dma, scene.coherent.dma);
    drop(scene);
    refused(DmaError::WrongKind { dma: coherent, expected: RegionKind::Streaming, found: RegionKind::Coherent }, |s| {
        s.pool.unmap(coherent, 5000)
    });
    refused(DmaError::WrongKind { dma, expected: RegionKind::Coherent, found: RegionKind::Streaming }, |s| {
        s.pool.free(dma, 3000)
    });
    refused(DmaError::WrongKind { dma: coherent, expected: RegionKind::Streaming, found: RegionKind::Coherent }, |s| {
        s.pool.sync_for_cpu(coherent, 10)
    });
}

#[test]
fn unreachable_buffers_and_addresses_are_refused() {
    let beyond = PhysAddr::new(0x10_0000_0000);
    refused(DmaError::BufferUnreachable { orig: beyond, size: 64 }, |s| {
        s.pool.map(beyond, 64, DmaDirection::ToDevice, &Constraints::NONE).map(drop)
    });
    let wrapping = PhysAddr::new(u64::MAX - 10);
    refused(DmaError::BufferUnreachable { orig: wrapping, size: 64 }, |s| {
        s.pool.map(wrapping, 64, DmaDirection::ToDevice, &Constraints::NONE).map(drop)
    });
    let below_pool = Constraints::NONE.with_dma_mask(0xffff_ffff >> 8);
    let start = simple_pool().geometry().dma_base;
    refused(DmaError::Unaddressable { size: 64, dma_mask: 0xff_ffff, pool_dma_start: start }, |s| {
        s.pool.map(ram(0), 64, DmaDirection::ToDevice, &below_pool).map(drop)
    });
}

#[test]
fn pools_refuse_memory_they_cannot_use() {
    let build = |phys: u64, size: u64, dma: u64, config: PoolConfig| {
        let memory = HeapMemory::new(PhysAddr::new(0x1000_0000), 4 << 20);
        let range = PhysRange::new(PhysAddr::new(phys), size).unwrap();
        BouncePool::new(memory, range, DmaAddr::new(dma), config).err()
    };
    let ok = PoolConfig::default();
    let base = 0x1000_0000;
    assert_eq!(build(base, 1000, base, ok), Some(PoolError::PartialSlot { size: 1000 }));
    assert_eq!(
        build(base + 0x100, 1 << 20, base + 0x100, ok),
        Some(PoolError::MisalignedBase { phys: PhysAddr::new(base + 0x100), dma: DmaAddr::new(base + 0x100) })
    );
    assert_eq!(
        build(base, 1 << 20, base + 0x800, ok),
        Some(PoolError::BusOffsetNotPageMultiple { phys: PhysAddr::new(base), dma: DmaAddr::new(base + 0x800) })
    );
    assert_eq!(
        build(base, 1 << 20, base, PoolConfig { areas: 3, ..ok }),
        Some(PoolError::BadAreaCount { areas: 3, slots: 512 })
    );
    assert_eq!(
        build(base, 1 << 20, base, PoolConfig { segment_slots: 96, ..ok }),
        Some(PoolError::BadSegmentSlots { segment_slots: 96 })
    );
    // Sizes in bytes that overflow are refused as such, in debug builds (overflow checks on)
    // and release builds alike.
    for segment_slots in [1 << 53, 1 << 62, 1 << 63] {
        assert_eq!(
            build(base, 1 << 20, base, PoolConfig { segment_slots, ..ok }),
            Some(PoolError::BadSegmentSlots { segment_slots })
        );
    }
    assert_eq!(
        build(base, 8 << 20, base, ok),
        Some(PoolError::Unreachable { phys: PhysAddr::new(base), size: 8 << 20 })
    );
    assert_eq!(
        build(base, 1 << 20, 0xffff_ffff_fff0_0000 + 0x8_0000, ok),
        Some(PoolError::DmaRangeWraps { dma: DmaAddr::new(0xffff_ffff_fff8_0000), size: 1 << 20 })
    );
}
