//! A public path goes on to the upstream without a callout.

use crate::flow::host::Host;
use crate::flow::outcome::Step;
use crate::flow::request_log;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;

pub fn pass<H: Host, T>(host: &H, worker: &mut Worker, id: u32, template: &str) -> Step<T> {
    request_log::public(host, id, template);
    worker.counters.count(Metric::Public);
    Step::Upstream
}
