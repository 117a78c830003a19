//! Ask the auth service, unless an identical callout is already in flight on this
//! worker (then wait for its answer: cache/coalesce.rs). When the answer arrives,
//! [`settle`] applies it to the request and to every request that waited for it.

use std::time::Duration;

use log::{debug, error};

use crate::cache::shared::Lookup;
use crate::flow::host::{Host, Refused};
use crate::flow::outcome::{Step, Waiting};
use crate::flow::reply::resume;
use crate::flow::request_log::Via;
use crate::flow::steps::decide::{failed, Outcome};
use crate::flow::steps::inject;
use crate::flow::worker::{Resend, Worker};
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::auth::AuthSettings;
use crate::policy::decision::Failure;
use crate::policy::envoy_reply::ENVOY_RETRY_HEADERS;

/// `context` waits for the identical callout in flight, if there is one.
pub fn join(worker: &mut Worker, lookup: &Lookup, context: u32) -> bool {
    let joined = worker.in_flight.join(lookup.key, context);
    if joined {
        worker.counters.count(Metric::Coalesced);
    }
    joined
}

/// Sends the callout (with the client's `body` under `with_request_body`/`forward_body`;
/// such a callout is never cached: no `lookup`): the request then waits for it. A refused
/// dispatch is decided here (failed, or a stale allow: [`Step::Upstream`], which the
/// caller resumes or hands to the next provider).
pub fn send<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    callout: Vec<(&str, &str)>,
    lookup: Option<Lookup>,
    body: Option<&[u8]>,
) -> Step {
    let resend = lookup.map(|lookup| Resend {
        // A miss: the token's `exp` bounds the lifetime of what will be stored.
        lookup: lookup.with_bearer_expiry(&callout),
        headers: callout.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
    });
    match dispatch_within(host, worker, &settings.auth, callout, body, settings.auth.timeout) {
        // The clock is read only when a retry may need it or the request is timed, and
        // then once: one host call per callout. A timed request's wait starts here (the
        // request pauses next: flow/decision_log.rs `paused` keeps this start).
        Ok(token) => {
            let timed = settings.telemetry.timed();
            let now_us = if timed { host.now_us() } else { 0 };
            // A request that already waited (for its body, a JWKS fetch, an earlier
            // provider) keeps its start; its callout's round trip starts now.
            let waited = timed && worker.started.contains_key(&id);
            if timed {
                worker.started.entry(id).or_insert(now_us);
            }
            let sent_ms = match (settings.auth.retry_on_reset, timed) {
                (false, _) => 0,
                (true, true) => now_us / 1000,
                (true, false) => host.now_ms(),
            };
            Step::Paused(Waiting::Callout {
                token,
                resend,
                sent_ms,
                sent_us: if settings.telemetry.histograms && (waited || body.is_some()) { now_us } else { 0 },
                retried: false,
            })
        }
        Err(status) => {
            debug!("[{id}] callout to cluster {:?} refused: {status:?}", settings.auth.cluster);
            let lookup = resend.map(|r| r.lookup);
            let outcome = failed(host, settings, lookup.as_ref(), Failure::DispatchFailed);
            // Still in the callback that sent it: a stale allow is [`Step::Upstream`], not
            // resumed here, so that the caller's next provider still checks the request.
            let step = inject::apply(host, worker, id, settings, &outcome, Via::AuthService);
            if let Some(lookup) = lookup.as_ref().filter(|lookup| worker.in_flight.leads(&lookup.key, id)) {
                settle_waiters(host, worker, settings, lookup, &outcome, id);
            }
            step
        }
    }
}

/// One callout to the auth service, counted.
pub fn dispatch<H: Host>(
    host: &H,
    worker: &mut Worker,
    auth: &AuthSettings,
    headers: Vec<(&str, &str)>,
) -> Result<u32, Refused> {
    dispatch_within(host, worker, auth, headers, None, auth.timeout)
}

/// [`dispatch`] with a body (`auth.with_request_body`) and `timeout` (a retry: what is left of `auth.timeout`). With
/// `retry_on_reset`, Envoy is asked to retry a reset or refused connection itself, after
/// its backoff (policy/envoy_reply.rs), on this attempt and on the filter's retry.
pub fn dispatch_within<H: Host>(
    host: &H,
    worker: &mut Worker,
    auth: &AuthSettings,
    mut headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Refused> {
    if auth.retry_on_reset {
        // The ext_authz shape already says `content-length: 0`: one copy only.
        for (name, value) in ENVOY_RETRY_HEADERS {
            if !headers.iter().any(|(present, _)| present.eq_ignore_ascii_case(name)) {
                headers.push((name, value));
            }
        }
    }
    let token = host.dispatch(&auth.cluster, headers, body, timeout)?;
    worker.counters.count(Metric::Callouts);
    Ok(token)
}

/// Applies `outcome` to this request, then to every request that waited for it:
/// [`Step::Resumed`] or [`Step::Replied`] for this one.
pub fn settle<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    lookup: Option<&Lookup>,
    outcome: &Outcome,
) -> Step {
    let step = match inject::apply(host, worker, id, settings, outcome, Via::AuthService) {
        Step::Upstream => {
            resume(host, id);
            Step::Resumed
        }
        other => other,
    };
    if let Some(lookup) = lookup.filter(|lookup| worker.in_flight.leads(&lookup.key, id)) {
        settle_waiters(host, worker, settings, lookup, outcome, id);
    }
    step
}

/// Applies `outcome` to every request that waited for `lookup`'s callout, then makes
/// `current` the effective context again.
pub fn settle_waiters<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &Settings,
    lookup: &Lookup,
    outcome: &Outcome,
    current: u32,
) {
    for waiter in worker.in_flight.finish(&lookup.key) {
        // Later host calls act on the waiter's stream; Envoy runs them after this callback.
        if host.enter(waiter).is_err() {
            continue;
        }
        if let Step::Upstream = inject::apply(host, worker, waiter, settings, outcome, Via::Coalesced) {
            resume(host, waiter);
        }
    }
    let _ = host.enter(current);
}

/// The sender's stream is over and Envoy cancels its callout. If others wait for it,
/// the root context sends it again; otherwise the next request leads.
pub fn abandon<H: Host>(host: &H, worker: &mut Worker, id: u32, resend: Resend) {
    if !worker.in_flight.leads(&resend.lookup.key, id) {
        return; // An identical callout another request leads: its waiters are not ours.
    }
    if worker.in_flight.has_waiters(&resend.lookup.key) {
        debug!("[{id}] reset while others wait for its callout: resending it");
        worker.orphans.push(resend);
        if let Err(status) = host.set_tick_period(Duration::from_millis(1)) {
            error!("[{id}] cannot schedule the resend: {status:?}");
        }
    } else {
        worker.in_flight.finish(&resend.lookup.key);
    }
}
