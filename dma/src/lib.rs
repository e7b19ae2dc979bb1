//! The DMA API drivers use: one handle per device, whatever route its transfers take.
//!
//! A device does not use CPU addresses. What it needs, and what the kernel must do around each
//! transfer, depends on facts the devicetree states per device (`platform::dma_config`):
//!
//! ```text
//!                       ┌── direct ────────▶ DMA address = bus window(PA); caches cleaned
//!                       │                     and invalidated unless the device is coherent;
//!                       │   └ out of reach, ▶ the buffer is copied through the default pool,
//!                       │     or sharing a     below the device's limit and uncached
//!                       │     cache line
//!  driver ──DmaDevice───┤                     
//!   map(buffer, dir)    ├── restricted pool ─▶ the bytes are copied into the pool named by
//!                       │                      `memory-region` (force bounce, contract rule 12),
//!                       │                      the device gets the copy's DMA address
//!                       └── IOMMU ───────────▶ the granules around the buffer are mapped in
//!                                              the device's domain, the device gets an IOVA;
//!                                              an untrusted device's partial granules are
//!                                              bounced first ([`translated`])
//! ```
//!
//! Ownership is in the types, so that the compiler enforces who may touch a buffer when:
//!
//! - a *streaming* mapping ([`Streaming`]) lends an existing buffer for one transfer and holds
//!   its borrow until it is unmapped: `&[u8]` for a transfer to the device, `&mut [u8]` for one
//!   from it. The direction is in the type, so a sync that cannot make sense does not compile;
//! - *coherent* memory ([`Coherent`]) is shared for a long time (virtqueues, control blocks):
//!   an owning value, reached by volatile accesses only, freed (and unmapped) on drop;
//! - the *raw* calls underneath ([`DmaDevice::map`] and friends, `unsafe`) serve drivers whose
//!   buffers are not Rust borrows (a virtqueue's requests); the debug checker ([`debug`])
//!   watches them as Linux's `CONFIG_DMA_API_DEBUG` does.
//!
//! The API is generic over [`Platform`]: the kernel implements it with the MMU, cache
//! maintenance instructions and the SMMUv3; host tests with [`sim`] (feature `sim`), a machine
//! whose write-back cache loses data exactly where real hardware would. QEMU does not model
//! caches, so this is where a forgotten clean or invalidate shows up.
//!
//! "Rule N" and "RN" refer to the project's DMA contract, `docs/dma-contract.md`.
#![no_std]

extern crate alloc;

mod coherent;
pub mod debug;
mod device;
mod error;
pub mod iommu;
pub mod lessons;
pub mod platform;
mod pool;
#[cfg(feature = "sim")]
pub mod sim;
mod streaming;
pub mod trace;
pub mod translated;

pub use coherent::Coherent;
pub use debug::Checker;
pub use device::{AuditReport, DmaDevice, Route};
pub use error::{DmaApiError, MapError};
pub use iommu::{Domain, DomainError};
pub use platform::{Maintenance, MemoryKind, Platform};
pub use pool::DmaPool;
pub use streaming::{Bidirectional, DeviceWrites, Direction, FromDevice, Streaming, ToDevice};
pub use swiotlb::{Constraints, DmaDirection};
pub use trace::Tracer;
