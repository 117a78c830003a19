//! The known differences of a differential test (the filter against Traefik, Envoy's
//! ext_authz, or Istio's CUSTOM action): a TSV in the repository, one
//! `case<TAB>aspect<TAB>category` line per difference, and the docs table whose rows are
//! the categories. A test asserts it observes exactly the TSV's lines, and that the docs
//! list exactly the TSVs' categories, so a new difference cannot pass unexplained.

use std::collections::{BTreeMap, BTreeSet};

use crate::repo_root;

/// (case, aspect) → (the filter's value, the other side's).
pub type Observed = BTreeMap<(String, String), (String, String)>;
/// (case, aspect) → category.
pub type Known = BTreeMap<(String, String), String>;

/// The TSV at `tsv` (relative to the repository); a missing file lists nothing, so every
/// observed difference is then reported as unlisted.
pub fn load(tsv: &str) -> Known {
    let text = std::fs::read_to_string(repo_root().join(tsv)).unwrap_or_default();
    let mut known = Known::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{tsv}:{}: expected case<TAB>aspect<TAB>category: {line:?}", i + 1);
        known.insert((cols[0].to_owned(), cols[1].to_owned()), cols[2].to_owned());
    }
    known
}

/// Rewrites `tsv` with what was `observed` (its comment `header`, each line `# `-prefixed
/// by the caller), keeping the categories already `known` and `?` for new ones: how a
/// maintainer refreshes the list after a deliberate change.
pub fn write(tsv: &str, header: &str, observed: &Observed, known: &Known) {
    let mut text = String::from(header);
    for key in observed.keys() {
        let category = known.get(key).map(String::as_str).unwrap_or("?");
        text.push_str(&format!("{}\t{}\t{category}\n", key.0, key.1));
    }
    std::fs::write(repo_root().join(tsv), text).expect("write the differences TSV");
}

/// The categories (first column, in backticks) of the first table after the heading
/// `section` of the docs page `page`.
pub fn documented_categories(page: &str, section: &str) -> BTreeSet<String> {
    let docs = std::fs::read_to_string(repo_root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
    let after = docs.split(section).nth(1).unwrap_or_else(|| panic!("{page} has no {section:?}"));
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1)?.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned))
        .collect()
}

/// What `observed` and `known` disagree on, as `case<TAB>aspect` lines: the differences
/// not listed, and the listed ones not observed (a test asserts both are empty).
pub fn mismatches(observed: &Observed, known: &Known) -> (Vec<String>, Vec<String>) {
    let line = |(case, aspect): &(String, String)| format!("{case}\t{aspect}");
    let unlisted = observed.keys().filter(|k| !known.contains_key(*k)).map(line).collect();
    let stale = known.keys().filter(|k| !observed.contains_key(*k)).map(line).collect();
    (unlisted, stale)
}
