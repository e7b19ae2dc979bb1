//! Contract cases at the level of the DMA API, one named test each (the pool-level cases are in
//! `swiotlb/tests/regressions.rs`).

mod common;

use addr::PhysRange;
use dma::sim::{Config, Machine};
use dma::{Constraints, DmaApiError, Maintenance, Platform, Route};

/// R13's setup: a direct device that does not snoop; a 64-byte line of RAM, already used by
/// the CPU, in which the test places a 40-byte buffer 8 bytes in; the CPU goes on writing the
/// other 24 bytes during the transfer.
fn r13_setup(with_pool: bool) -> (&'static Machine, &'static mut [u8], &'static dma::DmaDevice<Machine>) {
    let machine = Machine::new(Config::default());
    let line = machine.buffer(64, 64);
    line.fill(0x11);
    let ram = machine.ram();
    let pool = with_pool.then(|| machine.pool("swiotlb", 64 << 10, false, false, 0));
    let windows = Machine::windows(ram.start(), ram.size(), 0, false);
    let device = machine.device("r13", Route::Direct { windows, bounce: pool }, false, Constraints::NONE);
    (machine, line, device)
}

const R13_OFFSET: usize = 8;
const R13_LEN: usize = 40;

#[test]
fn r13_a_buffer_sharing_a_cache_line_is_bounced_and_both_sides_survive() {
    let (machine, line, device) = r13_setup(true);
    let (head, rest) = line.split_at_mut(R13_OFFSET);
    let (buffer, tail) = rest.split_at_mut(R13_LEN);
    let mapping = device.map_from_device(buffer).unwrap();
    assert!(
        device.bounce_pool().unwrap().holds(mapping.dma(), R13_LEN as u64),
        "a {R13_LEN}-byte buffer sharing its cache line was lent in place to a device that does not snoop"
    );
    head.fill(0x22); // the CPU writes the neighbours during the transfer
    tail.fill(0x33);
    machine.device_write(device, mapping.dma(), &[0xdd; R13_LEN]).unwrap();
    machine.evict_all();
    mapping.unmap().unwrap();
    machine.evict_all();
    assert!(buffer.iter().all(|&byte| byte == 0xdd), "the device's data was lost");
    assert!(head.iter().all(|&byte| byte == 0x22) && tail.iter().all(|&byte| byte == 0x33), "the neighbours were lost");
}

#[test]
fn r13_without_a_pool_the_buffer_is_refused_with_the_reason() {
    let (machine, line, device) = r13_setup(false);
    let buffer = &line[R13_OFFSET..R13_OFFSET + R13_LEN];
    let physical = machine.physical_of(buffer);
    let error = device.map_to_device(buffer).map(|_| ()).unwrap_err().error();
    assert_eq!(error, DmaApiError::SharesCacheLine { buffer: physical, line: 64 });
    assert!(error.to_string().contains("shares a 64-byte cache line"), "{error}");
}

/// What lending the buffer in place would do, step by step through the same platform calls
/// the API makes for a buffer that owns its lines: the neighbours' bytes are lost.
#[test]
fn r13_in_place_the_model_loses_the_neighbours() {
    let (machine, line, device) = r13_setup(false);
    let buffer = PhysRange::new(machine.physical_of(line).start().add(R13_OFFSET as u64), R13_LEN as u64).unwrap();
    machine.clean(buffer, Maintenance::MapClean);
    line[..R13_OFFSET].fill(0x22); // the CPU writes a neighbour: the line is dirty again
    let dma = addr::DmaAddr::new(buffer.start().as_u64());
    machine.device_write(device, dma, &[0xdd; R13_LEN]).unwrap();
    machine.invalidate(buffer, Maintenance::UnmapInvalidate);
    assert!(line[R13_OFFSET..R13_OFFSET + R13_LEN].iter().all(|&byte| byte == 0xdd), "the device's bytes");
    assert!(
        line[..R13_OFFSET].iter().all(|&byte| byte == 0x11),
        "the invalidate should have thrown the neighbour's write away"
    );
    // Cleaning before invalidating (`DC CIVAC`, what Linux does to partial lines) loses the
    // other side: the stale line lands on the device's bytes.
    line[..R13_OFFSET].fill(0x22);
    machine.device_write(device, dma, &[0xee; R13_LEN]).unwrap();
    machine.clean_and_invalidate(buffer);
    assert!(
        line[R13_OFFSET..R13_OFFSET + R13_LEN].iter().all(|&byte| byte == 0xdd),
        "the device's new bytes survived a clean of a stale line"
    );
}
