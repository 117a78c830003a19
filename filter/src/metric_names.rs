//! The filter's counters and histograms. Envoy shows a proxy-wasm metric
//! `nebula_authz.x` as `wasmcustom.nebula_authz.x` in `/stats` and as `nebula_authz_x`
//! in `/stats/prometheus` (a histogram as `nebula_authz_x_bucket`, `_sum`, `_count`).

/// One counter per outcome; every request is counted once as public, allow, deny, error or
/// denied by an access rule (source or principal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Callouts sent to the auth service.
    Callouts,
    /// Requests let through after a decision (fresh, cached, coalesced or stale).
    Allows,
    /// Requests answered with the auth service's denial (fresh or cached).
    Denies,
    /// Requests on public paths (no callout), and with `policies` requests no rule selects.
    Public,
    /// Requests failed closed (`status_on_error`).
    Errors,
    /// Decisions served from the cache.
    CacheHits,
    /// Lookups that found no fresh decision.
    CacheMisses,
    /// Allows served past their expiry because the auth service failed (`stale_if_error`).
    CacheStaleServed,
    /// Requests that waited for another request's identical callout.
    Coalesced,
    /// Callouts sent again because their connection was reset or refused before any
    /// response byte (`auth.retry_on_reset`).
    CalloutRetries,
    /// Requests denied by a `source_ranges` rule (top level, or a path's with `deny`).
    SourceDenied,
    /// Requests denied by a `principals` rule (top level, or a path's with `deny`).
    PrincipalDenied,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::Callouts,
        Metric::Allows,
        Metric::Denies,
        Metric::Public,
        Metric::Errors,
        Metric::CacheHits,
        Metric::CacheMisses,
        Metric::CacheStaleServed,
        Metric::Coalesced,
        Metric::CalloutRetries,
        Metric::SourceDenied,
        Metric::PrincipalDenied,
    ];

    /// The name the filter defines (Envoy adds its own prefix, see the module docs).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Callouts => "nebula_authz.callouts",
            Metric::Allows => "nebula_authz.allows",
            Metric::Denies => "nebula_authz.denies",
            Metric::Public => "nebula_authz.public",
            Metric::Errors => "nebula_authz.errors",
            Metric::CacheHits => "nebula_authz.cache_hits",
            Metric::CacheMisses => "nebula_authz.cache_misses",
            Metric::CacheStaleServed => "nebula_authz.cache_stale_served",
            Metric::Coalesced => "nebula_authz.coalesced",
            Metric::CalloutRetries => "nebula_authz.callout_retries",
            Metric::SourceDenied => "nebula_authz.source_denied",
            Metric::PrincipalDenied => "nebula_authz.principal_denied",
        }
    }

    /// Position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request failed closed, one counter each (`nebula_authz.failed.<reason>`): the
/// callout's failures ([`crate::policy::decision::Failure::code`]) and the filter's own.
/// A fixed list, so the label set stays bounded whatever the auth service answers.
pub const FAILURE_REASONS: [&str; 16] = [
    "no_response",
    "bad_status",
    "auth_server_error",
    "refused",
    "reset",
    "no_healthy_upstream",
    "unreachable",
    "timeout",
    "response_too_large",
    "response_header_not_text",
    "request_header_not_text",
    "dispatch_failed",
    "host_error",
    // The filter's own: no plugin configuration, no JWKS keys yet for a `local` provider,
    // a request body Envoy never delivered (`allow_on_headers_stop_iteration` missing).
    "no_configuration",
    "no_jwks_keys",
    "no_request_body",
];

/// The latency histograms, in microseconds (Envoy's histograms are unitless; its default
/// buckets, 0.5 to 3 600 000, then span 0.5 µs to 3.6 s). Only a request that waited
/// has a sample: one decided in the callback that brought its headers (a public path, a
/// cache hit, a verified JWT, a local denial) spent no time waiting, and timing its few
/// microseconds of CPU would cost two clock reads per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    /// Time a request waited in the filter, from its headers to its decision, by what it
    /// waited for: its own callout (a stale allow served after it failed included).
    WaitCallout,
    /// ... an identical callout of another request (coalescing).
    WaitCoalesced,
    /// ... a JWKS fetch, then decided by its JWT.
    WaitJwks,
    /// ... anything else: a request body that never came.
    WaitOther,
    /// The callout's round trip, from its dispatch to its answer (a retry included).
    CalloutTime,
}

impl Histogram {
    pub const ALL: [Histogram; 5] = [
        Histogram::WaitCallout,
        Histogram::WaitCoalesced,
        Histogram::WaitJwks,
        Histogram::WaitOther,
        Histogram::CalloutTime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Histogram::WaitCallout => "nebula_authz.wait_time_us.callout",
            Histogram::WaitCoalesced => "nebula_authz.wait_time_us.coalesced",
            Histogram::WaitJwks => "nebula_authz.wait_time_us.jwks",
            Histogram::WaitOther => "nebula_authz.wait_time_us.other",
            Histogram::CalloutTime => "nebula_authz.callout_time_us",
        }
    }

    /// Position in [`Histogram::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_indexes_match() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert!(m.name().starts_with("nebula_authz."), "{m:?}");
        }
        for (i, h) in Histogram::ALL.iter().enumerate() {
            assert_eq!(h.index(), i);
            assert!(h.name().starts_with("nebula_authz."), "{h:?}");
        }
        let mut reasons = FAILURE_REASONS.to_vec();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), FAILURE_REASONS.len(), "a failure reason is listed twice");
    }
}
