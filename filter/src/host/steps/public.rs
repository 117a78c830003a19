//! Step 2: a public path goes on to the upstream without a callout.

use log::debug;
use proxy_wasm::types::Action;

use crate::host::metrics::count;
use crate::metrics::Metric;

pub fn pass(id: u32, template: &str) -> Action {
    debug!("[{id}] public ({template})");
    count(Metric::Public);
    Action::Continue
}
