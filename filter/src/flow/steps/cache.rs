//! When `cache` is configured: a fresh decision for exactly this callout, from this
//! worker's copy or the shared slot (cache/shared.rs holds the rules; this is the
//! host side: shared data and the per-worker front).

use std::rc::Rc;

use log::warn;

use crate::cache::shared::{CacheSettings, Decision, Lookup};
use crate::flow::host::Host;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;

/// A fresh decision for exactly this callout (`Ok`), or the callout's lookup (`Err`,
/// `None` without a cache): this worker's copy (found by the key's input bytes, no
/// SHA-256), else the shared slot's (then kept here until the same expiry). The SHA-256
/// key is computed only when shared data is read.
pub fn probe<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &Settings,
    callout: &[(&str, impl AsRef<str>)],
) -> Result<Rc<Decision>, Option<Lookup>> {
    let Some(cache) = &settings.cache else { return Err(None) };
    let now = host.now_ms();
    let Worker { key_input: input, local_cache, counters, .. } = worker;
    cache.key_input(&settings.auth.cluster, callout, input);
    if let Some(decision) = local_cache.get(input, now) {
        counters.count(Metric::CacheHits);
        return Ok(decision);
    }
    let lookup = cache.probe_input(input);
    if let Some((decision, expires_ms)) = shared(host, cache, &lookup, now) {
        let decision = Rc::new(decision);
        local_cache.put(input, lookup.key, expires_ms, decision.clone());
        counters.count(Metric::CacheHits);
        return Ok(decision);
    }
    counters.count(Metric::CacheMisses);
    Err(Some(lookup))
}

/// The shared slot's decision for exactly `lookup`'s key, fresh at `now`, and its expiry.
fn shared<H: Host>(host: &H, cache: &CacheSettings, lookup: &Lookup, now: u64) -> Option<(Decision, u64)> {
    let stored = host.shared_get(&lookup.slot_key()).ok()?.0?;
    cache.fresh_until(&stored, lookup, now)
}

/// A recently expired allow for `lookup`, if `stale_if_error` permits serving it.
pub fn stale<H: Host>(host: &H, cache: &CacheSettings, lookup: &Lookup) -> Option<Decision> {
    let stored = host.shared_get(&lookup.slot_key()).ok()?.0?;
    cache.stale(&stored, lookup, host.now_ms())
}

/// Writes the slot without a CAS check: whichever worker writes last, the slot holds a
/// fresh decision for the key it names; a lost race only costs a later miss. A denial
/// that may not be stored (`no-store`, a redirect, another 4xx...) still ends the allow
/// the slot holds for its key.
pub fn store<H: Host>(
    host: &H,
    worker: &mut Worker,
    cache: &CacheSettings,
    lookup: &Lookup,
    decision: &Decision,
    response: &[(&str, &[u8])],
) {
    if let Decision::Deny { .. } = decision {
        worker.local_cache.remove(&lookup.key);
    }
    match cache.entry(lookup, decision, response, host.now_ms()) {
        Some(bytes) => write(host, &lookup.slot_key(), &bytes),
        None if matches!(decision, Decision::Deny { .. }) => end_allows(host, worker, cache, lookup),
        None => {}
    }
}

/// The auth service refused `lookup`'s credential: no allow for that key may be served
/// again, fresh or stale, on this worker (its front) or any other (the shared slot, which
/// is emptied: shared data cannot delete). Other workers' fronts hold only what the slot
/// held fresh, and only until that allow's own expiry; they never serve stale.
pub fn end_allows<H: Host>(host: &H, worker: &mut Worker, cache: &CacheSettings, lookup: &Lookup) {
    worker.local_cache.remove(&lookup.key);
    let slot = lookup.slot_key();
    let Ok((Some(stored), _)) = host.shared_get(&slot) else { return };
    if cache.holds_allow(&stored, lookup) {
        write(host, &slot, &[]);
    }
}

fn write<H: Host>(host: &H, slot: &str, bytes: &[u8]) {
    if let Err(status) = host.shared_set(slot, bytes, None) {
        warn!("cannot write the decision slot {slot}: {status:?}");
    }
}
