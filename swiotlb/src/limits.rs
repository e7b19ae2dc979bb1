//! Honest limits (rule 7): the largest mapping that always succeeds on an empty pool.
//!
//! Linux answers `256 KiB - roundup(min_align_mask, 2 KiB)` and stops there. That formula
//! assumes every segment of 128 slots can hold a region of 128 slots, which is only true when the
//! region's alignment agrees with the pool base. Michael Kelley's question in the "Fix double
//! allocation in swiotlb_alloc()" thread (2024), docs/dma-contract.md#thread-double-allocation
//! (R4):
//!
//! ```text
//!  pool base  0x...1000 (page aligned, not 8 KiB aligned), alloc_align_mask = 0x1fff
//!  slot       0     1     2     3     4    ...   127   | 128 (next Linux segment)
//!  8K-aligned       .     X     .     X    ...    .    |
//!  a 128-slot region must start on an X and cannot fit before the segment ends: every
//!  request of max_mapping_size fails, even on an empty pool.
//! ```
//!
//! This pool has no segments inside an area (a region may start on any acceptable slot), and
//! the limit is computed from the pool's real shape: for every orig address the constraints
//! allow, some area of the empty pool (cut at the DMA mask and at segment-boundary windows)
//! must hold an acceptable run of `n` slots. The answer is the largest such region, minus the
//! worst-case offset, and never more than Linux's formula, so drivers see the familiar value
//! whenever the pool can honour it (252 KiB for NVMe's `0xfff`, R10).
//!
//! Correct by construction: the search accepts every placement this calculation counts on, and
//! the search is complete, so every size up to the limit succeeds on an empty pool.

use alloc::vec::Vec;

use crate::constraints::Constraints;
use crate::placement::effective_align_mask;
use crate::slots::Geometry;
use crate::{PAGE_SIZE, SLOT_SHIFT, SLOT_SIZE};

/// See the module documentation. The constraints must be valid.
pub(crate) fn max_mapping_size(geometry: &Geometry, constraints: &Constraints) -> usize {
    if constraints.min_align_mask == 0 && constraints.alloc_align_mask == 0 {
        // Rule 4 aligns mappings of a page or more to a page, smaller ones to a slot.
        let paged = guaranteed_size(geometry, constraints, PAGE_SIZE);
        if paged >= PAGE_SIZE {
            return paged;
        }
        return guaranteed_size(geometry, constraints, 1).min(PAGE_SIZE - 1);
    }
    guaranteed_size(geometry, constraints, PAGE_SIZE)
}

/// The limit for the alignment that mappings of `probe_size` bytes get.
fn guaranteed_size(geometry: &Geometry, constraints: &Constraints, probe_size: usize) -> usize {
    let align_mask = effective_align_mask(constraints, probe_size);
    let min_align_mask = constraints.min_align_mask;
    let worst_offset = min_align_mask & align_mask;
    let stride = ((align_mask | (min_align_mask & !align_mask)) >> SLOT_SHIFT) + 1;
    let align_slots = (align_mask >> SLOT_SHIFT) as usize + 1;
    let pieces = empty_pieces(geometry, constraints);
    let fits =
        |units: usize| every_phase_fits(&pieces, (units * align_slots) as u64, stride, align_slots as u64, geometry);
    let units = largest_true(geometry.segment_slots / align_slots, fits);
    let region = (units * align_slots * SLOT_SIZE) as u64;
    let segment = (geometry.segment_slots * SLOT_SIZE) as u64;
    let linux = segment.saturating_sub(round_up_to_slot(min_align_mask));
    let mut limit = region.saturating_sub(worst_offset).min(linux);
    if let Some(window) = constraints.seg_boundary_mask.checked_add(1)
        && window < SLOT_SIZE as u64
    {
        limit = limit.min(window - (min_align_mask & (window - 1)));
    }
    limit as usize
}

fn round_up_to_slot(mask: u64) -> u64 {
    mask.div_ceil(SLOT_SIZE as u64).saturating_mul(SLOT_SIZE as u64)
}

/// The largest `k` in `0..=max` with `holds(k)`, for a `holds` that is true up to some point.
fn largest_true(max: usize, holds: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, max);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if holds(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low
}

/// The runs of slots a region may occupy on an empty pool: each area, cut at the last slot
/// below the DMA mask and at every segment-boundary window edge (a region inside one window
/// keeps its buffer inside it).
fn empty_pieces(geometry: &Geometry, constraints: &Constraints) -> Vec<(u64, u64)> {
    let addressable = addressable_slots(geometry, constraints.dma_mask);
    let window_slots =
        constraints.seg_boundary_mask.checked_add(1).map(|window| window >> SLOT_SHIFT).filter(|&slots| slots >= 1);
    let mut pieces = Vec::new();
    for area in 0..geometry.areas {
        let start = (area * geometry.area_slots) as u64;
        let end = (start + geometry.area_slots as u64).min(addressable);
        let mut low = start;
        while low < end {
            let high = match window_slots {
                Some(window) => {
                    let position = (geometry.base_slot() + low) & (window - 1);
                    (low + window - position).min(end)
                }
                None => end,
            };
            pieces.push((low, high));
            low = high;
        }
    }
    pieces
}

/// Pool slots (from slot 0) that lie entirely at or below the DMA mask.
fn addressable_slots(geometry: &Geometry, dma_mask: u64) -> u64 {
    let base = geometry.dma_base.as_u64() as u128;
    let below = (dma_mask as u128 + 1).saturating_sub(base) >> SLOT_SHIFT;
    below.min(geometry.slots as u128) as u64
}

/// Whether, for every phase an orig address can demand, some piece holds `run` slots starting
/// at a slot of that phase. Phases are the multiples of `align_slots` below `stride`, counted
/// on the DMA slot number `base_slot + i`.
fn every_phase_fits(pieces: &[(u64, u64)], run: u64, stride: u64, align_slots: u64, geometry: &Geometry) -> bool {
    if run == 0 {
        return true;
    }
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for &(low, high) in pieces {
        let Some(starts) = (high - low).checked_sub(run - 1).filter(|&n| n > 0) else {
            continue;
        };
        if starts >= stride {
            return true;
        }
        let first = (geometry.base_slot() + low) & (stride - 1);
        let end = first + starts;
        covered.push((first, end.min(stride)));
        if end > stride {
            covered.push((0, end - stride));
        }
    }
    covered.sort_unstable();
    let mut needed = 0;
    for (first, end) in covered {
        if first > needed {
            return false;
        }
        needed = needed.max(end.next_multiple_of(align_slots));
    }
    needed >= stride
}
