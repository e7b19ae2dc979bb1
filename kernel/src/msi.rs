//! Message-signalled interrupts: a PCIe function's MSI-X vector, through the GICv3 ITS, and
//! through the function's IOMMU domain when it has one.
//!
//! An MSI is a DMA write. Setting one up therefore answers the questions any DMA does:
//!
//! ```text
//!   who is writing?        the requester ID ── msi-map ──▶ DeviceID at the ITS
//!   what does it write?    the EventID (the vector's data) ── ITT ──▶ LPI
//!   where does it write?   GITS_TRANSLATER, as the function sees it:
//!                            no IOMMU:  its physical address
//!                            IOMMU:     an IOVA in the domain's reserved MSI window, which
//!                                       the domain maps onto the doorbell's page
//! ```
//!
//! Without that last mapping the SMMU treats the write like any other stray DMA: a translation
//! fault, and no interrupt (`iommu::an_msi_without_the_doorbell_mapping_is_stopped_by_the_smmu`
//! shows it). With it, the device can reach the doorbell and nothing else new; which interrupt
//! it raises is still limited by its DeviceID, which the bus sets, not the device: a device
//! can only name events of its own table.

use alloc::format;
use alloc::string::String;
use core::fmt;

use drivers::msix::MsixEntry;
use spin::Mutex;

use crate::dma_platform::{DmaDevice, Route};
use crate::pci::{PciBus, PciFunction};

/// A function's vectors, set up: `vectors` of them from `vector` on, each raising its own LPI.
#[derive(Debug, Clone, Copy)]
pub struct MessageRoute {
    /// The first MSI-X vector (and the ITS EventID).
    pub vector: u16,
    /// How many vectors, consecutive.
    pub vectors: u16,
    /// The function's DeviceID at the ITS.
    pub device_id: u32,
    /// The LPI the first vector raises; the next vectors raise the next LPIs.
    pub lpi: u32,
    /// Where the function writes: an IOVA when `translated`, else a bus address.
    pub address: u64,
    /// Whether the write goes through an IOMMU domain.
    pub translated: bool,
}

impl fmt::Display for MessageRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let through = if self.translated { "IOVA" } else { "PA" };
        match self.vectors {
            1 => write!(f, "MSI-X {} → LPI {}", self.vector, self.lpi)?,
            vectors => {
                let last = u32::from(vectors) - 1;
                let last_vector = u32::from(self.vector) + last;
                write!(f, "MSI-X {}-{last_vector} → LPI {}-{}", self.vector, self.lpi, self.lpi + last)?
            }
        }
        write!(f, " (DeviceID {:#06x}, doorbell {through} {:#x})", self.device_id, self.address)
    }
}

/// Every vector set up, by the name of its function's DMA device (`pci 00:03.0`).
static ROUTES: Mutex<alloc::vec::Vec<(&'static str, MessageRoute)>> = Mutex::new(alloc::vec::Vec::new());

/// The vector set up for the device named `name`, if any.
pub fn route_of(name: &str) -> Option<MessageRoute> {
    ROUTES.lock().iter().find(|(named, _)| *named == name).map(|(_, route)| *route)
}

/// Gives `function` MSI-X vectors `vector` to `vector + count - 1` (as many as its table holds,
/// at least one), each raising a fresh LPI; the vectors below them are programmed too but stay
/// masked (a driver picks its vectors to keep others, such as NVMe's admin queue on vector 0,
/// silent). `dma` is the function's DMA route, whose domain (if any)
/// gets the doorbell mapping. An error leaves the function on INTx.
pub fn route(
    bus: &PciBus,
    function: &PciFunction,
    dma: &DmaDevice,
    vector: u16,
    count: u16,
) -> Result<MessageRoute, String> {
    let doorbell = crate::its::doorbell().ok_or("no ITS")?;
    let room = crate::pci::msix_vectors(bus, function)?;
    let count = count.min(room.saturating_sub(vector)).max(1);
    let requester = function.address.requester_id();
    let route = bus
        .bridge
        .msi_route(requester)
        .ok_or_else(|| format!("no `msi-map` entry covers requester ID {requester:#06x}"))?;
    if !crate::its::is(route.controller) {
        return Err(format!("its `msi-map` names phandle {:#x}, not the running ITS", route.controller));
    }
    let (address, translated) = match &dma.route {
        Route::Iommu { domain, .. } => {
            let iova = domain.map_msi_doorbell(doorbell).map_err(|error| format!("doorbell mapping: {error}"))?;
            (iova.as_u64(), true)
        }
        _ => (doorbell.as_u64(), false),
    };
    let lpis = crate::its::add_device(route.device_id, u32::from(vector) + u32::from(count))?;
    let lpi = *lpis.get(usize::from(vector)).ok_or("the ITS handed out too few LPIs")?;
    let entries: alloc::vec::Vec<MsixEntry> = (0..vector + count)
        .map(|event| MsixEntry { address, data: u32::from(event), masked: event < vector })
        .collect();
    crate::pci::enable_msix(bus, function, &entries)?;
    let message = MessageRoute { vector, vectors: count, device_id: route.device_id, lpi, address, translated };
    ROUTES.lock().push((dma.name, message));
    Ok(message)
}
