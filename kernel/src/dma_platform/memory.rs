//! How the bounce pool reaches bytes: the kernel's own view of physical memory.
//!
//! The pool copies between a caller's buffer and its slots by physical address, so it needs
//! the virtual address where the kernel may read *and write* that byte. For most of RAM that is
//! the linear map. The kernel image is the exception: its linear alias is read-only (W^X), so
//! buffers inside the image (the boot stack, statics) are reached through the image mapping,
//! where data is writable and code is not. A device asked to write into kernel code therefore
//! faults the copy-back instead of patching the kernel.

use core::ptr::NonNull;

use addr::{PhysAddr, PhysRange, VirtAddr};
use dma::MemoryKind;
use swiotlb::PhysMemory;

/// The kernel's CPU window onto RAM: the image through its own mapping, the rest of RAM
/// through the linear map.
#[derive(Clone, Copy)]
pub struct KernelMemory {
    image: PhysRange,
    /// What the linear map covers, read-write (`no-map` holes and pools mapped apart excluded).
    ram: &'static [PhysRange],
}

impl KernelMemory {
    pub fn new(image: PhysRange, ram: &'static [PhysRange]) -> Self {
        Self { image, ram }
    }

    /// Where the kernel reads and writes `range`; `None` if it is not RAM the kernel maps.
    pub fn virt(&self, range: PhysRange) -> Option<VirtAddr> {
        if self.image.covers(&range) {
            let offset = range.start().offset_from(self.image.start())?;
            return Some(VirtAddr::new(arch::layout::KERNEL_IMAGE_BASE + offset));
        }
        let in_ram = self.ram.iter().any(|ram| ram.covers(&range));
        in_ram.then(|| arch::layout::phys_to_virt(range.start()))
    }

    /// What `range` is, for the DMA debug checker: the image's code and read-only data are
    /// not for DMA; the rest of the image (data, the boot stack) and the linear map are RAM.
    pub fn kind(&self, range: PhysRange) -> MemoryKind {
        let overlaps = |start: u64, size: u64| range.start().as_u64() < start + size && start < range.end().as_u64();
        let image = arch::layout::ImageLayout::current();
        for section in image.sections() {
            let start = self.image.start().as_u64() + section.offset;
            if overlaps(start, section.size) && section.attributes.access == vmsa::Access::ReadOnly {
                return if section.attributes.executable { MemoryKind::KernelCode } else { MemoryKind::KernelReadOnly };
            }
        }
        match self.virt(range) {
            Some(_) => MemoryKind::Ram,
            None => MemoryKind::NotMapped,
        }
    }
}

// SAFETY: `virt` only answers for the image (mapped for the kernel's lifetime) and for ranges
// of the linear map, which is never unmapped. Buffers handed to the DMA layer are reached only
// through raw pointers while they are mapped, as the driver contract requires.
unsafe impl PhysMemory for KernelMemory {
    fn window(&self, address: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let range = PhysRange::new(address, len as u64)?;
        NonNull::new(self.virt(range)?.as_mut_ptr())
    }

    unsafe fn copy(&self, source: *const u8, destination: *mut u8, len: usize) {
        // SAFETY: both lie in windows of the image or the linear map (the caller's promise),
        // which are Normal memory: what `arch::copy` needs.
        unsafe { arch::copy::copy(source, destination, len) }
    }
}
