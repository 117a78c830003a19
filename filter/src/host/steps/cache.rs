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
}

pub enum Probe {
    /// A fresh decision: apply it, no callout.
    Hit(Rc<Decision>),
    /// None fresh: the callout's lookup (`None` without a cache).
    Miss(Option<Lookup>),
}

pub fn probe(settings: &Settings, callout: &[(&str, &str)]) -> Probe {
    let Some(cache) = &settings.cache else { return Probe::Miss(None) };
    let lookup = cache.probe(&settings.auth.cluster, callout);
    if let Some(decision) = cached(cache, &lookup) {
        count(Metric::CacheHits);
        return Probe::Hit(decision);
    }
    count(Metric::CacheMisses);
    Probe::Miss(Some(lookup))
}

/// A fresh decision for exactly `lookup`'s key: this worker's copy, else the shared slot's
/// (then kept here until the same expiry).
fn cached(cache: &CacheSettings, lookup: &Lookup) -> Option<Rc<Decision>> {
    let now = now_ms();
    if let Some(decision) = LOCAL_CACHE.with(|l| l.borrow().get(&lookup.key, now)) {
        return Some(decision);
    }
    let stored = hostcalls::get_shared_data(&lookup.slot_key()).ok()?.0?;
    let (decision, expires_ms) = cache.fresh_until(&stored, lookup, now)?;
    let decision = Rc::new(decision);
    LOCAL_CACHE.with(|l| l.borrow_mut().put(lookup.key, expires_ms, decision.clone()));
    Some(decision)
}

/// A recently expired allow for `lookup`, if `stale_if_error` permits serving it.
pub fn stale(cache: &CacheSettings, lookup: &Lookup) -> Option<Decision> {
    let stored = hostcalls::get_shared_data(&lookup.slot_key()).ok()?.0?;
    cache.stale(&stored, lookup, now_ms())
}

/// Writes the slot without a CAS check: whichever worker writes last, the slot holds a
/// fresh decision for the key it names; a lost race only costs a later miss.
pub fn store(cache: &CacheSettings, lookup: &Lookup, decision: &Decision, response: &[(&str, &[u8])]) {
    if let Some(bytes) = cache.entry(lookup, decision, response, now_ms()) {
        let slot = lookup.slot_key();
        if let Err(status) = hostcalls::set_shared_data(&slot, Some(&bytes), None) {
            warn!("cannot store a decision in {slot}: {status:?}");
        }
    }
}
