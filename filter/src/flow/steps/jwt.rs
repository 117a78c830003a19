//! Local JWT verification (jwt/verifier.rs), when configured. A JWT of a known issuer is
//! decided here: invalid → 401; valid → its claim headers are added, then allowed
//! (`local`) or kept for the callout's allow (`local_then_callout`).

use log::{debug, warn};

use crate::flow::counters::JwtCounter;
use crate::flow::decision_log;
use crate::flow::host::{Host, Map, Refused};
use crate::flow::jwks_fetch;
use crate::flow::outcome::{Step, Waiting};
use crate::flow::reply::{fail_closed, reply};
use crate::flow::request_log;
use crate::flow::worker::Worker;
use crate::jwt::jwks_schedule::Why;
use crate::jwt::jwt_config::Mode;
use crate::jwt::source::{Removal, Sources};
use crate::jwt::verifier::VerifiedClaims;
use crate::jwt::verifier::{
    self, INSUFFICIENT_SCOPE_BODY, INSUFFICIENT_SCOPE_CHALLENGE, INVALID_TOKEN_BODY, INVALID_TOKEN_CHALLENGE,
};
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::decision::{Failure, FAILURE_BODY};
use crate::telemetry::{Decided, How, Outcome};

/// [`Step::Next`]: the callout decides (not a JWT of ours, or `local_then_callout`:
/// then with the token's claims, which the rules of `policies` read);
/// [`Step::Upstream`]: a valid token in `local` mode; [`Step::Paused`]: the provider's
/// keys are being fetched, here or elsewhere. `may_fetch` is false on the second pass,
/// after a JWKS fetch (no second fetch, no wait).
pub fn check<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    headers: &[(&str, &[u8])],
    may_fetch: bool,
) -> Step<Option<VerifiedClaims>> {
    let Some(jwt) = &settings.jwt else { return Step::Next(None) };
    let Some(verifier) = worker.verifier(jwt) else {
        // A request of a configuration two reconfigurations old: its keys are gone.
        return fail_closed(host, worker, id, settings, Failure::HostError);
    };
    let mut outcome = verifier.check(jwt, headers, host.now_ms());
    if let verifier::Outcome::NoKey { provider } = outcome {
        // Another worker may have fetched the keys already; else fetch them (once
        // per Envoy, rate-limited) while this request waits.
        if jwks_fetch::sync(host, jwt, worker, provider) {
            if let Some(verifier) = worker.verifier(jwt) {
                outcome = verifier.check(jwt, headers, host.now_ms());
            }
        }
    }
    if let verifier::Outcome::NoKey { provider } = outcome {
        if may_fetch {
            if let Some(token) = jwks_fetch::start_fetch(host, worker, jwt, provider, Why::MissingKey) {
                return Step::Paused(Waiting::Jwks { token, provider });
            }
            // Someone else's fetch may bring the key: wait for it (`local` providers).
            // (The lease is read from shared data only for them.)
            let local = jwt.providers.get(provider).is_some_and(|p| p.mode == Mode::Local);
            if let Some(until_ms) = local.then(|| jwks_fetch::in_flight(host, jwt, provider, host.now_ms())).flatten() {
                return crate::flow::steps::jwks_wait::wait(host, worker, id, settings, provider, until_ms);
            }
        }
        match worker.verifier(jwt).and_then(|verifier| verifier.without_refresh(jwt, provider)) {
            Some(verdict) => outcome = verdict,
            None => {
                // No keys at all yet: the token cannot be judged. The callout still
                // can in local_then_callout; in local mode, fail closed.
                worker.counters.count_jwt(JwtCounter::KeysUnavailable);
                let mode = jwt.providers.get(provider).map_or(Mode::Local, |p| p.mode);
                if mode == Mode::LocalThenCallout {
                    warn!("[{id}] no JWKS keys yet for provider {provider} ({mode:?}); asking the auth service");
                    return Step::Next(None);
                }
                request_log::failed_closed(
                    host,
                    id,
                    settings.status_on_error,
                    format_args!("no JWKS keys yet for provider {provider} ({mode:?})"),
                );
                worker.counters.count(Metric::Errors);
                let decided = Decided::new(Outcome::Failed, How::Jwt).reason("no_jwks_keys");
                decision_log::record(host, worker, id, Some(settings), decided);
                reply(host, id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                return Step::Replied;
            }
        }
    }
    match outcome {
        verifier::Outcome::Callout(_) => {
            worker.counters.count_jwt(JwtCounter::Passthrough);
            Step::Next(None)
        }
        verifier::Outcome::Valid { mode, headers: claim_headers, cached, claims } => {
            worker.counters.count_jwt(if cached { JwtCounter::CacheHit } else { JwtCounter::Verified });
            debug!("[{id}] valid JWT ({mode:?})");
            // Before the callout too: the callout's headers are already taken, and only
            // an allow lets the request (without the token) go on.
            if jwt.sources.may_remove() && remove_token(host, &jwt.sources, headers).is_err() {
                return fail_closed(host, worker, id, settings, Failure::HostError);
            }
            if mode == Mode::LocalThenCallout {
                worker.kept.keep_claims(id, claim_headers);
                return Step::Next(Some(claims));
            }
            // Added, not replaced: every claim header was stripped from the request.
            for (name, value) in claim_headers.iter() {
                if host.add_header(Map::RequestHeaders, name, value.as_bytes()).is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            // Looked up only when it is written.
            let telemetry = &settings.telemetry;
            let actor = telemetry.actor_header.as_deref().filter(|_| telemetry.filter_state).and_then(|actor| {
                claim_headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(actor)).map(|(_, v)| v.as_bytes())
            });
            let decided = Decided::new(Outcome::Allowed, How::Jwt).actor(actor);
            decision_log::record(host, worker, id, Some(settings), decided);
            Step::Upstream
        }
        verifier::Outcome::Invalid(reason) => {
            worker.counters.count_jwt(JwtCounter::Rejected(reason));
            request_log::denied_because(host, id, 401, format_args!("invalid JWT: {}", reason.as_str()));
            let decided = Decided::new(Outcome::Denied, How::Jwt).reason(reason.as_str());
            decision_log::record(host, worker, id, Some(settings), decided);
            let headers = vec![("www-authenticate", INVALID_TOKEN_CHALLENGE), ("content-type", "text/plain")];
            reply(host, id, 401, headers, Some(INVALID_TOKEN_BODY));
            Step::Replied
        }
        verifier::Outcome::Insufficient => {
            worker.counters.count_jwt(JwtCounter::Insufficient);
            debug!("[{id}] valid JWT that fails a require check");
            let decided = Decided::new(Outcome::Denied, How::Jwt).reason("insufficient_scope");
            decision_log::record(host, worker, id, Some(settings), decided);
            let headers = vec![("www-authenticate", INSUFFICIENT_SCOPE_CHALLENGE), ("content-type", "text/plain")];
            reply(host, id, 403, headers, Some(INSUFFICIENT_SCOPE_BODY));
            Step::Replied
        }
        verifier::Outcome::NoKey { .. } => fail_closed(host, worker, id, settings, Failure::HostError),
    }
}

/// Takes the verified token out of the request (`forward: false`, or a query parameter).
fn remove_token<H: Host>(host: &H, sources: &Sources, headers: &[(&str, &[u8])]) -> Result<(), Refused> {
    match sources.removal(headers) {
        None => Ok(()),
        Some(Removal::Header(name)) => host.remove_header(Map::RequestHeaders, name),
        Some(Removal::Cookie(rest)) => {
            host.set_header(Map::RequestHeaders, "cookie", rest.as_deref().map(str::as_bytes))
        }
        Some(Removal::Path(path)) => host.set_header(Map::RequestHeaders, ":path", Some(path.as_bytes())),
    }
}
