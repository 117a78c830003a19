//! What to do with a client request, from its headers alone: which spoofed identity
//! headers to strip, then public (continue), callout (with these headers) or reject.

use crate::policy::auth::AuthSettings;
use crate::policy::decision::Failure;
use crate::policy::ext_authz::{self, Protocol};
use crate::policy::forward::{self, CalloutHeader, HeaderRegex};
use crate::policy::headers::{self, Header, HeaderNames};
use crate::policy::route::{PathMatch, PublicPaths};
use crate::policy::substitution::RequestInfo;
use crate::policy::trace;

/// The plan for one request's headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<'h> {
    /// Header names to remove from the client request, every path, before anything else.
    pub strip: Vec<&'h str>,
    pub route: Route<'h>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'h> {
    /// A public path: no callout.
    Public { template: &'h str },
    /// Ask the auth service with exactly these headers (pseudo-headers first).
    Callout { headers: Vec<CalloutHeader<'h>> },
    /// The request cannot be checked faithfully: fail closed.
    Reject(Failure),
}

/// A request before its callout is built: the host builds the callout ([`callout`])
/// only when a callout is needed, after the JWT step (a locally verified token needs no
/// callout, nor the `source.address` read its X-Forwarded-For costs).
#[derive(Debug, PartialEq, Eq)]
pub struct Routed<'h> {
    /// Header names to remove from the client request, every path, before anything else.
    pub strip: Vec<&'h str>,
    /// Where its `:path` stands: public by a template (the access rules need its
    /// position), canonical and protected (no `:path` counts as one), or not canonical.
    pub path: PathMatch,
}

impl Routed<'_> {
    /// The public path template it matched (in `public`, the list it was routed
    /// with); `None`: protected.
    pub fn public<'p>(&self, public: &'p PublicPaths) -> Option<&'p str> {
        match self.path {
            PathMatch::Public(index) => public.template(index),
            PathMatch::Protected | PathMatch::NotCanonical => None,
        }
    }
}

/// `headers` is the client request header map as Envoy hands it over (`:path` included);
/// `info` gives the client's address (`ip:port`), asked for only when a callout sends
/// X-Forwarded-For, and the other request facts `auth.headers_to_add` may print.
/// [`route`], then [`callout`] for a protected path.
pub fn plan<'h, H: Header>(
    auth: &'h AuthSettings,
    strip_names: &HeaderNames,
    public: &'h PublicPaths,
    headers: &'h [H],
    info: impl RequestInfo,
) -> Plan<'h> {
    let routed = route(auth, strip_names, public, headers);
    let route = match routed.public(public) {
        Some(template) => Route::Public { template },
        None => match callout(auth, strip_names, headers, info) {
            Ok(mut out) => {
                let traced = trace_headers(auth, strip_names, headers, &out);
                out.extend(traced);
                Route::Callout { headers: out }
            }
            Err(failure) => Route::Reject(failure),
        },
    };
    Plan { strip: routed.strip, route }
}

/// What to strip, and whether the path is public.
pub fn route<'h, H: Header>(
    auth: &'h AuthSettings,
    strip_names: &HeaderNames,
    public: &'h PublicPaths,
    headers: &'h [H],
) -> Routed<'h> {
    let strip = strip_list(auth, strip_names, headers);
    let path = headers::first(headers, ":path").map_or(PathMatch::Protected, |p| public.classify(p));
    Routed { strip, path }
}

/// The distinct names among `fields` (a request's headers, or its trailers, which an
/// HTTP/2 or gRPC upstream receives too) that the client may not send: the strip list and
/// what `auth.upstream_headers_regex` matches, `_` read as `-` in both.
pub fn strip_list<'h, H: Header>(auth: &AuthSettings, strip_names: &HeaderNames, fields: &'h [H]) -> Vec<&'h str> {
    let mut strip = headers::present(fields, strip_names);
    if let Some(regex) = &auth.upstream_headers_regex {
        for name in fields.iter().map(Header::name) {
            if regex_strips(regex, name) && !strip.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                strip.push(name);
            }
        }
    }
    strip
}

/// Whether `regex` matches the client header `name`, or `name` with `_` read as `-` (what
/// CGI/WSGI-style applications see, as for the strip list).
fn regex_strips(regex: &HeaderRegex, name: &str) -> bool {
    regex.matches(name) || (name.contains('_') && regex.matches(&name.replace('_', "-")))
}

/// The callout's headers for a protected request (pseudo-headers first), without its
/// trace headers ([`trace_headers`]): exactly what its answer may depend on, so also its
/// cache key. `Err` when the request cannot be checked faithfully (fail closed).
pub fn callout<'h, H: Header>(
    auth: &'h AuthSettings,
    strip: &HeaderNames,
    headers: &'h [H],
    mut info: impl RequestInfo,
) -> Result<Vec<CalloutHeader<'h>>, Failure> {
    if auth.protocol == Protocol::ExtAuthz {
        return match ext_authz::callout(&auth.ext_authz, &auth.request_headers, strip, headers, &mut info) {
            Some(mut out) => {
                if !out.iter().any(|(n, _)| *n == ":authority") {
                    out.insert(2, (":authority", auth.authority.as_str().into()));
                }
                Ok(out)
            }
            None => Err(Failure::RequestHeaderNotText),
        };
    }
    // Traefik's forwardAuth asks with GET unless `preserveRequestMethod`.
    let method = match auth.preserve_request_method {
        false => "GET",
        true => {
            headers::text(headers::first(headers, ":method").unwrap_or(b"GET")).ok_or(Failure::RequestHeaderNotText)?
        }
    };
    // Room for the pseudo-headers, a few forwarded ones and the six X-Forwarded-*: one
    // allocation instead of growing it (measured with `make bench-callgrind`).
    let mut out: Vec<CalloutHeader<'h>> = Vec::with_capacity(16);
    out.extend([
        (":method", method.into()),
        (":path", auth.path.as_str().into()),
        (":authority", auth.authority.as_str().into()),
    ]);
    // Forwarding headers: generated with forward_auth (a client's copy never doubles
    // them) and, untrusted, never taken from the client even if a pattern matches.
    let skip = |name: &str| {
        (auth.forward_auth && forward::is_written(name))
            || (!auth.trust_forward_header && forward::is_x_forwarded(name))
            || auth.upstream_headers_regex.as_ref().is_some_and(|r| regex_strips(r, name))
    };
    // A stripped header is never forwarded, even if a request_headers pattern matches it.
    let selected = headers.iter().filter(|h| !h.name().starts_with(':') && auth.request_headers.contains(h.name()));
    for (name, value) in selected.map(|h| (h.name(), h.value())).filter(|(n, _)| !strip.contains(n) && !skip(n)) {
        // The host ABI takes text; a credential we cannot pass unchanged is not passed.
        match headers::text(value) {
            Some(value) => out.push((name, value.into())),
            None => return Err(Failure::RequestHeaderNotText),
        }
    }
    if auth.forward_auth
        && forward::forwarded_headers(headers, info.source_address().as_deref(), auth.trust_forward_header, &mut out)
            .is_err()
    {
        return Err(Failure::RequestHeaderNotText);
    }
    Ok(out)
}

/// The request's trace headers for a callout about to be sent with `sent` (what
/// [`callout`] built): added only then, after its cache key and coalescing were decided
/// on `sent` alone, so a cache hit never builds them. A trace header is never a
/// forwarding header nor one `request_headers` or `headers_to_add` sends (refused at
/// load), so only the strip list and `upstream_headers_regex` keep one back.
pub fn trace_headers<'h, H: Header>(
    auth: &AuthSettings,
    strip: &HeaderNames,
    headers: &'h [H],
    sent: &[CalloutHeader<'_>],
) -> Vec<CalloutHeader<'h>> {
    let stripped =
        |n: &str| strip.contains(n) || auth.upstream_headers_regex.as_ref().is_some_and(|r| regex_strips(r, n));
    trace::lines(&auth.trace_headers, headers, stripped, |name| sent.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::plugin_config::Settings;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn public_path_strips_and_continues() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[
            (":path", b"/api/health"),
            ("x-nebula-actor-id", b"evil"),
            ("x-nebula-actor-id", b"evil2"),
            ("x-nebula-actor-permissions", b"admin"),
            ("authorization", b"Bearer t"),
        ]);
        let plan = s.plan(&headers, || None);
        assert_eq!(plan.strip, vec!["x-nebula-actor-id", "x-nebula-actor-permissions"]);
        assert_eq!(plan.route, Route::Public { template: "/api/health" });
    }

    #[test]
    fn protected_path_calls_out_with_only_the_configured_headers() {
        let s = settings(r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "path": "/check"}}"#);
        let headers = h(&[
            (":authority", b"api.example.com"),
            (":path", b"/api/flows"),
            (":method", b"POST"),
            ("authorization", b"Bearer t"),
            ("cookie", b"session=1"),
            ("origin", b"https://app.example.com"),
            ("x-nebula-actor-id", b"evil"),
            ("access-control-request-method", b"PUT"),
        ]);
        let plan = s.plan(&headers, || Some("10.0.0.7:51000".into()));
        assert_eq!(plan.strip, vec!["x-nebula-actor-id"]);
        assert_eq!(
            callout(&plan),
            vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "auth:4300"),
                ("authorization", "Bearer t"),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-uri", "/api/flows"),
                ("x-forwarded-for", "10.0.0.7"),
            ]
        );
    }

    #[test]
    fn preserve_request_method_sends_the_clients_method() {
        let headers = h(&[(":path", b"/api/flows/1"), (":method", b"DELETE"), ("authorization", b"Bearer t")]);
        let s = settings(r#"{"auth": {"cluster": "auth", "preserve_request_method": true}}"#);
        let plan = s.plan(&headers, || Some("10.0.0.7:1".into()));
        let sent = callout(&plan);
        assert_eq!(sent[0], (":method", "DELETE"));
        assert!(sent.contains(&("x-forwarded-method", "DELETE")), "{sent:?}");
        // Off (the default, as Traefik's): GET.
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        assert_eq!(callout(&s.plan(&headers, || None))[0], (":method", "GET"));
        // The ext_authz shape always sends the client's method: the option is refused there.
        let err = Settings::from_json(
            br#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "preserve_request_method": true}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("auth.preserve_request_method"), "{err}");
    }

    fn callout<'p>(plan: &'p Plan<'p>) -> Vec<(&'p str, &'p str)> {
        match &plan.route {
            Route::Callout { headers } => headers.iter().map(|(n, v)| (*n, v.as_ref())).collect(),
            other => panic!("expected a callout, got {other:?}"),
        }
    }

    #[test]
    fn forwarded_headers_replace_client_copies_unless_trusted() {
        let headers = h(&[
            (":authority", b"api.example.com"),
            (":path", b"/api/flows"),
            (":method", b"GET"),
            (":scheme", b"https"),
            ("authorization", b"Bearer t"),
            ("x-forwarded-host", b"evil.example.com"),
            ("x-forwarded-for", b"6.6.6.6"),
        ]);
        let untrusted =
            settings(r#"{"auth": {"cluster": "a", "request_headers": ["authorization", "x-forwarded-host"]}}"#);
        let plan = untrusted.plan(&headers, || Some("10.0.0.7:1".into()));
        assert_eq!(
            callout(&plan)[3..],
            [
                ("authorization", "Bearer t"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-uri", "/api/flows"),
                ("x-forwarded-for", "10.0.0.7"),
            ]
        );
        let trusted = settings(r#"{"auth": {"cluster": "a", "trust_forward_header": true}}"#);
        let plan = trusted.plan(&headers, || Some("10.0.0.7:1".into()));
        let out = callout(&plan);
        assert!(out.contains(&("x-forwarded-host", "evil.example.com")), "{out:?}");
        assert!(out.contains(&("x-forwarded-for", "6.6.6.6, 10.0.0.7")), "{out:?}");
        let off = settings(r#"{"auth": {"cluster": "a", "forward_auth": false}}"#);
        let plan = off.plan(&headers, || panic!("the peer is not needed without forward_auth"));
        assert_eq!(callout(&plan)[3..], [("authorization", "Bearer t")]);
        // Public paths never ask for the peer either.
        let public = h(&[(":path", b"/api/health")]);
        assert!(matches!(untrusted.plan(&public, || panic!("no callout")).route, Route::Public { .. }));
    }

    #[test]
    fn regex_response_headers_are_stripped_from_clients_on_every_path() {
        let s = settings(
            r#"{"auth": {"cluster": "a", "upstream_headers_regex": "^x-auth-request-", "request_headers": ["x-*"]}}"#,
        );
        let headers = h(&[(":path", b"/api/health"), ("X-Auth-Request-User", b"evil"), ("x-nebula-actor-id", b"e")]);
        assert_eq!(s.plan(&headers, || None).strip, vec!["x-nebula-actor-id", "X-Auth-Request-User"]);
        // Nor are they sent to the auth service, even if a request_headers pattern matches.
        let headers = h(&[(":path", b"/api/flows"), ("X-Auth-Request-User", b"evil"), ("x-team", b"t")]);
        let plan = s.plan(&headers, || None);
        let sent = callout(&plan);
        assert!(sent.contains(&("x-team", "t")) && !sent.iter().any(|(n, _)| n.starts_with("X-Auth")), "{sent:?}");
    }

    /// Trailers get the same list as headers: any case, `_` as `-`, the regex's names
    /// too, each distinct spelling once; other trailers stay.
    #[test]
    fn trailers_strip_every_spelling_of_the_list_and_the_regex() {
        let s = settings(r#"{"auth": {"cluster": "a", "upstream_headers_regex": "^x-auth-request-"}}"#);
        let trailers = h(&[
            ("grpc-timeout", b"1S"),
            ("x_nebula_actor_id", b"evil"),
            ("x-nebula_actor-id", b"evil"),
            ("x_nebula_actor_id", b"again"),
            ("x_auth_request_user", b"evil"),
            ("x-nebula-actor-idx", b"kept"),
        ]);
        assert_eq!(s.strip_list(&trailers), vec!["x_nebula_actor_id", "x-nebula_actor-id", "x_auth_request_user"]);
        // Not sent to the auth service either, even when request_headers would match them.
        let s = settings(
            r#"{"auth": {"cluster": "a", "upstream_headers_regex": "^x-auth-request-", "request_headers": ["x*"]}}"#,
        );
        let headers = h(&[
            (":path", b"/api/flows"),
            ("x_auth_request_user", b"e"),
            ("x_nebula_actor_id", b"e"),
            ("x-team", b"t"),
        ]);
        let plan = s.plan(&headers, || None);
        assert_eq!(plan.strip, vec!["x_nebula_actor_id", "x_auth_request_user"]);
        let sent = callout(&plan);
        assert!(sent.contains(&("x-team", "t")) && !sent.iter().any(|(n, _)| n.contains('_')), "{sent:?}");
    }

    /// Istio-style patterns in request_headers forward matching headers, never stripped ones.
    #[test]
    fn request_header_patterns_never_forward_identity_headers() {
        let s = settings(r#"{"auth": {"cluster": "auth", "request_headers": ["authorization", "x-*", "*-token"]}}"#);
        let headers = h(&[
            (":path", b"/api/flows"),
            ("authorization", b"Bearer t"),
            ("x-request-id", b"r1"),
            ("x-nebula-actor-id", b"evil"),
            ("x-csrf-token", b"c"),
            ("cookie", b"session=1"),
        ]);
        let plan = s.plan(&headers, || None);
        let sent = callout(&plan);
        assert_eq!(&sent[3..6], &[("authorization", "Bearer t"), ("x-request-id", "r1"), ("x-csrf-token", "c")]);
        // Forwarding headers a pattern matches still come only from the filter.
        let forged = h(&[(":path", b"/api/flows"), ("x-forwarded-host", b"evil"), ("x-real-ip", b"6.6.6.6")]);
        let plan = s.plan(&forged, || None);
        let sent = callout(&plan);
        assert!(
            !sent.contains(&("x-forwarded-host", "evil")) && !sent.iter().any(|(n, _)| *n == "x-real-ip"),
            "{sent:?}"
        );
    }

    #[test]
    fn missing_path_is_protected() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[(":method", b"CONNECT"), (":authority", b"x:443")]);
        let plan = s.plan(&headers, || None);
        assert!(matches!(plan.route, Route::Callout { .. }));
    }

    #[test]
    fn credential_that_is_not_text_fails_closed() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[(":path", b"/api/flows"), ("authorization", b"Bearer \xe9")]);
        let plan = s.plan(&headers, || None);
        assert_eq!(plan.route, Route::Reject(Failure::RequestHeaderNotText));
        // Bytes that are not forwarded do not matter.
        let headers = h(&[(":path", b"/api/flows"), ("x-custom", b"\xe9")]);
        let plan = s.plan(&headers, || None);
        assert!(matches!(plan.route, Route::Callout { .. }));
    }

    /// Every trace format reaches the auth service in both protocols, a stripped one
    /// never, a trace value that is not text does not fail the request, and the public
    /// path sends nothing; `[]` turns it off.
    #[test]
    fn trace_headers_go_on_every_callout_of_both_protocols() {
        let trace: &[(&str, &[u8])] = &[
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", b"vendor=1"),
            ("x-b3-traceid", b"463ac35c9f6413ad"),
            ("x-b3-spanid", b"a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", b"0020000000000001"),
            ("x-b3-sampled", b"1"),
            ("x-b3-flags", b"1"),
            ("b3", b"463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
            ("x-request-id", b"rid-1"),
            ("x-datadog-trace-id", b"123"),
            ("x-datadog-parent-id", b"456"),
            ("x-datadog-sampling-priority", b"1"),
            ("x-datadog-origin", b"rum"),
            ("x-datadog-tags", b"_dd.p.dm=-4"),
            ("sw8", b"1-MQ==-NQ==-1-bWVzaA==-aW5zdGFuY2U=-L2FwaQ==-YXV0aA=="),
            ("x-amzn-trace-id", b"Root=1-5759e988-bd862e3fe1be46a994272793"),
        ];
        for protocol in ["forward_auth", "ext_authz"] {
            let s = settings(&format!(
                r#"{{"auth": {{"cluster": "auth", "protocol": "{protocol}"}}, "strip_headers": ["x-nebula-*", "x-b3-flags"]}}"#
            ));
            let mut request = h(&[(":method", b"GET"), (":path", b"/api/flows"), ("authorization", b"Bearer t")]);
            request.extend(h(trace));
            request.extend(h(&[("uber-trace-id", b"not-listed"), ("x-b3-sampled", b"0")]));
            let plan = s.plan(&request, || Some("10.0.0.7:1".into()));
            let sent = callout(&plan);
            for (name, value) in trace {
                let value = std::str::from_utf8(value).unwrap();
                let want = match *name {
                    "x-b3-flags" => None, // stripped
                    "x-b3-sampled" => Some("1,0".to_string()),
                    _ => Some(value.to_string()),
                };
                let got: Vec<_> = sent.iter().filter(|(n, _)| n == name).map(|(_, v)| v.to_string()).collect();
                assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{protocol}: {name}: {sent:?}");
            }
            assert!(!sent.iter().any(|(n, _)| *n == "uber-trace-id"), "{protocol}: {sent:?}");
            assert!(sent.contains(&("authorization", "Bearer t")), "{protocol}: {sent:?}");

            // Not text: left out, the request still checked.
            let odd = h(&[(":path", b"/api/flows"), ("authorization", b"Bearer t"), ("traceparent", b"\xff")]);
            let plan = s.plan(&odd, || None);
            assert!(!callout(&plan).iter().any(|(n, _)| *n == "traceparent"), "{protocol}");

            // A public path: no callout at all.
            let mut public = h(&[(":path", b"/api/health")]);
            public.extend(h(trace));
            assert!(matches!(s.plan(&public, || None).route, Route::Public { .. }));

            let off = settings(&format!(
                r#"{{"auth": {{"cluster": "auth", "protocol": "{protocol}", "trace_headers": []}}}}"#
            ));
            let plan = off.plan(&request, || Some("10.0.0.7:1".into()));
            let sent = callout(&plan);
            assert!(!sent.iter().any(|(n, _)| trace.iter().any(|(t, _)| t == n)), "{protocol} off: {sent:?}");
        }
    }

    /// A name the answer may depend on is refused as a trace header (it would leave the
    /// cache key): a request header, the principal header, a JWT source.
    #[test]
    fn a_trace_header_the_answer_may_depend_on_is_refused() {
        for json in [
            r#"{"auth": {"cluster": "a", "request_headers": ["x-request-id"], "trace_headers": ["x-request-id"]}}"#,
            r#"{"auth": {"cluster": "a", "trace_headers": ["x-peer"]}, "principals": ["spiffe://a/*"], "principal_header": "x-peer"}"#,
            r#"{"auth": {"cluster": "a", "trace_headers": ["x-token"]}, "jwt": {"providers": [{"issuer": "i", "secret": "0123456789abcdef0123456789abcdef"}], "from_headers": [{"name": "x-token"}]}}"#,
        ] {
            let err = Settings::from_json(json.as_bytes()).unwrap_err();
            assert!(
                err.field.starts_with("auth.trace_headers") && err.message.contains("cache key"),
                "{json}: {err:?}"
            );
        }
        // The default leaves out what request_headers sends: it stays keyed, sent once.
        let s = settings(
            r#"{"auth": {"cluster": "a", "request_headers": ["authorization", "x-request-id"]}, "cache": {}}"#,
        );
        assert!(!s.auth.trace_headers.contains("x-request-id") && s.auth.trace_headers.contains("traceparent"));
        let request = h(&[(":path", b"/api/flows"), ("x-request-id", b"a"), ("traceparent", b"t")]);
        let plan = s.plan(&request, || None);
        let sent = callout(&plan);
        assert_eq!(sent.iter().filter(|(n, _)| *n == "x-request-id").count(), 1, "{sent:?}");
        let cache = s.cache.as_ref().unwrap();
        let other = h(&[(":path", b"/api/flows"), ("x-request-id", b"b"), ("traceparent", b"t2")]);
        let plan_other = s.plan(&other, || None);
        assert_ne!(cache.key("a", &sent), cache.key("a", &callout(&plan_other)), "x-request-id is keyed here");
    }
}
