//! Finding a console in a devicetree that cannot be trusted.
//!
//! The console is how the kernel says anything at all, and the devicetree is how it finds the
//! console: `/chosen/stdout-path` names a UART node, whose `reg` gives its registers. When the
//! blob fails validation, or `stdout-path` leads nowhere, the kernel would stop without a word
//! about why. So this module reads the blob the way a person reads a damaged one, taking what
//! makes sense and stepping over the rest:
//!
//! - **Header.** The magic must match (otherwise these are not devicetree bytes at all), but a
//!   `totalsize` or block size that runs past the bytes at hand is cut to them: a blob
//!   truncated inside its strings block still has the names before the cut.
//! - **Tokens.** The structure block is read token by token; the walk ends at `FDT_END`, at the
//!   first token that makes no sense, or at the end of the bytes, and keeps what it found
//!   before. A property whose name cannot be read is skipped. Each token advances the walk by
//!   at least four bytes and nothing recurses, so it ends within `length / 4` steps.
//! - **Choice.** The node `stdout-path` names wins if it is an enabled UART the caller has a
//!   driver for; otherwise the first such UART in document order.
//! - **Cells.** `reg` is split by the parent's `#address-cells` and `#size-cells`. If those
//!   cannot split it (a root with `#size-cells = <1>` above a `reg` of two-cell sizes), the
//!   root's own counts are tried, then 2 + 2, 2 + 1 and 1 + 1 cells, and the guess is
//!   reported:
//!
//! ```text
//!   / { #address-cells = <2>; #size-cells = <1>;           reg = <0x0 0x9000000 0x0 0x1000>
//!       pl011@9000000 { reg = <0x0 0x9000000 0x0 0x1000>; }   2 + 1 cells: 4 is not a multiple of 3
//!   };                                                        2 + 2 cells: 0x9000000, size 0x1000
//! ```
//!
//! - **Translation.** The address goes up through each bus's `ranges` as in
//!   [`super::translate`]; a bus whose `ranges` is missing or does not translate it leaves it
//!   as it is, and that guess is reported too.

use addr::{PhysAddr, PhysRange};
use arrayvec::ArrayVec;
use core::fmt;

use super::{
    HEADER_SIZE, MAGIC, MAX_DEPTH, TOKEN_BEGIN_NODE, TOKEN_END_NODE, TOKEN_NOP, TOKEN_PROP, property_name, read_cells,
};

/// At most one guess about cell counts, and one per bus above the console.
pub const MAX_GUESSES: usize = MAX_DEPTH + 1;

/// A UART found by the lenient walk, with what had to be guessed to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescuedConsole<'b> {
    /// The node name with its unit address (`pl011@9000000`).
    pub name: &'b str,
    /// The node's first `compatible` string that is one of the drivers asked for.
    pub compatible: &'b str,
    /// The first `reg` entry, translated to a CPU physical range as far as the buses allow.
    pub registers: PhysRange,
    /// How the console was found: `stdout-path`, an alias, or a search by `compatible`.
    pub found_by: FoundBy,
    /// Every reading that departs from what the devicetree says, for the log.
    pub guesses: ArrayVec<Guess<'b>, MAX_GUESSES>,
}

/// Why this UART and not another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// `/chosen/stdout-path` names it, directly or through `/aliases`.
    StdoutPath,
    /// The first enabled UART in document order that the caller has a driver for.
    FirstWithDriver,
}

impl fmt::Display for FoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoundBy::StdoutPath => "named by /chosen/stdout-path",
            FoundBy::FirstWithDriver => "the first UART with a driver",
        })
    }
}

/// A departure from what the devicetree says, made to reach a console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess<'b> {
    /// The parent's `#address-cells` and `#size-cells` (as stated, or their defaults 2 and
    /// 1) cannot split `reg`; it was read with `address_cells` + `size_cells` cells.
    CellCounts {
        /// The node whose `reg` was read.
        node: &'b str,
        /// Its parent.
        parent: &'b str,
        /// The parent's `#address-cells`, as stated or defaulted.
        stated_address_cells: u32,
        /// The parent's `#size-cells`, as stated or defaulted.
        stated_size_cells: u32,
        /// The address cells used.
        address_cells: usize,
        /// The size cells used.
        size_cells: usize,
    },
    /// `bus` has no `ranges` that translates `address`, which was kept as it is.
    Untranslated {
        /// The bus.
        bus: &'b str,
        /// The address, as the bus states it.
        address: u64,
    },
}

impl fmt::Display for Guess<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Guess::CellCounts { node, parent, stated_address_cells, stated_size_cells, address_cells, size_cells } => {
                write!(
                    f,
                    "'reg' of '{node}' is not a whole number of entries of #address-cells = \
                     <{stated_address_cells}> and #size-cells = <{stated_size_cells}> (of '{parent}'); \
                     read as {address_cells} + {size_cells} cells"
                )
            }
            Guess::Untranslated { bus, address } => {
                write!(f, "'{bus}' has no 'ranges' that translates {address:#x}; taken as a physical address")
            }
        }
    }
}

/// The UART a kernel with drivers for the `drivers` compatible strings should use as its
/// console, read leniently from `blob` (see the module documentation); `None` if there is no
/// enabled one with a usable `reg`, or `blob` is not a devicetree.
pub fn rescue_console<'b>(blob: &'b [u8], drivers: &[&str]) -> Option<RescuedConsole<'b>> {
    let blocks = Blocks::of(blob)?;
    let stdout = stdout_path(blocks);
    let target: Option<ArrayVec<&str, MAX_DEPTH>> =
        stdout.map(|path| path.split('/').filter(|component| !component.is_empty()).take(MAX_DEPTH).collect());

    let mut open: ArrayVec<Frame<'b>, MAX_DEPTH> = ArrayVec::new();
    // Nodes nested deeper than `open` can hold: skipped, but counted to match their ends.
    let mut untracked = 0usize;
    let mut first_with_driver = None;
    let mut consider = |frame: &Frame<'b>, ancestors: &[Frame<'b>]| -> Option<RescuedConsole<'b>> {
        let console = console_at(frame, ancestors, drivers)?;
        let named_by_stdout = target.as_ref().is_some_and(|target| frame.on_target && target.len() == ancestors.len());
        if named_by_stdout {
            return Some(RescuedConsole { found_by: FoundBy::StdoutPath, ..console });
        }
        if first_with_driver.is_none() {
            first_with_driver = Some(console.clone());
        }
        // Without a target nothing better can come: the first one is the answer.
        target.is_none().then_some(console)
    };
    for token in blocks.tokens() {
        match token {
            Token::BeginNode(name) if untracked == 0 && !open.is_full() => {
                let depth = open.len();
                let on_target = match (open.last(), &target) {
                    (None, _) => true, // the root is where every path starts
                    (Some(parent), Some(target)) => {
                        parent.on_target && target.get(depth - 1).is_some_and(|component| matches(name, component))
                    }
                    (Some(_), None) => false,
                };
                // The root's name is empty; messages call it `/`.
                let name = if depth == 0 && name.is_empty() { "/" } else { name };
                open.push(Frame { name, on_target, ..Frame::default() });
            }
            Token::BeginNode(_) => untracked += 1,
            Token::Property { name, value } if untracked == 0 => {
                if let Some(frame) = open.last_mut() {
                    frame.record(name, value);
                }
            }
            Token::Property { .. } => {}
            Token::EndNode if untracked > 0 => untracked -= 1,
            Token::EndNode => {
                let Some(frame) = open.pop() else { break };
                if let Some(console) = consider(&frame, &open) {
                    return Some(console);
                }
            }
        }
    }
    // The walk stopped early: nodes still open may have shown all they need.
    while let Some(frame) = open.pop() {
        if let Some(console) = consider(&frame, &open) {
            return Some(console);
        }
    }
    first_with_driver
}

/// Whether the node `name` is what path component `component` asks for: the same name, or,
/// for a component without a unit address, the same name before the `@`.
fn matches(name: &str, component: &str) -> bool {
    name == component || (!component.contains('@') && name.split('@').next() == Some(component))
}

/// The path `/chosen/stdout-path` names, through `/aliases` if it names an alias, without the
/// options after `:`.
fn stdout_path(blocks: Blocks<'_>) -> Option<&str> {
    let stdout = root_child_string(blocks, "chosen", "stdout-path")?;
    let name = stdout.split(':').next().unwrap_or(stdout);
    match name.starts_with('/') {
        true => Some(name),
        false => root_child_string(blocks, "aliases", name),
    }
}

/// The string `property` of the first child of the root named `node` (any unit address).
fn root_child_string<'b>(blocks: Blocks<'b>, node: &str, property: &str) -> Option<&'b str> {
    let mut depth = 0usize;
    let mut in_node = false;
    for token in blocks.tokens() {
        match token {
            Token::BeginNode(name) => {
                depth += 1;
                if depth == 2 {
                    in_node = matches(name, node);
                }
            }
            Token::EndNode => depth = depth.saturating_sub(1),
            Token::Property { name: Some(name), value } if depth == 2 && in_node && name == property => {
                return first_string(value);
            }
            Token::Property { .. } => {}
        }
    }
    None
}

fn first_string(value: &[u8]) -> Option<&str> {
    core::str::from_utf8(value.split(|&byte| byte == 0).next()?).ok()
}

/// What the walk keeps of one open node.
#[derive(Clone, Copy, Default)]
struct Frame<'b> {
    name: &'b str,
    /// Whether this node and every node above it match the stdout path so far.
    on_target: bool,
    address_cells: Option<u32>,
    size_cells: Option<u32>,
    ranges: Option<&'b [u8]>,
    compatible: &'b [u8],
    reg: Option<&'b [u8]>,
    disabled: bool,
}

impl<'b> Frame<'b> {
    fn record(&mut self, name: Option<&str>, value: &'b [u8]) {
        let one_cell = || read_cells(value, 1).filter(|(_, rest)| rest.is_empty()).map(|(cells, _)| cells as u32);
        match name {
            Some("#address-cells") => self.address_cells = one_cell(),
            Some("#size-cells") => self.size_cells = one_cell(),
            Some("ranges") => self.ranges = Some(value),
            Some("compatible") => self.compatible = value,
            Some("reg") => self.reg = Some(value),
            Some("status") => self.disabled = !matches!(first_string(value), Some("okay") | Some("ok")),
            _ => {}
        }
    }

    /// The cell counts this node sets for its children, with the specification's defaults.
    fn stated_cells(&self) -> (u32, u32) {
        (self.address_cells.unwrap_or(2), self.size_cells.unwrap_or(1))
    }
}

/// The console `frame` describes, if it is an enabled UART with a driver and a usable `reg`.
fn console_at<'b>(frame: &Frame<'b>, ancestors: &[Frame<'b>], drivers: &[&str]) -> Option<RescuedConsole<'b>> {
    let compatible = frame
        .compatible
        .split(|&byte| byte == 0)
        .filter_map(|string| core::str::from_utf8(string).ok())
        .find(|string| drivers.contains(string))?;
    if frame.disabled {
        return None;
    }
    let (parent, root) = (ancestors.last()?, ancestors.first()?);
    let mut guesses = ArrayVec::new();
    let (address, size) = first_reg(frame, parent, root, &mut guesses)?;
    let address = translate(address, ancestors, &mut guesses);
    let registers = PhysRange::new(PhysAddr::new(address), size).filter(|range| !range.is_empty())?;
    Some(RescuedConsole { name: frame.name, compatible, registers, found_by: FoundBy::FirstWithDriver, guesses })
}

/// The first (address, size) of `frame`'s `reg`, split by the first cell counts that fit it.
fn first_reg<'b>(
    frame: &Frame<'b>,
    parent: &Frame<'b>,
    root: &Frame<'b>,
    guesses: &mut ArrayVec<Guess<'b>, MAX_GUESSES>,
) -> Option<(u64, u64)> {
    let reg = frame.reg?;
    let stated = parent.stated_cells();
    let fits = |&(address_cells, size_cells): &(u32, u32)| {
        let entry = (address_cells as usize + size_cells as usize) * 4;
        (1..=2).contains(&address_cells)
            && (1..=2).contains(&size_cells)
            && reg.len() >= entry
            && reg.len().is_multiple_of(entry)
    };
    let layouts = [stated, root.stated_cells(), (2, 2), (2, 1), (1, 1)];
    let (address_cells, size_cells) = layouts.into_iter().find(fits)?;
    let (address_cells, size_cells) = (address_cells as usize, size_cells as usize);
    if (address_cells, size_cells) != (stated.0 as usize, stated.1 as usize) {
        let guess = Guess::CellCounts {
            node: frame.name,
            parent: parent.name,
            stated_address_cells: stated.0,
            stated_size_cells: stated.1,
            address_cells,
            size_cells,
        };
        // `guesses` is empty here, so there is room.
        let _ = guesses.try_push(guess);
    }
    let (address, rest) = read_cells(reg, address_cells)?;
    let (size, _) = read_cells(rest, size_cells)?;
    Some((address, size))
}

/// `address` on the bus of the last of `ancestors`, translated up to the root through each
/// bus's `ranges`; a bus that does not translate it leaves it as it is, with a guess recorded.
fn translate<'b>(mut address: u64, ancestors: &[Frame<'b>], guesses: &mut ArrayVec<Guess<'b>, MAX_GUESSES>) -> u64 {
    for pair in ancestors.windows(2).rev() {
        let (parent, bus) = (&pair[0], &pair[1]);
        match bus.ranges.map(|ranges| translate_one(address, ranges, bus, parent)) {
            Some(Some(translated)) => address = translated,
            _ => {
                // One guess per bus: at most `MAX_DEPTH - 1` of them, and one about cells.
                let _ = guesses.try_push(Guess::Untranslated { bus: bus.name, address });
            }
        }
    }
    address
}

/// `address` through one `ranges` value; empty `ranges` is the identity.
fn translate_one(address: u64, ranges: &[u8], bus: &Frame<'_>, parent: &Frame<'_>) -> Option<u64> {
    if ranges.is_empty() {
        return Some(address);
    }
    let (child_cells, size_cells) = bus.stated_cells();
    let parent_cells = parent.stated_cells().0;
    let (child_cells, parent_cells, size_cells) = (child_cells as usize, parent_cells as usize, size_cells as usize);
    let entry = (child_cells + parent_cells + size_cells) * 4;
    if child_cells > 2 || parent_cells > 2 || size_cells > 2 || entry == 0 {
        return None;
    }
    ranges.chunks_exact(entry).find_map(|raw| {
        let (child_base, rest) = read_cells(raw, child_cells)?;
        let (parent_base, rest) = read_cells(rest, parent_cells)?;
        let (size, _) = read_cells(rest, size_cells)?;
        let offset = address.checked_sub(child_base).filter(|&offset| offset < size)?;
        parent_base.checked_add(offset)
    })
}

/// The structure and strings blocks, cut to the bytes at hand.
#[derive(Clone, Copy)]
struct Blocks<'b> {
    structure: &'b [u8],
    strings: &'b [u8],
}

impl<'b> Blocks<'b> {
    fn of(blob: &'b [u8]) -> Option<Self> {
        let field = |index: usize| -> Option<usize> {
            let bytes = blob.get(index * 4..index * 4 + 4)?;
            Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
        };
        if blob.len() < HEADER_SIZE || field(0)? != MAGIC as usize {
            return None;
        }
        let total_size = field(1)?;
        let blob = match total_size >= HEADER_SIZE {
            true => &blob[..total_size.min(blob.len())],
            false => blob,
        };
        // A block that runs past the blob is cut at its end.
        let block = |offset: usize, size: usize| -> &'b [u8] {
            let start = offset.min(blob.len());
            let end = offset.saturating_add(size).min(blob.len());
            &blob[start..end]
        };
        let structure = match field(9)? {
            0 => block(field(2)?, blob.len()), // version 16 headers do not record the size
            size => block(field(2)?, size),
        };
        Some(Self { structure, strings: block(field(3)?, field(8)?) })
    }

    fn tokens(self) -> Tokens<'b> {
        Tokens { blocks: self, position: 0 }
    }
}

enum Token<'b> {
    BeginNode(&'b str),
    /// `name` is `None` when the strings block does not hold it (truncated, or a bad offset).
    Property {
        name: Option<&'b str>,
        value: &'b [u8],
    },
    EndNode,
}

/// The structure block's tokens, NOPs skipped, up to `FDT_END` or the first that makes no
/// sense.
struct Tokens<'b> {
    blocks: Blocks<'b>,
    position: usize,
}

impl<'b> Tokens<'b> {
    fn word(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// `length` bytes, then the padding to the next 4-byte boundary.
    fn take(&mut self, length: usize) -> Option<&'b [u8]> {
        let end = self.position.checked_add(length)?;
        let taken = self.blocks.structure.get(self.position..end)?;
        self.position = end.next_multiple_of(4);
        Some(taken)
    }
}

impl<'b> Iterator for Tokens<'b> {
    type Item = Token<'b>;

    fn next(&mut self) -> Option<Token<'b>> {
        loop {
            match self.word()? {
                TOKEN_BEGIN_NODE => {
                    let rest = self.blocks.structure.get(self.position..)?;
                    let length = rest.iter().position(|&byte| byte == 0)?;
                    let name = self.take(length + 1)?;
                    return Some(Token::BeginNode(core::str::from_utf8(&name[..length]).unwrap_or("?")));
                }
                TOKEN_END_NODE => return Some(Token::EndNode),
                TOKEN_PROP => {
                    let length = self.word()? as usize;
                    let name_offset = self.word()? as usize;
                    let value = self.take(length)?;
                    return Some(Token::Property { name: property_name(self.blocks.strings, name_offset), value });
                }
                TOKEN_NOP => continue,
                _ => return None, // FDT_END, or a token that makes no sense
            }
        }
    }
}
