//! The GICv3 ITS: message-signalled interrupts become LPIs (`drivers::gic_its` explains the
//! tables and commands; this file gives them memory and registers).
//!
//! Bringing it up (IHI 0069):
//!
//! 1. LPIs at the redistributor (5.1.1): a *configuration table*, one byte per LPI (priority,
//!    enable), in `GICR_PROPBASER`; a *pending table*, one bit per INTID, in `GICR_PENDBASER`;
//!    then `GICR_CTLR.EnableLPIs`. This kernel uses INTIDs below 2^14: LPIs 8192 to 16383.
//! 2. The ITS's own tables (5.2): each `GITS_BASER<n>` says which table it wants (devices,
//!    collections) and how large an entry is; the kernel gives each a zeroed, flat table.
//! 3. The command queue (`GITS_CBASER`), then `GITS_CTLR.Enabled`, then one collection mapped to
//!    this CPU's redistributor (MAPC).
//!
//! Every CPU started afterwards does step 1 for its own redistributor (the configuration table
//! is shared, the pending table its own) and maps a collection of its own, numbered as the CPU
//! is ([`start_this_cpu`]). An event is delivered through one collection, the boot CPU's when
//! it is mapped; MOVI moves it to another CPU's ([`move_to_cpu`]). A CPU finds its
//! redistributor by its affinity, which each frame's `GICR_TYPER` states (12.11.32).
//!
//! A device is then added with MAPD (its interrupt translation table) and one MAPTI per event;
//! its LPIs start disabled, and [`set_enabled`] flips the configuration byte and has the ITS
//! re-read it (INV, then SYNC, waited for).
//!
//! The tables live in ordinary RAM that the ITS reads and writes itself, like a DMA master that
//! is part of the interrupt controller: not through the SMMU, and (with the Inner Shareable,
//! Write-Back attributes given in the base registers) coherently with the CPU's caches.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use core::alloc::Layout;
use core::time::Duration;

use addr::{PhysAddr, VirtAddr};
use drivers::gic_its::{COLLECTION_TABLE, Command, DEVICE_TABLE, ItsType, TABLE_PAGE, TableRequest};
use spin::{Mutex, MutexGuard, Once};

/// `GITS_*` register offsets in the ITS control frame (IHI 0069, 12.19).
const GITS_CTLR: u64 = 0x0000;
const GITS_TYPER: u64 = 0x0008;
const GITS_CBASER: u64 = 0x0080;
const GITS_CWRITER: u64 = 0x0088;
const GITS_CREADR: u64 = 0x0090;
const GITS_BASER: u64 = 0x0100;
/// The doorbell: the translation frame (64 KiB after the control frame), offset 0x40.
pub const GITS_TRANSLATER: u64 = 0x1_0040;

/// `GICR_*` offsets in a redistributor's RD_base frame (IHI 0069, 12.11).
const GICR_CTLR: u64 = 0x0000;
const GICR_TYPER: u64 = 0x0008;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;

/// INTID bits the LPI tables cover: LPIs 8192 to 16383.
const INTID_BITS: u32 = 14;
/// The first LPI.
pub const FIRST_LPI: u32 = 8192;
/// The configuration byte of an enabled LPI: priority 0xa0 (bits 7:2, below the mask of 0xff)
/// and the enable bit.
const LPI_ENABLED: u8 = 0xa0 | 1;
/// Commands in the queue: one 4 KiB page.
const QUEUE_COMMANDS: usize = 4096 / 32;
/// How long the ITS may take to read a command.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// EventID bits of every device's table: 16 events (an NVMe admin queue and an I/O queue for
/// each of up to 8 CPUs fit).
const EVENT_BITS: u32 = 4;

/// The running ITS.
struct Its {
    /// What the host bridges' `msi-map` names it by.
    phandle: Option<u32>,
    registers: VirtAddr,
    doorbell: PhysAddr,
    kind: ItsType,
    /// The redistributor of the boot CPU, as MAPC and SYNC name it.
    target: u64,
    /// The redistributor region, where each CPU finds its frame.
    redistributors: Redistributors,
    /// The LPI configuration table every redistributor reads.
    configuration_physical: PhysAddr,
    /// Each CPU's collection (numbered as the CPU) and its redistributor, once mapped.
    collections: BTreeMap<u16, u64>,
    /// The collection new events are mapped to: the boot CPU's.
    boot_collection: u16,
    queue: VirtAddr,
    next_command: usize,
    configuration: VirtAddr,
    next_lpi: u32,
    /// Every LPI handed out: its device and event, for INV.
    lpis: BTreeMap<u32, (u32, u32)>,
}

static ITS: Once<Mutex<Its>> = Once::new();

/// The ITS, locked with IRQs masked until dropped. The interrupt code takes this lock while it
/// holds the GIC's (enabling an LPI is an ITS command), and an IRQ handler takes the GIC's: a
/// CPU holding this one must not take an IRQ meanwhile, or two CPUs could wait on each other.
struct Locked {
    guard: Option<MutexGuard<'static, Its>>,
    was_masked: bool,
}

impl core::ops::Deref for Locked {
    type Target = Its;
    fn deref(&self) -> &Its {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl core::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Its {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // The lock is let go before IRQs are let in.
        drop(self.guard.take());
        if !self.was_masked {
            arch::interrupt::unmask();
        }
    }
}

/// The running ITS, locked ([`Locked`]).
fn lock() -> Result<Locked, String> {
    let its = ITS.get().ok_or("no ITS")?;
    let was_masked = arch::interrupt::masked();
    arch::interrupt::mask();
    Ok(Locked { guard: Some(its.lock()), was_masked })
}

/// A GICv3's redistributor region: one set of frames per CPU (IHI 0069, 12.10), mapped.
#[derive(Debug, Clone, Copy)]
pub struct Redistributors {
    /// The region, mapped as Device memory for good.
    pub registers: VirtAddr,
    /// Where it is.
    pub physical: addr::PhysRange,
}

/// `GICR_TYPER` bits (IHI 0069, 12.11.32): LPIs supported, virtual LPIs (two more frames per
/// redistributor), the last redistributor of the region.
const GICR_TYPER_PLPIS: u64 = 1 << 0;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_TYPER_LAST: u64 = 1 << 4;

impl Redistributors {
    /// This CPU's RD_base frame, mapped and physical: the frame whose `GICR_TYPER` affinity is
    /// this CPU's MPIDR affinity, walking the region a redistributor at a time (two 64 KiB
    /// frames each, four with virtual LPIs) until the one marked last.
    fn of_this_cpu(&self) -> Option<(VirtAddr, PhysAddr, u64)> {
        let mpidr = arch::smp::this_cpu_mpidr();
        let affinity = (mpidr >> 8 & 0xff00_0000) | (mpidr & 0xff_ffff);
        let mut offset = 0;
        while offset + (64 << 10) <= self.physical.size() {
            let frame = self.registers.add(offset);
            // SAFETY: the region is mapped as Device memory for good, and the frame lies in it.
            let typer = unsafe { read(frame, GICR_TYPER) };
            if typer >> 32 == affinity {
                return Some((frame, self.physical.start().add(offset), typer));
            }
            if typer & GICR_TYPER_LAST != 0 {
                return None;
            }
            offset += if typer & GICR_TYPER_VLPIS != 0 { 4 } else { 2 } << 16;
        }
        None
    }

    /// Turns LPIs on at this CPU's redistributor, with the shared `configuration` table and a
    /// pending table of its own; returns how MAPC and SYNC name the redistributor (its address
    /// >> 16 or its processor number, as the ITS says).
    fn enable_lpis_here(&self, configuration: PhysAddr, kind: &ItsType) -> Result<u64, String> {
        let cpu = arch::smp::this_cpu();
        let (frame, physical, typer) =
            self.of_this_cpu().ok_or_else(|| format!("CPU {cpu}: no redistributor has its affinity"))?;
        if typer & GICR_TYPER_PLPIS == 0 {
            return Err(format!("CPU {cpu}: its redistributor does not support LPIs (GICR_TYPER.PLPIS clear)"));
        }
        // One bit per INTID, 64 KiB aligned.
        let (_, pending) = zeroed((1 << INTID_BITS) / 8, 64 << 10)?;
        // SAFETY: the frame is this CPU's RD_base, mapped as Device memory for good; LPIs are
        // still disabled there, when the two base registers may be written.
        unsafe {
            // Inner Shareable (bits 11:10 = 01), inner Write-Back read/write-allocate (9:7 = 111).
            const ATTRIBUTES: u64 = (0b01 << 10) | (0b111 << 7);
            write(frame, GICR_PROPBASER, configuration.as_u64() | ATTRIBUTES | u64::from(INTID_BITS - 1));
            // PTZ (bit 62): the pending table is zero, as allocated.
            write(frame, GICR_PENDBASER, pending.as_u64() | ATTRIBUTES | 1 << 62);
            // GICR_CTLR is a 32-bit register: EnableLPIs is bit 0.
            let control = read32(frame, GICR_CTLR);
            write32(frame, GICR_CTLR, control | 1);
        }
        Ok(match kind.physical_target_addresses {
            true => physical.as_u64() >> 16,
            false => (typer >> 8) & 0xffff,
        })
    }
}

/// Brings up LPIs at this CPU's redistributor (found in `redistributors`) and the ITS at
/// `registers` (mapped; `physical` is where the devices' writes go). Returns a description for
/// the boot log. `phandle` is what the devicetree names it by.
pub fn start(
    phandle: Option<u32>,
    registers: VirtAddr,
    physical: PhysAddr,
    redistributors: Redistributors,
) -> Result<String, String> {
    // SAFETY: the ITS control frame is mapped as Device memory for good; GITS_TYPER is a 64-bit
    // register in it. (The same holds for every register access below.)
    let kind = ItsType::decode(unsafe { read(registers, GITS_TYPER) });
    // One byte per LPI (INTIDs from 8192).
    let configuration = zeroed(((1 << INTID_BITS) - FIRST_LPI) as usize, 4096)?;
    let target = redistributors.enable_lpis_here(configuration.1, &kind)?;
    let mut tables = String::new();
    for index in 0..8 {
        let offset = GITS_BASER + 8 * index;
        // SAFETY: as above; GITS_BASER0-7 are 64-bit registers of the control frame.
        let request = TableRequest::decode(unsafe { read(registers, offset) });
        let entries = match request.kind {
            DEVICE_TABLE => 1u64 << kind.device_bits.min(16),
            COLLECTION_TABLE => 256,
            _ => continue,
        };
        let pages = request.pages_for(entries);
        let (_, base) = zeroed((pages * TABLE_PAGE) as usize, TABLE_PAGE as usize)?;
        // SAFETY: as above, with the ITS still disabled.
        unsafe { write(registers, offset, request.value(base.as_u64(), pages)) };
        tables += &format!(
            ", {} table {} KiB",
            if request.kind == DEVICE_TABLE { "device" } else { "collection" },
            pages * 64
        );
    }
    let (queue, queue_physical) = zeroed(QUEUE_COMMANDS * 32, 64 << 10)?;
    // SAFETY: as above; the queue is programmed while the ITS is disabled, then it is enabled.
    unsafe {
        const VALID: u64 = 1 << 63;
        // Inner Write-Back (bits 61:59 = 101), Inner Shareable (11:10 = 01); Size 0: one page.
        const ATTRIBUTES: u64 = (0b101 << 59) | (0b01 << 10);
        write(registers, GITS_CBASER, VALID | ATTRIBUTES | queue_physical.as_u64());
        write(registers, GITS_CWRITER, 0);
        let control = read32(registers, GITS_CTLR);
        write32(registers, GITS_CTLR, control | 1);
    }
    let its = Its {
        phandle,
        registers,
        doorbell: physical.add(GITS_TRANSLATER),
        kind,
        target,
        redistributors,
        configuration_physical: configuration.1,
        collections: BTreeMap::new(),
        boot_collection: arch::smp::this_cpu() as u16,
        queue,
        next_command: 0,
        configuration: configuration.0,
        next_lpi: FIRST_LPI,
        lpis: BTreeMap::new(),
    };
    ITS.call_once(|| Mutex::new(its));
    let mut its = lock()?;
    its.map_collection_here(target)?;
    Ok(format!(
        "ITS: doorbell GITS_TRANSLATER at PA {}, {}-bit DeviceIDs and EventIDs of {} bits, LPIs {FIRST_LPI}-{}{tables}",
        its.doorbell,
        kind.device_bits,
        kind.event_bits,
        (1u32 << INTID_BITS) - 1
    ))
}

/// The physical address devices write their MSIs to, if an ITS runs.
pub fn doorbell() -> Option<PhysAddr> {
    lock().ok().map(|its| its.doorbell)
}

/// Whether the running ITS is the one the devicetree calls `phandle`.
pub fn is(phandle: u32) -> bool {
    lock().is_ok_and(|its| its.phandle == Some(phandle))
}

/// Gives `device` (its DeviceID: the requester ID, through `msi-map`) an interrupt translation
/// table and maps its events 0..`events` to fresh LPIs, disabled; returns their INTIDs.
pub fn add_device(device: u32, events: u32) -> Result<alloc::vec::Vec<u32>, String> {
    let mut its = lock()?;
    if events > 1 << EVENT_BITS {
        return Err(format!("{events} events: this kernel gives a device at most {}", 1 << EVENT_BITS));
    }
    // The flat device table holds 2^min(DeviceID bits, 16) entries; a MAPD beyond it is a
    // command error that stalls the queue. A second MAPD of a DeviceID would replace the first
    // device's table: two functions the bus gives one DeviceID cannot both have vectors here.
    if device >= 1 << its.kind.device_bits.min(16) {
        return Err(format!("DeviceID {device:#x} is beyond the ITS's device table"));
    }
    if its.lpis.values().any(|&(mapped, _)| mapped == device) {
        return Err(format!("DeviceID {device:#x} already has its events mapped (another function shares it)"));
    }
    let itt_bytes = (its.kind.itt_entry_size << EVENT_BITS).max(256) as usize;
    let (_, itt) = zeroed(itt_bytes, 256)?;
    its.run(Command::map_device(device, itt.as_u64(), EVENT_BITS))?;
    let mut lpis = alloc::vec::Vec::new();
    for event in 0..events {
        let lpi = its.next_lpi;
        if lpi >= 1 << INTID_BITS {
            return Err("no LPI left".into());
        }
        its.next_lpi += 1;
        let collection = its.boot_collection;
        its.run(Command::map_event(device, event, lpi, collection))?;
        its.lpis.insert(lpi, (device, event));
        lpis.push(lpi);
    }
    Ok(lpis)
}

/// Enables or disables LPI `lpi`: its configuration byte, re-read by the ITS (INV, SYNC).
pub fn set_enabled(lpi: u32, enabled: bool) -> Result<(), String> {
    let mut its = lock()?;
    let &(device, event) = its.lpis.get(&lpi).ok_or_else(|| format!("LPI {lpi} was not handed out"))?;
    let byte = its.configuration.add(u64::from(lpi - FIRST_LPI));
    // SAFETY: the configuration table covers every LPI below 2^INTID_BITS, and lives for good.
    unsafe { byte.as_mut_ptr::<u8>().write_volatile(if enabled { LPI_ENABLED } else { 0 }) };
    its.run(Command::invalidate(device, event))
}

/// LPIs on this CPU, a CPU started after boot: its redistributor's LPIs turned on, and a
/// collection of its own mapped to it, numbered as the CPU.
pub fn start_this_cpu() -> Result<(), String> {
    let mut its = lock()?;
    let target = its.redistributors.enable_lpis_here(its.configuration_physical, &its.kind)?;
    its.map_collection_here(target)
}

/// Delivers LPI `lpi` from now on to CPU `cpu` (its place in the devicetree's list), through
/// that CPU's collection (MOVI): the CPU must have started its LPIs.
pub fn move_to_cpu(lpi: u32, cpu: usize) -> Result<(), String> {
    let mut its = lock()?;
    let &(device, event) = its.lpis.get(&lpi).ok_or_else(|| format!("LPI {lpi} was not handed out"))?;
    let collection = u16::try_from(cpu).map_err(|_| format!("CPU {cpu} has no collection"))?;
    let &target = its.collections.get(&collection).ok_or_else(|| format!("CPU {cpu} has not started its LPIs"))?;
    its.run(Command::move_event(device, event, collection))?;
    // The move is complete at the new redistributor too once the ITS has read past this.
    its.run(Command::sync(target))
}

/// Raises `device`'s `event` from the ITS itself (the INT command): a mapping's test with no
/// device involved.
pub fn raise(device: u32, event: u32) -> Result<(), String> {
    lock()?.run(Command::interrupt(device, event))
}

impl Its {
    /// Maps this CPU's collection (numbered as the CPU) to its redistributor `target`.
    fn map_collection_here(&mut self, target: u64) -> Result<(), String> {
        let collection = arch::smp::this_cpu() as u16;
        self.run(Command::map_collection(collection, target))?;
        self.collections.insert(collection, target);
        Ok(())
    }

    /// Queues `command` and a SYNC, and waits until the ITS has read both.
    fn run(&mut self, command: Command) -> Result<(), String> {
        let target = self.target;
        self.push(command);
        self.push(Command::sync(target));
        let written = (self.next_command * 32) as u64;
        // SAFETY: as in `start`.
        unsafe { write(self.registers, GITS_CWRITER, written) };
        let started = arch::timer::uptime();
        loop {
            // SAFETY: as in `start`.
            let read_offset = unsafe { read(self.registers, GITS_CREADR) };
            if read_offset & 1 == 1 {
                return Err(format!("the ITS stalled on a command (GITS_CREADR {read_offset:#x})"));
            }
            if read_offset & 0xf_ffe0 == written {
                return Ok(());
            }
            if arch::timer::uptime() - started > COMMAND_TIMEOUT {
                return Err(format!(
                    "the ITS read no further than {read_offset:#x} of {written:#x} in {COMMAND_TIMEOUT:?}"
                ));
            }
            core::hint::spin_loop();
        }
    }

    fn push(&mut self, command: Command) {
        let slot = self.queue.add((self.next_command * 32) as u64).as_mut_ptr::<[u64; 4]>();
        // SAFETY: the queue holds QUEUE_COMMANDS slots, lives for good, and the ITS reads only
        // up to GITS_CWRITER, which is moved after the write (Device-memory register writes
        // are ordered after the Normal-memory write by the barrier).
        unsafe { slot.write_volatile(command.0) };
        arch::cache::order_writes_before_doorbell();
        self.next_command = (self.next_command + 1) % QUEUE_COMMANDS;
    }
}

/// `size` zeroed bytes aligned to `align`, for good: their virtual and physical addresses.
fn zeroed(size: usize, align: usize) -> Result<(VirtAddr, PhysAddr), String> {
    let layout = Layout::from_size_align(size, align).map_err(|_| format!("bad table layout {size}/{align}"))?;
    // SAFETY: the layout has a non-zero size.
    let memory = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if memory.is_null() {
        return Err(format!("no room for a {size}-byte ITS table"));
    }
    let virtual_address = VirtAddr::from_ptr(memory);
    let physical = arch::layout::linear_virt_to_phys(virtual_address).ok_or("the heap is outside the linear map")?;
    Ok((virtual_address, physical))
}

/// # Safety
/// `base + offset` is a mapped 64-bit register.
unsafe fn read(base: VirtAddr, offset: u64) -> u64 {
    // SAFETY: the caller's promise.
    unsafe { base.add(offset).as_ptr::<u64>().read_volatile() }
}

/// # Safety
/// `base + offset` is a mapped 64-bit register.
unsafe fn write(base: VirtAddr, offset: u64, value: u64) {
    // SAFETY: the caller's promise.
    unsafe { base.add(offset).as_mut_ptr::<u64>().write_volatile(value) }
}

/// # Safety
/// `base + offset` is a mapped 32-bit register.
unsafe fn read32(base: VirtAddr, offset: u64) -> u32 {
    // SAFETY: the caller's promise.
    unsafe { base.add(offset).as_ptr::<u32>().read_volatile() }
}

/// # Safety
/// `base + offset` is a mapped 32-bit register.
unsafe fn write32(base: VirtAddr, offset: u64, value: u32) {
    // SAFETY: the caller's promise.
    unsafe { base.add(offset).as_mut_ptr::<u32>().write_volatile(value) }
}
