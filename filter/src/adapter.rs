//! The proxy-wasm adapter: reads what the host has, asks the core, applies the answer.
//! Host calls go through `hostcalls` (not the SDK's trait helpers, which `unwrap()`), so
//! a refused call becomes a fail-closed reply instead of a trap that would take down
//! every request on this worker.
//!
//! One request: strip → public? → JWT (local verdict, or on) → cache lookup → (wait for
//! an identical callout, or send one) → decide → store → inject or reply.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::cache::{CacheSettings, Decision, Lookup};
use crate::cache_local::LocalCache;
use crate::coalesce::InFlight;
use crate::config::Settings;
use crate::decision::{Failure, Verdict, FAILURE_BODY};
use crate::forward;
use crate::header_map;
use crate::jwks_fetch::Why;
use crate::jwt::{self, ClaimHeaders, JwtVerifier, INVALID_TOKEN_BODY, INVALID_TOKEN_CHALLENGE};
use crate::jwt_adapter::{self, now_ms, Counter, JwtState, Metrics};
use crate::jwt_config::Mode;
use crate::metrics::Metric;
use crate::request::Route;

thread_local! {
    /// Callouts in flight on this worker (one VM per worker thread), for coalescing.
    static IN_FLIGHT: RefCell<InFlight> = RefCell::new(InFlight::default());
    /// Callouts whose sender went away while others waited for them: the root context
    /// sends them again on its next tick (an HTTP context cannot outlive its stream).
    static ORPHANS: RefCell<Vec<Resend>> = const { RefCell::new(Vec::new()) };
    /// `Set-Cookie` values of the allowing auth response, by context id, for the client's
    /// response (`auth.add_auth_cookies_to_response`); a thread-local map rather than a
    /// field because an allow may be applied to a waiting request's context.
    static AUTH_COOKIES: RefCell<HashMap<u32, Vec<Vec<u8>>>> = RefCell::new(HashMap::new());
    /// Claim headers of a valid JWT in `local_then_callout`, by context id, added if the
    /// callout allows (a waiting request's allow is applied from another context).
    static JWT_CLAIMS: RefCell<HashMap<u32, ClaimHeaders>> = RefCell::new(HashMap::new());
    /// Decoded decisions recently read from the shared cache on this worker (cache_local.rs).
    static LOCAL_CACHE: RefCell<LocalCache> = RefCell::new(LocalCache::default());
    /// Metric ids from `define_metric`, by [`Metric::index`].
    static METRICS: RefCell<[Option<u32>; Metric::ALL.len()]> = const { RefCell::new([None; Metric::ALL.len()]) };
}

/// A callout to send again for the requests that wait for it.
struct Resend {
    lookup: Lookup,
    headers: Vec<(String, String)>,
}

fn count(metric: Metric) {
    if let Some(id) = METRICS.with(|m| m.borrow()[metric.index()]) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs the panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, settings: None, resends: HashMap::new(), jwt: None, jwks_fetches: Vec::new() })
    });
}}

struct Root {
    id: u32,
    settings: Option<Rc<Settings>>,
    /// Callouts the root sent again for orphaned waiters, by token.
    resends: HashMap<u32, Lookup>,
    /// This VM's JWT verifier and metrics, shared with its http contexts.
    jwt: Option<Rc<RefCell<JwtState>>>,
    /// JWKS fetches this root context started on its timer: (call token, provider).
    jwks_fetches: Vec<(u32, usize)>,
}

impl Root {
    /// The JWKS timer: every VM looks at the shared state; one fetches when it is due.
    fn refresh_jwks(&mut self) {
        let (Some(settings), Some(state)) = (self.settings.clone(), self.jwt.clone()) else { return };
        let Some(jwt) = &settings.jwt else { return };
        for (i, provider) in jwt.providers.iter().enumerate() {
            if provider.remote.is_none() || self.jwks_fetches.iter().any(|(_, p)| *p == i) {
                continue;
            }
            if let Ok(mut state) = state.try_borrow_mut() {
                jwt_adapter::sync(jwt, &mut state, i);
            }
            if let Some(token) = jwt_adapter::start_fetch(jwt, i, Why::Timer) {
                self.jwks_fetches.push((token, i));
            }
        }
    }

    /// The tick period when no orphan is waiting: the JWKS timer, or none.
    fn idle_tick(&self) -> Duration {
        let remote = self
            .settings
            .as_ref()
            .and_then(|s| s.jwt.as_ref())
            .is_some_and(|j| j.providers.iter().any(|p| p.remote.is_some()));
        if remote {
            jwt_adapter::TICK
        } else {
            Duration::ZERO
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(i) = self.jwks_fetches.iter().position(|(t, _)| *t == token) {
            let (_, provider) = self.jwks_fetches.swap_remove(i);
            if let (Some(settings), Some(state)) = (&self.settings, &self.jwt) {
                if let (Some(jwt), Ok(mut state)) = (&settings.jwt, state.try_borrow_mut()) {
                    jwt_adapter::finish_fetch(jwt, &mut state, provider, body_size);
                }
            }
            return;
        }
        let (Some(lookup), Some(settings)) = (self.resends.remove(&token), self.settings.clone()) else {
            return;
        };
        let outcome = answer(&settings, Some(&lookup), body_size);
        settle_waiters(&settings, &lookup, &outcome, self.id);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        info!("nebula-authz {} starting", env!("CARGO_PKG_VERSION"));
        METRICS.with(|ids| {
            let mut ids = ids.borrow_mut();
            for metric in Metric::ALL {
                ids[metric.index()] = hostcalls::define_metric(MetricType::Counter, metric.name()).ok();
            }
        });
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match Settings::from_json(&bytes) {
            Ok(settings) => {
                info!(
                    "configured: auth cluster {:?}, path {:?}, timeout {:?}, cache {:?}",
                    settings.auth.cluster,
                    settings.auth.path,
                    settings.auth.timeout,
                    settings.cache.as_ref().map(|c| (c.entries, c.default_ttl, c.max_ttl))
                );
                if let Some(jwt) = &settings.jwt {
                    for warning in &jwt.warnings {
                        warn!("{warning}");
                    }
                    let state = JwtState { verifier: JwtVerifier::new(jwt), metrics: Metrics::define() };
                    self.jwt = Some(Rc::new(RefCell::new(state)));
                }
                self.settings = Some(Rc::new(settings));
                // Remote JWKS: fetched on the first token or tick, refreshed on the timer.
                let tick = self.idle_tick();
                if !tick.is_zero() {
                    if let Err(status) = hostcalls::set_tick_period(tick) {
                        error!("cannot start the JWKS refresh timer: {status:?}");
                        return false;
                    }
                }
                true
            }
            Err(e) => {
                // Envoy refuses the plugin; no request is ever let through unchecked.
                error!("{e}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on it. Without settings the context fails closed.
        Some(Box::new(Authz { id: context_id, settings: self.settings.clone(), jwt: self.jwt.clone(), pending: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    /// Sends the orphaned callouts again, from the root context, which outlives streams;
    /// refreshes remote JWKS when due.
    fn on_tick(&mut self) {
        let _ = hostcalls::set_tick_period(self.idle_tick());
        self.refresh_jwks();
        let Some(settings) = self.settings.clone() else { return };
        let auth = &settings.auth;
        for Resend { lookup, headers } in ORPHANS.with(|o| std::mem::take(&mut *o.borrow_mut())) {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            match hostcalls::dispatch_http_call(&auth.cluster, headers, None, vec![], auth.timeout) {
                Ok(token) => {
                    count(Metric::Callouts);
                    self.resends.insert(token, lookup);
                }
                Err(status) => {
                    warn!("callout to cluster {:?} refused: {status:?}", auth.cluster);
                    let outcome = failed(&settings, Some(&lookup), Failure::DispatchFailed);
                    settle_waiters(&settings, &lookup, &outcome, self.id);
                }
            }
        }
    }
}

struct Authz {
    id: u32,
    settings: Option<Rc<Settings>>,
    jwt: Option<Rc<RefCell<JwtState>>>,
    /// What the request (and its body) waits for.
    pending: Option<Pending>,
}

/// What is left to do after the JWT step.
enum JwtStep {
    /// A valid token in `local` mode: on to the upstream, no callout.
    Allow,
    /// The callout decides (not a JWT of ours, or `local_then_callout`).
    Callout,
    /// A local reply was sent, or a JWKS fetch is in flight.
    Wait,
}

enum Pending {
    /// Our own callout (`token`); when caching, its lookup and headers (to resend it
    /// for the requests waiting on it if this stream goes away first).
    Callout { token: u32, cached: Option<Resend> },
    /// Another request's identical callout on this worker (coalescing).
    Coalesced { lookup: Lookup },
    /// A JWKS fetch for a token whose key is not known yet.
    Jwks { token: u32, provider: usize },
}

/// What happened to a request that needed the auth service.
enum Outcome {
    Decided(Decision),
    /// The auth service failed, and a recently expired allow is served (`stale_if_error`).
    Stale(Decision),
    Failed(Failure),
}

impl Authz {
    fn on_headers(&mut self, settings: &Settings) -> Action {
        // One host call for the whole map; then only the headers actually present are removed.
        let Some(buffer) = map_buffer(MapType::HttpRequestHeaders) else {
            return self.fail(settings, Failure::HostError);
        };
        let Some(headers) = header_map::parse(&buffer) else {
            return self.fail(settings, Failure::HostError);
        };
        let plan = settings.plan(&headers, peer_address);
        for name in &plan.strip {
            if hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err() {
                return self.fail(settings, Failure::HostError);
            }
        }
        match plan.route {
            Route::Public { template } => {
                debug!("[{}] public ({template})", self.id);
                count(Metric::Public);
                Action::Continue
            }
            Route::Callout { headers: callout } => match self.check_jwt(settings, &headers, true) {
                JwtStep::Allow => Action::Continue,
                JwtStep::Callout => self.call_out(settings, callout),
                JwtStep::Wait => Action::Pause,
            },
            Route::Reject(failure) => self.fail(settings, failure),
        }
    }

    /// The callout: from the cache, by waiting for an identical one, or sent.
    fn call_out(&mut self, settings: &Settings, headers: Vec<forward::CalloutHeader>) -> Action {
        let auth = &settings.auth;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_ref())).collect();
        let lookup = settings.cache.as_ref().map(|cache| cache.probe(&auth.cluster, &headers));
        if let (Some(cache), Some(lookup)) = (&settings.cache, &lookup) {
            if let Some(decision) = cached(cache, lookup) {
                count(Metric::CacheHits);
                return match apply_decision(self.id, settings, &decision) {
                    Applied::Allowed => Action::Continue,
                    Applied::Replied => Action::Pause,
                };
            }
            count(Metric::CacheMisses);
            if IN_FLIGHT.with(|t| t.borrow_mut().join(lookup.key, self.id)) {
                count(Metric::Coalesced);
                self.pending = Some(Pending::Coalesced { lookup: lookup.clone() });
                return Action::Pause;
            }
        }
        let cached = lookup.map(|lookup| Resend {
            // A miss: the token's `exp` bounds the lifetime of what will be stored.
            lookup: lookup.with_bearer_expiry(&headers),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        });
        match hostcalls::dispatch_http_call(&auth.cluster, headers, None, vec![], auth.timeout) {
            Ok(token) => {
                count(Metric::Callouts);
                self.pending = Some(Pending::Callout { token, cached });
                Action::Pause
            }
            Err(status) => {
                warn!("[{}] callout to cluster {:?} refused: {status:?}", self.id, auth.cluster);
                let lookup = cached.map(|c| c.lookup);
                let outcome = failed(settings, lookup.as_ref(), Failure::DispatchFailed);
                self.settle(settings, lookup.as_ref(), &outcome);
                Action::Pause
            }
        }
    }

    /// Local JWT verification (jwt.rs), when configured. A JWT of a known issuer is
    /// decided here: invalid → 401; valid → its claim headers are added, then allowed
    /// (`local`) or kept for the callout's allow (`local_then_callout`).
    fn check_jwt(&mut self, settings: &Settings, headers: &[(&str, &[u8])], may_fetch: bool) -> JwtStep {
        let (Some(jwt), Some(state)) = (&settings.jwt, self.jwt.clone()) else { return JwtStep::Callout };
        let Ok(mut state) = state.try_borrow_mut() else {
            self.fail(settings, Failure::HostError);
            return JwtStep::Wait;
        };
        let mut outcome = state.verifier.check(jwt, headers, now_ms());
        if let jwt::Outcome::NoKey { provider } = outcome {
            // Another worker may have fetched the keys already; else fetch them (once
            // per Envoy, rate-limited) while this request waits.
            if jwt_adapter::sync(jwt, &mut state, provider) {
                outcome = state.verifier.check(jwt, headers, now_ms());
            }
        }
        if let jwt::Outcome::NoKey { provider } = outcome {
            if may_fetch {
                if let Some(token) = jwt_adapter::start_fetch(jwt, provider, Why::MissingKey) {
                    self.pending = Some(Pending::Jwks { token, provider });
                    return JwtStep::Wait;
                }
            }
            match state.verifier.without_refresh(jwt, provider) {
                Some(verdict) => outcome = verdict,
                None => {
                    // No keys at all yet: the token cannot be judged. The callout still
                    // can in local_then_callout; in local mode, fail closed.
                    state.metrics.inc(Counter::KeysUnavailable);
                    let mode = jwt.providers.get(provider).map_or(Mode::Local, |p| p.mode);
                    warn!("[{}] no JWKS keys yet for provider {provider} ({mode:?})", self.id);
                    if mode == Mode::LocalThenCallout {
                        return JwtStep::Callout;
                    }
                    count(Metric::Errors);
                    reply(self.id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                    return JwtStep::Wait;
                }
            }
        }
        match outcome {
            jwt::Outcome::Callout(_) => {
                state.metrics.inc(Counter::Passthrough);
                JwtStep::Callout
            }
            jwt::Outcome::Valid { mode, headers, cached } => {
                state.metrics.inc(if cached { Counter::CacheHit } else { Counter::Verified });
                debug!("[{}] valid JWT ({mode:?})", self.id);
                if mode == Mode::LocalThenCallout {
                    JWT_CLAIMS.with(|c| c.borrow_mut().insert(self.id, headers));
                    return JwtStep::Callout;
                }
                // Added, not replaced: every claim header was stripped from the request.
                for (name, value) in headers.iter() {
                    if hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
                        self.fail(settings, Failure::HostError);
                        return JwtStep::Wait;
                    }
                }
                JwtStep::Allow
            }
            jwt::Outcome::Invalid(reason) => {
                state.metrics.inc(Counter::Rejected(reason));
                debug!("[{}] invalid JWT: {}", self.id, reason.as_str());
                let headers = vec![("www-authenticate", INVALID_TOKEN_CHALLENGE), ("content-type", "text/plain")];
                reply(self.id, 401, headers, Some(INVALID_TOKEN_BODY));
                JwtStep::Wait
            }
            jwt::Outcome::NoKey { .. } => {
                self.fail(settings, Failure::HostError);
                JwtStep::Wait
            }
        }
    }

    /// The request waited for a JWKS fetch: check its token again (no second fetch),
    /// then go on as the first pass would have.
    fn after_jwks(&mut self, settings: &Settings) {
        let Some(buffer) = map_buffer(MapType::HttpRequestHeaders) else {
            self.fail(settings, Failure::HostError);
            return;
        };
        let Some(headers) = header_map::parse(&buffer) else {
            self.fail(settings, Failure::HostError);
            return;
        };
        let plan = settings.plan(&headers, peer_address);
        let Route::Callout { headers: callout } = plan.route else {
            self.fail(settings, Failure::HostError);
            return;
        };
        match self.check_jwt(settings, &headers, false) {
            JwtStep::Allow => resume(self.id),
            JwtStep::Callout => {
                if let Action::Continue = self.call_out(settings, callout) {
                    resume(self.id);
                }
            }
            JwtStep::Wait => {}
        }
    }

    /// Applies `outcome` to this request, then to every request that waited for it.
    fn settle(&self, settings: &Settings, lookup: Option<&Lookup>, outcome: &Outcome) {
        if let Applied::Allowed = apply(self.id, settings, outcome) {
            resume(self.id);
        }
        if let Some(lookup) = lookup {
            settle_waiters(settings, lookup, outcome, self.id);
        }
    }

    /// Fail closed: `status_on_error` with a short body; the request never goes upstream.
    fn fail(&self, settings: &Settings, failure: Failure) -> Action {
        fail_closed(self.id, settings, failure);
        Action::Pause
    }

    /// The stream is over (completed or reset): stop waiting, and do not strand waiters.
    fn release(&mut self) {
        AUTH_COOKIES.with(|c| c.borrow_mut().remove(&self.id));
        JWT_CLAIMS.with(|c| c.borrow_mut().remove(&self.id));
        match self.pending.take() {
            Some(Pending::Coalesced { lookup }) => IN_FLIGHT.with(|t| t.borrow_mut().leave(&lookup.key, self.id)),
            // Envoy cancels our callout with our stream. If others wait for it, the root
            // context sends it again; otherwise the next request leads.
            Some(Pending::Callout { cached: Some(resend), .. }) => {
                if IN_FLIGHT.with(|t| t.borrow().has_waiters(&resend.lookup.key)) {
                    debug!("[{}] reset while others wait for its callout: resending it", self.id);
                    ORPHANS.with(|o| o.borrow_mut().push(resend));
                    if let Err(status) = hostcalls::set_tick_period(Duration::from_millis(1)) {
                        error!("[{}] cannot schedule the resend: {status:?}", self.id);
                    }
                } else {
                    IN_FLIGHT.with(|t| t.borrow_mut().finish(&resend.lookup.key));
                }
            }
            _ => {}
        }
    }

    fn waiting(&self) -> bool {
        match &self.pending {
            None => false,
            Some(Pending::Callout { .. } | Pending::Jwks { .. }) => true,
            Some(Pending::Coalesced { lookup }) => IN_FLIGHT.with(|t| t.borrow().is_waiting(&lookup.key, self.id)),
        }
    }
}

/// Reads the callout's answer (in the context that received it) and caches a decision.
fn answer(settings: &Settings, lookup: Option<&Lookup>, body_size: usize) -> Outcome {
    // No headers at all is how Envoy reports a timeout or reset.
    let buffer = map_buffer(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let Some(headers) = header_map::parse(&buffer) else {
        return failed(settings, lookup, Failure::BadStatus);
    };
    let verdict = settings.decide(&headers, body_size);
    let body = match (&verdict, body_size) {
        (Verdict::Deny { .. }, 1..) => {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        }
        _ => Vec::new(),
    };
    match (Decision::from_verdict(&verdict, &body), verdict) {
        (Some(decision), _) => {
            if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
                store(cache, lookup, &decision, &headers);
            }
            Outcome::Decided(decision)
        }
        (None, Verdict::Fail(failure)) => failed(settings, lookup, failure),
        (None, _) => Outcome::Failed(Failure::HostError),
    }
}

/// The auth service failed: serve a recently expired allow if `stale_if_error` permits.
fn failed(settings: &Settings, lookup: Option<&Lookup>, failure: Failure) -> Outcome {
    if let (Some(cache), Some(lookup)) = (&settings.cache, lookup) {
        if let Some(decision) = stale(cache, lookup) {
            warn!("{failure}; serving a stale allow (stale_if_error)");
            return Outcome::Stale(decision);
        }
    }
    Outcome::Failed(failure)
}

/// Applies `outcome` to every request that waited for `lookup`'s callout, then makes
/// `current` the effective context again.
fn settle_waiters(settings: &Settings, lookup: &Lookup, outcome: &Outcome, current: u32) {
    for waiter in IN_FLIGHT.with(|t| t.borrow_mut().finish(&lookup.key)) {
        // Later host calls act on the waiter's stream; Envoy runs them after this callback.
        if hostcalls::set_effective_context(waiter).is_err() {
            continue;
        }
        if let Applied::Allowed = apply(waiter, settings, outcome) {
            resume(waiter);
        }
    }
    let _ = hostcalls::set_effective_context(current);
}

enum Applied {
    /// Headers injected: continue or resume the request.
    Allowed,
    /// A local reply was sent.
    Replied,
}

/// Applies `outcome` to the effective context's request (`id` is for the logs).
fn apply(id: u32, settings: &Settings, outcome: &Outcome) -> Applied {
    let decision = match outcome {
        Outcome::Decided(decision) => decision,
        Outcome::Stale(decision) => {
            count(Metric::CacheStaleServed);
            decision
        }
        Outcome::Failed(failure) => return fail_closed(id, settings, *failure),
    };
    apply_decision(id, settings, decision)
}

/// Injects an allow's headers, or replies with a denial.
fn apply_decision(id: u32, settings: &Settings, decision: &Decision) -> Applied {
    match decision {
        Decision::Allow { inject, cookies } => {
            // local_then_callout: the token's claim headers, unless the auth service sets
            // the same header (it has the last word).
            let claims = JWT_CLAIMS.with(|c| c.borrow_mut().remove(&id)).unwrap_or_else(|| Rc::from(Vec::new()));
            for (name, value) in claims.iter().filter(|(c, _)| !inject.iter().any(|(n, _)| n.eq_ignore_ascii_case(c))) {
                if hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
                    return fail_closed(id, settings, Failure::HostError);
                }
            }
            for (name, value) in inject {
                // Added, not replaced: `on_headers` stripped every name that can be injected
                // (`upstream_headers` are always in the strip set, and request headers
                // matching `upstream_headers_regex` are stripped too), so none is there to
                // replace, and an add spares the host its search for an existing value.
                // Waiters and cache hits went through `on_headers` too.
                if hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value).is_err() {
                    return fail_closed(id, settings, Failure::HostError);
                }
            }
            if !cookies.is_empty() {
                AUTH_COOKIES.with(|c| c.borrow_mut().insert(id, cookies.clone()));
            }
            debug!("[{id}] allowed");
            count(Metric::Allows);
            Applied::Allowed
        }
        Decision::Deny { status, headers, body } => {
            debug!("[{id}] denied with {status}");
            count(Metric::Denies);
            let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            reply(id, *status, headers, (!body.is_empty()).then_some(body.as_slice()));
            Applied::Replied
        }
    }
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

fn stale(cache: &CacheSettings, lookup: &Lookup) -> Option<Decision> {
    let stored = hostcalls::get_shared_data(&lookup.slot_key()).ok()?.0?;
    cache.stale(&stored, lookup, now_ms())
}

/// Writes the slot without a CAS check: whichever worker writes last, the slot holds a
/// fresh decision for the key it names; a lost race only costs a later miss.
fn store(cache: &CacheSettings, lookup: &Lookup, decision: &Decision, response: &[(&str, &[u8])]) {
    if let Some(bytes) = cache.entry(lookup, decision, response, now_ms()) {
        let slot = lookup.slot_key();
        if let Err(status) = hostcalls::set_shared_data(&slot, Some(&bytes), None) {
            warn!("cannot store a decision in {slot}: {status:?}");
        }
    }
}

fn resume(id: u32) {
    if let Err(status) = hostcalls::resume_http_request() {
        error!("[{id}] cannot resume the request: {status:?}");
    }
}

fn fail_closed(id: u32, settings: &Settings, failure: Failure) -> Applied {
    warn!("[{id}] failing closed with {}: {failure}", settings.status_on_error);
    count(Metric::Errors);
    reply(id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
    Applied::Replied
}

fn reply(id: u32, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
    if let Err(e) = hostcalls::send_http_response(status, headers, body) {
        error!("[{id}] cannot send the local reply: {e:?}");
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let cached = match self.pending.take() {
            Some(Pending::Callout { token: t, cached }) if t == token => cached,
            Some(Pending::Jwks { token: t, provider }) if t == token => {
                if let Some(settings) = self.settings.clone() {
                    if let (Some(jwt), Some(state)) = (&settings.jwt, &self.jwt) {
                        if let Ok(mut state) = state.try_borrow_mut() {
                            jwt_adapter::finish_fetch(jwt, &mut state, provider, body_size);
                        }
                    }
                    self.after_jwks(&settings);
                }
                return;
            }
            other => {
                self.pending = other;
                return;
            }
        };
        if let Some(settings) = self.settings.clone() {
            let lookup = cached.map(|c| c.lookup);
            let outcome = answer(&settings, lookup.as_ref(), body_size);
            self.settle(&settings, lookup.as_ref(), &outcome);
        }
    }

    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.settings.clone() {
            Some(settings) => self.on_headers(&settings),
            None => {
                error!("[{}] nebula-authz has no configuration; failing closed", self.id);
                count(Metric::Errors);
                reply(self.id, 500, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                Action::Pause
            }
        }
    }

    // Defence in depth: Envoy 1.40 already holds the body once the headers pause, but a
    // body callback answering Continue must never be what lets a request through early.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_pending()
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.hold_while_pending()
    }

    fn on_log(&mut self) {
        self.release();
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let cookies = AUTH_COOKIES.with(|c| c.borrow_mut().remove(&self.id));
        if let (Some(cookies), Some(settings)) = (cookies, self.settings.clone()) {
            if let Err(status) = add_auth_cookies(&settings, &cookies) {
                // The request was allowed; a lost cookie is not worth failing the response.
                warn!("[{}] cannot add the auth cookies to the response: {status:?}", self.id);
            }
        }
        Action::Continue
    }
}

/// The client's address (`ip:port`) for X-Forwarded-For; `None` if the host has none.
fn peer_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// `addAuthCookiesToResponse`: the auth service's cookies replace the upstream's
/// cookies of the same names on the client's response.
fn add_auth_cookies(settings: &Settings, cookies: &[Vec<u8>]) -> Result<(), proxy_wasm::types::Status> {
    // In place, like the request headers: a refused or malformed map is an error here
    // (logged by the caller), never a panic.
    let buffer = map_buffer(MapType::HttpResponseHeaders).ok_or(proxy_wasm::types::Status::InternalFailure)?;
    let response = header_map::parse(&buffer).ok_or(proxy_wasm::types::Status::ParseFailure)?;
    let upstream: Vec<&[u8]> =
        response.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| *v).collect();
    let merged = forward::merge_set_cookies(&upstream, cookies, &settings.auth.add_auth_cookies_to_response);
    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", None)?;
    for value in merged {
        hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", value)?;
    }
    Ok(())
}

impl Authz {
    fn hold_while_pending(&self) -> Action {
        if self.waiting() {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

// The SDK's `get_map_bytes` copies every header into a `String` and a `Vec` (and panics on
// an unexpected status); this takes the host's buffer as it is, for `header_map::parse`.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// The serialized header map, owned; `None` if the host refused (status not Ok).
fn map_buffer(map: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and size it allocated through the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes) or leaves it null.
    unsafe {
        if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}
