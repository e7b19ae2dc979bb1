//! Every route of the DMA API, for devices that snoop the caches and devices that do not, run
//! against the simulated machine's write-back cache with random evictions and speculative
//! fetches: every byte the device reads is what the CPU wrote, every byte it writes reaches the
//! CPU, and the bytes around the buffer — which the CPU keeps writing during the transfer —
//! survive (contract rule 13).

mod common;

use common::{BUSY, pattern, rigs, rigs_with_lines, with_neighbours};
use dma::sim::Machine;
use dma::{DmaDevice, Route};

/// Buffer placements: aligned, a few bytes off a line at either end, a page, across pages.
const SHAPES: [(usize, usize); 8] =
    [(0, 64), (8, 40), (0, 4096), (100, 3000), (4000, 200), (64, 8192), (13, 70_000), (0, 65_536)];

fn transfer_to_device(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
    offset: usize,
    len: usize,
    seed: u8,
) -> Result<(), String> {
    let (before, buffer, after) = with_neighbours(machine, offset, len);
    buffer.copy_from_slice(&pattern(len, seed));
    before.fill(0xb0);
    after.fill(0xaf);
    let mapping = device.map_to_device(buffer).map_err(|error| format!("map: {error}"))?;
    before.fill(0xb1); // the CPU goes on using the neighbours during the transfer
    after.fill(0xa1);
    let read = machine.device_read(device, mapping.dma(), len).map_err(|fault| format!("device read: {fault}"))?;
    machine.tick();
    mapping.unmap().map_err(|error| format!("unmap: {error}"))?;
    if read != pattern(len, seed) {
        let at = read.iter().zip(pattern(len, seed)).position(|(a, b)| *a != b).unwrap_or(0);
        return Err(format!("the device read other bytes than the CPU wrote, first at offset {at}"));
    }
    machine.evict_all();
    if before.iter().any(|&byte| byte != 0xb1) || after.iter().any(|&byte| byte != 0xa1) {
        return Err("the neighbours of the buffer lost the CPU's writes".into());
    }
    Ok(())
}

fn transfer_from_device(
    machine: &'static Machine,
    device: &DmaDevice<Machine>,
    offset: usize,
    len: usize,
    seed: u8,
) -> Result<(), String> {
    let (before, buffer, after) = with_neighbours(machine, offset, len);
    buffer.fill(0x5a); // stale CPU data, dirty in the cache
    let mapping = device.map_from_device(buffer).map_err(|error| format!("map: {error}"))?;
    before.fill(0xb1);
    after.fill(0xa1);
    machine
        .device_write(device, mapping.dma(), &pattern(len, seed))
        .map_err(|fault| format!("device write: {fault}"))?;
    machine.tick();
    mapping.unmap().map_err(|error| format!("unmap: {error}"))?;
    machine.tick();
    if buffer != pattern(len, seed).as_slice() {
        let at = buffer.iter().zip(pattern(len, seed)).position(|(a, b)| *a != b).unwrap_or(0);
        return Err(format!("the CPU reads other bytes than the device wrote, first at offset {at}"));
    }
    machine.evict_all();
    if buffer != pattern(len, seed).as_slice() {
        return Err("an eviction after the transfer overwrote the device's bytes".into());
    }
    if before.iter().any(|&byte| byte != 0xb1) || after.iter().any(|&byte| byte != 0xa1) {
        return Err("the neighbours of the buffer lost the CPU's writes".into());
    }
    Ok(())
}

fn every_route(coherent: bool, line: usize) {
    for seed in 1..=6u64 {
        let (machine, rigs) = rigs_with_lines(coherent, seed, line);
        machine.set_churn(BUSY);
        for rig in &rigs {
            for (shape, &(offset, len)) in SHAPES.iter().enumerate() {
                let tag = (seed as u8).wrapping_mul(17).wrapping_add(shape as u8);
                let context = |error: String| {
                    format!(
                        "{} (coherent: {coherent}, seed {seed}, {len} bytes at offset {offset}): {error}",
                        rig.label
                    )
                };
                transfer_to_device(machine, rig.device, offset, len, tag).map_err(context).unwrap();
                transfer_from_device(machine, rig.device, offset, len, tag).map_err(context).unwrap();
            }
            assert_eq!(machine.checker().live(rig.device.name), 0, "{}: mappings left", rig.label);
            assert_eq!(
                rig.device.audit_report().violations,
                0,
                "{}: the audit saw addresses outside the route",
                rig.label
            );
        }
        assert_eq!(machine.checker().take_reports(), vec![], "the debug checker saw mistakes");
    }
}

#[test]
fn every_route_moves_every_byte_for_devices_that_snoop() {
    every_route(true, 64);
}

#[test]
fn every_route_moves_every_byte_for_devices_that_do_not_snoop() {
    every_route(false, 64);
}

/// The line size is what the machine reports: with 128-byte lines (as on some Arm cores'
/// outer caches, and Apple's), a buffer that owns its 64-byte lines shares a 128-byte one.
#[test]
fn every_route_moves_every_byte_with_128_byte_cache_lines() {
    every_route(false, 128);
}

#[test]
fn buffers_that_own_their_lines_are_lent_in_place_and_others_bounce() {
    let (machine, rigs) = rigs(false, 1);
    let direct = &rigs[0];
    let Route::Direct { bounce: Some(pool), .. } = &direct.device.route else { panic!("rig 0 is direct") };
    let aligned = machine.buffer(128, 64);
    let (wide_machine, wide_rigs) = rigs_with_lines(false, 1, 128);
    let line_of_64 = &wide_machine.buffer(256, 128)[64..128];
    let wide_mapping = wide_rigs[0].device.map_to_device(line_of_64).unwrap();
    assert!(
        wide_rigs[0].device.bounce_pool().unwrap().holds(wide_mapping.dma(), 64),
        "64 bytes of a 128-byte line went in place"
    );
    drop(wide_mapping);
    let mapping = direct.device.map_to_device(aligned).unwrap();
    assert!(!pool.holds(mapping.dma(), 128), "a line-aligned buffer bounced");
    assert_eq!(direct.device.translate(mapping.dma()), Some(machine.physical_of(aligned).start()));
    drop(mapping);
    let shared = &machine.buffer(128, 64)[8..48];
    let mapping = direct.device.map_to_device(shared).unwrap();
    assert!(pool.holds(mapping.dma(), 40), "a buffer sharing its cache lines was lent in place");
}

#[test]
fn devices_that_snoop_take_unaligned_buffers_in_place() {
    let (machine, rigs) = rigs(true, 1);
    let direct = &rigs[0];
    let Route::Direct { bounce: Some(pool), .. } = &direct.device.route else { panic!("rig 0 is direct") };
    let shared = &machine.buffer(128, 64)[8..48];
    let mapping = direct.device.map_to_device(shared).unwrap();
    assert!(!pool.holds(mapping.dma(), 40), "a coherent device's buffer bounced for its cache lines");
    assert!(machine.take_maintenance().is_empty(), "maintenance for a device that snoops");
}
