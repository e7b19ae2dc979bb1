//! The DMA debug checker: each mistake it knows, provoked on purpose, and the words it reports.

mod common;

use addr::{DmaAddr, PhysRange};
use dma::debug::{Problem, Report, SyncKind};
use dma::sim::{Config, Machine};
use dma::{Constraints, DmaDevice, DmaDirection, MemoryKind, Route};

fn setup() -> (&'static Machine, &'static DmaDevice<Machine>) {
    let machine = Machine::new(Config::default());
    let ram = machine.ram();
    let pool = machine.pool("swiotlb", 64 << 10, false, false, 0);
    let windows = Machine::windows(ram.start(), ram.size(), 0, false);
    (machine, machine.device("disk0", Route::Direct { windows, bounce: Some(pool) }, false, Constraints::NONE))
}

/// The one report the checker holds, in words that name the device.
fn only_report(machine: &'static Machine) -> Report {
    let reports = machine.checker().take_reports();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = reports[0];
    assert!(report.to_string().starts_with("DMA debug: disk0: "), "{report}");
    report
}

#[test]
fn unmap_of_something_never_mapped_is_reported() {
    let (machine, device) = setup();
    let buffer = machine.physical_of(machine.buffer(4096, 4096));
    let dma = DmaAddr::new(buffer.start().as_u64());
    // SAFETY: on purpose, a mistake: nothing was mapped. The buffer is the test's own.
    let _ = unsafe { device.unmap(dma, buffer, DmaDirection::FromDevice) };
    let report = only_report(machine);
    assert_eq!(report.problem, Problem::UnknownMapping { call: "unmap", dma, size: 4096 });
    assert!(report.to_string().contains("unmap of 4096 bytes at"), "{report}");
}

#[test]
fn sync_of_something_never_mapped_is_reported() {
    let (machine, device) = setup();
    let buffer = machine.physical_of(machine.buffer(4096, 4096));
    let dma = DmaAddr::new(buffer.start().as_u64());
    // SAFETY: on purpose, a mistake: nothing was mapped. The buffer is the test's own.
    let _ = unsafe { device.sync_for_cpu(dma, buffer) };
    assert_eq!(only_report(machine).problem, Problem::UnknownMapping { call: "sync_for_cpu", dma, size: 4096 });
}

#[test]
fn unmap_with_another_size_or_direction_is_reported() {
    let (machine, device) = setup();
    let buffer = machine.physical_of(machine.buffer(4096, 4096));
    // SAFETY: the test's own buffer, not touched while mapped.
    let dma = unsafe { device.map(buffer, DmaDirection::FromDevice) }.unwrap();
    let half = PhysRange::new(buffer.start(), 2048).unwrap();
    // SAFETY: on purpose, a mistake: the size differs from the map's.
    let _ = unsafe { device.unmap(dma, half, DmaDirection::FromDevice) };
    assert_eq!(only_report(machine).problem, Problem::SizeMismatch { dma, mapped: 4096, unmapped: 2048 });
    // SAFETY: as above.
    let dma = unsafe { device.map(buffer, DmaDirection::FromDevice) }.unwrap();
    // SAFETY: on purpose, a mistake: the direction differs from the map's.
    let _ = unsafe { device.unmap(dma, buffer, DmaDirection::ToDevice) };
    let report = only_report(machine);
    let problem =
        Problem::DirectionMismatch { dma, mapped: DmaDirection::FromDevice, unmapped: DmaDirection::ToDevice };
    assert_eq!(report.problem, problem);
    assert!(report.to_string().contains("it was mapped from-device"), "{report}");
}

#[test]
fn an_unmap_the_iommu_refuses_leaves_the_mapping_on_record() {
    let (machine, rigs) = common::rigs(true, 1);
    let rig = rigs.iter().find(|rig| rig.label == "IOMMU 4K, trusted").unwrap();
    let buffer = machine.physical_of(machine.buffer(4096, 4096));
    // SAFETY: the test's own buffer, not touched while mapped.
    let dma = unsafe { rig.device.map(buffer, DmaDirection::ToDevice) }.unwrap();
    let half = PhysRange::new(buffer.start(), 2048).unwrap();
    // SAFETY: on purpose, a mistake: the size differs; the domain refuses it.
    assert!(unsafe { rig.device.unmap(dma, half, DmaDirection::ToDevice) }.is_err());
    // SAFETY: the mapping made above, still live.
    unsafe { rig.device.unmap(dma, buffer, DmaDirection::ToDevice) }.unwrap();
    let reports = machine.checker().take_reports();
    assert_eq!(reports.len(), 1, "only the wrong size is a mistake: {reports:#?}");
    assert!(matches!(reports[0].problem, Problem::SizeMismatch { .. }));
}

#[test]
fn a_sync_the_direction_cannot_need_is_reported() {
    let (machine, device) = setup();
    let buffer = machine.physical_of(machine.buffer(4096, 4096));
    // SAFETY: the test's own buffer, not touched while mapped.
    let dma = unsafe { device.map(buffer, DmaDirection::ToDevice) }.unwrap();
    // SAFETY: a live mapping; the mistake is the direction.
    unsafe { device.sync_for_cpu(dma, buffer) }.unwrap();
    let report = only_report(machine);
    assert_eq!(report.problem, Problem::SyncDirection { dma, mapped: DmaDirection::ToDevice, sync: SyncKind::ForCpu });
    assert!(report.to_string().contains("the device never writes it"), "{report}");
    // SAFETY: the mapping made above.
    unsafe { device.unmap(dma, buffer, DmaDirection::ToDevice) }.unwrap();
}

#[test]
fn mapping_memory_that_is_not_for_dma_is_reported() {
    for kind in [MemoryKind::KernelCode, MemoryKind::KernelReadOnly, MemoryKind::OtherStack, MemoryKind::Mmio] {
        let (machine, device) = setup();
        let bytes = machine.buffer(4096, 4096);
        let buffer = machine.physical_of(bytes);
        machine.mark(buffer, kind);
        drop(device.map_to_device(bytes).unwrap());
        let report = only_report(machine);
        assert_eq!(report.problem, Problem::NotDmaMemory { buffer, kind });
        assert!(report.to_string().contains(&format!("which is {kind}, not memory for DMA")), "{report}");
    }
}

#[test]
fn two_mappings_in_one_cache_line_of_a_device_that_does_not_snoop_are_reported() {
    let (machine, device) = setup();
    let bytes = machine.buffer(4096, 4096);
    let first = device.map_to_device(bytes).unwrap();
    let second = device.map_to_device(&bytes[..64]).unwrap();
    let report = only_report(machine);
    let buffer = machine.physical_of(&bytes[..64]);
    assert_eq!(
        report.problem,
        Problem::SharedCacheLine { buffer, other: machine.physical_of(bytes), other_device: "disk0" }
    );
    drop((first, second));
}

#[test]
fn mappings_still_live_when_the_device_stops_are_reported_as_leaks() {
    let (machine, device) = setup();
    let bytes = machine.buffer(4096, 4096);
    let coherent = device.alloc_coherent(4096).unwrap();
    let mapping = device.map_from_device(bytes).unwrap();
    let made_at = line!() - 1;
    core::mem::forget(mapping); // the driver lost track of it
    core::mem::forget(coherent);
    device.stopped();
    let reports = machine.checker().take_reports();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let streaming =
        reports.iter().find(|report| matches!(report.problem, Problem::Leak { direction: Some(_), .. })).unwrap();
    let text = streaming.to_string();
    assert!(text.contains("disk0: stopped with a from-device mapping of 4096 bytes"), "{text}");
    assert!(text.contains(&format!("made at {}:{made_at}:", file!())), "{text}");
    let memory = reports.iter().find(|report| matches!(report.problem, Problem::Leak { direction: None, .. })).unwrap();
    assert!(memory.to_string().contains("bytes of coherent memory"), "{memory}");
    assert_eq!(machine.checker().live("disk0"), 0);
}

#[test]
fn a_refused_map_whose_error_nobody_read_is_reported() {
    let (machine, device) = setup();
    // The device reaches one page; the buffer is elsewhere and larger than the pool.
    let too_large = machine.buffer(1 << 20, 4096);
    let far = machine.device(
        "disk0",
        Route::Direct {
            windows: Machine::windows(machine.ram().start(), 4096, 0, false),
            bounce: device.bounce_pool(),
        },
        false,
        Constraints::NONE,
    );
    let _ = far.map_to_device(too_large);
    let report = only_report(machine);
    assert!(matches!(report.problem, Problem::UncheckedError { .. }), "{report}");
    assert!(report.to_string().contains("a map was refused and nobody read why"), "{report}");
    // Read errors are not reported.
    if let Err(error) = far.map_to_device(too_large) {
        let _ = error.error();
    }
    assert_eq!(machine.checker().take_reports(), vec![]);
}

#[test]
fn correct_use_reports_nothing() {
    let (machine, device) = setup();
    let bytes = machine.buffer(4096, 4096);
    let mapping = device.map_from_device(bytes).unwrap();
    let mut out = [0; 16];
    mapping.read(0, &mut out).unwrap();
    mapping.unmap().unwrap();
    let coherent = device.alloc_coherent(100).unwrap();
    coherent.write::<u32>(4, 7).unwrap();
    drop(coherent);
    device.stopped();
    assert_eq!(machine.checker().take_reports(), vec![]);
}
