//! The repository stands alone: every file it cites is inside it.
//!
//! Code and documents cite the DMA contract as "rule N" and "RN", and link into `docs/` with
//! `docs/` + `NAME.md#anchor`. These host tests read every tracked file and check that each such
//! reference lands on an anchor that exists, and that nothing points outside the repository.

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::Command;

    use crate::image::workspace_root;

    const CONTRACT: &str = "docs/dma-contract.md";

    /// Every tracked text file, with its path.
    fn tracked_files() -> Vec<(String, String)> {
        let root = workspace_root();
        let listing = Command::new("git").current_dir(&root).args(["ls-files", "-z"]).output().expect("git ls-files");
        String::from_utf8_lossy(&listing.stdout)
            .split('\0')
            .filter(|path| !path.is_empty())
            .filter_map(|path| Some((path.to_string(), std::fs::read_to_string(root.join(path)).ok()?)))
            .collect()
    }

    /// The `id`s of the explicit anchors (`<a id="...">`) in a Markdown file.
    fn anchors(path: &Path) -> BTreeSet<String> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        text.split("id=\"").skip(1).filter_map(|rest| rest.split_once('"')).map(|(id, _)| id.to_string()).collect()
    }

    /// The numbers following `word` (`rule 7`, `rules 2`, `R10`) in `text`.
    fn numbers_after<'t>(text: &'t str, word: &'t str) -> impl Iterator<Item = u32> + 't {
        text.match_indices(word).filter_map(move |(at, _)| {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|character| character.is_alphanumeric() || character == '_') {
                return None;
            }
            let digits: String = text[at + word.len()..].chars().take_while(char::is_ascii_digit).collect();
            let after = text[at + word.len() + digits.len()..].chars().next();
            let whole_word = !after.is_some_and(|character| character.is_alphanumeric() || character == '_');
            (whole_word && !digits.is_empty()).then(|| digits.parse().ok()).flatten()
        })
    }

    #[test]
    fn nothing_refers_outside_the_repository() {
        // Spelled in pieces, so that this file does not cite what it forbids.
        let outside = [["..", "/shared"].concat(), ["shared", "/seeds"].concat(), ["seed ", "0"].concat()];
        for (path, text) in tracked_files() {
            for forbidden in &outside {
                assert!(!text.contains(forbidden.as_str()), "{path} refers to `{forbidden}`, outside the repository");
            }
        }
    }

    #[test]
    fn every_rule_and_case_cited_is_in_the_contract() {
        let defined = anchors(&workspace_root().join(CONTRACT));
        for (path, text) in tracked_files() {
            let rules = ["rule ", "rules ", "Rule ", "Rules "].into_iter().flat_map(|word| numbers_after(&text, word));
            for rule in rules.collect::<Vec<_>>() {
                assert!(defined.contains(&format!("rule-{rule}")), "{path} cites rule {rule}, which {CONTRACT} lacks");
            }
            for case in numbers_after(&text, "R").collect::<Vec<_>>() {
                assert!(defined.contains(&format!("r{case}")), "{path} cites R{case}, which {CONTRACT} lacks");
            }
        }
    }

    #[test]
    fn every_link_into_docs_lands_on_an_anchor() {
        let root = workspace_root();
        for (path, text) in tracked_files() {
            for (at, _) in text.match_indices("docs/") {
                let link: String =
                    text[at..].chars().take_while(|c| c.is_alphanumeric() || "/_-.#".contains(*c)).collect();
                let link = link.trim_end_matches('.');
                let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
                if !file.ends_with(".md") {
                    continue;
                }
                assert!(root.join(file).is_file(), "{path} links to {file}, which does not exist");
                if !anchor.is_empty() {
                    assert!(anchors(&root.join(file)).contains(anchor), "{path} links to {link}: no such anchor");
                }
            }
        }
    }
}
