//! The GIC, the timer's interrupt, sleeping with `WFI`, and interrupts nobody asked for.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::interrupts;
use crate::testing::{ensure, kernel_test};

/// How long a test waits for an interrupt that should come at once.
const PROMPTLY: Duration = Duration::from_millis(100);

kernel_test! {
    /// The devicetree's GIC is running and its timer interrupt is a PPI (INTID 16-31: private
    /// to each CPU), which the boot check saw arrive, so waits sleep instead of polling.
    fn the_gic_is_started_and_the_timer_interrupt_arrives() {
        ensure!(interrupts::started(), "no interrupt controller was started");
        let timer = interrupts::timer_interrupt().ok_or("the devicetree names no timer interrupt")?;
        ensure!((16..32).contains(&timer.intid()), "the timer's interrupt {timer} is not a PPI");
        ensure!(interrupts::timer_interrupts() >= 1, "the timer's interrupt never arrived");
        ensure!(interrupts::waits_sleep(), "waits poll: the boot check did not see the timer interrupt");
        Ok(())
    }
}

kernel_test! {
    /// A wait with nothing to wait for sleeps (`WFI`) until its deadline, and it is the timer's
    /// interrupt that ends the sleep: the count of timer interrupts goes up, and no earlier
    /// than the deadline.
    fn a_sleep_is_ended_by_the_timer_interrupt() {
        let before = interrupts::timer_interrupts();
        let started = arch::timer::uptime();
        let sleep = Duration::from_millis(3);
        let done = interrupts::wait_for(sleep, || false);
        let slept = arch::timer::uptime() - started;
        ensure!(!done, "a condition that never holds was reported as held");
        ensure!(slept >= sleep, "the wait ended after {slept:?}, before its deadline of {sleep:?}");
        let woken = interrupts::timer_interrupts() - before;
        ensure!(woken >= 1, "slept {slept:?} with no timer interrupt: the wait polled or never slept");
        Ok(())
    }
}

kernel_test! {
    /// A software-generated interrupt to this CPU reaches the handler registered for it, once;
    /// when the registration is dropped, the handler is gone.
    fn a_software_generated_interrupt_reaches_its_handler() {
        const SGI: u32 = 1;
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let registration = interrupts::register_intid(SGI, true, "test SGI", Box::new(move || {
            seen.fetch_add(1, Ordering::Release);
        })).map_err(|error| alloc::format!("{error}"))?;
        interrupts::raise_sgi_on_self(SGI).map_err(|error| alloc::format!("{error}"))?;
        let arrived = interrupts::wait_for(PROMPTLY, || count.load(Ordering::Acquire) == 1);
        ensure!(arrived, "SGI {SGI} did not reach its handler within {PROMPTLY:?}");
        ensure!(registration.delivered() == 1, "the handler ran {} times for one SGI", registration.delivered());
        Ok(())
    }
}

kernel_test! {
    /// An interrupt with no handler is acknowledged, ended and counted as unexpected, with its
    /// INTID; the kernel carries on, and the INTID can be registered and taken afterwards.
    fn an_interrupt_nobody_handles_is_counted_not_fatal() {
        const SGI: u32 = 2;
        let before = interrupts::statistics();
        interrupts::raise_sgi_on_self(SGI).map_err(|error| alloc::format!("{error}"))?;
        let counted = interrupts::wait_for(PROMPTLY, || interrupts::statistics().unexpected > before.unexpected);
        let after = interrupts::statistics();
        ensure!(counted, "SGI {SGI} with no handler was not counted as unexpected: {after:?}");
        ensure!(after.last_unexpected == Some(SGI), "the unexpected interrupt was recorded as {:?}", after.last_unexpected);
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let _registration = interrupts::register_intid(SGI, true, "test SGI, afterwards", Box::new(move || {
            seen.fetch_add(1, Ordering::Release);
        })).map_err(|error| alloc::format!("{error}"))?;
        interrupts::raise_sgi_on_self(SGI).map_err(|error| alloc::format!("{error}"))?;
        ensure!(interrupts::wait_for(PROMPTLY, || count.load(Ordering::Acquire) == 1), "SGI {SGI} was not taken once registered");
        Ok(())
    }
}

kernel_test! {
    /// Every disk's completions arrive by interrupt: a write and a read of one block each, and
    /// the disk's interrupt count goes up, with every byte read back as written. Under
    /// `kernel.poll` the disks poll, and this says so.
    fn every_disk_completes_its_requests_by_interrupt() {
        if interrupts::polling() {
            crate::testing::skip!("drivers poll (kernel.poll, or no working timer interrupt to sleep on)");
        }
        let mut failures = alloc::vec::Vec::new();
        let mut disks = 0;
        crate::block::with_each_disk(|disk| {
            disks += 1;
            if let Err(problem) = completes_by_interrupt(disk) {
                failures.push(alloc::format!("{}: {problem}", disk.describe()));
            }
        });
        if disks == 0 {
            crate::testing::skip!("this machine has no disk");
        }
        ensure!(failures.is_empty(), "{}", failures.join("; "));
        Ok(())
    }
}

fn completes_by_interrupt(disk: &mut dyn crate::block::BlockDevice) -> Result<(), alloc::string::String> {
    let before = disk.interrupts_taken().ok_or("its completions are polled (kernel.poll, or no usable interrupt)")?;
    let block_size = disk.block_size();
    let written: alloc::vec::Vec<u8> = (0..block_size).map(|index| (index * 7 + 3) as u8).collect();
    let mut read = alloc::vec![0u8; block_size];
    crate::block::write(disk, 0, &written).map_err(|error| alloc::format!("write: {error}"))?;
    crate::block::read(disk, 0, &mut read).map_err(|error| alloc::format!("read: {error}"))?;
    ensure!(read == written, "the block read back differs from the one written");
    // One interrupt may signal both completions (the second can land while the line is still
    // masked from the first), so at least one. The driver may also have seen a completion in
    // memory before the interrupt that announces it was taken (it checks before it sleeps), so
    // the interrupt is given a moment.
    let taken = || disk.interrupts_taken().unwrap_or(before) - before;
    interrupts::wait_for(PROMPTLY, || taken() >= 1);
    ensure!(taken() >= 1, "no interrupt for two requests: their completions were not signalled");
    Ok(())
}

kernel_test! {
    /// A one-shot line takes its INTID alone: its handler masks the INTID for every device on
    /// it, and only its own driver unmasks. Another handler on the same INTID is refused while
    /// the line lives, and accepted once it is dropped.
    fn a_one_shot_line_takes_its_intid_alone() {
        use platform::interrupts::{GicInterrupt, InterruptKind, Trigger};
        // An SPI none of this kernel's drivers takes: QEMU `virt` wires its devices to SPIs
        // 1-47 and 74-77, and on a Raspberry Pi 4 the kernel takes only its DMA channel's.
        let unused = GicInterrupt { kind: InterruptKind::Spi, number: 100, trigger: Trigger::LevelHigh };
        let line = interrupts::Line::new(unused, "test line").map_err(|error| alloc::format!("{error}"))?;
        let second = interrupts::register(unused, "test sharer", Box::new(|| {}));
        ensure!(
            matches!(second, Err(interrupts::InterruptError::Shared { .. })),
            "a second handler joined the one-shot line on INTID {}",
            line.intid()
        );
        drop(line);
        let alone = interrupts::register(unused, "test handler, afterwards", Box::new(|| {}));
        ensure!(alone.is_ok(), "INTID {} stayed taken after its line was dropped", unused.intid());
        Ok(())
    }
}

kernel_test! {
    /// The ITS turns an event into its LPI: a DeviceID no PCI function has is given a table
    /// with one event mapped to a fresh LPI (MAPD, MAPTI), the LPI is enabled (its
    /// configuration byte, INV), and the ITS's own INT command raises the event, as a device's
    /// write of its EventID to `GITS_TRANSLATER` would. The handler runs once.
    fn an_its_event_reaches_its_lpi() {
        if crate::its::doorbell().is_none() {
            crate::testing::skip!("no GICv3 ITS on this machine");
        }
        // Bus 0xff is past every bus the host bridge enumerates.
        const DEVICE: u32 = 0xff00;
        let lpis = crate::its::add_device(DEVICE, 1)?;
        let lpi = *lpis.first().ok_or("no LPI was handed out")?;
        ensure!(lpi >= crate::its::FIRST_LPI, "LPI {lpi} is below 8192");
        let line = interrupts::Line::for_lpi(lpi, "test ITS event").map_err(|error| alloc::format!("{error}"))?;
        crate::its::raise(DEVICE, 0)?;
        let arrived = interrupts::wait_for(PROMPTLY, || line.fired() >= 1);
        ensure!(arrived, "LPI {lpi} did not arrive within {PROMPTLY:?} of the INT command");
        ensure!(line.fired() == 1, "LPI {lpi} fired {} times for one INT command", line.fired());
        Ok(())
    }
}

kernel_test! {
    /// An ITS event can be delivered to any CPU: moved (MOVI) to each online CPU's collection in
    /// turn and raised, its LPI is taken on that CPU, once. Each CPU turned its redistributor's
    /// LPIs on when it started, and mapped its collection; an LPI taken elsewhere, or not at
    /// all, would show a CPU whose part is missing.
    fn an_its_event_moved_to_a_cpu_is_taken_on_that_cpu() {
        if crate::its::doorbell().is_none() {
            crate::testing::skip!("no GICv3 ITS on this machine");
        }
        // Past every bus the host bridge enumerates, and not the other ITS test's device.
        const DEVICE: u32 = 0xfe00;
        const NOBODY: usize = usize::MAX;
        let lpi = *crate::its::add_device(DEVICE, 1)?.first().ok_or("no LPI was handed out")?;
        let taken = Arc::new(AtomicU64::new(0));
        let taken_on = Arc::new(core::sync::atomic::AtomicUsize::new(NOBODY));
        let (count, cpu_seen) = (taken.clone(), taken_on.clone());
        let handler = Box::new(move || {
            cpu_seen.store(arch::smp::this_cpu(), Ordering::Release);
            count.fetch_add(1, Ordering::Release);
        });
        let _registration =
            interrupts::register_intid(lpi, true, "test ITS event, moved", handler).map_err(|error| alloc::format!("{error}"))?;
        let cpus: alloc::vec::Vec<usize> =
            (0..crate::smp::listed()).filter(|&cpu| crate::smp::seen(cpu).is_some()).collect();
        for (round, &cpu) in cpus.iter().enumerate() {
            crate::its::move_to_cpu(lpi, cpu)?;
            crate::its::raise(DEVICE, 0)?;
            // Polled: the interrupt goes to another CPU, which would not wake this one.
            let started = arch::timer::uptime();
            while taken.load(Ordering::Acquire) <= round as u64 && arch::timer::uptime() - started < PROMPTLY {
                core::hint::spin_loop();
            }
            ensure!(taken.load(Ordering::Acquire) == round as u64 + 1, "LPI {lpi}, moved to CPU {cpu}, was not taken within {PROMPTLY:?}");
            let on = taken_on.load(Ordering::Acquire);
            ensure!(on == cpu, "LPI {lpi}, moved to CPU {cpu}, was taken on CPU {on}");
        }
        Ok(())
    }
}
