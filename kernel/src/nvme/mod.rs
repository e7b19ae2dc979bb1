//! NVMe controllers on PCIe, behind the IOMMU: the kernel half of the driver, which owns the
//! registers, the queue memory and the data mappings (`drivers::nvme` encodes everything).
//!
//! Bringing a controller up (NVMe Base 2.0, 3.5.1 "Memory-based Controller Initialization"):
//!
//! ```text
//!  CAP: NVM command set? 4 KiB pages?   CC.EN = 0, wait CSTS.RDY = 0     (reset)
//!  admin rings (coherent) ─▶ AQA, ASQ, ACQ;  CC = {4 KiB pages, 64/16-byte entries, EN}
//!  wait CSTS.RDY = 1 ─▶ Identify Controller ─▶ active namespaces ─▶ Identify Namespace
//!  Create I/O Completion Queue 1 ─▶ Create I/O Submission Queue 1
//! ```
//!
//! Reads and Writes go to I/O queue 1, up to [`QUEUE_DEPTH`] commands in flight at once
//! (`crate::block::run`), their completions found by phase tag: waited for asleep on the
//! controller's interrupt ([`crate::interrupts::Line`]: MSI-X vector 1 through the ITS where
//! the machine has one, [`crate::msi`], else the pin-based INTx on vector 0), or polled:
//!
//! - The caller's buffer is lent to the controller through the streaming DMA API, whose
//!   device constraints say `min_align_mask = 0xfff`: whatever the route does — translate the
//!   buffer in place, or bounce it for an untrusted device — the DMA address keeps the
//!   buffer's offset within its 4 KiB page (contract rule 1). That is what makes the PRP
//!   entries valid: the first carries the offset, every later one must start a page.
//! - One command carries at most the smallest of MDTS, the DMA layer's `max_mapping_size` and
//!   what one PRP list page describes; `crate::block` splits larger requests.
//! - A command moves whole logical blocks of the namespace's LBA format (Identify Namespace:
//!   FLBAS picks one of the LBA formats, whose LBADS gives the block size — 512 bytes or
//!   4 KiB on QEMU, as `logical_block_size` says). A request of part of a block, or of more
//!   than one command carries, is refused with the sizes before anything is mapped.
//! - Each command in flight has its own page of PRP entries, and its buffer stays mapped until
//!   its own completion arrives, in whatever order the controller completes them.
//! - A command that does not complete in time disables the controller, which stops its DMA,
//!   before any buffer in flight is unmapped; later requests are refused with the reason.
//! - What the controller received (the command and its PRPs, read back from the memory it
//!   fetched them from) is kept only when asked ([`Controller::record_commands`]): the tests and
//!   the demo check it; ordinary I/O does not pay for reading it back.

mod queue;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;
use core::time::Duration;

use addr::{DmaAddr, PhysAddr, PhysRange, VirtAddr};
use drivers::block::in_flight::{RequestQueue, run_window};
use drivers::nvme::command::{CommandError, IdentifyTarget, SubmissionEntry, granted_queues};
use drivers::nvme::completion::Status;
use drivers::nvme::identify::{self, ControllerIdentity, IDENTIFY_BYTES, IdentifyError, NamespaceIdentity};
use drivers::nvme::prp::{PrpError, PrpPlan, max_prp_transfer};
use drivers::nvme::queue::QueueError;
use drivers::nvme::registers::{
    Capabilities, ControllerRegisters, RegisterError, Version, admin_queue_attributes, enabling_configuration,
};
use drivers::nvme::transfer::{Limit, TransferError, TransferLimits};
use spin::Mutex;

use crate::block::{BlockDevice, BlockError, Request};
use crate::dma_platform::{Coherent, DmaDevice};
use crate::interrupts::{Line, Source};
use crate::pci::PciFunction;
use dma::{DmaApiError, MapError};
use queue::{Doorbells, QueuePair};
use swiotlb::DmaDirection;

/// The memory page size the controller is configured with (CC.MPS): the CPU's page size, and
/// the unit of PRP entries. Hence `min_align_mask = 0xfff` for NVMe.
pub const PAGE_SIZE: usize = 4096;
/// The page offset bits a PRP entry carries, which the DMA layer must preserve.
pub const MIN_ALIGN_MASK: u64 = PAGE_SIZE as u64 - 1;
/// Small rings, so that wrap-around and the phase tag are exercised within a few commands.
const ADMIN_ENTRIES: u16 = 8;
const IO_ENTRIES: u16 = 16;
/// Commands kept in flight on the I/O queue: fewer than its entries (a full ring keeps one
/// empty), each with a page of PRP entries of its own.
pub const QUEUE_DEPTH: usize = 8;
/// The most I/O queue pairs asked for: one per CPU, up to the kernel's limit of CPUs.
const MAX_IO_QUEUES: usize = platform::devicetree::MAX_CPUS;
/// How long a command may take. QEMU answers in microseconds; a real disk within seconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// PCI class code of an NVMe controller: mass storage, non-volatile memory, NVM Express
/// (PCI Code and ID Assignment 1.7, class 01h subclass 08h programming interface 02h).
pub fn is_nvme(info: &virtio_drivers::transport::pci::bus::DeviceFunctionInfo) -> bool {
    (info.class, info.subclass, info.prog_if) == (0x01, 0x08, 0x02)
}

/// Why a controller could not be started or a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmeError {
    NoRegisters,
    MapRegisters,
    /// The controller lacks something this driver needs.
    Unsupported(&'static str),
    /// CSTS.RDY did not become `ready` within CAP.TO.
    NotReady {
        ready: bool,
        after: Duration,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    Fatal,
    Timeout {
        queue: u16,
        after: Duration,
    },
    /// A completion for another command: `got` is its (submission queue, command ID).
    UnexpectedCompletion {
        queue: u16,
        outstanding: Vec<u16>,
        got: (u16, u16),
    },
    /// A transfer that is not a whole number of the namespace's logical blocks.
    PartialBlock {
        length: usize,
        block_size: usize,
    },
    /// A transfer larger than one command carries.
    TooLong {
        length: usize,
        max_transfer: usize,
        limit: Limit,
    },
    /// A command handed to [`Controller::execute_without_data`] that points at data.
    CarriesData,
    /// The controller completed the command with an error status.
    Command {
        command: &'static str,
        status: Status,
    },
    NoNamespace,
    /// An earlier failure disabled the controller.
    Disabled(String),
    Register(RegisterError),
    Queue(QueueError),
    Encoding(CommandError),
    Prp(PrpError),
    Identify(IdentifyError),
    Transfer(TransferError),
    Dma(DmaApiError),
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmeError::NoRegisters => write!(f, "BAR0, the controller's registers, is not assigned"),
            NvmeError::MapRegisters => write!(f, "cannot map the controller's registers"),
            NvmeError::Unsupported(what) => write!(f, "unsupported controller: {what}"),
            NvmeError::NotReady { ready, after } => {
                write!(f, "CSTS.RDY did not become {} within {} ms", u8::from(*ready), after.as_millis())
            }
            NvmeError::Fatal => write!(f, "the controller reports a fatal status (CSTS.CFS)"),
            NvmeError::Timeout { queue, after } => {
                write!(f, "a command on queue {queue} did not complete within {} ms", after.as_millis())
            }
            NvmeError::UnexpectedCompletion { queue, outstanding, got: (from_queue, command) } => write!(
                f,
                "completion queue {queue} reported command {command} of submission queue {from_queue} while commands {outstanding:?} were outstanding"
            ),
            NvmeError::PartialBlock { length, block_size } => {
                write!(f, "{length} bytes are not a whole number of the namespace's {block_size}-byte logical blocks")
            }
            NvmeError::TooLong { length, max_transfer, limit } => {
                write!(f, "{length} bytes are more than one command carries: {max_transfer} bytes, limited by {limit}")
            }
            NvmeError::CarriesData => {
                write!(f, "the command points at data (PRP1 or PRP2 set), which it was not given")
            }
            NvmeError::Command { command, status } => write!(f, "{command} failed: {status}"),
            NvmeError::NoNamespace => write!(f, "the controller has no active namespace"),
            NvmeError::Disabled(reason) => write!(f, "controller disabled after an earlier failure: {reason}"),
            NvmeError::Register(error) => write!(f, "{error}"),
            NvmeError::Queue(error) => write!(f, "{error}"),
            NvmeError::Encoding(error) => write!(f, "{error}"),
            NvmeError::Prp(error) => write!(f, "{error}"),
            NvmeError::Identify(error) => write!(f, "{error}"),
            NvmeError::Transfer(error) => write!(f, "{error}"),
            NvmeError::Dma(error) => write!(f, "{error}"),
        }
    }
}

macro_rules! from_error {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for NvmeError {
            fn from(error: $source) -> Self {
                NvmeError::$variant(error)
            }
        })*
    };
}

from_error! {
    RegisterError => Register, QueueError => Queue, CommandError => Encoding, PrpError => Prp,
    IdentifyError => Identify, TransferError => Transfer, DmaApiError => Dma,
}

impl core::error::Error for NvmeError {
    /// The DMA layer's refusal behind a command that failed for it, for error chains. (The
    /// block layer gets a transfer's refusal from the batch itself, as a `BlockError::Dma`.)
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            NvmeError::Dma(error) => Some(error),
            _ => None,
        }
    }
}

impl From<NvmeError> for BlockError {
    fn from(error: NvmeError) -> Self {
        BlockError::device(error)
    }
}

impl From<MapError> for NvmeError {
    fn from(error: MapError) -> Self {
        NvmeError::Dma(error.error())
    }
}

/// The namespace this driver serves: the first active one.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    pub id: u32,
    pub identity: NamespaceIdentity,
}

/// A Read or Write as the controller received it, read back from the queue memory it fetched
/// from: the command, the PRP list when the data spans more than two pages, and where each
/// page entry led while the data was mapped (the domain's translation of PRP1, then of every
/// later page entry).
#[derive(Debug, Clone)]
pub struct ReceivedCommand {
    pub entry: SubmissionEntry,
    pub prp_list: Vec<u64>,
    pub reached: Vec<Option<PhysAddr>>,
}

impl ReceivedCommand {
    /// The page entries in order: PRP1, then PRP2 or the list's entries.
    pub fn page_entries(&self) -> Vec<u64> {
        let entry = &self.entry;
        let mut pages = alloc::vec![entry.prp1];
        match self.prp_list.is_empty() {
            true if entry.prp2 != 0 => pages.push(entry.prp2),
            true => {}
            false => pages.extend(&self.prp_list),
        }
        pages
    }
}

impl fmt::Display for ReceivedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entry = &self.entry;
        let (blocks, lba) = (entry.blocks(), entry.lba());
        write!(
            f,
            "{} of {blocks} blocks at LBA {lba}, PRP1 {:#x} (page offset {:#x})",
            entry.name(false),
            entry.prp1,
            entry.prp1 & MIN_ALIGN_MASK
        )?;
        if let Some(Some(physical)) = self.reached.first() {
            write!(f, " → {physical:?}")?;
        }
        match self.prp_list.as_slice() {
            [] if entry.prp2 == 0 => Ok(()),
            [] => write!(f, ", PRP2 {:#x}", entry.prp2),
            [first, .., last] => {
                write!(
                    f,
                    ", PRP2 {:#x} → a PRP list of {} entries, {first:#x} to {last:#x}",
                    entry.prp2,
                    self.prp_list.len()
                )
            }
            [only] => write!(f, ", PRP2 {:#x} → a PRP list of 1 entry, {only:#x}", entry.prp2),
        }
    }
}

pub struct Controller {
    pub name: &'static str,
    /// The controller properties (BAR0), through a volatile pointer (see `drivers`).
    properties: ControllerRegisters,
    pub capabilities: Capabilities,
    pub version: Version,
    pub identity: ControllerIdentity,
    pub namespace: Namespace,
    pub limits: TransferLimits,
    max_transfer: usize,
    /// The limit for buffers the DMA layer lends in place: MDTS and PRPs, not the bounce pool.
    in_place_transfer: usize,
    dma: &'static DmaDevice,
    admin: QueuePair,
    /// The I/O queue pairs: one per CPU online, as many as the controller granted and the
    /// function has vectors for; a CPU submits on `io[its number % len]`. Pin-based or polled,
    /// one.
    io: Vec<QueuePair>,
    /// A page of PRP entries for each command in flight.
    prp_lists: Coherent<'static>,
    /// Why the controller was disabled, if it was.
    disabled: Option<String>,
    /// Whether to keep each Read and Write as the controller received it.
    recording: bool,
    last_received: Option<ReceivedCommand>,
}

static CONTROLLERS: Mutex<Vec<&'static Mutex<Controller>>> = Mutex::new(Vec::new());

/// Every controller started, in bus order.
pub fn controllers() -> Vec<&'static Mutex<Controller>> {
    CONTROLLERS.lock().clone()
}

/// How many I/O queues (so MSI-X vectors, from [`MSIX_VECTOR`] on) the kernel asks a
/// controller for: one per CPU online.
pub fn io_queues_wanted() -> u16 {
    crate::smp::online().clamp(1, MAX_IO_QUEUES) as u16
}

/// Starts the controller of `function`, its DMA through `dma`, its I/O completions signalled
/// on `interrupt` (pin-based, or MSI-X vectors from [`MSIX_VECTOR`] on, one per I/O queue).
pub fn start(
    name: &'static str,
    function: &PciFunction,
    dma: DmaDevice,
    interrupt: Option<Source>,
) -> Result<(), NvmeError> {
    let bar = function.memory_bars[0].ok_or(NvmeError::NoRegisters)?;
    let registers = arch::mmu::map_device(bar).map_err(|_| NvmeError::MapRegisters)?;
    let signal = match interrupt {
        Some(Source::Message { .. }) => Signal::Message,
        _ => Signal::Pin,
    };
    let lines = crate::interrupts::lines_for(interrupt, name);
    let controller = Controller::start(name, registers, Box::leak(Box::new(dma)), lines, signal)?;
    CONTROLLERS.lock().push(Box::leak(Box::new(Mutex::new(controller))));
    Ok(())
}

impl Controller {
    /// Brings the controller up with an I/O queue pair for each of `lines` (as many as it
    /// grants); a queue with a line interrupts (pin-based, or its MSI-X vector) and is waited
    /// for asleep, one without is polled.
    fn start(
        name: &'static str,
        registers: VirtAddr,
        dma: &'static DmaDevice,
        lines: Vec<Option<Line>>,
        signal: Signal,
    ) -> Result<Self, NvmeError> {
        let base = NonNull::new(registers.as_mut_ptr::<u8>()).ok_or(NvmeError::MapRegisters)?;
        // SAFETY: BAR0 of an NVMe function, freshly mapped as device memory for the kernel's
        // lifetime, this driver's alone (the doorbells, further in, are written separately).
        let mut properties = unsafe { ControllerRegisters::new(base) };
        let capabilities = properties.capabilities();
        check_capabilities(&capabilities)?;
        disable(&mut properties, &capabilities)?;
        let doorbells = Doorbells { registers, stride: capabilities.doorbell_stride };
        let mut admin = QueuePair::new(dma, 0, ADMIN_ENTRIES, doorbells)?;
        let (submission, completion) = (admin.submission_address().as_u64(), admin.completion_address().as_u64());
        properties.set_admin_queues(admin_queue_attributes(ADMIN_ENTRIES, ADMIN_ENTRIES)?, submission, completion);
        // The admin queue is polled. Its vector is 0, always enabled (5.2.1): mask the
        // pin-based interrupt (INTMS, 3.1.4.3) until the I/O queue, which may interrupt,
        // exists. Under MSI-X those registers must not be touched (3.1.4.3); vector 0 stays
        // masked in the MSI-X table instead, and the I/O queue has a vector of its own.
        if signal == Signal::Pin {
            properties.mask_interrupts(u32::MAX);
        }
        properties.set_configuration(enabling_configuration(PAGE_SIZE)?);
        let configured = wait_ready(&properties, &capabilities, true).and_then(|()| {
            let identity = identify_controller(dma, &mut admin)?;
            check_entry_sizes(&identity)?;
            let namespace = identify_namespace(dma, &mut admin, &identity)?;
            let limits = TransferLimits {
                controller: identity.max_transfer_bytes(capabilities.min_page_size),
                mapping: dma.max_mapping_size()?,
                prp: max_prp_transfer(PAGE_SIZE),
                block_size: namespace.identity.block_size as usize,
            };
            let max_transfer = limits.max_transfer()?;
            let in_place_transfer = TransferLimits { mapping: None, ..limits }.max_transfer()?;
            let interrupting = lines.iter().any(Option::is_some);
            let io = create_io_queues(dma, &mut admin, doorbells, lines, signal)?;
            if interrupting && signal == Signal::Pin {
                properties.unmask_interrupts(1 << INTX_VECTOR);
            }
            let prp_lists = dma.alloc_coherent(QUEUE_DEPTH * PAGE_SIZE)?;
            Ok((identity, namespace, limits, (max_transfer, in_place_transfer), io, prp_lists))
        });
        let (identity, namespace, limits, (max_transfer, in_place_transfer), io, prp_lists) = match configured {
            Ok(parts) => parts,
            Err(error) => {
                // Stop the controller before its rings are freed, when `admin` drops.
                if let Err(problem) = disable(&mut properties, &capabilities) {
                    log::error!("{name}: could not disable the controller after a failed start: {problem}");
                }
                return Err(error);
            }
        };
        let version = properties.version();
        Ok(Self {
            name,
            properties,
            capabilities,
            version,
            identity,
            namespace,
            limits,
            max_transfer,
            in_place_transfer,
            dma,
            admin,
            io,
            prp_lists,
            disabled: None,
            recording: false,
            last_received: None,
        })
    }

    /// Model, serial, firmware, version, namespace size and the transfer limit, in one line.
    pub fn summary(&self) -> String {
        let namespace = &self.namespace.identity;
        format!(
            "{} (serial {}, firmware {}, NVMe {}), namespace {}: {} blocks of {} bytes; {} KiB per command, limited by {}; {} I/O {}",
            self.identity.model(),
            self.identity.serial(),
            self.identity.firmware(),
            self.version,
            self.namespace.id,
            namespace.size,
            namespace.block_size,
            self.max_transfer >> 10,
            self.limits.limiting_factor(),
            self.io.len(),
            if self.io.len() == 1 { "queue" } else { "queues, one per CPU" }
        )
    }

    /// Keeps (or stops keeping) every Read and Write as the controller received it, read back
    /// before its buffer is unmapped; [`Self::last_received`] returns the latest.
    pub fn record_commands(&mut self, on: bool) {
        self.recording = on;
        self.last_received = None;
    }

    /// The last Read or Write as the controller received it, while recording.
    pub fn last_received(&self) -> Option<&ReceivedCommand> {
        self.last_received.as_ref()
    }

    /// Runs an I/O command that moves no data (Flush, or a test's malformed command); returns
    /// the controller's verdict.
    pub fn execute_without_data(&mut self, entry: SubmissionEntry) -> Result<(), NvmeError> {
        self.check_enabled()?;
        if entry.prp1 != 0 || entry.prp2 != 0 {
            return Err(NvmeError::CarriesData);
        }
        let name = entry.name(false);
        let completion = self.run_io(entry)?;
        check_status(name, completion.status())
    }

    /// Waits for a completion on the idle admin queue, which can never come: how a command
    /// the controller drops looks to the driver.
    pub fn wait_for_nothing(&mut self, timeout: Duration) -> Result<(), NvmeError> {
        self.admin.wait(timeout).map(|_| ())
    }

    fn check_enabled(&self) -> Result<(), NvmeError> {
        match &self.disabled {
            Some(reason) => Err(NvmeError::Disabled(reason.clone())),
            None => Ok(()),
        }
    }

    /// Runs an I/O command on this CPU's otherwise idle queue; a failure disables the
    /// controller.
    fn run_io(&mut self, entry: SubmissionEntry) -> Result<drivers::nvme::completion::CompletionEntry, NvmeError> {
        let queue = self.queue_of_this_cpu();
        self.io[queue].execute(entry, COMMAND_TIMEOUT).map_err(|error| self.disable_after(error))
    }

    /// The I/O queue pair this CPU submits on, whose vector the ITS delivers to it (with one
    /// queue per CPU): its completions interrupt the CPU that waits for them. A CPU stays on
    /// one queue, so a batch, submitted and completed by one CPU under the controller's lock,
    /// stays on it too.
    fn queue_of_this_cpu(&self) -> usize {
        arch::smp::this_cpu() % self.io.len()
    }

    /// Per I/O queue: the interrupts its vector raised, and how many of them were taken on
    /// another CPU than the one waiting (`None`: it is polled).
    pub fn interrupts_by_queue(&self) -> Vec<Option<(u64, u64)>> {
        self.io.iter().map(|queue| queue.interrupts_taken().zip(queue.interrupts_forwarded())).collect()
    }

    /// Disables the controller after `error` (a command late or misreported), so that it stops
    /// its DMA before any buffer it was given is unmapped; returns the error.
    fn disable_after(&mut self, error: NvmeError) -> NvmeError {
        self.disable_confirmed(&error);
        error
    }

    /// Disables the controller after `error`; whether it confirmed (CSTS.RDY cleared), after
    /// which it moves no more data.
    fn disable_confirmed(&mut self, error: &NvmeError) -> bool {
        log::error!("{}: {error}; disabling the controller", self.name);
        let confirmed = disable(&mut self.properties, &self.capabilities);
        if let Err(problem) = &confirmed {
            log::error!("{}: {problem}", self.name);
        }
        self.disabled = Some(format!("{error}"));
        confirmed.is_ok()
    }

    /// Submits a Read or Write of `length` bytes at `block`, whose data the controller reaches
    /// at `dma`, with PRP list page `list` if the data needs one.
    fn submit_transfer(
        &mut self,
        block: u64,
        length: usize,
        dma: DmaAddr,
        write: bool,
        list: usize,
    ) -> Result<Command, NvmeError> {
        let plan = PrpPlan::new(dma.as_u64(), length, PAGE_SIZE)?;
        let list_address = match plan.list_entries() {
            0 => None,
            _ => {
                plan.write_list(self.prp_list_entries(list))?;
                Some(self.prp_lists.dma().add((list * PAGE_SIZE) as u64).as_u64())
            }
        };
        let blocks = (length / self.block_size()) as u32;
        let build = if write { SubmissionEntry::write } else { SubmissionEntry::read };
        let entry = build(self.namespace.id, block, blocks, plan.first(), plan.second(list_address)?)?;
        let queue = self.queue_of_this_cpu();
        let (command_id, slot) = self.io[queue].submit(entry)?;
        Ok(Command { command_id, slot, list, list_entries: plan.list_entries(), name: entry.name(false) })
    }

    /// The command in `slot` and its PRP list, read back from the memory the controller
    /// fetched them from, with where each page entry leads while still mapped.
    fn received(&mut self, command: &Command) -> ReceivedCommand {
        let entry = self.io[self.queue_of_this_cpu()].submitted(command.slot);
        let list = &self.prp_list_entries(command.list)[..command.list_entries];
        let prp_list = list.iter().map(|entry| u64::from_le(*entry)).collect();
        let mut received = ReceivedCommand { entry, prp_list, reached: Vec::new() };
        received.reached =
            received.page_entries().into_iter().map(|page| self.dma.translate(DmaAddr::new(page))).collect();
        received
    }

    /// PRP list page `list`, of the command that owns it.
    fn prp_list_entries(&mut self, list: usize) -> &mut [u64] {
        const ENTRIES: usize = PAGE_SIZE / size_of::<u64>();
        // SAFETY: page `list` (< QUEUE_DEPTH) of coherent memory owned by this controller; only
        // the command given that page uses it, and the CPU writes it before the command is
        // submitted and reads it while the command is in flight, when the controller only reads.
        unsafe {
            let first = self.prp_lists.as_ptr().as_ptr().cast::<u64>().add(list * ENTRIES);
            core::slice::from_raw_parts_mut(first, ENTRIES)
        }
    }

    /// The outcome of a transfer whose mapping was then ended: the transfer's error first,
    /// and the unmap's logged if both failed.
    fn finish(&self, transfer: Result<(), NvmeError>, unmapped: Result<(), DmaApiError>) -> Result<(), BlockError> {
        match (transfer, unmapped) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(error), Ok(())) => Err(error.into()),
            (Ok(()), Err(error)) => Err(BlockError::Dma(error)),
            (Err(error), Err(unmap_error)) => {
                log::error!("{}: after '{error}', the unmap failed too: {unmap_error}", self.name);
                Err(error.into())
            }
        }
    }

    /// Whether `length` bytes can be one Read or Write: at least one whole block of the
    /// namespace, and no more than one command carries. Checked before the buffer is mapped.
    fn check_length(&self, buffer: &[u8]) -> Result<(), NvmeError> {
        let (length, block_size) = (buffer.len(), self.block_size());
        let in_place = self
            .dma
            .physical(VirtAddr::from_ptr(buffer.as_ptr()), length)
            .is_ok_and(|range| self.dma.maps_in_place(range));
        let (max_transfer, limit) = match in_place {
            true => (self.in_place_transfer, TransferLimits { mapping: None, ..self.limits }.limiting_factor()),
            false => (self.max_transfer, self.limits.limiting_factor()),
        };
        if length == 0 {
            return Err(TransferError::Empty.into());
        }
        if !length.is_multiple_of(block_size) {
            return Err(NvmeError::PartialBlock { length, block_size });
        }
        if length > max_transfer {
            return Err(NvmeError::TooLong { length, max_transfer, limit });
        }
        Ok(())
    }
}

impl BlockDevice for Controller {
    fn describe(&self) -> String {
        format!("nvme {} ({})", self.name, self.identity.model())
    }

    fn interrupts_taken(&self) -> Option<u64> {
        self.io.iter().filter_map(QueuePair::interrupts_taken).reduce(|sum, taken| sum + taken)
    }

    fn block_size(&self) -> usize {
        self.namespace.identity.block_size as usize
    }

    fn blocks(&self) -> u64 {
        self.namespace.identity.size
    }

    fn max_transfer(&self) -> Option<usize> {
        Some(self.max_transfer)
    }

    fn max_transfer_in_place(&self) -> Option<usize> {
        Some(self.in_place_transfer)
    }

    fn dma_device(&self) -> &'static DmaDevice {
        self.dma
    }

    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }

    fn run(&mut self, requests: &mut [Request<'_>]) -> Result<usize, BlockError> {
        let count = requests.len();
        let mut batch = Batch { controller: self, requests, in_flight: Vec::with_capacity(QUEUE_DEPTH) };
        run_window(&mut batch, count, QUEUE_DEPTH)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(self.execute_without_data(SubmissionEntry::flush(self.namespace.id))?)
    }
}

/// A Read or Write submitted: how to recognise its completion, and its PRP list page.
struct Command {
    command_id: u16,
    slot: u16,
    list: usize,
    list_entries: usize,
    name: &'static str,
}

/// A command in flight, the mapping of its buffer, and (when recording) the command as the
/// controller was given it, read back right after submission: its ring slot may hold another
/// command by the time it completes.
struct InFlight {
    command: Command,
    received: Option<ReceivedCommand>,
    dma: DmaAddr,
    physical: PhysRange,
    direction: DmaDirection,
}

/// The requests of one [`BlockDevice::run`], on the controller's I/O queue.
struct Batch<'c, 'r, 'b> {
    controller: &'c mut Controller,
    requests: &'r mut [Request<'b>],
    in_flight: Vec<InFlight>,
}

impl Batch<'_, '_, '_> {
    /// A PRP list page no command in flight holds.
    fn free_list(&self) -> usize {
        let free = (0..QUEUE_DEPTH).find(|list| self.in_flight.iter().all(|held| held.command.list != *list));
        free.expect("run_window keeps at most QUEUE_DEPTH commands in flight")
    }

    /// After a failure of the controller itself: disables it, so that it moves no more data,
    /// then ends every mapping in flight. Returns the error.
    /// If the controller does not confirm it stopped, what it was given is only contained: behind
    /// the IOMMU unmapping is what takes it away; a bounce copy keeps its slots and a buffer
    /// lent in place is reported, since the controller may still write either.
    fn abandon(&mut self, error: NvmeError) -> BlockError {
        let stopped = self.controller.disable_confirmed(&error);
        let translated = matches!(self.controller.dma.route, crate::dma_platform::Route::Iommu { .. });
        for held in core::mem::take(&mut self.in_flight) {
            if !stopped && !translated {
                log::error!(
                    "{}: {} stays within the unresponsive controller's reach",
                    self.controller.name,
                    held.physical
                );
                continue;
            }
            // SAFETY: a mapping `submit` made, of a command the controller no longer works on
            // (it confirmed it was disabled), or behind the IOMMU, where the unmap is what
            // revokes the controller's access.
            if let Err(problem) = unsafe { self.controller.dma.unmap(held.dma, held.physical, held.direction) } {
                log::error!(
                    "{}: ending {:?} after the controller was disabled failed: {problem}",
                    self.controller.name,
                    held.dma
                );
            }
        }
        error.into()
    }
}

impl RequestQueue for Batch<'_, '_, '_> {
    type Error = BlockError;

    fn submit(&mut self, index: usize) -> Result<(), BlockError> {
        let controller = &mut *self.controller;
        controller.check_enabled()?;
        let request = &self.requests[index];
        let (buffer, block, write) = (request.buffer(), request.block(), request.is_write());
        controller.check_length(buffer)?;
        let direction = if write { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
        let physical =
            controller.dma.physical(VirtAddr::from_ptr(buffer.as_ptr()), buffer.len()).map_err(BlockError::Dma)?;
        // SAFETY: the buffer is borrowed by `self.requests` for the whole batch, which touches it
        // no more until this mapping ends: at its completion, or when the controller is
        // disabled (`abandon`); `run_window` returns only once nothing is in flight.
        let dma = unsafe { controller.dma.map(physical, direction) }.map_err(|error| BlockError::Dma(error.error()))?;
        let list = self.free_list();
        match self.controller.submit_transfer(block, buffer.len(), dma, write, list) {
            Ok(command) => {
                let received = self.controller.recording.then(|| self.controller.received(&command));
                self.in_flight.push(InFlight { command, received, dma, physical, direction });
                Ok(())
            }
            Err(error) => {
                // SAFETY: mapped just above; the controller was never given it.
                let unmapped = unsafe { self.controller.dma.unmap(dma, physical, direction) };
                self.controller.finish(Err(error), unmapped)
            }
        }
    }

    fn complete_next(&mut self) -> Result<Result<(), BlockError>, BlockError> {
        let this_cpus = self.controller.queue_of_this_cpu();
        let io = &mut self.controller.io[this_cpus];
        let queue = io.id;
        let completion = match io.wait(COMMAND_TIMEOUT) {
            Ok(completion) => completion,
            Err(error) => return Err(self.abandon(error)),
        };
        let position = self.in_flight.iter().position(|held| held.command.command_id == completion.command_id);
        let Some(position) = position.filter(|_| completion.submission_queue == queue) else {
            let outstanding = self.in_flight.iter().map(|held| held.command.command_id).collect();
            let got = (completion.submission_queue, completion.command_id);
            return Err(self.abandon(NvmeError::UnexpectedCompletion { queue, outstanding, got }));
        };
        let held = self.in_flight.swap_remove(position);
        if self.controller.recording {
            self.controller.last_received = held.received;
        }
        let status = check_status(held.command.name, completion.status());
        // SAFETY: the mapping `submit` made for this command, which the controller completed.
        let unmapped = unsafe { self.controller.dma.unmap(held.dma, held.physical, held.direction) };
        Ok(self.controller.finish(status, unmapped))
    }
}

fn check_status(command: &'static str, status: Status) -> Result<(), NvmeError> {
    match status.is_success() {
        true => Ok(()),
        false => Err(NvmeError::Command { command, status }),
    }
}

fn check_capabilities(capabilities: &Capabilities) -> Result<(), NvmeError> {
    if !capabilities.nvm_command_set {
        return Err(NvmeError::Unsupported("no NVM command set (CAP.CSS)"));
    }
    if !(capabilities.min_page_size..=capabilities.max_page_size).contains(&PAGE_SIZE) {
        return Err(NvmeError::Unsupported("4 KiB memory pages are outside CAP.MPSMIN..MPSMAX"));
    }
    if capabilities.max_queue_entries < u32::from(ADMIN_ENTRIES.max(IO_ENTRIES)) {
        return Err(NvmeError::Unsupported("its queues are shorter than this driver's (CAP.MQES)"));
    }
    Ok(())
}

/// This driver's entries are 64 and 16 bytes (CC.IOSQES = 6, CC.IOCQES = 4).
fn check_entry_sizes(identity: &ControllerIdentity) -> Result<(), NvmeError> {
    let within = |(smallest, largest): (u8, u8), size: u8| (smallest..=largest).contains(&size);
    match within(identity.submission_entry_size, 6) && within(identity.completion_entry_size, 4) {
        true => Ok(()),
        false => Err(NvmeError::Unsupported("64-byte commands or 16-byte completions are outside SQES/CQES")),
    }
}

/// Clears CC.EN and waits for CSTS.RDY to clear: the controller stops fetching commands and
/// moving data, and forgets its queues (3.5.2 "Memory-based Controller Shutdown and Reset").
fn disable(properties: &mut ControllerRegisters, capabilities: &Capabilities) -> Result<(), NvmeError> {
    properties.set_configuration(0);
    wait_ready(properties, capabilities, false)
}

/// Waits, at most CAP.TO, for CSTS.RDY to become `ready`.
fn wait_ready(properties: &ControllerRegisters, capabilities: &Capabilities, ready: bool) -> Result<(), NvmeError> {
    let deadline = arch::timer::uptime() + capabilities.ready_timeout;
    loop {
        let status = properties.status();
        if status.fatal && ready {
            return Err(NvmeError::Fatal);
        }
        if status.ready == ready {
            return Ok(());
        }
        if arch::timer::uptime() > deadline {
            return Err(NvmeError::NotReady { ready, after: capabilities.ready_timeout });
        }
        core::hint::spin_loop();
    }
}

/// A page-aligned page: identify data then fills one PRP entry, whatever the route.
#[repr(C, align(4096))]
struct IdentifyPage([u8; IDENTIFY_BYTES]);

/// Runs an Identify command, whose 4 KiB of data the controller writes; returns the data.
fn identify_page(
    dma: &'static DmaDevice,
    admin: &mut QueuePair,
    target: IdentifyTarget,
) -> Result<Box<[u8; IDENTIFY_BYTES]>, NvmeError> {
    let mut page = Box::new(IdentifyPage([0; IDENTIFY_BYTES]));
    let mapping = dma.map_from_device(&mut page.0)?;
    let entry = SubmissionEntry::identify(target, mapping.dma().as_u64());
    let name = entry.name(true);
    let completion = admin.execute(entry, COMMAND_TIMEOUT);
    mapping.unmap()?;
    check_status(name, completion?.status())?;
    Ok(Box::new(page.0))
}

fn admin_command(admin: &mut QueuePair, entry: SubmissionEntry) -> Result<(), NvmeError> {
    let name = entry.name(true);
    let completion = admin.execute(entry, COMMAND_TIMEOUT)?;
    check_status(name, completion.status())
}

fn identify_controller(dma: &'static DmaDevice, admin: &mut QueuePair) -> Result<ControllerIdentity, NvmeError> {
    Ok(ControllerIdentity::parse(&*identify_page(dma, admin, IdentifyTarget::Controller)?))
}

/// The first active namespace and its identity.
fn identify_namespace(
    dma: &'static DmaDevice,
    admin: &mut QueuePair,
    controller: &ControllerIdentity,
) -> Result<Namespace, NvmeError> {
    let list = identify_page(dma, admin, IdentifyTarget::ActiveNamespaces)?;
    let id = identify::active_namespaces(&list).next().filter(|&id| id <= controller.namespaces);
    let id = id.ok_or(NvmeError::NoNamespace)?;
    let data = identify_page(dma, admin, IdentifyTarget::Namespace(id))?;
    let identity = NamespaceIdentity::parse(&data)?;
    // With metadata, each block moves more bytes than its data (or needs MPTR): the PRPs
    // would describe less than the controller transfers.
    if identity.metadata_size != 0 {
        return Err(NvmeError::Unsupported("the namespace's format carries metadata"));
    }
    Ok(Namespace { id, identity })
}

/// The interrupt vector of the pin-based interrupt (INTx), the only one without MSI-X.
const INTX_VECTOR: u16 = 0;
/// The MSI-X vector of the I/O queue: vector 0 belongs to the admin queue, which is polled.
pub const MSIX_VECTOR: u16 = 1;

/// How the controller signals its I/O completions: what its interrupt source is, whether or
/// not the driver sleeps on it (with MSI-X on, INTMS/INTMC must not be touched either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// INTx, masked and unmasked with INTMS/INTMC.
    Pin,
    /// An MSI-X vector, masked in the function's table.
    Message,
}

/// An I/O queue pair for each of `lines` the controller grants (Set Features, Number of
/// Queues, when more than one is asked for), numbered from 1, each completion queue created
/// first (the submission queue names it) on its own vector: MSI-X vector [`MSIX_VECTOR`] + n
/// for queue n + 1, whose LPI is moved to the n-th CPU online. Lines beyond the grant are
/// dropped, which disables their LPIs.
fn create_io_queues(
    dma: &'static DmaDevice,
    admin: &mut QueuePair,
    doorbells: Doorbells,
    lines: Vec<Option<Line>>,
    signal: Signal,
) -> Result<Vec<QueuePair>, NvmeError> {
    let wanted = u16::try_from(lines.len().clamp(1, MAX_IO_QUEUES)).unwrap_or(1);
    let granted = match wanted {
        1 => 1,
        _ => {
            let completion = admin.execute(SubmissionEntry::set_number_of_queues(wanted), COMMAND_TIMEOUT)?;
            check_status("Set Features (Number of Queues)", completion.status())?;
            granted_queues(completion.result)
        }
    };
    let cpus: Vec<usize> = (0..crate::smp::listed()).filter(|&cpu| crate::smp::seen(cpu).is_some()).collect();
    let mut queues = Vec::new();
    for (index, line) in lines.into_iter().take(usize::from(wanted.min(granted))).enumerate() {
        let id = index as u16 + 1;
        let vector = line.as_ref().map(|_| match signal {
            Signal::Pin => INTX_VECTOR,
            Signal::Message => MSIX_VECTOR + index as u16,
        });
        if let (Some(line), Signal::Message, Some(&cpu)) = (&line, signal, cpus.get(index))
            && let Err(problem) = crate::its::move_to_cpu(line.intid(), cpu)
        {
            log::warn!("I/O queue {id}: its interrupt stays on the boot CPU: {problem}");
        }
        let io = QueuePair::new(dma, id, IO_ENTRIES, doorbells)?.with_line(line);
        let completion = io.completion_address().as_u64();
        admin_command(admin, SubmissionEntry::create_io_completion_queue(id, IO_ENTRIES, completion, vector))?;
        let submission = io.submission_address().as_u64();
        admin_command(admin, SubmissionEntry::create_io_submission_queue(id, IO_ENTRIES, submission, id))?;
        queues.push(io);
    }
    Ok(queues)
}
