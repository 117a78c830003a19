//! nebula-authz: Prefect's policy-mode authorization as a proxy-wasm filter.
//!
//! One request, in a straight line:
//! [`config`] (parsed once) → [`route`] (is the path public?) → [`request`] (strip spoofed
//! identity headers, build the callout) → [`decision`] (allow, deny or fail closed) →
//! inject. Everything above is plain Rust, unit-tested natively; `adapter` is the thin
//! proxy-wasm layer that does the host calls and exists only in the wasm build.

pub mod cache;
pub mod cache_control;
pub mod cache_local;
pub mod coalesce;
pub mod config;
pub mod decision;
pub mod forward;
pub mod header_map;
pub mod headers;
pub mod jwks_fetch;
pub mod jwt;
pub mod jwt_cache;
pub mod jwt_config;
pub mod jwt_keys;
pub mod metrics;
pub mod request;
pub mod route;

#[cfg(target_family = "wasm")]
mod adapter;
#[cfg(target_family = "wasm")]
mod jwt_adapter;
