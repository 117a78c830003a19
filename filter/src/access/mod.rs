//! Who may ask at all: the client's address (`source_ranges`, behind
//! `trusted_proxies`) and its verified mTLS identity (`principals`), globally and per
//! public path, so a rule keyed to a path cannot be sidestepped by spelling the path
//! differently. Both sides of a per-path rule hold for every spelling: the path is
//! public (the allow side) only in its canonical form, the public-path match; and a
//! client the rule does not admit gets its `otherwise: deny` whenever any
//! interpretation of the path ([`interpretations`]) falls under it.
//!
//! Pure: the host hands over what it knows through [`Peer`], read lazily, so a rule
//! that does not need the address or the certificate never asks for it.

pub mod access_config;
pub mod cidr;
pub mod client;
pub mod interpretations;
pub mod principal;

use std::net::IpAddr;

use crate::access::cidr::Ranges;
use crate::access::interpretations::{interpretations, Interpretations};
use crate::access::principal::Principals;
use crate::policy::headers::Header;
use crate::policy::route::{PathMatch, PublicPaths};

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
    /// Whether a rule of `paths` is `otherwise: deny`: only then is a non-canonical
    /// path read every way a parser could read it.
    pub deny_rules: bool,
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
    /// The rules for a request: `target` is its `:path`, `matched` where it stands
    /// against `public` (the request's public paths, [`PublicPaths::classify`]).
    pub fn gate<P: Peer, H: Header>(
        &self,
        public: &PublicPaths,
        matched: PathMatch,
        target: &[u8],
        facts: &mut Facts<P, H>,
    ) -> Gate {
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
        match matched {
            PathMatch::Public(entry) => {
                let Some(rule) = self.rule(entry) else { return Gate::Pass };
                match (rule.refuses(facts), rule.otherwise) {
                    (None, _) => Gate::Pass,
                    (Some(_), Otherwise::Check) => Gate::Protect,
                    (Some(why), Otherwise::Deny(status)) => Gate::Deny { status, why },
                }
            }
            // The one interpretation of a canonical path is itself, which matched nothing.
            PathMatch::Protected => Gate::Pass,
            PathMatch::NotCanonical if self.deny_rules => self.deny_any_interpretation(public, target, facts),
            // A non-canonical path is checked: what `otherwise: check` would do.
            PathMatch::NotCanonical => Gate::Pass,
        }
    }

    fn rule(&self, entry: usize) -> Option<&PathRule> {
        self.paths.get(entry).and_then(Option::as_ref)
    }

    /// The deny side for a non-canonical path: the first `otherwise: deny` rule that
    /// does not admit the client and covers an interpretation of `target` (the entry
    /// the public-path match picks for it, the most specific template, as for a
    /// canonical path). Past the work limit, every deny rule covers it (fail closed).
    fn deny_any_interpretation<P: Peer, H: Header>(
        &self,
        public: &PublicPaths,
        target: &[u8],
        facts: &mut Facts<P, H>,
    ) -> Gate {
        let deny = |rule: &PathRule, facts: &mut Facts<P, H>| match rule.otherwise {
            Otherwise::Deny(status) => rule.refuses(facts).map(|why| Gate::Deny { status, why }),
            Otherwise::Check => None,
        };
        match interpretations(target) {
            Interpretations::Paths(paths) => {
                for path in &paths {
                    if let Some(gate) = public.template_of(path).and_then(|i| self.rule(i)).and_then(|r| deny(r, facts))
                    {
                        return gate;
                    }
                }
            }
            Interpretations::TooMany => {
                if let Some(gate) = self.paths.iter().flatten().find_map(|r| deny(r, facts)) {
                    return gate;
                }
            }
        }
        Gate::Pass
    }
}

impl PathRule {
    /// Which of the rule's conditions the client fails, if any (each fact read lazily).
    pub fn refuses<P: Peer, H: Header>(&self, facts: &mut Facts<P, H>) -> Option<Why> {
        if self.source_ranges.as_ref().is_some_and(|r| !facts.client().is_some_and(|ip| r.contains(ip))) {
            Some(Why::Source)
        } else if self.principals.as_ref().is_some_and(|p| !p.matches(facts.principal())) {
            Some(Why::Principal)
        } else {
            None
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
        let mut facts = Facts::new(access, peer, &headers);
        access.gate(&s.public, s.public.classify(path.as_bytes()), path.as_bytes(), &mut facts)
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

    /// `/internal` denied outside 127.0.0.2 and without the admin identity, `/hooks`
    /// checked outside its range, `/internal/open` public from anywhere.
    fn deny_rules() -> Settings {
        settings(
            r#""public_paths": ["/api/health", "/internal/open",
                 {"path": "/hooks", "source_ranges": ["127.0.0.2/32"]},
                 {"path": "/internal", "source_ranges": ["127.0.0.2/32"], "otherwise": "deny", "deny_status": 404},
                 {"path": "/admin", "principals": ["spiffe://td/sa/admin"], "otherwise": "deny"}]"#,
        )
    }

    const DENY_404: Gate = Gate::Deny { status: 404, why: Why::Source };

    #[test]
    fn a_deny_rule_holds_for_every_spelling_of_its_path() {
        let s = deny_rules();
        assert!(s.access.as_ref().unwrap().deny_rules);
        for path in [
            "/internal/metrics",
            "//internal/metrics",
            "/internal/./metrics",
            "/x/../internal/metrics",
            "/%69nternal/metrics",
            "/internal%2fmetrics",
            "/internal;v=1/metrics",
            "/internal\\metrics",
            "/%2569nternal/metrics",
            "/x/%c0%ae%c0%ae/internal",
            "/internal/../x",
            "/internal#/../x",
            "http://h/internal",
        ] {
            assert_eq!(gate(&s, path, &mut peer("127.0.0.3:1", None), None), DENY_404, "{path} from outside");
            // From inside: public when canonical, else checked; never denied.
            assert_eq!(gate(&s, path, &mut peer("127.0.0.2:1", None), None), Gate::Pass, "{path} from inside");
        }
        let admin = Some("spiffe://td/sa/admin");
        for path in ["/admin", "//admin/users", "/%61dmin", "/x/..;/admin"] {
            let deny = Gate::Deny { status: 403, why: Why::Principal };
            assert_eq!(gate(&s, path, &mut peer("127.0.0.3:1", None), None), deny, "{path} without the identity");
            assert_eq!(gate(&s, path, &mut peer("127.0.0.3:1", admin), None), Gate::Pass, "{path} as admin");
        }
    }

    #[test]
    fn the_deny_side_follows_the_most_specific_template_and_reads_nothing_it_need_not() {
        let s = deny_rules();
        // Under /internal/open (public from anywhere), not under the /internal rule.
        for path in ["/internal/open/x", "//internal/open/x", "/x/../internal/open/y"] {
            let mut p = peer("127.0.0.3:1", None);
            assert_eq!(gate(&s, path, &mut p, None), Gate::Pass, "{path}");
            assert_eq!(p.reads, 0, "{path}: no deny rule covers it, no property read");
        }
        // A `check` rule keeps its rule: a non-canonical form is checked, never denied.
        for path in ["//hooks/x", "/hooks/../api/flows", "/api/health/../flows", "/%2e%2e/api/flows"] {
            let mut p = peer("127.0.0.3:1", None);
            assert_eq!(gate(&s, path, &mut p, None), Gate::Pass, "{path}");
            assert_eq!(p.reads, 0, "{path}");
        }
        // Without any deny rule a non-canonical path is not even read.
        let check_only = settings(r#""public_paths": [{"path": "/internal", "source_ranges": ["127.0.0.2/32"]}]"#);
        assert!(!check_only.access.as_ref().unwrap().deny_rules);
        assert_eq!(gate(&check_only, "//internal", &mut peer("127.0.0.3:1", None), None), Gate::Pass);
    }

    #[test]
    fn past_the_work_limit_every_deny_rule_applies() {
        let s = deny_rules();
        let huge = format!("/api/flows/{}", "%41".repeat(interpretations::WORK_LIMIT));
        assert_eq!(gate(&s, &huge, &mut peer("127.0.0.3:1", None), None), DENY_404);
        let admin = Some("spiffe://td/sa/admin");
        assert_eq!(gate(&s, &huge, &mut peer("127.0.0.2:1", admin), None), Gate::Pass, "admitted by every rule");
    }

    /// tests/data/paths.tsv against deny rules on the paths it attacks: from outside, a
    /// row is denied exactly when a parser model maps it under a rule; from inside never.
    #[test]
    fn the_path_table_against_deny_rules() {
        let s = settings(
            r#""public_paths": ["/auth", "/api/docs", "/api/openapi.json", "/api/version",
                 {"path": "/api/health", "source_ranges": ["127.0.0.2/32"], "otherwise": "deny", "deny_status": 404},
                 {"path": "/hooks", "source_ranges": ["127.0.0.2/32"], "otherwise": "deny", "deny_status": 404},
                 "/{prefix}/task_runs/subscriptions/scheduled", "/{prefix}/events/out"]"#,
        );
        let table = include_str!("../../../tests/data/paths.tsv");
        let mut denied = 0;
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let target = crate::policy::route::table_target(line.split('\t').nth(1).unwrap());
            let path = String::from_utf8_lossy(&target).into_owned();
            let under = models(&target).iter().any(|p| ["/api/health", "/hooks"].iter().any(|t| below(p, t)));
            let outside = gate_bytes(&s, &target, &mut peer("127.0.0.3:1", None));
            assert_eq!(gate_bytes(&s, &target, &mut peer("127.0.0.2:1", None)), Gate::Pass, "{path:?} from inside");
            if under {
                assert_eq!(outside, DENY_404, "{path:?} from outside: a parser reads it under a deny rule");
                denied += 1;
            } else if outside != Gate::Pass {
                // Denied by an interpretation beyond the models: it must name a rule's path.
                let Interpretations::Paths(all) = interpretations(&target) else { panic!("{path:?}") };
                assert!(all.iter().any(|p| below(p, "/api/health") || below(p, "/hooks")), "{path:?}: {all:?}");
            }
        }
        assert!(denied >= 25, "the table attacks both paths: {denied} rows denied");
    }

    fn gate_bytes(s: &Settings, target: &[u8], peer: &mut MockPeer) -> Gate {
        let headers: Headers = Vec::new();
        let access = s.access.as_ref().unwrap();
        let mut facts = Facts::new(access, peer, &headers);
        access.gate(&s.public, s.public.classify(target), target, &mut facts)
    }

    /// `path` is `template` or below it (a segment boundary).
    fn below(path: &str, template: &str) -> bool {
        path.strip_prefix(template).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Parsers behind a proxy, written out plainly (each one path per target): uvicorn
    /// and Starlette (decoded once, dot segments kept), nginx (decoded, merged,
    /// resolved), Tomcat (parameters dropped, decoded, resolved), IIS (decoded twice,
    /// overlong UTF-8, `\` a separator, resolved), a C backend (cut at NUL, resolved).
    fn models(target: &[u8]) -> Vec<String> {
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let decode = |p: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < p.len() {
                let hex = p.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()).filter(|_| p[i] == b'%') {
                    Some(b) => (out.push(b), i += 3),
                    None => (out.push(p[i]), i += 1),
                };
            }
            out
        };
        let overlong = |p: Vec<u8>| -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < p.len() {
                if p[i] == 0xC0 && p.get(i + 1) == Some(&0xAE) {
                    out.push(b'.');
                    i += 2;
                } else {
                    out.push(p[i]);
                    i += 1;
                }
            }
            out
        };
        let segments = |p: &[u8], resolve: bool| -> String {
            let text = String::from_utf8_lossy(p).into_owned();
            let mut kept: Vec<&str> = Vec::new();
            for segment in text.split('/').filter(|s| !s.is_empty()) {
                match segment {
                    ".." if resolve => drop(kept.pop()),
                    "." if resolve => {}
                    _ => kept.push(segment),
                }
            }
            format!("/{}", kept.join("/"))
        };
        let params = |p: &[u8]| -> Vec<u8> {
            let text = String::from_utf8_lossy(p).into_owned();
            text.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/").into_bytes()
        };
        let backslash = |p: Vec<u8>| -> Vec<u8> { p.into_iter().map(|b| if b == b'\\' { b'/' } else { b }).collect() };
        let c_string = |p: Vec<u8>| -> Vec<u8> { p.split(|&b| b == 0).next().unwrap_or_default().to_vec() };
        vec![
            segments(&decode(path), false),
            segments(&decode(path), true),
            segments(&decode(&params(path)), true),
            segments(&backslash(overlong(decode(&decode(path)))), true),
            segments(&c_string(decode(path)), true),
        ]
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
