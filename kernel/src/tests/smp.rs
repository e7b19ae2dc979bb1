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
