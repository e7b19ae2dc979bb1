//! Just enough networking to prove both directions of a network device work: ask QEMU's
//! user-network gateway for its hardware address (ARP, RFC 826) and wait for the answer.
//!
//! Both waits are bounded: the device must take the request within its driver's transmit
//! timeout, and the answer must come before the deadline the caller gives.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::virtio::{NetworkDevice, VirtioError};

/// QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2.
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// Why the gateway's address was not learnt.
#[derive(Debug)]
pub enum GatewayError {
    Send(VirtioError),
    Receive(VirtioError),
    /// The request went out, and no reply came in time.
    NoReply {
        waited: Duration,
        other_frames: usize,
    },
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Send(error) => write!(f, "sending the ARP request failed: {error}"),
            GatewayError::Receive(error) => write!(f, "receiving failed: {error}"),
            GatewayError::NoReply { waited, other_frames } => write!(
                f,
                "no ARP reply from the gateway within {} ms ({other_frames} other frame(s) received)",
                waited.as_millis()
            ),
        }
    }
}

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

/// Sends an ARP request for the gateway and returns its MAC address, waiting `timeout` at
/// most for the reply.
pub fn ask_gateway(net: &mut dyn NetworkDevice, timeout: Duration) -> Result<[u8; 6], GatewayError> {
    net.send(&arp_request(net.mac_address())).map_err(GatewayError::Send)?;
    let deadline = arch::timer::uptime() + timeout;
    let mut frame = vec![0u8; 2048];
    let mut other_frames = 0;
    while let Some(length) = net.receive(&mut frame, deadline).map_err(GatewayError::Receive)? {
        match gateway_reply(&frame[..length]) {
            Some(mac) => return Ok(mac),
            None => other_frames += 1,
        }
    }
    Err(GatewayError::NoReply { waited: timeout, other_frames })
}
