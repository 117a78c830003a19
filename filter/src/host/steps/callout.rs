//! Step 5: ask the auth service, unless an identical callout is already in flight on
//! this worker (then wait for its answer: cache/coalesce.rs). When the answer arrives,
//! [`settle`] applies it to the request and to every request that waited for it.

use std::cell::RefCell;
use std::time::Duration;

use log::{debug, error};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::cache::coalesce::InFlight;
use crate::cache::shared::{Key, Lookup};
use crate::config::Settings;
use crate::host::metrics::count;
use crate::host::reply::{resume, Applied};
use crate::host::steps::decide::{failed, Outcome};
use crate::host::steps::inject;
use crate::metrics::Metric;
use crate::policy::auth::AuthSettings;
use crate::policy::decision::Failure;
use crate::policy::envoy_reply::ENVOY_RETRY_HEADERS;

thread_local! {
    /// Callouts in flight on this worker (one VM per worker thread), for coalescing.
    static IN_FLIGHT: RefCell<InFlight> = RefCell::new(InFlight::default());
    /// Callouts whose sender went away while others waited for them: the root context
    /// sends them again on its next tick (an HTTP context cannot outlive its stream).
    static ORPHANS: RefCell<Vec<Resend>> = const { RefCell::new(Vec::new()) };
}

/// A callout to send again for the requests that wait for it.
pub struct Resend {
    pub lookup: Lookup,
    pub headers: Vec<(String, String)>,
}

/// `context` waits for the identical callout in flight, if there is one.
pub fn join(lookup: &Lookup, context: u32) -> bool {
    let joined = IN_FLIGHT.with(|t| t.borrow_mut().join(lookup.key, context));
    if joined {
        count(Metric::Coalesced);
    }
    joined
}

/// Sends the callout (with the client's `body` under `with_request_body`/`forward_body`;
/// such a callout is never cached: no `lookup`); returns its token and, when caching,
/// what to resend it with. A refused dispatch is settled here (failed, or a stale allow)
/// and returns `None`.
pub fn send(
    id: u32,
    settings: &Settings,
    callout: Vec<(&str, &str)>,
    lookup: Option<Lookup>,
    body: Option<&[u8]>,
) -> Option<(u32, Option<Resend>)> {
    let resend = lookup.map(|lookup| Resend {
        // A miss: the token's `exp` bounds the lifetime of what will be stored.
        lookup: lookup.with_bearer_expiry(&callout),
        headers: callout.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
    });
    match dispatch_within(&settings.auth, callout, body, settings.auth.timeout) {
        Ok(token) => Some((token, resend)),
        Err(status) => {
            debug!("[{id}] callout to cluster {:?} refused: {status:?}", settings.auth.cluster);
            let lookup = resend.map(|r| r.lookup);
            let outcome = failed(settings, lookup.as_ref(), Failure::DispatchFailed);
            settle(id, settings, lookup.as_ref(), &outcome);
            None
        }
    }
}

/// One callout to the auth service, counted.
pub fn dispatch(auth: &AuthSettings, headers: Vec<(&str, &str)>) -> Result<u32, Status> {
    dispatch_within(auth, headers, None, auth.timeout)
}

/// [`dispatch`] with a body (`auth.with_request_body`) and `timeout` (a retry: what is left of `auth.timeout`). With
/// `retry_on_reset`, Envoy is asked to retry a reset or refused connection itself, after
/// its backoff (policy/envoy_reply.rs), on this attempt and on the filter's retry.
pub fn dispatch_within(
    auth: &AuthSettings,
    mut headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    if auth.retry_on_reset {
        // The ext_authz shape already says `content-length: 0`: one copy only.
        for (name, value) in ENVOY_RETRY_HEADERS {
            if !headers.iter().any(|(present, _)| present.eq_ignore_ascii_case(name)) {
                headers.push((name, value));
            }
        }
    }
    let token = hostcalls::dispatch_http_call(&auth.cluster, headers, body, vec![], timeout)?;
    count(Metric::Callouts);
    Ok(token)
}

/// Applies `outcome` to this request, then to every request that waited for it.
pub fn settle(id: u32, settings: &Settings, lookup: Option<&Lookup>, outcome: &Outcome) {
    if let Applied::Allowed = inject::apply(id, settings, outcome) {
        resume(id);
    }
    if let Some(lookup) = lookup {
        settle_waiters(settings, lookup, outcome, id);
    }
}

/// Applies `outcome` to every request that waited for `lookup`'s callout, then makes
/// `current` the effective context again.
pub fn settle_waiters(settings: &Settings, lookup: &Lookup, outcome: &Outcome, current: u32) {
    for waiter in IN_FLIGHT.with(|t| t.borrow_mut().finish(&lookup.key)) {
        // Later host calls act on the waiter's stream; Envoy runs them after this callback.
        if hostcalls::set_effective_context(waiter).is_err() {
            continue;
        }
        if let Applied::Allowed = inject::apply(waiter, settings, outcome) {
            resume(waiter);
        }
    }
    let _ = hostcalls::set_effective_context(current);
}

/// Whether `context` still waits for `key`'s callout.
pub fn is_waiting(key: &Key, context: u32) -> bool {
    IN_FLIGHT.with(|t| t.borrow().is_waiting(key, context))
}

/// A waiting request's stream is over: it waits no more.
pub fn leave(key: &Key, context: u32) {
    IN_FLIGHT.with(|t| t.borrow_mut().leave(key, context))
}

/// The sender's stream is over and Envoy cancels its callout. If others wait for it,
/// the root context sends it again; otherwise the next request leads.
pub fn abandon(id: u32, resend: Resend) {
    if IN_FLIGHT.with(|t| t.borrow().has_waiters(&resend.lookup.key)) {
        debug!("[{id}] reset while others wait for its callout: resending it");
        ORPHANS.with(|o| o.borrow_mut().push(resend));
        if let Err(status) = hostcalls::set_tick_period(Duration::from_millis(1)) {
            error!("[{id}] cannot schedule the resend: {status:?}");
        }
    } else {
        IN_FLIGHT.with(|t| t.borrow_mut().finish(&resend.lookup.key));
    }
}

/// The orphaned callouts to send again (root context, on its tick).
pub fn take_orphans() -> Vec<Resend> {
    ORPHANS.with(|o| std::mem::take(&mut *o.borrow_mut()))
}
