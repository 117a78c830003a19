//! The decision cache shared by all workers of one Envoy: settings, keys and the slot
//! format in proxy-wasm shared data ([`shared`]), how long an auth answer may be reused
//! ([`control`]: `Cache-Control`), the per-worker front of decoded decisions
//! ([`local`]), and coalescing of identical callouts on one worker ([`coalesce`]).
//! Plain data; the host side (flow/steps/cache.rs) does the shared-data calls.

pub mod coalesce;
pub mod control;
pub mod local;
pub mod shared;
