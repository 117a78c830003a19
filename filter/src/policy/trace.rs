//! Trace context on the callout (`auth.trace_headers`): the request's trace headers go
//! to the auth service as the client (or the sidecar that started the trace) sent them,
//! so the auth service's logs and spans join the request's trace.
//!
//! They are forwarded unchanged, no child span minted: Envoy does not trace a Wasm
//! filter's HTTP calls (no span is reported for the callout), so a span id minted here
//! would name a parent no tracer ever receives, and the auth service's span would hang
//! under a hole. Forwarded as-is, its span is a child of the request's span, which did
//! cover the callout.
//!
//! They carry no credential and never change the answer, so they are no part of the
//! cache key nor of coalescing (cache/shared.rs skips these names): requests that
//! differ only in their trace ids share a decision.

use crate::error::ConfigError;
use crate::policy::forward::{self, CalloutHeader};
use crate::policy::headers::{self, Header, HeaderNames};

/// The context headers of Envoy 1.40's tracers, and its request id: W3C Trace Context
/// (OpenTelemetry, Zipkin in W3C mode, Datadog, Fluentd), B3 multi and single (Zipkin),
/// Datadog's own, SkyWalking's `sw8`, AWS X-Ray's, and `x-request-id` (Envoy's
/// connection manager makes one for every request; access logs print it). Left out:
/// the headers of tracers Envoy no longer ships (`x-ot-span-context` of Lightstep,
/// `grpc-trace-bin` and `x-cloud-trace-context` of OpenCensus), Jaeger's
/// `uber-trace-id` (no Envoy 1.40 tracer reads it), and W3C `baggage`, which carries
/// application data rather than the trace's identity; list them to send them.
pub const DEFAULT_TRACE_HEADERS: [&str; 16] = [
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-request-id",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-datadog-origin",
    "x-datadog-tags",
    "sw8",
    "x-amzn-trace-id",
];

/// The trace header names, exact and lower-case, bucketed by length: a request's
/// header is told apart by its length first, then compared with the one or two names
/// of that length (every header of every callout, and every callout header for the
/// cache key, goes through [`TraceHeaders::contains`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    by_len: Vec<Vec<String>>,
}

impl TraceHeaders {
    /// From a list [`HeaderNames::parse`] accepted (exact names, no patterns).
    fn new(list: &[String]) -> TraceHeaders {
        let mut set = TraceHeaders::default();
        for name in list.iter().map(|n| n.to_ascii_lowercase()) {
            if set.by_len.len() <= name.len() {
                set.by_len.resize(name.len() + 1, Vec::new());
            }
            if !set.by_len[name.len()].contains(&name) {
                set.by_len[name.len()].push(name);
            }
        }
        set
    }

    /// Whether `name` (any case) is a trace header.
    pub fn contains(&self, name: &str) -> bool {
        self.by_len.get(name.len()).is_some_and(|same| same.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Whether no trace header is sent (`"trace_headers": []`).
    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

/// Headers that carry a credential or a fact the auth service decides on: never trace
/// context, since trace headers are no part of the cache key.
const NEVER: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "host"];

/// `auth.trace_headers`: the list replaces the default; `[]` sends none. Exact names only,
/// and none that the callout sends for another reason (`request_headers`,
/// `headers_to_add`, a forwarding header, a credential): the cache key leaves trace
/// headers out, so a name that can change the answer would let one client's decision
/// serve another. Such a name is refused in a list, and left out of the default (a
/// `request_headers` that lists `x-request-id` keeps it keyed).
pub(crate) fn compile(
    raw: Option<Vec<String>>,
    request_headers: &HeaderNames,
    headers_to_add: &[&str],
) -> Result<TraceHeaders, ConfigError> {
    let conflict = |name: &str| {
        let lower = name.to_ascii_lowercase();
        Some(if NEVER.contains(&lower.as_str()) {
            "carries a credential or the request's host"
        } else if forward::is_x_forwarded(&lower) || lower == "forwarded" {
            "is a forwarding header"
        } else if request_headers.contains(&lower) {
            "is sent by auth.request_headers"
        } else if headers_to_add.iter().any(|n| n.eq_ignore_ascii_case(&lower)) {
            "is set by auth.headers_to_add"
        } else {
            return None;
        })
    };
    let Some(names) = raw else {
        let names: Vec<String> =
            DEFAULT_TRACE_HEADERS.iter().filter(|n| conflict(n).is_none()).map(|n| n.to_string()).collect();
        HeaderNames::parse("auth.trace_headers", &names, false)?;
        return Ok(TraceHeaders::new(&names));
    };
    HeaderNames::parse("auth.trace_headers", &names, false)?;
    if let Some((i, name, why)) = names.iter().enumerate().find_map(|(i, n)| Some((i, n, conflict(n)?))) {
        return Err(ConfigError::new(
            format!("auth.trace_headers[{i}]"),
            format!(
                "{name:?} {why}: trace headers are left out of the cache key, so they may not be headers the \
                 answer can depend on"
            ),
        ));
    }
    Ok(TraceHeaders::new(&names))
}

/// Each header of `request` that `trace` names, unless it is stripped (`stripped`: never
/// sent, whatever lists it) or the callout already sends it (`sent`: by `request_headers`
/// or `headers_to_add`). A repeated one goes as one line, its values joined with `,`
/// (RFC 9110 §5.3; W3C Trace Context §3.3.1.1 for `tracestate`). A value that is not text
/// is left out: trace context is best effort and must not fail the request.
pub fn lines<'h, H: Header>(
    trace: &TraceHeaders,
    request: &'h [H],
    stripped: impl Fn(&str) -> bool,
    sent: impl Fn(&str) -> bool,
) -> Vec<CalloutHeader<'h>> {
    let mut out: Vec<CalloutHeader<'h>> = Vec::new();
    if trace.is_empty() {
        return out;
    }
    for (i, h) in request.iter().enumerate() {
        let name = h.name();
        if name.starts_with(':') || !trace.contains(name) || stripped(name) || sent(name) {
            continue;
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue; // Joined into its first line.
        }
        if let Some(line) = headers::joined(&request[i..], name) {
            out.push((name, line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    fn names(out: &[CalloutHeader<'_>]) -> Vec<String> {
        out.iter().map(|(n, v)| format!("{n}: {v}")).collect()
    }

    #[test]
    fn the_default_list_is_valid_lower_case_and_without_duplicates() {
        let set = compile(None, &HeaderNames::default(), &[]).unwrap();
        for name in DEFAULT_TRACE_HEADERS {
            assert!(set.contains(name), "{name}");
            assert_eq!(name, name.to_ascii_lowercase());
            assert_eq!(DEFAULT_TRACE_HEADERS.iter().filter(|n| **n == name).count(), 1, "{name}");
        }
        assert!(!set.contains("authorization") && !set.contains("cookie") && !set.contains("baggage"));
    }

    #[test]
    fn every_format_goes_repeated_ones_joined_non_text_left_out() {
        let set = compile(None, &HeaderNames::default(), &[]).unwrap();
        let request = h(&[
            (":path", b"/api/flows"),
            ("authorization", b"Bearer t"),
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", b"a=1"),
            ("x-b3-traceid", b"463ac35c9f6413ad"),
            ("x-b3-spanid", b"a2fb4a1d1a96d312"),
            ("b3", b"463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
            ("X-Request-Id", b"rid"),
            ("tracestate", b"b=2"),
            ("x-datadog-trace-id", b"\xff"),
            ("sw8", b"1-abc"),
        ]);
        let out = lines(&set, &request, |_| false, |_| false);
        assert_eq!(
            names(&out),
            [
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate: a=1,b=2",
                "x-b3-traceid: 463ac35c9f6413ad",
                "x-b3-spanid: a2fb4a1d1a96d312",
                "b3: 463ac35c9f6413ad-a2fb4a1d1a96d312-1",
                "X-Request-Id: rid",
                "sw8: 1-abc",
            ]
        );
    }

    #[test]
    fn stripped_already_sent_and_unlisted_headers_do_not_go() {
        let request = h(&[("x-request-id", b"client"), ("traceparent", b"tp"), ("uber-trace-id", b"u"), ("b3", b"1")]);
        let sent = |n: &str| n == "x-request-id"; // sent by headers_to_add
        let none = HeaderNames::default();
        let out = lines(&compile(None, &none, &[]).unwrap(), &request, |n| n == "b3", sent);
        assert_eq!(names(&out), ["traceparent: tp"]);
        // A list replaces the default; [] sends nothing.
        let out =
            lines(&compile(Some(vec!["Uber-Trace-Id".into()]), &none, &[]).unwrap(), &request, |_| false, |_| false);
        assert_eq!(names(&out), ["uber-trace-id: u"]);
        let out = lines(&compile(Some(vec![]), &none, &[]).unwrap(), &request, |_| false, |_| false);
        assert!(out.is_empty());
    }

    /// What could change the answer is never a trace header: it would leave the cache key.
    #[test]
    fn names_the_answer_may_depend_on_are_refused() {
        let request_headers = HeaderNames::parse("r", &["x-api-*".into(), "x-tenant".into()], true).unwrap();
        let refuse = |name: &str| compile(Some(vec!["traceparent".into(), name.into()]), &request_headers, &["x-op"]);
        for name in [
            "Authorization",
            "proxy-authorization",
            "cookie",
            "host",
            "x-forwarded-for",
            "x-forwarded-uri",
            "x-real-ip",
            "forwarded",
            "x-api-key",
            "x-tenant",
            "x-op",
        ] {
            let err = refuse(name).unwrap_err();
            assert_eq!(err.field, "auth.trace_headers[1]", "{name}");
            assert!(err.message.contains("cache key"), "{name}: {err:?}");
        }
        assert!(refuse("x-b3-*").is_err(), "exact names only");
        assert!(refuse("bad name").is_err());
        assert!(refuse("uber-trace-id").is_ok());
    }
}
