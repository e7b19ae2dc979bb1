//! The DMA debug checker: the driver mistakes that corrupt memory silently, reported in words.
//!
//! Linux's `CONFIG_DMA_API_DEBUG` (`kernel/dma/debug.c`) keeps a table of every live mapping
//! and checks each DMA API call against it. This is the same idea, for this API:
//!
//! | mistake | what the checker says |
//! |---|---|
//! | unmap or sync of something never mapped | [`Problem::UnknownMapping`] |
//! | unmap with another size or direction than the map | [`Problem::SizeMismatch`], [`Problem::DirectionMismatch`] |
//! | a sync the mapping's direction cannot need (for the CPU after a transfer *to* the device; for the device after one *from* it) | [`Problem::SyncDirection`] |
//! | a mapping of memory that is not for DMA: kernel code or read-only data, another context's stack, MMIO | [`Problem::NotDmaMemory`] |
//! | two live mappings in one cache line, for a device that does not snoop the caches | [`Problem::SharedCacheLine`] |
//! | mappings still live when their device is stopped | [`Problem::Leak`], one per mapping, naming where it was made |
//! | a refused map whose error nobody read | [`Problem::UncheckedError`] |
//!
//! The typed API ([`crate::Streaming`], [`crate::Coherent`]) makes most of these impossible
//! to write; the raw calls (`unsafe` `map`/`unmap`, used where a buffer's lifetime is not a
//! Rust borrow, as in a virtqueue) are where the checker earns its keep. It observes and
//! reports; it does not change what the API does, so that a run with it off behaves the same.
//! Every report is logged (`log::error!`) and kept for [`Checker::take_reports`].

use alloc::vec::Vec;
use core::fmt;
use core::panic::Location;

use addr::{DmaAddr, PhysRange};
use spin::Mutex;
use swiotlb::DmaDirection;

use crate::error::DmaApiError;
use crate::platform::MemoryKind;

/// Which way a sync goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// `sync_for_cpu`: the CPU is about to read what the device wrote.
    ForCpu,
    /// `sync_for_device`: the device is about to read what the CPU wrote.
    ForDevice,
}

/// One mistake the checker saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// An unmap, sync or free of an address the device has no live mapping at.
    UnknownMapping {
        /// The call: "unmap", "sync_for_cpu", "sync_for_device", "free_coherent".
        call: &'static str,
        /// The address given.
        dma: DmaAddr,
        /// The size given.
        size: u64,
    },
    /// An unmap with a size that differs from the map's.
    SizeMismatch {
        /// The mapping's address.
        dma: DmaAddr,
        /// The size it was mapped with.
        mapped: u64,
        /// The size the unmap gave.
        unmapped: u64,
    },
    /// An unmap with a direction that differs from the map's.
    DirectionMismatch {
        /// The mapping's address.
        dma: DmaAddr,
        /// The direction it was mapped with.
        mapped: DmaDirection,
        /// The direction the unmap gave.
        unmapped: DmaDirection,
    },
    /// A sync that the mapping's direction makes meaningless.
    SyncDirection {
        /// The mapping's address.
        dma: DmaAddr,
        /// The direction it was mapped with.
        mapped: DmaDirection,
        /// The sync asked for.
        sync: SyncKind,
    },
    /// A mapping of memory that is not for DMA.
    NotDmaMemory {
        /// The buffer.
        buffer: PhysRange,
        /// What it is.
        kind: MemoryKind,
    },
    /// A mapping for a device that does not snoop the caches shares a cache line with a live
    /// mapping: maintenance on one destroys the other's data (contract rule 13).
    SharedCacheLine {
        /// The new mapping's buffer.
        buffer: PhysRange,
        /// The live mapping's buffer.
        other: PhysRange,
        /// The device of the live mapping.
        other_device: &'static str,
    },
    /// A mapping (or coherent allocation) still live when its device was stopped.
    Leak {
        /// Its address.
        dma: DmaAddr,
        /// Its size.
        size: u64,
        /// Its direction; `None` for coherent memory.
        direction: Option<DmaDirection>,
        /// Where it was made.
        made_at: &'static Location<'static>,
    },
    /// A map was refused and the error was dropped unread.
    UncheckedError {
        /// The refusal nobody looked at.
        error: DmaApiError,
    },
}

/// A problem, the device it concerns, and the call that showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The device's name.
    pub device: &'static str,
    /// What is wrong.
    pub problem: Problem,
    /// The driver's call that showed it (for a leak: where the device was stopped).
    pub location: &'static Location<'static>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let device = self.device;
        write!(f, "DMA debug: {device}: ")?;
        match self.problem {
            Problem::UnknownMapping { call, dma, size } => {
                write!(f, "{call} of {size} bytes at {dma:?}, which the device has no live mapping at")?
            }
            Problem::SizeMismatch { dma, mapped, unmapped } => {
                write!(f, "unmap of {dma:?} with {unmapped} bytes; it was mapped with {mapped}")?
            }
            Problem::DirectionMismatch { dma, mapped, unmapped } => {
                write!(f, "unmap of {dma:?} as {unmapped}; it was mapped {mapped}")?
            }
            Problem::SyncDirection { dma, mapped, sync } => match sync {
                SyncKind::ForCpu => write!(f, "sync_for_cpu of {dma:?}, mapped {mapped}: the device never writes it")?,
                SyncKind::ForDevice => {
                    write!(f, "sync_for_device of {dma:?}, mapped {mapped}: the device never reads it")?
                }
            },
            Problem::NotDmaMemory { buffer, kind } => {
                write!(f, "mapping {buffer}, which is {kind}, not memory for DMA")?
            }
            Problem::SharedCacheLine { buffer, other, other_device } => write!(
                f,
                "mapping {buffer} shares a cache line with {other}, mapped for {other_device}; the device does not snoop the caches"
            )?,
            Problem::Leak { dma, size, direction, made_at } => {
                match direction {
                    Some(direction) => write!(f, "stopped with a {direction} mapping of {size} bytes at {dma:?} live")?,
                    None => write!(f, "stopped with {size} bytes of coherent memory at {dma:?} not freed")?,
                }
                write!(f, ", made at {made_at}")?
            }
            Problem::UncheckedError { error } => write!(f, "a map was refused and nobody read why: {error}")?,
        }
        write!(f, " (at {})", self.location)
    }
}

/// One live mapping or coherent allocation.
#[derive(Clone, Copy)]
struct Live {
    device: &'static str,
    dma: DmaAddr,
    buffer: PhysRange,
    /// `None` for coherent memory.
    direction: Option<DmaDirection>,
    /// The cache line size, if the mapping lends the buffer in place to a device that does not
    /// snoop the caches (the mappings rule 13 is about).
    lines: Option<usize>,
    made_at: &'static Location<'static>,
}

impl Live {
    /// The buffer widened to whole cache lines.
    fn line_span(&self, line: usize) -> (u64, u64) {
        let mask = line as u64 - 1;
        (self.buffer.start().as_u64() & !mask, (self.buffer.end().as_u64() + mask) & !mask)
    }
}

struct State {
    live: Vec<Live>,
    reports: Vec<Report>,
}

/// The table of live mappings of every device that shares it, and what it saw wrong.
pub struct Checker {
    state: Mutex<State>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// An empty table.
    pub const fn new() -> Self {
        Self { state: Mutex::new(State { live: Vec::new(), reports: Vec::new() }) }
    }

    /// Records and logs a problem.
    pub fn report(&self, device: &'static str, problem: Problem, location: &'static Location<'static>) {
        let report = Report { device, problem, location };
        log::error!("{report}");
        self.state.lock().reports.push(report);
    }

    /// Every report since the last call, oldest first.
    pub fn take_reports(&self) -> Vec<Report> {
        core::mem::take(&mut self.state.lock().reports)
    }

    /// How many mappings and allocations of `device` are live.
    pub fn live(&self, device: &str) -> usize {
        self.state.lock().live.iter().filter(|live| live.device == device).count()
    }

    /// Checks that `buffer` is memory for DMA.
    pub(crate) fn check_memory(
        &self,
        device: &'static str,
        buffer: PhysRange,
        kind: MemoryKind,
        location: &'static Location<'static>,
    ) {
        if kind != MemoryKind::Ram {
            self.report(device, Problem::NotDmaMemory { buffer, kind }, location);
        }
    }

    /// Records a new mapping (`direction`) or coherent allocation (`None`). `lines` is the cache
    /// line size when the buffer is lent in place to a device that does not snoop the caches.
    pub(crate) fn mapped(
        &self,
        device: &'static str,
        dma: DmaAddr,
        buffer: PhysRange,
        direction: Option<DmaDirection>,
        lines: Option<usize>,
        made_at: &'static Location<'static>,
    ) {
        let new = Live { device, dma, buffer, direction, lines, made_at };
        let overlap = lines.and_then(|line| {
            let (start, end) = new.line_span(line);
            let state = self.state.lock();
            state
                .live
                .iter()
                .find(|live| {
                    let (other_start, other_end) = live.line_span(line);
                    live.lines.is_some() && start < other_end && other_start < end
                })
                .copied()
        });
        if let Some(other) = overlap {
            let problem = Problem::SharedCacheLine { buffer, other: other.buffer, other_device: other.device };
            self.report(device, problem, made_at);
        }
        self.state.lock().live.push(new);
    }

    /// Checks an unmap (`direction`) or free (`None`) of `dma` against the live record,
    /// reporting what does not match it. The record stays until [`Self::unmapped`]: a refused
    /// unmap leaves the mapping live.
    pub(crate) fn check_unmap(
        &self,
        device: &'static str,
        call: &'static str,
        dma: DmaAddr,
        size: u64,
        direction: Option<DmaDirection>,
        location: &'static Location<'static>,
    ) {
        let Some(live) = self.find(device, dma, direction) else {
            return self.report(device, Problem::UnknownMapping { call, dma, size }, location);
        };
        if live.buffer.size() != size {
            self.report(device, Problem::SizeMismatch { dma, mapped: live.buffer.size(), unmapped: size }, location);
        }
        match (live.direction, direction) {
            (Some(mapped), Some(unmapped)) if mapped != unmapped => {
                self.report(device, Problem::DirectionMismatch { dma, mapped, unmapped }, location)
            }
            _ => {}
        }
    }

    /// Ends the record of the mapping or allocation at `dma`, once it really ended.
    pub(crate) fn unmapped(&self, device: &'static str, dma: DmaAddr, direction: Option<DmaDirection>) {
        let mut state = self.state.lock();
        let index = state.live.iter().position(|live| Self::is(live, device, dma, direction));
        if let Some(index) = index {
            state.live.swap_remove(index);
        }
    }

    fn find(&self, device: &str, dma: DmaAddr, direction: Option<DmaDirection>) -> Option<Live> {
        self.state.lock().live.iter().find(|live| Self::is(live, device, dma, direction)).copied()
    }

    /// Whether `live` is the mapping (`direction`) or allocation (`None`) of `device` at `dma`.
    /// The address is compared first: it tells almost every record apart in one comparison,
    /// where the device's name is a string compare (every unmap looks through the table).
    fn is(live: &Live, device: &str, dma: DmaAddr, direction: Option<DmaDirection>) -> bool {
        live.dma == dma && live.direction.is_some() == direction.is_some() && live.device == device
    }

    /// Checks a sync of `[dma, dma + size)`: it must lie in a live mapping whose direction
    /// can need it.
    pub(crate) fn synced(
        &self,
        device: &'static str,
        dma: DmaAddr,
        size: u64,
        sync: SyncKind,
        location: &'static Location<'static>,
    ) {
        let call = match sync {
            SyncKind::ForCpu => "sync_for_cpu",
            SyncKind::ForDevice => "sync_for_device",
        };
        let mapped = {
            let state = self.state.lock();
            state
                .live
                .iter()
                .find(|live| {
                    live.device == device
                        && live.direction.is_some()
                        && dma.offset_from(live.dma).is_some_and(|offset| offset + size <= live.buffer.size())
                })
                .and_then(|live| live.direction)
        };
        let Some(mapped) = mapped else {
            return self.report(device, Problem::UnknownMapping { call, dma, size }, location);
        };
        let needless = match sync {
            SyncKind::ForCpu => mapped == DmaDirection::ToDevice,
            SyncKind::ForDevice => mapped == DmaDirection::FromDevice,
        };
        if needless {
            self.report(device, Problem::SyncDirection { dma, mapped, sync }, location);
        }
    }

    /// The device was stopped: every mapping and allocation it still holds is a leak. Each is
    /// reported and forgotten.
    #[track_caller]
    pub fn device_stopped(&self, device: &'static str) {
        let location = Location::caller();
        let leaked: Vec<Live> = {
            let mut state = self.state.lock();
            let (leaked, kept) = core::mem::take(&mut state.live).into_iter().partition(|live| live.device == device);
            state.live = kept;
            leaked
        };
        for live in leaked {
            let problem = Problem::Leak {
                dma: live.dma,
                size: live.buffer.size(),
                direction: live.direction,
                made_at: live.made_at,
            };
            self.report(device, problem, location);
        }
    }
}
