//! Host tests of a domain's MSI window, on the simulated machine: the reserved window is never
//! handed out, the doorbell maps at each granule with its offset kept, as Device memory, apart
//! from the buffer mappings, and unmapping it strictly leaves the device's MSI write faulting.

use alloc::format;
use alloc::vec::Vec;

use addr::{DmaAddr, PhysAddr, PhysRange};
use swiotlb::Constraints;
use vmsa::{Access, Granule, MemoryType};

use super::iova::IovaError;
use super::{DomainError, MSI_IOVA_BASE, MSI_IOVA_SIZE, Origin};
use crate::device::Route;
use crate::sim::{BusFault, Config, Machine};

const GRANULES: [Granule; 3] = [Granule::Size4KiB, Granule::Size16KiB, Granule::Size64KiB];

/// `GITS_TRANSLATER` on QEMU's `virt`: the ITS at 0x808_0000, its translation frame 64 KiB up,
/// the register at offset 0x40 of that frame.
const DOORBELL: PhysAddr = PhysAddr::new(0x809_0040);

fn window() -> core::ops::Range<u64> {
    MSI_IOVA_BASE..MSI_IOVA_BASE + MSI_IOVA_SIZE
}

#[test]
fn the_msi_window_is_never_allocated_at_any_granule_even_when_the_space_is_exhausted() {
    for granule in GRANULES {
        let machine = Machine::new(Config::default());
        let g = granule.size();
        // A space of 144 MiB, the window 128 MiB up: small enough to fill.
        let domain = machine.domain(1, granule, 0x8ff_ffff);
        let ram = PhysAddr::new(0x4000_0000);
        let sizes = [16 << 20, (1 << 20) + 1, 3 * g, 40 * g, g, 100, 2 * g - 1];
        let mut live: Vec<(DmaAddr, u64)> = Vec::new();
        let mut next = 0;
        'fill: loop {
            for attempt in 0..sizes.len() {
                let size = sizes[(next + attempt) % sizes.len()];
                let buffer = PhysRange::new(ram, size).unwrap();
                match domain.map(buffer, Access::ReadWrite, Origin::Buffer) {
                    Ok(iova) => {
                        let mapping = domain.lookup(iova, size).unwrap();
                        let (start, end) = (mapping.iova.as_u64(), mapping.iova.as_u64() + mapping.size);
                        assert!(
                            end <= window().start || window().end <= start,
                            "{g}-byte granules: {size} bytes mapped at [{start:#x}, {end:#x}), in the MSI window"
                        );
                        live.push((iova, size));
                        next += attempt + 1;
                        continue 'fill;
                    }
                    Err(DomainError::Iova(IovaError::NoRoom { .. })) => {}
                    Err(refusal) => panic!("{g}: unexpected refusal {refusal}"),
                }
            }
            break;
        }
        let exhausted = domain.map(PhysRange::new(ram, 1).unwrap(), Access::ReadOnly, Origin::Buffer);
        assert!(matches!(exhausted, Err(DomainError::Iova(IovaError::NoRoom { free_granules: 0, .. }))));
        assert!(live.len() > 10, "{g}: only {} mappings filled the space", live.len());
        for at in window().step_by(g as usize) {
            assert_eq!(domain.translate(DmaAddr::new(at)), None, "{g}: {at:#x} in the window is mapped");
        }
        // The window is still there for the doorbell.
        assert_eq!(domain.map_msi_doorbell(DOORBELL), Ok(DmaAddr::new(MSI_IOVA_BASE + 0x40)));
        for (iova, size) in live {
            domain.unmap(iova, size, false).unwrap();
        }
        assert_eq!(domain.live_mappings(), 0);
    }
}

#[test]
fn the_doorbell_maps_at_each_granule_to_its_page_with_its_offset_kept() {
    for granule in GRANULES {
        let machine = Machine::new(Config::default());
        let g = granule.size();
        let domain = machine.domain(1, granule, u64::MAX);
        assert_eq!(domain.msi_doorbell(), None);
        let iova = domain.map_msi_doorbell(DOORBELL).unwrap();
        // 0x809_0040 is 0x40 into its granule at 4, 16 and 64 KiB alike.
        assert_eq!(iova, DmaAddr::new(0x800_0040), "{g}");
        assert_eq!(iova.as_u64() & (g - 1), DOORBELL.as_u64() & (g - 1));
        assert_eq!(domain.msi_doorbell(), Some(iova));
        assert_eq!(domain.translate(iova), Some(DOORBELL), "{g}");
        assert_eq!(domain.translate(DmaAddr::new(MSI_IOVA_BASE)), Some(DOORBELL.align_down(g)));
        assert_eq!(domain.walk(iova), Some((DOORBELL, Access::ReadWrite)), "{g}");
        let attributes = domain.attributes(iova).unwrap();
        assert_eq!(attributes.memory, MemoryType::Device, "{g}: the doorbell is a register");
        assert!(!attributes.executable, "{g}");
        // The one granule, nothing after it.
        assert_eq!(domain.translate(DmaAddr::new(MSI_IOVA_BASE + g)), None, "{g}");
        // Idempotent for the same doorbell; refused for another.
        assert_eq!(domain.map_msi_doorbell(DOORBELL), Ok(iova));
        let other = PhysAddr::new(0x80b_0040);
        assert_eq!(
            domain.map_msi_doorbell(other),
            Err(DomainError::MsiDoorbellTaken { mapped: DOORBELL, asked: other, iova })
        );
        assert_eq!(domain.translate(iova), Some(DOORBELL), "{g}: the refusal changed the mapping");
    }
}

#[test]
fn the_doorbell_is_no_mapping_so_live_mappings_lookup_and_unmap_ignore_it() {
    let machine = Machine::new(Config::default());
    let domain = machine.domain(1, Granule::Size16KiB, u64::MAX);
    let iova = domain.map_msi_doorbell(DOORBELL).unwrap();
    assert_eq!(domain.live_mappings(), 0, "the doorbell counted as a mapping");
    assert_eq!(domain.lookup(iova, 4), None);
    assert_eq!(domain.unmap(iova, 4, false), Err(DomainError::UnknownMapping { dma: iova, size: 4 }));
    assert_eq!(domain.revoke(iova), Err(DomainError::UnknownMapping { dma: iova, size: 0 }));
    assert_eq!(domain.translate(iova), Some(DOORBELL), "a refused unmap removed the doorbell");
    // A buffer mapped beside it is counted, and unmapping it leaves the doorbell alone.
    let buffer = PhysRange::new(PhysAddr::new(0x4000_0000), 0x4000).unwrap();
    let dma = domain.map(buffer, Access::ReadOnly, Origin::Buffer).unwrap();
    assert_eq!(domain.live_mappings(), 1);
    domain.unmap(dma, 0x4000, false).unwrap();
    assert_eq!(domain.live_mappings(), 0);
    assert_eq!(domain.msi_doorbell(), Some(iova));
    assert_eq!(domain.translate(iova), Some(DOORBELL));
}

#[test]
fn unmapping_the_doorbell_invalidates_it_so_the_device_msi_write_faults() {
    for granule in GRANULES {
        let machine = Machine::new(Config::default());
        let g = granule.size();
        let domain = machine.domain(1, granule, u64::MAX);
        let route = Route::Iommu { domain, untrusted: false, bounce: None };
        let device = machine.device("msi", route, true, Constraints::NONE);
        // A granule of RAM stands in for the ITS translation frame, so the write lands somewhere.
        let frame = machine.buffer(g as usize, g as usize);
        let doorbell = machine.physical_of(frame).start().add(0x40);
        let iova = domain.map_msi_doorbell(doorbell).unwrap();
        assert_eq!(iova, DmaAddr::new(MSI_IOVA_BASE + 0x40));
        // The MSI: the device writes its event number, and the IOMMU's TLB now holds the page.
        machine.device_write(device, iova, &7u32.to_le_bytes()).unwrap();
        assert_eq!(frame[0x40..0x44], 7u32.to_le_bytes(), "{g}");
        domain.unmap_msi_doorbell().unwrap();
        assert_eq!(domain.translate(iova), None, "{g}");
        assert_eq!(domain.msi_doorbell(), None);
        assert_eq!(
            machine.device_write(device, iova, &8u32.to_le_bytes()),
            Err(BusFault::Translation { iova }),
            "{g}: the MSI still reached the doorbell through the IOMMU's cached translation"
        );
        assert_eq!(frame[0x40..0x44], 7u32.to_le_bytes(), "{g}");
        let window = DmaAddr::new(MSI_IOVA_BASE);
        assert_eq!(domain.unmap_msi_doorbell(), Err(DomainError::MsiDoorbellNotMapped { window }));
        // Mapped again, the next MSI arrives.
        assert_eq!(domain.map_msi_doorbell(doorbell), Ok(iova));
        machine.device_write(device, iova, &9u32.to_le_bytes()).unwrap();
        assert_eq!(frame[0x40..0x44], 9u32.to_le_bytes(), "{g}");
        assert_eq!(domain.live_mappings(), 0);
    }
}

#[test]
fn a_domain_whose_dma_limit_is_below_the_window_has_none() {
    for granule in GRANULES {
        let machine = Machine::new(Config::default());
        let g = granule.size();
        // Short of the window, or ending inside it: no window.
        for limit in [0x7ff_ffff, MSI_IOVA_BASE + MSI_IOVA_SIZE - g - 1] {
            let domain = machine.domain(1, granule, limit);
            let space_end = DmaAddr::new((limit + 1) & !(g - 1));
            assert_eq!(domain.map_msi_doorbell(DOORBELL), Err(DomainError::NoMsiWindow { space_end }), "{limit:#x}");
            assert_eq!(domain.unmap_msi_doorbell(), Err(DomainError::NoMsiWindow { space_end }));
            assert_eq!(domain.msi_doorbell(), None);
            // Nothing is reserved either: top-down hands out the last granule of the space.
            let buffer = PhysRange::new(PhysAddr::new(0x4000_0000), g).unwrap();
            let dma = domain.map(buffer, Access::ReadOnly, Origin::Buffer).unwrap();
            assert_eq!(dma.as_u64(), space_end.as_u64() - g, "{g}, limit {limit:#x}");
            domain.unmap(dma, g, false).unwrap();
        }
        // A limit at the window's last byte holds it all: the window is reserved.
        let domain = machine.domain(2, granule, MSI_IOVA_BASE + MSI_IOVA_SIZE - 1);
        let buffer = PhysRange::new(PhysAddr::new(0x4000_0000), g).unwrap();
        let dma = domain.map(buffer, Access::ReadOnly, Origin::Buffer).unwrap();
        assert_eq!(dma.as_u64(), MSI_IOVA_BASE - g, "{g}: allocated below the reserved window");
        assert_eq!(domain.map_msi_doorbell(DOORBELL), Ok(DmaAddr::new(MSI_IOVA_BASE + 0x40)));
    }
}

#[test]
fn msi_refusals_say_what_was_wrong() {
    let refusal = DomainError::NoMsiWindow { space_end: DmaAddr::new(0x800_0000) };
    assert_eq!(
        format!("{refusal}"),
        "no MSI window: the domain's IOVA space ends at 0x8000000, short of the window [0x8000000, 0x8100000)"
    );
    let refusal = DomainError::MsiDoorbellTaken {
        mapped: DOORBELL,
        asked: PhysAddr::new(0x80b_0040),
        iova: DmaAddr::new(0x800_0040),
    };
    let text = format!("{refusal}");
    for fact in ["0x8090040", "0x80b0040", "0x8000040"] {
        assert!(text.contains(fact), "{text:?} does not name {fact}");
    }
    let refusal = DomainError::MsiDoorbellNotMapped { window: DmaAddr::new(0x800_0000) };
    assert!(format!("{refusal}").contains("0x8000000"));
}
