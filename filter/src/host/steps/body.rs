//! Step 5 with `auth.with_request_body` or `auth.forward_body`: the callout waits for the
//! client's body (up to its limit, policy/request_body.rs), which Envoy buffers for us while
//! on_request_body answers Pause (StopIterationAndBuffer), as native ext_authz does.
//!
//! That needs Envoy's `allow_on_headers_stop_iteration: true` on the wasm filter: without
//! it Envoy turns the headers' Pause into StopAllIterationAndWatermark and no body
//! callback ever comes. Such a stream would hang; [`overdue`] lets the root context's
//! tick fail it closed instead, with a log line naming the setting.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use log::error;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;

use crate::config::Settings;
use crate::host::metrics::count;
use crate::host::reply::reply;
use crate::metrics::Metric;
use crate::policy::request_body::RequestBodySettings;

thread_local! {
    /// Streams waiting for their first body callback: (context id, since, Unix ms).
    static AWAITING: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
    /// A body callback came on this worker: Envoy has the setting, so the guard is off
    /// for good and a client that is merely slow to send its body waits, as under
    /// ext_authz. (Two plugin configs sharing one VM with different settings would keep
    /// the guard off for both: the one without the setting then waits for Envoy's own
    /// stream timeouts, still closed.)
    static DELIVERED: Cell<bool> = const { Cell::new(false) };
}

/// A deployment error, not the auth service's: 500 whatever `status_on_error` says.
const GUARD_STATUS: u32 = 500;

/// A request whose body goes to the auth service.
pub struct BodyWait {
    pub since_ms: u64,
    /// Bytes Envoy holds for us so far, and whether the client has sent them all.
    pub received: usize,
    pub complete: bool,
    /// A body callback came (so Envoy has the setting).
    pub seen: bool,
}

/// `id` waits for its first body callback since `since_ms` (watched only until this
/// worker has seen one body callback).
pub fn wait(id: u32, since_ms: u64) {
    if !DELIVERED.with(Cell::get) {
        AWAITING.with(|a| a.borrow_mut().push((id, since_ms)));
    }
}

/// A body callback came: Envoy delivers bodies, the guard is no longer needed.
pub fn delivered() {
    DELIVERED.with(|d| d.set(true));
    AWAITING.with(|a| a.borrow_mut().clear());
}

/// `id`'s stream is over.
pub fn arrived(id: u32) {
    AWAITING.with(|a| a.borrow_mut().retain(|(waiting, _)| *waiting != id));
}

/// Runs `send` with the callout's headers describing the first `len` bytes of the body
/// Envoy buffered, and those bytes; `None` if they cannot be read.
pub fn with_body<T>(
    rules: &RequestBodySettings,
    callout: Vec<(&str, &str)>,
    len: usize,
    partial: bool,
    send: impl FnOnce(Vec<(&str, &str)>, &[u8]) -> T,
) -> Option<T> {
    let bytes = read(len)?;
    let length = bytes.len().to_string();
    // Moved into a list that lives only as long as `length`, which it borrows.
    let mut headers = callout;
    rules.describe_body(&mut headers, &length, partial);
    Some(send(headers, &bytes))
}

/// The first `len` bytes of the body Envoy buffered (empty for none).
fn read(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, len).ok().map(Option::unwrap_or_default)
}

/// Root context, on its tick: the streams that waited for their first body callback for
/// longer than `auth.timeout` get 500, no callout.
pub fn fail_overdue(settings: &Settings, now_ms: u64, root: u32) {
    let timeout = settings.auth.timeout;
    let overdue: Vec<u32> = AWAITING.with(|a| {
        let mut a = a.borrow_mut();
        let late = |since: u64| Duration::from_millis(now_ms.saturating_sub(since)) > timeout;
        let ids = a.iter().filter(|(_, since)| late(*since)).map(|(id, _)| *id).collect();
        a.retain(|(_, since)| !late(*since));
        ids
    });
    for id in overdue {
        if hostcalls::set_effective_context(id).is_err() {
            continue;
        }
        error!(
            "[{id}] failed closed {GUARD_STATUS}: auth.with_request_body or auth.forward_body is set but Envoy delivered no request body within \
             {} ms; set allow_on_headers_stop_iteration: true on the wasm filter's plugin config \
             (Envoy >= 1.35; docs/istio.md, \"Request body\")",
            timeout.as_millis()
        );
        count(Metric::Errors);
        reply(id, GUARD_STATUS, vec![], None);
    }
    let _ = hostcalls::set_effective_context(root);
}
