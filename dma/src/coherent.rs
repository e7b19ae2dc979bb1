//! Coherent memory: shared by the CPU and a device for a long time, owned, freed on drop.
//!
//! Virtqueues, NVMe queues, DMA control blocks: memory both sides read and write while it
//! lives, with no sync in between. Either the device snoops the CPU caches (then ordinary cached
//! memory will do), or the CPU must not cache it at all (then it comes from a pool the kernel
//! maps uncached). [`DmaDevice::alloc_coherent`] picks the source the route allows; the
//! [`Coherent`] it returns frees it — unmapping it from the IOMMU first — when it is dropped,
//! so no caller writes its own cleanup (Rust-for-Linux's `CoherentAllocation` does the same).
//!
//! The device writes this memory behind the compiler's back, so the CPU reaches it only
//! through volatile accesses: typed ([`Coherent::read`], [`Coherent::write`], for `zerocopy`
//! types whose every bit pattern is valid) or as bytes. There is never a `&` or `&mut` to it.

use core::alloc::Layout;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;

use addr::{DmaAddr, PhysRange, VirtAddr};
use platform::dma_config::DmaDescription;
use vmsa::Access;
use zerocopy::{FromBytes, IntoBytes};

use crate::device::{DmaDevice, Route};
use crate::error::DmaApiError;
use crate::iommu::{Domain, Origin};
use crate::platform::Platform;
use crate::pool::DmaPool;

/// Where a coherent allocation came from, and so how it goes back.
#[derive(Clone, Copy)]
enum Source<P: Platform + 'static> {
    /// A pool's slots (restricted, or the uncached default pool).
    Pool(&'static DmaPool<P>),
    /// The platform's heap, seen through the device's bus windows.
    Heap(Layout),
    /// The platform's heap, in whole granules mapped in the device's IOMMU domain.
    Domain(&'static Domain<P>, Layout),
}

/// Memory the CPU and one device share without syncs; freed when dropped.
pub struct Coherent<'d, P: Platform + 'static> {
    device: &'d DmaDevice<P>,
    cpu: NonNull<u8>,
    physical: PhysRange,
    dma: DmaAddr,
    size: usize,
    source: Source<P>,
}

// SAFETY: the memory is owned by this value alone (no other CPU pointer to it is handed out
// but through it), so moving it to another thread moves the ownership; the device handle it
// refers to is shared, which needs `DmaDevice<P>: Sync`, hence `P: Sync`.
unsafe impl<P: Platform + Sync + 'static> Send for Coherent<'_, P> where DmaDevice<P>: Sync {}

impl<P: Platform + 'static> fmt::Debug for Coherent<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes of coherent memory at {:?} for {}", self.size, self.dma, self.device.name)
    }
}

impl<P: Platform + 'static> DmaDevice<P> {
    /// Zeroed memory the CPU and the device share without syncs, page-aligned: from the heap
    /// for a coherent device that reaches it (through the IOMMU or its windows), otherwise from
    /// the device's pool.
    #[track_caller]
    pub fn alloc_coherent(&self, size: usize) -> Result<Coherent<'_, P>, DmaApiError> {
        let made_at = Location::caller();
        let (cpu, physical, dma, source) = match &self.route {
            Route::Restricted(pool) => Self::alloc_from_pool(pool, size)?,
            Route::Direct { windows, bounce } => match self.alloc_from_heap(windows, size) {
                Ok(memory) => memory,
                Err(refusal) => match bounce.filter(|pool| self.can_share(pool, windows)) {
                    Some(pool) => Self::alloc_from_pool(pool, size)?,
                    None => return Err(refusal),
                },
            },
            Route::Iommu { domain, .. } => self.alloc_translated(domain, size)?,
        };
        self.audit(dma, size as u64);
        if let Some(checker) = self.checker {
            checker.mapped(self.name, dma, physical, None, None, made_at);
        }
        Ok(Coherent { device: self, cpu, physical, dma, size, source })
    }

    fn alloc_from_pool(
        pool: &'static DmaPool<P>,
        size: usize,
    ) -> Result<(NonNull<u8>, PhysRange, DmaAddr, Source<P>), DmaApiError> {
        let buffer = pool.bounce.alloc(size, u64::MAX)?;
        let cpu = NonNull::new(buffer.virt.as_mut_ptr::<u8>()).ok_or(DmaApiError::OutOfMemory { size })?;
        let physical = PhysRange::new(buffer.phys, size as u64).ok_or(DmaApiError::OutOfMemory { size })?;
        Ok((cpu, physical, buffer.dma, Source::Pool(pool)))
    }

    /// Heap memory is mapped cached: shareable only with a device that snoops the caches.
    fn alloc_from_heap(
        &self,
        windows: &DmaDescription<'_>,
        size: usize,
    ) -> Result<(NonNull<u8>, PhysRange, DmaAddr, Source<P>), DmaApiError> {
        if !self.coherent {
            return Err(DmaApiError::NoCoherentMemory);
        }
        let layout = Layout::from_size_align(size.max(1), 4096).map_err(|_| DmaApiError::OutOfMemory { size })?;
        let cpu = self.platform.allocate_zeroed(layout).ok_or(DmaApiError::OutOfMemory { size })?;
        let placed = self.physical(VirtAddr::from_ptr(cpu.as_ptr()), size.max(1)).and_then(|physical| {
            let unreachable = DmaApiError::Unreachable { buffer: physical, limit: windows.limit(), pool: None };
            Ok((physical, self.direct_address(windows, physical).ok_or(unreachable)?))
        });
        match placed {
            Ok((physical, dma)) => Ok((cpu, physical, dma, Source::Heap(layout))),
            Err(error) => {
                // SAFETY: allocated just above with this layout, and not handed out.
                unsafe { self.platform.deallocate(cpu, layout) };
                Err(error)
            }
        }
    }

    /// Zeroed heap memory in whole granules, mapped read-write in the domain.
    fn alloc_translated(
        &self,
        domain: &'static Domain<P>,
        size: usize,
    ) -> Result<(NonNull<u8>, PhysRange, DmaAddr, Source<P>), DmaApiError> {
        if !self.coherent {
            return Err(DmaApiError::NoCoherentMemory);
        }
        let layout = Self::granule_layout(domain, size)?;
        let cpu = self.platform.allocate_zeroed(layout).ok_or(DmaApiError::OutOfMemory { size })?;
        let mapped = self.physical(VirtAddr::from_ptr(cpu.as_ptr()), layout.size()).and_then(|memory| {
            let dma = domain.map(memory, Access::ReadWrite, Origin::Coherent)?;
            Ok((PhysRange::new(memory.start(), size as u64).unwrap_or(memory), dma))
        });
        match mapped {
            Ok((physical, dma)) => Ok((cpu, physical, dma, Source::Domain(domain, layout))),
            Err(error) => {
                // SAFETY: allocated just above with this layout, and not handed out.
                unsafe { self.platform.deallocate(cpu, layout) };
                Err(error)
            }
        }
    }

    /// Whether coherent memory from `pool` is shared without maintenance with this device:
    /// it must be within reach, and uncached unless the device snoops the caches.
    fn can_share(&self, pool: &DmaPool<P>, windows: &DmaDescription<'_>) -> bool {
        windows.reaches(pool.range) && (self.coherent || !pool.coherent)
    }
}

impl<P: Platform + 'static> Coherent<'_, P> {
    /// The address to give the device.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }

    /// The size asked for.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether no byte was asked for.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Where the CPU reaches the memory, for structures that hardware and the CPU build in
    /// place (a virtqueue's rings). Only volatile or raw-pointer accesses are sound through it.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.cpu
    }

    /// The physical memory behind it.
    pub fn physical(&self) -> PhysRange {
        self.physical
    }

    /// Checks that a `T` fits at `offset` and is aligned there; returns its pointer.
    fn place<T>(&self, offset: usize, size: usize) -> Result<*mut T, DmaApiError> {
        let outside =
            DmaApiError::OutsideMapping { offset: offset as u64, size: size as u64, mapping_size: self.size as u64 };
        offset.checked_add(size).filter(|&end| end <= self.size).ok_or(outside)?;
        // SAFETY: `offset + size <= self.size`, inside the allocation.
        let at = unsafe { self.cpu.as_ptr().add(offset) };
        match (at as usize).is_multiple_of(align_of::<T>()) {
            true => Ok(at.cast()),
            false => Err(DmaApiError::Misaligned { offset, align: align_of::<T>() }),
        }
    }

    /// Reads the `T` at `offset`, as the device left it (one volatile access).
    pub fn read<T: FromBytes>(&self, offset: usize) -> Result<T, DmaApiError> {
        let at = self.place::<T>(offset, size_of::<T>())?;
        // SAFETY: `place` checked bounds and alignment; the memory lives as long as `self`;
        // `T: FromBytes` makes whatever bits the device wrote a valid `T`.
        Ok(unsafe { at.read_volatile() })
    }

    /// Writes `value` at `offset` (one volatile access), for the device to read.
    pub fn write<T: IntoBytes>(&self, offset: usize, value: T) -> Result<(), DmaApiError> {
        let at = self.place::<T>(offset, size_of::<T>())?;
        // SAFETY: `place` checked bounds and alignment; the memory is the CPU's and the
        // device's, never borrowed by Rust code.
        unsafe { at.write_volatile(value) };
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` into `out`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaApiError> {
        let at = self.place::<u8>(offset, out.len())?;
        for (index, byte) in out.iter_mut().enumerate() {
            // SAFETY: `place` checked that `offset + out.len()` lies inside the allocation.
            *byte = unsafe { at.add(index).read_volatile() };
        }
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), DmaApiError> {
        let at = self.place::<u8>(offset, data.len())?;
        for (index, byte) in data.iter().enumerate() {
            // SAFETY: as in `read_bytes`.
            unsafe { at.add(index).write_volatile(*byte) };
        }
        Ok(())
    }

    /// Frees the memory now, reporting a refusal (dropping does the same, logging it instead).
    pub fn free(self) -> Result<(), DmaApiError> {
        let result = self.release();
        core::mem::forget(self);
        result
    }

    /// Gives the memory up for good without freeing it: the device may still write it (its
    /// reset was not confirmed), so it must never be reused. The debug checker forgets it.
    pub fn abandon(self) {
        if let Some(checker) = self.device.checker {
            checker.unmapped(self.device.name, self.dma, None);
        }
        core::mem::forget(self);
    }

    fn release(&self) -> Result<(), DmaApiError> {
        let device = self.device;
        if let Some(checker) = device.checker {
            checker.unmapped(device.name, self.dma, None);
        }
        match self.source {
            Source::Pool(pool) => pool.bounce.free(self.dma, self.size)?,
            Source::Heap(layout) => {
                // SAFETY: allocated by `alloc_from_heap` with this layout; the owner is gone.
                unsafe { device.platform.deallocate(self.cpu, layout) }
            }
            Source::Domain(domain, layout) => {
                domain.unmap(self.dma, layout.size() as u64, true)?;
                // SAFETY: allocated by `alloc_translated` with this layout; the device lost
                // access above (strict unmap), and the owner is gone.
                unsafe { device.platform.deallocate(self.cpu, layout) }
            }
        }
        Ok(())
    }
}

impl<P: Platform + 'static> Drop for Coherent<'_, P> {
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            log::error!("{}: freeing {} coherent bytes at {:?} failed: {error}", self.device.name, self.size, self.dma);
        }
    }
}
