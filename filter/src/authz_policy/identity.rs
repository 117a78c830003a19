//! The identity values of a rule: peer `principals` and `namespaces` against the
//! verified certificate's URI SAN, and `requestPrincipals` against the verified JWT's
//! `iss`/`sub`, each as Istio renders it (pilot/pkg/security/authz/model/generator.go:
//! `srcPrincipalGenerator` through `StringMatcherWithPrefix(value, "spiffe://")`,
//! `srcNamespaceGenerator`'s regex `.*/ns/<ns>/.*`, `requestPrincipalGenerator`'s
//! split at the last `/`).

use serde_json::{Map, Value};

use crate::authz_policy::pattern::Pattern;

/// Istio's SPIFFE prefix (pkg/spiffe `URIPrefix`), which `principals` leave out.
const SPIFFE: &str = "spiffe://";

/// One `principals` value against the URI SAN (`spiffe://td/ns/x/sa/y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPrincipal {
    /// `*`: regex `.+`, any verified identity.
    Any,
    /// `x`: exactly `spiffe://x`.
    Exact(String),
    /// `x*`: prefix `spiffe://x`.
    Prefix(String),
    /// `*x`: regex `spiffe://.*x`.
    Suffix(String),
}

impl PeerPrincipal {
    pub fn parse(value: &str) -> PeerPrincipal {
        match Pattern::parse(value, false, false) {
            Pattern::Any { .. } => PeerPrincipal::Any,
            Pattern::Exact(v) => PeerPrincipal::Exact(format!("{SPIFFE}{v}")),
            Pattern::Prefix(v) => PeerPrincipal::Prefix(format!("{SPIFFE}{v}")),
            Pattern::Suffix(v) => PeerPrincipal::Suffix(v),
        }
    }

    pub fn matches(&self, san: &str) -> bool {
        match self {
            PeerPrincipal::Any => !san.is_empty(),
            PeerPrincipal::Exact(v) => san == v,
            PeerPrincipal::Prefix(v) => san.starts_with(v.as_str()),
            PeerPrincipal::Suffix(v) => san.strip_prefix(SPIFFE).is_some_and(|rest| rest.ends_with(v.as_str())),
        }
    }
}

/// One `namespaces` value: the URI SAN fully matches `.*/ns/<value>/.*`, each `*` of the
/// value standing for any run of characters. Kept as the literal pieces between the
/// `*`s of the whole pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    parts: Vec<String>,
}

impl Namespace {
    pub fn parse(value: &str) -> Namespace {
        Namespace { parts: format!("*/ns/{value}/*").split('*').map(str::to_string).collect() }
    }

    pub fn matches(&self, san: &str) -> bool {
        glob(&self.parts, san)
    }
}

/// A `*` glob given as its literal parts: the first starts the text, the last ends it,
/// the others appear in order between (left-most placement is optimal for `*`).
fn glob(parts: &[String], text: &str) -> bool {
    let [first, middle @ .., last] = parts else { return parts.first().is_some_and(|p| p == text) };
    if text.len() < first.len() + last.len() || !text.starts_with(first.as_str()) || !text.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// One `requestPrincipals` value: `iss/sub`, split at the last `/` (an issuer may be a
/// URL), with Istio's `*` forms on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrincipal {
    iss: Pattern,
    sub: Pattern,
}

impl RequestPrincipal {
    pub fn parse(value: &str) -> RequestPrincipal {
        let any = Pattern::Any { present: false };
        let exact = |s: &str| Pattern::Exact(s.to_string());
        let (iss, sub) = match value.rfind('/') {
            Some(at) => (&value[..at], Some(&value[at + 1..])),
            None => (value, None),
        };
        let (iss, sub) = if value == "*" {
            (any.clone(), any)
        } else if let Some(rest) = value.strip_prefix('*') {
            match sub {
                Some(sub) if iss == "*" => (any, exact(sub)),
                Some(sub) => (Pattern::Suffix(iss[1..].to_string()), exact(sub)),
                None => (any, Pattern::Suffix(rest.to_string())),
            }
        } else if let Some(rest) = value.strip_suffix('*') {
            match sub {
                Some("*") => (exact(iss), any),
                Some(sub) => (exact(iss), Pattern::Prefix(sub[..sub.len() - 1].to_string())),
                None => (Pattern::Prefix(rest.to_string()), any),
            }
        } else {
            (exact(iss), exact(sub.unwrap_or_default()))
        };
        RequestPrincipal { iss, sub }
    }

    /// Against the verified token's claims; `iss` and `sub` must be strings (Envoy's
    /// metadata string matcher fails on any other value).
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        let claim = |name: &str| claims.get(name).and_then(Value::as_str);
        claim("iss").is_some_and(|iss| self.iss.matches(iss)) && claim("sub").is_some_and(|sub| self.sub.matches(sub))
    }
}

/// A claim at `path` (`request.auth.claims[a][b]`, `aud`, `azp`) against `pattern`: a
/// string claim matches itself, a list matches if one of its strings does (Istio's
/// `MetadataListValueMatcher` with the extended JWT form: list `oneOf` or the value).
pub fn claim_matches(claims: &Map<String, Value>, path: &[String], pattern: &Pattern) -> bool {
    let [first, rest @ ..] = path else { return false };
    let mut value = claims.get(first.as_str());
    for key in rest {
        value = value.and_then(Value::as_object).and_then(|o| o.get(key.as_str()));
    }
    match value {
        Some(Value::String(s)) => pattern.matches(s),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(|s| pattern.matches(s)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const SAN: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";

    #[test]
    fn principals_as_istio_renders_them() {
        assert!(PeerPrincipal::parse("cluster.local/ns/prefect/sa/webhook").matches(SAN));
        assert!(PeerPrincipal::parse("cluster.local/ns/prefect/*").matches(SAN));
        assert!(PeerPrincipal::parse("*/sa/webhook").matches(SAN));
        assert!(!PeerPrincipal::parse("*/sa/webhook").matches("other://x/sa/webhook"), "regex spiffe://.*x");
        assert!(PeerPrincipal::parse("*").matches("urn:x") && !PeerPrincipal::parse("*").matches(""));
        assert!(!PeerPrincipal::parse("cluster.local/ns/prefect/sa/web").matches(SAN));
    }

    #[test]
    fn namespaces_anywhere_between_ns_and_a_slash() {
        assert!(Namespace::parse("prefect").matches(SAN));
        assert!(!Namespace::parse("prefec").matches(SAN));
        assert!(Namespace::parse("pre*").matches(SAN) && Namespace::parse("*fect").matches(SAN));
        assert!(Namespace::parse("*").matches(SAN));
        assert!(!Namespace::parse("prefect").matches("spiffe://td/ns/prefect"), "needs /ns/<ns>/");
    }

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let claims = |iss: &str, sub: &str| {
            let mut m = Map::new();
            m.insert("iss".into(), Value::String(iss.into()));
            m.insert("sub".into(), Value::String(sub.into()));
            m
        };
        let c = claims("https://idp.example/realms/x", "alice");
        assert!(RequestPrincipal::parse("https://idp.example/realms/x/alice").matches(&c));
        assert!(!RequestPrincipal::parse("https://idp.example/realms/x/bob").matches(&c));
        assert!(RequestPrincipal::parse("https://idp.example/realms/x/*").matches(&c));
        assert!(RequestPrincipal::parse("*/alice").matches(&c));
        assert!(RequestPrincipal::parse("*").matches(&c));
        assert!(RequestPrincipal::parse("*idp.example/realms/x/alice").matches(&c));
        // Split at the last `/` first: `https:/` exactly, then a `sub` starting `idp`.
        assert!(!RequestPrincipal::parse("https://idp*").matches(&c));
        assert!(RequestPrincipal::parse("https://idp.example/realms/x/al*").matches(&c));
        assert!(!RequestPrincipal::parse("*").matches(&claims("i", "")), "sub must be non-empty for *");
        assert!(!RequestPrincipal::parse("*").matches(&Map::new()));
    }
}
