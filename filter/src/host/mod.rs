//! The proxy-wasm host side, thin: the root context ([`root`]: configuration, timers),
//! the http context ([`http`]: one request's steps in order, each in [`steps`]), the
//! JWKS fetches through shared data ([`jwks`], OIDC discovery in [`discovery`]), Envoy's
//! signature check ([`crypto`]), counters
//! ([`metrics`]), local replies ([`reply`]), the request facts `auth.headers_to_add` prints
//! ([`request_info`]), the per-request log lines ([`request_log`])
//! and the host clock ([`clock`]). Only [`header_map`], the host's header
//! wire format, is pure and also built natively (unit tests, benchmarks); the rest
//! exists only in the wasm build.

pub mod header_map;

#[cfg(target_family = "wasm")]
mod clock;
#[cfg(target_family = "wasm")]
mod crypto;
#[cfg(target_family = "wasm")]
mod discovery;
#[cfg(target_family = "wasm")]
mod http;
#[cfg(target_family = "wasm")]
mod jwks;
#[cfg(target_family = "wasm")]
mod metrics;
#[cfg(target_family = "wasm")]
mod reply;
#[cfg(target_family = "wasm")]
mod request_info;
#[cfg(target_family = "wasm")]
mod request_log;
#[cfg(target_family = "wasm")]
mod root;
#[cfg(target_family = "wasm")]
mod steps;
