//! The `auth` block: which service decides and how it is asked (request headers,
//! timeout, forwardAuth contract), and which of its response headers go where. As users
//! write it (serde), then compiled into [`AuthSettings`].

use std::time::Duration;

use serde::Deserialize;

use crate::cluster::cluster_and_authority;
use crate::error::ConfigError;
use crate::policy::forward::{self, HeaderRegex};
use crate::policy::headers::HeaderNames;

/// The identity headers Prefect's auth service returns and the filter injects upstream.
pub const IDENTITY_HEADERS: [&str; 4] =
    ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config", "x-nebula-log-limit-config"];

const DEFAULT_REQUEST_HEADERS: [&str; 3] = ["authorization", "origin", "access-control-request-method"];
const DEFAULT_CLIENT_HEADERS: [&str; 4] = ["www-authenticate", "location", "set-cookie", "content-type"];
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const MAX_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
const MAX_MAX_RESPONSE_BYTES: usize = 16 << 20;
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
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
    // Traefik forwardAuth contract (see policy/forward.rs).
    forward_auth: Option<bool>,
    trust_forward_header: Option<bool>,
    upstream_headers_regex: Option<String>,
    add_auth_cookies_to_response: Option<Vec<String>>,
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
    // Traefik forwardAuth contract (see policy/forward.rs).
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

pub(crate) fn strings_or(value: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    value.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}
