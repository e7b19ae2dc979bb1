//! `cargo xtask lesson`: each fix of the DMA contract, watched working and then removed.
//!
//! - `cargo xtask lesson` lists the lessons.
//! - `cargo xtask lesson NAME` boots the lesson's scenario with `dma.trace` on for the devices
//!   it is about, streams the console, then quotes the trace lines that show the fix at work
//!   and says what to notice in them.
//! - `cargo xtask lesson NAME --break` takes that one fix out (a cargo feature of `swiotlb` or
//!   `dma`, `break-…`, never on by default), runs the host test that guards it, and where a
//!   kernel test guards it too, boots a kernel built without the fix (in `target/variants/`,
//!   apart from the normal image) and runs that test. It shows each failure in words and
//!   exits 0 when every guard caught the break; a break nobody catches is an error.
//! - `--qemu-trace` adds QEMU's own `smmuv3_*` trace events (on stderr) to the boot, to pair
//!   the kernel's trace with what the emulated SMMU did.

use std::process::Command;
use std::time::Duration;

use crate::devicetree::PoolForm;
use crate::prerequisites::ensure_qemu;
use crate::qemu::{self, IommuGranule, Machine, Virt};
use crate::{Result, image};

const TIMEOUT: Duration = Duration::from_secs(240);

/// A host test: `cargo test -p PACKAGE --test FILE NAME`.
struct HostTest {
    package: &'static str,
    file: &'static str,
    name: &'static str,
}

/// One lesson: a fix, the run that shows it, and the tests that guard it.
struct Lesson {
    name: &'static str,
    /// The chapter that explains it, in `docs/`.
    chapter: &'static str,
    /// What the fix does, in a line.
    summary: &'static str,
    /// The scenario: the IOMMU granule (none: no SMMU), and the boot options after the trace.
    granule: Option<IommuGranule>,
    bootargs: &'static str,
    /// Which devices to trace (`dma.trace=`), and which console lines to quote afterwards.
    trace: &'static str,
    quote: fn(&str) -> bool,
    notice: &'static str,
    /// The feature that removes the fix, `crate/break-…`.
    feature: &'static str,
    host_test: HostTest,
    /// The kernel test that catches the break too, on the scenario's machine.
    kernel_test: Option<&'static str>,
}

fn traced(line: &str) -> bool {
    line.contains("dma.trace:")
}

const LESSONS: &[Lesson] = &[
    Lesson {
        name: "zero-padding",
        chapter: "untrusted devices and zeroed padding",
        summary: "an untrusted device's bounce region holds only zeros around its buffer (rule 10)",
        granule: Some(IommuGranule::Size64K),
        bootargs: "",
        trace: "untrusted",
        quote: |line| traced(line) && line.contains("keeps offset 0x7c8"),
        notice: "Each buffer of an untrusted device (00:03.0, 00:05.0) that does not fill whole 64 KiB granules is \
                 bounced into a region of whole granules (`alloc_align_mask 0xffff`); the IOMMU maps exactly that \
                 region, so the device can read every byte of it. The pool zeroes everything in the region but the \
                 buffer before the device is told the address.",
        feature: "swiotlb/break-zero-padding",
        host_test: HostTest { package: "swiotlb", file: "regressions", name: "r9_untrusted_padding_reads_as_zero" },
        kernel_test: Some("iommu::untrusted_buffer_is_alone_in_its_granule"),
    },
    Lesson {
        name: "alloc-align",
        chapter: "alloc_align_mask and IOMMU granules",
        summary: "a bounce region for an IOMMU starts on a granule and is whole granules (rule 2)",
        granule: Some(IommuGranule::Size16K),
        bootargs: "",
        trace: "untrusted",
        quote: |line| traced(line) && line.contains("alloc_align_mask 0x3fff"),
        notice: "With a 16 KiB granule the untrusted devices' regions are 16 KiB aligned and a multiple of 16 KiB \
                 (`alloc_align_mask 0x3fff`, the `slots ..` range and the IOVA size agree): the granules the IOMMU \
                 maps hold nothing but the buffer and zeros. A granule larger than the CPU page is one Linux \
                 refuses; here it works because the pool aligns on the DMA address.",
        feature: "swiotlb/break-alloc-align",
        host_test: HostTest {
            package: "swiotlb",
            file: "regressions",
            name: "r12_untrusted_buffer_gets_its_own_16k_granule",
        },
        kernel_test: Some("iommu::untrusted_buffer_is_alone_in_its_granule"),
    },
    Lesson {
        name: "min-align",
        chapter: "min_align_mask and NVMe PRPs",
        summary: "a bounced buffer keeps the offset bits its device reads meaning into (rule 1)",
        granule: Some(IommuGranule::Size4K),
        bootargs: "",
        trace: "00:05.0",
        quote: |line| traced(line) && line.contains("keeps offset 0x7c8"),
        notice: "The untrusted NVMe controller's buffers start 0x7c8 into their page; every bounce copy starts \
                 0x7c8 into its page too (`min_align_mask 0xfff keeps offset 0x7c8`), and so does the IOVA the \
                 controller gets. Removing the fix does not corrupt data in this driver, and the lesson says why: \
                 it maps one contiguous buffer per command and builds the PRPs from the device address, so any \
                 dword-aligned offset works. What breaks is the contract the PRP check and the host test hold: \
                 a driver that builds PRPs from the CPU's page offsets (Linux's, for a scatter list) would send \
                 the data to the wrong place in each page.",
        feature: "swiotlb/break-min-align",
        host_test: HostTest { package: "swiotlb", file: "regressions", name: "r6_nvme_offsets_round_trip" },
        kernel_test: Some("nvme::prp_entries_keep_the_page_offset"),
    },
    Lesson {
        name: "pre-padding",
        chapter: "min_align_mask and NVMe PRPs",
        summary: "an offset larger than a slot is kept with whole pre-padding slots (R3, 0xfa0)",
        granule: Some(IommuGranule::Size4K),
        bootargs: "kernel.test test.only=nvme::prp_entries_keep_the_page_offset",
        trace: "00:05.0",
        quote: |line| traced(line) && line.contains("0xfa0"),
        notice: "A buffer 0xfa0 into its page is more than a 2 KiB slot in: the region starts a slot earlier \
                 (`pre-padding 0xfa0`), so that the copy, and the IOVA, end in 0xfa0 as the PRP entries need. \
                 Keeping only the offset within a slot (0x7a0) was the Linux bug.",
        feature: "swiotlb/break-pre-padding",
        host_test: HostTest {
            package: "swiotlb",
            file: "regressions",
            name: "r3_offset_larger_than_a_slot_is_preserved_and_released",
        },
        kernel_test: Some("nvme::prp_entries_keep_the_page_offset"),
    },
    Lesson {
        name: "page-alignment",
        chapter: "the bounce pool",
        summary: "a page or more with no mask is bounced page-aligned, as drivers long relied on (R5)",
        granule: None,
        bootargs: "",
        trace: "restricted",
        quote: |line| traced(line) && line.contains("map 4096 B"),
        notice: "Every page-sized buffer copied through the restricted pool gets a region that starts on a page \
                 (`slots` start at even indices: two 2 KiB slots a page), although the device states no mask.",
        feature: "swiotlb/break-page-alignment",
        host_test: HostTest {
            package: "swiotlb",
            file: "regressions",
            name: "r5_page_or_more_without_masks_is_page_aligned",
        },
        kernel_test: None,
    },
    Lesson {
        name: "exact-release",
        chapter: "the bounce pool",
        summary: "unmap gives back exactly the slots map took, pre-padding included (R3, R6)",
        granule: Some(IommuGranule::Size4K),
        bootargs: "",
        trace: "00:05.0",
        quote: |line| line.contains("slots ") && line.contains("in use"),
        notice: "After the demo every pool reports 0 slots in use but the virtqueues' own: each unmap released the \
                 whole region its map reserved, pre-padding slots and alignment slack included. Releasing from the \
                 buffer's own slot instead leaks the slots in front of it, and the pool runs dry.",
        feature: "swiotlb/break-exact-release",
        host_test: HostTest {
            package: "swiotlb",
            file: "regressions",
            name: "r3_offset_larger_than_a_slot_is_preserved_and_released",
        },
        kernel_test: None,
    },
    Lesson {
        name: "strict-invalidation",
        chapter: "SMMUv3",
        summary: "unmap invalidates the IOMMU's cached translations and waits before returning (rule 14)",
        granule: Some(IommuGranule::Size4K),
        bootargs: "kernel.test test.only=iommu::use_after_unmap_is_refused_by_the_smmu",
        trace: "00:02.0",
        quote: |line| traced(line) || line.contains("F_TRANSLATION") || line.contains("fault injection"),
        notice: "The trusted disk reads once, so the SMMU caches the IOVA's translation; the test then unmaps that \
                 IOVA (`invalidated and waited for (strict)`) before the disk uses it again. The SMMU refuses the \
                 write with F_TRANSLATION at exactly that IOVA, and the buffer keeps its bytes.",
        feature: "dma/break-strict-invalidation",
        host_test: HostTest {
            package: "dma",
            file: "iommu",
            name: "after_a_strict_unmap_the_device_faults_even_where_its_tlb_had_the_page",
        },
        kernel_test: Some("iommu::use_after_unmap_is_refused_by_the_smmu"),
    },
    Lesson {
        name: "cache-line",
        chapter: "caches and coherence",
        summary: "a buffer sharing a cache line with other data is bounced for a device that does not snoop (R13)",
        granule: None,
        bootargs: "",
        trace: "",
        quote: |_| false,
        notice: "QEMU does not model caches, so this lesson runs on the host's cache model (`dma::sim`): the \
                 buffer that shares its first and last cache lines is bounced through the uncached pool, and \
                 both the device's data and the neighbours' bytes survive evictions.",
        feature: "dma/break-cache-line",
        host_test: HostTest {
            package: "dma",
            file: "regressions",
            name: "r13_a_buffer_sharing_a_cache_line_is_bounced_and_both_sides_survive",
        },
        kernel_test: None,
    },
];

/// Lists the lessons, or runs one.
pub fn run(name: Option<&str>, broken: bool, qemu_trace: bool) -> Result<()> {
    let Some(name) = name else {
        println!("Lessons (cargo xtask lesson NAME, then cargo xtask lesson NAME --break):");
        for lesson in LESSONS {
            println!("  {:<20} {} [chapter: {}]", lesson.name, lesson.summary, lesson.chapter);
        }
        return Ok(());
    };
    let known = || LESSONS.iter().map(|lesson| lesson.name).collect::<Vec<_>>().join(", ");
    let lesson = LESSONS
        .iter()
        .find(|lesson| lesson.name == name)
        .ok_or_else(|| format!("no lesson is named `{name}` (lessons: {})", known()))?;
    match broken {
        false => show(lesson, qemu_trace),
        true => break_it(lesson, qemu_trace),
    }
}

fn machine(lesson: &Lesson, qemu_trace: bool) -> Machine {
    let machine = Machine::virt(Virt::standard(false, PoolForm::Static, lesson.granule), "cortex-a72");
    let trace = ["-trace".to_string(), "smmuv3_*".to_string()];
    machine.with_extra_arguments(if qemu_trace { trace.to_vec() } else { Vec::new() })
}

/// The fix at work: the scenario's boot with the trace on, then what to notice.
fn show(lesson: &Lesson, qemu_trace: bool) -> Result<()> {
    if lesson.granule.is_none() && lesson.trace.is_empty() {
        let passed = host_test(lesson, false)?;
        println!("\nlesson {}: {}\n\n{}", lesson.name, lesson.summary, lesson.notice);
        return passed.then_some(()).ok_or_else(|| format!("{}: the host test failed with the fix in", lesson.name));
    }
    ensure_qemu()?;
    let kernel = image::build()?;
    let machine = machine(lesson, qemu_trace);
    let bootargs = format!("{} dma.trace={}", lesson.bootargs, lesson.trace);
    let run = qemu::run_captured(&machine, &kernel, bootargs.trim(), TIMEOUT)?;
    if run.exit_code != Some(0) {
        return Err(format!("{}: the kernel stopped with status {:?}", lesson.name, run.exit_code));
    }
    println!("\nlesson {}: {}\n", lesson.name, lesson.summary);
    let quoted: Vec<&str> = run.console.lines().filter(|line| (lesson.quote)(line)).take(6).collect();
    for line in &quoted {
        println!("  {line}");
    }
    println!(
        "\nWhat to notice: {}\nThe chapter: {}. Then: cargo xtask lesson {} --break",
        lesson.notice, lesson.chapter, lesson.name
    );
    if qemu_trace {
        println!(
            "QEMU's own trace is on stderr above: each `smmuv3_range_inval ... addr=IOVA` is one of the kernel's \
             CMD_TLBI_NH_VA reaching the SMMU (pair it with the unmap record of that IOVA), each \
             `smmuv3_translate_success` a device access translated, each `smmuv3_record_event` a fault recorded."
        );
    }
    Ok(())
}

/// The fix removed: every guard runs, and each must fail.
fn break_it(lesson: &Lesson, qemu_trace: bool) -> Result<()> {
    println!("xtask: lesson {}: removing the fix ({})", lesson.name, lesson.feature);
    let mut caught = vec![];
    if !host_test(lesson, true)? {
        caught.push(format!("host test {}", lesson.host_test.name));
    } else {
        return Err(format!(
            "{}: host test {} passed without the fix: the break was not caught",
            lesson.name, lesson.host_test.name
        ));
    }
    if let Some(test) = lesson.kernel_test {
        ensure_qemu()?;
        let kernel = image::build_variant(lesson.name, &[lesson.feature])?;
        let bootargs = format!("kernel.test test.only={test} dma.trace={}", lesson.trace);
        let run = qemu::run_captured(&machine(lesson, qemu_trace), &kernel, &bootargs, TIMEOUT)?;
        let failure = failure_lines(&run.console);
        let passed = run.console.contains(&format!("test {test} ... ok")) && run.console.contains("kernel: 1 passed");
        match failure.is_empty() {
            true if passed => {
                return Err(format!(
                    "{}: kernel test {test} passed without the fix: the break was not caught",
                    lesson.name
                ));
            }
            // A crash, a skip or a test that no longer exists is not a catch either.
            true => {
                return Err(format!(
                    "{}: kernel test {test} reached no verdict (QEMU exit status {:?}); see the console above",
                    lesson.name, run.exit_code
                ));
            }
            false => {
                println!("\nThe kernel test {test}, without the fix:");
                failure.iter().for_each(|line| println!("  {line}"));
                caught.push(format!("kernel test {test}"));
            }
        }
    }
    println!("\nlesson {}: without the fix, caught by {}.", lesson.name, caught.join(" and "));
    Ok(())
}

/// Runs the lesson's host test, with the fix removed if `broken`; prints what it said when
/// it failed. Returns whether it passed.
fn host_test(lesson: &Lesson, broken: bool) -> Result<bool> {
    let HostTest { package, file, name } = lesson.host_test;
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(image::workspace_root()).args(["test", "--release", "-p", package, "--test", file]);
    if broken {
        let feature = lesson.feature.split_once('/').map_or(lesson.feature, |(_, feature)| feature);
        command.args(["--features", feature]);
    }
    command.args([name, "--", "--exact", "--nocapture"]);
    println!("xtask: cargo {}", qemu::arguments_line(&command));
    let output = command.output().map_err(|error| format!("cannot run cargo test: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        println!("  host test {name} ... ok");
        return Ok(true);
    }
    println!("\nThe host test {name}, without the fix:");
    let said = stderr.lines().chain(stdout.lines()).skip_while(|line| !line.contains("panicked at"));
    let said = said.take_while(|line| !line.contains("stack backtrace") && !line.starts_with("note:")).take(4);
    said.for_each(|line| println!("  {line}"));
    Ok(false)
}

/// A failed kernel test's verdict and message, or nothing if none failed.
fn failure_lines(console: &str) -> Vec<&str> {
    let lines: Vec<&str> = console.lines().collect();
    let failed = lines.iter().position(|line| line.contains(" ... FAILED"));
    failed.map_or_else(Vec::new, |at| lines[at..lines.len().min(at + 3)].to_vec())
}
