//! How much data one command may carry.
//!
//! Four limits apply to one Read or Write, and the smallest wins:
//!
//! - the controller's Maximum Data Transfer Size (MDTS in Identify Controller, NVMe Base
//!   Specification 2.0, 5.17.2.1): a power of two in units of its minimum memory page size
//!   (CAP.MPSMIN), or no limit when 0;
//! - the DMA layer's `max_mapping_size`: a command's data goes to the controller through one
//!   mapping, and the bounce pool promises only so much (contract rule 7). With NVMe's
//!   `min_align_mask = 0xfff` that is 252 KiB: 256 KiB less the worst page offset it may have to
//!   preserve (regression case R10);
//! - what the PRP entries can describe: one PRP list page (`prp.rs`; 2 MiB with 4 KiB pages);
//! - the block count: a Read or Write counts its blocks in a 16-bit, 0's based field (NLB,
//!   CDW12 in the NVM Command Set Specification), so at most [`MAX_BLOCKS_PER_COMMAND`] blocks.
//!
//! A command moves whole logical blocks, so the smallest limit is rounded down to a whole number
//! of blocks: [`TransferLimits::max_transfer`]. The block layer cuts a larger request into
//! pieces of at most that many bytes ([`crate::block::split`]), each one command:
//!
//! ```text
//!   MDTS 7 with 4 KiB pages: 512 KiB per command.
//!   1 MiB + 512 B from block 100, 512-byte blocks:
//!
//!   block 100            block 1124           block 2148
//!   ├──── 512 KiB ───────┼──── 512 KiB ───────┼ 512 B ┤
//!   offset 0             offset 0x80000       offset 0x100000   (into the caller's buffer)
//! ```

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
    /// The 16-bit block count (NLB): [`MAX_BLOCKS_PER_COMMAND`] blocks.
    BlockCount,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Controller => "the controller's MDTS",
            Limit::Mapping => "the DMA layer's max_mapping_size",
            Limit::Prp => "one PRP list page",
            Limit::BlockCount => "the 16-bit block count (NLB)",
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
        let block_count = (MAX_BLOCKS_PER_COMMAND as usize).saturating_mul(self.block_size);
        [(Limit::Mapping, self.mapping), (Limit::Controller, self.controller), (Limit::BlockCount, Some(block_count))]
            .into_iter()
            .filter_map(|(limit, bytes)| Some((limit, bytes?)))
            .fold(
                (Limit::Prp, self.prp),
                |smallest, candidate| if candidate.1 <= smallest.1 { candidate } else { smallest },
            )
    }
}

fn check_block_size(block_size: usize) -> Result<(), TransferError> {
    if block_size == 0 {
        return Err(TransferError::ZeroBlockSize);
    }
    Ok(())
}

/// A limit or a request that one command cannot carry.
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
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::ZeroBlockSize => write!(f, "a logical block of 0 bytes"),
            TransferError::LimitBelowBlock { limit, bytes, block_size } => {
                write!(f, "{limit} allows {bytes} bytes per command, less than one {block_size}-byte block")
            }
            TransferError::Empty => write!(f, "a transfer of 0 bytes: a command moves at least one block"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec;

    use proptest::prelude::*;

    use super::super::prp::{PrpPlan, max_prp_transfer};
    use super::*;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    const PAGE: usize = 4 * KIB;

    fn limits(controller: Option<usize>, mapping: Option<usize>, block_size: usize) -> TransferLimits {
        TransferLimits { controller, mapping, prp: max_prp_transfer(PAGE), block_size }
    }

    #[test]
    fn mdts_limits_a_command() {
        let mdts_7 = (1 << 7) * PAGE;
        let limits = limits(Some(mdts_7), None, 512);
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(512 * KIB), Limit::Controller));
    }

    /// R10: 64 KiB granule and `min_align_mask = 0xfff` leave 252 KiB per mapping, below MDTS.
    #[test]
    fn the_mapping_limit_wins_over_mdts() {
        let limits = limits(Some(512 * KIB), Some(252 * KIB), 512);
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(252 * KIB), Limit::Mapping));
        assert_eq!(TransferLimits { block_size: 4 * KIB, ..limits }.max_transfer(), Ok(252 * KIB));
        assert_eq!(TransferLimits { block_size: 8 * KIB, ..limits }.max_transfer(), Ok(248 * KIB), "whole blocks");
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
    fn errors_say_what_was_wrong() {
        assert_eq!(
            format!("{}", TransferError::LimitBelowBlock { limit: Limit::Mapping, bytes: 2048, block_size: 4096 }),
            "the DMA layer's max_mapping_size allows 2048 bytes per command, less than one 4096-byte block"
        );
    }

    #[test]
    fn no_command_names_more_blocks_than_nlb_counts() {
        let limits = TransferLimits { controller: None, mapping: None, prp: 64 * MIB, block_size: 512 };
        assert_eq!((limits.max_transfer(), limits.limiting_factor()), (Ok(32 * MIB), Limit::BlockCount));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the limits, one command's worth is whole blocks, within every limit, and
        /// PRPs can describe it wherever the caller's buffer starts.
        #[test]
        fn a_command_fits_every_limit_and_its_prps(
            block_size in proptest::sample::select(vec![512usize, 4096]),
            controller_blocks in proptest::option::of(1usize..5_000),
            mapping_blocks in proptest::option::of(1usize..5_000),
            buffer_dwords in 0u64..(1 << 40),
        ) {
            let controller = controller_blocks.map(|blocks| blocks * block_size);
            let mapping = mapping_blocks.map(|blocks| blocks * block_size);
            let limits = TransferLimits { controller, mapping, prp: max_prp_transfer(PAGE), block_size };
            let max_transfer = limits.max_transfer().unwrap();
            prop_assert!(max_transfer.is_multiple_of(block_size));
            prop_assert!(controller.is_none_or(|limit| max_transfer <= limit));
            prop_assert!(mapping.is_none_or(|limit| max_transfer <= limit));
            prop_assert!(max_transfer / block_size <= MAX_BLOCKS_PER_COMMAND as usize);
            prop_assert!(PrpPlan::new(buffer_dwords * 4, max_transfer, PAGE).is_ok());
        }
    }
}
