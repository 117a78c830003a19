//! Step 1b, only when access rules are configured (access/): source ranges and peer
//! principals, before any public path or callout. The host properties are read only
//! when a rule needs them (`source.address`; `connection.mtls` and
//! `connection.uri_san_peer_certificate`), each at most once per pass.

use log::debug;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Action;

use crate::access::{AccessSettings, Facts, Gate, Peer, Why, DENIED_BODY};
use crate::config::Settings;
use crate::host::metrics::count;
use crate::host::reply::reply;
use crate::metrics::Metric;
use crate::policy::headers;
use crate::policy::route::PathMatch;

/// The proxy-wasm properties behind [`Peer`]. The address it read is kept for the
/// callout's X-Forwarded-For ([`PeerFacts::address`]): one `source.address` read per request.
#[derive(Default)]
struct HostPeer {
    address: Option<Option<String>>,
}

impl Peer for HostPeer {
    fn address(&mut self) -> Option<String> {
        self.address.get_or_insert_with(address).clone()
    }

    /// Envoy's `connection.mtls` is true when the downstream connection is TLS and the
    /// client presented a certificate; the listener's validation context (Istio's
    /// mTLS, or `require_client_certificate` with a trusted CA) makes it a verified one.
    fn principal(&mut self) -> Option<String> {
        // A CEL bool: one byte.
        if property(&["connection", "mtls"]).as_deref() != Some(&[1u8][..]) {
            return None;
        }
        property(&["connection", "uri_san_peer_certificate"]).and_then(|bytes| String::from_utf8(bytes).ok())
    }
}

/// proxy-wasm `source.address` (`ip:port`).
pub fn address() -> Option<String> {
    property(&["source", "address"]).and_then(|bytes| String::from_utf8(bytes).ok())
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
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
/// `Err` when the request was answered locally.
pub fn apply<'h>(
    id: u32,
    settings: &'h Settings,
    access: &'h AccessSettings,
    request: &'h [(&'h str, &'h [u8])],
    (public, matched): (Option<&'h str>, PathMatch),
) -> Result<(Option<&'h str>, PeerFacts<'h>), Action> {
    let mut facts = Facts::new(access, HostPeer::default(), request);
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
            count(match why {
                Why::Source => Metric::SourceDenied,
                Why::Principal => Metric::PrincipalDenied,
            });
            reply(id, status, vec![("content-type", "text/plain")], Some(DENIED_BODY));
            return Err(Action::Pause);
        }
    };
    let principal = match (public, &access.principal_header) {
        (None, Some(name)) => facts.principal().map(|principal| (name.as_str(), principal.to_owned())),
        _ => None,
    };
    Ok((public, PeerFacts { principal, address: facts.into_peer().address }))
}

/// The `principal_header` of a callout sent again (host/http.rs `retry`): read once more
/// from the same connection, so the identity the first callout carried.
pub fn principal_again(settings: &Settings) -> Option<Principal<'_>> {
    let access = settings.access.as_ref()?;
    let name = access.principal_header.as_ref()?;
    let none: &[(&str, &[u8])] = &[];
    Facts::new(access, HostPeer::default(), none).principal().map(|principal| (name.as_str(), principal.to_owned()))
}

/// A header for the callout: the verified peer identity (`principal_header`).
pub type Principal<'h> = (&'h str, String);
