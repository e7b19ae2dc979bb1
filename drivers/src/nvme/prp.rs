//! Physical Region Pages: how a command tells the controller where its data lies (NVMe Base
//! Specification 2.0, 4.3.1 "Physical Region Page Entry and List").
//!
//! The controller sees memory as pages of the size the host chose in CC.MPS (4 KiB to 128 MiB;
//! this kernel uses 4 KiB). A PRP entry is the 64-bit DMA address of data inside one such page;
//! its bits 1:0 are reserved, so data starts on a dword. The first entry may start at any
//! offset in its page; every later entry must start at offset 0, because the controller moves
//! data up to the end of each page and then continues at the next entry.
//!
//! A command has room for two entries, PRP1 and PRP2. PRP1 is always the start of the data;
//! what PRP2 holds depends on how many memory pages the data touches:
//!
//! ```text
//!  one page     PRP2 = 0 (unused)
//!  two pages    PRP2 = the second page
//!  more pages   PRP2 = the DMA address of a PRP list: 8-byte entries for pages 2, 3, ... N
//!
//!  dma = 0x4000_0fa0, 252 KiB: 64 pages, PRP2 points at a list of 63 entries
//!    0x4000_0000     0x4000_1000     0x4000_2000           0x4003_f000
//!   ┌──────────┬───┐┌──────────────┐┌──────────────┐      ┌───────────┬──┐
//!   │          │96 ││    4 KiB     ││    4 KiB     │  ... │ 4000 bytes│  │
//!   └──────────┴───┘└──────────────┘└──────────────┘      └───────────┴──┘
//!    PRP1 = 0x4000_0fa0  list[0]         list[1]              list[62]
//! ```
//!
//! The page offset travels in PRP1 itself: a buffer at offset `0xfa0` must reach the controller
//! at offset `0xfa0`, or the data would land elsewhere in the page. That is why the DMA layer
//! preserves the low 12 bits of every NVMe mapping (contract rule 1, `min_align_mask = 0xfff`,
//! regression cases R3 and R6), however the buffer is bounced or translated.
//!
//! A list that needs more entries than fit in its page ends with a pointer to the next list
//! page instead. This driver never chains lists: one list page of `page_size / 8` entries, so a
//! transfer spans at most `1 + page_size / 8` memory pages ([`max_prp_transfer`] bytes, whatever
//! the offset). The kernel splits larger requests first (`transfer.rs`).

use core::fmt;

/// Bytes in one entry of a PRP list.
const ENTRY_BYTES: usize = 8;

/// The memory page sizes CC.MPS can select: `2^(12 + MPS)` for MPS 0 to 15.
const SMALLEST_PAGE_SIZE: usize = 1 << 12;
const LARGEST_PAGE_SIZE: usize = 1 << 27;

/// The PRP entries of one transfer: where its data lies, memory page by memory page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrpPlan {
    dma: u64,
    page_size: usize,
    pages: usize,
}

impl PrpPlan {
    /// Plans the entries for `length` bytes at DMA address `dma`, in memory pages of
    /// `page_size` bytes (the controller's CC.MPS).
    pub fn new(dma: u64, length: usize, page_size: usize) -> Result<Self, PrpError> {
        check_page_size(page_size)?;
        if length == 0 {
            return Err(PrpError::Empty);
        }
        if !dma.is_multiple_of(4) {
            return Err(PrpError::StartNotDwordAligned { dma });
        }
        let last_byte = dma.checked_add(length as u64 - 1).ok_or(PrpError::AddressOverflow { dma, length })?;
        let pages = (last_byte / page_size as u64 - dma / page_size as u64) + 1;
        let limit = pages_per_list_page(page_size);
        if pages > limit as u64 {
            return Err(PrpError::TooManyPages { pages, limit });
        }
        Ok(Self { dma, page_size, pages: pages as usize })
    }

    /// PRP1: the address of the first byte.
    pub fn first(&self) -> u64 {
        self.dma
    }

    /// The memory pages the transfer touches.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Entries the PRP list needs: none when PRP1 and PRP2 say everything.
    pub fn list_entries(&self) -> usize {
        if self.pages <= 2 { 0 } else { self.pages - 1 }
    }

    /// Writes the PRP list (pages 2 to N, little-endian as the controller reads them) to the
    /// start of `list`. Writes nothing when no list is needed.
    pub fn write_list(&self, list: &mut [u64]) -> Result<(), PrpError> {
        let needed = self.list_entries();
        let given = list.len();
        let slots = list.get_mut(..needed).ok_or(PrpError::ListTooShort { needed, given })?;
        for (page, slot) in (1..).zip(slots) {
            *slot = self.page_start(page).to_le();
        }
        Ok(())
    }

    /// PRP2: nothing (0) for one page, the second page for two, `list_dma` (where the list
    /// written by [`Self::write_list`] lies) for more. `list_dma` is ignored when no list is needed.
    pub fn second(&self, list_dma: Option<u64>) -> Result<u64, PrpError> {
        match self.pages {
            1 => Ok(0),
            2 => Ok(self.page_start(1)),
            pages => {
                let list_dma = list_dma.ok_or(PrpError::ListMissing { pages })?;
                self.check_list_place(list_dma)?;
                Ok(list_dma)
            }
        }
    }

    /// The entry for page `index` of the transfer: PRP1 for 0, a page-aligned address after.
    pub fn entry(&self, index: usize) -> Option<u64> {
        match index {
            0 => Some(self.dma),
            index if index < self.pages => Some(self.page_start(index)),
            _ => None,
        }
    }

    /// The start of memory page `index` of the transfer (`index` ≥ 1), which `new` checked
    /// lies below 2^64.
    fn page_start(&self, index: usize) -> u64 {
        let first_page = self.dma & !(self.page_size as u64 - 1);
        first_page + (index * self.page_size) as u64
    }

    /// A list pointer's offset is qword aligned (4.3.1), and the list must end in its page: the
    /// controller would read a last entry beyond the page's end as the pointer to a next list.
    fn check_list_place(&self, list_dma: u64) -> Result<(), PrpError> {
        if !list_dma.is_multiple_of(ENTRY_BYTES as u64) {
            return Err(PrpError::ListMisaligned { list_dma });
        }
        let offset = (list_dma % self.page_size as u64) as usize;
        let entries = self.list_entries();
        if offset + entries * ENTRY_BYTES > self.page_size {
            return Err(PrpError::ListCrossesPage { list_dma, entries });
        }
        Ok(())
    }
}

/// The largest transfer one PRP list page describes at any start offset: `page_size / 8` whole
/// pages. From offset 0 one more page would fit, but from the last dword of a page only
/// 4 bytes more; rounding down to whole pages keeps the limit a whole number of blocks.
pub fn max_prp_transfer(page_size: usize) -> usize {
    (page_size / ENTRY_BYTES).saturating_mul(page_size)
}

/// Pages one transfer may touch: PRP1's page and one per list entry.
fn pages_per_list_page(page_size: usize) -> usize {
    1 + page_size / ENTRY_BYTES
}

fn check_page_size(page_size: usize) -> Result<(), PrpError> {
    if page_size.is_power_of_two() && (SMALLEST_PAGE_SIZE..=LARGEST_PAGE_SIZE).contains(&page_size) {
        Ok(())
    } else {
        Err(PrpError::InvalidPageSize { page_size })
    }
}

/// A transfer PRP entries cannot describe, or a PRP list placed where the controller would
/// misread it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// A transfer of 0 bytes: PRP entries describe at least one byte.
    Empty,
    /// Data not starting on a dword: PRP entry bits 1:0 are reserved (4.3.1).
    StartNotDwordAligned {
        /// Where the data starts.
        dma: u64,
    },
    /// A memory page size CC.MPS cannot encode.
    InvalidPageSize {
        /// The page size asked for, in bytes.
        page_size: usize,
    },
    /// More memory pages than PRP1 and one PRP list page can name.
    TooManyPages {
        /// Pages the transfer touches.
        pages: u64,
        /// The most PRP1 and one list page cover.
        limit: usize,
    },
    /// The transfer runs past the end of the 64-bit address space.
    AddressOverflow {
        /// Where the data starts.
        dma: u64,
        /// Its length in bytes.
        length: usize,
    },
    /// The PRP list memory given is too small for the entries needed.
    ListTooShort {
        /// Entries the list needs.
        needed: usize,
        /// Entries the memory holds.
        given: usize,
    },
    /// The transfer needs a PRP list (more than two pages) and none was given.
    ListMissing {
        /// Pages the transfer touches.
        pages: usize,
    },
    /// A PRP list not 8-byte aligned, as a list pointer must be (4.3.1).
    ListMisaligned {
        /// Where the list is.
        list_dma: u64,
    },
    /// A PRP list running past its memory page, where the controller would take the last
    /// entry for a pointer to the next list.
    ListCrossesPage {
        /// Where the list is.
        list_dma: u64,
        /// Its entries.
        entries: usize,
    },
}

impl fmt::Display for PrpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrpError::Empty => write!(f, "a transfer of 0 bytes: PRP entries describe at least one byte"),
            PrpError::StartNotDwordAligned { dma } => {
                write!(f, "data at {dma:#x} does not start on a dword: PRP entry bits 1:0 are reserved (4.3.1)")
            }
            PrpError::InvalidPageSize { page_size } => {
                write!(f, "a memory page of {page_size} bytes: CC.MPS allows powers of two from 4 KiB to 128 MiB")
            }
            PrpError::TooManyPages { pages, limit } => write!(
                f,
                "the transfer touches {pages} memory pages, but PRP1 and one PRP list page cover at most {limit}"
            ),
            PrpError::AddressOverflow { dma, length } => {
                write!(f, "{length} bytes at {dma:#x} run past the end of the 64-bit address space")
            }
            PrpError::ListTooShort { needed, given } => {
                write!(f, "the PRP list needs {needed} entries, but the memory given holds {given}")
            }
            PrpError::ListMissing { pages } => {
                write!(
                    f,
                    "the transfer touches {pages} memory pages, so PRP2 must point at a PRP list, but none was given"
                )
            }
            PrpError::ListMisaligned { list_dma } => {
                write!(f, "a PRP list at {list_dma:#x} is not 8-byte aligned, as a list pointer must be (4.3.1)")
            }
            PrpError::ListCrossesPage { list_dma, entries } => write!(
                f,
                "a PRP list of {entries} entries at {list_dma:#x} runs past the end of its memory page, where the \
                 controller would take the last entry for a pointer to the next list"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec;

    use proptest::prelude::*;

    use super::*;

    const PAGE: usize = 4096;
    const BASE: u64 = 0x4000_0000;

    fn plan(dma: u64, length: usize) -> PrpPlan {
        PrpPlan::new(dma, length, PAGE).unwrap()
    }

    #[test]
    fn one_page_from_its_start() {
        let plan = plan(BASE, PAGE);
        assert_eq!((plan.first(), plan.pages(), plan.list_entries()), (BASE, 1, 0));
        assert_eq!(plan.second(None), Ok(0));
        assert_eq!((plan.entry(0), plan.entry(1)), (Some(BASE), None));
    }

    #[test]
    fn one_page_from_an_offset_until_the_page_ends() {
        let plan = plan(BASE + 0xfa0, 0x60);
        assert_eq!((plan.first(), plan.pages()), (BASE + 0xfa0, 1));
        assert_eq!(plan.second(None), Ok(0));
        assert_eq!(PrpPlan::new(BASE + 0xfa0, 0x61, PAGE).unwrap().pages(), 2, "one byte more is in the next page");
    }

    #[test]
    fn exactly_two_pages_put_the_second_in_prp2() {
        let plan = plan(BASE, 2 * PAGE);
        assert_eq!((plan.pages(), plan.list_entries()), (2, 0));
        assert_eq!(plan.second(None), Ok(BASE + 0x1000));
    }

    #[test]
    fn an_offset_start_crosses_into_a_second_page() {
        let plan = plan(BASE + 0x7c8, PAGE);
        assert_eq!((plan.first(), plan.pages()), (BASE + 0x7c8, 2));
        assert_eq!(plan.second(Some(0x9000_0000)), Ok(BASE + 0x1000), "no list for two pages");
        assert_eq!(plan.entry(1), Some(BASE + 0x1000));
    }

    #[test]
    fn more_pages_need_a_list_of_consecutive_pages() {
        let plan = plan(BASE + 0xfa0, 252 * 1024);
        assert_eq!((plan.pages(), plan.list_entries()), (64, 63));
        let mut list = vec![0u64; PAGE / 8];
        plan.write_list(&mut list).unwrap();
        for (index, &entry) in list[..63].iter().enumerate() {
            assert_eq!(u64::from_le(entry), BASE + 0x1000 * (index as u64 + 1), "list entry {index}");
            assert_eq!(Some(u64::from_le(entry)), plan.entry(index + 1));
        }
        assert!(list[63..].iter().all(|&entry| entry == 0), "nothing written past the list");
        assert_eq!(plan.entry(63), Some(BASE + 0x3_f000));
        assert_eq!(plan.second(Some(0x9000_0000)), Ok(0x9000_0000));
        assert_eq!(plan.second(None), Err(PrpError::ListMissing { pages: 64 }));
    }

    #[test]
    fn the_list_must_be_long_enough_aligned_and_inside_its_page() {
        let plan = plan(BASE, 64 * PAGE);
        let mut short = [0u64; 62];
        assert_eq!(plan.write_list(&mut short), Err(PrpError::ListTooShort { needed: 63, given: 62 }));
        assert_eq!(short, [0; 62], "nothing written on refusal");
        assert_eq!(plan.second(Some(0x9000_0004)), Err(PrpError::ListMisaligned { list_dma: 0x9000_0004 }));
        let ends_on_page_end = 0x9000_1000 - 63 * 8;
        assert_eq!(plan.second(Some(ends_on_page_end)), Ok(ends_on_page_end));
        assert_eq!(
            plan.second(Some(ends_on_page_end + 8)),
            Err(PrpError::ListCrossesPage { list_dma: ends_on_page_end + 8, entries: 63 })
        );
    }

    #[test]
    fn the_maximum_fits_at_every_offset_and_one_byte_past_each_offsets_limit_does_not() {
        for page_size in [PAGE, 16 * 1024, 64 * 1024] {
            let maximum = max_prp_transfer(page_size);
            let limit = pages_per_list_page(page_size);
            for offset in (0..page_size).step_by(4) {
                let dma = BASE + offset as u64;
                let at_maximum = PrpPlan::new(dma, maximum, page_size).unwrap();
                assert_eq!(at_maximum.pages(), if offset == 0 { limit - 1 } else { limit });
                let tight = limit * page_size - offset;
                assert_eq!(PrpPlan::new(dma, tight, page_size).unwrap().pages(), limit);
                assert_eq!(
                    PrpPlan::new(dma, tight + 1, page_size),
                    Err(PrpError::TooManyPages { pages: limit as u64 + 1, limit })
                );
            }
        }
    }

    #[test]
    fn max_prp_transfer_is_a_list_page_of_pages() {
        assert_eq!(max_prp_transfer(PAGE), 2 * 1024 * 1024);
        assert_eq!(max_prp_transfer(64 * 1024), 512 * 1024 * 1024);
    }

    #[test]
    fn a_start_off_a_dword_is_refused() {
        for dma in [BASE + 1, BASE + 2, BASE + 0x7c9, BASE + 0xffe] {
            assert_eq!(PrpPlan::new(dma, 512, PAGE), Err(PrpError::StartNotDwordAligned { dma }));
        }
    }

    #[test]
    fn empty_transfers_bad_page_sizes_and_the_end_of_memory_are_refused() {
        assert_eq!(PrpPlan::new(BASE, 0, PAGE), Err(PrpError::Empty));
        for page_size in [0, 2048, 3000, 6144, 1 << 28] {
            assert_eq!(PrpPlan::new(BASE, 512, page_size), Err(PrpError::InvalidPageSize { page_size }));
        }
        let last_dword = u64::MAX - 3;
        assert_eq!(plan(last_dword, 4).pages(), 1);
        assert_eq!(PrpPlan::new(last_dword, 5, PAGE), Err(PrpError::AddressOverflow { dma: last_dword, length: 5 }));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            format!("{}", PrpPlan::new(BASE, 514 * PAGE, PAGE).unwrap_err()),
            "the transfer touches 514 memory pages, but PRP1 and one PRP list page cover at most 513"
        );
        assert_eq!(
            format!("{}", PrpError::StartNotDwordAligned { dma: 0x4000_0002 }),
            "data at 0x40000002 does not start on a dword: PRP entry bits 1:0 are reserved (4.3.1)"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Each page's piece runs from its entry to the end of that page (or of the data); laid
        /// end to end the pieces cover exactly [dma, dma + length). Lengths go up to one page
        /// past the limit, so that refusals are checked too.
        #[test]
        fn the_pages_cover_exactly_the_transfer(
            page_size in proptest::sample::select(vec![PAGE, 16 * 1024, 64 * 1024]),
            dword in 0u64..(1 << 46),
            length_seed in any::<usize>(),
        ) {
            let dma = dword * 4;
            let limit = pages_per_list_page(page_size);
            let length = 1 + length_seed % ((limit + 1) * page_size);
            let end = dma + length as u64;
            let touched = (end - 1) / page_size as u64 - dma / page_size as u64 + 1;
            let plan = match PrpPlan::new(dma, length, page_size) {
                Ok(plan) => plan,
                Err(refusal) => {
                    prop_assert!(touched > limit as u64);
                    prop_assert_eq!(refusal, PrpError::TooManyPages { pages: touched, limit });
                    return Ok(());
                }
            };
            prop_assert_eq!(plan.pages() as u64, touched);
            let mut covered = dma;
            for index in 0..plan.pages() {
                let entry = plan.entry(index).unwrap();
                prop_assert_eq!(entry, covered, "page {} does not continue where the last ended", index);
                prop_assert!(index == 0 || entry % page_size as u64 == 0, "entry {} has an offset", index);
                covered = ((entry / page_size as u64 + 1) * page_size as u64).min(end);
            }
            prop_assert_eq!(covered, end);
            prop_assert_eq!(plan.entry(plan.pages()), None);
            let mut list = vec![0u64; page_size / 8];
            plan.write_list(&mut list).unwrap();
            for (index, &entry) in list[..plan.list_entries()].iter().enumerate() {
                prop_assert_eq!(Some(u64::from_le(entry)), plan.entry(index + 1));
            }
        }
    }
}
