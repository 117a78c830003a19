//! The http context: one per request. Each callback lends the worker's state and the
//! request's to flow/request.rs and answers the host what it says; nothing is decided here.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::flow::request::Request;
use crate::flow::worker::Worker;
use crate::flow::Flow;
use crate::plugin_config::Settings;
use crate::wasm::proxy_wasm_host::ProxyWasm;

pub struct Authz {
    settings: Option<Rc<Settings>>,
    worker: Rc<RefCell<Worker>>,
    request: Request,
}

impl Authz {
    pub fn new(id: u32, settings: Option<Rc<Settings>>, worker: Rc<RefCell<Worker>>) -> Authz {
        Authz { settings, worker, request: Request::new(id) }
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        // Callbacks never nest (Envoy runs a local reply or a resume after the callback
        // that asked for it), so the worker is always free here; if not, do nothing.
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return };
        self.request.on_call_answer(&ProxyWasm, &mut worker, self.settings.as_deref(), token, body_size);
    }
}

/// The stream is over, completed or reset: Envoy deletes its context (`proxy_on_delete`,
/// which the SDK answers by dropping it). Released here rather than in `on_done` or
/// `on_log`, so neither is exported: two entries into the VM per request fewer.
impl Drop for Authz {
    fn drop(&mut self) {
        if let Ok(mut worker) = self.worker.try_borrow_mut() {
            self.request.on_stream_end(&ProxyWasm, &mut worker);
        }
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Action::Pause };
        action(self.request.on_request_headers(&ProxyWasm, &mut worker, self.settings.as_deref(), end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Action::Pause };
        action(self.request.on_request_body(
            &ProxyWasm,
            &mut worker,
            self.settings.as_deref(),
            body_size,
            end_of_stream,
        ))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Action::Pause };
        action(self.request.on_request_trailers(&ProxyWasm, &mut worker, self.settings.as_deref()))
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Action::Continue };
        action(self.request.on_response_headers(&ProxyWasm, &mut worker, self.settings.as_deref()))
    }
}
