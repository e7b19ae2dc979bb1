//! The kernel's translation tables once it runs at virtual addresses: the linear map of RAM,
//! the device window, and the questions tests ask of both.
//!
//! Every table lives in a fixed pool of frames inside the image, so mapping never needs the
//! heap (which itself lives in the linear map). Tables are only ever extended: an invalid
//! entry becomes valid, which needs no break-before-make and no TLB invalidation, only a
//! barrier so that the table walker sees the new entry before the first access through it
//! (Arm ARM D8.2.4, "Ordering of memory accesses from translation table walks").

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::*;
use addr::{PhysAddr, PhysRange, VirtAddr};
use spin::Mutex;
use vmsa::{Access, Attributes, Granule, MemoryType, PageTable, TableMemory, Translation};

use crate::boot::BootState;
use crate::layout;

/// Frames for every kernel translation table: boot tables, linear map, device window.
const FRAME_COUNT: usize = 64;

#[repr(C, align(4096))]
pub(crate) struct Frame([u8; 4096]);

#[unsafe(link_section = ".bss.boot_tables")]
pub(crate) static mut BOOT_FRAMES: [Frame; FRAME_COUNT] = [const { Frame([0; 4096]) }; FRAME_COUNT];

/// Hands out frames of [`BOOT_FRAMES`] in order; they are never freed.
pub(crate) struct FramePool {
    first: PhysAddr,
    used: usize,
    /// Add to a frame's physical address to get a pointer the CPU can use now.
    pointer_offset: u64,
}

impl FramePool {
    /// # Safety
    /// `first` is the physical address of [`BOOT_FRAMES`], of which the first `used` frames
    /// are taken, and frame memory is reachable at physical address + `pointer_offset`.
    pub(crate) unsafe fn new(first: PhysAddr, used: usize, pointer_offset: u64) -> Self {
        Self { first, used, pointer_offset }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl TableMemory for FramePool {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        if self.used == FRAME_COUNT {
            return None;
        }
        let table = self.first.add(self.used as u64 * layout::PAGE_SIZE);
        self.used += 1;
        // SAFETY: a frame of the pool not handed out before.
        unsafe { core::ptr::write_bytes(self.table_pointer(table), 0, 512) };
        Some(table)
    }

    fn table_pointer(&self, table: PhysAddr) -> *mut u64 {
        table.as_u64().wrapping_add(self.pointer_offset) as *mut u64
    }
}

struct KernelTables {
    tables: PageTable<FramePool>,
    /// Next free address in the device window.
    next_device: u64,
    /// Next free address in the stack window.
    next_stack: u64,
}

static KERNEL_TABLES: Mutex<Option<KernelTables>> = Mutex::new(None);

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The page tables refused (an overlap, no table memory).
    Tables(vmsa::Error),
    /// The physical range lies beyond what the linear map reaches.
    BeyondLinearMap(PhysRange),
    /// The device window has no room left.
    DeviceWindowFull,
    /// The stack window has no room left.
    StackWindowFull,
}

impl From<vmsa::Error> for MapError {
    fn from(error: vmsa::Error) -> Self {
        MapError::Tables(error)
    }
}

/// Takes over the tables the boot code built (called once, from `__virtual_entry`).
pub(crate) fn adopt_boot_tables(state: &BootState) {
    let image_virtual = layout::KERNEL_IMAGE_BASE;
    let pointer_offset = image_virtual.wrapping_sub(state.image_start);
    let frames_virtual = &raw mut BOOT_FRAMES as u64;
    let frames_physical = PhysAddr::new(frames_virtual.wrapping_sub(pointer_offset));
    // SAFETY: the boot code took `frames_used` frames of BOOT_FRAMES, which the image mapping
    // makes reachable at physical + pointer_offset.
    let frames = unsafe { FramePool::new(frames_physical, state.frames_used as usize, pointer_offset) };
    // SAFETY: the boot code built a 4 KiB-granule, 48-bit tree at this root from these frames.
    let tables =
        unsafe { PageTable::from_root(PhysAddr::new(state.kernel_tables), Granule::Size4KiB, layout::VA_BITS, frames) };
    *KERNEL_TABLES.lock() =
        Some(KernelTables { tables, next_device: layout::DEVICE_WINDOW_BASE, next_stack: layout::STACK_WINDOW_BASE });
}

fn with_tables<R>(action: impl FnOnce(&mut KernelTables) -> R) -> R {
    let mut guard = KERNEL_TABLES.lock();
    action(guard.as_mut().expect("kernel tables adopted at boot"))
}

/// Adds RAM to the linear map, never executable. `memory` is `Normal` for RAM the kernel
/// uses, `NormalNonCacheable` for memory shared with devices that do not snoop the caches.
pub fn map_linear(ram: PhysRange, memory: MemoryType, access: Access) -> Result<(), MapError> {
    if ram.end().as_u64() > layout::LINEAR_MAP_SIZE {
        return Err(MapError::BeyondLinearMap(ram));
    }
    let attributes = Attributes::new(memory, access, false);
    let virtual_start = layout::phys_to_virt(ram.start()).as_u64();
    with_tables(|kernel| kernel.tables.map(virtual_start, ram.start(), ram.size(), attributes))?;
    publish_new_entries();
    Ok(())
}

/// Maps MMIO registers into the device window (the kernel's `ioremap`): Device-nGnRE, so
/// accesses are neither cached, merged nor reordered.
pub fn map_device(registers: PhysRange) -> Result<VirtAddr, MapError> {
    let start = registers.start().align_down(layout::PAGE_SIZE);
    let end = registers.end().align_up(layout::PAGE_SIZE).ok_or(MapError::DeviceWindowFull)?;
    let size = end.offset_from(start).unwrap_or(0);
    let window = with_tables(|kernel| {
        // Placing the window on the block alignment the registers have lets large regions (a
        // 256 MiB PCIe ECAM) use 2 MiB blocks instead of thousands of pages and tables.
        let block = 1u64 << Granule::Size4KiB.level_shift(2);
        let alignment = if size >= block && start.as_u64().is_multiple_of(block) { block } else { layout::PAGE_SIZE };
        let window = kernel.next_device.next_multiple_of(alignment);
        if window + size > layout::DEVICE_WINDOW_BASE + layout::DEVICE_WINDOW_SIZE {
            return Err(MapError::DeviceWindowFull);
        }
        let attributes = Attributes::new(MemoryType::Device, Access::ReadWrite, false);
        kernel.tables.map(window, start, size, attributes)?;
        kernel.next_device = window + size;
        Ok(window)
    })?;
    publish_new_entries();
    let offset = registers.start().offset_from(start).unwrap_or(0);
    Ok(VirtAddr::new(window + offset))
}

/// Maps `memory` (RAM, page-aligned) as a stack in the stack window, read-write, never
/// executable, with one unmapped page below it, as the boot stack has: an overflow faults
/// there instead of overwriting whatever lies below. Returns the stack's lowest address.
pub fn map_stack(memory: PhysRange) -> Result<VirtAddr, MapError> {
    let size = memory.size().next_multiple_of(layout::PAGE_SIZE);
    let bottom = with_tables(|kernel| {
        // The guard page is the one skipped.
        let bottom = kernel.next_stack + layout::PAGE_SIZE;
        if bottom + size > layout::STACK_WINDOW_BASE + layout::STACK_WINDOW_SIZE {
            return Err(MapError::StackWindowFull);
        }
        let attributes = Attributes::new(MemoryType::Normal, Access::ReadWrite, false);
        kernel.tables.map(bottom, memory.start(), size, attributes)?;
        kernel.next_stack = bottom + size;
        Ok(bottom)
    })?;
    publish_new_entries();
    Ok(VirtAddr::new(bottom))
}

/// Stops translating the lower half: the identity map of the image was only for boot.
pub fn drop_identity_map() {
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    barrier::isb(barrier::SY);
    invalidate_tlb();
}

/// What the kernel's tables say about `address`, read by walking them in software.
pub fn walk(address: VirtAddr) -> Option<Translation> {
    with_tables(|kernel| kernel.tables.translate(address.as_u64()))
}

/// What the MMU says about `address`: the `AT S1E1R`/`AT S1E1W` instruction translates it
/// exactly as a load or store would, and reports the result in `PAR_EL1`.
pub fn translate_in_hardware(address: VirtAddr, for_write: bool) -> Option<PhysAddr> {
    // SAFETY: address translation instructions have no effect beyond PAR_EL1.
    unsafe {
        if for_write {
            core::arch::asm!("at s1e1w, {}", in(reg) address.as_u64(), options(nostack));
        } else {
            core::arch::asm!("at s1e1r, {}", in(reg) address.as_u64(), options(nostack));
        }
    }
    barrier::isb(barrier::SY);
    if PAR_EL1.is_set(PAR_EL1::F) {
        return None;
    }
    let page = PAR_EL1.read(PAR_EL1::PA) << 12;
    Some(PhysAddr::new(page | (address.as_u64() & (layout::PAGE_SIZE - 1))))
}

/// Makes entries written to live tables visible to the table walker.
fn publish_new_entries() {
    barrier::dsb(barrier::ISHST);
    barrier::isb(barrier::SY);
}

pub(crate) fn invalidate_tlb() {
    // SAFETY: invalidating every EL1 TLB entry of this CPU only costs refills.
    unsafe { core::arch::asm!("tlbi vmalle1", "dsb nsh", "isb", options(nostack)) };
}
