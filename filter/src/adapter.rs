//! The proxy-wasm adapter: reads what the host has, asks the core, applies the answer.
//! Host calls go through `hostcalls` (not the SDK's trait helpers, which `unwrap()`), so
//! a refused call becomes a fail-closed reply instead of a trap that would take down
//! every request on this worker.

use std::cell::RefCell;
use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::config::Settings;
use crate::decision::{Failure, Verdict, FAILURE_BODY};
use crate::forward;
use crate::header_map;
use crate::jwks_fetch::Why;
use crate::jwt::{JwtVerifier, Outcome, INVALID_TOKEN_BODY, INVALID_TOKEN_CHALLENGE};
use crate::jwt_adapter::{self, Counter, JwtState, Metrics};
use crate::jwt_config::Mode;
use crate::request::Route;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs the panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { settings: None, jwt: None, jwks_fetches: Vec::new() })
    });
}}

struct Root {
    settings: Option<Rc<Settings>>,
    /// This VM's JWT verifier and metrics, shared with its http contexts.
    jwt: Option<Rc<RefCell<JwtState>>>,
    /// JWKS fetches this root context started on its timer: (call token, provider).
    jwks_fetches: Vec<(u32, usize)>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(i) = self.jwks_fetches.iter().position(|(t, _)| *t == token) else { return };
        let (_, provider) = self.jwks_fetches.swap_remove(i);
        if let (Some(settings), Some(state)) = (&self.settings, &self.jwt) {
            if let (Some(jwt), Ok(mut state)) = (&settings.jwt, state.try_borrow_mut()) {
                jwt_adapter::finish_fetch(jwt, &mut state, provider, body_size);
            }
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        info!("nebula-authz {} starting", env!("CARGO_PKG_VERSION"));
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
                    "configured: auth cluster {:?}, path {:?}, timeout {:?}",
                    settings.auth.cluster, settings.auth.path, settings.auth.timeout
                );
                if let Some(jwt) = &settings.jwt {
                    for warning in &jwt.warnings {
                        warn!("{warning}");
                    }
                    let state = JwtState { verifier: JwtVerifier::new(jwt), metrics: Metrics::define() };
                    self.jwt = Some(Rc::new(RefCell::new(state)));
                    // Remote JWKS: fetched on the first token or tick, refreshed on the timer.
                    if jwt.providers.iter().any(|p| p.remote.is_some()) {
                        if let Err(status) = hostcalls::set_tick_period(jwt_adapter::TICK) {
                            error!("cannot start the JWKS refresh timer: {status:?}");
                            return false;
                        }
                    }
                }
                self.settings = Some(Rc::new(settings));
                true
            }
            Err(e) => {
                // Envoy refuses the plugin; no request is ever let through unchecked.
                error!("{e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on it. Without settings the context fails closed.
        Some(Box::new(Authz {
            id: context_id,
            settings: self.settings.clone(),
            jwt: self.jwt.clone(),
            pending: None,
            auth_cookies: Vec::new(),
            claims: Rc::from(Vec::new()),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Authz {
    id: u32,
    settings: Option<Rc<Settings>>,
    jwt: Option<Rc<RefCell<JwtState>>>,
    /// The call in flight; the request (and its body) waits for it.
    pending: Option<Pending>,
    /// `Set-Cookie` values of the allowing auth response for the client's response
    /// (`auth.add_auth_cookies_to_response`); empty unless configured.
    auth_cookies: Vec<Vec<u8>>,
    /// Claim headers of a valid JWT in `local_then_callout`, set if the callout allows.
    claims: Rc<[(String, String)]>,
}

enum Pending {
    /// The auth service callout.
    Auth(u32),
    /// A JWKS fetch for a token whose key is not known yet.
    Jwks { token: u32, provider: usize },
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

    fn call_out(&mut self, settings: &Settings, headers: Vec<forward::CalloutHeader>) -> Action {
        let auth = &settings.auth;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_ref())).collect();
        match hostcalls::dispatch_http_call(&auth.cluster, headers, None, vec![], auth.timeout) {
            Ok(token) => {
                self.pending = Some(Pending::Auth(token));
                Action::Pause
            }
            Err(status) => {
                warn!("[{}] callout to cluster {:?} refused: {status:?}", self.id, auth.cluster);
                self.fail(settings, Failure::DispatchFailed)
            }
        }
    }

    /// Local JWT verification (jwt.rs), when configured. A JWT of a known issuer is
    /// decided here: invalid → 401; valid → its claim headers are set, then allowed
    /// (`local`) or sent on to the callout (`local_then_callout`).
    fn check_jwt(&mut self, settings: &Settings, headers: &[(&str, &[u8])], may_fetch: bool) -> JwtStep {
        let (Some(jwt), Some(state)) = (&settings.jwt, self.jwt.clone()) else { return JwtStep::Callout };
        let Ok(mut state) = state.try_borrow_mut() else {
            self.fail(settings, Failure::HostError);
            return JwtStep::Wait;
        };
        let mut outcome = state.verifier.check(jwt, headers, jwt_adapter::now_ms());
        if let Outcome::NoKey { provider } = outcome {
            // Another worker may have fetched the keys already; else fetch them (once
            // per Envoy, rate-limited) while this request waits.
            if jwt_adapter::sync(jwt, &mut state, provider) {
                outcome = state.verifier.check(jwt, headers, jwt_adapter::now_ms());
            }
        }
        if let Outcome::NoKey { provider } = outcome {
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
                    self.reply(settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                    return JwtStep::Wait;
                }
            }
        }
        match outcome {
            Outcome::Callout(_) => {
                state.metrics.inc(Counter::Passthrough);
                JwtStep::Callout
            }
            Outcome::Valid { mode, headers, cached } => {
                state.metrics.inc(if cached { Counter::CacheHit } else { Counter::Verified });
                debug!("[{}] valid JWT ({mode:?})", self.id);
                if mode == Mode::LocalThenCallout {
                    self.claims = headers;
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
            Outcome::Invalid(reason) => {
                state.metrics.inc(Counter::Rejected(reason));
                debug!("[{}] invalid JWT: {}", self.id, reason.as_str());
                let headers = vec![("www-authenticate", INVALID_TOKEN_CHALLENGE), ("content-type", "text/plain")];
                self.reply(401, headers, Some(INVALID_TOKEN_BODY));
                JwtStep::Wait
            }
            Outcome::NoKey { .. } => {
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
            JwtStep::Allow => self.resume(),
            JwtStep::Callout => {
                self.call_out(settings, callout);
            }
            JwtStep::Wait => {}
        }
    }

    fn resume(&self) {
        if let Err(status) = hostcalls::resume_http_request() {
            error!("[{}] cannot resume the request: {status:?}", self.id);
        }
    }

    fn on_auth_response(&mut self, settings: &Settings, body_size: usize) {
        // No headers at all is how Envoy reports a timeout or reset.
        let buffer = map_buffer(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let Some(headers) = header_map::parse(&buffer) else {
            self.fail(settings, Failure::BadStatus);
            return;
        };
        match settings.decide(&headers, body_size) {
            Verdict::Allow { inject, cookies } => {
                self.auth_cookies = cookies.into_iter().map(<[u8]>::to_vec).collect();
                // local_then_callout: the token's claim headers, unless the auth service sets
                // the same header (it has the last word).
                let claims = std::mem::take(&mut self.claims);
                for (name, value) in
                    claims.iter().filter(|(c, _)| !inject.iter().any(|(n, _)| n.eq_ignore_ascii_case(c)))
                {
                    if hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
                        self.fail(settings, Failure::HostError);
                        return;
                    }
                }
                for (name, value) in inject {
                    // Added, not replaced: `on_headers` stripped every name that can be injected
                    // (`upstream_headers` are always in the strip set, and request headers
                    // matching `upstream_headers_regex` are stripped too), so none is there to
                    // replace, and an add spares the host its search for an existing value.
                    if hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value).is_err() {
                        self.fail(settings, Failure::HostError);
                        return;
                    }
                }
                debug!("[{}] allowed", self.id);
                self.resume();
            }
            Verdict::Deny { status, headers } => {
                let body = match body_size {
                    0 => None,
                    size => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten(),
                };
                debug!("[{}] denied with {status}", self.id);
                self.reply(status, headers, body.as_deref());
            }
            Verdict::Fail(failure) => {
                self.fail(settings, failure);
            }
        }
    }

    /// Fail closed: `status_on_error` with a short body; the request never goes upstream.
    fn fail(&self, settings: &Settings, failure: Failure) -> Action {
        warn!("[{}] failing closed with {}: {failure}", self.id, settings.status_on_error);
        self.reply(settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
        Action::Pause
    }

    fn reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
        if let Err(e) = hostcalls::send_http_response(status, headers, body) {
            error!("[{}] cannot send the local reply: {e:?}", self.id);
        }
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(settings) = self.settings.clone() else { return };
        match self.pending {
            Some(Pending::Auth(t)) if t == token => {
                self.pending = None;
                self.on_auth_response(&settings, body_size);
            }
            Some(Pending::Jwks { token: t, provider }) if t == token => {
                self.pending = None;
                if let (Some(jwt), Some(state)) = (&settings.jwt, &self.jwt) {
                    if let Ok(mut state) = state.try_borrow_mut() {
                        jwt_adapter::finish_fetch(jwt, &mut state, provider, body_size);
                    }
                }
                self.after_jwks(&settings);
            }
            _ => {}
        }
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.settings.clone() {
            Some(settings) => self.on_headers(&settings),
            None => {
                error!("[{}] nebula-authz has no configuration; failing closed", self.id);
                self.reply(500, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
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

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let (false, Some(settings)) = (self.auth_cookies.is_empty(), self.settings.clone()) {
            if let Err(status) = self.add_auth_cookies(&settings) {
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

impl Authz {
    fn hold_while_pending(&self) -> Action {
        if self.pending.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// `addAuthCookiesToResponse`: the auth service's cookies replace the upstream's
    /// cookies of the same names on the client's response.
    fn add_auth_cookies(&self, settings: &Settings) -> Result<(), proxy_wasm::types::Status> {
        let response = hostcalls::get_map_bytes(MapType::HttpResponseHeaders)?;
        let upstream: Vec<&[u8]> =
            response.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.as_slice()).collect();
        let merged =
            forward::merge_set_cookies(&upstream, &self.auth_cookies, &settings.auth.add_auth_cookies_to_response);
        hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", None)?;
        for value in merged {
            hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", value)?;
        }
        Ok(())
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
