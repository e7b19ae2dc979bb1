//! The IOMMU route of the DMA API: what `map`, `unmap`, `sync_*` and coherent allocation do
//! for a device whose every access the IOMMU translates.
//!
//! ```text
//!  trusted, or the buffer fills    map the granules enclosing the buffer; the device gets
//!  whole granules                  IOVA base + the buffer's offset in its first granule
//!
//!  untrusted, and the buffer       copy it into the bounce pool, in a region aligned to the
//!  shares a granule with           granule and a whole number of granules long, its padding
//!  anything else                   zeroed (rules 2, 3, 10); map that region instead
//! ```
//!
//! A trusted device may see the rest of a granule its buffer shares with other data (a 64 KiB
//! granule around a 512-byte buffer exposes 65,024 bytes of whatever else lives there). For an
//! untrusted device — a Thunderbolt dock, a device passed to a guest — that is a leak, so the
//! buffer is bounced into a region of its own where everything but the buffer is zero. This is
//! Linux's `iommu_dma_map_page` with `dev_use_swiotlb`; unlike Linux, the granule may be larger
//! than the CPU page (the contract's "where we go beyond Linux"). A device that does not snoop
//! the caches bounces the same way a buffer that shares a cache line (rule 13).

use alloc::vec::Vec;
use core::alloc::Layout;
use core::panic::Location;

use addr::{DmaAddr, PhysRange};
use swiotlb::DmaDirection;
use vmsa::Access;

use crate::device::{DmaDevice, Ended, Placement};
use crate::error::DmaApiError;
use crate::iommu::{Domain, DomainError, Origin};
use crate::platform::{Maintenance, Platform};
use crate::pool::DmaPool;
use crate::trace::{Decision, Invalidation, Record};

/// Faults a test can inject into the IOMMU route, to watch the IOMMU refuse what it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Only note the IOVA the buffer gets.
    None,
    /// Unmap the buffer's IOVA (strictly) as soon as it is mapped, keeping it on record:
    /// the device then uses an IOVA that was unmapped, as after a driver's use-after-unmap.
    UseAfterUnmap,
}

/// An armed injection: the next mapping of exactly `buffer`.
pub(crate) struct Injection {
    buffer: PhysRange,
    fault: Fault,
    /// The IOVA the buffer got, once it was mapped.
    iova: Option<DmaAddr>,
}

/// What the device may do to a mapping: read it only, for a transfer to the device.
pub(crate) fn access(direction: DmaDirection) -> Access {
    match direction {
        DmaDirection::ToDevice => Access::ReadOnly,
        DmaDirection::FromDevice | DmaDirection::Bidirectional => Access::ReadWrite,
    }
}

impl<P: Platform + 'static> DmaDevice<P> {
    /// Maps `buffer` through `domain`; returns the IOVA, why, and the bounce copy if any.
    pub(crate) fn map_translated(
        &self,
        domain: &Domain<P>,
        untrusted: bool,
        bounce: Option<&'static DmaPool<P>>,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<Placement, DmaApiError> {
        let placed = self.map_through_domain(domain, untrusted, bounce, buffer, direction)?;
        self.apply_injection(domain, buffer, placed.dma)?;
        Ok(placed)
    }

    fn map_through_domain(
        &self,
        domain: &Domain<P>,
        untrusted: bool,
        bounce: Option<&'static DmaPool<P>>,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<Placement, DmaApiError> {
        let granule_mask = domain.granule_size() - 1;
        let fills_granules = (buffer.start().as_u64() | buffer.end().as_u64()) & granule_mask == 0;
        let owns_its_lines = self.owns_its_lines(buffer);
        if (!untrusted || fills_granules) && owns_its_lines {
            self.clean(buffer, Maintenance::MapClean);
            let iova = domain.map(buffer, access(direction), Origin::Buffer)?;
            return Ok(Placement::in_place(iova, Decision::Translated));
        }
        let line = self.platform.cache_line_size();
        let no_pool = match owns_its_lines {
            true => DmaApiError::NoBouncePool,
            false => DmaApiError::SharesCacheLine { buffer, line },
        };
        // Both reasons may hold; an untrusted device's partial granule is the one that stands
        // for any device, snooping or not.
        let decision = match untrusted && !fills_granules {
            true => Decision::PartialGranule { granule: granule_mask + 1 },
            false => Decision::SharesCacheLine { line },
        };
        let pool = bounce.ok_or(no_pool)?;
        // The pool's own DMA mask does not apply: the device reaches the copy through the
        // IOMMU, and the IOMMU reaches all of RAM.
        let constraints =
            self.constraints.with_alloc_align_mask(granule_mask).with_zero_padding(true).with_dma_mask(u64::MAX);
        let copy = pool.bounce.map(buffer.start(), buffer.size() as usize, direction, &constraints)?;
        let copy_range = PhysRange::new(copy.bounce, buffer.size()).ok_or(DomainError::OutOfRange)?;
        match domain.map(copy_range, access(direction), Origin::Bounce { pool_dma: copy.dma }) {
            Ok(iova) => Ok(Placement { dma: iova, ..Placement::copied(pool, copy, decision) }),
            Err(error) => {
                pool.bounce.unmap(copy.dma, buffer.size() as usize)?;
                Err(error.into())
            }
        }
    }

    /// A trusted device's scatter list, in one IOVA range (every buffer owns its cache lines).
    pub(crate) fn map_segments(
        &self,
        domain: &Domain<P>,
        buffers: &[PhysRange],
        direction: DmaDirection,
        location: &'static Location<'static>,
    ) -> Result<Vec<DmaAddr>, DmaApiError> {
        for buffer in buffers {
            if let Some(checker) = self.checker {
                checker.check_memory(self.name, *buffer, self.platform.memory_kind(*buffer), location);
            }
            self.clean(*buffer, Maintenance::MapClean);
        }
        let addresses = domain.map_segments(buffers, access(direction), Origin::Buffer)?;
        for (dma, buffer) in addresses.iter().zip(buffers) {
            self.audit(*dma, buffer.size());
            if let Some(checker) = self.checker {
                let lines = (!self.coherent).then(|| self.platform.cache_line_size());
                checker.mapped(self.name, *dma, *buffer, Some(direction), lines, location);
            }
            self.trace(|| Record::Map {
                buffer: *buffer,
                direction,
                decision: Decision::Translated,
                constraints: self.constraints,
                dma: *dma,
                copy: None,
                translation: domain
                    .lookup(*dma, 1)
                    .map(|mapping| crate::trace::Translation { mapping, granule: domain.granule_size() }),
            });
        }
        Ok(addresses)
    }

    /// Ends a mapping [`Self::map_segments`] made.
    pub(crate) fn unmap_segments(
        &self,
        domain: &Domain<P>,
        addresses: &[DmaAddr],
        buffers: &[PhysRange],
        direction: DmaDirection,
        location: &'static Location<'static>,
    ) -> Result<(), DmaApiError> {
        if let Some(checker) = self.checker {
            for (dma, buffer) in addresses.iter().zip(buffers) {
                checker.check_unmap(self.name, "unmap_scatter", *dma, buffer.size(), Some(direction), location);
            }
        }
        let size = buffers.iter().map(PhysRange::size).sum();
        let mapping = domain.unmap(addresses[0], size, false)?;
        if let Some(checker) = self.checker {
            addresses.iter().for_each(|dma| checker.unmapped(self.name, *dma, Some(direction)));
        }
        let invalidation = Some(Self::invalidation(domain, &mapping));
        self.trace(|| Record::Unmap { dma: addresses[0], size, direction, invalidation, pool: None });
        if direction != DmaDirection::ToDevice {
            buffers.iter().for_each(|buffer| self.invalidate(*buffer, Maintenance::UnmapInvalidate));
        }
        Ok(())
    }

    /// Arms `fault` for the next mapping of exactly `buffer` (IOMMU route only).
    pub fn inject(&self, buffer: PhysRange, fault: Fault) {
        *self.injection.lock() = Some(Injection { buffer, fault, iova: None });
    }

    /// The IOVA the injection's buffer got, once mapped; disarms the injection.
    pub fn injected_iova(&self) -> Option<DmaAddr> {
        self.injection.lock().take().and_then(|injection| injection.iova)
    }

    fn apply_injection(&self, domain: &Domain<P>, buffer: PhysRange, dma: DmaAddr) -> Result<(), DmaApiError> {
        let mut injection = self.injection.lock();
        let Some(armed) = injection.as_mut().filter(|armed| armed.buffer == buffer && armed.iova.is_none()) else {
            return Ok(());
        };
        armed.iova = Some(dma);
        if armed.fault == Fault::UseAfterUnmap {
            log::info!("{}: fault injection: {dma:?} unmapped right after it was mapped", self.name);
            domain.revoke(dma)?;
        }
        Ok(())
    }

    pub(crate) fn unmap_translated(
        &self,
        domain: &Domain<P>,
        bounce: Option<&'static DmaPool<P>>,
        dma: DmaAddr,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<Ended, DmaApiError> {
        // The device loses access first; only then is the copy read back.
        let mapping = domain.unmap(dma, buffer.size(), false)?;
        let invalidation = Some(Self::invalidation(domain, &mapping));
        match mapping.origin {
            Origin::Bounce { pool_dma } => {
                let pool = bounce.ok_or(DmaApiError::NoBouncePool)?;
                pool.bounce.unmap(pool_dma, buffer.size() as usize)?;
                return Ok((invalidation, Some(pool.name)));
            }
            Origin::Buffer if direction != DmaDirection::ToDevice => {
                self.invalidate(buffer, Maintenance::UnmapInvalidate)
            }
            Origin::Buffer | Origin::Coherent => {}
        }
        Ok((invalidation, None))
    }

    /// What unmapping `mapping` (just done) did about the IOMMU's cached translations. A revoked
    /// mapping was invalidated strictly when it was revoked; in a deferring domain, an unmap that
    /// leaves nothing waiting was the one that set off the flush.
    fn invalidation(domain: &Domain<P>, mapping: &crate::iommu::Mapping) -> Invalidation {
        let granules = mapping.size / domain.granule_size();
        match (domain.defers_invalidation() && !mapping.revoked, domain.deferred_unmaps()) {
            (false, _) => Invalidation::Strict { granules },
            (true, 0) => Invalidation::Flushed { granules },
            (true, _) => Invalidation::Deferred { granules },
        }
    }

    /// For a sync of `[dma, dma + size)`: the pool and pool address of its copy, if bounced.
    pub(crate) fn translated_bounce(
        domain: &Domain<P>,
        bounce: Option<&'static DmaPool<P>>,
        dma: DmaAddr,
        size: u64,
    ) -> Result<Option<(&'static DmaPool<P>, DmaAddr)>, DmaApiError> {
        let unknown = DmaApiError::Iommu(DomainError::UnknownMapping { dma, size });
        let mapping = domain.lookup(dma, size).filter(|mapping| !mapping.revoked && mapping.origin != Origin::Coherent);
        let mapping = mapping.ok_or(unknown)?;
        let Origin::Bounce { pool_dma } = mapping.origin else { return Ok(None) };
        let pool = bounce.ok_or(DmaApiError::NoBouncePool)?;
        let offset = dma.offset_from(mapping.iova.add(mapping.offset)).ok_or(unknown)?;
        Ok(Some((pool, pool_dma.add(offset))))
    }

    /// Coherent memory fills whole granules, so that the device sees nothing else.
    pub(crate) fn granule_layout(domain: &Domain<P>, size: usize) -> Result<Layout, DmaApiError> {
        let granule = domain.granule_size() as usize;
        Layout::from_size_align(size.max(1).next_multiple_of(granule), granule)
            .map_err(|_| DmaApiError::OutOfMemory { size })
    }
}
