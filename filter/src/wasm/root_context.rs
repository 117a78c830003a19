//! The root context: one per VM (worker, or main thread). It compiles the configuration
//! once and shares it with every http context, owns the worker's state
//! (flow/worker.rs) and lends it to them, and runs the worker's tick
//! (flow/root_tasks.rs).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::flow::host::Host;
use crate::flow::root_tasks;
use crate::flow::worker::Worker;
use crate::jwt::signature;
use crate::jwt::verifier::JwtVerifier;
use crate::plugin_config::Settings;
use crate::wasm::http_context::Authz;
use crate::wasm::proxy_wasm_host::{probe_crypto, ProxyWasm};

/// Streams between two reads of the host's log level (one host call each time): Envoy's
/// admin may change the wasm log level at any time (`POST /logging?wasm=debug`).
const LOG_LEVEL_EVERY: u32 = 256;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs the panic at critical level. The
    // host's own level replaces Info in on_vm_start.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, settings: None, worker: Rc::default(), streams: Cell::new(0) })
    });
}}

struct Root {
    id: u32,
    settings: Option<Rc<Settings>>,
    /// This VM's state, lent to its http contexts for each callback.
    worker: Rc<RefCell<Worker>>,
    /// Streams since the host's log level was last read.
    streams: Cell<u32>,
}

/// The VM shuts down (the host deletes the root context once `on_done`, not exported,
/// has answered done): no count is lost.
impl Drop for Root {
    fn drop(&mut self) {
        if let Ok(mut worker) = self.worker.try_borrow_mut() {
            worker.counters.flush(&ProxyWasm);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return };
        root_tasks::on_call_answer(&ProxyWasm, &mut worker, self.settings.as_deref(), self.id, token, body_size);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        ProxyWasm.follow_log_level();
        info!("nebula-authz {} starting", env!("CARGO_PKG_VERSION"));
        if let Ok(mut worker) = self.worker.try_borrow_mut() {
            worker.counters.define(&ProxyWasm);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        ProxyWasm.follow_log_level();
        let bytes = match ProxyWasm.plugin_configuration() {
            Ok(bytes) => bytes,
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
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return false };
        match parsed {
            Ok(settings) => {
                // Warning, not info: Istio sidecars log at `warning` (pilot-agent's
                // --proxyLogLevel default), and this is the line that proves the plugin
                // attached and enforces. Once per VM and configuration, never per request.
                warn!("configured: {}", settings.summary());
                let settings = Rc::new(settings);
                let verifier = settings.jwt.as_ref().map(|jwt| {
                    for warning in &jwt.warnings {
                        warn!("{warning}");
                    }
                    let mut verifier = JwtVerifier::new(jwt);
                    match probe_crypto() {
                        Some(crypto) => verifier = verifier.with_host_crypto(crypto),
                        // An error, not a refused configuration. Every ES256/ES384 token
                        // is rejected (fail closed per token) while RSA, EdDSA and HS256
                        // keep working. Refusing would turn an algorithm the issuer may
                        // never use (the default `algorithms` list both) into no plugin:
                        // at a start that fails every request, or, under Istio's
                        // `failStrategy: FAIL_OPEN`, skips the plugin and checks none.
                        None => {
                            if let Some(consequence) = signature::without_host_crypto(jwt) {
                                error!("{consequence}");
                            }
                        }
                    }
                    (verifier, jwt)
                });
                if verifier.is_some() {
                    worker.counters.define_jwt(&ProxyWasm);
                }
                worker.set_verifier(verifier);
                // The counters' flush; remote JWKS: fetched on the first token or tick,
                // refreshed on the timer.
                if let Err(status) = ProxyWasm.set_tick_period(root_tasks::idle_tick(&worker, Some(&settings))) {
                    error!("cannot start the timer (counters, JWKS refresh): {status:?}");
                    return false;
                }
                self.settings = Some(settings);
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
        self.streams.set(streams % LOG_LEVEL_EVERY);
        if streams == LOG_LEVEL_EVERY {
            ProxyWasm.follow_log_level();
        }
        // Never None: the SDK panics on it. Without settings the context fails closed.
        Some(Box::new(Authz::new(context_id, self.settings.clone(), self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return };
        root_tasks::on_tick(&ProxyWasm, &mut worker, self.settings.as_deref(), self.id);
    }
}
