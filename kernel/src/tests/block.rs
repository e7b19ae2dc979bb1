//! The integrity test every disk runs, whatever its transport: virtio-blk on the MMIO bus,
//! virtio-blk and NVMe on PCIe behind the IOMMU.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use crate::block::{self, BlockDevice};
use crate::testing::ensure;
use crate::tests::virtio::pattern;

/// Buffer start offsets within a page every disk is tested at: the contract's R6 set, each
/// a valid NVMe PRP offset (dword-aligned).
pub const PAGE_OFFSETS: [usize; 4] = [0, 0x200, 0x7c8, 0xfa0];

/// Writes, flushes and reads back every size at every offset, each size in as many requests
/// as the disk's limit needs, through buffers of their own; every byte compared. The read
/// buffer sits at another offset than the written one. Returns the bytes moved.
pub fn round_trips(disk: &mut dyn BlockDevice, sizes: &[usize], offsets: &[usize], seed: u64) -> Result<usize, String> {
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let block_size = disk.block_size();
    let capacity = disk.blocks();
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
    Ok(moved)
}

/// The part of `storage` from its first page boundary on, so that offsets into it are page
/// offsets of physical addresses too (the heap is linearly mapped).
pub fn page_aligned(storage: &mut [u8]) -> &mut [u8] {
    let start = storage.as_ptr().align_offset(4096);
    &mut storage[start..]
}
