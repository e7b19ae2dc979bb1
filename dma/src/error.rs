//! Why the DMA API refused, with every fact a reader needs to see why.

use core::cell::Cell;
use core::fmt;
use core::panic::Location;

use addr::{PhysAddr, PhysRange, VirtAddr};
use swiotlb::DmaError;

use crate::debug::{Checker, Problem};
use crate::iommu::DomainError;
use crate::iommu::iova::IovaError;

/// Why the DMA layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaApiError {
    /// The bounce pool refused (no room, masks, bad address...).
    Pool(DmaError),
    /// A direct device cannot reach this buffer through its bus windows, and no pool within
    /// its reach can bounce it.
    Unreachable {
        /// The buffer, in CPU physical addresses.
        buffer: PhysRange,
        /// One past the highest physical address the device reaches.
        limit: Option<PhysAddr>,
        /// The default pool, if there is one: out of the device's reach too.
        pool: Option<PhysRange>,
    },
    /// A device that does not snoop the caches was offered a buffer that shares a cache line
    /// with other data, and there is no pool to bounce it through (contract rule 13).
    SharesCacheLine {
        /// The buffer, in CPU physical addresses.
        buffer: PhysRange,
        /// The cache line size.
        line: usize,
    },
    /// A sync or access of bytes outside the mapping.
    OutsideMapping {
        /// Where the part starts, from the mapping's start.
        offset: u64,
        /// How long the part is.
        size: u64,
        /// How long the mapping is.
        mapping_size: u64,
    },
    /// A typed access to coherent memory at an offset not aligned for the type.
    Misaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment the type needs.
        align: usize,
    },
    /// The buffer is not in memory the kernel maps, or not physically contiguous.
    NotRam {
        /// The buffer's CPU address.
        address: VirtAddr,
        /// Its length.
        size: usize,
    },
    /// Coherent memory for a direct device that does not snoop the caches would need an uncached
    /// alias of heap memory; it needs an uncached pool in reach, or `dma-coherent`.
    NoCoherentMemory,
    /// No memory for a coherent allocation of this size.
    OutOfMemory {
        /// The size asked for.
        size: usize,
    },
    /// The IOMMU refused (no IOVA space, unknown mapping, SMMU error...).
    Iommu(DomainError),
    /// An untrusted device's buffer does not fill its granules and there is no pool to
    /// bounce it through.
    NoBouncePool,
}

impl DmaApiError {
    /// Whether the refusal is for room in a bounce pool or an IOVA space, which a smaller
    /// request may still find: the pool or space is fragmented, or holds other mappings.
    pub fn is_no_room(&self) -> bool {
        match self {
            DmaApiError::Pool(error) => error.reason() == swiotlb::FailureReason::NoSpace,
            DmaApiError::Iommu(DomainError::Iova(IovaError::NoRoom { .. })) => true,
            _ => false,
        }
    }
}

impl From<DomainError> for DmaApiError {
    fn from(error: DomainError) -> Self {
        DmaApiError::Iommu(error)
    }
}

impl From<DmaError> for DmaApiError {
    fn from(error: DmaError) -> Self {
        DmaApiError::Pool(error)
    }
}

impl fmt::Display for DmaApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaApiError::Pool(error) => write!(f, "{error}"),
            DmaApiError::Unreachable { buffer, limit, pool } => {
                write!(f, "buffer {buffer} is outside the device's DMA windows")?;
                if let Some(limit) = limit {
                    write!(f, " (it reaches below {limit:?} only)")?;
                }
                match pool {
                    Some(pool) => write!(f, ", and so is the default bounce pool {pool}"),
                    None => write!(f, ", and there is no bounce pool"),
                }
            }
            DmaApiError::SharesCacheLine { buffer, line } => write!(
                f,
                "buffer {buffer} shares a {line}-byte cache line with other data, the device does not snoop the caches, and there is no pool to bounce it through (rule 13)"
            ),
            DmaApiError::OutsideMapping { offset, size, mapping_size } => {
                write!(f, "{size} bytes at offset {offset} are outside a {mapping_size}-byte mapping")
            }
            DmaApiError::Misaligned { offset, align } => {
                write!(f, "offset {offset} is not aligned to {align} bytes, as the type read or written needs")
            }
            DmaApiError::NotRam { address, size } => {
                write!(f, "{size} bytes at {address:?} are not contiguous RAM the kernel maps")
            }
            DmaApiError::NoCoherentMemory => {
                write!(f, "no coherent memory: the device does not snoop the caches and has no uncached pool in reach")
            }
            DmaApiError::OutOfMemory { size } => write!(f, "no memory for {size} coherent bytes"),
            DmaApiError::Iommu(error) => write!(f, "{error}"),
            DmaApiError::NoBouncePool => {
                write!(f, "an untrusted device's buffer does not fill its IOMMU granules, and there is no bounce pool")
            }
        }
    }
}

impl core::error::Error for DmaApiError {}

/// A refused map, which the driver must look at.
///
/// Linux drivers must call `dma_mapping_error()` on every address a map returns; the DMA debug
/// checker reports those that do not. Rust's `Result` already makes ignoring an error a visible
/// act (`let _ =`, `.ok()`), and this type makes it a reported one: a `MapError` dropped before
/// anyone read it ([`Self::error`], `?` through `From`, `Display` or `Debug`) is reported by the
/// checker, with the device and the place of the map.
#[must_use = "a refused map must be handled: the device was given nothing"]
pub struct MapError {
    error: DmaApiError,
    watch: Cell<Option<Watch>>,
}

/// Who to tell if the error is dropped unread.
#[derive(Clone, Copy)]
struct Watch {
    checker: &'static Checker,
    device: &'static str,
    location: &'static Location<'static>,
}

impl MapError {
    pub(crate) fn new(
        error: DmaApiError,
        checker: Option<&'static Checker>,
        device: &'static str,
        location: &'static Location<'static>,
    ) -> Self {
        let watch = checker.map(|checker| Watch { checker, device, location });
        Self { error, watch: Cell::new(watch) }
    }

    /// Why the map was refused (the driver has now looked).
    pub fn error(&self) -> DmaApiError {
        self.watch.set(None);
        self.error
    }
}

impl From<MapError> for DmaApiError {
    fn from(error: MapError) -> Self {
        error.error()
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error())
    }
}

impl fmt::Debug for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.error())
    }
}

impl Drop for MapError {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.checker.report(watch.device, Problem::UncheckedError { error: self.error }, watch.location);
        }
    }
}
