//! The host side of OIDC discovery (jwt/discovery.rs): which fetches in flight are for an
//! openid-configuration, and the `jwks_uri` path found, kept in shared data so that the
//! document is fetched once per Envoy, not once per worker or refresh.

use std::cell::RefCell;

use proxy_wasm::hostcalls;

use crate::jwt::config::RemoteJwks;

/// Discovery calls a worker may have in flight at once (the fetch lease allows one per
/// provider; a stream reset may strand a token, so the list is capped).
const MAX_IN_FLIGHT: usize = 64;

thread_local! {
    /// Tokens of this VM's calls in flight for an openid-configuration.
    static CALLS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

fn path_key(remote: &RemoteJwks) -> String {
    format!("{}|jwks_path", remote.shared_key())
}

/// The JWKS path discovery found for this endpoint, if any VM found one.
pub fn known_path(remote: &RemoteJwks) -> Option<String> {
    let (bytes, _) = hostcalls::get_shared_data(&path_key(remote)).ok()?;
    String::from_utf8(bytes?).ok().filter(|p| !p.is_empty())
}

/// Publishes the JWKS path for every VM.
pub fn remember(remote: &RemoteJwks, path: &str) {
    let _ = hostcalls::set_shared_data(&path_key(remote), Some(path.as_bytes()), None);
}

/// The JWKS fetch failed: discover again next time (the provider may have moved it).
pub fn forget(remote: &RemoteJwks) {
    let _ = hostcalls::set_shared_data(&path_key(remote), Some(b""), None);
}

/// `token` is a call for an openid-configuration.
pub fn mark(token: u32) {
    CALLS.with(|c| {
        let mut calls = c.borrow_mut();
        if calls.len() >= MAX_IN_FLIGHT {
            calls.remove(0);
        }
        calls.push(token);
    });
}

/// Whether `token` was a call for an openid-configuration (and forgets it).
pub fn take(token: u32) -> bool {
    CALLS.with(|c| {
        let mut calls = c.borrow_mut();
        let found = calls.iter().position(|t| *t == token);
        found.map(|i| calls.swap_remove(i)).is_some()
    })
}
