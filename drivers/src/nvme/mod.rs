//! NVM Express: a PCIe disk controller driven entirely through queues in host memory.
//!
//! An NVMe controller has few registers (`registers.rs`, NVMe Base Specification 2.0, 3.1.4
//! "Controller Properties"). The host puts commands in *submission queues* and the controller
//! answers in *completion queues*, both rings in memory the controller reaches by DMA; a write
//! to a *doorbell* register tells the controller how far the host has come (3.3 "NVM Queue
//! Models"):
//!
//! ```text
//!   host memory                                     controller (BAR0)
//!  ┌──────────────────────────┐  tail doorbell  ┌─────────────────────┐
//!  │ submission queue: 64-byte├────────────────▶│ fetches commands,   │
//!  │ commands (command.rs)    │                 │ moves the data by   │
//!  └──────────────────────────┘                 │ DMA (PRPs, prp.rs), │
//!  ┌──────────────────────────┐   writes entry  │ posts completions   │
//!  │ completion queue: 16-byte│◀────────────────┤                     │
//!  │ entries with phase bit   │  head doorbell  │                     │
//!  │ (completion.rs)          ├────────────────▶│                     │
//!  └──────────────────────────┘                 └─────────────────────┘
//! ```
//!
//! - The *admin* queue pair (queue 0, its addresses in the ASQ/ACQ registers) carries
//!   management commands: Identify, and creating the I/O queue pairs (5 "Admin Command Set").
//! - I/O queue pairs carry Read and Write (NVM Command Set Specification, 3 "I/O Commands").
//! - An interrupt (or a poll, as here) says only that *some* completions arrived; which slots
//!   are new the host tells by each entry's *phase* bit, which the controller inverts on every
//!   pass around the ring: an entry is fresh when its phase matches the one the host expects
//!   (`queue.rs`, 4.2.4 "Phase Tag").
//! - Data is described by *Physical Region Page* entries: the first may start anywhere in a
//!   memory page, every later one must start on a page boundary (4.3.1 "Physical Region Page
//!   Entry and List"). A buffer's offset within its 4 KiB page therefore travels in the DMA
//!   address itself — which is why the DMA layer must preserve it (`min_align_mask = 0xfff`,
//!   contract rule 1) however the buffer is bounced or translated.
//! - A controller limits one command's data to `2^MDTS` minimum-size pages (Identify
//!   Controller, MDTS); the DMA layer limits one mapping (`max_mapping_size`). Requests larger
//!   than either are split (`transfer.rs`).
//!
//! Everything here is encoding and arithmetic, tested on the host; the kernel allocates the
//! queues, maps the data and rings the doorbells.

pub mod command;
pub mod completion;
pub mod identify;
pub mod prp;
pub mod queue;
pub mod registers;
pub mod transfer;
