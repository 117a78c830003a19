//! Each request's decision, recorded once when it is made (telemetry.rs holds what is
//! recorded): the failure reason's counter; with `telemetry.filter_state`, the decision
//! as filter state for Envoy's access log (one `set_property`, on the request's own
//! context: a waiter settled from another context's callback is entered first); with
//! `telemetry.histograms`, the time since its headers arrived in the histogram of how it
//! was decided. The start is read from the clock only when one of those is on.

use log::debug;

use crate::flow::host::Host;
use crate::flow::worker::Worker;
use crate::metric_names::Histogram;
use crate::plugin_config::Settings;
use crate::telemetry::{Decided, Outcome, TelemetrySettings, FILTER_STATE_NAME};

/// The request's headers arrived: its clock starts.
pub fn start<H: Host>(host: &H, worker: &mut Worker, id: u32, settings: &Settings) {
    if settings.telemetry.timed() {
        worker.started.insert(id, host.now_us());
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
    let elapsed_us = match worker.started.remove(&id) {
        Some(start) => host.now_us().saturating_sub(start),
        None => 0,
    };
    if telemetry.histograms {
        worker.counters.record(host, decided.how.histogram(), elapsed_us);
    }
    if telemetry.filter_state {
        let mut text = std::mem::take(&mut worker.decision_text);
        decided.render(elapsed_us, &mut text);
        if let Err(status) = host.set_filter_state(FILTER_STATE_NAME, &text) {
            debug!("[{id}] cannot write the decision to filter state: {status:?}");
        }
        worker.decision_text = text;
    }
}

/// The callout's round trip (`sent_us`: when it was dispatched, 0 if not read).
pub fn callout_time<H: Host>(host: &H, worker: &Worker, settings: &Settings, sent_us: u64) {
    if settings.telemetry.histograms && sent_us > 0 {
        worker.counters.record(host, Histogram::CalloutTime, host.now_us().saturating_sub(sent_us));
    }
}

/// The stream is over: a request that never got a decision (reset while it waited)
/// leaves nothing behind.
pub fn forget(worker: &mut Worker, id: u32) {
    if !worker.started.is_empty() {
        worker.started.remove(&id);
    }
}
