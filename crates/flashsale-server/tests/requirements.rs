//! Every requirement id cited in the repository (`FL-`, `IM-`, `PR-`, `FE-`, `NF-`, `T-`, `OP-` and a
//! number) is defined in `docs/requirements.md`, so a reader can look any of them up.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const PREFIXES: &[&str] = &["FL", "IM", "PR", "FE", "NF", "T", "CO", "OP"];

/// The ids cited in `text`: a prefix at a word start, a dash, digits.
fn cited(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut ids = BTreeSet::new();
    for (at, _) in text.match_indices('-') {
        let digits = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            continue;
        }
        for prefix in PREFIXES {
            let Some(start) = at.checked_sub(prefix.len()) else {
                continue;
            };
            let word_start = start == 0 || {
                let before = bytes[start - 1];
                !(before.is_ascii_alphanumeric() || before == b'_')
            };
            if word_start && &text[start..at] == *prefix {
                ids.insert(text[start..at + 1 + digits].to_owned());
            }
        }
    }
    ids
}

/// The ids `docs/requirements.md` defines: each is written in bold where it is defined.
fn defined(requirements: &str) -> BTreeSet<String> {
    cited(requirements)
        .into_iter()
        .filter(|id| requirements.contains(&format!("**{id}**")))
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every text file under `path` (binary files, such as screenshots, are skipped).
fn text_files(path: &Path, out: &mut Vec<(PathBuf, String)>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap().path();
            let name = entry.file_name().unwrap().to_string_lossy().into_owned();
            if name == "target" || name.starts_with('.') {
                continue;
            }
            text_files(&entry, out);
        }
    } else if let Ok(text) = std::fs::read_to_string(path) {
        out.push((path.to_owned(), text));
    }
}

#[test]
fn every_cited_id_is_defined() {
    let root = repo_root();
    let requirements = std::fs::read_to_string(root.join("docs/requirements.md")).unwrap();
    let defined = defined(&requirements);
    let mut files = Vec::new();
    for place in ["crates", "docs", "scripts", "README.md"] {
        text_files(&root.join(place), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut undefined = Vec::new();
    for (path, text) in &files {
        for id in cited(text).difference(&defined) {
            undefined.push(format!("{id} in {}", path.display()));
        }
    }
    assert!(
        undefined.is_empty(),
        "ids cited but not defined in docs/requirements.md:\n{}",
        undefined.join("\n")
    );
}

#[test]
fn the_scanner_finds_ids_and_ignores_lookalikes() {
    let ids = cited("FL-1, (T-7..T-10) NF-12; UTF-8 TNF-3 x_T-4 PR- FE-x IM-5");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids, ["FL-1", "IM-5", "NF-12", "T-10", "T-7"]);
    let defined = defined("- **FL-1** before the start. FL-2 is only cited.");
    assert_eq!(defined.into_iter().collect::<Vec<_>>(), ["FL-1"]);
}

#[test]
fn the_requirements_define_every_family() {
    let requirements = std::fs::read_to_string(repo_root().join("docs/requirements.md")).unwrap();
    let defined = defined(&requirements);
    for (prefix, last) in [
        ("FL", 5),
        ("IM", 5),
        ("PR", 6),
        ("FE", 7),
        ("NF", 12),
        ("T", 10),
        ("CO", 12),
        ("OP", 19),
    ] {
        for n in 1..=last {
            let id = format!("{prefix}-{n}");
            assert!(defined.contains(&id), "{id} is not defined");
        }
    }
}
