//! Real devices moving real data through the restricted pool.

use alloc::vec;
use alloc::vec::Vec;

use crate::block::BlockDevice;
use crate::dma::Route;
use crate::testing::{ensure, kernel_test, skip};
use crate::tests::block::round_trips;
use crate::virtio::{self, ENTROPY};

const SECTOR: usize = 512;

/// Deterministic bytes, different for each seed.
pub fn pattern(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

kernel_test! {
    /// Writes and reads back virtio-blk sectors through the restricted pool, with buffers from
    /// one sector to beyond the largest one mapping takes, starting at many offsets within a
    /// page, odd ones included; every byte is compared.
    fn block_device_round_trips_every_size_and_offset() {
        let mut guard = virtio::BLOCK_DEVICE.lock();
        let Some(disk) = guard.as_mut() else { skip!("no virtio block device") };
        let largest = disk.max_transfer().map_or(1 << 20, |limit| limit.min(1 << 20));
        ensure!(largest >= 64 * SECTOR, "largest transfer only {largest} bytes");
        let sizes = [SECTOR, 2 * SECTOR, 4096, 4096 + SECTOR, 16 << 10, 60 << 10, 128 << 10, largest, largest + 4096];
        let offsets = [0usize, 1, 0x200, 0x7c8, 0xfa0, 0xfff];
        round_trips(disk, &sizes, &offsets, 0)?;
        Ok(())
    }
}

kernel_test! {
    /// Entropy read from virtio-rng, through the pool: not all zero, and new every time.
    fn entropy_device_returns_fresh_bytes() {
        let mut guard = virtio::ENTROPY_DEVICE.lock();
        let Some(rng) = guard.as_mut() else { skip!("no virtio entropy device") };
        let mut first = [0u8; 64];
        let mut second = [0u8; 64];
        for buffer in [&mut first, &mut second] {
            let got = rng.request_entropy(buffer).map_err(|e| alloc::format!("{e:?}"))?;
            ensure!(got == buffer.len(), "asked for {} bytes, got {got}", buffer.len());
        }
        ensure!(first.iter().any(|&byte| byte != 0), "entropy is all zeros");
        ensure!(first != second, "two requests returned the same bytes");
        ensure!(virtio::dma_device(ENTROPY).is_some_and(|device| device.audit_report().addresses > 0), "no DMA audited");
        Ok(())
    }
}

kernel_test! {
    /// An ARP request sent through virtio-net is answered by QEMU's user network: the request
    /// bounces out through the pool, the reply bounces in.
    fn network_request_is_answered() {
        let mut guard = virtio::NETWORK_DEVICE.lock();
        let Some(net) = guard.as_mut() else { skip!("no virtio network device") };
        let gateway = crate::net::ask_gateway(net, 3)?;
        ensure!(gateway != [0; 6], "the gateway answered with a zero MAC address");
        Ok(())
    }
}

kernel_test! {
    /// The audit: every DMA address given to a restricted device lay inside its pool, and the
    /// pool carried bytes both ways.
    fn restricted_devices_only_ever_see_their_pool() {
        {
            let mut guard = virtio::BLOCK_DEVICE.lock();
            let Some(disk) = guard.as_mut() else { skip!("no virtio block device") };
            let data = pattern(99, 8 * SECTOR);
            disk.write_blocks(100, &data).map_err(|e| alloc::format!("{e:?}"))?;
            let mut back = vec![0u8; data.len()];
            disk.read_blocks(100, &mut back).map_err(|e| alloc::format!("{e:?}"))?;
            ensure!(back == data, "data changed on the way");
        }
        let mut restricted = 0;
        for slot in [virtio::BLOCK, virtio::ENTROPY, virtio::NETWORK] {
            let Some(device) = virtio::dma_device(slot) else { continue };
            let Route::Restricted(pool) = &device.route else { continue };
            restricted += 1;
            let audit = device.audit_report();
            ensure!(audit.addresses > 0, "{}: no DMA address audited", device.name);
            ensure!(audit.violations == 0, "{}: {} addresses outside pool {}", device.name, audit.violations, pool.name);
            let stats = pool.bounce.stats();
            ensure!(stats.bytes_to_device > 0 && stats.bytes_to_cpu > 0, "pool {}: bounced {} out, {} in", pool.name, stats.bytes_to_device, stats.bytes_to_cpu);
        }
        ensure!(restricted > 0, "no restricted device: boot with `cargo xtask test`");
        Ok(())
    }
}
