//! `auth.with_request_body`: the client's request body in the callout, as Envoy ext_authz's
//! `with_request_body` (Istio `includeRequestBodyInCheck`). The body is buffered up to
//! `max_request_bytes`; over it the request gets 413, or with `allow_partial_message` the
//! callout carries the first `max_request_bytes` and `x-envoy-auth-partial-body: true`.
//! Needs Envoy's `allow_on_headers_stop_iteration` (docs/istio.md, "Request body").

use serde::Deserialize;

use crate::error::ConfigError;

/// The header ext_authz adds to a callout that carries a body: whether it was cut short.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// Envoy's own reply to a body over its buffer limit (what ext_authz's clients get).
pub const TOO_LARGE_STATUS: u32 = 413;
pub const TOO_LARGE_BODY: &[u8] = b"Payload Too Large";
/// The largest `max_request_bytes`: the whole body sits in Envoy's buffer meanwhile.
const MAX_MAX_REQUEST_BYTES: u32 = 16 << 20;

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
        })
    }
}

/// What to do with the body seen so far (`received` bytes, `complete` at end of stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStep {
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
    pub fn step(&self, received: usize, complete: bool) -> BodyStep {
        let max = self.max_request_bytes;
        if received > max && !self.allow_partial_message {
            return BodyStep::TooLarge;
        }
        if complete || (self.allow_partial_message && received >= max) {
            let len = received.min(max);
            return BodyStep::Send { len, partial: received > max };
        }
        BodyStep::Wait
    }
}

/// Sets the callout's `content-length` to the body's and adds `x-envoy-auth-partial-body`
/// (ext_authz sends it on every callout with a body, `false` when complete).
pub fn describe_body<'a>(headers: &mut Vec<(&'a str, &'a str)>, content_length: &'a str, partial: bool) {
    headers.retain(|(name, _)| {
        !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case(PARTIAL_BODY_HEADER)
    });
    headers.push(("content-length", content_length));
    headers.push((PARTIAL_BODY_HEADER, if partial { "true" } else { "false" }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize, partial: bool) -> RequestBodySettings {
        RequestBodySettings { max_request_bytes: max, allow_partial_message: partial, pack_as_bytes: false }
    }

    #[test]
    fn waits_until_the_end_of_the_stream() {
        assert_eq!(settings(64, false).step(10, false), BodyStep::Wait);
        assert_eq!(settings(64, false).step(64, false), BodyStep::Wait);
        assert_eq!(settings(64, false).step(64, true), BodyStep::Send { len: 64, partial: false });
        assert_eq!(settings(64, false).step(0, true), BodyStep::Send { len: 0, partial: false });
    }

    #[test]
    fn over_the_limit_is_413_without_partial_messages() {
        assert_eq!(settings(64, false).step(65, false), BodyStep::TooLarge);
        assert_eq!(settings(64, false).step(65, true), BodyStep::TooLarge);
    }

    #[test]
    fn partial_messages_send_the_first_max_bytes_once_there() {
        assert_eq!(settings(16, true).step(15, false), BodyStep::Wait);
        assert_eq!(settings(16, true).step(16, false), BodyStep::Send { len: 16, partial: false });
        assert_eq!(settings(16, true).step(70_000, false), BodyStep::Send { len: 16, partial: true });
        assert_eq!(settings(16, true).step(17, true), BodyStep::Send { len: 16, partial: true });
    }

    #[test]
    fn the_callout_describes_its_body() {
        let mut headers = vec![(":method", "POST"), ("content-length", "0"), ("authorization", "x")];
        describe_body(&mut headers, "11", false);
        assert_eq!(
            headers,
            vec![(":method", "POST"), ("authorization", "x"), ("content-length", "11"), (PARTIAL_BODY_HEADER, "false")]
        );
        describe_body(&mut headers, "16", true);
        assert_eq!(headers.iter().filter(|(n, _)| *n == "content-length").count(), 1);
        assert!(headers.contains(&(PARTIAL_BODY_HEADER, "true")));
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
