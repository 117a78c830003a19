//! One rule of a policy: it matches when any of its `from` sources, any of its `to`
//! operations and all of its `when` conditions hold; a list left out holds, so the
//! empty rule `{}` matches every request (Istio's `permissionAny`/`principalAny`).

use crate::authz_policy::condition::Condition;
use crate::authz_policy::operation::Operation;
use crate::authz_policy::policy_config::RawRule;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::source::Source;
use crate::error::ConfigError;
use crate::policy::headers::Header;

#[derive(Debug)]
pub struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

impl Rule {
    /// `field`: `policies[0].rules[1]`.
    pub fn compile(field: &str, raw: RawRule) -> Result<Rule, ConfigError> {
        let mut rule = Rule { from: Vec::new(), to: Vec::new(), when: Vec::new() };
        for (i, from) in raw.from.unwrap_or_default().into_iter().enumerate() {
            rule.from.push(Source::compile(&format!("{field}.from[{i}].source"), from.source.unwrap_or_default())?);
        }
        for (i, to) in raw.to.unwrap_or_default().into_iter().enumerate() {
            let operation = to.operation.unwrap_or_default();
            rule.to.push(Operation::compile(&format!("{field}.to[{i}].operation"), operation)?);
        }
        for (i, when) in raw.when.unwrap_or_default().into_iter().enumerate() {
            rule.when.push(Condition::compile(&format!("{field}.when[{i}]"), when)?);
        }
        Ok(rule)
    }

    pub fn reads_remote_ip(&self) -> bool {
        self.from.iter().any(Source::reads_remote_ip) || self.when.iter().any(|c| matches!(c, Condition::RemoteIp(_)))
    }

    /// Cheapest first: the operation (headers, one property), then the conditions, then
    /// the sources (certificate and address properties).
    pub fn matches<H: Header, C: Connection>(&self, facts: &mut RequestFacts<H, C>) -> bool {
        (self.to.is_empty() || self.to.iter().any(|o| o.matches(facts)))
            && self.when.iter().all(|c| c.holds(facts))
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(facts)))
    }
}
