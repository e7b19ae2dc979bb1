//! The heap is where the memory map says, and nowhere it must not be.

use alloc::vec::Vec;

use addr::{PhysRange, VirtAddr};
use arch::layout::linear_virt_to_phys;

use crate::machine;
use crate::testing::{ensure, kernel_test};

kernel_test! {
    /// The heap overlaps neither the kernel image, nor the devicetree, nor any reservation the
    /// devicetree lists (`cargo xtask test` boots with a devicetree that has both kinds).
    fn heap_avoids_image_devicetree_and_reservations() {
        let machine = machine();
        let heap = machine.memory.heap;
        ensure!(!heap.overlaps(&machine.boot.image), "heap {heap} overlaps the image {}", machine.boot.image);
        ensure!(!heap.overlaps(&machine.boot.devicetree), "heap {heap} overlaps the devicetree");
        let reservations = machine.memory.map.reserved();
        ensure!(reservations.iter().any(|r| r.label == "/memreserve/") && reservations.len() >= 4,
            "only {} reservations (image, devicetree, a /memreserve/ entry and a pool or /reserved-memory node expected): boot with `cargo xtask test`", reservations.len());
        for reservation in reservations {
            ensure!(!heap.overlaps(&reservation.range), "heap {heap} overlaps {} {}", reservation.label, reservation.range);
            for free in machine.memory.map.free() {
                ensure!(!free.overlaps(&reservation.range), "free {free} overlaps {}", reservation.label);
            }
        }
        Ok(())
    }
}

kernel_test! {
    /// Allocations come from the heap range, large ones work, and freeing gives the bytes back.
    fn allocations_come_from_the_heap_and_are_returned() {
        let heap = machine().memory.heap;
        let before = crate::memory::heap_statistics().used;
        {
            let mut block: Vec<u64> = Vec::with_capacity(4 << 20); // 32 MiB
            block.extend((0..4u64 << 20).map(|index| index.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            let physical = linear_virt_to_phys(VirtAddr::from_ptr(block.as_ptr())).ok_or("not in the linear map")?;
            let span = PhysRange::new(physical, 32 << 20).ok_or("span overflows")?;
            ensure!(heap.covers(&span), "allocation {span} is outside the heap {heap}");
            let intact = block.iter().enumerate().all(|(index, &value)| value == (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            ensure!(intact, "the block did not keep what was written");
        }
        let after = crate::memory::heap_statistics().used;
        ensure!(after == before, "heap use {before} before, {after} after freeing");
        Ok(())
    }
}
