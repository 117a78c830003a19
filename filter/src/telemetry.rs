//! What the filter tells Envoy about each request besides its counters: the decision, as
//! filter state Envoy's access log prints, and the time the request spent in the filter,
//! as histograms. The `telemetry` block, and the decision's text (pure; the host side is
//! flow/decision_log.rs).
//!
//! The decision is one filter-state value, `wasm.nebula_authz` (proxy-wasm `set_property`
//! on Envoy: a `CelState` of type bytes under `wasm.` + the name): one host call per
//! request. `%FILTER_STATE(wasm.nebula_authz:PLAIN)%` prints it as written
//! (`serializeAsString`); without `:PLAIN` Envoy prints the value packed in a
//! `google.protobuf.BytesValue`, i.e. base64. A `CelState` has no field access, so the
//! fields are in the text itself, logfmt: `outcome=allowed how=callout status=200
//! reason=- actor=u-1 ms=0.412`.

use serde::Deserialize;

use crate::error::ConfigError;
use crate::metric_names::Histogram;

/// The filter-state name: Envoy keys it `wasm.nebula_authz`.
pub const FILTER_STATE_NAME: &str = "nebula_authz";

/// The longest actor id printed (bytes, before escaping); a longer one is cut.
const MAX_ACTOR: usize = 128;

/// The `telemetry` block as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    filter_state: Option<bool>,
    histograms: Option<bool>,
    actor_header: Option<String>,
}

/// What the filter records per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// Write the decision to filter state (`wasm.nebula_authz`).
    pub filter_state: bool,
    /// Record the latency histograms.
    pub histograms: bool,
    /// The header (lower case) whose value on an allowed request is the actor id: set
    /// by the auth service, or by a JWT claim (`claims_to_headers`). `None`: no actor.
    pub actor_header: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings { filter_state: true, histograms: true, actor_header: Some("x-nebula-actor-id".into()) }
    }
}

impl TelemetrySettings {
    pub fn parse(raw: Option<RawTelemetry>) -> Result<TelemetrySettings, ConfigError> {
        let mut settings = TelemetrySettings::default();
        let Some(raw) = raw else { return Ok(settings) };
        settings.filter_state = raw.filter_state.unwrap_or(settings.filter_state);
        settings.histograms = raw.histograms.unwrap_or(settings.histograms);
        if let Some(name) = raw.actor_header {
            let valid = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(ConfigError::new(
                    "telemetry.actor_header",
                    format!("{name:?} is not a header name (letters, digits, '-', '_', '.'; \"\" for none)"),
                ));
            }
            settings.actor_header = (!name.is_empty()).then(|| name.to_ascii_lowercase());
        }
        Ok(settings)
    }

    /// Whether a request's start is read from the clock: only what is recorded needs it.
    pub fn timed(&self) -> bool {
        self.filter_state || self.histograms
    }
}

/// How a request ended in the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A public path: no check.
    Public,
    /// Let through upstream after a decision (the auth service's, a cached or stale
    /// one, or a valid JWT).
    Allowed,
    /// Answered with a denial: the auth service's, a cached one, a rejected JWT, a
    /// request body over its limit.
    Denied,
    /// Failed closed (`status_on_error`).
    Failed,
    /// Denied by a `source_ranges` rule.
    SourceDenied,
    /// Denied by a `principals` rule.
    PrincipalDenied,
}

impl Outcome {
    /// `outcome=<word>`, as [`Decided::render`] writes it: one copy per request.
    fn field(self) -> &'static str {
        match self {
            Outcome::Public => "outcome=public",
            Outcome::Allowed => "outcome=allowed",
            Outcome::Denied => "outcome=denied",
            Outcome::Failed => "outcome=failed",
            Outcome::SourceDenied => "outcome=source_denied",
            Outcome::PrincipalDenied => "outcome=principal_denied",
        }
    }

    /// The request went on upstream.
    pub fn upstream(self) -> bool {
        matches!(self, Outcome::Public | Outcome::Allowed)
    }
}

/// How the decision was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// A public path template matched.
    Public,
    /// With `policies`: no rule selected the request, so no provider checks it.
    Unselected,
    /// An access rule (`source_ranges`, `principals`).
    Access,
    /// A JWT verified (or rejected) in the filter.
    Jwt,
    /// A decision from the cache.
    Cache,
    /// The answer to an identical callout this request waited for.
    Coalesced,
    /// An expired allow served because the callout failed (`cache.stale_if_error`).
    Stale,
    /// This request's own callout.
    Callout,
    /// None of those: the filter itself (no configuration, a host error, a request body
    /// over its limit or never delivered).
    Filter,
}

impl How {
    /// ` how=<word>`, as [`Decided::render`] writes it.
    fn field(self) -> &'static str {
        match self {
            How::Public => " how=public",
            How::Unselected => " how=unselected",
            How::Access => " how=access",
            How::Jwt => " how=jwt",
            How::Cache => " how=cache",
            How::Coalesced => " how=coalesced",
            How::Stale => " how=stale",
            How::Callout => " how=callout",
            How::Filter => " how=filter",
        }
    }

    /// The histogram of the wait of a request that paused and was decided so.
    pub fn histogram(self) -> Histogram {
        match self {
            How::Callout | How::Stale => Histogram::WaitCallout,
            How::Coalesced => Histogram::WaitCoalesced,
            How::Jwt => Histogram::WaitJwks,
            How::Public | How::Unselected | How::Cache | How::Access | How::Filter => Histogram::WaitOther,
        }
    }
}

/// One request's decision, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    pub outcome: Outcome,
    pub how: How,
    /// The status the callout came back with (a cached denial's too).
    pub status: Option<u32>,
    /// Why it failed or a JWT was rejected (a fixed word: the failure reasons of
    /// [`crate::metric_names::FAILURE_REASONS`], a JWT reason...).
    pub reason: Option<&'static str>,
    /// The actor id of an allowed request.
    pub actor: Option<&'a [u8]>,
}

impl<'a> Decided<'a> {
    pub fn new(outcome: Outcome, how: How) -> Decided<'a> {
        Decided { outcome, how, status: None, reason: None, actor: None }
    }

    pub fn status(self, status: Option<u32>) -> Decided<'a> {
        Decided { status, ..self }
    }

    pub fn reason(self, reason: &'static str) -> Decided<'a> {
        Decided { reason: Some(reason), ..self }
    }

    pub fn actor(self, actor: Option<&'a [u8]>) -> Decided<'a> {
        Decided { actor, ..self }
    }

    /// The filter-state text, `elapsed_us` printed as milliseconds with three decimals:
    /// `outcome=denied how=cache status=401 reason=- actor=- ms=0.052`. Every field is
    /// always there (`-` when it has no value), so a log pipeline can split on spaces.
    /// Written byte by byte: `core::fmt` costs more instructions than the rest of it.
    pub fn render(&self, elapsed_us: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.outcome.field().as_bytes());
        out.extend_from_slice(self.how.field().as_bytes());
        match self.status {
            Some(status) => {
                out.extend_from_slice(b" status=");
                decimal(u64::from(status), out);
            }
            None => out.extend_from_slice(b" status=-"),
        }
        match self.reason {
            Some(reason) => {
                out.extend_from_slice(b" reason=");
                out.extend_from_slice(reason.as_bytes());
            }
            None => out.extend_from_slice(b" reason=-"),
        }
        out.extend_from_slice(b" actor=");
        match self.actor.filter(|a| !a.is_empty()) {
            Some(actor) => escape(actor, out),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" ms=");
        decimal(elapsed_us / 1000, out);
        let micros = elapsed_us % 1000;
        out.extend([b'.', b'0' + (micros / 100) as u8, b'0' + (micros / 10 % 10) as u8, b'0' + (micros % 10) as u8]);
    }
}

/// `n` in decimal.
fn decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The actor id as one logfmt value: visible ASCII but `%`, `"`, `\` and `=` as it is,
/// anything else (space, control characters, which would let an auth service's header
/// forge a log line, and non-ASCII) `%XX`-escaped; cut at [`MAX_ACTOR`] bytes.
fn escape(actor: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in actor.iter().take(MAX_ACTOR) {
        if b.is_ascii_graphic() && !b"%\"\\=".contains(&b) {
            out.push(b);
        } else {
            out.extend([b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::metric_names::FAILURE_REASONS;
    use crate::policy::decision::{Failure, Unreachable};

    fn text(decided: Decided, us: u64) -> String {
        let mut out = Vec::new();
        decided.render(us, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_every_field_in_order() {
        let allowed = Decided::new(Outcome::Allowed, How::Callout).status(Some(200)).actor(Some(b"user-1"));
        assert_eq!(text(allowed, 1_234), "outcome=allowed how=callout status=200 reason=- actor=user-1 ms=1.234");
        let failed = Decided::new(Outcome::Failed, How::Callout).status(Some(504)).reason("timeout");
        assert_eq!(text(failed, 5_000_007), "outcome=failed how=callout status=504 reason=timeout actor=- ms=5000.007");
        assert_eq!(
            text(Decided::new(Outcome::Public, How::Public), 0),
            "outcome=public how=public status=- reason=- actor=- ms=0.000"
        );
    }

    /// Each field is its name and one word an access-log pipeline can match on: a
    /// different word per value, lower-case letters and `_` only.
    #[test]
    fn each_field_prints_its_name_and_a_distinct_word() {
        let outcomes = [
            Outcome::Public,
            Outcome::Allowed,
            Outcome::Denied,
            Outcome::Failed,
            Outcome::SourceDenied,
            Outcome::PrincipalDenied,
        ];
        let hows = [
            How::Public,
            How::Unselected,
            How::Access,
            How::Jwt,
            How::Cache,
            How::Coalesced,
            How::Stale,
            How::Callout,
            How::Filter,
        ];
        let fields = [("outcome=", outcomes.map(Outcome::field).to_vec()), (" how=", hows.map(How::field).to_vec())];
        for (name, fields) in fields {
            let words: Vec<&str> = fields.iter().map(|f| f.strip_prefix(name).unwrap()).collect();
            for word in &words {
                assert!(!word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{word:?}");
            }
            let mut distinct = words.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), words.len(), "{words:?}");
        }
    }

    #[test]
    fn an_actor_cannot_forge_a_field_or_a_line() {
        let evil = Decided::new(Outcome::Allowed, How::Cache).actor(Some(b"a b\nc=\"d\"\\%\xff"));
        let line = text(evil, 1);
        assert_eq!(line, "outcome=allowed how=cache status=- reason=- actor=a%20b%0Ac%3D%22d%22%5C%25%FF ms=0.001");
        // Whatever the bytes, the value is one token of visible ASCII, and six fields.
        for b in 0..=255u8 {
            let actor = [b'x', b, b'y'];
            let line = text(Decided::new(Outcome::Allowed, How::Callout).actor(Some(&actor)), 0);
            assert!(line.bytes().all(|c| c == b' ' || c.is_ascii_graphic()), "{line:?}");
            assert_eq!(line.split(' ').count(), 6, "{line:?}");
        }
        let long = vec![b'a'; 1000];
        let line = text(Decided::new(Outcome::Allowed, How::Callout).actor(Some(&long)), 0);
        assert!(line.contains(&format!("actor={} ", "a".repeat(MAX_ACTOR))), "{line}");
    }

    #[test]
    fn every_failure_code_has_a_counter() {
        let failures = [
            Failure::NoResponse,
            Failure::BadStatus,
            Failure::AuthServerError(500),
            Failure::Unreachable(Unreachable::Refused),
            Failure::Unreachable(Unreachable::Reset),
            Failure::Unreachable(Unreachable::NoHealthyUpstream),
            Failure::Unreachable(Unreachable::Other),
            Failure::TimedOut { ms: 5 },
            Failure::BodyTooLarge(1),
            Failure::ResponseHeaderNotText,
            Failure::RequestHeaderNotText,
            Failure::DispatchFailed,
            Failure::HostError,
        ];
        for failure in failures {
            assert!(FAILURE_REASONS.contains(&failure.code()), "{failure:?}");
        }
    }

    #[test]
    fn the_block_parses_and_refuses_a_bad_header_name() {
        assert_eq!(TelemetrySettings::parse(None).unwrap(), TelemetrySettings::default());
        let raw: RawTelemetry =
            serde_json::from_str(r#"{"filter_state": false, "histograms": false, "actor_header": "X-User"}"#).unwrap();
        let parsed = TelemetrySettings::parse(Some(raw)).unwrap();
        assert_eq!(
            parsed,
            TelemetrySettings { filter_state: false, histograms: false, actor_header: Some("x-user".into()) }
        );
        assert!(!parsed.timed());
        let raw: RawTelemetry = serde_json::from_str(r#"{"actor_header": ""}"#).unwrap();
        assert_eq!(TelemetrySettings::parse(Some(raw)).unwrap().actor_header, None);
        let raw: RawTelemetry = serde_json::from_str(r#"{"actor_header": "x user"}"#).unwrap();
        let err = TelemetrySettings::parse(Some(raw)).unwrap_err().to_string();
        assert!(err.contains("telemetry.actor_header"), "{err}");
    }
}
