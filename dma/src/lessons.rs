//! Which fixes this build removed, for a lesson (`cargo xtask lesson NAME --break FIX`).
//!
//! The features `break-cache-line` (rule 13: a buffer sharing a cache line is lent in place)
//! and `break-strict-invalidation` (rule 14: unmap leaves the IOMMU's cached translations)
//! each take one fix out, so that a reader can watch the test that guards it fail; the bounce
//! pool's own are in `swiotlb::lessons`. None is ever on by default.

/// The fixes this build removed, of this crate and the bounce pool's, by feature name.
pub fn broken() -> impl Iterator<Item = &'static str> {
    const OURS: &[&str] = &[
        #[cfg(feature = "break-cache-line")]
        "break-cache-line",
        #[cfg(feature = "break-strict-invalidation")]
        "break-strict-invalidation",
    ];
    OURS.iter().chain(swiotlb::lessons::BROKEN).copied()
}
