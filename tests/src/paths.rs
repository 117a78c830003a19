//! Loader for `tests/data/paths.tsv`, the path-confusion table shared with the filter's
//! unit tests. `\xHH` in a request target stands for one raw byte.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No callout; reaches the upstream.
    Public,
    /// Goes to the auth service or is rejected by Envoy; never reaches the upstream
    /// without a callout.
    Protected,
}

#[derive(Clone, Debug)]
pub struct PathCase {
    pub expected: Expected,
    /// The request target as raw bytes.
    pub target: Vec<u8>,
    pub note: String,
    /// 1-based line in paths.tsv.
    pub line: usize,
}

impl fmt::Display for PathCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "paths.tsv:{} {:?} `{}` ({})",
            self.line,
            self.expected,
            crate::client::escape(&self.target),
            self.note
        )
    }
}

pub fn tsv_path() -> PathBuf {
    crate::repo_root().join("tests").join("data").join("paths.tsv")
}

/// Which public templates a table's expectation is for (tests/data/paths_prefix.tsv).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Templates {
    /// The default `/{prefix}/events/out` and `/{prefix}/task_runs/subscriptions/scheduled`.
    Default,
    /// The Prefect preset's exact shapes (`=/api/events/out`, ...).
    Tight,
}

/// The rows of paths_prefix.tsv, with the expectation for `templates`.
pub fn load_prefix(templates: Templates) -> Vec<PathCase> {
    let path = crate::repo_root().join("tests").join("data").join("paths_prefix.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (seed, rest) = line.split_once('\t').unwrap_or_else(|| panic!("paths_prefix.tsv:{}: columns", i + 1));
        let (tight, rest) = rest.split_once('\t').unwrap_or_else(|| panic!("paths_prefix.tsv:{}: columns", i + 1));
        let chosen = if templates == Templates::Default { seed } else { tight };
        let mut case =
            parse(&format!("{chosen}\t{rest}")).pop().unwrap_or_else(|| panic!("paths_prefix.tsv:{}", i + 1));
        case.line = i + 1;
        cases.push(case);
    }
    cases
}

/// Every row of paths.tsv.
pub fn load() -> Vec<PathCase> {
    let path = tsv_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse(&text)
}

/// Parses the table text; panics on a malformed row (the table is test input).
pub fn parse(text: &str) -> Vec<PathCase> {
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let expected = match cols.next() {
            Some("public") => Expected::Public,
            Some("protected") => Expected::Protected,
            other => panic!("paths.tsv:{}: bad expectation {other:?}", i + 1),
        };
        let target = cols.next().unwrap_or_else(|| panic!("paths.tsv:{}: missing request target", i + 1));
        cases.push(PathCase {
            expected,
            target: unescape(target),
            note: cols.next().unwrap_or("").to_owned(),
            line: i + 1,
        });
    }
    cases
}

/// Sends every row of paths.tsv through `env` with `Bearer deny` (the mock answers 401):
/// `public` rows must reach the upstream unchanged without a callout; `protected` rows
/// must never reach the upstream, and be either sent to the auth service (401) or
/// rejected by Envoy itself (a 4xx without callout, or over HTTP/2 a stream reset by its
/// codec). Over [`crate::Proto::H2`] each target goes out byte for byte as `:path`.
/// Returns the report (one line per row) and the failing lines; empty failures mean no
/// bypass.
pub fn replay(env: &crate::Env) -> (Vec<String>, Vec<String>) {
    replay_cases(env, &load())
}

/// [`replay`] over `cases` (e.g. [`load_prefix`]'s).
pub fn replay_cases(env: &crate::Env, cases: &[PathCase]) -> (Vec<String>, Vec<String>) {
    replay_with(env, cases, None, |case| case.expected)
}

/// [`replay_cases`] from the local address `source` (HTTP/1.1), with `expect` deciding
/// each row's expectation (e.g. a range-restricted public path is protected from outside).
pub fn replay_with(
    env: &crate::Env,
    cases: &[PathCase],
    source: Option<std::net::IpAddr>,
    expect: impl Fn(&PathCase) -> Expected,
) -> (Vec<String>, Vec<String>) {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let auth_before = env.auth.count();
        let up_before = env.upstream.count();
        let result = match env.proto {
            crate::Proto::H1 => {
                let bytes = crate::RawRequest::get(&case.target).bearer("deny").to_bytes();
                crate::client::send_raw_from(source, env.port, &bytes)
            }
            crate::Proto::H2 => {
                crate::h2_client::send_raw_path(env.port, &case.target, &[("authorization", "Bearer deny")])
            }
        };
        let called_out = env.auth.count() > auth_before;
        let reached = env.upstream.count() > up_before;
        let expected = expect(case);
        let (outcome, ok) = match (&result, expected) {
            (Err(e), Expected::Public) => (format!("no response: {e}"), false),
            (Err(e), Expected::Protected) => {
                (format!("connection closed or stream reset without a response ({e})"), !reached)
            }
            (Ok(resp), Expected::Public) => {
                let got_path = reached.then(|| env.upstream.last().path);
                let ok = resp.status == 200
                    && resp.proxied()
                    && !called_out
                    && got_path.as_deref().map(str::as_bytes) == Some(case.target.as_slice());
                (format!("{} upstream path {:?}, callout {called_out}", resp.status, got_path), ok)
            }
            (Ok(resp), Expected::Protected) if reached => {
                (format!("REACHED THE UPSTREAM (callout: {called_out}) -> {}", resp.status), false)
            }
            (Ok(resp), Expected::Protected) if called_out => {
                (format!("auth consulted -> {}", resp.status), !resp.proxied() && resp.status == 401)
            }
            (Ok(resp), Expected::Protected) => (
                format!("rejected by Envoy without callout -> {} {:?}", resp.status, resp.text().trim()),
                !resp.proxied() && (400..500).contains(&resp.status),
            ),
        };
        let line = format!("{:<9} {:<62} {}", format!("{expected:?}"), crate::client::escape(&case.target), outcome);
        if !ok {
            failures.push(format!("{line}  (line {}, {}; reached upstream: {reached})", case.line, case.note));
        }
        report.push(line);
    }
    (report, failures)
}

/// `\xHH` -> one raw byte; everything else literal.
pub fn unescape(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 4 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_only_hex_escapes() {
        assert_eq!(unescape(r"/a\x00b"), b"/a\x00b");
        assert_eq!(unescape(r"/hooks\..\api"), br"/hooks\..\api");
        assert_eq!(unescape(r"/\xc3\xa9"), b"/\xc3\xa9");
        assert_eq!(unescape("%2e"), b"%2e");
    }

    #[test]
    fn prefix_table_loads_with_both_expectations() {
        let seed = load_prefix(Templates::Default);
        let tight = load_prefix(Templates::Tight);
        assert_eq!(seed.len(), tight.len());
        let differ = seed.iter().zip(&tight).filter(|(a, b)| a.expected != b.expected).count();
        assert!(differ >= 10, "the table exists to show where the templates differ ({differ} rows)");
        assert!(tight
            .iter()
            .any(|c| c.target == b"/api/admin/settings/events/out" && c.expected == Expected::Protected));
    }

    #[test]
    fn table_loads() {
        let cases = load();
        assert_eq!(cases.len(), 66, "paths.tsv should list 66 targets");
        assert!(cases.iter().any(|c| c.target == b"/api/health\x00/../flows"));
        assert!(cases.iter().any(|c| c.target == b"*"));
    }
}
