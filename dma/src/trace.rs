//! `dma.trace`: one readable record for every decision the DMA API makes, so that a reader can
//! watch a buffer take its route instead of inferring it from the code.
//!
//! A map record says which device, the buffer and direction, the route and *why* that route
//! (in reach; bounced because out of reach, restricted, an untrusted partial granule or a
//! shared cache line), the masks and the offset bits `min_align_mask` kept, the bounce slots
//! (first, count, pre-padding) and the region's alignment, and behind an IOMMU the IOVA and
//! the granules mapped. An unmap record says what was invalidated and whether it was waited for
//! (strict) or deferred, and what was copied back. A refusal says why.
//!
//! Two records of a QEMU run (`cargo xtask qemu --iommu 64K --append dma.trace=00:05.0`),
//! wrapped here; in the log each is one line:
//!
//! ```text
//! dma.trace: pci 00:05.0: map 258048 B to-device at PA 0x605e07c8: bounced: untrusted, and the
//!   buffer shares a 64 KiB granule (rule 10); min_align_mask 0xfff keeps offset 0x7c8;
//!   alloc_align_mask 0xffff; slots 736..864 of 'swiotlb' = [0x7fd70000, +0x40000), pre-padding
//!   0x7c8; IOVA 0xfffffff40000 +0x40000: 4 granule(s) of 64 KiB mapped read-only; the device
//!   gets 0xfffffff407c8
//! dma.trace: pci 00:05.0: unmap 4096 B from-device at 0xfffffffd0000; 1 granule(s) unmapped,
//!   invalidated and waited for (strict); copied back from 'swiotlb', its slots freed
//! ```
//!
//! The records are built only for devices a [`Tracer`] selects, so tracing costs nothing
//! elsewhere. The kernel turns it on with `dma.trace` (every device) or
//! `dma.trace=TERM[,TERM...]`, each term a route (`direct`, `restricted`, `iommu`, `trusted`,
//! `untrusted`) or part of a device's name (`00:05.0`, `virtio_mmio`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use addr::{DmaAddr, PhysRange};
use spin::Mutex;
use swiotlb::{Constraints, DmaDirection};

use crate::error::DmaApiError;
use crate::iommu;

/// Why a buffer went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Direct, in place: the device's bus windows and DMA mask reach the whole buffer.
    InReach,
    /// Direct, bounced: the device cannot reach the buffer (its windows or its DMA mask).
    OutOfReach,
    /// Bounced: the buffer shares a cache line of `line` bytes with other data and the device
    /// does not snoop the caches (rule 13).
    SharesCacheLine {
        /// The cache line size.
        line: usize,
    },
    /// Bounced: the device's restricted pool takes every transfer (rule 12).
    Restricted,
    /// Translated in place: a trusted device, or a buffer of whole granules.
    Translated,
    /// Bounced, then translated: an untrusted device's buffer shares a granule of `granule`
    /// bytes with other data (rule 10).
    PartialGranule {
        /// The domain's granule.
        granule: u64,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::InReach => write!(f, "direct: its bus windows and DMA mask reach it"),
            Decision::OutOfReach => write!(f, "bounced: beyond the device's reach"),
            Decision::SharesCacheLine { line } => write!(
                f,
                "bounced: it shares a {line}-byte cache line and the device does not snoop the caches (rule 13)"
            ),
            Decision::Restricted => write!(f, "bounced: the device's restricted pool takes every transfer (rule 12)"),
            Decision::Translated => write!(f, "translated in place"),
            Decision::PartialGranule { granule } => {
                write!(f, "bounced: untrusted, and the buffer shares a {} granule (rule 10)", Bytes(*granule))
            }
        }
    }
}

/// The bounce copy a mapping made: the pool and where its slots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// The pool's name.
    pub pool: &'static str,
    /// The slots, the region and the copy's address, as the pool made them.
    pub mapping: swiotlb::Mapping,
}

/// The IOMMU mapping behind an address: its range and the domain's granule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The mapped range.
    pub mapping: iommu::Mapping,
    /// The domain's granule.
    pub granule: u64,
}

/// What an unmap did about the IOMMU's cached translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Invalidated and waited for before unmap returned (rule 14).
    Strict {
        /// Granules whose translations were dropped.
        granules: u64,
    },
    /// Entries cleared; this unmap filled the deferring domain's batch, so the whole address
    /// space was invalidated and waited for (`iommu.strict=0`).
    Flushed {
        /// Granules of this mapping, gone from the IOMMU's caches with the rest.
        granules: u64,
    },
    /// Entries cleared, invalidation left to the domain's next flush (`iommu.strict=0`).
    Deferred {
        /// Granules whose translations the IOMMU may still hold until then.
        granules: u64,
    },
}

/// One decision of the DMA API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A buffer lent to the device.
    Map {
        /// The buffer.
        buffer: PhysRange,
        /// The transfer's direction.
        direction: DmaDirection,
        /// Why it went where it went.
        decision: Decision,
        /// The device's masks, as the mapping applied them.
        constraints: Constraints,
        /// The address the device was given.
        dma: DmaAddr,
        /// The bounce copy, if there is one.
        copy: Option<Copy>,
        /// The IOMMU mapping, behind an IOMMU.
        translation: Option<Translation>,
    },
    /// A mapping ended.
    Unmap {
        /// The address the device had.
        dma: DmaAddr,
        /// The buffer's size.
        size: u64,
        /// The transfer's direction.
        direction: DmaDirection,
        /// What became of the IOMMU's translations, behind an IOMMU.
        invalidation: Option<Invalidation>,
        /// The pool the copy was released to, if the buffer was bounced.
        pool: Option<&'static str>,
    },
    /// A buffer the API would not lend, and why.
    Refused {
        /// The buffer.
        buffer: PhysRange,
        /// The transfer's direction.
        direction: DmaDirection,
        /// The reason.
        error: DmaApiError,
    },
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Map { buffer, direction, decision, constraints, dma, copy, translation } => {
                write!(f, "map {} B {direction} at PA {:#x}: {decision}", buffer.size(), buffer.start().as_u64())?;
                write_masks(f, buffer, constraints, copy.is_some())?;
                if let Some(Copy { pool, mapping }) = copy {
                    let pre_padding = mapping.dma.offset_from(mapping.region).unwrap_or(0);
                    write!(
                        f,
                        "; slots {}..{} of '{pool}' = [{:#x}, +{:#x}), pre-padding {pre_padding:#x}",
                        mapping.first_slot,
                        mapping.first_slot + mapping.slots,
                        mapping.region.as_u64(),
                        mapping.region_len,
                    )?;
                }
                if let Some(Translation { mapping, granule }) = translation {
                    let access = if *direction == DmaDirection::ToDevice { "read-only" } else { "read-write" };
                    write!(
                        f,
                        "; IOVA {:#x} +{:#x}: {} granule(s) of {} mapped {access}",
                        mapping.iova.as_u64(),
                        mapping.size,
                        mapping.size / granule,
                        Bytes(*granule)
                    )?;
                }
                write!(f, "; the device gets {:#x}", dma.as_u64())
            }
            Record::Unmap { dma, size, direction, invalidation, pool } => {
                write!(f, "unmap {size} B {direction} at {:#x}", dma.as_u64())?;
                match invalidation {
                    Some(Invalidation::Strict { granules }) => {
                        write!(f, "; {granules} granule(s) unmapped, invalidated and waited for (strict)")?
                    }
                    Some(Invalidation::Flushed { granules }) => write!(
                        f,
                        "; {granules} granule(s) unmapped, then the deferred batch flushed: the whole address space invalidated and waited for"
                    )?,
                    Some(Invalidation::Deferred { granules }) => {
                        write!(f, "; {granules} granule(s) unmapped, invalidation deferred to the domain's next flush")?
                    }
                    None => {}
                }
                match pool {
                    Some(pool) if *direction == DmaDirection::ToDevice => {
                        write!(f, "; the copy's slots freed in '{pool}'")
                    }
                    Some(pool) => write!(f, "; copied back from '{pool}', its slots freed"),
                    None => Ok(()),
                }
            }
            Record::Refused { buffer, direction, error } => {
                write!(f, "map {} B {direction} at PA {:#x} refused: {error}", buffer.size(), buffer.start().as_u64())
            }
        }
    }
}

/// The masks that shaped a mapping, and the offset bits kept where a copy was made.
fn write_masks(f: &mut fmt::Formatter<'_>, buffer: &PhysRange, constraints: &Constraints, copied: bool) -> fmt::Result {
    let Constraints { min_align_mask, alloc_align_mask, dma_mask, .. } = *constraints;
    if min_align_mask != 0 {
        let kept = buffer.start().as_u64() & min_align_mask;
        match copied {
            true => write!(f, "; min_align_mask {min_align_mask:#x} keeps offset {kept:#x}")?,
            false => write!(f, "; min_align_mask {min_align_mask:#x} (offset {kept:#x}, in place)")?,
        }
    }
    if alloc_align_mask != 0 && copied {
        write!(f, "; alloc_align_mask {alloc_align_mask:#x}")?;
    }
    if dma_mask != u64::MAX {
        write!(f, "; DMA mask {dma_mask:#x}")?;
    }
    Ok(())
}

/// A size in the largest unit that divides it.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bytes if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) => write!(f, "{} MiB", bytes >> 20),
            bytes if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) => write!(f, "{} KiB", bytes >> 10),
            bytes => write!(f, "{bytes} B"),
        }
    }
}

/// Which devices to trace, and where the records go: the log, and for a test a list it reads.
pub struct Tracer {
    /// Routes or parts of device names; empty for every device.
    terms: Vec<String>,
    /// Every record kept, with its device's name, when capturing.
    captured: Option<Mutex<Vec<(&'static str, Record)>>>,
}

impl Tracer {
    /// Traces the devices `filter` selects (see the module documentation): `""` or `"all"`
    /// for every device.
    pub fn new(filter: &str) -> Self {
        let terms = filter.split(',').map(str::trim).filter(|term| !term.is_empty() && *term != "all");
        Self { terms: terms.map(String::from).collect(), captured: None }
    }

    /// As [`Self::new`], keeping every record for [`Self::take`].
    pub fn capturing(filter: &str) -> Self {
        Self { captured: Some(Mutex::new(Vec::new())), ..Self::new(filter) }
    }

    /// Whether records of `device`, whose route is named `route` (and `trust`, behind an
    /// IOMMU), are wanted.
    pub fn selects(&self, device: &str, route: &str, trust: Option<&str>) -> bool {
        self.terms.is_empty()
            || self
                .terms
                .iter()
                .any(|term| term == route || Some(term.as_str()) == trust || device.contains(term.as_str()))
    }

    /// Logs `record` of `device`, and keeps it if capturing.
    pub fn emit(&self, device: &'static str, record: Record) {
        log::info!("dma.trace: {device}: {record}");
        if let Some(captured) = &self.captured {
            captured.lock().push((device, record));
        }
    }

    /// The records kept since the last call, oldest first.
    pub fn take(&self) -> Vec<(&'static str, Record)> {
        self.captured.as_ref().map(|captured| core::mem::take(&mut *captured.lock())).unwrap_or_default()
    }
}
