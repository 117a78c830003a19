//! The filter's counters. Envoy shows a proxy-wasm metric `nebula_authz.x` as
//! `wasmcustom.nebula_authz.x` in `/stats` and as `nebula_authz_x` in `/stats/prometheus`.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_indexes_match() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert!(m.name().starts_with("nebula_authz."), "{m:?}");
        }
    }
}
