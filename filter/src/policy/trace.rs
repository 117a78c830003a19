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
use crate::policy::forward::CalloutHeader;
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

/// `auth.trace_headers`: the list replaces the default; `[]` sends none.
pub(crate) fn compile(raw: Option<Vec<String>>) -> Result<HeaderNames, ConfigError> {
    match raw {
        Some(names) => HeaderNames::parse("auth.trace_headers", &names, true),
        None => HeaderNames::parse("auth.trace_headers", &DEFAULT_TRACE_HEADERS.map(String::from), false),
    }
}

/// Appends to `out` each header of `request` that `trace` names, unless it is stripped
/// (`stripped`: never sent, whatever lists it) or `out` already has it (sent by
/// `request_headers` or `headers_to_add`). A repeated one goes as one line, its values
/// joined with `,` (RFC 9110 §5.3; W3C Trace Context §3.3.1.1 for `tracestate`). A value
/// that is not text is left out: trace context is best effort and must not fail the
/// request.
pub fn append<'h, H: Header>(
    trace: &HeaderNames,
    request: &'h [H],
    stripped: impl Fn(&str) -> bool,
    out: &mut Vec<CalloutHeader<'h>>,
) {
    if trace.is_empty() {
        return;
    }
    for (i, h) in request.iter().enumerate() {
        let name = h.name();
        if name.starts_with(':') || !trace.contains(name) || stripped(name) {
            continue;
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue; // Already sent, or joined into its first line.
        }
        if let Some(line) = headers::joined(&request[i..], name) {
            out.push((name, line));
        }
    }
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
        let set = compile(None).unwrap();
        for name in DEFAULT_TRACE_HEADERS {
            assert!(set.contains(name), "{name}");
            assert_eq!(name, name.to_ascii_lowercase());
            assert_eq!(DEFAULT_TRACE_HEADERS.iter().filter(|n| **n == name).count(), 1, "{name}");
        }
        assert!(!set.contains("authorization") && !set.contains("cookie") && !set.contains("baggage"));
    }

    #[test]
    fn every_format_goes_repeated_ones_joined_non_text_left_out() {
        let set = compile(None).unwrap();
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
        let mut out = vec![];
        append(&set, &request, |_| false, &mut out);
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
        let mut out: Vec<CalloutHeader<'_>> = vec![("x-request-id", "from-headers-to-add".into())];
        append(&compile(None).unwrap(), &request, |n| n == "b3", &mut out);
        assert_eq!(names(&out), ["x-request-id: from-headers-to-add", "traceparent: tp"]);
        // A list replaces the default, patterns allowed; [] sends nothing.
        let mut out = vec![];
        append(&compile(Some(vec!["uber-*".into()])).unwrap(), &request, |_| false, &mut out);
        assert_eq!(names(&out), ["uber-trace-id: u"]);
        let mut out = vec![];
        append(&compile(Some(vec![])).unwrap(), &request, |_| false, &mut out);
        assert!(out.is_empty());
        assert!(compile(Some(vec!["bad name".into()])).is_err());
    }
}
