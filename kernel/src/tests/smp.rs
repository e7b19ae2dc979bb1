//! Every CPU: each one the devicetree lists, and can be started, runs the kernel.

use crate::testing::{ensure, kernel_test};
use platform::devicetree::CpuStart;

kernel_test! {
    /// Every CPU the devicetree lists with a way to start it that the machine has is online,
    /// and each reported the MPIDR the devicetree gives it: the one started is the one named.
    fn every_cpu_the_devicetree_lists_is_online() {
        let devicetree = &crate::machine().devicetree;
        let cpus = devicetree.cpu_list().map_err(|error| alloc::format!("{error}"))?;
        let psci = crate::power::psci().is_some();
        let startable = cpus.iter().filter(|cpu| match cpu.start {
            CpuStart::Psci => psci,
            CpuStart::SpinTable { .. } => true,
            CpuStart::None => false,
        });
        let me = arch::smp::this_cpu_mpidr();
        let expected = startable.filter(|cpu| cpu.mpidr != me).count() + 1;
        ensure!(
            crate::smp::online() == expected,
            "{} of {} CPUs online ({} startable)",
            crate::smp::online(),
            cpus.len(),
            expected
        );
        for (index, cpu) in cpus.iter().enumerate() {
            if let Some(seen) = crate::smp::seen(index) {
                ensure!(seen == cpu.mpidr, "{} (MPIDR {:#x}) reported MPIDR {seen:#x}", cpu.name, cpu.mpidr);
            }
        }
        Ok(())
    }
}

kernel_test! {
    /// Every CPU maps and unmaps through one bounce pool at the same time, each its own
    /// pattern, and checks its bounce copy while it holds it: a slot handed to two CPUs at once
    /// would show the other's bytes. Afterwards the pool is as full as before, the audit has
    /// seen no DMA address outside a live mapping, and every CPU did all its rounds.
    fn every_cpu_maps_and_unmaps_through_one_pool_at_once() {
        const ROUNDS: usize = 300;
        if crate::smp::online() < 2 {
            crate::testing::skip!("one CPU online");
        }
        let device = crate::tests::dma::restricted_device()?;
        let pool = device.bounce_pool().ok_or("the restricted device has no pool")?;
        let in_use = pool.bounce.stats().slots_in_use;
        let failures = spin::Mutex::new(alloc::vec::Vec::new());
        let rounds = core::sync::atomic::AtomicUsize::new(0);
        crate::smp::on_every_cpu(&|cpu| {
            for round in 0..ROUNDS {
                let data = crate::tests::virtio::pattern((cpu * 1000 + round) as u64, 512 + 64 * cpu + round % 7);
                let mapping = match device.map_to_device(&data) {
                    Ok(mapping) => mapping,
                    Err(error) => return failures.lock().push(alloc::format!("CPU {cpu} round {round}: {error}")),
                };
                let copy = crate::tests::dma::dma_to_pool_phys(mapping.dma());
                for _ in 0..50 {
                    core::hint::spin_loop();
                }
                if crate::tests::dma::bytes_at(copy, data.len()) != data {
                    failures.lock().push(alloc::format!("CPU {cpu} round {round}: its bounce copy at {copy} holds other bytes"));
                }
                if let Err(error) = mapping.unmap() {
                    failures.lock().push(alloc::format!("CPU {cpu} round {round}: unmap: {error}"));
                }
                rounds.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
        });
        let failures = failures.into_inner();
        ensure!(failures.is_empty(), "{} failures, first: {}", failures.len(), failures[0]);
        let done = rounds.into_inner();
        ensure!(done == ROUNDS * crate::smp::online(), "{done} rounds, not {ROUNDS} on each of {} CPUs", crate::smp::online());
        let now = pool.bounce.stats().slots_in_use;
        ensure!(now == in_use, "{now} slots in use afterwards, {in_use} before");
        ensure!(device.audit_report().violations == 0, "the audit saw DMA addresses outside live mappings");
        Ok(())
    }
}
