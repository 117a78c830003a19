//! The auth service's answer, turned into allow (inject these headers), deny (relay
//! this response) or fail (fail closed with `status_on_error`).

use std::fmt;

use crate::policy::auth::AuthSettings;
use crate::policy::ext_authz::{self, AllowExtra, Protocol};
use crate::policy::forward;
use crate::policy::headers::{self, Header};

/// Body of every fail-closed reply: short, and says nothing about the auth service.
pub const FAILURE_BODY: &[u8] = b"nebula-authz: authorization check failed\n";

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'r> {
    /// Resume the request with these auth response headers set (each name replaced; with
    /// ext_authz one value per name, the last), and
    /// add `cookies` (`Set-Cookie` values) to the client's response.
    Allow {
        inject: Vec<(&'r str, &'r [u8])>,
        cookies: Vec<&'r [u8]>,
        /// ext_authz: headers to append, to remove, and for the client's response.
        extra: Option<Box<AllowExtra>>,
    },
    /// Reply to the client with the auth response's status, these headers and its body.
    Deny {
        status: u32,
        headers: Vec<(&'r str, &'r str)>,
    },
    Fail(Failure),
}

/// Why a request failed closed. Logged; never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No response: timeout, reset, connection refused (Envoy reports no `:status`).
    NoResponse,
    /// `:status` missing, not a number, or 1xx.
    BadStatus,
    /// The auth service answered 5xx: an error, not a decision.
    AuthServerError(u32),
    /// Envoy's own 503 for the callout: no connection to the auth service, or it went
    /// away before answering (the reply has no `x-envoy-upstream-service-time`).
    Unreachable(Unreachable),
    /// Envoy's own 504 for the callout: `auth.timeout_ms` passed without an answer.
    TimedOut { ms: u64 },
    /// The response body is over `auth.max_response_bytes`.
    BodyTooLarge(usize),
    /// A header to relay to the client is not text.
    ResponseHeaderNotText,
    /// A client header to send to the auth service is not text.
    RequestHeaderNotText,
    /// Envoy refused to start the callout (e.g. unknown cluster).
    DispatchFailed,
    /// The host refused a header operation.
    HostError,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoResponse => write!(f, "no response from the auth service (timeout, reset or unreachable)"),
            Failure::BadStatus => write!(f, "auth response has no valid final :status"),
            Failure::AuthServerError(status) => write!(f, "auth service answered {status}"),
            Failure::Unreachable(why) => write!(f, "{why} (Envoy's 503, not the auth service's)"),
            Failure::TimedOut { ms } => write!(f, "auth service timed out after {ms} ms (Envoy's 504)"),
            Failure::BodyTooLarge(size) => {
                write!(f, "auth response body of {size} bytes is over auth.max_response_bytes")
            }
            Failure::ResponseHeaderNotText => write!(f, "auth response header to relay is not valid UTF-8"),
            Failure::RequestHeaderNotText => write!(f, "request header to send to the auth service is not valid UTF-8"),
            Failure::DispatchFailed => write!(f, "callout could not be dispatched (unknown cluster?)"),
            Failure::HostError => write!(f, "the host refused a header operation"),
        }
    }
}

impl Failure {
    /// A short name for the access log's `reason` and the `nebula_authz.failed.*` counters
    /// (each listed in metric_names.rs, which keeps the set of counters fixed).
    pub fn code(&self) -> &'static str {
        match self {
            Failure::NoResponse => "no_response",
            Failure::BadStatus => "bad_status",
            Failure::AuthServerError(_) => "auth_server_error",
            Failure::Unreachable(Unreachable::Refused) => "refused",
            Failure::Unreachable(Unreachable::Reset) => "reset",
            Failure::Unreachable(Unreachable::NoHealthyUpstream) => "no_healthy_upstream",
            Failure::Unreachable(Unreachable::Other) => "unreachable",
            Failure::TimedOut { .. } => "timeout",
            Failure::BodyTooLarge(_) => "response_too_large",
            Failure::ResponseHeaderNotText => "response_header_not_text",
            Failure::RequestHeaderNotText => "request_header_not_text",
            Failure::DispatchFailed => "dispatch_failed",
            Failure::HostError => "host_error",
        }
    }

    /// The status the callout came back with, when it failed on one: the auth service's
    /// 5xx, or Envoy's own 503 (unreachable) or 504 (timeout).
    pub fn status(&self) -> Option<u32> {
        match self {
            Failure::AuthServerError(status) => Some(*status),
            Failure::Unreachable(_) => Some(503),
            Failure::TimedOut { .. } => Some(504),
            _ => None,
        }
    }
}

/// What Envoy's 503 for a callout says happened (its body names the reset reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// `reset reason: remote connection failure` / `connection failure`: nothing listens.
    Refused,
    /// `connection termination`, `remote reset`...: the connection closed before an answer.
    Reset,
    /// The cluster has no usable endpoint (DNS, health checks).
    NoHealthyUpstream,
    /// A 503 without Envoy's usual body.
    Other,
}

impl Unreachable {
    /// Reads Envoy's local reply body (`upstream connect error or disconnect/reset before
    /// headers. reset reason: ...`, `no healthy upstream`).
    pub fn from_body(body: &[u8]) -> Unreachable {
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        if has(b"no healthy upstream") {
            Unreachable::NoHealthyUpstream
        } else if has(b"connection failure") {
            Unreachable::Refused
        } else if has(b"reset reason:") {
            Unreachable::Reset
        } else {
            Unreachable::Other
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unreachable::Refused => "connection refused by the auth service",
            Unreachable::Reset => "connection reset/closed by the auth service before an answer",
            Unreachable::NoHealthyUpstream => "no healthy endpoint in the auth cluster",
            Unreachable::Other => "connection refused/reset",
        })
    }
}

/// The header Envoy's router adds to every response that came from an upstream; its
/// absence on a 503/504 marks the reply as Envoy's own (connect failure, reset, timeout).
const UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";

/// Decides on the auth response; `headers` include `:status` (empty when Envoy got no
/// response), `body_size` is the size of its body.
pub fn decide<'r, H: Header>(auth: &AuthSettings, headers: &'r [H], body_size: usize) -> Verdict<'r> {
    if headers.is_empty() {
        return Verdict::Fail(Failure::NoResponse);
    }
    let Some(status) = status_of(headers) else {
        return Verdict::Fail(Failure::BadStatus);
    };
    if status >= 500 {
        let envoys = matches!(status, 503 | 504) && headers::first(headers, UPSTREAM_SERVICE_TIME).is_none();
        return Verdict::Fail(match (envoys, status) {
            (true, 504) => Failure::TimedOut { ms: auth.timeout.as_millis() as u64 },
            // The body (read only in this case) tells refused from reset: flow/steps/decide.rs.
            (true, _) => Failure::Unreachable(Unreachable::Other),
            _ => Failure::AuthServerError(status),
        });
    }
    // An oversized answer is malformed whatever its status: allow included.
    if body_size > auth.max_response_bytes {
        return Verdict::Fail(Failure::BodyTooLarge(body_size));
    }
    if auth.allow_statuses.contains(&status) {
        let inject = match &auth.upstream_headers_regex {
            None => headers::select(headers, &auth.upstream_headers),
            Some(regex) => headers
                .iter()
                .map(|h| (h.name(), h.value()))
                .filter(|(name, _)| {
                    !name.starts_with(':') && (auth.upstream_headers.contains(name) || regex.matches(name))
                })
                .collect(),
        };
        let cookies = forward::auth_cookies(headers, &auth.add_auth_cookies_to_response);
        // Nothing to look for in forward_auth's common case: no allocation.
        let ext = auth.protocol == Protocol::ExtAuthz;
        // ext_authz sets each allowed header in turn, each replacing the one before
        // (Envoy's `setCopy`): a repeated one reaches the upstream once, with its last value.
        let inject = if ext { last_values(inject) } else { inject };
        let extra = if ext || !auth.upstream_headers_to_append.is_empty() || !auth.client_headers_on_success.is_empty()
        {
            ext_authz::allow_extra(&auth.upstream_headers_to_append, &auth.client_headers_on_success, ext, headers)
        } else {
            None
        };
        return Verdict::Allow { inject, cookies, extra };
    }
    let mut relay = Vec::new();
    // ext_authz without `client_headers`: every header but host and what Envoy frames.
    let relayed = |name: &str| {
        if auth.client_headers_all {
            !name.starts_with(':')
                && !name.eq_ignore_ascii_case("host")
                && !headers::is_connection_header(name)
                && !name.eq_ignore_ascii_case(ext_authz::HEADERS_TO_REMOVE)
        } else {
            !name.starts_with(':') && auth.client_headers.contains(name)
        }
    };
    for (name, value) in headers.iter().map(|h| (h.name(), h.value())).filter(|(n, _)| relayed(n)) {
        match headers::text(value) {
            Some(value) => relay.push((name, value)),
            None => return Verdict::Fail(Failure::ResponseHeaderNotText),
        }
    }
    Verdict::Deny { status, headers: relay }
}

/// `headers` with only the last value of each name, in their order.
fn last_values<'r>(headers: Vec<(&'r str, &'r [u8])>) -> Vec<(&'r str, &'r [u8])> {
    let later = |i: usize, name: &str| headers[i + 1..].iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !headers.iter().enumerate().any(|(i, (name, _))| later(i, name)) {
        return headers; // Nothing repeated, the common case: no allocation.
    }
    headers.iter().enumerate().filter(|(i, (name, _))| !later(*i, name)).map(|(_, h)| *h).collect()
}

/// Whether the auth service answered a final status that refuses the credential: below
/// 500 and not in `allow_statuses`. True for every [`Verdict::Deny`], and also for an
/// answer that fails closed on its form (a body over `max_response_bytes`, a header that is
/// not text) but still says no: either way it ends the allows cached for its key.
pub fn refuses<H: Header>(auth: &AuthSettings, headers: &[H]) -> bool {
    status_of(headers).is_some_and(|status| status < 500 && !auth.allow_statuses.contains(&status))
}

/// The final status, 200..=599; 1xx and anything malformed is `None`.
pub fn status_of<H: Header>(headers: &[H]) -> Option<u32> {
    let value = headers::first(headers, ":status")?;
    if value.len() != 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    (200..=599).contains(&status).then_some(status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::plugin_config::Settings;

    fn settings() -> Settings {
        Settings::from_json(br#"{"auth": {"cluster": "auth", "max_response_bytes": 100}}"#).unwrap()
    }

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn allow_injects_only_the_configured_headers_all_values() {
        let s = settings();
        let resp = h(&[
            (":status", b"200"),
            ("x-nebula-actor-id", b"alice"),
            ("x-nebula-actor-permissions", b"read"),
            ("x-nebula-actor-permissions", b"write"),
            ("x-other", b"leak"),
            ("set-cookie", b"a=1"),
            ("x-nebula-ratelimit-config", b"\xe9"),
        ]);
        assert_eq!(
            s.decide(&resp, 2),
            Verdict::Allow {
                inject: vec![
                    ("x-nebula-actor-id", &b"alice"[..]),
                    ("x-nebula-actor-permissions", &b"read"[..]),
                    ("x-nebula-actor-permissions", &b"write"[..]),
                    ("x-nebula-ratelimit-config", &b"\xe9"[..]),
                ],
                cookies: vec![],
                extra: None,
            }
        );
    }

    #[test]
    fn deny_relays_status_and_allowed_headers() {
        let s = settings();
        let resp = h(&[
            (":status", b"302"),
            ("location", b"https://login.example.com/"),
            ("set-cookie", b"a=1"),
            ("set-cookie", b"b=2"),
            ("x-internal", b"secret"),
            ("content-length", b"0"),
        ]);
        assert_eq!(
            s.decide(&resp, 0),
            Verdict::Deny {
                status: 302,
                headers: vec![("location", "https://login.example.com/"), ("set-cookie", "a=1"), ("set-cookie", "b=2")]
            }
        );
        let resp = h(&[(":status", b"204")]);
        assert_eq!(s.decide(&resp, 0), Verdict::Deny { status: 204, headers: vec![] }, "only 200 allows by default");
    }

    type Headers<'a> = &'a [(&'a str, &'a [u8])];

    #[test]
    fn errors_fail_closed() {
        let s = settings();
        let cases: &[(Headers, usize, Failure)] = &[
            (&[], 0, Failure::NoResponse),
            (&[("content-type", b"text/plain")], 0, Failure::BadStatus),
            (&[(":status", b"")], 0, Failure::BadStatus),
            (&[(":status", b"abc")], 0, Failure::BadStatus),
            (&[(":status", b"2000")], 0, Failure::BadStatus),
            (&[(":status", b"+20")], 0, Failure::BadStatus),
            (&[(":status", b"100")], 0, Failure::BadStatus),
            (&[(":status", b"600")], 0, Failure::BadStatus),
            (&[(":status", b"500")], 0, Failure::AuthServerError(500)),
            (&[(":status", b"503"), ("x-envoy-upstream-service-time", b"3")], 10, Failure::AuthServerError(503)),
            (&[(":status", b"504"), ("x-envoy-upstream-service-time", b"3")], 0, Failure::AuthServerError(504)),
            (&[(":status", b"503")], 10, Failure::Unreachable(Unreachable::Other)),
            (&[(":status", b"504")], 0, Failure::TimedOut { ms: 5000 }),
            (&[(":status", b"502")], 0, Failure::AuthServerError(502)),
            (&[(":status", b"401")], 101, Failure::BodyTooLarge(101)),
            (&[(":status", b"200")], 101, Failure::BodyTooLarge(101)),
            (&[(":status", b"401"), ("www-authenticate", b"\xff")], 0, Failure::ResponseHeaderNotText),
        ];
        for (headers, body, failure) in cases {
            assert_eq!(s.decide(&h(headers), *body), Verdict::Fail(*failure), "{headers:?}");
        }
    }

    /// Envoy 1.40's local reply bodies for a callout (seen with a refused port, a server
    /// that closes the connection, and a cluster without endpoints).
    #[test]
    fn envoy_local_reply_bodies() {
        let refused = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused";
        assert_eq!(Unreachable::from_body(refused), Unreachable::Refused);
        let closed = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";
        assert_eq!(Unreachable::from_body(closed), Unreachable::Reset);
        assert_eq!(Unreachable::from_body(b"no healthy upstream"), Unreachable::NoHealthyUpstream);
        assert_eq!(Unreachable::from_body(b"busy"), Unreachable::Other);
        assert_eq!(Failure::TimedOut { ms: 300 }.to_string(), "auth service timed out after 300 ms (Envoy's 504)");
        assert!(Failure::Unreachable(Unreachable::Refused).to_string().starts_with("connection refused"));
    }

    #[test]
    fn refusals_are_every_answered_status_but_errors_and_allows() {
        let s = settings();
        for (status, body, want) in [
            (&b"401"[..], 0, true),
            (b"403", 0, true),
            (b"302", 0, true),
            (b"404", 0, true),
            (b"202", 0, true),
            (b"401", 101, true),
            (b"200", 0, false),
            (b"200", 101, false),
            (b"500", 0, false),
            (b"503", 0, false),
            (b"100", 0, false),
            (b"abc", 0, false),
        ] {
            let headers = h(&[(":status", status)]);
            assert_eq!(refuses(&s.auth, &headers), want, "{status:?}");
            if let Verdict::Deny { .. } = decide(&s.auth, &headers, body) {
                assert!(want, "every Deny refuses: {status:?}");
            }
        }
        assert!(!refuses(&s.auth, &h(&[])), "no answer refuses nothing");
    }

    #[test]
    fn allow_list_is_configurable() {
        let s = Settings::from_json(br#"{"auth": {"cluster": "a", "allow_statuses": [200, 202]}}"#).unwrap();
        assert!(matches!(s.decide(&h(&[(":status", b"202")]), 0), Verdict::Allow { .. }));
    }

    #[test]
    fn regex_and_auth_cookies_on_allow() {
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a", "upstream_headers": ["x-user"], "upstream_headers_regex": "^X-Auth-Request-",
                 "add_auth_cookies_to_response": ["_oauth2_proxy"]}}"#,
        )
        .unwrap();
        let resp = h(&[
            (":status", b"200"),
            ("x-auth-request-user", b"alice"),
            ("x-auth-request-email", b"a@example.com"),
            ("x-user", b"alice"),
            ("x-other", b"leak"),
            ("content-length", b"0"),
            ("set-cookie", b"_oauth2_proxy=refreshed; Path=/"),
            ("set-cookie", b"tracking=1"),
        ]);
        assert_eq!(
            s.decide(&resp, 0),
            Verdict::Allow {
                inject: vec![
                    ("x-auth-request-user", &b"alice"[..]),
                    ("x-auth-request-email", &b"a@example.com"[..]),
                    ("x-user", &b"alice"[..]),
                ],
                cookies: vec![&b"_oauth2_proxy=refreshed; Path=/"[..]],
                extra: None,
            }
        );
    }
}
