//! The client's request body in the callout, in one of two contracts:
//! - `auth.with_request_body` (ext_authz shape), as Envoy ext_authz's `with_request_body`
//!   (Istio `includeRequestBodyInCheck`): buffered up to `max_request_bytes`; over it the
//!   request gets 413, or with `allow_partial_message` the callout carries the first
//!   `max_request_bytes` and `x-envoy-auth-partial-body: true`.
//! - `auth.forward_body` + `auth.max_body_size` (forward-auth shape), as Traefik 3.6's
//!   `forwardBody` + `maxBodySize`: the whole body, and over the limit an empty 401 with
//!   no callout. Traefik's default is unlimited; the filter caps it at 16 MiB.
//!
//! Both need Envoy's `allow_on_headers_stop_iteration` (docs/istio.md, "Request body").

use serde::Deserialize;

use crate::error::ConfigError;

/// The header ext_authz adds to a callout that carries a body: whether it was cut short.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// Envoy's own reply to a body over its buffer limit (what ext_authz's clients get).
pub const TOO_LARGE_STATUS: u32 = 413;
pub const TOO_LARGE_BODY: &[u8] = b"Payload Too Large";
/// Traefik's reply to a body over `maxBodySize`: `rw.WriteHeader(401)`, no body.
pub const FORWARD_TOO_LARGE_STATUS: u32 = 401;
/// The largest `max_request_bytes` / `max_body_size`: the whole body sits in Envoy's
/// buffer meanwhile. Also the forward-auth limit when `max_body_size` is unset or -1.
const MAX_MAX_REQUEST_BYTES: u32 = 16 << 20;

/// Whose rules a body callout follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyContract {
    /// Envoy ext_authz `with_request_body`: 413 over the limit, `x-envoy-auth-partial-body`.
    ExtAuthz,
    /// Traefik forwardAuth `forwardBody`: an empty 401 over the limit, no extra header.
    ForwardAuth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestBody {
    max_request_bytes: u32,
    allow_partial_message: Option<bool>,
    pack_as_bytes: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBodySettings {
    pub max_request_bytes: usize,
    pub allow_partial_message: bool,
    /// Accepted for ext_authz parity: it only changes gRPC's encoding; HTTP sends raw bytes.
    pub pack_as_bytes: bool,
    pub contract: BodyContract,
}

impl TryFrom<RawRequestBody> for RequestBodySettings {
    type Error = ConfigError;

    fn try_from(raw: RawRequestBody) -> Result<RequestBodySettings, ConfigError> {
        if !(1..=MAX_MAX_REQUEST_BYTES).contains(&raw.max_request_bytes) {
            return Err(ConfigError::new(
                "auth.with_request_body.max_request_bytes",
                format!("must be between 1 and {MAX_MAX_REQUEST_BYTES}, got {}", raw.max_request_bytes),
            ));
        }
        Ok(RequestBodySettings {
            max_request_bytes: raw.max_request_bytes as usize,
            allow_partial_message: raw.allow_partial_message.unwrap_or(false),
            pack_as_bytes: raw.pack_as_bytes.unwrap_or(false),
            contract: BodyContract::ExtAuthz,
        })
    }
}

/// `auth.forward_body` + `auth.max_body_size` (Traefik `forwardBody` + `maxBodySize`).
/// `None` when the body is not forwarded; `max_body_size` without `forward_body` is an error.
pub fn forward_body(
    forward_body: Option<bool>,
    max_body_size: Option<i64>,
) -> Result<Option<RequestBodySettings>, ConfigError> {
    let max = MAX_MAX_REQUEST_BYTES as i64;
    if forward_body != Some(true) {
        return match max_body_size {
            Some(_) => Err(ConfigError::new("auth.max_body_size", "only applies with \"forward_body\": true")),
            None => Ok(None),
        };
    }
    let limit = match max_body_size.unwrap_or(-1) {
        -1 => max,
        size if (0..=max).contains(&size) => size,
        size => {
            return Err(ConfigError::new(
                "auth.max_body_size",
                format!("must be -1 (the filter's cap, {max} bytes) or between 0 and {max}, got {size}"),
            ))
        }
    };
    Ok(Some(RequestBodySettings {
        max_request_bytes: limit as usize,
        allow_partial_message: false,
        pack_as_bytes: false,
        contract: BodyContract::ForwardAuth,
    }))
}

/// What to do with the body seen so far (`received` bytes, `complete` at end of stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyVerdict {
    /// Keep buffering.
    Wait,
    /// Send the callout with the first `len` bytes; `partial` when the body is longer.
    Send { len: usize, partial: bool },
    /// Over the limit without `allow_partial_message`: 413, no callout.
    TooLarge,
}

impl RequestBodySettings {
    /// ext_authz's rule: a full buffer is 413 unless partial messages are allowed, in
    /// which case the callout goes as soon as `max_request_bytes` are there.
    pub fn step(&self, received: usize, complete: bool) -> BodyVerdict {
        let max = self.max_request_bytes;
        if received > max && !self.allow_partial_message {
            return BodyVerdict::TooLarge;
        }
        if complete || (self.allow_partial_message && received >= max) {
            let len = received.min(max);
            return BodyVerdict::Send { len, partial: received > max };
        }
        BodyVerdict::Wait
    }
}

/// The local reply to a body over the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub status: u32,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Option<&'static [u8]>,
}

impl RequestBodySettings {
    /// The reply to a body over the limit.
    pub fn too_large(&self) -> TooLarge {
        match self.contract {
            BodyContract::ExtAuthz => TooLarge {
                status: TOO_LARGE_STATUS,
                headers: &[("content-type", "text/plain")],
                body: Some(TOO_LARGE_BODY),
            },
            BodyContract::ForwardAuth => TooLarge { status: FORWARD_TOO_LARGE_STATUS, headers: &[], body: None },
        }
    }

    /// The setting a body over the limit broke, for the log line.
    pub fn field(&self) -> &'static str {
        match self.contract {
            BodyContract::ExtAuthz => "auth.with_request_body.max_request_bytes",
            BodyContract::ForwardAuth => "auth.max_body_size",
        }
    }

    /// Sets the callout's `content-length` to the body's; ext_authz also adds
    /// `x-envoy-auth-partial-body` (on every callout with a body, `false` when complete).
    pub fn describe_body<'a>(&self, headers: &mut Vec<(&'a str, &'a str)>, content_length: &'a str, partial: bool) {
        headers.retain(|(name, _)| {
            !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case(PARTIAL_BODY_HEADER)
        });
        headers.push(("content-length", content_length));
        if self.contract == BodyContract::ExtAuthz {
            headers.push((PARTIAL_BODY_HEADER, if partial { "true" } else { "false" }));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    fn settings(max: usize, partial: bool) -> RequestBodySettings {
        RequestBodySettings {
            max_request_bytes: max,
            allow_partial_message: partial,
            pack_as_bytes: false,
            contract: BodyContract::ExtAuthz,
        }
    }

    #[test]
    fn waits_until_the_end_of_the_stream() {
        assert_eq!(settings(64, false).step(10, false), BodyVerdict::Wait);
        assert_eq!(settings(64, false).step(64, false), BodyVerdict::Wait);
        assert_eq!(settings(64, false).step(64, true), BodyVerdict::Send { len: 64, partial: false });
        assert_eq!(settings(64, false).step(0, true), BodyVerdict::Send { len: 0, partial: false });
    }

    #[test]
    fn over_the_limit_is_413_without_partial_messages() {
        assert_eq!(settings(64, false).step(65, false), BodyVerdict::TooLarge);
        assert_eq!(settings(64, false).step(65, true), BodyVerdict::TooLarge);
    }

    #[test]
    fn partial_messages_send_the_first_max_bytes_once_there() {
        assert_eq!(settings(16, true).step(15, false), BodyVerdict::Wait);
        assert_eq!(settings(16, true).step(16, false), BodyVerdict::Send { len: 16, partial: false });
        assert_eq!(settings(16, true).step(70_000, false), BodyVerdict::Send { len: 16, partial: true });
        assert_eq!(settings(16, true).step(17, true), BodyVerdict::Send { len: 16, partial: true });
    }

    #[test]
    fn the_callout_describes_its_body() {
        let mut headers = vec![(":method", "POST"), ("content-length", "0"), ("authorization", "x")];
        settings(64, false).describe_body(&mut headers, "11", false);
        assert_eq!(
            headers,
            vec![(":method", "POST"), ("authorization", "x"), ("content-length", "11"), (PARTIAL_BODY_HEADER, "false")]
        );
        settings(64, false).describe_body(&mut headers, "16", true);
        assert_eq!(headers.iter().filter(|(n, _)| *n == "content-length").count(), 1);
        assert!(headers.contains(&(PARTIAL_BODY_HEADER, "true")));
    }

    #[test]
    fn the_forward_auth_callout_has_no_partial_header() {
        let Ok(Some(forward)) = forward_body(Some(true), Some(10)) else { panic!("forward_body 10") };
        let mut headers = vec![(":method", "GET"), ("content-length", "0"), (PARTIAL_BODY_HEADER, "x")];
        forward.describe_body(&mut headers, "7", false);
        assert_eq!(headers, vec![(":method", "GET"), ("content-length", "7")]);
    }

    #[test]
    fn forward_body_follows_traefik() {
        let Ok(Some(forward)) = forward_body(Some(true), Some(10)) else { panic!("forward_body 10") };
        assert_eq!(forward.contract, BodyContract::ForwardAuth);
        // Traefik reads maxBodySize + 1 bytes: exactly the limit passes, one more is 401.
        assert_eq!(forward.step(10, true), BodyVerdict::Send { len: 10, partial: false });
        assert_eq!(forward.step(11, false), BodyVerdict::TooLarge);
        assert_eq!(forward.too_large(), TooLarge { status: 401, headers: &[], body: None });
        // 0: only an empty body passes.
        let Ok(Some(zero)) = forward_body(Some(true), Some(0)) else { panic!("forward_body 0") };
        assert_eq!(zero.step(0, true), BodyVerdict::Send { len: 0, partial: false });
        assert_eq!(zero.step(1, false), BodyVerdict::TooLarge);
        // Unset and -1 (Traefik's unlimited): the filter's cap.
        for unset in [None, Some(-1)] {
            let Ok(Some(capped)) = forward_body(Some(true), unset) else { panic!("forward_body {unset:?}") };
            assert_eq!(capped.max_request_bytes, MAX_MAX_REQUEST_BYTES as usize);
        }
    }

    #[test]
    fn max_body_size_is_bounded_and_needs_forward_body() {
        assert_eq!(forward_body(None, None).map_err(|e| e.to_string()), Ok(None));
        assert_eq!(forward_body(Some(false), None).map_err(|e| e.to_string()), Ok(None));
        assert!(forward_body(None, Some(10)).is_err());
        assert!(forward_body(Some(false), Some(10)).is_err());
        assert!(forward_body(Some(true), Some(-2)).is_err());
        assert!(forward_body(Some(true), Some(MAX_MAX_REQUEST_BYTES as i64 + 1)).is_err());
    }

    #[test]
    fn max_request_bytes_is_bounded() {
        let raw = |max| RawRequestBody { max_request_bytes: max, allow_partial_message: None, pack_as_bytes: None };
        assert!(RequestBodySettings::try_from(raw(0)).is_err());
        assert!(RequestBodySettings::try_from(raw(MAX_MAX_REQUEST_BYTES + 1)).is_err());
        let ok = RequestBodySettings::try_from(raw(64)).map_err(|e| e.to_string());
        assert_eq!(ok, Ok(settings(64, false)));
    }
}
