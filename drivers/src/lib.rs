//! Device drivers. Each binds to devicetree `compatible` strings and is handed the virtual
//! address of its registers by the kernel: drivers never assume where a device is.
#![no_std]

pub mod pl011;
