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

kernel_test! {
    /// The bounce copy (`arch::copy`) moves exactly the bytes asked for, at every length around
    /// its 64-byte loop and its 8-byte tail and at every alignment of source and destination,
    /// touches nothing on either side, and copies overlapping ranges as `memmove` does. On a
    /// CPU with the memory copy instructions (`-cpu max`) both they and the loop are checked.
    fn the_bounce_copy_moves_every_byte_at_every_alignment_and_length() {
        const ROOM: usize = 512;
        type Copy = unsafe fn(*const u8, *mut u8, usize);
        let pattern = |index: usize| (index as u8).wrapping_mul(31).wrapping_add(7);
        let source: Vec<u8> = (0..ROOM).map(pattern).collect();
        let copies: [(&str, Copy); 2] =
            [("arch::copy", arch::copy::copy), ("the 64-byte loop", arch::copy::copy_with_simd_loop)];
        let instructions = if arch::copy::has_memory_copy_instructions() { "with" } else { "without" };
        log::info!("memory: this CPU is {instructions} the memory copy instructions (FEAT_MOPS)");
        for (name, copy) in copies {
            for len in (0..=200).chain([255, 256, 257, 300]) {
                for (from, to) in (0..16).flat_map(|from| (0..16).map(move |to| (from, to))) {
                    let mut target = alloc::vec![0xa5u8; ROOM];
                    // SAFETY: `from + len` and `to + len` stay inside the two distinct buffers,
                    // both on the heap (Normal memory through the linear map).
                    unsafe { copy(source.as_ptr().add(from), target.as_mut_ptr().add(to), len) };
                    let wrong = (0..ROOM).find(|&at| {
                        let expected = if (to..to + len).contains(&at) { source[at - to + from] } else { 0xa5 };
                        target[at] != expected
                    });
                    if let Some(at) = wrong {
                        let byte = target[at];
                        return Err(alloc::format!(
                            "{name}: copying {len} bytes from offset {from} to offset {to}: byte {at} is {byte:#04x}"
                        )
                        .into());
                    }
                }
            }
        }
        for shift in [-65isize, -8, -1, 1, 8, 65] {
            let mut bytes = source.clone();
            let (from, to) = (128, (128 + shift) as usize);
            // SAFETY: both ranges lie inside `bytes`; `copy` allows them to overlap.
            unsafe { arch::copy::copy(bytes.as_ptr().add(from), bytes.as_mut_ptr().add(to), 200) };
            ensure!(bytes[to..to + 200] == source[from..from + 200], "an overlapping copy shifted by {shift} lost bytes");
        }
        Ok(())
    }
}
