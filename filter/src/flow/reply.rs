//! Ending the request's pause: resume it, or answer the client locally (a denial, or
//! failing closed with `status_on_error`).

use log::error;

use crate::flow::decision_log;
use crate::flow::host::Host;
use crate::flow::outcome::Step;
use crate::flow::request_log;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::decision::{Failure, FAILURE_BODY};
use crate::policy::ext_authz::Protocol;
use crate::telemetry::{Decided, How, Outcome};

pub fn resume<H: Host>(host: &H, id: u32) {
    if let Err(status) = host.resume() {
        error!("[{id}] cannot resume the request: {status:?}");
    }
}

/// `status_on_error` with a short body (ext_authz: the status alone); the request never
/// goes upstream.
pub fn fail_closed<H: Host, T>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    failure: Failure,
) -> Step<T> {
    fail_closed_by(host, worker, id, settings, failure, How::Filter)
}

/// [`fail_closed`], the failure met `how` (the request's callout, or the one it waited for).
pub fn fail_closed_by<H: Host, T>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    failure: Failure,
    how: How,
) -> Step<T> {
    request_log::failed_closed(host, id, settings.status_on_error, failure);
    worker.counters.count(Metric::Errors);
    let decided = Decided::new(Outcome::Failed, how).status(failure.status()).reason(failure.code());
    decision_log::record(host, worker, id, Some(settings), decided);
    if settings.auth.protocol == Protocol::ExtAuthz {
        // ext_authz's error reply: the status alone, no body.
        reply(host, id, settings.status_on_error, vec![], None);
    } else {
        reply(host, id, settings.status_on_error, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
    }
    Step::Replied
}

pub fn reply<H: Host>(host: &H, id: u32, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
    if let Err(e) = host.reply(status, headers, body) {
        error!("[{id}] cannot send the local reply: {e:?}");
    }
}
