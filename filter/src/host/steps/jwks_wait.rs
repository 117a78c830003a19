//! Step 3 with remote JWKS: a token whose key is not known yet, while a fetch of its
//! provider's JWKS is already in flight (on this VM or another: the fetch lease in shared
//! data, host/jwks.rs), waits for that fetch instead of being judged on the old keys (a
//! rotated key would get 401 on every worker but the one fetching).
//!
//! An http context is only ever called back by its own stream or its own callouts, so
//! the root context's tick watches the lease ([`WAIT_TICK`] while anyone waits) and, once
//! the fetch is over (or the lease ran out), checks the waiting request's token again on
//! its stream (`set_effective_context`, as a coalesced callout's waiters are settled):
//! allowed, or answered as the first pass would have. Only `local` providers wait: in
//! `local_then_callout` the callout would have to be sent from the waiting context.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::debug;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use crate::config::Settings;
use crate::host::header_map;
use crate::host::jwks::{self, JwtState};
use crate::host::reply::{fail_closed, resume};
use crate::host::steps::jwt::{self, JwtStep};
use crate::policy::decision::Failure;

/// The root's tick period while a request waits: how late a waiter may learn that the
/// fetch is over.
pub const WAIT_TICK: Duration = Duration::from_millis(10);

struct Waiter {
    id: u32,
    /// The configuration the request runs under (its root context's): only that root
    /// checks it again, with that provider list (two plugin configs may share a VM).
    config: *const Settings,
    provider: usize,
    /// The lease's end when the wait began: checked again by then whatever the lease says.
    until_ms: u64,
}

thread_local! {
    static WAITING: RefCell<Vec<Waiter>> = const { RefCell::new(Vec::new()) };
}

/// `id`, under `settings`, waits for the fetch of `provider`'s JWKS, in flight until
/// `until_ms` at the latest.
pub fn wait(id: u32, settings: &Settings, provider: usize, until_ms: u64) -> Result<(), Status> {
    hostcalls::set_tick_period(WAIT_TICK)?;
    let config: *const Settings = settings;
    WAITING.with(|w| w.borrow_mut().push(Waiter { id, config, provider, until_ms }));
    debug!("[{id}] waits for the JWKS fetch of provider {provider} in flight");
    Ok(())
}

/// Whether `id` still waits.
pub fn is_waiting(id: u32) -> bool {
    WAITING.with(|w| w.borrow().iter().any(|waiter| waiter.id == id))
}

/// Whether a request under `settings` waits.
pub fn any(settings: &Settings) -> bool {
    let config: *const Settings = settings;
    WAITING.with(|w| w.borrow().iter().any(|waiter| waiter.config == config))
}

/// `id`'s stream is over.
pub fn leave(id: u32) {
    WAITING.with(|w| w.borrow_mut().retain(|waiter| waiter.id != id));
}

/// Root context (of `settings`), on its tick: its waiters whose fetch is over, checked
/// again on their streams; then `root` is the effective context again.
pub fn wake_due(settings: &Settings, state: &Rc<RefCell<JwtState>>, root: u32, now_ms: u64) {
    let Some(jwt) = &settings.jwt else { return };
    let config: *const Settings = settings;
    // One read of the shared lease per provider that has waiters.
    let mut in_flight: Vec<(usize, bool)> = Vec::new();
    let due: Vec<u32> = WAITING.with(|w| {
        let mut due = Vec::new();
        w.borrow_mut().retain(|waiter| {
            if waiter.config != config {
                return true; // another root's
            }
            let fetching = match in_flight.iter().find(|(p, _)| *p == waiter.provider) {
                Some((_, fetching)) => *fetching,
                None => {
                    let fetching = jwks::in_flight(jwt, waiter.provider, now_ms).is_some();
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
        due
    });
    for id in due {
        if hostcalls::set_effective_context(id).is_err() {
            continue; // the stream is gone
        }
        check_again(id, settings, state);
    }
    let _ = hostcalls::set_effective_context(root);
}

/// The JWT step once more on the effective context's request, with no fetch of its own.
fn check_again(id: u32, settings: &Settings, state: &Rc<RefCell<JwtState>>) {
    let Some(buffer) = header_map::read(MapType::HttpRequestHeaders) else {
        fail_closed(id, settings, Failure::HostError);
        return;
    };
    let Some(headers) = header_map::parse(&buffer) else {
        fail_closed(id, settings, Failure::HostError);
        return;
    };
    match jwt::check(id, settings, Some(state), &headers, false) {
        JwtStep::Allow => resume(id),
        JwtStep::Wait => {}
        // The same token of a `local` provider is never sent to the auth service, and the
        // second pass neither fetches nor waits: fail closed if it ever did.
        JwtStep::Callout | JwtStep::Fetching { .. } | JwtStep::Waiting { .. } => {
            fail_closed(id, settings, Failure::HostError);
        }
    }
}
