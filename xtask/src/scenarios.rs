//! Boots that go wrong on purpose: what a user meets on a machine nobody tuned the kernel for.
//!
//! Each scenario starts `virt` with one thing off (a restricted pool too small for some
//! requests, a network that never answers, a devicetree whose console does not exist, disks
//! with 4 KiB blocks and more of them) and checks that the kernel reports it in words and
//! carries on, or stops cleanly with a non-zero status: never a panic, a hang or silence.

use std::path::Path;
use std::time::Duration;

use crate::devicetree::{PoolForm, StdoutPath, MISSING_CONSOLE};
use crate::qemu::{self, IommuGranule, Machine, Network, Virt};
use crate::Result;

/// Longer than any wait the kernel bounds itself (5 s per device request), far shorter than a
/// hang would take to notice otherwise.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A 128 KiB restricted pool: some requests are refused, the demo carries on.
    SmallPool,
    /// A 16 KiB restricted pool: too small even for the devices' queues.
    TinyPool,
    /// A network card whose backend never takes a packet.
    SilentNetwork,
    /// `stdout-path` names a node that does not exist.
    MissingConsole,
    /// Three virtio-mmio disks and NVMe, all with 4 KiB blocks.
    ThreeLargeDisks,
}

/// What a scenario's console must show, and its exit status.
struct Expected {
    status: i32,
    lines: &'static [&'static str],
    summary: &'static str,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::SmallPool,
        Scenario::TinyPool,
        Scenario::SilentNetwork,
        Scenario::MissingConsole,
        Scenario::ThreeLargeDisks,
    ];

    /// How the documentation's log excerpts name it.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SmallPool => "small-pool",
            Scenario::TinyPool => "tiny-pool",
            Scenario::SilentNetwork => "silent-network",
            Scenario::MissingConsole => "missing-console",
            Scenario::ThreeLargeDisks => "three-large-disks",
        }
    }

    fn machine(self) -> Machine {
        let mut virt = Virt::standard(false, PoolForm::Static, None);
        match self {
            Scenario::SmallPool => virt.pool.size = 128 << 10,
            Scenario::TinyPool => virt.pool.size = 16 << 10,
            Scenario::SilentNetwork => virt.network = Network::Silent,
            Scenario::MissingConsole => virt.stdout = StdoutPath::Missing,
            Scenario::ThreeLargeDisks => {
                (virt.disks, virt.block_size, virt.iommu) = (3, 4096, Some(IommuGranule::Size4K));
            }
        }
        Machine::virt(virt, "cortex-a72")
    }

    fn expected(self) -> Expected {
        match self {
            Scenario::SmallPool => Expected {
                status: 1,
                lines: &["no space", "demo: network: 10.0.2.2 is at"],
                summary: "requests the pool cannot hold refused in words and counted; the demo carried on",
            },
            Scenario::TinyPool => Expected {
                status: 1,
                lines: &["not started", "powering off"],
                summary: "devices whose queues do not fit reported and skipped; clean stop",
            },
            Scenario::SilentNetwork => Expected {
                status: 1,
                lines: &["network", "powering off"],
                summary: "the unanswered network request ended in words within its time limit",
            },
            Scenario::MissingConsole => Expected {
                status: 1,
                lines: &[MISSING_CONSOLE],
                summary: "the console found by other means named the broken stdout-path; status 1",
            },
            Scenario::ThreeLargeDisks => Expected {
                status: 0,
                lines: &["disk0", "disk1", "disk2", "4096"],
                summary: "every disk written and read back in 4 KiB blocks",
            },
        }
    }

    /// Boots the scenario's demo and checks what it printed; a one-line summary, and the
    /// console.
    pub fn check(self, kernel: &Path) -> Result<(String, String)> {
        let machine = self.machine();
        println!("xtask: {} scenario on {}", self.name(), machine.name());
        let run = qemu::run_captured(&machine, kernel, "", SCENARIO_TIMEOUT)?;
        let expected = self.expected();
        if let Some(panic) = run.console.lines().find(|line| line.contains("kernel panic")) {
            return Err(format!("{}: the kernel panicked: {panic}", self.name()));
        }
        if let Some(missing) = expected.lines.iter().find(|text| !run.console.contains(*text)) {
            return Err(format!("{}: the console lacks \"{missing}\"", self.name()));
        }
        if run.exit_code != Some(expected.status) {
            return Err(format!("{}: QEMU exit status {:?}, expected {}", self.name(), run.exit_code, expected.status));
        }
        Ok((format!("{} ({}): {}", self.name(), machine.name(), expected.summary), run.console))
    }
}
