//! The auth service's answer (read in the context that received it) becomes a decision
//! (policy/decision.rs), stored in the cache when it may be reused; a failure serves a
//! recently expired allow if `stale_if_error` permits.

use log::warn;

use crate::cache::shared::{Decision, Lookup};
use crate::flow::header_map;
use crate::flow::host::{Body, Host, Map};
use crate::flow::steps::cache;
use crate::flow::worker::Worker;
use crate::plugin_config::Settings;
use crate::policy::decision::{self, status_of, Failure, Unreachable, Verdict};
use crate::policy::envoy_reply::{self, EnvoyReply};

/// What happened to a request that needed the auth service.
pub enum Outcome {
    /// The auth service decided; with the `:status` it answered.
    Decided(Decision, Option<u32>),
    /// The auth service failed, and a recently expired allow is served (`stale_if_error`).
    Stale(Decision, Failure),
    Failed(Failure),
}

/// Reads the callout's answer and caches a decision.
pub fn answer<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &Settings,
    lookup: Option<&Lookup>,
    body_size: usize,
) -> Outcome {
    answer_or_retry(host, worker, settings, lookup, body_size, false).unwrap_or(Outcome::Failed(Failure::NoResponse))
}

fn answer_body<H: Host>(host: &H, len: usize) -> Vec<u8> {
    host.body(Body::CalloutAnswer, len).unwrap_or_default()
}

/// [`answer`], or `None` when `may_retry` and the callout never reached an answer:
/// Envoy reports its connection reset or refused (policy/envoy_reply.rs), and the caller
/// sends it once more.
pub fn answer_or_retry<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &Settings,
    lookup: Option<&Lookup>,
    body_size: usize,
    may_retry: bool,
) -> Option<Outcome> {
    // No headers at all is how Envoy reports a stream it reset itself.
    let buffer = host.header_map(Map::CalloutAnswer).unwrap_or_default();
    let Some(headers) = header_map::parse(&buffer) else {
        return Some(failed(host, settings, lookup, Failure::BadStatus));
    };
    // Only a 502/503/504 without the upstream marker has its (short) body read for this.
    if may_retry && body_size <= envoy_reply::MAX_REPLY_BYTES && envoy_reply::may_be_envoy_reply(&headers) {
        let body = answer_body(host, body_size);
        if envoy_reply::envoy_reply(&headers, &body).is_some_and(EnvoyReply::worth_retrying) {
            return None;
        }
    }
    let verdict = settings.decide(&headers, body_size);
    let body = match (&verdict, body_size) {
        (Verdict::Deny { .. }, 1..) => answer_body(host, body_size),
        _ => Vec::new(),
    };
    match (Decision::from_verdict(&verdict, &body), verdict) {
        (Some(decision), _) => {
            if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
                cache::store(host, worker, cache, lookup, &decision, &headers);
            }
            Some(Outcome::Decided(decision, status_of(&headers)))
        }
        // Malformed, but a refusal all the same: it ends the key's allows, none is served stale.
        (None, Verdict::Fail(failure)) if decision::refuses(&settings.auth, &headers) => {
            if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
                cache::end_allows(host, worker, cache, lookup);
            }
            Some(Outcome::Failed(failure))
        }
        // Envoy's own 503: its body says whether the connection was refused or reset.
        (None, Verdict::Fail(Failure::Unreachable(_))) => {
            let body = answer_body(host, body_size.min(512));
            Some(failed(host, settings, lookup, Failure::Unreachable(Unreachable::from_body(&body))))
        }
        (None, Verdict::Fail(failure)) => Some(failed(host, settings, lookup, failure)),
        (None, _) => Some(Outcome::Failed(Failure::HostError)),
    }
}

/// The auth service failed: serve a recently expired allow if `stale_if_error` permits.
pub fn failed<H: Host>(host: &H, settings: &Settings, lookup: Option<&Lookup>, failure: Failure) -> Outcome {
    if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
        if let Some(decision) = cache::stale(host, cache, lookup) {
            warn!("{failure}; serving a stale allow (stale_if_error)");
            return Outcome::Stale(decision, failure);
        }
    }
    Outcome::Failed(failure)
}

/// The step on one answer: the outcome for each kind of answer, and which host calls it
/// makes for it (the answer's body is read only when a denial relays it or Envoy's reply
/// must be told apart; each read costs a host call and a copy into the VM).
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::flow::mock_host::MockHost;
    use crate::policy::decision::Unreachable;

    const CONTEXT: u32 = 7;
    /// An answer's headers and body.
    type Answer<'a> = (&'a [(&'a str, &'a str)], &'a [u8]);

    const RESET: &[u8] =
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";

    /// Runs the step on `answer` (`None`: no headers, Envoy's own reset): its outcome
    /// (`None`: send the callout again) and the host calls it made.
    fn run(answer: Option<Answer>, may_retry: bool) -> (Option<Outcome>, Vec<&'static str>) {
        let settings = Settings::from_json(br#"{"auth": {"cluster": "auth"}}"#).unwrap();
        let host = MockHost::new(1_900_000_000_000);
        host.open(CONTEXT, Vec::new());
        let body_size = answer.map_or(0, |(_, body)| body.len());
        host.answering(answer.map(|(headers, body)| {
            (headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(), body.to_vec())
        }));
        let mut worker = Worker::default();
        let outcome = answer_or_retry(&host, &mut worker, &settings, None, body_size, may_retry);
        (outcome, host.calls_in(CONTEXT))
    }

    #[test]
    fn an_allow_is_decided_from_its_headers_alone() {
        let (outcome, calls) = run(Some((&[(":status", "200"), ("x-nebula-actor-id", "alice")], b"ok")), true);
        let Some(Outcome::Decided(Decision::Allow { inject, .. }, Some(200))) = outcome else { panic!("not an allow") };
        assert_eq!(inject, vec![("x-nebula-actor-id".to_string(), b"alice".to_vec())]);
        assert_eq!(calls, ["header_map"], "the allow's body is never read");
    }

    #[test]
    fn a_denial_reads_the_body_it_relays_and_only_then() {
        let (outcome, calls) = run(Some((&[(":status", "401")], b"no")), true);
        let Some(Outcome::Decided(Decision::Deny { status: 401, body, .. }, Some(401))) = outcome else {
            panic!("not a denial")
        };
        assert_eq!(body, b"no");
        assert_eq!(calls, ["header_map", "body"]);
        let (_, calls) = run(Some((&[(":status", "401")], b"")), true);
        assert_eq!(calls, ["header_map"], "an empty body is not read");
    }

    #[test]
    fn envoys_reset_reply_asks_for_a_retry_and_a_real_503_never_does() {
        let envoys = [(":status", "503"), ("content-type", "text/plain")];
        let (outcome, calls) = run(Some((&envoys, RESET)), true);
        assert!(outcome.is_none(), "Envoy's reply for a reset connection: send again");
        assert_eq!(calls, ["header_map", "body"], "its short body tells reset from an answer");
        // No retry left: the same reply is a failure, named from its body.
        let (outcome, _) = run(Some((&envoys, RESET)), false);
        assert!(matches!(outcome, Some(Outcome::Failed(Failure::Unreachable(Unreachable::Reset)))));
        // The auth service's own 503 carries the router's marker: a failure, body unread.
        let answered = [(":status", "503"), ("x-envoy-upstream-service-time", "3")];
        let (outcome, calls) = run(Some((&answered, RESET)), true);
        assert!(matches!(outcome, Some(Outcome::Failed(Failure::AuthServerError(503)))));
        assert_eq!(calls, ["header_map"]);
    }

    #[test]
    fn no_headers_at_all_is_no_response() {
        let (outcome, calls) = run(None, true);
        assert!(matches!(outcome, Some(Outcome::Failed(Failure::NoResponse))));
        assert_eq!(calls, ["header_map"]);
    }
}
