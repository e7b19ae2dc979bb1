//! Host tests of the IOVA allocator: granules and space bounds, top-down placement, size
//! alignment, refusals, the caches (reuse order, eviction, flush and retry, counters),
//! reservations, and random sequences checked step by step against a granule-by-granule model:
//! many short ones on small spaces (a property test), and long ones with requests of up to a few
//! thousand granules.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::vec;
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

/// What holds a granule, in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Live,
    /// Freed, and kept in its class's cache.
    Cached,
    Reserved,
}

/// The reference: the space granule by granule, and the caches kept as the allocator documents
/// them. It knows nothing of ranges or orders: a search tries every aligned start from the top,
/// granule by granule, so the allocator's free space must find exactly what it finds.
struct Model {
    granule: u64,
    first: u64,
    end: u64,
    capacity: usize,
    /// `slots[i]` says what holds granule `first + i`.
    slots: Vec<Slot>,
    /// Live allocations by first granule, with their requested and reserved granules.
    live: BTreeMap<u64, (u64, u64)>,
    /// Reservations by first granule, with their end.
    reservations: BTreeMap<u64, u64>,
    /// Per class, the first granules of its cached blocks, oldest first.
    caches: [VecDeque<u64>; CACHED_CLASSES],
    hits: u64,
    misses: u64,
    flushes: u64,
}

impl Model {
    fn new(granule: u64, first: u64, end: u64, capacity: usize) -> Self {
        Self {
            granule,
            first,
            end,
            capacity,
            slots: vec![Slot::Free; (end - first) as usize],
            live: BTreeMap::new(),
            reservations: BTreeMap::new(),
            caches: Default::default(),
            hits: 0,
            misses: 0,
            flushes: 0,
        }
    }

    fn address(&self, granule_index: u64) -> DmaAddr {
        DmaAddr::new(granule_index * self.granule)
    }

    fn slots(&self, first: u64, length: u64) -> &[Slot] {
        let at = (first - self.first) as usize;
        &self.slots[at..at + length as usize]
    }

    fn fill(&mut self, first: u64, length: u64, slot: Slot) {
        let at = (first - self.first) as usize;
        self.slots[at..at + length as usize].fill(slot);
    }

    /// Whether no live allocation holds any of the granules.
    fn is_unallocated(&self, first: u64, length: u64) -> bool {
        !self.slots(first, length).contains(&Slot::Live)
    }

    /// Every start for `reserved` granules inside the space, aligned to their power of two,
    /// highest first.
    fn starts(&self, reserved: u64) -> impl Iterator<Item = u64> {
        let alignment = reserved.next_power_of_two();
        let top = self.end.checked_sub(reserved).map(|top| top / alignment * alignment);
        let first = self.first;
        top.into_iter()
            .flat_map(move |top| (0..=top / alignment).map(move |step| top - step * alignment))
            .take_while(move |&start| start >= first)
    }

    fn highest_free(&self, reserved: u64) -> Option<u64> {
        self.starts(reserved).find(|&start| self.slots(start, reserved).iter().all(|&slot| slot == Slot::Free))
    }

    /// Allocates `size` bytes as the allocator must, and says what it must return.
    fn allocate(&mut self, size: u64) -> Result<DmaAddr, IovaError> {
        let requested = size.div_ceil(self.granule);
        let reserved = if requested <= 32 { requested.next_power_of_two() } else { requested };
        if self.starts(reserved).next().is_none() {
            return Err(IovaError::TooLarge { size, start: self.address(self.first), end: self.address(self.end) });
        }
        if let Some(class) = class(reserved) {
            if let Some(block) = self.caches[class].pop_back() {
                self.hits += 1;
                return Ok(self.take(block, requested, reserved));
            }
            self.misses += 1;
        }
        let mut fit = self.highest_free(reserved);
        if fit.is_none() && self.caches.iter().any(|cache| !cache.is_empty()) {
            self.flushes += 1;
            for (class, cache) in core::mem::take(&mut self.caches).into_iter().enumerate() {
                for block in cache {
                    self.fill(block, 1 << class, Slot::Free);
                }
            }
            fit = self.highest_free(reserved);
        }
        match fit {
            Some(first) => Ok(self.take(first, requested, reserved)),
            None => {
                let free_granules = self.slots.iter().filter(|&&slot| slot == Slot::Free).count() as u64;
                Err(IovaError::NoRoom { size, granules: reserved, free_granules })
            }
        }
    }

    fn take(&mut self, first: u64, requested: u64, reserved: u64) -> DmaAddr {
        self.fill(first, reserved, Slot::Live);
        self.live.insert(first, (requested, reserved));
        self.address(first)
    }

    /// Frees the live allocation at granule `first`: into its class's cache (the oldest entry
    /// leaving a full one), or free.
    fn free(&mut self, first: u64) {
        let (_, reserved) = self.live.remove(&first).expect("a live allocation");
        match class(reserved) {
            Some(class) if self.capacity > 0 => {
                self.fill(first, reserved, Slot::Cached);
                self.caches[class].push_back(first);
                if self.caches[class].len() > self.capacity {
                    let oldest = self.caches[class].pop_front().expect("a full cache");
                    self.fill(oldest, reserved, Slot::Free);
                }
            }
            _ => self.fill(first, reserved, Slot::Free),
        }
    }

    /// Reserves the granules `[first, end)`, already clipped to the space, as the allocator must,
    /// and says what it must return.
    fn reserve(&mut self, first: u64, end: u64) -> Result<(), IovaError> {
        if first >= end {
            return Ok(());
        }
        let (start, end_address) = (self.address(first), self.address(end));
        let overlaps = |at: u64, at_end: u64| at < end && first < at_end;
        // Of several overlapping holders, the refusal names the highest.
        let live = self.live.iter().rfind(|&(&at, &(_, reserved))| overlaps(at, at + reserved));
        if let Some((&at, &(_, reserved))) = live {
            return Err(IovaError::ReserveOverLive {
                start,
                end: end_address,
                allocation_start: self.address(at),
                allocation_end: self.address(at + reserved),
            });
        }
        let earlier = self.reservations.iter().rfind(|&(&at, &at_end)| overlaps(at, at_end));
        if let Some((&at, &at_end)) = earlier {
            return Err(IovaError::ReserveOverReserved {
                start,
                end: end_address,
                reserved_start: self.address(at),
                reserved_end: self.address(at_end),
            });
        }
        let mut covered = Vec::new();
        for (class, cache) in self.caches.iter_mut().enumerate() {
            cache.retain(|&block| {
                let hit = overlaps(block, block + (1 << class));
                if hit {
                    covered.push((block, 1 << class));
                }
                !hit
            });
        }
        for (block, length) in covered {
            self.fill(block, length, Slot::Free);
        }
        self.fill(first, end - first, Slot::Reserved);
        self.reservations.insert(first, end);
        Ok(())
    }

    fn stats(&self) -> IovaStats {
        IovaStats {
            live_allocations: self.live.len(),
            live_bytes: self.live.values().map(|&(_, reserved)| reserved).sum::<u64>() * self.granule,
            cache_hits: self.hits,
            cache_misses: self.misses,
            cached_entries: self.caches.iter().map(VecDeque::len).sum(),
            cache_flushes: self.flushes,
            reserved_bytes: self.reservations.iter().map(|(&first, &end)| end - first).sum::<u64>() * self.granule,
        }
    }

    /// The maximal runs of free granules, lowest first.
    fn free_runs(&self) -> Vec<Range> {
        let mut runs = Vec::new();
        let mut at = self.first;
        for run in self.slots.chunk_by(|&a, &b| (a == Slot::Free) == (b == Slot::Free)) {
            if run[0] == Slot::Free {
                runs.push(Range { start: at, end: at + run.len() as u64 });
            }
            at += run.len() as u64;
        }
        runs
    }
}

/// The cache class of `reserved` granules, if it has one.
fn class(reserved: u64) -> Option<usize> {
    (reserved <= 32).then(|| reserved.trailing_zeros() as usize)
}

/// The largest `k` such that `range` holds a block of `2^k` granules aligned to `2^k`, tried
/// upwards from the range's bottom.
fn largest_aligned_block(range: Range) -> usize {
    (1..ORDERS as u32).take_while(|&k| range.start.next_multiple_of(1 << k) + (1 << k) <= range.end).count()
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
    /// A reservation of `length` granules from granule `first + at - 4` of a space starting at
    /// `first` (so sometimes clipped at either edge, or outside); its bytes start and end inside
    /// granules.
    Reserve {
        at: u64,
        length: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..=96).prop_map(|halves| Op::Allocate { halves }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeWrongSize { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeInside { pick }),
        1 => any::<u64>().prop_map(|granule_index| Op::FreeUnknown { granule_index }),
        1 => (0u64..=264, 1u64..=4).prop_map(|(at, length)| Op::Reserve { at, length }),
    ]
}

/// An allocator and the reference, fed the same operations.
struct Run {
    iovas: IovaAllocator,
    model: Model,
    /// Allocations refused for want of room (the reference agreeing).
    no_room: usize,
}

impl Run {
    fn new(granule: u64, first: u64, end: u64, capacity: usize) -> Self {
        Self {
            iovas: allocator(granule, first, end, capacity),
            model: Model::new(granule, first, end, capacity),
            no_room: 0,
        }
    }

    /// Applies `op` to both and checks that they answer alike and end alike.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let granule = self.model.granule;
        match *op {
            Op::Allocate { halves } => {
                let size = halves * granule / 2;
                let expected = self.model.allocate(size);
                self.no_room += usize::from(matches!(expected, Err(IovaError::NoRoom { .. })));
                prop_assert_eq!(self.iovas.allocate(size), expected, "allocate({})", size);
            }
            Op::Free { pick } => {
                if let Some((iova, size, first)) = self.pick(pick) {
                    prop_assert_eq!(self.iovas.free(iova, size), Ok(()));
                    self.model.free(first);
                }
            }
            Op::FreeWrongSize { pick } => {
                if let Some((iova, size, _)) = self.pick(pick) {
                    let refusal = self.refused_free(iova, size + granule)?;
                    prop_assert!(matches!(refusal, IovaError::SizeMismatch { .. }), "{}", refusal);
                }
            }
            Op::FreeInside { pick } => {
                if let Some((iova, size, first)) = self.pick(pick) {
                    let reserved = self.model.live[&first].1;
                    let inside = if reserved > 1 { iova.add(granule) } else { iova.add(1) };
                    let refusal = self.refused_free(inside, size)?;
                    prop_assert_eq!(refusal, IovaError::NotAllocationStart { iova: inside, allocation_start: iova });
                }
            }
            Op::FreeUnknown { granule_index } => {
                let index = self.model.first + granule_index % (self.model.end - self.model.first);
                if self.model.is_unallocated(index, 1) {
                    let iova = DmaAddr::new(index * granule);
                    prop_assert_eq!(self.refused_free(iova, granule)?, IovaError::UnknownAddress { iova });
                }
            }
            Op::Reserve { at, length } => {
                let start = (self.model.first + at).saturating_sub(4);
                let (address, size) = (DmaAddr::new(start * granule + granule / 3), length * granule - granule / 2);
                let expected = self.model.reserve(start.max(self.model.first), (start + length).min(self.model.end));
                prop_assert_eq!(self.iovas.reserve(address, size), expected, "reserve({}, {})", address, size);
            }
        }
        self.check()
    }

    /// The live allocation number `pick` (modulo their count): its IOVA, size and first granule.
    fn pick(&self, pick: usize) -> Option<(DmaAddr, u64, u64)> {
        let count = self.model.live.len();
        let (&first, &(requested, _)) = self.model.live.iter().nth(pick % count.max(1))?;
        Some((self.model.address(first), requested * self.model.granule, first))
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

    /// The counters match the reference's, and the free space holds exactly the reference's
    /// runs of free granules, each coalesced and listed once, under its largest aligned block.
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.iovas.stats(), self.model.stats());
        let (free, runs) = (&self.iovas.free, self.model.free_runs());
        prop_assert_eq!(free.all.iter().copied().collect::<Vec<_>>(), runs.clone());
        prop_assert_eq!(free.granules, runs.iter().map(|run| run.end - run.start).sum::<u64>());
        let mut by_order = vec![Vec::new(); ORDERS];
        for &run in &runs {
            by_order[largest_aligned_block(run)].push(run);
        }
        for (order, runs) in by_order.into_iter().enumerate() {
            prop_assert_eq!(free.orders_present >> order & 1 == 1, !runs.is_empty(), "order {}", order);
            prop_assert_eq!(free.by_order[order].iter().copied().collect::<Vec<_>>(), runs, "order {}", order);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random allocations, frees, bad frees and reservations on small spaces (so that they fill
    /// up), checked after every step against the granule-by-granule reference: every IOVA and
    /// every refusal is the one it predicts, with or without caches; bad frees are refused with
    /// the right error and change nothing; the counters and the free space match it. Half the
    /// runs reserve a window first (sometimes clipped at an edge of the space).
    #[test]
    fn random_sequences_match_a_model(
        granule in proptest::sample::select(GRANULES.to_vec()),
        first in 1u64..=8,
        length in 16u64..=256,
        capacity in prop_oneof![Just(0usize), Just(2), Just(DEFAULT_CACHE_CAPACITY)],
        ops in proptest::collection::vec(op(), 1..300),
        window in proptest::option::of((0u64..=256, 1u64..=48)),
    ) {
        let mut run = Run::new(granule, first, first + length, capacity);
        if let Some((at, length)) = window {
            run.step(&Op::Reserve { at, length })?;
        }
        for op in &ops {
            run.step(op)?;
        }
    }
}

/// xorshift64, for a reproducible stream of operations (as the IOVA benchmark makes its own).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// A request of 1 to 4096 granules, in half granules: a class, a power of two above the classes,
/// or any size above them (rarely more than 2048 granules); a whole number of granules or half a
/// granule short.
fn mixed_halves(numbers: &mut Xorshift) -> u64 {
    let granules = match numbers.below(20) {
        0..=9 => 1 + numbers.below(32),
        10..=13 => 64 << numbers.below(6),
        14..=18 => 33 + numbers.below(2016),
        _ => 2049 + numbers.below(2048),
    };
    2 * granules - numbers.below(2)
}

/// Where the property test's spaces are small, this one is large enough for thousands of
/// granules per request, and starts and ends off any large alignment: the free space then holds
/// ranges of many orders, and requests that are no power of two must choose between the highest
/// range sure to fit them and higher ones, one order down, that may. The stream alternates
/// between filling the space and draining it. Each IOVA and each refusal, with caching off, a
/// small cache and the default one, must be the reference's.
#[test]
fn requests_of_up_to_thousands_of_granules_get_the_iovas_the_granule_by_granule_model_predicts() {
    let granule = 4 * KIB;
    let (first, end) = ((3 << 15) - 1234, (3 << 15) + 31_491);
    for capacity in [0, 2, DEFAULT_CACHE_CAPACITY] {
        let mut numbers = Xorshift(0x2545_f491_4f6c_dd1d);
        let mut run = Run::new(granule, first, end, capacity);
        for step in 0..2000 {
            let filling = step / 250 % 2 == 0;
            let op = match numbers.below(20) {
                0..=5 => Op::Allocate { halves: mixed_halves(&mut numbers) },
                6..=11 => Op::Free { pick: numbers.next() as usize },
                12..=17 if filling => Op::Allocate { halves: mixed_halves(&mut numbers) },
                12..=17 => Op::Free { pick: numbers.next() as usize },
                18 => Op::Reserve { at: numbers.below(end - first + 8), length: 1 + numbers.below(16) },
                _ => match numbers.below(3) {
                    0 => Op::FreeWrongSize { pick: numbers.next() as usize },
                    1 => Op::FreeInside { pick: numbers.next() as usize },
                    _ => Op::FreeUnknown { granule_index: numbers.next() },
                },
            };
            if let Err(failure) = run.step(&op) {
                panic!("cache capacity {capacity}, step {step}, {op:?}: {failure}");
            }
        }
        // The stream must have filled the space now and then, or refusals went unchecked.
        assert!(run.no_room > 50, "cache capacity {capacity}: {} refusals", run.no_room);
    }
}
