//! Remote JWKS fetched once per Envoy through shared data, into the worker's verifier.
//! The decisions themselves are in jwt/verifier.rs and jwt/jwks_schedule.rs; the request
//! step is flow/steps/jwt.rs. A provider with `discovery` first fetches its
//! openid-configuration, under the same lease (flow/discovery_fetch.rs).

use std::borrow::Cow;
use std::time::Duration;

use log::{info, warn};

use crate::flow::counters::JwtCounter;
use crate::flow::discovery_fetch as discovery;
use crate::flow::header_map;
use crate::flow::host::{Body, Host, Map, Refused};
use crate::flow::worker::Worker;
use crate::jwt::jwks_schedule::{self as jwks, FetchState, Why};
use crate::jwt::jwt_config::{JwtSettings, Provider, RemoteJwks};

/// How often each root context looks at the shared JWKS state (a cheap shared-data
/// read); the refresh interval itself is per provider.
pub const TICK: Duration = Duration::from_secs(1);

fn state_key(provider: &Provider) -> Option<(String, String)> {
    let remote = provider.remote.as_ref()?;
    let base = remote.shared_key();
    Some((format!("{base}|state"), format!("{base}|jwks")))
}

fn read_state<H: Host>(host: &H, key: &str) -> (FetchState, Option<u32>) {
    match host.shared_get(key) {
        Ok((Some(bytes), cas)) => (FetchState::decode(&bytes), cas),
        _ => (FetchState::default(), None),
    }
}

/// Loads the provider's keys from shared data if another VM published newer ones.
/// Returns whether the keys changed.
pub fn sync<H: Host>(host: &H, settings: &JwtSettings, worker: &mut Worker, provider: usize) -> bool {
    let Some(verifier) = worker.verifier(settings) else { return false };
    let Some(p) = settings.providers.get(provider) else { return false };
    let Some((state_key, jwks_key)) = state_key(p) else { return false };
    let (shared, _) = read_state(host, &state_key);
    if shared.version == 0 || verifier.remote_version(provider) == Some(shared.version) {
        return false;
    }
    let Ok((Some(body), _)) = host.shared_get(&jwks_key) else { return false };
    match jwks::parse_response(Some(b"200"), &body, &p.algorithms) {
        Ok(keys) => {
            verifier.set_remote_keys(provider, keys, shared.version);
            true
        }
        Err(e) => {
            warn!("JWKS of {:?} in shared data is not usable: {e}", p.issuer);
            false
        }
    }
}

/// When a fetch of the provider's keys (by any VM) is in flight at `now_ms`: until when
/// its lease runs (`None`: no fetch in flight).
pub fn in_flight<H: Host>(host: &H, settings: &JwtSettings, provider: usize, now_ms: u64) -> Option<u64> {
    let (state_key, _) = state_key(settings.providers.get(provider)?)?;
    let (current, _) = read_state(host, &state_key);
    (now_ms < current.lease_until_ms).then_some(current.lease_until_ms)
}

/// Takes the provider's fetch lease if a fetch is due, and dispatches the fetch.
/// Returns the call's token; `None` when another VM fetches or nothing is due.
pub fn start_fetch<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &JwtSettings,
    provider: usize,
    why: Why,
) -> Option<u32> {
    let p = settings.providers.get(provider)?;
    let remote = p.remote.as_ref()?;
    let (state_key, _) = state_key(p)?;
    let now = host.now_ms();
    let (mut current, mut cas) = read_state(host, &state_key);
    if cas.is_none() {
        // First use on this Envoy: create the record so that the lease below is a real
        // compare-and-swap (every VM writes the same initial value).
        let _ = host.shared_set(&state_key, &current.encode(), None);
        (current, cas) = read_state(host, &state_key);
    }
    if !current.due(now, remote, why) {
        return None;
    }
    let leased = current.leased(now, remote);
    host.shared_set(&state_key, &leased.encode(), cas).ok()?;
    // OIDC discovery: the openid-configuration first, until a VM has found its jwks_uri.
    let (path, discovering) = match remote.discovery.then(|| discovery::known_path(host, remote)) {
        Some(Some(path)) => (Cow::Owned(path), false),
        Some(None) => (Cow::Borrowed(remote.path.as_str()), true),
        None => (Cow::Borrowed(remote.path.as_str()), false),
    };
    match dispatch(host, remote, &path) {
        Ok(token) => {
            info!("fetching JWKS of {:?} from cluster {:?} {path:?}", p.issuer, remote.cluster);
            if discovering {
                discovery::mark(worker, token);
            }
            Some(token)
        }
        Err(status) => {
            warn!("cannot fetch JWKS of {:?}: cluster {:?} refused the call: {status:?}", p.issuer, remote.cluster);
            // Give the lease back, counted as an attempt (rate-limited like a failure).
            let _ = host.shared_set(&state_key, &leased.finished(now, false).encode(), None);
            None
        }
    }
}

fn dispatch<H: Host>(host: &H, remote: &RemoteJwks, path: &str) -> Result<u32, Refused> {
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
    ];
    host.dispatch(&remote.cluster, headers, None, remote.timeout)
}

/// Handles the fetch response (call `token`): a usable JWKS is published to every VM and
/// loaded here; otherwise the old keys stay. An openid-configuration's answer is the
/// JWKS fetch it leads to: its call token is returned, to wait for in turn.
pub fn finish_fetch<H: Host>(
    host: &H,
    worker: &mut Worker,
    settings: &JwtSettings,
    provider: usize,
    token: u32,
    body_size: usize,
) -> Option<u32> {
    let p = settings.providers.get(provider)?;
    let remote = p.remote.as_ref()?;
    let (state_key, jwks_key) = state_key(p)?;
    let discovering = discovery::take(worker, token);
    let buffer = host.header_map(Map::CalloutAnswer).unwrap_or_default();
    let headers = header_map::parse(&buffer).unwrap_or_default();
    let status = headers.iter().find(|(n, _)| *n == ":status").map(|(_, v)| *v);
    let body = if body_size > jwks::MAX_JWKS_BYTES {
        Err(format!("body of {body_size} bytes is over {}", jwks::MAX_JWKS_BYTES))
    } else {
        Ok(host.body(Body::CalloutAnswer, body_size).unwrap_or_default())
    };
    let now = host.now_ms();
    let (current, _) = read_state(host, &state_key);
    if discovering {
        let next =
            body.and_then(|body| crate::jwt::oidc_discovery::jwks_path(status, &body, &p.issuer, &remote.authority));
        let next = next.and_then(|path| {
            discovery::remember(host, remote, &path);
            info!("OIDC discovery of {:?}: its JWKS is at {path:?}", p.issuer);
            // Still this VM's lease: it runs on for the JWKS fetch.
            let _ = host.shared_set(&state_key, &current.leased(now, remote).encode(), None);
            dispatch(host, remote, &path)
                .map_err(|s| format!("cluster {:?} refused the JWKS fetch: {s:?}", remote.cluster))
        });
        match next {
            Ok(next) => return Some(next),
            Err(e) => {
                let _ = host.shared_set(&state_key, &current.finished(now, false).encode(), None);
                warn!("OIDC discovery of {:?} failed: {e}; keeping the previous keys", p.issuer);
                worker.counters.count_jwt(JwtCounter::JwksFailure);
                return None;
            }
        }
    }
    let result = body.and_then(|body| jwks::parse_response(status, &body, &p.algorithms).map(|keys| (keys, body)));
    match result {
        Ok((keys, body)) => {
            let next = current.finished(now, true);
            let _ = host.shared_set(&jwks_key, &body, None);
            let _ = host.shared_set(&state_key, &next.encode(), None);
            info!("JWKS of {:?}: {} keys (version {})", p.issuer, keys.keys.len(), next.version);
            if let Some(verifier) = worker.verifier(settings) {
                verifier.set_remote_keys(provider, keys, next.version);
            }
            worker.counters.count_jwt(JwtCounter::JwksRefresh);
            None
        }
        Err(e) => {
            if remote.discovery {
                // Discover again on the next attempt: the provider may have moved its keys.
                discovery::forget(host, remote);
            }
            let _ = host.shared_set(&state_key, &current.finished(now, false).encode(), None);
            warn!("JWKS fetch for {:?} failed: {e}; keeping the previous keys", p.issuer);
            worker.counters.count_jwt(JwtCounter::JwksFailure);
            None
        }
    }
}
