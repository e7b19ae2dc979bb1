//! From the loader's jump to `kernel_main`: the boot page tables and the switch to virtual
//! addresses.
//!
//! The image is linked at [`layout::KERNEL_IMAGE_BASE`] but loaded at whatever physical
//! address the loader chose. [`entry.s`](../entry.s) calls `__early_enable_mmu` with the MMU
//! off, so this code runs at the *physical* address of the image. That works because AArch64
//! code reaches functions and statics PC-relatively (`adrp`/`add`), which gives the right
//! answer wherever the code runs. What it must not do is follow a pointer stored in data
//! (formatting, trait objects, panics): those hold link-time (virtual) addresses. So this
//! code stays small, writes nothing but page tables and `BOOT_STATE`, and on failure parks.
//!
//! Two translation tables are built from a pool of frames inside the image:
//!
//! ```text
//!  TTBR1 (kernel half, kept)              TTBR0 (identity, dropped once running high)
//!  0xffff_ffff_8000_0000 image ─┐         image PA ──▶ image PA   (so that the instruction
//!     .text   read-only, exec   │                                 after "MMU on" is found)
//!     .rodata read-only         ├─▶ image PA
//!     .data/.bss read-write     │
//!     guard page (unmapped)     │
//!     boot stack read-write    ─┘
//!  0xffff_0000_0000_0000 + dtb  ──▶ devicetree PA, read-only
//! ```
//!
//! Once the kernel runs high it adds the rest of RAM to the linear map (see [`crate::mmu`]).

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::*;
use addr::{PhysAddr, PhysRange};
use vmsa::{Access, Attributes, Granule, MemoryType, PageTable};

use crate::layout::{self, ImageLayout};
use crate::mmu::{BOOT_FRAMES, FramePool};
use crate::power::park;

core::arch::global_asm!(include_str!("entry.s"));

/// What the boot code learnt, for `kernel_main`.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The exception level the loader entered the kernel at (1 or 2).
    pub entry_el: u8,
    /// Where the loader put the image.
    pub image: PhysRange,
    /// The devicetree blob; empty if `x0` did not point at one.
    pub devicetree: PhysRange,
}

/// Written before the MMU is on, read after; lives with the boot tables, outside `.bss`
/// (which is zeroed once the kernel runs high).
#[repr(C)]
pub(crate) struct BootState {
    pub(crate) kernel_tables: u64,
    pub(crate) frames_used: u64,
    pub(crate) image_start: u64,
    pub(crate) devicetree: u64,
    pub(crate) devicetree_size: u64,
    pub(crate) entry_el: u64,
}

#[unsafe(link_section = ".bss.boot_tables")]
pub(crate) static mut BOOT_STATE: BootState =
    BootState { kernel_tables: 0, frames_used: 0, image_start: 0, devicetree: 0, devicetree_size: 0, entry_el: 0 };

/// The largest devicetree the boot code maps; the specification's own limit is 2 MiB in practice.
const MAX_DEVICETREE_SIZE: u64 = 2 << 20;

unsafe extern "Rust" {
    /// The kernel's entry point, at virtual addresses with the linear map of the devicetree.
    fn kernel_main(boot: BootInfo) -> !;
}

/// Runs at the image's physical address with the MMU off; see the module documentation.
#[unsafe(no_mangle)]
unsafe extern "C" fn __early_enable_mmu(devicetree: u64, image_start: u64, entry_el: u64) {
    let image = ImageLayout::current();
    // SAFETY: nothing else runs yet; the pool frames are not in use.
    let mut frames = unsafe { FramePool::new(PhysAddr::new(&raw mut BOOT_FRAMES as u64), 0, 0) };
    let devicetree_size = devicetree_size(devicetree);

    let kernel_tables = match map_kernel_half(&mut frames, &image, image_start, devicetree, devicetree_size) {
        Some(root) => root,
        None => park(),
    };
    let identity = match map_identity(&mut frames, image_start, image.size()) {
        Some(root) => root,
        None => park(),
    };
    // SAFETY: single CPU, MMU off; BOOT_STATE is read only after this returns.
    unsafe {
        BOOT_STATE = BootState {
            kernel_tables: kernel_tables.as_u64(),
            frames_used: frames.used() as u64,
            image_start,
            devicetree,
            devicetree_size,
            entry_el,
        };
    }
    discard_stale_cache_lines(&image, image_start);
    enable_mmu(identity, kernel_tables);
}

fn map_kernel_half(
    frames: &mut FramePool,
    image: &ImageLayout,
    image_start: u64,
    devicetree: u64,
    devicetree_size: u64,
) -> Option<PhysAddr> {
    let mut tables = PageTable::new(Granule::Size4KiB, layout::VA_BITS, &mut *frames).ok()?;
    for section in image.sections() {
        let physical = PhysAddr::new(image_start + section.offset);
        tables.map(layout::KERNEL_IMAGE_BASE + section.offset, physical, section.size, section.attributes).ok()?;
    }
    if devicetree_size > 0 {
        let start = PhysAddr::new(devicetree).align_down(layout::PAGE_SIZE);
        let end = PhysAddr::new(devicetree + devicetree_size).align_up(layout::PAGE_SIZE)?;
        let size = end.offset_from(start)?;
        let read_only = Attributes::new(MemoryType::Normal, Access::ReadOnly, false);
        tables.map(layout::phys_to_virt(start).as_u64(), start, size, read_only).ok()?;
    }
    Some(tables.root())
}

/// The image mapped at its own physical address, so that execution continues across the
/// instruction that turns the MMU on.
fn map_identity(frames: &mut FramePool, image_start: u64, image_size: u64) -> Option<PhysAddr> {
    let mut tables = PageTable::new(Granule::Size4KiB, layout::VA_BITS, &mut *frames).ok()?;
    let everything = Attributes::new(MemoryType::Normal, Access::ReadWrite, true);
    tables.map(image_start, PhysAddr::new(image_start), image_size, everything).ok()?;
    Some(tables.root())
}

/// Reads the devicetree header's size field at a physical address: 0 if it is not a devicetree.
///
/// Only enough of the header to map the blob: its magic and `totalsize`, the first two
/// big-endian words (Devicetree Specification v0.4, 5.2 "Header"). Everything else is checked
/// by `platform::devicetree` once the kernel runs.
fn devicetree_size(devicetree: u64) -> u64 {
    const MAGIC: u32 = 0xd00d_feed;
    if devicetree == 0 || !devicetree.is_multiple_of(8) {
        return 0;
    }
    let header = devicetree as *const u8;
    // Bytes are read one by one: the blob is big-endian.
    let mut bytes = [0u8; 8];
    for (index, byte) in bytes.iter_mut().enumerate() {
        // SAFETY: the boot protocol says x0 holds the devicetree's address; the MMU is off, so
        // any 8-byte-aligned RAM address is readable, and these are its first 8 bytes.
        *byte = unsafe { header.add(index).read_volatile() };
    }
    let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    match (word(0), u64::from(word(4))) {
        (MAGIC, size) if size <= MAX_DEVICETREE_SIZE => size,
        _ => 0,
    }
}

/// The tables, the boot state and the stack were written with the caches off. Lines for those
/// addresses left in the caches by the loader would hide the new contents once the caches are
/// on, so they are invalidated (Arm ARM D7.5.9, "Data and unified caches").
fn discard_stale_cache_lines(image: &ImageLayout, image_start: u64) {
    let boot_data = image.boot_data();
    crate::cache::invalidate_to_poc(image_start + boot_data.offset, boot_data.size);
}

fn enable_mmu(identity: PhysAddr, kernel: PhysAddr) {
    MAIR_EL1.set(vmsa::MAIR);
    TTBR0_EL1.set_baddr(identity.as_u64());
    TTBR1_EL1.set_baddr(kernel.as_u64());
    let physical_address_size = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101);
    let va_size = u64::from(64 - layout::VA_BITS);
    TCR_EL1.write(
        TCR_EL1::IPS.val(physical_address_size)
            + TCR_EL1::TG1::KiB_4
            + TCR_EL1::SH1::Inner
            + TCR_EL1::ORGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::IRGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::T1SZ.val(va_size)
            + TCR_EL1::TG0::KiB_4
            + TCR_EL1::SH0::Inner
            + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::T0SZ.val(va_size),
    );
    barrier::isb(barrier::SY);
    crate::mmu::invalidate_tlb();
    SCTLR_EL1.modify(SCTLR_EL1::M::Enable + SCTLR_EL1::C::Cacheable + SCTLR_EL1::I::Cacheable);
    barrier::isb(barrier::SY);
}

/// The first Rust code at virtual addresses: `.bss` is zero and the vectors are installed.
#[unsafe(no_mangle)]
extern "C" fn __virtual_entry() -> ! {
    // SAFETY: written before the MMU was turned on, never written again.
    let state = unsafe { (&raw const BOOT_STATE).read() };
    let image = ImageLayout::current();
    crate::mmu::adopt_boot_tables(&state);
    // `TPIDR_EL1` resets to an unknown value; the kernel renumbers the boot CPU once it has
    // read the devicetree's list.
    crate::smp::set_this_cpu(0);
    let boot = BootInfo {
        entry_el: state.entry_el as u8,
        image: PhysRange::new(PhysAddr::new(state.image_start), image.size()).unwrap_or_else(|| park()),
        devicetree: PhysRange::new(PhysAddr::new(state.devicetree), state.devicetree_size).unwrap_or_else(|| park()),
    };
    // SAFETY: the kernel defines `kernel_main` with this signature.
    unsafe { kernel_main(boot) }
}
