//! Which fixes this build removed, for a lesson (`cargo xtask lesson NAME --break FIX`).
//!
//! Every rule of the DMA contract this crate keeps was once broken in Linux, and each break
//! is a cargo feature that takes exactly one fix out again (`break-min-align`,
//! `break-pre-padding`, `break-page-alignment`, `break-alloc-align`, `break-zero-padding`,
//! `break-exact-release`), so that a reader can watch the test that guards it fail. None is
//! ever on by default; a kernel built with one names it at boot, loudly.

/// The fixes this build removed, by feature name; empty in every normal build.
pub const BROKEN: &[&str] = &[
    #[cfg(feature = "break-min-align")]
    "break-min-align",
    #[cfg(feature = "break-pre-padding")]
    "break-pre-padding",
    #[cfg(feature = "break-page-alignment")]
    "break-page-alignment",
    #[cfg(feature = "break-alloc-align")]
    "break-alloc-align",
    #[cfg(feature = "break-zero-padding")]
    "break-zero-padding",
    #[cfg(feature = "break-exact-release")]
    "break-exact-release",
];
