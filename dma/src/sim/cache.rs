//! A write-back data cache, as a non-coherent device experiences it.
//!
//! Two copies of RAM are kept: what the CPU sees (`cpu`: its loads and stores, through the
//! cache) and what memory holds at the point of coherency (`memory`: what a device that does
//! not snoop reads and writes). They differ exactly where the cache holds a line that differs
//! from memory:
//!
//! ```text
//!   CPU store ─▶ cpu bytes (the line becomes dirty)        device write ─▶ memory bytes
//!   CPU load  ◀─ cpu bytes                                 device read  ◀─ memory bytes
//!   clean       dirty line ─▶ memory                       (a line the cache does not hold
//!   invalidate  memory ─▶ cpu bytes (dirty bytes lost)      shows memory to the CPU at once)
//!   eviction    dirty line ─▶ memory, then dropped; at random moments
//!   speculation a line is fetched into the cache, clean; at random moments
//! ```
//!
//! The CPU side is plain memory: the API under test, the bounce pool's copies and the tests
//! themselves read and write `cpu` through ordinary pointers, as on a real CPU. The cache
//! notices lazily: a line it does not hold whose CPU bytes differ from memory was written by
//! the CPU, so it is a dirty line (write-allocate), fetched with memory's bytes as they were.
//! A line it holds keeps a *snapshot* of what it fetched; it is dirty when the CPU bytes differ
//! from the snapshot. Every event (a device access, a maintenance operation, a tick) first
//! brings this directory up to date for the lines it touches.
//!
//! Uncached ranges (pools mapped non-cacheable for devices that do not snoop) never hold
//! lines: a CPU store there goes straight to memory.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use addr::PhysRange;

/// The cache's state, beside the two copies of RAM.
pub(crate) struct Cache {
    /// Line size in bytes, a power of two.
    pub(crate) line: usize,
    /// Lines held, by line index (physical address / line), each with what it fetched.
    held: BTreeMap<u64, Box<[u8]>>,
    /// Ranges the CPU maps uncached.
    uncached: Vec<PhysRange>,
}

/// Both copies of RAM, as byte slices starting at the RAM's base (line index 0 = `base`).
pub(crate) struct Ram<'a> {
    pub(crate) base: u64,
    pub(crate) cpu: &'a mut [u8],
    pub(crate) memory: &'a mut [u8],
}

impl Ram<'_> {
    fn span(&self, line: u64, size: usize) -> core::ops::Range<usize> {
        let start = (line * size as u64 - self.base) as usize;
        start..start + size
    }
}

impl Cache {
    pub(crate) fn new(line: usize) -> Self {
        Self { line, held: BTreeMap::new(), uncached: Vec::new() }
    }

    /// Maps `range` uncached from now on (it must hold no lines).
    pub(crate) fn set_uncached(&mut self, range: PhysRange) {
        self.uncached.push(range);
    }

    fn is_uncached(&self, line: u64) -> bool {
        let address = addr::PhysAddr::new(line * self.line as u64);
        self.uncached.iter().any(|range| range.contains(address))
    }

    /// The line indices `range` touches.
    pub(crate) fn lines_of(&self, range: PhysRange) -> core::ops::Range<u64> {
        let line = self.line as u64;
        range.start().as_u64() / line..range.end().as_u64().div_ceil(line)
    }

    /// Brings the directory up to date for `line`: an uncached line's CPU stores reach memory;
    /// a cached line the cache does not hold but whose CPU bytes differ was written by the CPU.
    fn notice(&mut self, ram: &mut Ram<'_>, line: u64) {
        let span = ram.span(line, self.line);
        if self.is_uncached(line) {
            ram.memory[span.clone()].copy_from_slice(&ram.cpu[span]);
        } else if !self.held.contains_key(&line) && ram.cpu[span.clone()] != ram.memory[span.clone()] {
            self.held.insert(line, ram.memory[span].into());
        }
    }

    fn is_dirty(&self, ram: &Ram<'_>, line: u64) -> bool {
        self.held.get(&line).is_some_and(|snapshot| **snapshot != ram.cpu[ram.span(line, self.line)])
    }

    /// `DC CVAC` on every line of `range`.
    pub(crate) fn clean(&mut self, ram: &mut Ram<'_>, range: PhysRange) {
        for line in self.lines_of(range) {
            self.notice(ram, line);
            if self.is_dirty(ram, line) {
                let span = ram.span(line, self.line);
                ram.memory[span.clone()].copy_from_slice(&ram.cpu[span.clone()]);
                self.held.insert(line, ram.cpu[span].into());
            }
        }
    }

    /// `DC IVAC` on every line of `range`: whatever the CPU had not written back is lost.
    pub(crate) fn invalidate(&mut self, ram: &mut Ram<'_>, range: PhysRange) {
        for line in self.lines_of(range) {
            self.notice(ram, line);
            if self.held.remove(&line).is_some() {
                let span = ram.span(line, self.line);
                ram.cpu[span.clone()].copy_from_slice(&ram.memory[span]);
            }
        }
    }

    /// `DC CIVAC` on every line of `range`: written back if dirty, then dropped. What Linux does
    /// to the partial lines at the edges of a buffer; it keeps the CPU's bytes and loses the
    /// device's, where both wrote one line.
    pub(crate) fn clean_and_invalidate(&mut self, ram: &mut Ram<'_>, range: PhysRange) {
        self.clean(ram, range);
        self.invalidate(ram, range);
    }

    /// The cache needs the room: a dirty line is written back, any line dropped.
    pub(crate) fn evict(&mut self, ram: &mut Ram<'_>, line: u64) {
        self.notice(ram, line);
        if self.is_dirty(ram, line) {
            let span = ram.span(line, self.line);
            ram.memory[span.clone()].copy_from_slice(&ram.cpu[span]);
        }
        if self.held.remove(&line).is_some() {
            let span = ram.span(line, self.line);
            ram.cpu[span.clone()].copy_from_slice(&ram.memory[span]);
        }
    }

    /// The CPU fetches `line` ahead of need (a prefetch, a speculative load): clean.
    pub(crate) fn speculate(&mut self, ram: &mut Ram<'_>, line: u64) {
        self.notice(ram, line);
        if !self.is_uncached(line) && !self.held.contains_key(&line) {
            let span = ram.span(line, self.line);
            self.held.insert(line, ram.memory[span].into());
        }
    }

    /// Every line held now (after noticing the CPU's stores in `watched`).
    pub(crate) fn held_lines(&mut self, ram: &mut Ram<'_>, watched: &[PhysRange]) -> Vec<u64> {
        for range in watched {
            for line in self.lines_of(*range) {
                self.notice(ram, line);
            }
        }
        self.held.keys().copied().collect()
    }

    /// A device that does not snoop reads memory.
    pub(crate) fn device_read(&mut self, ram: &mut Ram<'_>, range: PhysRange, out: &mut [u8]) {
        for line in self.lines_of(range) {
            self.notice(ram, line);
        }
        let start = (range.start().as_u64() - ram.base) as usize;
        out.copy_from_slice(&ram.memory[start..start + out.len()]);
    }

    /// A device that does not snoop writes memory; a line the cache holds keeps its stale copy.
    pub(crate) fn device_write(&mut self, ram: &mut Ram<'_>, range: PhysRange, data: &[u8]) {
        for line in self.lines_of(range) {
            self.notice(ram, line);
        }
        let start = range.start().as_u64() - ram.base;
        for (index, byte) in data.iter().enumerate() {
            let at = start as usize + index;
            ram.memory[at] = *byte;
            if !self.held.contains_key(&((ram.base + at as u64) / self.line as u64)) {
                ram.cpu[at] = *byte;
            }
        }
    }

    /// A device that snoops writes through the cache: the CPU sees the bytes, and so does
    /// memory; a held line stays as dirty or clean as it was for its other bytes.
    pub(crate) fn snooped_write(&mut self, ram: &mut Ram<'_>, range: PhysRange, data: &[u8]) {
        for line in self.lines_of(range) {
            self.notice(ram, line);
        }
        let start = range.start().as_u64() - ram.base;
        for (index, byte) in data.iter().enumerate() {
            let at = start as usize + index;
            let address = ram.base + at as u64;
            ram.memory[at] = *byte;
            ram.cpu[at] = *byte;
            if let Some(snapshot) = self.held.get_mut(&(address / self.line as u64)) {
                snapshot[(address % self.line as u64) as usize] = *byte;
            }
        }
    }
}
