//! Kernel tests: what can only be checked on the machine itself. Each file covers one
//! subsystem; `testing` runs them all when the command line says `kernel.test`.

mod block;
mod boot;
mod dma;
mod dma_engine;
mod edu;
mod exceptions;
mod interrupts;
mod iommu;
mod memory;
mod mmu;
mod msi;
mod nvme;
mod smp;
pub mod virtio;
