//! Step 3: local JWT verification (jwt/verifier.rs), when configured. A JWT of a known
//! issuer is decided here: invalid → 401; valid → its claim headers are added, then
//! allowed (`local`) or kept for the callout's allow (`local_then_callout`).

use std::cell::RefCell;
use std::rc::Rc;

use log::{debug, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use crate::config::Settings;
use crate::host::clock::now_ms;
use crate::host::jwks::{self, JwtState};
use crate::host::metrics::{count, Counter};
use crate::host::reply::{fail_closed, reply};
use crate::host::request_log;
use crate::host::steps::inject;
use crate::jwt::config::Mode;
use crate::jwt::jwks::Why;
use crate::jwt::source::{Removal, Sources};
use crate::jwt::verifier::{
    self, INSUFFICIENT_SCOPE_BODY, INSUFFICIENT_SCOPE_CHALLENGE, INVALID_TOKEN_BODY, INVALID_TOKEN_CHALLENGE,
};
use crate::metrics::Metric;
use crate::policy::decision::{Failure, FAILURE_BODY};

/// What is left to do after the JWT step.
pub enum JwtStep {
    /// A valid token in `local` mode: on to the upstream, no callout.
    Allow,
    /// The callout decides (not a JWT of ours, or `local_then_callout`).
    Callout,
    /// A local reply was sent.
    Wait,
    /// The provider's keys are being fetched (call `token`): check again when they arrive.
    Fetching { token: u32, provider: usize },
    /// Another fetch of the provider's keys is in flight, its lease running until
    /// `until_ms`: wait for it (host/steps/jwks_wait.rs), then check again.
    Waiting { provider: usize, until_ms: u64 },
}

/// `may_fetch` is false on the second pass, after a JWKS fetch (no second fetch).
pub fn check(
    id: u32,
    settings: &Settings,
    state: Option<&Rc<RefCell<JwtState>>>,
    headers: &[(&str, &[u8])],
    may_fetch: bool,
) -> JwtStep {
    let (Some(jwt), Some(state)) = (&settings.jwt, state) else { return JwtStep::Callout };
    let Ok(mut state) = state.try_borrow_mut() else {
        fail_closed(id, settings, Failure::HostError);
        return JwtStep::Wait;
    };
    let request = headers;
    let mut outcome = state.verifier.check(jwt, request, now_ms());
    if let verifier::Outcome::NoKey { provider } = outcome {
        // Another worker may have fetched the keys already; else fetch them (once
        // per Envoy, rate-limited) while this request waits.
        if jwks::sync(jwt, &mut state, provider) {
            outcome = state.verifier.check(jwt, headers, now_ms());
        }
    }
    if let verifier::Outcome::NoKey { provider } = outcome {
        if may_fetch {
            if let Some(token) = jwks::start_fetch(jwt, provider, Why::MissingKey) {
                return JwtStep::Fetching { token, provider };
            }
            // Someone else's fetch may bring the key: wait for it (`local` providers).
            // (The lease is read from shared data only for them.)
            let local = jwt.providers.get(provider).is_some_and(|p| p.mode == Mode::Local);
            if let Some(until_ms) = local.then(|| jwks::in_flight(jwt, provider, now_ms())).flatten() {
                return JwtStep::Waiting { provider, until_ms };
            }
        }
        match state.verifier.without_refresh(jwt, provider) {
            Some(verdict) => outcome = verdict,
            None => {
                // No keys at all yet: the token cannot be judged. The callout still
                // can in local_then_callout; in local mode, fail closed.
                state.metrics.inc(Counter::KeysUnavailable);
                let mode = jwt.providers.get(provider).map_or(Mode::Local, |p| p.mode);
                if mode == Mode::LocalThenCallout {
                    warn!("[{id}] no JWKS keys yet for provider {provider} ({mode:?}); asking the auth service");
                    return JwtStep::Callout;
                }
                request_log::failed_closed(
                    id,
                    settings.status_on_error,
                    format_args!("no JWKS keys yet for provider {provider} ({mode:?})"),
                );
                count(Metric::Errors);
                reply(id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                return JwtStep::Wait;
            }
        }
    }
    match outcome {
        verifier::Outcome::Callout(_) => {
            state.metrics.inc(Counter::Passthrough);
            JwtStep::Callout
        }
        verifier::Outcome::Valid { mode, headers: claims, cached } => {
            state.metrics.inc(if cached { Counter::CacheHit } else { Counter::Verified });
            debug!("[{id}] valid JWT ({mode:?})");
            // Before the callout too: the callout's headers are already taken, and only
            // an allow lets the request (without the token) go on.
            if jwt.sources.may_remove() && remove_token(&jwt.sources, headers).is_err() {
                fail_closed(id, settings, Failure::HostError);
                return JwtStep::Wait;
            }
            if mode == Mode::LocalThenCallout {
                inject::keep_claims(id, claims);
                return JwtStep::Callout;
            }
            // Added, not replaced: every claim header was stripped from the request.
            for (name, value) in claims.iter() {
                if hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
                    fail_closed(id, settings, Failure::HostError);
                    return JwtStep::Wait;
                }
            }
            JwtStep::Allow
        }
        verifier::Outcome::Invalid(reason) => {
            state.metrics.inc(Counter::Rejected(reason));
            request_log::denied_because(id, 401, format_args!("invalid JWT: {}", reason.as_str()));
            let headers = vec![("www-authenticate", INVALID_TOKEN_CHALLENGE), ("content-type", "text/plain")];
            reply(id, 401, headers, Some(INVALID_TOKEN_BODY));
            JwtStep::Wait
        }
        verifier::Outcome::Insufficient => {
            state.metrics.inc(Counter::Insufficient);
            debug!("[{id}] valid JWT that fails a require check");
            let headers = vec![("www-authenticate", INSUFFICIENT_SCOPE_CHALLENGE), ("content-type", "text/plain")];
            reply(id, 403, headers, Some(INSUFFICIENT_SCOPE_BODY));
            JwtStep::Wait
        }
        verifier::Outcome::NoKey { .. } => {
            fail_closed(id, settings, Failure::HostError);
            JwtStep::Wait
        }
    }
}

/// Takes the verified token out of the request (`forward: false`, or a query parameter).
fn remove_token(sources: &Sources, headers: &[(&str, &[u8])]) -> Result<(), Status> {
    match sources.removal(headers) {
        None => Ok(()),
        Some(Removal::Header(name)) => hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
        Some(Removal::Cookie(rest)) => hostcalls::set_map_value(MapType::HttpRequestHeaders, "cookie", rest.as_deref()),
        Some(Removal::Path(path)) => hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(&path)),
    }
}
