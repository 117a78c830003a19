//! Where a token is read from (`jwt.from_headers`, `from_cookies`, `from_params`), and
//! how a verified token is taken out of the request before the upstream sees it
//! (`jwt.forward: false`; a query parameter always).
//!
//! Only the configured sources are looked at, in order: with the default (the
//! `Authorization` header) no cookie or query string is ever parsed, and nothing is
//! removed, so the request path does no extra work. Pure: the host side applies the
//! [`Removal`] (flow/steps/jwt.rs).

use serde::Deserialize;

use crate::error::ConfigError;
use crate::policy::headers::{Header, HeaderNames};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderSource {
    name: String,
    value_prefix: Option<String>,
}

/// One place a token may be: the first one present in a request is the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header (lower-case name), with a case-insensitive prefix to remove (`Bearer `).
    Header {
        name: String,
        prefix: String,
    },
    Cookie(String),
    /// A query parameter of `:path` (`access_token`), matched by its name as sent or
    /// percent-decoded.
    Param(String),
}

/// The configured sources, and whether a verified token stays in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub list: Vec<Source>,
    /// `jwt.forward`: keep the token in its header or cookie for the upstream.
    pub forward: bool,
    /// `!forward` or a query source: worked out once, so the default costs nothing.
    may_remove: bool,
}

/// What to change in the request so that the upstream does not see the verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal<'s> {
    /// Remove every copy of this header.
    Header(&'s str),
    /// Replace the `cookie` header(s) by this one (the other cookies), or remove it.
    Cookie(Option<String>),
    /// The new `:path`: the same path, the query without the parameter.
    Path(String),
}

impl Sources {
    pub(crate) fn parse(
        headers: Option<Vec<RawHeaderSource>>,
        cookies: Option<Vec<String>>,
        params: Option<Vec<String>>,
        forward: Option<bool>,
    ) -> Result<Sources, ConfigError> {
        let headers = match (&headers, &cookies, &params) {
            // Istio's and jwt_authn's default: `Authorization: Bearer <token>`.
            (None, None, None) => {
                vec![RawHeaderSource { name: "authorization".into(), value_prefix: Some("Bearer ".into()) }]
            }
            _ => headers.unwrap_or_default(),
        };
        let mut list = Vec::new();
        for (i, h) in headers.into_iter().enumerate() {
            let field = format!("jwt.from_headers[{i}].name");
            HeaderNames::parse(&field, std::slice::from_ref(&h.name), false).map_err(|e| ConfigError { field, ..e })?;
            list.push(Source::Header { name: h.name.to_ascii_lowercase(), prefix: h.value_prefix.unwrap_or_default() });
        }
        for (i, c) in cookies.unwrap_or_default().into_iter().enumerate() {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b)) {
                return Err(ConfigError::new(format!("jwt.from_cookies[{i}]"), format!("{c:?} is not a cookie name")));
            }
            list.push(Source::Cookie(c));
        }
        for (i, p) in params.unwrap_or_default().into_iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && !b"=&;#?%+".contains(&b)) {
                return Err(ConfigError::new(
                    format!("jwt.from_params[{i}]"),
                    format!("{p:?} is not a query parameter name (printable ASCII without = & ; # ? % +)"),
                ));
            }
            list.push(Source::Param(p));
        }
        if list.is_empty() {
            return Err(ConfigError::new(
                "jwt",
                "from_headers, from_cookies and from_params are all empty: no token can be found",
            ));
        }
        let forward = forward.unwrap_or(true);
        let may_remove = !forward || list.iter().any(|s| matches!(s, Source::Param(_)));
        Ok(Sources { list, forward, may_remove })
    }

    /// The credential: the first configured source present in the request. `Some(None)`:
    /// a source is present but holds no usable credential (another scheme, not text).
    pub fn credential<'h, H: Header>(&self, headers: &'h [H]) -> Option<Option<&'h str>> {
        self.find(headers).map(|(_, token)| token)
    }

    /// Whether a verified token may need a [`Removal`]: only then is the request looked
    /// at again after verification.
    pub fn may_remove(&self) -> bool {
        self.may_remove
    }

    /// How to take the credential [`Sources::credential`] found out of the request: its
    /// header or cookie with `forward: false`, a query parameter always (a token in a URL
    /// ends up in access logs). `None`: nothing to change.
    pub fn removal<'s, H: Header>(&'s self, headers: &[H]) -> Option<Removal<'s>> {
        let (source, _) = self.find(headers)?;
        match source {
            Source::Header { name, .. } if !self.forward => Some(Removal::Header(name)),
            Source::Cookie(cookie) if !self.forward => Some(Removal::Cookie(without_cookie(headers, cookie))),
            Source::Param(param) => {
                let path = headers.iter().find(|h| h.name() == ":path")?;
                let path = std::str::from_utf8(path.value()).ok()?;
                Some(Removal::Path(without_param(path, param)))
            }
            Source::Header { .. } | Source::Cookie(_) => None,
        }
    }

    fn find<'s, 'h, H: Header>(&'s self, headers: &'h [H]) -> Option<(&'s Source, Option<&'h str>)> {
        self.list.iter().find_map(|source| Some((source, lookup(source, headers)?)))
    }
}

/// The token `source` holds in `headers`: `None` if the source is absent.
fn lookup<'h, H: Header>(source: &Source, headers: &'h [H]) -> Option<Option<&'h str>> {
    match source {
        Source::Header { name, prefix } => {
            let header = headers.iter().find(|h| h.name() == name)?;
            let value = crate::policy::headers::text(header.value());
            Some(value.and_then(|v| strip_prefix_ignore_case(v, prefix)).map(str::trim))
        }
        Source::Cookie(cookie) => {
            let value = cookie_pairs(headers).find_map(|pair| cookie_value(pair, cookie))?;
            Some(Some(value.trim()))
        }
        Source::Param(param) => {
            let path = headers.iter().find(|h| h.name() == ":path")?;
            let Ok(path) = std::str::from_utf8(path.value()) else {
                return Some(None);
            };
            let (_, query) = path.split_once('?')?;
            query.split('&').find_map(|pair| param_value(pair, param)).map(Some)
        }
    }
}

fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

/// Every `name=value` pair of every `cookie` header (text ones; Envoy joins HTTP/2's).
fn cookie_pairs<H: Header>(headers: &[H]) -> impl Iterator<Item = &str> {
    headers
        .iter()
        .filter(|h| h.name() == "cookie")
        .filter_map(|h| std::str::from_utf8(h.value()).ok())
        .flat_map(|v| v.split(';'))
}

fn cookie_value<'p>(pair: &'p str, name: &str) -> Option<&'p str> {
    pair.trim().strip_prefix(name)?.strip_prefix('=')
}

/// The `cookie` header without any cookie called `name`; `None` when none is left.
fn without_cookie<H: Header>(headers: &[H], name: &str) -> Option<String> {
    let kept: Vec<&str> = cookie_pairs(headers)
        .filter(|pair| cookie_value(pair, name).is_none() && !pair.trim().is_empty())
        .map(str::trim)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The value of `pair` (`name=value`) when its name is `name`, as sent or percent-decoded
/// (`access%5Ftoken`), so that no spelling of the parameter escapes removal.
fn param_value<'p>(pair: &'p str, name: &str) -> Option<&'p str> {
    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
    is_name(key, name).then_some(value)
}

fn is_name(key: &str, name: &str) -> bool {
    if key == name {
        return true;
    }
    if !key.contains('%') {
        return false;
    }
    let (mut key, mut name) = (key.as_bytes(), name.as_bytes());
    while let Some((&b, rest)) = key.split_first() {
        let (decoded, rest) = match (b, rest) {
            (b'%', [hi, lo, rest @ ..]) => match (hex(*hi), hex(*lo)) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, rest),
                _ => (b, rest),
            },
            _ => (b, rest),
        };
        let Some((&want, name_rest)) = name.split_first() else { return false };
        if decoded != want {
            return false;
        }
        (key, name) = (rest, name_rest);
    }
    name.is_empty()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `target` with every `param` query parameter removed; the path before `?` is kept byte
/// for byte (the route and public-path decisions were made on it), and a query left
/// empty loses its `?`.
fn without_param(target: &str, param: &str) -> String {
    let Some((path, query)) = target.split_once('?') else { return target.to_owned() };
    let kept: Vec<&str> = query.split('&').filter(|pair| param_value(pair, param).is_none()).collect();
    if kept.iter().all(|pair| pair.is_empty()) {
        return path.to_owned();
    }
    format!("{path}?{}", kept.join("&"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn sources(json: &str) -> Result<Sources, ConfigError> {
        #[derive(Deserialize)]
        struct Raw {
            from_headers: Option<Vec<RawHeaderSource>>,
            from_cookies: Option<Vec<String>>,
            from_params: Option<Vec<String>>,
            forward: Option<bool>,
        }
        let raw: Raw = serde_json::from_str(json).unwrap();
        Sources::parse(raw.from_headers, raw.from_cookies, raw.from_params, raw.forward)
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn default_is_the_bearer_header_and_removes_nothing() {
        let s = sources("{}").unwrap();
        assert_eq!(s.list, vec![Source::Header { name: "authorization".into(), prefix: "Bearer ".into() }]);
        assert!(s.forward && !s.may_remove(), "the default never looks at the request twice");
        let req = h(&[(":path", "/a?access_token=x"), ("cookie", "jwt=y"), ("authorization", "Bearer eyJ.a.b")]);
        assert_eq!(s.credential(&req), Some(Some("eyJ.a.b")));
        assert_eq!(s.removal(&req), None);
        // Setting only params replaces the default too.
        let s = sources(r#"{"from_params": ["access_token"]}"#).unwrap();
        assert_eq!(s.list, vec![Source::Param("access_token".into())]);
        assert_eq!(s.credential(&req), Some(Some("x")));
    }

    #[test]
    fn sources_are_tried_in_order_headers_cookies_params() {
        let s = sources(
            r#"{"from_headers": [{"name": "X-Token", "value_prefix": "Token "}], "from_cookies": ["jwt"], "from_params": ["access_token", "token"]}"#,
        )
        .unwrap();
        type Headers = Vec<(String, Vec<u8>)>;
        let cases: Vec<(Headers, Option<Option<&str>>)> = vec![
            (h(&[(":path", "/a")]), None),
            (
                h(&[
                    (":path", "/a?x=1&token=p2&access_token=p1"),
                    ("cookie", "a=1; jwt=c; b=2"),
                    ("x-token", "token h"),
                ]),
                Some(Some("h")),
            ),
            (h(&[(":path", "/a?token=p2&access_token=p1"), ("cookie", "a=1; jwt=c ; b=2")]), Some(Some("c"))),
            (h(&[(":path", "/a?token=p2&access_token=p1"), ("cookie", "xjwt=no")]), Some(Some("p1"))),
            (h(&[(":path", "/a?token=p2&access_token")]), Some(Some(""))),
            (h(&[(":path", "/a?token=p2")]), Some(Some("p2"))),
            (h(&[(":path", "/a?access%5Ftoken=enc")]), Some(Some("enc"))),
            (h(&[(":path", "/access_token=no"), ("x-token", "Bearer h")]), Some(None)),
            (h(&[(":path", "/a?xaccess_token=no&access_tokenx=no")]), None),
        ];
        for (req, want) in cases {
            assert_eq!(s.credential(&req), want, "{req:?}");
        }
        let not_text = vec![(":path".to_owned(), b"/a?access_token=\xff".to_vec())];
        assert_eq!(s.credential(&not_text), Some(None));
    }

    #[test]
    fn a_query_token_is_always_removed_and_the_path_kept() {
        let s = sources(r#"{"from_params": ["access_token"]}"#).unwrap();
        assert!(s.forward && s.may_remove());
        for (target, want) in [
            ("/api/flows?access_token=t", "/api/flows"),
            ("/api/flows?access_token=t&", "/api/flows"),
            ("/api/flows?a=1&access_token=t&b=2", "/api/flows?a=1&b=2"),
            ("/api/flows?access_token=t&access_token=u&access%5ftoken=v&a=1", "/api/flows?a=1"),
            ("/api/flows?a=1&access_token", "/api/flows?a=1"),
            // The path is never touched, even when it is not canonical.
            ("/api//flows/%2e%2e/x?access_token=t&b", "/api//flows/%2e%2e/x?b"),
            ("/x?a=1&&access_token=t", "/x?a=1&"),
        ] {
            let req = h(&[(":path", target)]);
            assert!(s.credential(&req).is_some(), "{target}");
            assert_eq!(s.removal(&req), Some(Removal::Path(want.to_owned())), "{target}");
        }
        assert_eq!(without_param("/x", "access_token"), "/x");
    }

    #[test]
    fn forward_false_removes_the_header_or_only_the_cookie_used() {
        let s = sources(r#"{"from_headers": [{"name": "authorization", "value_prefix": "Bearer "}], "from_cookies": ["jwt"], "forward": false}"#)
            .unwrap();
        assert!(!s.forward && s.may_remove());
        let by_header = h(&[("authorization", "Bearer t"), ("cookie", "jwt=u")]);
        assert_eq!(s.removal(&by_header), Some(Removal::Header("authorization")));
        let by_cookie = h(&[("cookie", "a=1; jwt=t"), ("cookie", "jwt=again; b=2")]);
        assert_eq!(s.removal(&by_cookie), Some(Removal::Cookie(Some("a=1; b=2".into()))));
        let only_cookie = h(&[("cookie", "jwt=t")]);
        assert_eq!(s.removal(&only_cookie), Some(Removal::Cookie(None)));
        assert_eq!(s.removal(&h(&[(":path", "/")])), None);
    }

    #[test]
    fn the_token_source_and_the_cookie_header_without_it() {
        // (From the first forward: false implementation, jwt/verifier.rs.)
        let s =
            sources(r#"{"from_headers": [{"name": "x-token"}], "from_cookies": ["jwt"], "forward": false}"#).unwrap();
        let by_cookie = h(&[("cookie", "a=1; jwt=eyJx.y.z"), ("cookie", "jwt2=3;b=2")]);
        assert_eq!(s.credential(&by_cookie), Some(Some("eyJx.y.z")));
        assert_eq!(s.removal(&by_cookie), Some(Removal::Cookie(Some("a=1; jwt2=3; b=2".into()))));
        assert_eq!(s.removal(&h(&[("cookie", "jwt=eyJx.y.z")])), Some(Removal::Cookie(None)));
        let by_header = h(&[("x-token", "eyJx.y.z"), ("cookie", "jwt=other")]);
        assert_eq!(s.credential(&by_header), Some(Some("eyJx.y.z")));
        assert_eq!(s.removal(&by_header), Some(Removal::Header("x-token")));
    }

    #[test]
    fn percent_decoded_names_match_exactly() {
        for (key, want) in [
            ("access_token", true),
            ("access%5Ftoken", true),
            ("%61ccess%5ftoken", true),
            ("access%5F", false),
            ("access%5Ftokens", false),
            ("access%ZZtoken", false),
            ("access%5", false),
            ("%", false),
        ] {
            assert_eq!(is_name(key, "access_token"), want, "{key}");
        }
    }

    #[test]
    fn bad_source_configs_name_the_field() {
        for (json, want) in [
            (
                r#"{"from_headers": [], "from_cookies": [], "from_params": []}"#,
                "jwt: from_headers, from_cookies and from_params are all empty: no token can be found",
            ),
            (
                r#"{"from_params": ["a=b"]}"#,
                "jwt.from_params[0]: \"a=b\" is not a query parameter name (printable ASCII without = & ; # ? % +)",
            ),
            (
                r#"{"from_params": ["ok", ""]}"#,
                "jwt.from_params[1]: \"\" is not a query parameter name (printable ASCII without = & ; # ? % +)",
            ),
            (r#"{"from_cookies": ["a;b"]}"#, "jwt.from_cookies[0]: \"a;b\" is not a cookie name"),
        ] {
            assert_eq!(format!("{}: {}", sources(json).unwrap_err().field, sources(json).unwrap_err().message), want);
        }
    }
}
