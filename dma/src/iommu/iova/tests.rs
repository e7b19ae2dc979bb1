//! Host tests of the IOVA allocator: granules and space bounds, top-down placement, size
//! alignment, refusals, the caches (reuse order, eviction, flush and retry, counters),
//! reservations, and a property test of random sequences against a model.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

const KIB: u64 = 1 << 10;

/// An allocator whose space is `[first, end)` granules.
fn allocator(granule: u64, first: u64, end: u64, capacity: usize) -> IovaAllocator {
    let (start, end) = (DmaAddr::new(first * granule), DmaAddr::new(end * granule));
    IovaAllocator::with_cache_capacity(granule, start, end, capacity).unwrap()
}

#[test]
fn only_4_16_and_64_kib_granules_are_accepted() {
    for granule in [0, 512, 2 * KIB, 3000, 8 * KIB, 32 * KIB, 128 * KIB] {
        let result = IovaAllocator::new(granule, DmaAddr::new(1 << 20), DmaAddr::new(1 << 30));
        assert_eq!(result.unwrap_err(), IovaError::UnsupportedGranule { granule });
    }
    for granule in GRANULES {
        assert!(IovaAllocator::new(granule, DmaAddr::new(granule), DmaAddr::new(1 << 30)).is_ok());
    }
}

#[test]
fn the_space_must_be_granule_aligned_nonempty_and_above_zero() {
    let granule = 16 * KIB;
    let new = |start, end| IovaAllocator::new(granule, DmaAddr::new(start), DmaAddr::new(end)).unwrap_err();
    assert_eq!(new(0x1000, 1 << 30), IovaError::UnalignedBound { bound: DmaAddr::new(0x1000), granule });
    assert_eq!(
        new(granule, (1 << 30) + 4 * KIB),
        IovaError::UnalignedBound { bound: DmaAddr::new((1 << 30) + 0x1000), granule }
    );
    assert_eq!(new(0, 1 << 30), IovaError::ZeroInSpace { end: DmaAddr::new(1 << 30) });
    let start = DmaAddr::new(4 * granule);
    assert_eq!(new(4 * granule, 4 * granule), IovaError::EmptySpace { start, end: start });
    assert_eq!(new(4 * granule, 2 * granule), IovaError::EmptySpace { start, end: DmaAddr::new(2 * granule) });
}

#[test]
fn each_granule_allocates_top_down_below_the_end() {
    for granule in GRANULES {
        let mut iovas = allocator(granule, 1, 1024, DEFAULT_CACHE_CAPACITY);
        let one = iovas.allocate(1).unwrap();
        assert_eq!(one, DmaAddr::new(1023 * granule));
        // Two granules, 2-granule aligned: [1020, 1022), leaving 1022 free below `one`.
        let two = iovas.allocate(granule + 1).unwrap();
        assert_eq!(two, DmaAddr::new(1020 * granule));
        assert_eq!(iovas.allocate(granule).unwrap(), DmaAddr::new(1022 * granule));
    }
}

#[test]
fn every_size_up_to_40_granules_is_aligned_to_its_power_of_two() {
    for granule in GRANULES {
        let mut iovas = allocator(granule, 1, 1 << 20, DEFAULT_CACHE_CAPACITY);
        let mut reserved_bytes = 0;
        for granules in 1..=40u64 {
            for size in [granules * granule, granules * granule - granule / 2] {
                let iova = iovas.allocate(size).unwrap();
                let alignment = granules.next_power_of_two() * granule;
                assert!(iova.is_aligned(alignment), "{size} bytes at {iova}: not {alignment}-aligned");
                assert!(iova.as_u64() >= granule && iova.as_u64() + size <= (1 << 20) * granule);
                reserved_bytes += if granules <= 32 { alignment } else { granules * granule };
            }
        }
        assert_eq!(iovas.stats().live_bytes, reserved_bytes);
    }
}

#[test]
fn a_free_names_the_size_in_granules_as_allocated() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 1, 1024, DEFAULT_CACHE_CAPACITY);
    let iova = iovas.allocate(5000).unwrap();
    let mismatch = iovas.free(iova, 3 * granule).unwrap_err();
    assert_eq!(
        mismatch,
        IovaError::SizeMismatch { iova, allocated_granules: 2, given_size: 3 * granule, given_granules: 3 }
    );
    // 4 KiB + 1 byte and 8 KiB are both two granules, and a 2-granule request reserves no more.
    assert_eq!(iovas.free(iova, 2 * granule), Ok(()));
    assert_eq!(iovas.stats().live_allocations, 0);
}

#[test]
fn zero_and_never_fitting_requests_are_refused() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 1, 8, DEFAULT_CACHE_CAPACITY);
    let (start, end) = (DmaAddr::new(granule), DmaAddr::new(8 * granule));
    assert_eq!(iovas.allocate(0), Err(IovaError::ZeroSize));
    assert_eq!(iovas.allocate(8 * granule), Err(IovaError::TooLarge { size: 8 * granule, start, end }));
    // 7 granules fit in [1, 8) by count, but an 8-granule-aligned start would be 0 or 8.
    assert_eq!(iovas.allocate(7 * granule), Err(IovaError::TooLarge { size: 7 * granule, start, end }));
    assert_eq!(iovas.allocate(4 * granule), Ok(DmaAddr::new(4 * granule)));
    assert_eq!(iovas.stats().live_allocations, 1);
}

#[test]
fn exhaustion_is_refused_promptly_with_the_size_asked() {
    for capacity in [0, DEFAULT_CACHE_CAPACITY] {
        let granule = 64 * KIB;
        let mut iovas = allocator(granule, 1, 65, capacity);
        let mut taken: Vec<u64> = (0..64).map(|_| iovas.allocate(100).unwrap().as_u64() / granule).collect();
        taken.sort_unstable();
        assert_eq!(taken, (1..65).collect::<Vec<_>>());
        assert_eq!(iovas.allocate(100), Err(IovaError::NoRoom { size: 100, granules: 1, free_granules: 0 }));
        assert_eq!(iovas.stats().live_allocations, 64);
    }
}

#[test]
fn a_full_space_flushes_the_caches_and_retries_once() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 8, 16, DEFAULT_CACHE_CAPACITY);
    let singles: Vec<DmaAddr> = (0..8).map(|_| iovas.allocate(granule).unwrap()).collect();
    for &iova in &singles {
        iovas.free(iova, granule).unwrap();
    }
    assert_eq!(iovas.stats().cached_entries, 8);
    // The free space is empty; only returning the cached singles makes room for 8 granules.
    assert_eq!(iovas.allocate(8 * granule), Ok(DmaAddr::new(8 * granule)));
    let stats = iovas.stats();
    assert_eq!((stats.cache_flushes, stats.cached_entries), (1, 0));
    // Nothing cached: the refusal comes without another flush.
    assert_eq!(iovas.allocate(granule), Err(IovaError::NoRoom { size: granule, granules: 1, free_granules: 0 }));
    assert_eq!(iovas.stats().cache_flushes, 1);
}

#[test]
fn a_flush_that_does_not_make_room_still_refuses() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 8, 16, DEFAULT_CACHE_CAPACITY);
    let top = iovas.allocate(granule).unwrap();
    let _kept = iovas.allocate(granule).unwrap();
    iovas.free(top, granule).unwrap();
    let refused = iovas.allocate(8 * granule);
    assert_eq!(refused, Err(IovaError::NoRoom { size: 8 * granule, granules: 8, free_granules: 7 }));
    assert_eq!(iovas.stats().cache_flushes, 1);
    // The flushed single went back to the free space, and top-down finds it again.
    assert_eq!(iovas.allocate(granule), Ok(top));
}

/// Live: 3 granules (4 reserved) and 40 granules; freed and cached: 2 granules.
fn bad_free_scenario() -> (IovaAllocator, DmaAddr, DmaAddr, DmaAddr) {
    let mut iovas = allocator(16 * KIB, 1, 4096, DEFAULT_CACHE_CAPACITY);
    let three = iovas.allocate(3 * 16 * KIB).unwrap();
    let forty = iovas.allocate(40 * 16 * KIB).unwrap();
    let freed = iovas.allocate(2 * 16 * KIB).unwrap();
    iovas.free(freed, 2 * 16 * KIB).unwrap();
    (iovas, three, forty, freed)
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let granule = 16 * KIB;
    let (pristine, three, forty, freed) = bad_free_scenario();
    let cases = [
        (DmaAddr::new(granule), 3 * granule, IovaError::UnknownAddress { iova: DmaAddr::new(granule) }),
        (freed, 2 * granule, IovaError::UnknownAddress { iova: freed }),
        (forty.add(40 * granule), granule, IovaError::UnknownAddress { iova: forty.add(40 * granule) }),
        (three.add(1), 3 * granule, IovaError::NotAllocationStart { iova: three.add(1), allocation_start: three }),
        // The fourth granule is reserved by the 3-granule request, so it belongs to it.
        (
            three.add(3 * granule),
            granule,
            IovaError::NotAllocationStart { iova: three.add(3 * granule), allocation_start: three },
        ),
        (
            forty.add(39 * granule),
            granule,
            IovaError::NotAllocationStart { iova: forty.add(39 * granule), allocation_start: forty },
        ),
        (
            three,
            4 * granule,
            IovaError::SizeMismatch { iova: three, allocated_granules: 3, given_size: 4 * granule, given_granules: 4 },
        ),
        (three, 0, IovaError::SizeMismatch { iova: three, allocated_granules: 3, given_size: 0, given_granules: 0 }),
        (
            forty,
            39 * granule,
            IovaError::SizeMismatch {
                iova: forty,
                allocated_granules: 40,
                given_size: 39 * granule,
                given_granules: 39,
            },
        ),
    ];
    for (iova, size, refusal) in cases {
        let (mut iovas, ..) = bad_free_scenario();
        assert_eq!(iovas.free(iova, size), Err(refusal));
        assert_eq!(iovas, pristine, "free({iova}, {size}) changed the allocator");
    }
}

#[test]
fn a_freed_iova_of_a_class_comes_back_first() {
    let granule = 4 * KIB;
    for granules in 1..=32u64 {
        let size = granules * granule;
        let mut iovas = allocator(granule, 1, 1 << 16, DEFAULT_CACHE_CAPACITY);
        let iovas_of_size: Vec<DmaAddr> = (0..5).map(|_| iovas.allocate(size).unwrap()).collect();
        let (x, y) = (iovas_of_size[1], iovas_of_size[3]);
        iovas.free(x, size).unwrap();
        assert_eq!(iovas.allocate(size), Ok(x), "{granules} granules");
        iovas.free(x, size).unwrap();
        iovas.free(y, size).unwrap();
        assert_eq!(iovas.allocate(size), Ok(y), "{granules} granules: newest first");
        assert_eq!(iovas.allocate(size), Ok(x), "{granules} granules: then the one before");
    }
}

#[test]
fn a_full_cache_evicts_its_oldest_entry_so_the_newest_comes_back() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 1, 1024, 2);
    let singles: Vec<DmaAddr> = (0..4).map(|_| iovas.allocate(granule).unwrap()).collect();
    for &iova in &singles {
        iovas.free(iova, granule).unwrap();
    }
    assert_eq!(iovas.stats().cached_entries, 2);
    assert_eq!(iovas.allocate(granule), Ok(singles[3]));
    assert_eq!(iovas.allocate(granule), Ok(singles[2]));
    // The two evicted singles went back to the free space; top-down takes the higher one.
    assert_eq!(iovas.allocate(granule), Ok(singles[0]));
}

#[test]
fn without_a_class_the_top_down_search_gives_the_iova_back() {
    let granule = 4 * KIB;
    let cases = [(40, DEFAULT_CACHE_CAPACITY), (33, DEFAULT_CACHE_CAPACITY), (3, 0), (16, 0), (1, 0)];
    for (granules, capacity) in cases {
        let size = granules * granule;
        let mut iovas = allocator(granule, 1, 1 << 16, capacity);
        let taken: Vec<DmaAddr> = (0..4).map(|_| iovas.allocate(size).unwrap()).collect();
        iovas.free(taken[1], size).unwrap();
        assert_eq!(iovas.allocate(size), Ok(taken[1]), "{granules} granules, cache capacity {capacity}");
        assert_eq!(iovas.stats().cached_entries, 0);
    }
}

#[test]
fn stats_count_hits_misses_and_reserved_bytes() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 1, 1024, DEFAULT_CACHE_CAPACITY);
    let three = iovas.allocate(3 * granule).unwrap();
    let large = iovas.allocate(40 * granule).unwrap();
    assert_eq!(
        iovas.stats(),
        IovaStats { live_allocations: 2, live_bytes: 44 * granule, cache_misses: 1, ..IovaStats::default() }
    );
    iovas.free(three, 3 * granule).unwrap();
    iovas.free(large, 40 * granule).unwrap();
    assert_eq!(iovas.stats(), IovaStats { cache_misses: 1, cached_entries: 1, ..IovaStats::default() });
    // A 4-granule request is the same class as the freed 3-granule one.
    assert_eq!(iovas.allocate(4 * granule), Ok(three));
    assert_eq!(
        iovas.stats(),
        IovaStats {
            live_allocations: 1,
            live_bytes: 4 * granule,
            cache_hits: 1,
            cache_misses: 1,
            ..IovaStats::default()
        }
    );
}

#[test]
fn without_a_cache_every_class_allocation_misses() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 1, 1024, 0);
    for _ in 0..3 {
        let iova = iovas.allocate(granule).unwrap();
        iovas.free(iova, granule).unwrap();
    }
    assert_eq!(iovas.stats(), IovaStats { cache_misses: 3, ..IovaStats::default() });
}

#[test]
fn refusals_say_what_was_wrong() {
    let refusal = IovaError::NoRoom { size: 12288, granules: 4, free_granules: 3 };
    assert_eq!(
        format!("{refusal}"),
        "no free size-aligned run of 4 granules for 12288 bytes (3 granules free, caches flushed)"
    );
    let iova = DmaAddr::new(0x4000);
    let refusal = IovaError::SizeMismatch { iova, allocated_granules: 3, given_size: 4096, given_granules: 1 };
    assert_eq!(format!("{refusal}"), "the IOVA allocation at 0x4000 was 3 granules; 4096 bytes are 1");
}

/// Granules `[first, end)` that the allocation at `iova` of `size` bytes holds (its whole power
/// of two for a class request).
fn held(iova: DmaAddr, size: u64, granule: u64) -> (u64, u64) {
    let requested = size.div_ceil(granule);
    let reserved = if requested <= LARGEST_CACHED_GRANULES { requested.next_power_of_two() } else { requested };
    let first = iova.as_u64() / granule;
    (first, first + reserved)
}

/// Allocates sizes from `sizes`, cycling, until not even one granule fits; every allocation
/// must keep clear of `[window_first, window_end)` granules. Returns what was allocated.
fn fill_around(iovas: &mut IovaAllocator, sizes: &[u64], window: (u64, u64), live: &mut Vec<(DmaAddr, u64)>) {
    let granule = iovas.granule();
    let mut next = 0;
    loop {
        let mut placed = false;
        // The next size in the cycle, or any smaller one that still fits.
        for attempt in 0..sizes.len() {
            let size = sizes[(next + attempt) % sizes.len()];
            match iovas.allocate(size) {
                Ok(iova) => {
                    let (first, end) = held(iova, size, granule);
                    assert!(
                        end <= window.0 || window.1 <= first,
                        "{granule}-byte granules: {size} bytes at {iova} overlap the reserved granules \
                         [{}, {})",
                        window.0,
                        window.1
                    );
                    live.push((iova, size));
                    placed = true;
                    next += attempt + 1;
                    break;
                }
                Err(IovaError::NoRoom { .. }) => continue,
                Err(refusal) => panic!("unexpected refusal {refusal}"),
            }
        }
        if !placed {
            break;
        }
    }
    assert!(matches!(iovas.allocate(1), Err(IovaError::NoRoom { free_granules: 0, .. })));
}

#[test]
fn reserved_granules_are_never_handed_out_at_any_granule_even_when_the_space_fills() {
    for granule in GRANULES {
        let mut iovas = allocator(granule, 1, 2048, DEFAULT_CACHE_CAPACITY);
        // Unaligned at both ends: granules 700 to 740 inclusive are covered.
        iovas.reserve(DmaAddr::new(700 * granule + 100), 40 * granule).unwrap();
        let window = (700, 741);
        assert_eq!(iovas.reservations().collect::<Vec<_>>(), [(DmaAddr::new(700 * granule), 41 * granule)]);
        let sizes: Vec<u64> =
            [1, 3 * granule, granule / 2, 40 * granule, 7 * granule + 1, 2 * granule, 33 * granule, 16 * granule]
                .to_vec();
        let mut live = Vec::new();
        fill_around(&mut iovas, &sizes, window, &mut live);
        let stats = iovas.stats();
        assert_eq!(stats.reserved_bytes, 41 * granule);
        assert_eq!(stats.live_bytes + stats.reserved_bytes, 2047 * granule, "the space is full but for the window");
        // Everything back, most of it into the caches; then fill again with other sizes: the
        // cached IOVAs and the flushed free space both keep clear of the window.
        for (iova, size) in live.drain(..) {
            iovas.free(iova, size).unwrap();
        }
        assert!(iovas.stats().cached_entries > 0);
        fill_around(&mut iovas, &[granule, 5 * granule, 64 * granule, 2 * granule - 1], window, &mut live);
        let stats = iovas.stats();
        assert_eq!(stats.live_bytes + stats.reserved_bytes, 2047 * granule, "{granule}: refilled");
        for at in window.0..window.1 {
            let iova = DmaAddr::new(at * granule);
            assert_eq!(iovas.free(iova, granule), Err(IovaError::UnknownAddress { iova }));
        }
    }
}

#[test]
fn a_reservation_over_a_live_allocation_or_another_reservation_is_refused_and_changes_nothing() {
    let granule = 16 * KIB;
    let scenario = || {
        let mut iovas = allocator(granule, 1, 1024, DEFAULT_CACHE_CAPACITY);
        // 3 granules asked, 4 held: [1020, 1024).
        let three = iovas.allocate(3 * granule).unwrap();
        iovas.reserve(DmaAddr::new(100 * granule), 10 * granule).unwrap();
        (iovas, three)
    };
    let (pristine, three) = scenario();
    assert_eq!(three, DmaAddr::new(1020 * granule));
    let at = |index: u64| DmaAddr::new(index * granule);
    let cases = [
        (
            at(1010),
            11 * granule,
            IovaError::ReserveOverLive {
                start: at(1010),
                end: at(1021),
                allocation_start: three,
                allocation_end: at(1024),
            },
        ),
        // The fourth granule is the class's padding: held all the same.
        (
            at(1023).add(5),
            1,
            IovaError::ReserveOverLive {
                start: at(1023),
                end: at(1024),
                allocation_start: three,
                allocation_end: at(1024),
            },
        ),
        (
            at(95),
            6 * granule,
            IovaError::ReserveOverReserved {
                start: at(95),
                end: at(101),
                reserved_start: at(100),
                reserved_end: at(110),
            },
        ),
        (
            at(109).add(1),
            1,
            IovaError::ReserveOverReserved {
                start: at(109),
                end: at(110),
                reserved_start: at(100),
                reserved_end: at(110),
            },
        ),
        (
            at(100),
            10 * granule,
            IovaError::ReserveOverReserved {
                start: at(100),
                end: at(110),
                reserved_start: at(100),
                reserved_end: at(110),
            },
        ),
    ];
    for (start, size, refusal) in cases {
        let (mut iovas, _) = scenario();
        assert_eq!(iovas.reserve(start, size), Err(refusal));
        assert_eq!(iovas, pristine, "reserve({start}, {size}) changed the allocator");
    }
    let (mut iovas, _) = scenario();
    assert_eq!(iovas.reserve(at(1), 0), Err(IovaError::ZeroSize));
    // Touching but not overlapping is fine on both sides.
    assert_eq!(iovas.reserve(at(110), granule), Ok(()));
    assert_eq!(iovas.reserve(at(1019), granule), Ok(()));
    assert_eq!(iovas.reservations().count(), 3);
}

#[test]
fn a_reservation_at_the_edges_of_the_space_is_clipped_to_it() {
    let granule = 4 * KIB;
    let mut iovas = allocator(granule, 8, 64, 0);
    // From IOVA 0 into the second granule of the space; from the last granule past the end.
    iovas.reserve(DmaAddr::new(0), 9 * granule + 1).unwrap();
    iovas.reserve(DmaAddr::new(63 * granule), 10 * granule).unwrap();
    let reservations: Vec<_> = iovas.reservations().collect();
    assert_eq!(reservations, [(DmaAddr::new(8 * granule), 2 * granule), (DmaAddr::new(63 * granule), granule)]);
    assert_eq!(iovas.stats().reserved_bytes, 3 * granule);
    // Top-down starts below the reserved last granule.
    assert_eq!(iovas.allocate(granule), Ok(DmaAddr::new(62 * granule)));
    let singles: Vec<u64> = (0..52).map(|_| iovas.allocate(granule).unwrap().as_u64() / granule).collect();
    assert_eq!(singles.iter().min(), Some(&10), "the reserved bottom granules were handed out");
    assert!(matches!(iovas.allocate(granule), Err(IovaError::NoRoom { free_granules: 0, .. })));
    // A reservation may take a whole space.
    let mut whole = allocator(granule, 1, 16, DEFAULT_CACHE_CAPACITY);
    whole.reserve(DmaAddr::new(0), u64::MAX).unwrap();
    assert_eq!(whole.reservations().collect::<Vec<_>>(), [(DmaAddr::new(granule), 15 * granule)]);
    assert_eq!(whole.allocate(1), Err(IovaError::NoRoom { size: 1, granules: 1, free_granules: 0 }));
}

#[test]
fn a_window_outside_the_space_changes_nothing() {
    for granule in GRANULES {
        let pristine = allocator(granule, 16, 256, DEFAULT_CACHE_CAPACITY);
        let outside = [
            (DmaAddr::new(0), 16 * granule),
            (DmaAddr::new(granule), 15 * granule),
            (DmaAddr::new(256 * granule), granule),
            (DmaAddr::new(1 << 40), 1 << 30),
            (DmaAddr::new(u64::MAX - 10), 100), // its end wraps past 2^64
            (DmaAddr::new(u64::MAX), u64::MAX),
        ];
        for (start, size) in outside {
            let mut iovas = allocator(granule, 16, 256, DEFAULT_CACHE_CAPACITY);
            assert_eq!(iovas.reserve(start, size), Ok(()), "{granule}: [{start} + {size})");
            assert_eq!(iovas, pristine, "{granule}: reserve({start}, {size}) changed the allocator");
            assert_eq!(iovas.reservations().count(), 0);
        }
    }
}

#[test]
fn a_cached_iova_the_reservation_covers_leaves_the_cache_for_good() {
    let granule = 64 * KIB;
    let mut iovas = allocator(granule, 1, 256, DEFAULT_CACHE_CAPACITY);
    let singles: Vec<DmaAddr> = (0..3).map(|_| iovas.allocate(granule).unwrap()).collect();
    for &iova in &singles {
        iovas.free(iova, granule).unwrap();
    }
    assert_eq!(iovas.stats().cached_entries, 3);
    iovas.reserve(singles[1], granule).unwrap();
    assert_eq!(iovas.stats().cached_entries, 2, "the covered single left its cache");
    assert_eq!(iovas.free(singles[1], granule), Err(IovaError::UnknownAddress { iova: singles[1] }));
    let all: Vec<DmaAddr> = core::iter::from_fn(|| iovas.allocate(granule).ok()).collect();
    assert_eq!(all.len(), 254);
    assert!(!all.contains(&singles[1]), "the reserved IOVA came back");
    assert_eq!(all[..2], [singles[2], singles[0]], "the other cached singles still come back first");
}

#[test]
fn reservation_refusals_say_what_was_wrong() {
    let refusal = IovaError::ReserveOverLive {
        start: DmaAddr::new(0x800_0000),
        end: DmaAddr::new(0x810_0000),
        allocation_start: DmaAddr::new(0x80f_0000),
        allocation_end: DmaAddr::new(0x820_0000),
    };
    assert_eq!(
        format!("{refusal}"),
        "cannot reserve the IOVAs [0x8000000, 0x8100000): the live allocation [0x80f0000, 0x8200000) holds some of them"
    );
    let refusal = IovaError::ReserveOverReserved {
        start: DmaAddr::new(0x4000),
        end: DmaAddr::new(0x8000),
        reserved_start: DmaAddr::new(0x6000),
        reserved_end: DmaAddr::new(0x7000),
    };
    assert_eq!(format!("{refusal}"), "cannot reserve the IOVAs [0x4000, 0x8000): [0x6000, 0x7000) is reserved already");
}

/// The reference: live allocations by first granule, with their requested and reserved granules,
/// and the granules taken by a reservation.
#[derive(Default)]
struct Model {
    live: BTreeMap<u64, (u64, u64)>,
    reservation: Option<(u64, u64)>,
}

impl Model {
    fn is_free(&self, first: u64, reserved: u64) -> bool {
        let clear = |start: u64, end: u64| first + reserved <= start || end <= first;
        self.is_unallocated(first, reserved) && self.reservation.is_none_or(|(start, end)| clear(start, end))
    }

    /// Whether no live allocation holds any of the granules.
    fn is_unallocated(&self, first: u64, reserved: u64) -> bool {
        self.live.iter().all(|(&start, &(_, length))| first + reserved <= start || start + length <= first)
    }

    /// The highest aligned start for `reserved` granules clear of every live allocation.
    fn highest_fit(&self, first: u64, end: u64, reserved: u64) -> Option<u64> {
        let alignment = reserved.next_power_of_two();
        let top = end.checked_sub(reserved)? / alignment * alignment;
        (0..=top / alignment)
            .map(|step| top - step * alignment)
            .take_while(|&start| start >= first)
            .find(|&start| self.is_free(start, reserved))
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// An allocation of `halves` half granules.
    Allocate {
        halves: u64,
    },
    Free {
        pick: usize,
    },
    /// A free of a live allocation with one granule too many.
    FreeWrongSize {
        pick: usize,
    },
    /// A free one granule (or one byte) inside a live allocation.
    FreeInside {
        pick: usize,
    },
    /// A free of a granule no live allocation holds.
    FreeUnknown {
        granule_index: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..=96).prop_map(|halves| Op::Allocate { halves }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeWrongSize { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeInside { pick }),
        1 => any::<u64>().prop_map(|granule_index| Op::FreeUnknown { granule_index }),
    ]
}

struct Run {
    iovas: IovaAllocator,
    model: Model,
    granule: u64,
    first: u64,
    end: u64,
    capacity: usize,
}

impl Run {
    /// A run whose allocator has first reserved `window` = (granules from just below the
    /// space's start, granules long), if any; its bytes start and end inside granules.
    fn new(granule: u64, first: u64, end: u64, capacity: usize, window: Option<(u64, u64)>) -> Self {
        let mut iovas = allocator(granule, first, end, capacity);
        let mut model = Model::default();
        if let Some((offset, length)) = window {
            let start = (first + offset).saturating_sub(4);
            let bytes = (DmaAddr::new(start * granule + granule / 3), length * granule - granule / 2);
            iovas.reserve(bytes.0, bytes.1).unwrap();
            let clipped = (start.max(first), (start + length).min(end));
            model.reservation = (clipped.0 < clipped.1).then_some(clipped);
        }
        Self { iovas, model, granule, first, end, capacity }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Allocate { halves } => self.allocate(halves * self.granule / 2)?,
            Op::Free { pick } => {
                if let Some((iova, size, first)) = self.pick(pick) {
                    prop_assert_eq!(self.iovas.free(iova, size), Ok(()));
                    self.model.live.remove(&first);
                }
            }
            Op::FreeWrongSize { pick } => {
                if let Some((iova, size, _)) = self.pick(pick) {
                    let refusal = self.refused_free(iova, size + self.granule)?;
                    prop_assert!(matches!(refusal, IovaError::SizeMismatch { .. }), "{}", refusal);
                }
            }
            Op::FreeInside { pick } => {
                if let Some((iova, size, first)) = self.pick(pick) {
                    let reserved = self.model.live[&first].1;
                    let inside = if reserved > 1 { iova.add(self.granule) } else { iova.add(1) };
                    let refusal = self.refused_free(inside, size)?;
                    prop_assert_eq!(refusal, IovaError::NotAllocationStart { iova: inside, allocation_start: iova });
                }
            }
            Op::FreeUnknown { granule_index } => {
                let index = self.first + granule_index % (self.end - self.first);
                if self.model.is_unallocated(index, 1) {
                    let iova = DmaAddr::new(index * self.granule);
                    prop_assert_eq!(self.refused_free(iova, self.granule)?, IovaError::UnknownAddress { iova });
                }
            }
        }
        self.check_stats()
    }

    fn allocate(&mut self, size: u64) -> Result<(), TestCaseError> {
        let requested = size.div_ceil(self.granule);
        let reserved = if requested <= 32 { requested.next_power_of_two() } else { requested };
        let model_fit = self.model.highest_fit(self.first, self.end, reserved);
        match self.iovas.allocate(size) {
            Ok(iova) => {
                let first = iova.as_u64() / self.granule;
                prop_assert!(iova.is_aligned(reserved.next_power_of_two() * self.granule), "{} unaligned", iova);
                prop_assert!(first >= self.first && first + reserved <= self.end, "{} outside the space", iova);
                prop_assert!(
                    self.model.is_free(first, reserved),
                    "{} overlaps a live allocation or the reservation",
                    iova
                );
                if self.capacity == 0 {
                    prop_assert_eq!(Some(first), model_fit, "not the highest fit");
                }
                self.model.live.insert(first, (requested, reserved));
            }
            Err(IovaError::NoRoom { .. }) => prop_assert_eq!(model_fit, None, "refused although a place was free"),
            Err(IovaError::TooLarge { .. }) => {
                prop_assert_eq!(Model::default().highest_fit(self.first, self.end, reserved), None)
            }
            Err(refusal) => prop_assert!(false, "unexpected refusal {}", refusal),
        }
        Ok(())
    }

    /// The live allocation number `pick` (modulo their count): its IOVA, size and first granule.
    fn pick(&self, pick: usize) -> Option<(DmaAddr, u64, u64)> {
        let count = self.model.live.len();
        let (&first, &(requested, _)) = self.model.live.iter().nth(pick % count.max(1))?;
        Some((DmaAddr::new(first * self.granule), requested * self.granule, first))
    }

    /// Free what the model says is no live allocation; it must be refused with nothing changed.
    fn refused_free(&mut self, iova: DmaAddr, size: u64) -> Result<IovaError, TestCaseError> {
        let before = self.iovas.stats();
        let refusal = self.iovas.free(iova, size);
        prop_assert_eq!(self.iovas.stats(), before);
        match refusal {
            Err(refusal) => Ok(refusal),
            Ok(()) => Err(TestCaseError::fail(format!("free({iova}, {size}) accepted"))),
        }
    }

    fn check_stats(&self) -> Result<(), TestCaseError> {
        let stats = self.iovas.stats();
        prop_assert_eq!(stats.live_allocations, self.model.live.len());
        let reserved: u64 = self.model.live.values().map(|&(_, reserved)| reserved).sum();
        prop_assert_eq!(stats.live_bytes, reserved * self.granule);
        let window = self.model.reservation.map_or(0, |(start, end)| end - start);
        prop_assert_eq!(stats.reserved_bytes, window * self.granule);
        prop_assert!(stats.cached_entries <= CACHED_CLASSES * self.capacity);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random allocations, frees and bad frees on small spaces (so that they fill up), checked
    /// after every step: each IOVA is aligned, inside the space and clear of every live
    /// allocation; without a cache it is the highest such place; a refusal for want of room
    /// means no place was free (the caches had been flushed); bad frees are refused with the
    /// right error and change nothing; the counters match the model. Half the runs reserve a
    /// window first (sometimes clipped at an edge of the space): no IOVA ever falls in it, and
    /// a free inside it is refused as unknown.
    #[test]
    fn random_sequences_match_a_model(
        granule in proptest::sample::select(GRANULES.to_vec()),
        first in 1u64..=8,
        length in 16u64..=256,
        capacity in prop_oneof![Just(0usize), Just(2), Just(DEFAULT_CACHE_CAPACITY)],
        ops in proptest::collection::vec(op(), 1..300),
        window in proptest::option::of((0u64..=256, 1u64..=48)),
    ) {
        let mut run = Run::new(granule, first, first + length, capacity, window);
        for op in &ops {
            run.step(op)?;
        }
    }
}
