//! What a teaching OS prints: the occupancy map and the statistics.

mod common;

use common::*;
use swiotlb::{Constraints, DmaDirection, PoolConfig};

#[test]
fn occupancy_map_shows_each_area() {
    let pool = pool_at(0, 256 << 10, 0, PoolConfig { areas: 2, ..PoolConfig::default() });
    assert_eq!(pool.occupancy_map(8), "[........|........]");
    // 16 KiB = 8 slots = one column of area 0; then 1 slot = part of the next area's column.
    let first = pool.map(ram(0), 16 << 10, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    let second = pool.map(ram(0), 100, DmaDirection::ToDevice, &Constraints::NONE).unwrap();
    assert_eq!(pool.occupancy_map(8), "[#.......|+.......]");
    pool.unmap(first.dma, 16 << 10).unwrap();
    pool.unmap(second.dma, 100).unwrap();
    assert_eq!(pool.occupancy_map(8), "[........|........]");
}

#[test]
fn statistics_count_slots_bytes_and_refusals() {
    let pool = simple_pool();
    let mapping = pool.map(ram(0), 5000, DmaDirection::Bidirectional, &Constraints::NONE).unwrap();
    pool.sync_for_cpu(mapping.dma, 100).unwrap();
    assert!(pool.unmap(mapping.dma, 1).is_err());
    pool.unmap(mapping.dma, 5000).unwrap();
    assert!(pool.map(ram(0), 0, DmaDirection::ToDevice, &Constraints::NONE).is_err());
    let stats = pool.stats();
    assert_eq!((stats.slots_in_use, stats.high_water, stats.slots_total), (0, 4, 512));
    assert_eq!((stats.maps, stats.unmaps), (1, 1));
    assert_eq!((stats.bytes_to_device, stats.bytes_to_cpu), (5000, 5100));
    assert_eq!((stats.failures.bad_handle, stats.failures.bad_request), (1, 1));
    let text = stats.to_string();
    assert!(text.contains("slots 0/512 in use (high water 4)"), "{text}");
    assert!(text.contains("1 bad request, 1 bad handle"), "{text}");
}
