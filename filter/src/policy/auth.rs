//! The `auth` block: which service decides and how it is asked (request headers,
//! timeout, forwardAuth contract), and which of its response headers go where. As users
//! write it (serde), then compiled into [`AuthSettings`].

use std::time::Duration;

use serde::Deserialize;

use crate::cluster::cluster_and_authority;
use crate::error::ConfigError;
use crate::policy::ext_authz::{self, ExtAuthzSettings, Protocol};
use crate::policy::forward::{self, HeaderRegex};
use crate::policy::headers::HeaderNames;
use crate::policy::request_body::{self, RawRequestBody, RequestBodySettings};
use crate::policy::trace::{self, TraceHeaders};
use crate::string_map::StringMap;

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
    retry_on_reset: Option<bool>,
    request_headers: Option<Vec<String>>,
    upstream_headers: Option<Vec<String>>,
    client_headers: Option<Vec<String>>,
    allow_statuses: Option<Vec<u32>>,
    max_response_bytes: Option<usize>,
    // Traefik forwardAuth contract (see policy/forward.rs).
    forward_auth: Option<bool>,
    trust_forward_header: Option<bool>,
    preserve_request_method: Option<bool>,
    upstream_headers_regex: Option<String>,
    add_auth_cookies_to_response: Option<Vec<String>>,
    forward_body: Option<bool>,
    max_body_size: Option<i64>,
    // Envoy ext_authz contract (see policy/ext_authz.rs).
    protocol: Option<Protocol>,
    path_prefix: Option<String>,
    path_override: Option<String>,
    headers_to_add: Option<StringMap>,
    upstream_headers_to_append: Option<Vec<String>>,
    client_headers_on_success: Option<Vec<String>>,
    with_request_body: Option<RawRequestBody>,
    trace_headers: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct AuthSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    /// Send a callout once more, within `timeout`, when Envoy reports its connection reset
    /// or refused before any response byte (policy/envoy_reply.rs); never an answer.
    pub retry_on_reset: bool,
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
    /// The callout uses the client's method instead of `GET` (Traefik `preserveRequestMethod`).
    pub preserve_request_method: bool,
    /// Auth response headers copied upstream by pattern (`authResponseHeadersRegex`);
    /// client-sent headers it matches are stripped on every path.
    pub upstream_headers_regex: Option<HeaderRegex>,
    /// Cookies an allowing auth response sets on the client (`addAuthCookiesToResponse`).
    pub add_auth_cookies_to_response: Vec<String>,
    /// The callout's shape: forwardAuth's (default) or ext_authz's.
    pub protocol: Protocol,
    /// The ext_authz shape's path and static headers.
    pub ext_authz: ExtAuthzSettings,
    /// Auth response headers added upstream next to the client's values on allow.
    pub upstream_headers_to_append: HeaderNames,
    /// Auth response headers added to the client's response on allow.
    pub client_headers_on_success: HeaderNames,
    /// `client_headers` was not set with ext_authz: every auth response header goes to
    /// the client on deny (ext_authz's default).
    pub client_headers_all: bool,
    /// The client's body in the callout: ext_authz `with_request_body`, or forwardAuth
    /// `forward_body` + `max_body_size` (policy/request_body.rs).
    pub with_request_body: Option<RequestBodySettings>,
    /// The request's trace headers every callout carries (policy/trace.rs).
    pub trace_headers: TraceHeaders,
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
        ext_authz::check_path("auth.path", &path, false)?;
        let protocol = raw.protocol.unwrap_or_default();
        let ext = protocol == Protocol::ExtAuthz;
        for (field, set) in [
            ("auth.path_prefix", raw.path_prefix.is_some()),
            ("auth.path_override", raw.path_override.is_some()),
            ("auth.headers_to_add", raw.headers_to_add.is_some()),
            ("auth.with_request_body", raw.with_request_body.is_some()),
        ] {
            if set && !ext {
                return Err(ConfigError::new(field, "only applies with \"protocol\": \"ext_authz\""));
            }
        }
        if ext && (raw.forward_body.is_some() || raw.max_body_size.is_some()) {
            return Err(ConfigError::new(
                "auth.forward_body",
                "forward_body and max_body_size are the forward-auth shape's; with \"protocol\": \"ext_authz\" \
                 use with_request_body",
            ));
        }
        if ext && raw.preserve_request_method.is_some() {
            return Err(ConfigError::new(
                "auth.preserve_request_method",
                "the forward-auth shape's; with \"protocol\": \"ext_authz\" the callout always has the client's method",
            ));
        }
        if ext && (raw.forward_auth == Some(true) || raw.trust_forward_header == Some(true)) {
            return Err(ConfigError::new(
                "auth.protocol",
                "ext_authz sends no X-Forwarded-* of its own: forward_auth and trust_forward_header do not apply",
            ));
        }
        let path_prefix = raw.path_prefix.unwrap_or_default();
        ext_authz::check_path("auth.path_prefix", &path_prefix, true)?;
        if let Some(path) = &raw.path_override {
            ext_authz::check_path("auth.path_override", path, false)?;
        }
        let ext_settings = ExtAuthzSettings {
            path_prefix,
            path_override: raw.path_override,
            headers_to_add: ext_authz::compile_headers_to_add(raw.headers_to_add)?,
        };
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

        // ext_authz's defaults: only `authorization` of the client's headers (always sent),
        // every auth response header to the client on deny.
        let client_headers_all = ext && raw.client_headers.is_none();
        let request_headers = strings_or(raw.request_headers, if ext { &[] } else { &DEFAULT_REQUEST_HEADERS });
        let upstream_headers = strings_or(raw.upstream_headers, &IDENTITY_HEADERS);
        let mut client_headers = strings_or(raw.client_headers, if ext { &[] } else { &DEFAULT_CLIENT_HEADERS });
        if ext && !client_headers_all {
            client_headers.extend(ext_authz::DENY_CLIENT_DEFAULTS.iter().map(|s| s.to_string()));
        }
        let upstream_headers_to_append = HeaderNames::parse_injectable(
            "auth.upstream_headers_to_append",
            &raw.upstream_headers_to_append.unwrap_or_default(),
        )?;
        let client_headers_on_success = HeaderNames::parse_injectable(
            "auth.client_headers_on_success",
            &raw.client_headers_on_success.unwrap_or_default(),
        )?;

        // Traefik forwardAuth contract. Generating X-Forwarded-* is safe (the values are
        // what Envoy saw), so it is on; trusting the client's is not, so it is off. With
        // ext_authz the client's forwarding headers are what Envoy's connection manager
        // made of them, as ext_authz sees them.
        let forward_auth = !ext && raw.forward_auth.unwrap_or(true);
        let trust_forward_header = raw.trust_forward_header.unwrap_or(false);
        if !trust_forward_header && !ext {
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

        let request_headers = HeaderNames::parse("auth.request_headers", &request_headers, true)?;
        let added: Vec<&str> = ext_settings.headers_to_add.iter().map(|(n, _)| n.as_str()).collect();
        let trace_headers = trace::compile(raw.trace_headers, &request_headers, &added)?;

        Ok(AuthSettings {
            cluster,
            authority,
            path,
            timeout: Duration::from_millis(timeout_ms),
            retry_on_reset: raw.retry_on_reset.unwrap_or(true),
            request_headers,
            upstream_headers: HeaderNames::parse_injectable("auth.upstream_headers", &upstream_headers)?,
            client_headers: HeaderNames::parse_injectable("auth.client_headers", &client_headers)?,
            allow_statuses,
            max_response_bytes,
            forward_auth,
            trust_forward_header,
            preserve_request_method: raw.preserve_request_method.unwrap_or(false),
            upstream_headers_regex,
            add_auth_cookies_to_response,
            protocol,
            ext_authz: ext_settings,
            upstream_headers_to_append,
            client_headers_on_success,
            client_headers_all,
            with_request_body: match raw.with_request_body {
                Some(body) => Some(RequestBodySettings::try_from(body)?),
                None => request_body::forward_body(raw.forward_body, raw.max_body_size)?,
            },
            trace_headers,
        })
    }
}

pub(crate) fn strings_or(value: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    value.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}
