//! Envoy's own reply to a callout the auth service never answered, told apart from an
//! answer. When the connection to the auth service is refused, or reset before any
//! response byte, Envoy's async HTTP client hands the filter a local reply of its router
//! instead (measured on Envoy 1.40 through proxy-wasm; the callout's response flags are
//! not readable from the plugin):
//!
//! | what happened | `:status` | body |
//! |---------------|-----------|------|
//! | connection reset or closed before the answer (an nginx reload) | 503 | `upstream connect error or disconnect/reset before headers. reset reason: connection termination` |
//! | connection refused | 503 | `... reset reason: remote connection failure` |
//! | `timeout_ms` passed | 504 | `upstream request timeout` |
//! | garbage instead of HTTP | 502 | `... reset reason: protocol error` |
//! | any of these after Envoy's own retry | same | `... retried and the latest reset reason: ...` |
//!
//! None of them carries `x-envoy-upstream-service-time`, which the router adds to every
//! response that came from the auth service: a real 503 answered by the auth service has
//! it, and is never taken for one of these.
//!
//! Retries follow from it (`auth.retry_on_reset`): Envoy's own, asked for with
//! [`ENVOY_RETRY_HEADERS`] on every callout, and, when Envoy's reply still says reset or
//! refused, the filter's (flow/request.rs), once, within what is left of `timeout_ms` (and
//! with Envoy's retry again): at most four connection attempts, all within the timeout.

use crate::policy::headers::{self, Header};

/// Asks Envoy's router to retry the callout once itself when its connection is reset or
/// refused before any response byte (what ext_authz's `retry_policy` configures; a
/// dispatched call has no retry policy of its own). Envoy waits its backoff (25 ms base)
/// first, which lets its pool drop the other connections a restarting auth service is
/// closing, and stays within the callout's timeout; it never retries an answer (its
/// `reset` also covers a protocol error: garbage is sent once more, by Envoy only).
/// Measured under 5 nginx reloads (tests/tests/graceful_restart.rs, ~5 000 requests):
/// the filter's immediate retry alone failed 1–6 requests per run (it picked another
/// connection being closed); Envoy's retry plus the filter's without these headers
/// failed 1 request in 2 of 7 runs; with both, none in the runs since.
///
/// One retry is the router's default once `x-envoy-retry-on` is set: no
/// `x-envoy-max-retries` (a header costs the callout ~3 k instructions, measured with `make bench-callgrind`).
///
/// `content-length: 0`: Envoy's router re-sends a retried request as headers then an
/// empty body, which HTTP/1.1 would frame as `transfer-encoding: chunked`; with the
/// length said, the retry is byte for byte the request it repeats (tested).
pub const ENVOY_RETRY_HEADERS: [(&str, &str); 2] =
    [("x-envoy-retry-on", "reset,connect-failure"), ("content-length", "0")];

/// The router header on every answer that came from upstream.
const UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";
/// How Envoy's local reply for a connection that ended before any answer starts.
const RESET_BODY: &[u8] = b"upstream connect error or disconnect/reset before headers. ";
/// What follows it: the reason, or (after Envoy's own retry) the last attempt's reason.
const REASON: &[u8] = b"reset reason: ";
const RETRIED_REASON: &[u8] = b"retried and the latest reset reason: ";
const TIMEOUT_BODY: &[u8] = b"upstream request timeout";
/// Envoy's local replies are short: a longer body is an answer, not read as one of them.
pub const MAX_REPLY_BYTES: usize = 512;

/// Why Envoy answered the callout itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyReply {
    /// Reset or closed before any response byte (`connection termination`, `remote reset`).
    Reset,
    /// The connection could not be made (`remote connection failure`, `connection failure`).
    Refused,
    /// `auth.timeout_ms` passed without an answer.
    Timeout,
    /// Another reset reason (protocol error, overflow...): bytes came, or Envoy gave up.
    Other,
}

impl EnvoyReply {
    /// Sent once more (`auth.retry_on_reset`): the auth service never saw or never
    /// answered the request, and the callout is an idempotent GET.
    pub fn worth_retrying(self) -> bool {
        matches!(self, EnvoyReply::Reset | EnvoyReply::Refused)
    }
}

/// Whether `headers` may be one of Envoy's replies, so that the body is worth reading:
/// 502, 503 or 504 without the upstream marker. Cheap; false for every answer.
pub fn may_be_envoy_reply<H: Header>(headers: &[H]) -> bool {
    matches!(headers::first(headers, ":status"), Some(b"502" | b"503" | b"504"))
        && headers::first(headers, UPSTREAM_SERVICE_TIME).is_none()
}

/// Envoy's reply in `headers` and `body`, or `None` for an answer of the auth service.
pub fn envoy_reply<H: Header>(headers: &[H], body: &[u8]) -> Option<EnvoyReply> {
    if !may_be_envoy_reply(headers) {
        return None;
    }
    if body == TIMEOUT_BODY {
        return Some(EnvoyReply::Timeout);
    }
    let rest = body.strip_prefix(RESET_BODY)?;
    let reason = rest.strip_prefix(REASON).or_else(|| rest.strip_prefix(RETRIED_REASON))?;
    // Older Envoys add ", transport failure reason: ..." after the reason.
    let reason = reason.split(|&b| b == b',').next().unwrap_or_default();
    Some(match reason {
        b"connection termination" | b"remote reset" | b"remote refused stream reset" => EnvoyReply::Reset,
        b"remote connection failure" | b"local connection failure" | b"connection failure" => EnvoyReply::Refused,
        _ => EnvoyReply::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(status: &str, marker: bool) -> Vec<(String, Vec<u8>)> {
        let mut headers = vec![
            (":status".to_string(), status.as_bytes().to_vec()),
            ("content-type".to_string(), b"text/plain".to_vec()),
        ];
        if marker {
            headers.push((UPSTREAM_SERVICE_TIME.to_string(), b"0".to_vec()));
        }
        headers
    }

    #[test]
    fn envoys_replies_as_measured_on_envoy_1_40() {
        let reset = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";
        let refused =
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
        let old_refused = b"upstream connect error or disconnect/reset before headers. reset reason: connection \
            failure, transport failure reason: delayed connect error: 111";
        let garbage = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error";
        let retried = b"upstream connect error or disconnect/reset before headers. retried and the latest reset \
            reason: remote connection failure";
        let cases: &[(&str, &[u8], Option<EnvoyReply>)] = &[
            ("503", reset, Some(EnvoyReply::Reset)),
            ("503", refused, Some(EnvoyReply::Refused)),
            ("503", old_refused, Some(EnvoyReply::Refused)),
            ("504", b"upstream request timeout", Some(EnvoyReply::Timeout)),
            ("502", garbage, Some(EnvoyReply::Other)),
            ("503", retried, Some(EnvoyReply::Refused)),
            ("503", b"status 503", None),
            ("503", b"", None),
            ("200", reset, None),
        ];
        for (status, body, want) in cases {
            assert_eq!(envoy_reply(&h(status, false), body), *want, "{status} {}", String::from_utf8_lossy(body));
            // The auth service's own answer, whatever its body says.
            assert_eq!(envoy_reply(&h(status, true), body), None, "{status} with the upstream marker");
        }
        let retried: Vec<bool> = [EnvoyReply::Reset, EnvoyReply::Refused, EnvoyReply::Timeout, EnvoyReply::Other]
            .iter()
            .map(|r| r.worth_retrying())
            .collect();
        assert_eq!(retried, [true, true, false, false], "only what never reached an answer");
        assert!(!may_be_envoy_reply(&h("200", false)) && !may_be_envoy_reply(&h("503", true)));
        assert!(may_be_envoy_reply(&h("503", false)));
    }
}
