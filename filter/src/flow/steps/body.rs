//! With `auth.with_request_body` or `auth.forward_body`: the callout waits for the
//! client's body (up to its limit, policy/request_body.rs), which Envoy buffers for us while
//! on_request_body answers Pause (StopIterationAndBuffer), as native ext_authz does.
//!
//! That needs Envoy's `allow_on_headers_stop_iteration: true` on the wasm filter: without
//! it Envoy turns the headers' Pause into StopAllIterationAndWatermark and no body
//! callback ever comes. Such a stream would hang; [`fail_overdue`] lets the root
//! context's tick fail it closed instead, with a log line naming the setting.

use std::time::Duration;

use log::error;

use crate::flow::decision_log;
use crate::flow::host::{Body, Host};
use crate::flow::reply::reply;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::request_body::RequestBodySettings;
use crate::telemetry::{Decided, How, Outcome};

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
pub fn wait(worker: &mut Worker, id: u32, since_ms: u64) {
    if !worker.body_delivered {
        worker.body_awaiting.push((id, since_ms));
    }
}

/// A body callback came: Envoy delivers bodies, the guard is no longer needed.
pub fn delivered(worker: &mut Worker) {
    worker.body_delivered = true;
    worker.body_awaiting.clear();
}

/// `id`'s stream is over.
pub fn arrived(worker: &mut Worker, id: u32) {
    worker.body_awaiting.retain(|(waiting, _)| *waiting != id);
}

/// Runs `send` with the callout's headers describing the first `len` bytes of the body
/// Envoy buffered, and those bytes; `None` if they cannot be read.
pub fn with_body<H: Host, T>(
    host: &H,
    rules: &RequestBodySettings,
    callout: Vec<(&str, &str)>,
    len: usize,
    partial: bool,
    send: impl FnOnce(Vec<(&str, &str)>, &[u8]) -> T,
) -> Option<T> {
    let bytes = read(host, len)?;
    let length = bytes.len().to_string();
    // Moved into a list that lives only as long as `length`, which it borrows.
    let mut headers = callout;
    rules.describe_body(&mut headers, &length, partial);
    Some(send(headers, &bytes))
}

/// The first `len` bytes of the body Envoy buffered (empty for none).
fn read<H: Host>(host: &H, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    host.body(Body::Request, len).ok()
}

/// Root context, on its tick: the streams that waited for their first body callback for
/// longer than `auth.timeout` get 500, no callout.
pub fn fail_overdue<H: Host>(host: &H, worker: &mut Worker, settings: &Settings, now_ms: u64, root: u32) {
    let timeout = settings.auth.timeout;
    let late = |since: u64| Duration::from_millis(now_ms.saturating_sub(since)) > timeout;
    let overdue: Vec<u32> = worker.body_awaiting.iter().filter(|(_, since)| late(*since)).map(|(id, _)| *id).collect();
    worker.body_awaiting.retain(|(_, since)| !late(*since));
    for id in overdue {
        if host.enter(id).is_err() {
            continue;
        }
        error!(
            "[{id}] failed closed {GUARD_STATUS}: auth.with_request_body or auth.forward_body is set but Envoy delivered no request body within \
             {} ms; set allow_on_headers_stop_iteration: true on the wasm filter's plugin config \
             (Envoy >= 1.35; docs/istio.md, \"Request body\")",
            timeout.as_millis() as u64
        );
        worker.counters.count(Metric::Errors);
        let decided = Decided::new(Outcome::Failed, How::Filter).reason("no_request_body");
        decision_log::record(host, worker, id, Some(settings), decided);
        reply(host, id, GUARD_STATUS, vec![], None);
    }
    let _ = host.enter(root);
}
