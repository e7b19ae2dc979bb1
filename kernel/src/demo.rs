//! The demo `cargo xtask qemu` shows: a transfer on every device that does DMA, each through
//! its own route (restricted pool, IOMMU domain, the Pi's DMA engine), then what the pools and
//! the IOMMU did.

use log::{error, info};

use crate::{block, dma, dma_engine, iommu, memory, net, nvme, power, virtio};

/// What `cargo xtask qemu` shows: the machine as booted, a transfer on each virtio device,
/// what the restricted pools did, then a clean power-off.
pub fn run() -> power::Outcome {
    let outcome = match demo_transfers() {
        Ok(()) => power::Outcome::Success,
        Err(problem) => {
            error!("demo: {problem}");
            power::Outcome::Failure
        }
    };
    for pool in dma::pools::pools() {
        let kind = if pool.restricted { "restricted pool" } else { "bounce pool" };
        info!("{kind} '{}' after the demo:", pool.name);
        for line in alloc::format!("{}", pool.bounce.stats()).lines() {
            info!("  {line}");
        }
        info!("  occupancy {}", pool.bounce.occupancy_map(64));
    }
    let faults = iommu::take_faults();
    if iommu::policy().is_some() {
        info!("iommu: {} fault(s) during the demo", faults.len());
    }
    let heap = memory::heap_statistics();
    info!("heap: {} used of {}", platform::memmap::Size(heap.used as u64), platform::memmap::Size(heap.size as u64));
    outcome
}

fn demo_transfers() -> Result<(), &'static str> {
    if let Some(disk) = virtio::BLOCK_DEVICE.lock().as_mut() {
        let written: alloc::vec::Vec<u8> = (0..64 * 1024u32).map(|index| (index * 7 + 3) as u8).collect();
        let mut read = alloc::vec![0u8; written.len()];
        block::write(disk, 8, &written).map_err(|_| "block write failed")?;
        block::read(disk, 8, &mut read).map_err(|_| "block read failed")?;
        if read != written {
            return Err("the block device returned other data than was written");
        }
        info!("demo: block device: wrote and read back 64 KiB at sector 8, identical");
    }
    if let Some(disk) = virtio::PCI_DISK_A_DEVICE.lock().as_mut() {
        demo_translated_disk(disk)?;
    }
    if let Some(disk) = virtio::PCI_DISK_B_DEVICE.lock().as_mut() {
        demo_translated_disk(disk)?;
    }
    for controller in nvme::controllers() {
        let mut controller = controller.lock();
        info!("demo: {}: {}", controller.name, controller.summary());
        demo_translated_disk(&mut *controller)?;
        if let Some(received) = controller.last_received() {
            info!("demo: {}: the last command, as the controller fetched it: {received}", controller.name);
        }
    }
    if let Some(rng) = virtio::ENTROPY_DEVICE.lock().as_mut() {
        let mut entropy = [0u8; 16];
        rng.request_entropy(&mut entropy).map_err(|_| "entropy request failed")?;
        info!("demo: entropy device: {entropy:02x?}");
    }
    if let Some(engine) = dma_engine::DMA_ENGINE.lock().as_ref() {
        let source: alloc::vec::Vec<u8> = (0..64 * 1024u32).map(|index| (index * 13 + 5) as u8).collect();
        let mut destination = alloc::vec![0u8; source.len()];
        let report = engine.copy(&source, &mut destination).map_err(|error| {
            error!("demo: DMA engine: {error}");
            "DMA engine copy failed"
        })?;
        if destination != source {
            return Err("the DMA engine's copy differs from its source");
        }
        let at = engine.dma.physical(addr::VirtAddr::from_ptr(source.as_ptr()), source.len()).ok();
        info!(
            "demo: DMA engine: copied 64 KiB from {} identically; it was given bus addresses {} and {}",
            at.map_or("?".into(), |range| alloc::format!("{range}")),
            report.source,
            report.destination
        );
    }
    if let Some(net) = virtio::NETWORK_DEVICE.lock().as_mut() {
        let gateway = net::ask_gateway(net, 3)?;
        info!("demo: network: 10.0.2.2 is at {gateway:02x?} (ARP through the pool both ways)");
    }
    Ok(())
}

/// Writes 600 KiB from page offset 0x7c8 to a disk behind the IOMMU, in as many requests as
/// its limit needs, flushes, and reads them back; shows what its route did.
fn demo_translated_disk(disk: &mut dyn block::BlockDevice) -> Result<(), &'static str> {
    const SIZE: usize = 600 << 10;
    const PAGE_OFFSET: usize = 0x7c8;
    let device = disk.dma_device();
    let dma::Route::Iommu { domain, untrusted, bounce } = &device.route else { return Err("PCI disk not translated") };
    let before = bounce.map_or(0, |pool| pool.bounce.stats().bytes_to_device);
    let mut storage = alloc::vec![0u8; SIZE + 2 * 4096];
    let start = storage.as_ptr().align_offset(4096) + PAGE_OFFSET;
    let written: alloc::vec::Vec<u8> = (0..SIZE as u32).map(|index| (index * 11 + 1) as u8).collect();
    storage[start..start + SIZE].copy_from_slice(&written);
    let buffer = &mut storage[start..start + SIZE];
    let stored = block::write(disk, 8, buffer).and_then(|()| disk.flush());
    buffer.fill(0);
    let moved = stored.and_then(|()| block::read(disk, 8, buffer));
    if let Err(problem) = moved {
        error!("demo: {}: {problem}", disk.describe());
        return Err("a transfer through the IOMMU failed");
    }
    if *buffer != written[..] {
        return Err("a PCI disk returned other data than was written");
    }
    let bounced = bounce.map_or(0, |pool| pool.bounce.stats().bytes_to_device) - before;
    info!(
        "demo: {} ({}, domain {}, {} KiB granule): wrote 600 KiB from page offset {PAGE_OFFSET:#x} ({}: {} request(s)), read them back into the same buffer, identical; {bounced} bytes bounced",
        disk.describe(),
        if *untrusted { "untrusted" } else { "trusted" },
        domain.id,
        domain.granule_size() >> 10,
        block::describe_limit(disk),
        disk.max_transfer().map_or(1, |limit| SIZE.div_ceil(limit)),
    );
    Ok(())
}
