//! Only with `policies` (authz_policy/): the providers whose rules select the request.
//! A request no rule selects goes upstream unchecked, as Istio's CUSTOM action lets it
//! (its identity headers were stripped first; a `local_then_callout` token's claim
//! headers are added, as a valid token's are in `local` mode). Runs after the JWT step,
//! whose verified claims `requestPrincipals` and `request.auth.*` read.
//!
//! The connection's properties are read only when a rule needs them, each at most once:
//! `source.address` (kept for the callout's X-Forwarded-For), `connection.mtls` and
//! `connection.uri_san_peer_certificate`, `destination.address`, `destination.port`,
//! `connection.requested_server_name`.

use std::net::IpAddr;

use log::debug;

use crate::access::cidr;
use crate::access::client::client_ip;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::{Selected, Selection};
use crate::flow::decision_log;
use crate::flow::host::{Host, Map};
use crate::flow::outcome::Step;
use crate::flow::reply::fail_closed;
use crate::flow::worker::Worker;
use crate::jwt::verifier::VerifiedClaims;
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::decision::Failure;
use crate::telemetry::{Decided, How, Outcome};

/// The proxy-wasm properties behind [`Connection`], each read at most once.
pub struct HostConnection<'a, H> {
    host: &'a H,
    headers: &'a [(&'a str, &'a [u8])],
    settings: &'a Settings,
    /// `source.address`, when read (here or by the access step).
    pub address: Option<Option<String>>,
    principal: Option<Option<String>>,
    destination: Option<Option<String>>,
    port: Option<Option<u16>>,
    sni: Option<Option<String>>,
    /// A property read was refused: the selection cannot be trusted.
    pub refused: bool,
}

impl<'a, H: Host> HostConnection<'a, H> {
    pub fn new(
        host: &'a H,
        headers: &'a [(&'a str, &'a [u8])],
        settings: &'a Settings,
        address: Option<Option<String>>,
    ) -> Self {
        let (principal, destination, port, sni) = (None, None, None, None);
        HostConnection { host, headers, settings, address, principal, destination, port, sni, refused: false }
    }

    /// A property, `None` when absent; a refused read is remembered ([`select`] then
    /// fails the request closed rather than treat the property as absent).
    fn bytes(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.host.read_property(path).unwrap_or_else(|_| {
            self.refused = true;
            None
        })
    }

    fn text(&mut self, path: &[&str]) -> Option<String> {
        self.bytes(path).and_then(|bytes| String::from_utf8(bytes).ok())
    }

    fn destination(&mut self) -> Option<&str> {
        if self.destination.is_none() {
            self.destination = Some(self.text(&["destination", "address"]));
        }
        self.destination.as_ref().and_then(|d| d.as_deref())
    }
}

impl<H: Host> Connection for HostConnection<'_, H> {
    fn source_ip(&mut self) -> Option<IpAddr> {
        if self.address.is_none() {
            self.address = Some(self.text(&["source", "address"]));
        }
        self.address.as_ref().and_then(|a| a.as_deref()).and_then(cidr::peer_ip)
    }

    fn remote_ip(&mut self) -> Option<IpAddr> {
        let peer = self.source_ip();
        let trusted = self.settings.access.as_ref().and_then(|a| a.trusted_proxies.as_ref());
        client_ip(peer, self.headers, trusted)
    }

    /// As the access rules read it: `connection.mtls` true (a verified client
    /// certificate, under Istio's mTLS), then the certificate's URI SAN.
    fn principal(&mut self) -> Option<&str> {
        if self.principal.is_none() {
            let verified = self.bytes(&["connection", "mtls"]).as_deref() == Some(&[1u8][..]);
            let san = verified.then(|| self.text(&["connection", "uri_san_peer_certificate"])).flatten();
            self.principal = Some(san.filter(|s| !s.is_empty()));
        }
        self.principal.as_ref().and_then(|p| p.as_deref())
    }

    fn destination_ip(&mut self) -> Option<IpAddr> {
        self.destination().and_then(cidr::peer_ip)
    }

    /// Envoy hands an integer property to Wasm as a little-endian 64-bit integer; the
    /// port of `destination.address` otherwise.
    fn destination_port(&mut self) -> Option<u16> {
        if self.port.is_none() {
            let bytes = self.bytes(&["destination", "port"]);
            let port = match bytes.as_deref().and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(le) => u16::try_from(i64::from_le_bytes(le)).ok(),
                None => self.destination().and_then(|a| a.parse::<std::net::SocketAddr>().ok()).map(|s| s.port()),
            };
            self.port = Some(port);
        }
        self.port.flatten()
    }

    fn sni(&mut self) -> Option<&str> {
        if self.sni.is_none() {
            self.sni = Some(self.text(&["connection", "requested_server_name"]).filter(|s| !s.is_empty()));
        }
        self.sni.as_ref().and_then(|s| s.as_deref())
    }
}

/// The providers that check this request ([`Step::Next`]), or [`Step::Upstream`] when
/// none does. `address`: the `source.address` an earlier step read, and what this one
/// read (for the callout's X-Forwarded-For).
#[allow(clippy::too_many_arguments)]
pub fn select<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    selection: &Selection,
    headers: &[(&str, &[u8])],
    claims: Option<&VerifiedClaims>,
    address: &mut Option<Option<String>>,
) -> Step<Selected> {
    let connection = HostConnection::new(host, headers, settings, address.take());
    let mut facts = RequestFacts::new(headers, claims.map(|c| &**c), connection);
    let selected = selection.select(&mut facts);
    if facts.connection.refused {
        return fail_closed(host, worker, id, settings, Failure::HostError);
    }
    *address = facts.connection.address;
    if !selected.is_empty() {
        return Step::Next(selected);
    }
    debug!("[{id}] no policy selects the request: upstream unchecked");
    if let Some(claims) = worker.kept.take_claims(id) {
        for (name, value) in claims.iter() {
            if host.add_header(Map::RequestHeaders, name, value.as_bytes()).is_err() {
                return fail_closed(host, worker, id, settings, Failure::HostError);
            }
        }
    }
    // Counted with the public paths: neither is checked (every request counts once, so
    // not before the claim headers that could still fail it closed).
    worker.counters.count(Metric::Public);
    decision_log::record(host, worker, id, Some(settings), Decided::new(Outcome::Public, How::Unselected));
    Step::Upstream
}
