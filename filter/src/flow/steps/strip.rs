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

/// The host calls the strip step makes: one removal per name present, none for the
/// names absent; the trailers read once.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::flow::mock_host::MockHost;

    const CONTEXT: u32 = 3;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn trailers_lose_every_spelling_of_an_identity_header_and_nothing_else() {
        let settings = Settings::from_json(br#"{"auth": {"cluster": "auth"}}"#).unwrap();
        let host = MockHost::new(0);
        host.open(CONTEXT, Vec::new());
        host.set_trailers(
            CONTEXT,
            pairs(&[("grpc-status", "0"), ("X_Nebula_Actor_Id", "evil"), ("x-nebula-actor-permissions", "admin")]),
        );
        trailers(&host, &settings).unwrap();
        assert_eq!(host.stream(CONTEXT).trailers, pairs(&[("grpc-status", "0")]));
        assert_eq!(host.calls_in(CONTEXT), ["header_map", "remove_header", "remove_header"]);
    }

    #[test]
    fn clean_trailers_cost_one_read() {
        let settings = Settings::from_json(br#"{"auth": {"cluster": "auth"}}"#).unwrap();
        let host = MockHost::new(0);
        host.open(CONTEXT, Vec::new());
        host.set_trailers(CONTEXT, pairs(&[("grpc-status", "0"), ("x-checksum", "1")]));
        trailers(&host, &settings).unwrap();
        assert_eq!(host.stream(CONTEXT).trailers.len(), 2);
        assert_eq!(host.calls_in(CONTEXT), ["header_map"]);
    }

    #[test]
    fn a_refused_read_or_removal_is_an_error_for_the_caller() {
        use crate::flow::mock_host::Fails;
        let settings = Settings::from_json(br#"{"auth": {"cluster": "auth"}}"#).unwrap();
        for refused in [Fails::HeaderMap(Map::RequestTrailers), Fails::RemoveHeader(Map::RequestTrailers)] {
            let host = MockHost::new(0);
            host.open(CONTEXT, Vec::new());
            host.set_trailers(CONTEXT, pairs(&[("x-nebula-actor-id", "evil")]));
            host.fail(refused);
            assert!(trailers(&host, &settings).is_err(), "{refused:?}");
        }
        let host = MockHost::new(0);
        host.open(CONTEXT, pairs(&[("x-nebula-actor-id", "evil"), ("accept", "*/*")]));
        strip(&host, &["x-nebula-actor-id"]).unwrap();
        assert_eq!(host.stream(CONTEXT).request, pairs(&[("accept", "*/*")]));
        assert_eq!(host.calls_in(CONTEXT), ["remove_header"], "the plan found the names: no read here");
    }
}
