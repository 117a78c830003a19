//! Step 6: the auth service's answer (read in the context that received it) becomes a
//! decision (policy/decision.rs), stored in the cache when it may be reused; a failure
//! serves a recently expired allow if `stale_if_error` permits.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use crate::cache::shared::{Decision, Lookup};
use crate::config::Settings;
use crate::host::header_map;
use crate::host::steps::cache;
use crate::policy::decision::{Failure, Unreachable, Verdict};

/// What happened to a request that needed the auth service.
pub enum Outcome {
    Decided(Decision),
    /// The auth service failed, and a recently expired allow is served (`stale_if_error`).
    Stale(Decision),
    Failed(Failure),
}

/// Reads the callout's answer and caches a decision.
pub fn answer(settings: &Settings, lookup: Option<&Lookup>, body_size: usize) -> Outcome {
    // No headers at all is how Envoy reports a timeout or reset.
    let buffer = header_map::read(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let Some(headers) = header_map::parse(&buffer) else {
        return failed(settings, lookup, Failure::BadStatus);
    };
    let verdict = settings.decide(&headers, body_size);
    let body = match (&verdict, body_size) {
        (Verdict::Deny { .. }, 1..) => {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        }
        _ => Vec::new(),
    };
    match (Decision::from_verdict(&verdict, &body), verdict) {
        (Some(decision), _) => {
            if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
                cache::store(cache, lookup, &decision, &headers);
            }
            Outcome::Decided(decision)
        }
        // Envoy's own 503: its body says whether the connection was refused or reset.
        (None, Verdict::Fail(Failure::Unreachable(_))) => {
            let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(512))
                .ok()
                .flatten()
                .unwrap_or_default();
            failed(settings, lookup, Failure::Unreachable(Unreachable::from_body(&body)))
        }
        (None, Verdict::Fail(failure)) => failed(settings, lookup, failure),
        (None, _) => Outcome::Failed(Failure::HostError),
    }
}

/// The auth service failed: serve a recently expired allow if `stale_if_error` permits.
pub fn failed(settings: &Settings, lookup: Option<&Lookup>, failure: Failure) -> Outcome {
    if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
        if let Some(decision) = cache::stale(cache, lookup) {
            warn!("{failure}; serving a stale allow (stale_if_error)");
            return Outcome::Stale(decision);
        }
    }
    Outcome::Failed(failure)
}
