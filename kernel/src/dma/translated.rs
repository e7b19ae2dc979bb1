//! The IOMMU route of the DMA API: what `map`, `unmap`, `sync_*` and coherent allocation do
//! for a device whose every access the SMMU translates.
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
//! than the CPU page (the contract's "where we go beyond Linux").

use addr::{DmaAddr, PhysRange, VirtAddr};
use swiotlb::DmaDirection;
use vmsa::Access;

use super::{CoherentMemory, DmaApiError, DmaDevice, DmaPool};
use crate::iommu::{self, Domain, DomainError, Origin};

/// Faults a test can inject into the IOMMU route, to watch the SMMU refuse what it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Only note the IOVA the buffer gets.
    None,
    /// Unmap the buffer's IOVA (strictly) as soon as it is mapped, keeping it on record:
    /// the device then uses an IOVA that was unmapped, as after a driver's use-after-unmap.
    UseAfterUnmap,
}

/// An armed injection: the next mapping of exactly `buffer`.
pub(super) struct Injection {
    buffer: PhysRange,
    fault: Fault,
    /// The IOVA the buffer got, once it was mapped.
    iova: Option<DmaAddr>,
}

/// What the device may do to a mapping: read it only, for a transfer to the device.
pub(super) fn access(direction: DmaDirection) -> Access {
    match direction {
        DmaDirection::ToDevice => Access::ReadOnly,
        DmaDirection::FromDevice | DmaDirection::Bidirectional => Access::ReadWrite,
    }
}

impl DmaDevice {
    pub(super) fn map_translated(
        &self,
        domain: &Domain,
        untrusted: bool,
        bounce: Option<&'static DmaPool>,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<DmaAddr, DmaApiError> {
        let dma = self.map_through_domain(domain, untrusted, bounce, buffer, direction)?;
        self.apply_injection(domain, buffer, dma)?;
        Ok(dma)
    }

    fn map_through_domain(
        &self,
        domain: &Domain,
        untrusted: bool,
        bounce: Option<&'static DmaPool>,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<DmaAddr, DmaApiError> {
        let granule_mask = domain.granule_size() - 1;
        let fills_granules = (buffer.start().as_u64() | buffer.end().as_u64()) & granule_mask == 0;
        if !untrusted || fills_granules {
            self.for_device(buffer);
            return Ok(domain.map(buffer, access(direction), Origin::Buffer)?);
        }
        let pool = bounce.ok_or(DmaApiError::NoBouncePool)?;
        // The pool's own DMA mask does not apply: the device reaches the copy through the
        // IOMMU, and the SMMU reaches all of RAM.
        let constraints =
            self.constraints.with_alloc_align_mask(granule_mask).with_zero_padding(true).with_dma_mask(u64::MAX);
        let copy = pool.bounce.map(buffer.start(), buffer.size() as usize, direction, &constraints)?;
        let copy_range = PhysRange::new(copy.bounce, buffer.size()).expect("bounce buffer inside the pool");
        match domain.map(copy_range, access(direction), Origin::Bounce { pool_dma: copy.dma }) {
            Ok(iova) => Ok(iova),
            Err(error) => {
                pool.bounce.unmap(copy.dma, buffer.size() as usize)?;
                Err(error.into())
            }
        }
    }

    /// Arms `fault` for the next mapping of exactly `buffer` (IOMMU route only).
    pub fn inject(&self, buffer: PhysRange, fault: Fault) {
        *self.injection.lock() = Some(Injection { buffer, fault, iova: None });
    }

    /// The IOVA the injection's buffer got, once mapped; disarms the injection.
    pub fn injected_iova(&self) -> Option<DmaAddr> {
        self.injection.lock().take().and_then(|injection| injection.iova)
    }

    fn apply_injection(&self, domain: &Domain, buffer: PhysRange, dma: DmaAddr) -> Result<(), DmaApiError> {
        let mut injection = self.injection.lock();
        let Some(armed) = injection.as_mut().filter(|armed| armed.buffer == buffer && armed.iova.is_none()) else {
            return Ok(());
        };
        armed.iova = Some(dma);
        if armed.fault == Fault::UseAfterUnmap {
            log::info!("{}: fault injection: {dma:?} unmapped right after it was mapped", self.name);
            iommu::revoke(domain, dma)?;
        }
        Ok(())
    }

    pub(super) fn unmap_translated(
        &self,
        domain: &Domain,
        bounce: Option<&'static DmaPool>,
        dma: DmaAddr,
        buffer: PhysRange,
        direction: DmaDirection,
    ) -> Result<(), DmaApiError> {
        // The device loses access first; only then is the copy read back.
        let mapping = iommu::unmap(domain, dma, buffer.size(), false)?;
        match mapping.origin {
            Origin::Bounce { pool_dma } => {
                let pool = bounce.ok_or(DmaApiError::NoBouncePool)?;
                pool.bounce.unmap(pool_dma, buffer.size() as usize)?;
            }
            Origin::Buffer if direction != DmaDirection::ToDevice => self.for_cpu(buffer),
            Origin::Buffer | Origin::Coherent => {}
        }
        Ok(())
    }

    /// For a sync of `[dma, dma + size)`: the pool and pool address of its copy, if bounced.
    pub(super) fn translated_bounce(
        domain: &Domain,
        bounce: Option<&'static DmaPool>,
        dma: DmaAddr,
        size: u64,
    ) -> Result<Option<(&'static DmaPool, DmaAddr)>, DmaApiError> {
        let unknown = DmaApiError::Iommu(DomainError::UnknownMapping { dma, size });
        let mapping = domain.lookup(dma, size).filter(|mapping| !mapping.revoked && mapping.origin != Origin::Coherent);
        let mapping = mapping.ok_or(unknown)?;
        let Origin::Bounce { pool_dma } = mapping.origin else { return Ok(None) };
        let pool = bounce.ok_or(DmaApiError::NoBouncePool)?;
        let offset = dma.offset_from(mapping.iova.add(mapping.offset)).ok_or(unknown)?;
        Ok(Some((pool, pool_dma.add(offset))))
    }

    /// Zeroed heap memory in whole granules, mapped read-write in the domain.
    pub(super) fn alloc_translated(&self, domain: &Domain, size: usize) -> Result<CoherentMemory, DmaApiError> {
        if !self.coherent {
            return Err(DmaApiError::NoCoherentMemory);
        }
        let layout = Self::granule_layout(domain, size)?;
        // SAFETY: a non-zero-sized layout; freed in `free_translated` with the same layout.
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            return Err(DmaApiError::OutOfMemory { size });
        }
        let virt = VirtAddr::from_ptr(pointer);
        let mapped = self
            .physical(virt, layout.size())
            .and_then(|memory| Ok(domain.map(memory, Access::ReadWrite, Origin::Coherent)?));
        match mapped {
            Ok(dma) => Ok(CoherentMemory { virt, dma, size }),
            Err(error) => {
                // SAFETY: allocated just above with this layout, and not handed out.
                unsafe { alloc::alloc::dealloc(pointer, layout) };
                Err(error)
            }
        }
    }

    pub(super) fn free_translated(&self, domain: &Domain, memory: CoherentMemory) -> Result<(), DmaApiError> {
        let layout = Self::granule_layout(domain, memory.size)?;
        let physical = self.physical(memory.virt, layout.size())?;
        if domain.translate(memory.dma) != Some(physical.start()) {
            return Err(DmaApiError::Iommu(DomainError::UnknownMapping { dma: memory.dma, size: memory.size as u64 }));
        }
        iommu::unmap(domain, memory.dma, layout.size() as u64, true)?;
        // SAFETY: allocated in `alloc_translated` with this layout; the device lost access above.
        unsafe { alloc::alloc::dealloc(memory.virt.as_mut_ptr(), layout) };
        Ok(())
    }

    /// Coherent memory fills whole granules, so that the device sees nothing else.
    fn granule_layout(domain: &Domain, size: usize) -> Result<core::alloc::Layout, DmaApiError> {
        let granule = domain.granule_size() as usize;
        core::alloc::Layout::from_size_align(size.max(1).next_multiple_of(granule), granule)
            .map_err(|_| DmaApiError::OutOfMemory { size })
    }
}
