//! Step 1, every path: remove the client's copies of identity headers (and of anything
//! the filter may inject) before anything else looks at the request; and the same names
//! from its trailers, whenever they come.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use crate::config::Settings;
use crate::host::header_map;

/// Removes `names` from the request headers (only the ones present: the plan found them
/// in the request).
pub fn strip(names: &[&str]) -> Result<(), Status> {
    remove(MapType::HttpRequestHeaders, names)
}

/// Removes the strip list from the request's trailers: one host call reads them, one more
/// per name present. An HTTP/2 (gRPC) upstream, or an HTTP/1.1 one with `enable_trailers`,
/// receives trailers after the body, past every check the headers went through.
pub fn trailers(settings: &Settings) -> Result<(), Status> {
    let buffer = header_map::read(MapType::HttpRequestTrailers).ok_or(Status::InternalFailure)?;
    let trailers = header_map::parse(&buffer).ok_or(Status::ParseFailure)?;
    remove(MapType::HttpRequestTrailers, &settings.strip_list(&trailers))
}

fn remove(map: MapType, names: &[&str]) -> Result<(), Status> {
    for name in names {
        hostcalls::remove_map_value(map, name)?;
    }
    Ok(())
}
