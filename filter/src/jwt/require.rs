//! `require`: claim checks beyond `iss`/`aud`/time, as Traefik's jwt-middleware plugin and
//! Istio's `AuthorizationPolicy` (`request.auth.claims`) have them. A valid token that
//! fails one is refused with 403 `insufficient_scope` (RFC 6750 §3.1), not 401.
//!
//! `{"claim": expected}`, every claim must hold (a claim name as in `claims_to_headers`:
//! as is, else a `.` path). `expected` is a value (string, number, boolean) or a list of
//! them, any of which will do. A string with `*` is a glob (`*` = any run of
//! characters). A claim that is an array holds if one element matches; so does a
//! `scope`/`scp` string, read as its space-separated words (RFC 8693 §4.2).

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// The compiled `require` of a provider or a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    checks: Vec<(String, Vec<Expected>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Exact(Value),
    Glob(String),
}

impl Requirements {
    pub fn parse(field: &str, raw: &Map<String, Value>) -> Result<Requirements, ConfigError> {
        let mut checks = Vec::with_capacity(raw.len());
        for (claim, value) in raw {
            let at = format!("{field}.{claim}");
            if claim.is_empty() {
                return Err(ConfigError::new(field, "a claim name cannot be empty"));
            }
            let values = match value {
                Value::Array(items) if items.is_empty() => {
                    return Err(ConfigError::new(at, "an empty list can never be met"))
                }
                Value::Array(items) => items.iter().map(|v| expected(&at, v)).collect::<Result<Vec<_>, _>>()?,
                other => vec![expected(&at, other)?],
            };
            checks.push((claim.clone(), values));
        }
        Ok(Requirements { checks })
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether every check holds for these (verified) claims.
    pub fn met_by(&self, claims: &Map<String, Value>) -> bool {
        self.checks.iter().all(|(claim, expected)| {
            let Some(value) = lookup(claims, claim) else { return false };
            let scope = matches!(claim.rsplit('.').next(), Some("scope" | "scp"));
            match value {
                Value::Array(items) => items.iter().any(|item| expected.iter().any(|e| e.matches(item))),
                Value::String(words) if scope => words.split(' ').any(|w| expected.iter().any(|e| e.matches_str(w))),
                other => expected.iter().any(|e| e.matches(other)),
            }
        })
    }
}

fn expected(at: &str, value: &Value) -> Result<Expected, ConfigError> {
    match value {
        Value::String(s) if s.contains('*') => Ok(Expected::Glob(s.clone())),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(Expected::Exact(value.clone())),
        _ => Err(ConfigError::new(at, "must be a string, number or boolean, or a list of them")),
    }
}

impl Expected {
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::String(s)) => self.matches_str(s),
            (Expected::Exact(e), v) => e == v,
            (Expected::Glob(_), _) => false,
        }
    }

    fn matches_str(&self, s: &str) -> bool {
        match self {
            Expected::Exact(Value::String(e)) => e == s,
            Expected::Exact(_) => false,
            Expected::Glob(g) => glob(g.as_bytes(), s.as_bytes()),
        }
    }
}

/// `*` matches any run of bytes; everything else itself. Linear backtracking over the
/// last `*` only, so the cost stays O(pattern × text) at worst.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A top-level claim by name (names may contain dots: `https://example.com/roles`), else
/// a `.` path into nested objects (`realm_access.roles`).
pub fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Requirements {
        Requirements::parse("require", v.as_object().unwrap()).unwrap()
    }

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "alice", "email": "alice@example.com", "aud": "vminsert.homelab.example.com",
            "groups": ["dev", "ops"], "scope": "flows:read flows:write", "admin": false, "level": 3,
            "realm_access": {"roles": ["viewer"]}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn exact_any_of_glob_and_contains() {
        let c = claims();
        let cases = [
            (json!({"sub": "alice"}), true),
            (json!({"sub": "bob"}), false),
            (json!({"sub": ["bob", "alice"]}), true),
            (json!({"email": "*@example.com"}), true),
            (json!({"email": "*@example.org"}), false),
            (json!({"aud": "vminsert.*.example.com"}), true),
            (json!({"groups": "ops"}), true),
            (json!({"groups": ["admin", "dev"]}), true),
            (json!({"groups": "admin"}), false),
            (json!({"scope": "flows:write"}), true),
            (json!({"scope": "flows:*"}), true),
            (json!({"scope": "flows"}), false),
            (json!({"sub": "ali"}), false),
            (json!({"admin": false}), true),
            (json!({"admin": true}), false),
            (json!({"level": 3}), true),
            (json!({"level": "3"}), false),
            (json!({"realm_access.roles": "viewer"}), true),
            (json!({"missing": "*"}), false),
            (json!({"sub": "alice", "groups": "admin"}), false),
        ];
        for (r, want) in cases {
            assert_eq!(req(r.clone()).met_by(&c), want, "{r}");
        }
        assert!(req(json!({})).met_by(&c));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*.example.com", "a.b.example.com", true),
            ("*x", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxy", false),
            ("ab", "abc", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn bad_requirements_are_refused_with_the_field() {
        for (v, err) in [
            (json!({"groups": []}), "invalid plugin configuration: require.groups: an empty list can never be met"),
            (
                json!({"groups": [["a"]]}),
                "invalid plugin configuration: require.groups: must be a string, number or boolean, or a list of them",
            ),
            (
                json!({"org": {"id": 1}}),
                "invalid plugin configuration: require.org: must be a string, number or boolean, or a list of them",
            ),
            (
                json!({"x": null}),
                "invalid plugin configuration: require.x: must be a string, number or boolean, or a list of them",
            ),
        ] {
            let e = Requirements::parse("require", v.as_object().unwrap()).unwrap_err();
            assert_eq!(e.to_string(), err);
        }
    }
}
