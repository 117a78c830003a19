//! The host side of local JWT verification: the per-worker verifier state, and remote
//! JWKS fetched once per Envoy through shared data. The decisions themselves are in
//! jwt/verifier.rs and jwt/jwks.rs; the request step is host/steps/jwt.rs.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use crate::host::clock::now_ms;
use crate::host::metrics::{Counter, JwtMetrics};
use crate::jwt::config::{JwtSettings, Provider};
use crate::jwt::jwks::{self, FetchState, Why};
use crate::jwt::verifier::JwtVerifier;

/// How often each root context looks at the shared JWKS state (a cheap shared-data
/// read); the refresh interval itself is per provider.
pub const TICK: Duration = Duration::from_secs(1);

/// What each VM (worker, or main thread) keeps for JWT: shared by its root and http contexts.
pub struct JwtState {
    pub verifier: JwtVerifier,
    pub metrics: JwtMetrics,
}

fn state_key(provider: &Provider) -> Option<(String, String)> {
    let remote = provider.remote.as_ref()?;
    let base = remote.shared_key();
    Some((format!("{base}|state"), format!("{base}|jwks")))
}

fn read_state(key: &str) -> (FetchState, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), cas)) => (FetchState::decode(&bytes), cas),
        _ => (FetchState::default(), None),
    }
}

/// Loads the provider's keys from shared data if another VM published newer ones.
/// Returns whether the keys changed.
pub fn sync(settings: &JwtSettings, state: &mut JwtState, provider: usize) -> bool {
    let Some(p) = settings.providers.get(provider) else { return false };
    let Some((state_key, jwks_key)) = state_key(p) else { return false };
    let (shared, _) = read_state(&state_key);
    if shared.version == 0 || state.verifier.remote_version(provider) == Some(shared.version) {
        return false;
    }
    let Ok((Some(body), _)) = hostcalls::get_shared_data(&jwks_key) else { return false };
    match jwks::parse_response(Some(b"200"), &body, &p.algorithms) {
        Ok(keys) => {
            state.verifier.set_remote_keys(provider, keys, shared.version);
            true
        }
        Err(e) => {
            warn!("JWKS of {:?} in shared data is not usable: {e}", p.issuer);
            false
        }
    }
}

/// Takes the provider's fetch lease if a fetch is due, and dispatches the fetch.
/// Returns the call's token; `None` when another VM fetches or nothing is due.
pub fn start_fetch(settings: &JwtSettings, provider: usize, why: Why) -> Option<u32> {
    let p = settings.providers.get(provider)?;
    let remote = p.remote.as_ref()?;
    let (state_key, _) = state_key(p)?;
    let now = now_ms();
    let (mut current, mut cas) = read_state(&state_key);
    if cas.is_none() {
        // First use on this Envoy: create the record so that the lease below is a real
        // compare-and-swap (every VM writes the same initial value).
        let _ = hostcalls::set_shared_data(&state_key, Some(&current.encode()), None);
        (current, cas) = read_state(&state_key);
    }
    if !current.due(now, remote, why) {
        return None;
    }
    let leased = current.leased(now, remote);
    hostcalls::set_shared_data(&state_key, Some(&leased.encode()), cas).ok()?;
    let headers = vec![
        (":method", "GET"),
        (":path", remote.path.as_str()),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
    ];
    match hostcalls::dispatch_http_call(&remote.cluster, headers, None, vec![], remote.timeout) {
        Ok(token) => {
            info!("fetching JWKS of {:?} from cluster {:?} {:?}", p.issuer, remote.cluster, remote.path);
            Some(token)
        }
        Err(status) => {
            warn!("cannot fetch JWKS of {:?}: cluster {:?} refused the call: {status:?}", p.issuer, remote.cluster);
            // Give the lease back, counted as an attempt (rate-limited like a failure).
            let _ = hostcalls::set_shared_data(&state_key, Some(&leased.finished(now, false).encode()), None);
            None
        }
    }
}

/// Handles the fetch response: a usable JWKS is published to every VM and loaded here;
/// otherwise the old keys stay. Returns whether new keys were loaded.
pub fn finish_fetch(settings: &JwtSettings, state: &mut JwtState, provider: usize, body_size: usize) -> bool {
    let Some(p) = settings.providers.get(provider) else { return false };
    let Some((state_key, jwks_key)) = state_key(p) else { return false };
    let headers = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let status = headers.iter().find(|(n, _)| n == ":status").map(|(_, v)| v.as_slice());
    let result = if body_size > jwks::MAX_JWKS_BYTES {
        Err(format!("body of {body_size} bytes is over {}", jwks::MAX_JWKS_BYTES))
    } else {
        let body =
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        jwks::parse_response(status, &body, &p.algorithms).map(|keys| (keys, body))
    };
    let now = now_ms();
    let (current, _) = read_state(&state_key);
    match result {
        Ok((keys, body)) => {
            let next = current.finished(now, true);
            let _ = hostcalls::set_shared_data(&jwks_key, Some(&body), None);
            let _ = hostcalls::set_shared_data(&state_key, Some(&next.encode()), None);
            info!("JWKS of {:?}: {} keys (version {})", p.issuer, keys.keys.len(), next.version);
            state.verifier.set_remote_keys(provider, keys, next.version);
            state.metrics.inc(Counter::JwksRefresh);
            true
        }
        Err(e) => {
            let _ = hostcalls::set_shared_data(&state_key, Some(&current.finished(now, false).encode()), None);
            warn!("JWKS fetch for {:?} failed: {e}; keeping the previous keys", p.issuer);
            state.metrics.inc(Counter::JwksFailure);
            false
        }
    }
}
