//! The heap is where the memory map says, and nowhere it must not be.

use alloc::vec::Vec;

use addr::{PhysRange, VirtAddr};
use arch::layout::linear_virt_to_phys;

use crate::machine;
use crate::testing::{ensure, kernel_test, skip};

kernel_test! {
    /// The heap overlaps neither the kernel image, nor the devicetree, nor any reservation the
    /// devicetree lists (`/memreserve/` entries and `/reserved-memory` nodes: `cargo xtask test`
    /// adds one of each to QEMU's devicetree, and a Raspberry Pi's firmware reserves its spin
    /// table); nor does any free range.
    fn heap_avoids_image_devicetree_and_reservations() {
        let machine = machine();
        let heap = machine.memory.heap;
        ensure!(!heap.overlaps(&machine.boot.image), "heap {heap} overlaps the image {}", machine.boot.image);
        ensure!(!heap.overlaps(&machine.boot.devicetree), "heap {heap} overlaps the devicetree");
        let reservations = machine.memory.map.reserved();
        for reservation in reservations {
            ensure!(!heap.overlaps(&reservation.range), "heap {heap} overlaps {} {}", reservation.label, reservation.range);
            for free in machine.memory.map.free() {
                ensure!(!free.overlaps(&reservation.range), "free {free} overlaps {}", reservation.label);
            }
        }
        // The image and the devicetree are always there; anything more the devicetree listed.
        let listed = reservations.iter().filter(|r| r.range != machine.boot.image && r.range != machine.boot.devicetree);
        if listed.count() == 0 {
            skip!("the devicetree reserves no memory of its own (no /memreserve/, no /reserved-memory node) for the heap to avoid")
        }
        Ok(())
    }
}

kernel_test! {
    /// Allocations come from the heap range, large ones work, and freeing gives the bytes back.
    /// "Large" is a quarter of what the heap has free (at most 32 MiB), whatever RAM the
    /// machine was given.
    fn allocations_come_from_the_heap_and_are_returned() {
        let heap = machine().memory.heap;
        let statistics = crate::memory::heap_statistics();
        let before = statistics.used;
        let words = ((statistics.size - statistics.used) / 4).min(32 << 20) / size_of::<u64>();
        ensure!(words > 0, "the heap {heap} has no room: {} of {} bytes used", statistics.used, statistics.size);
        {
            let mut block: Vec<u64> = Vec::new();
            block.try_reserve_exact(words).map_err(|_| alloc::format!("the heap {heap} cannot give {} bytes", words * size_of::<u64>()))?;
            block.extend((0..words as u64).map(|index| index.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            let physical = linear_virt_to_phys(VirtAddr::from_ptr(block.as_ptr())).ok_or("not in the linear map")?;
            let span = PhysRange::new(physical, (words * size_of::<u64>()) as u64).ok_or("span overflows")?;
            ensure!(heap.covers(&span), "allocation {span} is outside the heap {heap}");
            let intact = block.iter().enumerate().all(|(index, &value)| value == (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            ensure!(intact, "the block did not keep what was written");
        }
        let after = crate::memory::heap_statistics().used;
        ensure!(after == before, "heap use {before} before, {after} after freeing");
        Ok(())
    }
}
