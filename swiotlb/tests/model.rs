//! Long random sequences of map, unmap, sync, alloc, free and bad requests, checked after every
//! step against a simple reference model: which slots are in use, which buffers are live, what
//! bytes the CPU and the device should see.
//!
//! The reference re-derives every rule from the contract with plain arithmetic, one slot at a
//! time, independent of the pool's bitmaps and masks:
//! - a successful request: its slots were free, it sits inside one area, the region is aligned
//!   and sized as rule 2 says, the offset bits are preserved (rules 1, 3), rule 4's page
//!   alignment holds, the buffer is below the DMA mask and crosses no segment boundary;
//! - a refused request: a slot-by-slot scan of the model finds no run that would have done
//!   (completeness), on the current state for "no space", on an empty pool for "too large";
//! - bytes: map copies in, padding is zeroed when asked, syncs and unmap copy exactly the
//!   bytes the direction allows;
//! - bad requests return a typed error and change nothing;
//! - at the end everything is released and the pool is entirely free (exact release).
//!
//! 16 seeds × 62 500 steps = one million operations. A failure prints the seed and step.

mod common;

use std::collections::BTreeMap;

use common::*;
use swiotlb::{
    CoherentBuffer, Constraints, DmaAddr, DmaDirection, DmaError, Mapping, PAGE_SIZE, PhysAddr, PoolConfig, SLOT_SIZE,
};

const STEPS_PER_SEED: usize = 62_500;

#[test]
fn one_million_random_operations_first_half() {
    for seed in 0..8 {
        run_seed(seed);
    }
}

#[test]
fn one_million_random_operations_second_half() {
    for seed in 8..16 {
        run_seed(seed);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Random bytes to slice test data from: copying is fast even in a debug build, generating
/// byte by byte is not.
struct Noise(Vec<u8>);

impl Noise {
    fn bytes(&self, rng: &mut Rng, len: usize) -> Vec<u8> {
        let start = rng.below((self.0.len() - len) as u64) as usize;
        self.0[start..start + len].to_vec()
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes == vec![0; bytes.len()].as_slice()
}

struct LiveMapping {
    mapping: Mapping,
    orig: PhysAddr,
    direction: DmaDirection,
    /// What the caller's buffer should hold.
    cpu_bytes: Vec<u8>,
    /// What the bounce buffer should hold.
    device_bytes: Vec<u8>,
}

struct Machine {
    pool: Pool,
    rng: Rng,
    noise: Noise,
    /// The reference: in-use flag per slot.
    used: Vec<bool>,
    streaming: BTreeMap<u64, LiveMapping>,
    coherent: BTreeMap<u64, (CoherentBuffer, usize, usize)>,
    /// Caller buffers in use, start → end, so that no two live mappings share orig bytes.
    origs: BTreeMap<u64, u64>,
    recently_unmapped: Vec<(DmaAddr, usize)>,
    step: usize,
    seed: u64,
}

fn run_seed(seed: u64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9));
    let pool_size = rng.pick(&[256u64 << 10, 512 << 10, 1 << 20]);
    let areas = rng.pick(&[1usize, 2, 4]);
    let segment_slots = rng.pick(&[32usize, 128, 128]);
    let base_offset = rng.below(64) * SLOT_SIZE as u64;
    // Half the seeds put the pool across DMA address 0x8000_0000, so a 31-bit mask cuts it.
    let phys = RAM_BASE + RAM_SIZE + base_offset;
    let bus_offset = if seed.is_multiple_of(2) {
        0
    } else {
        (0x8000_0000 - pool_size / 2 + base_offset % PAGE_SIZE as u64).wrapping_sub(phys)
    };
    let pool =
        pool_at(base_offset, pool_size, bus_offset, PoolConfig { areas, segment_slots, ..PoolConfig::default() });
    let slots = pool.geometry().slots;
    let mut machine = Machine {
        pool,
        rng,
        noise: Noise(pattern(seed, 1 << 20)),
        used: vec![false; slots],
        streaming: BTreeMap::new(),
        coherent: BTreeMap::new(),
        origs: BTreeMap::new(),
        recently_unmapped: Vec::new(),
        step: 0,
        seed,
    };
    for step in 0..STEPS_PER_SEED {
        machine.step = step;
        machine.random_operation();
        machine.check_counts();
        if step % 2048 == 0 {
            machine.check_every_slot();
        }
    }
    machine.release_everything();
}

impl Machine {
    fn context(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn random_operation(&mut self) {
        // Keep the pool between busy and full: both ends matter.
        let in_use = self.used.iter().filter(|&&used| used).count();
        let map_share = if in_use * 4 > self.used.len() * 3 { 22 } else { 40 };
        match self.rng.below(100) {
            share if share < map_share => self.map(),
            0..62 => self.unmap(),
            62..77 => self.sync(),
            77..86 => self.alloc(),
            86..95 => self.free(),
            _ => self.bad_request(),
        }
    }

    fn random_constraints(&mut self) -> Constraints {
        let rng = &mut self.rng;
        let dma_mask = if rng.chance(20) { 0x7fff_ffff } else { u64::MAX };
        let boundary =
            if rng.chance(20) { rng.pick(&[0x3ffu64, 0xfff, 0x3fff, 0xffff, 0x3_ffff, 0x7_ffff]) } else { u64::MAX };
        Constraints::NONE
            .with_min_align_mask(rng.pick(&[0, 0, 0x7ff, 0xfff, 0xfff, 0x3fff]))
            .with_alloc_align_mask(rng.pick(&[0, 0, 0xfff, 0x1fff, 0x3fff, 0xffff]))
            .with_dma_mask(dma_mask)
            .with_seg_boundary_mask(boundary)
            .with_zero_padding(rng.chance(30))
    }

    fn random_size(&mut self) -> usize {
        let rng = &mut self.rng;
        match rng.below(20) {
            0..13 => 1 + rng.below(512) as usize,
            13..17 => 1 + rng.below(8192) as usize,
            _ => 1 + rng.below(256 << 10) as usize,
        }
    }

    /// A caller buffer that overlaps no live one, or `None` after a few tries.
    fn free_orig(&mut self, size: usize) -> Option<PhysAddr> {
        for _ in 0..4 {
            let start = RAM_BASE + self.rng.below(RAM_SIZE - size as u64);
            let end = start + size as u64;
            let before = self.origs.range(..end).next_back();
            if before.is_none_or(|(_, &other_end)| other_end <= start) {
                return Some(PhysAddr::new(start));
            }
        }
        None
    }

    fn map(&mut self) {
        let size = self.random_size();
        let constraints = self.random_constraints();
        let Some(orig) = self.free_orig(size) else { return };
        let direction = self.rng.pick(&[DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional]);
        let cpu_bytes = self.noise.bytes(&mut self.rng, size);
        write(&self.pool, orig, &cpu_bytes);
        let rule = Rule::streaming(orig, size, &constraints);
        match self.pool.map(orig, size, direction, &constraints) {
            Ok(mapping) => {
                self.check_placement(&rule, &mapping);
                assert_eq!(read(&self.pool, mapping.bounce, size), cpu_bytes, "copy in, {}", self.context());
                if constraints.zero_padding {
                    let region = region_bytes(&self.pool, &mapping);
                    let pre = rule.offset as usize;
                    assert!(
                        is_zero(&region[..pre]) && is_zero(&region[pre + size..]),
                        "padding zeroed, {}",
                        self.context()
                    );
                }
                self.take(mapping.first_slot, mapping.slots);
                self.origs.insert(orig.as_u64(), orig.as_u64() + size as u64);
                let device_bytes = cpu_bytes.clone();
                self.streaming
                    .insert(mapping.dma.as_u64(), LiveMapping { mapping, orig, direction, cpu_bytes, device_bytes });
            }
            Err(error) => self.check_refusal(&rule, error),
        }
    }

    fn check_placement(&self, rule: &Rule, mapping: &Mapping) {
        let context = self.context();
        let geometry = self.pool.geometry();
        assert_eq!(mapping.slots * SLOT_SIZE, rule.region_bytes as usize, "region size, {context}");
        assert!(rule.valid_start(&self.pool, mapping.first_slot), "{mapping} breaks a rule, {context}");
        assert_eq!(mapping.dma, geometry.slot_dma(mapping.first_slot).add(rule.offset), "{context}");
        let area_first = mapping.first_slot / geometry.area_slots;
        let area_last = (mapping.first_slot + mapping.slots - 1) / geometry.area_slots;
        assert_eq!(area_first, area_last, "one area, {context}");
        let slots = mapping.first_slot..mapping.first_slot + mapping.slots;
        assert!(slots.clone().all(|slot| !self.used[slot]), "slot in two live regions, {context}");
    }

    /// A refused request: no run the reference would accept exists (now, or on an empty pool
    /// for "too large" and "unaddressable").
    fn check_refusal(&self, rule: &Rule, error: DmaError) {
        let context = self.context();
        let empty = vec![false; self.used.len()];
        match error {
            DmaError::NoSpace { .. } => {
                let found = rule.first_valid_run(&self.pool, &self.used);
                assert_eq!(found, None, "search missed a run, {context}");
            }
            DmaError::TooLarge { .. } => {
                let over_segment = rule.region_bytes > (self.pool.geometry().segment_slots * SLOT_SIZE) as u64;
                assert!(over_segment || rule.first_valid_run(&self.pool, &empty).is_none(), "{error}, {context}");
            }
            DmaError::Unaddressable { .. } => {
                assert_eq!(rule.first_valid_run(&self.pool, &empty), None, "{error}, {context}");
            }
            other => panic!("unexpected {other}, {context}"),
        }
    }

    fn take(&mut self, first: usize, count: usize) {
        for slot in first..first + count {
            self.used[slot] = true;
        }
    }

    fn give_back(&mut self, first: usize, count: usize) {
        for slot in first..first + count {
            self.used[slot] = false;
        }
    }

    fn random_live(&mut self) -> Option<u64> {
        if self.streaming.is_empty() {
            return None;
        }
        let skip = self.rng.below(self.streaming.len() as u64) as usize;
        self.streaming.keys().nth(skip).copied()
    }

    fn unmap(&mut self) {
        let Some(key) = self.random_live() else { return };
        let live = self.streaming.remove(&key).unwrap();
        let size = live.mapping.size;
        if live.direction.copies_to_cpu() {
            let written = self.noise.bytes(&mut self.rng, size);
            write(&self.pool, live.mapping.bounce, &written);
            self.pool.unmap(live.mapping.dma, size).unwrap();
            assert_eq!(read(&self.pool, live.orig, size), written, "copy back, {}", self.context());
        } else {
            self.pool.unmap(live.mapping.dma, size).unwrap();
            assert_eq!(read(&self.pool, live.orig, size), live.cpu_bytes, "no copy back, {}", self.context());
        }
        self.give_back(live.mapping.first_slot, live.mapping.slots);
        self.origs.remove(&live.orig.as_u64());
        self.recently_unmapped.push((live.mapping.dma, size));
        if self.recently_unmapped.len() > 8 {
            self.recently_unmapped.remove(0);
        }
    }

    fn sync(&mut self) {
        let Some(key) = self.random_live() else { return };
        let to_cpu = self.rng.chance(50);
        let size = self.streaming[&key].mapping.size;
        let start = self.rng.below(size as u64) as usize;
        let len = 1 + self.rng.below((size - start) as u64) as usize;
        let fresh = self.noise.bytes(&mut self.rng, len);
        let live = self.streaming.get_mut(&key).unwrap();
        let dma = live.mapping.dma.add(start as u64);
        if to_cpu {
            // The device wrote the sub-range; the CPU asks for exactly it.
            write(&self.pool, live.mapping.bounce.add(start as u64), &fresh);
            live.device_bytes[start..start + len].copy_from_slice(&fresh);
            self.pool.sync_for_cpu(dma, len).unwrap();
            if live.direction.copies_to_cpu() {
                live.cpu_bytes[start..start + len].copy_from_slice(&fresh);
            }
        } else {
            write(&self.pool, live.orig.add(start as u64), &fresh);
            live.cpu_bytes[start..start + len].copy_from_slice(&fresh);
            self.pool.sync_for_device(dma, len).unwrap();
            if live.direction.copies_to_device() {
                live.device_bytes[start..start + len].copy_from_slice(&fresh);
            }
        }
        let (orig, bounce) = (live.orig, live.mapping.bounce);
        let context = format!("seed {} step {}", self.seed, self.step);
        assert_eq!(read(&self.pool, orig, size), live.cpu_bytes, "cpu view after sync, {context}");
        assert_eq!(read(&self.pool, bounce, size), live.device_bytes, "device view after sync, {context}");
    }

    fn alloc(&mut self) {
        let size = 1 + self.rng.below(40 << 10) as usize;
        let dma_mask = if self.rng.chance(20) { 0x7fff_ffff } else { u64::MAX };
        let rule = Rule::coherent(size, dma_mask);
        match self.pool.alloc(size, dma_mask) {
            Ok(buffer) => {
                let geometry = self.pool.geometry();
                let first = geometry.slot_of(buffer.dma).unwrap();
                let slots = size.div_ceil(PAGE_SIZE) * 2;
                assert!(rule.valid_start(&self.pool, first), "{buffer:?}, {}", self.context());
                assert_eq!(buffer.phys.as_u64() % PAGE_SIZE as u64, 0);
                assert!(is_zero(&read(&self.pool, buffer.phys, size)), "zeroed");
                assert!((first..first + slots).all(|slot| !self.used[slot]), "{}", self.context());
                self.take(first, slots);
                // The owner scribbles on it; free must not care.
                self.pool.memory().fill(buffer.phys, size, 0x5a);
                self.coherent.insert(buffer.dma.as_u64(), (buffer, first, slots));
            }
            Err(error) => self.check_refusal(&rule, error),
        }
    }

    fn free(&mut self) {
        if self.coherent.is_empty() {
            return;
        }
        let skip = self.rng.below(self.coherent.len() as u64) as usize;
        let key = *self.coherent.keys().nth(skip).unwrap();
        let (buffer, first, slots) = self.coherent.remove(&key).unwrap();
        self.pool.free(buffer.dma, buffer.size).unwrap();
        self.give_back(first, slots);
    }

    fn bad_request(&mut self) {
        let before = (self.pool.stats().slots_in_use, self.streaming.len());
        let refused = match self.rng.below(6) {
            0 => {
                let Some(&(dma, size)) = self.recently_unmapped.last() else { return };
                if self.streaming.contains_key(&dma.as_u64()) {
                    return; // the address was mapped again since
                }
                self.pool.unmap(dma, size)
            }
            1 => {
                let Some(key) = self.random_live() else { return };
                let size = self.streaming[&key].mapping.size;
                self.pool.unmap(DmaAddr::new(key), size + 1)
            }
            2 => {
                let Some(key) = self.random_live() else { return };
                let size = self.streaming[&key].mapping.size;
                self.pool.sync_for_cpu(DmaAddr::new(key + 1), size)
            }
            3 => {
                let Some(key) = self.random_live() else { return };
                let size = self.streaming[&key].mapping.size;
                self.pool.free(DmaAddr::new(key), size)
            }
            4 => self.pool.map(ram(0), 0, DmaDirection::ToDevice, &Constraints::NONE).map(|_| ()),
            _ => {
                let stray = self.pool.geometry().dma_base.add(self.rng.below(1 << 20));
                if self.contains_live(stray) {
                    return;
                }
                self.pool.unmap(stray, 1)
            }
        };
        assert!(refused.is_err(), "bad request accepted, {}", self.context());
        assert_eq!((self.pool.stats().slots_in_use, self.streaming.len()), before);
    }

    fn contains_live(&self, dma: DmaAddr) -> bool {
        let inside = |start: u64, size: usize| dma.as_u64() >= start && dma.as_u64() < start + size as u64;
        self.streaming.values().any(|live| inside(live.mapping.region.as_u64(), live.mapping.region_len))
            || self.coherent.values().any(|(buffer, _, slots)| inside(buffer.dma.as_u64(), slots * SLOT_SIZE))
    }

    fn check_counts(&self) {
        let in_use = self.used.iter().filter(|&&used| used).count();
        assert_eq!(self.pool.stats().slots_in_use, in_use, "{}", self.context());
    }

    fn check_every_slot(&self) {
        let free: Vec<bool> = self.used.iter().map(|&used| !used).collect();
        assert_eq!(self.pool.slot_states(), free, "{}", self.context());
    }

    fn release_everything(&mut self) {
        while !self.streaming.is_empty() {
            self.unmap();
        }
        while !self.coherent.is_empty() {
            self.free();
        }
        assert!(all_free(&self.pool), "exact release, seed {}", self.seed);
        assert!(self.pool.stats().maps > 1000, "seed {} mapped too little", self.seed);
    }
}

/// The contract's rules, restated slot by slot for the reference model.
struct Rule {
    size: u64,
    offset: u64,
    region_bytes: u64,
    align_mask: u64,
    phase_mask: u64,
    orig: u64,
    dma_mask: u64,
    boundary_mask: u64,
}

impl Rule {
    fn streaming(orig: PhysAddr, size: usize, constraints: &Constraints) -> Self {
        let (min, alloc) = (constraints.min_align_mask, constraints.alloc_align_mask);
        let align_mask = if min == 0 && alloc == 0 && size >= PAGE_SIZE { 0xfff } else { alloc | 0x7ff };
        let offset = orig.as_u64() & min & align_mask;
        Self {
            size: size as u64,
            offset,
            region_bytes: (size as u64 + offset).next_multiple_of(align_mask + 1),
            align_mask,
            phase_mask: min & !align_mask,
            orig: orig.as_u64(),
            dma_mask: constraints.dma_mask,
            boundary_mask: constraints.seg_boundary_mask,
        }
    }

    fn coherent(size: usize, dma_mask: u64) -> Self {
        let pages = size.div_ceil(PAGE_SIZE) as u64;
        Self {
            size: size as u64,
            offset: 0,
            region_bytes: pages * PAGE_SIZE as u64,
            align_mask: pages.next_power_of_two() * PAGE_SIZE as u64 - 1,
            phase_mask: 0,
            orig: 0,
            dma_mask,
            boundary_mask: u64::MAX,
        }
    }

    /// Whether a region at pool slot `first` obeys every rule (freedom aside).
    fn valid_start(&self, pool: &Pool, first: usize) -> bool {
        let geometry = pool.geometry();
        let slots = (self.region_bytes / SLOT_SIZE as u64) as usize;
        let region = geometry.slot_dma(first).as_u64();
        let buffer = region + self.offset;
        let last_byte = buffer + self.size - 1;
        let area = first / geometry.area_slots;
        first + slots <= geometry.slots
            && (first + slots - 1) / geometry.area_slots == area
            && region & self.align_mask == 0
            && region & self.phase_mask == self.orig & self.phase_mask
            && last_byte <= self.dma_mask
            && buffer & !self.boundary_mask == last_byte & !self.boundary_mask
            && slots <= geometry.segment_slots
    }

    fn first_valid_run(&self, pool: &Pool, used: &[bool]) -> Option<usize> {
        let slots = (self.region_bytes / SLOT_SIZE as u64) as usize;
        let mut used_before = vec![0usize; used.len() + 1];
        for (slot, &in_use) in used.iter().enumerate() {
            used_before[slot + 1] = used_before[slot] + in_use as usize;
        }
        (0..used.len()).find(|&first| {
            first + slots <= used.len()
                && used_before[first + slots] == used_before[first]
                && self.valid_start(pool, first)
        })
    }
}
