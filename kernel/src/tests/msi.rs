//! Message-signalled interrupts: the PCIe disks' MSI-X vectors through the GICv3 ITS, the
//! doorbell in each disk's IOMMU domain, and what the SMMU does to an MSI when that mapping is
//! gone. They skip on machines without an ITS (a GICv2, the Raspberry Pi 4's GIC-400) or
//! without a PCIe disk.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::block::BlockDevice;
use crate::dma_platform::Route;
use crate::iommu::{self, Domain};
use crate::msi::MessageRoute;
use crate::testing::{Verdict, ensure, kernel_test};
use drivers::smmuv3::EventKind;

/// How long a delivered LPI may take, and how long to watch for one that must not come.
const PROMPTLY: Duration = Duration::from_millis(100);

/// Calls `visit` with every PCIe disk started (virtio-blk-pci and NVMe) and its MSI-X route,
/// and says how many it visited. Skipped where MSIs are not used or no PCIe disk started;
/// failed when a started PCIe disk has no route, or a visit fails (naming the disk).
fn with_each_messaged_disk(
    mut visit: impl FnMut(&mut dyn BlockDevice, MessageRoute) -> Result<(), String>,
) -> Result<usize, Verdict> {
    if crate::its::doorbell().is_none() {
        return Err(Verdict::Skipped("no GICv3 ITS on this machine"));
    }
    if crate::interrupts::polling() {
        return Err(Verdict::Skipped("drivers poll (kernel.poll): no MSI-X was set up"));
    }
    let is_disk = |info: &_| crate::nvme::is_nvme(info) || crate::virtio::is_pci_disk(info);
    let pci_disks: Vec<String> = crate::pci::bus()
        .map_or(Vec::new(), |bus| bus.functions.iter().filter(|f| is_disk(&f.info)).map(|f| f.name()).collect());
    let (mut visited, mut failures) = (0, Vec::new());
    crate::block::with_each_disk(|disk| {
        if !pci_disks.iter().any(|name| name == disk.dma_device().name) {
            return;
        }
        visited += 1;
        let outcome = match crate::msi::route_of(disk.dma_device().name) {
            Some(route) => visit(disk, route).map_err(|problem| format!("{route}: {problem}")),
            None => Err("started without an MSI-X route".into()),
        };
        if let Err(problem) = outcome {
            failures.push(format!("{}: {problem}", disk.describe()));
        }
    });
    if visited == 0 {
        return Err(Verdict::Skipped("no PCIe disk started on this machine"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(visited)
}

/// The domain of a disk whose DMA is translated.
fn domain_of(disk: &dyn BlockDevice) -> Option<&'static Domain> {
    match &disk.dma_device().route {
        Route::Iommu { domain, .. } => Some(domain),
        _ => None,
    }
}

/// A write and a read of block 0, compared.
fn round_trip(disk: &mut dyn BlockDevice, seed: u8) -> Result<(), String> {
    let block_size = disk.block_size();
    let written: Vec<u8> = (0..block_size).map(|index| (index as u8).wrapping_mul(13).wrapping_add(seed)).collect();
    let mut read = alloc::vec![0u8; block_size];
    crate::block::write(disk, 0, &written).map_err(|error| format!("write: {error}"))?;
    crate::block::read(disk, 0, &mut read).map_err(|error| format!("read: {error}"))?;
    ensure!(read == written, "the block read back differs from the one written");
    Ok(())
}

kernel_test! {
    /// Every PCIe disk signals its completions by MSI-X through the ITS: its vector raises an
    /// LPI (INTID 8192 or more), and a write and a read raise it at least once, with every
    /// byte read back as written. Trusted or untrusted, at whatever granule this boot chose.
    fn every_pci_disk_completes_by_msi_x_through_the_its() {
        with_each_messaged_disk(|disk, route| {
            ensure!(route.lpi >= crate::its::FIRST_LPI, "not an LPI");
            let before = disk.interrupts_taken().ok_or("its completions are polled")?;
            round_trip(disk, 1)?;
            let taken = disk.interrupts_taken().unwrap_or(before) - before;
            ensure!(taken >= 1, "no LPI for two requests");
            Ok(())
        })?;
        Ok(())
    }
}

kernel_test! {
    /// A translated disk's domain maps the ITS doorbell where the function writes: an IOVA
    /// in the reserved MSI window that leads to `GITS_TRANSLATER`, as Device memory, at the
    /// domain's granule, with the register's offset in its page kept.
    fn the_doorbell_is_mapped_in_each_translated_domain() {
        let doorbell = crate::its::doorbell().ok_or(Verdict::Skipped("no GICv3 ITS on this machine"))?;
        let window = dma::iommu::MSI_IOVA_BASE..dma::iommu::MSI_IOVA_BASE + dma::iommu::MSI_IOVA_SIZE;
        let mut translated = 0;
        with_each_messaged_disk(|disk, route| {
            let Some(domain) = domain_of(disk) else { return Ok(()) };
            translated += 1;
            ensure!(route.translated, "written untranslated although it has domain {}", domain.id);
            ensure!(window.contains(&route.address), "doorbell IOVA {:#x} outside the MSI window", route.address);
            let granule = domain.granule_size();
            ensure!(
                route.address & (granule - 1) == doorbell.as_u64() & (granule - 1),
                "IOVA {:#x} does not keep the doorbell's offset in its {granule}-byte granule",
                route.address
            );
            let reached = domain.translate(addr::DmaAddr::new(route.address));
            ensure!(reached == Some(doorbell), "IOVA {:#x} leads to {reached:?}, not {doorbell}", route.address);
            let attributes = domain.attributes(addr::DmaAddr::new(route.address)).ok_or("no attributes")?;
            ensure!(attributes.memory == vmsa::MemoryType::Device, "mapped as {:?}, not Device memory", attributes.memory);
            ensure!(!attributes.executable, "mapped executable");
            let recorded = domain.msi_doorbell().map(|iova| iova.as_u64());
            ensure!(recorded == Some(route.address), "the domain records its doorbell at {recorded:x?}");
            Ok(())
        })?;
        if translated == 0 {
            crate::testing::skip!("no PCIe disk behind the IOMMU");
        }
        Ok(())
    }
}

kernel_test! {
    /// Isolation: an MSI is a DMA write, so a device whose domain lacks the doorbell mapping
    /// cannot interrupt. With the mapping removed from each translated disk's domain in turn,
    /// a write and a read still complete (their data and completions are memory the domain
    /// maps), but the MSIs that announce them are stopped: the SMMU reports translation faults
    /// on writes to the doorbell IOVA, from that disk's StreamID and nowhere else, and no LPI
    /// is delivered. With the mapping back, the next requests interrupt again: the kernel
    /// carries on.
    fn an_msi_without_the_doorbell_mapping_is_stopped_by_the_smmu() {
        let doorbell = crate::its::doorbell().ok_or(Verdict::Skipped("no GICv3 ITS on this machine"))?;
        let mut translated = 0;
        with_each_messaged_disk(|disk, route| {
            let Some(domain) = domain_of(disk) else { return Ok(()) };
            translated += 1;
            let before = disk.interrupts_taken().ok_or("its completions are polled")?;
            let _ = iommu::take_faults();
            domain.unmap_msi_doorbell().map_err(|error| format!("removing the doorbell mapping: {error}"))?;
            // Polled while the doorbell is gone: nothing would end a sleep.
            crate::interrupts::set_polling(true);
            let unannounced = round_trip(disk, 2);
            crate::interrupts::set_polling(false);
            let _ = crate::interrupts::wait_for(PROMPTLY, || false);
            let faults = iommu::take_faults();
            let arrived = disk.interrupts_taken().unwrap_or(before) - before;
            domain.map_msi_doorbell(doorbell).map_err(|error| format!("restoring the doorbell mapping: {error}"))?;
            unannounced.map_err(|problem| format!("without the doorbell: {problem}"))?;
            ensure!(arrived == 0, "{arrived} LPIs arrived although the domain had no doorbell mapping");
            ensure!(!faults.is_empty(), "the SMMU reported no fault: the MSI was not stopped there");
            for fault in &faults {
                ensure!(fault.event.stream_id == domain.stream_id, "fault {fault}: not from this disk's StreamID");
                ensure!(fault.event.kind == EventKind::TranslationFault, "fault {fault}: not a translation fault");
                ensure!(fault.event.input_address == Some(route.address), "fault {fault}: not at the doorbell IOVA");
                ensure!(fault.event.access.is_some_and(|access| access.write), "fault {fault}: not a write");
            }
            log::info!(
                "{}: its MSIs to IOVA {:#x} faulted at the SMMU ({} event(s)); no LPI arrived",
                disk.describe(),
                route.address,
                faults.len()
            );
            round_trip(disk, 3).map_err(|problem| format!("with the doorbell back: {problem}"))?;
            let after = disk.interrupts_taken().unwrap_or(before) - before;
            ensure!(after >= 1, "no LPI after the doorbell mapping came back");
            Ok(())
        })?;
        if translated == 0 {
            crate::testing::skip!("no PCIe disk behind the IOMMU");
        }
        Ok(())
    }
}
