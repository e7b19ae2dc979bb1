//! NVMe controllers behind the SMMU, one trusted and one untrusted, with whatever granule this
//! boot's `iommu.granule=` chose: identify data, integrity at every size and page offset, the
//! PRP entries the controller received, and errors in words.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use addr::{PhysRange, VirtAddr};
use drivers::nvme::command::SubmissionEntry;
use spin::Mutex;

use crate::block::{self, BlockDevice, BlockError};
use crate::dma::{DmaDevice, Fault, Route};
use crate::iommu;
use crate::nvme::{self, Controller, NvmeError, ReceivedCommand, MIN_ALIGN_MASK, PAGE_SIZE};
use crate::testing::{ensure, kernel_test, skip};
use crate::tests::block::PAGE_OFFSETS;
use crate::tests::iommu::{route_of, translated_round_trips};
use crate::tests::virtio::pattern;

/// The contract's R10 figure: `256 KiB - roundup(min_align_mask, 2 KiB)` with NVMe's mask.
const LARGEST_BOUNCED_MAPPING: usize = 252 << 10;

/// The most one command of `controller` carries.
fn largest_command(controller: &Controller) -> Result<usize, String> {
    controller.max_transfer().ok_or(format!("{}: no limit per command", controller.name))
}

/// The controller whose trust is `untrusted`; its domain must have this boot's granule, or
/// the test would not test what it says.
fn controller(untrusted: bool) -> Result<&'static Mutex<Controller>, String> {
    let policy = iommu::policy().ok_or("no IOMMU policy")?;
    for controller in nvme::controllers() {
        let (_, domain, is_untrusted) = route_of(&*controller.lock())?;
        ensure!(
            domain.granule == policy.granule,
            "domain {} has granule {:?}, the policy {:?}",
            domain.id,
            domain.granule,
            policy.granule
        );
        if is_untrusted == untrusted {
            return Ok(controller);
        }
    }
    Err(format!("no {} NVMe controller", if untrusted { "untrusted" } else { "trusted" }))
}

kernel_test! {
    /// Both controllers identified themselves as xtask configured them (serial `dma-os-nvme0`
    /// and `-nvme1`, a namespace of whole blocks), each is translated in a domain of its own,
    /// and each command's limit is the smallest of MDTS, max_mapping_size and one PRP list page.
    fn controllers_are_identified_in_domains_of_their_own() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let controllers = nvme::controllers();
        ensure!(controllers.len() == 2, "expected two NVMe controllers, found {}", controllers.len());
        let mut domains = Vec::new();
        for (index, controller) in controllers.iter().enumerate() {
            let controller = controller.lock();
            log::info!("{}: {}", controller.name, controller.summary());
            let serial = format!("dma-os-nvme{index}");
            ensure!(controller.identity.serial() == serial, "serial {:?}, expected {serial:?}", controller.identity.serial());
            let namespace = controller.namespace.identity;
            let bytes = namespace.size * u64::from(namespace.block_size);
            ensure!(bytes > 0, "{}: an empty namespace", controller.name);
            let limits = controller.limits;
            let smallest = [limits.controller, limits.mapping, Some(limits.prp)].into_iter().flatten().min().ok_or("no limit")?;
            let largest = largest_command(&controller)?;
            let block_size = namespace.block_size as usize;
            ensure!(largest == smallest / block_size * block_size, "{}: {largest} bytes per command, limits {limits:?}", controller.name);
            domains.push(route_of(&*controller)?.1.id);
        }
        ensure!(domains[0] != domains[1], "both controllers share domain {}", domains[0]);
        Ok(())
    }
}

/// The integrity test over one controller: from one block to beyond the largest command, and
/// beyond the largest mapping when the route has one, so that requests are split.
fn controller_round_trips(untrusted: bool) -> Result<(), String> {
    let mut controller = controller(untrusted)?.lock();
    let largest = largest_command(&controller)?;
    let block = controller.block_size();
    let mut sizes =
        vec![block, 2 * block, 4096, 4096 + block, 16 << 10, 60 << 10, 128 << 10, largest, 2 * largest + 4096];
    if let Some(mapping) = controller.limits.mapping {
        sizes.push(mapping + 4096);
    }
    translated_round_trips(&mut *controller, &sizes, 5000 + u64::from(untrusted))
}

kernel_test! {
    /// The trusted controller moves data at every size and R6 page offset, in place.
    fn trusted_controller_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        Ok(controller_round_trips(false)?)
    }
}

kernel_test! {
    /// The untrusted controller too, its partial granules bounced with the page offset kept.
    fn untrusted_controller_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        Ok(controller_round_trips(true)?)
    }
}

/// Writes `size` bytes from page offset `offset` of a fresh buffer in one command, and checks
/// what the controller received and where the SMMU led it: PRP1 is the IOVA the buffer was
/// mapped at and carries the buffer's page offset; every later entry (PRP2 or the PRP list)
/// starts the next page; each entry translated to the buffer's own page (trusted) or to
/// consecutive pages of the bounce pool with the same page offset (untrusted). Returns the
/// Write as received.
fn check_received_prps(controller: &mut Controller, offset: usize, size: usize) -> Result<ReceivedCommand, String> {
    let mut storage = vec![0u8; size + 2 * PAGE_SIZE];
    let start = storage.as_ptr().align_offset(PAGE_SIZE) + offset;
    let data = pattern((offset + size) as u64, size);
    storage[start..start + size].copy_from_slice(&data);
    let buffer = &storage[start..start + size];
    let device = controller.dma_device();
    let physical = device.physical(VirtAddr::from_ptr(buffer.as_ptr()), size).map_err(|e| format!("{e}"))?;
    device.inject(physical, Fault::None);
    controller.write_request(0, buffer).map_err(|e| format!("write {size} bytes at {offset:#x}: {e}"))?;
    let iova = device.injected_iova().ok_or("the write did not map the buffer")?.as_u64();
    let received = controller.last_received().ok_or("no command recorded")?.clone();
    let (prp1, prp2) = (received.entry.prp1, received.entry.prp2);
    let case = format!("{size} bytes at page offset {offset:#x}");
    ensure!(prp1 == iova, "{case}: PRP1 {prp1:#x} is not the buffer's IOVA {iova:#x}");
    ensure!(prp1 & MIN_ALIGN_MASK == offset as u64, "{case}: PRP1 {prp1:#x} lost the page offset");
    let pages = (offset + size).div_ceil(PAGE_SIZE);
    let later: Vec<u64> = match pages {
        1 => vec![],
        2 => vec![prp2],
        _ => received.prp_list.clone(),
    };
    ensure!(later.len() == pages - 1, "{case}: {} page entries for {pages} pages", later.len());
    for (index, &entry) in later.iter().enumerate() {
        let expected = (prp1 & !MIN_ALIGN_MASK) + (index as u64 + 1) * PAGE_SIZE as u64;
        ensure!(entry == expected, "{case}: page entry {} is {entry:#x}, expected {expected:#x}", index + 1);
    }
    check_reached(device, &received, physical, &case)?;
    let mut back = vec![0u8; size];
    block::read(controller, 0, &mut back).map_err(|e| format!("{case}: read back: {e}"))?;
    ensure!(back == data, "{case}: the controller returned other data");
    Ok(received)
}

/// Where each page entry of `received` led while mapped: page `i` of the buffer itself when it
/// was mapped in place (trusted, or filling whole granules); otherwise page `i` of a copy in
/// the bounce pool that keeps the buffer's page offset.
fn check_reached(device: &DmaDevice, received: &ReceivedCommand, buffer: PhysRange, case: &str) -> Result<(), String> {
    let Route::Iommu { domain, untrusted, .. } = &device.route else {
        return Err(format!("{}: not behind the IOMMU", device.name));
    };
    let granule_mask = domain.granule_size() - 1;
    let fills_granules = (buffer.start().as_u64() | buffer.end().as_u64()) & granule_mask == 0;
    let first = received.reached.first().copied().flatten().ok_or(format!("{case}: PRP1 translated to nothing"))?;
    if !untrusted || fills_granules {
        ensure!(first == buffer.start(), "{case}: PRP1 led to {first:?}, not the buffer at {}", buffer.start());
    } else {
        let pool = device.bounce_pool().ok_or("no bounce pool")?;
        ensure!(pool.range.contains(first), "{case}: PRP1 led to {first:?}, outside the bounce pool {}", pool.range);
        ensure!(
            first.as_u64() & MIN_ALIGN_MASK == buffer.start().as_u64() & MIN_ALIGN_MASK,
            "{case}: the bounce copy at {first:?} lost the page offset"
        );
    }
    for (index, reached) in received.reached.iter().enumerate().skip(1) {
        let expected = first.align_down(PAGE_SIZE as u64).add(index as u64 * PAGE_SIZE as u64);
        ensure!(*reached == Some(expected), "{case}: page entry {index} led to {reached:?}, expected {expected:?}");
    }
    Ok(())
}

kernel_test! {
    /// R3 and R6: for both controllers, at page offsets 0, 0x200, 0x7c8 and 0xfa0, transfers of
    /// one page, two pages and a PRP list reach the controller with PRP1 = the buffer's IOVA,
    /// its low 12 bits the buffer's offset — bounced or not — and each later entry the next
    /// page of the same mapping.
    fn prp_entries_keep_the_page_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        for untrusted in [false, true] {
            let mut controller = controller(untrusted)?.lock();
            let largest = largest_command(&controller)?;
            for offset in PAGE_OFFSETS {
                let block = controller.block_size();
                for size in [block, PAGE_SIZE.max(block), 3 * PAGE_SIZE + block, largest] {
                    check_received_prps(&mut controller, offset, size)?;
                }
            }
        }
        Ok(())
    }
}

kernel_test! {
    /// R10: for the untrusted controller the DMA layer's limit is 252 KiB, whatever the granule
    /// (64 KiB included: `alloc_align_mask = 0xffff` with `min_align_mask = 0xfff`), and a
    /// 252 KiB transfer starting at page offset 0xfa0 goes through in one command, bounced —
    /// when the controller's own limit (MDTS) lets one command carry that much.
    fn untrusted_controller_moves_252_kib_in_one_command() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut controller = controller(true)?.lock();
        let mapping = controller.limits.mapping;
        ensure!(mapping == Some(LARGEST_BOUNCED_MAPPING), "max_mapping_size {mapping:?}, expected {LARGEST_BOUNCED_MAPPING}");
        if controller.limits.controller.is_some_and(|mdts| mdts < LARGEST_BOUNCED_MAPPING) {
            skip!("the controller's MDTS allows less than 252 KiB per command")
        }
        if LARGEST_BOUNCED_MAPPING % controller.block_size() != 0 {
            skip!("252 KiB is not a whole number of this namespace's blocks")
        }
        let largest = largest_command(&controller)?;
        ensure!(largest == LARGEST_BOUNCED_MAPPING, "{largest} bytes per command");
        let pool = controller.dma_device().bounce_pool().ok_or("no bounce pool")?;
        let maps_before = pool.bounce.stats().maps;
        let write = check_received_prps(&mut controller, 0xfa0, LARGEST_BOUNCED_MAPPING)?;
        let blocks = write.entry.blocks() as usize;
        ensure!(blocks * controller.block_size() == LARGEST_BOUNCED_MAPPING, "the write carried {blocks} blocks");
        ensure!(pool.bounce.stats().maps > maps_before, "the transfer was not bounced");
        Ok(())
    }
}

kernel_test! {
    /// A request the controller refuses comes back as its status in words, and the controller
    /// carries on: a read past the namespace's end ("LBA Out of Range"), a flush of a namespace
    /// that does not exist ("Invalid Namespace or Format"). The block layer refuses the first
    /// itself, before the controller sees it.
    fn refused_commands_are_reported_in_words() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut controller = controller(false)?.lock();
        let end = controller.blocks();
        let mut buffer = vec![0u8; controller.block_size()];
        let past_end = controller.read_request(end, &mut buffer);
        let words = past_end.as_ref().map_err(|e| format!("{e}")).err().unwrap_or_default();
        ensure!(words.contains("LBA Out of Range"), "a read past the end gave {past_end:?}");
        ensure!(matches!(block::read(&mut *controller, end, &mut buffer), Err(BlockError::OutOfRange { .. })), "the block layer let a read past the end through");
        let refused = controller.execute_without_data(SubmissionEntry::flush(0xdead));
        let words = refused.as_ref().map_err(|e| format!("{e}")).err().unwrap_or_default();
        ensure!(words.contains("Invalid Namespace or Format"), "a flush of namespace 0xdead gave {refused:?}");
        let data = pattern(77, 4096);
        block::write(&mut *controller, 8, &data).map_err(|e| format!("write afterwards: {e}"))?;
        let mut back = vec![0u8; 4096];
        block::read(&mut *controller, 8, &mut back).map_err(|e| format!("read afterwards: {e}"))?;
        ensure!(back == data, "the controller returned other data afterwards");
        Ok(())
    }
}

kernel_test! {
    /// A completion that never comes ends in a timeout error, not a hang: waiting on the idle
    /// admin queue gives up after the time asked, and says so.
    fn a_missing_completion_times_out() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut controller = controller(false)?.lock();
        let timeout = Duration::from_millis(50);
        let started = arch::timer::uptime();
        let outcome = controller.wait_for_nothing(timeout);
        let waited = arch::timer::uptime() - started;
        ensure!(matches!(outcome, Err(NvmeError::Timeout { .. })), "waiting for nothing gave {outcome:?}");
        ensure!(waited >= timeout && waited < Duration::from_secs(1), "gave up after {waited:?}");
        Ok(())
    }
}
