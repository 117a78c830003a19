//! Envoy HTTP ext_authz's contract (`auth.protocol: "ext_authz"`), as Envoy 1.40 really
//! sends it with an Istio `envoyExtAuthzHttp` provider (recorded in
//! tests/tests/ext_authz_contract.rs):
//!
//! - the callout is the client's method, `path_prefix` + the client's `:path` (query
//!   included) or a fixed `path_override`, and the client's `:authority`;
//! - of the client's headers, `authorization` and those `request_headers` matches, a
//!   repeated one as one line of its values joined with `,`; `headers_to_add` overwrite; `content-length: 0` (Envoy adds `x-envoy-internal` and
//!   `x-envoy-expected-rq-timeout-ms` to every callout itself). With
//!   `with_request_body` the callout carries the body instead (policy/request_body.rs);
//! - on allow, `upstream_headers` replace (a repeated one: its last value; a client's
//!   copy the auth service does not set stays), `upstream_headers_to_append` append,
//!   `x-envoy-auth-headers-to-remove` removes request headers, and
//!   `client_headers_on_success` go to the client's response; on deny, `client_headers`
//!   (plus `www-authenticate` and `location`), or every header when it is not set.

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::policy::forward::CalloutHeader;
use crate::policy::headers::{self, Header, HeaderNames};
use crate::policy::substitution::{HeaderTemplate, Rendered, RequestInfo};
use crate::string_map::StringMap;

/// The header an allowing auth service names request headers to remove in.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// ext_authz adds these to a configured `allowed_client_headers` list.
pub const DENY_CLIENT_DEFAULTS: [&str; 2] = ["www-authenticate", "location"];

/// How the callout is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Traefik forwardAuth: `GET auth.path` with `X-Forwarded-*` (the default).
    #[default]
    ForwardAuth,
    /// Envoy HTTP ext_authz: the client's method and path (Istio policy mode).
    ExtAuthz,
}

/// The ext_authz-only parts of the `auth` block, compiled.
#[derive(Debug, Default)]
pub struct ExtAuthzSettings {
    /// Prepended to the client's `:path`.
    pub path_prefix: String,
    /// A fixed callout path instead of `path_prefix` + the client's path.
    pub path_override: Option<String>,
    /// Headers set on the callout, replacing a client value (Istio
    /// `includeAdditionalHeadersInCheck`): text, or Envoy's command operators
    /// (policy/substitution.rs).
    pub headers_to_add: Vec<(String, HeaderTemplate)>,
}

/// Validates a callout path (`auth.path`, `auth.path_prefix`, `auth.path_override`).
pub(crate) fn check_path(field: &str, path: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if (path.is_empty() && may_be_empty) || (path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())) {
        return Ok(());
    }
    Err(ConfigError::new(field, "must start with '/' and contain no spaces or control characters"))
}

/// `auth.headers_to_add`: names are header names the filter may write, values text
/// with Envoy's command operators, compiled here once.
pub(crate) fn compile_headers_to_add(raw: Option<StringMap>) -> Result<Vec<(String, HeaderTemplate)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in raw.unwrap_or_default() {
        let field = format!("auth.headers_to_add.{name}");
        HeaderNames::parse_injectable(&field, std::slice::from_ref(&name))?;
        if name.contains('*') {
            return Err(ConfigError::new(field, "a header name, not a pattern"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ConfigError::new(field, "the value must not contain control characters"));
        }
        let value = HeaderTemplate::parse(&field, &value)?;
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

/// The callout of `protocol: ext_authz` (pseudo-headers first). `request_headers` and
/// `strip` as in forward_auth: a stripped header is never sent, whatever matches it.
/// `info` is read only for the operators of `headers_to_add`. `None` if a header to
/// send is not text (the host ABI takes text).
pub fn callout<'h, H: Header>(
    settings: &'h ExtAuthzSettings,
    request_headers: &HeaderNames,
    strip: &HeaderNames,
    headers: &'h [H],
    info: &mut impl RequestInfo,
) -> Option<Vec<CalloutHeader<'h>>> {
    let text = headers::text;
    let method = text(headers::first(headers, ":method").unwrap_or(b"GET"))?;
    let client_path = text(headers::first(headers, ":path").unwrap_or(b"/"))?;
    let path: Cow<'h, str> = match &settings.path_override {
        Some(path) => path.as_str().into(),
        None if settings.path_prefix.is_empty() => client_path.into(),
        None => format!("{}{client_path}", settings.path_prefix).into(),
    };
    let mut out: Vec<CalloutHeader<'h>> = vec![(":method", method.into()), (":path", path)];
    if let Some(authority) = headers::first(headers, ":authority") {
        out.push((":authority", text(authority)?.into()));
    }
    // Printed before the client's headers are picked: as in Envoy's header parser, a
    // value that prints empty adds nothing and replaces nothing.
    let mut to_add: Vec<CalloutHeader<'h>> = Vec::with_capacity(settings.headers_to_add.len());
    for (name, template) in &settings.headers_to_add {
        match template.render(headers, strip, info) {
            Rendered::Value(value) => to_add.push((name.as_str(), value)),
            Rendered::Empty => {}
            Rendered::NotText => return None,
        }
    }
    let added = |name: &str| to_add.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (i, h) in headers.iter().enumerate() {
        let name = h.name();
        let wanted = name.eq_ignore_ascii_case("authorization") || request_headers.contains(name);
        if wanted && !name.starts_with(':') && !strip.contains(name) && !added(name) {
            if name.eq_ignore_ascii_case("content-length") {
                continue; // Envoy writes the callout's own.
            }
            let same = |other: &H| other.name().eq_ignore_ascii_case(name);
            if headers[..i].iter().any(same) {
                continue; // Joined into its first line below.
            }
            out.push((name, headers::joined(&headers[i..], name)?));
        }
    }
    out.extend(to_add);
    // As ext_authz without a body; policy/request_body.rs replaces it when one is sent.
    out.push(("content-length", "0".into()));
    Some(out)
}

/// What an allow does besides setting `upstream_headers` (ext_authz only; `None` in
/// the common case, so forward_auth's allow allocates nothing more).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowExtra {
    /// `upstream_headers_to_append`: added upstream next to the client's own values.
    pub append: Vec<(String, Vec<u8>)>,
    /// `x-envoy-auth-headers-to-remove`: removed from the upstream request.
    pub remove: Vec<String>,
    /// `client_headers_on_success`: added to the client's response.
    pub to_client: Vec<(String, Vec<u8>)>,
}

/// The extras of an allowing `response`, or `None` if there are none;
/// `x-envoy-auth-headers-to-remove` is honoured with `remove` (the ext_authz protocol).
pub fn allow_extra<H: Header>(
    append: &HeaderNames,
    to_client: &HeaderNames,
    remove: bool,
    response: &[H],
) -> Option<Box<AllowExtra>> {
    let pick = |set: &HeaderNames| -> Vec<(String, Vec<u8>)> {
        headers::select(response, set)
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(HEADERS_TO_REMOVE))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
            .collect()
    };
    let remove = if remove { headers_to_remove(response) } else { Vec::new() };
    let extra = AllowExtra { append: pick(append), remove, to_client: pick(to_client) };
    (extra != AllowExtra::default()).then(|| Box::new(extra))
}

/// Names an allowing auth response asks to remove from the upstream request
/// (`x-envoy-auth-headers-to-remove`, comma-separated, every value); never a
/// pseudo-header or `host`, which Envoy does not remove either.
pub fn headers_to_remove<H: Header>(response: &[H]) -> Vec<String> {
    let mut out = Vec::new();
    for h in response.iter().filter(|h| h.name().eq_ignore_ascii_case(HEADERS_TO_REMOVE)) {
        let Ok(value) = std::str::from_utf8(h.value()) else { continue };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.starts_with(':') && !name.eq_ignore_ascii_case("host") {
                out.push(name.to_ascii_lowercase());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    fn names(list: &[&str]) -> HeaderNames {
        HeaderNames::parse("t", &list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), true).unwrap()
    }

    #[test]
    fn callout_is_the_clients_method_prefixed_path_and_authority() {
        let settings = ExtAuthzSettings {
            path_prefix: "/check".into(),
            headers_to_add: vec![
                ("x-static".into(), HeaderTemplate::parse("f", "v").unwrap()),
                ("x-tenant-id".into(), HeaderTemplate::parse("f", "fixed").unwrap()),
            ],
            ..Default::default()
        };
        let request = h(&[
            (":method", "DELETE"),
            (":path", "/api/flows/1?x=%2F"),
            (":authority", "api.example.com:8443"),
            (":scheme", "http"),
            ("authorization", "Bearer t"),
            ("cookie", "s=1"),
            ("x-tenant-id", "t1"),
            ("x-tenant-region", "eu"),
            ("b3-trace", "1"),
            ("x-nebula-actor-id", "evil"),
            ("content-length", "3"),
        ]);
        let out = callout(
            &settings,
            &names(&["x-tenant-*", "*-trace", "x-nebula-*"]),
            &names(&["x-nebula-*"]),
            &request,
            &mut || None,
        )
        .unwrap();
        let out: Vec<(&str, &str)> = out.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        assert_eq!(
            out,
            [
                (":method", "DELETE"),
                (":path", "/check/api/flows/1?x=%2F"),
                (":authority", "api.example.com:8443"),
                ("authorization", "Bearer t"),
                ("x-tenant-region", "eu"),
                ("b3-trace", "1"),
                ("x-static", "v"),
                ("x-tenant-id", "fixed"),
                ("content-length", "0"),
            ]
        );
        let fixed = ExtAuthzSettings { path_override: Some("/verify".into()), ..Default::default() };
        let out = callout(&fixed, &names(&[]), &names(&[]), &request, &mut || None).unwrap();
        assert_eq!(out[1], (":path", "/verify".into()));
        assert_eq!(out.len(), 5, "only authorization without request_headers: {out:?}");
        let bad = h(&[(":path", "/x"), ("authorization", "\u{e9}")]);
        let bad: Vec<(String, Vec<u8>)> =
            bad.into_iter().map(|(n, v)| if n == "authorization" { (n, vec![0xe9]) } else { (n, v) }).collect();
        assert_eq!(callout(&fixed, &names(&[]), &names(&[]), &bad, &mut || None), None);
    }

    /// ext_authz sends a repeated header as one line, its values joined with `,` in their
    /// order, `cookie` included; a value that is not text fails the whole callout.
    #[test]
    fn repeated_headers_are_sent_as_one_joined_line() {
        let request = h(&[
            (":path", "/api"),
            ("cookie", "a=1"),
            ("x-tenant-id", "t1"),
            ("authorization", "Bearer t"),
            ("cookie", "b=2; c=3"),
            ("x-tenant-id", "t2"),
            ("x-other", "o"),
        ]);
        let settings = ExtAuthzSettings::default();
        let out = callout(&settings, &names(&["cookie", "x-tenant-*"]), &names(&[]), &request, &mut || None).unwrap();
        let out: Vec<(&str, &str)> = out.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        assert_eq!(
            &out[2..],
            [
                ("cookie", "a=1,b=2; c=3"),
                ("x-tenant-id", "t1,t2"),
                ("authorization", "Bearer t"),
                ("content-length", "0")
            ]
        );
        let mut bad = request.clone();
        bad.push(("cookie".into(), vec![0xff]));
        assert_eq!(callout(&settings, &names(&["cookie"]), &names(&[]), &bad, &mut || None), None);
    }

    /// Over generated requests (names from a small pool, so they repeat, in any case):
    /// each header goes at most once, as the join of all its values in order; a stripped
    /// or added one never carries the client's value; nothing unlisted is sent.
    #[test]
    fn every_callout_header_is_one_line_of_all_its_values() {
        let pool = ["authorization", "Cookie", "cookie", "x-tenant-id", "X-Tenant-Region", "x-nebula-actor-id", "x-a"];
        let settings = ExtAuthzSettings {
            headers_to_add: vec![("x-a".into(), HeaderTemplate::parse("f", "fixed").unwrap())],
            ..Default::default()
        };
        let (wanted, strip) = (names(&["cookie", "x-tenant-*", "x-nebula-*", "x-a"]), names(&["x-nebula-*"]));
        let mut state: u32 = 7;
        let mut next = |n: u32| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) % n
        };
        for _ in 0..500 {
            let mut request = vec![(":path".to_string(), b"/".to_vec())];
            for i in 0..next(8) {
                let name = pool[next(pool.len() as u32) as usize];
                request.push((name.to_string(), format!("v{i}").into_bytes()));
            }
            let out = callout(&settings, &wanted, &strip, &request, &mut || None).unwrap();
            for (k, (name, value)) in out.iter().enumerate().skip(2) {
                assert!(!out[k + 1..].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)), "{name} twice: {out:?}");
                let values: Vec<String> = request
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                    .collect();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => assert_eq!(value, "0"),
                    "x-a" => assert_eq!(value, "fixed"),
                    n => {
                        assert!(!strip.contains(n) && (n == "authorization" || wanted.contains(n)), "{n} sent");
                        assert_eq!(value.as_ref(), values.join(","), "{request:?}");
                    }
                }
            }
        }
    }

    /// ext_authz sets each allowed upstream header in turn (Envoy's `setCopy`): a repeated
    /// one ends with its last value; forward_auth copies every value.
    #[test]
    fn a_repeated_upstream_header_keeps_its_last_value() {
        use crate::policy::decision::Verdict;
        let resp = h(&[(":status", "200"), ("x-user", "one"), ("x-a", "1"), ("X-User", "two"), ("x-user", "three")]);
        let ext =
            settings(r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "upstream_headers": ["x-user", "x-a"]}}"#);
        let Verdict::Allow { inject, .. } = ext.decide(&resp, 0) else { panic!("an allow") };
        assert_eq!(inject, [("x-a", &b"1"[..]), ("x-user", &b"three"[..])]);
        let plain = settings(r#"{"auth": {"cluster": "a", "upstream_headers": ["x-user"]}}"#);
        let Verdict::Allow { inject, .. } = plain.decide(&resp, 0) else { panic!("an allow") };
        assert_eq!(inject.len(), 3, "forward_auth: every value: {inject:?}");
    }

    fn settings(json: &str) -> crate::plugin_config::Settings {
        crate::plugin_config::Settings::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn allow_and_deny_follow_ext_authz() {
        use crate::policy::decision::Verdict;
        let s = settings(
            r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "upstream_headers_to_append": ["x-trace-*"],
                "client_headers_on_success": ["set-cookie"]}}"#,
        );
        let resp = h(&[
            (":status", "200"),
            ("x-nebula-actor-id", "alice"),
            ("x-trace-id", "t"),
            ("set-cookie", "s=1"),
            (HEADERS_TO_REMOVE, "cookie, x-a"),
        ]);
        let Verdict::Allow { inject, extra: Some(extra), .. } = s.decide(&resp, 0) else {
            panic!("an allow with extras")
        };
        assert_eq!(inject, [("x-nebula-actor-id", &b"alice"[..])]);
        assert_eq!(extra.append, [("x-trace-id".to_string(), b"t".to_vec())]);
        assert_eq!(extra.to_client, [("set-cookie".to_string(), b"s=1".to_vec())]);
        assert_eq!(extra.remove, ["cookie", "x-a"]);
        // Without client_headers: every auth response header but host and framing.
        let resp =
            h(&[(":status", "401"), ("x-internal", "s"), ("host", "h"), ("content-length", "2"), ("location", "/l")]);
        let Verdict::Deny { status, headers } = s.decide(&resp, 2) else { panic!("a deny") };
        assert_eq!((status, headers), (401, vec![("x-internal", "s"), ("location", "/l")]));
        // With client_headers: those, plus www-authenticate and location.
        let listed = settings(r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "client_headers": ["x-a"]}}"#);
        let resp =
            h(&[(":status", "403"), ("x-a", "1"), ("x-b", "2"), ("www-authenticate", "Bearer"), ("location", "/l")]);
        let Verdict::Deny { headers, .. } = listed.decide(&resp, 0) else { panic!("a deny") };
        assert_eq!(headers, [("x-a", "1"), ("www-authenticate", "Bearer"), ("location", "/l")]);
        // forward_auth ignores x-envoy-auth-headers-to-remove and allocates no extras.
        let plain = settings(r#"{"auth": {"cluster": "a"}}"#);
        let resp = h(&[(":status", "200"), (HEADERS_TO_REMOVE, "cookie")]);
        assert!(matches!(plain.decide(&resp, 0), Verdict::Allow { extra: None, .. }));
    }

    #[test]
    fn ext_authz_only_fields_are_refused_elsewhere() {
        for (json, error) in [
            (r#"{"auth": {"cluster": "a", "path_prefix": "/x"}}"#, "auth.path_prefix: only applies"),
            (r#"{"auth": {"cluster": "a", "headers_to_add": {"x": "y"}}}"#, "auth.headers_to_add: only applies"),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "forward_auth": true}}"#,
                "auth.protocol: ext_authz",
            ),
            (r#"{"auth": {"cluster": "a", "protocol": "grpc"}}"#, "unknown variant `grpc`"),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "path_prefix": "x"}}"#,
                "auth.path_prefix: must start",
            ),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "headers_to_add": {"content-length": "1"}}}"#,
                "connection-level",
            ),
        ] {
            let err = crate::plugin_config::Settings::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(error), "{json}: {err}");
        }
    }

    #[test]
    fn headers_to_remove_skip_pseudo_headers_and_host() {
        let resp = h(&[(HEADERS_TO_REMOVE, "X-A, cookie,,:path"), (HEADERS_TO_REMOVE, "host,x-b")]);
        assert_eq!(headers_to_remove(&resp), ["x-a", "cookie", "x-b"]);
    }
}
