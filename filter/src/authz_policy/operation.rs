//! A rule's `to[].operation`: what the request asks for. Every present field must hold;
//! within one, any value and no `not` value. `paths` and `hosts` match two-sided: a
//! value selects the request when any spelling of its path or host matches
//! (request_facts.rs), `not` values exclude it only in its canonical form and only when
//! they exclude every reading of it (`/a/` is also `/a`, `a.com:80` also `a.com`), so
//! no spelling moves a request out of a check.

use crate::authz_policy::istio_path::PathPattern;
use crate::authz_policy::pattern::{Either, Pattern};
use crate::authz_policy::policy_config::RawOperation;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::source::{non_empty, not_name};
use crate::error::ConfigError;
use crate::policy::headers::Header;

#[derive(Debug, Default)]
pub struct Operation {
    /// Case-insensitive on `:authority` (Istio's `HostMatcher`), compiled lower-case.
    hosts: Either<Pattern>,
    /// On `destination.port`.
    ports: Either<u16>,
    /// On `:method`, case-sensitive (Istio's `HeaderMatcher`).
    methods: Either<Pattern>,
    paths: Either<PathPattern>,
}

/// A port (`ports`, `destination.port`): decimal, 0 to 65535 (Istio's `ValidatePorts`).
pub fn port(field: &str, value: &str) -> Result<u16, ConfigError> {
    value
        .parse::<u16>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::new(field, format!("{value:?} is not a port (0 to 65535)")))
}

impl Operation {
    /// `field`: `policies[0].rules[1].to[0].operation`.
    pub fn compile(field: &str, raw: RawOperation) -> Result<Operation, ConfigError> {
        Ok(Operation {
            hosts: Either::compile(raw.hosts.as_deref(), raw.not_hosts.as_deref(), |v, i, not| {
                non_empty(field, v, i, not, "hosts").map(|()| Pattern::parse(v, true, true))
            })?,
            ports: Either::compile(raw.ports.as_deref(), raw.not_ports.as_deref(), |v, i, not| {
                port(&format!("{field}.{}[{i}]", not_name("ports", not)), v)
            })?,
            methods: Either::compile(raw.methods.as_deref(), raw.not_methods.as_deref(), |v, i, not| {
                non_empty(field, v, i, not, "methods").map(|()| Pattern::parse(v, false, true))
            })?,
            paths: Either::compile(raw.paths.as_deref(), raw.not_paths.as_deref(), |v, i, not| {
                PathPattern::parse(v)
                    .map_err(|m| ConfigError::new(format!("{field}.{}[{i}]", not_name("paths", not)), m))
            })?,
        })
    }

    // Out of line: inlined, the matchers of every field made `Selection::select` one
    // ~19 KB function that V8 compiles in every sidecar whether or not `policies` is set;
    // a call per rule evaluated is a few instructions.
    #[inline(never)]
    pub fn matches<H: Header, C: Connection>(&self, facts: &mut RequestFacts<H, C>) -> bool {
        if !self.methods.is_empty() {
            let method = facts.pseudo(":method");
            if !self.methods.holds(|p| method.is_some_and(|m| p.matches(m))) {
                return false;
            }
        }
        if !self.ports.is_empty() {
            let port = facts.connection.destination_port();
            if !self.ports.holds(|p| port == Some(*p)) {
                return false;
            }
        }
        if !self.hosts.is_empty() {
            // Istio matches `:authority`; with none, no value matches (and no `not` value).
            let present = facts.pseudo(":authority").is_some();
            let hosts = facts.hosts();
            let selected = self.hosts.values.is_empty()
                || (present && self.hosts.values.iter().any(|p| hosts.all.iter().any(|h| p.matches(h))));
            let excluded = hosts.canonical.is_some()
                && hosts.all.iter().all(|h| self.hosts.not_values.iter().any(|p| p.matches(h)));
            if !selected || excluded {
                return false;
            }
        }
        if !self.paths.is_empty() {
            let paths = facts.paths();
            let selected = self.paths.values.is_empty()
                || paths.too_many
                || self.paths.values.iter().any(|p| paths.all.iter().any(|path| p.matches(path)));
            let excluded = paths.canonical.is_some()
                && paths.all.iter().all(|path| self.paths.not_values.iter().any(|p| p.matches(path)));
            if !selected || excluded {
                return false;
            }
        }
        true
    }
}
