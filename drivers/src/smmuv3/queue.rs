//! The SMMU's circular queues in memory (IHI 0070, 3.5 "Command and Event queues").
//!
//! A queue is `2^n` fixed-size entries and two positions: PROD, where the producer writes next,
//! and CONS, where the consumer reads next. For the command queue software produces and the
//! SMMU consumes; for the event queue it is the other way round. Each side owns one register
//! and only reads the other's.
//!
//! A position is the entry index plus one more bit above it, the *wrap* bit, which flips every
//! time the index passes the end (3.5.1 "SMMU circular queues"):
//!
//! ```text
//!   n = 2 (4 entries)     wrap index
//!   empty:   PROD = 1 01, CONS = 1 01   same index, same wrap
//!   full:    PROD = 0 01, CONS = 1 01   same index, wrap differs: PROD is a lap ahead
//! ```
//!
//! Without the wrap bit "same index" would mean both empty and full, and one entry would
//! have to stay unused. The registers hold other flags above the position (CONS.ERR,
//! PROD.OVFLG), so every comparison masks them off first.

use core::ptr::NonNull;

use addr::PhysAddr;
use tock_registers::LocalRegisterCopy;

use super::registers::QUEUE_BASE;

/// Position arithmetic for a queue of `2^log2_entries` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ring {
    log2_entries: u32,
}

impl Ring {
    pub(super) const fn new(log2_entries: u32) -> Self {
        Self { log2_entries }
    }

    pub(super) const fn log2_entries(self) -> u32 {
        self.log2_entries
    }

    pub(super) const fn entries(self) -> u32 {
        1 << self.log2_entries
    }

    const fn wrap_bit(self) -> u32 {
        1 << self.log2_entries
    }

    /// The register bits that are the position: the index and the wrap bit.
    pub(super) const fn position_mask(self) -> u32 {
        (self.wrap_bit() << 1) - 1
    }

    /// The entry a position points at.
    pub(super) const fn slot(self, position: u32) -> usize {
        (position & (self.entries() - 1)) as usize
    }

    /// The position after `position`: past the last entry, the index restarts at 0 and the
    /// wrap bit flips.
    pub(super) const fn next(self, position: u32) -> u32 {
        (position + 1) & self.position_mask()
    }

    pub(super) const fn is_empty(self, producer: u32, consumer: u32) -> bool {
        (producer ^ consumer) & self.position_mask() == 0
    }

    pub(super) const fn is_full(self, producer: u32, consumer: u32) -> bool {
        (producer ^ consumer) & self.position_mask() == self.wrap_bit()
    }

    /// How many entries wait between `consumer` and `producer`: counted in positions (index
    /// and wrap bit), 0 when empty and the queue's size when full; never more, since the
    /// producer waits for room.
    pub(super) const fn waiting(self, producer: u32, consumer: u32) -> u32 {
        producer.wrapping_sub(consumer) & self.position_mask()
    }
}

/// A queue's entries in memory, shared with the SMMU.
pub(super) struct Queue {
    entries: NonNull<u64>,
    physical: PhysAddr,
    pub(super) ring: Ring,
    words_per_entry: usize,
}

impl Queue {
    /// # Safety
    /// `entries` points at `ring.entries() * words_per_entry` zeroed 64-bit words that live as
    /// long as the queue, at physical address `physical`, aligned to their size.
    pub(super) unsafe fn new(entries: NonNull<u64>, physical: PhysAddr, ring: Ring, words_per_entry: usize) -> Self {
        Self { entries, physical, ring, words_per_entry }
    }

    pub(super) const fn bytes(ring: Ring, words_per_entry: usize) -> usize {
        ring.entries() as usize * words_per_entry * 8
    }

    /// The value of SMMU_CMDQ_BASE or SMMU_EVENTQ_BASE for this queue (6.3.25, 6.3.28),
    /// with the cache allocation hint set.
    pub(super) fn base_register(&self) -> u64 {
        let mut base = LocalRegisterCopy::<u64, QUEUE_BASE::Register>::new(0);
        base.write(
            QUEUE_BASE::ALLOCATE::SET
                + QUEUE_BASE::ADDR.val(self.physical.as_u64() >> 5)
                + QUEUE_BASE::LOG2SIZE.val(u64::from(self.ring.log2_entries())),
        );
        base.get()
    }

    /// Writes the entry at `position`; the caller publishes it with a barrier before moving PROD.
    pub(super) fn write(&mut self, position: u32, words: &[u64]) {
        debug_assert_eq!(words.len(), self.words_per_entry);
        let first = self.ring.slot(position) * self.words_per_entry;
        for (index, word) in words.iter().enumerate() {
            // SAFETY: the slot lies inside the queue (`new`), and the SMMU reads it only once
            // PROD moves past it.
            unsafe { self.entries.add(first + index).write_volatile(word.to_le()) };
        }
    }

    /// Reads the entry at `position`.
    pub(super) fn read<const WORDS: usize>(&self, position: u32) -> [u64; WORDS] {
        debug_assert_eq!(WORDS, self.words_per_entry);
        let first = self.ring.slot(position) * self.words_per_entry;
        // SAFETY: the slot lies inside the queue (`new`).
        core::array::from_fn(|index| u64::from_le(unsafe { self.entries.add(first + index).read_volatile() }))
    }
}
