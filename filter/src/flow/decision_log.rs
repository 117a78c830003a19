//! Each request's decision, recorded once when it is made (telemetry.rs holds what is
//! recorded): the failure reason's counter; with `telemetry.filter_state`, the decision
//! as filter state for Envoy's access log (one `set_property`, on the request's own
//! context: a waiter settled from another context's callback is entered first); with
//! `telemetry.histograms`, how long it waited in the histogram of what it waited for.
//!
//! The clock is read only for a request that pauses (when it pauses, which for a
//! callout is its dispatch, the read `auth.retry_on_reset` needs anyway; and when it is
//! decided): a request decided in the callback that brought its headers waited for
//! nothing, and records 0 and no sample. Each read is a host call (~1.2 k instructions
//! with V8's boundary, bench/results/history.md), so timing those few microseconds of
//! the module's own work would cost about 1 % of a cache hit.

use log::debug;

use crate::flow::host::Host;
use crate::flow::worker::Worker;
use crate::metric_names::Histogram;
use crate::plugin_config::Settings;
use crate::telemetry::{Decided, Outcome, TelemetrySettings, FILTER_STATE_NAME};

/// The request pauses (its headers' callback is about to return): its wait starts.
pub fn paused<H: Host>(host: &H, worker: &mut Worker, id: u32, settings: &Settings) {
    if settings.telemetry.timed() {
        worker.started.entry(id).or_insert_with(|| host.now_us());
    }
}

/// Records `decided` for request `id`, the effective context (`settings`: `None` when
/// the filter has no configuration, then recorded as by default).
pub fn record<H: Host>(host: &H, worker: &mut Worker, id: u32, settings: Option<&Settings>, decided: Decided) {
    if let (Outcome::Failed, Some(reason)) = (decided.outcome, decided.reason) {
        worker.counters.count_failure(reason);
    }
    let default;
    let telemetry = match settings {
        Some(settings) => &settings.telemetry,
        None => {
            default = TelemetrySettings::default();
            &default
        }
    };
    if !telemetry.timed() {
        return;
    }
    // A request decided in its headers' callback never paused: nothing to look up.
    let started = if worker.started.is_empty() { None } else { worker.started.remove(&id) };
    let waited_us = match started {
        Some(start) => {
            let now = worker.clock_us.unwrap_or_else(|| host.now_us());
            let waited_us = now.saturating_sub(start);
            if telemetry.histograms {
                worker.counters.record(host, decided.how.histogram(), waited_us);
            }
            waited_us
        }
        None => 0,
    };
    if telemetry.filter_state {
        let mut text = std::mem::take(&mut worker.decision_text);
        decided.render(waited_us, &mut text);
        if let Err(status) = host.set_filter_state(FILTER_STATE_NAME, &text) {
            debug!("[{id}] cannot write the decision to filter state: {status:?}");
        }
        worker.decision_text = text;
    }
}

/// The callout's answer came: its round trip. `sent_us`: when it was dispatched if read
/// then (a callout sent after the request's body came), else 0: it went out just before
/// its request paused, so the wait's start is its dispatch. The clock read here is the
/// one the decisions of this callback use ([`answered`]).
pub fn callout_time<H: Host>(host: &H, worker: &mut Worker, id: u32, settings: &Settings, sent_us: u64) {
    if !settings.telemetry.histograms {
        return;
    }
    let sent_us = if sent_us > 0 { Some(sent_us) } else { worker.started.get(&id).copied() };
    if let Some(sent_us) = sent_us {
        let now = host.now_us();
        worker.counters.record(host, Histogram::CalloutTime, now.saturating_sub(sent_us));
        worker.clock_us = Some(now);
    }
}

/// The callback that read the clock for [`callout_time`] has settled its requests.
pub fn answered(worker: &mut Worker) {
    worker.clock_us = None;
}

/// The stream is over: a request that never got a decision (reset while it waited)
/// leaves nothing behind.
pub fn forget(worker: &mut Worker, id: u32) {
    if !worker.started.is_empty() {
        worker.started.remove(&id);
    }
}
