//! How the pool reaches bytes from the CPU.
//!
//! The pool speaks physical addresses (the caller's buffer, the pool itself) but copies with the
//! CPU, which needs a pointer. [`PhysMemory`] is that translation: in the kernel, the linear map
//! (`VirtAddr = PhysAddr + LINEAR_OFFSET`); in host tests, [`HeapMemory`], a heap buffer that
//! plays the part of RAM at a chosen physical address.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use alloc::boxed::Box;

use crate::PhysAddr;

/// A CPU window onto physical memory.
///
/// # Safety
///
/// For every `Some(pointer)` returned by `window(address, len)`, the implementor guarantees that
/// `pointer .. pointer + len` is valid for reads and writes for as long as the implementor lives,
/// and that those bytes are memory Rust code reaches only through raw pointers (DMA buffers,
/// never the stack or a live `&`/`&mut` borrow). The pool relies on this to copy without
/// further checks.
pub unsafe trait PhysMemory {
    /// Where the CPU reads and writes `len` bytes at physical `address`; `None` if it cannot.
    fn window(&self, address: PhysAddr, len: usize) -> Option<NonNull<u8>>;

    /// Copy `len` bytes between two windows, which may overlap: the bounce copy, the whole
    /// cost of bouncing. The default is `core::ptr::copy` (`memmove`); the kernel brings a
    /// copy made for its CPU.
    ///
    /// # Safety
    /// `source` and `destination` lie in windows this memory returned, valid for `len` bytes.
    unsafe fn copy(&self, source: *const u8, destination: *mut u8, len: usize) {
        // SAFETY: the caller's promise; `core::ptr::copy` allows overlap.
        unsafe { core::ptr::copy(source, destination, len) }
    }
}

/// Simulated RAM for host tests and benches: `size` bytes at physical address `base`.
///
/// It is not `Sync`: the pool copies through raw pointers while the test reads and writes
/// through `&self`, which is only free of data races on one thread.
pub struct HeapMemory {
    base: PhysAddr,
    bytes: Box<[UnsafeCell<u8>]>,
}

impl HeapMemory {
    /// `size` zeroed bytes of simulated RAM at physical `base`.
    pub fn new(base: PhysAddr, size: usize) -> Self {
        let zeroed = Box::<[UnsafeCell<u8>]>::new_zeroed_slice(size);
        // SAFETY: all-zero bytes are a valid `UnsafeCell<u8>`.
        Self { base, bytes: unsafe { zeroed.assume_init() } }
    }

    /// Copy `data` to `address` (what the CPU, or a device writing the bus, does).
    /// Returns `false` if the range is not inside this memory.
    pub fn write(&self, address: PhysAddr, data: &[u8]) -> bool {
        let Some(target) = self.window(address, data.len()) else { return false };
        // SAFETY: `window` checked the range; the bytes live in `UnsafeCell`s, so writing
        // through `&self` is allowed, and the type is not `Sync`, so no other thread races.
        unsafe { core::ptr::copy(data.as_ptr(), target.as_ptr(), data.len()) };
        true
    }

    /// Copy from `address` into `out`. Returns `false` if the range is not inside this memory.
    pub fn read(&self, address: PhysAddr, out: &mut [u8]) -> bool {
        let Some(source) = self.window(address, out.len()) else { return false };
        // SAFETY: as in `write`; `out` is a distinct `&mut` buffer, never one of our cells.
        unsafe { core::ptr::copy(source.as_ptr(), out.as_mut_ptr(), out.len()) };
        true
    }

    /// Set `len` bytes at `address` to `byte`. Returns `false` if out of range.
    pub fn fill(&self, address: PhysAddr, len: usize, byte: u8) -> bool {
        let Some(target) = self.window(address, len) else { return false };
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(target.as_ptr(), byte, len) };
        true
    }
}

// SAFETY: the window is computed with checked arithmetic to lie inside `bytes`, a heap
// allocation that lives as long as `self` and is only ever accessed through raw pointers
// (the `UnsafeCell`s make that legal behind `&self`).
unsafe impl PhysMemory for HeapMemory {
    fn window(&self, address: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let start = usize::try_from(address.offset_from(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        let cells = self.bytes.as_ptr() as *mut UnsafeCell<u8>;
        // SAFETY: `start <= len(bytes)`, so the offset stays inside (or one past) the allocation.
        NonNull::new(UnsafeCell::raw_get(unsafe { cells.add(start) }))
    }
}
