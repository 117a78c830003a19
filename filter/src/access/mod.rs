//! Who may ask at all: the client's address (`source_ranges`,
//! behind `trusted_proxies`) and its verified mTLS identity (`principals`), globally and
//! per public path, on the same canonical-path match as the public paths, so a rule
//! keyed to a path cannot be sidestepped by spelling the path differently.
//!
//! Pure: the host hands over what it knows through [`Peer`], read lazily, so a rule
//! that does not need the address or the certificate never asks for it.

pub mod access_config;
pub mod cidr;
pub mod client;
pub mod principal;

use std::net::IpAddr;

use crate::access::cidr::Ranges;
use crate::access::principal::Principals;
use crate::policy::headers::Header;

/// Body of the access rules' local reply: short, and says nothing about the rule.
pub const DENIED_BODY: &[u8] = b"nebula-authz: access denied\n";
/// The status of a denial by the top-level rules.
pub const DENIED_STATUS: u32 = 403;

/// The compiled access rules; only present when at least one is configured.
#[derive(Debug)]
pub struct AccessSettings {
    /// Top level: a client outside is denied before anything else.
    pub source_ranges: Option<Ranges>,
    /// Top level: a peer whose verified identity does not match is denied.
    pub principals: Option<Principals>,
    /// Proxies whose X-Forwarded-For is believed (client.rs).
    pub trusted_proxies: Option<Ranges>,
    /// Sends the verified identity to the auth service in this header (lower-case).
    pub principal_header: Option<String>,
    /// Rules of the public-path entries, by entry index (empty when none has rules).
    pub paths: Vec<Option<PathRule>>,
}

/// The rules of one public-path entry: public only when every given rule matches.
#[derive(Debug)]
pub struct PathRule {
    pub source_ranges: Option<Ranges>,
    pub principals: Option<Principals>,
    pub otherwise: Otherwise,
}

/// What a request to a rule-restricted public path gets when a rule does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Otherwise {
    /// Checked like a protected path (callout).
    Check,
    /// Denied locally with this status.
    Deny(u32),
}

/// Which rule denied a request (each has its own counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Source,
    Principal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on with the route as planned.
    Pass,
    /// A public path whose rules did not match: check it as a protected path.
    Protect,
    /// Reply locally with this status.
    Deny { status: u32, why: Why },
}

/// What the host knows about the connection, asked only when a rule needs it.
pub trait Peer {
    /// proxy-wasm `source.address` (`ip:port`).
    fn address(&mut self) -> Option<String>;
    /// The verified peer certificate's URI SAN; `None` without mTLS.
    fn principal(&mut self) -> Option<String>;
}

/// One request's facts, each read from the [`Peer`] at most once.
pub struct Facts<'a, P: Peer, H: Header> {
    peer: P,
    headers: &'a [H],
    trusted: Option<&'a Ranges>,
    client: Option<Option<IpAddr>>,
    principal: Option<Option<String>>,
}

impl<'a, P: Peer, H: Header> Facts<'a, P, H> {
    pub fn new(access: &'a AccessSettings, peer: P, headers: &'a [H]) -> Self {
        Facts { peer, headers, trusted: access.trusted_proxies.as_ref(), client: None, principal: None }
    }

    /// The peer, with whatever it read.
    pub fn into_peer(self) -> P {
        self.peer
    }

    pub fn client(&mut self) -> Option<IpAddr> {
        if self.client.is_none() {
            let peer = self.peer.address().as_deref().and_then(cidr::peer_ip);
            self.client = Some(client::client_ip(peer, self.headers, self.trusted));
        }
        self.client.flatten()
    }

    /// The verified identity, only if it is non-empty visible ASCII (it may go into a
    /// header; anything else is treated as no identity at all).
    pub fn principal(&mut self) -> Option<&str> {
        if self.principal.is_none() {
            let p = self.peer.principal().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic()));
            self.principal = Some(p);
        }
        self.principal.as_ref().and_then(|p| p.as_deref())
    }
}

impl AccessSettings {
    /// Whether a public request must look up its entry's rules.
    pub fn has_path_rules(&self) -> bool {
        !self.paths.is_empty()
    }

    /// The rules for a request; `public_entry` is the index of the public-path entry it
    /// matched (`None` when it is not public).
    pub fn gate<P: Peer, H: Header>(&self, public_entry: Option<usize>, facts: &mut Facts<P, H>) -> Gate {
        if let Some(ranges) = &self.source_ranges {
            if !facts.client().is_some_and(|ip| ranges.contains(ip)) {
                return Gate::Deny { status: DENIED_STATUS, why: Why::Source };
            }
        }
        if let Some(principals) = &self.principals {
            if !principals.matches(facts.principal()) {
                return Gate::Deny { status: DENIED_STATUS, why: Why::Principal };
            }
        }
        let Some(rule) = public_entry.and_then(|i| self.paths.get(i)).and_then(Option::as_ref) else {
            return Gate::Pass;
        };
        let failed = if rule.source_ranges.as_ref().is_some_and(|r| !facts.client().is_some_and(|ip| r.contains(ip))) {
            Some(Why::Source)
        } else if rule.principals.as_ref().is_some_and(|p| !p.matches(facts.principal())) {
            Some(Why::Principal)
        } else {
            None
        };
        match (failed, rule.otherwise) {
            (None, _) => Gate::Pass,
            (Some(_), Otherwise::Check) => Gate::Protect,
            (Some(why), Otherwise::Deny(status)) => Gate::Deny { status, why },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::plugin_config::Settings;

    /// A host that counts the property reads.
    #[derive(Default)]
    struct MockPeer {
        address: Option<&'static str>,
        principal: Option<&'static str>,
        reads: usize,
    }

    impl Peer for &mut MockPeer {
        fn address(&mut self) -> Option<String> {
            self.reads += 1;
            self.address.map(str::to_string)
        }
        fn principal(&mut self) -> Option<String> {
            self.reads += 1;
            self.principal.map(str::to_string)
        }
    }

    type Headers = Vec<(String, Vec<u8>)>;

    fn settings(fields: &str) -> Settings {
        Settings::from_json(format!(r#"{{"auth": {{"cluster": "a"}}, {fields}}}"#).as_bytes()).unwrap()
    }

    fn gate(s: &Settings, path: &str, peer: &mut MockPeer, xff: Option<&str>) -> Gate {
        let headers: Headers = xff.iter().map(|v| ("x-forwarded-for".to_string(), v.as_bytes().to_vec())).collect();
        let access = s.access.as_ref().unwrap();
        let entry = s.public.find_index(path.as_bytes());
        let mut facts = Facts::new(access, peer, &headers);
        access.gate(entry, &mut facts)
    }

    fn peer(address: &'static str, principal: Option<&'static str>) -> MockPeer {
        MockPeer { address: Some(address), principal, reads: 0 }
    }

    const DENY_SOURCE: Gate = Gate::Deny { status: 403, why: Why::Source };
    const DENY_PRINCIPAL: Gate = Gate::Deny { status: 403, why: Why::Principal };

    #[test]
    fn top_level_source_ranges_deny_outside() {
        let s = settings(r#""source_ranges": ["127.0.0.2/32", "2001:db8::/32"]"#);
        assert_eq!(gate(&s, "/api/flows", &mut peer("127.0.0.2:5000", None), None), Gate::Pass);
        assert_eq!(gate(&s, "/api/flows", &mut peer("127.0.0.3:5000", None), None), DENY_SOURCE);
        assert_eq!(gate(&s, "/api/health", &mut peer("127.0.0.3:5000", None), None), DENY_SOURCE, "public too");
        assert_eq!(gate(&s, "/x", &mut peer("[2001:db8::7]:443", None), None), Gate::Pass);
        assert_eq!(gate(&s, "/x", &mut peer("[::ffff:127.0.0.2]:443", None), None), Gate::Pass, "mapped IPv4");
        let mut unknown = MockPeer::default();
        assert_eq!(gate(&s, "/x", &mut unknown, None), DENY_SOURCE, "no address: denied");
        // A client's X-Forwarded-For is ignored without trusted_proxies.
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.3:1", None), Some("127.0.0.2")), DENY_SOURCE);
    }

    #[test]
    fn trusted_proxies_take_the_client_from_x_forwarded_for() {
        let s = settings(r#""source_ranges": ["203.0.113.0/24"], "trusted_proxies": ["127.0.0.1/32"]"#);
        let behind = |xff| gate(&s, "/x", &mut peer("127.0.0.1:1", None), Some(xff));
        assert_eq!(behind("203.0.113.9"), Gate::Pass);
        assert_eq!(behind("203.0.113.9, 198.51.100.1"), DENY_SOURCE, "a forged left-most entry is not the client");
        assert_eq!(behind("198.51.100.1, 203.0.113.9, 127.0.0.1"), Gate::Pass);
        // The peer is not a trusted proxy: its X-Forwarded-For is never read.
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.2:1", None), Some("203.0.113.9")), DENY_SOURCE);
    }

    #[test]
    fn top_level_principals() {
        let s = settings(r#""principals": ["spiffe://td/ns/prefect/sa/*"]"#);
        let alice = Some("spiffe://td/ns/prefect/sa/alice");
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.1:1", alice), None), Gate::Pass);
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.1:1", Some("spiffe://td/ns/other/sa/a")), None), DENY_PRINCIPAL);
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.1:1", None), None), DENY_PRINCIPAL, "no verified peer");
        let bad = Some("spiffe://td/ns/prefect/sa/a\r\nx-evil: 1");
        assert_eq!(gate(&s, "/x", &mut peer("127.0.0.1:1", bad), None), DENY_PRINCIPAL, "not a header value");
    }

    #[test]
    fn path_rules_make_a_public_path_public_only_from_their_ranges() {
        let s = settings(
            r#""public_paths": ["/api/health",
                 {"path": "/hooks", "source_ranges": ["127.0.0.2/32"]},
                 {"path": "/admin", "principals": ["spiffe://td/sa/admin"], "otherwise": "deny", "deny_status": 404}]"#,
        );
        assert_eq!(gate(&s, "/hooks/x", &mut peer("127.0.0.2:1", None), None), Gate::Pass);
        assert_eq!(gate(&s, "/hooks/x", &mut peer("127.0.0.3:1", None), None), Gate::Protect);
        assert_eq!(gate(&s, "/admin", &mut peer("127.0.0.2:1", Some("spiffe://td/sa/admin")), None), Gate::Pass);
        let other = Some("spiffe://td/sa/other");
        assert_eq!(
            gate(&s, "/admin/users", &mut peer("127.0.0.2:1", other), None),
            Gate::Deny { status: 404, why: Why::Principal }
        );
        // Paths without rules never read a property.
        for path in ["/api/health", "/api/flows", "/hooksx"] {
            let mut p = peer("127.0.0.3:1", None);
            assert_eq!(gate(&s, path, &mut p, None), Gate::Pass, "{path}");
            assert_eq!(p.reads, 0, "{path}: no rule, no property read");
        }
    }

    #[test]
    fn both_rules_must_match_and_facts_are_read_once() {
        let s = settings(
            r#""source_ranges": ["127.0.0.0/8"], "principals": ["*"],
               "public_paths": [{"path": "/hooks", "source_ranges": ["127.0.0.2/32"], "principals": ["spiffe://td/hook"]}]"#,
        );
        let mut p = peer("127.0.0.2:1", Some("spiffe://td/hook"));
        assert_eq!(gate(&s, "/hooks", &mut p, None), Gate::Pass);
        assert_eq!(p.reads, 2, "address and principal, once each");
        assert_eq!(gate(&s, "/hooks", &mut peer("127.0.0.2:1", Some("spiffe://td/other")), None), Gate::Protect);
        assert_eq!(gate(&s, "/hooks", &mut peer("127.0.0.3:1", Some("spiffe://td/hook")), None), Gate::Protect);
    }
}
