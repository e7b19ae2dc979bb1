//! Each cache maintenance operation of the DMA API, and the named test that fails without it.
//!
//! The simulated machine can switch one operation off ([`Machine::skip`]): the API still asks
//! for it, and the platform does nothing, as if the call were deleted. For each operation,
//! `every_maintenance_operation_is_needed` switches it off and checks that the test named for
//! it in [`CATCHERS`] fails — so none of these tests can pass by accident, and none of the
//! operations is dead weight. Each is checked on the two routes that lend buffers in place to a
//! device that does not snoop: direct, and behind a trusted IOMMU (bounced routes copy through
//! uncached pools and need no maintenance).

mod common;

use common::{pattern, rigs};
use dma::sim::Machine;
use dma::{DmaDevice, Maintenance};

type Catcher = fn(&'static Machine, &DmaDevice<Machine>) -> Result<(), String>;

/// Every maintenance operation, the test that fails without it, and that test's name.
const CATCHERS: [(Maintenance, &str, Catcher); 5] = [
    (
        Maintenance::MapClean,
        "map_clean_lets_the_device_read_what_the_cpu_wrote",
        map_clean_lets_the_device_read_what_the_cpu_wrote,
    ),
    (
        Maintenance::MapClean,
        "map_clean_keeps_evictions_from_overwriting_the_device",
        map_clean_keeps_evictions_from_overwriting_the_device,
    ),
    (
        Maintenance::UnmapInvalidate,
        "unmap_invalidate_shows_the_cpu_what_the_device_wrote",
        unmap_invalidate_shows_the_cpu_what_the_device_wrote,
    ),
    (
        Maintenance::SyncForCpuInvalidate,
        "sync_for_cpu_shows_the_device_writes_so_far",
        sync_for_cpu_shows_the_device_writes_so_far,
    ),
    (
        Maintenance::SyncForDeviceClean,
        "sync_for_device_shows_the_device_the_cpu_writes",
        sync_for_device_shows_the_device_the_cpu_writes,
    ),
];

/// The CPU wrote the buffer (the lines are dirty); the device must read those bytes.
fn map_clean_lets_the_device_read_what_the_cpu_wrote(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
) -> Result<(), String> {
    let buffer = machine.buffer(4096, 4096);
    buffer.copy_from_slice(&pattern(4096, 1));
    let mapping = device.map_to_device(buffer).map_err(|error| error.to_string())?;
    let read = machine.device_read(device, mapping.dma(), 4096).map_err(|fault| fault.to_string())?;
    (read == pattern(4096, 1)).then_some(()).ok_or_else(|| "the device read memory's stale bytes, not the CPU's".into())
}

/// The CPU's dirty lines, evicted during a transfer from the device, must not land on it.
fn map_clean_keeps_evictions_from_overwriting_the_device(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
) -> Result<(), String> {
    let buffer = machine.buffer(4096, 4096);
    buffer.fill(0x5a);
    let mapping = device.map_from_device(buffer).map_err(|error| error.to_string())?;
    machine.device_write(device, mapping.dma(), &pattern(4096, 2)).map_err(|fault| fault.to_string())?;
    machine.evict_all(); // memory pressure during the transfer
    mapping.unmap().map_err(|error| error.to_string())?;
    (buffer == pattern(4096, 2).as_slice())
        .then_some(())
        .ok_or_else(|| "dirty lines evicted during the transfer overwrote what the device wrote".into())
}

/// The CPU had the buffer's lines cached (it read them, or fetched them speculatively); after
/// unmap it must read the device's bytes.
fn unmap_invalidate_shows_the_cpu_what_the_device_wrote(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
) -> Result<(), String> {
    let buffer = machine.buffer(4096, 4096);
    let mapping = device.map_from_device(buffer).map_err(|error| error.to_string())?;
    machine.speculate(machine.ram()); // the CPU fetches ahead, during the transfer
    machine.device_write(device, mapping.dma(), &pattern(4096, 3)).map_err(|fault| fault.to_string())?;
    mapping.unmap().map_err(|error| error.to_string())?;
    (buffer == pattern(4096, 3).as_slice())
        .then_some(())
        .ok_or_else(|| "the CPU read stale cached bytes after unmap".into())
}

/// A look at a live mapping (a status word the device wrote) must show the device's bytes.
fn sync_for_cpu_shows_the_device_writes_so_far(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
) -> Result<(), String> {
    let buffer = machine.buffer(4096, 4096);
    let mapping = device.map_from_device(buffer).map_err(|error| error.to_string())?;
    machine.speculate(machine.ram());
    machine.device_write(device, mapping.dma(), &pattern(4096, 4)).map_err(|fault| fault.to_string())?;
    let mut seen = vec![0; 256];
    mapping.read(1024, &mut seen).map_err(|error| error.to_string())?;
    (seen == pattern(4096, 4)[1024..1280]).then_some(()).ok_or_else(|| "sync_for_cpu showed stale cached bytes".into())
}

/// A write to a live bidirectional mapping must reach the device.
fn sync_for_device_shows_the_device_the_cpu_writes(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
) -> Result<(), String> {
    let buffer = machine.buffer(4096, 4096);
    let mut mapping = device.map_bidirectional(buffer).map_err(|error| error.to_string())?;
    mapping.write(512, &pattern(512, 5)).map_err(|error| error.to_string())?;
    let read = machine.device_read(device, mapping.dma().add(512), 512).map_err(|fault| fault.to_string())?;
    (read == pattern(512, 5)).then_some(()).ok_or_else(|| "the device read stale memory after sync_for_device".into())
}

/// Runs `catcher` on the direct and the trusted-IOMMU devices of a machine whose devices do not
/// snoop, with `skipped` switched off; the first failure.
fn run(catcher: Catcher, skipped: Option<Maintenance>) -> Result<(), String> {
    let (machine, rigs) = rigs(false, 7);
    machine.skip(skipped);
    let in_place = rigs.iter().filter(|rig| {
        rig.label == "direct, in reach" || rig.label.ends_with("trusted") && !rig.label.ends_with("untrusted")
    });
    for rig in in_place {
        catcher(machine, rig.device).map_err(|error| format!("{}: {error}", rig.label))?;
    }
    Ok(())
}

#[test]
fn map_clean_lets_the_device_read_what_the_cpu_wrote_on_every_in_place_route() {
    run(map_clean_lets_the_device_read_what_the_cpu_wrote, None).unwrap();
}

#[test]
fn map_clean_keeps_evictions_from_overwriting_the_device_on_every_in_place_route() {
    run(map_clean_keeps_evictions_from_overwriting_the_device, None).unwrap();
}

#[test]
fn unmap_invalidate_shows_the_cpu_what_the_device_wrote_on_every_in_place_route() {
    run(unmap_invalidate_shows_the_cpu_what_the_device_wrote, None).unwrap();
}

#[test]
fn sync_for_cpu_shows_the_device_writes_so_far_on_every_in_place_route() {
    run(sync_for_cpu_shows_the_device_writes_so_far, None).unwrap();
}

#[test]
fn sync_for_device_shows_the_device_the_cpu_writes_on_every_in_place_route() {
    run(sync_for_device_shows_the_device_the_cpu_writes, None).unwrap();
}

#[test]
fn every_maintenance_operation_is_needed() {
    for operation in Maintenance::ALL {
        let catchers: Vec<_> = CATCHERS.iter().filter(|(needed, _, _)| *needed == operation).collect();
        assert!(!catchers.is_empty(), "no test is named for {operation}");
        for (_, name, catcher) in catchers {
            assert!(run(*catcher, Some(operation)).is_err(), "{name} still passes without the {operation}");
        }
    }
}

#[test]
fn the_api_asks_for_exactly_the_operations_a_transfer_needs() {
    let (machine, rigs) = rigs(false, 3);
    let device = rigs[0].device;
    let buffer = machine.buffer(4096, 4096);
    let physical = machine.physical_of(buffer);
    let mapping = device.map_from_device(buffer).unwrap();
    let mut seen = [0; 64];
    mapping.read(0, &mut seen).unwrap();
    mapping.unmap().unwrap();
    let first_line = addr::PhysRange::new(physical.start(), 64).unwrap();
    assert_eq!(
        machine.take_maintenance(),
        vec![
            (Maintenance::MapClean, physical),
            (Maintenance::SyncForCpuInvalidate, first_line),
            (Maintenance::UnmapInvalidate, physical)
        ]
    );
    let to_device = machine.buffer(4096, 4096);
    device.map_to_device(to_device).unwrap().unmap().unwrap();
    assert_eq!(
        machine.take_maintenance(),
        vec![(Maintenance::MapClean, machine.physical_of(to_device))],
        "an invalidate after a transfer to the device"
    );
}
