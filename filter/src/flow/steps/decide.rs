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
