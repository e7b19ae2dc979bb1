//! A simulated machine for host tests: RAM for the callers' buffers, and a bounce pool above it,
//! both inside one `HeapMemory`.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use swiotlb::{BouncePool, DmaAddr, HeapMemory, Mapping, PhysAddr, PhysRange, PoolConfig};

/// Physical address of the simulated RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Room for callers' buffers below the pool.
pub const RAM_SIZE: u64 = 4 << 20;

pub type Pool = BouncePool<HeapMemory>;

/// A pool of `size` bytes whose physical base is `RAM_BASE + RAM_SIZE + base_offset` and whose
/// DMA base is the physical base plus `bus_offset` (as `dma-ranges` would set it).
pub fn pool_at(base_offset: u64, size: u64, bus_offset: u64, config: PoolConfig) -> Pool {
    let phys = PhysAddr::new(RAM_BASE + RAM_SIZE + base_offset);
    let memory = HeapMemory::new(PhysAddr::new(RAM_BASE), (RAM_SIZE + base_offset + size) as usize);
    let range = PhysRange::new(phys, size).expect("test pool range");
    BouncePool::new(memory, range, DmaAddr::new(phys.as_u64() + bus_offset), config).expect("test pool")
}

/// A 1 MiB pool, page aligned (and 1 MiB aligned), one area, DMA = physical.
pub fn simple_pool() -> Pool {
    pool_at(0, 1 << 20, 0, PoolConfig::default())
}

/// An address in RAM with the given offset.
pub fn ram(offset: u64) -> PhysAddr {
    PhysAddr::new(RAM_BASE + offset)
}

/// Deterministic bytes, different for each `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn write(pool: &Pool, address: PhysAddr, data: &[u8]) {
    assert!(pool.memory().write(address, data), "write outside simulated memory");
}

pub fn read(pool: &Pool, address: PhysAddr, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    assert!(pool.memory().read(address, &mut out), "read outside simulated memory");
    out
}

/// The bytes of a mapping's whole region (padding included), as the device could see them.
pub fn region_bytes(pool: &Pool, mapping: &Mapping) -> Vec<u8> {
    let pre = mapping.dma.offset_from(mapping.region).unwrap();
    read(pool, PhysAddr::new(mapping.bounce.as_u64() - pre), mapping.region_len)
}

pub fn all_free(pool: &Pool) -> bool {
    pool.slot_states().iter().all(|&free| free) && pool.stats().slots_in_use == 0
}
