//! Log excerpts in the documentation, kept true to the kernel that is committed.
//!
//! A console excerpt in a Markdown file is announced by a comment naming the run it comes from:
//!
//! ````text
//! <!-- log: virt-demo -->
//! ```text
//! [   0.001113] INFO  machine: linux,dummy-virt
//! ```
//! ````
//!
//! `cargo xtask test` boots each named run (the demos and the scenarios it boots anyway) and checks that every line of every
//! excerpt is a line that run printed, in the same order. Only what differs from boot to boot
//! is ignored: the timestamp and the entropy device's random bytes. Anything else that changed
//! (an address, a count, a message) fails the check, naming the file, the line and what the
//! kernel prints now; `cargo xtask excerpts` then rewrites the excerpts from fresh runs.

use std::path::{Path, PathBuf};

use crate::Result;

/// One excerpt: where it is, which run it shows, its lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Excerpt {
    pub file: PathBuf,
    /// 1-based line number of its first console line.
    pub first_line: usize,
    /// The run's name, one of those the caller knows.
    pub run: String,
    pub lines: Vec<String>,
}

const MARKER: &str = "<!-- log: ";

/// The documentation files that may hold excerpts: the README and everything in `docs/`.
pub fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        docs.retain(|path| path.extension().is_some_and(|extension| extension == "md"));
        docs.sort();
        files.extend(docs);
    }
    files
}

/// Every excerpt in `text` (the contents of `file`); `runs` are the names a marker may use.
pub fn find(file: &Path, text: &str, runs: &[&str]) -> Result<Vec<Excerpt>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut excerpts = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else { continue };
        let at = format!("{}:{}", file.display(), index + 1);
        let name = rest.strip_suffix("-->").map(str::trim).ok_or(format!("{at}: a log marker ends with `-->`"))?;
        if !runs.contains(&name) {
            return Err(format!("{at}: no run is named `{name}` (known: {})", runs.join(", ")));
        }
        let run = name.to_string();
        if lines.get(index + 1).map(|fence| fence.trim()) != Some("```text") {
            return Err(format!("{at}: a log marker must stand right before a ```text block"));
        }
        let body: Vec<String> =
            lines[index + 2..].iter().take_while(|line| line.trim() != "```").map(|line| line.to_string()).collect();
        if index + 2 + body.len() >= lines.len() {
            return Err(format!("{at}: the ```text block after the log marker is not closed"));
        }
        excerpts.push(Excerpt { file: file.to_path_buf(), first_line: index + 3, run, lines: body });
    }
    Ok(excerpts)
}

/// A console line without what changes from boot to boot: the timestamp, and the entropy
/// device's bytes.
fn stable(line: &str) -> String {
    let line = line.trim_end();
    let line = match line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((time, rest)) if time.trim().parse::<f64>().is_ok() => rest.trim_start(),
        _ => line,
    };
    // "demo: entropy device NAME (NODE): [bytes]": the bytes are random.
    match (line.contains("demo: entropy device"), line.rfind('[')) {
        (true, Some(at)) => format!("{}[…]", &line[..at]),
        _ => line.to_string(),
    }
}

/// The same line with every number blanked: how an excerpt line finds the line that replaced
/// it when an address or a count changed.
fn shape(line: &str) -> String {
    let stable = stable(line);
    // A size may change its unit along with its number (712 KiB, 1.1 MiB).
    let words: Vec<&str> =
        stable.split_whitespace().filter(|word| !matches!(*word, "B" | "KiB" | "MiB" | "GiB")).collect();
    let stable = words.join(" ");
    let mut shape = String::new();
    let mut in_number = false;
    for character in stable.chars() {
        let continues = character.is_ascii_hexdigit() || character == 'x' || character == '.';
        if character.is_ascii_digit() || (in_number && continues) {
            if !in_number {
                shape.push('#');
            }
            in_number = true;
        } else {
            shape.push(character);
            in_number = false;
        }
    }
    shape
}

/// Checks `excerpt` against what its run printed; the error names each line that no longer
/// matches, with the kernel's line of the same shape if there is one.
pub fn check(excerpt: &Excerpt, console: &str) -> Result<()> {
    let printed: Vec<&str> = console.lines().collect();
    let mut next = 0;
    for (offset, line) in excerpt.lines.iter().enumerate() {
        let wanted = stable(line);
        match printed[next..].iter().position(|candidate| stable(candidate) == wanted) {
            Some(found) => next += found + 1,
            None => {
                let now = printed.iter().find(|candidate| shape(candidate) == shape(line));
                return Err(format!(
                    "{}:{}: this log line is not what `{}` prints{}:\n    {}\n{}",
                    excerpt.file.display(),
                    excerpt.first_line + offset,
                    excerpt.run,
                    if next > 0 { " after the lines above it" } else { "" },
                    line.trim(),
                    match now {
                        Some(now) => format!(
                            "  it prints:\n    {}\n  (`cargo xtask excerpts` rewrites the excerpts)",
                            now.trim()
                        ),
                        None => "  and it prints no line like it".to_string(),
                    }
                ));
            }
        }
    }
    Ok(())
}

/// `text` with every excerpt's lines replaced by the lines of the same shape, in order, from
/// its run's console (`consoles`: each run's name and what it printed); an excerpt line with no
/// counterpart is an error.
pub fn rewrite(file: &Path, text: &str, consoles: &[(&str, String)]) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let runs: Vec<&str> = consoles.iter().map(|(name, _)| *name).collect();
    for excerpt in find(file, text, &runs)? {
        let console = &consoles.iter().find(|(name, _)| *name == excerpt.run).expect("a known run").1;
        let printed: Vec<&str> = console.lines().collect();
        let mut next = 0;
        for (offset, line) in excerpt.lines.iter().enumerate() {
            // The line itself if the run still prints it, else the first line of its shape: a
            // record that repeats with other numbers (a trace) keeps the one the text explains.
            let same = printed[next..].iter().position(|candidate| stable(candidate) == stable(line));
            let alike = || printed[next..].iter().position(|candidate| shape(candidate) == shape(line));
            let found = same.or_else(alike).ok_or(format!(
                "{}:{}: `{}` printed no line like:\n    {}",
                file.display(),
                excerpt.first_line + offset,
                excerpt.run,
                line.trim()
            ))?;
            next += found + 1;
            lines[excerpt.first_line - 1 + offset] = printed[next - 1].trim_end().to_string();
        }
    }
    let mut rewritten = lines.join("\n");
    if text.ends_with('\n') {
        rewritten.push('\n');
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "Intro\n<!-- log: virt-demo -->\n```text\n[   0.001] INFO  machine: virt\n[   0.002] INFO  heap: 504 MiB\n```\nEnd\n";

    fn excerpt() -> Excerpt {
        find(Path::new("README.md"), DOC, &["virt-demo"]).unwrap().pop().unwrap()
    }

    #[test]
    fn excerpts_are_found_with_their_run_and_lines() {
        let excerpt = excerpt();
        assert_eq!((excerpt.run.as_str(), excerpt.first_line), ("virt-demo", 4));
        assert_eq!(excerpt.lines, ["[   0.001] INFO  machine: virt", "[   0.002] INFO  heap: 504 MiB"]);
    }

    #[test]
    fn a_rewrite_keeps_the_quoted_line_when_the_run_still_prints_it() {
        let doc = "<!-- log: virt-demo -->\n```text\n[   0.001] INFO  map at offset 0xfa0\n```\n";
        let console = "[   1.0] INFO  map at offset 0x0\n[   1.1] INFO  map at offset 0xfa0\n";
        let rewritten = rewrite(Path::new("doc.md"), doc, &[("virt-demo", console.to_string())]).unwrap();
        assert!(rewritten.contains("[   1.1] INFO  map at offset 0xfa0"), "{rewritten}");
        let moved = "[   2.0] INFO  map at offset 0x7a0\n";
        let rewritten = rewrite(Path::new("doc.md"), doc, &[("virt-demo", moved.to_string())]).unwrap();
        assert!(rewritten.contains("[   2.0] INFO  map at offset 0x7a0"), "{rewritten}");
    }

    #[test]
    fn timestamps_and_random_bytes_may_differ_nothing_else() {
        let console = "[   1.5] INFO  machine: virt\n[   2.0] INFO  other\n[   3.0] INFO  heap: 504 MiB\n";
        assert_eq!(check(&excerpt(), console), Ok(()));
        let error = check(&excerpt(), "[ 1.5] INFO  machine: virt\n[ 3.0] INFO  heap: 248 MiB\n").unwrap_err();
        assert!(error.contains("README.md:5:"), "{error}");
        assert!(error.contains("it prints:\n    [ 3.0] INFO  heap: 248 MiB"), "{error}");
        assert!(check(&excerpt(), "[ 3.0] INFO  heap: 504 MiB\n[ 1.5] INFO  machine: virt\n").is_err(), "order");
        assert_eq!(
            stable("[ 0.1] INFO  demo: entropy device virtio-rng0 (virtio_mmio@a003c00): [01, 02]"),
            stable("[ 0.2] INFO  demo: entropy device virtio-rng0 (virtio_mmio@a003c00): [ff, 8b]")
        );
    }

    #[test]
    fn a_rewrite_takes_the_lines_the_run_prints_now() {
        let console = "[   1.5] INFO  machine: virt\n[   3.0] INFO  heap: 248 MiB\n";
        let rewritten = rewrite(Path::new("README.md"), DOC, &[("virt-demo", console.to_string())]).unwrap();
        assert_eq!(
            rewritten,
            DOC.replace("[   0.001]", "[   1.5]").replace("[   0.002] INFO  heap: 504", "[   3.0] INFO  heap: 248")
        );
        let error = rewrite(Path::new("README.md"), DOC, &[("virt-demo", "nothing".into())]).unwrap_err();
        assert!(error.contains("README.md:4:"), "{error}");
    }

    #[test]
    fn bad_markers_are_refused_in_words() {
        let error = find(Path::new("a.md"), "<!-- log: nonsense -->\n```text\n```\n", &["virt-demo"]).unwrap_err();
        assert!(error.contains("no run is named `nonsense`"), "{error}");
        let error = find(Path::new("a.md"), "<!-- log: virt-demo -->\ntext\n", &["virt-demo"]).unwrap_err();
        assert!(error.contains("right before a ```text block"), "{error}");
    }
}
