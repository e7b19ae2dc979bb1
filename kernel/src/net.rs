//! Just enough networking to prove both directions of a virtio-net device work: ask QEMU's
//! user-network gateway for its hardware address (ARP, RFC 826) and wait for the answer.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use crate::virtio::NetworkDevice;

/// QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2.
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// An Ethernet frame carrying "who has 10.0.2.2? tell 10.0.2.15".
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETHERTYPE_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, address sizes, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&GUEST_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&GATEWAY_IP);
    frame
}

/// The sender's hardware address, if `frame` is the gateway's ARP reply.
fn gateway_reply(frame: &[u8]) -> Option<[u8; 6]> {
    let is_reply = frame.len() >= 42 && frame[12..14] == ETHERTYPE_ARP && frame[20..22] == [0, 2];
    (is_reply && frame[28..32] == GATEWAY_IP).then(|| frame[22..28].try_into().ok()).flatten()
}

/// Sends an ARP request for the gateway and returns its MAC address, waiting `seconds` at most.
pub fn ask_gateway(net: &mut NetworkDevice, seconds: u64) -> Result<[u8; 6], &'static str> {
    net.send(&arp_request(net.mac_address())).map_err(|_| "sending the ARP request failed")?;
    let deadline = arch::timer::ticks() + seconds * arch::timer::frequency();
    // A receive left pending at the deadline keeps its buffer: it lives as long as the kernel.
    let buffer: &'static mut [u8] = Box::leak(vec![0u8; 2048].into_boxed_slice());
    loop {
        // SAFETY: the buffer is not touched until `receive_complete`.
        let token = unsafe { net.receive_begin(buffer) }.map_err(|_| "no receive buffer could be queued")?;
        while net.poll_receive() != Some(token) {
            if arch::timer::ticks() > deadline {
                return Err("no ARP reply from the gateway in time");
            }
            core::hint::spin_loop();
        }
        // SAFETY: the same buffer `receive_begin` was given, now complete.
        let (header, length) = unsafe { net.receive_complete(token, buffer) }.map_err(|_| "receive failed")?;
        if let Some(mac) = gateway_reply(&buffer[header..header + length]) {
            return Ok(mac);
        }
    }
}
