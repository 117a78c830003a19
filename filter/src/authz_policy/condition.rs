//! A rule's `when` conditions, on the keys Istio documents for HTTP
//! (pilot/pkg/security/authz/model/model.go) that the filter reads exactly as Envoy's
//! RBAC does. Any other key (`experimental.envoy.filters.*`, `source.serviceAccount`,
//! `source.trustDomain`, a misspelling) is refused at load, naming the field.

use crate::access::cidr::Ranges;
use crate::authz_policy::identity::{claim_matches, Namespace, PeerPrincipal, RequestPrincipal};
use crate::authz_policy::operation::port;
use crate::authz_policy::pattern::{Either, Pattern};
use crate::authz_policy::policy_config::RawCondition;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::source::{non_empty, range};
use crate::error::ConfigError;
use crate::policy::headers::Header;

#[derive(Debug)]
pub enum Condition {
    /// `request.headers[name]` (name lower-case): `HeaderMatcher`, `*` = present.
    Header(String, Either<Pattern>),
    SourceIp(Either<Ranges>),
    RemoteIp(Either<Ranges>),
    DestinationIp(Either<Ranges>),
    DestinationPort(Either<u16>),
    SourceNamespace(Either<Namespace>),
    SourcePrincipal(Either<PeerPrincipal>),
    RequestPrincipal(Either<RequestPrincipal>),
    /// `request.auth.audiences` (`aud`), `.presenter` (`azp`), `.claims[a][b]`.
    Claim(Vec<String>, Either<Pattern>),
    /// `connection.sni`: `StringMatcher`, `*` = non-empty.
    Sni(Either<Pattern>),
}

/// `[a][b]` → `["a", "b"]` (Istio's `extractNameInNestedBrackets`); `None` if malformed.
fn bracketed(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let names: Vec<String> = inner.split("][").map(str::to_string).collect();
    names.iter().all(|n| !n.is_empty() && !n.contains(['[', ']'])).then_some(names)
}

impl Condition {
    /// `field`: `policies[0].rules[1].when[2]`.
    pub fn compile(field: &str, raw: RawCondition) -> Result<Condition, ConfigError> {
        let RawCondition { key, values, not_values } = raw;
        if values.as_ref().is_none_or(Vec::is_empty) && not_values.as_ref().is_none_or(Vec::is_empty) {
            return Err(ConfigError::new(field, "needs values or notValues"));
        }
        let (v, n) = (values.as_deref(), not_values.as_deref());
        let text = |parse: fn(&str) -> Pattern| {
            Either::compile(v, n, move |value, i, not| non_empty(field, value, i, not, "values").map(|()| parse(value)))
        };
        let ranges = || {
            Either::compile(v, n, |value, i, not| {
                range(&format!("{field}.{}[{i}]", if not { "notValues" } else { "values" }), value)
            })
        };
        let string = |value: &str| Pattern::parse(value, false, false);
        Ok(match key.as_str() {
            "source.ip" => Condition::SourceIp(ranges()?),
            "remote.ip" => Condition::RemoteIp(ranges()?),
            "destination.ip" => Condition::DestinationIp(ranges()?),
            "destination.port" => Condition::DestinationPort(Either::compile(v, n, |value, i, not| {
                port(&format!("{field}.{}[{i}]", if not { "notValues" } else { "values" }), value)
            })?),
            "source.namespace" => Condition::SourceNamespace(Either::compile(v, n, |value, i, not| {
                non_empty(field, value, i, not, "values").map(|()| Namespace::parse(value))
            })?),
            "source.principal" => Condition::SourcePrincipal(Either::compile(v, n, |value, i, not| {
                non_empty(field, value, i, not, "values").map(|()| PeerPrincipal::parse(value))
            })?),
            "request.auth.principal" => Condition::RequestPrincipal(Either::compile(v, n, |value, i, not| {
                non_empty(field, value, i, not, "values").map(|()| RequestPrincipal::parse(value))
            })?),
            "request.auth.audiences" => Condition::Claim(vec!["aud".into()], text(string)?),
            "request.auth.presenter" => Condition::Claim(vec!["azp".into()], text(string)?),
            "connection.sni" => Condition::Sni(text(string)?),
            _ => {
                if let Some(path) = key.strip_prefix("request.auth.claims").and_then(bracketed) {
                    Condition::Claim(path, text(string)?)
                } else if let Some(name) =
                    key.strip_prefix("request.headers").and_then(bracketed).filter(|p| p.len() == 1)
                {
                    let name = name.concat().to_ascii_lowercase();
                    Condition::Header(name, text(|value| Pattern::parse(value, false, true))?)
                } else {
                    return Err(ConfigError::new(
                        format!("{field}.key"),
                        format!("{key} cannot be evaluated by the filter"),
                    ));
                }
            }
        })
    }

    // Out of line: inlined, the matchers of every field made `Selection::select` one
    // ~19 KB function that V8 compiles in every sidecar whether or not `policies` is set;
    // a call per rule evaluated is a few instructions.
    #[inline(never)]
    pub fn holds<H: Header, C: Connection>(&self, facts: &mut RequestFacts<H, C>) -> bool {
        match self {
            Condition::Header(name, values) => header_holds(facts, name, values),
            Condition::SourceIp(r) => facts.direct_peer().holds(r),
            Condition::RemoteIp(r) => {
                let ip = facts.connection.remote_ip();
                r.holds(|r| ip.is_some_and(|ip| r.contains(ip)))
            }
            Condition::DestinationIp(r) => {
                let ip = facts.connection.destination_ip();
                r.holds(|r| ip.is_some_and(|ip| r.contains(ip)))
            }
            Condition::DestinationPort(ports) => {
                let port = facts.connection.destination_port();
                ports.holds(|p| port == Some(*p))
            }
            Condition::SourceNamespace(ns) => {
                let san = facts.connection.principal();
                ns.holds(|n| san.is_some_and(|s| n.matches(s)))
            }
            Condition::SourcePrincipal(ps) => {
                let san = facts.connection.principal();
                ps.holds(|p| san.is_some_and(|s| p.matches(s)))
            }
            Condition::RequestPrincipal(ps) => {
                let claims = facts.claims;
                ps.holds(|p| claims.is_some_and(|c| p.matches(c)))
            }
            Condition::Claim(path, values) => {
                let claims = facts.claims;
                values.holds(|p| claims.is_some_and(|c| claim_matches(c, path, p)))
            }
            Condition::Sni(values) => {
                let sni = facts.connection.sni();
                values.holds(|p| sni.is_some_and(|s| p.matches(s)))
            }
        }
    }
}

/// A `request.headers[name]` condition on every value the request carries. Envoy 1.40's
/// RBAC header matcher tests each value of a repeated header on its own (measured:
/// `x-tenant: free` + `x-tenant: gold` matches `gold`, not `free,gold`); older Envoys
/// test the values joined with `,` (`HeaderUtility::getAllOfHeaderAsString`). The check
/// is the safe side: `values` select when either reading matches, `notValues` exclude
/// only when both do. With one value (or none) the two readings are the same.
fn header_holds<H: Header, C: Connection>(facts: &RequestFacts<H, C>, name: &str, values: &Either<Pattern>) -> bool {
    let mut each = facts.header_values(name).peekable();
    let Some(first) = each.next() else {
        return values.holds(|_| false);
    };
    if each.peek().is_none() {
        return values.holds(|p| p.matches_bytes(first));
    }
    let all: Vec<&[u8]> = std::iter::once(first).chain(each).collect();
    let joined = all.join(&b","[..]);
    let selects = values.values.is_empty()
        || values.values.iter().any(|p| p.matches_bytes(&joined) || all.iter().any(|v| p.matches_bytes(v)));
    let excludes = values.not_values.iter().any(|p| p.matches_bytes(&joined))
        && values.not_values.iter().any(|p| all.iter().any(|v| p.matches_bytes(v)));
    selects && !excludes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::net::IpAddr;

    use serde_json::{json, Map, Value};

    use super::*;

    struct Conn;

    impl Connection for Conn {
        fn source_ip(&mut self) -> Option<IpAddr> {
            "10.0.0.7".parse().ok()
        }
        fn remote_ip(&mut self) -> Option<IpAddr> {
            "203.0.113.9".parse().ok()
        }
        fn principal(&mut self) -> Option<&str> {
            Some("spiffe://cluster.local/ns/prefect/sa/web")
        }
        fn destination_ip(&mut self) -> Option<IpAddr> {
            "10.9.0.1".parse().ok()
        }
        fn destination_port(&mut self) -> Option<u16> {
            Some(8080)
        }
        fn sni(&mut self) -> Option<&str> {
            None
        }
    }

    fn holds(condition: Value, claims: Option<&Map<String, Value>>) -> bool {
        let raw = RawCondition::parse("when[0]", &condition).unwrap();
        let condition = Condition::compile("when[0]", raw).unwrap();
        let headers: Vec<(&str, &[u8])> = vec![("x-tenant", b"acme"), ("x-tenant", b"globex")];
        condition.holds(&mut RequestFacts::new(&headers, claims, Conn))
    }

    #[test]
    fn every_key_reads_its_fact() {
        let claims = json!({"iss": "https://idp", "sub": "dave", "aud": ["prefect", "api"], "azp": "cli",
            "groups": ["admins"], "org": {"tier": "gold"}, "n": 7});
        let claims = claims.as_object();
        let cases = [
            (json!({"key": "request.headers[X-Tenant]", "values": ["acme,globex"]}), true),
            // A repeated header (x-tenant: acme, x-tenant: globex): Envoy 1.40's RBAC
            // matches each value on its own, older Envoys the values joined with `,`.
            // Either reading selects; only both together exclude.
            (json!({"key": "request.headers[x-tenant]", "values": ["acme"]}), true),
            (json!({"key": "request.headers[x-tenant]", "values": ["glob*"]}), true),
            (json!({"key": "request.headers[x-tenant]", "values": ["*obex"]}), true),
            (json!({"key": "request.headers[x-tenant]", "values": ["acme,g*"]}), true),
            (json!({"key": "request.headers[x-tenant]", "values": ["initech", "*corp"]}), false),
            (json!({"key": "request.headers[x-tenant]", "notValues": ["ac*"]}), false),
            (json!({"key": "request.headers[x-tenant]", "notValues": ["globex"]}), true),
            (json!({"key": "request.headers[x-tenant]", "notValues": ["acme,globex"]}), true),
            (json!({"key": "request.headers[x-tenant]", "values": ["*"], "notValues": ["*obex"]}), false),
            (json!({"key": "request.headers[x-other]", "notValues": ["*"]}), true),
            (json!({"key": "source.ip", "values": ["10.0.0.0/8"]}), true),
            (json!({"key": "remote.ip", "values": ["10.0.0.0/8"]}), false),
            (json!({"key": "remote.ip", "values": ["203.0.113.0/24"]}), true),
            (json!({"key": "destination.ip", "notValues": ["10.9.0.0/16"]}), false),
            (json!({"key": "destination.port", "values": ["8080"]}), true),
            (json!({"key": "source.namespace", "values": ["pre*"]}), true),
            (json!({"key": "source.principal", "values": ["cluster.local/ns/prefect/*"]}), true),
            (json!({"key": "request.auth.principal", "values": ["https://idp/dave"]}), true),
            (json!({"key": "request.auth.audiences", "values": ["api"]}), true),
            (json!({"key": "request.auth.audiences", "values": ["other"]}), false),
            (json!({"key": "request.auth.presenter", "values": ["cl*"]}), true),
            (json!({"key": "request.auth.claims[groups]", "values": ["admins"]}), true),
            (json!({"key": "request.auth.claims[org][tier]", "values": ["gold"]}), true),
            (json!({"key": "request.auth.claims[n]", "values": ["7"]}), false),
            (json!({"key": "connection.sni", "values": ["*"]}), false),
            (json!({"key": "connection.sni", "notValues": ["*"]}), true),
        ];
        for (condition, expected) in cases {
            assert_eq!(holds(condition.clone(), claims), expected, "{condition}");
        }
        // No verified token: no claim matches, every notValues holds.
        assert!(!holds(json!({"key": "request.auth.claims[iss]", "values": ["*"]}), None));
        assert!(holds(json!({"key": "request.auth.principal", "notValues": ["*"]}), None));
    }
}
