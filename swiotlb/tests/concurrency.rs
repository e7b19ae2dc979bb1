//! Several CPUs at once. Each area has its own lock and search cursor so that CPUs do not
//! contend; this checks that sharing one pool between threads never hands a slot to two
//! mappings (which would show as one thread's bytes in another's buffer) and loses nothing.

use std::sync::Barrier;

use swiotlb::{
    BouncePool, Constraints, DmaAddr, DmaDirection, PhysAddr, PhysMemory, PhysRange, PoolConfig,
    RESTRICTED_SEGMENT_LIMIT, SLOT_SIZE,
};

const RAM_BASE: u64 = 0x4000_0000;
const THREADS: usize = 4;
/// Each thread's own buffer space, below the pool.
const PER_THREAD: u64 = 1 << 20;
const POOL_SIZE: u64 = 2 << 20;
const ROUNDS: usize = 2000;

/// Simulated RAM shared by threads. Each thread touches only its own buffer range, and the
/// pool touches only slots it owns, so no byte is accessed by two threads at once.
struct SharedRam {
    base: PhysAddr,
    bytes: *mut u8,
    size: usize,
}

// SAFETY: see the type's documentation: accesses from different threads are to disjoint bytes.
unsafe impl Sync for SharedRam {}
// SAFETY: the allocation is not tied to the creating thread.
unsafe impl Send for SharedRam {}

impl SharedRam {
    fn new(size: usize) -> Self {
        let bytes = Box::leak(vec![0u8; size].into_boxed_slice()).as_mut_ptr();
        Self { base: PhysAddr::new(RAM_BASE), bytes, size }
    }

    /// # Safety
    /// No one else reads or writes these bytes while the slice lives.
    #[expect(clippy::mut_from_ref, reason = "simulated RAM shared by threads; exclusivity is the caller's contract")]
    unsafe fn slice(&self, address: PhysAddr, len: usize) -> &mut [u8] {
        let pointer = self.window(address, len).expect("inside RAM");
        // SAFETY: inside the allocation; the caller vouches for exclusive access.
        unsafe { std::slice::from_raw_parts_mut(pointer.as_ptr(), len) }
    }
}

// SAFETY: windows are bounds-checked into a leaked allocation that is never freed and that
// Rust code reaches only through raw pointers and the short-lived slices above.
unsafe impl PhysMemory for SharedRam {
    fn window(&self, address: PhysAddr, len: usize) -> Option<std::ptr::NonNull<u8>> {
        let start = usize::try_from(address.offset_from(self.base)?).ok()?;
        (start.checked_add(len)? <= self.size).then(|| std::ptr::NonNull::new(self.bytes.wrapping_add(start)))?
    }
}

fn byte_for(thread: usize, round: usize, index: usize) -> u8 {
    (thread * 31 + round * 7 + index) as u8
}

#[test]
fn threads_sharing_a_pool_never_share_slots() {
    let ram = SharedRam::new((THREADS as u64 * PER_THREAD + POOL_SIZE) as usize);
    let pool_start = PhysAddr::new(RAM_BASE + THREADS as u64 * PER_THREAD);
    let pool_range = PhysRange::new(pool_start, POOL_SIZE).unwrap();
    let config = PoolConfig { areas: THREADS, ..PoolConfig::default() };
    let pool = BouncePool::new(ram, pool_range, DmaAddr::new(pool_start.as_u64()), config).unwrap();
    let start_together = Barrier::new(THREADS);

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (pool, start_together) = (&pool, &start_together);
            scope.spawn(move || {
                start_together.wait();
                let buffer = PhysAddr::new(RAM_BASE + thread as u64 * PER_THREAD);
                let constraints = Constraints::NONE.with_min_align_mask(0xfff);
                for round in 0..ROUNDS {
                    let offset = (round * 0x1c8) as u64 % 0x1000;
                    let size = 512 + (round * 1531) % (48 << 10);
                    let orig = buffer.add(offset);
                    // SAFETY: this thread's own buffer region.
                    let source = unsafe { pool.memory().slice(orig, size) };
                    source.iter_mut().enumerate().for_each(|(index, byte)| *byte = byte_for(thread, round, index));
                    let mapping = pool.map(orig, size, DmaDirection::Bidirectional, &constraints).unwrap();
                    assert_eq!(mapping.dma.as_u64() & 0xfff, orig.as_u64() & 0xfff, "offset kept");

                    // The device reads what this thread wrote, then answers with the bytes inverted.
                    // SAFETY: this mapping's bounce slots, which the pool gave this thread alone.
                    let bounce = unsafe { pool.memory().slice(mapping.bounce, size) };
                    for (index, byte) in bounce.iter_mut().enumerate() {
                        assert_eq!(*byte, byte_for(thread, round, index), "thread {thread} round {round}");
                        *byte = !*byte;
                    }
                    // SAFETY: this thread's own buffer region.
                    unsafe { pool.memory().slice(orig, size) }.fill(0);
                    pool.unmap(mapping.dma, size).unwrap();
                    // SAFETY: this thread's own buffer region.
                    let result = unsafe { pool.memory().slice(orig, size) };
                    let intact =
                        result.iter().enumerate().all(|(index, &byte)| byte == !byte_for(thread, round, index));
                    assert!(intact, "thread {thread} round {round}: copy-back corrupted");
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.slots_in_use, 0, "every slot released");
    assert_eq!(stats.maps, (THREADS * ROUNDS) as u64);
}

std::thread_local! {
    /// The "CPU" a test thread plays.
    static CPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn this_cpu() -> usize {
    CPU.with(std::cell::Cell::get)
}

#[test]
fn a_pool_cut_per_cpu_has_one_area_per_cpu_while_each_holds_a_segment() {
    let areas = |cpus, bytes| PoolConfig::per_cpu(cpus, bytes, this_cpu).areas;
    assert_eq!(areas(1, 4 << 20), 1);
    assert_eq!(areas(2, 4 << 20), 2);
    assert_eq!(areas(3, 4 << 20), 4, "rounded up to a power of two, as Linux does");
    // 1 MiB is 512 slots: eight areas would hold 64 slots each, less than a 128-slot segment.
    assert_eq!(areas(8, 1 << 20), 4);
    // 128 KiB is 64 slots, less than one segment: one area, or the largest map would not fit.
    assert_eq!(areas(4, 128 << 10), 1);
    // An odd number of slots cannot be split evenly.
    assert_eq!(areas(2, (4 << 20) + 2048), 1);
    assert_eq!(areas(0, 4 << 20), 1, "no CPU listed still gives the pool an area");
}

#[test]
fn a_restricted_pool_gets_the_longest_segment_four_of_which_fit_each_area() {
    const KIB: u64 = 1 << 10;
    let cut = |cpus, bytes: u64| {
        let config = PoolConfig::restricted(cpus, bytes, this_cpu);
        (config.areas, (config.segment_slots * SLOT_SIZE) as u64)
    };
    assert_eq!(cut(2, 4 << 20), (2, 512 * KIB), "2 MiB areas: four 512 KiB segments each");
    assert_eq!(cut(1, 4 << 20), (1, 1 << 20), "one 4 MiB area");
    assert_eq!(cut(1, 3 << 20), (1, 512 * KIB), "a quarter of 3 MiB, rounded down to a power of two");
    assert_eq!(cut(1, 6 << 20), (1, 1 << 20), "a quarter of 6 MiB, rounded down");
    assert_eq!(cut(1, 64 << 20), (1, RESTRICTED_SEGMENT_LIMIT as u64), "no longer than the limit");
    assert_eq!(cut(4, 4 << 20), (4, 256 * KIB), "1 MiB areas afford Linux's segment");
    assert_eq!(cut(4, 1 << 20), (4, 256 * KIB), "256 KiB areas: still never below Linux's");
    assert_eq!(cut(1, 128 * KIB), (1, 256 * KIB), "a pool smaller than a segment, as per_cpu cuts it");
    assert_eq!(cut(2, (4 << 20) + 2048), (1, 1 << 20), "one area of an odd number of slots");
    for (cpus, bytes) in [(1, 4u64 << 20), (2, 4 << 20), (8, 1 << 20), (4, 128 * KIB), (0, 4 << 20)] {
        let (linux, ours) = (PoolConfig::per_cpu(cpus, bytes, this_cpu), PoolConfig::restricted(cpus, bytes, this_cpu));
        assert_eq!(linux.areas, ours.areas, "the same areas as per_cpu for {cpus} CPUs, {bytes} bytes");
    }
}

#[test]
fn each_cpu_maps_in_its_own_area_first_and_moves_on_when_it_is_full() {
    const CPUS: usize = 4;
    let ram = SharedRam::new((PER_THREAD + POOL_SIZE) as usize);
    let pool_start = PhysAddr::new(RAM_BASE + PER_THREAD);
    let pool_range = PhysRange::new(pool_start, POOL_SIZE).unwrap();
    let config = PoolConfig::per_cpu(CPUS, POOL_SIZE, this_cpu);
    assert_eq!(config.areas, CPUS);
    let pool = BouncePool::new(ram, pool_range, DmaAddr::new(pool_start.as_u64()), config).unwrap();
    let area_bytes = POOL_SIZE / CPUS as u64;
    let area_of = |dma: DmaAddr| ((dma.as_u64() - pool_start.as_u64()) / area_bytes) as usize;
    let buffer = PhysAddr::new(RAM_BASE);
    std::thread::scope(|scope| {
        for cpu in 0..CPUS {
            let pool = &pool;
            scope.spawn(move || {
                CPU.with(|own| own.set(cpu));
                let mapping = pool.map(buffer, 4096, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
                assert_eq!(area_of(mapping.dma), cpu, "CPU {cpu} mapped at {:?}", mapping.dma);
                pool.unmap(mapping.dma, 4096).unwrap();
            });
        }
    });
    // CPU 1 fills its own area a page at a time; its next map goes to area 2.
    CPU.with(|own| own.set(1));
    let fill: Vec<_> = (0..area_bytes / 4096)
        .map(|_| pool.map(buffer, 4096, DmaDirection::ToDevice, &Constraints::NONE).unwrap())
        .collect();
    assert!(fill.iter().all(|mapping| area_of(mapping.dma) == 1), "the area of CPU 1 filled first");
    let spilled = pool.map(buffer, 4096, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    assert_eq!(area_of(spilled.dma), 2, "the next area in turn once CPU 1's is full");
    for mapping in fill.iter().chain([&spilled]) {
        pool.unmap(mapping.dma, mapping.size).unwrap();
    }
    assert_eq!(pool.stats().slots_in_use, 0);
}
