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

/// Whether `name` (any case) is a connection-level header the filter must never write.
pub fn is_connection_header(name: &str) -> bool {
    CONNECTION_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The distinct names in `headers` that `set` matches, lower-cased, in first-seen order:
/// what to remove, with one host call per name actually present.
pub fn present<'h, V>(headers: &'h [(String, V)], set: &HeaderNames) -> Vec<&'h str> {
    let mut found: Vec<&str> = Vec::new();
    for (name, _) in headers {
        if set.contains(name) && !found.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            found.push(name);
        }
    }
    found
}

/// Every `(name, value)` whose name `set` matches, in order, all values kept.
pub fn select<'h>(headers: &'h [(String, Vec<u8>)], set: &HeaderNames) -> Vec<(&'h str, &'h [u8])> {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':') && set.contains(name))
        .map(|(name, value)| (name.as_str(), value.as_slice()))
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
