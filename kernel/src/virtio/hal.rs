//! The [`Hal`] `virtio-drivers` calls for memory: here it only looks up what the kernel already
//! decided, so that every refusal happens where it can still be reported.
//!
//! `virtio-drivers` asks its Hal for a device address in two places, and neither can fail:
//!
//! - `share(buffer)` runs inside `VirtQueue::add` and must return the address to put in the
//!   descriptor. A restricted pool may have no room for the bounce copy, an IOMMU no IOVA
//!   space; the Hal could only panic, or hand the device a bogus address.
//! - `dma_alloc(pages)` runs inside `VirtQueue::new` for the rings, and has no way to say why
//!   it could not allocate them.
//!
//! So the kernel decides first and the Hal only looks up:
//!
//! ```text
//!  start     Lease::take ── alloc_coherent(bound on every ring) ──▶ refused, or no page left
//!              │                                                      for transfers: "not started"
//!              └ VirtQueue::new ─ dma_alloc ─▶ carved from that reservation (cannot run out)
//!  request   Lease::prepare ── map each buffer through the DmaDevice ──▶ refused: typed error,
//!              │                                                          nothing submitted
//!              └ VirtQueue::add ─ share ─▶ finds the mapping made for exactly that buffer
//!  complete  VirtQueue::pop_used ─ unshare ─▶ ends that mapping (the bounce copy comes back)
//! ```
//!
//! A `share` or `unshare` of a buffer nobody prepared cannot come from bad input: only the
//! drivers of this module submit requests, and they prepare every buffer first. It would be a
//! bug in them, and the Hal stops the kernel with that said. Memory inside the device's
//! reservation (the rings, a block request's header and status) is shared without a mapping:
//! it is coherent, and the device already sees it.
//!
//! The Hal's methods take no `self`, yet each device has its own DMA handle. So the Hal is a
//! type per slot, `VirtioHal<SLOT>`, and one state per slot (`STATES`) holds each device's
//! handle, reservation and prepared buffers.

use alloc::vec::Vec;
use core::ptr::NonNull;

use addr::{DmaAddr, PhysRange, VirtAddr};
use spin::Mutex;
use swiotlb::DmaDirection;
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

use super::{SLOTS, StartError, VirtioError};
use crate::dma_platform::{Coherent, DmaDevice, DmaPool, Route};
use dma::DmaApiError;

/// Part of a slot's reservation, carved for one use (a ring, a request header): where the CPU
/// and the device each see it. It lives as long as the reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carved {
    pub virt: VirtAddr,
    pub dma: DmaAddr,
    pub size: usize,
}

/// What a slot's Hal reaches while a device holds the slot.
struct SlotState {
    device: &'static DmaDevice,
    reservation: Coherent<'static>,
    /// Bytes of the reservation handed out so far, from its start.
    carved: usize,
    /// Buffers of submitted requests, mapped before submission, until `unshare` ends them.
    prepared: Vec<Prepared>,
    /// The first unmap `unshare` could not carry out, for the driver to report.
    unmap_error: Option<DmaApiError>,
    /// What `dma_alloc` asked for beyond the reservation, for the driver to report.
    shortfall: Option<(usize, usize)>,
    /// The device may still use the reservation (its reset was not confirmed): never free it.
    keep_reservation: bool,
}

/// A buffer lent to the device for a request, as it was mapped.
///
/// The same buffer may be in two requests in flight at once (a batch writing one block
/// pattern to two places): each has a mapping of its own. `share` hands out a mapping not yet
/// shared and marks it, and `unshare` ends the one whose address the descriptor held, so that
/// a completion never ends the mapping of a request still in flight.
struct Prepared {
    address: usize,
    length: usize,
    direction: DmaDirection,
    physical: PhysRange,
    dma: DmaAddr,
    /// Given to `virtio-drivers` (its descriptor holds `dma`).
    shared: bool,
}

impl Prepared {
    fn is(&self, buffer: NonNull<[u8]>, direction: DmaDirection) -> bool {
        (self.address, self.length, self.direction) == (buffer.as_ptr() as *const u8 as usize, buffer.len(), direction)
    }
}

static STATES: [Mutex<Option<SlotState>>; SLOTS] = [const { Mutex::new(None) }; SLOTS];

/// The DMA handle of the device in `slot`, while one holds it.
pub fn device_of(slot: usize) -> Option<&'static DmaDevice> {
    Some(STATES.get(slot)?.lock().as_ref()?.device)
}

/// The DMA handles of every device that holds a slot.
pub fn devices() -> Vec<&'static DmaDevice> {
    STATES.iter().filter_map(|state| Some(state.lock().as_ref()?.device)).collect()
}

/// A bound on the coherent memory `VirtQueue::new` asks for, for queues of `sizes` entries.
///
/// Each queue has a descriptor table (16 bytes an entry), an available ring (6 + 2 bytes an
/// entry) and a used ring (6 + 8 bytes an entry) (virtio 1.2, 2.7 "Split Virtqueues").
/// `virtio-drivers` puts the first two in one allocation and the used ring in another, or all
/// in one with each part page-aligned (the legacy layout); either way each part takes at most
/// its size rounded down to pages, plus a page.
pub fn queue_memory(sizes: &[usize]) -> usize {
    let parts = |entries: usize| [16 * entries + 6 + 2 * entries, 6 + 8 * entries];
    sizes.iter().flat_map(|&entries| parts(entries)).map(|bytes| (bytes / PAGE_SIZE + 1) * PAGE_SIZE).sum()
}

/// What a device's queues must leave free in its pool, in one run: a page, which holds a
/// frame or a block. A device whose queues leave less could start but never move a byte, and
/// would starve every other user of the pool, so it is not started.
const ROOM_FOR_TRANSFERS: usize = PAGE_SIZE;

/// The longest run of free slots in `pool`, in bytes.
fn longest_free_run(pool: &DmaPool) -> usize {
    let (mut longest, mut run) = (0, 0);
    for free in pool.bounce.slot_states() {
        run = if free { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest * swiotlb::SLOT_SIZE
}

/// A device's hold on slot `SLOT`: its DMA handle and the coherent memory reserved for it.
/// Dropping it frees that memory, so its owner stops the device first.
pub struct Lease<const SLOT: usize> {
    device: &'static DmaDevice,
}

impl<const SLOT: usize> Lease<SLOT> {
    /// Takes the slot for `device`, reserving `bytes` of coherent memory: the rings (see
    /// [`queue_memory`]) and what the driver carves for itself.
    pub fn take(device: &'static DmaDevice, bytes: usize) -> Result<Self, StartError> {
        let mut state = STATES[SLOT].lock();
        if state.is_some() {
            return Err(StartError::SlotTaken { slot: SLOT });
        }
        let reservation = device.alloc_coherent(bytes).map_err(|error| StartError::Reserve { bytes, error })?;
        let pool = device.bounce_pool().filter(|pool| pool.holds(reservation.dma(), reservation.len() as u64));
        if let Some(pool) = pool {
            let left = longest_free_run(pool);
            if left < ROOM_FOR_TRANSFERS {
                // Dropping the reservation frees it.
                return Err(StartError::NoRoomLeft { pool: pool.name, size: pool.range.size(), bytes, left });
            }
        }
        *state = Some(SlotState {
            device,
            reservation,
            carved: 0,
            prepared: Vec::new(),
            unmap_error: None,
            shortfall: None,
            keep_reservation: false,
        });
        Ok(Self { device })
    }

    pub fn device(&self) -> &'static DmaDevice {
        self.device
    }

    /// `bytes` of the reservation for the driver's own use (never given back before the lease
    /// ends), `align`-aligned; zeroed.
    pub fn carve(&self, bytes: usize, align: usize) -> Result<Carved, StartError> {
        with_state::<SLOT, _>(|state| carve(state, bytes, align)).flatten().ok_or_else(|| self.shortfall())
    }

    /// Why the reservation could not give what was asked of it.
    pub fn shortfall(&self) -> StartError {
        let shortfall = with_state::<SLOT, _>(|state| state.shortfall.take()).flatten();
        let (asked, left) = shortfall.unwrap_or((0, 0));
        StartError::ReservationTooSmall { asked, left }
    }

    /// Maps every buffer of a request the device does not already see (those outside the
    /// reservation). On a refusal, ends the mappings already made and reports it: then nothing
    /// of the request was given to the device.
    pub fn prepare(&self, inputs: &[&[u8]], outputs: &[&mut [u8]]) -> Result<(), VirtioError> {
        let buffers = inputs.iter().map(|buffer| (*buffer, DmaDirection::ToDevice));
        let buffers = buffers.chain(outputs.iter().map(|buffer| (&**buffer, DmaDirection::FromDevice)));
        let mut made = Vec::new();
        for (buffer, direction) in buffers {
            if with_state::<SLOT, _>(|state| reserved_address(state, buffer.as_ptr() as usize, buffer.len()))
                .flatten()
                .is_some()
            {
                continue;
            }
            match self.map(buffer, direction) {
                Ok(prepared) => made.push(prepared),
                Err(error) => {
                    for prepared in made {
                        // SAFETY: mapped just above and never submitted.
                        let undone = unsafe { self.device.unmap(prepared.dma, prepared.physical, prepared.direction) };
                        if let Err(unmap_error) = undone {
                            log::error!(
                                "{}: undoing a mapping after a refusal failed: {unmap_error}",
                                self.device.name
                            );
                        }
                    }
                    return Err(error);
                }
            }
        }
        with_state::<SLOT, _>(|state| state.prepared.extend(made));
        Ok(())
    }

    fn map(&self, buffer: &[u8], direction: DmaDirection) -> Result<Prepared, VirtioError> {
        let refused = |error| VirtioError::Map { bytes: buffer.len(), error };
        let physical = self.device.physical(VirtAddr::from_ptr(buffer.as_ptr()), buffer.len()).map_err(refused)?;
        // SAFETY: the drivers of this module submit the buffer right after and do not touch it
        // until the device completed it (`unshare` ends the mapping), or end the mapping with
        // `release` if the request is not submitted after all.
        let dma = unsafe { self.device.map(physical, direction) }.map_err(|error| refused(error.error()))?;
        Ok(Prepared {
            address: buffer.as_ptr() as usize,
            length: buffer.len(),
            direction,
            physical,
            dma,
            shared: false,
        })
    }

    /// Ends the mappings [`Self::prepare`] made for a request that was not submitted after all.
    pub fn release(&self, inputs: &[&[u8]], outputs: &[&mut [u8]]) {
        let buffers = inputs.iter().map(|buffer| (*buffer, DmaDirection::ToDevice));
        let buffers = buffers.chain(outputs.iter().map(|buffer| (&**buffer, DmaDirection::FromDevice)));
        for (buffer, direction) in buffers {
            let buffer = NonNull::from(buffer);
            // `add` refused the request before sharing anything: its mappings are the ones not
            // shared (the latest, if the buffer is also in a request in flight).
            let found = with_state::<SLOT, _>(|state| {
                let unshared = |prepared: &Prepared| prepared.is(buffer, direction) && !prepared.shared;
                let index = state.prepared.iter().rposition(unshared)?;
                Some(state.prepared.swap_remove(index))
            });
            if let Some(prepared) = found.flatten() {
                // SAFETY: a mapping `prepare` made, of a request never submitted.
                if let Err(error) = unsafe { self.device.unmap(prepared.dma, prepared.physical, prepared.direction) } {
                    log::error!("{}: ending a mapping of a request never submitted failed: {error}", self.device.name);
                }
            }
        }
    }

    /// The first unmap `unshare` could not carry out since the last call.
    pub fn take_unmap_error(&self) -> Option<DmaApiError> {
        with_state::<SLOT, _>(|state| state.unmap_error.take()).flatten()
    }

    /// Ends every mapping of submitted requests: the device was reset, so it no longer uses
    /// them. Returns the first unmap that failed.
    pub fn release_all(&self) -> Result<(), DmaApiError> {
        let prepared = with_state::<SLOT, _>(|state| core::mem::take(&mut state.prepared)).unwrap_or_default();
        let mut first_error = None;
        for buffer in prepared {
            // SAFETY: a mapping `prepare` made; the device was reset and no longer uses it.
            if let Err(error) = unsafe { self.device.unmap(buffer.dma, buffer.physical, buffer.direction) } {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The device did not confirm its reset, so it may still use what it was given. What is
    /// left to the kernel is to keep that memory from being reused while the device may write
    /// it: behind an IOMMU, unmapping does that (the SMMU refuses the device from then on); a
    /// bounce copy keeps its pool slots, and the reservation is never freed. A buffer lent in
    /// place on a direct route cannot be withdrawn from the device: that is said, since nothing
    /// else can be done.
    pub fn contain_all(&self) {
        let translated = matches!(self.device.route, Route::Iommu { .. });
        let prepared = with_state::<SLOT, _>(|state| {
            state.keep_reservation = true;
            match translated {
                true => core::mem::take(&mut state.prepared),
                false => Vec::new(),
            }
        });
        for buffer in prepared.unwrap_or_default() {
            // SAFETY: a mapping `prepare` made. Behind the IOMMU the unmap is what takes the
            // buffer away from a device that may still be running.
            if let Err(error) = unsafe { self.device.unmap(buffer.dma, buffer.physical, buffer.direction) } {
                log::error!("{}: revoking {:?} failed: {error}", self.device.name, buffer.dma);
            }
        }
        let in_place: Vec<PhysRange> = with_state::<SLOT, _>(|state| {
            let bounced = |buffer: &Prepared| {
                self.device.bounce_pool().is_some_and(|pool| pool.holds(buffer.dma, buffer.length as u64))
            };
            state.prepared.iter().filter(|buffer| !bounced(buffer)).map(|buffer| buffer.physical).collect()
        })
        .unwrap_or_default();
        for buffer in in_place {
            log::error!("{}: {buffer} stays within the device's reach: it was lent in place", self.device.name);
        }
    }
}

impl<const SLOT: usize> Drop for Lease<SLOT> {
    fn drop(&mut self) {
        let mut slot = STATES[SLOT].lock();
        if slot.as_ref().is_some_and(|state| state.keep_reservation) {
            // The device may still write it: the slot stays taken, and the memory with it.
            return;
        }
        let Some(state) = slot.take() else { return };
        drop(slot);
        // Freed here, when the reservation drops; the debug checker reports what is left.
        drop(state);
        self.device.stopped();
    }
}

fn with_state<const SLOT: usize, R>(work: impl FnOnce(&mut SlotState) -> R) -> Option<R> {
    STATES[SLOT].lock().as_mut().map(work)
}

/// The device address of `[address, address + length)` if it lies in the reservation.
fn reserved_address(state: &SlotState, address: usize, length: usize) -> Option<u64> {
    let start = state.reservation.as_ptr().as_ptr() as usize;
    let offset = address.checked_sub(start)?;
    (offset.checked_add(length)? <= state.carved).then(|| state.reservation.dma().as_u64() + offset as u64)
}

/// Hands out the next `bytes` of the reservation, zeroed; `None` (noted) if they do not fit.
fn carve(state: &mut SlotState, bytes: usize, align: usize) -> Option<Carved> {
    let start = state.carved.next_multiple_of(align);
    let end = start.checked_add(bytes).filter(|&end| end <= state.reservation.len());
    let Some(end) = end else {
        state.shortfall = Some((bytes, state.reservation.len().saturating_sub(start)));
        return None;
    };
    state.carved = end;
    let virt = VirtAddr::from_ptr(state.reservation.as_ptr().as_ptr()).add(start as u64);
    // SAFETY: bytes of the reservation no one was given before; the reservation is coherent
    // memory the kernel maps read-write for as long as the slot is held.
    unsafe { core::ptr::write_bytes(virt.as_mut_ptr::<u8>(), 0, bytes) };
    Some(Carved { virt, dma: state.reservation.dma().add(start as u64), size: bytes })
}

/// The `virtio-drivers` Hal of the device in slot `SLOT`.
pub struct VirtioHal<const SLOT: usize>;

fn dma_direction(direction: BufferDirection) -> DmaDirection {
    match direction {
        BufferDirection::DriverToDevice => DmaDirection::ToDevice,
        BufferDirection::DeviceToDriver => DmaDirection::FromDevice,
        BufferDirection::Both => DmaDirection::Bidirectional,
    }
}

/// A `share` or `unshare` of a buffer no driver prepared: a bug in this module's drivers (see
/// the module comment), never the consequence of anything a device or a caller did.
fn unprepared(slot: usize, buffer: NonNull<[u8]>, call: &str) -> ! {
    panic!(
        "virtio slot {slot}: virtio-drivers called {call} for a {}-byte buffer at {:p} that no driver prepared; every buffer must be mapped before its request is submitted",
        buffer.len(),
        buffer.as_ptr() as *const u8
    )
}

// SAFETY: `dma_alloc` hands out page-aligned pages of the slot's reservation, zeroed, each to
// one caller (the reservation is carved forward only), valid until the lease ends, which is
// after the driver and its queues; when the reservation cannot hold them it returns DMA
// address 0, which `virtio-drivers` (`Dma::new`) turns into `Error::DmaError` without using
// the pointer. `share` returns the DMA address of a live mapping of exactly the given buffer,
// or of the buffer inside the reservation. `mmio_phys_to_virt` maps the registers as device
// memory.
unsafe impl<const SLOT: usize> Hal for VirtioHal<SLOT> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (u64, NonNull<u8>) {
        let carved = with_state::<SLOT, _>(|state| carve(state, pages * PAGE_SIZE, PAGE_SIZE)).flatten();
        match carved.and_then(|memory| Some((memory.dma.as_u64(), NonNull::new(memory.virt.as_mut_ptr())?))) {
            Some(memory) => memory,
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_dma: u64, _virt: NonNull<u8>, _pages: usize) -> i32 {
        // Rings live in the reservation, which is freed whole when the lease ends.
        0
    }

    unsafe fn mmio_phys_to_virt(physical: u64, size: usize) -> NonNull<u8> {
        let registers = PhysRange::new(addr::PhysAddr::new(physical), size as u64).expect("MMIO range");
        match arch::mmu::map_device(registers) {
            Ok(virt) => NonNull::new(virt.as_mut_ptr()).expect("device window is not at 0"),
            Err(error) => panic!("cannot map MMIO {registers}: {error:?}"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> u64 {
        let direction = dma_direction(direction);
        let found = with_state::<SLOT, _>(|state| {
            let address = buffer.as_ptr() as *const u8 as usize;
            reserved_address(state, address, buffer.len()).or_else(|| {
                let prepared =
                    state.prepared.iter_mut().find(|prepared| prepared.is(buffer, direction) && !prepared.shared)?;
                prepared.shared = true;
                Some(prepared.dma.as_u64())
            })
        });
        found.flatten().unwrap_or_else(|| unprepared(SLOT, buffer, "share"))
    }

    unsafe fn unshare(dma: u64, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let direction = dma_direction(direction);
        let found = with_state::<SLOT, _>(|state| {
            if reserved_address(state, buffer.as_ptr() as *const u8 as usize, buffer.len()).is_some() {
                return Some(None);
            }
            let this_one = |prepared: &Prepared| prepared.is(buffer, direction) && prepared.dma.as_u64() == dma;
            let index = state.prepared.iter().position(|prepared| prepared.shared && this_one(prepared))?;
            Some(Some((state.device, state.prepared.swap_remove(index))))
        });
        let Some(found) = found.flatten() else { unprepared(SLOT, buffer, "unshare") };
        // The device has completed the request: end the mapping (copying a bounce back).
        if let Some((device, prepared)) = found {
            // SAFETY: the mapping `prepare` made for this buffer; the device completed it.
            if let Err(error) = unsafe { device.unmap(prepared.dma, prepared.physical, prepared.direction) } {
                with_state::<SLOT, _>(|state| {
                    state.unmap_error.get_or_insert(error);
                });
            }
        }
    }
}
