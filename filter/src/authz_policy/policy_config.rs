//! The `providers` and `policies` blocks as users write them: `policies[].rules` is
//! Istio's AuthorizationPolicy `rules` JSON verbatim (camelCase, as `kubectl get -o
//! json` prints it), so a rule is copied as it is. Unknown fields are refused, naming
//! them: a field this filter does not evaluate (`serviceAccounts`, `trustDomains`) must
//! not be silently dropped from a rule that selects requests for a check.
//!
//! Read from the parsed JSON by hand rather than by serde derives: seven structs of
//! optional string lists cost ~50 KB of module as derived, path-tracking visitors, and
//! the walk below names every field of an error the same way. The derives exist in
//! tests only, for the check of docs/configuration.md against the fields
//! (`plugin_config/docs_reference.rs`) and of this walk against them.

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// One CUSTOM policy: the provider that checks what its rules select.
#[derive(Debug)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct RawPolicy {
    /// For the log lines (`namespace/name`).
    pub name: Option<String>,
    /// A `providers[].name`; may be left out when there is one provider.
    pub provider: Option<String>,
    /// No rules: the policy selects nothing (Istio renders it as a never-matching policy).
    pub rules: Option<Vec<RawRule>>,
}

#[derive(Debug)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct RawRule {
    pub from: Option<Vec<RawFrom>>,
    pub to: Option<Vec<RawTo>>,
    pub when: Option<Vec<RawCondition>>,
}

#[derive(Debug)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct RawFrom {
    pub source: Option<RawSource>,
}

#[derive(Debug)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct RawTo {
    pub operation: Option<RawOperation>,
}

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields, rename_all = "camelCase"))]
pub struct RawSource {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields, rename_all = "camelCase"))]
pub struct RawOperation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields, rename_all = "camelCase"))]
pub struct RawCondition {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub not_values: Option<Vec<String>>,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &str, got: &Value) -> ConfigError {
    ConfigError::new(field, format!("expected {expected}, got {}", kind(got)))
}

/// An object whose keys are all in `known`, with a getter for each known field (`null`
/// reads as absent, as serde's `Option` does).
struct Fields<'v> {
    field: &'v str,
    map: &'v Map<String, Value>,
}

impl<'v> Fields<'v> {
    fn new(field: &'v str, value: &'v Value, known: &[&str]) -> Result<Fields<'v>, ConfigError> {
        let Value::Object(map) = value else { return Err(wrong(field, "a JSON object", value)) };
        if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::new(
                format!("{field}.{key}"),
                format!("unknown field `{key}`, expected one of {}", known.join(", ")),
            ));
        }
        Ok(Fields { field, map })
    }

    fn get(&self, key: &str) -> Option<(String, &'v Value)> {
        self.map.get(key).filter(|v| !v.is_null()).map(|v| (format!("{}.{key}", self.field), v))
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|(field, v)| v.as_str().map(str::to_string).ok_or_else(|| wrong(&field, "a string", v)))
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.list(key, |field, v| v.as_str().map(str::to_string).ok_or_else(|| wrong(field, "a string", v)))
    }

    fn list<T>(
        &self,
        key: &str,
        mut item: impl FnMut(&str, &'v Value) -> Result<T, ConfigError>,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        let Some((field, value)) = self.get(key) else { return Ok(None) };
        let Value::Array(items) = value else { return Err(wrong(&field, "a list", value)) };
        // A loop, not `collect::<Result<..>>`: its adapter costs a few KB per item type.
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            out.push(item(&format!("{field}[{i}]"), v)?);
        }
        Ok(Some(out))
    }
}

/// `policies`, as the plugin configuration holds it (`field`: `policies`).
pub fn policies(field: &str, value: &[Value]) -> Result<Vec<RawPolicy>, ConfigError> {
    let mut out = Vec::with_capacity(value.len());
    for (i, v) in value.iter().enumerate() {
        out.push(RawPolicy::parse(&format!("{field}[{i}]"), v)?);
    }
    Ok(out)
}

impl RawPolicy {
    pub fn parse(field: &str, value: &Value) -> Result<RawPolicy, ConfigError> {
        let f = Fields::new(field, value, &["name", "provider", "rules"])?;
        Ok(RawPolicy {
            name: f.string("name")?,
            provider: f.string("provider")?,
            rules: f.list("rules", RawRule::parse)?,
        })
    }
}

impl RawRule {
    pub fn parse(field: &str, value: &Value) -> Result<RawRule, ConfigError> {
        let f = Fields::new(field, value, &["from", "to", "when"])?;
        Ok(RawRule {
            from: f.list("from", |field, v| {
                let f = Fields::new(field, v, &["source"])?;
                Ok(RawFrom { source: f.get("source").map(|(field, v)| RawSource::parse(&field, v)).transpose()? })
            })?,
            to: f.list("to", |field, v| {
                let f = Fields::new(field, v, &["operation"])?;
                Ok(RawTo {
                    operation: f.get("operation").map(|(field, v)| RawOperation::parse(&field, v)).transpose()?,
                })
            })?,
            when: f.list("when", RawCondition::parse)?,
        })
    }
}

impl RawSource {
    fn parse(field: &str, value: &Value) -> Result<RawSource, ConfigError> {
        let f = Fields::new(
            field,
            value,
            &[
                "principals",
                "notPrincipals",
                "requestPrincipals",
                "notRequestPrincipals",
                "namespaces",
                "notNamespaces",
                "ipBlocks",
                "notIpBlocks",
                "remoteIpBlocks",
                "notRemoteIpBlocks",
            ],
        )?;
        Ok(RawSource {
            principals: f.strings("principals")?,
            not_principals: f.strings("notPrincipals")?,
            request_principals: f.strings("requestPrincipals")?,
            not_request_principals: f.strings("notRequestPrincipals")?,
            namespaces: f.strings("namespaces")?,
            not_namespaces: f.strings("notNamespaces")?,
            ip_blocks: f.strings("ipBlocks")?,
            not_ip_blocks: f.strings("notIpBlocks")?,
            remote_ip_blocks: f.strings("remoteIpBlocks")?,
            not_remote_ip_blocks: f.strings("notRemoteIpBlocks")?,
        })
    }
}

impl RawOperation {
    fn parse(field: &str, value: &Value) -> Result<RawOperation, ConfigError> {
        let f = Fields::new(
            field,
            value,
            &["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"],
        )?;
        Ok(RawOperation {
            hosts: f.strings("hosts")?,
            not_hosts: f.strings("notHosts")?,
            ports: f.strings("ports")?,
            not_ports: f.strings("notPorts")?,
            methods: f.strings("methods")?,
            not_methods: f.strings("notMethods")?,
            paths: f.strings("paths")?,
            not_paths: f.strings("notPaths")?,
        })
    }
}

impl RawCondition {
    pub fn parse(field: &str, value: &Value) -> Result<RawCondition, ConfigError> {
        let f = Fields::new(field, value, &["key", "values", "notValues"])?;
        let key = f.string("key")?.ok_or_else(|| ConfigError::new(format!("{field}.key"), "missing"))?;
        Ok(RawCondition { key, values: f.strings("values")?, not_values: f.strings("notValues")? })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde_json::json;

    use super::*;

    #[test]
    fn every_error_names_its_field() {
        let cases = [
            (
                json!({"rules": [{"from": [{"source": {"serviceAccounts": ["a"]}}]}]}),
                "p.rules[0].from[0].source.serviceAccounts: unknown field `serviceAccounts`",
            ),
            (
                json!({"rules": [{}, {"to": [{"operation": {"paths": "/x"}}]}]}),
                "p.rules[1].to[0].operation.paths: expected a list, got a string",
            ),
            (
                json!({"rules": [{"to": [{"operation": {"ports": [80]}}]}]}),
                "p.rules[0].to[0].operation.ports[0]: expected a string, got a number",
            ),
            (json!({"rules": [{"when": [{"values": ["x"]}]}]}), "p.rules[0].when[0].key: missing"),
            (json!({"rules": [{"when": [{"key": "a", "valuez": ["x"]}]}]}), "p.rules[0].when[0].valuez: unknown field"),
            (json!({"rules": ["x"]}), "p.rules[0]: expected a JSON object, got a string"),
            (json!({"name": 1}), "p.name: expected a string, got a number"),
            (json!({"rules": {}}), "p.rules: expected a list, got an object"),
        ];
        for (value, expected) in cases {
            let err = RawPolicy::parse("p", &value).err().unwrap_or_else(|| panic!("accepted: {value}")).to_string();
            assert!(err.contains(expected), "{value}\n  got: {err}\n want: {expected}");
        }
    }

    #[test]
    fn null_is_absent_and_every_field_is_read() {
        let every = json!({"name": "ns/n", "provider": null, "rules": [{"from": [{"source": {
                "principals": ["a"], "notPrincipals": ["b"], "requestPrincipals": ["c"], "notRequestPrincipals": ["d"],
                "namespaces": ["e"], "notNamespaces": ["f"], "ipBlocks": ["g"], "notIpBlocks": ["h"],
                "remoteIpBlocks": ["i"], "notRemoteIpBlocks": ["j"]}}],
                "to": [{"operation": {"hosts": ["k"], "notHosts": ["l"], "ports": ["m"], "notPorts": ["n"],
                "methods": ["o"], "notMethods": ["p"], "paths": ["q"], "notPaths": ["r"]}}, {"operation": null}],
                "when": [{"key": "s", "values": ["t"], "notValues": null}]}]});
        // The serde shape (tests only) takes the same document: the walk knows no field
        // it lacks, and docs/configuration.md is checked against it.
        let _: RawPolicy = serde_json::from_value(every.clone()).unwrap();
        let p = RawPolicy::parse("p", &every).unwrap();
        assert_eq!((p.name.as_deref(), p.provider.as_deref()), (Some("ns/n"), None));
        let rule = &p.rules.as_ref().unwrap()[0];
        let s = rule.from.as_ref().unwrap()[0].source.as_ref().unwrap();
        let got: Vec<&str> = [
            &s.principals,
            &s.not_principals,
            &s.request_principals,
            &s.not_request_principals,
            &s.namespaces,
            &s.not_namespaces,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        ]
        .iter()
        .map(|v| v.as_ref().unwrap()[0].as_str())
        .collect();
        assert_eq!(got, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
        let to = rule.to.as_ref().unwrap();
        let o = to[0].operation.as_ref().unwrap();
        let got: Vec<&str> =
            [&o.hosts, &o.not_hosts, &o.ports, &o.not_ports, &o.methods, &o.not_methods, &o.paths, &o.not_paths]
                .iter()
                .map(|v| v.as_ref().unwrap()[0].as_str())
                .collect();
        assert_eq!(got, ["k", "l", "m", "n", "o", "p", "q", "r"]);
        assert!(to[1].operation.is_none());
        let when = &rule.when.as_ref().unwrap()[0];
        assert_eq!(
            (when.key.as_str(), when.values.as_deref(), when.not_values.as_deref()),
            ("s", Some(&["t".to_string()][..]), None)
        );
    }
}
