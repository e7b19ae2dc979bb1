//! IOVA allocation for one IOMMU domain, with Linux's per-size caches.
//!
//! Three kinds of address meet in DMA behind an IOMMU:
//!
//! ```text
//!   CPU ──VA──▶ MMU ──PA──▶ memory ◀──PA── SMMU (stage-1 tables of the device's domain) ◀──IOVA── device
//! ```
//!
//! - a *virtual address* (VA) is what the CPU's loads and stores use; the MMU translates it;
//! - a *physical address* (PA) is where the bytes are in memory;
//! - an *I/O virtual address* (IOVA, a [`DmaAddr`]) is what the device is told and puts on the
//!   bus. The SMMU walks the page tables of the device's *domain* to turn it into a PA, one
//!   granule at a time, so a device can reach only what its domain maps.
//!
//! Each domain therefore needs its own allocator of IOVA space: to map a buffer, the DMA layer
//! takes a free IOVA range from [`IovaAllocator::allocate`], writes page table entries from it
//! to the buffer's granules, and hands the device the IOVA; unmapping removes the entries and
//! gives the range back with [`IovaAllocator::free`]. This is Linux's `drivers/iommu/iova.c`
//! as `drivers/iommu/dma-iommu.c` drives it (`alloc_iova_fast` / `free_iova_fast`), and these
//! are its rules:
//!
//! - **Granules.** The space is counted in IOMMU granules: 4, 16 or 64 KiB, the three
//!   VMSAv8-64 translation granules an SMMUv3 context descriptor can select (IHI 0070, §5.4,
//!   CD.TG0). A request of `n` bytes takes `ceil(n / granule)` granules. IOVA 0 is never handed
//!   out (the space starts above it), so a device given a zeroed address faults instead of
//!   reaching a mapping.
//! - **Top-down.** The highest free place that fits is taken first, below the end of the space
//!   (the device's DMA limit), as `__alloc_and_insert_iova_range` does. Low IOVAs, which every
//!   device can reach, stay free for as long as possible.
//! - **Size alignment** (`alloc_iova(..., size_aligned = true)`): an IOVA is aligned to its size
//!   rounded up to a power of two granules, so a 3-granule request starts on a 4-granule
//!   boundary. A 2 MiB mapping then starts on a 2 MiB boundary, where the page tables can map it
//!   with one block entry instead of 512 page entries, and the SMMU's TLB holds it in one entry.
//! - **Size classes** (`iommu_dma_alloc_iova` rounds small sizes up): a request of at most 32
//!   granules reserves a whole power of two, 1, 2, 4, 8, 16 or 32 granules
//!   (`IOVA_RANGE_CACHE_MAX_SIZE` = 6 classes). Together with the alignment this makes any two
//!   IOVAs of one class interchangeable: each is a naturally aligned block of the same size.
//!   Only the `ceil(n / granule)` granules asked for are mapped; the rest of the block is
//!   reserved address space, nothing more.
//!
//! ## The caches ("rcaches")
//!
//! Devices map and unmap the same few sizes over and over (a network card, one packet buffer
//! per descriptor). Linux found the tree walk and its lock to be the bottleneck and added, per
//! class, *magazines* of freed IOVAs (`iova_rcache_insert`, `iova_rcache_get`): a freed IOVA of
//! a class is not returned to the free space but kept, still reserved, and the next allocation
//! of that class takes it back without touching the tree. Here each class has one bounded LIFO
//! cache (the kernel serialises a domain's allocator behind one lock, so per-CPU magazines would
//! buy nothing):
//!
//! - `free` of a class pushes the IOVA on its cache; when the cache is full its *oldest* entry
//!   goes back to the free space first. (Linux also keeps the newest entries in the CPU's loaded
//!   magazine and pushes older magazines out to the depot and then the tree.)
//! - `allocate` of a class pops the newest entry of its cache if there is one (a *hit*) and
//!   searches the free space otherwise (a *miss*).
//! - When the free space has no room, every cache is flushed back into it and the search runs
//!   once more before the request is refused, as `alloc_iova_fast` does with
//!   `free_cpu_cached_iovas` and `free_global_cached_iovas`. A cache can thus delay a refusal,
//!   never cause one.
//!
//! **Reuse guarantee:** with caching on, if IOVA `X` of a class is freed and the next operation
//! on the allocator allocates the same class, it returns `X`: the cache is a stack, and its
//! newest entry is never the one evicted. The kernel's isolation tests rely on this to know
//! which IOVA a stale device access would hit. Without a class (over 32 granules, or caching
//! off) the top-down search gives `X` back as long as nothing else was returned to the free
//! space since `X` was allocated: nothing above `X` fitted then, and the space has only shrunk.
//!
//! ## Reserved ranges
//!
//! Some IOVAs must never name a buffer because something else answers there: on the ARM
//! SMMU, the window where each domain maps the interrupt controller's MSI doorbell
//! (`IOMMU_RESV_SW_MSI`, see [`super::MSI_IOVA_BASE`]). [`IovaAllocator::reserve`] (Linux's
//! `reserve_iova`) takes the granules covering such a range out of the free space for good:
//! `allocate` never returns them (no cache ever holds them either), `free` of an address in
//! them is refused as unknown, and [`IovaAllocator::reservations`] lists them. The range is
//! clipped to the space. A reservation over a live allocation, or over an earlier reservation,
//! is refused and changes nothing: the allocator cannot take back what it handed out, and
//! where Linux merges overlapping reservations silently, here an overlap is a caller's bug
//! worth naming. Freed IOVAs waiting in a cache are not live: those the range covers go back
//! to the free space first, and are taken with the rest.
//!
//! ## The free space
//!
//! Free IOVA space is kept as coalesced ranges, in one set ordered by start (to merge a freed
//! range with its neighbours), and each also in the list of its *order*: the largest `k` such
//! that it holds a naturally aligned block of `2^k` granules (the lists of a buddy allocator,
//! but of whole ranges instead of split blocks). Free ranges never overlap, so the one that
//! starts highest also ends highest and holds the highest place for anything it can hold:
//!
//! - a power-of-two request of `2^k` granules fits every range of order `k` or more, and takes
//!   the top aligned block of the highest of them, found from the last entry of each non-empty
//!   list from `k` up (a bit per list says which are non-empty): O(log n), which covers every
//!   class;
//! - a larger request of `s` granules, `2^(k-1) < s < 2^k`, aligned to `2^k`, fits every range
//!   of order `k` or more, and perhaps a range of order `k-1`: those above the best of the
//!   former are tried downwards until one has an aligned start with room for `s` (Linux walks
//!   its whole tree the same way).
//!
//! Each range is in one list only. (Listing it in the list of every order it holds, as this
//! allocator once did, cost some 35 sorted-set updates per change for the large free range of a
//! 48-bit space: 10 to 20 µs to allocate or free an uncached 1 MiB IOVA in the emulated kernel.)
//! Freeing and looking up an allocation are O(log n) in the live allocations.
//!
//! ## Compared with the bounce pool
//!
//! The bounce pool (`swiotlb::pool`) hands out *physical* memory: slots of a real buffer that
//! the CPU copies data into, for devices that must not or cannot see the original. An IOVA is
//! only a *name*: allocating one reserves no memory, it reserves a window of the device's
//! address space that page tables then point at the caller's own buffer, with no copy.
//! Running out of IOVA space means running out of names, which caches can hold on to, so
//! they are flushed before a refusal.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use core::fmt;

use addr::DmaAddr;

/// Number of cached size classes: 1, 2, 4, 8, 16 and 32 granules (Linux:
/// `IOVA_RANGE_CACHE_MAX_SIZE`).
pub const CACHED_CLASSES: usize = 6;
/// The largest request, in granules, that is rounded up to its class and cached.
pub const LARGEST_CACHED_GRANULES: u64 = 1 << (CACHED_CLASSES - 1);
/// Freed IOVAs each class keeps by default (Linux: `IOVA_MAG_SIZE`, 127 in a magazine).
pub const DEFAULT_CACHE_CAPACITY: usize = 128;

/// IOMMU granules this allocator accepts (IHI 0070, §5.4, CD.TG0).
const GRANULES: [u64; 3] = [4 << 10, 16 << 10, 64 << 10];
/// One free-space list per possible block order; orders above 52 never occur with 4 KiB granules.
const ORDERS: usize = 64;

/// A request or release the allocator refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaError {
    /// A granule other than 4, 16 or 64 KiB.
    UnsupportedGranule {
        /// The granule asked for, in bytes.
        granule: u64,
    },
    /// A bound of the IOVA space that is not a multiple of the granule.
    UnalignedBound {
        /// The bound.
        bound: DmaAddr,
        /// The granule it should be a multiple of.
        granule: u64,
    },
    /// A space that would hand out IOVA 0.
    ZeroInSpace {
        /// The end of the space asked for.
        end: DmaAddr,
    },
    /// A space whose end is not above its start.
    EmptySpace {
        /// The start asked for.
        start: DmaAddr,
        /// The end asked for.
        end: DmaAddr,
    },
    /// An allocation of zero bytes.
    ZeroSize,
    /// No size-aligned place for the request exists in the whole space, even empty.
    TooLarge {
        /// The size asked for, in bytes.
        size: u64,
        /// The space's start.
        start: DmaAddr,
        /// The space's end.
        end: DmaAddr,
    },
    /// No free place fits the request now, even after the caches were flushed.
    NoRoom {
        /// The size asked for, in bytes.
        size: u64,
        /// The granules it takes.
        granules: u64,
        /// The granules free in the whole space, scattered.
        free_granules: u64,
    },
    /// No live allocation contains this IOVA (never allocated, or already freed).
    UnknownAddress {
        /// The address given.
        iova: DmaAddr,
    },
    /// The IOVA lies inside a live allocation that starts elsewhere.
    NotAllocationStart {
        /// The address given.
        iova: DmaAddr,
        /// Where the allocation holding it starts.
        allocation_start: DmaAddr,
    },
    /// A reservation over granules a live allocation holds: they cannot be taken back.
    ReserveOverLive {
        /// The first byte of the granules the reservation would take (clipped to the space).
        start: DmaAddr,
        /// The end of those granules.
        end: DmaAddr,
        /// Where the live allocation starts.
        allocation_start: DmaAddr,
        /// The end of the granules it holds (its whole power of two for a class request).
        allocation_end: DmaAddr,
    },
    /// A reservation over granules an earlier reservation already took.
    ReserveOverReserved {
        /// The first byte of the granules the reservation would take (clipped to the space).
        start: DmaAddr,
        /// The end of those granules.
        end: DmaAddr,
        /// Where the earlier reservation starts.
        reserved_start: DmaAddr,
        /// Where it ends.
        reserved_end: DmaAddr,
    },
    /// A free whose size rounds to a different number of granules than was allocated.
    SizeMismatch {
        /// The allocation's start.
        iova: DmaAddr,
        /// The granules it was allocated with.
        allocated_granules: u64,
        /// The size the free gave, in bytes.
        given_size: u64,
        /// The granules that size rounds to.
        given_granules: u64,
    },
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnsupportedGranule { granule } => {
                write!(f, "an IOMMU granule of {granule} bytes: only 4, 16 and 64 KiB exist")
            }
            Self::UnalignedBound { bound, granule } => {
                write!(f, "IOVA space bound {bound} is not a multiple of the {granule}-byte granule")
            }
            Self::ZeroInSpace { end } => {
                write!(f, "the IOVA space [0x0, {end}) would hand out IOVA 0; start it one granule up")
            }
            Self::EmptySpace { start, end } => write!(f, "the IOVA space [{start}, {end}) is empty"),
            Self::ZeroSize => write!(f, "an IOVA allocation of zero bytes"),
            Self::TooLarge { size, start, end } => write!(
                f,
                "{size} bytes have no size-aligned place in the IOVA space [{start}, {end}), even when it is empty"
            ),
            Self::NoRoom { size, granules, free_granules } => write!(
                f,
                "no free size-aligned run of {granules} granules for {size} bytes \
                 ({free_granules} granules free, caches flushed)"
            ),
            Self::UnknownAddress { iova } => write!(f, "no live IOVA allocation at {iova}"),
            Self::NotAllocationStart { iova, allocation_start } => {
                write!(f, "{iova} lies inside the IOVA allocation that starts at {allocation_start}")
            }
            Self::ReserveOverLive { start, end, allocation_start, allocation_end } => write!(
                f,
                "cannot reserve the IOVAs [{start}, {end}): the live allocation [{allocation_start}, \
                 {allocation_end}) holds some of them"
            ),
            Self::ReserveOverReserved { start, end, reserved_start, reserved_end } => write!(
                f,
                "cannot reserve the IOVAs [{start}, {end}): [{reserved_start}, {reserved_end}) \
                 is reserved already"
            ),
            Self::SizeMismatch { iova, allocated_granules, given_size, given_granules } => write!(
                f,
                "the IOVA allocation at {iova} was {allocated_granules} granules; \
                 {given_size} bytes are {given_granules}"
            ),
        }
    }
}

impl core::error::Error for IovaError {}

/// A snapshot of the allocator's state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaStats {
    /// Allocations handed out and not yet freed.
    pub live_allocations: usize,
    /// IOVA space the live allocations reserve: a class request counts its whole power of two.
    pub live_bytes: u64,
    /// Class allocations served from a cache.
    pub cache_hits: u64,
    /// Class allocations whose cache was empty (every one, when caching is disabled).
    pub cache_misses: u64,
    /// Freed IOVAs held in the caches, still reserved.
    pub cached_entries: usize,
    /// Times a full space made the allocator return the caches' entries to it.
    pub cache_flushes: u64,
    /// IOVA space taken out for good by [`IovaAllocator::reserve`].
    pub reserved_bytes: u64,
}

impl fmt::Display for IovaStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} live ({} bytes), cache {} hits {} misses, {} cached, {} flushes, {} bytes reserved",
            self.live_allocations,
            self.live_bytes,
            self.cache_hits,
            self.cache_misses,
            self.cached_entries,
            self.cache_flushes,
            self.reserved_bytes
        )
    }
}

/// The IOVA space of one IOMMU domain. All internal positions are in granules.
#[derive(Debug, PartialEq, Eq)]
pub struct IovaAllocator {
    granule_shift: u32,
    /// The usable space `[first, end)`.
    first: u64,
    end: u64,
    free: FreeSpace,
    /// Live allocations by first granule.
    live: BTreeMap<u64, Allocation>,
    /// Reserved ranges, first granule → end granule: never free, never live.
    reserved: BTreeMap<u64, u64>,
    /// `caches[k]`: freed blocks of `2^k` granules, newest at the back.
    caches: [VecDeque<u64>; CACHED_CLASSES],
    cache_capacity: usize,
    live_granules: u64,
    cache_hits: u64,
    cache_misses: u64,
    cache_flushes: u64,
}

/// What a live allocation was asked for and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Allocation {
    requested: u64,
    reserved: u64,
}

/// A request in granules: what was asked, what it reserves, and its alignment.
#[derive(Clone, Copy)]
struct Shape {
    requested: u64,
    reserved: u64,
    align_order: u32,
}

impl IovaAllocator {
    /// An allocator for the IOVA space `[start, end)`, with [`DEFAULT_CACHE_CAPACITY`] freed
    /// IOVAs cached per class.
    pub fn new(granule: u64, start: DmaAddr, end: DmaAddr) -> Result<Self, IovaError> {
        Self::with_cache_capacity(granule, start, end, DEFAULT_CACHE_CAPACITY)
    }

    /// As [`Self::new`], keeping at most `capacity` freed IOVAs per class; 0 disables caching
    /// (every free returns to the free space at once).
    pub fn with_cache_capacity(granule: u64, start: DmaAddr, end: DmaAddr, capacity: usize) -> Result<Self, IovaError> {
        check_space(granule, start, end)?;
        let granule_shift = granule.trailing_zeros();
        let (first, end) = (start.as_u64() >> granule_shift, end.as_u64() >> granule_shift);
        Ok(Self {
            granule_shift,
            first,
            end,
            free: FreeSpace::new(first, end),
            live: BTreeMap::new(),
            reserved: BTreeMap::new(),
            caches: core::array::from_fn(|_| VecDeque::with_capacity(capacity)),
            cache_capacity: capacity,
            live_granules: 0,
            cache_hits: 0,
            cache_misses: 0,
            cache_flushes: 0,
        })
    }

    /// The granule the space is counted in, in bytes.
    pub const fn granule(&self) -> u64 {
        1 << self.granule_shift
    }

    /// An IOVA for `size` bytes, aligned to the size rounded up to a power of two granules.
    pub fn allocate(&mut self, size: u64) -> Result<DmaAddr, IovaError> {
        let shape = self.shape(size)?;
        let first = match self.take_cached(shape) {
            Some(first) => first,
            None => self.take_free(shape, size)?,
        };
        self.live.insert(first, Allocation { requested: shape.requested, reserved: shape.reserved });
        self.live_granules += shape.reserved;
        Ok(self.address(first))
    }

    /// Release the allocation that [`Self::allocate`] returned as `iova` for `size` bytes (any
    /// size with the same number of granules). Anything else is refused and changes nothing.
    pub fn free(&mut self, iova: DmaAddr, size: u64) -> Result<(), IovaError> {
        let (first, allocation) = self.allocation_at(iova)?;
        let given_granules = size.div_ceil(self.granule());
        if given_granules != allocation.requested {
            return Err(IovaError::SizeMismatch {
                iova,
                allocated_granules: allocation.requested,
                given_size: size,
                given_granules,
            });
        }
        self.live.remove(&first);
        self.live_granules -= allocation.reserved;
        self.release(first, allocation.reserved);
        Ok(())
    }

    /// Takes the granules covering `[start, start + size)`, clipped to the space, out of the
    /// free space for good (Linux's `reserve_iova`): `allocate` never returns them and `free`
    /// refuses them. A range wholly outside the space reserves nothing and is accepted.
    ///
    /// Refused, changing nothing: a `size` of zero; a range that covers a granule a live
    /// allocation holds ([`IovaError::ReserveOverLive`]) or one reserved already
    /// ([`IovaError::ReserveOverReserved`]). Freed IOVAs held in a cache that the range covers
    /// leave the cache first.
    pub fn reserve(&mut self, start: DmaAddr, size: u64) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        // The end may be 2^64, which no u64 holds; in granules it fits.
        let end = (u128::from(start.as_u64()) + u128::from(size)).div_ceil(u128::from(self.granule()));
        let first = (start.as_u64() >> self.granule_shift).max(self.first);
        let end = (end as u64).min(self.end);
        if first >= end {
            return Ok(());
        }
        let (start, end_address) = (self.address(first), self.address(end));
        let live = self.live.range(..end).next_back().filter(|&(&at, allocation)| at + allocation.reserved > first);
        if let Some((&at, allocation)) = live {
            return Err(IovaError::ReserveOverLive {
                start,
                end: end_address,
                allocation_start: self.address(at),
                allocation_end: self.address(at + allocation.reserved),
            });
        }
        let reserved = self.reserved.range(..end).next_back().filter(|&(_, &reserved_end)| reserved_end > first);
        if let Some((&at, &reserved_end)) = reserved {
            return Err(IovaError::ReserveOverReserved {
                start,
                end: end_address,
                reserved_start: self.address(at),
                reserved_end: self.address(reserved_end),
            });
        }
        for (class, cache) in self.caches.iter_mut().enumerate() {
            let length = 1 << class;
            let (covered, kept): (VecDeque<u64>, VecDeque<u64>) =
                cache.drain(..).partition(|&block| block < end && block + length > first);
            *cache = kept;
            for block in covered {
                self.free.give_back(block, block + length);
            }
        }
        // Neither live, nor reserved, nor cached: every granule of [first, end) is free, and
        // free ranges are coalesced, so one range holds them all.
        let range = self.free.all.range(..=Range { start: first, end: u64::MAX }).next_back().copied();
        let range = range.filter(|range| range.start <= first && end <= range.end);
        let range = range.expect("granules neither live, reserved nor cached are free");
        self.free.take(range, first, end - first);
        self.reserved.insert(first, end);
        Ok(())
    }

    /// The space the allocator hands IOVAs out of, `[start, end)`.
    pub fn space(&self) -> (DmaAddr, DmaAddr) {
        (self.address(self.first), self.address(self.end))
    }

    /// The reserved ranges, lowest first, as (start, size in bytes).
    pub fn reservations(&self) -> impl Iterator<Item = (DmaAddr, u64)> + '_ {
        self.reserved.iter().map(|(&first, &end)| (self.address(first), (end - first) << self.granule_shift))
    }

    /// The allocator's state and counters now.
    pub fn stats(&self) -> IovaStats {
        IovaStats {
            live_allocations: self.live.len(),
            live_bytes: self.live_granules << self.granule_shift,
            cache_hits: self.cache_hits,
            cache_misses: self.cache_misses,
            cached_entries: self.caches.iter().map(VecDeque::len).sum(),
            cache_flushes: self.cache_flushes,
            reserved_bytes: self.reserved.iter().map(|(&first, &end)| end - first).sum::<u64>() << self.granule_shift,
        }
    }

    fn address(&self, granule_index: u64) -> DmaAddr {
        DmaAddr::new(granule_index << self.granule_shift)
    }

    /// The request in granules, or a refusal if it can never be served.
    fn shape(&self, size: u64) -> Result<Shape, IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        let requested = size.div_ceil(self.granule());
        let reserved = if requested <= LARGEST_CACHED_GRANULES { requested.next_power_of_two() } else { requested };
        let align_order = reserved.next_power_of_two().trailing_zeros();
        let highest_start = self.end.checked_sub(reserved).map(|top| align_down(top, align_order));
        if highest_start.is_none_or(|start| start < self.first) {
            let (start, end) = (self.address(self.first), self.address(self.end));
            return Err(IovaError::TooLarge { size, start, end });
        }
        Ok(Shape { requested, reserved, align_order })
    }

    /// The newest cached block of the request's class, if it has a class and the cache has one.
    fn take_cached(&mut self, shape: Shape) -> Option<u64> {
        let class = class_of(shape.reserved)?;
        let hit = self.caches[class].pop_back();
        match hit {
            Some(_) => self.cache_hits += 1,
            None => self.cache_misses += 1,
        }
        hit
    }

    /// The highest fitting place in the free space, flushing the caches into it once if needed.
    fn take_free(&mut self, shape: Shape, size: u64) -> Result<u64, IovaError> {
        let fit = self.free.highest_fit(shape.reserved, shape.align_order).or_else(|| {
            self.flush_caches().then(|| self.free.highest_fit(shape.reserved, shape.align_order)).flatten()
        });
        let Some((range, first)) = fit else {
            return Err(IovaError::NoRoom { size, granules: shape.reserved, free_granules: self.free.granules });
        };
        self.free.take(range, first, shape.reserved);
        Ok(first)
    }

    /// Return every cached block to the free space; false if there was none.
    fn flush_caches(&mut self) -> bool {
        let mut flushed = false;
        for (class, cache) in self.caches.iter_mut().enumerate() {
            for first in cache.drain(..) {
                self.free.give_back(first, first + (1 << class));
                flushed = true;
            }
        }
        self.cache_flushes += u64::from(flushed);
        flushed
    }

    /// The live allocation that starts at `iova`.
    fn allocation_at(&self, iova: DmaAddr) -> Result<(u64, Allocation), IovaError> {
        let granule_index = iova.as_u64() >> self.granule_shift;
        let containing = self.live.range(..=granule_index).next_back();
        match containing {
            Some((&first, &allocation)) if granule_index < first + allocation.reserved => {
                if iova == self.address(first) {
                    Ok((first, allocation))
                } else {
                    Err(IovaError::NotAllocationStart { iova, allocation_start: self.address(first) })
                }
            }
            _ => Err(IovaError::UnknownAddress { iova }),
        }
    }

    /// Keep a freed block in its class's cache, evicting the oldest entry when full, or return
    /// it to the free space.
    fn release(&mut self, first: u64, reserved: u64) {
        let cache = match class_of(reserved) {
            Some(class) if self.cache_capacity > 0 => &mut self.caches[class],
            _ => return self.free.give_back(first, first + reserved),
        };
        let evicted = if cache.len() == self.cache_capacity { cache.pop_front() } else { None };
        cache.push_back(first);
        if let Some(oldest) = evicted {
            self.free.give_back(oldest, oldest + reserved);
        }
    }
}

fn check_space(granule: u64, start: DmaAddr, end: DmaAddr) -> Result<(), IovaError> {
    if !GRANULES.contains(&granule) {
        return Err(IovaError::UnsupportedGranule { granule });
    }
    if let Some(bound) = [start, end].into_iter().find(|bound| !bound.is_aligned(granule)) {
        return Err(IovaError::UnalignedBound { bound, granule });
    }
    if start.as_u64() == 0 {
        return Err(IovaError::ZeroInSpace { end });
    }
    if end <= start {
        return Err(IovaError::EmptySpace { start, end });
    }
    Ok(())
}

/// The cache class of a reservation of `granules`, if it has one (it is then a power of two).
fn class_of(granules: u64) -> Option<usize> {
    (granules <= LARGEST_CACHED_GRANULES).then(|| granules.trailing_zeros() as usize)
}

fn align_down(value: u64, order: u32) -> u64 {
    value & !((1 << order) - 1)
}

/// A free range `[start, end)` of granules. Ordered by start: ranges never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    start: u64,
    end: u64,
}

impl Range {
    /// The highest start of a run of `length` granules aligned to `2^order` inside this range.
    fn highest_fit(self, length: u64, order: u32) -> Option<u64> {
        let start = align_down(self.end.checked_sub(length)?, order);
        (start >= self.start).then_some(start)
    }

    /// The largest `k` such that a block of `2^k` granules aligned to `2^k` fits.
    fn largest_block_order(self) -> usize {
        (1..ORDERS).take_while(|&order| self.highest_fit(1 << order, order as u32).is_some()).count()
    }
}

/// The free IOVA space: coalesced ranges, by start and by the largest aligned block they hold.
#[derive(Debug, PartialEq, Eq)]
struct FreeSpace {
    /// Every free range, ordered by start.
    all: BTreeSet<Range>,
    /// `by_order[k]`: the ranges whose largest naturally aligned block is `2^k` granules.
    by_order: [BTreeSet<Range>; ORDERS],
    /// Bit `k` set when `by_order[k]` is not empty.
    orders_present: u64,
    granules: u64,
}

impl FreeSpace {
    fn new(first: u64, end: u64) -> Self {
        let by_order = [const { BTreeSet::new() }; ORDERS];
        let mut space = Self { all: BTreeSet::new(), by_order, orders_present: 0, granules: 0 };
        space.give_back(first, end);
        space
    }

    /// The range and start of the highest place for `length` granules aligned to `2^order`.
    fn highest_fit(&self, length: u64, order: u32) -> Option<(Range, u64)> {
        // Every range of order `order` or more fits; the highest of them holds the best place.
        let sure = self.highest_of_order_at_least(order as usize);
        let best = sure.map(|range| (range, range.highest_fit(length, order).expect("holds an aligned block")));
        // Alignment beyond the length (a request that is no power of two): a range holding
        // only the smaller aligned block may still fit, and beat `best` if it lies above it.
        let smaller = length.ilog2() as usize;
        if smaller == order as usize {
            return best;
        }
        let above = Range { start: sure.map_or(0, |range| range.start), end: 0 };
        let candidates = self.by_order[smaller].range(above..).rev();
        candidates.filter_map(|&range| Some((range, range.highest_fit(length, order)?))).next().or(best)
    }

    /// The highest range of order `order` or more, if any.
    fn highest_of_order_at_least(&self, order: usize) -> Option<Range> {
        let present = self.orders_present & !((1u64 << order) - 1);
        (order..ORDERS).filter(|&k| present >> k & 1 == 1).filter_map(|k| self.by_order[k].last().copied()).max()
    }

    /// Remove `[first, first + length)` from `range`, which holds it.
    fn take(&mut self, range: Range, first: u64, length: u64) {
        self.unlist(range);
        self.list(Range { start: range.start, end: first });
        self.list(Range { start: first + length, end: range.end });
        self.granules -= length;
    }

    /// Add the free granules `[start, end)`, merging them with the ranges they touch.
    fn give_back(&mut self, start: u64, end: u64) {
        self.granules += end - start;
        let mut merged = Range { start, end };
        let below = self.all.range(..merged).next_back().copied();
        if let Some(below) = below.filter(|below| below.end == start) {
            self.unlist(below);
            merged.start = below.start;
        }
        let above = self.all.range(Range { start: end, end }..).next().copied();
        if let Some(above) = above.filter(|above| above.start == end) {
            self.unlist(above);
            merged.end = above.end;
        }
        self.list(merged);
    }

    fn list(&mut self, range: Range) {
        if range.start < range.end {
            let order = range.largest_block_order();
            self.all.insert(range);
            self.by_order[order].insert(range);
            self.orders_present |= 1 << order;
        }
    }

    fn unlist(&mut self, range: Range) {
        let order = range.largest_block_order();
        self.all.remove(&range);
        self.by_order[order].remove(&range);
        if self.by_order[order].is_empty() {
            self.orders_present &= !(1 << order);
        }
    }
}

#[cfg(test)]
mod tests;
