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
