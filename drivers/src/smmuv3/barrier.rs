//! Ordering between the CPU's accesses to shared memory and its register writes.
//!
//! The stream table, context descriptors and queues are ordinary cacheable memory that the
//! (coherent) SMMU reads and writes on its own. A store to that memory and a later store to a
//! device register are not ordered by default, so without a barrier the SMMU could see PROD
//! move before the command it announces. The SMMU is an observer in the outer shareable domain,
//! as Linux's `dma_wmb()`/`dma_rmb()` assume (Arm ARM DDI 0487, B2.3 "Definition of the Arm
//! memory model"). On the host, where the tests run, a compiler fence stands in.

#[cfg(not(target_arch = "aarch64"))]
use core::sync::atomic::{Ordering, compiler_fence};

/// Completes every earlier store to shared memory before any later register write: call it
/// after writing entries and before telling the SMMU about them.
#[inline]
pub(super) fn publish_writes() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier; it touches no memory and no registers.
    unsafe {
        core::arch::asm!("dsb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    compiler_fence(Ordering::SeqCst);
}

/// Orders a register read that says entries are ready before the reads of those entries.
#[inline]
pub(super) fn acquire_reads() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    compiler_fence(Ordering::SeqCst);
}

/// Completes every earlier read of shared memory before a later register write hands the
/// entries back to the SMMU, which may then overwrite them.
#[inline]
pub(super) fn release_entries() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("dsb osh", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    compiler_fence(Ordering::SeqCst);
}
