//! Faults are reported as what they are, and the harness can expect them.

use addr::VirtAddr;
use arch::exception::{Fault, Syndrome, probe_read};
use arch::layout::{ImageLayout, KERNEL_IMAGE_BASE, phys_to_virt};
use arch::mmu::walk;

use crate::machine;
use crate::testing::{ensure, kernel_test};

/// Reads `address` expecting a translation fault that names it.
fn ensure_unmapped(address: VirtAddr, what: &str) -> Result<Fault, alloc::string::String> {
    let fault = match probe_read(address) {
        Ok(value) => return Err(alloc::format!("{what} {address:?} is readable ({value:#x})")),
        Err(fault) => fault,
    };
    ensure!(fault.syndrome.is_data_abort_from_el1(), "{what}: {} instead of a data abort", fault.syndrome);
    ensure!(fault.address == address, "{what}: FAR {:?}, expected {address:?}", fault.address);
    ensure!(!fault.syndrome.is_write(), "{what}: a read reported as a write");
    match fault.syndrome.fault() {
        Some(translation @ Fault::Translation { .. }) => Ok(translation),
        other => Err(alloc::format!("{what}: {other:?} instead of a translation fault")),
    }
}

kernel_test! {
    /// Past the end of RAM nothing is mapped: a read there is a data abort, FAR holds the
    /// exact address, and the syndrome says translation fault.
    fn read_beyond_ram_is_a_data_abort_with_the_address_in_far() {
        let last_ram = *machine().memory.map.ram().last().ok_or("no RAM")?;
        let address = VirtAddr::new(phys_to_virt(last_ram.end()).as_u64() + 0x1238);
        ensure!(walk(address).is_none(), "{address:?} is mapped");
        ensure_unmapped(address, "beyond RAM")?;
        Ok(())
    }
}

kernel_test! {
    /// Once running high, the lower half is not translated at all: a null-ish pointer and the
    /// boot identity map both fault at level 0.
    fn lower_half_is_unmapped_after_boot() {
        for (address, what) in [(VirtAddr::new(0x1000), "a low address"),
                                (VirtAddr::new(machine().boot.image.start().as_u64()), "the boot identity map")] {
            let fault = ensure_unmapped(address, what)?;
            ensure!(fault == Fault::Translation { level: 0 }, "{what}: {fault}, expected level 0");
        }
        Ok(())
    }
}

kernel_test! {
    /// The page below the boot stack is left unmapped, so an overflow faults.
    fn boot_stack_has_an_unmapped_guard_page() {
        let guard = ImageLayout::current().stack_guard();
        ensure!(guard.size == 4096, "guard is {} bytes", guard.size);
        ensure_unmapped(VirtAddr::new(KERNEL_IMAGE_BASE + guard.offset + 8), "the stack guard page")?;
        Ok(())
    }
}

kernel_test! {
    /// Syndromes are decoded into words for the crash report.
    fn syndromes_are_reported_in_words() {
        let cases = [
            (0x9600_0004, "data abort from EL1, translation fault at level 0, on a read"),
            (0x9600_004f, "data abort from EL1, permission fault at level 3, on a write"),
            (0x8600_0007, "instruction abort from EL1, translation fault at level 3"),
            (0x5600_0000, "SVC from AArch64"),
            (0xf200_0000, "BRK instruction"),
        ];
        for (esr, expected) in cases {
            let text = alloc::format!("{}", Syndrome(esr));
            ensure!(text == expected, "ESR {esr:#x}: \"{text}\", expected \"{expected}\"");
        }
        Ok(())
    }
}
