//! The IOMMU: an SMMUv3 translating every DMA of the PCIe devices behind it.
//!
//! Without an IOMMU a device's DMA address is a bus address: it reaches whatever RAM its
//! windows reach, and a buggy or hostile device can write anywhere there. Behind an SMMU every
//! transaction carries a StreamID; the SMMU looks the stream up in its *stream table* (one
//! 64-byte STE per StreamID), follows it to a *context descriptor* (CD: ASID, page-table base,
//! granule) and translates the address through that context's stage-1 page tables — the same
//! VMSAv8-64 format as the CPU's (Arm IHI 0070, 3.2 "Stream numbering", 5.2 and 5.4).
//!
//! ```text
//!  device ──(StreamID, IOVA)──▶ SMMU ──STE[StreamID]──▶ CD ──TTB0──▶ page tables ──▶ PA
//!                                 │
//!                                 └─ no valid entry: the access is refused and an event
//!                                    (F_TRANSLATION, with the IOVA) is written to the event queue
//! ```
//!
//! Each PCIe device gets its own [`Domain`]: its own page tables and IOVA space, so it can
//! reach exactly what is mapped for it, for as long as it is mapped. The SMMU is started in
//! [`start`]; devices are attached in [`attach`]; faults are read from the event queue in
//! [`poll_events`], logged with the device's name and kept for tests in [`take_faults`].
//!
//! Policy comes from the command line:
//! - `iommu.granule=4K|16K|64K` — the page size of every domain (default 4K). The kernel's own
//!   pages stay 4 KiB; a larger IOMMU granule is what the contract's rules 2, 3 and 10 are for.
//! - `iommu.untrusted=all|none|BB:DD.F[,BB:DD.F...]` — which devices are *untrusted*: their
//!   buffers are bounced unless they fill whole granules, so the device sees nothing but its
//!   own bytes (default none: every device trusted, like Linux for internal devices).

mod domain;

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use addr::PhysAddr;
use drivers::smmuv3::{Event, Smmu, SmmuError, SmmuMemory, Stage1Context};
use log::{error, info, warn};
use platform::devicetree::Devicetree;
use platform::pci::PciFunction;
use spin::{Mutex, Once};
use vmsa::Granule;

pub use dma::iommu::DomainError;
pub use domain::{DomainTables, SmmuIotlb};

pub use crate::dma_platform::Domain;

/// Which devices bounce what they cannot map whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    None,
    All,
    Listed(Vec<PciFunction>),
}

/// The IOMMU policy of this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub granule: Granule,
    pub untrusted: Untrusted,
    /// Every unmap invalidated and waited for (the default, `iommu.strict=1`); with
    /// `iommu.strict=0` a trusted device's unmaps are deferred and flushed together (an
    /// untrusted device's never are: contract rule 14).
    pub strict: bool,
}

impl Policy {
    /// Reads `iommu.granule=`, `iommu.untrusted=` and `iommu.strict=`; a bad value is reported
    /// and ignored.
    pub fn from_bootargs(bootargs: &str) -> Self {
        let mut policy = Policy { granule: Granule::Size4KiB, untrusted: Untrusted::None, strict: true };
        for word in bootargs.split_whitespace() {
            if let Some(value) = word.strip_prefix("iommu.strict=") {
                match value {
                    "0" => policy.strict = false,
                    "1" => policy.strict = true,
                    _ => warn!("iommu.strict={value}: not 0 or 1; staying strict"),
                }
            } else if let Some(value) = word.strip_prefix("iommu.granule=") {
                match parse_granule(value) {
                    Some(granule) => policy.granule = granule,
                    None => warn!("iommu.granule={value}: not one of 4K, 16K, 64K; using 4K"),
                }
            } else if let Some(value) = word.strip_prefix("iommu.untrusted=") {
                match parse_untrusted(value) {
                    Some(untrusted) => policy.untrusted = untrusted,
                    None => {
                        warn!("iommu.untrusted={value}: expected all, none or BB:DD.F,...; distrusting every device");
                        policy.untrusted = Untrusted::All;
                    }
                }
            }
        }
        policy
    }

    pub fn is_untrusted(&self, function: PciFunction) -> bool {
        match &self.untrusted {
            Untrusted::None => false,
            Untrusted::All => true,
            Untrusted::Listed(functions) => functions.contains(&function),
        }
    }
}

fn parse_granule(value: &str) -> Option<Granule> {
    match value {
        "4K" => Some(Granule::Size4KiB),
        "16K" => Some(Granule::Size16KiB),
        "64K" => Some(Granule::Size64KiB),
        _ => None,
    }
}

fn parse_untrusted(value: &str) -> Option<Untrusted> {
    match value {
        "none" => Some(Untrusted::None),
        "all" => Some(Untrusted::All),
        list => list.split(',').map(parse_device_function).collect::<Option<Vec<_>>>().map(Untrusted::Listed),
    }
}

/// `BB:DD.F`, hexadecimal bus and device, as `lspci` prints them.
fn parse_device_function(text: &str) -> Option<PciFunction> {
    let (bus, rest) = text.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    PciFunction::new(u8::from_str_radix(bus, 16).ok()?, u8::from_str_radix(device, 16).ok()?, function.parse().ok()?)
}

/// A fault the SMMU reported, with the name of the device it came from.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub device: &'static str,
    pub event: Event,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.event)
    }
}

struct Iommu {
    name: &'static str,
    phandle: Option<u32>,
    smmu: Mutex<Smmu>,
    policy: Policy,
    /// StreamID → the device attached to it, for fault messages.
    attached: Mutex<Vec<(u32, &'static str)>>,
    faults: Mutex<Vec<Fault>>,
}

static IOMMU: Once<Iommu> = Once::new();

/// Zeroed heap memory for the stream table, queues, context descriptors and the domains' page
/// tables: the SMMU reads them coherently, and they live as long as the SMMU.
struct HeapForSmmu;

impl SmmuMemory for HeapForSmmu {
    fn allocate(&mut self, size: usize, align: usize) -> Option<(NonNull<u8>, PhysAddr)> {
        let layout = core::alloc::Layout::from_size_align(size, align.max(64)).ok()?;
        // SAFETY: a non-zero-sized layout; the SMMU owns the memory for good.
        let pointer = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        let physical = arch::layout::linear_virt_to_phys(addr::VirtAddr::from_ptr(pointer.as_ptr().cast_const()))?;
        Some((pointer, physical))
    }
}

/// StreamIDs the stream table covers: requester IDs of bus 0 and 1 are enough for the
/// devices enumerated here (`iommu-map` can give up to 16 bits).
const STREAM_ID_BITS: u32 = 9;

/// Starts the first SMMUv3 in the devicetree; `Ok(false)` when there is none.
pub fn start(devicetree: &Devicetree<'static>) -> Result<bool, alloc::string::String> {
    let smmus = devicetree.smmus().map_err(|error| alloc::format!("{error}"))?;
    let Some(node) = smmus.into_iter().next() else { return Ok(false) };
    let registers = arch::mmu::map_device(node.registers).map_err(|error| alloc::format!("{error:?}"))?;
    let base = NonNull::new(registers.as_mut_ptr::<u8>()).expect("device window is not at 0");
    // SAFETY: both register pages of the SMMU, freshly mapped as device memory.
    let features = unsafe { Smmu::probe(base) };
    info!("iommu: {} ({})", node.name, node.registers);
    for line in alloc::format!("{features}").lines() {
        info!("  {line}");
    }
    // SAFETY: as above; this is the only driver of this SMMU.
    let smmu =
        unsafe { Smmu::new(base, STREAM_ID_BITS, &mut HeapForSmmu) }.map_err(|error| alloc::format!("{error}"))?;
    let policy = Policy::from_bootargs(devicetree.bootargs());
    info!("iommu: enabled; granule {} KiB, untrusted devices: {}", policy.granule.size() >> 10, describe(&policy));
    if !policy.strict {
        warn!(
            "iommu: iommu.strict=0: trusted devices' unmaps are deferred; until each flush a device may still reach memory it was given"
        );
    }
    IOMMU.call_once(|| Iommu {
        name: node.name,
        phandle: node.phandle,
        smmu: Mutex::new(smmu),
        policy,
        attached: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
    });
    Ok(true)
}

fn describe(policy: &Policy) -> alloc::string::String {
    match &policy.untrusted {
        Untrusted::None => "none".into(),
        Untrusted::All => "all".into(),
        Untrusted::Listed(functions) => {
            functions.iter().map(|function| alloc::format!("{function}")).collect::<Vec<_>>().join(", ")
        }
    }
}

/// The policy of this boot, once the SMMU is running.
pub fn policy() -> Option<&'static Policy> {
    IOMMU.get().map(|iommu| &iommu.policy)
}

/// Whether `phandle` names the running SMMU (from a host bridge's `iommu-map`).
pub fn translates_for(phandle: u32) -> bool {
    IOMMU.get().is_some_and(|iommu| iommu.phandle == Some(phandle))
}

/// The running SMMU's node name and phandle, for messages about devices it does not translate.
pub fn running() -> Option<(&'static str, Option<u32>)> {
    IOMMU.get().map(|iommu| (iommu.name, iommu.phandle))
}

/// Why a device could not be given a domain.
#[derive(Debug, Clone, Copy)]
pub enum AttachError {
    /// The domain could not be built (its IOVA space or root table).
    Domain(DomainError),
    /// The SMMU refused the stream table entry or context descriptor.
    Smmu(SmmuError),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Domain(error) => write!(f, "{error}"),
            AttachError::Smmu(error) => write!(f, "{error}"),
        }
    }
}

/// Gives `device` (StreamID `stream_id`) a fresh domain and points its STE at it.
/// `dma_limit` is the highest address the device can put on the bus: its DMA mask. A trusted
/// device's domain defers its unmaps when the policy is not strict.
pub fn attach(
    device: &'static str,
    stream_id: u32,
    dma_limit: u64,
    untrusted: bool,
) -> Result<&'static Domain, AttachError> {
    let iommu = IOMMU.get().expect("attach after the SMMU started");
    // Lock order, everywhere: a domain's state, the SMMU, `attached`, `faults`. Both are held
    // for the whole attach, so that two CPUs attaching at once cannot take one ASID.
    let mut smmu = iommu.smmu.lock();
    let mut attached = iommu.attached.lock();
    let id = attached.len() as u16 + 1;
    let granule = iommu.policy.granule;
    let domain = Domain::new(id, stream_id, granule, dma_limit, DomainTables { granule }, SmmuIotlb)
        .map_err(AttachError::Domain)?;
    let domain = match iommu.policy.strict || untrusted {
        true => domain,
        false => domain.deferring_invalidation(),
    };
    let context = Stage1Context {
        asid: id,
        ttb0: domain.root(),
        granule_shift: granule.shift(),
        input_bits: dma::iommu::INPUT_BITS,
        mair: vmsa::MAIR,
    };
    smmu.attach_stage1(stream_id, &context, &mut HeapForSmmu).map_err(AttachError::Smmu)?;
    attached.push((stream_id, device));
    Ok(alloc::boxed::Box::leak(alloc::boxed::Box::new(domain)))
}

/// The running SMMU, for the domains' TLB maintenance.
fn smmu() -> &'static Mutex<Smmu> {
    &IOMMU.get().expect("domains exist only once the SMMU started").smmu
}

/// Reads the event queue: logs every event with its device's name and keeps it for
/// [`take_faults`]; also reports global errors. A device faults once per access (QEMU: per
/// 4 bytes), so a run of events alike but for the address is logged as its first and a count.
pub fn poll_events() {
    let Some(iommu) = IOMMU.get() else { return };
    let mut smmu = iommu.smmu.lock();
    let attached = iommu.attached.lock();
    let mut faults = iommu.faults.lock();
    let first_new = faults.len();
    let drained = smmu.drain_events(|event| {
        let named = attached.iter().find(|(stream, _)| *stream == event.stream_id);
        faults.push(Fault { device: named.map_or("unknown device", |(_, name)| name), event });
    });
    log_runs(iommu.name, &faults[first_new..]);
    if drained.overflowed {
        error!("iommu {}: the event queue overflowed: events were lost", iommu.name);
    }
    if let Some(errors) = smmu.global_errors() {
        error!("iommu {}: global error: {errors}", iommu.name);
    }
}

fn log_runs(iommu: &str, faults: &[Fault]) {
    let alike = |a: &Fault, b: &Fault| {
        a.event.stream_id == b.event.stream_id && a.event.kind == b.event.kind && a.event.access == b.event.access
    };
    let mut rest = faults;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|fault| alike(first, fault)).count();
        error!("iommu {iommu}: {first}");
        if run > 1 {
            let last = rest[run - 1].event.input_address.map_or("?".into(), |iova| alloc::format!("{iova:#x}"));
            error!("iommu {iommu}:   ... and {} more like it, the last at IOVA {last}", run - 1);
        }
        rest = &rest[run..];
    }
}

/// Every fault seen since the last call, oldest first.
pub fn take_faults() -> Vec<Fault> {
    poll_events();
    IOMMU.get().map(|iommu| core::mem::take(&mut *iommu.faults.lock())).unwrap_or_default()
}
