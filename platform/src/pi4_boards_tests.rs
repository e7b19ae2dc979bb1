//! The Raspberry Pi 4 in each memory size it is sold in, as its firmware describes it.
//!
//! The firmware writes `/memory` itself, from the board's RAM and the GPU's share of the first
//! GiB, in the root's cells (`#address-cells = <2>`, `#size-cells = <1>`, so no range can be
//! 4 GiB or more):
//!
//! ```text
//!   1 GiB  <0x0 0x00000000 0x3b400000>                       RAM below the GPU's 76 MiB
//!   2 GiB  ... <0x0 0x40000000 0x40000000>                   the second GiB
//!   4 GiB  ... <0x0 0x40000000 0xbc000000>                   up to the peripherals at 0xfc000000
//!   8 GiB  ... <0x1 0x00000000 0x80000000> <0x1 0x80000000 0x80000000>   4 GiB above 4 GiB
//! ```
//!
//! Where each comes from: the 4 GiB board's two ranges are quoted from a board in
//! raspberrypi/firmware issue #1191 ("Get ARM memory returns 948M on a RPI4 4G board", 2019);
//! the 1, 2 and 8 GiB layouts are those seL4 describes per board
//! (`src/plat/bcm2711/overlay-rpi4-{1,2,8}gb.dts`, seL4 pull request #1045, 2023). The first
//! range ends at 0x3b400000 with the firmware's default GPU memory; a `gpu_mem=` setting moves
//! it, which the tests below cover by deriving everything from what `/memory` says.
//!
//! The firmware also rewrites `dma-ranges` by the SoC's stepping: the `emmc2bus` that holds
//! the SD card controller shows the first GiB at bus 0xc0000000 on a B0 (the devicetree's
//! default), and RAM up to 0xfc000000 one to one on a C0 (`bcm2711.dtsi`'s comment on the
//! `emmc2bus` alias; "[PATCH RFC] ARM: dts: bcm2711: Fix DMA constrains for newer BCM2711
//! boards", 2022-04-13). A board's RAM size does not say which stepping it has, so both are
//! tried on every size.
//!
//! What the kernel must get right on every size: the RAM it finds, a default bounce pool the
//! DMA engine reaches (its `/soc` `dma-ranges` show only the first GiB, at bus 0xc0000000), the
//! linear map of every bank including those above 4 GiB, and the armstub's spin table (the
//! firmware's `/memreserve/` of the first page) left alone.

use alloc::vec::Vec;

use addr::PhysAddr;

use crate::fdt_writer::FdtWriter;
use crate::memmap::MemoryMap;
use crate::tests::{GIB, MIB, begin_pi4_soc, parse, range};

/// A board's `/memory` `reg` cells, and its RAM in total.
struct Board {
    name: &'static str,
    memory: &'static [u32],
    ram: u64,
}

const LOW: [u32; 3] = [0, 0, 0x3b40_0000];
const BOARDS: [Board; 4] = [
    Board { name: "1 GiB", memory: &LOW, ram: 0x3b40_0000 },
    Board { name: "2 GiB", memory: &[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0x4000_0000], ram: 0x3b40_0000 + GIB },
    Board { name: "4 GiB", memory: &[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0xbc00_0000], ram: 0x3b40_0000 + 0xbc00_0000 },
    Board {
        name: "8 GiB",
        memory: &[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0xbc00_0000, 1, 0, 0x8000_0000, 1, 0x8000_0000, 0x8000_0000],
        ram: 0x3b40_0000 + 0xbc00_0000 + 4 * GIB,
    },
];

/// The DMA engine's window: `/soc` `dma-ranges = <0xc0000000 0x0 0x0 0x40000000>`.
const ENGINE_LIMIT: u64 = GIB;
/// The default bounce pool, as the kernel asks for it.
const POOL_SIZE: u64 = 4 * MIB;
const POOL_ALIGNMENT: u64 = 2 * MIB;

/// The two `emmc2bus` `dma-ranges` (bus, CPU, size; two-cell addresses, one-cell sizes).
const EMMC2_B0: [u32; 5] = [0, 0xc000_0000, 0, 0, 0x4000_0000];
const EMMC2_C0: [u32; 5] = [0, 0, 0, 0, 0xfc00_0000];

/// The devicetree the firmware hands over on `board`: its `/memory`, the armstub's page
/// reserved, `/soc` with the legacy DMA engine, and `emmc2bus` with `emmc2`'s `dma-ranges`.
fn board_tree(board: &Board) -> Vec<u8> {
    board_tree_with(board, &EMMC2_B0)
}

fn board_tree_with(board: &Board, emmc2_dma_ranges: &[u32]) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.reserve_memory(0, 0x1000);
    w.begin_node("");
    w.property_string("model", "Raspberry Pi 4 Model B");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.begin_node("memory@0");
    w.property_string("device_type", "memory");
    w.property_cells("reg", board.memory);
    w.end_node();
    begin_pi4_soc(&mut w);
    w.begin_node("dma@7e007000");
    w.property_string("compatible", "brcm,bcm2835-dma");
    w.property_cells("reg", &[0x7e00_7000, 0xb00]);
    w.property_cells("brcm,dma-channel-mask", &[0x7f5]);
    w.end_node();
    w.end_node();
    w.begin_node("emmc2bus");
    w.property_string("compatible", "simple-bus");
    w.property_cells("#address-cells", &[2]);
    w.property_cells("#size-cells", &[1]);
    w.property_cells("ranges", &[0, 0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
    w.property_cells("dma-ranges", emmc2_dma_ranges);
    w.begin_node("mmc@7e340000");
    w.property_string("compatible", "brcm,bcm2711-emmc2");
    w.property_cells("reg", &[0, 0x7e34_0000, 0x100]);
    w.end_node();
    w.end_node();
    w.end_node();
    w.finish()
}

#[test]
fn every_board_size_gives_its_ram_bank_by_bank() {
    for board in &BOARDS {
        let blob = board_tree(board);
        let dt = parse(&blob).unwrap();
        let ram = dt.memory().unwrap();
        let total: u64 = ram.iter().map(|bank| bank.size()).sum();
        assert_eq!(total, board.ram, "{}: {ram:x?}", board.name);
        assert_eq!(ram[0], range(0, 0x3b40_0000), "{}: the first GiB, below the GPU's memory", board.name);
        let above_4_gib = ram.iter().filter(|bank| bank.start().as_u64() >= 4 * GIB).count();
        assert_eq!(above_4_gib > 0, board.ram > 4 * GIB, "{}: RAM above 4 GiB", board.name);
    }
}

#[test]
fn every_board_size_gets_a_default_pool_the_dma_engine_reaches() {
    for board in &BOARDS {
        let blob = board_tree(board);
        let dt = parse(&blob).unwrap();
        let engines = dt.compatible_devices(&["brcm,bcm2835-dma"]).unwrap();
        let limit = engines[0].dma.limit();
        assert_eq!(limit, Some(PhysAddr::new(ENGINE_LIMIT)), "{}: the engine sees the first GiB", board.name);
        let ram = dt.memory().unwrap();
        let mut map = MemoryMap::compute(&ram, &dt.reservations().unwrap()).unwrap();
        let pool = map.carve("swiotlb", POOL_SIZE, POOL_ALIGNMENT, limit, &[]).unwrap();
        assert!(engines[0].dma.reaches(pool), "{}: pool {pool} out of the engine's reach", board.name);
        assert!(pool.start().as_u64() >= 0x1000, "{}: the pool covers the armstub's page", board.name);
        assert!(pool.end().as_u64() <= 0x3b40_0000, "{}: the pool runs into the GPU's memory", board.name);
    }
}

#[test]
fn every_bank_of_every_board_size_is_in_the_linear_map() {
    for board in &BOARDS {
        let blob = board_tree(board);
        let dt = parse(&blob).unwrap();
        let ram = dt.memory().unwrap();
        let map = MemoryMap::compute(&ram, &dt.reservations().unwrap()).unwrap();
        let pieces = map.linear_map(&[]).unwrap();
        let mapped: u64 = pieces.iter().map(|piece| piece.range.size()).sum();
        assert_eq!(mapped, board.ram, "{}: every byte of RAM is mapped", board.name);
        let highest = pieces.iter().map(|piece| piece.range.end().as_u64()).max().unwrap();
        let top = ram.iter().map(|bank| bank.end().as_u64()).max().unwrap();
        assert_eq!(highest, top, "{}: up to the top of RAM", board.name);
    }
}

#[test]
fn the_armstubs_page_stays_reserved_on_every_board_size() {
    for board in &BOARDS {
        let blob = board_tree(board);
        let dt = parse(&blob).unwrap();
        let map = MemoryMap::compute(&dt.memory().unwrap(), &dt.reservations().unwrap()).unwrap();
        let free_below_page = map.free().iter().any(|free| free.start().as_u64() < 0x1000);
        assert!(!free_below_page, "{}: the spin table's page is handed out as free", board.name);
    }
}

#[test]
fn the_sd_controllers_reach_follows_the_steppings_dma_ranges_on_every_board_size() {
    for board in &BOARDS {
        for (stepping, ranges, limit) in [("B0", &EMMC2_B0, GIB), ("C0", &EMMC2_C0, 0xfc00_0000)] {
            let blob = board_tree_with(board, ranges);
            let dt = parse(&blob).unwrap();
            let emmc2 = dt.compatible_devices(&["brcm,bcm2711-emmc2"]).unwrap();
            let dma = &emmc2[0].dma;
            assert_eq!(emmc2[0].regs.as_slice(), &[range(0xfe34_0000, 0x100)], "{} {stepping}", board.name);
            assert_eq!(dma.limit(), Some(PhysAddr::new(limit)), "{} {stepping}", board.name);
            let ram_end = dt.memory().unwrap().iter().map(|bank| bank.end().as_u64()).max().unwrap();
            // Beyond its limit a buffer must bounce: on B0 from the 2 GiB board up, on C0
            // only where RAM lies above 4 GiB.
            let bounces = limit < ram_end;
            let expected = match stepping {
                "B0" => board.ram > 0x3b40_0000,
                _ => board.ram > 4 * GIB,
            };
            assert_eq!(bounces, expected, "{} {stepping}: RAM ends at {ram_end:#x}", board.name);
            let bus = dma.phys_to_dma(PhysAddr::new(0x1000)).map(|bus| bus.as_u64());
            let offset = if stepping == "B0" { 0xc000_0000 } else { 0 };
            assert_eq!(bus, Some(0x1000 + offset), "{} {stepping}", board.name);
        }
    }
}
