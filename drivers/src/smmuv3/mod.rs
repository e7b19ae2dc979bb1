//! The Arm SMMUv3 (`compatible = "arm,smmu-v3"`): the IOMMU of QEMU `virt` with
//! `iommu=smmuv3`, in front of its PCIe bus. This driver uses stage 1 only, the stage an OS
//! uses for its own devices (a hypervisor would add stage 2).
//!
//! Every transaction that reaches the SMMU carries a *StreamID* naming its device (on PCIe,
//! the requester ID bus:device.function). The SMMU looks the stream up and translates the
//! device's address, an IOVA, through page tables of the same VMSAv8-64 format as the CPU's
//! (Arm IHI 0070, 3.3 "Data structures and translation procedure"):
//!
//! ```text
//!  StreamID ──▶ stream table: one STE per StreamID (5.2)   Config: abort | translate
//!                   │ S1ContextPtr
//!                   ▼
//!              context descriptor (5.4): ASID, TTB0, T0SZ, granule, MAIR
//!                   │ TTB0
//!                   ▼
//!              page tables (the `vmsa` crate) ──IOVA──▶ physical address
//! ```
//!
//! The CPU does not program translations through registers: it writes these structures in
//! memory and talks to the SMMU through two rings, also in memory (3.5, `queue.rs`). On the
//! *command queue* it asks the SMMU to drop cached copies of what it changed, and waits with
//! `CMD_SYNC` (`commands.rs`); on the *event queue* the SMMU reports faults, such as a device
//! touching an IOVA nobody mapped (`events.rs`).
//!
//! What this driver chooses:
//! - A linear stream table for the StreamIDs the kernel asks for. Every STE starts valid with
//!   Config = abort, so a device nobody attached cannot reach memory at all (it is refused
//!   silently: abort records no event). StreamIDs beyond the table are refused and recorded
//!   (C_BAD_STREAMID, CR2.RECINVSID).
//! - One context descriptor per stream, allocated for all streams at the first attach.
//! - Only SMMUs that snoop the CPU caches (IDR0.COHACC): tables and queues live in ordinary
//!   cached memory and need barriers, not cache maintenance (`barrier.rs`).
//! - Polling, no interrupts: commands complete with `CMD_SYNC` and CS = SIG_NONE, and the
//!   kernel drains the event queue when it wants to know about faults.
//!
//! Registers and their sections are in `registers.rs`; section numbers are those of
//! IHI 0070. The behaviour was checked against QEMU's model (`hw/arm/smmuv3.c`), which refuses
//! as C_BAD_STE or C_BAD_CD every setting it does not implement.

mod barrier;
mod commands;
mod errors;
mod events;
mod features;
mod queue;
mod registers;
mod tables;
#[cfg(test)]
mod tests;

use core::ptr::NonNull;

use addr::PhysAddr;
use safe_mmio::{UniqueMmioPointer, field, field_shared};
use tock_registers::LocalRegisterCopy;
use tock_registers::fields::FieldValue;

use barrier::{acquire_reads, publish_writes, release_entries};
use commands::{COMMAND_WORDS, Command};
use events::EVENT_WORDS;
use queue::{Queue, Ring};
use registers::{CMDQ_CONS, CR0, CR1, CR2, EVENTQ_INDEX, GERROR, Registers, STRTAB_BASE, STRTAB_BASE_CFG};
use tables::{ContextDescriptor, ENTRY_BYTES, EntryTable, STE_CONFIG_WORD, StreamTableEntry};

pub use commands::{CommandErrorKind, CommandFailure, command_name};
pub use errors::{GlobalErrors, SmmuError, Structure, Wait};
pub use events::{Access, Drained, Event, EventKind};
pub use features::{Endianness, Features, IdRegisters, StallModel};
pub use tables::Stage1Context;

/// Physically contiguous, zeroed memory for tables and queues; the kernel implements it.
pub trait SmmuMemory {
    /// `size` bytes aligned to `align`, zeroed; CPU pointer and physical address. The SMMU
    /// keeps using the memory for as long as it runs.
    fn allocate(&mut self, size: usize, align: usize) -> Option<(NonNull<u8>, PhysAddr)>;
}

/// Register reads before a wait gives up: milliseconds to seconds on hardware, where an
/// answer takes microseconds.
const POLLS: usize = 2_000_000;
/// log2 of the entries of each queue, when the SMMU allows that many (IDR1.CMDQS, EVENTQS):
/// 4 KiB of commands and 8 KiB of events.
const QUEUE_LOG2_ENTRIES: u32 = 8;

/// A running SMMU: its registers, the stream table, the context descriptors and the two
/// queues, all this driver's alone.
pub struct Smmu {
    registers: UniqueMmioPointer<'static, Registers>,
    features: Features,
    stream_table: EntryTable,
    streams: u64,
    /// One context descriptor per stream, from the first attach on.
    contexts: Option<EntryTable>,
    commands: Queue,
    /// Where the next command goes: the value last written to CMDQ_PROD.
    command_producer: u32,
    events: Queue,
    /// The next event to read: the position last written to EVENTQ_CONS.
    event_consumer: u32,
    /// Commands queued since the SMMU was set up: a command's sequence number is the count
    /// before it, which never wraps as a queue position does.
    commands_queued: u64,
    /// Commands the SMMU refused so far, and the last of them: a [`SyncTicket`] issued before
    /// a refusal reports it, whichever caller's command it was.
    refusals: u64,
    last_refusal: Option<CommandFailure>,
}

/// A CMD_SYNC queued by [`Smmu::queue_sync`]: where it sits in the command queue, and how
/// many commands the SMMU had refused by then. The caller may let go of the SMMU (its lock)
/// while it waits, so that other CPUs queue their commands meanwhile, and asks
/// [`Smmu::sync_completed`] now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTicket {
    /// The CMD_SYNC's sequence number.
    sequence: u64,
    refusals: u64,
}

// SAFETY: a Smmu is the only handle on its tables and queues (raw pointers into memory it
// allocated, which every CPU can reach); its registers are a `UniqueMmioPointer`, `Send` by
// that type's contract.
unsafe impl Send for Smmu {}

impl Smmu {
    /// Reads the ID registers.
    ///
    /// # Safety
    /// `base` maps the SMMU's register pages 0 and 1 (0x20000 bytes) as device memory, and
    /// no [`Smmu`] drives them during the call.
    pub unsafe fn probe(base: NonNull<u8>) -> Features {
        // SAFETY: both pages are mapped as device memory, reachable from every CPU (the
        // caller's promise), `Registers` matches their layout (checked by
        // `register_offsets!`), and the pointer is the only one in use until it drops here.
        let registers = unsafe { UniqueMmioPointer::<Registers>::new(base.cast()) };
        Features::decode(IdRegisters {
            idr0: field_shared!(registers, idr0).read(), // 6.3.1
            idr1: field_shared!(registers, idr1).read(), // 6.3.2
            idr3: field_shared!(registers, idr3).read(), // 6.3.4
            idr5: field_shared!(registers, idr5).read(), // 6.3.6
            aidr: field_shared!(registers, aidr).read(), // 6.3.8
        })
    }

    /// Takes the SMMU over: disables it, builds a stream table for `stream_id_bits`-bit
    /// StreamIDs with every stream aborting, the command and event queues, invalidates
    /// everything the SMMU may have cached, and enables translation.
    ///
    /// # Safety
    /// As for [`Self::probe`], for as long as the returned value lives; nothing else drives
    /// this SMMU.
    pub unsafe fn new(base: NonNull<u8>, stream_id_bits: u32, memory: &mut impl SmmuMemory) -> Result<Self, SmmuError> {
        // SAFETY: the caller maps both pages.
        let features = unsafe { Self::probe(base) };
        features.check_driver_requirements()?;
        if stream_id_bits > features.stream_id_bits {
            return Err(SmmuError::StreamIdBitsTooWide {
                requested: stream_id_bits,
                supported: features.stream_id_bits,
            });
        }
        let streams = 1u64 << stream_id_bits;
        let stream_table = allocate_entries(memory, Structure::StreamTable, streams)?;
        let commands = allocate_queue(memory, Structure::CommandQueue, features.command_queue_bits, COMMAND_WORDS)?;
        let events = allocate_queue(memory, Structure::EventQueue, features.event_queue_bits, EVENT_WORDS)?;
        let mut smmu = Self {
            // SAFETY: the caller maps both pages as device memory for as long as the SMMU is
            // driven, and nothing else drives it; `Registers` matches their layout.
            registers: unsafe { UniqueMmioPointer::new(base.cast()) },
            features,
            stream_table,
            streams,
            contexts: None,
            commands,
            command_producer: 0,
            commands_queued: 0,
            refusals: 0,
            last_refusal: None,
            events,
            event_consumer: 0,
        };
        for stream in 0..streams as u32 {
            smmu.stream_table.write(stream, &StreamTableEntry::abort().0);
        }
        smmu.start(stream_id_bits)?;
        Ok(smmu)
    }

    /// What the SMMU offers, as read from its ID registers when it was taken over.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Off; table and queue attributes and bases, which may only change while the structures
    /// they describe are off (6.3.11, 6.3.23); the command queue on; invalidate; the event
    /// queue on; translation on.
    fn start(&mut self, stream_id_bits: u32) -> Result<(), SmmuError> {
        self.set_control(CR0::SMMUEN::CLEAR + CR0::CMDQEN::CLEAR + CR0::EVENTQEN::CLEAR)?;
        let pending = self.pending_global_errors();
        self.acknowledge(pending);
        let attributes = CR1::TABLE_SH::InnerShareable
            + CR1::TABLE_OC::WriteBack
            + CR1::TABLE_IC::WriteBack
            + CR1::QUEUE_SH::InnerShareable
            + CR1::QUEUE_OC::WriteBack
            + CR1::QUEUE_IC::WriteBack;
        let stream_table = STRTAB_BASE::RA::SET + STRTAB_BASE::ADDR.val(self.stream_table.address(0).as_u64() >> 6);
        let stream_table_format = STRTAB_BASE_CFG::FMT::Linear + STRTAB_BASE_CFG::LOG2SIZE.val(stream_id_bits);
        let (command_base, event_base) = (self.commands.base_register(), self.events.base_register());
        let registers = &mut self.registers;
        field!(*registers, cr1).write(attributes.value); // 6.3.11
        field!(*registers, cr2).write((CR2::PTM::SET + CR2::RECINVSID::SET + CR2::E2H::CLEAR).value); // 6.3.12
        field!(*registers, strtab_base_cfg).write(stream_table_format.value); // 6.3.24
        field!(*registers, strtab_base).write(stream_table.value); // 6.3.23
        field!(*registers, cmdq_base).write(command_base); // 6.3.25
        field!(*registers, cmdq_prod).write(0); // 6.3.26
        field!(*registers, cmdq_cons).write(0); // 6.3.27
        field!(*registers, eventq_base).write(event_base); // 6.3.28
        field!(*registers, eventq_prod).write(0); // 6.3.29
        field!(*registers, eventq_cons).write(0); // 6.3.30
        self.set_control(CR0::CMDQEN::SET + CR0::EVENTQEN::CLEAR + CR0::SMMUEN::CLEAR)?;
        self.invalidate_everything()?;
        self.set_control(CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::CLEAR)?;
        self.set_control(CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET)
    }

    /// Writes CR0 and waits until CR0ACK shows the change took effect (6.3.10).
    fn set_control(&mut self, value: FieldValue<u32, CR0::Register>) -> Result<(), SmmuError> {
        publish_writes();
        field!(self.registers, cr0).write(value.value); // 6.3.9
        let acknowledged = (0..POLLS).any(|_| field_shared!(self.registers, cr0ack).read() == value.value); // 6.3.10
        acknowledged.then_some(()).ok_or(SmmuError::Timeout { what: Wait::ControlAcknowledge })
    }

    /// Drops every cached STE, CD and translation, from before this driver ran.
    fn invalidate_everything(&mut self) -> Result<(), SmmuError> {
        self.submit(Command::CfgiAll)?;
        if self.features.hypervisor {
            self.submit(Command::TlbiEl2All)?;
        }
        self.submit(Command::TlbiNsnhAll)?;
        self.sync()
    }

    /// Stage-1 translation for `stream_id` through the tables `context` describes.
    ///
    /// The SMMU may fetch the STE at any moment, and only one 64-bit word is written at a
    /// time, so the entry changes in an order that never shows it half-written (3.21
    /// "Structure access rules and update procedures"): the stream is made to abort, the CD
    /// and every STE word except the one with Config are written while Config still says
    /// abort (so they are ignored), cached copies are invalidated and a sync waits for that,
    /// and only then the Config word switches the stream to the new context, followed by
    /// another invalidation and sync.
    pub fn attach_stage1(
        &mut self,
        stream_id: u32,
        context: &Stage1Context,
        memory: &mut impl SmmuMemory,
    ) -> Result<(), SmmuError> {
        self.check_stream(stream_id)?;
        context.check(&self.features)?;
        let contexts = self.context_table(memory)?;
        if self.attached_asid(stream_id).is_some() {
            self.detach(stream_id)?;
        }
        contexts.write(stream_id, &ContextDescriptor::stage1(context, self.features.output_size_encoding()).0);
        let entry = StreamTableEntry::stage1(contexts.address(stream_id));
        for word in (0..entry.0.len()).filter(|&word| word != STE_CONFIG_WORD) {
            self.stream_table.write_word(stream_id, word, entry.0[word]);
        }
        self.submit(Command::CfgiCd { stream_id })?;
        self.submit(Command::CfgiSte { stream_id })?;
        self.submit(Command::TlbiNhAsid { asid: context.asid })?;
        self.sync()?;
        self.stream_table.write_word(stream_id, STE_CONFIG_WORD, entry.0[STE_CONFIG_WORD]);
        self.submit(Command::CfgiSte { stream_id })?;
        self.sync()
    }

    /// Makes `stream_id` abort again, and drops its translations from the TLB.
    pub fn detach(&mut self, stream_id: u32) -> Result<(), SmmuError> {
        self.check_stream(stream_id)?;
        let previous = self.attached_asid(stream_id);
        self.stream_table.write_word(stream_id, STE_CONFIG_WORD, StreamTableEntry::abort().0[STE_CONFIG_WORD]);
        self.submit(Command::CfgiSte { stream_id })?;
        if let Some(asid) = previous {
            self.submit(Command::TlbiNhAsid { asid })?;
        }
        self.sync()
    }

    /// Queues the invalidation of the leaf translation of `iova` under `asid`; it has taken
    /// effect after the next [`Self::sync`].
    pub fn invalidate_va(&mut self, asid: u16, iova: u64) -> Result<(), SmmuError> {
        self.submit(Command::TlbiNhVa { asid, address: iova })
    }

    /// Queues the invalidation of every translation under `asid`; it has taken effect after
    /// the next [`Self::sync`].
    pub fn invalidate_asid(&mut self, asid: u16) -> Result<(), SmmuError> {
        self.submit(Command::TlbiNhAsid { asid })
    }

    /// Queues a CMD_SYNC and waits until the SMMU has consumed it: every command before it
    /// has then taken effect. A command the SMMU refused is reported.
    pub fn sync(&mut self) -> Result<(), SmmuError> {
        let ticket = self.queue_sync()?;
        for _ in 0..POLLS {
            if self.sync_completed(ticket)? {
                return Ok(());
            }
        }
        Err(SmmuError::Timeout { what: Wait::CommandSync })
    }

    /// Queues a CMD_SYNC behind the commands queued so far, without waiting for it: once the
    /// SMMU has consumed it ([`Self::sync_completed`]), every one of them has taken effect.
    pub fn queue_sync(&mut self) -> Result<SyncTicket, SmmuError> {
        let sequence = self.commands_queued;
        self.submit(Command::Sync)?;
        Ok(SyncTicket { sequence, refusals: self.refusals })
    }

    /// Whether the SMMU has consumed `ticket`'s CMD_SYNC: the commands consumed so far are
    /// those queued less those still waiting between CMDQ_CONS and CMDQ_PROD, counted in
    /// sequence numbers, which stay exact however many commands other callers queue meanwhile.
    /// A command refused since the ticket was issued is reported (the queue restarted): it
    /// may have been one the ticket covers, and a strict unmap must not be taken as done when
    /// its invalidation was refused. (It may also have been another caller's: a refusal is
    /// reported to every ticket out when it happens, too often rather than too seldom.)
    pub fn sync_completed(&mut self, ticket: SyncTicket) -> Result<bool, SmmuError> {
        self.recover_command_error();
        if let Some(failure) = self.last_refusal.filter(|_| self.refusals != ticket.refusals) {
            return Err(SmmuError::CommandError { opcode: failure.opcode, kind: failure.kind });
        }
        let consumer = field_shared!(self.registers, cmdq_cons).read(); // 6.3.27
        let waiting = self.commands.ring.waiting(self.command_producer, consumer);
        Ok(ticket.sequence < self.commands_queued.saturating_sub(u64::from(waiting)))
    }

    /// Hands every event waiting in the event queue to `each`, oldest first, and gives
    /// their entries back to the SMMU.
    pub fn drain_events(&mut self, mut each: impl FnMut(Event)) -> Drained {
        let producer: LocalRegisterCopy<u32, EVENTQ_INDEX::Register> =
            LocalRegisterCopy::new(field_shared!(self.registers, eventq_prod).read()); // 6.3.29
        acquire_reads();
        let ring = self.events.ring;
        let mut events = 0;
        while !ring.is_empty(producer.get(), self.event_consumer) {
            each(Event::from_entry(self.events.read::<EVENT_WORDS>(self.event_consumer)));
            self.event_consumer = ring.next(self.event_consumer);
            events += 1;
        }
        release_entries();
        let overflow = producer.read(EVENTQ_INDEX::OVERFLOW);
        let acknowledged = EVENTQ_INDEX::OVERFLOW.read(field_shared!(self.registers, eventq_cons).read()); // 6.3.30
        let overflowed = overflow != acknowledged;
        field!(self.registers, eventq_cons).write(self.event_consumer | overflow << EVENTQ_INDEX::OVERFLOW.shift); // 6.3.30
        Drained { events, overflowed }
    }

    /// Global errors raised since the last call, acknowledged; `None` if there are none. A
    /// stopped command queue is restarted as [`Self::sync`] does it.
    pub fn global_errors(&mut self) -> Option<GlobalErrors> {
        let command = self.recover_command_error();
        let others = self.pending_global_errors() & !GERROR::CMDQ_ERR::SET.value;
        if others != 0 {
            self.acknowledge(others);
        }
        let active = others | if command.is_some() { GERROR::CMDQ_ERR::SET.value } else { 0 };
        (active != 0).then_some(GlobalErrors { active, command })
    }

    fn check_stream(&self, stream_id: u32) -> Result<(), SmmuError> {
        if u64::from(stream_id) < self.streams {
            Ok(())
        } else {
            Err(SmmuError::StreamIdOutOfRange { stream_id, streams: self.streams })
        }
    }

    fn context_table(&mut self, memory: &mut impl SmmuMemory) -> Result<EntryTable, SmmuError> {
        if let Some(table) = self.contexts {
            return Ok(table);
        }
        let table = allocate_entries(memory, Structure::ContextDescriptors, self.streams)?;
        self.contexts = Some(table);
        Ok(table)
    }

    /// The ASID of the context `stream_id` translates through, if it translates.
    fn attached_asid(&self, stream_id: u32) -> Option<u16> {
        let contexts = self.contexts?;
        let entry = StreamTableEntry(self.stream_table.read(stream_id));
        entry.translates().then(|| ContextDescriptor(contexts.read(stream_id)).asid())
    }

    /// Writes `command` at CMDQ_PROD and moves PROD past it.
    fn submit(&mut self, command: Command) -> Result<(), SmmuError> {
        self.wait_for_commands(Wait::CommandQueueSpace, |ring, producer, consumer| !ring.is_full(producer, consumer))?;
        self.commands.write(self.command_producer, &command.encode());
        self.command_producer = self.commands.ring.next(self.command_producer);
        self.commands_queued += 1;
        publish_writes();
        field!(self.registers, cmdq_prod).write(self.command_producer); // 6.3.26
        Ok(())
    }

    /// Polls CMDQ_CONS until `done(ring, producer, consumer)`, reporting a stopped queue.
    fn wait_for_commands(&mut self, what: Wait, done: impl Fn(Ring, u32, u32) -> bool) -> Result<(), SmmuError> {
        for _ in 0..POLLS {
            if let Some(failure) = self.recover_command_error() {
                return Err(SmmuError::CommandError { opcode: failure.opcode, kind: failure.kind });
            }
            let consumer = field_shared!(self.registers, cmdq_cons).read(); // 6.3.27
            if done(self.commands.ring, self.command_producer, consumer) {
                return Ok(());
            }
        }
        Err(SmmuError::Timeout { what })
    }

    /// If the SMMU stopped the command queue (GERROR.CMDQ_ERR), reads why, overwrites the
    /// refused command with a CMD_SYNC, which does nothing by itself, and acknowledges the
    /// error so that the SMMU resumes from there (7.1 "Command queue errors").
    fn recover_command_error(&mut self) -> Option<CommandFailure> {
        if self.pending_global_errors() & GERROR::CMDQ_ERR::SET.value == 0 {
            return None;
        }
        let consumer: LocalRegisterCopy<u32, CMDQ_CONS::Register> =
            LocalRegisterCopy::new(field_shared!(self.registers, cmdq_cons).read()); // 6.3.27
        let failed = self.commands.read::<COMMAND_WORDS>(consumer.get());
        let failure = CommandFailure::new(consumer.read(CMDQ_CONS::ERR) as u8, failed);
        self.commands.write(consumer.get(), &Command::Sync.encode());
        publish_writes();
        self.acknowledge(GERROR::CMDQ_ERR::SET.value);
        self.refusals += 1;
        self.last_refusal = Some(failure);
        Some(failure)
    }

    /// GERROR bits not yet acknowledged in GERRORN.
    fn pending_global_errors(&self) -> u32 {
        field_shared!(self.registers, gerror).read() ^ field_shared!(self.registers, gerrorn).read() // 6.3.18, 6.3.19
    }

    /// Acknowledges `errors` by toggling their GERRORN bits to match GERROR (6.3.19).
    fn acknowledge(&mut self, errors: u32) {
        field!(self.registers, gerrorn).modify(|unacknowledged| unacknowledged ^ errors);
    }
}

/// Naturally aligned memory for `entries` STEs or CDs, which the SMMU requires of the stream
/// table (6.3.23) and which keeps each CD inside one 64-byte line.
fn allocate_entries(memory: &mut impl SmmuMemory, what: Structure, entries: u64) -> Result<EntryTable, SmmuError> {
    let bytes = usize::try_from(entries).ok().and_then(|entries| entries.checked_mul(ENTRY_BYTES));
    let bytes = bytes.ok_or(SmmuError::NoMemory { what, bytes: usize::MAX })?;
    let (words, physical) = allocate(memory, what, bytes)?;
    // SAFETY: freshly allocated for the SMMU alone, `entries` entries long.
    Ok(unsafe { EntryTable::new(words, physical, entries) })
}

/// A queue of `2^min(QUEUE_LOG2_ENTRIES, largest)` entries, aligned to its size (6.3.25).
fn allocate_queue(
    memory: &mut impl SmmuMemory,
    what: Structure,
    largest: u32,
    words_per_entry: usize,
) -> Result<Queue, SmmuError> {
    let ring = Ring::new(QUEUE_LOG2_ENTRIES.min(largest));
    let (entries, physical) = allocate(memory, what, Queue::bytes(ring, words_per_entry))?;
    // SAFETY: freshly allocated, as large as the ring needs and aligned to its size.
    Ok(unsafe { Queue::new(entries, physical, ring, words_per_entry) })
}

/// `bytes` (a power of two) aligned to their size and at least to 64 bytes, so that no base
/// register's ignored low bits matter (QEMU masks six bits off every base).
fn allocate(
    memory: &mut impl SmmuMemory,
    what: Structure,
    bytes: usize,
) -> Result<(NonNull<u64>, PhysAddr), SmmuError> {
    let alignment = bytes.max(64);
    let (pointer, physical) = memory.allocate(bytes, alignment).ok_or(SmmuError::NoMemory { what, bytes })?;
    if !physical.is_aligned(alignment as u64) || pointer.as_ptr().align_offset(8) != 0 {
        return Err(SmmuError::MemoryMisaligned { what, physical, alignment });
    }
    Ok((pointer.cast(), physical))
}
