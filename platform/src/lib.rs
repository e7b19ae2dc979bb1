//! The machine as its devicetree describes it.
//!
//! Pure logic, no hardware access: the kernel hands in the devicetree blob and the ranges it
//! occupies itself, and gets back a validated description and a memory map. Everything here
//! builds and is tested on the host.
#![no_std]

#[cfg(any(test, feature = "writer"))]
extern crate alloc;

pub mod devicetree;
pub mod dma_config;
#[cfg(any(test, feature = "writer"))]
pub mod fdt_writer;
pub mod interrupts;
pub mod memmap;
pub mod pci;

#[cfg(test)]
mod dma_tests;
#[cfg(test)]
mod interrupts_tests;
#[cfg(test)]
mod pci_tests;
#[cfg(test)]
mod pi4_boards_tests;
#[cfg(test)]
mod tests;
