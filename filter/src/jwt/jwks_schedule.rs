//! When to fetch a remote JWKS, shared by every worker of one Envoy.
//!
//! Each endpoint has a small [`FetchState`] in proxy-wasm shared data. A worker (or the
//! main thread's root context) that finds a fetch due takes a lease on it with a CAS
//! write; only the lease holder fetches, and it publishes the document and the new
//! state for the others to read. So the endpoint sees one fetch per Envoy, not one per
//! worker. This module is the pure part: the state, its text form, and the schedule.

use std::time::Duration;

use serde_json::Value;

use crate::jwt::jwt_config::RemoteJwks;
use crate::jwt::keys::{Alg, KeySet};

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why a fetch is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The periodic refresh (root context tick).
    Timer,
    /// A token names a `kid` no key has, or there are no keys yet.
    MissingKey,
}

/// The shared state of one JWKS endpoint (all times Unix ms; 0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchState {
    /// Last fetch started.
    pub attempt_ms: u64,
    /// Last fetch that returned a usable JWKS.
    pub success_ms: u64,
    /// A fetch is in flight until then (its holder's timeout plus a margin).
    pub lease_until_ms: u64,
    /// Bumped on every published document: workers reload their keys when it moves.
    pub version: u64,
}

impl FetchState {
    /// Reads the text form; anything unreadable is a fresh state (a fetch becomes due).
    pub fn decode(bytes: &[u8]) -> FetchState {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut n = text.split(' ').map(|v| v.parse::<u64>().ok());
        match (n.next().flatten(), n.next().flatten(), n.next().flatten(), n.next().flatten(), n.next()) {
            (Some(attempt_ms), Some(success_ms), Some(lease_until_ms), Some(version), None) => {
                FetchState { attempt_ms, success_ms, lease_until_ms, version }
            }
            _ => FetchState::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        format!("{} {} {} {}", self.attempt_ms, self.success_ms, self.lease_until_ms, self.version).into_bytes()
    }

    /// Whether a fetch should start now. Nobody fetches while a lease runs; refetches
    /// (after a failure, or for an unknown `kid`) wait `min_refresh_interval` after the
    /// last attempt; the timer refreshes `refresh_interval` after the last success.
    pub fn due(&self, now_ms: u64, remote: &RemoteJwks, why: Why) -> bool {
        if now_ms < self.lease_until_ms {
            return false;
        }
        let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));
        let retry_ok = self.attempt_ms == 0 || since(self.attempt_ms) >= remote.min_refresh_interval;
        match why {
            Why::MissingKey => retry_ok,
            Why::Timer if self.success_ms == 0 => retry_ok,
            Why::Timer => retry_ok && since(self.success_ms) >= remote.refresh_interval,
        }
    }

    /// The state a lease holder writes before fetching.
    pub fn leased(&self, now_ms: u64, remote: &RemoteJwks) -> FetchState {
        let lease = remote.timeout + Duration::from_secs(1);
        FetchState { attempt_ms: now_ms, lease_until_ms: now_ms.saturating_add(lease.as_millis() as u64), ..*self }
    }

    /// The state after the fetch: the lease ends; a success publishes a new version.
    pub fn finished(&self, now_ms: u64, ok: bool) -> FetchState {
        let mut next = FetchState { lease_until_ms: 0, ..*self };
        if ok {
            next.success_ms = now_ms;
            next.version = self.version.wrapping_add(1);
        }
        next
    }
}

/// The keys in a JWKS response, or why it is not usable (then the old keys stay).
pub fn parse_response(status: Option<&[u8]>, body: &[u8], algorithms: &[Alg]) -> Result<KeySet, String> {
    match status {
        Some(b"200") => {}
        Some(s) => return Err(format!("status {}", String::from_utf8_lossy(s))),
        None => return Err("no response (timeout, reset or unreachable)".into()),
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("body of {} bytes is over {MAX_JWKS_BYTES}", body.len()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    KeySet::from_jwks(&value, algorithms).map(|(keys, _skipped)| keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp".into(),
            path: "/jwks".into(),
            timeout: Duration::from_millis(500),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            discovery: false,
        }
    }

    #[test]
    fn text_form_round_trips_and_garbage_is_fresh() {
        let s = FetchState { attempt_ms: 1, success_ms: 2, lease_until_ms: 3, version: 4 };
        assert_eq!(FetchState::decode(&s.encode()), s);
        for bad in [&b""[..], b"1 2 3", b"1 2 3 4 5", b"a b c d", b"\xff"] {
            assert_eq!(FetchState::decode(bad), FetchState::default(), "{bad:?}");
        }
    }

    #[test]
    fn schedule() {
        let r = remote();
        let fresh = FetchState::default();
        assert!(fresh.due(5, &r, Why::Timer), "never fetched: fetch now");
        assert!(fresh.due(5, &r, Why::MissingKey));

        let leased = fresh.leased(1_000, &r);
        assert_eq!(leased.lease_until_ms, 2_500);
        assert!(!leased.due(2_000, &r, Why::MissingKey), "one fetch at a time");

        let ok = leased.finished(1_200, true);
        assert_eq!((ok.success_ms, ok.version, ok.lease_until_ms), (1_200, 1, 0));
        assert!(!ok.due(5_000, &r, Why::MissingKey), "unknown kid: rate-limited");
        assert!(ok.due(11_000, &r, Why::MissingKey));
        assert!(!ok.due(11_000, &r, Why::Timer), "keys are fresh");
        assert!(ok.due(301_200, &r, Why::Timer));

        let failed = ok.leased(400_000, &r).finished(400_100, false);
        assert_eq!((failed.success_ms, failed.version), (1_200, 1), "a failure keeps the published keys");
        assert!(!failed.due(405_000, &r, Why::Timer), "retries wait min_refresh_interval");
        assert!(failed.due(410_000, &r, Why::Timer));
    }

    #[test]
    fn responses() {
        let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let body = format!(r#"{{"keys": [{jwk}]}}"#);
        assert_eq!(parse_response(Some(b"200"), body.as_bytes(), &Alg::ASYMMETRIC).unwrap().keys.len(), 1);
        let err = |status: Option<&[u8]>, body: &[u8]| parse_response(status, body, &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err(Some(b"503"), b""), "status 503");
        assert_eq!(err(None, b""), "no response (timeout, reset or unreachable)");
        assert_eq!(err(Some(b"200"), b"<html>"), "not JSON: expected value at line 1 column 1");
        assert_eq!(err(Some(b"200"), br#"{"keys": []}"#), "no usable key (no keys)");
        assert_eq!(err(Some(b"200"), &vec![b' '; MAX_JWKS_BYTES + 1]), "body of 262145 bytes is over 262144");
    }
}
