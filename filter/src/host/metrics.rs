//! The host side of the counters: the filter's [`Metric`]s (defined once per VM, counted
//! by id) and the JWT counters. A metric is never worth failing a request for, so a
//! refused call is ignored.

use std::cell::RefCell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::jwt::verifier::Reason;
use crate::metrics::Metric;

thread_local! {
    /// Metric ids from `define_metric`, by [`Metric::index`].
    static METRICS: RefCell<[Option<u32>; Metric::ALL.len()]> = const { RefCell::new([None; Metric::ALL.len()]) };
}

/// Defines every [`Metric`] on this VM (`on_vm_start`).
pub fn define() {
    METRICS.with(|ids| {
        let mut ids = ids.borrow_mut();
        for metric in Metric::ALL {
            ids[metric.index()] = hostcalls::define_metric(MetricType::Counter, metric.name()).ok();
        }
    });
}

pub fn count(metric: Metric) {
    if let Some(id) = METRICS.with(|m| m.borrow()[metric.index()]) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Counters, all named `nebula_authz.jwt.*` (Envoy shows them as `wasmcustom.nebula_authz.jwt.*`).
pub struct JwtMetrics {
    verified: Option<u32>,
    cache_hits: Option<u32>,
    passthrough: Option<u32>,
    keys_unavailable: Option<u32>,
    jwks_refreshes: Option<u32>,
    jwks_failures: Option<u32>,
    insufficient: Option<u32>,
    rejected: Vec<Option<u32>>,
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
        let define =
            |name: &str| hostcalls::define_metric(MetricType::Counter, &format!("nebula_authz.jwt.{name}")).ok();
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
        let id = match counter {
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
        if let Some(id) = id {
            // A metric is never worth failing a request for.
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}
