//! Step 1, every path: remove the client's copies of identity headers (and of anything
//! the filter may inject) before anything else looks at the request.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

/// Removes `names` (only the ones present: the plan found them in the request).
pub fn strip(names: &[&str]) -> Result<(), Status> {
    for name in names {
        hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)?;
    }
    Ok(())
}
