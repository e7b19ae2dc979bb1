//! Coherent memory on every route: shared without syncs whatever the cache does, and returned
//! (unmapped first, behind the IOMMU) when its owner drops it.

mod common;

use common::{BUSY, rigs};
use dma::{DmaApiError, Route};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A control block as a device might share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
#[repr(C)]
struct Block {
    command: u32,
    status: u32,
    address: u64,
}

#[test]
fn coherent_memory_is_shared_without_syncs_on_every_route() {
    for coherent in [true, false] {
        let (machine, rigs) = rigs(coherent, 5);
        machine.set_churn(BUSY);
        for rig in &rigs {
            let device = rig.device;
            let memory = match device.alloc_coherent(3000) {
                Ok(memory) => memory,
                // Heap memory is cached: behind the IOMMU a device that does not snoop has no
                // uncached pool to take it from.
                Err(DmaApiError::NoCoherentMemory) if !coherent && matches!(device.route, Route::Iommu { .. }) => {
                    continue;
                }
                Err(error) => panic!("{}: {error}", rig.label),
            };
            let block = Block { command: 0x1234_5678, status: 0, address: 0xdead_beef };
            memory.write(64, block).unwrap();
            machine.tick();
            let seen = machine.device_read(device, memory.dma().add(64), 16).unwrap();
            assert_eq!(seen, block.as_bytes(), "{} (coherent: {coherent}): the device read a stale block", rig.label);
            machine.device_write(device, memory.dma().add(68), &7u32.to_le_bytes()).unwrap();
            machine.tick();
            assert_eq!(
                memory.read::<Block>(64).unwrap().status,
                7,
                "{} (coherent: {coherent}): the CPU read a stale status",
                rig.label
            );
            assert!(memory.read::<u64>(4).is_err(), "a misaligned typed read was allowed");
            assert_eq!(
                memory.read::<u32>(2998),
                Err(DmaApiError::OutsideMapping { offset: 2998, size: 4, mapping_size: 3000 })
            );
            let dma = memory.dma();
            drop(memory);
            assert_eq!(machine.checker().live(device.name), 0, "{}: the allocation is still live", rig.label);
            if let Route::Iommu { domain, .. } = &device.route {
                assert_eq!(domain.live_mappings(), 0, "{}: still mapped", rig.label);
                assert!(
                    machine.device_read(device, dma, 4).is_err(),
                    "{}: the device still reaches freed memory",
                    rig.label
                );
            }
            if let Some(pool) = device.bounce_pool() {
                assert_eq!(pool.bounce.stats().slots_in_use, 0, "{}: pool slots still held", rig.label);
            }
        }
        assert_eq!(machine.checker().take_reports(), vec![]);
    }
}

#[test]
fn a_device_that_does_not_snoop_gets_no_cached_memory() {
    let (_, rigs) = rigs(false, 1);
    let direct = rigs.iter().find(|rig| rig.label == "direct, in reach").unwrap();
    let memory = direct.device.alloc_coherent(64).unwrap();
    let pool = direct.device.bounce_pool().unwrap();
    assert!(
        pool.holds(memory.dma(), 64) && !pool.coherent,
        "coherent memory for a non-snooping device must come from an uncached pool"
    );
    let iommu = rigs.iter().find(|rig| rig.label == "IOMMU 4K, trusted").unwrap();
    assert_eq!(iommu.device.alloc_coherent(64).map(|_| ()), Err(DmaApiError::NoCoherentMemory));
}
