//! Device drivers. Each binds to devicetree `compatible` strings and is handed the virtual
//! address of its registers by the kernel: drivers never assume where a device is.
#![no_std]

pub mod bcm2835_dma;
pub mod bcm2835_pm;
pub mod mini_uart;
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
