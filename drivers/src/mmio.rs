//! What every driver shares about reaching registers: the compile-time check of a register
//! block's layout, and the lock that lets a handle shared through `&self` use its unique
//! pointer. (Why pointers and `safe-mmio`: the crate documentation in `lib.rs`.)

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use safe_mmio::UniqueMmioPointer;

/// Checks, at compile time, that each register of a `#[repr(C)]` register block sits at the
/// offset its datasheet gives and that the block has the size the datasheet's map implies:
/// the check tock-registers' `register_structs!` used to make. A padding array of the wrong
/// length then fails the build instead of moving every later register.
///
/// ```text
/// register_offsets!(Registers { dr: 0x00, fr: 0x18 } size 0x48);
/// ```
macro_rules! register_offsets {
    ($block:ty { $($field:ident: $offset:expr),* $(,)? } size $size:expr) => {
        const _: () = {
            $(
                assert!(
                    core::mem::offset_of!($block, $field) == $offset,
                    concat!(stringify!($block), ".", stringify!($field), " is not at its datasheet offset"),
                );
            )*
            assert!(
                core::mem::size_of::<$block>() == $size,
                concat!(stringify!($block), " is not as long as its register map"),
            );
        };
    };
}
pub(crate) use register_offsets;

/// A register block whose driver handle the kernel reaches through `&self` (a watchdog in a
/// `static`, a DMA channel inside a shared engine), but whose writes need the `&mut` of a
/// [`UniqueMmioPointer`].
///
/// A spin lock hands the pointer to one closure at a time, which is all `&mut` asks: only one
/// user at a time. The drivers that use it take the lock once per operation and do not
/// contend for it (the kernel already serialises them), so it costs one atomic swap. A
/// closure must not take the same lock again: it would spin forever, never alias.
pub(crate) struct RegisterLock<T: 'static> {
    registers: UnsafeCell<UniqueMmioPointer<'static, T>>,
    locked: AtomicBool,
}

// SAFETY: the pointer inside is only ever used by the closure `with` runs while it holds the
// lock, so sharing the lock between CPUs never gives two of them the pointer at once; the
// pointer itself may move between CPUs (`UniqueMmioPointer: Send`, from its contract that the
// registers are reachable from any thread).
unsafe impl<T: 'static> Sync for RegisterLock<T> where UniqueMmioPointer<'static, T>: Send {}

impl<T: 'static> RegisterLock<T> {
    /// Puts `registers` behind the lock.
    pub(crate) fn new(registers: UniqueMmioPointer<'static, T>) -> Self {
        Self { registers: UnsafeCell::new(registers), locked: AtomicBool::new(false) }
    }

    /// Runs `use_registers` with the pointer, alone.
    pub(crate) fn with<R>(&self, use_registers: impl FnOnce(&mut UniqueMmioPointer<'static, T>) -> R) -> R {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, and every use of the cell happens here with it held, so
        // this is the only reference to the pointer until the lock is released below.
        let result = use_registers(unsafe { &mut *self.registers.get() });
        self.locked.store(false, Ordering::Release);
        result
    }
}
