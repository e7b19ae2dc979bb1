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
use crate::dma_platform::{DmaDevice, Route};
use crate::iommu;
use crate::nvme::{self, Controller, MIN_ALIGN_MASK, NvmeError, PAGE_SIZE, ReceivedCommand};
use crate::testing::{Verdict, ensure, kernel_test, skip};
use crate::tests::block::{PAGE_OFFSETS, skip_because};
use crate::tests::iommu::{route_of, translated_round_trips};
use crate::tests::virtio::pattern;
use dma::translated::Fault;

/// The contract's R10 figure: `256 KiB - roundup(min_align_mask, 2 KiB)` with NVMe's mask.
const LARGEST_BOUNCED_MAPPING: usize = 252 << 10;

/// The most one command of `controller` carries.
fn largest_command(controller: &Controller) -> Result<usize, String> {
    controller.max_transfer().ok_or(format!("{}: no limit per command", controller.name))
}

/// The bytes of the namespace `controller` serves, as Identify Namespace reports them.
fn namespace_bytes(controller: &Controller) -> usize {
    let blocks = usize::try_from(controller.blocks()).unwrap_or(usize::MAX);
    blocks.saturating_mul(controller.block_size())
}

/// The NVMe functions on the PCIe bus: as many controllers as the kernel should have started.
fn nvme_functions() -> usize {
    crate::pci::bus().map_or(0, |bus| bus.functions.iter().filter(|function| nvme::is_nvme(&function.info)).count())
}

/// Every controller started; skipped when the machine has none, failed when it has NVMe
/// functions that were not started.
fn started_controllers() -> Result<Vec<&'static Mutex<Controller>>, Verdict> {
    let controllers = nvme::controllers();
    match (controllers.is_empty(), nvme_functions()) {
        (true, 0) => Err(Verdict::Skipped("no NVMe controller on this machine")),
        (true, found) => Err(format!("{found} NVMe function(s) on the bus, none started").into()),
        (false, _) => Ok(controllers),
    }
}

/// The first controller, whatever its trust, for tests of the driver rather than the route.
fn any_controller() -> Result<&'static Mutex<Controller>, Verdict> {
    started_controllers()?.first().copied().ok_or(Verdict::Skipped("no NVMe controller on this machine"))
}

/// The controller whose trust is `untrusted`; its domain must have this boot's granule, or
/// the test would not test what it says. Skipped when this boot's `iommu.untrusted=` gives no
/// controller that trust.
fn controller(untrusted: bool) -> Result<&'static Mutex<Controller>, Verdict> {
    let policy = iommu::policy().ok_or("no IOMMU policy")?;
    for controller in started_controllers()? {
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
    let trust = if untrusted { "untrusted" } else { "trusted" };
    Err(skip_because(format!("no {trust} NVMe controller: iommu.untrusted= gives none of them that trust")))
}

kernel_test! {
    /// Every NVMe function on the bus was started and identified itself (a serial number of
    /// its own, a namespace of whole blocks), each is translated in a domain of its own, and
    /// each command's limit is the smallest of MDTS, max_mapping_size and one PRP list page.
    fn controllers_are_identified_in_domains_of_their_own() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let (controllers, functions) = (nvme::controllers(), nvme_functions());
        if functions == 0 { skip!("no NVMe controller on this machine") }
        ensure!(controllers.len() == functions, "{functions} NVMe function(s) on the bus, {} controller(s) started", controllers.len());
        let (mut domains, mut serials) = (Vec::new(), Vec::new());
        for controller in &controllers {
            let controller = controller.lock();
            log::info!("{}: {}", controller.name, controller.summary());
            let serial = String::from(controller.identity.serial());
            ensure!(!serial.is_empty() && serial.chars().all(|c| c.is_ascii_graphic()), "{}: serial {serial:?}", controller.name);
            ensure!(!serials.contains(&serial), "{}: serial {serial:?} again", controller.name);
            serials.push(serial);
            let namespace = controller.namespace.identity;
            ensure!(namespace.size > 0 && namespace.block_size.is_power_of_two(), "{}: {} blocks of {} bytes", controller.name, namespace.size, namespace.block_size);
            let limits = controller.limits;
            let smallest = [limits.controller, limits.mapping, Some(limits.prp)].into_iter().flatten().min().ok_or("no limit")?;
            let largest = largest_command(&controller)?;
            let block_size = namespace.block_size as usize;
            ensure!(largest == smallest / block_size * block_size, "{}: {largest} bytes per command, limits {limits:?}", controller.name);
            let domain = route_of(&*controller)?.1.id;
            ensure!(!domains.contains(&domain), "{} shares domain {domain} with another controller", controller.name);
            domains.push(domain);
        }
        Ok(())
    }
}

/// The integrity test over one controller: from one block to beyond the largest command, and
/// beyond the largest mapping when the route has one, so that requests are split.
fn controller_round_trips(untrusted: bool) -> Result<(), Verdict> {
    let mut controller = controller(untrusted)?.lock();
    let largest = largest_command(&controller)?;
    let block = controller.block_size();
    let mut sizes =
        vec![block, 2 * block, 4096, 4096 + block, 16 << 10, 60 << 10, 128 << 10, largest, 2 * largest + 4096];
    if let Some(mapping) = controller.limits.mapping {
        sizes.push(mapping + 4096);
    }
    Ok(translated_round_trips(&mut *controller, &sizes, 5000 + u64::from(untrusted))?)
}

kernel_test! {
    /// The trusted controller moves data at every size and R6 page offset, in place.
    fn trusted_controller_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        controller_round_trips(false)
    }
}

kernel_test! {
    /// The untrusted controller too, its partial granules bounced with the page offset kept.
    fn untrusted_controller_round_trips_every_size_and_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        controller_round_trips(true)
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
    controller.record_commands(true);
    let written = controller.write_request(0, buffer);
    let received = controller.last_received().cloned();
    controller.record_commands(false);
    written.map_err(|e| format!("write {size} bytes at {offset:#x}: {e}"))?;
    let iova = device.injected_iova().ok_or("the write did not map the buffer")?.as_u64();
    let received = received.ok_or("no command recorded")?;
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
    /// one block, a page, a PRP list and the largest command reach the controller with PRP1 =
    /// the buffer's IOVA, its low 12 bits the buffer's offset — bounced or not — and each later
    /// entry the next page of the same mapping. Sizes are whole blocks of the namespace, and
    /// none exceeds what one command carries (the controller's MDTS may allow only a few pages)
    /// or the namespace holds.
    fn prp_entries_keep_the_page_offset() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut tested = 0;
        for untrusted in [false, true] {
            let mut controller = match controller(untrusted) {
                Ok(controller) => controller.lock(),
                Err(Verdict::Skipped(_)) => continue,
                Err(failure) => return Err(failure),
            };
            let (largest, block) = (largest_command(&controller)?, controller.block_size());
            let most = largest.min(namespace_bytes(&controller));
            let mut sizes: Vec<usize> = [block, PAGE_SIZE, 3 * PAGE_SIZE + block, largest]
                .into_iter()
                .map(|size| size.next_multiple_of(block))
                .filter(|&size| size <= most)
                .collect();
            sizes.dedup();
            for offset in PAGE_OFFSETS {
                for &size in &sizes {
                    check_received_prps(&mut controller, offset, size)?;
                }
            }
            tested += 1;
        }
        if tested == 0 {
            return Err(skip_because(String::from("no NVMe controller, trusted or untrusted")));
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
        if !LARGEST_BOUNCED_MAPPING.is_multiple_of(controller.block_size()) {
            skip!("252 KiB is not a whole number of this namespace's blocks")
        }
        if namespace_bytes(&controller) < LARGEST_BOUNCED_MAPPING {
            skip!("the namespace holds less than 252 KiB")
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
    /// itself, before the controller sees it. The driver refuses what the controller could not
    /// be given, naming it: part of a block, or more than one command carries.
    fn refused_commands_are_reported_in_words() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut controller = any_controller()?.lock();
        let end = controller.blocks();
        let mut buffer = vec![0u8; controller.block_size()];
        let past_end = controller.read_request(end, &mut buffer);
        let words = past_end.as_ref().map_err(|e| format!("{e}")).err().unwrap_or_default();
        ensure!(words.contains("LBA Out of Range"), "a read past the end gave {past_end:?}");
        ensure!(matches!(block::read(&mut *controller, end, &mut buffer), Err(BlockError::OutOfRange { .. })), "the block layer let a read past the end through");
        let refused = controller.execute_without_data(SubmissionEntry::flush(0xdead));
        let words = refused.as_ref().map_err(|e| format!("{e}")).err().unwrap_or_default();
        ensure!(words.contains("Invalid Namespace or Format"), "a flush of namespace 0xdead gave {refused:?}");
        let (block_size, largest) = (controller.block_size(), largest_command(&controller)?);
        let partial = controller.write_request(0, &buffer[..block_size / 2]);
        let partial_error = partial.as_ref().err().and_then(BlockError::device_error::<NvmeError>);
        ensure!(matches!(partial_error, Some(NvmeError::PartialBlock { .. })), "half a block gave {partial:?}");
        // More than one command carries, whether the DMA layer lends the buffer in place or not.
        let in_place = controller.max_transfer_in_place().unwrap_or(largest);
        let too_long = vec![0u8; largest.max(in_place) + block_size];
        let refused = controller.write_request(0, &too_long);
        let refused_error = refused.as_ref().err().and_then(BlockError::device_error::<NvmeError>);
        ensure!(matches!(refused_error, Some(NvmeError::TooLong { .. })), "{} bytes in one command gave {refused:?}", too_long.len());
        // A page (or a block, if larger) near the start, wherever the namespace ends.
        let data = pattern(77, PAGE_SIZE.next_multiple_of(block_size));
        let lba = 8.min(end.saturating_sub((data.len() / block_size) as u64));
        block::write(&mut *controller, lba, &data).map_err(|e| format!("write afterwards: {e}"))?;
        let mut back = vec![0u8; data.len()];
        block::read(&mut *controller, lba, &mut back).map_err(|e| format!("read afterwards: {e}"))?;
        ensure!(back == data, "the controller returned other data afterwards");
        Ok(())
    }
}

kernel_test! {
    /// A completion that never comes ends in a timeout error, not a hang: waiting on the idle
    /// admin queue gives up after the time asked, and says so.
    fn a_missing_completion_times_out() {
        if iommu::policy().is_none() { skip!("no SMMUv3 on this machine") }
        let mut controller = any_controller()?.lock();
        let timeout = Duration::from_millis(50);
        let started = arch::timer::uptime();
        let outcome = controller.wait_for_nothing(timeout);
        let waited = arch::timer::uptime() - started;
        ensure!(matches!(outcome, Err(NvmeError::Timeout { .. })), "waiting for nothing gave {outcome:?}");
        ensure!(waited >= timeout && waited < Duration::from_secs(1), "gave up after {waited:?}");
        Ok(())
    }
}

kernel_test! {
    /// Each CPU has an I/O queue pair of its own, whose completion interrupt the ITS delivers
    /// to that CPU: every CPU writes and reads back blocks of its own through every controller
    /// at once, every byte compared. Afterwards the queue of every CPU has interrupted, and no
    /// completion had to be forwarded from another CPU to wake its waiter.
    fn every_cpu_has_an_io_queue_of_its_own_that_interrupts_it() {
        if crate::smp::online() < 2 {
            skip!("one CPU online");
        }
        let controllers = nvme::controllers();
        if controllers.is_empty() {
            skip!("no NVMe controller");
        }
        let before: Vec<_> = controllers.iter().map(|controller| controller.lock().interrupts_by_queue()).collect();
        if before.iter().any(|queues| queues.len() < 2 || queues.iter().any(Option::is_none)) {
            skip!("a controller has one I/O queue or polls (no MSI-X vectors through an ITS, or kernel.poll)");
        }
        let failures = Mutex::new(Vec::new());
        crate::smp::on_every_cpu(&|cpu| {
            for controller in &controllers {
                let mut controller = controller.lock();
                let size = controller.block_size().max(PAGE_SIZE);
                let block = (cpu * 64) as u64;
                let data = pattern(((cpu as u64) << 16) + controller.blocks(), size);
                let mut read = vec![0u8; size];
                let problem = block::write(&mut *controller, block, &data)
                    .and_then(|()| block::read(&mut *controller, block, &mut read))
                    .err()
                    .map(|error| format!("{error}"))
                    .or_else(|| (read != data).then(|| "read back other bytes".into()));
                if let Some(problem) = problem {
                    failures.lock().push(format!("CPU {cpu}, {}: {problem}", controller.name));
                }
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{}", failures.join("; "));
        for (controller, before) in controllers.iter().zip(before) {
            let controller = controller.lock();
            let after = controller.interrupts_by_queue();
            for cpu in (0..crate::smp::listed()).filter(|&cpu| crate::smp::seen(cpu).is_some()) {
                let queue = cpu % after.len();
                let ((fired, forwarded), (fired_before, forwarded_before)) =
                    (after[queue].unwrap_or_default(), before[queue].unwrap_or_default());
                ensure!(fired > fired_before, "{}: CPU {cpu}'s I/O queue {} never interrupted", controller.name, queue + 1);
                ensure!(
                    forwarded == forwarded_before,
                    "{}: {} completions of I/O queue {} were taken on another CPU than CPU {cpu}",
                    controller.name,
                    forwarded - forwarded_before,
                    queue + 1
                );
            }
        }
        Ok(())
    }
}
