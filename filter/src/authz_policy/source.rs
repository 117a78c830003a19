//! A rule's `from[].source`: who sent the request. Every present field must hold
//! (pilot/pkg/security/authz/model/model.go ANDs them); within one, any value and no
//! `not` value.

use crate::access::cidr::Ranges;
use crate::authz_policy::identity::{Namespace, PeerPrincipal, RequestPrincipal};
use crate::authz_policy::pattern::Either;
use crate::authz_policy::policy_config::RawSource;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::error::ConfigError;
use crate::policy::headers::Header;

#[derive(Debug, Default)]
pub struct Source {
    principals: Either<PeerPrincipal>,
    request_principals: Either<RequestPrincipal>,
    namespaces: Either<Namespace>,
    ip_blocks: Either<Ranges>,
    remote_ip_blocks: Either<Ranges>,
}

/// A value list's entries must be non-empty (Istio's `CheckEmptyValues`).
pub fn non_empty(field: &str, value: &str, i: usize, not: bool, name: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(format!("{field}.{}[{i}]", not_name(name, not)), "is empty"));
    }
    Ok(())
}

/// A CIDR list entry (`ipBlocks`, `source.ip`...): an address or a range.
pub fn range(field: &str, value: &str) -> Result<Ranges, ConfigError> {
    Ranges::parse(std::slice::from_ref(&value.to_string())).map_err(|(_, message)| ConfigError::new(field, message))
}

pub fn not_name(name: &str, not: bool) -> String {
    if not {
        format!("not{}{}", name[..1].to_ascii_uppercase(), &name[1..])
    } else {
        name.to_string()
    }
}

impl Source {
    /// `field`: `policies[0].rules[1].from[0].source`.
    pub fn compile(field: &str, raw: RawSource) -> Result<Source, ConfigError> {
        let check = |name: &'static str| move |v: &str, i: usize, not: bool| non_empty(field, v, i, not, name);
        Ok(Source {
            principals: Either::compile(raw.principals.as_deref(), raw.not_principals.as_deref(), |v, i, not| {
                check("principals")(v, i, not).map(|()| PeerPrincipal::parse(v))
            })?,
            request_principals: Either::compile(
                raw.request_principals.as_deref(),
                raw.not_request_principals.as_deref(),
                |v, i, not| check("requestPrincipals")(v, i, not).map(|()| RequestPrincipal::parse(v)),
            )?,
            namespaces: Either::compile(raw.namespaces.as_deref(), raw.not_namespaces.as_deref(), |v, i, not| {
                check("namespaces")(v, i, not).map(|()| Namespace::parse(v))
            })?,
            ip_blocks: Either::compile(raw.ip_blocks.as_deref(), raw.not_ip_blocks.as_deref(), |v, i, not| {
                range(&format!("{field}.{}[{i}]", not_name("ipBlocks", not)), v)
            })?,
            remote_ip_blocks: Either::compile(
                raw.remote_ip_blocks.as_deref(),
                raw.not_remote_ip_blocks.as_deref(),
                |v, i, not| range(&format!("{field}.{}[{i}]", not_name("remoteIpBlocks", not)), v),
            )?,
        })
    }

    pub fn reads_remote_ip(&self) -> bool {
        !self.remote_ip_blocks.is_empty()
    }

    /// Whether every present field holds; facts are read only for present fields.
    // Out of line: inlined, the matchers of every field made `Selection::select` one
    // ~19 KB function that V8 compiles in every sidecar whether or not `policies` is set;
    // a call per rule evaluated is a few instructions.
    #[inline(never)]
    pub fn matches<H: Header, C: Connection>(&self, facts: &mut RequestFacts<H, C>) -> bool {
        if !self.ip_blocks.is_empty() && !facts.direct_peer().holds(&self.ip_blocks) {
            return false;
        }
        if !self.remote_ip_blocks.is_empty() {
            let ip = facts.connection.remote_ip();
            if !self.remote_ip_blocks.holds(|r| ip.is_some_and(|ip| r.contains(ip))) {
                return false;
            }
        }
        if !self.principals.is_empty() || !self.namespaces.is_empty() {
            let san = facts.connection.principal();
            if !self.principals.holds(|p| san.is_some_and(|s| p.matches(s))) {
                return false;
            }
            if !self.namespaces.holds(|n| san.is_some_and(|s| n.matches(s))) {
                return false;
            }
        }
        if !self.request_principals.is_empty() {
            let claims = facts.claims;
            if !self.request_principals.holds(|p| claims.is_some_and(|c| p.matches(c))) {
                return false;
            }
        }
        true
    }
}
