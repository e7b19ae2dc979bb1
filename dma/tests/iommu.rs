//! The IOMMU route on the simulated machine: what the device can reach, at each granule, for
//! trusted and untrusted devices, and for how long.

mod common;

use common::{pattern, rigs};
use dma::sim::BusFault;
use dma::{DmaDirection, Route};

#[test]
fn after_a_strict_unmap_the_device_faults_even_where_its_tlb_had_the_page() {
    let (machine, rigs) = rigs(true, 2);
    for rig in rigs.iter().filter(|rig| matches!(rig.device.route, Route::Iommu { .. })) {
        let buffer = machine.buffer(8192, 65536);
        let mapping = rig.device.map_from_device(buffer).unwrap();
        let dma = mapping.dma();
        machine.device_write(rig.device, dma, &pattern(8192, 9)).unwrap(); // the TLB now holds it
        mapping.unmap().unwrap();
        assert_eq!(
            machine.device_write(rig.device, dma, &[1; 4]),
            Err(BusFault::Translation { iova: dma }),
            "{}: after unmap returned, the device still wrote through the IOMMU's cached translation of {dma:?}",
            rig.label
        );
        assert_eq!(buffer, pattern(8192, 9).as_slice(), "{}", rig.label);
    }
}

#[test]
fn a_transfer_to_the_device_is_mapped_read_only() {
    let (machine, rigs) = rigs(true, 2);
    for rig in rigs.iter().filter(|rig| matches!(rig.device.route, Route::Iommu { .. })) {
        let buffer = machine.buffer(4096, 4096);
        let mapping = rig.device.map_to_device(buffer).unwrap();
        assert_eq!(
            machine.device_write(rig.device, mapping.dma(), &[1; 4]),
            Err(BusFault::Permission { iova: mapping.dma() }),
            "{}",
            rig.label
        );
    }
}

#[test]
fn an_untrusted_device_sees_only_zeros_around_its_buffer_at_every_granule() {
    let (machine, rigs) = rigs(true, 3);
    for rig in rigs.iter().filter(|rig| rig.label.ends_with("untrusted")) {
        let Route::Iommu { domain, .. } = &rig.device.route else { unreachable!() };
        let granule = domain.granule_size() as usize;
        let page = machine.buffer(granule, granule);
        page.fill(0x5e); // secrets around the buffer
        let buffer = &page[100..600];
        let mapping = rig.device.map_to_device(buffer).unwrap();
        let start = mapping.dma().align_down(granule as u64);
        let seen = machine.device_read(rig.device, start, granule).unwrap();
        let offset = (mapping.dma().as_u64() - start.as_u64()) as usize;
        assert_eq!(&seen[offset..offset + 500], &page[100..600], "{}", rig.label);
        assert!(
            seen[..offset].iter().chain(&seen[offset + 500..]).all(|&byte| byte == 0),
            "{}: the device saw the neighbours",
            rig.label
        );
    }
}

#[test]
fn a_trusted_device_sees_the_rest_of_the_granule() {
    let (machine, rigs) = rigs(true, 3);
    for rig in rigs.iter().filter(|rig| rig.label.ends_with(", trusted")) {
        let Route::Iommu { domain, .. } = &rig.device.route else { unreachable!() };
        let granule = domain.granule_size() as usize;
        let page = machine.buffer(granule, granule);
        page.fill(0x5e);
        let mapping = rig.device.map_to_device(&page[100..600]).unwrap();
        assert_eq!(mapping.dma().as_u64() as usize % granule, 100, "{}: the offset in the granule is kept", rig.label);
        let around = machine.device_read(rig.device, mapping.dma().align_down(granule as u64), granule).unwrap();
        assert!(
            around.iter().all(|&byte| byte == 0x5e),
            "{}: in place, the whole granule is the buffer's page",
            rig.label
        );
    }
}

#[test]
fn a_trusted_scatter_list_gets_one_range_and_each_buffer_keeps_its_offset() {
    let (machine, rigs) = rigs(true, 4);
    let rig = rigs.iter().find(|rig| rig.label == "IOMMU 16K, trusted").unwrap();
    let Route::Iommu { domain, .. } = &rig.device.route else { unreachable!() };
    let first = machine.buffer(16384, 16384);
    let second = machine.buffer(16384, 16384);
    let buffers = [machine.physical_of(&first[0x200..0x4000]), machine.physical_of(&second[..0x1000])];
    // SAFETY: the test's own buffers, untouched while mapped.
    let addresses = unsafe { rig.device.map_scatter(&buffers, DmaDirection::FromDevice) }.unwrap();
    assert_eq!(domain.live_mappings(), 1, "one IOVA range for the list");
    assert_eq!(addresses[0].as_u64() % 16384, 0x200);
    assert_eq!(addresses[1].as_u64(), addresses[0].as_u64() - 0x200 + 16384, "contiguous after a granule-aligned end");
    machine.device_write(rig.device, addresses[1], &pattern(0x1000, 1)).unwrap();
    // SAFETY: the mapping made above.
    unsafe { rig.device.unmap_scatter(&addresses, &buffers, DmaDirection::FromDevice) }.unwrap();
    assert_eq!(&second[..0x1000], pattern(0x1000, 1).as_slice());
    assert_eq!(domain.live_mappings(), 0);
    assert_eq!(machine.checker().take_reports(), vec![]);
}

#[test]
fn a_refused_scatter_list_leaves_nothing_mapped_and_returns_the_first_refusal() {
    let (machine, rigs) = rigs(true, 4);
    let rig = rigs.iter().find(|rig| rig.label == "restricted pool").unwrap();
    let pool = rig.device.bounce_pool().unwrap();
    let small = machine.buffer(4096, 4096);
    let huge = machine.buffer(1 << 20, 4096); // larger than the 512 KiB pool
    let buffers = [machine.physical_of(small), machine.physical_of(huge)];
    // SAFETY: the test's own buffers, untouched while mapped.
    let refused = unsafe { rig.device.map_scatter(&buffers, DmaDirection::ToDevice) }.map(|_| ()).unwrap_err().error();
    assert!(matches!(refused, dma::DmaApiError::Pool(_)), "{refused}");
    assert_eq!(pool.bounce.stats().slots_in_use, 0, "the first buffer's slots were not given back");
    assert_eq!(machine.checker().live(rig.device.name), 0);
}

#[test]
fn buffers_aligned_as_the_device_says_map_in_place_and_others_bounce() {
    let (machine, rigs) = rigs(true, 5);
    for rig in &rigs {
        let Some(alignment) = rig.device.in_place_alignment() else {
            assert!(
                matches!(rig.device.route, Route::Restricted(_)),
                "{}: only a restricted pool bounces everything",
                rig.label
            );
            continue;
        };
        let bytes = machine.buffer(4 * alignment as usize, alignment as usize);
        let buffer = machine.physical_of(bytes);
        let reaches = rig.device.maps_in_place(buffer);
        let mapping = rig.device.map_to_device(bytes).unwrap();
        let in_place = rig.device.translate(mapping.dma()) == Some(buffer.start());
        assert_eq!(reaches, in_place, "{}: maps_in_place said {reaches}", rig.label);
        drop(mapping);
        if alignment > 1 {
            let unaligned = &bytes[1..];
            assert!(!rig.device.maps_in_place(machine.physical_of(unaligned)), "{}", rig.label);
        }
    }
}

#[test]
fn a_deferring_domain_leaves_a_window_until_its_flush_and_never_reuses_the_iova_before() {
    use dma::iommu::DEFERRED_UNMAPS;
    use dma::sim::{Config, Machine};
    use dma::{Constraints, Domain};
    use vmsa::Granule;
    let machine = Machine::new(Config::default());
    assert!(!machine.domain(1, Granule::Size4KiB, u64::MAX).defers_invalidation(), "domains are strict unless asked");
    let lazy: &'static Domain<Machine> =
        Box::leak(Box::new(machine.new_domain(2, Granule::Size4KiB, u64::MAX).deferring_invalidation()));
    let route = Route::Iommu { domain: lazy, untrusted: false, bounce: None };
    let device = machine.device("lazy", route, true, Constraints::NONE);
    let buffer = machine.buffer(4096, 4096);
    let mapping = device.map_from_device(buffer).unwrap();
    let iova = mapping.dma();
    machine.device_write(device, iova, &[1; 4]).unwrap(); // the TLB now holds the page
    mapping.unmap().unwrap();
    // The trade: the entry is gone, the cached translation is not, until the flush.
    assert_eq!(machine.device_write(device, iova, &[2; 4]), Ok(()), "the stale translation still works");
    assert_eq!(&buffer[..4], &[2; 4]);
    let other = machine.buffer(4096, 4096);
    let second = device.map_to_device(other).unwrap();
    assert_ne!(second.dma(), iova, "an IOVA waiting for its flush was handed out again");
    drop(second);
    lazy.flush().unwrap();
    assert_eq!(machine.device_write(device, iova, &[3; 4]), Err(BusFault::Translation { iova }));
    assert_eq!(&buffer[..4], &[2; 4]);
    // Enough unmaps flush by themselves.
    let mapping = device.map_from_device(buffer).unwrap();
    let first = mapping.dma();
    machine.device_write(device, first, &[4; 4]).unwrap();
    mapping.unmap().unwrap();
    for _ in 1..DEFERRED_UNMAPS {
        device.map_to_device(other).unwrap().unmap().unwrap();
    }
    assert_eq!(machine.device_write(device, first, &[5; 4]), Err(BusFault::Translation { iova: first }));
}

#[test]
fn a_refusal_for_room_says_so_and_a_smaller_request_then_fits() {
    let (machine, rigs) = rigs(true, 5);
    let rig = rigs.iter().find(|rig| rig.label == "restricted pool").unwrap();
    let huge = machine.buffer(1 << 20, 4096); // longer than the pool's 256 KiB segment: too large in any state
    let refused = rig.device.map_to_device(huge).map(|_| ()).unwrap_err().error();
    assert!(!refused.is_no_room(), "too large for the pool is not a want of room: {refused}");
    // The pool filled with 64 KiB copies, then every other one given back: 64 KiB holes.
    let buffers: Vec<&[u8]> = (0..8).map(|_| &*machine.buffer(64 << 10, 4096)).collect();
    let mut held: Vec<_> = buffers.iter().map(|buffer| rig.device.map_to_device(buffer).unwrap()).collect();
    let refused = rig.device.map_to_device(machine.buffer(4096, 4096)).map(|_| ()).unwrap_err().error();
    assert!(refused.is_no_room(), "a full pool: {refused}");
    let mut index = 0;
    held.retain(|_| {
        index += 1;
        index % 2 == 0
    });
    let refused = rig.device.map_to_device(machine.buffer(128 << 10, 4096)).map(|_| ()).unwrap_err().error();
    assert!(refused.is_no_room(), "128 KiB among 64 KiB holes: {refused}");
    rig.device.map_to_device(machine.buffer(64 << 10, 4096)).unwrap().unmap().unwrap();
    // The same for an IOVA space of 2 MiB, filled with 512 KiB mappings.
    let domain = machine.domain(40, vmsa::Granule::Size4KiB, 2 << 20);
    let route = Route::Iommu { domain, untrusted: false, bounce: None };
    let device = machine.device("small space", route, true, dma::Constraints::NONE);
    let mut in_space = Vec::new();
    let refused = loop {
        match device.map_to_device(machine.buffer(512 << 10, 4096)) {
            Ok(mapping) => in_space.push(mapping),
            Err(refused) => break refused.error(),
        }
    };
    assert!(refused.is_no_room() && !in_space.is_empty(), "a full IOVA space: {refused}");
    // Below the first 512 KiB block, IOVA 0 excluded, a page still fits.
    device.map_to_device(machine.buffer(4096, 4096)).unwrap().unmap().unwrap();
    drop(in_space);
    drop(held);
}
