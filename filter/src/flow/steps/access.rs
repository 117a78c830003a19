//! Only when access rules are configured (access/): source ranges and peer principals,
//! before any public path or callout. The host properties are read only when a rule
//! needs them (`source.address`; `connection.mtls` and
//! `connection.uri_san_peer_certificate`), each at most once per pass.

use log::debug;

use crate::access::{AccessSettings, Facts, Gate, Peer, Why, DENIED_BODY};
use crate::flow::decision_log;
use crate::flow::host::Host;
use crate::flow::outcome::Step;
use crate::flow::reply::reply;
use crate::flow::request_info::source_address;
use crate::flow::worker::Worker;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::headers;
use crate::policy::route::PathMatch;
use crate::telemetry::{Decided, How, Outcome};

/// The proxy-wasm properties behind [`Peer`]. The address it read is kept for the
/// callout's X-Forwarded-For ([`PeerFacts::address`]): one `source.address` read per request.
struct HostPeer<'a, H> {
    host: &'a H,
    address: Option<Option<String>>,
}

impl<H: Host> Peer for HostPeer<'_, H> {
    fn address(&mut self) -> Option<String> {
        let host = self.host;
        self.address.get_or_insert_with(|| source_address(host)).clone()
    }

    /// Envoy's `connection.mtls` is true when the downstream connection is TLS and the
    /// client presented a certificate; the listener's validation context (Istio's
    /// mTLS, or `require_client_certificate` with a trusted CA) makes it a verified one.
    fn principal(&mut self) -> Option<String> {
        // A CEL bool: one byte.
        if self.host.property(&["connection", "mtls"]).as_deref() != Some(&[1u8][..]) {
            return None;
        }
        self.host.property(&["connection", "uri_san_peer_certificate"]).and_then(|bytes| String::from_utf8(bytes).ok())
    }
}

/// What the access step learnt that a protected request's callout needs again.
#[derive(Default)]
pub struct PeerFacts<'h> {
    /// The verified identity for the callout when `principal_header` is set.
    pub principal: Option<Principal<'h>>,
    /// `source.address` when a rule read it (`None`: not read).
    pub address: Option<Option<String>>,
}

/// What the access rules leave of a routed request (`public`, `matched`: its route):
/// still public (`Some(template)`; a public path whose rules did not match is checked
/// as protected: `None`), and what they read that its callout needs ([`PeerFacts`]);
/// [`Step::Replied`] when denied.
pub fn apply<'h, H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &'h Settings,
    access: &'h AccessSettings,
    request: &'h [(&'h str, &'h [u8])],
    (public, matched): (Option<&'h str>, PathMatch),
) -> Step<(Option<&'h str>, PeerFacts<'h>)> {
    let mut facts = Facts::new(access, HostPeer { host, address: None }, request);
    // The `:path` is read again only for a non-canonical path under deny rules.
    let target = match matched {
        PathMatch::NotCanonical if access.deny_rules => headers::first(request, ":path").unwrap_or_default(),
        _ => &[],
    };
    let public = match access.gate(&settings.public, matched, target, &mut facts) {
        Gate::Pass => public,
        Gate::Protect => {
            debug!("[{id}] public path outside its access rules: checked as protected");
            None
        }
        Gate::Deny { status, why } => {
            debug!("[{id}] denied by the {why:?} access rule");
            let (metric, outcome) = match why {
                Why::Source => (Metric::SourceDenied, Outcome::SourceDenied),
                Why::Principal => (Metric::PrincipalDenied, Outcome::PrincipalDenied),
            };
            worker.counters.count(metric);
            decision_log::record(host, worker, id, Some(settings), Decided::new(outcome, How::Access));
            reply(host, id, status, vec![("content-type", "text/plain")], Some(DENIED_BODY));
            return Step::Replied;
        }
    };
    let principal = match (public, &access.principal_header) {
        (None, Some(name)) => facts.principal().map(|principal| (name.as_str(), principal.to_owned())),
        _ => None,
    };
    Step::Next((public, PeerFacts { principal, address: facts.into_peer().address }))
}

/// The `principal_header` of a callout sent again (a retry): read once more from the
/// same connection, so the identity the first callout carried.
pub fn principal_again<'s, H: Host>(host: &H, settings: &'s Settings) -> Option<Principal<'s>> {
    let access = settings.access.as_ref()?;
    let name = access.principal_header.as_ref()?;
    let none: &[(&str, &[u8])] = &[];
    Facts::new(access, HostPeer { host, address: None }, none)
        .principal()
        .map(|principal| (name.as_str(), principal.to_owned()))
}

/// A header for the callout: the verified peer identity (`principal_header`).
pub type Principal<'h> = (&'h str, String);

/// Which properties the access step reads, and when: each only when a rule needs it,
/// at most once; the SAN only over a verified mTLS connection.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::flow::mock_host::{End, MockHost};

    const ID: u32 = 5;
    const SAN: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";

    fn host(properties: &[(&str, &[u8])]) -> MockHost {
        let host = MockHost::new(0);
        host.open(ID, Vec::new());
        for (path, value) in properties {
            host.set_property(ID, path, value);
        }
        host
    }

    #[test]
    fn the_principal_is_read_only_over_mtls() {
        let plain = host(&[("connection.mtls", &[0]), ("connection.uri_san_peer_certificate", SAN.as_bytes())]);
        assert_eq!(HostPeer { host: &plain, address: None }.principal(), None);
        assert_eq!(plain.calls_in(ID), ["property"], "no certificate: the SAN is not read");
        let mtls = host(&[("connection.mtls", &[1]), ("connection.uri_san_peer_certificate", SAN.as_bytes())]);
        assert_eq!(HostPeer { host: &mtls, address: None }.principal().as_deref(), Some(SAN));
        assert_eq!(mtls.calls_in(ID), ["property", "property"]);
    }

    #[test]
    fn the_address_is_read_once() {
        let host = host(&[("source.address", b"10.1.2.3:4000")]);
        let mut peer = HostPeer { host: &host, address: None };
        assert_eq!(peer.address().as_deref(), Some("10.1.2.3:4000"));
        assert_eq!(peer.address().as_deref(), Some("10.1.2.3:4000"));
        assert_eq!(host.calls_in(ID), ["property"]);
    }

    #[test]
    fn a_source_denial_replies_before_anything_else_and_is_counted() {
        let settings =
            Settings::from_json(br#"{"auth": {"cluster": "auth"}, "source_ranges": ["10.0.0.0/8"]}"#).unwrap();
        let access = settings.access.as_ref().unwrap();
        let request: Vec<(&str, &[u8])> = vec![(":path", b"/api/flows")];
        for (address, denied) in [("203.0.113.9:1", true), ("10.9.9.9:1", false)] {
            let host = host(&[("source.address", address.as_bytes())]);
            let mut worker = Worker::default();
            worker.counters.define(&host);
            let step = apply(&host, &mut worker, ID, &settings, access, &request, (None, PathMatch::Protected));
            worker.counters.flush(&host);
            assert_eq!(host.counter(Metric::SourceDenied.name()), u64::from(denied), "{address}: counted");
            if denied {
                assert!(matches!(step, Step::Replied), "{address}");
                // The decision for the access log is written before the reply.
                assert_eq!(
                    host.calls_in(ID),
                    ["property", "set_filter_state", "reply"],
                    "{address}: no mTLS property read"
                );
                let ends = host.stream(ID).ends;
                let [End::Reply { status: 403, body: Some(body), .. }] = ends.as_slice() else { panic!("{ends:?}") };
                assert_eq!(body.as_slice(), DENIED_BODY);
            } else {
                let Step::Next((public, facts)) = step else { panic!("{address}: not passed on") };
                assert_eq!(public, None);
                assert_eq!(facts.address, Some(Some(address.to_string())), "kept for the callout's X-Forwarded-For");
                assert_eq!(host.calls_in(ID), ["property"]);
            }
        }
    }
}
