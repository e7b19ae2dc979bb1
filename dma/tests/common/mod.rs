//! Every route of the DMA API, built on one simulated machine, for the host tests.
#![allow(dead_code)] // each test file uses part of it

use dma::sim::{Churn, Config, Machine};
use dma::{Constraints, DmaDevice, Route, Tracer};
use vmsa::Granule;

/// A device and the route it was built for.
pub struct Rig {
    pub label: &'static str,
    pub device: &'static DmaDevice<Machine>,
}

/// Devices see RAM at this offset from its physical address: bus and physical addresses are
/// different numbers, as on the Raspberry Pi 4.
pub const BUS_OFFSET: u64 = 0x1_0000_0000;

/// A machine with a device on every route, all snooping the caches or none.
pub fn rigs(coherent: bool, seed: u64) -> (&'static Machine, Vec<Rig>) {
    rigs_with_lines(coherent, seed, 64)
}

/// [`rigs`], on a machine whose cache lines are `line` bytes (`CTR_EL0.DminLine`).
pub fn rigs_with_lines(coherent: bool, seed: u64, line: usize) -> (&'static Machine, Vec<Rig>) {
    traced_rigs(coherent, seed, line, None)
}

/// [`rigs_with_lines`], every device traced by `tracer`.
pub fn traced_rigs(
    coherent: bool,
    seed: u64,
    line: usize,
    tracer: Option<&'static Tracer>,
) -> (&'static Machine, Vec<Rig>) {
    let device = |machine: &'static Machine, name, route, coherent| -> &'static DmaDevice<Machine> {
        let device = DmaDevice::new(name, route, coherent, Constraints::NONE, machine, Some(machine.checker()));
        Box::leak(Box::new(device.with_tracer(tracer)))
    };
    let machine = Machine::new(Config { size: 8 << 20, seed, line, ..Config::default() });
    let ram = machine.ram();
    let half = ram.size() / 2;
    let default_pool = machine.pool("swiotlb", 512 << 10, false, coherent, BUS_OFFSET);
    let restricted_pool = machine.pool("restricted", 512 << 10, true, coherent, BUS_OFFSET);
    let everywhere = Machine::windows(ram.start(), ram.size(), BUS_OFFSET, coherent);
    // The heap (every buffer) is the first half of RAM: a window over the second half only
    // leaves every buffer out of reach, and the pools within it.
    let upper = Machine::windows(ram.start().add(half), half, BUS_OFFSET, coherent);
    let mut rigs = vec![
        Rig {
            label: "direct, in reach",
            device: device(
                machine,
                "direct",
                Route::Direct { windows: everywhere.clone(), bounce: Some(default_pool) },
                coherent,
            ),
        },
        Rig {
            label: "direct, out of reach",
            device: device(machine, "far", Route::Direct { windows: upper, bounce: Some(default_pool) }, coherent),
        },
        Rig {
            label: "restricted pool",
            device: device(machine, "restricted", Route::Restricted(restricted_pool), coherent),
        },
    ];
    let granules = [(Granule::Size4KiB, "4K"), (Granule::Size16KiB, "16K"), (Granule::Size64KiB, "64K")];
    for (index, (granule, name)) in granules.into_iter().enumerate() {
        for untrusted in [false, true] {
            let id = (2 * index + usize::from(untrusted) + 1) as u16;
            let domain = machine.domain(id, granule, u64::MAX);
            let route = Route::Iommu { domain, untrusted, bounce: Some(default_pool) };
            let label: &'static str = Box::leak(
                format!("IOMMU {name}, {}", if untrusted { "untrusted" } else { "trusted" }).into_boxed_str(),
            );
            rigs.push(Rig { label, device: device(machine, label, route, coherent) });
        }
    }
    (machine, rigs)
}

/// The cache evicts and fetches on its own at most events.
pub const BUSY: Churn = Churn { evict: 300, speculate: 300 };

/// A recognisable byte pattern, different per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// A fresh buffer of `len` bytes, `offset` bytes into a page, with neighbours on both sides
/// that share its first and last cache lines: (bytes before, the buffer, bytes after).
pub fn with_neighbours(
    machine: &'static Machine,
    offset: usize,
    len: usize,
) -> (&'static mut [u8], &'static mut [u8], &'static mut [u8]) {
    let bytes = machine.buffer(offset + len + 128, 4096);
    let (before, rest) = bytes.split_at_mut(offset);
    let (buffer, after) = rest.split_at_mut(len);
    (before, buffer, after)
}
