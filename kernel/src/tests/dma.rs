//! The DMA API itself: typed streaming mappings, the direct route, how pools are mapped.

use alloc::vec;

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use arrayvec::ArrayVec;
use platform::dma_config::{DmaDescription, DmaWindow};
use swiotlb::Constraints;
use vmsa::MemoryType;

use crate::dma_platform::{self, DmaDevice, Route, pools};
use crate::testing::{Verdict, ensure, kernel_test, skip};
use crate::tests::virtio::pattern;
use dma::DmaApiError;

/// A machine none of whose devices needs a pool has none: the tests of pools skip there.
const NO_POOL: Verdict = Verdict::Skipped("no DMA pool on this machine: no device is restricted or limited");

/// A device restricted to the first pool, for exercising the API without a transfer.
pub(crate) fn restricted_device() -> Result<DmaDevice, Verdict> {
    let pool = pools::pools().first().ok_or(NO_POOL)?;
    Ok(dma_platform::device("test device", Route::Restricted(pool), pool.coherent, Constraints::NONE))
}

/// Reads `length` bytes at a physical address the kernel maps.
pub(crate) fn bytes_at(physical: PhysAddr, length: usize) -> vec::Vec<u8> {
    let virt = pools::kernel_memory().virt(PhysRange::new(physical, length as u64).unwrap()).unwrap();
    // SAFETY: mapped memory; the test owns the mapping it reads.
    unsafe { core::slice::from_raw_parts(virt.as_ptr::<u8>(), length) }.to_vec()
}

pub(crate) fn dma_to_pool_phys(dma: DmaAddr) -> PhysAddr {
    let pool = &pools::pools()[0];
    let offset = dma.offset_from(pool.bounce.geometry().dma_base).unwrap();
    pool.range.start().add(offset)
}

kernel_test! {
    /// A to-device mapping hands the device a copy inside the pool, at a DMA address that keeps
    /// nothing of the original's but its bytes.
    fn to_device_mapping_copies_into_the_pool() {
        let device = restricted_device()?;
        let data = pattern(7, 3000);
        let mapping = device.map_to_device(&data).map_err(|e| alloc::format!("{e}"))?;
        let pool = &pools::pools()[0];
        let copy = dma_to_pool_phys(mapping.dma());
        ensure!(pool.range.contains(copy), "DMA {:?} is not in the pool", mapping.dma());
        ensure!(bytes_at(copy, data.len()) == data, "the pool copy differs from the buffer");
        mapping.unmap().map_err(|e| alloc::format!("{e}"))?;
        ensure!(device.audit_report().violations == 0, "audit violation");
        Ok(())
    }
}

kernel_test! {
    /// What a device writes reaches the buffer on `sync_for_cpu` (a read of part of the live
    /// mapping) and on unmap (all of it).
    fn device_writes_reach_the_buffer_on_sync_and_unmap() {
        let device = restricted_device()?;
        let mut buffer_bytes = vec![0u8; 4096];
        let mapping = device.map_from_device(&mut buffer_bytes).map_err(|e| alloc::format!("{e}"))?;
        let copy = dma_to_pool_phys(mapping.dma());
        let device_writes = pattern(11, 4096);
        let virt = pools::kernel_memory().virt(PhysRange::new(copy, 4096).unwrap()).ok_or("pool not mapped")?;
        // SAFETY: the mapping's bounce buffer, written as the device would.
        unsafe { core::ptr::copy_nonoverlapping(device_writes.as_ptr(), virt.as_mut_ptr(), 4096) };
        let mut seen = [0u8; 500];
        mapping.read(1000, &mut seen).map_err(|e| alloc::format!("{e}"))?;
        ensure!(seen[..] == device_writes[1000..1500], "the part read while mapped differs from what the device wrote");
        mapping.unmap().map_err(|e| alloc::format!("{e}"))?;
        buffer_bytes.truncate(4096);
        ensure!(buffer_bytes == device_writes, "unmap did not copy everything back");
        Ok(())
    }
}

kernel_test! {
    /// A direct device gets bus addresses through its `dma-ranges` window (the Raspberry Pi 4
    /// shape: bus 0xC000_0000 + CPU address), and a buffer outside the window is refused.
    fn direct_device_translates_through_its_bus_window() {
        let mut pages = alloc::boxed::Box::new(TwoPages([0; 8192]));
        let (inside, outside) = pages.0.split_at_mut(4096);
        let page = arch::mmu::walk(VirtAddr::from_ptr(inside.as_ptr())).ok_or("the buffer is not mapped")?.output;
        let window = DmaWindow { cpu_start: page, bus_start: DmaAddr::new(0xc000_0000), size: 4096 };
        let mut windows = ArrayVec::new();
        windows.push(window);
        let description = DmaDescription { pool: None, pool_named_by: None, windows, coherent: false };
        let route = Route::Direct { windows: description, bounce: None };
        let device = dma_platform::device("direct test device", route, false, Constraints::NONE);
        // Whole cache lines: the device does not snoop, so anything else would need a pool.
        let mut mapping = device.map_bidirectional(&mut inside[0x40..0xc0]).map_err(|e| alloc::format!("{e}"))?;
        ensure!(mapping.dma() == DmaAddr::new(0xc000_0040), "DMA {:?}", mapping.dma());
        mapping.write(0, &[1; 16]).map_err(|e| alloc::format!("{e}"))?;
        let mut seen = [0; 16];
        mapping.read(0, &mut seen).map_err(|e| alloc::format!("{e}"))?;
        let beyond = mapping.read(120, &mut seen).err();
        ensure!(beyond == Some(DmaApiError::OutsideMapping { offset: 120, size: 16, mapping_size: 128 }), "got {beyond:?}");
        mapping.unmap().map_err(|e| alloc::format!("{e}"))?;
        let buffer = device.physical(VirtAddr::from_ptr(outside.as_ptr()), 64).map_err(|e| alloc::format!("{e}"))?;
        let refused = device.map_to_device(&outside[..64]).map(|_| ()).map_err(|error| error.error()).err();
        let limit = Some(page.add(4096));
        ensure!(refused == Some(DmaApiError::Unreachable { buffer, limit, pool: None }), "got {refused:?}");
        ensure!(device.alloc_coherent(4096).err() == Some(DmaApiError::NoCoherentMemory), "coherent memory for a non-coherent direct device");
        Ok(())
    }
}

/// Two pages, page-aligned, for a window of one page and a buffer beyond it.
#[repr(C, align(4096))]
struct TwoPages([u8; 8192]);

kernel_test! {
    /// Every pool is inside RAM, listed in the memory map, outside the heap, and mapped with
    /// the caching its devices need (uncached unless all of them snoop the caches).
    fn pools_are_reserved_and_mapped_for_their_devices() {
        let machine = crate::machine();
        if pools::pools().is_empty() {
            return Err(NO_POOL);
        }
        for pool in pools::pools() {
            ensure!(machine.memory.map.reserved().iter().any(|r| r.range == pool.range), "{} not reserved", pool.name);
            ensure!(!machine.memory.heap.overlaps(&pool.range), "{} overlaps the heap", pool.name);
            let translation = arch::mmu::walk(arch::layout::phys_to_virt(pool.range.start())).ok_or("pool not mapped")?;
            let expected = if pool.coherent { MemoryType::Normal } else { MemoryType::NormalNonCacheable };
            ensure!(translation.attributes.memory == expected, "{} mapped as {:?}", pool.name, translation.attributes.memory);
        }
        Ok(())
    }
}

kernel_test! {
    /// A device whose DMA limit no pool satisfies (it reaches only the RAM below both its bounce
    /// pool and the buffer, wherever the machine put them) is refused, with an error that names
    /// the buffer, the limit and the pool, before the pool is touched.
    fn a_limit_no_pool_satisfies_is_refused_clearly() {
        let pool = pools::pools().first().ok_or(NO_POOL)?;
        let lowest_ram = crate::machine().memory.map.ram().iter().map(|ram| ram.start()).min().ok_or("no RAM")?;
        let data = vec![0u8; 4096];
        let start = arch::mmu::walk(VirtAddr::from_ptr(data.as_ptr())).ok_or("the buffer is not mapped")?.output;
        let buffer = PhysRange::new(start, data.len() as u64).ok_or("buffer range")?;
        // The device reaches every page below the pool and the buffer, and neither of them.
        let limit = pool.range.start().as_u64().min(buffer.start().as_u64()) & !0xfff;
        let Some(reach) = PhysRange::new(lowest_ram, limit.saturating_sub(lowest_ram.as_u64())).filter(|reach| !reach.is_empty()) else {
            skip!("the pool or the buffer lies at the bottom of RAM: no DMA limit leaves both out of reach")
        };
        let mut windows = ArrayVec::new();
        windows.push(DmaWindow { cpu_start: lowest_ram, bus_start: DmaAddr::new(0), size: reach.size() });
        let description = DmaDescription { pool: None, pool_named_by: None, windows, coherent: true };
        let route = Route::Direct { windows: description, bounce: Some(pool) };
        let device = dma_platform::device("low device", route, true, Constraints::NONE);
        let before = pool.bounce.stats();
        let refused = device.map_to_device(&data).map(|_| ()).map_err(|error| error.error()).err();
        let expected = DmaApiError::Unreachable { buffer, limit: Some(reach.end()), pool: Some(pool.range) };
        ensure!(refused == Some(expected), "got {refused:?}");
        let message = alloc::format!("{expected}");
        ensure!(message.contains("outside the device's DMA windows") && message.contains("bounce pool"), "unclear: {message}");
        ensure!(device.alloc_coherent(4096).is_err(), "coherent memory handed to a device that cannot reach it");
        ensure!(pool.bounce.stats().maps == before.maps, "the pool was used for a device that cannot reach it");
        log::info!("refused as expected: {message}");
        Ok(())
    }
}
