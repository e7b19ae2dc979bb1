//! Boots that go wrong on purpose: what a user meets on a machine nobody tuned the kernel for.
//!
//! Each scenario starts `virt` with one thing off (a restricted pool too small for some
//! requests, a network that never answers, a devicetree whose console does not exist, disks
//! with 4 KiB blocks and more of them) and checks that the kernel reports it in words and
//! carries on, or stops cleanly with a non-zero status: never a panic, a hang or silence.

use std::path::Path;
use std::time::Duration;

use crate::Result;
use crate::devicetree::{MISSING_CONSOLE, PoolForm, StdoutPath};
use crate::qemu::{self, IommuGranule, Machine, Network, Virt};

/// Longer than any wait the kernel bounds itself (5 s per device request), far shorter than a
/// hang would take to notice otherwise.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A 64 KiB restricted pool, most of it the devices' queues: the demo's 64 KiB transfer is
    /// refused whole and runs again in shorter pieces.
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
        // What `cargo xtask qemu` boots, with the one thing changed that the book names.
        let mut virt = Virt::standard(false, PoolForm::Static, Some(IommuGranule::Size4K));
        match self {
            Scenario::SmallPool => virt.pool.size = 64 << 10,
            Scenario::TinyPool => virt.pool.size = 16 << 10,
            Scenario::SilentNetwork => virt.network = Network::Silent,
            Scenario::MissingConsole => virt.stdout = StdoutPath::Missing,
            Scenario::ThreeLargeDisks => {
                (virt.disks, virt.block_size) = (3, 4096);
            }
        }
        Machine::virt(virt, "cortex-a72")
    }

    fn expected(self) -> Expected {
        match self {
            Scenario::SmallPool => Expected {
                status: 0,
                lines: &[
                    "cannot map a 65536-byte buffer for the device, so nothing was submitted",
                    "the batch runs again in pieces of at most 32768 bytes",
                    "wrote and read back 64 KiB at block 8, identical",
                    "demo: network: 10.0.2.2 is at",
                ],
                summary: "a request the pool holds only in pieces refused whole in words, then run in shorter pieces",
            },
            Scenario::TinyPool => Expected {
                status: 0,
                lines: &[
                    "virtio-net0: its queues would take 16 KiB of the 16 KiB pool",
                    "not started: virtio-blk0: cannot reserve",
                ],
                summary: "devices whose queues do not fit reported and not started; the rest ran",
            },
            Scenario::SilentNetwork => Expected {
                status: 1,
                lines: &["the device did not complete the transmission within 1000 ms", "demo: 1 transfer(s) failed"],
                summary: "the unanswered transmission ended in words within its time limit",
            },
            Scenario::MissingConsole => Expected {
                status: 1,
                lines: &[MISSING_CONSOLE],
                summary: "the console found by other means named the broken stdout-path; status 1",
            },
            Scenario::ThreeLargeDisks => Expected {
                status: 0,
                lines: &[
                    "demo: block device virtio-blk0 (virtio_mmio@a003a00), 4096-byte blocks: wrote and read back",
                    "demo: block device virtio-blk1 (virtio_mmio@a003c00), 4096-byte blocks: wrote and read back",
                    "demo: block device virtio-blk2 (virtio_mmio@a003e00), 4096-byte blocks: wrote and read back",
                    "blocks of 4096 bytes",
                ],
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
