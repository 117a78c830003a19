//! With remote JWKS: a token whose key is not known yet, while a fetch of its provider's
//! JWKS is already in flight (on this VM or another: the fetch lease in shared data,
//! flow/jwks_fetch.rs), waits for that fetch instead of being judged on the old keys (a
//! rotated key would get 401 on every worker but the one fetching).
//!
//! An http context is only ever called back by its own stream or its own callouts, so
//! the root context's tick watches the lease ([`WAIT_TICK`] while anyone waits) and, once
//! the fetch is over (or the lease ran out), checks the waiting request's token again on
//! its stream (`set_effective_context`, as a coalesced callout's waiters are settled):
//! allowed, or answered as the first pass would have. Only `local` providers wait: in
//! `local_then_callout` the callout would have to be sent from the waiting context.

use std::time::Duration;

use log::debug;

use crate::flow::header_map;
use crate::flow::host::{Host, Map};
use crate::flow::jwks_fetch;
use crate::flow::outcome::{Step, Waiting};
use crate::flow::reply::{fail_closed, resume};
use crate::flow::steps::jwt;
use crate::flow::worker::{JwksWaiter, Worker};
use crate::plugin_config::Settings;
use crate::policy::decision::Failure;

/// The root's tick period while a request waits: how late a waiter may learn that the
/// fetch is over.
pub const WAIT_TICK: Duration = Duration::from_millis(10);

/// `id` waits for the fetch of `provider`'s JWKS, in flight until `until_ms` at the latest.
pub fn wait<H: Host, T>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    provider: usize,
    until_ms: u64,
) -> Step<T> {
    if host.set_tick_period(WAIT_TICK).is_err() {
        return fail_closed(host, worker, id, settings, Failure::HostError);
    }
    worker.jwks_waiters.push(JwksWaiter { id, provider, until_ms });
    debug!("[{id}] waits for the JWKS fetch of provider {provider} in flight");
    Step::Paused(Waiting::JwksElsewhere)
}

/// Whether `id` still waits.
pub fn is_waiting(worker: &Worker, id: u32) -> bool {
    worker.jwks_waiters.iter().any(|waiter| waiter.id == id)
}

/// `id`'s stream is over.
pub fn leave(worker: &mut Worker, id: u32) {
    worker.jwks_waiters.retain(|waiter| waiter.id != id);
}

/// Root context, on its tick: the waiters whose fetch is over, checked again on their
/// streams; then `root` is the effective context again.
pub fn wake_due<H: Host>(host: &H, worker: &mut Worker, settings: &Settings, root: u32, now_ms: u64) {
    let Some(jwt) = &settings.jwt else { return };
    // One read of the shared lease per provider that has waiters.
    let mut in_flight: Vec<(usize, bool)> = Vec::new();
    let mut due = Vec::new();
    worker.jwks_waiters.retain(|waiter| {
        let fetching = match in_flight.iter().find(|(p, _)| *p == waiter.provider) {
            Some((_, fetching)) => *fetching,
            None => {
                let fetching = jwks_fetch::in_flight(host, jwt, waiter.provider, now_ms).is_some();
                in_flight.push((waiter.provider, fetching));
                fetching
            }
        };
        let keep = fetching && now_ms < waiter.until_ms;
        if !keep {
            due.push(waiter.id);
        }
        keep
    });
    for id in due {
        if host.enter(id).is_err() {
            continue; // the stream is gone
        }
        check_again(host, worker, id, settings);
    }
    let _ = host.enter(root);
}

/// The JWT step once more on the effective context's request, with no fetch of its own.
fn check_again<H: Host>(host: &H, worker: &mut Worker, id: u32, settings: &Settings) {
    let Some(buffer) = host.header_map(Map::RequestHeaders) else {
        let _: Step = fail_closed(host, worker, id, settings, Failure::HostError);
        return;
    };
    let Some(headers) = header_map::parse(&buffer) else {
        let _: Step = fail_closed(host, worker, id, settings, Failure::HostError);
        return;
    };
    match jwt::check(host, worker, id, settings, &headers, false) {
        Step::Upstream => resume(host, id),
        Step::Replied | Step::Resumed => {}
        // The same token of a `local` provider is never sent to the auth service, and the
        // second pass neither fetches nor waits: fail closed if it ever did.
        Step::Next(_) | Step::Paused(_) => {
            let _: Step = fail_closed(host, worker, id, settings, Failure::HostError);
        }
    }
}
