//! One NVMe queue pair: a submission ring and a completion ring in coherent memory, and the two
//! doorbells that tell the controller where the host is (NVMe Base 2.0, 3.3.1 "Memory-Based
//! Transport Queue Model").
//!
//! Submitting is: write the 64-byte command into the slot at the tail, make that write visible
//! to the device, then write the new tail to the submission doorbell. Completing is: poll the
//! completion slot at the head until its phase tag says the controller wrote it on this pass,
//! read it, write the new head to the completion doorbell so the controller may reuse the slot.
//! The index arithmetic and the phase are `drivers::nvme::queue`; this file owns the memory.

use core::mem::size_of;
use core::time::Duration;

use addr::{DmaAddr, VirtAddr};
use drivers::nvme::command::SubmissionEntry;
use drivers::nvme::completion::CompletionEntry;
use drivers::nvme::queue::{CompletionRing, SubmissionRing};
use drivers::nvme::registers::{Doorbell, doorbell_offset};

use super::NvmeError;
use crate::dma_platform::{Coherent, DmaDevice};
use crate::interrupts::Line;

/// Where a controller's doorbells are: after its registers, `stride` bytes apart (CAP.DSTRD).
#[derive(Clone, Copy)]
pub(super) struct Doorbells {
    pub registers: VirtAddr,
    pub stride: usize,
}

impl Doorbells {
    fn ring(&self, queue: u16, doorbell: Doorbell, value: u16) {
        let register = self.registers.add(doorbell_offset(queue, doorbell, self.stride) as u64);
        // SAFETY: a doorbell inside BAR0, mapped as device memory for the controller's lifetime.
        unsafe { core::ptr::write_volatile(register.as_mut_ptr::<u32>(), u32::from(value)) };
    }
}

pub(super) struct QueuePair {
    pub id: u16,
    doorbells: Doorbells,
    /// The rings' memory, freed when the pair is dropped: only once the controller no longer
    /// uses them (the queue deleted, or the controller disabled).
    submissions: Coherent<'static>,
    completions: Coherent<'static>,
    submission_ring: SubmissionRing,
    completion_ring: CompletionRing,
    next_command_id: u16,
    /// The controller's interrupt, if this queue's completions interrupt; else polled.
    line: Option<Line>,
}

impl QueuePair {
    /// Zeroed rings of `entries` slots each (a zeroed completion ring holds no entry of the
    /// first pass, whose phase is 1).
    pub fn new(dma: &'static DmaDevice, id: u16, entries: u16, doorbells: Doorbells) -> Result<Self, NvmeError> {
        let submission_ring = SubmissionRing::new(entries)?;
        let completion_ring = CompletionRing::new(entries)?;
        let submissions = dma.alloc_coherent(usize::from(entries) * size_of::<SubmissionEntry>())?;
        let completions = dma.alloc_coherent(usize::from(entries) * size_of::<CompletionEntry>())?;
        let next_command_id = 0;
        Ok(Self {
            id,
            doorbells,
            submissions,
            completions,
            submission_ring,
            completion_ring,
            next_command_id,
            line: None,
        })
    }

    /// The same pair, its completions waited for asleep on `line` (if any).
    pub fn with_line(self, line: Option<Line>) -> Self {
        Self { line, ..self }
    }

    /// How many interrupts this queue's controller has raised; `None` if polled.
    pub fn interrupts_taken(&self) -> Option<u64> {
        self.line.as_ref().map(Line::fired)
    }

    /// Interrupts of its line taken on another CPU than the one waiting ([`Line::forwarded`]).
    pub fn interrupts_forwarded(&self) -> Option<u64> {
        self.line.as_ref().map(Line::forwarded)
    }

    pub fn submission_address(&self) -> DmaAddr {
        self.submissions.dma()
    }

    pub fn completion_address(&self) -> DmaAddr {
        self.completions.dma()
    }

    /// Submits `entry` and waits for its completion, at most `timeout`: for a queue with no
    /// other command in flight. Returns the completion.
    pub fn execute(&mut self, entry: SubmissionEntry, timeout: Duration) -> Result<CompletionEntry, NvmeError> {
        let (command_id, _) = self.submit(entry)?;
        let completion = self.wait(timeout)?;
        if completion.command_id != command_id || completion.submission_queue != self.id {
            return Err(NvmeError::UnexpectedCompletion {
                queue: self.id,
                outstanding: alloc::vec![command_id],
                got: (completion.submission_queue, completion.command_id),
            });
        }
        Ok(completion)
    }

    /// The command the controller was given in `slot`, read back from the ring.
    pub fn submitted(&self, slot: u16) -> SubmissionEntry {
        let entry = self.submissions.as_ptr().as_ptr().cast::<SubmissionEntry>().wrapping_add(usize::from(slot));
        // SAFETY: `slot` is inside the ring (it came from `push`), which lives as long as `self`.
        unsafe { core::ptr::read_volatile(entry) }
    }

    /// Submits `entry` under the next command ID; returns that ID and the slot the command
    /// went into (its bytes stay there until the ring comes round).
    pub fn submit(&mut self, entry: SubmissionEntry) -> Result<(u16, u16), NvmeError> {
        let command_id = self.next_command_id;
        let slot = self.submission_ring.push()?;
        // 0xFFFF is not a command ID: the Error Information log uses it for "no command" (5.16.1.2).
        self.next_command_id = (self.next_command_id + 1) % 0xffff;
        let target = self.submissions.as_ptr().as_ptr().cast::<SubmissionEntry>().wrapping_add(usize::from(slot));
        // SAFETY: `slot` is inside the ring, which the controller does not read until told.
        unsafe { core::ptr::write_volatile(target, entry.with_command_id(command_id)) };
        // A line still masked from an interrupt the driver never slept for is rearmed before
        // the controller is told, so that this command's completion interrupts. (A completion
        // not yet consumed keeps a pin-based line high: it then interrupts once more at once.)
        if let Some(line) = self.line.as_mut() {
            line.rearm(&mut || {});
        }
        arch::cache::order_writes_before_doorbell();
        self.doorbells.ring(self.id, Doorbell::SubmissionTail, self.submission_ring.tail());
        Ok((command_id, slot))
    }

    /// Waits until the controller posts into the completion slot at the head: the next command
    /// to complete, whichever it is. Polls, or sleeps between the controller's interrupts.
    pub fn wait(&mut self, timeout: Duration) -> Result<CompletionEntry, NvmeError> {
        let deadline = arch::timer::uptime() + timeout;
        let slot = self
            .completions
            .as_ptr()
            .as_ptr()
            .cast::<CompletionEntry>()
            .wrapping_add(usize::from(self.completion_ring.head()));
        loop {
            // SAFETY: `slot` is inside the ring, which lives as long as `self`.
            let posted = unsafe { core::ptr::read_volatile(slot) };
            if self.completion_ring.is_new(posted.phase()) {
                // Read the whole entry again: the first read may have seen the phase bit
                // before the rest of the entry landed.
                arch::cache::order_reads_after_status();
                // SAFETY: as above.
                let completion = unsafe { core::ptr::read_volatile(slot) };
                let head = self.completion_ring.advance();
                self.submission_ring.complete_to(completion.submission_head)?;
                self.doorbells.ring(self.id, Doorbell::CompletionHead, head);
                return Ok(completion);
            }
            if arch::timer::uptime() > deadline {
                return Err(NvmeError::Timeout { queue: self.id, after: timeout });
            }
            match &mut self.line {
                // Consuming the entry and writing the head doorbell (above) is what lowers a
                // pin-based interrupt (NVMe Base 2.0, 3.5.1.1): nothing more to acknowledge.
                Some(line) => {
                    let ring = &self.completion_ring;
                    // SAFETY: as above.
                    line.wait(deadline, || ring.is_new(unsafe { core::ptr::read_volatile(slot) }.phase()), || {});
                }
                None => core::hint::spin_loop(),
            }
        }
    }
}
