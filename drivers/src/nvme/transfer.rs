//! How much data one command may carry, and cutting larger requests into commands that fit.
//!
//! Three limits apply to one Read or Write, and the smallest wins:
//!
//! - the controller's Maximum Data Transfer Size (MDTS in Identify Controller, NVMe Base
//!   Specification 2.0, 5.17.2.1): a power of two in units of its minimum memory page size
//!   (CAP.MPSMIN), or no limit when 0;
//! - the DMA layer's `max_mapping_size`: a command's data goes to the controller through one
//!   mapping, and the bounce pool promises only so much (contract rule 7). With NVMe's
//!   `min_align_mask = 0xfff` that is 252 KiB: 256 KiB less the worst page offset it may have to
//!   preserve (regression case R10);
//! - what the PRP entries can describe: one PRP list page (`prp.rs`; 2 MiB with 4 KiB pages).
//!
//! A command moves whole logical blocks, so the smallest limit is rounded down to a whole number
//! of blocks, and a request is cut into chunks of at most that many bytes, each a command:
//!
//! ```text
//!   MDTS 7 with 4 KiB pages: 512 KiB per command.
//!   1 MiB + 512 B from block 100, 512-byte blocks:
//!
//!   block 100            block 1124           block 2148
//!   ├──── 512 KiB ───────┼──── 512 KiB ───────┼ 512 B ┤
//!   offset 0             offset 0x80000       offset 0x100000   (into the caller's buffer)
//! ```
//!
//! A Read or Write also counts its blocks in a 16-bit, 0's based field (NLB, CDW12 in the NVM
//! Command Set Specification), so no chunk holds more than [`MAX_BLOCKS_PER_COMMAND`] blocks
//! whatever the byte limit.

use core::fmt;

/// The most blocks one Read or Write can name: NLB is 16 bits and 0's based.
pub const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;

/// Which limit decides how much one command carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The controller's MDTS.
    Controller,
    /// The DMA layer's `max_mapping_size`.
    Mapping,
    /// One PRP list page.
    Prp,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Controller => "the controller's MDTS",
            Limit::Mapping => "the DMA layer's max_mapping_size",
            Limit::Prp => "one PRP list page",
        })
    }
}

/// The limits on one command's data, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// MDTS in bytes; `None` when the controller sets no limit (MDTS = 0).
    pub controller: Option<usize>,
    /// The DMA layer's `max_mapping_size` for this device; `None` when it sets no limit.
    pub mapping: Option<usize>,
    /// [`max_prp_transfer`](super::prp::max_prp_transfer) for the memory page size.
    pub prp: usize,
    /// The namespace's logical block size.
    pub block_size: usize,
}

impl TransferLimits {
    /// The most bytes one command may carry: the smallest limit, in whole blocks.
    pub fn max_transfer(&self) -> Result<usize, TransferError> {
        check_block_size(self.block_size)?;
        let (limit, bytes) = self.smallest();
        let whole_blocks = bytes - bytes % self.block_size;
        if whole_blocks == 0 {
            return Err(TransferError::LimitBelowBlock { limit, bytes, block_size: self.block_size });
        }
        Ok(whole_blocks)
    }

    /// The limit [`Self::max_transfer`] comes from. On a tie the controller is named before
    /// the mapping, and both before PRPs: the first is the one a reader can look up.
    pub fn limiting_factor(&self) -> Limit {
        self.smallest().0
    }

    fn smallest(&self) -> (Limit, usize) {
        [(Limit::Mapping, self.mapping), (Limit::Controller, self.controller)]
            .into_iter()
            .filter_map(|(limit, bytes)| Some((limit, bytes?)))
            .fold(
                (Limit::Prp, self.prp),
                |smallest, candidate| if candidate.1 <= smallest.1 { candidate } else { smallest },
            )
    }
}

/// One command's share of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The first logical block (SLBA).
    pub block: u64,
    /// Where the chunk's data starts in the caller's buffer.
    pub offset: usize,
    /// Bytes of the chunk: its blocks times the block size.
    pub length: usize,
    /// Blocks in the chunk, 1 to [`MAX_BLOCKS_PER_COMMAND`] (NLB is this less one).
    pub blocks: u32,
}

/// Cuts `length` bytes from block `first_block` into chunks of at most `max_transfer` bytes
/// (from [`TransferLimits::max_transfer`]), in order.
pub fn split(first_block: u64, length: usize, block_size: usize, max_transfer: usize) -> Result<Chunks, TransferError> {
    check_block_size(block_size)?;
    if length == 0 {
        return Err(TransferError::Empty);
    }
    if !length.is_multiple_of(block_size) {
        return Err(TransferError::LengthNotWholeBlocks { length, block_size });
    }
    if max_transfer == 0 {
        return Err(TransferError::ZeroMaxTransfer);
    }
    if !max_transfer.is_multiple_of(block_size) {
        return Err(TransferError::MaxTransferNotWholeBlocks { max_transfer, block_size });
    }
    let blocks = (length / block_size) as u64;
    first_block.checked_add(blocks - 1).ok_or(TransferError::BlockOverflow { first_block, blocks })?;
    let chunk_blocks = (max_transfer / block_size).min(MAX_BLOCKS_PER_COMMAND as usize);
    Ok(Chunks { first_block, block_size, chunk_length: chunk_blocks * block_size, offset: 0, length })
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
        let blocks = length / self.block_size;
        // `split` checked that the request's last block fits in 64 bits.
        let block = self.first_block + (self.offset / self.block_size) as u64;
        let chunk = Chunk { block, offset: self.offset, length, blocks: blocks as u32 };
        self.offset += length;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = (self.length - self.offset).div_ceil(self.chunk_length);
        (chunks, Some(chunks))
    }
}

impl ExactSizeIterator for Chunks {}

fn check_block_size(block_size: usize) -> Result<(), TransferError> {
    if block_size == 0 {
        return Err(TransferError::ZeroBlockSize);
    }
    Ok(())
}

/// A request or a limit that cannot be cut into commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// A logical block of 0 bytes.
    ZeroBlockSize,
    /// The smallest limit holds not even one block.
    LimitBelowBlock {
        /// Which limit it is.
        limit: Limit,
        /// The bytes it allows per command.
        bytes: usize,
        /// The namespace's block size.
        block_size: usize,
    },
    /// A transfer of 0 bytes: a command moves at least one block.
    Empty,
    /// A length that is not a whole number of blocks.
    LengthNotWholeBlocks {
        /// The length asked for, in bytes.
        length: usize,
        /// The namespace's block size.
        block_size: usize,
    },
    /// A command limit of 0 bytes, which cannot move any data.
    ZeroMaxTransfer,
    /// A command limit that is not a whole number of blocks.
    MaxTransferNotWholeBlocks {
        /// The limit, in bytes.
        max_transfer: usize,
        /// The namespace's block size.
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

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::ZeroBlockSize => write!(f, "a logical block of 0 bytes"),
            TransferError::LimitBelowBlock { limit, bytes, block_size } => {
                write!(f, "{limit} allows {bytes} bytes per command, less than one {block_size}-byte block")
            }
            TransferError::Empty => write!(f, "a transfer of 0 bytes: a command moves at least one block"),
            TransferError::LengthNotWholeBlocks { length, block_size } => {
                write!(f, "{length} bytes is not a whole number of {block_size}-byte blocks")
            }
            TransferError::ZeroMaxTransfer => write!(f, "a command limit of 0 bytes cannot move any data"),
            TransferError::MaxTransferNotWholeBlocks { max_transfer, block_size } => {
                write!(f, "a command limit of {max_transfer} bytes is not a whole number of {block_size}-byte blocks")
            }
            TransferError::BlockOverflow { first_block, blocks } => {
                write!(f, "{blocks} blocks from block {first_block} run past the last 64-bit block number")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::super::prp::{PrpPlan, max_prp_transfer};
    use super::*;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    const PAGE: usize = 4 * KIB;

    fn limits(controller: Option<usize>, mapping: Option<usize>, block_size: usize) -> TransferLimits {
        TransferLimits { controller, mapping, prp: max_prp_transfer(PAGE), block_size }
    }

    fn chunks(first_block: u64, length: usize, block_size: usize, max_transfer: usize) -> Vec<Chunk> {
        split(first_block, length, block_size, max_transfer).unwrap().collect()
    }

    #[test]
    fn mdts_cuts_a_large_request_into_commands() {
        let mdts_7 = (1 << 7) * PAGE;
        let limits = limits(Some(mdts_7), None, 512);
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(512 * KIB), Limit::Controller));
        let request = split(100, MIB + 512, 512, 512 * KIB).unwrap();
        assert_eq!(request.len(), 3);
        assert_eq!(
            request.collect::<Vec<_>>(),
            [
                Chunk { block: 100, offset: 0, length: 512 * KIB, blocks: 1024 },
                Chunk { block: 1124, offset: 0x8_0000, length: 512 * KIB, blocks: 1024 },
                Chunk { block: 2148, offset: 0x10_0000, length: 512, blocks: 1 },
            ]
        );
    }

    /// R10: 64 KiB granule and `min_align_mask = 0xfff` leave 252 KiB per mapping, below MDTS.
    #[test]
    fn the_mapping_limit_wins_over_mdts() {
        let limits = limits(Some(512 * KIB), Some(252 * KIB), 512);
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(252 * KIB), Limit::Mapping));
        assert_eq!(TransferLimits { block_size: 4 * KIB, ..limits }.max_transfer(), Ok(252 * KIB));
        assert_eq!(TransferLimits { block_size: 8 * KIB, ..limits }.max_transfer(), Ok(248 * KIB), "whole blocks");
        let request = chunks(0, MIB, 512, 252 * KIB);
        let lengths: Vec<usize> = request.iter().map(|chunk| chunk.length).collect();
        assert_eq!(lengths, [252 * KIB, 252 * KIB, 252 * KIB, 252 * KIB, 16 * KIB]);
    }

    #[test]
    fn without_other_limits_one_prp_list_page_decides() {
        let limits = limits(None, None, 4 * KIB);
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(2 * MIB), Limit::Prp));
        let tie = TransferLimits { controller: Some(2 * MIB), mapping: Some(2 * MIB), ..limits };
        assert_eq!(tie.limiting_factor(), Limit::Controller);
        assert_eq!(TransferLimits { controller: None, ..tie }.limiting_factor(), Limit::Mapping);
    }

    #[test]
    fn a_limit_below_one_block_is_refused() {
        let limits = limits(Some(512 * KIB), Some(2 * KIB), 4 * KIB);
        assert_eq!(
            limits.max_transfer(),
            Err(TransferError::LimitBelowBlock { limit: Limit::Mapping, bytes: 2 * KIB, block_size: 4 * KIB })
        );
        assert_eq!(TransferLimits { block_size: 0, ..limits }.max_transfer(), Err(TransferError::ZeroBlockSize));
    }

    #[test]
    fn an_exact_multiple_leaves_no_short_chunk() {
        let request = chunks(7, MIB, 4 * KIB, 256 * KIB);
        assert_eq!(request.len(), 4);
        for (index, chunk) in request.iter().enumerate() {
            assert_eq!(
                *chunk,
                Chunk { block: 7 + 64 * index as u64, offset: index * 256 * KIB, length: 256 * KIB, blocks: 64 }
            );
        }
    }

    #[test]
    fn no_chunk_names_more_blocks_than_nlb_counts() {
        let request = chunks(0, 64 * MIB, 512, 64 * MIB);
        assert_eq!(request.len(), 2);
        assert!(request.iter().all(|chunk| chunk.blocks == MAX_BLOCKS_PER_COMMAND && chunk.length == 32 * MIB));
    }

    #[test]
    fn requests_that_are_not_whole_blocks_or_overflow_are_refused() {
        let refusal = |first_block, length, block_size, max_transfer| {
            split(first_block, length, block_size, max_transfer).map(|_| ()).unwrap_err()
        };
        assert_eq!(refusal(0, 0, 512, 4096), TransferError::Empty);
        assert_eq!(refusal(0, 1000, 512, 4096), TransferError::LengthNotWholeBlocks { length: 1000, block_size: 512 });
        assert_eq!(refusal(0, 4096, 512, 0), TransferError::ZeroMaxTransfer);
        assert_eq!(
            refusal(0, 4096, 512, 1000),
            TransferError::MaxTransferNotWholeBlocks { max_transfer: 1000, block_size: 512 }
        );
        assert_eq!(refusal(0, 4096, 0, 4096), TransferError::ZeroBlockSize);
        assert_eq!(
            refusal(u64::MAX, 1024, 512, 4096),
            TransferError::BlockOverflow { first_block: u64::MAX, blocks: 2 }
        );
        assert_eq!(chunks(u64::MAX, 512, 512, 4096), [Chunk { block: u64::MAX, offset: 0, length: 512, blocks: 1 }]);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            format!("{}", TransferError::LimitBelowBlock { limit: Limit::Mapping, bytes: 2048, block_size: 4096 }),
            "the DMA layer's max_mapping_size allows 2048 bytes per command, less than one 4096-byte block"
        );
        assert_eq!(
            format!("{}", TransferError::LengthNotWholeBlocks { length: 1000, block_size: 512 }),
            "1000 bytes is not a whole number of 512-byte blocks"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The chunks follow each other with no gap or overlap, cover the request exactly, are
        /// full except for the last, and each can be described by PRPs wherever the caller's
        /// buffer starts.
        #[test]
        fn chunks_cover_the_request_exactly(
            block_size in proptest::sample::select(vec![512usize, 4096]),
            first_block in 0u64..(1 << 40),
            blocks in 1usize..10_000,
            limit_blocks in 1usize..5_000,
            buffer_dwords in 0u64..(1 << 40),
        ) {
            let (length, max_transfer) = (blocks * block_size, limit_blocks * block_size);
            let limits = TransferLimits { controller: Some(max_transfer), mapping: None, prp: max_prp_transfer(PAGE), block_size };
            let max_transfer = limits.max_transfer().unwrap();
            let request = split(first_block, length, block_size, max_transfer).unwrap();
            let expected_chunks = request.len();
            let buffer = buffer_dwords * 4;
            let mut covered = 0;
            for (index, chunk) in request.enumerate() {
                prop_assert_eq!(chunk.offset, covered);
                prop_assert_eq!(chunk.block, first_block + (covered / block_size) as u64);
                prop_assert_eq!(chunk.length, chunk.blocks as usize * block_size);
                prop_assert!(chunk.length <= max_transfer);
                prop_assert!(chunk.length == max_transfer || index == expected_chunks - 1, "short chunk {}", index);
                prop_assert!(PrpPlan::new(buffer + chunk.offset as u64, chunk.length, PAGE).is_ok());
                covered += chunk.length;
            }
            prop_assert_eq!(covered, length);
            prop_assert_eq!(expected_chunks, length.div_ceil(max_transfer));
        }
    }
}
