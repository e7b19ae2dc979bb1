//! The IOMMU path: virtio-blk-pci disks behind the SMMUv3, one trusted and one untrusted,
//! with whatever granule this boot's `iommu.granule=` chose.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use addr::{PhysRange, VirtAddr};
use spin::Mutex;
use swiotlb::DmaDirection;
use virtio_drivers::device::blk::{BlkReq, BlkResp};

use crate::block::BlockDevice;
use crate::dma_platform::{DmaDevice, Route};
use crate::iommu::{self, Domain};
use crate::testing::{Verdict, ensure, kernel_test, skip};
use crate::tests::block::{PAGE_OFFSETS, round_trips, skip_because};
use crate::tests::virtio::pattern;
use crate::virtio::{self, PCI_DISK_A, PCI_DISK_A_DEVICE, PCI_DISK_B, PCI_DISK_B_DEVICE, PciDisk};
use dma::translated::Fault;
use drivers::smmuv3::EventKind;

/// A buffer smaller than any granule, for the mapping tests (no disk request is made with it).
const BUFFER_IN_A_PAGE: usize = 512;

/// The domain and trust of the disk in `slot`.
fn translated(slot: usize) -> Result<(&'static DmaDevice, &'static Domain, bool), String> {
    let Some(device) = virtio::dma_device(slot) else { return Err("no virtio-blk-pci disk".into()) };
    match &device.route {
        Route::Iommu { domain, untrusted, .. } => Ok((device, domain, *untrusted)),
        _ => Err(format!("{}: not behind the IOMMU", device.name)),
    }
}

/// Whether this boot's `iommu.untrusted=` distrusts the PCIe function behind `device`.
fn policy_distrusts(device: &DmaDevice) -> Result<bool, String> {
    let policy = iommu::policy().ok_or("no IOMMU policy")?;
    let bus = crate::pci::bus().ok_or("no PCIe bus")?;
    let function = bus.functions.iter().find(|function| format!("pci {}", function.address) == device.name);
    let function = function.ok_or(format!("{}: no such function on the bus", device.name))?;
    Ok(policy.is_untrusted(function.address))
}

kernel_test! {
    /// Both disks are translated, each in a domain of its own with this boot's granule, each
    /// trusted or not as `iommu.untrusted=` said.
    fn pci_disks_have_domains_of_their_own() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let policy = iommu::policy().ok_or("no policy")?;
        let (a, domain_a, untrusted_a) = translated(PCI_DISK_A)?;
        let (b, domain_b, untrusted_b) = translated(PCI_DISK_B)?;
        ensure!(domain_a.id != domain_b.id, "{} and {} share domain {}", a.name, b.name, domain_a.id);
        ensure!(domain_a.stream_id != domain_b.stream_id, "both disks use StreamID {:#x}", domain_a.stream_id);
        for domain in [domain_a, domain_b] {
            ensure!(domain.granule == policy.granule, "domain {} has granule {:?}, policy {:?}", domain.id, domain.granule, policy.granule);
        }
        for (device, untrusted) in [(a, untrusted_a), (b, untrusted_b)] {
            let expected = policy_distrusts(device)?;
            ensure!(untrusted == expected, "{}: untrusted {untrusted}, but iommu.untrusted= says {expected}", device.name);
        }
        Ok(())
    }
}

/// The route of a translated disk: its DMA handle, domain and trust.
pub fn route_of(disk: &dyn BlockDevice) -> Result<(&'static DmaDevice, &'static Domain, bool), String> {
    let device = disk.dma_device();
    match &device.route {
        Route::Iommu { domain, untrusted, .. } => Ok((device, domain, *untrusted)),
        _ => Err(format!("{}: not behind the IOMMU", device.name)),
    }
}

/// Runs the integrity test over a disk behind the IOMMU at `sizes` and the R6 page offsets,
/// and checks what its route did: an untrusted disk bounced through the pool, a trusted one
/// did not, neither faulted, nothing stayed mapped, every address lay in a live mapping.
pub fn translated_round_trips(disk: &mut dyn BlockDevice, sizes: &[usize], seed: u64) -> Result<(), String> {
    let (device, domain, untrusted) = route_of(disk)?;
    let pool = device.bounce_pool().ok_or("no default bounce pool")?;
    let before = pool.bounce.stats();
    let live_before = domain.live_mappings();
    let moved = round_trips(disk, sizes, &PAGE_OFFSETS, seed)?;
    let after = pool.bounce.stats();
    let bounced = after.bytes_to_device - before.bytes_to_device;
    log::info!(
        "{}: {moved} bytes moved through domain {} ({} KiB granule, {}), {}; pool bounced {bounced} bytes to the device",
        disk.describe(),
        domain.id,
        domain.granule_size() >> 10,
        if untrusted { "untrusted" } else { "trusted" },
        crate::block::describe_limit(disk),
    );
    match untrusted {
        true => ensure!(bounced > 0, "{}: untrusted, yet nothing was bounced", device.name),
        false => ensure!(
            after.maps == before.maps,
            "{}: trusted, yet {} buffers were bounced",
            device.name,
            after.maps - before.maps
        ),
    }
    ensure!(
        domain.live_mappings() == live_before,
        "{}: {} mappings left behind",
        device.name,
        domain.live_mappings() - live_before
    );
    let faults = iommu::take_faults();
    ensure!(faults.is_empty(), "the SMMU reported {} faults, first: {}", faults.len(), faults[0]);
    let audit = device.audit_report();
    ensure!(audit.violations == 0, "{}: {} DMA addresses outside its live mappings", device.name, audit.violations);
    Ok(())
}

/// The integrity test of a virtio-blk-pci disk: from one sector to beyond its largest request.
fn disk_round_trips<const SLOT: usize>(driver: &Mutex<Option<PciDisk<SLOT>>>) -> Result<(), String> {
    let mut guard = driver.lock();
    let disk = guard.as_mut().ok_or("disk not started")?;
    let largest = disk.max_transfer().map_or(1 << 20, |limit| limit.min(1 << 20));
    let block = disk.block_size();
    let sizes = [block, 2 * block, 4096, 4096 + block, 16 << 10, 60 << 10, 128 << 10, largest, largest + 4096];
    translated_round_trips(disk, &sizes, 1000 * SLOT as u64)
}

kernel_test! {
    /// The first disk moves data at many sizes and offsets through its domain.
    fn first_pci_disk_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        Ok(disk_round_trips(PCI_DISK_A_DEVICE)?)
    }
}

kernel_test! {
    /// So does the second, with the other trust.
    fn second_pci_disk_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        Ok(disk_round_trips(PCI_DISK_B_DEVICE)?)
    }
}

/// The disk whose trust is `untrusted`; skipped when this boot's `iommu.untrusted=` gives
/// neither disk that trust.
fn disk_with_trust(untrusted: bool) -> Result<(usize, &'static DmaDevice, &'static Domain), Verdict> {
    for slot in [PCI_DISK_A, PCI_DISK_B] {
        let (device, domain, is_untrusted) = translated(slot)?;
        if is_untrusted == untrusted {
            return Ok((slot, device, domain));
        }
    }
    let trust = if untrusted { "untrusted" } else { "trusted" };
    Err(skip_because(format!("no {trust} virtio-blk-pci disk: iommu.untrusted= gives neither disk that trust")))
}

/// A page-aligned heap page of `fill` bytes, and its physical range.
fn page_of(device: &DmaDevice, fill: u8) -> Result<(Vec<u8>, PhysRange), String> {
    let mut pages = vec![fill; 3 * 4096];
    let offset = pages.as_ptr().align_offset(4096);
    let page = pages[offset..offset + 4096].as_ptr();
    let physical = device.physical(VirtAddr::from_ptr(page), 4096).map_err(|e| format!("{e}"))?;
    pages.truncate(offset + 4096);
    Ok((pages, physical))
}

/// Fills every free slot of `pool` with 0xEE, so that padding reads as zero only if the map
/// zeroed it, not because the pool was never used.
fn dirty_free_slots(pool: &crate::dma_platform::DmaPool) {
    for (index, free) in pool.bounce.slot_states().into_iter().enumerate() {
        if free {
            let slot = arch::layout::phys_to_virt(pool.range.start().add((index * swiotlb::SLOT_SIZE) as u64));
            // SAFETY: a free slot of the pool, in the linear map; no mapping owns it.
            unsafe { core::ptr::write_bytes(slot.as_mut_ptr::<u8>(), 0xee, swiotlb::SLOT_SIZE) };
        }
    }
}

/// The bytes of the granule an IOVA translates into, read through the linear map.
fn granule_behind(domain: &Domain, iova: addr::DmaAddr) -> Result<(PhysRange, &'static [u8]), String> {
    let granule = domain.granule_size();
    let physical = domain.translate(iova).ok_or(format!("{iova:?} is not mapped"))?;
    let start = physical.align_down(granule);
    let range = PhysRange::new(start, granule).ok_or("granule range")?;
    let virt = arch::layout::phys_to_virt(start);
    // SAFETY: RAM the linear map covers (the pool or the heap); read only, while mapped.
    Ok((range, unsafe { core::slice::from_raw_parts(virt.as_ptr::<u8>(), granule as usize) }))
}

kernel_test! {
    /// R9 and R12: for the untrusted disk, a 512-byte buffer inside a page of 0xAA bytes, and a
    /// whole 4 KiB page, are each bounced into a granule of their own unless they fill whole
    /// granules: the device sees the buffer and zeros everywhere else in the granule — none
    /// of the 0xAA around it. A buffer that fills its granules is mapped in place. After the
    /// unmap the IOVA translates to nothing.
    fn untrusted_buffer_is_alone_in_its_granule() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (_, device, domain) = disk_with_trust(true)?;
        let (_page, physical) = page_of(device, 0xaa)?;
        let granule = domain.granule_size();
        dirty_free_slots(device.bounce_pool().ok_or("no pool")?);
        for (offset, size) in [(0x7c8, BUFFER_IN_A_PAGE as u64), (0, 4096)] {
            let buffer = PhysRange::new(physical.start().add(offset), size).ok_or("range")?;
            // SAFETY: the buffer lies in `_page`, which this test allocated and keeps alive until after
            // the unmap below, and does not touch while the device owns it.
            let iova = unsafe { device.map(buffer, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
            let fills_granules = (buffer.start().as_u64() | buffer.end().as_u64()) & (granule - 1) == 0;
            if fills_granules {
                ensure!(domain.translate(iova) == Some(buffer.start()), "{buffer} fills its granule, yet was not mapped in place");
            } else {
                let (behind, bytes) = granule_behind(domain, iova)?;
                let pool = device.bounce_pool().ok_or("no pool")?;
                ensure!(pool.range.covers(&behind), "granule {behind} is not in the bounce pool {}", pool.range);
                let at = (iova.as_u64() & (granule - 1)) as usize;
                let inside = at..at + size as usize;
                let leaked = bytes.iter().enumerate().filter(|&(index, &byte)| !inside.contains(&index) && byte != 0).count();
                ensure!(leaked == 0, "{size} bytes: {leaked} other bytes of the {granule}-byte granule are not zero");
                ensure!(bytes[inside].iter().all(|&byte| byte == 0xaa), "the buffer's bytes did not reach the copy");
            }
            // SAFETY: `iova`, `buffer` and the direction of the `map` just above, still live.
            unsafe { device.unmap(iova, buffer, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
            ensure!(domain.translate(iova).is_none(), "{iova:?} still translates after its unmap");
        }
        Ok(())
    }
}

kernel_test! {
    /// R12: a scatter list of four 4 KiB pages, not physically contiguous, maps for the trusted
    /// disk into one IOVA range: each page keeps its offset in its granule, the pages follow
    /// each other granule by granule, and each IOVA translates to its own page.
    fn trusted_scatter_list_maps_to_one_iova_range() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (_, device, domain) = disk_with_trust(false)?;
        let granule = domain.granule_size();
        let (_pages, physical) = (0..8).map(|_| page_of(device, 0x33)).collect::<Result<(Vec<_>, Vec<_>), _>>()?;
        let pages: Vec<PhysRange> = physical.into_iter().step_by(2).collect();
        // SAFETY: the pages lie in `_pages`, which this test allocated and keeps alive until after the
        // unmap below, and does not touch while the device owns them.
        let addresses = unsafe { device.map_scatter(&pages, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
        for (index, (iova, page)) in addresses.iter().zip(&pages).enumerate() {
            ensure!(iova.as_u64() & (granule - 1) == page.start().as_u64() & (granule - 1), "page {index}: IOVA {iova:?} lost the offset of {page}");
            ensure!(domain.translate(*iova) == Some(page.start()), "page {index}: {iova:?} does not translate to {page}");
            if index > 0 {
                let previous_granule = addresses[index - 1].as_u64() & !(granule - 1);
                ensure!(iova.as_u64() & !(granule - 1) == previous_granule + granule, "page {index} does not follow page {} in IOVA space", index - 1);
            }
        }
        if granule == 4096 {
            let last = addresses[addresses.len() - 1].as_u64();
            ensure!(last - addresses[0].as_u64() == 3 * 4096, "4 KiB granule: the pages should be one contiguous DMA segment");
        }
        // SAFETY: the addresses `map_scatter` returned, with its pages and direction, still live.
        unsafe { device.unmap_scatter(&addresses, &pages, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
        ensure!(addresses.iter().all(|iova| domain.translate(*iova).is_none()), "a page still translates after the unmap");
        Ok(())
    }
}

kernel_test! {
    /// R11: the PCIe bridge's `memory-region` asks for force bounce through a restricted pool;
    /// behind the IOMMU that is declined (and logged at boot): both disks stay translated, and
    /// only the default pool serves the untrusted one's partial granules.
    fn force_bounce_behind_the_iommu_is_declined() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let bus = crate::pci::bus().ok_or("no PCIe bus")?;
        let devicetree = &crate::machine().devicetree;
        let pool = crate::board::bridge_pool(devicetree, bus.bridge.name).ok_or(format!("{} names no restricted pool: boot with `cargo xtask test`", bus.bridge.name))?;
        for slot in [PCI_DISK_A, PCI_DISK_B] {
            let (device, _, _) = translated(slot)?;
            let bounce = device.bounce_pool().ok_or(format!("{}: no bounce pool", device.name))?;
            ensure!(!bounce.restricted && bounce.name != pool, "{} bounces through restricted pool {}", device.name, bounce.name);
        }
        Ok(())
    }
}

kernel_test! {
    /// A trusted disk's buffer is mapped in place: the IOVA keeps the buffer's offset in its
    /// granule and translates to the buffer itself, with no copy.
    fn trusted_buffer_is_mapped_in_place() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (_, device, domain) = disk_with_trust(false)?;
        let (_page, physical) = page_of(device, 0x55)?;
        let buffer = PhysRange::new(physical.start().add(0xfa0), 0x60).ok_or("range")?;
        // SAFETY: the buffer lies in `_page`, which this test allocated and keeps alive until after
        // the unmap below, and does not touch while the device owns it.
        let iova = unsafe { device.map(buffer, DmaDirection::FromDevice) }.map_err(|e| format!("{e}"))?;
        let mask = domain.granule_size() - 1;
        ensure!(iova.as_u64() & mask == buffer.start().as_u64() & mask, "IOVA {iova:?} vs buffer {buffer}: offset not kept");
        ensure!(domain.translate(iova) == Some(buffer.start()), "{iova:?} translates to {:?}, not {buffer}", domain.translate(iova));
        // SAFETY: `iova`, `buffer` and the direction of the `map` just above, still live.
        unsafe { device.unmap(iova, buffer, DmaDirection::FromDevice) }.map_err(|e| format!("{e}"))?;
        ensure!(domain.translate(iova).is_none(), "{iova:?} still translates after its unmap");
        Ok(())
    }
}

kernel_test! {
    /// Rule 11: unmapping an IOVA that is not mapped, or with the wrong size, and syncing past
    /// the buffer's end, are refused and leave the live mapping as it was.
    fn bad_unmaps_are_refused() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (_, device, domain) = disk_with_trust(false)?;
        let (_page, physical) = page_of(device, 0x11)?;
        let buffer = PhysRange::new(physical.start(), 4096).ok_or("range")?;
        // SAFETY: the buffer lies in `_page`, which this test allocated and keeps alive until after
        // the last unmap below, and does not touch while the device owns it.
        let iova = unsafe { device.map(buffer, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
        let shorter = PhysRange::new(physical.start(), 2048).ok_or("range")?;
        // SAFETY: breaks `unmap`'s contract on purpose (the wrong size). Behind the IOMMU the
        // domain looks the range up first and refuses one that is not a whole mapping, before any
        // copy or cache maintenance, so nothing is touched; the test checks that refusal.
        ensure!(unsafe { device.unmap(iova, shorter, DmaDirection::ToDevice) }.is_err(), "an unmap of the wrong size was accepted");
        // IOVA 0 is never handed out.
        let never_mapped = addr::DmaAddr::new(0x800);
        // SAFETY: breaks the contract on purpose (an IOVA never mapped): refused at the domain's
        // lookup, as above, before anything is touched.
        ensure!(unsafe { device.unmap(never_mapped, buffer, DmaDirection::ToDevice) }.is_err(), "an unmap of an unmapped IOVA was accepted");
        let beyond = PhysRange::new(physical.start().add(2048), 4096).ok_or("range")?;
        // SAFETY: breaks `sync_for_cpu`'s contract on purpose (a range past the mapping's end): the
        // domain finds no mapping covering it and refuses before any copy or invalidation.
        ensure!(unsafe { device.sync_for_cpu(iova.add(2048), beyond) }.is_err(), "a sync past the end of the buffer was accepted");
        ensure!(domain.translate(iova) == Some(buffer.start()), "the live mapping changed");
        // SAFETY: `iova`, `buffer` and the direction of the `map` above, still live (the refused calls
        // changed nothing, as the check of the translation just above shows).
        unsafe { device.unmap(iova, buffer, DmaDirection::ToDevice) }.map_err(|e| format!("{e}"))?;
        // SAFETY: breaks the contract on purpose (the mapping just ended): the domain no longer
        // knows `iova`, so the unmap is refused before anything is touched.
        ensure!(unsafe { device.unmap(iova, buffer, DmaDirection::ToDevice) }.is_err(), "a second unmap was accepted");
        check_debug_reports(device.name)
    }
}

/// The DMA debug checker saw each of `bad_unmaps_are_refused`'s mistakes, named the device
/// and said what was wrong: the wrong size, an address never mapped, a sync outside any
/// mapping, and the second unmap.
fn check_debug_reports(device: &str) -> Result<(), Verdict> {
    use dma::debug::Problem;
    let Some(checker) = crate::dma_platform::checker() else { skip!("the DMA debug checker is off (dma.debug=off)") };
    let reports = checker.take_reports();
    let mine: Vec<_> = reports.iter().filter(|report| report.device == device).collect();
    let sizes = mine.iter().filter(|report| matches!(report.problem, Problem::SizeMismatch { .. })).count();
    let unknown = mine.iter().filter(|report| matches!(report.problem, Problem::UnknownMapping { .. })).count();
    ensure!(sizes == 1 && unknown == 3, "the checker reported {mine:?}");
    ensure!(
        mine.iter().all(|report| format!("{report}").starts_with(&format!("DMA debug: {device}: "))),
        "a report does not name the device"
    );
    Ok(())
}

kernel_test! {
    /// Isolation: the trusted disk reads a sector into a buffer, so the SMMU has used (and may
    /// cache) the buffer's IOVA. The next read into the same buffer gets the same IOVA, which
    /// is unmapped — strictly, with invalidation — before the disk is told. The SMMU must refuse
    /// the disk's write and report F_TRANSLATION at that IOVA, and the buffer must keep its
    /// bytes. The disk then carries on.
    fn use_after_unmap_is_refused_by_the_smmu() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (slot, device, domain) = disk_with_trust(false)?;
        match slot {
            PCI_DISK_A => Ok(use_after_unmap(PCI_DISK_A_DEVICE, device, domain)?),
            _ => Ok(use_after_unmap(PCI_DISK_B_DEVICE, device, domain)?),
        }
    }
}

/// [`use_after_unmap_is_refused_by_the_smmu`] on the trusted disk, whichever slot it is in.
fn use_after_unmap<const SLOT: usize>(
    driver: &Mutex<Option<PciDisk<SLOT>>>,
    device: &DmaDevice,
    domain: &Domain,
) -> Result<(), String> {
    let mut guard = driver.lock();
    let disk = guard.as_mut().ok_or("disk not started")?;
    let block = disk.block_size();
    let mut buffer = vec![0u8; block];
    let physical = device.physical(VirtAddr::from_ptr(buffer.as_ptr()), block).map_err(|e| format!("{e}"))?;

    device.inject(physical, Fault::None);
    disk.read_request(0, &mut buffer).map_err(|e| format!("warm-up read: {e}"))?;
    let warm = device.injected_iova().ok_or("the warm-up read did not map the buffer")?;

    buffer.fill(0x5a);
    device.inject(physical, Fault::UseAfterUnmap);
    let (mut request, mut response) = (BlkReq::default(), BlkResp::default());
    // SAFETY: the buffers outlive the request, which completes below before they drop.
    let token = unsafe { disk.read_blocks_nb(0, &mut request, &mut buffer, &mut response) };
    let token = token.map_err(|e| format!("submit: {e:?}"))?;
    let revoked = device.injected_iova();
    let completed = wait_for_completion(disk);
    let faults = iommu::take_faults();
    let unchanged = buffer.iter().all(|&byte| byte == 0x5a);
    if completed {
        // SAFETY: the same buffers as submitted with `token`. Completed before any check,
        // so that no failure below leaves the device a request into freed memory.
        let outcome = unsafe { disk.complete_read_blocks(token, &request, &mut buffer, &mut response) };
        log::info!("{}: the refused read completed with {outcome:?}; {} SMMU event(s)", device.name, faults.len());
    }
    ensure!(completed, "the disk did not complete the refused request within a second");
    ensure!(unchanged, "the buffer changed: the disk's write went through");
    let revoked = revoked.ok_or("the read did not map the buffer")?;
    ensure!(revoked == warm, "the second read got IOVA {revoked:?}, not {warm:?}: the IOTLB was not warm");
    let ours = |fault: &&iommu::Fault| fault.event.stream_id == domain.stream_id;
    let fault = faults.iter().find(ours).ok_or(format!("no fault from StreamID {:#x}", domain.stream_id))?;
    ensure!(fault.event.kind == EventKind::TranslationFault, "fault {fault}, not a translation fault");
    ensure!(
        fault.event.input_address == Some(revoked.as_u64()),
        "fault at {:?}, expected IOVA {revoked:?}",
        fault.event.input_address
    );
    ensure!(fault.event.access.is_some_and(|access| access.write), "fault {fault}: not a write");
    ensure!(buffer.iter().all(|&byte| byte == 0x5a), "the buffer changed on completion");
    let data = pattern(7, block);
    disk.write_request(1, &data).map_err(|e| format!("write afterwards: {e}"))?;
    disk.read_request(1, &mut buffer).map_err(|e| format!("read afterwards: {e}"))?;
    ensure!(buffer == data, "the disk returned other data afterwards");
    Ok(())
}

/// Whether the disk completes its request within a second (its DMA runs in QEMU's own
/// thread); the fault events are in the queue by then.
fn wait_for_completion<const SLOT: usize>(disk: &mut PciDisk<SLOT>) -> bool {
    let deadline = arch::timer::uptime() + core::time::Duration::from_secs(1);
    while disk.peek_used().is_none() {
        if arch::timer::uptime() > deadline {
            return false;
        }
    }
    true
}
