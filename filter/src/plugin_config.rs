//! The whole plugin configuration: the JSON users write (serde, unknown fields rejected),
//! validated and compiled once into [`Settings`], which every request shares.
//!
//! Each feature owns its block's serde shape and compile step (`auth`: policy/auth.rs,
//! `public_paths`: policy/route.rs, `jwt`: jwt/jwt_config.rs, `cache`: cache/shared.rs);
//! this module only composes them, so it imports the features and none imports it.
//! Defaults are Prefect's proxy mode (docs/configuration.md), so `{"auth": {"cluster": "auth"}}` is a full config.

use serde::Deserialize;

use crate::access::access_config::{self as access_config, RawAccess, RawPublicPath};
use crate::access::AccessSettings;
use crate::authz_policy::{Selection, MAX_PROVIDERS};
use crate::cache::shared::{self, CacheSettings, RawCache};
use crate::error::ConfigError;
use crate::jwt::jwt_config::{JwtSettings, Mode, RawJwt};
use crate::jwt::source::Source;
use crate::policy::auth::{strings_or, AuthSettings, RawAuth, IDENTITY_HEADERS};
use crate::policy::decision::{self, Failure, Verdict};
use crate::policy::ext_authz::Protocol;
use crate::policy::forward::CalloutHeader;
use crate::policy::headers::{Header, HeaderNames};
use crate::policy::request::{self, Plan, Routed};
use crate::policy::route::PublicPaths;
use crate::policy::substitution::{self, RequestInfo};
use crate::telemetry::{RawTelemetry, TelemetrySettings};

/// Like Envoy ext_authz's `status_on_error` default.
const DEFAULT_STATUS_ON_ERROR: u32 = 403;

/// The configuration as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The one provider, named `auth`; or `providers`, never both.
    auth: Option<RawAuth>,
    /// Named providers: each a `name` and the fields of the `auth` block (read as one,
    /// so an error names `providers[i].field`).
    providers: Option<Vec<serde_json::Value>>,
    /// Istio CUSTOM policies: which requests each provider checks (authz_policy/).
    policies: Option<Vec<serde_json::Value>>,
    strip_headers: Option<Vec<String>>,
    /// Templates, or `{"path": ..., "source_ranges": ..., ...}` (access/access_config.rs).
    public_paths: Option<Vec<RawPublicPath>>,
    frontend_prefix: Option<String>,
    status_on_error: Option<u32>,
    /// Local JWT verification (jwt/jwt_config.rs).
    jwt: Option<RawJwt>,
    /// The shared decision cache; absent = off.
    cache: Option<RawCache>,
    /// Access rules (access/access_config.rs).
    source_ranges: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    principals: Option<Vec<String>>,
    principal_header: Option<String>,
    /// The decision for the access log and the latency histograms (telemetry.rs).
    telemetry: Option<RawTelemetry>,
}

/// The validated, compiled configuration.
#[derive(Debug)]
pub struct Settings {
    pub auth: AuthSettings,
    /// The providers' names, in order (`["auth"]` with the `auth` block).
    pub provider_names: Vec<String>,
    /// With `policies`: which requests are checked (without: every protected one).
    pub selection: Option<Selection>,
    /// The providers after the first (`providers[1..]`), each as the whole configuration
    /// with that provider as its `auth`: what its callout, cache key and decision use.
    pub other_providers: Vec<Settings>,
    /// Whether `providers` names more than one: an allow then replaces the upstream
    /// headers an earlier provider's allow set, as each of Istio's chained ext_authz
    /// filters (and each of Traefik's chained forwardAuth middlewares) does.
    pub several_providers: bool,
    /// Removed from every client request; includes `auth.upstream_headers` with the
    /// forward-auth protocol (not with ext_authz, which replaces only what it sets).
    pub strip: HeaderNames,
    pub public: PublicPaths,
    pub status_on_error: u32,
    /// Local JWT verification, when configured.
    pub jwt: Option<JwtSettings>,
    /// The shared decision cache, when configured.
    pub cache: Option<CacheSettings>,
    /// Source ranges and peer principals, when any is configured.
    pub access: Option<AccessSettings>,
    /// What is recorded per request besides the counters.
    pub telemetry: TelemetrySettings,
}

impl Settings {
    /// Parses and validates the plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        // serde would read a struct from a JSON array too; users must write objects.
        let providers = value.get("providers").and_then(|p| p.as_array()).map(Vec::as_slice).unwrap_or_default();
        let provider_fields: Vec<String> = (0..providers.len()).map(|i| format!("providers[{i}]")).collect();
        let objects = [
            ("", Some(&value)),
            ("auth", value.get("auth")),
            ("jwt", value.get("jwt")),
            ("cache", value.get("cache")),
            ("telemetry", value.get("telemetry")),
        ]
        .into_iter()
        .chain(provider_fields.iter().map(String::as_str).zip(providers.iter().map(Some)));
        for (field, object) in objects {
            if let Some(object) = object.filter(|v| !v.is_object()) {
                return Err(ConfigError::new(field, format!("expected a JSON object, got {}", kind(object))));
            }
        }
        let others = other_providers(&value);
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let (field, message) = json_path::locate(bytes, &e);
            ConfigError::new(field, message)
        })?;
        let mut settings = Settings::try_from(raw)?;
        if let Some(cache) = &mut settings.cache {
            cache.fingerprint = shared::fingerprint(bytes);
        }
        for (i, (name, config)) in others.into_iter().enumerate() {
            let field = format!("providers[{}]", i + 1);
            // `to_vec`, not `Value`'s `Display` (the same bytes): the module then holds one
            // JSON writer (jwt/verifier.rs writes claims with it too), not also `Display`'s.
            let bytes = serde_json::to_vec(&config).map_err(|e| ConfigError::new(field.clone(), e.to_string()))?;
            let mut other = Settings::from_json(&bytes).map_err(|e| ConfigError::new(field.clone(), e.message))?;
            // Every provider's decisions under keys of their own: the name keeps apart two
            // providers configured alike.
            if let Some(cache) = &mut other.cache {
                cache.fingerprint = shared::fingerprint(&[bytes.as_slice(), b"\0", name.as_bytes()].concat());
            }
            if other.auth.with_request_body.is_some() || settings.auth.with_request_body.is_some() {
                return Err(ConfigError::new(field, "a request body is not sent to several providers"));
            }
            // A client never supplies what any provider's allow sets upstream.
            settings.strip.extend(&other.strip);
            other.several_providers = true;
            settings.several_providers = true;
            settings.other_providers.push(other);
        }
        Ok(settings)
    }

    /// The settings provider `index` (in `providers` order) checks with.
    pub fn provider(&self, index: usize) -> Option<&Settings> {
        match index {
            0 => Some(self),
            _ => self.other_providers.get(index - 1),
        }
    }

    /// Whether some provider adds auth response headers to the client's response.
    pub fn any_client_headers_on_success(&self) -> bool {
        std::iter::once(self).chain(&self.other_providers).any(|s| !s.auth.client_headers_on_success.is_empty())
    }

    /// The cookie names some provider's auth service owns (`add_auth_cookies_to_response`):
    /// with several providers, each one's (as each of Traefik's chained forwardAuth
    /// middlewares drops the upstream's cookies of its own names).
    pub fn auth_cookie_names(&self) -> std::borrow::Cow<'_, [String]> {
        if self.other_providers.is_empty() {
            return self.auth.add_auth_cookies_to_response.as_slice().into();
        }
        let all = std::iter::once(self).chain(&self.other_providers);
        all.flat_map(|s| s.auth.add_auth_cookies_to_response.iter().cloned()).collect::<Vec<_>>().into()
    }

    /// Fills in `%HOSTNAME%` in every provider's `headers_to_add` from the Wasm VM's
    /// `HOSTNAME` environment variable (the host reads it once, at configure;
    /// policy/substitution.rs `resolve_hostname`).
    pub fn resolve_hostname(&mut self, hostname: Option<&str>) -> Result<(), ConfigError> {
        let field = if self.provider_names.len() > 1 { "providers[0].headers_to_add" } else { "auth.headers_to_add" };
        substitution::resolve_hostname(field, &mut self.auth.ext_authz.headers_to_add, hostname)?;
        for (i, other) in self.other_providers.iter_mut().enumerate() {
            let field = format!("providers[{}].headers_to_add", i + 1);
            substitution::resolve_hostname(&field, &mut other.auth.ext_authz.headers_to_add, hostname)?;
        }
        Ok(())
    }

    /// The settings as the `configured: ...` log line states them (wasm/root_context.rs).
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }

    /// What to do with a client request (policy/request.rs): `headers` is the request
    /// header map as Envoy hands it over (`:path` included); `info` gives the client's
    /// address (`ip:port`), asked for only when a callout sends X-Forwarded-For, and the
    /// other request facts `auth.headers_to_add` may print.
    pub fn plan<'h, H: Header>(&'h self, headers: &'h [H], info: impl RequestInfo) -> Plan<'h> {
        request::plan(&self.auth, &self.strip, &self.public, headers, info)
    }

    /// [`Settings::plan`] without building the callout (the host builds it only when
    /// one is needed, with [`Settings::callout`]).
    pub fn route<'h, H: Header>(&'h self, headers: &'h [H]) -> Routed<'h> {
        request::route(&self.auth, &self.strip, &self.public, headers)
    }

    /// The names among `fields` (the request's headers or trailers) to remove: see
    /// [`request::strip_list`].
    pub fn strip_list<'h, H: Header>(&self, fields: &'h [H]) -> Vec<&'h str> {
        request::strip_list(&self.auth, &self.strip, fields)
    }

    /// The callout's headers for a protected request (also one whose public path did
    /// not match its access rules), without its trace headers: what its cache key and
    /// coalescing are decided on. `Err`: fail closed.
    pub fn callout<'h, H: Header>(
        &'h self,
        headers: &'h [H],
        info: impl RequestInfo,
    ) -> Result<Vec<CalloutHeader<'h>>, Failure> {
        request::callout(&self.auth, &self.strip, headers, info)
    }

    /// The trace headers to add to a callout built by [`Settings::callout`] (`sent`),
    /// once it is to be sent.
    pub fn trace_headers<'h, H: Header>(&self, headers: &'h [H], sent: &[CalloutHeader<'_>]) -> Vec<CalloutHeader<'h>> {
        request::trace_headers(&self.auth, &self.strip, headers, sent)
    }

    /// Decides on the auth response (policy/decision.rs); `headers` include `:status`
    /// (empty when Envoy got no response), `body_size` is the size of its body.
    pub fn decide<'r, H: Header>(&self, headers: &'r [H], body_size: usize) -> Verdict<'r> {
        decision::decide(&self.auth, headers, body_size)
    }
}

/// The auth cluster and path, the callout timeout and the cache's entries, default and
/// maximum lifetimes, in the text `{:?}` of each gave: `auth cluster "auth", path "/",
/// timeout 1.5s, cache Some((1024, 5, 300))`.
pub struct Summary<'s>(&'s Settings);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = &self.0.auth;
        write!(f, "auth cluster {:?}, path {:?}, timeout ", auth.cluster, auth.path)?;
        // `Duration`'s `Debug` text ("250ms", "5s", "1.05s") written here for the whole
        // milliseconds a timeout holds: core's (2.3 KB of module code, which every
        // sidecar's V8 compiles) had no other use.
        match (auth.timeout.as_secs(), auth.timeout.subsec_millis()) {
            (0, ms) => write!(f, "{ms}ms")?,
            (s, 0) => write!(f, "{s}s")?,
            (s, fraction) => {
                let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
                let shown = 3 - digits.iter().rev().take_while(|d| **d == 0).count();
                write!(f, "{s}.")?;
                for digit in &digits[..shown] {
                    write!(f, "{digit}")?;
                }
                f.write_str("s")?;
            }
        }
        match &self.0.cache {
            Some(c) => write!(f, ", cache Some(({}, {}, {}))", c.entries, c.default_ttl, c.max_ttl),
            None => f.write_str(", cache None"),
        }
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl TryFrom<RawConfig> for Settings {
    type Error = ConfigError;

    fn try_from(mut raw: RawConfig) -> Result<Settings, ConfigError> {
        let (auths, provider_names) = providers(raw.auth.take(), raw.providers.take())?;
        let selection = match raw.policies.take() {
            Some(policies) => {
                // Istio CUSTOM checks only what a rule selects: Prefect's public paths are
                // not implied (a listed path still is never checked).
                raw.public_paths.get_or_insert_with(Vec::new);
                Some(Selection::compile(&policies, &provider_names)?)
            }
            None if provider_names.len() > 1 => {
                return Err(ConfigError::new(
                    "providers",
                    "several providers need policies: which requests does each check?",
                ))
            }
            None => None,
        };
        let auth = auths.into_iter().next().ok_or_else(|| ConfigError::new("providers", "is empty"))?;

        let strip_names = strings_or(raw.strip_headers, &IDENTITY_HEADERS);
        // `_` reads as `-` in every name the strip list holds or gains below.
        let mut strip = HeaderNames::parse("strip_headers", &strip_names, true)?.reading_underscores_as_dashes();
        // forwardAuth (Traefik) removes every `authResponseHeaders` name from the request
        // before it copies the auth service's; ext_authz replaces only what the auth service
        // sets, so a listed header it does not set (`authorization` in a token exchange,
        // Envoy's `x-request-id` under `*-id`) keeps the client's value, and reaches the
        // auth service.
        if auth.protocol != Protocol::ExtAuthz {
            strip.extend(&auth.upstream_headers);
        }

        let (public_paths, entries) = access_config::split(raw.public_paths);
        let public = PublicPaths::from_config(public_paths, raw.frontend_prefix)?;
        let access = RawAccess {
            source_ranges: raw.source_ranges,
            trusted_proxies: raw.trusted_proxies,
            principals: raw.principals,
            principal_header: raw.principal_header,
            remote_ip_rules: selection.as_ref().is_some_and(Selection::reads_remote_ip),
        };
        let access = access_config::compile(access, entries, &public, &auth.request_headers)?;
        // The identity header comes only from the filter, never from the client.
        if let Some(name) = access.as_ref().and_then(|a| a.principal_header.as_ref()) {
            strip.extend(&HeaderNames::parse("principal_header", std::slice::from_ref(name), false)?);
        }

        let status_on_error = raw.status_on_error.unwrap_or(DEFAULT_STATUS_ON_ERROR);
        if !(400..=599).contains(&status_on_error) {
            return Err(ConfigError::new(
                "status_on_error",
                format!("must be a 4xx or 5xx status (fail closed), got {status_on_error}"),
            ));
        }

        // Headers a valid JWT injects are stripped from every client request first.
        let jwt = raw.jwt.map(JwtSettings::try_from).transpose()?;
        if let Some(jwt) = &jwt {
            strip.extend(&jwt.injected);
            // Istio's RequestAuthentication only verifies: the CUSTOM provider still checks
            // a request its policy selects. A `local` token would go upstream unchecked.
            let local = jwt.providers.iter().position(|p| p.mode == Mode::Local);
            if let (Some(i), Some(_)) = (local, &selection) {
                return Err(ConfigError::new(
                    format!("jwt.providers[{i}].mode"),
                    "is local, where a valid token alone lets a request through; with policies, as under Istio's \
                     RequestAuthentication, a token never authorizes by itself: use local_then_callout",
                ));
            }
        }

        // Trace headers leave the cache key: none may carry what the answer depends on,
        // the verified peer's identity or a JWT the callout may pass on.
        let principal = access.as_ref().and_then(|a| a.principal_header.as_deref());
        let tokens = jwt.iter().flat_map(|j| j.sources.list.iter()).filter_map(|source| match source {
            Source::Header { name, .. } => Some(name.as_str()),
            _ => None,
        });
        if let Some(name) = principal.into_iter().chain(tokens).find(|n| auth.trace_headers.contains(n)) {
            return Err(ConfigError::new(
                "auth.trace_headers",
                format!(
                    "{name:?} carries an identity (principal_header or a jwt source): trace headers are left out of \
                     the cache key, so they may not be headers the answer can depend on"
                ),
            ));
        }

        let cache = raw.cache.map(CacheSettings::parse).transpose()?;

        let telemetry = TelemetrySettings::parse(raw.telemetry)?;
        let other_providers = Vec::new();
        Ok(Settings {
            auth,
            provider_names,
            selection,
            other_providers,
            several_providers: false,
            status_on_error,
            strip,
            public,
            jwt,
            cache,
            access,
            telemetry,
        })
    }
}

/// For each provider after the first: its name and the configuration it checks with,
/// the whole configuration with that provider as `auth` (no `providers`, no `policies`).
fn other_providers(config: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let Some(list) = config.get("providers").and_then(|p| p.as_array()) else { return Vec::new() };
    let mut out = Vec::new();
    for provider in list.iter().skip(1) {
        let (name, provider) = split_name(provider.clone());
        let mut other = serde_json::Map::new();
        if let Some(object) = config.as_object() {
            for (key, member) in object {
                // The rules run with the first provider's settings; kept here, a
                // `trusted_proxies` that only `remoteIpBlocks` uses would be refused.
                if !matches!(key.as_str(), "providers" | "policies" | "trusted_proxies") {
                    other.insert(key.clone(), member.clone());
                }
            }
        }
        other.insert("auth".into(), provider);
        out.push((
            name.and_then(|n| n.as_str().map(str::to_string)).unwrap_or_default(),
            serde_json::Value::Object(other),
        ));
    }
    out
}

/// A provider's `name` member and the provider without it. The object is rebuilt rather
/// than `Map::remove`d: a map's removal (its rebalancing) is ~5 KB of module code that
/// only these few start-up calls used, and every sidecar's V8 compiles it.
fn split_name(value: serde_json::Value) -> (Option<serde_json::Value>, serde_json::Value) {
    let serde_json::Value::Object(object) = value else { return (None, value) };
    let mut name = None;
    let mut rest = serde_json::Map::new();
    for (key, member) in object {
        if key == "name" {
            name = Some(member);
        } else {
            rest.insert(key, member);
        }
    }
    (name, serde_json::Value::Object(rest))
}

/// The `auth` block (the provider `auth`), or `providers` (each a `name` and the
/// fields of an `auth` block): exactly one of them. Each provider's settings and name.
fn providers(
    auth: Option<RawAuth>,
    providers: Option<Vec<serde_json::Value>>,
) -> Result<(Vec<AuthSettings>, Vec<String>), ConfigError> {
    let list = match (auth, providers) {
        (Some(auth), None) => return Ok((vec![AuthSettings::try_from(auth)?], vec!["auth".to_string()])),
        (Some(_), Some(_)) => return Err(ConfigError::new("providers", "set either auth or providers, not both")),
        (None, None) => return Err(ConfigError::new("", "missing field `auth` (or `providers`)")),
        (None, Some(list)) => list,
    };
    if list.is_empty() {
        return Err(ConfigError::new("providers", "is empty: name at least one provider"));
    }
    if list.len() > MAX_PROVIDERS {
        return Err(ConfigError::new("providers", format!("more than {MAX_PROVIDERS} providers")));
    }
    let mut names = Vec::with_capacity(list.len());
    let mut settings = Vec::with_capacity(list.len());
    for (i, value) in list.into_iter().enumerate() {
        let field = format!("providers[{i}]");
        let (name, value) = split_name(value);
        let name = match name {
            Some(serde_json::Value::String(name)) if !name.is_empty() => name,
            _ => return Err(ConfigError::new(format!("{field}.name"), "missing: each provider needs a name")),
        };
        if names.contains(&name) {
            return Err(ConfigError::new(format!("{field}.name"), format!("{name:?} names two providers")));
        }
        // Through its bytes, so an error is located as for the whole configuration.
        let bytes = serde_json::to_vec(&value).map_err(|e| ConfigError::new(field.clone(), e.to_string()))?;
        let raw: RawAuth = serde_json::from_slice(&bytes).map_err(|e| match json_path::locate(&bytes, &e) {
            (path, message) if path.is_empty() => ConfigError::new(field.clone(), message),
            (path, message) => ConfigError::new(format!("{field}.{path}"), message),
        })?;
        let auth = AuthSettings::try_from(raw).map_err(|e| ConfigError {
            field: e.field.strip_prefix("auth").map_or(e.field.clone(), |rest| format!("{field}{rest}")),
            message: e.message,
        })?;
        names.push(name);
        settings.push(auth);
    }
    Ok((settings, names))
}

/// docs/configuration.md is checked against [`RawConfig`] (every field, both ways).
#[cfg(test)]
mod docs_reference;
mod json_path;

/// `providers` and `policies`: what loads, what is refused.
#[cfg(test)]
mod policy_schema;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    fn err(json: &str) -> String {
        Settings::from_json(json.as_bytes()).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn the_summary_reads_as_the_debug_text_of_each_setting() {
        let timeouts = (1..=2_100).chain([9_999, 10_000, 10_001, 59_999, 60_000, 61_010, 300_000]);
        let caches = ["", r#", "cache": {}"#, r#", "cache": {"entries": 7, "default_ttl": 0, "max_ttl": 86400}"#];
        for (timeout_ms, cache) in timeouts.flat_map(|t| caches.iter().map(move |c| (t, c))) {
            let json =
                format!(r#"{{"auth": {{"cluster": "a\"b", "path": "/check", "timeout_ms": {timeout_ms}}}{cache}}}"#);
            let s = Settings::from_json(json.as_bytes()).unwrap();
            let debug = format!(
                "auth cluster {:?}, path {:?}, timeout {:?}, cache {:?}",
                s.auth.cluster,
                s.auth.path,
                s.auth.timeout,
                s.cache.as_ref().map(|c| (c.entries, c.default_ttl, c.max_ttl))
            );
            assert_eq!(s.summary().to_string(), debug, "{json}");
        }
    }

    #[test]
    fn minimal_config_takes_seed_defaults() {
        let s = Settings::from_json(br#"{"auth": {"cluster": "auth"}}"#).unwrap();
        assert_eq!(s.auth.cluster, "auth");
        assert_eq!(s.auth.authority, "auth");
        assert_eq!(s.auth.path, "/");
        assert_eq!(s.auth.timeout, Duration::from_secs(5));
        assert_eq!(s.auth.allow_statuses, vec![200]);
        assert_eq!(s.status_on_error, 403);
        assert!(s.auth.forward_auth, "X-Forwarded-* are sent by default");
        assert!(!s.auth.trust_forward_header, "client X-Forwarded-* are not trusted by default");
        assert!(s.auth.upstream_headers_regex.is_none());
        assert!(s.auth.add_auth_cookies_to_response.is_empty());
        for name in ["authorization", "origin", "access-control-request-method"] {
            assert!(s.auth.request_headers.contains(name), "{name}");
        }
        for name in IDENTITY_HEADERS {
            assert!(s.strip.contains(name), "{name}");
            assert!(s.auth.upstream_headers.contains(name), "{name}");
        }
        for name in ["www-authenticate", "location", "set-cookie", "content-type"] {
            assert!(s.auth.client_headers.contains(name), "{name}");
        }
        assert!(s.public.is_public(b"/api/health"));
        assert!(s.public.is_public(b"/api/accounts/a/workspaces/w/events/out"));
    }

    #[test]
    fn forward_body_takes_traefiks_contract() {
        use crate::policy::request_body::BodyContract;
        let s =
            Settings::from_json(br#"{"auth": {"cluster": "a", "forward_body": true, "max_body_size": 100}}"#).unwrap();
        let body = s.auth.with_request_body.as_ref().unwrap();
        assert_eq!(
            (body.contract, body.max_request_bytes, body.allow_partial_message),
            (BodyContract::ForwardAuth, 100, false)
        );
        let s = Settings::from_json(br#"{"auth": {"cluster": "a", "forward_body": false}}"#).unwrap();
        assert!(s.auth.with_request_body.is_none());
    }

    #[test]
    fn full_config_is_accepted() {
        let s = Settings::from_json(
            br#"{
              "auth": {
                "cluster": "outbound|4300||auth.prefect.svc.cluster.local",
                "authority": "auth.prefect.svc.cluster.local:4300",
                "path": "/check",
                "timeout_ms": 250,
                "request_headers": ["Authorization", "X-Custom"],
                "upstream_headers": ["x-nebula-actor-id"],
                "client_headers": ["www-authenticate"],
                "allow_statuses": [200, 204],
                "max_response_bytes": 4096
              },
              "strip_headers": ["x-nebula-*"],
              "public_paths": ["/healthz"],
              "frontend_prefix": "/ui",
              "status_on_error": 503
            }"#,
        )
        .unwrap();
        assert_eq!(s.auth.path, "/check");
        assert_eq!(s.auth.timeout, Duration::from_millis(250));
        assert!(s.auth.request_headers.contains("x-custom"), "names are lower-cased");
        assert!(s.strip.contains("x-nebula-anything"), "prefix pattern");
        assert!(s.public.is_public(b"/ui/assets/app.js"));
        assert!(s.public.is_public(b"/healthz"));
        assert!(!s.public.is_public(b"/api/health"), "public_paths replaces the defaults");
        assert_eq!(s.status_on_error, 503);
    }

    #[test]
    fn istio_host_and_port_derive_the_cluster_name() {
        let s = Settings::from_json(br#"{"auth": {"host": "auth.prefect.svc.cluster.local", "port": 4300}}"#).unwrap();
        assert_eq!(s.auth.cluster, "outbound|4300||auth.prefect.svc.cluster.local");
        assert_eq!(s.auth.authority, "auth.prefect.svc.cluster.local:4300");
        let s = Settings::from_json(br#"{"auth": {"host": "auth", "port": 4300, "cluster": "authz"}}"#).unwrap();
        assert_eq!((s.auth.cluster.as_str(), s.auth.authority.as_str()), ("authz", "auth:4300"), "cluster overrides");
    }

    #[test]
    fn forwarding_headers_are_accepted_where_they_can_be_honoured() {
        // Generated by forward_auth: listing them is redundant, not an error.
        assert!(Settings::from_json(br#"{"auth": {"cluster": "a", "request_headers": ["x-forwarded-uri"]}}"#).is_ok());
        // Trusted: any forwarding header may be passed on.
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a", "trust_forward_header": true, "request_headers": ["x-real-ip"]}}"#,
        )
        .unwrap();
        assert!(s.auth.trust_forward_header);
    }

    #[test]
    fn upstream_headers_are_stripped_with_forward_auth_only() {
        let s =
            Settings::from_json(br#"{"auth": {"cluster": "a", "upstream_headers": ["x-user"]}, "strip_headers": []}"#)
                .unwrap();
        assert!(s.strip.contains("x-user"));
        // ext_authz replaces what the auth service sets; the strip list alone is removed.
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a", "protocol": "ext_authz", "upstream_headers": ["authorization", "*-id"]},
                "strip_headers": ["x-nebula-*"]}"#,
        )
        .unwrap();
        assert!(!s.strip.contains("authorization") && !s.strip.contains("x-request-id"));
        assert!(s.strip.contains("x-nebula-actor-id"));
    }

    /// Bad input gets one clear line naming the field: the exact texts users will see.
    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid plugin configuration: not valid JSON: EOF while parsing a value at line 1 column 0"),
            ("{}", "invalid plugin configuration: missing field `auth` (or `providers`)"),
            ("[1]", "invalid plugin configuration: expected a JSON object, got an array"),
            (r#"{"auth": ["a"]}"#, "invalid plugin configuration: auth: expected a JSON object, got an array"),
            (r#"{"auth": "auth"}"#, "invalid plugin configuration: auth: expected a JSON object, got a string"),
            (
                r#"{"auth": {}}"#,
                "invalid plugin configuration: auth: name the auth service: auth.cluster (an Envoy cluster) or auth.host and auth.port (Istio)",
            ),
            (r#"{"auth": {"host": "auth"}}"#, "invalid plugin configuration: auth.port: is required with auth.host"),
            (r#"{"auth": {"port": 4300}}"#, "invalid plugin configuration: auth.host: is required with auth.port"),
            (r#"{"auth": {"host": "a b", "port": 1}}"#, "invalid plugin configuration: auth.host: \"a b\" is not a host name"),
            (
                r#"{"auth": {"host": "auth", "port": 70000}}"#,
                "invalid plugin configuration: auth.port: invalid value: integer `70000`, expected u16",
            ),
            (
                r#"{"auth": {"cluster": "a", "timout_ms": 5}}"#,
                "invalid plugin configuration: auth.timout_ms: unknown field `timout_ms`, expected one of `cluster`, `host`, `port`, `authority`, `path`, `timeout_ms`, `retry_on_reset`, `request_headers`, `upstream_headers`, `client_headers`, `allow_statuses`, `max_response_bytes`, `forward_auth`, `trust_forward_header`, `preserve_request_method`, `upstream_headers_regex`, `add_auth_cookies_to_response`, `forward_body`, `max_body_size`, `protocol`, `path_prefix`, `path_override`, `headers_to_add`, `upstream_headers_to_append`, `client_headers_on_success`, `with_request_body`, `trace_headers`",
            ),
            (
                r#"{"auth": {"cluster": "a", "request_headers": ["authorization", "X-Forwarded-Prefix"]}}"#,
                "invalid plugin configuration: auth.request_headers[1]: \"X-Forwarded-Prefix\" is a forwarding header the client could forge; it is only sent with trust_forward_header (forward_auth generates X-Forwarded-Method/Proto/Host/Uri/For)",
            ),
            (
                r#"{"auth": {"cluster": "a", "request_headers": ["x-real-ip"]}}"#,
                "invalid plugin configuration: auth.request_headers[0]: \"x-real-ip\" is a forwarding header the client could forge; it is only sent with trust_forward_header (forward_auth generates X-Forwarded-Method/Proto/Host/Uri/For)",
            ),
            (
                r#"{"auth": {"cluster": "a", "forward_auth": false, "request_headers": ["x-forwarded-host"]}}"#,
                "invalid plugin configuration: auth.request_headers[0]: \"x-forwarded-host\" is a forwarding header the client could forge; it is only sent with trust_forward_header (forward_auth generates X-Forwarded-Method/Proto/Host/Uri/For)",
            ),
            (
                r#"{"auth": {"cluster": "a", "upstream_headers_regex": "^x-(auth"}}"#,
                "invalid plugin configuration: auth.upstream_headers_regex: invalid regex \"^x-(auth\": found open group without closing ')'",
            ),
            (
                r#"{"auth": {"cluster": "a", "upstream_headers_regex": ""}}"#,
                "invalid plugin configuration: auth.upstream_headers_regex: must not be empty (it would match every header)",
            ),
            (
                r#"{"auth": {"cluster": "a", "add_auth_cookies_to_response": ["ok", "bad name"]}}"#,
                "invalid plugin configuration: auth.add_auth_cookies_to_response[1]: \"bad name\" is not a cookie name",
            ),
            (
                r#"{"auth": {"cluster": "a", "trust_forward_header": "yes"}}"#,
                "invalid plugin configuration: auth.trust_forward_header: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"auth": {"cluster": "a", "timeout_ms": "5s"}}"#,
                "invalid plugin configuration: auth.timeout_ms: invalid type: string \"5s\", expected u64",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "fail_open": true}"#,
                "invalid plugin configuration: fail_open: unknown field `fail_open`, expected one of `auth`, `providers`, `policies`, `strip_headers`, `public_paths`, `frontend_prefix`, `status_on_error`, `jwt`, `cache`, `source_ranges`, `trusted_proxies`, `principals`, `principal_header`, `telemetry`",
            ),
            (r#"{"auth": {"cluster": "a"}} x"#, "invalid plugin configuration: not valid JSON: trailing characters at line 1 column 28"),
            (r#"{"auth": {"cluster": " "}}"#, "invalid plugin configuration: auth.cluster: must name the Envoy cluster of the auth service"),
            (
                r#"{"auth": {"cluster": "a", "authority": "a b"}}"#,
                "invalid plugin configuration: auth.authority: must be a non-empty host[:port] without spaces",
            ),
            (
                r#"{"auth": {"cluster": "a", "path": "check"}}"#,
                "invalid plugin configuration: auth.path: must start with '/' and contain no spaces or control characters",
            ),
            (r#"{"auth": {"cluster": "a", "timeout_ms": 0}}"#, "invalid plugin configuration: auth.timeout_ms: must be between 1 and 600000, got 0"),
            (r#"{"auth": {"cluster": "a", "allow_statuses": []}}"#, "invalid plugin configuration: auth.allow_statuses: must list at least one status"),
            (r#"{"auth": {"cluster": "a", "allow_statuses": [401]}}"#, "invalid plugin configuration: auth.allow_statuses: only 2xx statuses can allow, got 401"),
            (
                r#"{"auth": {"cluster": "a", "max_response_bytes": 999999999}}"#,
                "invalid plugin configuration: auth.max_response_bytes: must be at most 16777216, got 999999999",
            ),
            (
                r#"{"auth": {"cluster": "a", "request_headers": ["authorization", "bad header"]}}"#,
                "invalid plugin configuration: auth.request_headers[1]: \"bad header\" is not a valid header name",
            ),
            (
                r#"{"auth": {"cluster": "a", "request_headers": ["x-*-y"]}}"#,
                "invalid plugin configuration: auth.request_headers[0]: \"x-*-y\": a * is only allowed once, at the start or at the end",
            ),
            (
                r#"{"auth": {"cluster": "a", "upstream_headers": [":path"]}}"#,
                "invalid plugin configuration: auth.upstream_headers[0]: \":path\" is not a valid header name",
            ),
            (
                r#"{"auth": {"cluster": "a", "client_headers": ["Content-Length"]}}"#,
                "invalid plugin configuration: auth.client_headers[0]: \"content-length\" is a connection-level header Envoy manages; it cannot be copied",
            ),
            (r#"{"auth": {"cluster": "a"}, "strip_headers": ["*"]}"#, "invalid plugin configuration: strip_headers[0]: \"*\" is not a valid header name"),
            (r#"{"auth": {"cluster": "a"}, "status_on_error": 200}"#, "invalid plugin configuration: status_on_error: must be a 4xx or 5xx status (fail closed), got 200"),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["api/health"]}"#,
                "invalid plugin configuration: public_paths[0]: \"api/health\" must start with '/'",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/\" would make every path public",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "frontend_prefix": "/"}"#,
                "invalid plugin configuration: frontend_prefix: \"/\" would make every path public",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "frontend_prefix": "/{x}"}"#,
                "invalid plugin configuration: frontend_prefix: must be a plain path, without {parameters}",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/api/../health"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/api/../health\" has an empty, '.' or '..' segment",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/api/%2e"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/api/%2e\" has a character that is never public ('%', ';', '\\', spaces, controls or non-ASCII)",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/api/{prefix}/x"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/api/{prefix}/x\": {prefix} may only be the first segment",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/{prefix}"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/{prefix}\": {prefix} must be followed by at least one segment",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/a/x{id}"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/a/x{id}\": a {parameter} must be a whole segment",
            ),
            (
                r#"{"auth": {"cluster": "a", "with_request_body": {"max_request_bytes": 8}}}"#,
                "invalid plugin configuration: auth.with_request_body: only applies with \"protocol\": \"ext_authz\"",
            ),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "with_request_body": {"max_request_bytes": 0}}}"#,
                "invalid plugin configuration: auth.with_request_body.max_request_bytes: must be between 1 and 16777216, got 0",
            ),
            (
                r#"{"auth": {"cluster": "a", "max_body_size": 10}}"#,
                "invalid plugin configuration: auth.max_body_size: only applies with \"forward_body\": true",
            ),
            (
                r#"{"auth": {"cluster": "a", "forward_body": true, "max_body_size": -5}}"#,
                "invalid plugin configuration: auth.max_body_size: must be -1 (the filter's cap, 16777216 bytes) or between 0 and 16777216, got -5",
            ),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "forward_body": true}}"#,
                "invalid plugin configuration: auth.forward_body: forward_body and max_body_size are the forward-auth shape's; with \"protocol\": \"ext_authz\" use with_request_body",
            ),
            (
                r#"{"auth": {"cluster": "a", "protocol": "ext_authz", "with_request_body": {}}}"#,
                "invalid plugin configuration: auth.with_request_body: missing field `max_request_bytes`",
            ),
            (
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/a/{*rest}"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/a/{*rest}\": {*catch-all} is implied (every public path covers what is below it)",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(&err(json), expected, "config: {json}");
        }
    }
}
