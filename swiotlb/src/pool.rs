//! The bounce pool: slots plus bytes plus the copy rules.
//!
//! [`BouncePool`] puts the pieces together: a [`Placement`] says where a request may go, the
//! [`SlotAllocator`] finds and takes the slots, and the pool copies bytes between the caller's
//! buffer and its bounce buffer according to the direction (rule 9).
//!
//! Each live region is remembered under its area's lock, keyed by the slot that holds the
//! buffer's first byte. Unmapping an address therefore finds its record directly; a sync of a
//! sub-range walks back at most one segment to the record of the buffer that contains it, and
//! measures its offset from the *buffer* start, never from the region start, so pre-padding
//! cannot shift the bytes it copies (R8). Copies happen with the area lock held: a concurrent
//! unmap of the same buffer waits, and the slots cannot be handed out while bytes still flow.

use core::fmt;
use core::ptr::NonNull;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use spin::MutexGuard;

use crate::constraints::{Constraints, DmaDirection, check_mask};
use crate::error::{DmaError, MaskKind, PoolError, RegionKind};
use crate::limits::max_mapping_size;
use crate::memory::PhysMemory;
use crate::placement::Placement;
use crate::slots::{Area, FirstArea, Geometry, Reserved, SlotAllocator};
use crate::stats::{Counters, Stats};
use crate::{DEFAULT_SEGMENT_SLOTS, DmaAddr, PAGE_SIZE, PhysAddr, PhysRange, SLOT_SHIFT, SLOT_SIZE, VirtAddr};

/// How to cut a pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Number of areas, a power of two dividing the slot count (Linux: one per CPU).
    pub areas: usize,
    /// Largest region in slots, a power of two of at least one page (Linux: 128, 256 KiB).
    pub segment_slots: usize,
    /// Which area a map tries first.
    pub first_area: FirstArea,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { areas: 1, segment_slots: DEFAULT_SEGMENT_SLOTS, first_area: FirstArea::Rotating }
    }
}

impl PoolConfig {
    /// A pool of `pool_bytes` cut as Linux cuts its own for `cpus` CPUs: one area per CPU, the
    /// count rounded up to a power of two (`swiotlb_adjust_nareas`), then halved until every
    /// area holds at least one segment (`limit_nareas`), so that the largest mapping still fits
    /// an empty area, and until the areas divide the slots. A map starts in the area of the CPU
    /// `this_cpu` names, so CPUs mapping at once take different locks.
    pub fn per_cpu(cpus: usize, pool_bytes: u64, this_cpu: fn() -> usize) -> Self {
        let segment_slots = DEFAULT_SEGMENT_SLOTS;
        let slots = pool_slots(pool_bytes);
        let mut areas = cpus.max(1).checked_next_power_of_two().unwrap_or(1);
        while areas > 1 && (slots / areas < segment_slots || !slots.is_multiple_of(areas)) {
            areas /= 2;
        }
        Self { areas, segment_slots, first_area: FirstArea::OfCpu(this_cpu) }
    }

    /// A restricted pool: cut as [`Self::per_cpu`], with a segment as long as its areas afford.
    ///
    /// Linux sized its 256 KiB segment for a pool that bounces now and then. Every byte a
    /// restricted pool's devices move goes through it, so the segment is the longest request
    /// they can make: a 1 MiB read through a 256 KiB segment is four device requests where a
    /// direct device makes one, and each costs the device a round trip. Here the segment grows
    /// to the longest power of two of which every area still holds four, up to
    /// [`RESTRICTED_SEGMENT_LIMIT`], never below Linux's. Four, so that the longest requests
    /// can be in flight together, the device moving one while the CPU copies the next, and one
    /// long-lived mapping cannot take every place a longest one fits. A pool too small to
    /// afford more keeps Linux's segment.
    pub fn restricted(cpus: usize, pool_bytes: u64, this_cpu: fn() -> usize) -> Self {
        let config = Self::per_cpu(cpus, pool_bytes, this_cpu);
        let quarter_area = pool_slots(pool_bytes) / config.areas / 4;
        let affordable = match quarter_area {
            0 => DEFAULT_SEGMENT_SLOTS,
            slots => 1 << slots.ilog2(),
        };
        let segment_slots = affordable.clamp(DEFAULT_SEGMENT_SLOTS, RESTRICTED_SEGMENT_LIMIT / SLOT_SIZE);
        Self { segment_slots, ..config }
    }
}

/// The longest segment a restricted pool is given: 1 MiB. A real disk's fixed cost per
/// request (tens of microseconds) is then a small share of the request's transfer; a longer
/// segment would save little more, while each longest mapping held more of the pool.
pub const RESTRICTED_SEGMENT_LIMIT: usize = 1 << 20;

/// The slots in a pool of `pool_bytes`, saturating where `usize` is narrower than the size.
fn pool_slots(pool_bytes: u64) -> usize {
    usize::try_from(pool_bytes >> SLOT_SHIFT).unwrap_or(usize::MAX)
}

/// A streaming mapping, as `map` made it. Everything a trace needs to show the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The address to give the device.
    pub dma: DmaAddr,
    /// Where the bounce buffer is in physical memory.
    pub bounce: PhysAddr,
    /// The buffer's size.
    pub size: usize,
    /// The allocated region, pre- and post-padding included.
    pub region: DmaAddr,
    /// Its length in bytes.
    pub region_len: usize,
    /// The region's slots, as pool slot indices.
    pub first_slot: usize,
    /// How many slots.
    pub slots: usize,
}

/// A coherent allocation from a restricted pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoherentBuffer {
    /// The address to give the device.
    pub dma: DmaAddr,
    /// Where it is in physical memory.
    pub phys: PhysAddr,
    /// Where the CPU reaches it.
    pub virt: VirtAddr,
    /// Its size.
    pub size: usize,
}

#[derive(Clone, Copy)]
struct Record {
    buffer: DmaAddr,
    size: usize,
    kind: Use,
    reserved: Reserved,
}

#[derive(Clone, Copy)]
enum Use {
    Streaming { orig: PhysAddr, direction: DmaDirection },
    Coherent,
}

impl Record {
    fn region_kind(&self) -> RegionKind {
        match self.kind {
            Use::Streaming { .. } => RegionKind::Streaming,
            Use::Coherent => RegionKind::Coherent,
        }
    }

    fn contains(&self, dma: DmaAddr) -> bool {
        dma.offset_from(self.buffer).is_some_and(|delta| delta < self.size as u64)
    }
}

/// Live regions of one area, indexed by the area-local slot of each buffer's first byte.
struct Book {
    records: Vec<Option<Record>>,
}

/// The CPU's pointer to the pool's first byte.
struct PoolBytes(NonNull<u8>);

// SAFETY: the pointer comes from `PhysMemory::window`, valid for the pool's whole range for as
// long as the memory (owned by the pool) lives. Threads only touch the bytes of slots they hold
// under the owning area's lock, so sharing the pointer creates no data race.
unsafe impl Send for PoolBytes {}
// SAFETY: as above.
unsafe impl Sync for PoolBytes {}

/// A swiotlb-style bounce pool over one physically contiguous range.
pub struct BouncePool<M: PhysMemory> {
    memory: M,
    phys: PhysRange,
    bytes: PoolBytes,
    slots: SlotAllocator<Book>,
    counters: Counters,
}

type AreaGuard<'a> = MutexGuard<'a, Area<Book>>;

impl<M: PhysMemory> BouncePool<M> {
    /// A pool over `phys`, which devices see at `dma_base` and the CPU reaches through
    /// `memory`.
    pub fn new(memory: M, phys: PhysRange, dma_base: DmaAddr, config: PoolConfig) -> Result<Self, PoolError> {
        let size = phys.size();
        if !size.is_multiple_of(SLOT_SIZE as u64) {
            return Err(PoolError::PartialSlot { size });
        }
        let start = phys.start();
        if !start.is_aligned(SLOT_SIZE as u64) || !dma_base.is_aligned(SLOT_SIZE as u64) {
            return Err(PoolError::MisalignedBase { phys: start, dma: dma_base });
        }
        if !dma_base.as_u64().wrapping_sub(start.as_u64()).is_multiple_of(PAGE_SIZE as u64) {
            return Err(PoolError::BusOffsetNotPageMultiple { phys: start, dma: dma_base });
        }
        if dma_base.checked_add(size).is_none() {
            return Err(PoolError::DmaRangeWraps { dma: dma_base, size });
        }
        let slots =
            usize::try_from(size >> SLOT_SHIFT).map_err(|_| PoolError::TooSmall { size, areas: config.areas })?;
        if slots < config.areas.max(1) {
            return Err(PoolError::TooSmall { size, areas: config.areas });
        }
        let geometry = Geometry::new(dma_base, slots, config.areas, config.segment_slots)?;
        let pointer = memory.window(start, slots * SLOT_SIZE).ok_or(PoolError::Unreachable { phys: start, size })?;
        let slots = SlotAllocator::new(geometry, |area_slots| Book { records: vec![None; area_slots] })
            .first_area(config.first_area);
        Ok(Self { memory, phys, bytes: PoolBytes(pointer), slots, counters: Counters::default() })
    }

    /// How the pool is cut: slots, areas, segment, bases.
    pub fn geometry(&self) -> &Geometry {
        self.slots.geometry()
    }

    /// The pool's physical memory.
    pub fn phys_range(&self) -> PhysRange {
        self.phys
    }

    /// The memory the pool copies through (in host tests: the simulated RAM).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Bounce `size` bytes at `orig` for a device: find slots, copy the bytes in, and return
    /// the DMA address to hand to the device.
    pub fn map(
        &self,
        orig: PhysAddr,
        size: usize,
        direction: DmaDirection,
        constraints: &Constraints,
    ) -> Result<Mapping, DmaError> {
        self.counted(self.try_map(orig, size, direction, constraints))
    }

    /// End a streaming mapping: copy the device's writes back (from-device, bidirectional) and
    /// release exactly the slots `map` took. `size` must be the mapped size.
    pub fn unmap(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        self.counted(self.try_unmap(dma, size))
    }

    /// Give the CPU the device's writes in `[dma, dma + size)`, a range inside one mapping.
    pub fn sync_for_cpu(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        self.counted(self.try_sync(dma, size, Toward::Cpu))
    }

    /// Give the device the CPU's writes in `[dma, dma + size)`, a range inside one mapping.
    pub fn sync_for_device(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        self.counted(self.try_sync(dma, size, Toward::Device))
    }

    /// Zeroed memory shared with a device, for a restricted pool's `dma_alloc_coherent` (rule 5).
    pub fn alloc(&self, size: usize, dma_mask: u64) -> Result<CoherentBuffer, DmaError> {
        self.counted(self.try_alloc(size, dma_mask))
    }

    /// Return a coherent allocation. `size` must be the allocated size.
    pub fn free(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        self.counted(self.try_free(dma, size))
    }

    /// The largest size that always maps on an empty pool under `constraints` (rule 7).
    pub fn max_mapping_size(&self, constraints: &Constraints) -> Result<usize, DmaError> {
        constraints.validate()?;
        Ok(max_mapping_size(self.geometry(), constraints))
    }

    /// The counters and occupancy now.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot(self.geometry().slots)
    }

    /// See [`SlotAllocator::occupancy_map`].
    pub fn occupancy_map(&self, columns_per_area: usize) -> String {
        self.slots.occupancy_map(columns_per_area)
    }

    /// Whether each slot is free, in pool order.
    pub fn slot_states(&self) -> Vec<bool> {
        self.slots.slot_states()
    }

    fn counted<T>(&self, result: Result<T, DmaError>) -> Result<T, DmaError> {
        if let Err(error) = &result {
            self.counters.failed(error.reason());
        }
        result
    }

    fn try_map(
        &self,
        orig: PhysAddr,
        size: usize,
        direction: DmaDirection,
        constraints: &Constraints,
    ) -> Result<Mapping, DmaError> {
        let placement = Placement::streaming(self.geometry(), orig, size, constraints)?;
        let source = self.memory.window(orig, size).ok_or(DmaError::BufferUnreachable { orig, size })?;
        let mapping = self
            .slots
            .reserve(&placement, |area, reserved| {
                let mapping = self.describe(&placement, reserved);
                let region = self.cpu_pointer(mapping.region);
                // SAFETY: the region's slots were just reserved under this area's lock, so no
                // one else touches them; they lie inside the pool's window. `source` is valid for
                // `size` bytes by the `PhysMemory` contract; `copy` tolerates overlap.
                unsafe {
                    // Lesson `--break zero-padding`: the padding keeps whatever it held.
                    if constraints.zero_padding && !cfg!(feature = "break-zero-padding") {
                        zero_padding(region, placement.offset, size, mapping.region_len);
                    }
                    self.memory.copy(source.as_ptr(), region.add(placement.offset), size);
                }
                let record = Record { buffer: mapping.dma, size, kind: Use::Streaming { orig, direction }, reserved };
                self.remember(area, record);
                mapping
            })
            .ok_or_else(|| self.no_space(&placement, constraints))?;
        self.counters.took(mapping.slots);
        self.counters.mapped();
        self.counters.bounced_to_device(size);
        Ok(mapping)
    }

    fn try_unmap(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        let (mut area, record) = self.region_starting_at(dma, size, RegionKind::Streaming)?;
        if let Use::Streaming { orig, direction } = record.kind
            && direction.copies_to_cpu()
        {
            self.copy_to_cpu(orig, dma, size)?;
        }
        self.forget(&mut area, &record);
        self.counters.unmapped();
        Ok(())
    }

    fn try_sync(&self, dma: DmaAddr, size: usize, toward: Toward) -> Result<(), DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let (_area, record) = self.region_containing(dma)?;
        let Use::Streaming { orig, direction } = record.kind else {
            return Err(DmaError::WrongKind { dma, expected: RegionKind::Streaming, found: RegionKind::Coherent });
        };
        let delta = dma.offset_from(record.buffer).unwrap_or(0);
        if delta.checked_add(size as u64).is_none_or(|end| end > record.size as u64) {
            return Err(DmaError::OutOfRange { dma, size, buffer: record.buffer, buffer_size: record.size });
        }
        // The caller's bytes at the same distance from the start as `dma` is from the buffer's.
        let orig = PhysAddr::new(orig.as_u64() + delta);
        match toward {
            Toward::Cpu if direction.copies_to_cpu() => self.copy_to_cpu(orig, dma, size),
            Toward::Device if direction.copies_to_device() => self.copy_to_device(orig, dma, size),
            _ => Ok(()),
        }
    }

    fn try_alloc(&self, size: usize, dma_mask: u64) -> Result<CoherentBuffer, DmaError> {
        check_mask(MaskKind::Dma, dma_mask)?;
        let placement = Placement::coherent(self.geometry(), size, dma_mask)?;
        let buffer = self
            .slots
            .reserve(&placement, |area, reserved| {
                let mapping = self.describe(&placement, reserved);
                let region = self.cpu_pointer(mapping.region);
                // SAFETY: freshly reserved slots inside the pool's window, held under the lock.
                unsafe { core::ptr::write_bytes(region, 0, mapping.region_len) };
                let record = Record { buffer: mapping.dma, size, kind: Use::Coherent, reserved };
                self.remember(area, record);
                CoherentBuffer { dma: mapping.dma, phys: mapping.bounce, virt: VirtAddr::from_ptr(region), size }
            })
            .ok_or_else(|| self.no_space(&placement, &Constraints::NONE.with_dma_mask(dma_mask)))?;
        self.counters.took(placement.region_slots);
        self.counters.allocated();
        Ok(buffer)
    }

    fn try_free(&self, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        let (mut area, record) = self.region_starting_at(dma, size, RegionKind::Coherent)?;
        self.forget(&mut area, &record);
        self.counters.freed();
        Ok(())
    }

    fn describe(&self, placement: &Placement, reserved: Reserved) -> Mapping {
        let geometry = self.geometry();
        let region = geometry.slot_dma(reserved.first_slot);
        let from_pool_start = ((reserved.first_slot << SLOT_SHIFT) + placement.offset) as u64;
        Mapping {
            dma: region.add(placement.offset as u64),
            bounce: self.phys.start().add(from_pool_start),
            size: placement.size,
            region,
            region_len: reserved.slots * SLOT_SIZE,
            first_slot: reserved.first_slot,
            slots: reserved.slots,
        }
    }

    fn no_space(&self, placement: &Placement, constraints: &Constraints) -> DmaError {
        DmaError::NoSpace {
            size: placement.size,
            region_slots: placement.region_slots,
            free_slots: self.geometry().slots - self.slots.used_slots(),
            min_align_mask: constraints.min_align_mask,
            alloc_align_mask: constraints.alloc_align_mask,
        }
    }

    fn remember(&self, area: &mut Area<Book>, record: Record) {
        let local = self.local_slot(area, record.buffer);
        area.book.records[local] = Some(record);
    }

    fn forget(&self, area: &mut AreaGuard<'_>, record: &Record) {
        let local = self.local_slot(area, record.buffer);
        area.book.records[local] = None;
        let (first_slot, slots) = match cfg!(feature = "break-exact-release") {
            // Lesson: release what the buffer spans from its own slot, as Linux did before the
            // R3/R6 fixes; its pre-padding slots and alignment slack are never given back.
            true => (area.first_slot() + local, record.size.div_ceil(SLOT_SIZE)),
            false => (record.reserved.first_slot, record.reserved.slots),
        };
        area.release(first_slot, slots);
        self.counters.gave_back(slots);
    }

    /// The area-local slot of an address known to lie in `area`.
    fn local_slot(&self, area: &Area<Book>, dma: DmaAddr) -> usize {
        let offset = dma.offset_from(self.geometry().dma_base).unwrap_or(0);
        (offset >> SLOT_SHIFT) as usize - area.first_slot()
    }

    /// The record of the buffer that starts exactly at `dma`, of the expected kind and size.
    fn region_starting_at(
        &self,
        dma: DmaAddr,
        size: usize,
        expected: RegionKind,
    ) -> Result<(AreaGuard<'_>, Record), DmaError> {
        let (area, record) = self.region_containing(dma)?;
        if record.buffer != dma {
            return Err(DmaError::NotRegionStart { dma, region_start: record.buffer });
        }
        if record.region_kind() != expected {
            return Err(DmaError::WrongKind { dma, expected, found: record.region_kind() });
        }
        if record.size != size {
            return Err(DmaError::SizeMismatch { dma, mapped: record.size, given: size });
        }
        Ok((area, record))
    }

    /// The record of the live buffer that contains `dma`, with its area locked. The buffer
    /// starts in the same slot or at most one segment before.
    fn region_containing(&self, dma: DmaAddr) -> Result<(AreaGuard<'_>, Record), DmaError> {
        let unknown = DmaError::UnknownAddress { dma };
        let slot = self.geometry().slot_of(dma).ok_or(unknown)?;
        let area = self.slots.lock_area_of(slot).ok_or(unknown)?;
        let local = slot - area.first_slot();
        let earliest = local.saturating_sub(self.geometry().segment_slots);
        let nearest = (earliest..=local).rev().find_map(|index| area.book.records[index]);
        match nearest {
            Some(record) if record.contains(dma) => Ok((area, record)),
            _ => Err(unknown),
        }
    }

    fn cpu_pointer(&self, dma: DmaAddr) -> *mut u8 {
        let offset = dma.offset_from(self.geometry().dma_base).unwrap_or(0) as usize;
        // SAFETY: callers pass addresses of reserved slots, inside the pool's window.
        unsafe { self.bytes.0.as_ptr().add(offset) }
    }

    fn copy_to_cpu(&self, orig: PhysAddr, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        let target = self.memory.window(orig, size).ok_or(DmaError::BufferUnreachable { orig, size })?;
        // SAFETY: `dma..dma + size` lies in a live buffer whose area lock the caller holds;
        // `target` is valid for `size` bytes by the `PhysMemory` contract.
        unsafe { self.memory.copy(self.cpu_pointer(dma), target.as_ptr(), size) };
        self.counters.bounced_to_cpu(size);
        Ok(())
    }

    fn copy_to_device(&self, orig: PhysAddr, dma: DmaAddr, size: usize) -> Result<(), DmaError> {
        let source = self.memory.window(orig, size).ok_or(DmaError::BufferUnreachable { orig, size })?;
        // SAFETY: as in `copy_to_cpu`, the other way round.
        unsafe { self.memory.copy(source.as_ptr(), self.cpu_pointer(dma), size) };
        self.counters.bounced_to_device(size);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Toward {
    Cpu,
    Device,
}

/// Zero the region around the buffer `[offset, offset + size)` (rule 10).
///
/// # Safety
/// `region` must be valid for writes of `region_len` bytes, and `offset + size <= region_len`.
unsafe fn zero_padding(region: *mut u8, offset: usize, size: usize, region_len: usize) {
    let after = offset + size;
    // SAFETY: both ranges lie inside the region, by the caller's promise.
    unsafe {
        core::ptr::write_bytes(region, 0, offset);
        core::ptr::write_bytes(region.add(after), 0, region_len - after);
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pre_padding = self.dma.offset_from(self.region).unwrap_or(0);
        let post_padding = self.region_len as u64 - pre_padding - self.size as u64;
        write!(
            f,
            "{} bytes at {} (bounce {}): slots {}..{} = [{}, +{:#x}), pre-padding {:#x}, \
             post-padding {:#x}",
            self.size,
            self.dma,
            self.bounce,
            self.first_slot,
            self.first_slot + self.slots,
            self.region,
            self.region_len,
            pre_padding,
            post_padding
        )
    }
}
