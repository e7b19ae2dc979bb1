//! Slot search: this crate's word-at-a-time search against a model of Linux's scan.
//!
//! Both allocators serve the same stream of map+unmap requests (mixed sizes from 512 bytes to
//! 64 KiB; a third of them with NVMe's `min_align_mask = 0xfff`, a sixth with a 16 KiB IOMMU
//! granule as `alloc_align_mask`) on a pool first brought to 0 %, 50 % and 90 % occupancy by the
//! same fill-and-punch-holes sequence. Each operation is the slot work of one map (offset and
//! alignment arithmetic, search, bookkeeping) followed, on success, by the matching unmap. The
//! byte copies, identical for both, are left out; the last column is this crate's whole
//! `BouncePool::map` + `unmap` including them, for scale.
//!
//! The Linux model follows `kernel/dma/swiotlb.c` (v6.10): per-slot `list` counts of free slots
//! up to the end of the 128-slot segment, a linear scan from the area's cursor that steps by one
//! slot until alignment holds and then by the stride, first fit, `list` updates on allocation and
//! release, cursor reset to 0 past the end of the area.
//!
//! The same comparison runs on pools of 4 MiB to 1 GiB, and times successful and refused
//! requests apart: a refusal is cheap for this crate (a bound says at once that no run is long
//! enough) and dear for Linux (it scans every area first), so a mixed rate would mostly measure
//! refusals. Every request is timed on its own, with the clock's own cost (measured first)
//! taken off each sample, since it would otherwise pull every ratio towards 1.
//!
//! Each request is unmapped as soon as it is mapped, so the pool is in the same state for
//! every request, and a request that one allocator serves it serves every time. At 90 % this
//! crate serves requests Linux's scan refuses, and those are the hard ones: success-only figures
//! over each allocator's own successes compare different work. So the success-only speed-up is
//! taken over the requests *both* serve, as is the growth in cost from the 4 MiB pool to the
//! 1 GiB one (over the requests both pool sizes serve). The end of the output is one line per
//! ratio, `bench: NAME = VALUE`, to compare runs: success-only and refusal-only speed-ups over
//! the Linux model, and that growth (it should stay near 1).
//!
//! Run: `cargo bench -p swiotlb` (release build); `cargo bench -p swiotlb -- 4MiB 16MiB` measures
//! only the pools named.

use std::hint::black_box;
use std::time::{Duration, Instant};

use spin::Mutex;
use swiotlb::{
    BouncePool, Constraints, DmaAddr, DmaDirection, Geometry, HeapMemory, PAGE_SIZE, PhysAddr, PhysRange, Placement,
    PoolConfig, SLOT_SHIFT, SLOT_SIZE, SlotAllocator,
};

/// The pool sizes compared: from the kernel's default pool to a large server's.
const POOL_SIZES: [u64; 5] = [4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30];
const AREAS: usize = 4;
const SEGMENT: usize = 128;
const POOL_PHYS: u64 = 0x8000_0000;
const RAM_PHYS: u64 = 0x4000_0000;
const RAM_BYTES: usize = 1 << 20;
const MEASURE_FOR: Duration = Duration::from_millis(300);
/// Each figure is the best of this many runs, so that a busy machine shows less in the ratio.
const ROUNDS: usize = 3;

fn main() {
    println!("{AREAS} areas per pool; nanoseconds per map+unmap, successful and refused requests apart");
    println!(
        "{:>8} {:>9} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>7} {:>7} | {:>10}",
        "pool",
        "occupancy",
        "ours ok",
        "linux ok",
        "ratio",
        "ours no",
        "linux no",
        "ratio",
        "ok %",
        "linux %",
        "BouncePool"
    );
    let mut lines = Vec::new();
    let mut ours_at = Vec::new();
    let overhead = clock_overhead();
    println!("(the clock's own cost, {overhead:.0} ns, is taken off every sample)");
    // `cargo bench` adds `--bench`; any other argument names a pool size to measure.
    let named: Vec<String> = std::env::args().skip(1).filter(|argument| !argument.starts_with('-')).collect();
    for bytes in POOL_SIZES {
        let name = size_name(bytes);
        if !named.is_empty() && !named.contains(&name) {
            continue;
        }
        for occupancy in [0, 50, 90] {
            let ours = best_of(|| measure(&mut Ours::new(bytes), occupancy, overhead));
            let linux = best_of(|| measure(&mut LinuxModel::new(bytes), occupancy, overhead));
            let pool = best_of(|| measure(&mut WholePool::new(bytes), occupancy, overhead));
            let success = linux.success_ns(Some(&ours)) / ours.success_ns(Some(&linux));
            // A ratio only where both refused something.
            let refusal = match ours.refusal_ns().is_finite() && linux.refusal_ns().is_finite() {
                true => linux.refusal_ns() / ours.refusal_ns(),
                false => f64::NAN,
            };
            println!(
                "{name:>8} {occupancy:>8}% | {:>9.0} {:>9.0} {:>5.1}x | {:>9} {:>9} {:>6} | {:>6.1}% {:>6.1}% | {:>10.0}",
                ours.success_ns(Some(&linux)),
                linux.success_ns(Some(&ours)),
                success,
                shown(ours.refusal_ns()),
                shown(linux.refusal_ns()),
                if refusal.is_finite() { format!("{refusal:.1}x") } else { "-".into() },
                ours.success_percent(),
                linux.success_percent(),
                pool.success_ns(None),
            );
            lines.push(format!(
                "bench: slot search success-only ours/linux speed-up {name} {occupancy}% = {success:.2}"
            ));
            if refusal.is_finite() {
                lines.push(format!(
                    "bench: slot search refusal-only ours/linux speed-up {name} {occupancy}% = {refusal:.2}"
                ));
            }
            ours_at.push((bytes, occupancy, ours));
        }
    }
    for occupancy in [0, 50, 90] {
        let at = |bytes: u64| ours_at.iter().find(|(b, o, _)| (*b, *o) == (bytes, occupancy)).map(|(_, _, m)| m);
        if let (Some(small), Some(large)) = (at(POOL_SIZES[0]), at(POOL_SIZES[POOL_SIZES.len() - 1])) {
            let growth = large.success_ns(Some(small)) / small.success_ns(Some(large));
            lines.push(format!("bench: slot search cost per operation 1GiB/4MiB {occupancy}% = {growth:.2}"));
        }
    }
    for line in lines {
        println!("{line}");
    }
}

fn size_name(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{}GiB", bytes >> 30),
        false => format!("{}MiB", bytes >> 20),
    }
}

fn shown(nanoseconds: f64) -> String {
    if nanoseconds.is_finite() { format!("{nanoseconds:.0}") } else { "-".into() }
}

/// One map request, as the workload generator makes it.
#[derive(Clone, Copy)]
struct Request {
    orig: u64,
    size: usize,
    constraints: Constraints,
}

/// What an allocator under test must do.
trait Allocator {
    type Handle;
    fn map(&mut self, request: &Request) -> Option<Self::Handle>;
    fn unmap(&mut self, handle: Self::Handle);
    fn used_slots(&self) -> usize;
    fn total_slots(&self) -> usize;
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

fn workload_request(rng: &mut Rng) -> Request {
    const SIZES: [usize; 8] = [512, 1500, 2048, 4096, 8192, 16384, 32768, 65536];
    let size = SIZES[rng.below(8) as usize];
    let constraints = match rng.below(6) {
        0 | 1 => Constraints::NONE.with_min_align_mask(0xfff),
        2 => Constraints::NONE.with_alloc_align_mask(0x3fff),
        _ => Constraints::NONE,
    };
    let orig = RAM_PHYS + rng.below((RAM_BYTES - size) as u64);
    Request { orig, size, constraints }
}

fn fill_request(rng: &mut Rng) -> Request {
    let size = 1 + rng.below(8 * SLOT_SIZE as u64) as usize;
    Request { orig: RAM_PHYS + rng.below(4096), size, constraints: Constraints::NONE }
}

/// Fill past the target with small mappings, then unmap random ones down to it: the free
/// space ends up scattered, as in a pool that has been running for a while.
fn bring_to<A: Allocator>(allocator: &mut A, occupancy: usize) -> Vec<A::Handle> {
    let total = allocator.total_slots();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut live = Vec::new();
    if occupancy == 0 {
        return live;
    }
    let overshoot = (occupancy + 8).min(99) * total / 100;
    while allocator.used_slots() < overshoot {
        if let Some(handle) = allocator.map(&fill_request(&mut rng)) {
            live.push(handle);
        }
    }
    while allocator.used_slots() > occupancy * total / 100 {
        let victim = rng.below(live.len() as u64) as usize;
        allocator.unmap(live.swap_remove(victim));
    }
    live
}

/// Each request of the workload, by its index: how often it succeeded and was refused, and the
/// time each took (the clock's own cost taken off).
struct Measurement {
    requests: Vec<Tally>,
}

#[derive(Clone, Copy, Default)]
struct Tally {
    served: u64,
    served_ns: f64,
    refused: u64,
    refused_ns: f64,
}

impl Measurement {
    /// Nanoseconds per successful map+unmap, over the requests this allocator always serves
    /// and, if `also` is given, that one always serves too.
    fn success_ns(&self, also: Option<&Measurement>) -> f64 {
        let both = |index: usize| also.is_none_or(|other| other.requests[index].always_served());
        let (count, ns) = self
            .requests
            .iter()
            .enumerate()
            .filter(|(index, tally)| tally.always_served() && both(*index))
            .fold((0, 0.0), |(count, ns), (_, tally)| (count + tally.served, ns + tally.served_ns));
        if count == 0 { f64::INFINITY } else { ns / count as f64 }
    }

    /// Nanoseconds per refused map (infinite when none was refused).
    fn refusal_ns(&self) -> f64 {
        let (count, ns) =
            self.requests.iter().fold((0, 0.0), |(count, ns), tally| (count + tally.refused, ns + tally.refused_ns));
        if count == 0 { f64::INFINITY } else { ns / count as f64 }
    }

    fn success_percent(&self) -> f64 {
        let (served, all) = self
            .requests
            .iter()
            .fold((0, 0), |(served, all), tally| (served + tally.served, all + tally.served + tally.refused));
        100.0 * served as f64 / all as f64
    }
}

impl Tally {
    fn always_served(&self) -> bool {
        self.served > 0 && self.refused == 0
    }
}

/// The best of [`ROUNDS`] runs: for each request, the run where it was cheapest on average.
fn best_of(mut run: impl FnMut() -> Measurement) -> Measurement {
    let runs: Vec<Measurement> = (0..ROUNDS).map(|_| run()).collect();
    let cost = |tally: &Tally| (tally.served_ns + tally.refused_ns) / (tally.served + tally.refused).max(1) as f64;
    let requests = (0..runs[0].requests.len())
        .map(|index| {
            let tallies = runs.iter().map(|run| run.requests[index]);
            tallies.min_by(|a, b| cost(a).total_cmp(&cost(b))).unwrap_or_default()
        })
        .collect();
    Measurement { requests }
}

/// What one `Instant::now()` and `elapsed()` pair costs, in nanoseconds: the least of many.
fn clock_overhead() -> f64 {
    (0..100_000)
        .map(|_| {
            let begun = Instant::now();
            black_box(());
            begun.elapsed().as_nanos() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Times every request on its own, so that successes and refusals can be told apart;
/// `overhead` (the clock's own cost) is taken off each sample.
fn measure<A: Allocator>(allocator: &mut A, occupancy: usize, overhead: f64) -> Measurement {
    let _background = bring_to(allocator, occupancy);
    let mut rng = Rng(0xfeed_beef_cafe_f00d);
    let requests: Vec<Request> = (0..4096).map(|_| workload_request(&mut rng)).collect();
    let mut tallies = vec![Tally::default(); requests.len()];
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        for (request, tally) in requests.iter().zip(&mut tallies) {
            let begun = Instant::now();
            let mapped = allocator.map(black_box(request));
            let succeeded = mapped.is_some();
            if let Some(handle) = mapped {
                allocator.unmap(handle);
            }
            let spent = (begun.elapsed().as_nanos() as f64 - overhead).max(0.0);
            match succeeded {
                true => (tally.served, tally.served_ns) = (tally.served + 1, tally.served_ns + spent),
                false => (tally.refused, tally.refused_ns) = (tally.refused + 1, tally.refused_ns + spent),
            }
        }
    }
    Measurement { requests: tallies }
}

/// This crate's slot allocator, with a per-buffer record like the pool keeps.
struct Ours {
    slots: SlotAllocator<Vec<u64>>,
}

impl Ours {
    fn new(bytes: u64) -> Self {
        let geometry = Geometry::new(DmaAddr::new(POOL_PHYS), bytes as usize / SLOT_SIZE, AREAS, SEGMENT).unwrap();
        Self { slots: SlotAllocator::new(geometry, |slots| vec![0; slots]) }
    }
}

impl Allocator for Ours {
    type Handle = (usize, usize);

    fn map(&mut self, request: &Request) -> Option<Self::Handle> {
        let geometry = *self.slots.geometry();
        let placement =
            Placement::streaming(&geometry, PhysAddr::new(request.orig), request.size, &request.constraints).ok()?;
        self.slots.reserve(&placement, |area, reserved| {
            let buffer_slot = reserved.first_slot + (placement.offset >> SLOT_SHIFT) - area.first_slot();
            area.book[buffer_slot] = request.orig;
            (reserved.first_slot, reserved.slots)
        })
    }

    fn unmap(&mut self, (first, slots): Self::Handle) {
        let mut area = self.slots.lock_area_of(first).unwrap();
        let local = first - area.first_slot();
        area.book[local] = 0;
        area.release(first, slots);
    }

    fn used_slots(&self) -> usize {
        self.slots.used_slots()
    }

    fn total_slots(&self) -> usize {
        self.slots.geometry().slots
    }
}

/// The whole pool, copies included.
struct WholePool {
    pool: BouncePool<HeapMemory>,
}

impl WholePool {
    fn new(bytes: u64) -> Self {
        let memory = HeapMemory::new(PhysAddr::new(RAM_PHYS), (POOL_PHYS - RAM_PHYS + bytes) as usize);
        // Touch every page now: the host hands out zeroed pages on first touch, and a page fault
        // per new page would be counted as the pool's cost (it grows with the pool).
        memory.fill(PhysAddr::new(RAM_PHYS), (POOL_PHYS - RAM_PHYS + bytes) as usize, 0);
        let range = PhysRange::new(PhysAddr::new(POOL_PHYS), bytes).unwrap();
        let config = PoolConfig { areas: AREAS, segment_slots: SEGMENT, ..PoolConfig::default() };
        Self { pool: BouncePool::new(memory, range, DmaAddr::new(POOL_PHYS), config).unwrap() }
    }
}

impl Allocator for WholePool {
    type Handle = (DmaAddr, usize);

    fn map(&mut self, request: &Request) -> Option<Self::Handle> {
        let orig = PhysAddr::new(request.orig);
        let mapping = self.pool.map(orig, request.size, DmaDirection::ToDevice, &request.constraints).ok()?;
        Some((mapping.dma, request.size))
    }

    fn unmap(&mut self, (dma, size): Self::Handle) {
        self.pool.unmap(dma, size).unwrap();
    }

    fn used_slots(&self) -> usize {
        self.pool.stats().slots_in_use
    }

    fn total_slots(&self) -> usize {
        self.pool.stats().slots_total
    }
}

/// Linux v6.10 `swiotlb_search_pool_area` / `swiotlb_release_slots`, transcribed.
struct LinuxModel {
    areas: Vec<Mutex<LinuxArea>>,
    next_area: usize,
    area_slots: usize,
}

struct LinuxArea {
    index: usize,
    used: usize,
    slots: Vec<LinuxSlot>,
}

#[derive(Clone, Copy)]
struct LinuxSlot {
    orig_addr: u64,
    alloc_size: usize,
    list: usize,
    pad_slots: usize,
}

const INVALID_PHYS_ADDR: u64 = u64::MAX;

fn nr_slots(bytes: usize) -> usize {
    bytes.div_ceil(SLOT_SIZE)
}

impl LinuxModel {
    fn new(bytes: u64) -> Self {
        let area_slots = bytes as usize / SLOT_SIZE / AREAS;
        let area = || LinuxArea {
            index: 0,
            used: 0,
            slots: (0..area_slots)
                .map(|i| LinuxSlot {
                    orig_addr: INVALID_PHYS_ADDR,
                    alloc_size: 0,
                    list: SEGMENT - i % SEGMENT,
                    pad_slots: 0,
                })
                .collect(),
        };
        Self { areas: (0..AREAS).map(|_| Mutex::new(area())).collect(), next_area: 0, area_slots }
    }

    fn search_area(
        &self,
        area_index: usize,
        orig: u64,
        alloc_size: usize,
        alloc_align_mask: u64,
        min_align_mask: u64,
    ) -> Option<usize> {
        let mut area = self.areas[area_index].lock();
        let mut alloc_align_mask = alloc_align_mask;
        let mut iotlb_align_mask = min_align_mask;
        let nslots = nr_slots(alloc_size);
        let offset = (orig & min_align_mask & (SLOT_SIZE as u64 - 1)) as usize;
        if alloc_align_mask == 0 && iotlb_align_mask == 0 && alloc_size >= PAGE_SIZE {
            alloc_align_mask = PAGE_SIZE as u64 - 1;
        }
        alloc_align_mask |= SLOT_SIZE as u64 - 1;
        iotlb_align_mask &= !alloc_align_mask;
        let stride = ((alloc_align_mask.max(iotlb_align_mask) >> SLOT_SHIFT) + 1) as usize;
        if nslots > self.area_slots - area.used {
            return None;
        }
        let slot_base = area_index * self.area_slots;
        let wrap = |index: usize| if index >= self.area_slots { 0 } else { index };
        let mut index = area.index;
        let mut slots_checked = 0;
        while slots_checked < self.area_slots {
            let tlb_addr = POOL_PHYS + (((slot_base + index) as u64) << SLOT_SHIFT);
            if tlb_addr & alloc_align_mask != 0 || (orig != 0 && tlb_addr & iotlb_align_mask != orig & iotlb_align_mask)
            {
                index = wrap(index + 1);
                slots_checked += 1;
                continue;
            }
            // The default segment boundary (4 GiB) never splits this pool.
            if area.slots[index].list >= nslots {
                for i in index..index + nslots {
                    area.slots[i].list = 0;
                    area.slots[i].alloc_size = alloc_size - (offset + ((i - index) << SLOT_SHIFT));
                }
                let mut count = 0;
                let mut i = index;
                while i > 0 && (i - 1) % SEGMENT != SEGMENT - 1 && area.slots[i - 1].list != 0 {
                    count += 1;
                    area.slots[i - 1].list = count;
                    i -= 1;
                }
                area.index = wrap(index + nslots);
                area.used += nslots;
                return Some(slot_base + index);
            }
            index = wrap(index + stride);
            slots_checked += stride;
        }
        None
    }
}

impl Allocator for LinuxModel {
    type Handle = (u64, u64);

    /// `swiotlb_tbl_map_single` without the copy: returns the bounce address and the
    /// device's `min_align_mask`, which release needs.
    fn map(&mut self, request: &Request) -> Option<Self::Handle> {
        let (min, alloc) = (request.constraints.min_align_mask, request.constraints.alloc_align_mask);
        let orig = request.orig;
        let offset = (orig & min & (alloc | (SLOT_SIZE as u64 - 1))) as usize;
        let size = (request.size + offset).next_multiple_of(alloc as usize + 1);
        let start = self.next_area;
        self.next_area = (self.next_area + 1) % AREAS;
        let index = (0..AREAS).find_map(|step| self.search_area((start + step) % AREAS, orig, size, alloc, min))?;
        let pad_slots = offset >> SLOT_SHIFT;
        let index = index + pad_slots;
        let (area_index, local) = (index / self.area_slots, index % self.area_slots);
        let mut area = self.areas[area_index].lock();
        area.slots[local].pad_slots = pad_slots;
        for i in 0..nr_slots(size) - pad_slots {
            area.slots[local + i].orig_addr = orig + ((i as u64) << SLOT_SHIFT);
        }
        Some((POOL_PHYS + ((index as u64) << SLOT_SHIFT) + (offset as u64 & (SLOT_SIZE as u64 - 1)), min))
    }

    /// `swiotlb_release_slots`.
    fn unmap(&mut self, (tlb_addr, min_align_mask): Self::Handle) {
        let offset = (tlb_addr & min_align_mask & (SLOT_SIZE as u64 - 1)) as usize;
        let index = ((tlb_addr - offset as u64 - POOL_PHYS) >> SLOT_SHIFT) as usize;
        let (area_index, mut local) = (index / self.area_slots, index % self.area_slots);
        let mut area = self.areas[area_index].lock();
        local -= area.slots[local].pad_slots;
        let nslots = nr_slots(area.slots[local].alloc_size + offset);
        let mut count =
            if local + nslots < (local + 1).next_multiple_of(SEGMENT) { area.slots[local + nslots].list } else { 0 };
        for i in (local..local + nslots).rev() {
            count += 1;
            area.slots[i] = LinuxSlot { orig_addr: INVALID_PHYS_ADDR, alloc_size: 0, list: count, pad_slots: 0 };
        }
        let mut i = local;
        while i > 0 && (i - 1) % SEGMENT != SEGMENT - 1 && area.slots[i - 1].list != 0 {
            count += 1;
            area.slots[i - 1].list = count;
            i -= 1;
        }
        area.used -= nslots;
    }

    fn used_slots(&self) -> usize {
        self.areas.iter().map(|area| area.lock().used).sum()
    }

    fn total_slots(&self) -> usize {
        self.area_slots * AREAS
    }
}
