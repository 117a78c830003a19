//! The `jwt` block of the plugin configuration: providers (issuer, audiences,
//! algorithms, keys), where tokens are read from, and what a valid token does.
//! Parsed with serde (unknown fields rejected), then validated into [`JwtSettings`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::jwt::keys::{Alg, KeySet};
use crate::jwt::require::Requirements;
use crate::jwt::source::{RawHeaderSource, Sources};
use crate::policy::headers::HeaderNames;
use crate::policy::route::PublicPaths;
use crate::string_map::StringMap;

const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
const MAX_MAX_TOKEN_BYTES: usize = 64 * 1024;
const DEFAULT_CACHE_ENTRIES: usize = 1024;
const MAX_CACHE_ENTRIES: usize = 65_536;
/// Envoy jwt_authn's default `clock_skew_seconds`.
const DEFAULT_LEEWAY_S: u64 = 60;
const MAX_LEEWAY_S: u64 = 3600;
const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5_000;
/// Envoy jwt_authn caches a remote JWKS for 5 minutes by default.
const DEFAULT_REFRESH_INTERVAL_MS: u64 = 300_000;
const DEFAULT_MIN_REFRESH_INTERVAL_MS: u64 = 10_000;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash (32 bytes).
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    providers: Vec<RawProvider>,
    mode: Option<Mode>,
    from_headers: Option<Vec<RawHeaderSource>>,
    from_cookies: Option<Vec<String>>,
    from_params: Option<Vec<String>>,
    forward: Option<bool>,
    max_token_bytes: Option<usize>,
    cache_entries: Option<usize>,
    unknown_issuer: Option<UnknownIssuer>,
    not_jwt: Option<NotJwt>,
    rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: String,
    require: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    /// An inline JWKS: the object itself, or its JSON text.
    jwks: Option<Value>,
    /// A P-256/P-384/Ed25519 PEM public key, or an object of `kid` → PEM (jwt-middleware's `secrets`).
    pem: Option<Value>,
    remote_jwks: Option<RawRemoteJwks>,
    /// OIDC discovery: `remote_jwks` whose JWKS path comes from the issuer's
    /// openid-configuration (jwt/oidc_discovery.rs); `path` is that document's.
    discovery: Option<RawRemoteJwks>,
    secret: Option<String>,
    leeway_s: Option<u64>,
    claims_to_headers: Option<StringMap>,
    mode: Option<Mode>,
    require: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    cluster: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    authority: Option<String>,
    path: Option<String>,
    timeout_ms: Option<u64>,
    refresh_interval_ms: Option<u64>,
    min_refresh_interval_ms: Option<u64>,
}

/// What a valid token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Valid: allowed without a callout, claims become headers. Invalid: 401.
    Local,
    /// Valid: claims become headers and the callout still decides. Invalid: 401.
    LocalThenCallout,
}

/// What happens to a JWT whose `iss` no provider names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownIssuer {
    /// The callout decides (the auth service may issue JWTs of its own).
    Callout,
    /// 401 `invalid_token`, no callout.
    Reject,
}

/// What happens to a credential that is not JWT-shaped (an API key in `Authorization:
/// Bearer`, a `Basic` value without the configured prefix is no credential at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotJwt {
    /// The callout decides (Prefect API keys travel where tokens do).
    Callout,
    /// 401 `invalid_token`, no callout: Envoy `jwt_authn` (Istio's RequestAuthentication)
    /// answers a token it cannot parse so, whatever the rules say.
    Reject,
}

#[derive(Debug)]
pub struct JwtSettings {
    pub providers: Vec<Provider>,
    /// Where tokens are read from, and whether a verified one stays in the request.
    pub sources: Sources,
    /// Longer JWT-shaped credentials are rejected without being decoded.
    pub max_token_bytes: usize,
    /// Verified tokens remembered per worker.
    pub cache_entries: usize,
    pub unknown_issuer: UnknownIssuer,
    pub not_jwt: NotJwt,
    /// Every header a provider may inject (the strip list includes them all).
    pub injected: HeaderNames,
    /// Keys skipped in inline JWKS, for the log.
    pub warnings: Vec<String>,
    /// Claim checks by path (`rules`), on top of each provider's `require`.
    pub rules: Option<Rules>,
}

/// `rules`: path templates (the public-path syntax and matcher) with a `require` each.
#[derive(Debug)]
pub struct Rules {
    paths: PublicPaths,
    /// By template, as the matcher returns it.
    requirements: Vec<(String, Requirements)>,
}

impl Rules {
    /// The requirements for a request target: the rule whose path matches it. A target
    /// that is not in canonical form (`%2F`, `//`, `;`…) could be read as any path
    /// downstream, so every rule applies to it.
    pub fn for_target(&self, target: &[u8]) -> Vec<&Requirements> {
        if crate::policy::route::canonical_path(target).is_none() {
            return self.requirements.iter().map(|(_, r)| r).collect();
        }
        let Some(template) = self.paths.find(target) else { return Vec::new() };
        self.requirements.iter().filter(|(t, _)| t == template).map(|(_, r)| r).collect()
    }
}

#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    /// When set, the token's `aud` must contain one of them. A list, not a set: a
    /// provider names a few, and a hash set of strings (2 KB of module code that every
    /// sidecar's V8 compiles) had no other use.
    pub audiences: Option<Vec<String>>,
    pub algorithms: Vec<Alg>,
    /// Inline JWKS, PEM keys or the HS256 secret.
    pub keys: KeySet,
    pub remote: Option<RemoteJwks>,
    pub leeway: Duration,
    /// Claim (top-level name, or a `.` path into objects) → header name.
    pub claims_to_headers: Vec<(String, String)>,
    pub mode: Mode,
    /// Claim checks every token of this provider must pass (403 otherwise).
    pub require: Requirements,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub refresh_interval: Duration,
    /// Refetches on an unknown `kid` or after a failure are at most this frequent.
    pub min_refresh_interval: Duration,
    /// OIDC discovery: `path` is the openid-configuration, whose `jwks_uri` (on the same
    /// host) is fetched next through the same cluster.
    pub discovery: bool,
}

impl RemoteJwks {
    /// The shared-data name of this endpoint's state: one fetch per Envoy, whatever
    /// provider or worker asks.
    pub fn shared_key(&self) -> String {
        format!("nebula_authz.jwks|{}|{}|{}", self.cluster, self.authority, self.path)
    }
}

impl TryFrom<RawJwt> for JwtSettings {
    type Error = ConfigError;

    fn try_from(raw: RawJwt) -> Result<JwtSettings, ConfigError> {
        if raw.providers.is_empty() {
            return Err(ConfigError::new("jwt.providers", "must list at least one provider"));
        }
        let mode = raw.mode.unwrap_or(Mode::Local);
        let mut providers = Vec::with_capacity(raw.providers.len());
        let mut warnings = Vec::new();
        let mut injected = HeaderNames::default();
        for (i, p) in raw.providers.into_iter().enumerate() {
            let at = format!("jwt.providers[{i}]");
            let provider = Provider::parse(&at, p, mode, &mut warnings)?;
            if providers.iter().any(|q: &Provider| q.issuer == provider.issuer) {
                return Err(ConfigError::new(
                    format!("{at}.issuer"),
                    format!("{:?} is already a provider's issuer", provider.issuer),
                ));
            }
            let names: Vec<String> = provider.claims_to_headers.iter().map(|(_, h)| h.clone()).collect();
            injected.extend(&HeaderNames::parse_injectable(&format!("{at}.claims_to_headers"), &names)?);
            providers.push(provider);
        }
        let sources = Sources::parse(raw.from_headers, raw.from_cookies, raw.from_params, raw.forward)?;
        let max_token_bytes =
            bounded("jwt.max_token_bytes", raw.max_token_bytes, DEFAULT_MAX_TOKEN_BYTES, 16, MAX_MAX_TOKEN_BYTES)?;
        let cache_entries =
            bounded("jwt.cache_entries", raw.cache_entries, DEFAULT_CACHE_ENTRIES, 0, MAX_CACHE_ENTRIES)?;
        let unknown_issuer = raw.unknown_issuer.unwrap_or(UnknownIssuer::Callout);
        let not_jwt = raw.not_jwt.unwrap_or(NotJwt::Callout);
        let rules = raw.rules.map(rules).transpose()?;
        Ok(JwtSettings {
            providers,
            sources,
            max_token_bytes,
            cache_entries,
            unknown_issuer,
            not_jwt,
            injected,
            warnings,
            rules,
        })
    }
}

fn rules(raw: Vec<RawRule>) -> Result<Rules, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new("jwt.rules", "must list at least one rule (or leave it out)"));
    }
    let templates: Vec<String> = raw.iter().map(|r| r.path.clone()).collect();
    let fields: Vec<String> = (0..raw.len()).map(|i| format!("jwt.rules[{i}].path")).collect();
    let paths = PublicPaths::compile(&templates, &fields)?;
    let mut requirements = Vec::with_capacity(raw.len());
    for (i, rule) in raw.into_iter().enumerate() {
        let field = format!("jwt.rules[{i}].require");
        if requirements.iter().any(|(t, _): &(String, Requirements)| *t == rule.path) {
            return Err(ConfigError::new(
                format!("jwt.rules[{i}].path"),
                format!("{:?} has a rule already", rule.path),
            ));
        }
        requirements.push((rule.path, Requirements::parse(&field, &rule.require)?));
    }
    Ok(Rules { paths, requirements })
}

fn bounded(field: &str, value: Option<usize>, default: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(ConfigError::new(field, format!("must be between {min} and {max}, got {v}")));
    }
    Ok(v)
}

impl Provider {
    fn parse(
        at: &str,
        raw: RawProvider,
        default_mode: Mode,
        warnings: &mut Vec<String>,
    ) -> Result<Provider, ConfigError> {
        let err = |field: &str, message: String| ConfigError::new(format!("{at}.{field}"), message);
        if raw.issuer.trim().is_empty() {
            return Err(err("issuer", "must be the tokens' `iss`".into()));
        }
        let algorithms = algorithms(at, raw.algorithms, raw.secret.is_some())?;

        let mut keys = KeySet::default();
        if let Some(secret) = &raw.secret {
            if raw.jwks.is_some() || raw.pem.is_some() || raw.remote_jwks.is_some() || raw.discovery.is_some() {
                return Err(err(
                    "secret",
                    "cannot be combined with jwks, pem, remote_jwks or discovery (HS256 keys are never public keys)"
                        .into(),
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(err("secret", format!("must be at least {MIN_SECRET_BYTES} bytes, got {}", secret.len())));
            }
            keys = KeySet::from_secret(secret.as_bytes());
        }
        if let Some(jwks) = raw.jwks {
            let jwks = match jwks {
                // Read as bytes, as the configuration itself is: one instance of serde_json's
                // parser in the module instead of a second one for `&str` input (10 KB of
                // code that every sidecar's V8 compiles); a `str` is valid UTF-8, so the
                // two read alike and fail with the same text.
                Value::String(text) => {
                    serde_json::from_slice(text.as_bytes()).map_err(|e| err("jwks", format!("not valid JSON: {e}")))?
                }
                other => other,
            };
            let (set, skipped) = KeySet::from_jwks(&jwks, &algorithms).map_err(|e| err("jwks", e))?;
            warnings.extend(skipped.into_iter().map(|s| format!("{at}.jwks.{s}: skipped")));
            keys.extend(set);
        }
        match raw.pem {
            None => {}
            Some(Value::String(pem)) => {
                keys.extend(KeySet::from_pem(&pem, None, &algorithms).map_err(|e| err("pem", e))?)
            }
            Some(Value::Object(named)) if !named.is_empty() => {
                for (kid, pem) in named {
                    let pem = pem.as_str().ok_or_else(|| err(&format!("pem.{kid}"), "must be a PEM string".into()))?;
                    keys.extend(
                        KeySet::from_pem(pem, Some(&kid), &algorithms).map_err(|e| err(&format!("pem.{kid}"), e))?,
                    );
                }
            }
            Some(_) => return Err(err("pem", "must be a PEM string or an object of kid → PEM".into())),
        }
        let remote = match (raw.remote_jwks, raw.discovery) {
            (Some(_), Some(_)) => {
                return Err(err("discovery", "cannot be combined with remote_jwks (discovery finds the JWKS)".into()))
            }
            (Some(r), None) => Some(remote_jwks(&format!("{at}.remote_jwks"), r)?),
            (None, Some(d)) => Some(discovery(&format!("{at}.discovery"), &raw.issuer, d)?),
            (None, None) => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(ConfigError::new(at, "needs keys: jwks, pem, remote_jwks, discovery, or secret (HS256)"));
        }

        let audiences = match raw.audiences {
            Some(list) if list.is_empty() => {
                return Err(err("audiences", "must not be empty (leave it out to accept any audience)".into()))
            }
            Some(list) => Some(list),
            None => None,
        };
        let leeway_s = raw.leeway_s.unwrap_or(DEFAULT_LEEWAY_S);
        if leeway_s > MAX_LEEWAY_S {
            return Err(err("leeway_s", format!("must be at most {MAX_LEEWAY_S}, got {leeway_s}")));
        }
        let mut claims_to_headers = Vec::new();
        for (claim, header) in raw.claims_to_headers.unwrap_or_default() {
            if claim.is_empty() {
                return Err(err("claims_to_headers", "a claim name is empty".into()));
            }
            claims_to_headers.push((claim, header.to_ascii_lowercase()));
        }
        Ok(Provider {
            issuer: raw.issuer,
            audiences,
            algorithms,
            keys,
            remote,
            leeway: Duration::from_secs(leeway_s),
            claims_to_headers,
            mode: raw.mode.unwrap_or(default_mode),
            require: Requirements::parse(&format!("{at}.require"), &raw.require.unwrap_or_default())?,
        })
    }
}

fn algorithms(at: &str, names: Option<Vec<String>>, has_secret: bool) -> Result<Vec<Alg>, ConfigError> {
    let field = format!("{at}.algorithms");
    let Some(names) = names else {
        return Ok(if has_secret { vec![Alg::HS256] } else { Alg::ASYMMETRIC.to_vec() });
    };
    if names.is_empty() {
        return Err(ConfigError::new(field, "must list at least one algorithm"));
    }
    let mut algs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let alg = match Alg::from_name(name) {
            Some(alg) => alg,
            None if name.eq_ignore_ascii_case("none") => {
                return Err(ConfigError::new(format!("{field}[{i}]"), "\"none\" (unsigned tokens) is never accepted"));
            }
            None => {
                let known: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
                return Err(ConfigError::new(
                    format!("{field}[{i}]"),
                    format!("{name:?} is not one of {}", known.join(", ")),
                ));
            }
        };
        if (alg == Alg::HS256) != has_secret {
            let message = if has_secret {
                format!("{name} cannot be used with a secret: a provider with `secret` verifies HS256 only")
            } else {
                "HS256 needs an explicit `secret` (it is never verified with a public key)".to_owned()
            };
            return Err(ConfigError::new(format!("{field}[{i}]"), message));
        }
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    Ok(algs)
}

fn remote_jwks(at: &str, raw: RawRemoteJwks) -> Result<RemoteJwks, ConfigError> {
    let err = |field: &str, message: String| ConfigError::new(format!("{at}.{field}"), message);
    let (cluster, authority) = crate::cluster::cluster_and_authority(
        at,
        "the JWKS endpoint",
        raw.cluster.as_deref(),
        raw.host.as_deref(),
        raw.port,
    )?;
    let authority = raw.authority.unwrap_or(authority);
    if authority.is_empty() || !authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("authority", "must be a non-empty host[:port] without spaces".into()));
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_JWKS_PATH.into());
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("path", "must start with '/' and contain no spaces or control characters".into()));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(err("timeout_ms", format!("must be between 1 and 60000, got {timeout_ms}")));
    }
    let refresh_ms = raw.refresh_interval_ms.unwrap_or(DEFAULT_REFRESH_INTERVAL_MS);
    if !(1_000..=86_400_000).contains(&refresh_ms) {
        return Err(err("refresh_interval_ms", format!("must be between 1000 and 86400000, got {refresh_ms}")));
    }
    let min_ms = raw.min_refresh_interval_ms.unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL_MS.min(refresh_ms));
    if min_ms > refresh_ms {
        return Err(err(
            "min_refresh_interval_ms",
            format!("must be at most refresh_interval_ms ({refresh_ms}), got {min_ms}"),
        ));
    }
    Ok(RemoteJwks {
        cluster,
        authority,
        path,
        timeout: Duration::from_millis(timeout_ms),
        refresh_interval: Duration::from_millis(refresh_ms),
        min_refresh_interval: Duration::from_millis(min_ms),
        discovery: false,
    })
}

/// `discovery`: a `remote_jwks` for the issuer's openid-configuration, asked for with
/// the issuer's host as `:authority` unless told otherwise.
fn discovery(at: &str, issuer: &str, mut raw: RawRemoteJwks) -> Result<RemoteJwks, ConfigError> {
    let Some((path, authority)) = crate::jwt::oidc_discovery::endpoint(issuer) else {
        return Err(ConfigError::new(at, format!("needs an http(s) issuer URL without a query, got {issuer:?}")));
    };
    raw.path.get_or_insert(path);
    if raw.host.is_none() {
        raw.authority.get_or_insert(authority);
    }
    Ok(RemoteJwks { discovery: true, ..remote_jwks(at, raw)? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::plugin_config::Settings;

    fn err(jwt: &str) -> String {
        let json = format!(r#"{{"auth": {{"cluster": "auth"}}, "jwt": {jwt}}}"#);
        Settings::from_json(json.as_bytes()).expect_err("config should be rejected").to_string()
    }

    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn defaults() {
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let jwt = s.jwt.unwrap();
        let bearer = crate::jwt::source::Source::Header { name: "authorization".into(), prefix: "Bearer ".into() };
        assert_eq!((jwt.sources.list, jwt.sources.forward), (vec![bearer], true));
        assert_eq!((jwt.max_token_bytes, jwt.cache_entries), (16384, 1024));
        let p = &jwt.providers[0];
        assert_eq!((p.mode, p.leeway.as_secs(), p.audiences.is_none()), (super::Mode::Local, 60, true));
        assert_eq!(p.algorithms.len(), 9, "every asymmetric algorithm");
        let json = r#"{"auth": {"cluster": "auth"}, "jwt": {"providers": [{"issuer": "i", "remote_jwks": {"host": "idp.example.com", "port": 443}}]}}"#;
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let remote = s.jwt.unwrap().providers.remove(0).remote.unwrap();
        assert_eq!(remote.cluster, "outbound|443||idp.example.com");
        assert_eq!(
            (remote.authority.as_str(), remote.path.as_str()),
            ("idp.example.com:443", "/.well-known/jwks.json")
        );
        assert_eq!((remote.refresh_interval.as_secs(), remote.min_refresh_interval.as_secs()), (300, 10));
        assert!(!remote.discovery);
    }

    #[test]
    fn discovery_is_a_remote_jwks_for_the_issuers_openid_configuration() {
        let remote = |provider: &str| {
            let json = format!(r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{provider}]}}}}"#);
            Settings::from_json(json.as_bytes()).unwrap().jwt.unwrap().providers.remove(0).remote.unwrap()
        };
        let r = remote(r#"{"issuer": "https://login.example.com/realms/prefect", "discovery": {"cluster": "idp"}}"#);
        assert!(r.discovery);
        assert_eq!(
            (r.cluster.as_str(), r.authority.as_str(), r.path.as_str()),
            ("idp", "login.example.com", "/realms/prefect/.well-known/openid-configuration")
        );
        assert_eq!((r.refresh_interval.as_secs(), r.min_refresh_interval.as_secs()), (300, 10));
        // Istio's naming, and every override.
        let r = remote(
            r#"{"issuer": "https://login.example.com", "discovery": {"host": "login.example.com", "port": 443}}"#,
        );
        assert_eq!(
            (r.cluster.as_str(), r.authority.as_str(), r.path.as_str()),
            ("outbound|443||login.example.com", "login.example.com:443", "/.well-known/openid-configuration")
        );
        let r = remote(
            r#"{"issuer": "https://login.example.com", "discovery": {"cluster": "idp", "authority": "kc.idp.svc:8080", "path": "/oidc", "refresh_interval_ms": 60000}}"#,
        );
        assert_eq!(
            (r.authority.as_str(), r.path.as_str(), r.refresh_interval.as_secs()),
            ("kc.idp.svc:8080", "/oidc", 60)
        );
        // The shared-data record differs from a remote_jwks on the same cluster.
        assert_ne!(r.shared_key(), remote(r#"{"issuer": "i", "remote_jwks": {"cluster": "idp"}}"#).shared_key());
    }

    #[test]
    fn bad_jwt_configs_name_the_field() {
        let secret = "0123456789abcdef0123456789abcdef";
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "jwt: expected a JSON object, got an array"),
            ("{}".into(), "jwt: missing field `providers`"),
            (r#"{"providers": []}"#.into(), "jwt.providers: must list at least one provider"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}", "require": {{"groups": []}}}}]}}"#), "jwt.providers[0].require.groups: an empty list can never be met"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "rules": []}}"#), "jwt.rules: must list at least one rule (or leave it out)"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "rules": [{{"path": "api", "require": {{}}}}]}}"#), "jwt.rules[0].path: \"api\" must start with '/'"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "rules": [{{"path": "/a", "require": {{"x": 1}}}}, {{"path": "/a", "require": {{}}}}]}}"#), "jwt.rules[1].path: \"/a\" has a rule already"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "rules": [{{"path": "/a", "require": {{"x": {{}}}}}}]}}"#), "jwt.rules[0].require.x: must be a string, number or boolean, or a list of them"),
            (r#"{"providers": [{"issuer": "i"}]}"#.into(), "jwt.providers[0]: needs keys: jwks, pem, remote_jwks, discovery, or secret (HS256)"),
            (r#"{"providers": [{"issuer": " ", "secret": "x"}]}"#.into(), "jwt.providers[0].issuer: must be the tokens' `iss`"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}", "algorithms": ["RS256"]}}]}}"#), "jwt.providers[0].algorithms[0]: RS256 cannot be used with a secret: a provider with `secret` verifies HS256 only"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "algorithms": ["ES256", "HS256"]}}]}}"#), "jwt.providers[0].algorithms[1]: HS256 needs an explicit `secret` (it is never verified with a public key)"),
            (r#"{"providers": [{"issuer": "i", "secret": "short"}]}"#.into(), "jwt.providers[0].secret: must be at least 32 bytes, got 5"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}", "jwks": {{"keys": []}}}}]}}"#), "jwt.providers[0].secret: cannot be combined with jwks, pem, remote_jwks or discovery (HS256 keys are never public keys)"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "algorithms": ["none"]}}]}}"#), "jwt.providers[0].algorithms[0]: \"none\" (unsigned tokens) is never accepted"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "algorithms": ["ES512"]}}]}}"#), "jwt.providers[0].algorithms[0]: \"ES512\" is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "algorithms": []}}]}}"#), "jwt.providers[0].algorithms: must list at least one algorithm"),
            (r#"{"providers": [{"issuer": "i", "jwks": {"keys": []}}]}"#.into(), "jwt.providers[0].jwks: no usable key (no keys)"),
            (r#"{"providers": [{"issuer": "i", "jwks": "{not json"}]}"#.into(), "jwt.providers[0].jwks: not valid JSON: key must be a string at line 1 column 2"),
            (r#"{"providers": [{"issuer": "i", "pem": "nope"}]}"#.into(), "jwt.providers[0].pem: is not a P-256, P-384 or Ed25519 PEM public key (give RSA keys as a JWK in jwks)"),
            (r#"{"providers": [{"issuer": "i", "pem": {"k1": 3}}]}"#.into(), "jwt.providers[0].pem.k1: must be a PEM string"),
            (r#"{"providers": [{"issuer": "i", "pem": []}]}"#.into(), "jwt.providers[0].pem: must be a PEM string or an object of kid → PEM"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "audiences": []}}]}}"#), "jwt.providers[0].audiences: must not be empty (leave it out to accept any audience)"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "leeway_s": 7200}}]}}"#), "jwt.providers[0].leeway_s: must be at most 3600, got 7200"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "claims_to_headers": {{"sub": "bad header"}}}}]}}"#), "jwt.providers[0].claims_to_headers[0]: \"bad header\" is not a valid header name"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "claims_to_headers": {{"sub": "content-length"}}}}]}}"#), "jwt.providers[0].claims_to_headers[0]: \"content-length\" is a connection-level header Envoy manages; it cannot be copied"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "claims_to_headers": {{"sub": 1}}}}]}}"#), "jwt.providers[0].claims_to_headers.sub: invalid type: integer `1`, expected a string"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}}}, {{"issuer": "i", "secret": "{secret}"}}]}}"#), "jwt.providers[1].issuer: \"i\" is already a provider's issuer"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "mode": "remote"}}]}}"#), "jwt.providers[0].mode: unknown variant `remote`, expected `local` or `local_then_callout`"),
            (format!(r#"{{"providers": [{{"issuer": "i", "jwks": {{"keys": [{EC_JWK}]}}, "issuers": []}}]}}"#), "jwt.providers[0].issuers: unknown field `issuers`, expected one of `issuer`, `audiences`, `algorithms`, `jwks`, `pem`, `remote_jwks`, `discovery`, `secret`, `leeway_s`, `claims_to_headers`, `mode`, `require`"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {}}]}"#.into(), "jwt.providers[0].remote_jwks: name the JWKS endpoint: jwt.providers[0].remote_jwks.cluster (an Envoy cluster) or jwt.providers[0].remote_jwks.host and jwt.providers[0].remote_jwks.port (Istio)"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {"host": "idp"}}]}"#.into(), "jwt.providers[0].remote_jwks.port: is required with jwt.providers[0].remote_jwks.host"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {"cluster": "idp", "path": "jwks"}}]}"#.into(), "jwt.providers[0].remote_jwks.path: must start with '/' and contain no spaces or control characters"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {"cluster": "idp", "refresh_interval_ms": 10}}]}"#.into(), "jwt.providers[0].remote_jwks.refresh_interval_ms: must be between 1000 and 86400000, got 10"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {"cluster": "idp", "refresh_interval_ms": 1000, "min_refresh_interval_ms": 5000}}]}"#.into(), "jwt.providers[0].remote_jwks.min_refresh_interval_ms: must be at most refresh_interval_ms (1000), got 5000"),
            (r#"{"providers": [{"issuer": "i", "remote_jwks": {"cluster": "idp", "timeout_ms": 0}}]}"#.into(), "jwt.providers[0].remote_jwks.timeout_ms: must be between 1 and 60000, got 0"),
            (r#"{"providers": [{"issuer": "i", "discovery": {"cluster": "idp"}}]}"#.into(), "jwt.providers[0].discovery: needs an http(s) issuer URL without a query, got \"i\""),
            (r#"{"providers": [{"issuer": "https://a.example.com", "discovery": {}}]}"#.into(), "jwt.providers[0].discovery: name the JWKS endpoint: jwt.providers[0].discovery.cluster (an Envoy cluster) or jwt.providers[0].discovery.host and jwt.providers[0].discovery.port (Istio)"),
            (r#"{"providers": [{"issuer": "https://a.example.com", "discovery": {"cluster": "idp"}, "remote_jwks": {"cluster": "idp"}}]}"#.into(), "jwt.providers[0].discovery: cannot be combined with remote_jwks (discovery finds the JWKS)"),
            (format!(r#"{{"providers": [{{"issuer": "https://a.example.com", "secret": "{secret}", "discovery": {{"cluster": "idp"}}}}]}}"#), "jwt.providers[0].secret: cannot be combined with jwks, pem, remote_jwks or discovery (HS256 keys are never public keys)"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "from_headers": [], "from_cookies": []}}"#), "jwt: from_headers, from_cookies and from_params are all empty: no token can be found"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "from_headers": [{{"name": ":path"}}]}}"#), "jwt.from_headers[0].name: \":path\" is not a valid header name"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "from_cookies": ["a=b"]}}"#), "jwt.from_cookies[0]: \"a=b\" is not a cookie name"),
            (format!(r#"{{"providers": [{{"issuer": "i", "secret": "{secret}"}}], "max_token_bytes": 1000000}}"#), "jwt.max_token_bytes: must be between 16 and 65536, got 1000000"),
        ];
        for (jwt, expected) in cases {
            assert_eq!(err(&jwt), format!("invalid plugin configuration: {expected}"), "jwt: {jwt}");
        }
    }
}
