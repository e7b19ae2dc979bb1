//! One bit per slot, sixty-four slots per step.
//!
//! Linux's search visits slots one by one and asks each "how many free slots follow you?" (the
//! per-slot `list` count). Here a bit is set for every free slot, and the search asks a whole
//! 64-bit word at once: "at which of your 64 positions does a run of `n` free slots start?"
//!
//! For `n <= 64` the answer is the AND of the word (with the next word appended) shifted by
//! 0, 1, ..., n-1 positions, computed by doubling in `log2(n)` steps:
//!
//! ```text
//! free  (slot 0 on the right)    0111 1100 1111 0110
//! free & free>>1                 0011 1000 0111 0010   runs of 2 start here
//! (that) & (that)>>2             0000 0000 0001 0000   runs of 4 start here: slot 4
//! ```
//!
//! For `n > 64` a run must begin in the free suffix of its first word (the high bits), continue
//! through whole free words and end in the free prefix (the low bits) of the last one, so a
//! few word reads give the range of starting positions.
//!
//! The caller ANDs the answer with the word's acceptable starts (alignment, phase, boundary, DMA
//! mask) and takes the lowest bit: the whole test costs the same whether the area is empty or
//! 90 % full.
//!
//! The small functions here are `#[inline]`: the allocator that calls them is generic, so its
//! code is generated in the crate that uses the pool, and each of them would otherwise be a call
//! across crates, with its result passed through memory (a map+unmap took 88 ns instead of 77 in
//! the `slot_search` benchmark, 4 MiB pool 90 % full).

use alloc::vec;
use alloc::vec::Vec;

/// The free slots on either side of a range, as [`FreeMap::run_around`] counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FreeRun {
    /// Free slots just below the range, or at least the walk's `enough` when more.
    pub below: usize,
    /// Free slots just above it, likewise.
    pub above: usize,
}

/// Bit `i % 64` of word `i / 64` is set when slot `i` is free. Bits past the end stay clear,
/// so no run can leave the area.
pub(crate) struct FreeMap {
    words: Vec<u64>,
}

impl FreeMap {
    pub fn all_free(slots: usize) -> Self {
        let mut words = vec![u64::MAX; slots.div_ceil(64)];
        if let Some(last) = words.last_mut() {
            *last = low_bits(slots - (slots.div_ceil(64) - 1) * 64);
        }
        Self { words }
    }

    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    #[inline]
    pub fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    pub fn is_free(&self, slot: usize) -> bool {
        self.word(slot / 64) >> (slot % 64) & 1 == 1
    }

    #[inline]
    pub fn mark_used(&mut self, start: usize, count: usize) {
        self.for_each_word_in(start, count, |word, mask| *word &= !mask);
    }

    #[inline]
    pub fn mark_free(&mut self, start: usize, count: usize) {
        self.for_each_word_in(start, count, |word, mask| *word |= mask);
    }

    /// Number of free slots in `[start, start + count)`.
    pub fn count_free(&self, start: usize, count: usize) -> usize {
        (start..start + count).filter(|&slot| self.is_free(slot)).count()
    }

    #[inline]
    fn for_each_word_in(&mut self, start: usize, count: usize, mut apply: impl FnMut(&mut u64, u64)) {
        let mut slot = start;
        let end = start + count;
        while slot < end {
            let bit = slot % 64;
            let width = (64 - bit).min(end - slot);
            if let Some(word) = self.words.get_mut(slot / 64) {
                apply(word, low_bits(width) << bit);
            }
            slot += width;
        }
    }

    /// The free slots just below and just above `[start, start + count)`, each counted until
    /// there are at least `enough`, so that the walks' cost does not grow with the pool (a 1 GiB
    /// pool has 8192 words to walk when nearly empty).
    #[inline]
    pub fn run_around(&self, start: usize, count: usize, enough: usize) -> FreeRun {
        FreeRun { below: self.free_before(start, enough), above: self.free_from(start + count, enough) }
    }

    /// Free slots immediately below `slot`, counted until there are at least `enough`.
    #[inline]
    fn free_before(&self, slot: usize, enough: usize) -> usize {
        let (mut index, bit) = (slot / 64, slot % 64);
        let mut found = if bit == 0 { 0 } else { (self.word(index) << (64 - bit)).leading_ones() as usize };
        if found < bit {
            return found;
        }
        while index > 0 && found < enough {
            index -= 1;
            let ones = self.word(index).leading_ones() as usize;
            found += ones;
            if ones < 64 {
                break;
            }
        }
        found
    }

    /// Free slots from `slot` upwards, counted until there are at least `enough`.
    #[inline]
    fn free_from(&self, slot: usize, enough: usize) -> usize {
        let (mut index, bit) = (slot / 64, slot % 64);
        let mut found = (self.word(index) >> bit).trailing_ones() as usize;
        if found < 64 - bit {
            return found;
        }
        while found < enough {
            index += 1;
            let ones = self.word(index).trailing_ones() as usize;
            found += ones;
            if ones < 64 {
                return found;
            }
        }
        found
    }

    /// The longest run of free slots, one word at a time.
    pub fn longest_run(&self) -> usize {
        let (mut longest, mut current) = (0, 0);
        for &word in &self.words {
            if word == u64::MAX {
                current += 64;
                continue;
            }
            longest = longest.max(current + word.trailing_ones() as usize).max(longest_inside(word));
            current = word.leading_ones() as usize;
        }
        longest.max(current)
    }

    /// The positions in word `index` at which `run` consecutive free slots start.
    #[inline]
    pub fn run_starts(&self, index: usize, run: usize) -> u64 {
        if run <= 64 { self.short_run_starts(index, run) } else { self.long_run_starts(index, run) }
    }

    #[inline]
    fn short_run_starts(&self, index: usize, run: usize) -> u64 {
        let mut all_free = self.word(index) as u128 | (self.word(index + 1) as u128) << 64;
        let mut covered = 1;
        // Once no start is left in this word, no further step can bring one back.
        while covered < run && all_free as u64 != 0 {
            let step = covered.min(run - covered);
            all_free &= all_free >> step;
            covered += step;
        }
        all_free as u64
    }

    #[inline]
    fn long_run_starts(&self, index: usize, run: usize) -> u64 {
        let free_suffix = self.word(index).leading_ones() as usize;
        if free_suffix == 0 {
            return 0;
        }
        // Enough free slots after this word for even the last start (bit 63) to be counted.
        let mut following = 0;
        let mut next = index + 1;
        while following + 1 < run {
            let word = self.word(next);
            following += word.trailing_ones() as usize;
            if word != u64::MAX {
                break;
            }
            next += 1;
        }
        // A start at bit b has 64 - b free slots in this word, then `following`.
        let first = 64 - free_suffix;
        let end = (64 + following + 1).saturating_sub(run).min(64);
        bit_range(first, end)
    }
}

/// The longest run of set bits in `word`: each AND with itself shifted shortens every run by one.
fn longest_inside(mut word: u64) -> usize {
    let mut length = 0;
    while word != 0 {
        word &= word >> 1;
        length += 1;
    }
    length
}

/// The lowest `count` bits set (`count <= 64`).
pub(crate) const fn low_bits(count: usize) -> u64 {
    if count >= 64 { u64::MAX } else { (1u64 << count) - 1 }
}

/// Bits `[start, end)` set, clipped to the word.
pub(crate) const fn bit_range(start: usize, end: usize) -> u64 {
    if start >= end || start >= 64 { 0 } else { low_bits(end) & !low_bits(start) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_starts(map: &FreeMap, slots: usize, index: usize, run: usize) -> u64 {
        (0..64)
            .filter(|bit| {
                let start = index * 64 + bit;
                start + run <= slots && (start..start + run).all(|slot| map.is_free(slot))
            })
            .fold(0, |acc, bit| acc | 1 << bit)
    }

    #[test]
    fn run_starts_match_a_slot_by_slot_check() {
        let slots = 700;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        // Dense and sparse maps: short runs everywhere, or runs of a hundred slots and more.
        for one_used_in in [3, 5, 40, 150] {
            let mut map = FreeMap::all_free(slots);
            for slot in 0..slots {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(one_used_in) {
                    map.mark_used(slot, 1);
                }
            }
            for run in [1, 2, 3, 5, 8, 31, 64, 65, 70, 100, 128, 129, 200] {
                for index in 0..map.word_count() {
                    assert_eq!(
                        map.run_starts(index, run),
                        reference_starts(&map, slots, index, run),
                        "run {run}, word {index}, one used in {one_used_in}"
                    );
                }
            }
        }
    }

    #[test]
    fn run_lengths_match_a_slot_by_slot_count() {
        let mut map = FreeMap::all_free(300);
        assert_eq!(map.longest_run(), 300);
        for used in [3, 70, 71, 200, 299] {
            map.mark_used(used, 1);
        }
        assert_eq!(map.longest_run(), 128, "72..=199");
        let run = |below, above| FreeRun { below, above };
        assert_eq!(map.run_around(100, 5, usize::MAX), run(28, 95), "72..=199");
        assert_eq!(map.run_around(4, 1, usize::MAX), run(0, 65), "4..=69");
        assert_eq!(map.run_around(0, 3, usize::MAX), run(0, 0));
        // Enough is enough: each walk stops once it has counted that many, and never reports
        // more than there are.
        let capped = map.run_around(100, 5, 8);
        assert!((8..=28).contains(&capped.below) && (8..=95).contains(&capped.above), "{capped:?}");
        let enough = map.run_around(75, 1, 8);
        assert!(enough.below == 3 && (8..=124).contains(&enough.above), "3 below, then enough above");
        map.mark_used(0, 300);
        assert_eq!(map.longest_run(), 0);
    }

    #[test]
    fn long_runs_cross_whole_words() {
        let mut map = FreeMap::all_free(256);
        assert_eq!(map.run_starts(0, 256), 1);
        assert_eq!(map.run_starts(2, 129), 0, "only 128 slots from word 2 on");
        map.mark_used(100, 1);
        assert_eq!(map.run_starts(1, 156), 0, "only 155 free slots follow slot 100");
        assert_eq!(map.run_starts(1, 130), bit_range(37, 63), "starts 101..=126");
    }
}
