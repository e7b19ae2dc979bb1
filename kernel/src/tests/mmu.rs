//! The kernel's mappings translate as designed, by the software walk and by the MMU itself.

use addr::{PhysAddr, VirtAddr};
use arch::exception::{Fault, probe_write};
use arch::layout::{ImageLayout, KERNEL_IMAGE_BASE, phys_to_virt};
use arch::mmu::{translate_in_hardware, walk};
use vmsa::{Access, MemoryType};

use crate::machine;
use crate::testing::{ensure, kernel_test};

static READ_ONLY_MARKER: u64 = 0x5eed_0fdd_ba11_cafe;
static WRITABLE_MARKER: spin::Mutex<u64> = spin::Mutex::new(0x0123_4567_89ab_cdef);

/// Checks that `virtual_address` reaches `expected`, by both the software walk and `AT`.
fn ensure_translates(virtual_address: VirtAddr, expected: PhysAddr) -> Result<(), alloc::string::String> {
    let walked = walk(virtual_address).map(|translation| translation.output);
    ensure!(walked == Some(expected), "{virtual_address:?}: tables say {walked:?}, expected {expected:?}");
    let hardware = translate_in_hardware(virtual_address, false);
    ensure!(hardware == Some(expected), "{virtual_address:?}: the MMU says {hardware:?}, expected {expected:?}");
    Ok(())
}

kernel_test! {
    /// All RAM the linear map covers is at `LINEAR_MAP_BASE + PA`: first, middle and last page
    /// of each range, checked by the table walk and by the MMU; the numbers differ.
    fn linear_map_translates_all_ram() {
        let machine = machine();
        let linear = machine.memory.map.linear_map(&[machine.boot.image, machine.boot.devicetree]).map_err(|e| alloc::format!("{e}"))?;
        ensure!(!linear.is_empty(), "nothing in the linear map");
        for piece in &linear {
            let range = piece.range;
            let middle = range.start().add(range.size() / 2).align_down(4096);
            let last = PhysAddr::new(range.end().as_u64() - 8);
            for physical in [range.start(), middle, last] {
                let virtual_address = phys_to_virt(physical);
                ensure!(virtual_address.as_u64() != physical.as_u64(), "virtual equals physical");
                ensure_translates(virtual_address, physical)?;
            }
        }
        Ok(())
    }
}

kernel_test! {
    /// The code runs at its link address in the upper half, and that address maps to where
    /// the loader put the image; the same byte is readable through the linear map alias.
    fn image_runs_at_its_link_address_and_maps_to_its_load_address() {
        let image = machine().boot.image;
        let code = VirtAddr::new(crate::kernel_main as fn(arch::BootInfo) -> ! as usize as u64);
        ensure!(code.as_u64() >= KERNEL_IMAGE_BASE, "kernel_main at {code:?}, below the image base");
        let offset = code.as_u64() - KERNEL_IMAGE_BASE;
        ensure_translates(code, image.start().add(offset))?;

        let marker = VirtAddr::from_ptr(&raw const READ_ONLY_MARKER);
        let physical = walk(marker).ok_or("marker not mapped")?.output;
        ensure!(image.contains(physical), "marker at {physical:?}, outside the image {image}");
        let alias = phys_to_virt(physical);
        // SAFETY: the linear map covers the image read-only; reading is allowed.
        let through_alias = unsafe { alias.as_ptr::<u64>().read_volatile() };
        ensure!(through_alias == READ_ONLY_MARKER, "alias {alias:?} reads {through_alias:#x}");
        Ok(())
    }
}

kernel_test! {
    /// W^X: text is executable and read-only, read-only data and writable data are not
    /// executable, and no page of the image is both writable and executable.
    fn image_sections_are_writable_xor_executable() {
        let layout = ImageLayout::current();
        for section in layout.sections() {
            let mut offset = section.offset;
            while offset < section.offset + section.size {
                let address = VirtAddr::new(KERNEL_IMAGE_BASE + offset);
                let attributes = walk(address).ok_or(alloc::format!("{address:?} in {} not mapped", section.name))?.attributes;
                ensure!(attributes == section.attributes, "{address:?} in {}: {attributes:?}", section.name);
                ensure!(!(attributes.executable && attributes.access == Access::ReadWrite), "{address:?} is W+X");
                ensure!(attributes.memory == MemoryType::Normal, "{address:?} is not normal memory");
                offset += 4096;
            }
        }
        Ok(())
    }
}

/// A write to `address` must be refused with a permission fault naming it.
fn ensure_write_refused(address: VirtAddr, what: &str) -> Result<(), alloc::string::String> {
    // SAFETY: the mapping is expected to refuse the write; if it did not, the test fails (and
    // the value written is the one already there, so nothing changes).
    let current = unsafe { address.as_ptr::<u64>().read_volatile() };
    // SAFETY: as above: the write puts back the value read, if it happens at all.
    let result = unsafe { probe_write(address, current) };
    let fault = match result {
        Ok(()) => return Err(alloc::format!("{what} at {address:?} is writable")),
        Err(fault) => fault,
    };
    ensure!(fault.address == address, "{what}: FAR {:?}, expected {address:?}", fault.address);
    ensure!(matches!(fault.syndrome.fault(), Some(Fault::Permission { .. })), "{what}: {}", fault.syndrome);
    ensure!(fault.syndrome.is_write(), "{what}: the abort does not say write");
    Ok(())
}

kernel_test! {
    /// Constants cannot be overwritten, neither at their own address nor through the linear
    /// map's alias of the image; the devicetree is read-only too.
    fn read_only_memory_refuses_writes_through_every_alias() {
        let constant = VirtAddr::from_ptr(&raw const READ_ONLY_MARKER);
        ensure_write_refused(constant, "a constant")?;
        let data = VirtAddr::from_ptr(&*WRITABLE_MARKER.lock() as *const u64);
        let data_physical = walk(data).ok_or("data not mapped")?.output;
        ensure!(walk(data).ok_or("data not mapped")?.attributes.access == Access::ReadWrite, "data is read-only");
        ensure_write_refused(phys_to_virt(data_physical), "the linear alias of kernel data")?;
        let devicetree = phys_to_virt(machine().boot.devicetree.start().align_down(8));
        Ok(ensure_write_refused(devicetree, "the devicetree")?)
    }
}
