//! Boot found the machine the devicetree describes.

use drivers::mini_uart::MiniUart;
use drivers::pl011::Pl011;

use crate::machine;
use crate::testing::{ensure, kernel_test, skip};

kernel_test! {
    /// The kernel recorded the exception level it was entered at; `cargo xtask test` (and
    /// `cargo xtask qemu --test`) boot at EL1 or EL2 and say which with `test.entry-el=N`.
    fn entered_at_the_expected_exception_level() {
        let machine = machine();
        let expected = machine.devicetree.bootargs().split_whitespace()
            .find_map(|word| word.strip_prefix("test.entry-el="));
        let Some(expected) = expected else {
            skip!("no test.entry-el=N on the command line: nothing to compare the entry level with")
        };
        let entered = alloc::format!("{}", machine.boot.entry_el);
        ensure!(entered == expected, "entered at EL{entered}, expected EL{expected}");
        Ok(())
    }
}

kernel_test! {
    /// The generic timer runs: a known frequency and a counter that moves forward.
    fn generic_timer_counts_forward() {
        ensure!(arch::timer::frequency() > 0, "CNTFRQ_EL0 is zero");
        let first = arch::timer::ticks();
        let mut later = arch::timer::ticks();
        while later == first {
            core::hint::spin_loop();
            later = arch::timer::ticks();
        }
        ensure!(later > first, "counter went from {first} to {later}");
        Ok(())
    }
}

kernel_test! {
    /// The devicetree's console is the one in use, and it is mapped as device memory.
    fn console_comes_from_stdout_path_and_is_device_memory() {
        let console = machine().devicetree.stdout().map_err(|e| alloc::format!("{e}"))?.ok_or("no stdout-path")?;
        let has_driver = [Pl011::COMPATIBLE, MiniUart::COMPATIBLE].iter().any(|driver| console.is_compatible(driver));
        ensure!(has_driver, "stdout is {}, which has no driver", console.name);
        let registers = console.regs.first().ok_or("console has no reg")?;
        let mapped = (0..64u64)
            .map(|page| addr::VirtAddr::new(arch::layout::DEVICE_WINDOW_BASE + page * 4096))
            .filter_map(arch::mmu::walk)
            .find(|translation| translation.output == registers.start().align_down(4096));
        let translation = mapped.ok_or("console registers not in the device window")?;
        ensure!(translation.attributes.memory == vmsa::MemoryType::Device, "console mapped as {:?}", translation.attributes.memory);
        Ok(())
    }
}
