//! Step 4, when `cache` is configured: a fresh decision for exactly this callout, from
//! this worker's copy or the shared slot (cache/shared.rs holds the rules; this is the
//! host side: proxy-wasm shared data and the per-worker front).

use std::cell::RefCell;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;

use crate::cache::local::LocalCache;
use crate::cache::shared::{CacheSettings, Decision, Lookup};
use crate::config::Settings;
use crate::host::clock::now_ms;
use crate::host::metrics::count;
use crate::metrics::Metric;

thread_local! {
    /// Decoded decisions recently read from the shared cache on this worker (cache/local.rs).
    static LOCAL_CACHE: RefCell<LocalCache> = RefCell::new(LocalCache::default());
    /// The key's input bytes of the request at hand (reused: no allocation per request).
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub enum Probe {
    /// A fresh decision: apply it, no callout.
    Hit(Rc<Decision>),
    /// None fresh: the callout's lookup (`None` without a cache).
    Miss(Option<Lookup>),
}

/// A fresh decision for exactly this callout: this worker's copy (found by the key's
/// input bytes, no SHA-256), else the shared slot's (then kept here until the same
/// expiry). The SHA-256 key is computed only when shared data is read.
pub fn probe(settings: &Settings, callout: &[(&str, &str)]) -> Probe {
    let Some(cache) = &settings.cache else { return Probe::Miss(None) };
    let now = now_ms();
    INPUT.with(|input| {
        let mut input = input.borrow_mut();
        cache.key_input(&settings.auth.cluster, callout, &mut input);
        if let Some(decision) = LOCAL_CACHE.with(|l| l.borrow().get(&input, now)) {
            count(Metric::CacheHits);
            return Probe::Hit(decision);
        }
        let lookup = cache.probe_input(&input);
        if let Some((decision, expires_ms)) = shared(cache, &lookup, now) {
            let decision = Rc::new(decision);
            LOCAL_CACHE.with(|l| l.borrow_mut().put(&input, lookup.key, expires_ms, decision.clone()));
            count(Metric::CacheHits);
            return Probe::Hit(decision);
        }
        count(Metric::CacheMisses);
        Probe::Miss(Some(lookup))
    })
}

/// The shared slot's decision for exactly `lookup`'s key, fresh at `now`, and its expiry.
fn shared(cache: &CacheSettings, lookup: &Lookup, now: u64) -> Option<(Decision, u64)> {
    let stored = hostcalls::get_shared_data(&lookup.slot_key()).ok()?.0?;
    cache.fresh_until(&stored, lookup, now)
}

/// A recently expired allow for `lookup`, if `stale_if_error` permits serving it.
pub fn stale(cache: &CacheSettings, lookup: &Lookup) -> Option<Decision> {
    let stored = hostcalls::get_shared_data(&lookup.slot_key()).ok()?.0?;
    cache.stale(&stored, lookup, now_ms())
}

/// Writes the slot without a CAS check: whichever worker writes last, the slot holds a
/// fresh decision for the key it names; a lost race only costs a later miss. A denial
/// that may not be stored (`no-store`, a redirect, another 4xx...) still ends the allow
/// the slot holds for its key.
pub fn store(cache: &CacheSettings, lookup: &Lookup, decision: &Decision, response: &[(&str, &[u8])]) {
    if let Decision::Deny { .. } = decision {
        LOCAL_CACHE.with(|l| l.borrow_mut().remove(&lookup.key));
    }
    match cache.entry(lookup, decision, response, now_ms()) {
        Some(bytes) => write(&lookup.slot_key(), &bytes),
        None if matches!(decision, Decision::Deny { .. }) => end_allows(cache, lookup),
        None => {}
    }
}

/// The auth service refused `lookup`'s credential: no allow for that key may be served
/// again, fresh or stale, on this worker (its front) or any other (the shared slot, which
/// is emptied: shared data cannot delete). Other workers' fronts hold only what the slot
/// held fresh, and only until that allow's own expiry; they never serve stale.
pub fn end_allows(cache: &CacheSettings, lookup: &Lookup) {
    LOCAL_CACHE.with(|l| l.borrow_mut().remove(&lookup.key));
    let slot = lookup.slot_key();
    let Ok((Some(stored), _)) = hostcalls::get_shared_data(&slot) else { return };
    if cache.holds_allow(&stored, lookup) {
        write(&slot, &[]);
    }
}

fn write(slot: &str, bytes: &[u8]) {
    if let Err(status) = hostcalls::set_shared_data(slot, Some(bytes), None) {
        warn!("cannot write the decision slot {slot}: {status:?}");
    }
}
