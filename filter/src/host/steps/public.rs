//! Step 2: a public path goes on to the upstream without a callout.

use proxy_wasm::types::Action;

use crate::host::metrics::count;
use crate::host::request_log;
use crate::metrics::Metric;

pub fn pass(id: u32, template: &str) -> Action {
    request_log::public(id, template);
    count(Metric::Public);
    Action::Continue
}
