//! The kernel's virtual address space.
//!
//! The kernel lives in the upper half (`TTBR1_EL1`, addresses starting `0xffff`), in three
//! regions; the lower half (`TTBR0_EL1`) is unused once boot is done, so a stray low pointer
//! faults instead of reading something:
//!
//! ```text
//!  0xffff_0000_0000_0000  linear map: every byte of RAM at PA + LINEAR_MAP_BASE
//!  0xffff_fd00_0000_0000  stack window: the other CPUs' stacks, each above an unmapped page
//!  0xffff_fe00_0000_0000  device window: MMIO registers, mapped on demand, Device-nGnRE
//!  0xffff_ffff_8000_0000  kernel image (linker.ld), wherever it sits physically
//! ```
//!
//! So a physical address, the virtual address the kernel uses for it and (later) the DMA
//! address a device uses for it are three different numbers.

use addr::{PhysAddr, VirtAddr};
use vmsa::{Access, Attributes, MemoryType};

/// Input address width of both halves: `T0SZ = T1SZ = 64 - 48`.
pub const VA_BITS: u32 = 48;
/// The kernel's page size: the 4 KiB granule.
pub const PAGE_SIZE: u64 = 4096;
/// Where physical address 0 appears in the linear map.
pub const LINEAR_MAP_BASE: u64 = 0xffff_0000_0000_0000;
/// Physical addresses the linear map can reach (128 TiB).
pub const LINEAR_MAP_SIZE: u64 = 1 << 47;
/// Where the stacks of the CPUs started after boot are mapped, each above a guard page.
pub const STACK_WINDOW_BASE: u64 = 0xffff_fd00_0000_0000;
/// How much address space the stack window has.
pub const STACK_WINDOW_SIZE: u64 = 1 << 40;
/// Where device registers are mapped, on demand.
pub const DEVICE_WINDOW_BASE: u64 = 0xffff_fe00_0000_0000;
/// How much address space the device window has.
pub const DEVICE_WINDOW_SIZE: u64 = 1 << 40;
/// Must match `KERNEL_IMAGE_BASE` in `linker.ld`.
pub const KERNEL_IMAGE_BASE: u64 = 0xffff_ffff_8000_0000;

/// Where the kernel sees a byte of RAM.
pub const fn phys_to_virt(physical: PhysAddr) -> VirtAddr {
    VirtAddr::new(LINEAR_MAP_BASE + physical.as_u64())
}

/// The physical address behind a linear-map address; `None` for other addresses.
pub const fn linear_virt_to_phys(virtual_address: VirtAddr) -> Option<PhysAddr> {
    match virtual_address.as_u64().checked_sub(LINEAR_MAP_BASE) {
        Some(offset) if offset < LINEAR_MAP_SIZE => Some(PhysAddr::new(offset)),
        _ => None,
    }
}

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __boot_data_start: u8;
    static __boot_data_end: u8;
    static __boot_stack_guard: u8;
    static __boot_stack_bottom: u8;
    static __image_end: u8;
}

/// A part of the image with its own permissions, as offsets from the image start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Its name, for the boot log.
    pub name: &'static str,
    /// Where it starts, from the image's start.
    pub offset: u64,
    /// How many bytes.
    pub size: u64,
    /// How it is mapped.
    pub attributes: Attributes,
}

/// The image's sections, read from the linker's symbols.
#[derive(Debug, Clone, Copy)]
pub struct ImageLayout {
    start: u64,
    text_end: u64,
    rodata_end: u64,
    boot_data: (u64, u64),
    stack_guard: u64,
    stack_bottom: u64,
    end: u64,
}

impl ImageLayout {
    /// The layout at the addresses the code runs at: physical before the MMU is on, virtual
    /// after. Only the offsets are used, and those are the same in both.
    pub fn current() -> Self {
        let address = |symbol: *const u8| symbol as u64;
        Self {
            start: address(&raw const __image_start),
            text_end: address(&raw const __text_end),
            rodata_end: address(&raw const __rodata_end),
            boot_data: (address(&raw const __boot_data_start), address(&raw const __boot_data_end)),
            stack_guard: address(&raw const __boot_stack_guard),
            stack_bottom: address(&raw const __boot_stack_bottom),
            end: address(&raw const __image_end),
        }
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Text executable and read-only, read-only data not executable, writable data never
    /// executable (W^X), a guard page left unmapped below the boot stack.
    pub fn sections(&self) -> [Section; 4] {
        let code = Attributes::new(MemoryType::Normal, Access::ReadOnly, true);
        let constants = Attributes::new(MemoryType::Normal, Access::ReadOnly, false);
        let data = Attributes::new(MemoryType::Normal, Access::ReadWrite, false);
        [
            self.section(".text", self.start, self.text_end, code),
            self.section(".rodata", self.text_end, self.rodata_end, constants),
            self.section(".data .bss", self.rodata_end, self.stack_guard, data),
            self.section("boot stack", self.stack_bottom, self.end, data),
        ]
    }

    /// The page-aligned bytes below the boot stack that are deliberately not mapped.
    pub fn stack_guard(&self) -> Section {
        let none = Attributes::new(MemoryType::Normal, Access::ReadOnly, false);
        self.section("stack guard", self.stack_guard, self.stack_bottom, none)
    }

    /// Boot page tables and boot state: written before the MMU is on.
    pub fn boot_data(&self) -> Section {
        let data = Attributes::new(MemoryType::Normal, Access::ReadWrite, false);
        self.section("boot data", self.boot_data.0, self.boot_data.1, data)
    }

    fn section(&self, name: &'static str, start: u64, end: u64, attributes: Attributes) -> Section {
        Section { name, offset: start - self.start, size: end - start, attributes }
    }
}
