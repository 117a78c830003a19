//! Every path, first: remove the client's copies of identity headers (and of anything
//! the filter may inject) before anything else looks at the request; and the same names
//! from its trailers, whenever they come.

use crate::flow::header_map;
use crate::flow::host::{Host, Map, Refused};
use crate::plugin_config::Settings;

/// Removes `names` from the request headers (only the ones present: the plan found them
/// in the request).
pub fn strip<H: Host>(host: &H, names: &[&str]) -> Result<(), Refused> {
    remove(host, Map::RequestHeaders, names)
}

/// Removes the strip list from the request's trailers: one host call reads them, one more
/// per name present. An HTTP/2 (gRPC) upstream, or an HTTP/1.1 one with `enable_trailers`,
/// receives trailers after the body, past every check the headers went through.
pub fn trailers<H: Host>(host: &H, settings: &Settings) -> Result<(), Refused> {
    let buffer = host.header_map(Map::RequestTrailers).ok_or(Refused::InternalFailure)?;
    let trailers = header_map::parse(&buffer).ok_or(Refused::ParseFailure)?;
    remove(host, Map::RequestTrailers, &settings.strip_list(&trailers))
}

fn remove<H: Host>(host: &H, map: Map, names: &[&str]) -> Result<(), Refused> {
    for name in names {
        host.remove_header(map, name)?;
    }
    Ok(())
}
