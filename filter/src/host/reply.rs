//! Ending the request's pause: resume it, or answer the client locally (a denial, or
//! failing closed with `status_on_error`).

use log::error;
use proxy_wasm::hostcalls;

use crate::config::Settings;
use crate::host::metrics::count;
use crate::host::request_log;
use crate::metrics::Metric;
use crate::policy::decision::{Failure, FAILURE_BODY};

/// What was done to a request.
pub enum Applied {
    /// Headers injected: continue or resume the request.
    Allowed,
    /// A local reply was sent.
    Replied,
}

pub fn resume(id: u32) {
    if let Err(status) = hostcalls::resume_http_request() {
        error!("[{id}] cannot resume the request: {status:?}");
    }
}

pub fn fail_closed(id: u32, settings: &Settings, failure: Failure) -> Applied {
    request_log::failed_closed(id, settings.status_on_error, failure);
    count(Metric::Errors);
    reply(id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
    Applied::Replied
}

pub fn reply(id: u32, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
    if let Err(e) = hostcalls::send_http_response(status, headers, body) {
        error!("[{id}] cannot send the local reply: {e:?}");
    }
}
