//! nebula-authz: Prefect's policy-mode authorization as a proxy-wasm filter.
//!
//! One request, in a straight line (`flow::request::Request::run` lists the steps):
//! strip spoofed identity headers → access rules → public path? → JWT (local verdict,
//! or on) → cache → callout (or wait for an identical one) → decide → inject or reply.
//!
//! Modules, bottom up (each imports only those above it in this list):
//! - [`error`]: the `ConfigError` every compile step returns.
//! - [`string_map`]: a JSON object of strings as users write it, in key order.
//! - [`bytes`]: byte-string equality a word at a time (the module's `memcmp` is bytewise).
//! - [`cluster`]: the Envoy cluster and authority of a service the filter calls.
//! - [`metric_names`]: the filter's counters and histograms and their names.
//! - [`telemetry`]: the `telemetry` block, and a request's decision as the access log's text.
//! - [`policy`]: the request policy, pure: the `auth` block, public paths, header sets,
//!   the forwardAuth contract, a request's plan and the auth service's verdict.
//! - [`access`]: source ranges, trusted proxies and mTLS principals (plain data).
//! - [`cache`]: the shared decision cache and callout coalescing (plain data).
//! - [`jwt`]: local JWT verification and the JWKS schedule (plain data).
//! - [`authz_policy`]: Istio CUSTOM AuthorizationPolicy rules: which provider checks
//!   which request (plain data).
//! - [`plugin_config`]: the whole plugin configuration (`Settings`), composed from the features.
//! - [`flow`]: the request flow as a state machine over one host trait, with its
//!   per-worker state; plain Rust, tested natively against an in-memory host.
//! - `wasm`: the thin proxy-wasm adapter (wasm build only): the contexts, and the host
//!   trait over `proxy_wasm::hostcalls`.
//!
//! Everything but `wasm` is plain Rust, unit-tested natively.

pub mod access;
pub mod authz_policy;
pub mod bytes;
pub mod cache;
pub mod cluster;
pub mod error;
pub mod flow;
pub mod jwt;
pub mod metric_names;
pub mod plugin_config;
pub mod policy;
pub mod string_map;
pub mod telemetry;
#[cfg(target_family = "wasm")]
mod wasm;
