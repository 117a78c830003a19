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

/// The proxy-wasm properties behind [`Peer`].
struct HostPeer;

impl Peer for HostPeer {
    fn address(&mut self) -> Option<String> {
        property(&["source", "address"]).and_then(|bytes| String::from_utf8(bytes).ok())
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

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// What the access rules leave of a request: still public (`Some(template)`; a public
/// path whose rules did not match is checked as protected: `None`), and the verified
/// identity to add to its callout when `principal_header` is set; `Err` when the
/// request was answered locally.
pub fn apply<'h>(
    id: u32,
    settings: &'h Settings,
    access: &'h AccessSettings,
    request: &'h [(&'h str, &'h [u8])],
    public: Option<&'h str>,
) -> Result<(Option<&'h str>, Option<Principal<'h>>), Action> {
    let mut facts = Facts::new(access, HostPeer, request);
    let entry = match public {
        Some(_) if access.has_path_rules() => {
            headers::first(request, ":path").and_then(|path| settings.public.find_index(path))
        }
        _ => None,
    };
    let public = match access.gate(entry, &mut facts) {
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
    Ok((public, principal))
}

/// A header for the callout: the verified peer identity (`principal_header`).
pub type Principal<'h> = (&'h str, String);
