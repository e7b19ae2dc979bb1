//! A simulated machine for host tests: RAM, a write-back data cache, an IOMMU with a TLB, and
//! bus masters that read and write memory the way devices do.
//!
//! QEMU models no caches, so on QEMU a DMA API that forgets a clean or an invalidate passes
//! every test, and loses data on the first board with a non-coherent device (the Raspberry Pi
//! 4's whole `/soc`). This machine is where such bugs show: its cache (the `cache` module) keeps what the CPU
//! sees apart from what memory holds, evicts lines and fetches them speculatively at random
//! moments (seeded, so a failure replays), and lets a test switch one maintenance operation of
//! the API off ([`Machine::skip`]) to watch a named test fail without it.
//!
//! It implements [`Platform`], so the real API runs on it unchanged:
//!
//! ```text
//!   test ──▶ DmaDevice<Machine> ──▶ Machine: physical(), clean(), invalidate(), heap, IOMMU
//!     │                                 │
//!     └── Machine::device_read/write ───┘  a bus master: through the route's windows, pool or
//!                                          IOMMU (TLB first), then memory or, if it snoops, the cache
//! ```

mod cache;
mod iommu;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::{RefCell, UnsafeCell};
use core::ptr::NonNull;

use addr::{DmaAddr, PhysAddr, PhysRange};
use platform::dma_config::{DmaDescription, DmaWindow};
use swiotlb::{BouncePool, Constraints, PhysMemory, PoolConfig};
use vmsa::Granule;

use crate::debug::Checker;
use crate::device::{DmaDevice, Route};
use crate::iommu::Domain;
use crate::platform::{Maintenance, MemoryKind, Platform};
use crate::pool::DmaPool;
use cache::{Cache, Ram};
pub use iommu::{BusFault, SimIotlb, SimTables};

/// How many of the latest allocations the cache watches for the CPU's stores and fetches
/// speculatively: the buffers a test is working on (older ones stay exact, only calmer).
const WATCHED: usize = 8;

/// How the simulated machine is built.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Where RAM starts.
    pub base: PhysAddr,
    /// How much RAM: half heap (buffers, coherent memory, page tables), half for pools.
    pub size: usize,
    /// The data cache line, as `CTR_EL0.DminLine` would report it.
    pub line: usize,
    /// Seed of the random evictions and speculative fetches.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { base: PhysAddr::new(0x4000_0000), size: 4 << 20, line: 64, seed: 1 }
    }
}

/// How often, per line and per event, the cache evicts a line it holds or fetches one of the
/// ranges it watches, in parts per thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Churn {
    /// Evictions.
    pub evict: u32,
    /// Speculative fetches.
    pub speculate: u32,
}

struct Inner {
    memory: Vec<u8>,
    cache: Cache,
    /// The heap's free ranges, as (start, size) offsets from the RAM base.
    free: Vec<(usize, usize)>,
    /// The next byte of the pool half handed to a pool.
    pools_next: usize,
    kinds: Vec<(PhysRange, MemoryKind)>,
    /// The latest allocations: where speculative fetches happen and CPU stores are noticed by
    /// [`Machine::tick`] and [`Machine::evict_all`] (every other event notices what it touches).
    watched: Vec<PhysRange>,
    rng: u64,
    churn: Churn,
    skipped: Option<Maintenance>,
    done: Vec<(Maintenance, PhysRange)>,
    tlb: iommu::Tlb,
}

/// The simulated machine. Tests leak one per test (`Machine::new` returns `&'static`), as the
/// API's routes hold `'static` pools and domains like the kernel's.
pub struct Machine {
    base: PhysAddr,
    size: usize,
    cpu: Box<[UnsafeCell<u8>]>,
    inner: RefCell<Inner>,
    checker: Checker,
}

/// The machine's RAM as the bounce pools reach it: the CPU's view.
#[derive(Clone, Copy)]
pub struct SimMemory(&'static Machine);

// SAFETY: `cpu_pointer` answers only for ranges inside the machine's RAM, which lives for the
// rest of the program (machines are leaked) and is reached only through raw pointers.
unsafe impl PhysMemory for SimMemory {
    fn window(&self, address: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        self.0.cpu_pointer(PhysRange::new(address, len as u64)?)
    }
}

impl Machine {
    /// A machine with `config`'s RAM, all of it zero, the cache empty and calm (no churn).
    pub fn new(config: Config) -> &'static Machine {
        assert!(config.base.as_u64().is_multiple_of(config.line as u64) && config.line.is_power_of_two());
        let zeroed = Box::<[UnsafeCell<u8>]>::new_zeroed_slice(config.size);
        // SAFETY: all-zero bytes are valid `UnsafeCell<u8>`s.
        let cpu = unsafe { zeroed.assume_init() };
        let inner = Inner {
            memory: alloc::vec![0; config.size],
            cache: Cache::new(config.line),
            free: alloc::vec![(0, config.size / 2)],
            pools_next: config.size / 2,
            kinds: Vec::new(),
            watched: Vec::new(),
            rng: config.seed | 1,
            churn: Churn { evict: 0, speculate: 0 },
            skipped: None,
            done: Vec::new(),
            tlb: iommu::Tlb::default(),
        };
        let machine =
            Machine { base: config.base, size: config.size, cpu, inner: RefCell::new(inner), checker: Checker::new() };
        Box::leak(Box::new(machine))
    }

    /// All of RAM.
    pub fn ram(&self) -> PhysRange {
        PhysRange::new(self.base, self.size as u64).expect("RAM fits the address space")
    }

    /// The debug checker every device of this machine reports to.
    pub fn checker(&'static self) -> &'static Checker {
        &self.checker
    }

    /// Where the CPU reaches `range`, if it lies in RAM.
    fn cpu_pointer(&self, range: PhysRange) -> Option<NonNull<u8>> {
        let offset = usize::try_from(range.start().offset_from(self.base)?).ok()?;
        let end = offset.checked_add(usize::try_from(range.size()).ok()?)?;
        if end > self.size {
            return None;
        }
        NonNull::new(UnsafeCell::raw_get(self.cpu[offset..].as_ptr()))
    }

    /// Runs `work` on both copies of RAM and the cache.
    fn with_ram<R>(&self, work: impl FnOnce(&mut Cache, &mut Ram<'_>, &mut Inner) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let mut memory = core::mem::take(&mut inner.memory);
        let cells = UnsafeCell::raw_get(self.cpu.as_ptr());
        // SAFETY: the CPU view is only ever reached through raw pointers, and this runs on the
        // one thread that owns the machine (it is not `Sync`), so for the duration of `work`
        // this is the only reference to those bytes.
        let cpu = unsafe { core::slice::from_raw_parts_mut(cells, self.size) };
        let mut ram = Ram { base: self.base.as_u64(), cpu, memory: &mut memory };
        let mut cache = core::mem::replace(&mut inner.cache, Cache::new(1));
        let result = work(&mut cache, &mut ram, inner);
        inner.cache = cache;
        inner.memory = memory;
        result
    }

    /// Carves zeroed, `align`-aligned bytes from the heap; the CPU uses them (watched).
    fn carve(&self, size: usize, align: usize) -> Option<PhysRange> {
        let mut inner = self.inner.borrow_mut();
        let base = self.base.as_u64() as usize;
        let (index, start) = inner.free.iter().enumerate().find_map(|(index, &(start, free))| {
            let aligned = (base + start).next_multiple_of(align) - base;
            (aligned + size <= start + free).then_some((index, aligned))
        })?;
        let (free_start, free_size) = inner.free.remove(index);
        if start > free_start {
            inner.free.push((free_start, start - free_start));
        }
        if start + size < free_start + free_size {
            inner.free.push((start + size, free_start + free_size - start - size));
        }
        let range = PhysRange::new(self.base.add(start as u64), size as u64)?;
        if inner.watched.len() == WATCHED {
            inner.watched.remove(0);
        }
        inner.watched.push(range);
        Some(range)
    }

    /// A buffer in cached RAM for a test, `align`-aligned, zeroed (in the CPU's view and in
    /// memory alike).
    // An allocator: each call carves bytes no earlier call handed out, so the `&mut` is unique
    // although it comes from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn buffer(&'static self, size: usize, align: usize) -> &'static mut [u8] {
        let range = self.carve(size.max(1), align).expect("the simulated heap has room");
        let pointer = self.cpu_pointer(range).expect("the heap is RAM");
        // SAFETY: freshly carved bytes of the leaked RAM, handed out once.
        let bytes = unsafe { core::slice::from_raw_parts_mut(pointer.as_ptr(), size) };
        self.with_ram(|cache, ram, _| {
            cache.invalidate(ram, range);
            let start = (range.start().as_u64() - ram.base) as usize;
            ram.cpu[start..start + size].fill(0);
            ram.memory[start..start + size].fill(0);
        });
        bytes
    }

    /// The physical range behind a buffer the CPU holds.
    pub fn physical_of(&self, buffer: &[u8]) -> PhysRange {
        self.physical(NonNull::from(buffer).cast(), buffer.len()).expect("a buffer in the machine's RAM")
    }

    /// Says what `range` is, for the debug checker (everything else in RAM is RAM).
    pub fn mark(&self, range: PhysRange, kind: MemoryKind) {
        self.inner.borrow_mut().kinds.push((range, kind));
    }

    /// A pool of `size` bytes from the pool half of RAM; uncached unless `coherent` (every
    /// device using it snoops), seen by devices at its physical address plus `bus_offset`.
    pub fn pool(
        &'static self,
        name: &'static str,
        size: usize,
        restricted: bool,
        coherent: bool,
        bus_offset: u64,
    ) -> &'static DmaPool<Machine> {
        let range = {
            let mut inner = self.inner.borrow_mut();
            let start = inner.pools_next.next_multiple_of(64 << 10);
            assert!(start + size <= self.size, "the simulated RAM has no room for a {size}-byte pool");
            inner.pools_next = start + size;
            PhysRange::new(self.base.add(start as u64), size as u64).expect("inside RAM")
        };
        if !coherent {
            self.with_ram(|cache, ram, _| {
                cache.invalidate(ram, range);
                cache.set_uncached(range);
            });
        }
        let dma_base = DmaAddr::new(range.start().as_u64() + bus_offset);
        let bounce = BouncePool::new(SimMemory(self), range, dma_base, PoolConfig::default()).expect("a valid pool");
        Box::leak(Box::new(DmaPool { name, restricted, range, coherent, bounce }))
    }

    /// An IOMMU domain with `granule` pages, for a device that addresses up to `limit`.
    pub fn domain(&'static self, id: u16, granule: Granule, limit: u64) -> &'static Domain<Machine> {
        Box::leak(Box::new(self.new_domain(id, granule, limit)))
    }

    /// [`Self::domain`], owned, for a caller that configures it further.
    pub fn new_domain(&'static self, id: u16, granule: Granule, limit: u64) -> Domain<Machine> {
        let tables = SimTables::new(self, granule);
        let domain = Domain::new(id, u32::from(id), granule, limit, tables, SimIotlb::new(self, granule));
        domain.expect("a valid domain")
    }

    /// A device on this machine, watched by its debug checker.
    pub fn device(
        &'static self,
        name: &'static str,
        route: Route<Machine>,
        coherent: bool,
        constraints: Constraints,
    ) -> &'static DmaDevice<Machine> {
        Box::leak(Box::new(DmaDevice::new(name, route, coherent, constraints, self, Some(&self.checker))))
    }

    /// Bus windows: CPU `[cpu_start, cpu_start + size)` at bus address `cpu_start + offset`.
    pub fn windows(cpu_start: PhysAddr, size: u64, offset: u64, coherent: bool) -> DmaDescription<'static> {
        let mut description = DmaDescription { pool: None, pool_named_by: None, windows: Default::default(), coherent };
        let bus_start = DmaAddr::new(cpu_start.as_u64() + offset);
        description.windows.push(DmaWindow { cpu_start, bus_start, size });
        description
    }

    /// Sets the seed of the random events.
    pub fn seed(&self, seed: u64) {
        self.inner.borrow_mut().rng = seed | 1;
    }

    /// How often the cache evicts and fetches on its own.
    pub fn set_churn(&self, churn: Churn) {
        self.inner.borrow_mut().churn = churn;
    }

    /// Switches one maintenance operation of the API off (`None`: all on): the platform is
    /// asked for it and does nothing, as if the call were deleted from the API.
    pub fn skip(&self, maintenance: Option<Maintenance>) {
        self.inner.borrow_mut().skipped = maintenance;
    }

    /// Every maintenance operation performed so far, oldest first; the list is emptied.
    pub fn take_maintenance(&self) -> Vec<(Maintenance, PhysRange)> {
        core::mem::take(&mut self.inner.borrow_mut().done)
    }

    /// A moment passes: the cache may evict and fetch lines (as configured by [`Churn`]).
    pub fn tick(&self) {
        self.with_ram(|cache, ram, inner| {
            let watched = inner.watched.clone();
            for line in cache.held_lines(ram, &watched) {
                if chance(&mut inner.rng, inner.churn.evict) {
                    cache.evict(ram, line);
                }
            }
            for range in &watched {
                for line in cache.lines_of(*range) {
                    if chance(&mut inner.rng, inner.churn.speculate) {
                        cache.speculate(ram, line);
                    }
                }
            }
        });
    }

    /// The cache writes back and drops every line it holds (as under memory pressure).
    pub fn evict_all(&self) {
        self.with_ram(|cache, ram, inner| {
            let watched = inner.watched.clone();
            for line in cache.held_lines(ram, &watched) {
                cache.evict(ram, line);
            }
        });
    }

    /// `DC CIVAC` on `range`, outside the API: for tests that show what other choices lose.
    pub fn clean_and_invalidate(&self, range: PhysRange) {
        self.with_ram(|cache, ram, _| cache.clean_and_invalidate(ram, range));
    }

    /// The CPU fetches every line of `range` into the cache (a prefetch, a speculative load).
    pub fn speculate(&self, range: PhysRange) {
        self.with_ram(|cache, ram, _| {
            for line in cache.lines_of(range) {
                cache.speculate(ram, line);
            }
        });
    }

    /// What memory holds at `range`, behind the cache (what a non-snooping device would read).
    pub fn memory_bytes(&self, range: PhysRange) -> Vec<u8> {
        let mut out = alloc::vec![0; range.size() as usize];
        self.with_ram(|cache, ram, _| cache.device_read(ram, range, &mut out));
        out
    }

    /// A device reads `len` bytes at `dma`, through its route.
    pub fn device_read(&self, device: &DmaDevice<Machine>, dma: DmaAddr, len: usize) -> Result<Vec<u8>, BusFault> {
        self.tick();
        let mut out = alloc::vec![0; len];
        let mut done = 0;
        for (physical, chunk) in self.bus_chunks(device, dma, len, false)? {
            let part = &mut out[done..done + chunk];
            match device.coherent {
                true => self.with_ram(|_, ram, _| {
                    let start = (physical.as_u64() - ram.base) as usize;
                    part.copy_from_slice(&ram.cpu[start..start + chunk]);
                }),
                false => self.with_ram(|cache, ram, _| cache.device_read(ram, range(physical, chunk), part)),
            }
            done += chunk;
        }
        Ok(out)
    }

    /// A device writes `data` at `dma`, through its route.
    pub fn device_write(&self, device: &DmaDevice<Machine>, dma: DmaAddr, data: &[u8]) -> Result<(), BusFault> {
        self.tick();
        let mut done = 0;
        for (physical, chunk) in self.bus_chunks(device, dma, data.len(), true)? {
            let part = &data[done..done + chunk];
            self.with_ram(|cache, ram, _| match device.coherent {
                true => cache.snooped_write(ram, range(physical, chunk), part),
                false => cache.device_write(ram, range(physical, chunk), part),
            });
            done += chunk;
        }
        self.tick();
        Ok(())
    }

    /// The physical pieces `[dma, dma + len)` reaches through `device`'s route.
    fn bus_chunks(
        &self,
        device: &DmaDevice<Machine>,
        dma: DmaAddr,
        len: usize,
        write: bool,
    ) -> Result<Vec<(PhysAddr, usize)>, BusFault> {
        let unreachable = BusFault::Unreachable { dma };
        let whole = |physical: Option<PhysAddr>| -> Result<Vec<(PhysAddr, usize)>, BusFault> {
            let physical = physical.ok_or(unreachable)?;
            let inside = PhysRange::new(physical, len as u64).is_some_and(|range| self.ram().covers(&range));
            inside.then(|| alloc::vec![(physical, len)]).ok_or(unreachable)
        };
        match &device.route {
            Route::Direct { windows, .. } => {
                let (first, last) = (
                    windows.dma_to_phys(dma),
                    dma.checked_add(len as u64 - 1).and_then(|last| windows.dma_to_phys(last)),
                );
                let contiguous =
                    first.zip(last).is_some_and(|(first, last)| last.offset_from(first) == Some(len as u64 - 1));
                whole(first.filter(|_| contiguous))
            }
            Route::Restricted(pool) => whole(pool.holds(dma, len as u64).then(|| device.translate(dma)).flatten()),
            Route::Iommu { domain, .. } => self.translate_through(domain, dma, len, write),
        }
    }
}

fn range(start: PhysAddr, size: usize) -> PhysRange {
    PhysRange::new(start, size as u64).expect("a range inside RAM")
}

/// A random event with probability `per_mille` / 1000 (xorshift64*).
fn chance(rng: &mut u64, per_mille: u32) -> bool {
    if per_mille == 0 {
        return false;
    }
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 1000 < u64::from(per_mille)
}

impl Platform for Machine {
    type Memory = SimMemory;
    type Tables = SimTables;
    type Iotlb = SimIotlb;

    fn physical(&self, buffer: NonNull<u8>, size: usize) -> Option<PhysRange> {
        let start = UnsafeCell::raw_get(self.cpu.as_ptr()) as usize;
        let offset = (buffer.as_ptr() as usize).checked_sub(start)?;
        (offset.checked_add(size)? <= self.size).then(|| PhysRange::new(self.base.add(offset as u64), size as u64))?
    }

    fn cache_line_size(&self) -> usize {
        self.inner.borrow().cache.line
    }

    fn clean(&self, range: PhysRange, why: Maintenance) {
        self.tick();
        self.maintain(range, why, Cache::clean);
    }

    fn invalidate(&self, range: PhysRange, why: Maintenance) {
        self.tick();
        self.maintain(range, why, Cache::invalidate);
    }

    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        let range = self.carve(layout.size(), layout.align())?;
        let pointer = self.cpu_pointer(range)?;
        // SAFETY: freshly carved bytes of RAM; zeroed by the CPU, as `alloc_zeroed` does.
        unsafe { core::ptr::write_bytes(pointer.as_ptr(), 0, layout.size()) };
        Some(pointer)
    }

    unsafe fn deallocate(&self, pointer: NonNull<u8>, layout: Layout) {
        let start = UnsafeCell::raw_get(self.cpu.as_ptr()) as usize;
        let offset = pointer.as_ptr() as usize - start;
        let mut inner = self.inner.borrow_mut();
        inner.free.push((offset, layout.size()));
        let range = PhysRange::new(self.base.add(offset as u64), layout.size() as u64);
        inner.watched.retain(|watched| Some(*watched) != range);
    }

    fn memory_kind(&self, range: PhysRange) -> MemoryKind {
        let inner = self.inner.borrow();
        let marked =
            inner.kinds.iter().find(|(marked, _)| marked.start() < range.end() && range.start() < marked.end());
        match marked {
            Some((_, kind)) => *kind,
            None if self.ram().covers(&range) => MemoryKind::Ram,
            None => MemoryKind::NotMapped,
        }
    }
}

impl Machine {
    fn maintain(&self, range: PhysRange, why: Maintenance, operation: fn(&mut Cache, &mut Ram<'_>, PhysRange)) {
        if self.inner.borrow().skipped == Some(why) {
            return;
        }
        self.inner.borrow_mut().done.push((why, range));
        self.with_ram(|cache, ram, _| operation(cache, ram, range));
    }
}
