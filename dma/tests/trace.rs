//! `dma.trace`: the records a traced device leaves, checked field by field against what the
//! route did, and the tracer's filter.
//!
//! The main case is the one the book walks through record by record: an NVMe buffer at page
//! offset 0xfa0, through an untrusted device's 64 KiB-granule domain (contract R3, R10, R12).

mod common;

use dma::sim::{Config, Machine};
use dma::trace::{Decision, Invalidation, Record, Translation};
use dma::{Constraints, DmaDevice, DmaDirection, Route, Tracer};
use vmsa::Granule;

/// NVMe's masks: the PRP entries read the offset in a 4 KiB page (contract rule 1).
const NVME: Constraints = Constraints::NONE.with_min_align_mask(0xfff);
const GRANULE: u64 = 64 << 10;

/// An untrusted NVMe-like device behind a 64 KiB-granule domain, traced by `tracer`.
fn untrusted_nvme(machine: &'static Machine, tracer: &'static Tracer) -> &'static DmaDevice<Machine> {
    let pool = machine.pool("swiotlb", 512 << 10, false, true, common::BUS_OFFSET);
    let domain = machine.domain(1, Granule::Size64KiB, u64::MAX);
    let route = Route::Iommu { domain, untrusted: true, bounce: Some(pool) };
    let device = DmaDevice::new("nvme0", route, true, NVME, machine, Some(machine.checker()));
    Box::leak(Box::new(device.with_tracer(Some(tracer))))
}

#[test]
fn an_nvme_buffer_at_0xfa0_through_an_untrusted_64k_domain_is_traced_decision_by_decision() {
    let machine = Machine::new(Config { size: 8 << 20, ..Config::default() });
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer::capturing("")));
    let device = untrusted_nvme(machine, tracer);
    let storage = machine.buffer(0xfa0 + 8192, 4096);
    let buffer = &mut storage[0xfa0..];
    let physical = machine.physical_of(buffer);
    let mapping = device.map_from_device(buffer).expect("mapped");
    let dma = mapping.dma();
    mapping.unmap().expect("unmapped");

    let records = tracer.take();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (name, map) = &records[0];
    assert_eq!(*name, "nvme0");
    let Record::Map { buffer, direction, decision, constraints, dma: given, copy, translation } = map else {
        panic!("first record: {map}")
    };
    assert_eq!((*buffer, *direction, *given), (physical, DmaDirection::FromDevice, dma));
    assert_eq!(*decision, Decision::PartialGranule { granule: GRANULE });
    // The masks the copy was made under: NVMe's offset bits, the granule's alignment.
    assert_eq!((constraints.min_align_mask, constraints.alloc_align_mask), (0xfff, GRANULE - 1));
    assert_eq!(dma.as_u64() & 0xfff, 0xfa0, "the device's address keeps the page offset");
    let copy = copy.expect("a bounce copy");
    assert_eq!(copy.pool, "swiotlb");
    let pre_padding = copy.mapping.dma.offset_from(copy.mapping.region).expect("the copy is in its region");
    assert_eq!(pre_padding % 4096, 0xfa0, "pre-padding slots keep the offset (R3)");
    assert_eq!(copy.mapping.region.as_u64() % GRANULE, 0, "the region starts a granule (rule 2)");
    assert_eq!(copy.mapping.region_len as u64 % GRANULE, 0, "the region is whole granules (rule 2)");
    let Some(Translation { mapping: iommu, granule }) = translation else { panic!("no IOVA in {map}") };
    assert_eq!(*granule, GRANULE);
    assert_eq!(iommu.size, copy.mapping.region_len as u64, "exactly the region is mapped");
    assert_eq!(iommu.iova.add(iommu.offset), dma);

    let (_, unmap) = &records[1];
    let granules = iommu.size / GRANULE;
    let expected = Record::Unmap {
        dma,
        size: 8192,
        direction: DmaDirection::FromDevice,
        invalidation: Some(Invalidation::Strict { granules }),
        pool: Some("swiotlb"),
    };
    assert_eq!(*unmap, expected);

    // And in words, as the log shows it.
    let map_line = map.to_string();
    for part in [
        "map 8192 B from-device",
        "bounced: untrusted, and the buffer shares a 64 KiB granule (rule 10)",
        "min_align_mask 0xfff keeps offset 0xfa0",
        "alloc_align_mask 0xffff",
        "of 'swiotlb'",
        "granule(s) of 64 KiB mapped read-write",
    ] {
        assert!(map_line.contains(part), "`{part}` missing from: {map_line}");
    }
    let unmap_line = unmap.to_string();
    assert!(unmap_line.contains("invalidated and waited for (strict)"), "{unmap_line}");
    assert!(unmap_line.contains("copied back from 'swiotlb'"), "{unmap_line}");
}

#[test]
fn a_refusal_is_traced_with_its_reason() {
    let machine = Machine::new(Config { size: 8 << 20, ..Config::default() });
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer::capturing("")));
    let device = untrusted_nvme(machine, tracer);
    let too_large = machine.buffer(1 << 20, 4096);
    let refused = device.map_to_device(&too_large[8..]).map(|_| ()).map_err(|error| error.error());
    let error = refused.expect_err("larger than the pool's segment");
    let records = tracer.take();
    assert!(
        matches!(records.as_slice(), [(_, Record::Refused { error: traced, .. })] if *traced == error),
        "{records:#?}"
    );
}

#[test]
fn the_filter_selects_by_route_trust_or_name() {
    let all = Tracer::new("");
    assert!(all.selects("pci 00:05.0", "iommu", Some("untrusted")));
    assert!(Tracer::new("all").selects("virtio_mmio@a003e00", "restricted", None));
    let untrusted = Tracer::new("untrusted");
    assert!(untrusted.selects("pci 00:05.0", "iommu", Some("untrusted")));
    assert!(!untrusted.selects("pci 00:04.0", "iommu", Some("trusted")));
    let some = Tracer::new("restricted, 00:04.0");
    assert!(some.selects("virtio_mmio@a003e00", "restricted", None));
    assert!(some.selects("pci 00:04.0", "iommu", Some("trusted")));
    assert!(!some.selects("pci 00:05.0", "iommu", Some("untrusted")));
}

#[test]
fn a_device_the_filter_leaves_out_records_nothing() {
    let machine = Machine::new(Config { size: 8 << 20, ..Config::default() });
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer::capturing("restricted")));
    let device = untrusted_nvme(machine, tracer);
    let buffer = machine.buffer(4096, 4096);
    device.map_to_device(buffer).expect("mapped").unmap().expect("unmapped");
    assert!(tracer.take().is_empty());
}

#[test]
fn every_route_explains_its_decision() {
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer::capturing("")));
    let (machine, rigs) = common::traced_rigs(false, 7, 64, Some(tracer));
    for rig in rigs {
        let device = rig.device;
        // A buffer sharing its first cache line with other data, and one of whole pages.
        let shared = &machine.buffer(4096 + 64, 4096)[32..32 + 512];
        let whole = machine.buffer(64 << 10, 64 << 10);
        for buffer in [shared, &*whole] {
            device.map_to_device(buffer).expect("mapped").unmap().expect("unmapped");
        }
        let records = tracer.take();
        let decisions: Vec<Decision> = records
            .iter()
            .filter_map(|(_, record)| match record {
                Record::Map { decision, .. } => Some(*decision),
                _ => None,
            })
            .collect();
        let expected = match rig.label {
            "direct, in reach" => [Decision::SharesCacheLine { line: 64 }, Decision::InReach],
            "direct, out of reach" => [Decision::OutOfReach, Decision::OutOfReach],
            "restricted pool" => [Decision::Restricted, Decision::Restricted],
            label if label.ends_with("untrusted") => {
                let granule = match label {
                    "IOMMU 4K, untrusted" => 4 << 10,
                    "IOMMU 16K, untrusted" => 16 << 10,
                    _ => 64 << 10,
                };
                [Decision::PartialGranule { granule }, Decision::Translated]
            }
            _ => [Decision::SharesCacheLine { line: 64 }, Decision::Translated],
        };
        assert_eq!(decisions, expected, "{}", rig.label);
    }
}

#[test]
fn a_deferring_domain_traces_its_unmaps_as_deferred_until_the_one_that_flushes() {
    let machine = Machine::new(Config { size: 8 << 20, ..Config::default() });
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer::capturing("")));
    let domain = Box::leak(Box::new(machine.new_domain(1, Granule::Size4KiB, u64::MAX).deferring_invalidation()));
    let route = Route::Iommu { domain, untrusted: false, bounce: None };
    let device = DmaDevice::new("lazy", route, true, Constraints::NONE, machine, Some(machine.checker()));
    let device: &'static DmaDevice<Machine> = Box::leak(Box::new(device.with_tracer(Some(tracer))));
    let buffer = machine.buffer(4096, 4096);
    for _ in 0..dma::iommu::DEFERRED_UNMAPS {
        device.map_to_device(buffer).expect("mapped").unmap().expect("unmapped");
    }
    let invalidations: Vec<Invalidation> = tracer
        .take()
        .into_iter()
        .filter_map(|(_, record)| match record {
            Record::Unmap { invalidation, .. } => invalidation,
            _ => None,
        })
        .collect();
    let (last, earlier) = invalidations.split_last().expect("unmaps traced");
    assert!(earlier.iter().all(|each| *each == Invalidation::Deferred { granules: 1 }), "{earlier:?}");
    assert_eq!(*last, Invalidation::Flushed { granules: 1 });
}
