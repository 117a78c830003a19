//! Plugin configuration: the JSON users write (serde, unknown fields rejected), then
//! validated and compiled once into [`Settings`], which every request shares.
//!
//! Defaults are seed 000's values, so `{"auth": {"cluster": "auth"}}` is a full config.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::{self, CacheSettings, RawCache};
use crate::forward::{self, HeaderRegex};
use crate::headers::HeaderNames;
use crate::jwt_config::{JwtSettings, RawJwt};
use crate::route::PublicPaths;

/// The identity headers Prefect's auth service returns and the filter injects upstream.
pub const IDENTITY_HEADERS: [&str; 4] =
    ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config", "x-nebula-log-limit-config"];

/// Seed 000's public routes (Traefik router `public`).
pub const DEFAULT_PUBLIC_PATHS: [&str; 8] = [
    "/auth",
    "/api/docs",
    "/api/openapi.json",
    "/api/health",
    "/api/version",
    "/hooks",
    "/{prefix}/task_runs/subscriptions/scheduled",
    "/{prefix}/events/out",
];

const DEFAULT_REQUEST_HEADERS: [&str; 3] = ["authorization", "origin", "access-control-request-method"];
const DEFAULT_CLIENT_HEADERS: [&str; 4] = ["www-authenticate", "location", "set-cookie", "content-type"];
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const MAX_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
const MAX_MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Like Envoy ext_authz's `status_on_error` default.
const DEFAULT_STATUS_ON_ERROR: u32 = 403;

/// The configuration as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    auth: RawAuth,
    strip_headers: Option<Vec<String>>,
    public_paths: Option<Vec<String>>,
    frontend_prefix: Option<String>,
    status_on_error: Option<u32>,
    /// Local JWT verification (jwt_config.rs).
    jwt: Option<RawJwt>,
    /// The shared decision cache; absent = off.
    cache: Option<RawCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    cluster: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    authority: Option<String>,
    path: Option<String>,
    timeout_ms: Option<u64>,
    request_headers: Option<Vec<String>>,
    upstream_headers: Option<Vec<String>>,
    client_headers: Option<Vec<String>>,
    allow_statuses: Option<Vec<u32>>,
    max_response_bytes: Option<usize>,
    // Traefik forwardAuth contract (see forward.rs).
    forward_auth: Option<bool>,
    trust_forward_header: Option<bool>,
    upstream_headers_regex: Option<String>,
    add_auth_cookies_to_response: Option<Vec<String>>,
}

/// The validated, compiled configuration.
#[derive(Debug)]
pub struct Settings {
    pub auth: AuthSettings,
    /// Removed from every client request; always includes `auth.upstream_headers`.
    pub strip: HeaderNames,
    pub public: PublicPaths,
    pub status_on_error: u32,
    /// Local JWT verification, when configured.
    pub jwt: Option<JwtSettings>,
    /// The shared decision cache, when configured.
    pub cache: Option<CacheSettings>,
}

#[derive(Debug)]
pub struct AuthSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    /// Client request headers sent to the auth service.
    pub request_headers: HeaderNames,
    /// Auth response headers copied onto the upstream request on allow.
    pub upstream_headers: HeaderNames,
    /// Auth response headers passed to the client on deny.
    pub client_headers: HeaderNames,
    pub allow_statuses: Vec<u32>,
    pub max_response_bytes: usize,
    // Traefik forwardAuth contract (see forward.rs).
    /// Send `X-Forwarded-Method/Proto/Host/Uri/For` to the auth service (Traefik always does).
    pub forward_auth: bool,
    /// Take the client's `X-Forwarded-*` as true (Traefik `trustForwardHeader`).
    pub trust_forward_header: bool,
    /// Auth response headers copied upstream by pattern (`authResponseHeadersRegex`);
    /// client-sent headers it matches are stripped on every path.
    pub upstream_headers_regex: Option<HeaderRegex>,
    /// Cookies an allowing auth response sets on the client (`addAuthCookiesToResponse`).
    pub add_auth_cookies_to_response: Vec<String>,
}

/// A configuration error, naming the field (`auth.timeout_ms`, `public_paths[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid plugin configuration: {}", self.message)
        } else {
            write!(f, "invalid plugin configuration: {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Parses and validates the plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        // serde would read a struct from a JSON array too; users must write objects.
        for (field, object) in
            [("", Some(&value)), ("auth", value.get("auth")), ("jwt", value.get("jwt")), ("cache", value.get("cache"))]
        {
            if let Some(object) = object.filter(|v| !v.is_object()) {
                return Err(ConfigError::new(field, format!("expected a JSON object, got {}", kind(object))));
            }
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.inner().to_string()))?;
        let mut settings = Settings::try_from(raw)?;
        if let Some(cache) = &mut settings.cache {
            cache.fingerprint = cache::fingerprint(bytes);
        }
        Ok(settings)
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

    fn try_from(raw: RawConfig) -> Result<Settings, ConfigError> {
        let auth = AuthSettings::try_from(raw.auth)?;

        let strip_names = strings_or(raw.strip_headers, &IDENTITY_HEADERS);
        let mut strip = HeaderNames::parse("strip_headers", &strip_names, true)?;
        strip.extend(&auth.upstream_headers);

        let mut templates = strings_or(raw.public_paths, &DEFAULT_PUBLIC_PATHS);
        let mut fields: Vec<String> = (0..templates.len()).map(|i| format!("public_paths[{i}]")).collect();
        if let Some(prefix) = raw.frontend_prefix {
            if prefix.contains('{') {
                return Err(ConfigError::new("frontend_prefix", "must be a plain path, without {parameters}"));
            }
            templates.push(prefix);
            fields.push("frontend_prefix".to_string());
        }
        let public = PublicPaths::compile(&templates, &fields)?;

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
        }

        let cache = raw.cache.map(CacheSettings::parse).transpose()?;

        Ok(Settings { auth, strip, public, status_on_error, jwt, cache })
    }
}

impl TryFrom<RawAuth> for AuthSettings {
    type Error = ConfigError;

    fn try_from(raw: RawAuth) -> Result<AuthSettings, ConfigError> {
        let (cluster, derived_authority) =
            cluster_and_authority("auth", "the auth service", raw.cluster.as_deref(), raw.host.as_deref(), raw.port)?;
        let authority = raw.authority.unwrap_or(derived_authority);
        if authority.is_empty() || !authority.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new("auth.authority", "must be a non-empty host[:port] without spaces"));
        }
        let path = raw.path.unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "auth.path",
                "must start with '/' and contain no spaces or control characters",
            ));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ConfigError::new(
                "auth.timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}, got {timeout_ms}"),
            ));
        }
        let allow_statuses = raw.allow_statuses.unwrap_or_else(|| vec![200]);
        if allow_statuses.is_empty() {
            return Err(ConfigError::new("auth.allow_statuses", "must list at least one status"));
        }
        if let Some(bad) = allow_statuses.iter().find(|s| !(200..=299).contains(*s)) {
            return Err(ConfigError::new("auth.allow_statuses", format!("only 2xx statuses can allow, got {bad}")));
        }
        let max_response_bytes = raw.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        if max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            return Err(ConfigError::new(
                "auth.max_response_bytes",
                format!("must be at most {MAX_MAX_RESPONSE_BYTES}, got {max_response_bytes}"),
            ));
        }

        let request_headers = strings_or(raw.request_headers, &DEFAULT_REQUEST_HEADERS);
        let upstream_headers = strings_or(raw.upstream_headers, &IDENTITY_HEADERS);
        let client_headers = strings_or(raw.client_headers, &DEFAULT_CLIENT_HEADERS);

        // Traefik forwardAuth contract. Generating X-Forwarded-* is safe (the values are
        // what Envoy saw), so it is on; trusting the client's is not, so it is off.
        let forward_auth = raw.forward_auth.unwrap_or(true);
        let trust_forward_header = raw.trust_forward_header.unwrap_or(false);
        if !trust_forward_header {
            let generated = |n: &str| forward_auth && forward::is_generated(n);
            if let Some((i, name)) =
                request_headers.iter().enumerate().find(|(_, n)| forward::is_x_forwarded(n) && !generated(n))
            {
                return Err(ConfigError::new(
                    format!("auth.request_headers[{i}]"),
                    format!(
                        "{name:?} is a forwarding header the client could forge; it is only sent with \
                         trust_forward_header (forward_auth generates X-Forwarded-Method/Proto/Host/Uri/For)"
                    ),
                ));
            }
        }
        let upstream_headers_regex = match &raw.upstream_headers_regex {
            Some(source) => Some(HeaderRegex::compile("auth.upstream_headers_regex", source)?),
            None => None,
        };
        let add_auth_cookies_to_response = forward::cookie_names(
            "auth.add_auth_cookies_to_response",
            &raw.add_auth_cookies_to_response.unwrap_or_default(),
        )?;

        Ok(AuthSettings {
            cluster,
            authority,
            path,
            timeout: Duration::from_millis(timeout_ms),
            request_headers: HeaderNames::parse("auth.request_headers", &request_headers, true)?,
            upstream_headers: HeaderNames::parse_injectable("auth.upstream_headers", &upstream_headers)?,
            client_headers: HeaderNames::parse_injectable("auth.client_headers", &client_headers)?,
            allow_statuses,
            max_response_bytes,
            forward_auth,
            trust_forward_header,
            upstream_headers_regex,
            add_auth_cookies_to_response,
        })
    }
}

/// A service the filter calls, named by `<at>.cluster` as given, or Istio's way by
/// `<at>.host`/`<at>.port` (`outbound|<port>||<fqdn>`); the authority defaults to
/// `host:port` or the cluster name. Shared by `auth` and the JWT `remote_jwks`.
pub(crate) fn cluster_and_authority(
    at: &str,
    what: &str,
    cluster: Option<&str>,
    host: Option<&str>,
    port: Option<u16>,
) -> Result<(String, String), ConfigError> {
    let host = match (host, port) {
        (Some(host), Some(port)) => {
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                return Err(ConfigError::new(format!("{at}.host"), format!("{host:?} is not a host name")));
            }
            Some((host, port))
        }
        (Some(_), None) => return Err(ConfigError::new(format!("{at}.port"), format!("is required with {at}.host"))),
        (None, Some(_)) => return Err(ConfigError::new(format!("{at}.host"), format!("is required with {at}.port"))),
        (None, None) => None,
    };
    match (cluster, host) {
        (Some(cluster), _) if cluster.trim().is_empty() => {
            Err(ConfigError::new(format!("{at}.cluster"), format!("must name the Envoy cluster of {what}")))
        }
        (Some(cluster), Some((host, port))) => Ok((cluster.to_owned(), format!("{host}:{port}"))),
        (Some(cluster), None) => Ok((cluster.to_owned(), cluster.to_owned())),
        (None, Some((host, port))) => Ok((format!("outbound|{port}||{host}"), format!("{host}:{port}"))),
        (None, None) => Err(ConfigError::new(
            at,
            format!("name {what}: {at}.cluster (an Envoy cluster) or {at}.host and {at}.port (Istio)"),
        )),
    }
}

fn strings_or(value: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    value.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn err(json: &str) -> String {
        Settings::from_json(json.as_bytes()).expect_err("config should be rejected").to_string()
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
    fn upstream_headers_are_always_stripped() {
        let s =
            Settings::from_json(br#"{"auth": {"cluster": "a", "upstream_headers": ["x-user"]}, "strip_headers": []}"#)
                .unwrap();
        assert!(s.strip.contains("x-user"));
    }

    /// Bad input gets one clear line naming the field: the exact texts users will see.
    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid plugin configuration: not valid JSON: EOF while parsing a value at line 1 column 0"),
            ("{}", "invalid plugin configuration: missing field `auth`"),
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
                "invalid plugin configuration: auth.timout_ms: unknown field `timout_ms`, expected one of `cluster`, `host`, `port`, `authority`, `path`, `timeout_ms`, `request_headers`, `upstream_headers`, `client_headers`, `allow_statuses`, `max_response_bytes`, `forward_auth`, `trust_forward_header`, `upstream_headers_regex`, `add_auth_cookies_to_response`",
            ),
            (
                r#"{"auth": {"cluster": "a", "request_headers": ["authorization", "X-Forwarded-Prefix"]}}"#,
                "invalid plugin configuration: auth.request_headers[1]: \"X-Forwarded-Prefix\" is a forwarding header the client could forge; it is only sent with trust_forward_header (forward_auth generates X-Forwarded-Method/Proto/Host/Uri/For)",
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
                "invalid plugin configuration: fail_open: unknown field `fail_open`, expected one of `auth`, `strip_headers`, `public_paths`, `frontend_prefix`, `status_on_error`, `jwt`, `cache`",
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
                r#"{"auth": {"cluster": "a"}, "public_paths": ["/a/{*rest}"]}"#,
                "invalid plugin configuration: public_paths[0]: \"/a/{*rest}\": {*catch-all} is implied (every public path covers what is below it)",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(&err(json), expected, "config: {json}");
        }
    }
}
