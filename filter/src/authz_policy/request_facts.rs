//! What a rule reads of one request: its headers (`:path`, `:authority`, `:method`,
//! `request.headers[...]`), the claims of the token the filter's `jwt` step verified,
//! and the connection's facts through [`Connection`], each read from the host only
//! when a rule asks and at most once.
//!
//! The path and the host are read two ways (the safe two-sided match): every spelling a
//! parser behind the filter may read them as ([`RequestFacts::paths`],
//! [`RequestFacts::hosts`]) for the values that select a request, and the canonical
//! form alone for the `notPaths`/`notHosts` that exclude it.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::access::cidr::Ranges;
use crate::access::client::x_forwarded_for_names;
use crate::access::interpretations::{interpretations, Interpretations};
use crate::authz_policy::pattern::Either;
use crate::policy::headers::Header;
use crate::policy::route::canonical_path;

/// The connection's facts, read lazily by the host side.
pub trait Connection {
    /// The remote address Envoy settled on (`source.address`): the TCP peer, or an
    /// X-Forwarded-For entry (see [`RequestFacts::direct_peer`]).
    fn source_ip(&mut self) -> Option<IpAddr>;
    /// The client after X-Forwarded-For behind `trusted_proxies`: `remoteIpBlocks`, `remote.ip`.
    fn remote_ip(&mut self) -> Option<IpAddr>;
    /// The verified peer certificate's URI SAN; `None` without mTLS.
    fn principal(&mut self) -> Option<&str>;
    /// `destination.address`'s IP.
    fn destination_ip(&mut self) -> Option<IpAddr>;
    /// `destination.port`.
    fn destination_port(&mut self) -> Option<u16>;
    /// `connection.requested_server_name`; `None` without TLS SNI.
    fn sni(&mut self) -> Option<&str>;
}

/// The TCP peer as Istio's `ipBlocks` and `source.ip` read it (Envoy RBAC's
/// `direct_remote_ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectPeer {
    Known(IpAddr),
    /// No address (a pipe): no range holds.
    Absent,
    /// `source.address` may be an X-Forwarded-For entry the caller wrote, and proxy-wasm
    /// exposes no other address.
    Unknown,
}

impl DirectPeer {
    /// Istio's `values AND NOT notValues` on the peer. An unknown peer holds both ways:
    /// a rule that reads it selects the request, so the check runs (the safe side), and
    /// a caller cannot escape `notIpBlocks` or dodge `ipBlocks` by naming an address.
    pub fn holds(self, ranges: &Either<Ranges>) -> bool {
        match self {
            DirectPeer::Known(ip) => ranges.holds(|r| r.contains(ip)),
            DirectPeer::Absent => ranges.holds(|_| false),
            DirectPeer::Unknown => true,
        }
    }
}

/// The spellings of a request's path.
#[derive(Debug)]
pub struct Paths {
    /// The path without its query when it is canonical (`policy/route.rs`).
    pub canonical: Option<String>,
    /// Every spelling a parser may read: the path as sent (without its query) and its
    /// interpretations (`access/interpretations.rs`); for a canonical path, itself and
    /// itself without a trailing slash.
    pub all: Vec<String>,
    /// Too costly to spell out: every path value holds (the safe side).
    pub too_many: bool,
}

/// The spellings of a request's `:authority`, lower-cased.
#[derive(Debug)]
pub struct Hosts {
    /// As sent, when it is a plain host name or address with an optional port.
    pub canonical: Option<String>,
    /// As sent, without userinfo, without its port, without a trailing dot (lower-case).
    pub all: Vec<String>,
}

pub struct RequestFacts<'a, H: Header, C: Connection> {
    pub headers: &'a [H],
    pub claims: Option<&'a Map<String, Value>>,
    pub connection: C,
    paths: Option<Paths>,
    hosts: Option<Hosts>,
}

impl<'a, H: Header, C: Connection> RequestFacts<'a, H, C> {
    pub fn new(headers: &'a [H], claims: Option<&'a Map<String, Value>>, connection: C) -> Self {
        RequestFacts { headers, claims, connection, paths: None, hosts: None }
    }

    /// The values of header `name` (lower-case), one per field line as the host lists
    /// them; empty when absent.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        let headers: &'a [H] = self.headers;
        headers.iter().filter(move |h| h.name() == name).map(|h| h.value())
    }

    /// The direct peer: `source.address`, unless an X-Forwarded-For entry names it (then
    /// Envoy may have taken it from the header: unknown).
    pub fn direct_peer(&mut self) -> DirectPeer {
        match self.connection.source_ip() {
            None => DirectPeer::Absent,
            Some(ip) if x_forwarded_for_names(self.headers, ip) => DirectPeer::Unknown,
            Some(ip) => DirectPeer::Known(ip),
        }
    }

    /// The first value of a pseudo-header (`:method`), as text.
    pub fn pseudo(&self, name: &str) -> Option<&'a str> {
        let headers: &'a [H] = self.headers;
        headers.iter().find(|h| h.name() == name).and_then(|h| std::str::from_utf8(h.value()).ok())
    }

    pub fn paths(&mut self) -> &Paths {
        let headers: &'a [H] = self.headers;
        self.paths.get_or_insert_with(|| {
            let target = headers.iter().find(|h| h.name() == ":path").map_or(&b""[..], |h| h.value());
            spell_path(target)
        })
    }

    pub fn hosts(&mut self) -> &Hosts {
        let headers: &'a [H] = self.headers;
        self.hosts.get_or_insert_with(|| {
            let authority = headers.iter().find(|h| h.name() == ":authority").map_or(&b""[..], |h| h.value());
            spell_host(authority)
        })
    }
}

pub fn spell_path(target: &[u8]) -> Paths {
    let end = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
    let sent = String::from_utf8_lossy(&target[..end]).into_owned();
    if let Some(canonical) = canonical_path(target) {
        let canonical = canonical.to_string();
        // A trailing slash is a spelling of the path without it (routers that redirect
        // or strip it).
        let mut all = vec![canonical.clone()];
        if let Some(stripped) = canonical.strip_suffix('/').filter(|s| !s.is_empty()) {
            all.push(stripped.to_string());
        }
        return Paths { canonical: Some(canonical), all, too_many: false };
    }
    match interpretations(target) {
        Interpretations::Paths(mut all) => {
            if !all.contains(&sent) {
                all.insert(0, sent);
            }
            Paths { canonical: None, all, too_many: false }
        }
        Interpretations::TooMany => Paths { canonical: None, all: vec![sent], too_many: true },
    }
}

/// A host name (letters, digits, `-`, `.`, no empty label, no trailing dot), or a
/// bracketed IPv6 address, with an optional decimal port.
fn is_canonical_host(authority: &str) -> bool {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    port_ok && host_ok
}

pub fn spell_host(authority: &[u8]) -> Hosts {
    let sent = String::from_utf8_lossy(authority).to_ascii_lowercase();
    let canonical = is_canonical_host(&sent).then(|| sent.clone());
    let mut all = vec![sent.clone()];
    let mut push = |s: &str| {
        if !all.iter().any(|a| a == s) {
            all.push(s.to_string());
        }
    };
    // Userinfo is not part of the host (RFC 3986 §3.2.1).
    let host_port = sent.rsplit_once('@').map_or(sent.as_str(), |(_, h)| h);
    push(host_port);
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if (!h.contains(':') || h.ends_with(']')) && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    push(host);
    for h in [host_port, host] {
        if let Some(stripped) = h.strip_suffix('.') {
            push(stripped);
        }
        if let Some((name, port)) = h.rsplit_once(':') {
            if let Some(name) = name.strip_suffix('.') {
                push(&format!("{name}:{port}"));
            }
        }
    }
    Hosts { canonical, all }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn host_spellings() {
        let h = spell_host(b"API.Example.com.:8443");
        assert_eq!(h.canonical, None, "a trailing dot is not canonical");
        for s in ["api.example.com.:8443", "api.example.com.", "api.example.com", "api.example.com:8443"] {
            assert!(h.all.iter().any(|a| a == s), "{s}: {:?}", h.all);
        }
        assert_eq!(spell_host(b"a.b:80").canonical.as_deref(), Some("a.b:80"));
        assert_eq!(spell_host(b"[::1]:80").canonical.as_deref(), Some("[::1]:80"));
        assert!(spell_host(b"[::1]:80").all.iter().any(|a| a == "[::1]"));
        assert_eq!(spell_host(b"a..b").canonical, None);
        assert_eq!(spell_host(b"u@a.b").canonical, None);
        assert!(spell_host(b"u@a.b").all.iter().any(|a| a == "a.b"));
    }

    #[test]
    fn path_spellings() {
        let p = spell_path(b"/a/b/?x=1");
        assert_eq!(p.canonical.as_deref(), Some("/a/b/"));
        assert_eq!(p.all, vec!["/a/b/".to_string(), "/a/b".to_string()]);
        let p = spell_path(b"/x/../admin");
        assert_eq!(p.canonical, None);
        assert!(p.all.iter().any(|a| a == "/admin") && p.all.iter().any(|a| a == "/x/../admin"));
    }
}
