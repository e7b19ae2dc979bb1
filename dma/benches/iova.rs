//! IOVA allocation: the per-class caches (Linux's rcaches) against the free-space search alone.
//!
//! Both sides are this crate's `IovaAllocator` on the same space, a 4 GiB domain of 4 KiB
//! granules (what a 32-bit device gets); one keeps the default number of freed IOVAs per class,
//! the other none (`with_cache_capacity(.., 0)`). Each is first filled with `live` allocations,
//! then serves a stream of operations: free a random live allocation, allocate one of a random
//! size in its place. Sizes run from one byte to 32 granules, weighted as a network card and a
//! block device would ask (packets, pages, 64 KiB and 128 KiB blocks). One operation is the
//! free and the allocation together.
//!
//! Run: `cargo bench -p dma --bench iova` (release build).

use std::hint::black_box;
use std::time::{Duration, Instant};

use addr::DmaAddr;
use dma::iommu::iova::{DEFAULT_CACHE_CAPACITY, IovaAllocator};

const GRANULE: u64 = 4096;
const SPACE_END: u64 = 1 << 32;
const MEASURE_FOR: Duration = Duration::from_millis(600);
/// Each figure is the best of this many runs, so that a busy machine shows less in the ratio.
const ROUNDS: usize = 3;

fn main() {
    println!("IOVA space [{GRANULE:#x}, {SPACE_END:#x}), {GRANULE}-byte granules; free + allocate operations");
    println!("{:>7} | {:>13} {:>6} | {:>14} | {:>7}", "live", "cached ns/op", "hit %", "no cache ns/op", "ratio");
    for live in [256, 4096, 65536] {
        let cached = best_of(|| measure(DEFAULT_CACHE_CAPACITY, live));
        let uncached = best_of(|| measure(0, live));
        println!(
            "{:>7} | {:>13.1} {:>5.1}% | {:>14.1} | {:>6.1}x",
            live,
            cached.nanoseconds,
            cached.hit_percent,
            uncached.nanoseconds,
            uncached.nanoseconds / cached.nanoseconds
        );
    }
}

struct Rng(u64);

impl Rng {
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

/// Packets and pages most often, block I/O less, and any size up to 32 granules now and then.
fn request_size(rng: &mut Rng) -> u64 {
    const SIZES: [u64; 8] = [1500, 1500, 2048, 4096, 4096, 8192, 65536, 131072];
    if rng.below(4) == 0 { 1 + rng.below(32 * GRANULE) } else { SIZES[rng.below(SIZES.len() as u64) as usize] }
}

struct Measurement {
    nanoseconds: f64,
    hit_percent: f64,
}

fn best_of(mut run: impl FnMut() -> Measurement) -> Measurement {
    (0..ROUNDS).map(|_| run()).min_by(|a, b| a.nanoseconds.total_cmp(&b.nanoseconds)).unwrap()
}

fn measure(cache_capacity: usize, live: usize) -> Measurement {
    let space = (DmaAddr::new(GRANULE), DmaAddr::new(SPACE_END));
    let mut iovas = IovaAllocator::with_cache_capacity(GRANULE, space.0, space.1, cache_capacity).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut allocations: Vec<(DmaAddr, u64)> = (0..live)
        .map(|_| {
            let size = request_size(&mut rng);
            (iovas.allocate(size).unwrap(), size)
        })
        .collect();
    let requests: Vec<(usize, u64)> =
        (0..4096).map(|_| (rng.below(live as u64) as usize, request_size(&mut rng))).collect();
    let before = iovas.stats();
    let mut operations = 0u64;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        for &(victim, size) in &requests {
            let (iova, old_size) = allocations[victim];
            iovas.free(iova, old_size).unwrap();
            allocations[victim] = (iovas.allocate(black_box(size)).unwrap(), size);
        }
        operations += requests.len() as u64;
    }
    let elapsed = started.elapsed();
    let after = iovas.stats();
    let hits = after.cache_hits - before.cache_hits;
    let class_allocations = hits + after.cache_misses - before.cache_misses;
    Measurement {
        nanoseconds: elapsed.as_nanos() as f64 / operations as f64,
        hit_percent: 100.0 * hits as f64 / class_allocations.max(1) as f64,
    }
}
