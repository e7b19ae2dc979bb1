//! Bounce buffers, the swiotlb way, with the whole alignment contract.
//!
//! A device that cannot reach a buffer (it lies above the device's DMA mask, outside a
//! restricted DMA pool named in the devicetree, or next to secrets an untrusted device must not
//! see) gets a copy of it instead, in a *bounce pool*: a physically contiguous range cut into
//! 2 KiB slots. `map` copies the caller's bytes in and hands the device the copy's DMA address;
//! `unmap` copies the device's writes back and frees the slots.
//!
//! What makes this hard is not the copying but *where* the copy may go. Three masks say it:
//!
//! - `min_align_mask` (the device): low address bits the device interprets must be the same in
//!   the DMA address as in the original. NVMe (`0xfff`) reads a page offset out of them.
//! - `alloc_align_mask` (the IOMMU layer): the region allocated for the copy, padding
//!   included, starts on `mask + 1` and is a multiple of it, so mapping whole IOMMU granules
//!   exposes nothing else.
//! - `dma_mask` and `seg_boundary_mask` (the device): how high it can address, which power-of-two
//!   boundaries one buffer must not cross.
//!
//! A worked address: NVMe behind a 16 KiB IOMMU granule maps 6000 bytes at `orig =
//! 0x4812_3a10` (`min_align_mask = 0xfff`, `alloc_align_mask = 0x3fff`). The offset to keep
//! is `0x4812_3a10 & 0xfff = 0xa10`, more than one slot, so the region starts with one whole slot
//! of pre-padding; its size is `ALIGN(6000 + 0xa10, 16 KiB) = 16 KiB`. With the pool at DMA
//! `0x9000_0000`, an empty pool puts the region at `0x9000_0000` and the device gets
//! `0x9000_0a10`: its low 12 bits are `0xa10`, as in `orig`.
//!
//! ```text
//!  DMA 0x9000_0000    0x9000_0800     0x9000_0a10            0x9000_2180       0x9000_4000
//!  |   slot 0        |   slot 1 ......|..........  slot 2 ... slot 4 |   ...  slot 7   |
//!  |<-- pre-padding (whole slot) -->|<- 0x210 ->|<--- buffer: 6000 bytes --->|<- post-pad ->|
//!  |<---------------------------- region: 16 KiB, 16 KiB aligned ------------------------>|
//! ```
//!
//! Modules, in the order a request meets them:
//!
//! - [`constraints`]: the masks and the direction;
//! - [`placement`]: the masks turned into "a region of n slots starting at a slot ≡ p mod s";
//! - [`slots`] (with the word-at-a-time free map): areas, cursors, the complete search;
//! - [`limits`]: `max_mapping_size` that holds whatever the pool's base alignment;
//! - [`pool`]: the copies, the records, coherent allocations;
//! - [`error`], [`stats`], [`memory`]: refusals, counters, and how the CPU reaches bytes;
//!
//! "Rule N" and "RN" in this crate refer to the rules and regression cases of the project's
//! DMA contract, `docs/dma-contract.md`, which also names the Linux threads each one comes from;
//! each pool-level regression case has a test of the same name in `tests/regressions.rs`.
#![no_std]

extern crate alloc;

pub mod constraints;
pub mod error;
mod freemap;
pub mod lessons;
pub mod limits;
pub mod memory;
pub mod placement;
pub mod pool;
pub mod slots;
pub mod stats;

pub use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
pub use constraints::{Constraints, DmaDirection};
pub use error::{DmaError, FailureReason, MaskKind, PoolError, RegionKind};
pub use memory::{HeapMemory, PhysMemory};
pub use placement::Placement;
pub use pool::{BouncePool, CoherentBuffer, Mapping, PoolConfig, RESTRICTED_SEGMENT_LIMIT};
pub use slots::{Area, FirstArea, Geometry, Reserved, SlotAllocator};
pub use stats::{Failures, Stats};

/// Size of one slot (Linux: `IO_TLB_SIZE`).
pub const SLOT_SIZE: usize = 1 << SLOT_SHIFT;
/// `log2(SLOT_SIZE)` (Linux: `IO_TLB_SHIFT`).
pub const SLOT_SHIFT: u32 = 11;
/// The CPU page size this kernel uses.
pub const PAGE_SIZE: usize = 4096;
/// Default largest region, in slots (Linux: `IO_TLB_SEGSIZE`): 256 KiB.
pub const DEFAULT_SEGMENT_SLOTS: usize = 128;
