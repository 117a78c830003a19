//! The filter's counters ([`Metric`], the JWT counters, one per failure reason) and its
//! latency histograms ([`Histogram`]). Counters are kept in the worker's memory:
//! a request counts with no host call; the root context hands the counts to Envoy every
//! [`FLUSH_PERIOD`] from its tick, and when the VM shuts down (the host deletes the root
//! context). Envoy's `/stats` therefore lags by at most one period. A histogram sample
//! goes to the host at once (one `proxy_record_metric` each: Envoy keeps the buckets).
//! A metric is never worth failing a request for, so a refused call is ignored.

use std::time::Duration;

use crate::flow::host::Host;
use crate::jwt::verifier::Reason;
use crate::metric_names::{Histogram, Metric, FAILURE_REASONS};

/// How long a count may wait in the worker before Envoy shows it.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// A JWT counter, all named `nebula_authz.jwt.*` (Envoy shows them as
/// `wasmcustom.nebula_authz.jwt.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtCounter {
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

/// Slots of the JWT counters in [`Counters::values`].
#[derive(Debug)]
struct JwtSlots {
    verified: Option<usize>,
    cache_hits: Option<usize>,
    passthrough: Option<usize>,
    keys_unavailable: Option<usize>,
    jwks_refreshes: Option<usize>,
    jwks_failures: Option<usize>,
    insufficient: Option<usize>,
    rejected: Vec<Option<usize>>,
}

/// Every counter defined on this worker: (the host's metric id, count not yet flushed).
#[derive(Debug)]
pub struct Counters {
    values: Vec<(u32, u64)>,
    /// The slot of each [`Metric`], by [`Metric::index`].
    metrics: [Option<usize>; Metric::ALL.len()],
    jwt: Option<JwtSlots>,
    /// The slot of each failure reason, by its position in [`FAILURE_REASONS`].
    failures: [Option<usize>; FAILURE_REASONS.len()],
    /// The host's id of each [`Histogram`].
    histograms: [Option<u32>; Histogram::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: Vec::new(),
            metrics: [None; Metric::ALL.len()],
            jwt: None,
            failures: [None; FAILURE_REASONS.len()],
            histograms: [None; Histogram::ALL.len()],
        }
    }
}

impl Counters {
    fn define_one<H: Host>(&mut self, host: &H, name: &str) -> Option<usize> {
        let id = host.define_counter(name)?;
        self.values.push((id, 0));
        Some(self.values.len() - 1)
    }

    /// Defines every [`Metric`], failure reason and [`Histogram`] (`on_vm_start`).
    pub fn define<H: Host>(&mut self, host: &H) {
        for metric in Metric::ALL {
            self.metrics[metric.index()] = self.define_one(host, metric.name());
        }
        for (i, reason) in FAILURE_REASONS.iter().enumerate() {
            self.failures[i] = self.define_one(host, &format!("nebula_authz.failed.{reason}"));
        }
        for histogram in Histogram::ALL {
            self.histograms[histogram.index()] = host.define_histogram(histogram.name());
        }
    }

    /// Defines the JWT counters (a configuration with a `jwt` block).
    pub fn define_jwt<H: Host>(&mut self, host: &H) {
        let mut define = |name: &str| self.define_one(host, &format!("nebula_authz.jwt.{name}"));
        let verified = define("verified");
        let cache_hits = define("cache_hits");
        let passthrough = define("passthrough");
        let keys_unavailable = define("keys_unavailable");
        let jwks_refreshes = define("jwks_refreshes");
        let jwks_failures = define("jwks_failures");
        let insufficient = define("insufficient");
        let rejected = Reason::ALL.iter().map(|r| define(&format!("rejected.{}", r.as_str()))).collect();
        self.jwt = Some(JwtSlots {
            verified,
            cache_hits,
            passthrough,
            keys_unavailable,
            jwks_refreshes,
            jwks_failures,
            insufficient,
            rejected,
        });
    }

    fn bump(&mut self, slot: Option<usize>) {
        if let Some((_, n)) = slot.and_then(|slot| self.values.get_mut(slot)) {
            *n += 1;
        }
    }

    pub fn count(&mut self, metric: Metric) {
        self.bump(self.metrics[metric.index()]);
    }

    /// One request failed closed for `reason` (one of [`FAILURE_REASONS`]).
    pub fn count_failure(&mut self, reason: &str) {
        let slot = FAILURE_REASONS.iter().position(|r| *r == reason).and_then(|i| self.failures[i]);
        self.bump(slot);
    }

    /// One sample of `histogram`, handed to the host now.
    pub fn record<H: Host>(&self, host: &H, histogram: Histogram, value: u64) {
        if let Some(id) = self.histograms[histogram.index()] {
            host.record_histogram(id, value);
        }
    }

    pub fn count_jwt(&mut self, counter: JwtCounter) {
        let Some(jwt) = &self.jwt else { return };
        let slot = match counter {
            JwtCounter::Verified => jwt.verified,
            JwtCounter::CacheHit => jwt.cache_hits,
            JwtCounter::Passthrough => jwt.passthrough,
            JwtCounter::KeysUnavailable => jwt.keys_unavailable,
            JwtCounter::JwksRefresh => jwt.jwks_refreshes,
            JwtCounter::JwksFailure => jwt.jwks_failures,
            JwtCounter::Insufficient => jwt.insufficient,
            JwtCounter::Rejected(r) => {
                Reason::ALL.iter().position(|x| *x == r).and_then(|i| jwt.rejected.get(i).copied().flatten())
            }
        };
        self.bump(slot);
    }

    /// Hands every pending count to the host: one call per counter that moved.
    pub fn flush<H: Host>(&mut self, host: &H) {
        for (id, n) in self.values.iter_mut().filter(|(_, n)| *n > 0) {
            host.add_to_counter(*id, *n);
            *n = 0;
        }
    }
}
