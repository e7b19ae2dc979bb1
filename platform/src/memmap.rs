//! The memory map: which bytes of RAM the kernel may hand out.
//!
//! RAM is what the `/memory` nodes list. From it the kernel takes away everything that is
//! already in use or promised to someone else:
//!
//! - the kernel image, wherever the loader put it;
//! - the devicetree blob itself (the kernel keeps reading it);
//! - `/memreserve/` entries (firmware data, spin tables);
//! - static `/reserved-memory` children (`reg`), such as a restricted DMA pool.
//!
//! A restricted DMA pool is a reservation like the others, with two extra duties. A static
//! pool (`reg`) must not share a byte with anything else: [`MemoryMap::check_pool`]. A dynamic
//! one (`size`) is placed by the kernel: [`MemoryMap::carve`] picks free pages below the limit
//! of the devices that use it and reserves them, so the heap, chosen afterwards, avoids them.
//!
//! What remains, trimmed to whole pages, is free. Reservations may be listed in any order and
//! may overlap one another (firmware often lists the same bytes twice); a reservation that is
//! not inside RAM means the devicetree and the machine disagree, and boot stops with that
//! reservation named rather than guess which of the two is right.
//!
//! ```text
//!  RAM     [==================================================================]
//!  reserve      [image]   [dtb]              [restricted pool]
//!  free    [===]       [=]     [============]                 [===============]
//! ```

// `Error::PoolDoesNotFit` carries the pool's alloc-ranges by value, so that its message can
// print them: the map is built before the heap exists, and this crate has none to box them in.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use addr::{PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use core::fmt::{self, Write};

use crate::devicetree::{MAX_RANGES, RangeList, Reservation};

/// The CPU page: free regions are whole pages.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
/// Why the memory map could not be built.
pub enum Error<'a> {
    /// No RAM range was given.
    NoRam,
    /// A reservation (or the kernel image, or the devicetree) is not entirely inside RAM.
    ReservedOutsideRam {
        /// The reservation's label.
        label: &'a str,
        /// Its range.
        range: PhysRange,
    },
    /// More ranges than a list holds.
    TooManyRanges,
    /// A restricted DMA pool is not entirely inside RAM.
    PoolOutsideRam {
        /// The pool.
        pool: &'a str,
        /// Its range.
        range: PhysRange,
    },
    /// A restricted DMA pool shares bytes with the kernel image, the devicetree or another
    /// reservation.
    PoolOverlaps {
        /// The pool.
        pool: &'a str,
        /// Its range.
        range: PhysRange,
        /// What it overlaps.
        other: &'a str,
        /// That one's range.
        other_range: PhysRange,
    },
    /// A pool request that cannot describe a pool: size zero or not whole pages, alignment not
    /// a power of two.
    BadPoolRequest {
        /// The pool.
        pool: &'a str,
        /// The size asked for.
        size: u64,
        /// The alignment asked for.
        alignment: u64,
    },
    /// No free range holds the pool under its constraints.
    PoolDoesNotFit {
        /// The pool.
        pool: &'a str,
        /// Its size.
        size: u64,
        /// Its alignment.
        alignment: u64,
        /// The highest address its devices reach, if limited.
        below: Option<PhysAddr>,
        /// The node's `alloc-ranges`; empty when it has none (anywhere in RAM will do).
        alloc_ranges: RangeList,
    },
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoRam => write!(f, "memory map: no RAM"),
            Error::ReservedOutsideRam { label, range } => write!(
                f,
                "memory map: reservation '{label}' {range} is not inside RAM (check /memory \
                 against /reserved-memory and /memreserve/)"
            ),
            Error::TooManyRanges => write!(f, "memory map: more than {MAX_RANGES} ranges"),
            Error::PoolOutsideRam { pool, range } => {
                write!(f, "memory map: restricted DMA pool '{pool}' {range} is not inside RAM")
            }
            Error::PoolOverlaps { pool, range, other, other_range } => write!(
                f,
                "memory map: restricted DMA pool '{pool}' {range} overlaps '{other}' {other_range}; a \
                 device bouncing through it would read and write those bytes"
            ),
            Error::BadPoolRequest { pool, size, alignment } => write!(
                f,
                "memory map: restricted DMA pool '{pool}': size {size:#x} (whole pages, not zero) and \
                 alignment {alignment:#x} (a power of two) do not describe a pool"
            ),
            Error::PoolDoesNotFit { pool, size, alignment, below, alloc_ranges } => {
                write!(f, "memory map: no free range holds restricted DMA pool '{pool}' of {}", Size(*size))?;
                write!(f, " aligned to {}", Size(*alignment))?;
                if let Some(limit) = below {
                    write!(f, " below {limit} (the limit of its devices)")?;
                }
                if let Some((first, rest)) = alloc_ranges.split_first() {
                    write!(f, " inside its alloc-ranges {first}")?;
                    for range in rest {
                        write!(f, ", {range}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// RAM split into reserved and free parts.
#[derive(Debug, Clone)]
pub struct MemoryMap<'a> {
    ram: RangeList,
    reserved: ArrayVec<Reservation<'a>, MAX_RANGES>,
    free: RangeList,
}

/// One line of the memory map as the boot log prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The bytes.
    pub range: PhysRange,
    /// `free`, or the reservation's label.
    pub label: &'a str,
}

impl<'a> MemoryMap<'a> {
    /// Computes the map from RAM ranges and reservations, both in any order.
    pub fn compute(ram: &[PhysRange], reservations: &[Reservation<'a>]) -> Result<Self, Error<'a>> {
        let ram = merged(ram)?;
        if ram.is_empty() {
            return Err(Error::NoRam);
        }
        let mut reserved: ArrayVec<Reservation<'a>, MAX_RANGES> = ArrayVec::new();
        for reservation in reservations.iter().filter(|r| !r.range.is_empty()) {
            if !ram.iter().any(|ram| ram.covers(&reservation.range)) {
                return Err(Error::ReservedOutsideRam { label: reservation.label, range: reservation.range });
            }
            reserved.try_push(*reservation).map_err(|_| Error::TooManyRanges)?;
        }
        reserved.sort_unstable_by_key(|reservation| (reservation.range.start(), reservation.range.end()));
        let free = free_pages(&ram, &reserved)?;
        Ok(Self { ram, reserved, free })
    }

    /// RAM, sorted, with overlapping and touching ranges merged.
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram
    }

    /// The reservations, sorted by start address.
    pub fn reserved(&self) -> &[Reservation<'a>] {
        &self.reserved
    }

    /// Free RAM in whole pages, sorted, overlapping no reservation.
    pub fn free(&self) -> &[PhysRange] {
        &self.free
    }

    /// The largest free range, if any.
    pub fn largest_free(&self) -> Option<PhysRange> {
        self.free.iter().copied().max_by_key(PhysRange::size)
    }

    /// Checks a static restricted pool: inside RAM, and sharing no byte with the kernel image,
    /// the devicetree or any other reservation. The pool's own entry (a reservation labelled
    /// with its node name, as [`crate::devicetree::Devicetree::reservations`] lists it) is
    /// not a conflict.
    pub fn check_pool(&self, name: &'a str, range: PhysRange) -> Result<(), Error<'a>> {
        if !self.ram.iter().any(|ram| ram.covers(&range)) {
            return Err(Error::PoolOutsideRam { pool: name, range });
        }
        let mut others = self.reserved.iter().filter(|reservation| reservation.label != name);
        match others.find(|reservation| reservation.range.overlaps(&range)) {
            Some(other) => Err(Error::PoolOverlaps { pool: name, range, other: other.label, other_range: other.range }),
            None => Ok(()),
        }
    }

    /// Places a dynamic restricted pool and reserves it.
    ///
    /// The pool is `size` bytes of free RAM starting on a multiple of `alignment` (at least a
    /// page), ending at or below `below` (one past the highest address every device of the
    /// pool can reach; `None` = no limit), and inside one of `alloc_ranges` if any are given.
    /// Of all such places the *highest* is chosen, as Linux's memblock allocates top-down: low
    /// memory is what devices with small DMA limits need, so it is kept for them.
    ///
    /// The pool joins the reservations under `name` with `no_map` set: the kernel keeps pools
    /// out of the linear map and maps each one apart, with the caching its devices need (the
    /// kernel's choice, not the devicetree's `no-map`, which a restricted pool must not have).
    /// The free ranges are recomputed, so the heap chosen afterwards avoids the pool.
    pub fn carve(
        &mut self,
        name: &'a str,
        size: u64,
        alignment: u64,
        below: Option<PhysAddr>,
        alloc_ranges: &[PhysRange],
    ) -> Result<PhysRange, Error<'a>> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !alignment.is_power_of_two() {
            return Err(Error::BadPoolRequest { pool: name, size, alignment });
        }
        let alignment = alignment.max(PAGE_SIZE);
        let everywhere = [PhysRange::new(PhysAddr::new(0), u64::MAX).ok_or(Error::TooManyRanges)?];
        let allowed = if alloc_ranges.is_empty() { &everywhere[..] } else { alloc_ranges };
        let limit = below.map_or(u64::MAX, PhysAddr::as_u64);
        let candidates =
            self.free.iter().flat_map(|free| allowed.iter().filter_map(|allowed| free.intersection(allowed)));
        let start = candidates.filter_map(|window| highest_fit(window, size, alignment, limit)).max();
        let Some(start) = start else {
            let alloc_ranges = alloc_ranges.iter().copied().collect();
            return Err(Error::PoolDoesNotFit { pool: name, size, alignment, below, alloc_ranges });
        };
        let pool = PhysRange::new(start, size).ok_or(Error::TooManyRanges)?;
        let reservation = Reservation { range: pool, label: name, no_map: true };
        self.reserved.try_push(reservation).map_err(|_| Error::TooManyRanges)?;
        self.reserved.sort_unstable_by_key(|reservation| (reservation.range.start(), reservation.range.end()));
        self.free = free_pages(&self.ram, &self.reserved)?;
        Ok(pool)
    }

    /// Every reserved and free range, sorted by start address.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + '_ {
        let reserved = self.reserved.iter().map(|r| Entry { range: r.range, label: r.label });
        let free = self.free.iter().map(|&range| Entry { range, label: "free" });
        let mut entries: ArrayVec<Entry<'a>, { 2 * MAX_RANGES }> = reserved.chain(free).collect();
        entries.sort_unstable_by_key(|entry| entry.range.start());
        entries.into_iter()
    }
}

/// A piece of the kernel's linear map of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearRange {
    /// The bytes.
    pub range: PhysRange,
    /// Mapped read-write (RAM), or read-only (the kernel image's alias, W^X).
    pub writable: bool,
}

impl MemoryMap<'_> {
    /// What the kernel maps in its linear map: all RAM except `no-map` reservations, and
    /// read-only where a `read_only` range lies (the kernel image, the devicetree). Holes are
    /// widened and RAM narrowed to whole pages, since mappings are made of pages.
    pub fn linear_map(
        &self,
        read_only: &[PhysRange],
    ) -> Result<ArrayVec<LinearRange, { 2 * MAX_RANGES }>, Error<'static>> {
        let no_map: RangeList = self.reserved.iter().filter(|r| r.no_map).map(|r| widened(r.range)).collect();
        let read_only: RangeList = read_only.iter().map(|&range| widened(range)).collect();
        let mut pieces = ArrayVec::new();
        let overflow = |_| Error::TooManyRanges;
        for ram in &self.ram {
            let Some(ram) = narrowed(*ram) else { continue };
            for mappable in subtract(ram, &no_map)? {
                for writable in subtract(mappable, &read_only)? {
                    pieces.try_push(LinearRange { range: writable, writable: true }).map_err(overflow)?;
                }
                for hole in &read_only {
                    if let Some(range) = mappable.intersection(hole) {
                        pieces.try_push(LinearRange { range, writable: false }).map_err(overflow)?;
                    }
                }
            }
        }
        pieces.sort_unstable_by_key(|piece| piece.range.start());
        Ok(pieces)
    }
}

/// The highest `alignment`-aligned start of `size` bytes inside `window` ending at or below
/// `limit`.
fn highest_fit(window: PhysRange, size: u64, alignment: u64, limit: u64) -> Option<PhysAddr> {
    let end = window.end().as_u64().min(limit);
    let start = PhysAddr::new(end.checked_sub(size)?).align_down(alignment);
    (start >= window.start()).then_some(start)
}

/// `range` minus every one of `holes`, in address order.
fn subtract(range: PhysRange, holes: &[PhysRange]) -> Result<RangeList, Error<'static>> {
    let mut sorted: RangeList = holes.iter().copied().filter(|hole| hole.overlaps(&range)).collect();
    sorted.sort_unstable_by_key(PhysRange::start);
    let mut pieces = RangeList::new();
    let mut cursor = range.start();
    let mut keep = |start: PhysAddr, end: PhysAddr| match PhysRange::from_bounds(start, end) {
        Some(piece) if !piece.is_empty() => pieces.try_push(piece).map_err(|_| Error::TooManyRanges),
        _ => Ok(()),
    };
    for hole in &sorted {
        keep(cursor, hole.start())?;
        cursor = cursor.max(hole.end());
    }
    keep(cursor, range.end())?;
    Ok(pieces)
}

/// `range` grown outwards to page boundaries.
fn widened(range: PhysRange) -> PhysRange {
    let start = range.start().align_down(PAGE_SIZE);
    let end = range.end().align_up(PAGE_SIZE).unwrap_or(PhysAddr::new(!(PAGE_SIZE - 1)));
    PhysRange::from_bounds(start, end).unwrap_or(range)
}

/// `range` shrunk inwards to page boundaries; `None` if no whole page is left.
fn narrowed(range: PhysRange) -> Option<PhysRange> {
    let start = range.start().align_up(PAGE_SIZE)?;
    PhysRange::from_bounds(start, range.end().align_down(PAGE_SIZE)).filter(|range| !range.is_empty())
}

/// Sorts ranges and merges those that overlap or touch.
fn merged(ranges: &[PhysRange]) -> Result<RangeList, Error<'static>> {
    let mut sorted: RangeList = RangeList::new();
    for range in ranges.iter().filter(|range| !range.is_empty()) {
        sorted.try_push(*range).map_err(|_| Error::TooManyRanges)?;
    }
    sorted.sort_unstable_by_key(PhysRange::start);
    let mut merged = RangeList::new();
    for range in sorted {
        match merged.last_mut() {
            Some(last) if range.start() <= last.end() => {
                let end = last.end().max(range.end());
                *last = PhysRange::from_bounds(last.start(), end).ok_or(Error::TooManyRanges)?;
            }
            _ => merged.push(range),
        }
    }
    Ok(merged)
}

/// RAM minus the reservations, each piece trimmed inwards to whole pages.
fn free_pages(ram: &[PhysRange], reserved: &[Reservation<'_>]) -> Result<RangeList, Error<'static>> {
    let holes: RangeList = reserved.iter().map(|reservation| reservation.range).collect();
    let mut free = RangeList::new();
    for ram in ram {
        for piece in subtract(*ram, &holes)?.into_iter().filter_map(narrowed) {
            free.try_push(piece).map_err(|_| Error::TooManyRanges)?;
        }
    }
    Ok(free)
}

/// A byte count printed the way people read it: `512 KiB`, `1 GiB`, `1.5 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        while unit + 1 < UNITS.len() && self.0 >= 1024u64 << (10 * unit) {
            unit += 1;
        }
        let scale = 1u64 << (10 * unit);
        let (whole, tenths) = (self.0 / scale, (self.0 % scale) * 10 / scale);
        let mut text = FmtBuf::default();
        let written = match tenths {
            0 => write!(text, "{whole} {}", UNITS[unit]),
            _ => write!(text, "{whole}.{tenths} {}", UNITS[unit]),
        };
        written?;
        f.pad(text.as_str())
    }
}

/// A small stack buffer, so that `Size` can honour a field width without allocating.
#[derive(Default)]
struct FmtBuf {
    bytes: [u8; 24],
    length: usize,
}

impl FmtBuf {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.length]).unwrap_or("")
    }
}

impl fmt::Write for FmtBuf {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.length + text.len();
        self.bytes.get_mut(self.length..end).ok_or(fmt::Error)?.copy_from_slice(text.as_bytes());
        self.length = end;
        Ok(())
    }
}
