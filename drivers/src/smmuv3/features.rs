//! What an SMMU implementation offers, decoded from its ID registers (IHI 0070, 6.3.1 to
//! 6.3.8), and the subset this driver needs.
//!
//! The architecture leaves much optional: stage 1 or stage 2 or both, table formats, the
//! granules, how wide StreamIDs, ASIDs and output addresses are, whether the SMMU snoops the
//! CPU caches. A driver reads the ID registers before it touches anything else and refuses
//! hardware it cannot drive correctly, rather than programming fields the SMMU would treat as
//! ILLEGAL.

use core::fmt;

use tock_registers::LocalRegisterCopy;

use super::SmmuError;
use super::registers::{AIDR, IDR0, IDR1, IDR3, IDR5};

/// The raw ID register values [`Features::decode`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRegisters {
    /// SMMU_IDR0 (6.3.1).
    pub idr0: u32,
    /// SMMU_IDR1 (6.3.2).
    pub idr1: u32,
    /// SMMU_IDR3 (6.3.4).
    pub idr3: u32,
    /// SMMU_IDR5 (6.3.6).
    pub idr5: u32,
    /// SMMU_AIDR (6.3.8).
    pub aidr: u32,
}

/// How translation tables and structures are laid out in memory (IDR0.TTENDIAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endianness {
    /// Chosen per context: CD.ENDI and STE.S2ENDI.
    Mixed,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
    /// The reserved encoding 0b01.
    Reserved,
}

/// What happens to a transaction that faults (IDR0.STALL_MODEL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallModel {
    /// Software chooses per context: stall until resumed, or terminate.
    StallOrTerminate,
    /// Faulting transactions are always terminated.
    TerminateOnly,
    /// Faulting transactions always stall until software resumes or terminates them.
    StallForced,
    /// The reserved encoding 0b11.
    Reserved,
}

/// The features of one SMMU, decoded from IDR0, IDR1, IDR3, IDR5 and AIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// The x of SMMUv3.x (AIDR.ArchMinorRev).
    pub minor_version: u8,
    /// Stage 1 translation, the one this driver uses (IDR0.S1P).
    pub stage1: bool,
    /// Stage 2 translation, a hypervisor's (IDR0.S2P).
    pub stage2: bool,
    /// VMSAv8-64 (AArch64) translation tables (IDR0.TTF).
    pub aarch64_tables: bool,
    /// The SMMU's accesses to tables, queues and data snoop the CPU caches (IDR0.COHACC).
    pub coherent: bool,
    /// The EL2 stream world and its TLB commands (IDR0.HYP).
    pub hypervisor: bool,
    /// 8 or 16 (IDR0.ASID16).
    pub asid_bits: u32,
    /// 2-level stream tables as well as linear ones (IDR0.ST_LEVEL).
    pub two_level_stream_table: bool,
    /// How tables and structures are laid out in memory (IDR0.TTENDIAN).
    pub table_endianness: Endianness,
    /// Whether faults may or must stall (IDR0.STALL_MODEL).
    pub stall_model: StallModel,
    /// A terminated transaction is always aborted, never read-as-zero (IDR0.TERM_MODEL).
    pub terminate_aborts_only: bool,
    /// StreamID width: the stream table needs at most `2^stream_id_bits` entries (IDR1.SIDSIZE).
    pub stream_id_bits: u32,
    /// SubstreamID (PASID) width; 0 without substreams (IDR1.SSIDSIZE).
    pub substream_id_bits: u32,
    /// log2 of the largest command queue (IDR1.CMDQS).
    pub command_queue_bits: u32,
    /// log2 of the largest event queue (IDR1.EVENTQS).
    pub event_queue_bits: u32,
    /// The stream table base is fixed by the implementation (IDR1.TABLES_PRESET).
    pub preset_tables: bool,
    /// The queue bases are fixed by the implementation (IDR1.QUEUES_PRESET).
    pub preset_queues: bool,
    /// Range invalidation (IDR3.RIL).
    pub range_invalidation: bool,
    /// Break-before-make level (IDR3.BBML): 0, 1 or 2.
    pub break_before_make_level: u8,
    /// Physical address width the SMMU can output (IDR5.OAS).
    pub output_address_bits: u32,
    /// The 4 KiB translation granule (IDR5.GRAN4K).
    pub granule_4k: bool,
    /// The 16 KiB translation granule (IDR5.GRAN16K).
    pub granule_16k: bool,
    /// The 64 KiB translation granule (IDR5.GRAN64K).
    pub granule_64k: bool,
}

/// Output address sizes by `OAS`/`IPS` encoding (IDR5.OAS, and CD.IPS in 5.4).
const ADDRESS_SIZES: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

/// The widest output this driver programs: 52-bit addresses need FEAT_LPA table formats.
const MAX_OUTPUT_BITS: u32 = 48;

impl Features {
    /// Decodes the ID register values into what the driver needs to know.
    pub fn decode(registers: IdRegisters) -> Self {
        let idr0 = LocalRegisterCopy::<u32, IDR0::Register>::new(registers.idr0);
        let idr1 = LocalRegisterCopy::<u32, IDR1::Register>::new(registers.idr1);
        let idr3 = LocalRegisterCopy::<u32, IDR3::Register>::new(registers.idr3);
        let idr5 = LocalRegisterCopy::<u32, IDR5::Register>::new(registers.idr5);
        let aidr = LocalRegisterCopy::<u32, AIDR::Register>::new(registers.aidr);
        Self {
            minor_version: aidr.read(AIDR::ARCH_MINOR_REV) as u8,
            stage1: idr0.is_set(IDR0::S1P),
            stage2: idr0.is_set(IDR0::S2P),
            aarch64_tables: matches!(
                idr0.read_as_enum(IDR0::TTF),
                Some(IDR0::TTF::Value::AArch64 | IDR0::TTF::Value::Both)
            ),
            coherent: idr0.is_set(IDR0::COHACC),
            hypervisor: idr0.is_set(IDR0::HYP),
            asid_bits: if idr0.is_set(IDR0::ASID16) { 16 } else { 8 },
            two_level_stream_table: idr0.matches_all(IDR0::ST_LEVEL::TwoLevel),
            table_endianness: match idr0.read_as_enum(IDR0::TTENDIAN) {
                Some(IDR0::TTENDIAN::Value::Mixed) => Endianness::Mixed,
                Some(IDR0::TTENDIAN::Value::Little) => Endianness::Little,
                Some(IDR0::TTENDIAN::Value::Big) => Endianness::Big,
                None => Endianness::Reserved,
            },
            stall_model: match idr0.read_as_enum(IDR0::STALL_MODEL) {
                Some(IDR0::STALL_MODEL::Value::StallOrTerminate) => StallModel::StallOrTerminate,
                Some(IDR0::STALL_MODEL::Value::TerminateOnly) => StallModel::TerminateOnly,
                Some(IDR0::STALL_MODEL::Value::StallForced) => StallModel::StallForced,
                None => StallModel::Reserved,
            },
            terminate_aborts_only: idr0.is_set(IDR0::TERM_MODEL),
            stream_id_bits: idr1.read(IDR1::SIDSIZE),
            substream_id_bits: idr1.read(IDR1::SSIDSIZE),
            command_queue_bits: idr1.read(IDR1::CMDQS),
            event_queue_bits: idr1.read(IDR1::EVENTQS),
            preset_tables: idr1.is_set(IDR1::TABLES_PRESET),
            preset_queues: idr1.is_set(IDR1::QUEUES_PRESET),
            range_invalidation: idr3.is_set(IDR3::RIL),
            break_before_make_level: idr3.read(IDR3::BBML) as u8,
            // The reserved encoding 0b111 is taken as the narrowest size: nothing is assumed.
            output_address_bits: ADDRESS_SIZES.get(idr5.read(IDR5::OAS) as usize).copied().unwrap_or(32),
            granule_4k: idr5.is_set(IDR5::GRAN4K),
            granule_16k: idr5.is_set(IDR5::GRAN16K),
            granule_64k: idr5.is_set(IDR5::GRAN64K),
        }
    }

    /// Whether the translation granule `1 << shift` (12, 14 or 16) is offered.
    pub fn supports_granule(&self, shift: u32) -> bool {
        match shift {
            12 => self.granule_4k,
            14 => self.granule_16k,
            16 => self.granule_64k,
            _ => false,
        }
    }

    /// Output address width this driver programs: the SMMU's, at most 48 bits.
    pub fn usable_output_bits(&self) -> u32 {
        self.output_address_bits.min(MAX_OUTPUT_BITS)
    }

    /// [`Self::usable_output_bits`] as a CD.IPS encoding.
    pub(super) fn output_size_encoding(&self) -> u64 {
        let bits = self.usable_output_bits();
        ADDRESS_SIZES.iter().rposition(|&size| size <= bits).unwrap_or(0) as u64
    }

    /// Refuses an SMMU this driver cannot drive correctly.
    pub(super) fn check_driver_requirements(&self) -> Result<(), SmmuError> {
        if !self.stage1 {
            return Err(SmmuError::NotStage1);
        }
        if !self.aarch64_tables {
            return Err(SmmuError::NoAArch64Tables);
        }
        if !matches!(self.table_endianness, Endianness::Little | Endianness::Mixed) {
            return Err(SmmuError::NotLittleEndian);
        }
        if !self.coherent {
            return Err(SmmuError::NotCoherent);
        }
        if self.stall_model == StallModel::StallForced {
            return Err(SmmuError::StallForced);
        }
        if self.preset_tables || self.preset_queues {
            return Err(SmmuError::PresetStructures);
        }
        Ok(())
    }
}

impl fmt::Display for Features {
    /// Two lines: what translation looks like, then tables, queues and extras.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages = match (self.stage1, self.stage2) {
            (true, true) => "stages 1 and 2",
            (true, false) => "stage 1",
            (false, true) => "stage 2 only",
            (false, false) => "no translation stage",
        };
        let tables = if self.aarch64_tables { "AArch64 tables" } else { "no AArch64 tables" };
        let coherence = if self.coherent { "coherent" } else { "not coherent" };
        write!(f, "SMMUv3.{}: {stages} ({tables}), {coherence}, ", self.minor_version)?;
        write!(f, "{}-bit ASIDs, {}-bit output, granules", self.asid_bits, self.output_address_bits)?;
        for (offered, name) in [(self.granule_4k, "4K"), (self.granule_16k, "16K"), (self.granule_64k, "64K")] {
            if offered {
                write!(f, " {name}")?;
            }
        }
        let levels = if self.two_level_stream_table { "linear or 2-level" } else { "linear" };
        write!(
            f,
            "\nStreamIDs {} bits ({levels} stream table), SubstreamIDs {} bits, ",
            self.stream_id_bits, self.substream_id_bits
        )?;
        write!(f, "queues up to 2^{} commands and 2^{} events", self.command_queue_bits, self.event_queue_bits)?;
        if self.range_invalidation {
            write!(f, ", range invalidation")?;
        }
        if self.hypervisor {
            write!(f, ", EL2 streams")?;
        }
        write!(f, ", BBML{}", self.break_before_make_level)
    }
}
