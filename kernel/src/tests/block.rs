//! The integrity test every disk runs, whatever its transport: virtio-blk on the MMIO bus,
//! virtio-blk and NVMe on PCIe behind the IOMMU. Sizes follow each disk's own block size and
//! capacity, and a disk whose bounce pool cannot hold a request is said to be skipped, with
//! the pool's size.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::block::{self, BlockDevice};
use crate::dma_platform::{DmaDevice, DmaPool, KernelPlatform, Route};
use crate::testing::{Verdict, ensure, kernel_test, skip};
use crate::tests::virtio::pattern;

/// Buffer start offsets within a page every disk is tested at: the contract's R6 set, each
/// a valid NVMe PRP offset (dword-aligned).
pub const PAGE_OFFSETS: [usize; 4] = [0, 0x200, 0x7c8, 0xfa0];

/// Writes, flushes and reads back every size at every offset, each size in as many requests
/// as the disk's limit needs, through buffers of their own; every byte compared. The read
/// buffer sits at another offset than the written one. Each size is first rounded up to whole
/// blocks of the disk (512 bytes on a disk of 4 KiB blocks is one block); sizes larger than
/// the disk are left out. The callers leave out what the disk's pool has no room for, so no
/// request may have to run again in shorter pieces: each piece the block layer cuts at
/// `max_mapping_size` must map (rule 7). Returns the bytes moved.
pub fn round_trips(disk: &mut dyn BlockDevice, sizes: &[usize], offsets: &[usize], seed: u64) -> Result<usize, String> {
    let run_again = block::batches_run_again();
    let block_size = disk.block_size();
    let capacity = disk.blocks();
    let disk_bytes = usize::try_from(capacity).unwrap_or(usize::MAX).saturating_mul(block_size);
    let mut sizes: Vec<usize> = sizes.iter().map(|size| size.max(&1).next_multiple_of(block_size)).collect();
    sizes.retain(|&size| size <= disk_bytes);
    sizes.sort_unstable();
    sizes.dedup();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut written_storage = vec![0u8; largest + 2 * 4096];
    let mut read_storage = vec![0u8; largest + 2 * 4096];
    let written = page_aligned(&mut written_storage);
    let read = page_aligned(&mut read_storage);
    let (mut block, mut moved) = (0u64, 0usize);
    let cases = sizes.iter().flat_map(|&size| offsets.iter().map(move |&offset| (size, offset)));
    for (round, (size, offset)) in cases.enumerate() {
        let data = pattern(seed + round as u64, size);
        let read_offset = (offset + 0x3c8) % 4096;
        let blocks = (size / block_size) as u64;
        if block + blocks > capacity {
            block = 0;
        }
        written[offset..offset + size].copy_from_slice(&data);
        block::write(disk, block, &written[offset..offset + size])
            .map_err(|e| format!("{}: write {size} bytes at offset {offset:#x}: {e}", disk.describe()))?;
        disk.flush().map_err(|e| format!("{}: flush after {size} bytes: {e}", disk.describe()))?;
        read[read_offset..read_offset + size].fill(0);
        block::read(disk, block, &mut read[read_offset..read_offset + size])
            .map_err(|e| format!("{}: read {size} bytes at offset {read_offset:#x}: {e}", disk.describe()))?;
        let first_difference = (0..size).find(|&index| read[read_offset + index] != data[index]);
        ensure!(
            first_difference.is_none(),
            "{}: {size} bytes at offset {offset:#x}, block {block}: byte {first_difference:?} differs",
            disk.describe()
        );
        block += blocks + 1;
        moved += 2 * size;
    }
    let shortened = block::batches_run_again() - run_again;
    ensure!(
        shortened == 0,
        "{}: {shortened} request(s) ran again in shorter pieces: a piece of the promised size did not map",
        disk.describe()
    );
    Ok(moved)
}

/// The part of `storage` from its first page boundary on, so that offsets into it are page
/// offsets of physical addresses too (the heap is linearly mapped).
pub fn page_aligned(storage: &mut [u8]) -> &mut [u8] {
    let start = storage.as_ptr().align_offset(4096);
    &mut storage[start..]
}

/// The pool every transfer of `device` is copied through, if it has one (a restricted pool,
/// or a default pool for a direct device that cannot reach all of RAM); `None` behind the
/// IOMMU.
pub fn bounce_pool(device: &DmaDevice) -> Option<&'static DmaPool> {
    match &device.route {
        Route::Iommu { .. } => None,
        Route::Restricted(_) | Route::Direct { .. } => device.bounce_pool(),
    }
}

/// Why the bounce pool of `device` (of the device `name`) cannot hold a request of `bytes`
/// now, if it cannot: its longest run of free slots must hold the request at any page
/// alignment.
pub fn pool_too_small(device: &DmaDevice, name: &str, bytes: usize) -> Option<String> {
    let pool = bounce_pool(device)?;
    let (mut longest, mut run) = (0, 0);
    for free in pool.bounce.slot_states() {
        run = if free { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let longest = longest * swiotlb::SLOT_SIZE;
    (longest < bytes + swiotlb::PAGE_SIZE).then(|| {
        format!(
            "{name}: pool '{}' is {} KiB, its longest free run {} KiB, too little for a {} KiB request",
            pool.name,
            pool.range.size() >> 10,
            longest >> 10,
            bytes.div_ceil(1024)
        )
    })
}

/// [`pool_too_small`] for a disk.
pub fn disk_pool_too_small(disk: &dyn BlockDevice, bytes: usize) -> Option<String> {
    pool_too_small(disk.dma_device(), &disk.describe(), bytes)
}

/// Skips with a reason worked out at run time; the runner keeps it until it prints it.
pub fn skip_because(reason: String) -> Verdict {
    Verdict::Skipped(Box::leak(reason.into_boxed_str()))
}

kernel_test! {
    /// Every disk the kernel drives (virtio-mmio, virtio-pci, NVMe) writes and reads back a
    /// block, a page, three pages and a block, and a request beyond its largest, at the R6
    /// page offsets; every byte compared.
    fn every_disk_round_trips() {
        let (mut disks, mut skipped, mut failure) = (0, Vec::new(), None);
        block::with_each_disk(|disk| {
            if failure.is_some() {
                return;
            }
            disks += 1;
            let block = disk.block_size();
            let beyond_one_request = disk.max_transfer().map_or(256 << 10, |limit| limit.min(1 << 20)) + block;
            let largest_request = beyond_one_request - block;
            if let Some(reason) = disk_pool_too_small(disk, largest_request) {
                skipped.push(reason);
                return;
            }
            let sizes = [block, 4096, 3 * 4096 + block, beyond_one_request];
            failure = round_trips(disk, &sizes, &PAGE_OFFSETS, 300).err();
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if disks == 0 { skip!("no disk") }
        if skipped.len() == disks {
            return Err(skip_because(skipped.join("; ")));
        }
        for reason in skipped {
            log::info!("skipped {reason}");
        }
        Ok(())
    }
}

kernel_test! {
    /// Each disk keeps what was written to it: a pattern of its own goes to block 1 of every
    /// disk, then each is read back. Two disks that were one (or a write that went to another
    /// disk) would show another disk's pattern.
    fn every_disk_keeps_its_own_data() {
        // Per disk, in visiting order: the pattern written to it, or why it was left out.
        let mut written: Vec<Result<Vec<u8>, String>> = Vec::new();
        let mut failure = None;
        block::with_each_disk(|disk| {
            let data = pattern(4000 + written.len() as u64, disk.block_size());
            if let Some(reason) = disk_pool_too_small(disk, data.len()) {
                written.push(Err(reason));
                return;
            }
            match block::write(disk, 1, &data).and_then(|()| disk.flush()) {
                Ok(()) => written.push(Ok(data)),
                Err(error) => {
                    failure = failure.take().or(Some(format!("{}: write: {error}", disk.describe())));
                    written.push(Err(String::new()));
                }
            }
        });
        let mut disks = written.iter();
        block::with_each_disk(|disk| {
            let Some(Ok(data)) = disks.next() else { return };
            let mut read = vec![0u8; data.len()];
            let problem = match block::read(disk, 1, &mut read) {
                Err(error) => Some(format!("{}: read: {error}", disk.describe())),
                Ok(()) if read != *data => Some(format!("{}: block 1 holds other data than was written to it", disk.describe())),
                Ok(()) => None,
            };
            failure = failure.take().or(problem);
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if written.is_empty() { skip!("no disk") }
        if written.iter().all(Result::is_err) {
            let reasons: Vec<String> = written.into_iter().filter_map(Result::err).collect();
            return Err(skip_because(reasons.join("; ")));
        }
        Ok(())
    }
}

kernel_test! {
    /// Without an IOMMU, a PCIe function's DMA takes its host bridge's route, as any direct
    /// device's does: through the restricted pool the bridge's `memory-region` names (force
    /// bounce, granted here: rule 12), or its `dma-ranges`. Every PCIe disk, virtio and NVMe
    /// alike, is on that route and round-trips data at every page offset.
    fn pcie_disks_without_an_iommu_take_their_bridges_route() {
        if crate::iommu::policy().is_some() {
            skip!("an SMMUv3 translates PCIe on this machine")
        }
        let Some(bus) = crate::pci::bus() else { skip!("no PCIe bus on this machine") };
        let pool = crate::board::bridge_pool(&crate::machine().devicetree, bus.bridge.name);
        const LARGEST: usize = 16384;
        let (mut disks, mut failure, mut too_small) = (0, None, Vec::new());
        block::with_each_disk(|disk| {
            let device = disk.dma_device();
            if failure.is_some() || !device.name.starts_with("pci ") {
                return;
            }
            if let Some(reason) = disk_pool_too_small(disk, LARGEST) {
                return too_small.push(reason);
            }
            disks += 1;
            let on_route = match (&device.route, pool) {
                (Route::Restricted(restricted), Some(name)) => restricted.name == name,
                (Route::Direct { .. }, None) => true,
                _ => false,
            };
            let outcome = match on_route {
                true => round_trips(disk, &[512, 4096, LARGEST], &PAGE_OFFSETS, 41).map(|_| ()),
                false => Err(format!("{}: not on its bridge's route (pool {pool:?})", disk.describe())),
            };
            failure = outcome.err();
        });
        if let Some(problem) = failure {
            return Err(problem.into());
        }
        if disks == 0 && !too_small.is_empty() {
            return Err(skip_because(too_small.join("; ")));
        }
        if disks == 0 {
            skip!("no PCIe disk started on this machine (the device table says why)")
        }
        log::info!("{disks} PCIe disk(s) round-tripped on the bridge's route ({})", pool.map_or("direct", |name| name));
        Ok(())
    }
}

/// Writes `count` requests of `size` bytes in one batch, each to blocks of its own and from
/// a buffer at one of the R6 page offsets, then reads them back in one batch into buffers at
/// other offsets; every byte compared. Returns the most requests in flight at once.
fn batch_round_trip(disk: &mut dyn BlockDevice, count: usize, size: usize, seed: u64) -> Result<usize, String> {
    let name = disk.describe();
    let stride = (size / disk.block_size()) as u64 + 1;
    let capacity = disk.blocks();
    ensure!(stride * count as u64 <= capacity, "{name}: {count} requests of {size} bytes do not fit {capacity} blocks");
    let data: Vec<Vec<u8>> = (0..count).map(|index| pattern(seed + index as u64, size)).collect();
    let mut written_storage: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; size + 2 * 4096]).collect();
    let mut read_storage: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; size + 2 * 4096]).collect();
    let offset = |index: usize| PAGE_OFFSETS[index % PAGE_OFFSETS.len()];
    let writes = written_storage.iter_mut().enumerate().map(|(index, storage)| {
        let buffer = &mut page_aligned(storage)[offset(index)..offset(index) + size];
        buffer.copy_from_slice(&data[index]);
        block::Request::Write { block: index as u64 * stride, buffer }
    });
    let deepest =
        block::run(disk, writes).map_err(|e| format!("{name}: a batch of {count} writes of {size} bytes: {e}"))?;
    disk.flush().map_err(|e| format!("{name}: flush after the batch: {e}"))?;
    let read_offset = |index: usize| (offset(index) + 0x3c8) % 4096;
    let reads = read_storage.iter_mut().enumerate().map(|(index, storage)| {
        let buffer = &mut page_aligned(storage)[read_offset(index)..read_offset(index) + size];
        block::Request::Read { block: index as u64 * stride, buffer }
    });
    let deepest = deepest
        .max(block::run(disk, reads).map_err(|e| format!("{name}: a batch of {count} reads of {size} bytes: {e}"))?);
    for (index, storage) in read_storage.iter_mut().enumerate() {
        let read = &page_aligned(storage)[read_offset(index)..read_offset(index) + size];
        let first_difference = (0..size).find(|&at| read[at] != data[index][at]);
        ensure!(first_difference.is_none(), "{name}: request {index} of the batch: byte {first_difference:?} differs");
    }
    Ok(deepest)
}

/// The free bytes of the pool `disk`'s transfers are copied through, if they are.
fn pool_free_bytes(disk: &dyn BlockDevice) -> Option<usize> {
    let pool = bounce_pool(disk.dma_device())?;
    Some(pool.bounce.slot_states().into_iter().filter(|free| *free).count() * swiotlb::SLOT_SIZE)
}

kernel_test! {
    /// Every disk keeps requests in flight: twice its queue depth of one-page requests, written
    /// in one batch and read back in another, each at blocks and a page offset of its own,
    /// every byte compared; and the queue was full at some moment (all of them at once), unless
    /// a bounce pool too small to hold them all made some wait.
    fn every_disk_keeps_its_queue_full_and_every_request_intact() {
        let (mut disks, mut failure) = (0, None);
        block::with_each_disk(|disk| {
            if failure.is_some() {
                return;
            }
            let (depth, size) = (disk.queue_depth(), 4096usize.next_multiple_of(disk.block_size()));
            if disk_pool_too_small(disk, size).is_some() {
                return;
            }
            disks += 1;
            let room_for_all = pool_free_bytes(disk).is_none_or(|free| free >= depth * (size + 2 * 4096));
            failure = match batch_round_trip(disk, 2 * depth, size, 700) {
                Err(problem) => Some(problem),
                Ok(deepest) if room_for_all && deepest != depth => {
                    Some(format!("{}: at most {deepest} of its {depth} requests were in flight at once", disk.describe()))
                }
                Ok(deepest) => {
                    log::info!("{}: {} requests, at most {deepest} in flight at once (queue depth {depth})", disk.describe(), 2 * depth);
                    None
                }
            };
        });
        if let Some(problem) = failure {
            return Err(problem.into());
        }
        if disks == 0 { skip!("no disk whose pool holds a page") }
        Ok(())
    }
}

kernel_test! {
    /// A batch whose copies do not all fit the bounce pool at once still completes: a request
    /// the pool has no room for waits until one in flight completes, instead of failing the
    /// batch (Linux's BLK_STS_RESOURCE). Whatever the pool's size, mappings held for the test
    /// fill it until it has room for about two requests and a half; then a batch of more
    /// requests than the queue is deep runs: the window never fills, and the batch waits rather
    /// than run again in shorter pieces. Every byte compared.
    fn a_batch_larger_than_its_bounce_pool_waits_for_room() {
        let (mut disks, mut failure) = (0, None);
        block::with_each_disk(|disk| {
            if failure.is_some() || pool_free_bytes(disk).is_none() {
                return;
            }
            let block = disk.block_size();
            let size = (64usize << 10).min(disk.max_transfer().unwrap_or(usize::MAX)) / block * block;
            let room = 5 * (size + 2 * 4096) / 2;
            let held: Vec<Vec<u8>> = (0..pool_free_bytes(disk).unwrap_or_default().saturating_sub(room) / HELD_BYTES)
                .map(|_| vec![0u8; HELD_BYTES + 4096])
                .collect();
            let hogs = hold(disk.dma_device(), held.iter().map(|buffer| first_page_aligned(buffer, HELD_BYTES)));
            let (free, depth) = (pool_free_bytes(disk).unwrap_or_default(), disk.queue_depth());
            if disk_pool_too_small(disk, size).is_some() || free >= depth * (size + 2 * 4096) {
                return;
            }
            disks += 1;
            let run_again = block::batches_run_again();
            let outcome = batch_round_trip(disk, depth + 2, size, 900);
            drop(hogs);
            failure = match outcome {
                Err(problem) => Some(problem),
                Ok(_) if block::batches_run_again() != run_again => {
                    Some(format!("{}: the batch ran again in shorter pieces instead of waiting for room", disk.describe()))
                }
                Ok(deepest) if deepest >= depth => {
                    Some(format!("{}: {deepest} requests of {size} bytes in flight with {free} bytes of the pool free", disk.describe()))
                }
                Ok(deepest) => {
                    log::info!("{}: {} requests of {} KiB with {} KiB of the pool free, at most {deepest} in flight", disk.describe(), depth + 2, size >> 10, free >> 10);
                    None
                }
            };
        });
        if let Some(failure) = failure {
            return Err(failure.into());
        }
        if disks == 0 { skip!("no disk copies its transfers through a pool with room for one request") }
        Ok(())
    }
}

/// The size of each buffer `a_batch_larger_than_its_bounce_pool_waits_for_room` holds mapped to fill a pool.
const HELD_BYTES: usize = 16 << 10;

/// The first `bytes` of `buffer` from its first page boundary on.
fn first_page_aligned(buffer: &[u8], bytes: usize) -> &[u8] {
    &buffer[buffer.as_ptr().align_offset(4096)..][..bytes]
}

/// Maps each of `buffers` to `device` until its bounce pool refuses one, and keeps the
/// mappings, which take room in the pool until they drop. (Page-aligned buffers, so that the
/// copies pack the pool without gaps.)
fn hold<'b>(
    device: &'b DmaDevice,
    buffers: impl IntoIterator<Item = &'b [u8]>,
) -> Vec<dma::Streaming<'b, KernelPlatform, dma::ToDevice>> {
    let map = |buffer: &'b [u8]| device.map_to_device(buffer).map_err(|refused| refused.error()).ok();
    buffers.into_iter().map_while(map).collect()
}

kernel_test! {
    /// One buffer may be in several requests of a batch at once (the same block pattern written
    /// to many places): each request has a mapping of its own, and a completion ends only its
    /// own, never that of a request still in flight. Half the batch writes one shared buffer,
    /// the other half buffers of their own, which take the slots or IOVAs a wrongly ended
    /// mapping gives back; every block is read back and compared.
    fn a_buffer_in_several_requests_of_a_batch_reaches_every_place() {
        let (mut disks, mut failure) = (0, None);
        block::with_each_disk(|disk| {
            let size = 4096usize.next_multiple_of(disk.block_size());
            if failure.is_some() || disk_pool_too_small(disk, size).is_some() {
                return;
            }
            disks += 1;
            failure = same_buffer_many_places(disk, size).err();
        });
        if let Some(problem) = failure {
            return Err(problem.into());
        }
        if disks == 0 { skip!("no disk whose pool holds a page") }
        Ok(())
    }
}

fn same_buffer_many_places(disk: &mut dyn BlockDevice, size: usize) -> Result<(), String> {
    let name = disk.describe();
    let count = 2 * disk.queue_depth();
    let stride = (size / disk.block_size()) as u64 + 1;
    let shared = pattern(1200, size);
    let own: Vec<Vec<u8>> = (0..count).map(|index| pattern(1300 + index as u64, size)).collect();
    let expected = |index: usize| if index.is_multiple_of(2) { &shared } else { &own[index] };
    let writes =
        (0..count).map(|index| block::Request::Write { block: index as u64 * stride, buffer: expected(index) });
    block::run(disk, writes).map_err(|e| format!("{name}: a batch writing one buffer to {} places: {e}", count / 2))?;
    disk.flush().map_err(|e| format!("{name}: flush: {e}"))?;
    let mut read = vec![0u8; size];
    for index in 0..count {
        block::read(disk, index as u64 * stride, &mut read).map_err(|e| format!("{name}: read back {index}: {e}"))?;
        ensure!(read == *expected(index), "{name}: request {index} of the batch left other data on the disk");
    }
    Ok(())
}

kernel_test! {
    /// A disk behind a restricted pool sends what the pool's segment holds in one device
    /// request. The segment is the longest power of two of which each area holds four, up to
    /// 1 MiB and never below Linux's 256 KiB; the DMA layer's limit follows it, or the area
    /// when that is shorter (less what the device's `min_align_mask` may cost); and a write
    /// and a read of the disk's own limit each go to the device whole, every byte compared.
    fn restricted_disks_send_what_their_segment_holds_in_one_request() {
        let (mut disks, mut failure, mut skipped) = (0, None, None);
        block::with_each_disk(|disk| {
            if failure.is_some() {
                return;
            }
            let Route::Restricted(pool) = &disk.dma_device().route else { return };
            match whole_request_through(disk, pool) {
                Ok(Some(reason)) => skipped = Some(reason),
                Ok(None) => disks += 1,
                Err(problem) => failure = Some(problem),
            }
        });
        if let Some(problem) = failure {
            return Err(problem.into());
        }
        match (disks, skipped) {
            (0, Some(reason)) => Err(skip_because(reason)),
            (0, None) => skip!("no disk behind a restricted pool"),
            _ => Ok(()),
        }
    }
}

/// The checks of `restricted_disks_send_what_their_segment_holds_in_one_request` on one disk;
/// `Some(reason)` if the disk or its pool is too small to show it now.
fn whole_request_through(disk: &mut dyn BlockDevice, pool: &DmaPool) -> Result<Option<String>, String> {
    let name = disk.describe();
    let geometry = pool.bounce.geometry();
    let (segment, area) = (geometry.segment_slots * swiotlb::SLOT_SIZE, geometry.area_slots * swiotlb::SLOT_SIZE);
    let linux = swiotlb::DEFAULT_SEGMENT_SLOTS * swiotlb::SLOT_SIZE;
    let four_per_area = (area / 4).checked_ilog2().map_or(0, |bits| 1 << bits);
    let expected = four_per_area.clamp(linux, swiotlb::RESTRICTED_SEGMENT_LIMIT);
    ensure!(
        segment == expected,
        "{name}: pool '{}' has areas of {area} bytes and a segment of {segment}, not {expected}",
        pool.name
    );
    let mapping = disk.dma_device().max_mapping_size().map_err(|e| format!("{name}: max_mapping_size: {e}"))?;
    let mapping = mapping.ok_or(format!("{name}: a restricted device with no mapping limit"))?;
    // An area smaller than a segment (a pool of less than 256 KiB) bounds a mapping first.
    let room = segment.min(area);
    ensure!((room - 4096..=room).contains(&mapping), "{name}: room for {room} bytes but mappings of {mapping}");
    let size = disk.max_transfer().unwrap_or(mapping).min(mapping);
    if let Some(reason) = disk_pool_too_small(disk, size) {
        return Ok(Some(reason));
    }
    if disk.blocks() < (size / disk.block_size()) as u64 + 1 {
        return Ok(Some(format!("{name}: the disk holds less than {size} bytes")));
    }
    let (maps, run_again) = (pool.bounce.stats().maps, block::batches_run_again());
    let deepest = batch_round_trip(disk, 1, size, 1400)?;
    let (mapped, shortened) = (pool.bounce.stats().maps - maps, block::batches_run_again() - run_again);
    ensure!(
        deepest == 1 && mapped == 2 && shortened == 0,
        "{name}: a {size}-byte write and read took {mapped} mappings ({shortened} run again, {deepest} at once)"
    );
    log::info!("{name}: {size} bytes in one request through pool '{}' ({} KiB segment)", pool.name, segment >> 10);
    Ok(None)
}

kernel_test! {
    /// A request its bounce pool holds only in pieces still completes. Mappings that outlive
    /// the request fill the pool a page each, and are given back but one page in every half
    /// of the disk's largest request: no free run is as long as the request, though
    /// `max_mapping_size` promised it room in an empty pool. Refused whole with nothing in
    /// flight, the request runs again in pieces half as long. Every byte compared.
    fn a_request_longer_than_any_free_run_of_its_pool_runs_in_shorter_pieces() {
        let (mut disks, mut failure, mut skipped) = (0, None, Vec::new());
        block::with_each_disk(|disk| {
            if failure.is_some() || !matches!(disk.dma_device().route, Route::Restricted(_)) {
                return;
            }
            match run_in_holes(disk) {
                Ok(Some(reason)) => skipped.push(reason),
                Ok(None) => disks += 1,
                Err(problem) => failure = Some(problem),
            }
        });
        if let Some(problem) = failure {
            return Err(problem.into());
        }
        match disks {
            0 if !skipped.is_empty() => Err(skip_because(skipped.join("; "))),
            0 => skip!("no disk behind a restricted pool"),
            _ => Ok(()),
        }
    }
}

/// The checks of `a_request_longer_than_any_free_run_of_its_pool_runs_in_shorter_pieces` on
/// one disk; `Some(reason)` if the disk is too small to show it.
fn run_in_holes(disk: &mut dyn BlockDevice) -> Result<Option<String>, String> {
    const PAGE: usize = 4096;
    let name = disk.describe();
    let block = disk.block_size();
    let size = disk.max_transfer().unwrap_or(1 << 20).min(1 << 20) / block * block;
    let hole = size / 2 / PAGE * PAGE;
    if hole == 0 || disk.blocks() < (size / block) as u64 + 1 {
        return Ok(Some(format!("{name}: too small a disk or request for holes of whole pages")));
    }
    let pages = pool_free_bytes(disk).unwrap_or_default() / PAGE + 1;
    let storage = vec![0u8; (pages + 1) * PAGE];
    let start = storage.as_ptr().align_offset(PAGE);
    let mut hogs = hold(disk.dma_device(), storage[start..].chunks_exact(PAGE));
    hogs.sort_by_key(|hog| hog.dma());
    let kept_one_in = hole / PAGE + 1;
    let mut index = 0;
    hogs.retain(|_| {
        index += 1;
        index % kept_one_in == 0
    });
    ensure!(disk_pool_too_small(disk, size).is_some(), "{name}: its pool kept a free run as long as {size} bytes");
    let run_again = block::batches_run_again();
    let outcome = batch_round_trip(disk, 1, size, 1500);
    drop(hogs);
    let deepest = outcome?;
    ensure!(
        block::batches_run_again() > run_again,
        "{name}: {size} bytes went through whole, yet no free run holds them"
    );
    log::info!("{name}: {size} bytes through a pool with holes of {} KiB, in pieces ({deepest} at once)", hole >> 10);
    Ok(None)
}
