//! Queue rings: which slot the host fills next, how far the controller has read, and which
//! completion is new (NVMe Base Specification 2.0, 3.3.1 "Memory-Based Transport Queue Model").
//!
//! A queue is a ring of slots with a *head*, where the consumer reads next, and a *tail*, where
//! the producer writes next. The host produces submissions and consumes completions; the
//! controller does the opposite. Each side tells the other how far it has come: the host by
//! writing the SQ tail and the CQ head to doorbell registers, the controller by the SQ head it
//! reports in every completion (SQHD) and by the completions it writes.
//!
//! Head equal to tail means empty, so a ring can never be entirely full: it is full when
//! advancing the tail would make it equal to the head, with one slot always unused (3.3.1.5
//! "Full Queue"). A queue of `n` entries holds at most `n - 1` commands.
//!
//! ```text
//!   submission queue of 8 slots, 7 commands in flight: full
//!    slot   0   1   2   3   4   5   6   7
//!          [C] [ ] [C] [C] [C] [C] [C] [C]
//!               ▲   ▲
//!            tail   head (SQHD: the controller has fetched slots up to 1)
//! ```
//!
//! The controller does not tell the host where its completion tail is. Instead each completion
//! entry carries a *phase tag* (4.6 "Completion Queue Entry"): the controller writes 1 on its
//! first pass around the ring, 0 on the second, and so on. The queue memory starts zeroed, so
//! the host expects 1 first and inverts its expectation each time its head wraps to slot 0; an
//! entry with the other phase is one from the previous pass that the controller has not
//! overwritten yet:
//!
//! ```text
//!   completion queue of 4 slots, second pass: the host expects phase 0
//!    slot     0   1   2   3
//!    phase    0   0   1   1
//!                     ▲ head: phase 1 is last pass's entry, nothing new yet
//! ```
//!
//! This module is only the arithmetic; the kernel owns the queue memory and the doorbells.

use core::fmt;

/// The fewest entries a queue may have: one for a command and the one that stays empty.
const FEWEST_ENTRIES: u16 = 2;

/// The host's view of a submission queue: where to write the next command, and which commands
/// the controller has not fetched yet.
#[derive(Debug)]
pub struct SubmissionRing {
    /// Counts in `u32`: the sums below may pass `u16::MAX` before the wrap.
    entries: u32,
    head: u32,
    tail: u32,
}

impl SubmissionRing {
    /// An empty ring of `entries` slots (at least 2).
    pub fn new(entries: u16) -> Result<Self, QueueError> {
        check_entries(entries)?;
        Ok(Self { entries: u32::from(entries), head: 0, tail: 0 })
    }

    /// Takes the slot at the tail for a new command and returns its index; the caller writes
    /// the command there, then rings the doorbell with [`Self::tail`].
    pub fn push(&mut self) -> Result<u16, QueueError> {
        let next = (self.tail + 1) % self.entries;
        if next == self.head {
            return Err(QueueError::Full { entries: self.entries });
        }
        let slot = self.tail;
        self.tail = next;
        Ok(slot as u16)
    }

    /// The value for the SQ tail doorbell.
    pub fn tail(&self) -> u16 {
        self.tail as u16
    }

    /// Frees the slots the controller has fetched, up to the SQ head `head` a completion
    /// reported (SQHD). The head only moves forward, and never past the tail.
    pub fn complete_to(&mut self, head: u16) -> Result<(), QueueError> {
        let reported = u32::from(head);
        if reported >= self.entries || self.distance_from_head(reported) > self.distance_from_head(self.tail) {
            return Err(QueueError::HeadNotInFlight { reported: head, head: self.head as u16, tail: self.tail as u16 });
        }
        self.head = reported;
        Ok(())
    }

    /// Commands written but not yet fetched by the controller, as far as the host knows.
    pub fn in_flight(&self) -> u16 {
        self.distance_from_head(self.tail) as u16
    }

    /// How many slots `slot` lies ahead of the head, going round the ring.
    fn distance_from_head(&self, slot: u32) -> u32 {
        (slot + self.entries - self.head) % self.entries
    }
}

/// The host's view of a completion queue: the slot to look at next and the phase tag that
/// marks a new entry there.
#[derive(Debug)]
pub struct CompletionRing {
    entries: u32,
    head: u32,
    phase: bool,
}

impl CompletionRing {
    /// A ring over zeroed memory, so the controller's first pass writes phase 1.
    pub fn new(entries: u16) -> Result<Self, QueueError> {
        check_entries(entries)?;
        Ok(Self { entries: u32::from(entries), head: 0, phase: true })
    }

    /// The slot the next completion will be in.
    pub fn head(&self) -> u16 {
        self.head as u16
    }

    /// The phase tag a new entry carries on this pass.
    pub fn phase(&self) -> bool {
        self.phase
    }

    /// Whether the entry at the head, with phase tag `phase`, was written on this pass.
    pub fn is_new(&self, phase: bool) -> bool {
        phase == self.phase
    }

    /// Moves past the entry at the head once it has been read, and returns the value for the
    /// CQ head doorbell. Wrapping to slot 0 starts a new pass, with the other phase.
    pub fn advance(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head as u16
    }
}

fn check_entries(entries: u16) -> Result<(), QueueError> {
    if entries < FEWEST_ENTRIES {
        return Err(QueueError::TooFewEntries { entries });
    }
    Ok(())
}

/// A queue that cannot be built, or a ring the host or the controller would overrun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A queue needs at least 2 entries, since one slot always stays empty (3.3.1.5).
    TooFewEntries {
        /// The entries asked for.
        entries: u16,
    },
    /// The submission queue is full: its last free slot must stay empty (3.3.1.5).
    Full {
        /// The queue's slots.
        entries: u32,
    },
    /// A completion's SQ head lies outside the slots between the known head and the tail.
    HeadNotInFlight {
        /// The SQ head the completion reported.
        reported: u16,
        /// The head the host knew.
        head: u16,
        /// The tail the host wrote.
        tail: u16,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::TooFewEntries { entries } => write!(
                f,
                "a queue of {entries} entries: it needs at least 2, since one slot always stays empty (3.3.1.5)"
            ),
            QueueError::Full { entries } => write!(
                f,
                "the submission queue is full: {} commands in flight, and the last of its {entries} slots must \
                 stay empty (3.3.1.5)",
                entries - 1
            ),
            QueueError::HeadNotInFlight { reported, head, tail } => write!(
                f,
                "the controller reported SQ head {reported}, but the head can only move forward from {head} up to \
                 the tail at {tail}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn a_queue_needs_two_entries() {
        for entries in [0, 1] {
            assert_eq!(SubmissionRing::new(entries).unwrap_err(), QueueError::TooFewEntries { entries });
            assert_eq!(CompletionRing::new(entries).unwrap_err(), QueueError::TooFewEntries { entries });
        }
        let mut smallest = SubmissionRing::new(2).unwrap();
        assert_eq!(smallest.push(), Ok(0));
        assert_eq!(smallest.push(), Err(QueueError::Full { entries: 2 }));
    }

    #[test]
    fn a_full_queue_is_refused_and_keeps_one_slot_empty() {
        let mut ring = SubmissionRing::new(4).unwrap();
        assert_eq!([ring.push(), ring.push(), ring.push()], [Ok(0), Ok(1), Ok(2)]);
        assert_eq!((ring.in_flight(), ring.tail()), (3, 3));
        assert_eq!(ring.push(), Err(QueueError::Full { entries: 4 }));
        assert_eq!((ring.in_flight(), ring.tail()), (3, 3), "a refused push changes nothing");
        ring.complete_to(1).unwrap();
        assert_eq!((ring.push(), ring.tail()), (Ok(3), 0));
        assert_eq!(ring.push(), Err(QueueError::Full { entries: 4 }));
    }

    #[test]
    fn the_tail_wraps_around() {
        let mut ring = SubmissionRing::new(4).unwrap();
        for expected_slot in [0, 1, 2, 3, 0, 1, 2, 3, 0] {
            assert_eq!(ring.push(), Ok(expected_slot));
            ring.complete_to(ring.tail()).unwrap();
            assert_eq!(ring.in_flight(), 0);
        }
        assert_eq!(ring.tail(), 1);
    }

    #[test]
    fn the_largest_queue_holds_one_command_less_than_its_entries() {
        let mut ring = SubmissionRing::new(u16::MAX).unwrap();
        for slot in 0..u16::MAX - 1 {
            assert_eq!(ring.push(), Ok(slot));
        }
        assert_eq!(ring.in_flight(), u16::MAX - 1);
        assert_eq!(ring.push(), Err(QueueError::Full { entries: 65535 }));
        ring.complete_to(u16::MAX - 1).unwrap();
        assert_eq!((ring.push(), ring.tail()), (Ok(u16::MAX - 1), 0));
    }

    #[test]
    fn a_head_outside_the_commands_in_flight_is_refused() {
        let mut ring = SubmissionRing::new(8).unwrap();
        for _ in 0..3 {
            ring.push().unwrap();
        }
        let refused = |reported, head, tail| Err(QueueError::HeadNotInFlight { reported, head, tail });
        assert_eq!(ring.complete_to(4), refused(4, 0, 3), "past the tail");
        assert_eq!(ring.complete_to(8), refused(8, 0, 3), "past the end of the queue");
        assert_eq!(ring.in_flight(), 3, "a refusal changes nothing");
        assert_eq!(ring.complete_to(2), Ok(()));
        assert_eq!(ring.complete_to(2), Ok(()), "the same head again: nothing more fetched");
        assert_eq!(ring.complete_to(1), refused(1, 2, 3), "backwards");
        assert_eq!(ring.complete_to(3), Ok(()));
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn the_phase_flips_on_each_wrap() {
        let mut ring = CompletionRing::new(3).unwrap();
        assert!(ring.phase() && ring.is_new(true) && !ring.is_new(false), "zeroed memory is not new");
        assert_eq!([ring.advance(), ring.advance()], [1, 2]);
        assert!(ring.phase());
        assert_eq!(ring.advance(), 0);
        assert!(!ring.phase());
        assert!(!ring.is_new(true), "an entry of the previous pass is not new");
        assert!(ring.is_new(false));
        assert_eq!([ring.advance(), ring.advance(), ring.advance()], [1, 2, 0]);
        assert!(ring.phase());
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            format!("{}", QueueError::Full { entries: 64 }),
            "the submission queue is full: 63 commands in flight, and the last of its 64 slots must stay empty \
             (3.3.1.5)"
        );
        assert_eq!(
            format!("{}", QueueError::HeadNotInFlight { reported: 9, head: 2, tail: 5 }),
            "the controller reported SQ head 9, but the head can only move forward from 2 up to the tail at 5"
        );
    }

    /// What the controller writes in a completion entry that matters here.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Completion {
        command: u32,
        sq_head: u16,
        phase: bool,
    }

    /// A controller as 3.3.1 describes it: it fetches commands up to the SQ tail doorbell, and
    /// posts one completion per command with its phase tag, never into a full completion queue.
    struct ModelController {
        entries: u16,
        sq_head: u16,
        cq_tail: u16,
        phase: bool,
        completions: Vec<Completion>,
    }

    impl ModelController {
        fn new(entries: u16) -> Self {
            let zeroed = Completion { command: 0, sq_head: 0, phase: false };
            Self { entries, sq_head: 0, cq_tail: 0, phase: true, completions: vec![zeroed; entries.into()] }
        }

        fn ring_sq_doorbell(&mut self, sq_tail: u16, commands: &[u32], cq_head: u16) {
            while self.sq_head != sq_tail {
                let command = commands[usize::from(self.sq_head)];
                self.sq_head = (self.sq_head + 1) % self.entries;
                self.post(Completion { command, sq_head: self.sq_head, phase: self.phase }, cq_head);
            }
        }

        fn post(&mut self, completion: Completion, cq_head: u16) {
            let next = (self.cq_tail + 1) % self.entries;
            assert_ne!(next, cq_head, "the model controller would overrun the completion queue");
            self.completions[usize::from(self.cq_tail)] = completion;
            self.cq_tail = next;
            if next == 0 {
                self.phase = !self.phase;
            }
        }
    }

    /// Batches of commands go round both rings more than three times; the host must see every
    /// completion once, in order, and nothing else.
    #[test]
    fn a_model_controller_agrees_with_the_rings() {
        const ENTRIES: u16 = 5;
        const COMMANDS: u32 = 3 * ENTRIES as u32 + 2;
        let mut controller = ModelController::new(ENTRIES);
        let mut submissions = SubmissionRing::new(ENTRIES).unwrap();
        let mut completions = CompletionRing::new(ENTRIES).unwrap();
        let mut queue_memory = vec![0u32; ENTRIES.into()];
        let mut cq_head_doorbell = 0;
        let (mut next_command, mut completed) = (0, Vec::new());
        for batch in [1, 4, 2, 3].into_iter().cycle() {
            if next_command == COMMANDS {
                break;
            }
            for _ in 0..batch.min(COMMANDS - next_command) {
                queue_memory[usize::from(submissions.push().unwrap())] = next_command;
                next_command += 1;
            }
            controller.ring_sq_doorbell(submissions.tail(), &queue_memory, cq_head_doorbell);
            loop {
                let entry = controller.completions[usize::from(completions.head())];
                if !completions.is_new(entry.phase) {
                    break;
                }
                submissions.complete_to(entry.sq_head).unwrap();
                completed.push(entry.command);
                cq_head_doorbell = completions.advance();
            }
            assert_eq!(submissions.in_flight(), 0);
        }
        assert_eq!(completed, (0..COMMANDS).collect::<Vec<_>>());
        assert_eq!((completions.head(), completions.phase()), (2, false), "17 entries: 3 wraps, 2 more");
        assert_eq!((completions.head(), completions.phase()), (controller.cq_tail, controller.phase));
    }
}
