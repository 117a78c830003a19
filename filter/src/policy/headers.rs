//! Header policy: which names are stripped, sent to the auth service, injected
//! upstream or passed to the client. Names are compared lower-cased, as Envoy
//! stores them; values stay raw bytes until they must become text.

use std::borrow::Cow;

use crate::error::ConfigError;

/// Headers a filter must never copy: Envoy owns framing and connection handling.
const CONNECTION_HEADERS: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// A set of lower-case header names, plus Istio-style patterns where allowed: `x-nebula-*`
/// (prefix) and `*-token` (suffix), as in MeshConfig `envoyExtAuthzHttp` header lists.
/// A pattern never matches a pseudo-header (`:path`) or a connection-level header, so
/// `*-encoding` cannot strip or copy `transfer-encoding`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNames {
    exact: Vec<String>,
    prefixes: Vec<String>,
    suffixes: Vec<String>,
    /// Bit `n` (63: 63 and longer) set when an exact name has `n` bytes: most names of a
    /// request are told apart by their length alone (every header, every request).
    lengths: u64,
    /// `_` and `-` compare equal (see [`HeaderNames::reading_underscores_as_dashes`]).
    underscores_as_dashes: bool,
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl HeaderNames {
    /// Parses a config list; `allow_patterns` permits one leading or trailing `*`.
    pub fn parse(field: &str, names: &[String], allow_patterns: bool) -> Result<Self, ConfigError> {
        let mut set = HeaderNames::default();
        for (i, raw) in names.iter().enumerate() {
            let name = raw.to_ascii_lowercase();
            let at = || format!("{field}[{i}]");
            let (stem, list) = if let Some(stem) = name.strip_suffix('*') {
                (stem, &mut set.prefixes)
            } else if let Some(stem) = name.strip_prefix('*') {
                (stem, &mut set.suffixes)
            } else {
                (name.as_str(), &mut set.exact)
            };
            let is_pattern = stem.len() != name.len();
            if is_pattern && !allow_patterns {
                let message = format!("{raw:?} is not a valid header name (patterns are not allowed here)");
                return Err(ConfigError { field: at(), message });
            }
            if stem.contains('*') {
                let message = format!("{raw:?}: a * is only allowed once, at the start or at the end");
                return Err(ConfigError { field: at(), message });
            }
            if !is_token(stem) {
                return Err(ConfigError { field: at(), message: format!("{raw:?} is not a valid header name") });
            }
            if !list.iter().any(|n| n == stem) {
                list.push(stem.to_string());
            }
        }
        set.lengths = set.exact.iter().fold(0, |bits, n| bits | length_bit(n.len()));
        Ok(set)
    }

    /// The set, with `_` and `-` read as the same byte in every name and pattern: the strip
    /// list. Envoy keeps `x_nebula_actor_id` apart from `x-nebula-actor-id`, but CGI/WSGI
    /// servers (RFC 3875 §4.1.18: both become `HTTP_X_NEBULA_ACTOR_ID`), frameworks built
    /// on them and proxies that map `_` to `-` hand the application one header for both.
    pub fn reading_underscores_as_dashes(mut self) -> Self {
        self.underscores_as_dashes = true;
        self
    }

    /// Like [`HeaderNames::parse`], for headers the filter writes (upstream or to the client).
    pub fn parse_injectable(field: &str, names: &[String]) -> Result<Self, ConfigError> {
        let set = HeaderNames::parse(field, names, true)?;
        if let Some(i) = set.exact.iter().position(|n| is_connection_header(n)) {
            // Report the index the user wrote, not our de-duplicated one.
            let name = &set.exact[i];
            let at = names.iter().position(|n| n.eq_ignore_ascii_case(name)).unwrap_or(i);
            return Err(ConfigError {
                field: format!("{field}[{at}]"),
                message: format!("{name:?} is a connection-level header Envoy manages; it cannot be copied"),
            });
        }
        Ok(set)
    }

    pub fn extend(&mut self, other: &HeaderNames) {
        for (mine, theirs) in [
            (&mut self.exact, &other.exact),
            (&mut self.prefixes, &other.prefixes),
            (&mut self.suffixes, &other.suffixes),
        ] {
            for name in theirs {
                if !mine.contains(name) {
                    mine.push(name.clone());
                }
            }
        }
        self.lengths |= other.lengths;
    }

    /// Whether the set holds no name and no pattern.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.suffixes.is_empty()
    }

    /// Whether `name` (any case; `_` as `-` if the set reads them so) is in the set.
    pub fn contains(&self, name: &str) -> bool {
        let fold = self.underscores_as_dashes;
        let same = |a: &[u8], b: &[u8]| if fold { eq_folded(a, b) } else { a.eq_ignore_ascii_case(b) };
        let bytes = name.as_bytes();
        let starts = |p: &String| bytes.len() >= p.len() && same(&bytes[..p.len()], p.as_bytes());
        let ends = |s: &String| bytes.len() >= s.len() && same(&bytes[bytes.len() - s.len()..], s.as_bytes());
        // The pattern match first: it rules out nearly every name before the list of
        // connection headers is scanned (every header of every request goes through here).
        (self.lengths & length_bit(name.len()) != 0 && self.exact.iter().any(|n| same(n.as_bytes(), bytes)))
            || ((self.prefixes.iter().any(starts) || self.suffixes.iter().any(ends))
                && !name.starts_with(':')
                && !is_connection_header(name))
    }
}

/// `a` and `b` are the same name once letters are lower-cased and `_` is read as `-`.
fn eq_folded(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether `name` (any case) is a connection-level header the filter must never write.
pub fn is_connection_header(name: &str) -> bool {
    CONNECTION_HEADERS.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// RFC 9110 `token`: what a header field name may be. Rejects pseudo-headers (`:path`).
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `bytes` as text. ASCII (every header name, nearly every value) is checked a word at a
/// time, which costs a fraction of `from_utf8` on short strings (measured with `make bench-callgrind`:
/// the names of every request); anything else gets the full UTF-8 check.
pub fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// One header of a map as the host hands it over: owned (`(String, Vec<u8>)`), or
/// borrowed from the host's serialized map (`(&str, &[u8])`, see flow/header_map.rs),
/// which spares the filter two allocations per header on every request.
pub trait Header {
    fn name(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl<N: AsRef<str>, V: AsRef<[u8]>> Header for (N, V) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }

    fn value(&self) -> &[u8] {
        self.1.as_ref()
    }
}

/// The value of the first `name` (exact, lower-case) header.
pub fn first<'h, H: Header>(headers: &'h [H], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name() == name).map(Header::value)
}

/// The distinct names in `headers` that `set` matches, lower-cased, in first-seen order:
/// what to remove, with one host call per name actually present.
pub fn present<'h, H: Header>(headers: &'h [H], set: &HeaderNames) -> Vec<&'h str> {
    let mut found: Vec<&str> = Vec::new();
    for name in headers.iter().map(Header::name) {
        if set.contains(name) && !found.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            found.push(name);
        }
    }
    found
}

/// Every `(name, value)` whose name `set` matches, in order, all values kept.
pub fn select<'h, H: Header>(headers: &'h [H], set: &HeaderNames) -> Vec<(&'h str, &'h [u8])> {
    headers
        .iter()
        .filter(|h| !h.name().starts_with(':') && set.contains(h.name()))
        .map(|h| (h.name(), h.value()))
        .collect()
}

/// Every value of `name` in `headers` (the first of them first) as one line, as ext_authz
/// sends a repeated header: the values joined with `,` in their order (RFC 9110 §5.3),
/// `cookie` too (Envoy's check request keeps one value per name, recorded in
/// tests/tests/ext_authz_headers.rs). `None` if a value is not text.
pub fn joined<'h, H: Header>(headers: &'h [H], name: &str) -> Option<Cow<'h, str>> {
    let mut values = headers.iter().filter(|h| h.name().eq_ignore_ascii_case(name)).map(|h| text(h.value()));
    let first = values.next().flatten()?;
    let mut line: Cow<'h, str> = first.into();
    for value in values {
        let line = line.to_mut();
        line.push(',');
        line.push_str(value?);
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn names(list: &[&str], prefix: bool) -> HeaderNames {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        HeaderNames::parse("f", &list, prefix).unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn matching_ignores_case_and_honours_prefixes() {
        let set = names(&["X-Nebula-Actor-Id", "x-team-*"], true);
        assert!(set.contains("x-nebula-actor-id"));
        assert!(set.contains("X-NEBULA-ACTOR-ID"));
        assert!(set.contains("x-team-"));
        assert!(set.contains("X-Team-Role"));
        assert!(!set.contains("x-nebula-actor-idx"));
        assert!(!set.contains("x-tea"));
    }

    #[test]
    fn exact_names_of_every_length_match_after_extend() {
        let long = "x-".repeat(40);
        let mut set = names(&["a", &long], false);
        set.extend(&names(&["x-nebula-actor-id"], false));
        for name in ["a", "A", long.as_str(), "X-Nebula-Actor-Id"] {
            assert!(set.contains(name), "{name}");
        }
        for name in ["b", "ab", &long[..long.len() - 1], &format!("{long}x"), "x-nebula-actor-ix"] {
            assert!(!set.contains(name), "{name}");
        }
        assert!(!HeaderNames::default().contains("a"));
    }

    #[test]
    fn present_lists_each_name_once() {
        let set = names(&["x-nebula-actor-id", "x-nebula-actor-permissions"], false);
        let headers = h(&[
            (":path", "/"),
            ("x-nebula-actor-id", "a"),
            ("accept", "*/*"),
            ("X-Nebula-Actor-Id", "b"),
            ("x-nebula-actor-permissions", "admin"),
        ]);
        assert_eq!(present(&headers, &set), vec!["x-nebula-actor-id", "x-nebula-actor-permissions"]);
        assert!(present(&h(&[("accept", "x")]), &set).is_empty());
    }

    #[test]
    fn select_keeps_every_value_and_skips_pseudo_headers() {
        let set = names(&["authorization", "origin"], false);
        let headers = h(&[(":authority", "x"), ("authorization", "a"), ("cookie", "c"), ("authorization", "b")]);
        assert_eq!(select(&headers, &set), vec![("authorization", &b"a"[..]), ("authorization", &b"b"[..])]);
    }

    #[test]
    fn suffix_patterns_match_name_endings() {
        let set = names(&["*-Token", "x-team-*"], true);
        assert!(set.contains("x-auth-token"));
        assert!(set.contains("X-AUTH-TOKEN"));
        assert!(set.contains("-token"));
        assert!(!set.contains("x-auth-tokens"));
        assert!(!set.contains("token"));
        assert!(set.contains("x-team-role"));
    }

    /// `*-encoding` must not strip or copy `transfer-encoding`; `*path` must not touch `:path`.
    #[test]
    fn patterns_never_match_pseudo_or_connection_headers() {
        let set = names(&["*-encoding", "*path", "content-*"], true);
        assert!(!set.contains("transfer-encoding"));
        assert!(!set.contains(":path"));
        assert!(!set.contains("content-length"));
        assert!(set.contains("accept-encoding"));
        assert!(set.contains("content-type"));
        assert!(set.contains("x-path"));
        let headers = h(&[(":path", "/"), ("transfer-encoding", "chunked"), ("x-path", "a")]);
        assert_eq!(present(&headers, &set), vec!["x-path"]);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = |v: &[&str], allow| HeaderNames::parse("f", &list(v), allow).unwrap_err().to_string();
        assert_eq!(
            err(&["x-*"], false),
            "invalid plugin configuration: f[0]: \"x-*\" is not a valid header name (patterns are not allowed here)"
        );
        assert_eq!(
            err(&["a", "*x*"], true),
            "invalid plugin configuration: f[1]: \"*x*\": a * is only allowed once, at the start or at the end"
        );
        assert_eq!(
            err(&["x*y"], true),
            "invalid plugin configuration: f[0]: \"x*y\": a * is only allowed once, at the start or at the end"
        );
        assert_eq!(
            err(&["**"], true),
            "invalid plugin configuration: f[0]: \"**\": a * is only allowed once, at the start or at the end"
        );
        assert_eq!(err(&["*"], true), "invalid plugin configuration: f[0]: \"*\" is not a valid header name");
        assert_eq!(err(&["*:path"], true), "invalid plugin configuration: f[0]: \"*:path\" is not a valid header name");
        let conn = HeaderNames::parse_injectable("f", &list(&["x-*", "TE"])).unwrap_err().to_string();
        assert_eq!(conn, "invalid plugin configuration: f[1]: \"te\" is a connection-level header Envoy manages; it cannot be copied");
    }

    /// Every spelling of `name`: each `-` as `-` or `_`, each letter in either case
    /// (names up to 16 bytes: all 2^n choices; longer ones: 4096 of them, every separator
    /// choice among them).
    fn spellings(name: &str) -> Vec<String> {
        let flippable: Vec<usize> =
            name.bytes().enumerate().filter(|(_, b)| b.is_ascii_alphabetic() || *b == b'-').map(|(i, _)| i).collect();
        let dashes: Vec<usize> = flippable.iter().copied().filter(|&i| name.as_bytes()[i] == b'-').collect();
        let all = 1u64 << flippable.len().min(12);
        (0..all)
            .map(|mask| {
                // Long names: a multiplicative hash spreads `mask` over every position,
                // and the low bits always pick the separators.
                let bits = if flippable.len() > 12 { mask.wrapping_mul(0x9e37_79b9_7f4a_7c15) } else { mask };
                let mut out = name.as_bytes().to_vec();
                for (bit, &at) in flippable.iter().enumerate() {
                    if bits >> (bit % 64) & 1 == 1 {
                        out[at] = if out[at] == b'-' { b'_' } else { out[at].to_ascii_uppercase() };
                    }
                }
                for (bit, &at) in dashes.iter().enumerate() {
                    out[at] = if mask >> bit & 1 == 1 { b'_' } else { b'-' };
                }
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    fn strip_set(list: &[&str]) -> HeaderNames {
        names(list, true).reading_underscores_as_dashes()
    }

    /// The strip list reads `_` as `-`: every case and separator spelling of every identity
    /// header is in it; a set that does not fold (what is copied, not stripped) keeps only
    /// the case-insensitive matches.
    #[test]
    fn the_strip_list_matches_every_spelling_with_underscores_or_dashes() {
        let identity = crate::policy::auth::IDENTITY_HEADERS;
        let strip = strip_set(&identity);
        let copied = names(&identity, true);
        for name in identity {
            let all = spellings(name);
            assert!(all.len() >= 4096, "{name}: {} spellings", all.len());
            assert!(all.iter().any(|s| s.contains('_')) && all.iter().any(|s| s.contains('-')));
            for spelling in &all {
                assert!(strip.contains(spelling), "{spelling} not stripped");
                assert_eq!(copied.contains(spelling), !spelling.contains('_'), "{spelling} in the copied set");
            }
        }
    }

    /// Prefix and suffix patterns fold too, both ways (a pattern written with `_` matches
    /// `-`), and folding never widens a name: near-misses of every length stay out.
    #[test]
    fn patterns_fold_underscores_and_near_misses_stay_out() {
        let strip = strip_set(&["x-nebula-*", "*-token", "x_custom"]);
        for name in spellings("x-nebula-team").iter().chain(&spellings("x-nebula-")).chain(&spellings("x-auth-token")) {
            assert!(strip.contains(name), "{name} not stripped");
        }
        for name in ["x-custom", "X_CUSTOM", "x_Custom"] {
            assert!(strip.contains(name), "{name} not stripped");
        }
        for name in [
            "x-nebula",
            "x_nebula",
            "x-nebul_",
            "xxnebula-team",
            "x.nebula-team",
            "x-tokens",
            "-tokenx",
            "x-customs",
            "x-custo",
        ] {
            assert!(!strip.contains(name), "{name} stripped");
        }
        let exact = strip_set(&crate::policy::auth::IDENTITY_HEADERS);
        for name in crate::policy::auth::IDENTITY_HEADERS {
            let (shorter, longer) = (&name[..name.len() - 1], format!("{name}_"));
            for near in [shorter.to_string(), longer, name.replace('-', "."), name.replacen('x', "y", 1)] {
                assert!(!exact.contains(&near), "{near} stripped");
            }
        }
        // Pseudo and connection headers are still never matched by a pattern.
        let encoding = strip_set(&["*-encoding", "*path"]);
        assert!(!encoding.contains("transfer-encoding") && !encoding.contains(":path"));
        assert!(encoding.contains("accept_encoding"));
        // Extending keeps the folding (the injected headers join the strip list so).
        let mut extended = strip_set(&["x-a"]);
        extended.extend(&names(&["x-user"], false));
        assert!(extended.contains("X_USER"));
    }

    /// Each spelling Envoy keeps apart is removed by its own name.
    #[test]
    fn present_lists_underscore_and_dash_spellings_apart() {
        let strip = strip_set(&["x-nebula-actor-id"]);
        let headers = h(&[
            ("x-nebula-actor-id", "a"),
            ("x_nebula_actor_id", "b"),
            ("X_Nebula_Actor_Id", "c"),
            ("x-nebula_actor-id", "d"),
        ]);
        assert_eq!(present(&headers, &strip), vec!["x-nebula-actor-id", "x_nebula_actor_id", "x-nebula_actor-id"]);
    }

    #[test]
    fn names_are_deduplicated() {
        let set = names(&["a", "A", "a"], false);
        assert_eq!(set.exact, vec!["a".to_string()]);
    }
}
