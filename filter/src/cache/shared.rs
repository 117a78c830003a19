//! The shared decision cache, host-independent: its configuration, the key (a SHA-256
//! of everything the auth service sees), how long an answer may be reused, and the
//! binary format of a slot. The host side (flow/steps/cache.rs) keeps the encoded slots
//! in proxy-wasm shared data, which every worker VM of one Envoy (same `vm_id`) sees.
//!
//! Shared data cannot be deleted, so the cache is a fixed array of `entries` slots
//! addressed by the key's hash: a new decision overwrites whatever its slot held, and
//! memory stays bounded however many distinct credentials arrive. Each slot stores the
//! full key, so two inputs that share a slot never share a decision.

use base64::Engine;
use hmac_sha256::Hash as Sha256;
use serde::Deserialize;

use crate::cache::control::{freshness, Freshness};
use crate::error::ConfigError;
use crate::policy::decision::Verdict;
use crate::policy::ext_authz::AllowExtra;
use crate::policy::headers::Header;

const DEFAULT_ENTRIES: u32 = 10_000;
const MAX_ENTRIES: u32 = 1 << 20;
const DEFAULT_TTL: u64 = 10;
const DEFAULT_MAX_TTL: u64 = 300;
const DEFAULT_NEGATIVE_TTL: u64 = 5;
/// No lifetime (or staleness) beyond a day.
const MAX_SECONDS: u64 = 86_400;
/// A larger entry is not stored (a deny with a big body): memory ≤ entries × this.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;
/// Shared-data key prefix of the slots: `nebula_authz.cache.<slot>`.
pub const SLOT_PREFIX: &str = "nebula_authz.cache.";
const FORMAT_VERSION: u8 = 1;
const KIND_ALLOW: u8 = 1;
const KIND_DENY: u8 = 2;

/// The `cache` section as users write it (seconds, integers). Present = enabled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    entries: Option<u32>,
    default_ttl: Option<u64>,
    max_ttl: Option<u64>,
    negative_ttl: Option<u64>,
    stale_if_error: Option<u64>,
}

/// The validated cache configuration (lifetimes in seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Number of slots.
    pub entries: u32,
    /// Lifetime of an allow when the auth service sends no `max-age`/`s-maxage` (0: not stored).
    pub default_ttl: u64,
    /// Upper bound of any allow's lifetime.
    pub max_ttl: u64,
    /// Lifetime of a 401/403 (0: denials are not stored).
    pub negative_ttl: u64,
    /// How long past its expiry an allow is still served when the auth service fails.
    pub stale_if_error: u64,
    /// SHA-256 of the whole plugin configuration, part of every key: plugins sharing a
    /// VM, or a changed configuration, never read each other's decisions.
    pub fingerprint: [u8; 32],
}

impl CacheSettings {
    pub fn parse(raw: RawCache) -> Result<CacheSettings, ConfigError> {
        let entries = raw.entries.unwrap_or(DEFAULT_ENTRIES);
        if !(1..=MAX_ENTRIES).contains(&entries) {
            return Err(ConfigError {
                field: "cache.entries".into(),
                message: format!("must be between 1 and {MAX_ENTRIES}, got {entries}"),
            });
        }
        let seconds = |field: &str, value: Option<u64>, default: u64| -> Result<u64, ConfigError> {
            let value = value.unwrap_or(default);
            if value > MAX_SECONDS {
                return Err(ConfigError {
                    field: format!("cache.{field}"),
                    message: format!("must be at most {MAX_SECONDS} seconds, got {value}"),
                });
            }
            Ok(value)
        };
        let max_ttl = seconds("max_ttl", raw.max_ttl, DEFAULT_MAX_TTL)?;
        let default_ttl = seconds("default_ttl", raw.default_ttl, DEFAULT_TTL.min(max_ttl))?;
        let negative_ttl = seconds("negative_ttl", raw.negative_ttl, DEFAULT_NEGATIVE_TTL.min(max_ttl))?;
        let stale_if_error = seconds("stale_if_error", raw.stale_if_error, 0)?;
        for (field, value) in [("default_ttl", default_ttl), ("negative_ttl", negative_ttl)] {
            if value > max_ttl {
                return Err(ConfigError {
                    field: format!("cache.{field}"),
                    message: format!("must not exceed cache.max_ttl ({max_ttl}), got {value}"),
                });
            }
        }
        Ok(CacheSettings { entries, default_ttl, max_ttl, negative_ttl, stale_if_error, fingerprint: [0; 32] })
    }

    /// Where a callout's decision lives: its key, its slot and its bearer token's `exp`.
    pub fn lookup(&self, cluster: &str, callout: &[(&str, &str)]) -> Lookup {
        self.probe(cluster, callout).with_bearer_expiry(callout)
    }

    /// [`CacheSettings::lookup`] without the bearer token's `exp`, which only a store
    /// needs: a hit (the common case) skips decoding the JWT payload.
    pub fn probe(&self, cluster: &str, callout: &[(&str, &str)]) -> Lookup {
        self.probe_key(self.key(cluster, callout))
    }

    /// [`CacheSettings::probe`] from the bytes [`CacheSettings::key_input`] wrote.
    pub fn probe_input(&self, input: &[u8]) -> Lookup {
        self.probe_key(Key(Sha256::hash(input)))
    }

    fn probe_key(&self, key: Key) -> Lookup {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key.0[..8]);
        let slot = (u64::from_be_bytes(first) % u64::from(self.entries)) as u32;
        Lookup { key, slot, token_exp_ms: None }
    }

    /// The key of a callout: every byte the auth service would see for it (the cluster
    /// and the exact header list the core built, pseudo-headers included; the trace
    /// headers, which differ on every request and never change the answer, are added
    /// only after the key is taken: policy/trace.rs), length-prefixed
    /// so that no two different inputs encode alike, hashed with SHA-256. The credential
    /// itself is never stored.
    pub fn key(&self, cluster: &str, callout: &[(&str, &str)]) -> Key {
        let mut input = Vec::new();
        self.key_input(cluster, callout, &mut input);
        Key(Sha256::hash(&input))
    }

    /// The bytes [`CacheSettings::key`] hashes, into `out` (cleared first). The per-worker
    /// front (cache/local.rs) compares them as they are, so a hit needs no SHA-256; they
    /// hold the credential and never leave this worker's memory.
    pub fn key_input<V: AsRef<str>>(&self, cluster: &str, callout: &[(&str, V)], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"nebula-authz cache key v1\0");
        out.extend_from_slice(&self.fingerprint);
        field(out, cluster.as_bytes());
        out.extend_from_slice(&(callout.len() as u64).to_be_bytes());
        for (name, value) in callout {
            field(out, name.as_bytes());
            field(out, value.as_ref().as_bytes());
        }
    }

    /// The decision stored for exactly `key` and still fresh at `now_ms` (Unix ms).
    pub fn fresh(&self, stored: &[u8], lookup: &Lookup, now_ms: u64) -> Option<Decision> {
        self.fresh_until(stored, lookup, now_ms).map(|(decision, _)| decision)
    }

    /// [`CacheSettings::fresh`] with the instant (Unix ms) the decision expires.
    pub fn fresh_until(&self, stored: &[u8], lookup: &Lookup, now_ms: u64) -> Option<(Decision, u64)> {
        let entry = Entry::decode(stored).filter(|e| e.key == lookup.key)?;
        (now_ms < entry.expires_ms).then_some((entry.decision, entry.expires_ms))
    }

    /// An allow for exactly `key` that expired less than `stale_if_error` seconds ago
    /// (and never past the bearer token's `exp`): served when the auth service fails.
    pub fn stale(&self, stored: &[u8], lookup: &Lookup, now_ms: u64) -> Option<Decision> {
        if self.stale_if_error == 0 {
            return None;
        }
        let entry = Entry::decode(stored).filter(|e| e.key == lookup.key)?;
        let until = entry.expires_ms.saturating_add(self.stale_if_error * 1000).min(entry.stale_limit_ms);
        (matches!(entry.decision, Decision::Allow { .. }) && now_ms < until).then_some(entry.decision)
    }

    /// Whether `stored` holds an allow for exactly `lookup`'s key, fresh or stale: what a
    /// denial of that key must end, whether or not the denial itself is stored (a refused credential is never served again).
    pub fn holds_allow(&self, stored: &[u8], lookup: &Lookup) -> bool {
        Entry::decode(stored).is_some_and(|e| e.key == lookup.key && matches!(e.decision, Decision::Allow { .. }))
    }

    /// The slot bytes to store for a fresh decision, or `None` when it must not be cached:
    /// `Cache-Control: no-store`/`no-cache`, a lifetime of 0, a denial other than
    /// 401/403 or one that sets cookies, an expired bearer token, an entry over
    /// [`MAX_ENTRY_BYTES`]. Failures never reach here: they are not decisions.
    pub fn entry<H: Header>(
        &self,
        lookup: &Lookup,
        decision: &Decision,
        response: &[H],
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let seconds = match decision {
            // Cookies for the client (a refreshed session) are per client, like below.
            Decision::Allow { cookies, extra, .. } if !cookies.is_empty() || extra.is_some() => return None,
            Decision::Allow { .. } => match freshness(response) {
                Freshness::Forbidden => return None,
                Freshness::Seconds(n) => n.min(self.max_ttl),
                Freshness::Silent => self.default_ttl,
            },
            Decision::Deny { status: 401 | 403, headers, .. }
                if !headers.iter().any(|(name, _)| name == "set-cookie") =>
            {
                match freshness(response) {
                    Freshness::Forbidden => return None,
                    Freshness::Seconds(n) => n.min(self.negative_ttl),
                    Freshness::Silent => self.negative_ttl,
                }
            }
            Decision::Deny { .. } => return None,
        };
        if seconds == 0 {
            return None;
        }
        let mut expires_ms = now_ms.saturating_add(seconds * 1000);
        let mut stale_limit_ms = u64::MAX;
        if let Some(exp) = lookup.token_exp_ms {
            stale_limit_ms = exp;
            if stale_limit_ms <= now_ms {
                return None;
            }
            expires_ms = expires_ms.min(stale_limit_ms);
        }
        let bytes = Entry { key: lookup.key, expires_ms, stale_limit_ms, decision: decision.clone() }.encode();
        (bytes.len() <= MAX_ENTRY_BYTES).then_some(bytes)
    }
}

/// SHA-256 of the plugin configuration bytes.
pub fn fingerprint(config: &[u8]) -> [u8; 32] {
    Sha256::hash(config)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A callout's place in the cache, computed once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub key: Key,
    /// Its slot's number (< `entries`).
    pub slot: u32,
    /// The bearer JWT's `exp` (Unix ms), if one was sent.
    token_exp_ms: Option<u64>,
}

impl Lookup {
    /// Adds the earliest `exp` of the bearer JWTs in `callout` (read before storing).
    pub fn with_bearer_expiry(mut self, callout: &[(&str, &str)]) -> Lookup {
        self.token_exp_ms = bearer_expiry(callout).map(|exp| exp.saturating_mul(1000));
        self
    }

    /// The shared-data key of its slot (`nebula_authz.cache.<n>`).
    pub fn slot_key(&self) -> String {
        format!("{SLOT_PREFIX}{}", self.slot)
    }
}

/// A cache key: the SHA-256 of a callout's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

/// A decision in owned form, as it is applied, cached and shared with waiting requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Resume the request with these headers set (the first value of a name replaces),
    /// and these `Set-Cookie` values for the client's response
    /// (`auth.add_auth_cookies_to_response`).
    /// `extra`: ext_authz's other allow effects; such a decision is never stored (it is
    /// per-client, like one that sets cookies), so the stored form has no room for it.
    Allow { inject: Vec<(String, Vec<u8>)>, cookies: Vec<Vec<u8>>, extra: Option<Box<AllowExtra>> },
    /// Reply to the client with this status, headers and body.
    Deny { status: u32, headers: Vec<(String, String)>, body: Vec<u8> },
}

impl Decision {
    /// The owned form of an allow or a deny (`body`: the deny body); `None` for a failure.
    pub fn from_verdict(verdict: &Verdict<'_>, body: &[u8]) -> Option<Decision> {
        match verdict {
            Verdict::Allow { inject, cookies, extra } => Some(Decision::Allow {
                inject: inject.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
                cookies: cookies.iter().map(|c| c.to_vec()).collect(),
                extra: extra.clone(),
            }),
            Verdict::Deny { status, headers } => Some(Decision::Deny {
                status: *status,
                headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                body: body.to_vec(),
            }),
            Verdict::Fail(_) => None,
        }
    }
}

/// The earliest `exp` (Unix seconds) among bearer JWTs in the `authorization` values sent
/// to the auth service. Read without verifying anything, and only ever used to shorten a
/// lifetime; a token that is not a readable JWT gives `None` (no shortening, no error).
fn bearer_expiry(callout: &[(&str, &str)]) -> Option<u64> {
    callout
        .iter()
        .filter(|(name, _)| *name == "authorization")
        .filter_map(|(_, value)| {
            let (scheme, token) = value.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            let mut parts = token.trim().split('.');
            let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
            let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
            let exp = claims.get("exp")?;
            exp.as_u64().or_else(|| exp.as_f64().filter(|e| e.is_finite()).map(|e| e.max(0.0) as u64))
        })
        .min()
}

/// A slot's bytes decoded and encoded again: `Some(bytes)` exactly when the bytes are a
/// valid slot. For the fuzz target's round trip (fuzz/src/lib.rs `cache_slot`).
pub fn reencode_slot(bytes: &[u8]) -> Option<Vec<u8>> {
    Entry::decode(bytes).map(|entry| entry.encode())
}

/// One slot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: Key,
    /// Fresh until this instant (Unix ms).
    expires_ms: u64,
    /// Never served, even stale, from this instant (the bearer token's `exp`).
    stale_limit_ms: u64,
    decision: Decision,
}

impl Entry {
    /// `version key expires stale_limit kind` then, for an allow, `count (name value)*`
    /// twice (headers, then cookies with empty names); for a deny, `status count (name value)* body`. Integers big-endian; names and
    /// header counts u16-prefixed, values and bodies u32-prefixed.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.extend_from_slice(&self.stale_limit_ms.to_be_bytes());
        let pairs = |out: &mut Vec<u8>, pairs: &mut dyn Iterator<Item = (&str, &[u8])>, count: usize| {
            out.extend_from_slice(&(count.min(usize::from(u16::MAX)) as u16).to_be_bytes());
            for (name, value) in pairs.take(usize::from(u16::MAX)) {
                out.extend_from_slice(&(name.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
                out.extend_from_slice(&name.as_bytes()[..name.len().min(usize::from(u16::MAX))]);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        };
        match &self.decision {
            Decision::Allow { inject, cookies, .. } => {
                out.push(KIND_ALLOW);
                pairs(&mut out, &mut inject.iter().map(|(n, v)| (n.as_str(), v.as_slice())), inject.len());
                pairs(&mut out, &mut cookies.iter().map(|c| ("", c.as_slice())), cookies.len());
            }
            Decision::Deny { status, headers, body } => {
                out.push(KIND_DENY);
                out.extend_from_slice(&(*status as u16).to_be_bytes());
                pairs(&mut out, &mut headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), headers.len());
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(body);
            }
        }
        out
    }

    /// Any byte string: a valid entry, or `None` (garbage, truncated, another version).
    fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT_VERSION {
            return None;
        }
        let key = Key(r.take(32)?.try_into().ok()?);
        let expires_ms = r.u64()?;
        let stale_limit_ms = r.u64()?;
        let decision = match r.u8()? {
            KIND_ALLOW => Decision::Allow {
                inject: r.pairs()?,
                cookies: r.pairs()?.into_iter().map(|(_, value)| value).collect(),
                extra: None,
            },
            KIND_DENY => {
                let status = u32::from(r.u16()?);
                if !(200..=599).contains(&status) {
                    return None;
                }
                let headers = r
                    .pairs()?
                    .into_iter()
                    .map(|(n, v)| Some((n, String::from_utf8(v).ok()?)))
                    .collect::<Option<_>>()?;
                let len = r.u32()? as usize;
                Decision::Deny { status, headers, body: r.take(len)?.to_vec() }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(Entry { key, expires_ms, stale_limit_ms, decision })
    }
}

/// A bounds-checked reader: every read past the end is `None`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn pairs(&mut self) -> Option<Vec<(String, Vec<u8>)>> {
        let count = usize::from(self.u16()?);
        let mut out = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let len = usize::from(self.u16()?);
            let name = String::from_utf8(self.take(len)?.to_vec()).ok()?;
            let len = self.u32()? as usize;
            out.push((name, self.take(len)?.to_vec()));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::plugin_config::Settings;

    const NOW: u64 = 1_700_000_000_000;
    /// An auth response without caching headers.
    const NONE: &[(&str, &[u8])] = &[];

    fn cache(json: &str) -> CacheSettings {
        let config = format!(r#"{{"auth": {{"cluster": "auth"}}, "cache": {json}}}"#);
        Settings::from_json(config.as_bytes()).unwrap().cache.unwrap()
    }

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    fn allow() -> Decision {
        Decision::Allow {
            inject: vec![
                ("x-nebula-actor-id".into(), b"alice".to_vec()),
                ("x-nebula-actor-permissions".into(), b"read".to_vec()),
                ("x-nebula-actor-permissions".into(), b"\xe9write".to_vec()),
            ],
            cookies: vec![],
            extra: None,
        }
    }

    fn deny(status: u32) -> Decision {
        Decision::Deny {
            status,
            headers: vec![("www-authenticate".into(), "Bearer".into()), ("content-type".into(), "text/plain".into())],
            body: b"no".to_vec(),
        }
    }

    const CALLOUT: [(&str, &str); 4] =
        [(":method", "GET"), (":path", "/"), (":authority", "auth"), ("authorization", "Bearer t")];

    /// `exp`-only JWT (signature not checked by the cache).
    fn jwt(exp: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("Bearer {}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(&format!(r#"{{"sub":"a","exp":{exp}}}"#)))
    }

    /// Stores `decision` with `response` headers and returns how long it stays fresh (ms).
    fn lifetime(
        c: &CacheSettings,
        decision: &Decision,
        response: &[(&str, &[u8])],
        callout: &[(&str, &str)],
    ) -> Option<u64> {
        let lookup = c.lookup("auth", callout);
        let bytes = c.entry(&lookup, decision, &h(response), NOW)?;
        let entry = Entry::decode(&bytes).unwrap();
        assert_eq!(c.fresh(&bytes, &lookup, NOW).as_ref(), Some(decision));
        Some(entry.expires_ms - NOW)
    }

    #[test]
    fn absent_section_means_off_and_defaults_apply() {
        assert!(Settings::from_json(br#"{"auth": {"cluster": "a"}}"#).unwrap().cache.is_none());
        let c = cache("{}");
        assert_eq!((c.entries, c.default_ttl, c.max_ttl, c.negative_ttl, c.stale_if_error), (10_000, 10, 300, 5, 0));
        assert_ne!(c.fingerprint, [0; 32], "the configuration's hash is part of the key");
        let c = cache(r#"{"max_ttl": 3}"#);
        assert_eq!((c.default_ttl, c.negative_ttl), (3, 3), "defaults never exceed max_ttl");
    }

    #[test]
    fn bad_cache_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"entries": 0}"#, "cache.entries: must be between 1 and 1048576, got 0"),
            (r#"{"entries": 2000000}"#, "cache.entries: must be between 1 and 1048576, got 2000000"),
            (r#"{"entries": -1}"#, "cache.entries: invalid value: integer `-1`, expected u32"),
            (r#"{"max_ttl": 86401}"#, "cache.max_ttl: must be at most 86400 seconds, got 86401"),
            (r#"{"default_ttl": 60, "max_ttl": 30}"#, "cache.default_ttl: must not exceed cache.max_ttl (30), got 60"),
            (r#"{"negative_ttl": 60, "max_ttl": 30}"#, "cache.negative_ttl: must not exceed cache.max_ttl (30), got 60"),
            (r#"{"stale_if_error": 100000}"#, "cache.stale_if_error: must be at most 86400 seconds, got 100000"),
            (r#"{"default_ttl": "10s"}"#, "cache.default_ttl: invalid type: string \"10s\", expected u64"),
            (
                r#"{"ttl": 10}"#,
                "cache.ttl: unknown field `ttl`, expected one of `entries`, `default_ttl`, `max_ttl`, `negative_ttl`, `stale_if_error`",
            ),
            (r#"true"#, "cache: expected a JSON object, got a boolean"),
        ];
        for (json, want) in cases {
            let config = format!(r#"{{"auth": {{"cluster": "auth"}}, "cache": {json}}}"#);
            let got = Settings::from_json(config.as_bytes()).expect_err(json).to_string();
            assert_eq!(got, format!("invalid plugin configuration: {want}"), "{json}");
        }
    }

    #[test]
    fn keys_cover_every_byte_unambiguously() {
        let c = cache("{}");
        let base = c.key("auth", &CALLOUT);
        assert_eq!(base, c.key("auth", &CALLOUT), "deterministic");
        let one_byte = [CALLOUT[0], CALLOUT[1], CALLOUT[2], ("authorization", "Bearer u")];
        assert_ne!(base, c.key("auth", &one_byte));
        assert_ne!(base, c.key("auth2", &CALLOUT), "the cluster is keyed");
        assert_ne!(base, c.key("auth", &CALLOUT[..3]), "a missing header is keyed");
        let extra = [CALLOUT[0], CALLOUT[1], CALLOUT[2], CALLOUT[3], ("origin", "https://a")];
        assert_ne!(base, c.key("auth", &extra), "an extra header is keyed");
        // Length prefixes: moving a byte across a boundary changes the key.
        assert_ne!(c.key("a", &[("ab", "c")]), c.key("a", &[("a", "bc")]));
        assert_ne!(c.key("a", &[("a", "b"), ("c", "d")]), c.key("a", &[("a", "b\0\0\0\0\0\0\0\x01c"), ("", "d")]));
        // The header order is what the auth service sees, so it is keyed too.
        assert_ne!(c.key("a", &[("a", "1"), ("a", "2")]), c.key("a", &[("a", "2"), ("a", "1")]));
        // Another configuration (another plugin on the same VM) has other keys.
        assert_ne!(base, cache(r#"{"entries": 5}"#).key("auth", &CALLOUT));
        let slot = c.lookup("auth", &CALLOUT).slot_key();
        let n: u32 = slot.strip_prefix(SLOT_PREFIX).unwrap().parse().unwrap();
        assert!(n < c.entries);
        assert_eq!(cache(r#"{"entries": 1}"#).lookup("auth", &CALLOUT).slot_key(), "nebula_authz.cache.0");
        // The probe (hit path) finds the same key and slot, without the token's exp.
        let token = jwt(&(NOW / 1000 + 20).to_string());
        let callout = [("authorization", token.as_str())];
        let (probe, full) = (c.probe("auth", &callout), c.lookup("auth", &callout));
        assert_eq!((probe.key, probe.slot, probe.token_exp_ms), (full.key, full.slot, None));
        assert_eq!(full.token_exp_ms, Some(NOW + 20_000));
    }

    #[test]
    fn fingerprint_is_plain_sha256() {
        // FIPS 180-2 test vector: the same digest as the `sha2` crate gave before.
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = fingerprint(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_slot_collision_is_a_miss() {
        let c = cache(r#"{"entries": 1}"#);
        let key = c.lookup("auth", &CALLOUT);
        let other = c.lookup("auth", &[("authorization", "Bearer u")]);
        assert_eq!(key.slot, other.slot, "one slot for everything");
        let bytes = c.entry(&key, &allow(), NONE, NOW).unwrap();
        assert_eq!(c.fresh(&bytes, &key, NOW), Some(allow()));
        assert_eq!(c.fresh(&bytes, &other, NOW), None, "same slot, other input: never served");
        let c = cache(r#"{"entries": 1, "stale_if_error": 60}"#);
        assert_eq!(c.stale(&bytes, &other, NOW + 20_000), None);
    }

    #[test]
    fn allow_lifetimes() {
        let c = cache(r#"{"default_ttl": 10, "max_ttl": 60}"#);
        let a = allow();
        assert_eq!(lifetime(&c, &a, &[], &CALLOUT), Some(10_000), "silent: default_ttl");
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"max-age=30")], &CALLOUT), Some(30_000));
        assert_eq!(
            lifetime(&c, &a, &[("cache-control", b"max-age=3600")], &CALLOUT),
            Some(60_000),
            "capped by max_ttl"
        );
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"private, s-maxage=5, max-age=30")], &CALLOUT), Some(5_000));
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"no-store")], &CALLOUT), None);
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"no-cache")], &CALLOUT), None);
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"max-age=0")], &CALLOUT), None);
        assert_eq!(lifetime(&c, &a, &[("cache-control", b"max-age=x")], &CALLOUT), None);
        let told_only = cache(r#"{"default_ttl": 0}"#);
        assert_eq!(lifetime(&told_only, &a, &[], &CALLOUT), None, "default_ttl 0: only when told");
        assert_eq!(lifetime(&told_only, &a, &[("cache-control", b"max-age=7")], &CALLOUT), Some(7_000));
    }

    #[test]
    fn denial_lifetimes() {
        let c = cache(r#"{"negative_ttl": 5}"#);
        assert_eq!(lifetime(&c, &deny(401), &[], &CALLOUT), Some(5_000));
        assert_eq!(lifetime(&c, &deny(403), &[("cache-control", b"max-age=2")], &CALLOUT), Some(2_000));
        assert_eq!(lifetime(&c, &deny(403), &[("cache-control", b"max-age=60")], &CALLOUT), Some(5_000));
        assert_eq!(lifetime(&c, &deny(401), &[("cache-control", b"no-store")], &CALLOUT), None);
        for status in [302, 400, 404, 429, 204] {
            assert_eq!(lifetime(&c, &deny(status), &[], &CALLOUT), None, "{status} is not cached");
        }
        let cookie = Decision::Deny { status: 401, headers: vec![("set-cookie".into(), "a=1".into())], body: vec![] };
        assert_eq!(lifetime(&c, &cookie, &[], &CALLOUT), None, "a denial that sets cookies is per-client");
        let cookie = Decision::Allow { inject: vec![], cookies: vec![b"session=refreshed".to_vec()], extra: None };
        assert_eq!(lifetime(&c, &cookie, &[], &CALLOUT), None, "so is an allow that sets cookies");
        assert_eq!(lifetime(&cache(r#"{"negative_ttl": 0}"#), &deny(401), &[], &CALLOUT), None);
    }

    #[test]
    fn failures_are_not_decisions() {
        use crate::policy::decision::Failure;
        assert_eq!(Decision::from_verdict(&Verdict::Fail(Failure::AuthServerError(503)), b""), None);
        assert_eq!(Decision::from_verdict(&Verdict::Fail(Failure::NoResponse), b""), None);
        let v = Verdict::Deny { status: 401, headers: vec![("content-type", "text/plain")] };
        assert_eq!(
            Decision::from_verdict(&v, b"body"),
            Some(Decision::Deny {
                status: 401,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"body".to_vec()
            })
        );
    }

    #[test]
    fn a_bearer_jwt_never_outlives_its_exp() {
        let c = cache(r#"{"default_ttl": 60, "max_ttl": 60, "stale_if_error": 600}"#);
        let in_20s = (NOW / 1000 + 20).to_string();
        let token = jwt(&in_20s);
        let callout = [("authorization", token.as_str())];
        assert_eq!(lifetime(&c, &allow(), &[], &callout), Some(20_000));
        // Stale serving stops at exp too.
        let key = c.lookup("auth", &callout);
        let bytes = c.entry(&key, &allow(), NONE, NOW).unwrap();
        assert_eq!(c.stale(&bytes, &key, NOW + 19_999), Some(allow()));
        assert_eq!(c.stale(&bytes, &key, NOW + 20_000), None);
        // Expired: not stored at all. Float exp is read too.
        let past = jwt(&(NOW / 1000 - 1).to_string());
        assert_eq!(lifetime(&c, &allow(), &[], &[("authorization", past.as_str())]), None);
        let float = jwt(&format!("{}.5", NOW / 1000 + 3));
        assert_eq!(lifetime(&c, &allow(), &[], &[("authorization", float.as_str())]), Some(3_000));
        // The earliest of several authorization values wins.
        let later = jwt(&(NOW / 1000 + 50).to_string());
        let both = [("authorization", later.as_str()), ("authorization", token.as_str())];
        assert_eq!(lifetime(&c, &allow(), &[], &both), Some(20_000));
        // Not a readable JWT: no shortening, no error.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let bad = [
            "Bearer opaque-token".to_string(),
            "Bearer a.b.c".to_string(),
            format!("Bearer x.{}.s", b64("not json")),
            format!("Bearer x.{}.s", b64(r#"{"exp":"soon"}"#)),
            format!("Bearer x.{}.s.extra", b64(r#"{"exp":1}"#)),
            format!("Basic x.{}.s", b64(r#"{"exp":1}"#)),
            "Bearer".to_string(),
            "Bearer ...".to_string(),
        ];
        for value in &bad {
            assert_eq!(lifetime(&c, &allow(), &[], &[("authorization", value.as_str())]), Some(60_000), "{value}");
        }
    }

    #[test]
    fn expiry_and_stale_if_error() {
        let c = cache(r#"{"default_ttl": 10, "stale_if_error": 30}"#);
        let key = c.lookup("auth", &CALLOUT);
        let bytes = c.entry(&key, &allow(), NONE, NOW).unwrap();
        assert_eq!(c.fresh(&bytes, &key, NOW + 9_999), Some(allow()));
        assert_eq!(c.fresh(&bytes, &key, NOW + 10_000), None, "expired");
        assert_eq!(c.stale(&bytes, &key, NOW + 39_999), Some(allow()));
        assert_eq!(c.stale(&bytes, &key, NOW + 40_000), None, "beyond stale_if_error");
        let denied = c.entry(&key, &deny(401), NONE, NOW).unwrap();
        assert_eq!(c.stale(&denied, &key, NOW + 6_000), None, "only allows are served stale");
        let no_stale = cache(r#"{"default_ttl": 10}"#);
        assert_eq!(no_stale.stale(&bytes, &no_stale.lookup("auth", &CALLOUT), NOW + 10_001), None);
    }

    #[test]
    fn a_denial_finds_the_allow_it_must_end() {
        let c = cache(r#"{"default_ttl": 10, "stale_if_error": 30}"#);
        let key = c.lookup("auth", &CALLOUT);
        let other = c.lookup("auth", &[("authorization", "Bearer u")]);
        let allowed = c.entry(&key, &allow(), NONE, NOW).unwrap();
        assert!(c.holds_allow(&allowed, &key), "fresh or stale, an allow of this key");
        assert!(!c.holds_allow(&allowed, &other), "another key's allow is not this denial's business");
        let denied = c.entry(&key, &deny(401), NONE, NOW).unwrap();
        assert!(!c.holds_allow(&denied, &key));
        assert!(!c.holds_allow(b"", &key), "an emptied slot holds nothing");
        assert_eq!(c.stale(b"", &key, NOW + 11_000), None);
        assert_eq!(c.fresh(b"", &key, NOW), None);
    }

    #[test]
    fn encoding_round_trips_and_garbage_is_a_miss() {
        let c = cache("{}");
        let lookup = c.lookup("auth", &CALLOUT);
        let key = lookup.key;
        let with_cookies =
            Decision::Allow { inject: vec![], cookies: vec![b"s=1; Path=/".to_vec(), b"t=2".to_vec()], extra: None };
        for decision in
            [allow(), deny(401), Decision::Allow { inject: vec![], cookies: vec![], extra: None }, with_cookies]
        {
            let entry = Entry { key, expires_ms: NOW, stale_limit_ms: u64::MAX, decision };
            let bytes = entry.encode();
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(Entry::decode(&bytes), Some(entry.clone()));
            // Every truncation, and trailing bytes, are rejected.
            for len in 0..bytes.len() {
                assert_eq!(Entry::decode(&bytes[..len]), None, "truncated to {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Entry::decode(&longer), None);
            let mut other_version = bytes.clone();
            other_version[0] = 2;
            assert_eq!(Entry::decode(&other_version), None);
        }
        // Pseudo-random bytes, and bytes with huge length fields, never panic.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            let _ = Entry::decode(&bytes);
            let _ = c.fresh(&bytes, &lookup, NOW);
        }
        let mut huge = vec![FORMAT_VERSION];
        huge.extend_from_slice(&[0; 48]);
        huge.extend_from_slice(&[KIND_ALLOW, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Entry::decode(&huge), None);
    }

    #[test]
    fn oversized_entries_are_not_stored() {
        let c = cache("{}");
        let key = c.lookup("auth", &CALLOUT);
        let big = Decision::Deny { status: 401, headers: vec![], body: vec![b'x'; MAX_ENTRY_BYTES] };
        assert_eq!(c.entry(&key, &big, NONE, NOW), None);
        let fits = Decision::Deny { status: 401, headers: vec![], body: vec![b'x'; 1000] };
        assert!(c.entry(&key, &fits, NONE, NOW).is_some());
    }
}
