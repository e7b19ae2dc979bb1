//! What the pool has been doing, in numbers a teaching OS can print.
//!
//! Counters are atomics updated outside the area locks: a snapshot is a consistent-enough
//! picture for a human, not a synchronisation point.

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::error::FailureReason;

#[derive(Default)]
pub(crate) struct Counters {
    slots_in_use: AtomicUsize,
    high_water: AtomicUsize,
    maps: AtomicU64,
    unmaps: AtomicU64,
    allocs: AtomicU64,
    frees: AtomicU64,
    bytes_to_device: AtomicU64,
    bytes_to_cpu: AtomicU64,
    no_space: AtomicU64,
    too_large: AtomicU64,
    unaddressable: AtomicU64,
    bad_request: AtomicU64,
    bad_handle: AtomicU64,
}

impl Counters {
    pub fn took(&self, slots: usize) {
        let now = self.slots_in_use.fetch_add(slots, Relaxed) + slots;
        self.high_water.fetch_max(now, Relaxed);
    }

    pub fn gave_back(&self, slots: usize) {
        self.slots_in_use.fetch_sub(slots, Relaxed);
    }

    pub fn mapped(&self) {
        self.maps.fetch_add(1, Relaxed);
    }

    pub fn unmapped(&self) {
        self.unmaps.fetch_add(1, Relaxed);
    }

    pub fn allocated(&self) {
        self.allocs.fetch_add(1, Relaxed);
    }

    pub fn freed(&self) {
        self.frees.fetch_add(1, Relaxed);
    }

    pub fn bounced_to_device(&self, bytes: usize) {
        self.bytes_to_device.fetch_add(bytes as u64, Relaxed);
    }

    pub fn bounced_to_cpu(&self, bytes: usize) {
        self.bytes_to_cpu.fetch_add(bytes as u64, Relaxed);
    }

    pub fn failed(&self, reason: FailureReason) {
        let counter = match reason {
            FailureReason::NoSpace => &self.no_space,
            FailureReason::TooLarge => &self.too_large,
            FailureReason::Unaddressable => &self.unaddressable,
            FailureReason::BadRequest => &self.bad_request,
            FailureReason::BadHandle => &self.bad_handle,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, slots_total: usize) -> Stats {
        Stats {
            slots_total,
            slots_in_use: self.slots_in_use.load(Relaxed),
            high_water: self.high_water.load(Relaxed),
            maps: self.maps.load(Relaxed),
            unmaps: self.unmaps.load(Relaxed),
            allocs: self.allocs.load(Relaxed),
            frees: self.frees.load(Relaxed),
            bytes_to_device: self.bytes_to_device.load(Relaxed),
            bytes_to_cpu: self.bytes_to_cpu.load(Relaxed),
            failures: Failures {
                no_space: self.no_space.load(Relaxed),
                too_large: self.too_large.load(Relaxed),
                unaddressable: self.unaddressable.load(Relaxed),
                bad_request: self.bad_request.load(Relaxed),
                bad_handle: self.bad_handle.load(Relaxed),
            },
        }
    }
}

/// A snapshot of the pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Slots in the pool.
    pub slots_total: usize,
    /// Slots held by live regions now.
    pub slots_in_use: usize,
    /// The most slots ever in use at once.
    pub high_water: usize,
    /// Streaming mappings made.
    pub maps: u64,
    /// Streaming mappings ended.
    pub unmaps: u64,
    /// Coherent allocations made.
    pub allocs: u64,
    /// Coherent allocations freed.
    pub frees: u64,
    /// Bytes copied from callers' buffers into the pool.
    pub bytes_to_device: u64,
    /// Bytes copied from the pool back into callers' buffers.
    pub bytes_to_cpu: u64,
    /// Refusals, by reason.
    pub failures: Failures,
}

/// Refusals, by [`FailureReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// No room right now.
    pub no_space: u64,
    /// Too large for any pool state.
    pub too_large: u64,
    /// Out of the device's DMA mask.
    pub unaddressable: u64,
    /// Bad input: zero sizes, masks that name no alignment, unreachable buffers.
    pub bad_request: u64,
    /// Unmaps, frees and syncs of addresses the pool did not hand out as given.
    pub bad_handle: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "slots {}/{} in use (high water {})", self.slots_in_use, self.slots_total, self.high_water)?;
        writeln!(f, "maps {} unmaps {} allocs {} frees {}", self.maps, self.unmaps, self.allocs, self.frees)?;
        writeln!(f, "bounced {} B to device, {} B to cpu", self.bytes_to_device, self.bytes_to_cpu)?;
        let failures = &self.failures;
        write!(
            f,
            "refused: {} no space, {} too large, {} unaddressable, {} bad request, {} bad handle",
            failures.no_space, failures.too_large, failures.unaddressable, failures.bad_request, failures.bad_handle
        )
    }
}
