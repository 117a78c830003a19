//! What one worker (one VM: one Envoy worker thread, or the main thread) keeps between
//! requests, in one value owned by its root context and lent to each callback: the
//! callouts in flight and their waiters, what a request keeps for its response, the JWT
//! verifier and its fetches, the decoded cache front, and the counters. No thread-local:
//! the tests run several workers side by side.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::cache::coalesce::InFlight;
use crate::cache::local::LocalCache;
use crate::cache::shared::Lookup;
use crate::flow::counters::Counters;
use crate::jwt::jwt_config::JwtSettings;
use crate::jwt::verifier::{ClaimHeaders, JwtVerifier};

/// Owned (name, value) pairs.
pub type OwnedHeaders = Vec<(String, Vec<u8>)>;

/// A callout to send again for the requests that wait for it.
#[derive(Debug)]
pub struct Resend {
    pub lookup: Lookup,
    pub headers: Vec<(String, String)>,
}

/// A request waiting for another context's JWKS fetch (flow/steps/jwks_wait.rs).
#[derive(Debug)]
pub struct JwksWaiter {
    pub id: u32,
    pub provider: usize,
    /// The lease's end when the wait began: checked again by then whatever the lease says.
    pub until_ms: u64,
}

#[derive(Default)]
pub struct Worker {
    pub counters: Counters,
    /// The JWT verifiers (configurations with a `jwt` block), reached through
    /// [`Worker::verifier`], by the address of the `jwt` block each was built for, newest
    /// last: the current configuration's and the one before it, whose requests may still
    /// wait for a JWKS fetch. A request is only ever checked with its own configuration's
    /// keys (provider indexes differ between configurations).
    jwt: Vec<(usize, JwtVerifier)>,
    /// Callouts in flight, for coalescing (cache/coalesce.rs).
    pub in_flight: InFlight,
    /// Callouts whose sender went away while others waited for them: the root context
    /// sends them again on its next tick (an http context cannot outlive its stream).
    pub orphans: Vec<Resend>,
    /// Decoded decisions recently read from the shared cache (cache/local.rs).
    pub local_cache: LocalCache,
    /// The key's input bytes of the request at hand (reused: no allocation per request).
    pub key_input: Vec<u8>,
    /// Streams waiting for their first body callback: (context id, since, Unix ms).
    pub body_awaiting: Vec<(u32, u64)>,
    /// A body callback came on this worker: Envoy has `allow_on_headers_stop_iteration`,
    /// so the guard is off for good and a client that is merely slow to send its body
    /// waits, as under ext_authz.
    pub body_delivered: bool,
    /// Requests waiting for a JWKS fetch in flight elsewhere.
    pub jwks_waiters: Vec<JwksWaiter>,
    /// Tokens of this worker's calls in flight for an openid-configuration.
    pub discovery_calls: Vec<u32>,
    /// Callouts the root context sent again for orphaned waiters, by token.
    /// A list, as `jwks_fetches`: a few at a time, on the root's rare path, and a map of
    /// its own would be a hash table instance of its own in the module (2 KB).
    pub resends: Vec<(u32, Lookup)>,
    /// JWKS fetches the root context started on its timer: (call token, provider).
    pub jwks_fetches: Vec<(u32, usize)>,
    /// What an allowed request keeps for later, by context id (an allow may be applied
    /// to a waiting request from another context's callback).
    pub kept: Kept,
    /// When each undecided request paused (Unix µs), by context id; only with
    /// `telemetry.filter_state` or `telemetry.histograms` (flow/decision_log.rs). Keyed
    /// by Envoy's context ids, which no client chooses: foldhash with a fixed seed, not
    /// SipHash.
    pub started: HashMap<u32, u64, FixedState>,
    /// The clock as read for a callout's answer (µs), for the decisions that answer
    /// settles in the same callback: one host call for all of them.
    pub clock_us: Option<u64>,
    /// The decision's filter-state text, reused: no allocation per request.
    pub decision_text: Vec<u8>,
}

impl Worker {
    /// A new configuration's verifier (`None`: no `jwt` block), for `jwt`, which must stay
    /// where it is (inside the configuration's `Rc`) while requests run under it.
    pub fn set_verifier(&mut self, verifier: Option<(JwtVerifier, &JwtSettings)>) {
        let Some((verifier, jwt)) = verifier else { return };
        let at = std::ptr::from_ref(jwt) as usize;
        // An address freed and reused by a newer configuration is that configuration's.
        self.jwt.retain(|(of, _)| *of != at);
        self.jwt.push((at, verifier));
        if self.jwt.len() > 2 {
            self.jwt.remove(0);
        }
    }

    /// The verifier built for `jwt`, if that is the current configuration's.
    pub fn verifier(&mut self, jwt: &JwtSettings) -> Option<&mut JwtVerifier> {
        let at = std::ptr::from_ref(jwt) as usize;
        self.jwt.iter_mut().rev().find(|(of, _)| *of == at).map(|(_, verifier)| verifier)
    }

    pub fn has_verifier(&self) -> bool {
        !self.jwt.is_empty()
    }
}

/// What allowed requests keep for later, by context id. One map for all of it, not a
/// map per kind: each `HashMap` of another value type is a hash table instance of its
/// own in the module (about 1.5 KB of code each, which every sidecar's V8 compiles).
#[derive(Default)]
pub struct Kept {
    by_id: HashMap<u32, Held>,
}

/// What one request keeps.
#[derive(Default)]
struct Held {
    /// `Set-Cookie` values of the allowing auth response, for the client's response
    /// (`auth.add_auth_cookies_to_response`).
    cookies: Option<Vec<Vec<u8>>>,
    /// Claim headers of a valid JWT in `local_then_callout`, added if the callout allows.
    claims: Option<ClaimHeaders>,
    /// ext_authz `client_headers_on_success` of the allowing auth response.
    client_headers: Option<OwnedHeaders>,
    /// Providers are left to check the request after the current one (`policies`): an
    /// allow then is not the request's outcome, and is not counted as one.
    providers_left: bool,
    /// The actor id an allow with providers left set (or its token's claim did): the
    /// request's actor unless a later allow sets its own (`telemetry.actor_header`).
    actor: Option<Vec<u8>>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.cookies.is_none()
            && self.claims.is_none()
            && self.client_headers.is_none()
            && !self.providers_left
            && self.actor.is_none()
    }
}

impl Kept {
    /// The stream is over: drop what was kept for it.
    pub fn forget(&mut self, id: u32) {
        if !self.by_id.is_empty() {
            self.by_id.remove(&id);
        }
    }

    pub fn take_cookies(&mut self, id: u32) -> Option<Vec<Vec<u8>>> {
        self.take(id, |held| held.cookies.take())
    }

    /// Adds to the cookies kept for `id` (several providers: each allow's).
    pub fn add_cookies(&mut self, id: u32, cookies: &[Vec<u8>]) {
        self.held(id).cookies.get_or_insert_default().extend(cookies.iter().cloned());
    }

    pub fn take_claims(&mut self, id: u32) -> Option<ClaimHeaders> {
        self.take(id, |held| held.claims.take())
    }

    pub fn keep_claims(&mut self, id: u32, claims: ClaimHeaders) {
        self.held(id).claims = Some(claims);
    }

    pub fn take_client_headers(&mut self, id: u32) -> Option<OwnedHeaders> {
        self.take(id, |held| held.client_headers.take())
    }

    pub fn keep_client_headers(&mut self, id: u32, headers: OwnedHeaders) {
        self.held(id).client_headers = Some(headers);
    }

    pub fn take_actor(&mut self, id: u32) -> Option<Vec<u8>> {
        self.take(id, |held| held.actor.take())
    }

    pub fn keep_actor(&mut self, id: u32, actor: Vec<u8>) {
        self.held(id).actor = Some(actor);
    }

    pub fn providers_left(&self, id: u32) -> bool {
        !self.by_id.is_empty() && self.by_id.get(&id).is_some_and(|held| held.providers_left)
    }

    pub fn set_providers_left(&mut self, id: u32, left: bool) {
        match left {
            true => self.held(id).providers_left = true,
            false => {
                self.take(id, |held| std::mem::take(&mut held.providers_left).then_some(()));
            }
        }
    }

    /// Whether any request keeps cookies, claims or client headers (tests: what was
    /// kept is used once, or dropped with its stream).
    #[cfg(test)]
    pub fn keeps(&self, what: &str) -> bool {
        self.by_id.values().any(|held| match what {
            "cookies" => held.cookies.is_some(),
            "claims" => held.claims.is_some(),
            "client_headers" => held.client_headers.is_some(),
            _ => !held.is_empty(),
        })
    }

    /// Whether anything is kept for `id` (tests: nothing outlives its stream).
    #[cfg(test)]
    pub fn keeps_for(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    fn held(&mut self, id: u32) -> &mut Held {
        self.by_id.entry(id).or_default()
    }

    /// Takes something `id` keeps; a request left keeping nothing leaves the map. Most
    /// requests keep nothing: an empty map is not hashed into (every request ends here).
    fn take<T>(&mut self, id: u32, what: impl FnOnce(&mut Held) -> Option<T>) -> Option<T> {
        if self.by_id.is_empty() {
            return None;
        }
        let held = self.by_id.get_mut(&id)?;
        let taken = what(held);
        if held.is_empty() {
            self.by_id.remove(&id);
        }
        taken
    }
}
