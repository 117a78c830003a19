//! The host side of the counters: the filter's [`Metric`]s and the JWT counters.
//!
//! A request counts in this worker's memory only (no host call); the root context hands
//! the counts to Envoy every [`FLUSH_PERIOD`] from its tick, and when the VM shuts down
//! (the host deletes the root context: its `Drop`). Envoy's `/stats` therefore lags by
//! at most one period. A metric is never worth failing a request for, so a refused call
//! is ignored.

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::jwt::verifier::Reason;
use crate::metrics::Metric;

/// How long a count may wait in the worker before Envoy shows it.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

thread_local! {
    /// Every counter defined on this VM: (Envoy's metric id, count not yet flushed), by slot.
    static COUNTERS: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
    /// The slot of each [`Metric`], by [`Metric::index`].
    static METRICS: RefCell<[Option<usize>; Metric::ALL.len()]> = const { RefCell::new([None; Metric::ALL.len()]) };
}

/// Defines a counter with Envoy; its slot in [`COUNTERS`], `None` if the host refused.
fn define_counter(name: &str) -> Option<usize> {
    let id = hostcalls::define_metric(MetricType::Counter, name).ok()?;
    COUNTERS.with(|c| {
        let mut c = c.borrow_mut();
        c.push((id, 0));
        Some(c.len() - 1)
    })
}

fn bump(slot: Option<usize>) {
    if let Some(slot) = slot {
        COUNTERS.with(|c| {
            if let Some((_, n)) = c.borrow_mut().get_mut(slot) {
                *n += 1;
            }
        });
    }
}

/// Hands every pending count to Envoy (root tick and VM shutdown): one host call per
/// counter that moved.
pub fn flush() {
    COUNTERS.with(|c| {
        for (id, n) in c.borrow_mut().iter_mut().filter(|(_, n)| *n > 0) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
            *n = 0;
        }
    });
}

/// Defines every [`Metric`] on this VM (`on_vm_start`).
pub fn define() {
    METRICS.with(|slots| {
        let mut slots = slots.borrow_mut();
        for metric in Metric::ALL {
            slots[metric.index()] = define_counter(metric.name());
        }
    });
}

pub fn count(metric: Metric) {
    bump(METRICS.with(|m| m.borrow()[metric.index()]));
}

/// Counters, all named `nebula_authz.jwt.*` (Envoy shows them as `wasmcustom.nebula_authz.jwt.*`).
/// Slots in [`COUNTERS`].
pub struct JwtMetrics {
    verified: Option<usize>,
    cache_hits: Option<usize>,
    passthrough: Option<usize>,
    keys_unavailable: Option<usize>,
    jwks_refreshes: Option<usize>,
    jwks_failures: Option<usize>,
    insufficient: Option<usize>,
    rejected: Vec<Option<usize>>,
}

pub enum Counter {
    Verified,
    CacheHit,
    /// Not a JWT of a known issuer: left to the callout.
    Passthrough,
    KeysUnavailable,
    JwksRefresh,
    JwksFailure,
    /// A valid token that failed a `require` check (403).
    Insufficient,
    Rejected(Reason),
}

impl JwtMetrics {
    pub fn define() -> JwtMetrics {
        let define = |name: &str| define_counter(&format!("nebula_authz.jwt.{name}"));
        JwtMetrics {
            verified: define("verified"),
            cache_hits: define("cache_hits"),
            passthrough: define("passthrough"),
            keys_unavailable: define("keys_unavailable"),
            jwks_refreshes: define("jwks_refreshes"),
            jwks_failures: define("jwks_failures"),
            insufficient: define("insufficient"),
            rejected: Reason::ALL.iter().map(|r| define(&format!("rejected.{}", r.as_str()))).collect(),
        }
    }

    pub fn inc(&self, counter: Counter) {
        let slot = match counter {
            Counter::Verified => self.verified,
            Counter::CacheHit => self.cache_hits,
            Counter::Passthrough => self.passthrough,
            Counter::KeysUnavailable => self.keys_unavailable,
            Counter::JwksRefresh => self.jwks_refreshes,
            Counter::JwksFailure => self.jwks_failures,
            Counter::Insufficient => self.insufficient,
            Counter::Rejected(r) => {
                Reason::ALL.iter().position(|x| *x == r).and_then(|i| self.rejected.get(i).copied().flatten())
            }
        };
        bump(slot);
    }
}
