//! The slot allocator: areas, cursors and the word-at-a-time search.
//!
//! The pool's slots are split into `areas` equal areas (a power of two). Each area has its own
//! lock, free map and search cursor, so CPUs that start in different areas do not contend, and
//! a region never spans two areas (as in Linux).
//!
//! ```text
//!  pool:   | area 0                  | area 1                  | area 2 ...
//!  slots:  |##..####....#...|........|#######.........|........|
//!                   ^ cursor of area 0      ^ cursor of area 1
//! ```
//!
//! A search starts at the area's cursor (where the last region ended: allocations spread out
//! instead of piling up at the front), visits every word once, wrapping around, and stops at the
//! first acceptable start whose run of free slots is long enough. Because every start position
//! of the area is considered, the search is complete: if a run that satisfies every constraint
//! exists in some area, it is found. Because the loop visits each word of each area at most once,
//! it terminates (rule 8), and because it works a word at a time, its cost does not grow with
//! how full the pool is.

use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use spin::{Mutex, MutexGuard};

use crate::error::PoolError;
use crate::freemap::{FreeMap, bit_range, low_bits};
use crate::placement::{BoundaryRule, Placement, StartRule};
use crate::{DmaAddr, PAGE_SIZE, SLOT_SHIFT, SLOT_SIZE};

/// The shape of a pool: where it sits on the bus and how its slots are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// DMA address of slot 0.
    pub dma_base: DmaAddr,
    /// Slots in the pool.
    pub slots: usize,
    /// Areas (each with its own lock and cursor).
    pub areas: usize,
    /// Slots per area.
    pub area_slots: usize,
    /// Largest region, in slots (Linux: `IO_TLB_SEGSIZE`, 128).
    pub segment_slots: usize,
}

impl Geometry {
    /// Every size this computes is checked, so that no input overflows (a panic with overflow
    /// checks on, a wrong size without): the segment's bytes, and the pool's bytes at
    /// `dma_base`, which must end below the top of the 64-bit DMA address space (as
    /// `BouncePool::new` requires) so that [`Self::slot_dma`] can add any slot's offset to the
    /// base.
    pub fn new(dma_base: DmaAddr, slots: usize, areas: usize, segment_slots: usize) -> Result<Self, PoolError> {
        if !areas.is_power_of_two() || !slots.is_multiple_of(areas) {
            return Err(PoolError::BadAreaCount { areas, slots });
        }
        // Checked: a segment whose size in bytes does not fit a `usize` is a bad request, not an
        // overflow (which would wrap to a plausible size in a release build).
        let segment_bytes = segment_slots.checked_mul(SLOT_SIZE);
        if !segment_slots.is_power_of_two() || segment_bytes.is_none_or(|bytes| bytes < PAGE_SIZE) {
            return Err(PoolError::BadSegmentSlots { segment_slots });
        }
        // In 128 bits, where neither the product nor the sum can overflow. A pool of 2^53
        // slots or more has more bytes than a `u64` counts; it wraps whatever its base, and
        // its size is reported as the largest a `u64` holds.
        let bytes = (slots as u128) << SLOT_SHIFT;
        if u128::from(dma_base.as_u64()) + bytes > u128::from(u64::MAX) {
            let size = u64::try_from(bytes).unwrap_or(u64::MAX);
            return Err(PoolError::DmaRangeWraps { dma: dma_base, size });
        }
        // The pool's bytes fit a `u64` now.
        let size = bytes as u64;
        let area_slots = slots / areas;
        if area_slots == 0 || u32::try_from(area_slots).is_err() {
            return Err(PoolError::TooSmall { size, areas });
        }
        Ok(Self { dma_base, slots, areas, area_slots, segment_slots })
    }

    /// The DMA address of slot 0 counted in slots; alignment is measured on it.
    pub const fn base_slot(&self) -> u64 {
        self.dma_base.as_u64() >> SLOT_SHIFT
    }

    /// The DMA address of pool slot `slot`.
    pub const fn slot_dma(&self, slot: usize) -> DmaAddr {
        DmaAddr::new(self.dma_base.as_u64() + ((slot as u64) << SLOT_SHIFT))
    }

    /// The slot holding `dma`, if it lies in the pool.
    pub fn slot_of(&self, dma: DmaAddr) -> Option<usize> {
        let slot = dma.offset_from(self.dma_base)? >> SLOT_SHIFT;
        (slot < self.slots as u64).then_some(slot as usize)
    }
}

/// A run of slots handed out by [`SlotAllocator::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// First slot of the region, as a pool slot index.
    pub first_slot: usize,
    /// How many slots the region takes.
    pub slots: usize,
}

/// Words of the free map per group of the search's summary (512 slots, 1 MiB of pool). Smaller
/// groups skip more precisely, larger ones are fewer to step over: in the `slot_search`
/// benchmark at 90 % occupancy, 8 words were fastest over pools of 4 MiB to 1 GiB (64 words let
/// a 16 MiB pool's areas, 32 words each, go unsummarised; 4 words made a 1 GiB pool's search
/// step over thousands of groups).
const GROUP_WORDS: usize = 8;

/// One area: its free map and cursor, plus the bookkeeping `T` its owner keeps per area, under
/// the same lock.
pub struct Area<T> {
    first_slot: usize,
    slots: usize,
    free: FreeMap,
    cursor: usize,
    used: usize,
    /// No free run is longer than this: requests for more fail without a search. Allocation
    /// keeps it true; release raises it to the run it recreates (or to at least a segment: no
    /// request is longer, so the walk stops there); a failed search makes it exact.
    longest_free_bound: usize,
    /// The longest region a request can ask for, in slots.
    segment_slots: usize,
    /// Per group of [`GROUP_WORDS`] words of the free map: from no slot of the group do more
    /// free slots follow than this (counted up to `segment_slots`), whether a run begins there
    /// or began in an earlier group. The search skips a group whose bound is below the request,
    /// so that in a large, fragmented pool it does not walk every word between the cursor and
    /// the next fit. A release raises the bound of every group whose slots it gave longer runs;
    /// a search that finds no run of `n` starting anywhere in a group lowers it below `n`.
    group_bounds: Vec<usize>,
    /// The owner's bookkeeping for this area (the pool's records of live regions).
    pub book: T,
}

impl<T> Area<T> {
    /// Pool slot index of the area's first slot.
    pub fn first_slot(&self) -> usize {
        self.first_slot
    }

    /// Give back `slots` slots starting at pool slot `first_slot` (which must lie in this area
    /// and be in use: callers release exactly what they reserved).
    pub fn release(&mut self, first_slot: usize, slots: usize) {
        let local = first_slot - self.first_slot;
        self.free.mark_free(local, slots);
        self.used -= slots;
        // Counted up to a segment on each side: no request is longer, so no bound needs more.
        let segment = self.segment_slots;
        let around = self.free.run_around(local, slots, segment);
        self.longest_free_bound = self.longest_free_bound.max(around.below + slots + around.above);
        self.raise_group_bounds(local - around.below.min(segment - 1), local + slots, local + slots + around.above);
    }

    /// The slots from `from` to `run_end` are free, one run, since slots up to `released_end`
    /// were released: a start in `[from, released_end)` now begins a longer run than before,
    /// `run_end - start` slots, and every group holding such starts may need a higher bound.
    /// Starts further down already began runs of a segment or more; starts further up are
    /// unchanged. The run may reach back into earlier groups, or the release cross into a
    /// later one: each is raised for its own first start in the run.
    fn raise_group_bounds(&mut self, from: usize, released_end: usize, run_end: usize) {
        let group_slots = 64 * GROUP_WORDS;
        for group in from / group_slots..=(released_end - 1) / group_slots {
            let first_start = from.max(group * group_slots);
            let bound = &mut self.group_bounds[group];
            *bound = (*bound).max((run_end - first_start).min(self.segment_slots));
        }
    }

    fn reserve(&mut self, placement: &Placement) -> Option<Reserved> {
        let run = placement.region_slots;
        if run > self.slots - self.used || run > self.longest_free_bound {
            return None;
        }
        let filter = StartFilter::for_area(&placement.starts, self.first_slot)?;
        let Some(local) = self.find_start(&filter, run) else {
            self.longest_free_bound = self.free.longest_run();
            return None;
        };
        self.free.mark_used(local, run);
        self.used += run;
        self.cursor = (local + run) % self.slots;
        Some(Reserved { first_slot: self.first_slot + local, slots: run })
    }

    /// First acceptable start at or after the cursor, wrapping once around the area.
    fn find_start(&mut self, filter: &StartFilter, run: usize) -> Option<usize> {
        let words = self.free.word_count();
        let (cursor_word, cursor_bit) = ((self.cursor / 64) % words, self.cursor % 64);
        // Whether every word of the current group was looked at whole and held no run of `run`
        // slots (acceptable or not): then no such run starts in the group.
        let mut group_has_none = false;
        let mut step = 0;
        while step <= words {
            // `cursor_word + step` wrapped once around the area, without a division per word.
            let index = match cursor_word + step {
                past if past >= words => past - words,
                index => index,
            };
            let group = index / GROUP_WORDS;
            if index.is_multiple_of(GROUP_WORDS) && step > 0 && step < words {
                if self.group_bounds[group] < run {
                    // No run long enough starts in this group: on to the next one.
                    step += GROUP_WORDS.min(words - index);
                    continue;
                }
                group_has_none = true;
            }
            let window = match step {
                0 => !low_bits(cursor_bit),
                _ if step == words => low_bits(cursor_bit),
                _ => u64::MAX,
            };
            if let Some(start) = self.look_in(index, window, filter, run, &mut group_has_none) {
                return Some(start);
            }
            let last_of_group = index % GROUP_WORDS == GROUP_WORDS - 1 || index == words - 1;
            if last_of_group && group_has_none && step < words {
                self.group_bounds[group] = self.group_bounds[group].min(run - 1);
            }
            step += 1;
        }
        None
    }

    /// The first acceptable start of a run of `run` slots in word `index` (within `window`);
    /// clears `none_here` if the word holds such a run at all, acceptable or not.
    fn look_in(
        &self,
        index: usize,
        window: u64,
        filter: &StartFilter,
        run: usize,
        none_here: &mut bool,
    ) -> Option<usize> {
        // A word with no free slot in the window is ruled out before any mask is built; the run
        // test itself stops as soon as no start is left.
        if self.free.word(index) & window == 0 {
            return None;
        }
        let starts = self.free.run_starts(index, run) & window;
        if starts == 0 {
            return None;
        }
        *none_here = false;
        let acceptable = starts & filter.acceptable(index);
        (acceptable != 0).then(|| index * 64 + acceptable.trailing_zeros() as usize)
    }
}

/// The acceptable starts of one area, as a 64-bit mask per word of its free map.
struct StartFilter {
    /// Acceptable starts repeat every `stride` slots, at local indices `≡ phase`.
    stride: u64,
    phase: u64,
    /// For `stride <= 64` the same mask fits every word.
    phase_pattern: Option<u64>,
    boundary: Option<LocalBoundary>,
    last_local: usize,
}

enum LocalBoundary {
    /// Windows of at most 64 slots divide a word evenly: one mask fits every word.
    Pattern(u64),
    /// Larger windows: at most one window edge falls inside a word.
    Wide { window_slots: u64, shift: u64, last_position: u64 },
}

impl StartFilter {
    #[inline]
    fn for_area(rule: &StartRule, area_first: usize) -> Option<Self> {
        let last_local = rule.last_start.checked_sub(area_first)?;
        let stride = rule.stride;
        let phase = rule.phase.wrapping_sub(area_first as u64) & (stride - 1);
        let phase_pattern = (stride <= 64).then(|| every_nth_bit(stride) << phase);
        let boundary = rule.boundary.map(|b| LocalBoundary::new(&b, area_first));
        Some(Self { stride, phase, phase_pattern, boundary, last_local })
    }

    #[inline]
    fn acceptable(&self, word: usize) -> u64 {
        self.phase_mask(word) & self.boundary_mask(word) & self.dma_mask_mask(word)
    }

    #[inline]
    fn phase_mask(&self, word: usize) -> u64 {
        match self.phase_pattern {
            Some(pattern) => pattern,
            None => {
                let bit = self.phase.wrapping_sub(word as u64 * 64) & (self.stride - 1);
                if bit < 64 { 1 << bit } else { 0 }
            }
        }
    }

    #[inline]
    fn boundary_mask(&self, word: usize) -> u64 {
        match self.boundary {
            None => u64::MAX,
            Some(LocalBoundary::Pattern(mask)) => mask,
            Some(LocalBoundary::Wide { window_slots, shift, last_position }) => {
                // Position in its window of the word's first slot; the window ends `to_edge`
                // slots later, and the next window starts there at position 0.
                let position = (shift + word as u64 * 64) & (window_slots - 1);
                let to_edge = window_slots - position;
                let in_this_window =
                    if position <= last_position { bit_range(0, (last_position - position + 1) as usize) } else { 0 };
                let in_next_window = if to_edge < 64 {
                    bit_range(to_edge as usize, (to_edge + last_position + 1).min(64) as usize)
                } else {
                    0
                };
                in_this_window | in_next_window
            }
        }
    }

    #[inline]
    fn dma_mask_mask(&self, word: usize) -> u64 {
        match self.last_local.checked_sub(word * 64) {
            Some(last_bit) => low_bits(last_bit + 1),
            None => 0,
        }
    }
}

impl LocalBoundary {
    fn new(rule: &BoundaryRule, area_first: usize) -> Self {
        let window_slots = rule.window_slots;
        let shift = (rule.shift + area_first as u64) & (window_slots - 1);
        if window_slots <= 64 {
            let window_starts = u128::MAX / ((1u128 << window_slots) - 1);
            let acceptable = window_starts * ((1u128 << (rule.last_position + 1)) - 1);
            Self::Pattern((acceptable >> shift) as u64)
        } else {
            Self::Wide { window_slots, shift, last_position: rule.last_position }
        }
    }
}

/// Bits 0, n, 2n, ... set (`n` a power of two, at most 64).
#[inline]
fn every_nth_bit(n: u64) -> u64 {
    if n == 64 { 1 } else { u64::MAX / ((1u64 << n) - 1) }
}

/// Which area a search tries first; it then tries the others in turn, wrapping around.
#[derive(Clone, Copy, Debug)]
pub enum FirstArea {
    /// Each search one area further than the last: a pool that knows nothing of CPUs spreads
    /// its regions over the areas.
    Rotating,
    /// The area of the CPU that searches: the function returns its number, taken modulo the
    /// area count (Linux: `raw_smp_processor_id() & (nareas - 1)`). CPUs mapping at once then
    /// take different areas' locks, and a CPU finds its own last region's cursor.
    OfCpu(fn() -> usize),
}

/// Slots grouped in areas, each behind its own lock with bookkeeping of type `T`.
pub struct SlotAllocator<T> {
    geometry: Geometry,
    areas: Box<[Mutex<Area<T>>]>,
    first_area: FirstArea,
    next_area: AtomicUsize,
}

impl<T> SlotAllocator<T> {
    /// An allocator with every slot free; `book` builds each area's bookkeeping from its
    /// slot count.
    pub fn new(geometry: Geometry, mut book: impl FnMut(usize) -> T) -> Self {
        let areas = (0..geometry.areas)
            .map(|area| {
                Mutex::new(Area {
                    first_slot: area * geometry.area_slots,
                    slots: geometry.area_slots,
                    free: FreeMap::all_free(geometry.area_slots),
                    cursor: 0,
                    used: 0,
                    longest_free_bound: geometry.area_slots,
                    segment_slots: geometry.segment_slots,
                    group_bounds: vec![geometry.segment_slots; geometry.area_slots.div_ceil(64 * GROUP_WORDS)],
                    book: book(geometry.area_slots),
                })
            })
            .collect();
        Self { geometry, areas, first_area: FirstArea::Rotating, next_area: AtomicUsize::new(0) }
    }

    /// The same allocator, its searches starting as `first_area` says.
    pub fn first_area(self, first_area: FirstArea) -> Self {
        Self { first_area, ..self }
    }

    /// How the pool is cut.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Find and take a run of slots for `placement`, then run `record` on the area's
    /// bookkeeping while its lock is still held. Areas are tried in turn from the one
    /// [`FirstArea`] picks, so a search that fails has looked at every area.
    pub fn reserve<R>(&self, placement: &Placement, record: impl FnOnce(&mut Area<T>, Reserved) -> R) -> Option<R> {
        let count = self.areas.len();
        let start = match self.first_area {
            FirstArea::Rotating => self.next_area.fetch_add(1, Ordering::Relaxed),
            FirstArea::OfCpu(this_cpu) => this_cpu(),
        } & (count - 1);
        for step in 0..count {
            let mut area = self.areas[(start + step) & (count - 1)].lock();
            if let Some(reserved) = area.reserve(placement) {
                return Some(record(&mut area, reserved));
            }
        }
        None
    }

    /// Lock the area that holds pool slot `slot`.
    pub fn lock_area_of(&self, slot: usize) -> Option<MutexGuard<'_, Area<T>>> {
        let area = self.areas.get(slot / self.geometry.area_slots)?;
        Some(area.lock())
    }

    /// Slots in use, summed over the areas.
    pub fn used_slots(&self) -> usize {
        self.areas.iter().map(|area| area.lock().used).sum()
    }

    /// A compact picture of the pool, `columns` characters per area: `.` all free, `#` all in
    /// use, `+` partly used; areas separated by `|`.
    pub fn occupancy_map(&self, columns: usize) -> String {
        let columns = columns.clamp(1, self.geometry.area_slots);
        let mut picture = String::from("[");
        for (index, area) in self.areas.iter().enumerate() {
            if index > 0 {
                picture.push('|');
            }
            let area = area.lock();
            let slots = self.geometry.area_slots;
            for column in 0..columns {
                let (start, end) = (column * slots / columns, (column + 1) * slots / columns);
                let free = area.free.count_free(start, end - start);
                picture.push(match free {
                    0 => '#',
                    _ if free == end - start => '.',
                    _ => '+',
                });
            }
        }
        picture.push(']');
        picture
    }

    /// Whether each pool slot is free, in pool order (for tests and teaching traces).
    pub fn slot_states(&self) -> Vec<bool> {
        self.areas
            .iter()
            .flat_map(|area| {
                let area = area.lock();
                (0..self.geometry.area_slots).map(|slot| area.free.is_free(slot)).collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest segment Linux allows, and a valid pool of one area.
    const SEGMENT: usize = PAGE_SIZE / SLOT_SIZE;

    // `cargo test` builds with overflow checks on: each case below would panic if any size
    // were computed unchecked, and a release build would wrap it to a plausible number.

    #[test]
    fn segment_sizes_whose_bytes_overflow_are_refused() {
        let base = DmaAddr::new(0x4000_0000);
        for segment_slots in [1 << 53, 1 << 62, 1 << 63] {
            assert_eq!(Geometry::new(base, 1024, 1, segment_slots), Err(PoolError::BadSegmentSlots { segment_slots }));
        }
    }

    #[test]
    fn pools_that_pass_the_top_of_the_dma_space_are_refused() {
        // Two slots end one slot below 2^64: the last slot's address is computable. A third
        // would end at 2^64, past the last address a `u64` holds.
        let top = DmaAddr::new(0u64.wrapping_sub(3 * SLOT_SIZE as u64));
        let geometry = Geometry::new(top, 2, 1, SEGMENT).unwrap();
        assert_eq!(geometry.slot_dma(1), DmaAddr::new(0u64.wrapping_sub(2 * SLOT_SIZE as u64)));
        let three = 3 * SLOT_SIZE as u64;
        assert_eq!(Geometry::new(top, 3, 1, SEGMENT), Err(PoolError::DmaRangeWraps { dma: top, size: three }));
        // More slots than 64 bits of bytes: refused whatever the base, without overflowing.
        for (slots, areas) in [(1 << 53, 1 << 22), (1 << 60, 1 << 30), (usize::MAX - (usize::MAX >> 1), 1 << 32)] {
            let refused = Geometry::new(DmaAddr::new(0), slots, areas, SEGMENT);
            assert_eq!(
                refused,
                Err(PoolError::DmaRangeWraps { dma: DmaAddr::new(0), size: u64::MAX }),
                "{slots} slots"
            );
        }
    }

    #[test]
    fn area_sizes_are_checked_on_exact_sizes() {
        let base = DmaAddr::new(0);
        assert_eq!(Geometry::new(base, 0, 1, SEGMENT), Err(PoolError::TooSmall { size: 0, areas: 1 }));
        // One area of 2^32 slots: more than an area's `u32` slot indices count.
        let slots = 1 << 32;
        let size = (slots as u64) << SLOT_SHIFT;
        assert_eq!(Geometry::new(base, slots, 1, SEGMENT), Err(PoolError::TooSmall { size, areas: 1 }));
    }
}

/// The group summary of the search, in an area large enough to have several groups.
#[cfg(test)]
mod group_tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::{Constraints, PhysAddr};

    /// xorshift, for a reproducible fragmentation.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// The most free slots that follow any slot of `group` (itself included), counted up to
    /// `cap`: a run that began in an earlier group counts from the group's first slot.
    fn longest_starting_in(area: &Area<()>, group: usize, cap: usize) -> usize {
        let first = group * 64 * GROUP_WORDS;
        let last = (first + 64 * GROUP_WORDS).min(area.slots);
        (first..last)
            .filter(|&slot| area.free.is_free(slot) && (slot == first || !area.free.is_free(slot - 1)))
            .map(|slot| (slot..area.slots).take_while(|&s| area.free.is_free(s)).take(cap).count())
            .max()
            .unwrap_or(0)
    }

    /// Whether any start in the area takes `placement` (checked slot by slot).
    fn any_fit(area: &Area<()>, placement: &Placement) -> bool {
        let run = placement.region_slots;
        (0..=area.slots.saturating_sub(run)).any(|start| {
            let rule = &placement.starts;
            let accepted = StartFilter::for_area(rule, area.first_slot)
                .is_some_and(|filter| filter.acceptable(start / 64) & (1 << (start % 64)) != 0);
            accepted && (start..start + run).all(|slot| area.free.is_free(slot))
        })
    }

    /// A release whose run crosses from one group into the next raises the next group's bound
    /// too: there the only aligned start may lie. Raising only the group where the run begins
    /// left the next one skipped, and a fit refused.
    #[test]
    fn a_run_released_across_groups_is_found_from_the_later_group() {
        let group_slots = 64 * GROUP_WORDS;
        let geometry = Geometry::new(DmaAddr::new(0x8000_0000), 2 * group_slots, 1, 128).unwrap();
        let allocator = SlotAllocator::new(geometry, |_| ());
        // 32 KiB aligned to 32 KiB: 16 slots starting on a multiple of 16.
        let aligned = Constraints::NONE.with_alloc_align_mask(0x7fff);
        let request = Placement::streaming(&geometry, PhysAddr::new(0x4000_0000), 32 << 10, &aligned).unwrap();
        {
            let mut area = allocator.lock_area_of(0).unwrap();
            area.free.mark_used(0, 2 * group_slots);
            area.used = 2 * group_slots;
            // Every fourth slot of the second group free: room enough in all, but a search for
            // 16 in a row looks at that group whole, finds none, and lowers its bound.
            for lone in (group_slots + 32..2 * group_slots).step_by(4) {
                area.release(lone, 1);
            }
        }
        assert_eq!(allocator.reserve(&request, |_, reserved| reserved), None);
        assert!(allocator.lock_area_of(0).unwrap().group_bounds[1] < 16);
        // Free from 8 slots before the second group to 20 slots into it: the run begins in the
        // first group, where its aligned start (group_slots - 16) is not free.
        let released = group_slots - 8;
        allocator.lock_area_of(0).unwrap().release(released, 28);
        let found = allocator.reserve(&request, |_, reserved| reserved);
        assert_eq!(found, Some(Reserved { first_slot: group_slots, slots: 16 }));
    }

    #[test]
    fn skipping_groups_never_misses_a_fit_and_the_bounds_stay_bounds() {
        // 4 groups in one area: 16384 slots, a 32 MiB pool.
        let geometry = Geometry::new(DmaAddr::new(0x8000_0000), 4 * 64 * 64 * GROUP_WORDS / 64, 1, 128).unwrap();
        let allocator = SlotAllocator::new(geometry, |_| ());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<Reserved> = Vec::new();
        for step in 0..40_000 {
            let size = [512usize, 2048, 8192, 65536, 200_000][rng.below(5) as usize];
            let constraints = match rng.below(3) {
                0 => Constraints::NONE.with_min_align_mask(0xfff),
                1 => Constraints::NONE.with_alloc_align_mask(0x3fff),
                _ => Constraints::NONE,
            };
            let orig = PhysAddr::new(0x4000_0000 + rng.below(1 << 20));
            let placement = Placement::streaming(&geometry, orig, size, &constraints).unwrap();
            // Keep the area around 90 % full, with holes everywhere.
            if allocator.used_slots() < geometry.slots * 9 / 10 || live.is_empty() || rng.below(2) == 0 {
                match allocator.reserve(&placement, |_, reserved| reserved) {
                    Some(reserved) => live.push(reserved),
                    None => {
                        let area = allocator.lock_area_of(0).unwrap();
                        assert!(!any_fit(&area, &placement), "step {step}: refused, yet a fit exists");
                    }
                }
            } else {
                let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
                allocator.lock_area_of(victim.first_slot).unwrap().release(victim.first_slot, victim.slots);
            }
            if step % 500 == 0 {
                let area = allocator.lock_area_of(0).unwrap();
                for (group, &bound) in area.group_bounds.iter().enumerate() {
                    let longest = longest_starting_in(&area, group, area.segment_slots);
                    assert!(
                        longest <= bound,
                        "step {step}: group {group} has a run of {longest}, its bound says {bound}"
                    );
                }
            }
        }
    }
}
