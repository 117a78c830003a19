//! A public path goes on to the upstream without a callout.

use crate::flow::decision_log;
use crate::flow::host::Host;
use crate::flow::outcome::Step;
use crate::flow::request_log;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::telemetry::{Decided, How, Outcome};

pub fn pass<H: Host, T>(host: &H, worker: &mut Worker, id: u32, settings: &Settings, template: &str) -> Step<T> {
    request_log::public(host, id, template);
    worker.counters.count(Metric::Public);
    decision_log::record(host, worker, id, Some(settings), Decided::new(Outcome::Public, How::Public));
    Step::Upstream
}
