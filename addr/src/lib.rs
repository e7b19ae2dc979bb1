//! Typed addresses.
//!
//! One byte of RAM has up to three different numbers in this kernel, and mixing them up is the
//! classic DMA bug:
//!
//! ```text
//!   CPU instruction ──VirtAddr──▶ MMU ──PhysAddr──▶ memory ◀──PhysAddr── IOMMU / bus ◀──DmaAddr── device
//! ```
//!
//! - [`VirtAddr`]: what the CPU's load and store instructions use. The MMU translates it. In this
//!   kernel all RAM is reachable at `VirtAddr = PhysAddr + LINEAR_OFFSET` (the linear map), and
//!   the kernel image runs from its own, separate, virtual range.
//! - [`PhysAddr`]: what the memory system sees after the MMU. The devicetree speaks in physical
//!   addresses (`/memory`, `reg` of devices).
//! - [`DmaAddr`]: what a device puts on the bus. It equals the physical address only for a device
//!   with no IOMMU in front of it and no bus offset (`dma-ranges`). Behind an IOMMU it is an IOVA;
//!   on a Raspberry Pi 4 the legacy DMA engine sees RAM at `0xC000_0000 + PhysAddr`.
//!
//! The three are distinct types so that the compiler refuses to hand a CPU address to a device.
//! Converting between them is the job of the code that knows the translation (the linear map,
//! the bus offset, the IOMMU page tables), never of an `as` cast.
#![no_std]

use core::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address `value`; any 64-bit number is one (no check: what it points at is the
            /// caller's business).
            pub const fn new(value: u64) -> Self {
                Self(value)
            }

            /// The address as a plain number, for arithmetic and registers.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The address `offset` bytes further on, or `None` if that wraps past 2^64.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(value) => Some(Self(value)),
                    None => None,
                }
            }

            /// The address `offset` bytes further on.
            ///
            /// # Panics
            /// On overflow, which is a kernel bug: callers with untrusted input use
            /// [`Self::checked_add`].
            pub const fn add(self, offset: u64) -> Self {
                match self.checked_add(offset) {
                    Some(address) => address,
                    None => panic!("address overflow"),
                }
            }

            /// How many bytes `self` lies above `base`, or `None` if it lies below.
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Round down to a multiple of `align`, which must be a power of two.
            pub const fn align_down(self, align: u64) -> Self {
                debug_assert!(align.is_power_of_two());
                Self(self.0 & !(align - 1))
            }

            /// Round up to a multiple of `align` (a power of two), or `None` on overflow.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                debug_assert!(align.is_power_of_two());
                match self.0.checked_add(align - 1) {
                    Some(value) => Some(Self(value & !(align - 1))),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($tag, " {:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// An address in the physical address space (after the MMU, before any IOMMU).
    PhysAddr,
    "PA"
);
address_type!(
    /// An address as the CPU uses it, translated by the MMU.
    VirtAddr,
    "VA"
);
address_type!(
    /// An address as a device uses it on the bus: physical plus a bus offset, or an IOVA.
    DmaAddr,
    "DMA"
);

impl VirtAddr {
    /// The address a pointer holds.
    pub fn from_ptr<T>(pointer: *const T) -> Self {
        Self(pointer as usize as u64)
    }

    /// The address as a pointer, for reading (using it is `unsafe`, as for any raw pointer).
    pub const fn as_ptr<T>(self) -> *const T {
        self.0 as usize as *const T
    }

    /// The address as a pointer, for writing.
    pub const fn as_mut_ptr<T>(self) -> *mut T {
        self.0 as usize as *mut T
    }
}

/// A half-open range `[start, start + size)` of physical memory.
///
/// The end is kept implicit so that a range reaching the very top of the address space can
/// still be described; [`PhysRange::new`] refuses ranges that would wrap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysRange {
    start: PhysAddr,
    size: u64,
}

impl PhysRange {
    /// The range `[start, start + size)`, or `None` if it wraps past the top of the address space.
    pub const fn new(start: PhysAddr, size: u64) -> Option<Self> {
        match start.as_u64().checked_add(size) {
            Some(_) => Some(Self { start, size }),
            None => None,
        }
    }

    /// The range `[start, end)`, or `None` if `end < start`.
    pub const fn from_bounds(start: PhysAddr, end: PhysAddr) -> Option<Self> {
        match end.offset_from(start) {
            Some(size) => Some(Self { start, size }),
            None => None,
        }
    }

    /// The first byte.
    pub const fn start(&self) -> PhysAddr {
        self.start
    }

    /// How many bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// One past the last byte.
    pub const fn end(&self) -> PhysAddr {
        PhysAddr::new(self.start.as_u64() + self.size)
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether `address` lies inside.
    pub const fn contains(&self, address: PhysAddr) -> bool {
        address.as_u64() >= self.start.as_u64() && address.as_u64() < self.end().as_u64()
    }

    /// Whether every byte of `other` is inside `self`.
    pub const fn covers(&self, other: &PhysRange) -> bool {
        other.start.as_u64() >= self.start.as_u64() && other.end().as_u64() <= self.end().as_u64()
    }

    /// Whether the two ranges share a byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.as_u64() < other.end().as_u64() && other.start.as_u64() < self.end().as_u64()
    }

    /// The bytes both ranges share, if any.
    pub fn intersection(&self, other: &PhysRange) -> Option<PhysRange> {
        let start = self.start.max(other.start);
        let end = self.end().min(other.end());
        (start < end).then(|| PhysRange { start, size: end.as_u64() - start.as_u64() })
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#012x}..{:#012x})", self.start.as_u64(), self.end().as_u64())
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, size: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), size).unwrap()
    }

    #[test]
    fn alignment_rounds_the_right_way() {
        let address = PhysAddr::new(0x4000_1234);
        assert_eq!(address.align_down(0x1000), PhysAddr::new(0x4000_1000));
        assert_eq!(address.align_up(0x1000), Some(PhysAddr::new(0x4000_2000)));
        assert_eq!(PhysAddr::new(u64::MAX).align_up(0x1000), None);
        assert!(PhysAddr::new(0x4000_0000).is_aligned(1 << 30));
    }

    #[test]
    fn ranges_refuse_to_wrap() {
        assert!(PhysRange::new(PhysAddr::new(u64::MAX), 2).is_none());
        assert!(PhysRange::from_bounds(PhysAddr::new(10), PhysAddr::new(5)).is_none());
        assert_eq!(range(u64::MAX - 9, 9).end(), PhysAddr::new(u64::MAX));
    }

    #[test]
    fn overlap_and_intersection_agree() {
        let a = range(0x1000, 0x2000);
        let b = range(0x2000, 0x2000);
        let c = range(0x3000, 0x1000);
        assert!(a.overlaps(&b));
        assert_eq!(a.intersection(&b), Some(range(0x2000, 0x1000)));
        assert!(!a.overlaps(&c), "ranges that only touch do not overlap");
        assert_eq!(a.intersection(&c), None);
        assert!(a.covers(&range(0x1000, 0x2000)));
        assert!(!a.covers(&b));
    }

    #[test]
    fn debug_output_names_the_address_space() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{:?}", PhysAddr::new(0x4000)), "PA 0x4000");
        assert_eq!(format!("{:?}", DmaAddr::new(0xc000_0000)), "DMA 0xc0000000");
        assert_eq!(format!("{:?}", VirtAddr::new(0x10)), "VA 0x10");
    }
}
