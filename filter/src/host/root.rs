//! The root context: one per VM (worker, or main thread). It compiles the configuration
//! once, shares it with every http context, and on its tick sends orphaned callouts
//! again and refreshes remote JWKS.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use crate::cache::shared::Lookup;
use crate::config::Settings;
use crate::host::clock::now_ms;
use crate::host::crypto;
use crate::host::http::Authz;
use crate::host::jwks::{self, JwtState};
use crate::host::metrics::{self, JwtMetrics};
use crate::host::request_log;
use crate::host::steps::callout::{self, Resend};
use crate::host::steps::decide::{answer, failed};
use crate::host::steps::{body, jwks_wait};
use crate::jwt::jwks::Why;
use crate::jwt::verifier::JwtVerifier;
use crate::policy::decision::Failure;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs the panic at critical level. The
    // host's own level replaces Info in on_vm_start (host/request_log.rs).
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root {
            id,
            settings: None,
            resends: HashMap::new(),
            jwt: None,
            jwks_fetches: Vec::new(),
            streams: Cell::new(0),
        })
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
    /// Streams since the host's log level was last read.
    streams: Cell<u32>,
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
                jwks::sync(jwt, &mut state, i);
            }
            if let Some(token) = jwks::start_fetch(jwt, i, Why::Timer) {
                self.jwks_fetches.push((token, i));
            }
        }
    }

    /// The tick period when no orphan is waiting: short while a request waits for a
    /// JWKS fetch (host/steps/jwks_wait.rs), else the counters' flush, and the JWKS
    /// timer when a provider has remote keys.
    fn idle_tick(&self) -> Duration {
        if self.settings.as_deref().is_some_and(jwks_wait::any) {
            return jwks_wait::WAIT_TICK;
        }
        let remote = self
            .settings
            .as_ref()
            .and_then(|s| s.jwt.as_ref())
            .is_some_and(|j| j.providers.iter().any(|p| p.remote.is_some()));
        if remote {
            jwks::TICK.min(metrics::FLUSH_PERIOD)
        } else {
            metrics::FLUSH_PERIOD
        }
    }
}

/// The VM shuts down (the host deletes the root context once `on_done`, not exported,
/// has answered done): no count is lost.
impl Drop for Root {
    fn drop(&mut self) {
        metrics::flush();
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(i) = self.jwks_fetches.iter().position(|(t, _)| *t == token) {
            let (_, provider) = self.jwks_fetches.swap_remove(i);
            if let (Some(settings), Some(state)) = (&self.settings, &self.jwt) {
                if let (Some(jwt), Ok(mut state)) = (&settings.jwt, state.try_borrow_mut()) {
                    // OIDC discovery: the openid-configuration leads to the JWKS fetch.
                    if let Some(next) = jwks::finish_fetch(jwt, &mut state, provider, token, body_size) {
                        self.jwks_fetches.push((next, provider));
                    }
                }
            }
            return;
        }
        let (Some(lookup), Some(settings)) = (self.resends.remove(&token), self.settings.clone()) else {
            return;
        };
        let outcome = answer(&settings, Some(&lookup), body_size);
        callout::settle_waiters(&settings, &lookup, &outcome, self.id);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        request_log::follow_host_level();
        info!("nebula-authz {} starting", env!("CARGO_PKG_VERSION"));
        metrics::define();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        request_log::follow_host_level();
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        // %HOSTNAME% in auth.headers_to_add: the VM's HOSTNAME variable, read once here.
        let parsed = Settings::from_json(&bytes).and_then(|mut settings| {
            settings.resolve_hostname(std::env::var("HOSTNAME").ok().as_deref())?;
            Ok(settings)
        });
        match parsed {
            Ok(settings) => {
                // Warning, not info: Istio sidecars log at `warning` (pilot-agent's
                // --proxyLogLevel default), and this is the line that proves the plugin
                // attached and enforces. Once per VM and configuration, never per request.
                warn!(
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
                    let mut verifier = JwtVerifier::new(jwt);
                    if let Some(crypto) = crypto::probe() {
                        verifier = verifier.with_host_crypto(crypto);
                    }
                    let state = JwtState { verifier, metrics: JwtMetrics::define() };
                    self.jwt = Some(Rc::new(RefCell::new(state)));
                }
                self.settings = Some(Rc::new(settings));
                // The counters' flush; remote JWKS: fetched on the first token or tick,
                // refreshed on the timer.
                if let Err(status) = hostcalls::set_tick_period(self.idle_tick()) {
                    error!("cannot start the timer (counters, JWKS refresh): {status:?}");
                    return false;
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
        // Envoy's admin may change the wasm log level at any time: look again now and then.
        let streams = self.streams.get().wrapping_add(1);
        self.streams.set(streams % request_log::REFRESH_EVERY);
        if streams == request_log::REFRESH_EVERY {
            request_log::follow_host_level();
        }
        // Never None: the SDK panics on it. Without settings the context fails closed.
        Some(Box::new(Authz::new(context_id, self.settings.clone(), self.jwt.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    /// Hands the counts to Envoy; sends the orphaned callouts again, from the root
    /// context, which outlives streams; refreshes remote JWKS when due.
    fn on_tick(&mut self) {
        metrics::flush();
        self.refresh_jwks();
        if let (Some(settings), Some(state)) = (&self.settings, &self.jwt) {
            if jwks_wait::any(settings) {
                jwks_wait::wake_due(settings, state, self.id, now_ms());
            }
        }
        let _ = hostcalls::set_tick_period(self.idle_tick());
        let Some(settings) = self.settings.clone() else { return };
        if settings.auth.with_request_body.is_some() {
            body::fail_overdue(&settings, now_ms(), self.id);
        }
        let auth = &settings.auth;
        for Resend { lookup, headers } in callout::take_orphans() {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            match callout::dispatch(auth, headers) {
                Ok(token) => {
                    self.resends.insert(token, lookup);
                }
                Err(status) => {
                    warn!("callout to cluster {:?} refused: {status:?}", auth.cluster);
                    let outcome = failed(&settings, Some(&lookup), Failure::DispatchFailed);
                    callout::settle_waiters(&settings, &lookup, &outcome, self.id);
                }
            }
        }
    }
}
