//! From a request to a set of acceptable slot runs: rules 1 to 5 as arithmetic.
//!
//! A request becomes a [`Placement`]: how many slots its region needs, where inside the region
//! the buffer starts, and which first slots are acceptable. The slot search then only has to
//! find a run of free slots starting at an acceptable slot.
//!
//! # The masks, step by step (Linux 6.10 `swiotlb_tbl_map_single` semantics)
//!
//! 1. `align = alloc_align_mask | 0x7ff`: a region always starts on a slot. With no mask at all
//!    and at least one page to map, `align = 0xfff` (rule 4, the historic page alignment).
//! 2. `offset = orig & min_align_mask & align`: the bits the device interprets *and* that lie
//!    inside one alignment unit are reproduced by starting the buffer `offset` bytes into the
//!    region. This may be more than a slot: the whole slots before the buffer are pre-padding.
//! 3. `phase_mask = min_align_mask & !align`: the interpreted bits above the alignment unit can
//!    only be reproduced by picking the region itself: `region & phase_mask == orig & phase_mask`.
//! 4. `region = ALIGN(size + offset, align + 1)`, in whole slots.
//!
//! Worked example (R2/R10): NVMe behind a 64 KiB IOMMU granule, `min_align_mask = 0xfff`,
//! `alloc_align_mask = 0xffff`, `orig = 0x8_1234_5600`, 64 KiB:
//!
//! ```text
//! align      = 0xffff | 0x7ff              = 0xffff
//! offset     = 0x...5600 & 0xfff & 0xffff  = 0x600     (bit 11 is 0: no pre-padding slot)
//! phase_mask = 0xfff & !0xffff             = 0         (nothing left for the slot choice)
//! region     = ALIGN(0x10000 + 0x600, 64K) = 0x20000   = 64 slots on a 64 KiB boundary
//! DMA        = region + 0x600              → low 12 bits 0x600, as the device expects
//! ```
//!
//! Petr's case (R3), both masks `0xfff`, `orig` ending in `0xfa0`: `offset = 0xfa0`, so the
//! buffer starts in the *second* slot of a 4 KiB-aligned region, at `...fa0`. Keeping only the
//! offset within a slot (`0x7a0`) was the Linux bug.
//!
//! ```text
//!  region start (aligned to align+1)                                  region end
//!  |<------------------ ALIGN(size + offset, align + 1) -------------------->|
//!  +----------+----------+----------+----------+----------+----------+-------+
//!  | pre-pad  | pre|buffer ...............................|  post-padding    |
//!  +----------+----------+----------+----------+----------+----------+-------+
//!  |<---- offset ---->|<--------------- size --------------->|
//!             slot boundaries every 2 KiB; padding zeroed for untrusted devices
//! ```
//!
//! # Acceptable first slots
//!
//! With `i` the slot index in the pool and `base` the pool's DMA address, the region starts at
//! `base + i * 2 KiB`. Alignment and phase together say `(base/2K + i) ≡ τ (mod stride)`, with
//! `stride = ((align | phase_mask) + 1) / 2K` and `τ = (orig & phase_mask) / 2K`. Alignment is
//! measured on the DMA address, never on the slot index: a pool whose base is 4 KiB but not
//! 8 KiB aligned starts its 8 KiB-aligned regions at odd page indices (R4).
//!
//! The DMA mask bounds the last acceptable slot; the segment boundary accepts, in each window
//! of `boundary + 1` bytes, only the slots from which the buffer ends before the window does.

use crate::constraints::{Constraints, check_mask};
use crate::error::{DmaError, MaskKind};
use crate::limits::max_mapping_size;
use crate::slots::Geometry;
use crate::{PAGE_SIZE, PhysAddr, SLOT_SHIFT, SLOT_SIZE};

const SLOT_MASK: u64 = SLOT_SIZE as u64 - 1;

/// Where a request may go: the region it needs and the slots it may start at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes the caller asked for.
    pub size: usize,
    /// Bytes from the region's start to the buffer's start (pre-padding included).
    pub offset: usize,
    /// Length of the region in slots.
    pub region_slots: usize,
    /// The effective allocation alignment mask (`alloc_align_mask | 0x7ff`, or page).
    pub align_mask: u64,
    pub(crate) starts: StartRule,
}

/// The acceptable first slots, as pool slot indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StartRule {
    /// A power of two: acceptable starts repeat every `stride` slots...
    pub stride: u64,
    /// ...at pool slot indices `≡ phase (mod stride)`.
    pub phase: u64,
    /// The last acceptable start (DMA mask), as a pool slot index.
    pub last_start: usize,
    pub boundary: Option<BoundaryRule>,
}

/// Within each boundary window of `window_slots` slots, a start `i` is acceptable when
/// `(shift + i) mod window_slots <= last_position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundaryRule {
    pub window_slots: u64,
    pub shift: u64,
    pub last_position: u64,
}

impl Placement {
    /// A streaming mapping of `size` bytes at `orig` (rules 1 to 4).
    pub fn streaming(
        geometry: &Geometry,
        orig: PhysAddr,
        size: usize,
        constraints: &Constraints,
    ) -> Result<Self, DmaError> {
        constraints.validate()?;
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let align_mask = effective_align_mask(constraints, size);
        let offset = (orig.as_u64() & constraints.min_align_mask & align_mask) as usize;
        // Lessons: Linux before the "preserve DMA offsets" fix kept no offset at all; before
        // the R3 fix, only the offset within one slot.
        let offset = if cfg!(feature = "break-min-align") { 0 } else { offset };
        let offset = if cfg!(feature = "break-pre-padding") { offset & SLOT_MASK as usize } else { offset };
        let phase_mask = constraints.min_align_mask & !align_mask;
        let too_large = |region: usize| DmaError::TooLarge {
            size,
            region,
            limit: max_mapping_size(geometry, constraints),
            min_align_mask: constraints.min_align_mask,
            alloc_align_mask: constraints.alloc_align_mask,
        };
        let region_bytes = size
            .checked_add(offset)
            .and_then(|end| round_up(end as u64, align_mask))
            .ok_or_else(|| too_large(usize::MAX))?;
        let region_slots = (region_bytes >> SLOT_SHIFT) as usize;
        if region_slots > geometry.segment_slots {
            return Err(too_large(region_bytes as usize));
        }
        let boundary = boundary_rule(geometry, constraints.seg_boundary_mask, offset, size)
            .ok_or_else(|| too_large(region_bytes as usize))?;
        let stride = ((align_mask | phase_mask) >> SLOT_SHIFT) + 1;
        let wanted = (orig.as_u64() & phase_mask) >> SLOT_SHIFT;
        let phase = wanted.wrapping_sub(geometry.base_slot()) & (stride - 1);
        let last_start = last_start(geometry, constraints.dma_mask, offset, size)?;
        Ok(Self { size, offset, region_slots, align_mask, starts: StartRule { stride, phase, last_start, boundary } })
    }

    /// A coherent allocation of `size` bytes (rule 5): whole pages, aligned to the smallest
    /// power-of-two number of pages that holds them, so it never shares a page.
    pub fn coherent(geometry: &Geometry, size: usize, dma_mask: u64) -> Result<Self, DmaError> {
        check_mask(MaskKind::Dma, dma_mask)?;
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let segment_bytes = geometry.segment_slots * SLOT_SIZE;
        let too_large =
            DmaError::TooLarge { size, region: size, limit: segment_bytes, min_align_mask: 0, alloc_align_mask: 0 };
        if size > segment_bytes {
            return Err(too_large);
        }
        let pages = size.div_ceil(PAGE_SIZE);
        let align_mask = (pages.next_power_of_two() * PAGE_SIZE - 1) as u64;
        let stride = (align_mask >> SLOT_SHIFT) + 1;
        let phase = geometry.base_slot().wrapping_neg() & (stride - 1);
        let last_start = last_start(geometry, dma_mask, 0, size)?;
        Ok(Self {
            size,
            offset: 0,
            region_slots: pages * (PAGE_SIZE / SLOT_SIZE),
            align_mask,
            starts: StartRule { stride, phase, last_start, boundary: None },
        })
    }
}

/// Rule 4 folded into the alignment: no mask and at least a page means page alignment.
pub(crate) fn effective_align_mask(constraints: &Constraints, size: usize) -> u64 {
    let historic_page = constraints.min_align_mask == 0 && constraints.alloc_align_mask == 0 && size >= PAGE_SIZE;
    // Lessons: the page alignment callers relied on, and alloc_align_mask, each dropped.
    let historic_page = historic_page && !cfg!(feature = "break-page-alignment");
    let alloc_align_mask = if cfg!(feature = "break-alloc-align") { 0 } else { constraints.alloc_align_mask };
    if historic_page { PAGE_SIZE as u64 - 1 } else { alloc_align_mask | SLOT_MASK }
}

fn round_up(value: u64, mask: u64) -> Option<u64> {
    value.checked_add(mask).map(|v| v & !mask)
}

/// The segment-boundary rule for a buffer `offset` bytes into its region, or `None` when the
/// buffer cannot avoid crossing a boundary wherever it goes. `Some(None)` means no restriction.
fn boundary_rule(geometry: &Geometry, boundary_mask: u64, offset: usize, size: usize) -> Option<Option<BoundaryRule>> {
    if boundary_mask == u64::MAX {
        return Some(None);
    }
    let window = boundary_mask + 1;
    let size = size as u64;
    if window <= SLOT_SIZE as u64 {
        // Every slot starts on a window boundary: only the offset decides.
        return ((offset as u64 & boundary_mask) + size <= window).then_some(None);
    }
    let in_slot = offset as u64 & SLOT_MASK;
    let last_byte_room = window.checked_sub(size + in_slot)?;
    let window_slots = window >> SLOT_SHIFT;
    let last_position = last_byte_room >> SLOT_SHIFT;
    if last_position + 1 >= window_slots {
        return Some(None);
    }
    let pre_slots = (offset >> SLOT_SHIFT) as u64;
    let shift = geometry.base_slot().wrapping_add(pre_slots) & (window_slots - 1);
    Some(Some(BoundaryRule { window_slots, shift, last_position }))
}

/// The last pool slot at which the region may start so that the buffer's last byte is still
/// at or below the DMA mask.
fn last_start(geometry: &Geometry, dma_mask: u64, offset: usize, size: usize) -> Result<usize, DmaError> {
    let unaddressable = DmaError::Unaddressable { size, dma_mask, pool_dma_start: geometry.dma_base };
    let lowest_last_byte = geometry.dma_base.as_u64() as u128 + offset as u128 + size as u128 - 1;
    let room = (dma_mask as u128).checked_sub(lowest_last_byte).ok_or(unaddressable)?;
    let last = (room >> SLOT_SHIFT).min(geometry.slots as u128 - 1);
    Ok(last as usize)
}
