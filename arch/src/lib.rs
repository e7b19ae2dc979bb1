//! AArch64 support: everything that depends on the CPU architecture rather than the board.
//!
//! - [`boot`]: the Linux arm64 Image header, EL2 to EL1, the boot page tables, MMU on.
//! - [`layout`]: the kernel's virtual address space (linear map, device window, image).
//! - [`mmu`]: the live translation tables: linear map, device mappings, translation queries.
//! - [`exception`]: the vector table, exception reports in words, fault probes.
//! - [`interrupt`]: the IRQ mask, the kernel's IRQ handler, sleeping until an interrupt.
//! - [`cache`], [`copy`], [`timer`], [`power`]: cache maintenance, the bounce copy, the generic
//!   timer, PSCI and semihosting.
//!
//! Board specifics (which UART, which interrupt controller, how much RAM) are not here: they
//! come from the devicetree, read by the kernel.
#![no_std]

// The one message a host build gets, instead of a page of assembler errors.
#[cfg(not(target_arch = "aarch64"))]
compile_error!("`arch` (and the kernel) build only for aarch64-unknown-none: use `cargo xtask build`");

pub mod boot;
pub mod cache;
pub mod copy;
pub mod exception;
pub mod interrupt;
pub mod layout;
pub mod mmu;
pub mod power;
pub mod smp;
pub mod timer;

pub use boot::BootInfo;
