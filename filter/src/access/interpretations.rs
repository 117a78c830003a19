//! The paths a request target can be read as by the parsers behind the filter, for the
//! deny side of the access rules: a rule keyed to `/internal` must deny `//internal`,
//! `/x/../internal`, `/%69nternal`, `/internal%2fmetrics` and `/internal;v=1` as it
//! denies `/internal`, because the callout may allow them and the upstream, which
//! normalises, then serves `/internal`.
//!
//! An interpretation is one combination of these choices, made in this order (each
//! only when the path holds a byte it acts on, so a canonical path has one: itself):
//!
//! 1. The path: the target up to its first `?`. A target that does not start with `/`
//!    (`api/x`, `*`) is read as if it did, and when it is in absolute form
//!    (`http://host/p`, RFC 9112 §3.2.2) also from the `/` after its authority.
//! 2. `#`: a byte, or the start of a fragment (the path ends there).
//! 3. `;`: a byte, or the start of a segment's parameters, dropped up to the next `/`
//!    before anything is decoded (RFC 3986 §3.3; Tomcat, Jetty and Spring strip them
//!    from the raw path).
//! 4. Percent-decoding (RFC 3986 §2.1): none; once; twice (double encoding, `%252e`);
//!    and once or twice with `%2F`/`%5C` left encoded, a byte inside a segment (Envoy's
//!    default `path_with_escaped_slashes_action`, and routers that split before they
//!    decode).
//! 5. Overlong UTF-8: bytes, or the two-byte overlong forms of ASCII read as that byte
//!    (`%c0%ae` decoded is `.`, `%c0%af` is `/`), as decoders without UTF-8 validation do.
//! 6. NUL: a byte, or the end of the path (C strings).
//! 7. Tab, CR and LF: bytes, or dropped (the WHATWG URL parser drops them).
//! 8. `\`: a byte, or a separator like `/` (WHATWG for http URLs, IIS, Windows).
//! 9. Segments: empty segments merged (`//` is `/`) with dot segments kept (a router
//!    that does not resolve them: Starlette mounts `/internal/../x` under
//!    `/internal`); or dot segments resolved (RFC 3986 §5.2.4) after the merge (nginx,
//!    Envoy `merge_slashes` + `normalize_path`) or before it (`normalize_path` alone,
//!    where `/a/b//../..` is `/a`), then merged.
//!
//! Work is bounded: each step costs the length of what it reads and writes, and a
//! target whose interpretations would cost more than [`WORK_LIMIT`] bytes gets
//! [`Interpretations::TooMany`] instead (the gate then treats it as under every deny
//! rule). At most 3840 interpretations exist (2 · 2 · 2 · 5 · 2 · 2 · 2 · 2 · 3), and
//! each is only kept when it differs from those before it; nothing here
//! panics or indexes out of bounds.

/// Bytes of work (read and written) the interpretations of one target may cost: a
/// path of about 2.5 KiB with escapes, or 1 KiB with escapes, parameters and dot
/// segments (measured), far above the paths Prefect's clients send. The costliest of
/// 200,000 generated hostile targets under it took 32 µs natively.
pub const WORK_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpretations {
    /// Every distinct interpretation, each starting with `/` with no empty segment
    /// (non-UTF-8 bytes replaced by U+FFFD, which changes no segment boundary).
    Paths(Vec<String>),
    /// More than [`WORK_LIMIT`] bytes of work: assume the worst.
    TooMany,
}

struct OverBudget;

/// What is left of [`WORK_LIMIT`].
struct Work(usize);

impl Work {
    fn spend(&mut self, bytes: usize) -> Result<(), OverBudget> {
        self.0 = self.0.checked_sub(bytes).ok_or(OverBudget)?;
        Ok(())
    }
}

/// The interpretations of `target` (a raw `:path`); see the module docs.
pub fn interpretations(target: &[u8]) -> Interpretations {
    let mut work = Work(WORK_LIMIT);
    match all(target, &mut work) {
        Ok(paths) => Interpretations::Paths(paths),
        Err(OverBudget) => Interpretations::TooMany,
    }
}

fn all(target: &[u8], work: &mut Work) -> Result<Vec<String>, OverBudget> {
    work.spend(target.len())?;
    let path = &target[..position(target, b'?')];
    let mut set = vec![rooted(path)];
    if let Some(absolute) = absolute_form_path(path) {
        add(&mut set, work, absolute.to_vec())?;
    }
    branch(&mut set, work, |p| cut_at(p, b'#'))?;
    branch(&mut set, work, parameters)?;
    decode_all(&mut set, work)?;
    branch(&mut set, work, overlong)?;
    branch(&mut set, work, |p| cut_at(p, 0))?;
    branch(&mut set, work, tabs)?;
    branch(&mut set, work, backslashes)?;
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(set.len() * 3);
    for path in &set {
        work.spend(path.len() * 3)?;
        let merged = merge_slashes(path);
        if has_dot_segment(&merged) {
            add(&mut out, work, merge_slashes(&resolve_dots(path)))?;
            add(&mut out, work, resolve_dots(&merged))?;
        }
        add(&mut out, work, merged)?;
    }
    Ok(out.into_iter().map(|p| String::from_utf8(p).unwrap_or_else(|e| lossy(e.as_bytes()))).collect())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Adds `path` to `set` unless it is there already (comparisons are work too: one
/// unit per path compared, so the set cannot grow quadratic in cost).
fn add(set: &mut Vec<Vec<u8>>, work: &mut Work, path: Vec<u8>) -> Result<(), OverBudget> {
    work.spend(path.len() + set.len())?;
    for other in set.iter() {
        if other.len() == path.len() {
            work.spend(path.len())?;
            if *other == path {
                return Ok(());
            }
        }
    }
    set.push(path);
    Ok(())
}

/// Each path of `set` both as it is and as `step` makes it (`None`: unchanged).
fn branch(set: &mut Vec<Vec<u8>>, work: &mut Work, step: fn(&[u8]) -> Option<Vec<u8>>) -> Result<(), OverBudget> {
    for i in 0..set.len() {
        let Some(path) = set.get(i) else { break };
        work.spend(path.len())?;
        if let Some(changed) = step(path) {
            add(set, work, changed)?;
        }
    }
    Ok(())
}

/// Step 1: `path`, starting with `/`.
fn rooted(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 1);
    if !path.starts_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out
}

fn position(bytes: &[u8], byte: u8) -> usize {
    bytes.iter().position(|&b| b == byte).unwrap_or(bytes.len())
}

/// `scheme://authority/path` -> `/path` (`/` when there is none).
fn absolute_form_path(path: &[u8]) -> Option<&[u8]> {
    let colon = path.windows(3).position(|w| w == b"://")?;
    let scheme = &path[..colon];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !is_scheme {
        return None;
    }
    let rest = &path[colon + 3..];
    Some(rest.iter().position(|&b| b == b'/').map_or(&b"/"[..], |at| &rest[at..]))
}

/// The bytes before the first `byte`, if there is one.
fn cut_at(path: &[u8], byte: u8) -> Option<Vec<u8>> {
    let at = path.iter().position(|&b| b == byte)?;
    Some(path[..at].to_vec())
}

/// Step 4: none, once, twice, and once and twice keeping `%2F`/`%5C`.
fn decode_all(set: &mut Vec<Vec<u8>>, work: &mut Work) -> Result<(), OverBudget> {
    for i in 0..set.len() {
        let Some(path) = set.get(i) else { break };
        work.spend(path.len())?;
        if !may_decode(path) {
            continue;
        }
        let (once, once_kept) = (decode(path, false), decode(path, true));
        work.spend(once.len() + once_kept.len())?;
        let twice = may_decode(&once).then(|| decode(&once, false));
        let twice_kept = may_decode(&once_kept).then(|| decode(&once_kept, true));
        for path in [Some(once), Some(once_kept), twice, twice_kept].into_iter().flatten() {
            add(set, work, path)?;
        }
    }
    Ok(())
}

/// Whether decoding could change `path`.
fn may_decode(path: &[u8]) -> bool {
    path.contains(&b'%')
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One round of percent-decoding (`%` not followed by two hex digits stays a byte).
/// `keep_slashes`: `%2F` and `%5C` stay as they are.
fn decode(path: &[u8], keep_slashes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    // The bytes up to each `%` are copied as a run.
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
        match (hex(rest.get(1)), hex(rest.get(2))) {
            (Some(high), Some(low)) => {
                let byte = high << 4 | low;
                if keep_slashes && (byte == b'/' || byte == b'\\') {
                    out.extend_from_slice(&rest[..3]);
                } else {
                    out.push(byte);
                }
                rest = &rest[3..];
            }
            _ => {
                out.push(b'%');
                rest = &rest[1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

/// Step 5: each two-byte overlong form (`C0`/`C1` and a continuation byte) as the
/// ASCII byte it encodes.
fn overlong(path: &[u8]) -> Option<Vec<u8>> {
    let is_overlong = |w: &[u8]| matches!(w, [0xC0 | 0xC1, 0x80..=0xBF]);
    if !path.windows(2).any(is_overlong) {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if let (0xC0 | 0xC1, Some(&next @ 0x80..=0xBF)) = (b, path.get(i + 1)) {
            out.push((b & 1) << 6 | (next & 0x3F));
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// Step 7: without tab, CR and LF.
fn tabs(path: &[u8]) -> Option<Vec<u8>> {
    let is_tab = |b: &u8| matches!(b, b'\t' | b'\r' | b'\n');
    path.iter().any(is_tab).then(|| path.iter().copied().filter(|b| !is_tab(b)).collect())
}

/// Step 8: `\` as `/`.
fn backslashes(path: &[u8]) -> Option<Vec<u8>> {
    path.contains(&b'\\').then(|| path.iter().map(|&b| if b == b'\\' { b'/' } else { b }).collect())
}

/// Step 3: every segment without its `;` parameters.
fn parameters(path: &[u8]) -> Option<Vec<u8>> {
    if !path.contains(&b';') {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    let mut in_parameters = false;
    for &b in path {
        match b {
            b'/' => {
                in_parameters = false;
                out.push(b);
            }
            b';' => in_parameters = true,
            _ if !in_parameters => out.push(b),
            _ => {}
        }
    }
    Some(out)
}

/// Runs of `/` as one.
fn merge_slashes(path: &[u8]) -> Vec<u8> {
    if !path.windows(2).any(|pair| pair == b"//") {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b != b'/' || out.last() != Some(&b'/') {
            out.push(b);
        }
    }
    out
}

fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
}

/// RFC 3986 §5.2.4 on an absolute path: `.` dropped, `..` drops the segment before it
/// (none at the root), a path ending in a dot segment keeps a trailing `/`. Empty
/// segments count as segments, as the RFC has it.
fn resolve_dots(path: &[u8]) -> Vec<u8> {
    let body = path.strip_prefix(b"/").unwrap_or(path);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut segments = body.split(|&b| b == b'/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"." => trailing_slash = last,
            b".." => {
                kept.pop();
                trailing_slash = last;
            }
            _ => kept.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn paths(target: &[u8]) -> Vec<String> {
        match interpretations(target) {
            Interpretations::Paths(paths) => paths,
            Interpretations::TooMany => panic!("{}: too many", String::from_utf8_lossy(target)),
        }
    }

    fn has(target: &str, expected: &str) {
        let got = paths(target.as_bytes());
        assert!(got.iter().any(|p| p == expected), "{target:?} -> {got:?} lacks {expected:?}");
    }

    #[test]
    fn a_canonical_path_is_its_only_interpretation() {
        for target in ["/", "/internal/metrics", "/a/b./c/", "/api/health?x=/../%2f", "/x.y/~z"] {
            let path = &target[..target.find('?').unwrap_or(target.len())];
            assert_eq!(paths(target.as_bytes()), [path], "{target}");
        }
    }

    #[test]
    fn each_spelling_reads_as_the_path_it_hides() {
        for target in [
            "//internal/metrics",
            "/internal/./metrics",
            "/x/../internal/metrics",
            "/%69nternal/metrics",
            "/%2569nternal/metrics",
            "/internal%2fmetrics",
            "/internal%5Cmetrics",
            "/internal;v=1/metrics",
            "/internal\\metrics",
            "/x/%2e%2e/internal/metrics",
            "/x/%c0%ae%c0%ae/internal/metrics",
            "/x/..;/internal/metrics",
            "/internal/metrics#/../../x",
            "/internal/metrics%00/../../x",
            "/internal\t/metrics",
            "http://example.com/x/../internal/metrics",
            "internal/metrics",
            "/x/.%2e/internal/metrics",
        ] {
            has(target, "/internal/metrics");
        }
    }

    #[test]
    fn dot_segments_are_also_kept_and_resolved_with_or_without_merging() {
        // Kept: a router that does not resolve them mounts this under /internal.
        has("/internal/../x", "/internal/../x");
        has("/internal/../x", "/x");
        // Resolved before merging (normalize_path alone), and after.
        has("/internal/a//../../b", "/internal/b");
        has("/internal/a//../../b", "/b");
        has("/..", "/");
        has("/a/b/..", "/a/");
        has("/a/./", "/a/");
        // Encoded slashes kept inside a segment: one segment under /internal.
        has("/%69nternal/a%2f..%2f..", "/internal/a%2f..%2f..");
        has("/%69nternal/a%2f..%2f..", "/");
    }

    #[test]
    fn every_interpretation_starts_with_a_slash_and_has_no_empty_segment() {
        for target in ["", "*", "?", "#", "//", "/;/", "\\\\", "%2f%2f", "/\0/", "http://h", "a//b/../"] {
            for path in paths(target.as_bytes()) {
                assert!(path.starts_with('/') && !path.contains("//"), "{target:?} -> {path:?}");
            }
        }
        assert_eq!(paths(b"http://host"), ["/http:/host", "/"]);
        assert_eq!(paths(b"*"), ["/*"]);
    }

    /// Generated targets from the pieces of the path-confusion table: the work stays
    /// bounded, nothing panics, and each piece's effect is among the interpretations.
    #[test]
    fn generated_targets_stay_bounded() {
        const PIECES: [&str; 16] = [
            "/", "internal", "..", ".", "%2f", "%2e%2e", ";v=1", "\\", "//", "%00", "#", "%252f", "%69", "\t",
            "%c0%ae", "?",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut most = 0;
        for _ in 0..4000 {
            let mut target = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                target.push_str(PIECES[(seed >> 32) as usize % PIECES.len()]);
            }
            match interpretations(target.as_bytes()) {
                Interpretations::Paths(paths) => {
                    assert!(!paths.is_empty() && paths.len() <= 3840, "{target:?}: {}", paths.len());
                    most = most.max(paths.len());
                    for path in &paths {
                        assert!(path.starts_with('/') && !path.contains("//"), "{target:?} -> {path:?}");
                    }
                }
                Interpretations::TooMany => panic!("{target:?} is short"),
            }
        }
        assert!(most >= 20, "the pieces combine: at most {most} interpretations");
    }

    #[test]
    fn hostile_lengths_are_cut_off_by_the_work_limit() {
        let long = "/a%2f..;x\\%252e#\0".repeat(2000);
        assert_eq!(interpretations(long.as_bytes()), Interpretations::TooMany);
        let plain = format!("/{}", "a".repeat(WORK_LIMIT * 2));
        assert_eq!(interpretations(plain.as_bytes()), Interpretations::TooMany);
        // A long path with one escape is still read.
        let spaced = format!("/internal/{}%20x", "a".repeat(2000));
        assert_eq!(paths(spaced.as_bytes()).len(), 2);
    }
}
