//! Istio's `CUSTOM` AuthorizationPolicy rules, enforced by the filter: which requests a
//! provider (the `auth` block, or one of `providers`) checks. A request is checked by a
//! provider when it matches any rule of any policy naming that provider; a request that
//! matches none goes upstream unchecked (identity headers are stripped all the same).
//!
//! Pure: the rules read the request through [`RequestFacts`], whose connection facts
//! the host side reads lazily (flow/steps/select.rs). Matching follows Istio's rendering
//! for Envoy's RBAC (pilot/pkg/security/authz/model and matcher), field by field in
//! each file; paths and hosts match two-sided (operation.rs).

pub mod condition;
pub mod identity;
pub mod istio_path;
pub mod operation;
pub mod pattern;
pub mod policy_config;
pub mod request_facts;
pub mod rule;
pub mod source;

use crate::authz_policy::policy_config::policies;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::rule::Rule;
use crate::error::ConfigError;
use crate::policy::headers::Header;

/// At most this many providers: a request's providers are one bit each.
pub const MAX_PROVIDERS: usize = 64;

/// One compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub name: Option<String>,
    /// Index into the configuration's providers.
    pub provider: usize,
    pub rules: Vec<Rule>,
}

/// The compiled `policies`.
#[derive(Debug)]
pub struct Selection {
    pub policies: Vec<Policy>,
}

/// The providers that must check a request: bit `i` for provider `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selected(pub u64);

impl Selected {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, provider: usize) -> bool {
        provider < MAX_PROVIDERS && self.0 & (1 << provider) != 0
    }

    /// The selected providers, in the order of `providers`.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_PROVIDERS).filter(move |&i| self.contains(i))
    }
}

impl Selection {
    /// `providers`: the provider names, in order (`["auth"]` for the `auth` block).
    /// `raw`: the `policies` list as JSON ([`policies`] reads it).
    pub fn compile(raw: &[serde_json::Value], providers: &[String]) -> Result<Selection, ConfigError> {
        let raw = policies("policies", raw)?;
        let mut policies = Vec::with_capacity(raw.len());
        for (i, policy) in raw.into_iter().enumerate() {
            let field = format!("policies[{i}]");
            let provider = match (&policy.provider, providers) {
                (None, [_]) => 0,
                (None, _) => {
                    return Err(ConfigError::new(
                        format!("{field}.provider"),
                        "is required with several providers: name one of providers[].name",
                    ))
                }
                (Some(name), _) => providers.iter().position(|p| p == name).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.provider"),
                        format!("{name:?} is not a provider (providers: {})", providers.join(", ")),
                    )
                })?,
            };
            let mut rules = Vec::new();
            for (j, rule) in policy.rules.unwrap_or_default().into_iter().enumerate() {
                rules.push(Rule::compile(&format!("{field}.rules[{j}]"), rule)?);
            }
            policies.push(Policy { name: policy.name, provider, rules });
        }
        Ok(Selection { policies })
    }

    /// Whether a rule reads the client address behind `trusted_proxies`.
    pub fn reads_remote_ip(&self) -> bool {
        self.policies.iter().flat_map(|p| &p.rules).any(Rule::reads_remote_ip)
    }

    /// The providers whose policies select this request. A provider already selected is
    /// not matched again; a policy without rules selects nothing.
    pub fn select<H: Header, C: Connection>(&self, facts: &mut RequestFacts<H, C>) -> Selected {
        let mut selected = Selected::default();
        for policy in &self.policies {
            if selected.contains(policy.provider) {
                continue;
            }
            if policy.rules.iter().any(|rule| rule.matches(facts)) {
                selected.0 |= 1 << policy.provider;
            }
        }
        selected
    }
}

#[cfg(test)]
mod model_tests;
