//! Header policy: which names are stripped, sent to the auth service, injected
//! upstream or passed to the client. Names are compared lower-cased, as Envoy
//! stores them; values stay raw bytes until they must become text.

use crate::config::ConfigError;

/// Headers a filter must never copy: Envoy owns framing and connection handling.
const CONNECTION_HEADERS: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// A set of lower-case header names, plus name prefixes (`x-nebula-*`) where allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNames {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl HeaderNames {
    /// Parses a config list; `allow_prefix` permits a trailing `*` (strip lists only).
    pub fn parse(field: &str, names: &[String], allow_prefix: bool) -> Result<Self, ConfigError> {
        let mut set = HeaderNames::default();
        for (i, raw) in names.iter().enumerate() {
            let name = raw.to_ascii_lowercase();
            let at = || format!("{field}[{i}]");
            let (stem, is_prefix) = match name.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (name.as_str(), false),
            };
            if is_prefix && !allow_prefix {
                let message =
                    format!("{raw:?} is not a valid header name (a trailing * is only allowed in strip_headers)");
                return Err(ConfigError { field: at(), message });
            }
            if !is_token(stem) {
                return Err(ConfigError { field: at(), message: format!("{raw:?} is not a valid header name") });
            }
            let list = if is_prefix { &mut set.prefixes } else { &mut set.exact };
            if !list.iter().any(|n| n == stem) {
                list.push(stem.to_string());
            }
        }
        Ok(set)
    }

    /// Like [`HeaderNames::parse`], for headers the filter writes (upstream or to the client).
    pub fn parse_injectable(field: &str, names: &[String]) -> Result<Self, ConfigError> {
        let set = HeaderNames::parse(field, names, false)?;
        if let Some(i) = set.exact.iter().position(|n| CONNECTION_HEADERS.contains(&n.as_str())) {
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
        for name in &other.exact {
            if !self.exact.contains(name) {
                self.exact.push(name.clone());
            }
        }
        for prefix in &other.prefixes {
            if !self.prefixes.contains(prefix) {
                self.prefixes.push(prefix.clone());
            }
        }
    }

    /// Whether `name` (any case) is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.exact.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.prefixes.iter().any(|p| starts_with_ignore_case(name, p))
    }
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// RFC 9110 `token`: what a header field name may be. Rejects pseudo-headers (`:path`).
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One header of a map as the host hands it over: owned (`(String, Vec<u8>)`), or
/// borrowed from the host's serialized map (`(&str, &[u8])`, see [`crate::header_map`]),
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
    fn names_are_deduplicated() {
        let set = names(&["a", "A", "a"], false);
        assert_eq!(set.exact, vec!["a".to_string()]);
    }
}
