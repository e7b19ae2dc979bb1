//! Typed refusals (rule 11).
//!
//! Every request the pool cannot or will not serve comes back as a value that says what was asked,
//! what limit stood in the way and which masks were in force, so that the message alone lets a
//! person understand the refusal. A refusal never changes the pool: the checks all happen before
//! the first slot is touched.

use core::fmt;

use crate::{DmaAddr, PhysAddr};

/// Which of the four constraint masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// `min_align_mask`.
    MinAlign,
    /// `alloc_align_mask`.
    AllocAlign,
    /// `dma_mask`.
    Dma,
    /// `seg_boundary_mask`.
    SegmentBoundary,
}

/// What a live region of the pool was created for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// `map` / `unmap`.
    Streaming,
    /// `alloc` / `free`.
    Coherent,
}

/// A request the pool refused. The pool is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// A mapping, allocation or sync of zero bytes.
    ZeroSize,
    /// A mask that is not of the form `2^n - 1`.
    InvalidMask {
        /// Which mask.
        kind: MaskKind,
        /// Its value.
        value: u64,
    },
    /// The request can never fit, on any pool state: its region (buffer, pre-padding and
    /// alignment round-up) exceeds the segment size, or the buffer cannot avoid crossing the
    /// segment boundary. `limit` is `max_mapping_size` under the same constraints.
    TooLarge {
        /// The buffer's size.
        size: usize,
        /// The region it would need, in bytes.
        region: usize,
        /// `max_mapping_size` under the same constraints.
        limit: usize,
        /// The request's `min_align_mask`.
        min_align_mask: u64,
        /// The request's `alloc_align_mask`.
        alloc_align_mask: u64,
    },
    /// No run of free slots satisfies every constraint right now (pool full or fragmented).
    NoSpace {
        /// The buffer's size.
        size: usize,
        /// The slots its region needs.
        region_slots: usize,
        /// The slots free in the whole pool, scattered.
        free_slots: usize,
        /// The request's `min_align_mask`.
        min_align_mask: u64,
        /// The request's `alloc_align_mask`.
        alloc_align_mask: u64,
    },
    /// Even the lowest possible placement in the pool ends above the device's DMA mask.
    Unaddressable {
        /// The buffer's size.
        size: usize,
        /// The device's DMA mask.
        dma_mask: u64,
        /// Where the pool starts, as devices see it.
        pool_dma_start: DmaAddr,
    },
    /// The CPU cannot reach the caller's buffer (or it wraps past the top of the address space).
    BufferUnreachable {
        /// The buffer's physical address.
        orig: PhysAddr,
        /// Its size.
        size: usize,
    },
    /// No live mapping or allocation starts or lies at this address.
    UnknownAddress {
        /// The address given.
        dma: DmaAddr,
    },
    /// The address lies inside a live region but is not the address `map`/`alloc` returned.
    NotRegionStart {
        /// The address given.
        dma: DmaAddr,
        /// The address `map` or `alloc` returned for that region.
        region_start: DmaAddr,
    },
    /// Unmap or free with a size other than the one mapped.
    SizeMismatch {
        /// The address given.
        dma: DmaAddr,
        /// The size it was mapped or allocated with.
        mapped: usize,
        /// The size given now.
        given: usize,
    },
    /// A sync that reaches outside the buffer it names.
    OutOfRange {
        /// Where the sync starts.
        dma: DmaAddr,
        /// How long it is.
        size: usize,
        /// The buffer it names.
        buffer: DmaAddr,
        /// That buffer's size.
        buffer_size: usize,
    },
    /// `unmap` of a coherent allocation, or `free` of a streaming mapping.
    WrongKind {
        /// The address given.
        dma: DmaAddr,
        /// The kind the call handles.
        expected: RegionKind,
        /// The kind the region is.
        found: RegionKind,
    },
}

impl DmaError {
    /// The statistics bucket of this refusal.
    pub const fn reason(&self) -> FailureReason {
        match self {
            Self::NoSpace { .. } => FailureReason::NoSpace,
            Self::TooLarge { .. } => FailureReason::TooLarge,
            Self::Unaddressable { .. } => FailureReason::Unaddressable,
            Self::ZeroSize | Self::InvalidMask { .. } | Self::BufferUnreachable { .. } => FailureReason::BadRequest,
            Self::UnknownAddress { .. }
            | Self::NotRegionStart { .. }
            | Self::SizeMismatch { .. }
            | Self::OutOfRange { .. }
            | Self::WrongKind { .. } => FailureReason::BadHandle,
        }
    }
}

/// Refusals grouped the way the statistics count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No room right now.
    NoSpace,
    /// Too large for any pool state.
    TooLarge,
    /// Out of the device's DMA mask.
    Unaddressable,
    /// Bad arguments to `map`/`alloc`: size 0, bad mask, unreachable buffer.
    BadRequest,
    /// Bad arguments to `unmap`/`sync`/`free`: an address or size that names no live buffer.
    BadHandle,
}

impl fmt::Display for MaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MinAlign => "min_align_mask",
            Self::AllocAlign => "alloc_align_mask",
            Self::Dma => "dma_mask",
            Self::SegmentBoundary => "seg_boundary_mask",
        })
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Streaming => "streaming mapping",
            Self::Coherent => "coherent allocation",
        })
    }
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSize => write!(f, "a DMA buffer of zero bytes"),
            Self::InvalidMask { kind, value } => {
                write!(f, "{kind} {value:#x} is not of the form 2^n - 1")
            }
            Self::TooLarge { size, region, limit, min_align_mask, alloc_align_mask } => write!(
                f,
                "{size} bytes need a {region}-byte region, which no pool state can hold \
                 (max_mapping_size {limit}, min_align_mask {min_align_mask:#x}, \
                 alloc_align_mask {alloc_align_mask:#x})"
            ),
            Self::NoSpace { size, region_slots, free_slots, min_align_mask, alloc_align_mask } => {
                write!(
                    f,
                    "no run of {region_slots} free slots for {size} bytes satisfies \
                     min_align_mask {min_align_mask:#x} and alloc_align_mask \
                     {alloc_align_mask:#x} ({free_slots} slots free)"
                )
            }
            Self::Unaddressable { size, dma_mask, pool_dma_start } => write!(
                f,
                "{size} bytes cannot sit below dma_mask {dma_mask:#x}: the pool starts at \
                 {pool_dma_start}"
            ),
            Self::BufferUnreachable { orig, size } => {
                write!(f, "the CPU cannot reach {size} bytes at {orig}")
            }
            Self::UnknownAddress { dma } => write!(f, "no live DMA buffer at {dma}"),
            Self::NotRegionStart { dma, region_start } => {
                write!(f, "{dma} lies inside the buffer that starts at {region_start}")
            }
            Self::SizeMismatch { dma, mapped, given } => {
                write!(f, "the buffer at {dma} has {mapped} bytes, not {given}")
            }
            Self::OutOfRange { dma, size, buffer, buffer_size } => {
                write!(f, "{size} bytes at {dma} reach outside the buffer [{buffer}, +{buffer_size})")
            }
            Self::WrongKind { dma, expected, found } => {
                write!(f, "{dma} is a {found}, not a {expected}")
            }
        }
    }
}

impl core::error::Error for DmaError {}

/// Why a pool could not be built from the memory it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// Fewer bytes than one slot per area.
    TooSmall {
        /// The bytes given.
        size: u64,
        /// The areas asked for.
        areas: usize,
    },
    /// The size is not a whole number of 2 KiB slots.
    PartialSlot {
        /// The bytes given.
        size: u64,
    },
    /// The physical or DMA base is not on a 2 KiB slot boundary.
    MisalignedBase {
        /// The physical base.
        phys: PhysAddr,
        /// The DMA base.
        dma: DmaAddr,
    },
    /// DMA and physical bases differ by a non-multiple of the page size, so "page-aligned"
    /// would mean different things to the device and to the CPU.
    BusOffsetNotPageMultiple {
        /// The physical base.
        phys: PhysAddr,
        /// The DMA base.
        dma: DmaAddr,
    },
    /// The pool's DMA range wraps past the top of the address space.
    DmaRangeWraps {
        /// The DMA base.
        dma: DmaAddr,
        /// The pool's size.
        size: u64,
    },
    /// The area count must be a power of two that divides the slot count.
    BadAreaCount {
        /// The areas asked for.
        areas: usize,
        /// The pool's slots.
        slots: usize,
    },
    /// The segment size (largest region, in slots) must be a power of two, at least one page.
    BadSegmentSlots {
        /// The segment size asked for, in slots.
        segment_slots: usize,
    },
    /// The CPU cannot reach the pool's memory.
    Unreachable {
        /// The pool's physical base.
        phys: PhysAddr,
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooSmall { size, areas } => {
                write!(f, "{size} bytes cannot give each of {areas} areas a slot")
            }
            Self::PartialSlot { size } => write!(f, "{size} bytes is not a multiple of 2 KiB"),
            Self::MisalignedBase { phys, dma } => {
                write!(f, "pool base {phys} / {dma} is not 2 KiB aligned")
            }
            Self::BusOffsetNotPageMultiple { phys, dma } => {
                write!(f, "bus offset between {phys} and {dma} is not a page multiple")
            }
            Self::DmaRangeWraps { dma, size } => {
                write!(f, "{size} bytes at {dma} wrap past the top of the DMA address space")
            }
            Self::BadAreaCount { areas, slots } => {
                write!(f, "{areas} areas: not a power of two dividing {slots} slots")
            }
            Self::BadSegmentSlots { segment_slots } => {
                write!(f, "segment of {segment_slots} slots: not a power of two >= 2")
            }
            Self::Unreachable { phys, size } => {
                write!(f, "the CPU cannot reach the pool's {size} bytes at {phys}")
            }
        }
    }
}

impl core::error::Error for PoolError {}
