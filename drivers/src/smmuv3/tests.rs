//! Host tests of everything that does not need the hardware: ID decoding, command, STE, CD and
//! event formats, queue arithmetic. Field positions are checked the way QEMU's model reads them
//! (`hw/arm/smmuv3-internal.h`): as bit ranges of little-endian 32-bit words.

extern crate std;

use std::format;
use std::vec;
use std::vec::Vec;

use core::ptr::NonNull;

use addr::PhysAddr;

use super::commands::{Command, CommandErrorKind, CommandFailure};
use super::events::Event;
use super::queue::{Queue, Ring};
use super::tables::{ContextDescriptor, EntryTable, StreamTableEntry, root_table_alignment};
use super::*;

/// The ID registers of QEMU 10.0.2's `-M virt,iommu=smmuv3`, as read from a running guest:
/// stages 1 and 2, AArch64 tables, coherent, 16-bit ASIDs and VMIDs, little-endian, no stall,
/// terminate aborts, 2-level table; 16-bit StreamIDs, 2^19-entry queues; HAD, XNX, RIL, BBML2;
/// 4K/16K/64K granules, 44-bit output; SMMUv3.1.
const QEMU: IdRegisters = IdRegisters { idr0: 0x0d44_101b, idr1: 0x0273_0010, idr3: 0x1414, idr5: 0x74, aidr: 0x1 };

/// Bits `[start, start + length)` of `word`, as QEMU's `extract32`.
fn bits(word: u32, start: u32, length: u32) -> u32 {
    (word >> start) & ((1u64 << length) - 1) as u32
}

/// An entry as eight (CD, STE, event) or four (command) little-endian 32-bit words.
fn words<const N: usize>(dwords: &[u64]) -> [u32; N] {
    core::array::from_fn(|index| (dwords[index / 2] >> (32 * (index % 2))) as u32)
}

fn qemu_features() -> Features {
    Features::decode(QEMU)
}

fn context(granule_shift: u32, input_bits: u32) -> Stage1Context {
    Stage1Context {
        asid: 0x1234,
        ttb0: PhysAddr::new(0x4_5678_0000),
        granule_shift,
        input_bits,
        mair: 0x0044_04ff_0011_2233,
    }
}

/// `Smmu::probe` reads the ID registers at their offsets (6.3.1 to 6.3.8): a simulated
/// register block (memory where the two pages would be) reached through the same pointer.
#[test]
fn probe_reads_the_id_registers() {
    let mut pages: Vec<u64> = vec![0; 0x2_0000 / 8];
    let words = pages.as_mut_ptr().cast::<u32>();
    for (offset, value) in
        [(0x00, QEMU.idr0), (0x04, QEMU.idr1), (0x0c, QEMU.idr3), (0x14, QEMU.idr5), (0x1c, QEMU.aidr)]
    {
        // SAFETY: a word inside `pages`, before any pointer to the block exists.
        unsafe { words.add(offset / 4).write(value) };
    }
    // SAFETY: `pages` is as long as both register pages, aligned, and outlives the call.
    let features = unsafe { Smmu::probe(NonNull::new(words.cast()).unwrap()) };
    assert_eq!(features, qemu_features());
}

#[test]
fn qemu_id_registers_decode() {
    let features = qemu_features();
    assert_eq!(
        features,
        Features {
            minor_version: 1,
            stage1: true,
            stage2: true,
            aarch64_tables: true,
            coherent: true,
            hypervisor: false,
            asid_bits: 16,
            two_level_stream_table: true,
            table_endianness: Endianness::Little,
            stall_model: StallModel::TerminateOnly,
            terminate_aborts_only: true,
            stream_id_bits: 16,
            substream_id_bits: 0,
            command_queue_bits: 19,
            event_queue_bits: 19,
            preset_tables: false,
            preset_queues: false,
            range_invalidation: true,
            break_before_make_level: 2,
            output_address_bits: 44,
            granule_4k: true,
            granule_16k: true,
            granule_64k: true,
        }
    );
    assert_eq!(features.check_driver_requirements(), Ok(()));
    assert_eq!(
        format!("{features}"),
        "SMMUv3.1: stages 1 and 2 (AArch64 tables), coherent, 16-bit ASIDs, 44-bit output, granules 4K 16K 64K\n\
         StreamIDs 16 bits (linear or 2-level stream table), SubstreamIDs 0 bits, queues up to 2^19 commands \
         and 2^19 events, range invalidation, BBML2"
    );
}

#[test]
fn other_id_values_decode() {
    let features = Features::decode(IdRegisters {
        // S2P only, AArch32 tables, non-coherent, 8-bit ASIDs, HYP, big-endian, stall forced,
        // linear table only.
        idr0: 1 | 1 << 2 | 1 << 9 | 3 << 21 | 2 << 24,
        // Presets, 2^5 commands, 2^6 events, 20-bit SubstreamIDs, 8-bit StreamIDs.
        idr1: 1 << 30 | 1 << 29 | 5 << 21 | 6 << 16 | 20 << 6 | 8,
        idr3: 0,
        // 64K only, 52-bit output.
        idr5: 1 << 6 | 6,
        aidr: 0x2,
    });
    assert!(!features.stage1 && features.stage2 && !features.aarch64_tables && !features.coherent);
    assert!(
        features.hypervisor && !features.two_level_stream_table && features.preset_tables && features.preset_queues
    );
    assert_eq!(features.asid_bits, 8);
    assert_eq!(features.table_endianness, Endianness::Big);
    assert_eq!(features.stall_model, StallModel::StallForced);
    assert_eq!((features.command_queue_bits, features.event_queue_bits), (5, 6));
    assert_eq!((features.stream_id_bits, features.substream_id_bits), (8, 20));
    assert_eq!(features.output_address_bits, 52);
    assert_eq!(features.usable_output_bits(), 48);
    assert!(!features.supports_granule(12) && !features.supports_granule(14) && features.supports_granule(16));
    assert_eq!(features.minor_version, 2);
}

#[test]
fn reserved_output_size_is_taken_as_the_smallest() {
    let features = Features::decode(IdRegisters { idr5: 7, ..QEMU });
    assert_eq!(features.output_address_bits, 32);
}

#[test]
fn output_size_encoding_follows_oas_up_to_48_bits() {
    let with_oas = |oas: u32| Features::decode(IdRegisters { idr5: 0x70 | oas, ..QEMU }).output_size_encoding();
    assert_eq!(with_oas(4), 4); // QEMU: 44 bits
    assert_eq!(with_oas(0), 0);
    assert_eq!(with_oas(5), 5);
    assert_eq!(with_oas(6), 5); // 52-bit SMMU, 48-bit tables
}

#[test]
fn unusable_smmus_are_refused() {
    let refusal = |registers: IdRegisters| Features::decode(registers).check_driver_requirements();
    // QEMU with `stage=2`: S2P only.
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 & !0b10, ..QEMU }), Err(SmmuError::NotStage1));
    let stage1_only = Features::decode(IdRegisters { idr0: QEMU.idr0 & !1, ..QEMU });
    assert!(format!("{stage1_only}").starts_with("SMMUv3.1: stage 1 (AArch64 tables)"));
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 & !(3 << 2) | 1 << 2, ..QEMU }), Err(SmmuError::NoAArch64Tables));
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 & !(1 << 4), ..QEMU }), Err(SmmuError::NotCoherent));
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 | 3 << 21, ..QEMU }), Err(SmmuError::NotLittleEndian));
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 & !(3 << 24) | 2 << 24, ..QEMU }), Err(SmmuError::StallForced));
    assert_eq!(refusal(IdRegisters { idr1: QEMU.idr1 | 1 << 30, ..QEMU }), Err(SmmuError::PresetStructures));
    // Mixed endianness lets the CD choose, and this driver chooses little.
    assert_eq!(refusal(IdRegisters { idr0: QEMU.idr0 & !(3 << 21), ..QEMU }), Ok(()));
}

#[test]
fn cfgi_ste_encoding() {
    let command: [u32; 4] = words(&Command::CfgiSte { stream_id: 0x1_0008 }.encode());
    assert_eq!(bits(command[0], 0, 8), 0x03);
    assert_eq!(bits(command[0], 10, 1), 0, "SSec must be 0 (QEMU: CERROR_ILL)");
    assert_eq!(command[1], 0x1_0008, "StreamID");
    assert_eq!(bits(command[2], 0, 1), 1, "Leaf");
}

#[test]
fn cfgi_all_is_cfgi_ste_range_31() {
    let command: [u32; 4] = words(&Command::CfgiAll.encode());
    assert_eq!(bits(command[0], 0, 8), 0x04);
    assert_eq!(bits(command[0], 10, 1), 0);
    assert_eq!(bits(command[2], 0, 5), 31, "Range: 2^32 StreamIDs");
}

#[test]
fn cfgi_cd_encoding() {
    let command: [u32; 4] = words(&Command::CfgiCd { stream_id: 0x42 }.encode());
    assert_eq!(bits(command[0], 0, 8), 0x05);
    assert_eq!(bits(command[0], 12, 20), 0, "SubstreamID 0");
    assert_eq!(bits(command[0], 10, 1), 0);
    assert_eq!(command[1], 0x42);
    assert_eq!(bits(command[2], 0, 1), 1, "Leaf");
}

#[test]
fn tlbi_nh_asid_encoding() {
    let command: [u32; 4] = words(&Command::TlbiNhAsid { asid: 0xbeef }.encode());
    assert_eq!(bits(command[0], 0, 8), 0x11);
    assert_eq!(bits(command[1], 16, 16), 0xbeef, "ASID");
    assert_eq!(bits(command[1], 0, 16), 0, "VMID");
}

#[test]
fn tlbi_nh_va_encoding() {
    let address = 0x0000_7fff_1234_5000;
    let command: [u32; 4] = words(&Command::TlbiNhVa { asid: 7, address: address | 0xabc }.encode());
    assert_eq!(bits(command[0], 0, 8), 0x12);
    assert_eq!(bits(command[0], 12, 5), 0, "NUM: no range");
    assert_eq!(bits(command[0], 20, 5), 0, "SCALE: no range");
    assert_eq!(bits(command[1], 16, 16), 7, "ASID");
    assert_eq!(bits(command[1], 0, 16), 0, "VMID");
    assert_eq!(bits(command[2], 0, 1), 1, "Leaf");
    assert_eq!(bits(command[2], 8, 2), 0, "TTL: any level");
    assert_eq!(bits(command[2], 10, 2), 0, "TG: not a range invalidation");
    let decoded = u64::from(command[3]) << 32 | u64::from(bits(command[2], 12, 20)) << 12;
    assert_eq!(decoded, address, "Address[63:12], the page offset dropped");
}

#[test]
fn global_invalidation_and_sync_encodings() {
    let el2: [u32; 4] = words(&Command::TlbiEl2All.encode());
    let nsnh: [u32; 4] = words(&Command::TlbiNsnhAll.encode());
    let sync: [u32; 4] = words(&Command::Sync.encode());
    assert_eq!(el2, [0x20, 0, 0, 0]);
    assert_eq!(nsnh, [0x30, 0, 0, 0]);
    assert_eq!(bits(sync[0], 0, 8), 0x46);
    assert_eq!(bits(sync[0], 12, 2), 0, "CS = SIG_NONE: completion is seen in CMDQ_CONS");
    assert_eq!(sync, [0x46, 0, 0, 0], "no MSI address or data");
}

#[test]
fn abort_ste_is_valid_and_aborts_silently() {
    let entry: [u32; 16] = words(&StreamTableEntry::abort().0);
    assert_eq!(bits(entry[0], 0, 1), 1, "V: an invalid STE would raise C_BAD_STE");
    assert_eq!(bits(entry[0], 1, 3) & 0b100, 0, "Config[2] = 0: abort (QEMU STE_CFG_ABORT)");
    assert!(entry[1..].iter().all(|&word| word == 0));
    assert!(!StreamTableEntry::abort().translates());
}

#[test]
fn stage1_ste_encoding() {
    let descriptor = PhysAddr::new(0x00ab_cdef_1240);
    let entry = StreamTableEntry::stage1(descriptor);
    let ste: [u32; 16] = words(&entry.0);
    assert_eq!(bits(ste[0], 0, 1), 1, "V");
    assert_eq!(bits(ste[0], 1, 3), 0b101, "Config: stage 1 translate, stage 2 bypass");
    assert_eq!(bits(ste[0], 4, 2), 0, "S1Fmt linear");
    let context_pointer = u64::from(bits(ste[1], 0, 16)) << 32 | u64::from(ste[0] & 0xffff_ffc0);
    assert_eq!(context_pointer, descriptor.as_u64(), "S1ContextPtr (QEMU STE_CTXPTR)");
    assert_eq!(bits(ste[1], 27, 5), 0, "S1CDMax = 0 (QEMU: anything else is C_BAD_STE)");
    assert_eq!(bits(ste[2], 0, 2), 0, "S1DSS");
    assert_eq!(bits(ste[2], 2, 2), 1, "S1CIR write-back");
    assert_eq!(bits(ste[2], 4, 2), 1, "S1COR write-back");
    assert_eq!(bits(ste[2], 6, 2), 3, "S1CSH inner shareable");
    assert_eq!(bits(ste[2], 27, 1), 0, "S1STALLD = 0 (QEMU: 1 is C_BAD_STE)");
    assert_eq!(bits(ste[2], 28, 2), 0, "EATS: no ATS");
    assert_eq!(bits(ste[2], 30, 2), 0, "STRW: EL1");
    assert_eq!(bits(ste[3], 12, 2), 1, "SHCFG: incoming");
    assert!(ste[4..].iter().all(|&word| word == 0), "stage 2 fields unused");
    assert!(entry.translates());
}

#[test]
fn stage1_cd_passes_qemu_decode_cd() {
    let features = qemu_features();
    for (shift, granule_field) in [(12, 0), (16, 1), (14, 2)] {
        let context = context(shift, 48);
        assert_eq!(context.check(&features), Ok(()));
        let descriptor = ContextDescriptor::stage1(&context, features.output_size_encoding());
        let cd: [u32; 16] = words(&descriptor.0);
        assert_eq!(bits(cd[0], 31, 1), 1, "V");
        assert_eq!(bits(cd[1], 9, 1), 1, "AA64");
        assert_eq!(bits(cd[1], 14, 1), 1, "A: QEMU's TERM_MODEL = 1 requires it");
        assert_eq!(bits(cd[1], 12, 1), 0, "S: no stall");
        assert_eq!((bits(cd[1], 10, 1), bits(cd[1], 11, 1)), (0, 0), "HD, HA: no hardware updates");
        assert_eq!(bits(cd[1], 13, 1), 1, "R: record faults");
        assert_eq!(bits(cd[1], 15, 1), 1, "ASET: ASIDs not shared with the CPUs");
        assert_eq!(bits(cd[1], 3, 1), 0, "AFFD = 0: a clear access flag faults");
        assert_eq!(bits(cd[1], 0, 3), 4, "IPS: 44 bits");
        assert_eq!(bits(cd[1], 6, 2), 0, "TBI");
        assert_eq!(bits(cd[1], 16, 16), 0x1234, "ASID");
        assert_eq!(bits(cd[0], 0, 6), 16, "T0SZ: 48-bit input");
        assert_eq!(bits(cd[0], 6, 2), granule_field, "TG0 for a {} KiB granule", 1 << (shift - 10));
        assert_eq!(bits(cd[0], 8, 2), 1, "IR0 write-back write-allocate");
        assert_eq!(bits(cd[0], 10, 2), 1, "OR0 write-back write-allocate");
        assert_eq!(bits(cd[0], 12, 2), 3, "SH0 inner shareable");
        assert_eq!(bits(cd[0], 14, 1), 0, "EPD0: TTB0 walks on");
        assert_eq!(bits(cd[0], 15, 1), 0, "ENDI: little-endian (QEMU: 1 is C_BAD_CD)");
        assert_eq!(bits(cd[0], 30, 1), 1, "EPD1: TTB1 unused");
        let ttb0 = u64::from(bits(cd[3], 0, 19)) << 32 | u64::from(cd[2] & !0xf);
        assert_eq!(ttb0, 0x4_5678_0000, "TTB0 (QEMU CD_TTB)");
        assert_eq!(u64::from(cd[7]) << 32 | u64::from(cd[6]), 0x0044_04ff_0011_2233, "MAIR");
        assert_eq!(descriptor.asid(), 0x1234);
    }
}

#[test]
fn input_size_sets_t0sz() {
    for (input_bits, t0sz) in [(25, 39), (39, 25), (48, 16)] {
        let context = Stage1Context { ttb0: PhysAddr::new(0x4000_0000), ..context(12, input_bits) };
        assert_eq!(context.check(&qemu_features()), Ok(()));
        let cd: [u32; 16] = words(&ContextDescriptor::stage1(&context, 4).0);
        assert_eq!(bits(cd[0], 0, 6), t0sz);
    }
}

#[test]
fn contexts_the_smmu_would_refuse_are_errors() {
    let features = qemu_features();
    let without_16k = Features { granule_16k: false, ..features };
    assert_eq!(context(14, 48).check(&without_16k), Err(SmmuError::GranuleNotSupported { shift: 14 }));
    assert_eq!(context(13, 48).check(&features), Err(SmmuError::GranuleNotSupported { shift: 13 }));
    assert_eq!(context(12, 24).check(&features), Err(SmmuError::InputSizeNotSupported { bits: 24 }));
    assert_eq!(context(12, 49).check(&features), Err(SmmuError::InputSizeNotSupported { bits: 49 }));
    let eight_bit_asids = Features { asid_bits: 8, ..features };
    assert_eq!(context(12, 48).check(&eight_bit_asids), Err(SmmuError::AsidTooWide { asid: 0x1234, bits: 8 }));
    let misaligned = Stage1Context { ttb0: PhysAddr::new(0x4000_0800), ..context(12, 48) };
    assert_eq!(
        misaligned.check(&features),
        Err(SmmuError::TableMisaligned { table: PhysAddr::new(0x4000_0800), alignment: 4096 })
    );
    let too_high = Stage1Context { ttb0: PhysAddr::new(1 << 44), ..context(12, 48) };
    assert_eq!(
        too_high.check(&features),
        Err(SmmuError::TableBeyondOutputSize { table: PhysAddr::new(1 << 44), output_bits: 44 })
    );
}

#[test]
fn root_tables_are_aligned_to_their_size_and_64_bytes() {
    assert_eq!(root_table_alignment(12, 48), 4096); // level 0, 512 entries
    assert_eq!(root_table_alignment(12, 39), 4096); // level 1, 512 entries
    assert_eq!(root_table_alignment(12, 40), 64); // level 0, 2 entries
    assert_eq!(root_table_alignment(12, 32), 64); // level 1, 4 entries: 32 bytes, raised to 64
    assert_eq!(root_table_alignment(14, 48), 64); // level 0, 2 entries
    assert_eq!(root_table_alignment(16, 48), 512); // level 1, 64 entries
}

#[test]
fn event_decodes_translation_fault_write() {
    // As QEMU's smmuv3_record_event writes F_TRANSLATION for a write to IOVA 0x1_2345_6000.
    let mut raw = [0u32; 8];
    raw[0] = 0x10;
    raw[1] = 0x0008;
    raw[3] = 0; // RnW = 0: a write
    raw[4] = 0x2345_6000;
    raw[5] = 0x1;
    let event = Event::decode(raw);
    assert_eq!(event.kind, EventKind::TranslationFault);
    assert_eq!(event.stream_id, 8);
    assert_eq!(event.substream_id, None);
    assert_eq!(event.input_address, Some(0x1_2345_6000));
    assert_eq!(event.access, Some(Access { write: true, instruction: false, privileged: false }));
    assert_eq!(event.fetch_address, None);
    assert_eq!(event.raw, raw);
    assert_eq!(
        format!("{event}"),
        "F_TRANSLATION: stream 0x0008 write to IOVA 0x123456000 (no valid entry maps the address)"
    );
}

#[test]
fn event_decodes_permission_fault_read() {
    let mut raw = [0u32; 8];
    raw[0] = 0x13 | 1 << 11 | 5 << 12; // SSV, SubstreamID 5
    raw[1] = 0x0101;
    raw[3] = 1 << 3 | 1 << 1; // RnW = 1 (read), PnU = 1
    raw[4] = 0x1000;
    let event = Event::decode(raw);
    assert_eq!(event.kind, EventKind::PermissionFault);
    assert_eq!(event.substream_id, Some(5));
    assert_eq!(event.access, Some(Access { write: false, instruction: false, privileged: true }));
    assert_eq!(
        format!("{event}"),
        "F_PERMISSION: stream 0x0101 substream 0x5 privileged read to IOVA 0x1000 (the entry does not allow this access)"
    );
}

#[test]
fn event_decodes_configuration_errors() {
    let bad_ste = Event::decode([0x04, 0x0010, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bad_ste.kind, EventKind::BadSte);
    assert_eq!((bad_ste.input_address, bad_ste.access), (None, None));
    assert_eq!(format!("{bad_ste}"), "C_BAD_STE: stream 0x0010 (the stream table entry is invalid or illegal)");
    let bad_stream = Event::decode([0x02, 0x1_0000, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bad_stream.kind, EventKind::BadStreamId);
    assert_eq!(bad_stream.stream_id, 0x1_0000);
    assert_eq!(format!("{bad_stream}"), "C_BAD_STREAMID: stream 0x10000 (the StreamID lies beyond the stream table)");
    assert_eq!(Event::decode([0x0a, 0, 0, 0, 0, 0, 0, 0]).kind, EventKind::BadCd);
}

#[test]
fn event_decodes_fetch_address() {
    // F_STE_FETCH: QEMU puts the address in words 6 and 7 (EVT_SET_ADDR2).
    let event = Event::decode([0x03, 0x0004, 0, 0, 0, 0, 0x8765_4328, 0x12]);
    assert_eq!(event.kind, EventKind::SteFetch);
    assert_eq!(event.fetch_address, Some(PhysAddr::new(0x12_8765_4328)));
    assert_eq!(event.input_address, None);
    assert_eq!(
        format!("{event}"),
        "F_STE_FETCH: stream 0x0004, fetching PA 0x1287654328 (reading the stream table entry from memory failed)"
    );
}

#[test]
fn unknown_event_is_kept_raw() {
    let event = Event::decode([0x25, 3, 0, 0, 0, 0, 0, 0]);
    assert_eq!(event.kind, EventKind::Other(0x25));
    assert_eq!(format!("{event}"), "event 0x25: stream 0x0003 (an event this driver does not decode)");
}

#[test]
fn event_entries_are_read_as_little_endian_words() {
    let event = Event::from_entry([0x0000_0008_0000_0010, 1 << 35, 0xdead_b000, 0]);
    assert_eq!(event.raw[..6], [0x10, 8, 0, 1 << 3, 0xdead_b000, 0]);
    assert_eq!(event.access.map(|access| access.write), Some(false));
}

#[test]
fn ring_empty_full_and_wrap() {
    let ring = Ring::new(2); // 4 entries: position = wrap bit 2, index bits 1..0
    assert_eq!(ring.entries(), 4);
    assert_eq!(ring.position_mask(), 0b111);
    assert!(ring.is_empty(0, 0));
    let mut producer = 0;
    for _ in 0..4 {
        assert!(!ring.is_full(producer, 0));
        producer = ring.next(producer);
    }
    assert_eq!(producer, 0b100, "index back at 0, wrap bit flipped");
    assert!(ring.is_full(producer, 0) && !ring.is_empty(producer, 0));
    assert_eq!(ring.slot(producer), 0);
    let consumer = ring.next(0);
    assert!(!ring.is_full(producer, consumer));
    assert_eq!(ring.next(0b111), 0, "the wrap bit flips back");
    assert!(ring.is_empty(0b101, 0b101) && ring.is_full(0b001, 0b101));
}

#[test]
fn ring_ignores_register_flags_above_the_position() {
    let ring = Ring::new(8);
    let consumer_with_error = 0x0100_0003 | 1 << 24; // CMDQ_CONS.ERR set
    assert!(ring.is_empty(3, consumer_with_error));
    let producer_with_overflow = 1 << 31 | 0x105;
    assert!(ring.is_full(producer_with_overflow, 0x005));
    assert_eq!(ring.slot(producer_with_overflow), 5);
}

#[test]
fn entries_waiting_are_counted_across_the_wrap() {
    let ring = Ring::new(2); // 4 entries, positions 0..8
    assert_eq!(ring.waiting(0b100, 0b001), 3, "three entries, the producer a lap ahead in index");
    assert_eq!(ring.waiting(0b001, 0b111), 2, "across the wrap of the position itself");
    assert_eq!(ring.waiting(0b101, 0b101), 0, "empty");
    assert_eq!(ring.waiting(0b001, 0b101), 4, "full");
    assert_eq!(ring.waiting(0b100, 0b010 | 1 << 24), 2, "CONS.ERR above the position changes nothing");
}

#[test]
fn queue_base_register_and_entries() {
    let ring = Ring::new(3);
    let mut memory = vec![0u64; Queue::bytes(ring, 2) / 8];
    let words = NonNull::new(memory.as_mut_ptr()).unwrap();
    // SAFETY: `memory` outlives the queue and is as large as the ring needs.
    let mut queue = unsafe { Queue::new(words, PhysAddr::new(0x4_0000_1000), ring, 2) };
    let base = queue.base_register();
    assert_eq!(base & 0x1f, 3, "LOG2SIZE");
    assert_eq!(base & 0x000f_ffff_ffff_ffe0, 0x4_0000_1000, "ADDR");
    assert_eq!(base >> 62 & 1, 1, "allocate hint");
    queue.write(0b1001, &[0x46, 0x1234]); // slot 1, second lap
    assert_eq!(queue.read::<2>(1), [0x46, 0x1234]);
    assert_eq!(memory[2..4], [0x46, 0x1234]);
}

#[test]
fn entry_tables_address_and_write_whole_entries() {
    let mut memory: Vec<u64> = vec![0; 4 * 8];
    // SAFETY: `memory` holds 4 entries and outlives the table.
    let table = unsafe { EntryTable::new(NonNull::new(memory.as_mut_ptr()).unwrap(), PhysAddr::new(0x8000), 4) };
    assert_eq!(table.address(3), PhysAddr::new(0x80c0));
    table.write(2, &StreamTableEntry::stage1(PhysAddr::new(0x9000)).0);
    table.write_word(3, 0, 1);
    assert!(StreamTableEntry(table.read(2)).translates());
    assert_eq!(memory[16], 0x9000 | 0b1011);
    assert_eq!(memory[24], 1);
}

#[test]
fn command_failure_names_the_command() {
    let failure = CommandFailure::new(1, Command::TlbiNhVa { asid: 1, address: 0 }.encode());
    assert_eq!(failure, CommandFailure { opcode: 0x12, kind: CommandErrorKind::Illegal });
    assert_eq!(format!("{failure}"), "CERROR_ILL (illegal command or field) on CMD_TLBI_NH_VA (opcode 0x12)");
    assert_eq!(CommandErrorKind::from_code(2), CommandErrorKind::Abort);
    assert_eq!(CommandErrorKind::from_code(0x40), CommandErrorKind::Other(0x40));
    let error = SmmuError::CommandError { opcode: 0x07, kind: CommandErrorKind::Illegal };
    assert_eq!(
        format!("{error}"),
        "the SMMU refused a command: CERROR_ILL (illegal command or field) on an unknown command (opcode 0x07)"
    );
}

#[test]
fn global_errors_are_listed_in_words() {
    let command = Some(CommandFailure { opcode: 0x12, kind: CommandErrorKind::Illegal });
    let errors = GlobalErrors { active: 1 | 1 << 2 | 1 << 20, command };
    assert_eq!(
        format!("{errors}"),
        "CMDQ_ERR (the command queue stopped on a command): CERROR_ILL (illegal command or field) on \
         CMD_TLBI_NH_VA (opcode 0x12); EVENTQ_ABT_ERR (a write to the event queue was aborted, events were lost); \
         unknown GERROR bits 0x100000"
    );
}

#[test]
fn errors_say_what_was_wrong() {
    assert_eq!(
        format!("{}", SmmuError::StreamIdOutOfRange { stream_id: 0x200, streams: 512 }),
        "StreamID 0x200 is beyond the stream table (512 entries)"
    );
    assert_eq!(
        format!("{}", SmmuError::GranuleNotSupported { shift: 14 }),
        "the SMMU does not offer the 16 KiB granule (IDR5)"
    );
    assert_eq!(
        format!("{}", SmmuError::NoMemory { what: Structure::CommandQueue, bytes: 4096 }),
        "no memory for the command queue (4096 bytes)"
    );
}
