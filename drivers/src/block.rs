//! Block requests cut into pieces a disk takes in one command.
//!
//! A disk moves whole logical blocks, and one command carries only so much: what its driver
//! states as its limit (NVMe derives it from MDTS, the DMA layer's `max_mapping_size`, PRPs and
//! the block count, `crate::nvme::transfer`; virtio-blk from the DMA layer alone). The block
//! layer cuts a larger request into consecutive pieces of at most that many bytes, the way
//! Linux's block layer obeys `max_hw_sectors`:
//!
//! ```text
//!   a limit of 512 KiB; 1 MiB + 512 B from block 100, 512-byte blocks:
//!
//!   block 100            block 1124           block 2148
//!   ├──── 512 KiB ───────┼──── 512 KiB ───────┼ 512 B ┤
//!   offset 0             offset 0x80000       offset 0x100000   (into the caller's buffer)
//! ```

use core::fmt;

pub mod in_flight;

/// One command's share of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The first logical block.
    pub block: u64,
    /// Where the chunk's data starts in the caller's buffer.
    pub offset: usize,
    /// Bytes of the chunk: its blocks times the block size.
    pub length: usize,
}

/// Cuts `length` bytes from block `first_block` into chunks of at most `max_transfer` bytes,
/// in order.
pub fn split(first_block: u64, length: usize, block_size: usize, max_transfer: usize) -> Result<Chunks, SplitError> {
    if block_size == 0 {
        return Err(SplitError::ZeroBlockSize);
    }
    if length == 0 {
        return Err(SplitError::Empty);
    }
    if !length.is_multiple_of(block_size) {
        return Err(SplitError::LengthNotWholeBlocks { length, block_size });
    }
    if max_transfer < block_size || !max_transfer.is_multiple_of(block_size) {
        return Err(SplitError::MaxTransferNotWholeBlocks { max_transfer, block_size });
    }
    let blocks = (length / block_size) as u64;
    first_block.checked_add(blocks - 1).ok_or(SplitError::BlockOverflow { first_block, blocks })?;
    Ok(Chunks { first_block, block_size, chunk_length: max_transfer, offset: 0, length })
}

/// The chunks of one request, from [`split`].
#[derive(Clone, Debug)]
pub struct Chunks {
    first_block: u64,
    block_size: usize,
    chunk_length: usize,
    /// Where the next chunk starts in the caller's buffer.
    offset: usize,
    length: usize,
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        let length = (self.length - self.offset).min(self.chunk_length);
        if length == 0 {
            return None;
        }
        // `split` checked that the request's last block fits in 64 bits.
        let block = self.first_block + (self.offset / self.block_size) as u64;
        let chunk = Chunk { block, offset: self.offset, length };
        self.offset += length;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = (self.length - self.offset).div_ceil(self.chunk_length);
        (chunks, Some(chunks))
    }
}

impl ExactSizeIterator for Chunks {}

/// A request that cannot be cut into commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A logical block of 0 bytes.
    ZeroBlockSize,
    /// A transfer of 0 bytes: a command moves at least one block.
    Empty,
    /// A length that is not a whole number of blocks.
    LengthNotWholeBlocks {
        /// The length asked for, in bytes.
        length: usize,
        /// The disk's block size.
        block_size: usize,
    },
    /// A command limit that is not a whole, non-zero number of blocks.
    MaxTransferNotWholeBlocks {
        /// The limit, in bytes.
        max_transfer: usize,
        /// The disk's block size.
        block_size: usize,
    },
    /// Blocks running past the last 64-bit block number.
    BlockOverflow {
        /// The first block asked for.
        first_block: u64,
        /// How many blocks.
        blocks: u64,
    },
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::ZeroBlockSize => write!(f, "a logical block of 0 bytes"),
            SplitError::Empty => write!(f, "a transfer of 0 bytes: a command moves at least one block"),
            SplitError::LengthNotWholeBlocks { length, block_size } => {
                write!(f, "{length} bytes is not a whole number of {block_size}-byte blocks")
            }
            SplitError::MaxTransferNotWholeBlocks { max_transfer, block_size } => {
                write!(f, "a command limit of {max_transfer} bytes is not a whole number of {block_size}-byte blocks")
            }
            SplitError::BlockOverflow { first_block, blocks } => {
                write!(f, "{blocks} blocks from block {first_block} run past the last 64-bit block number")
            }
        }
    }
}

impl core::error::Error for SplitError {}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;

    fn chunks(first_block: u64, length: usize, block_size: usize, max_transfer: usize) -> Vec<Chunk> {
        split(first_block, length, block_size, max_transfer).unwrap().collect()
    }

    #[test]
    fn a_large_request_is_cut_at_the_limit() {
        let request = split(100, MIB + 512, 512, 512 * KIB).unwrap();
        assert_eq!(request.len(), 3);
        assert_eq!(
            request.collect::<Vec<_>>(),
            [
                Chunk { block: 100, offset: 0, length: 512 * KIB },
                Chunk { block: 1124, offset: 0x8_0000, length: 512 * KIB },
                Chunk { block: 2148, offset: 0x10_0000, length: 512 },
            ]
        );
    }

    /// R10's limit: 252 KiB per mapping.
    #[test]
    fn the_last_chunk_is_the_rest() {
        let lengths: Vec<usize> = chunks(0, MIB, 512, 252 * KIB).iter().map(|chunk| chunk.length).collect();
        assert_eq!(lengths, [252 * KIB, 252 * KIB, 252 * KIB, 252 * KIB, 16 * KIB]);
    }

    #[test]
    fn an_exact_multiple_leaves_no_short_chunk() {
        let request = chunks(7, MIB, 4 * KIB, 256 * KIB);
        assert_eq!(request.len(), 4);
        for (index, chunk) in request.iter().enumerate() {
            assert_eq!(*chunk, Chunk { block: 7 + 64 * index as u64, offset: index * 256 * KIB, length: 256 * KIB });
        }
    }

    #[test]
    fn requests_that_are_not_whole_blocks_or_overflow_are_refused() {
        let refusal = |first_block, length, block_size, max_transfer| {
            split(first_block, length, block_size, max_transfer).map(|_| ()).unwrap_err()
        };
        assert_eq!(refusal(0, 0, 512, 4096), SplitError::Empty);
        assert_eq!(refusal(0, 1000, 512, 4096), SplitError::LengthNotWholeBlocks { length: 1000, block_size: 512 });
        assert_eq!(
            refusal(0, 4096, 512, 0),
            SplitError::MaxTransferNotWholeBlocks { max_transfer: 0, block_size: 512 }
        );
        assert_eq!(
            refusal(0, 4096, 512, 1000),
            SplitError::MaxTransferNotWholeBlocks { max_transfer: 1000, block_size: 512 }
        );
        assert_eq!(refusal(0, 4096, 0, 4096), SplitError::ZeroBlockSize);
        assert_eq!(refusal(u64::MAX, 1024, 512, 4096), SplitError::BlockOverflow { first_block: u64::MAX, blocks: 2 });
        assert_eq!(chunks(u64::MAX, 512, 512, 4096), [Chunk { block: u64::MAX, offset: 0, length: 512 }]);
        assert_eq!(
            format!("{}", SplitError::LengthNotWholeBlocks { length: 1000, block_size: 512 }),
            "1000 bytes is not a whole number of 512-byte blocks"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The chunks follow each other with no gap or overlap, cover the request exactly, and
        /// are full except for the last.
        #[test]
        fn chunks_cover_the_request_exactly(
            block_size in proptest::sample::select(vec![512usize, 4096]),
            first_block in 0u64..(1 << 40),
            blocks in 1usize..10_000,
            limit_blocks in 1usize..5_000,
        ) {
            let (length, max_transfer) = (blocks * block_size, limit_blocks * block_size);
            let request = split(first_block, length, block_size, max_transfer).unwrap();
            let expected_chunks = request.len();
            let mut covered = 0;
            for (index, chunk) in request.enumerate() {
                prop_assert_eq!(chunk.offset, covered);
                prop_assert_eq!(chunk.block, first_block + (covered / block_size) as u64);
                prop_assert!(chunk.length.is_multiple_of(block_size) && chunk.length <= max_transfer);
                prop_assert!(chunk.length == max_transfer || index == expected_chunks - 1, "short chunk {}", index);
                covered += chunk.length;
            }
            prop_assert_eq!(covered, length);
            prop_assert_eq!(expected_chunks, length.div_ceil(max_transfer));
        }
    }
}
