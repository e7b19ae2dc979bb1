//! What a device (and the layer above the pool) asks of a bounce buffer.
//!
//! Four masks describe a device's addressing needs. Each one is of the form `2^n - 1`, a run of
//! low one bits, because each one is really a power of two in disguise:
//!
//! | mask | who sets it | meaning | example |
//! |---|---|---|---|
//! | `min_align_mask` | the device | the low address bits the device *interprets*: they must be equal in the DMA address and in the original buffer | NVMe: `0xfff`, its PRP entries carry a 4 KiB page offset |
//! | `alloc_align_mask` | the caller (IOMMU layer) | the allocated region, padding included, starts on `mask + 1` and its size is a multiple of it | IOMMU granule 64 KiB: `0xffff` |
//! | `dma_mask` | the device | the highest DMA address the device can put on the bus | a 32-bit engine: `0xffff_ffff` |
//! | `seg_boundary_mask` | the device | a buffer must not cross a multiple of `mask + 1` | many engines: `0xffff_ffff` (4 GiB) |
//!
//! A mask of zero means "no requirement" for the two alignment masks; `u64::MAX` means "no
//! limit" for the other two.
//!
//! The direction says which way the bytes flow, and so which copies the pool makes (rule 9):
//!
//! ```text
//!                 map            sync_for_device     sync_for_cpu / unmap
//! ToDevice        orig → bounce  orig → bounce       nothing
//! FromDevice      orig → bounce  nothing             bounce → orig
//! Bidirectional   orig → bounce  orig → bounce       bounce → orig
//! ```
//!
//! Map copies in even for `FromDevice`: a device that writes only part of the buffer must not
//! leave stale bytes of an earlier mapping for the CPU to read back.

use core::fmt;

use crate::error::{DmaError, MaskKind};

/// Which way the data of a mapping flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device reads the buffer (a packet to send, a block to write).
    ToDevice,
    /// The device writes the buffer (a packet received, a block read).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl DmaDirection {
    /// Whether the device's writes must travel back to the original buffer.
    pub const fn copies_to_cpu(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
    }

    /// Whether the CPU's writes must travel to the bounce buffer on `sync_for_device`.
    pub const fn copies_to_device(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }
}

impl fmt::Display for DmaDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ToDevice => "to-device",
            Self::FromDevice => "from-device",
            Self::Bidirectional => "bidirectional",
        })
    }
}

/// The requirements one streaming mapping must satisfy. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Constraints {
    /// Low address bits the device reads meaning into (NVMe: `0xfff`, the offset in a page):
    /// the copy keeps them equal to the buffer's (rule 1).
    pub min_align_mask: u64,
    /// The region for the copy, padding included, starts on `mask + 1` and is a multiple of
    /// it: an IOMMU granule, so that mapping whole granules exposes nothing else (rule 2).
    pub alloc_align_mask: u64,
    /// The highest DMA address the device can put on the bus.
    pub dma_mask: u64,
    /// A copy must not cross a multiple of `mask + 1` (a device's segment boundary).
    pub seg_boundary_mask: u64,
    /// Zero the padding around the buffer inside its region (rule 10). Set it for untrusted
    /// devices: an IOMMU maps whole granules, so the device can read the padding.
    pub zero_padding: bool,
}

impl Constraints {
    /// A device with no requirement at all.
    pub const NONE: Self = Self {
        min_align_mask: 0,
        alloc_align_mask: 0,
        dma_mask: u64::MAX,
        seg_boundary_mask: u64::MAX,
        zero_padding: false,
    };

    /// These constraints, with `min_align_mask` = `mask`.
    pub const fn with_min_align_mask(self, mask: u64) -> Self {
        Self { min_align_mask: mask, ..self }
    }

    /// These constraints, with `alloc_align_mask` = `mask`.
    pub const fn with_alloc_align_mask(self, mask: u64) -> Self {
        Self { alloc_align_mask: mask, ..self }
    }

    /// These constraints, with `dma_mask` = `mask`.
    pub const fn with_dma_mask(self, mask: u64) -> Self {
        Self { dma_mask: mask, ..self }
    }

    /// These constraints, with `seg_boundary_mask` = `mask`.
    pub const fn with_seg_boundary_mask(self, mask: u64) -> Self {
        Self { seg_boundary_mask: mask, ..self }
    }

    /// These constraints, zeroing the padding or not.
    pub const fn with_zero_padding(self, zero: bool) -> Self {
        Self { zero_padding: zero, ..self }
    }

    /// Refuse any mask that is not a run of low one bits: such a mask names no alignment.
    pub fn validate(&self) -> Result<(), DmaError> {
        check_mask(MaskKind::MinAlign, self.min_align_mask)?;
        check_mask(MaskKind::AllocAlign, self.alloc_align_mask)?;
        check_mask(MaskKind::Dma, self.dma_mask)?;
        check_mask(MaskKind::SegmentBoundary, self.seg_boundary_mask)
    }
}

impl Default for Constraints {
    fn default() -> Self {
        Self::NONE
    }
}

/// `2^n - 1` is exactly the numbers whose successor shares no bit with them.
pub(crate) fn check_mask(kind: MaskKind, value: u64) -> Result<(), DmaError> {
    if value & value.wrapping_add(1) == 0 { Ok(()) } else { Err(DmaError::InvalidMask { kind, value }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_must_be_runs_of_low_ones() {
        for good in [0, 1, 0xfff, 0xffff, u64::MAX] {
            assert!(check_mask(MaskKind::Dma, good).is_ok(), "{good:#x}");
        }
        for bad in [0x800, 0xffe, 0x1001, 0xf0f, u64::MAX - 1] {
            assert!(check_mask(MaskKind::Dma, bad).is_err(), "{bad:#x}");
        }
    }
}
