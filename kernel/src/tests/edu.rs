//! QEMU's `edu` device and the exercise built on it (`docs/exercise-edu.md`): the device
//! answers, transfers keep every byte at every size and offset, the address the device is
//! given is an IOVA below its 28-bit mask that a live mapping holds, nothing stays mapped
//! afterwards, a transfer that outlives its deadline is reported and then stopped by the SMMU,
//! and without an IOMMU the DMA layer refuses what the device cannot reach.
//!
//! All but the liveness check exercise `Edu::dma_to_device` and `Edu::dma_from_device`: with the
//! skeleton (`--features edu-exercise`) they fail with its "not implemented" message. Tests
//! named `translated_*` need the SMMU, `untranslated_*` a machine without one.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use addr::{PhysRange, VirtAddr};
use dma::DmaApiError;
use drivers::edu::Direction;
use drivers::smmuv3::EventKind;
use spin::Mutex;
use swiotlb::DmaError;

use crate::dma_platform::{Domain, Route};
use crate::edu::{self, DEVICE_BUFFER, DEVICE_BUFFER_SIZE, DMA_MASK, Edu, EduError, Programmed};
use crate::iommu;
use crate::testing::{Verdict, ensure, kernel_test, skip};
use crate::tests::virtio::pattern;

/// The `edu` the kernel started; skipped when the machine has none, failed when it has one
/// that was not started.
fn device() -> Result<&'static Mutex<Edu>, Verdict> {
    if let Some(edu) = edu::devices().first() {
        return Ok(edu);
    }
    let functions =
        crate::pci::bus().map_or(0, |bus| bus.functions.iter().filter(|function| edu::is_edu(&function.info)).count());
    match functions {
        0 => Err(Verdict::Skipped("no edu device on this machine")),
        found => {
            Err(format!("{found} edu function(s) on the bus, none started (the PCIe device table says why)").into())
        }
    }
}

/// The domain `edu` is translated in; skipped without an IOMMU.
fn domain_of(edu: &Edu) -> Result<&'static Domain, Verdict> {
    match &edu.dma_device().route {
        Route::Iommu { domain, .. } => Ok(domain),
        _ => Err(Verdict::Skipped("no IOMMU translates edu on this machine (see edu::untranslated_*)")),
    }
}

/// The physical range of `buffer`, as the DMA layer sees it.
fn physical(edu: &Edu, buffer: &[u8]) -> Result<PhysRange, String> {
    edu.dma_device().physical(VirtAddr::from_ptr(buffer.as_ptr()), buffer.len()).map_err(|error| format!("{error}"))
}

/// What the device was given for the transfer just made, checked against what was asked.
fn programmed(edu: &Edu, direction: Direction, length: usize, offset: usize) -> Result<Programmed, String> {
    let programmed = edu.last_programmed().ok_or(
        "the device was never started: the driver must start it with Edu::start_transfer (which records what it was given)",
    )?;
    let device_side = match direction {
        Direction::RamToDevice => programmed.destination,
        Direction::DeviceToRam => programmed.source,
    };
    let expected = DEVICE_BUFFER + offset as u64;
    ensure!(programmed.direction == direction, "asked {direction}, the device was started {}", programmed.direction);
    ensure!(programmed.count == length as u64, "asked {length} bytes, the count register held {}", programmed.count);
    ensure!(
        device_side == expected,
        "{direction} at offset {offset}: the device side was {device_side:#x}, not {expected:#x} (its buffer starts at {DEVICE_BUFFER:#x})"
    );
    Ok(programmed)
}

/// Runs `transfer` and says what went wrong, in words.
fn expect_ok(what: &str, result: Result<(), EduError>) -> Result<(), String> {
    result.map_err(|error| format!("{what}: {error}"))
}

kernel_test! {
    /// The identification register reads `0xRRrr00ed` and the liveness register reads back
    /// the inverse of every value written: BAR0 is mapped and the device answers. (The
    /// plumbing's part, given with the exercise.)
    fn answers_its_liveness_check() {
        let mut edu = device()?.lock();
        ensure!(edu.identification.is_edu(), "{}: identification {:#010x}", edu.name, edu.identification.value);
        log::info!("{}: {}", edu.name, edu.identification);
        for value in [0, 1, 0x1234_5678, 0xa5a5_5a5a, u32::MAX] {
            let read = edu.liveness(value);
            ensure!(read == !value, "{}: wrote {value:#010x} to the liveness register, read back {read:#010x}, not {:#010x}", edu.name, !value);
        }
        Ok(())
    }
}

kernel_test! {
    /// What the device cannot do is refused before anything is mapped or started: no bytes,
    /// bytes past the end of its 4 KiB buffer, an offset whose end overflows. QEMU's edu would
    /// copy past the end of its own array instead.
    fn refuses_transfers_outside_its_buffer() {
        let mut edu = device()?.lock();
        edu.forget_programmed();
        let live_before = domain_of(&edu).ok().map(|domain| domain.live_mappings());
        let (data, mut out) = (vec![0x5a; 200], vec![0; 16]);
        let cases: [(Direction, usize, usize, Result<(), EduError>); 4] = [
            (Direction::RamToDevice, 4000, 200, edu.dma_to_device(&data, 4000)),
            (Direction::DeviceToRam, DEVICE_BUFFER_SIZE, 1, edu.dma_from_device(&mut out[..1], DEVICE_BUFFER_SIZE)),
            (Direction::DeviceToRam, usize::MAX, 16, edu.dma_from_device(&mut out, usize::MAX)),
            (Direction::RamToDevice, 0, 0, edu.dma_to_device(&[], 0)),
        ];
        for (direction, offset, length, result) in cases {
            let expected = match length {
                0 => EduError::Empty { direction },
                _ => EduError::OutsideDeviceBuffer { direction, offset, length },
            };
            match result {
                Err(error) if error == expected => log::info!("{}: refused: {error}", edu.name),
                Err(error) => return Err(format!("{length} bytes {direction} at offset {offset}: expected '{expected}', got '{error}'").into()),
                Ok(()) => return Err(format!("{length} bytes {direction} at offset {offset} were accepted").into()),
            }
        }
        ensure!(edu.last_programmed().is_none(), "a refused transfer was started: {:?}", edu.last_programmed());
        if let (Some(before), Ok(domain)) = (live_before, domain_of(&edu)) {
            ensure!(domain.live_mappings() == before, "refusals left {} mapping(s) behind", domain.live_mappings().saturating_sub(before));
        }
        Ok(())
    }
}

/// (bytes, offset in the device's buffer, offset of the RAM buffer in its allocation): one
/// byte at both ends of the device's buffer, odd sizes at odd offsets, RAM buffers that cross
/// a page boundary, and the whole buffer.
const CASES: [(usize, usize, usize); 8] = [
    (1, 0, 0),
    (1, DEVICE_BUFFER_SIZE - 1, 1),
    (7, 3, 5),
    (100, 1000, 0xfff),
    (64, 2048, 0x7c0),
    (512, DEVICE_BUFFER_SIZE - 512, 64),
    (DEVICE_BUFFER_SIZE, 0, 0),
    (DEVICE_BUFFER_SIZE, 0, 0xff0),
];

/// RAM around each buffer the device writes, which it must leave alone.
const GUARD: u8 = 0xee;

kernel_test! {
    /// RAM to device to RAM, at every size and offset of [`CASES`]: every byte comes back, the
    /// bytes around the RAM buffer stay as they were, the device's buffer outside each
    /// transfer keeps its earlier contents, and the device side of each transfer was
    /// `0x40000 + offset`.
    fn translated_round_trips_keep_every_byte() {
        let mut edu = device()?.lock();
        domain_of(&edu)?;
        let background = pattern(0xed0, DEVICE_BUFFER_SIZE);
        expect_ok("filling the device's buffer", edu.dma_to_device(&background, 0))?;
        let mut model = background;
        for (index, &(length, offset, ram_offset)) in CASES.iter().enumerate() {
            let data = pattern(0xed1 + index as u64, length);
            let mut source = vec![0u8; ram_offset + length];
            source[ram_offset..].copy_from_slice(&data);
            expect_ok(&format!("{length} bytes to the device at {offset}"), edu.dma_to_device(&source[ram_offset..], offset))?;
            programmed(&edu, Direction::RamToDevice, length, offset)?;
            model[offset..offset + length].copy_from_slice(&data);
            let mut back = vec![GUARD; ram_offset + length + 64];
            let window = ram_offset..ram_offset + length;
            expect_ok(&format!("{length} bytes from the device at {offset}"), edu.dma_from_device(&mut back[window.clone()], offset))?;
            programmed(&edu, Direction::DeviceToRam, length, offset)?;
            if let Some(at) = (0..length).find(|&at| back[ram_offset + at] != data[at]) {
                return Err(format!("{length} bytes at device offset {offset}, RAM offset {ram_offset:#x}: byte {at} came back {:#04x}, not {:#04x}", back[ram_offset + at], data[at]).into());
            }
            let outside = back.iter().enumerate().find(|(at, byte)| !window.contains(at) && **byte != GUARD);
            if let Some((at, byte)) = outside {
                return Err(format!("{length} bytes from the device at RAM offset {ram_offset:#x}: byte {at} of the allocation, outside the buffer, became {byte:#04x}").into());
            }
        }
        let mut whole = vec![0u8; DEVICE_BUFFER_SIZE];
        expect_ok("reading the whole device buffer", edu.dma_from_device(&mut whole, 0))?;
        if let Some(at) = (0..DEVICE_BUFFER_SIZE).find(|&at| whole[at] != model[at]) {
            return Err(format!("the device's buffer holds {:#04x} at {at}, not {:#04x}: a transfer wrote outside its window", whole[at], model[at]).into());
        }
        log::info!("{}: {} transfers each way, every byte intact", edu.name, CASES.len());
        Ok(())
    }
}

kernel_test! {
    /// The address the device was given for RAM is an IOVA of its own domain, below its 28-bit
    /// DMA mask (the domain's limit, from the mask the board declared), held by a live mapping
    /// while the transfer ran, and leading to the caller's buffer, which itself lies above the
    /// mask where the device could never reach it by bus address.
    fn translated_dma_addresses_are_iovas_inside_the_mask() {
        let mut edu = device()?.lock();
        let domain = domain_of(&edu)?;
        let mut buffer = vec![0u8; 4096 + 300];
        buffer[..300].copy_from_slice(&pattern(0xed9, 300));
        for direction in [Direction::RamToDevice, Direction::DeviceToRam] {
            let (length, offset) = (300, 17);
            let range = physical(&edu, &buffer[..length])?;
            let result = match direction {
                Direction::RamToDevice => edu.dma_to_device(&buffer[..length], offset),
                Direction::DeviceToRam => edu.dma_from_device(&mut buffer[..length], offset),
            };
            expect_ok(&format!("{length} bytes {direction}"), result)?;
            let given = programmed(&edu, direction, length, offset)?;
            let iova = given.ram_side;
            let last = iova.as_u64().checked_add(length as u64 - 1).ok_or("IOVA range wraps")?;
            ensure!(last <= DMA_MASK, "{direction}: the device was given [{iova}, {last:#x}], beyond its DMA mask {DMA_MASK:#x}: it would have clamped the address");
            let mapping = given.mapping.ok_or(format!("{direction}: {iova} (+{length}) was no live mapping of domain {} when the transfer started", domain.id))?;
            ensure!(mapping.size > 0 && mapping.iova.as_u64() < DMA_MASK, "{direction}: mapping {mapping:?} outside the mask");
            // In place, the IOVA leads to the buffer itself; bounced (an untrusted device, a
            // shared cache line), to its copy.
            let in_place = edu.dma_device().maps_in_place(range);
            let leads_right = given.reached.is_some_and(|reached| !in_place || reached == range.start());
            ensure!(leads_right, "{direction}: {iova} led to {:?}; the buffer is at {range} (in place: {in_place})", given.reached);
            log::info!(
                "{}: {direction}: buffer at {range}, {} its mask {DMA_MASK:#x}; the device was given IOVA {iova}, in domain {} (mapping {:?}, {} bytes)",
                edu.name,
                if range.start().as_u64() > DMA_MASK { "above" } else { "below" },
                domain.id,
                mapping.iova,
                mapping.size
            );
        }
        Ok(())
    }
}

kernel_test! {
    /// After each transfer the mapping is gone: no lookup finds the IOVA, the domain's tables
    /// no longer translate it, the domain has as many live mappings as before, and the SMMU
    /// saw no fault from the device.
    fn translated_unmap_leaves_no_mapping() {
        let mut edu = device()?.lock();
        let domain = domain_of(&edu)?;
        let name = edu.name;
        iommu::take_faults();
        let before = domain.live_mappings();
        let mut buffer = pattern(0xeda, 1000);
        for (direction, offset) in [(Direction::RamToDevice, 96), (Direction::DeviceToRam, 96), (Direction::RamToDevice, 3000)] {
            let length = buffer.len().min(DEVICE_BUFFER_SIZE - offset);
            let result = match direction {
                Direction::RamToDevice => edu.dma_to_device(&buffer[..length], offset),
                Direction::DeviceToRam => edu.dma_from_device(&mut buffer[..length], offset),
            };
            expect_ok(&format!("{length} bytes {direction} at {offset}"), result)?;
            let given = programmed(&edu, direction, length, offset)?;
            let iova = given.ram_side;
            ensure!(given.mapping.is_some(), "{direction}: {iova} was not mapped while the transfer ran");
            ensure!(domain.lookup(iova, 1).is_none(), "{direction}: {iova} is still mapped after the transfer: {:?}", domain.lookup(iova, 1));
            ensure!(domain.translate(iova).is_none(), "{direction}: {iova} still translates to {:?} after the transfer", domain.translate(iova));
            ensure!(domain.live_mappings() == before, "{direction}: {} mapping(s) left behind", domain.live_mappings().saturating_sub(before));
        }
        let faults: Vec<_> = iommu::take_faults().into_iter().filter(|fault| fault.device == name).collect();
        ensure!(faults.is_empty(), "the SMMU reported {} fault(s) of {name}, first: {}", faults.len(), faults[0]);
        Ok(())
    }
}

kernel_test! {
    /// A transfer that outlives its deadline (1 ms; the device takes 100) is reported as a
    /// timeout, with its mapping ended; the device is then out of service until it has
    /// finished. When it does, it reaches for an IOVA the strict unmap took away: the SMMU
    /// refuses and reports a translation fault, and no byte of RAM is touched.
    fn translated_late_transfer_times_out_and_the_smmu_stops_it() {
        let mut edu = device()?.lock();
        let domain = domain_of(&edu)?;
        let name = edu.name;
        iommu::take_faults();
        let data = pattern(0xedb, 64);
        let timeout = edu.timeout();
        edu.set_timeout(Duration::from_millis(1));
        let result = edu.dma_to_device(&data, 0);
        edu.set_timeout(timeout);
        let expected = EduError::Timeout { direction: Direction::RamToDevice, length: 64, after: Duration::from_millis(1) };
        match result {
            Err(error) if error == expected => log::info!("{name}: {error}"),
            Err(error) => return Err(format!("expected '{expected}', got '{error}'").into()),
            Ok(()) => return Err("a 100 ms transfer finished within 1 ms".into()),
        }
        let given = programmed(&edu, Direction::RamToDevice, 64, 0)?;
        ensure!(domain.lookup(given.ram_side, 1).is_none(), "{}: still mapped after the timeout", given.ram_side);
        ensure!(edu.failure().is_some(), "{name}: still in service after a timeout");
        edu.forget_programmed();
        match edu.dma_to_device(&data, 0) {
            Err(EduError::Failed(reason)) => log::info!("{name}: refused while out of service: {reason}"),
            other => return Err(format!("a transfer while out of service: expected a refusal, got {other:?}").into()),
        }
        ensure!(edu.last_programmed().is_none(), "a transfer was started while the device was out of service");
        edu.recover().map_err(|error| format!("{name}: {error}"))?;
        let faults: Vec<_> = iommu::take_faults().into_iter().filter(|fault| fault.device == name).collect();
        let strict = iommu::policy().is_some_and(|policy| policy.strict);
        let refused = faults.iter().find(|fault| {
            fault.event.kind == EventKind::TranslationFault && fault.event.input_address.is_some_and(|address| address >> 12 == given.ram_side.as_u64() >> 12)
        });
        match (refused, strict) {
            (Some(fault), _) => log::info!("{name}: the late access was refused: {fault}"),
            (None, true) => return Err(format!("no translation fault at {} from {name} after its late transfer; faults: {faults:?}", given.ram_side).into()),
            (None, false) => log::info!("{name}: iommu.strict=0: the late access may have used a stale IOTLB entry"),
        }
        let mut back = vec![0u8; 64];
        expect_ok("a transfer after recovering", edu.dma_to_device(&data, 0).and_then(|()| edu.dma_from_device(&mut back, 0)))?;
        ensure!(back == data, "after recovering, the round trip returned other bytes");
        Ok(())
    }
}

kernel_test! {
    /// Without an IOMMU a DMA address is a bus address, and `virt` has no RAM, and no pool,
    /// below 256 MiB: the DMA layer refuses every buffer, naming the mask, and the device is
    /// never started (it would clamp the address and reach whatever lies there).
    fn untranslated_28_bit_dma_reaches_no_ram() {
        let mut edu = device()?.lock();
        if domain_of(&edu).is_ok() { skip!("an SMMUv3 translates edu on this machine (see edu::translated_*)") }
        edu.forget_programmed();
        let mut buffer = pattern(0xedc, 64);
        let range = physical(&edu, &buffer)?;
        for direction in [Direction::RamToDevice, Direction::DeviceToRam] {
            let result = match direction {
                Direction::RamToDevice => edu.dma_to_device(&buffer, 0),
                Direction::DeviceToRam => edu.dma_from_device(&mut buffer, 0),
            };
            let refused = match &result {
                Err(EduError::Dma(DmaApiError::Pool(DmaError::Unaddressable { dma_mask, .. }))) => *dma_mask == DMA_MASK,
                Err(EduError::Dma(DmaApiError::Unreachable { .. })) => true,
                _ => false,
            };
            match result {
                Err(error) if refused => log::info!("{}: buffer at {range}, {direction}: {error}", edu.name),
                Err(error) => return Err(format!("{direction}: expected the DMA layer to refuse under mask {DMA_MASK:#x}, got '{error}'").into()),
                Ok(()) => return Err(format!("{direction}: a buffer at {range} was handed to a device that reaches below 256 MiB only").into()),
            }
        }
        ensure!(edu.last_programmed().is_none(), "the device was started: {:?}", edu.last_programmed());
        Ok(())
    }
}
