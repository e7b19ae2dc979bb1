//! Device drivers. Each binds to devicetree `compatible` strings and is handed the virtual
//! address of its registers by the kernel: drivers never assume where a device is.
//!
//! # Registers are reached through pointers, never through references
//!
//! A device's registers look like memory: a load from the right address reads a register, a
//! store writes one. It is tempting to describe them as a struct and turn the address into a
//! `&'static Registers` (the tock-registers style, `register_structs!` behind a reference).
//! Every driver here used to; none does any more, because a reference promises the compiler
//! more than device memory can keep:
//!
//! - A reference is `dereferenceable`: the Rust Reference lists, among the behaviour
//!   considered undefined, producing a reference that is dangling or whose target is not
//!   valid for its type, and the compiler tells LLVM that the bytes behind every reference
//!   may be read at any time ("Behavior considered undefined", and the `dereferenceable`
//!   attribute rustc puts on reference arguments). LLVM may therefore *insert* loads the
//!   source never wrote: hoist a read out of a loop or a branch, or read a whole struct to
//!   copy one field. For memory such a spurious read is harmless; for a register it is not.
//! - Reading a register can change the device. The mini UART's `AUX_MU_LSR_REG` clears its
//!   overrun flag when read; other devices pop a FIFO or acknowledge an interrupt on a read.
//!   A read the compiler invents is then a side effect nobody asked for. `UnsafeCell` inside
//!   the register types does not help: it permits mutation behind `&`, not the absence of
//!   reads.
//! - Raw pointers carry no such promise: the compiler accesses a raw pointer only where the
//!   program does, and a volatile access (or an `asm!` load or store) happens exactly once,
//!   in program order with other volatile accesses.
//!
//! So every driver holds its registers as a [`safe_mmio::UniqueMmioPointer`], a raw pointer
//! with an owner (the `safe-mmio` crate, whose README sets out exactly this reasoning: "We
//! avoid creating references to MMIO address space. The Rust compiler is free to dereference
//! references whenever it likes, so constructing references to MMIO address space (even
//! temporarily) can lead to undefined behaviour"). Why that crate rather than bare
//! `read_volatile`:
//!
//! - **No references anywhere.** A register block is still a `#[repr(C)]` struct, which keeps
//!   the layout readable, but the crate's `field!` macro projects the *pointer* to the
//!   struct onto a pointer to one field (`&raw mut`), never forming a reference.
//! - **Reads with side effects are told apart.** Each field says what may be done to it:
//!   `ReadPure` (reading changes nothing, so `&self` suffices), `ReadOnly` (reading may
//!   change the device, so it needs `&mut`, like a write), `WriteOnly`, `ReadWrite`, and
//!   `ReadPureWrite`. The type checker then enforces that a driver only pops a FIFO where
//!   it holds the device exclusively.
//! - **Uniqueness is the owner's.** A `UniqueMmioPointer` is to a register block what `&mut`
//!   is to memory: one handle, whose methods take `&mut self` to write. Drivers whose handle
//!   the kernel shares (`&self`) keep the pointer behind a small lock (`mmio::RegisterLock`).
//! - **Accesses a hypervisor can emulate.** On AArch64 the crate issues each access as one
//!   `ldr`/`str` with a plain base register in `asm!`; `read_volatile` may compile to
//!   post-indexed or paired forms that give a trapping hypervisor no syndrome to decode
//!   (rust-lang/rust#131894). On the host, where the unit tests run, it uses
//!   `read_volatile`/`write_volatile`.
//!
//! What stays the same: bit layouts are still written with tock-registers'
//! `register_bitfields!`, but only as *values* (`FieldValue`, `LocalRegisterCopy`): a
//! register is read once into a plain integer, decoded, and a new value is encoded and
//! written once. No tock-registers type ever points at a device. Each register block is
//! checked at compile time against the offsets of its datasheet (`register_offsets!`),
//! which is what `register_structs!` used to check, and every access cites its section.
#![no_std]

pub mod bcm2835_dma;
pub mod bcm2835_pm;
pub mod block;
pub mod edu;
pub mod gic_its;
pub mod mini_uart;
mod mmio;
pub mod msix;
pub mod nvme;
pub mod pl011;
pub mod smmuv3;

/// Feeds `text` to a UART byte by byte, with each `\n` sent as `\r\n`, as a serial
/// terminal expects.
fn write_terminal_text(text: &str, mut write_byte: impl FnMut(u8)) {
    for byte in text.bytes() {
        if byte == b'\n' {
            write_byte(b'\r');
        }
        write_byte(byte);
    }
}
