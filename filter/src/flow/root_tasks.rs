//! What the root context does for its worker, apart from any request: its tick (counters,
//! orphaned callouts sent again, JWKS refreshes and waits, overdue bodies) and the
//! answers to the calls it sent itself.

use std::time::Duration;

use log::warn;

use crate::flow::counters::FLUSH_PERIOD;
use crate::flow::host::Host;
use crate::flow::jwks_fetch;
use crate::flow::steps::decide::{answer, failed};
use crate::flow::steps::{body, callout, jwks_wait};
use crate::flow::worker::{Resend, Worker};
use crate::jwt::jwks_schedule::Why;
use crate::plugin_config::Settings;
use crate::policy::decision::Failure;

/// The JWKS timer: every worker looks at the shared state; one fetches when it is due.
fn refresh_jwks<H: Host>(host: &H, worker: &mut Worker, settings: &Settings) {
    let Some(jwt) = &settings.jwt else { return };
    if !worker.has_verifier() {
        return;
    }
    for (i, provider) in jwt.providers.iter().enumerate() {
        if provider.remote.is_none() || worker.jwks_fetches.iter().any(|(_, p)| *p == i) {
            continue;
        }
        jwks_fetch::sync(host, jwt, worker, i);
        if let Some(token) = jwks_fetch::start_fetch(host, worker, jwt, i, Why::Timer) {
            worker.jwks_fetches.push((token, i));
        }
    }
}

/// The tick period when no orphan is waiting: short while a request waits for a JWKS
/// fetch (flow/steps/jwks_wait.rs), else the counters' flush, and the JWKS timer when a
/// provider has remote keys.
pub fn idle_tick(worker: &Worker, settings: Option<&Settings>) -> Duration {
    if settings.is_some() && !worker.jwks_waiters.is_empty() {
        return jwks_wait::WAIT_TICK;
    }
    let remote = settings.and_then(|s| s.jwt.as_ref()).is_some_and(|j| j.providers.iter().any(|p| p.remote.is_some()));
    if remote {
        jwks_fetch::TICK.min(FLUSH_PERIOD)
    } else {
        FLUSH_PERIOD
    }
}

/// The root's tick: hands the counts to the host; refreshes remote JWKS when due; checks
/// again the requests that waited for a JWKS fetch now over; fails closed the bodies
/// Envoy never delivered; sends the orphaned callouts again, from the root context,
/// which outlives streams.
pub fn on_tick<H: Host>(host: &H, worker: &mut Worker, settings: Option<&Settings>, root: u32) {
    worker.counters.flush(host);
    if let Some(settings) = settings {
        refresh_jwks(host, worker, settings);
        if worker.has_verifier() && !worker.jwks_waiters.is_empty() {
            jwks_wait::wake_due(host, worker, settings, root, host.now_ms());
        }
    }
    let _ = host.set_tick_period(idle_tick(worker, settings));
    let Some(settings) = settings else { return };
    if settings.auth.with_request_body.is_some() {
        body::fail_overdue(host, worker, settings, host.now_ms(), root);
    }
    let auth = &settings.auth;
    for Resend { lookup, headers } in std::mem::take(&mut worker.orphans) {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        match callout::dispatch(host, worker, auth, headers) {
            Ok(token) => {
                worker.resends.push((token, lookup));
            }
            Err(status) => {
                warn!("callout to cluster {:?} refused: {status:?}", auth.cluster);
                let outcome = failed(host, settings, Some(&lookup), Failure::DispatchFailed);
                callout::settle_waiters(host, worker, settings, &lookup, &outcome, root);
            }
        }
    }
}

/// The answer to a call the root context sent: a JWKS fetch on its timer, or an orphaned
/// callout sent again (its answer then settles the requests that waited for it).
pub fn on_call_answer<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: Option<&Settings>,
    root: u32,
    token: u32,
    body_size: usize,
) {
    if let Some(i) = worker.jwks_fetches.iter().position(|(t, _)| *t == token) {
        let (_, provider) = worker.jwks_fetches.swap_remove(i);
        if let Some(jwt) = settings.and_then(|s| s.jwt.as_ref()) {
            if worker.has_verifier() {
                // OIDC discovery: the openid-configuration leads to the JWKS fetch.
                if let Some(next) = jwks_fetch::finish_fetch(host, worker, jwt, provider, token, body_size) {
                    worker.jwks_fetches.push((next, provider));
                }
            }
        }
        return;
    }
    let Some(i) = worker.resends.iter().position(|(t, _)| *t == token) else { return };
    let (_, lookup) = worker.resends.swap_remove(i);
    let Some(settings) = settings else { return };
    let outcome = answer(host, worker, settings, Some(&lookup), body_size);
    callout::settle_waiters(host, worker, settings, &lookup, &outcome, root);
}
