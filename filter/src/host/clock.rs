//! The host's clock, for token expiry, JWKS schedules and cache lifetimes.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;

/// The host's clock, in Unix ms (0 if unavailable: every token then looks expired).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
