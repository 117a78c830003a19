//! The fetching side of OIDC discovery (jwt/oidc_discovery.rs): which fetches in flight
//! are for an openid-configuration, and the `jwks_uri` path found, kept in shared data so
//! that the document is fetched once per Envoy, not once per worker or refresh.

use crate::flow::host::Host;
use crate::flow::worker::Worker;
use crate::jwt::jwt_config::RemoteJwks;

/// Discovery calls a worker may have in flight at once (the fetch lease allows one per
/// provider; a stream reset may strand a token, so the list is capped).
const MAX_IN_FLIGHT: usize = 64;

fn path_key(remote: &RemoteJwks) -> String {
    format!("{}|jwks_path", remote.shared_key())
}

/// The JWKS path discovery found for this endpoint, if any VM found one.
pub fn known_path<H: Host>(host: &H, remote: &RemoteJwks) -> Option<String> {
    let (bytes, _) = host.shared_get(&path_key(remote)).ok()?;
    String::from_utf8(bytes?).ok().filter(|p| !p.is_empty())
}

/// Publishes the JWKS path for every VM.
pub fn remember<H: Host>(host: &H, remote: &RemoteJwks, path: &str) {
    let _ = host.shared_set(&path_key(remote), path.as_bytes(), None);
}

/// The JWKS fetch failed: discover again next time (the provider may have moved it).
pub fn forget<H: Host>(host: &H, remote: &RemoteJwks) {
    let _ = host.shared_set(&path_key(remote), b"", None);
}

/// `token` is a call for an openid-configuration.
pub fn mark(worker: &mut Worker, token: u32) {
    let calls = &mut worker.discovery_calls;
    if calls.len() >= MAX_IN_FLIGHT {
        calls.remove(0);
    }
    calls.push(token);
}

/// Whether `token` was a call for an openid-configuration (and forgets it).
pub fn take(worker: &mut Worker, token: u32) -> bool {
    let calls = &mut worker.discovery_calls;
    let found = calls.iter().position(|t| *t == token);
    found.map(|i| calls.swap_remove(i)).is_some()
}
