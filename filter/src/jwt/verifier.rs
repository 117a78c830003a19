//! Local JWT verification: find the credential, decide whether it is a JWT of a known
//! issuer, check it, and turn its claims into headers.
//!
//! Only JWT-shaped credentials (`eyJ….….…`) of a configured issuer are decided here.
//! Anything else (a Prefect API key, a cookie, a JWT from an issuer no provider names)
//! goes to the callout unchanged. A JWT of a known issuer that fails any check is
//! rejected without a callout, whatever the mode.
//!
//! Cheapest first: a token already verified or already rejected costs a SHA-256 and a
//! lookup; then shape, issuer, algorithm, `exp`/`nbf`/`iat`/`aud` and `kid`, so a forged
//! token that fails any of them costs no public-key operation; the signature last.

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::jwt::jwt_config::{JwtSettings, Mode, NotJwt, Provider, UnknownIssuer};
use crate::jwt::keys::{Alg, Key, KeySet};
pub use crate::jwt::reason::Reason;
use crate::jwt::require::lookup;
use crate::jwt::signature::{self, HostCrypto, ModuleOnly};
use crate::jwt::token_cache::{token_hash, Entry, RejectCache, Rejected, VerifiedCache};
use crate::policy::headers::Header;

/// RFC 6750 §3.1: the challenge of a 401 for a token that failed verification.
pub const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer error="invalid_token""#;
/// The body of that 401 (the reason goes to the log and metrics, not to the client).
pub const INVALID_TOKEN_BODY: &[u8] = b"nebula-authz: invalid token\n";

/// RFC 6750 §3.1: the challenge of a 403 for a valid token that fails a `require`.
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str = r#"Bearer error="insufficient_scope""#;
pub const INSUFFICIENT_SCOPE_BODY: &[u8] = b"nebula-authz: insufficient scope\n";

/// Longest claim header value the filter sets.
const MAX_CLAIM_HEADER_BYTES: usize = 8 * 1024;
/// Longest JOSE header decoded (jwt-simple's bound, kept).
const MAX_HEADER_BYTES: usize = 8192;
/// Invalid tokens remembered per worker (about 60 bytes each): the same invalid token
/// repeated costs a lookup, a flood of distinct ones evicts the oldest.
const RECENT_REJECTS: usize = 1024;

/// A verified token's claims (shared with the cache).
pub type VerifiedClaims = Rc<Map<String, Value>>;

/// The headers a valid token's claims become (shared with the cache).
pub type ClaimHeaders = Rc<[(String, String)]>;

/// Why a request goes to the callout without a local decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    NoCredential,
    /// The credential is not a JWT (an API key, a session cookie).
    NotJwt,
    /// A JWT whose `iss` no provider names.
    UnknownIssuer,
}

/// The local verdict on one request's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not ours to decide: the callout does, as without the `jwt` block.
    Callout(Pass),
    /// A valid token of a provider: set `headers`, then allow (`Local`) or call out;
    /// its `claims` (for the rules of `policies`: `requestPrincipals`, `request.auth.*`).
    Valid { mode: Mode, headers: ClaimHeaders, cached: bool, claims: Rc<Map<String, Value>> },
    /// 401 `invalid_token`, no callout.
    Invalid(Reason),
    /// A valid token that fails a `require` check (the provider's or a rule's): 403
    /// `insufficient_scope`, no callout.
    Insufficient,
    /// The provider (with a `remote_jwks`) has no key for this token yet: refresh the
    /// keys and check again, or [`JwtVerifier::without_refresh`].
    NoKey { provider: usize },
}

/// Keys loaded from a provider's `remote_jwks`, as this worker last saw them.
#[derive(Debug, Default)]
struct Remote {
    keys: KeySet,
    /// The shared-data version (CAS) the keys were read from.
    version: Option<u64>,
}

/// The per-worker state: remote keys, the verified-token cache, recent rejects and
/// where signatures are checked.
#[derive(Debug)]
pub struct JwtVerifier {
    remote: Vec<Remote>,
    /// Bumped per provider whenever its keys change; cached entries carry it.
    generations: Vec<u64>,
    cache: VerifiedCache,
    rejects: RejectCache,
    crypto: Box<dyn HostCrypto>,
}

/// What judging a token not seen before found.
enum Verdict {
    /// Not remembered: the callout decides, or keys are missing.
    Pass(Outcome),
    Invalid(Reason, Option<usize>),
    Valid {
        provider: usize,
        headers: ClaimHeaders,
        claims: Rc<Map<String, Value>>,
        valid_until_ms: u64,
    },
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> JwtVerifier {
        let n = settings.providers.len();
        JwtVerifier {
            remote: (0..n).map(|_| Remote::default()).collect(),
            generations: vec![0; n],
            cache: VerifiedCache::new(settings.cache_entries),
            rejects: RejectCache::new(RECENT_REJECTS),
            crypto: Box::new(ModuleOnly),
        }
    }

    /// Checks RSA PKCS#1 and ECDSA signatures with the host's crypto (jwt/signature.rs).
    pub fn with_host_crypto(mut self, crypto: Box<dyn HostCrypto>) -> JwtVerifier {
        self.crypto = crypto;
        self
    }

    /// The shared-data version the provider's remote keys came from.
    pub fn remote_version(&self, provider: usize) -> Option<u64> {
        self.remote.get(provider).and_then(|r| r.version)
    }

    /// Replaces the provider's remote keys (a fetch or another worker's fetch).
    pub fn set_remote_keys(&mut self, provider: usize, keys: KeySet, version: u64) {
        if let (Some(remote), Some(generation)) = (self.remote.get_mut(provider), self.generations.get_mut(provider)) {
            *remote = Remote { keys, version: Some(version) };
            *generation += 1;
        }
    }

    /// Whether the provider has any key at all (inline or fetched).
    pub fn has_keys(&self, settings: &JwtSettings, provider: usize) -> bool {
        let fetched = self.remote.get(provider).is_some_and(|r| !r.keys.is_empty());
        fetched || settings.providers.get(provider).is_some_and(|p| !p.keys.is_empty())
    }

    /// The verdict for a request's headers at `now_ms` (Unix time).
    pub fn check<H: Header>(&mut self, settings: &JwtSettings, headers: &[H], now_ms: u64) -> Outcome {
        let Some(credential) = settings.sources.credential(headers) else {
            return Outcome::Callout(Pass::NoCredential);
        };
        let generations = &self.generations;
        let generation = |p: usize| generations.get(p).copied().unwrap_or(u64::MAX);
        // A token verified before (the common case: clients repeat theirs) is known to
        // be a JWT of the right size: the cache first, the shape checks only for others.
        if let Some(e) = credential.and_then(|token| self.cache.get(token, now_ms, generation)) {
            return valid(settings, e.provider, &e.claims, headers, e.headers.clone(), true);
        }
        let Some(token) = credential.filter(|c| looks_like_jwt(c)) else {
            return match (credential, settings.not_jwt) {
                (Some(_), NotJwt::Reject) => Outcome::Invalid(Reason::Malformed),
                _ => Outcome::Callout(Pass::NotJwt),
            };
        };
        if token.len() > settings.max_token_bytes {
            return Outcome::Invalid(Reason::TooLarge);
        }
        let hash = token_hash(token);
        if let Some(reason) = self.rejects.get(&hash, generation) {
            return Outcome::Invalid(reason);
        }
        match self.judge(settings, token, now_ms) {
            Verdict::Pass(outcome) => outcome,
            Verdict::Invalid(reason, provider) => {
                let provider = provider.map(|p| (p, self.generations.get(p).copied().unwrap_or(0)));
                self.rejects.insert(hash, Rejected { reason, provider });
                Outcome::Invalid(reason)
            }
            Verdict::Valid { provider, headers: claim_headers, claims, valid_until_ms } => {
                let generation = self.generations.get(provider).copied().unwrap_or(0);
                let entry = Entry {
                    provider,
                    generation,
                    valid_until_ms,
                    headers: claim_headers.clone(),
                    claims: claims.clone(),
                };
                self.cache.insert(token, entry);
                valid(settings, provider, &claims, headers, claim_headers, false)
            }
        }
    }

    fn judge(&self, settings: &JwtSettings, token: &str, now_ms: u64) -> Verdict {
        let unverified = match Unverified::decode(token) {
            Ok(u) => u,
            Err(reason) => return Verdict::Invalid(reason, None),
        };
        let Some((index, provider)) =
            settings.providers.iter().enumerate().find(|(_, p)| Some(p.issuer.as_str()) == unverified.issuer())
        else {
            return match settings.unknown_issuer {
                UnknownIssuer::Callout => Verdict::Pass(Outcome::Callout(Pass::UnknownIssuer)),
                UnknownIssuer::Reject => Verdict::Invalid(Reason::UnknownIssuer, None),
            };
        };
        let invalid = |reason| Verdict::Invalid(reason, Some(index));
        let Some(alg) = Alg::from_name(&unverified.alg).filter(|a| provider.algorithms.contains(a)) else {
            return invalid(Reason::Algorithm);
        };
        let exp = match registered_claims(provider, &unverified.claims, now_ms) {
            Ok(exp) => exp,
            Err(reason) => return invalid(reason),
        };
        let remote = self.remote.get(index).map(|r| &r.keys);
        let kid = unverified.kid.as_deref();
        let mut candidates = provider
            .keys
            .candidates(alg, kid)
            .chain(remote.into_iter().flat_map(|k| k.candidates(alg, kid)))
            .peekable();
        if candidates.peek().is_none() {
            return match provider.remote {
                Some(_) => Verdict::Pass(Outcome::NoKey { provider: index }),
                None => invalid(Reason::UnknownKid),
            };
        }
        let signed = unverified.signed.as_bytes();
        let crypto = self.crypto.as_ref();
        if !candidates.any(|key: &Key| signature::verify(crypto, key, signed, &unverified.signature)) {
            return invalid(Reason::Signature);
        }
        match claim_headers(provider, &unverified.claims) {
            Ok(headers) => Verdict::Valid {
                provider: index,
                headers: Rc::from(headers),
                claims: Rc::new(unverified.claims),
                valid_until_ms: exp.saturating_add(provider.leeway.as_secs()).saturating_mul(1000),
            },
            Err(reason) => invalid(reason),
        }
    }

    /// The verdict when no key could be found or fetched for a [`Outcome::NoKey`]:
    /// a `kid` the provider's keys do not know is invalid; with no keys at all, the
    /// token cannot be judged (the JWT step fails closed, or calls out in
    /// `local_then_callout`).
    pub fn without_refresh(&self, settings: &JwtSettings, provider: usize) -> Option<Outcome> {
        if self.has_keys(settings, provider) {
            Some(Outcome::Invalid(Reason::UnknownKid))
        } else {
            None
        }
    }
}

/// A valid token's outcome: `Valid`, unless a `require` of its provider or of the
/// request path's rule fails.
fn valid<H: Header>(
    settings: &JwtSettings,
    provider: usize,
    claims: &Rc<Map<String, Value>>,
    request: &[H],
    headers: ClaimHeaders,
    cached: bool,
) -> Outcome {
    let Some(p) = settings.providers.get(provider) else { return Outcome::Insufficient };
    let path = request.iter().find(|h| h.name() == ":path").map_or(&b""[..], |h| h.value());
    let by_path = settings.rules.as_ref().map(|r| r.for_target(path)).unwrap_or_default();
    if !p.require.met_by(claims) || !by_path.iter().all(|r| r.met_by(claims)) {
        return Outcome::Insufficient;
    }
    Outcome::Valid { mode: p.mode, headers, cached, claims: claims.clone() }
}

/// `exp` (required), `nbf` and `iat` against the clock with the provider's leeway, and
/// `aud` against its audiences (RFC 7519 §4.1). Returns `exp`.
fn registered_claims(provider: &Provider, claims: &Map<String, Value>, now_ms: u64) -> Result<u64, Reason> {
    let now = now_ms / 1000;
    let leeway = provider.leeway.as_secs();
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(Reason::Malformed),
    };
    let exp = time("exp")?.ok_or(Reason::MissingExp)?;
    if now > exp.saturating_add(leeway) {
        return Err(Reason::Expired);
    }
    for name in ["nbf", "iat"] {
        if time(name)?.is_some_and(|t| t > now.saturating_add(leeway)) {
            return Err(Reason::NotYetValid);
        }
    }
    if let Some(audiences) = &provider.audiences {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => audiences.contains(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(Reason::Audience);
        }
    }
    Ok(exp)
}

/// A compact JWS: three dot-separated segments, the header a base64url JSON object
/// (`eyJ` is how `{"` encodes). JWEs (five segments) and opaque keys are not.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// The parts of a token before its signature is checked: used only to pick the
/// provider and key, and (after verification) to read claims for headers.
struct Unverified<'t> {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
    /// `header.payload`: the bytes the signature covers.
    signed: &'t str,
    signature: Vec<u8>,
}

impl<'t> Unverified<'t> {
    fn decode(token: &'t str) -> Result<Unverified<'t>, Reason> {
        let (signed, signature) = token.rsplit_once('.').ok_or(Reason::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(Reason::Malformed)?;
        if header.len() > MAX_HEADER_BYTES {
            return Err(Reason::Malformed);
        }
        let object = |segment: &str| -> Result<Map<String, Value>, Reason> {
            let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| Reason::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
        };
        let header = object(header)?;
        // RFC 7515 §4.1.11: `crit` lists extensions the recipient must understand. This
        // filter understands none, so a token with `crit` (even `[]`, which the RFC
        // forbids) is refused.
        if header.contains_key("crit") {
            return Err(Reason::Malformed);
        }
        let text = |name: &str| match header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Reason::Malformed),
        };
        let (alg, kid) = (text("alg")?.unwrap_or_default(), text("kid")?);
        let claims = object(payload)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Reason::Malformed)?;
        Ok(Unverified { alg, kid, claims, signed, signature })
    }

    fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// `claims_to_headers` (ordered by claim name). Missing or null claims set nothing.
fn claim_headers(provider: &Provider, claims: &Map<String, Value>) -> Result<Vec<(String, String)>, Reason> {
    let mut out = Vec::with_capacity(provider.claims_to_headers.len());
    for (claim, header) in &provider.claims_to_headers {
        let Some(value) = lookup(claims, claim) else { continue };
        let Some(text) = header_value(value) else { continue };
        if text.len() > MAX_CLAIM_HEADER_BYTES || text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(Reason::ClaimHeader);
        }
        out.push((header.clone(), text));
    }
    Ok(out)
}

/// Strings as they are, arrays joined with commas, objects as JSON.
///
/// JSON written by `serde_json::to_string` rather than `Value`'s `Display` (the same
/// compact text): the configuration is written back the same way, so the module holds
/// one JSON writer, not that one and `Display`'s (which adds the pretty printer of
/// `{:#}`). A `Value` always serializes, so the default is never taken.
fn header_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).unwrap_or_default(),
                })
                .collect();
            Some(parts.join(","))
        }
        other => serde_json::to_string(other).ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::jwt::boringssl_stand_in::BoringSslStandIn;
    use crate::plugin_config::Settings;
    use jwt_simple::prelude::*;

    const NOW_S: u64 = 1_900_000_000;
    const NOW_MS: u64 = NOW_S * 1000;
    const ISS: &str = "https://issuer.example.com";

    struct Fixture {
        es: ES256KeyPair,
        ed: Ed25519KeyPair,
    }

    fn fixture() -> Fixture {
        Fixture { es: ES256KeyPair::generate().with_key_id("es-1"), ed: Ed25519KeyPair::generate().with_key_id("ed-1") }
    }

    fn jwks(f: &Fixture) -> Value {
        let mut es: Value = serde_json::from_str(&f.es.public_key().to_jwk()).unwrap();
        es["kid"] = "es-1".into();
        let mut ed: Value = serde_json::from_str(&f.ed.public_key().to_jwk()).unwrap();
        ed["kid"] = "ed-1".into();
        serde_json::json!({"keys": [es, ed]})
    }

    fn settings(f: &Fixture, extra: &str) -> Settings {
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "audiences": ["prefect"],
                "jwks": {}, "claims_to_headers": {{"sub": "x-nebula-actor-id", "scope": "x-nebula-actor-permissions",
                "org": "x-org", "https://example.com/team": "x-team", "realm.roles": "x-roles"}} {extra} }}]}}}}"#,
            jwks(f)
        );
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn claims() -> JWTClaims<Value> {
        let custom = serde_json::json!({
            "scope": ["read", "write"], "org": {"id": 7}, "https://example.com/team": "blue", "realm": {"roles": ["a", "b"]}
        });
        let mut c = Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer(ISS)
            .with_audience("prefect")
            .with_subject("user-1");
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW_S));
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW_S));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW_S + 600));
        c
    }

    fn plain_claims() -> JWTClaims<NoCustomClaims> {
        let mut c =
            Claims::create(Duration::from_secs(600)).with_issuer(ISS).with_audience("prefect").with_subject("user-1");
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW_S));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW_S + 600));
        c
    }

    fn bearer(token: &str) -> Vec<(String, Vec<u8>)> {
        vec![(":path".into(), b"/api/flows".to_vec()), ("authorization".into(), format!("Bearer {token}").into_bytes())]
    }

    fn check(s: &Settings, v: &mut JwtVerifier, token: &str) -> Outcome {
        v.check(s.jwt.as_ref().unwrap(), &bearer(token), NOW_MS)
    }

    /// A verifier with the host's crypto as Envoy lends it (its stand-in): ES256 and
    /// ES384 are checked only there.
    fn verifier(s: &Settings) -> JwtVerifier {
        JwtVerifier::new(s.jwt.as_ref().unwrap()).with_host_crypto(Box::new(BoringSslStandIn))
    }

    #[test]
    fn valid_tokens_become_headers_and_are_cached() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        for token in [f.es.sign(claims()).unwrap(), f.ed.sign(claims()).unwrap()] {
            let Outcome::Valid { mode, headers, cached, .. } = check(&s, &mut v, &token) else {
                panic!("{:?}", check(&s, &mut v, &token))
            };
            assert_eq!((mode, cached), (Mode::Local, false));
            let want = [
                ("x-nebula-actor-id", "user-1"),
                ("x-nebula-actor-permissions", "read,write"),
                ("x-org", r#"{"id":7}"#),
                ("x-roles", "a,b"),
                ("x-team", "blue"),
            ];
            let mut got: Vec<(&str, &str)> = headers.iter().map(|(h, v)| (h.as_str(), v.as_str())).collect();
            got.sort();
            assert_eq!(got, want);
            assert!(matches!(check(&s, &mut v, &token), Outcome::Valid { cached: true, .. }));
        }
    }

    #[test]
    fn a_cached_token_is_found_however_its_header_is_written() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        let token = f.es.sign(claims()).unwrap();
        assert!(matches!(check(&s, &mut v, &token), Outcome::Valid { cached: false, .. }));
        let jwt = s.jwt.as_ref().unwrap();
        // Found whatever the scheme's case and the spaces around the token.
        for value in [format!("bearer {token}"), format!("Bearer   {token} \t"), format!("Bearer {token}\u{b}")] {
            let headers = vec![("authorization".to_owned(), value.clone().into_bytes())];
            assert!(matches!(v.check(jwt, &headers, NOW_MS), Outcome::Valid { cached: true, .. }), "{value:?}");
        }
        // Bytes that only start like the token, or are not text, are not it.
        let prefix = vec![("authorization".to_owned(), format!("Bearer {}", &token[..token.len() - 1]).into_bytes())];
        assert!(!matches!(v.check(jwt, &prefix, NOW_MS), Outcome::Valid { .. }));
        let mut binary = format!("Bearer {token}").into_bytes();
        binary.push(0xff);
        let binary = vec![("authorization".to_owned(), binary)];
        assert!(!matches!(v.check(jwt, &binary, NOW_MS), Outcome::Valid { .. }));
    }

    #[test]
    fn unknown_issuers_can_be_rejected() {
        let f = fixture();
        let s = settings(&f, "");
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"unknown_issuer": "reject", "providers": [{{"issuer": "{ISS}", "jwks": {}}}]}}}}"#,
            jwks(&f)
        );
        let strict = Settings::from_json(json.as_bytes()).unwrap();
        let mut c = claims();
        c.issuer = Some("https://elsewhere".into());
        let token = f.es.sign(c).unwrap();
        assert_eq!(check(&s, &mut verifier(&s), &token), Outcome::Callout(Pass::UnknownIssuer));
        assert_eq!(check(&strict, &mut verifier(&strict), &token), Outcome::Invalid(Reason::UnknownIssuer));
    }

    #[test]
    fn claim_headers_are_stripped_from_clients() {
        let f = fixture();
        let s = settings(&f, "");
        for name in ["x-nebula-actor-id", "x-org", "x-team", "x-roles"] {
            assert!(s.strip.contains(name), "{name}");
        }
    }

    #[test]
    fn invalid_tokens_are_rejected_with_a_reason() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        let with = |edit: &dyn Fn(&mut JWTClaims<Value>)| {
            let mut c = claims();
            edit(&mut c);
            f.es.sign(c).unwrap()
        };
        let cases: Vec<(&str, String, Outcome)> = vec![
            (
                "expired",
                with(&|c| c.expires_at = Some(UnixTimeStamp::from_secs(NOW_S - 61))),
                Outcome::Invalid(Reason::Expired),
            ),
            (
                "within leeway",
                with(&|c| c.expires_at = Some(UnixTimeStamp::from_secs(NOW_S - 59))),
                Outcome::Valid { mode: Mode::Local, headers: Rc::from(vec![]), cached: false, claims: Rc::default() },
            ),
            (
                "nbf",
                with(&|c| c.invalid_before = Some(UnixTimeStamp::from_secs(NOW_S + 120))),
                Outcome::Invalid(Reason::NotYetValid),
            ),
            (
                "aud",
                with(&|c| c.audiences = Some(Audiences::AsString("other".into()))),
                Outcome::Invalid(Reason::Audience),
            ),
            ("no aud", with(&|c| c.audiences = None), Outcome::Invalid(Reason::Audience)),
            ("no exp", with(&|c| c.expires_at = None), Outcome::Invalid(Reason::MissingExp)),
            (
                "other issuer",
                with(&|c| c.issuer = Some("https://elsewhere".into())),
                Outcome::Callout(Pass::UnknownIssuer),
            ),
            ("no issuer", with(&|c| c.issuer = None), Outcome::Callout(Pass::UnknownIssuer)),
            (
                "bad claim header",
                with(&|c| c.subject = Some("a\r\nx-evil: 1".into())),
                Outcome::Invalid(Reason::ClaimHeader),
            ),
            // A tab is a control character too (the rule in docs/jwt.md has no exception).
            (
                "tab in a claim",
                with(&|c| c.subject = Some("alice\tadmin".into())),
                Outcome::Invalid(Reason::ClaimHeader),
            ),
        ];
        for (case, token, want) in cases {
            let got = check(&s, &mut v, &token);
            match (&want, &got) {
                (Outcome::Valid { .. }, Outcome::Valid { .. }) => {}
                _ => assert_eq!(got, want, "{case}"),
            }
        }
    }

    fn forge(header: &str, payload: &str, sig: &[u8]) -> String {
        let e = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
        format!("{}.{}.{}", e(header.as_bytes()), e(payload.as_bytes()), e(sig))
    }

    #[test]
    fn hostile_tokens_never_verify() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        let payload = format!(r#"{{"iss":"{ISS}","aud":"prefect","sub":"x","exp":{}}}"#, NOW_S + 600);
        let good = f.es.sign(claims()).unwrap();
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        // HS256 keyed with the public key's bytes: the classic algorithm confusion.
        let confused = HS256Key::from_bytes(&f.es.public_key().to_bytes()).with_key_id("es-1");
        let cases: Vec<(&str, String, Outcome)> = vec![
            ("alg none", forge(r#"{"alg":"none"}"#, &payload, b""), Outcome::Invalid(Reason::Algorithm)),
            ("alg None", forge(r#"{"alg":"None","kid":"es-1"}"#, &payload, b"x"), Outcome::Invalid(Reason::Algorithm)),
            ("hs256 confusion", confused.authenticate(plain_claims()).unwrap(), Outcome::Invalid(Reason::Algorithm)),
            (
                "bad signature",
                forge(r#"{"alg":"ES256","kid":"es-1"}"#, &payload, &[0u8; 64]),
                Outcome::Invalid(Reason::Signature),
            ),
            (
                "payload swapped",
                format!("{head}.{}.{sig}", forge("{}", &payload, b"").split('.').nth(1).unwrap()),
                Outcome::Invalid(Reason::Signature),
            ),
            (
                "unknown kid",
                forge(r#"{"alg":"ES256","kid":"nope"}"#, &payload, &[0u8; 64]),
                Outcome::Invalid(Reason::UnknownKid),
            ),
            ("bad base64 header", format!("eyJ!!!.{rest}"), Outcome::Invalid(Reason::Malformed)),
            ("bad base64 payload", format!("{head}.%%%.{sig}"), Outcome::Invalid(Reason::Malformed)),
            (
                "bad base64 signature",
                format!("{head}.{}.***", rest.split('.').next().unwrap()),
                Outcome::Invalid(Reason::Malformed),
            ),
            ("header not json", format!("eyJhbGciOi.{rest}"), Outcome::Invalid(Reason::Malformed)),
            ("payload not an object", forge(r#"{"alg":"ES256"}"#, "[1]", b""), Outcome::Invalid(Reason::Malformed)),
            (
                "crit",
                forge(r#"{"alg":"ES256","kid":"es-1","crit":["x"]}"#, &payload, &[0u8; 64]),
                Outcome::Invalid(Reason::Malformed),
            ),
            ("huge", format!("eyJ{}.a.b", "A".repeat(64 * 1024)), Outcome::Invalid(Reason::TooLarge)),
        ];
        for (case, token, want) in cases {
            assert_eq!(check(&s, &mut v, &token), want, "{case}: {token:.80}");
        }
    }

    #[test]
    fn credentials_that_are_not_jwts_go_to_the_callout() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        let jwt = s.jwt.as_ref().unwrap();
        let h = |pairs: &[(&str, &[u8])]| pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect::<Vec<_>>();
        type Headers = Vec<(String, Vec<u8>)>;
        let cases: Vec<(Headers, Outcome)> = vec![
            (h(&[]), Outcome::Callout(Pass::NoCredential)),
            (h(&[("authorization", b"Bearer pnu_0123456789abcdef")]), Outcome::Callout(Pass::NotJwt)),
            (h(&[("authorization", b"Basic dXNlcjpwYXNz")]), Outcome::Callout(Pass::NotJwt)),
            (h(&[("authorization", b"Bearer eyJ.a")]), Outcome::Callout(Pass::NotJwt)),
            (h(&[("authorization", b"Bearer eyJ\xff.a.b")]), Outcome::Callout(Pass::NotJwt)),
            (h(&[("cookie", b"session=eyJa.b.c")]), Outcome::Callout(Pass::NoCredential)),
        ];
        for (headers, want) in cases {
            assert_eq!(v.check(jwt, &headers, NOW_MS), want, "{headers:?}");
        }
        // not_jwt: reject: what has the prefix and is not a JWT is refused, what lacks it
        // (no credential, as for Envoy's jwt_authn) still goes to the callout.
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"not_jwt": "reject", "providers": [{{"issuer": "{ISS}", "jwks": {}}}]}}}}"#,
            jwks(&f)
        );
        let strict = Settings::from_json(json.as_bytes()).unwrap();
        let mut sv = verifier(&strict);
        let strict_jwt = strict.jwt.as_ref().unwrap();
        let cases: Vec<(Headers, Outcome)> = vec![
            (h(&[]), Outcome::Callout(Pass::NoCredential)),
            (h(&[("authorization", b"Bearer pnu_0123456789abcdef")]), Outcome::Invalid(Reason::Malformed)),
            (h(&[("authorization", b"Bearer eyJ.a")]), Outcome::Invalid(Reason::Malformed)),
            (h(&[("authorization", b"Basic dXNlcjpwYXNz")]), Outcome::Callout(Pass::NotJwt)),
        ];
        for (headers, want) in cases {
            assert_eq!(sv.check(strict_jwt, &headers, NOW_MS), want, "not_jwt: reject, {headers:?}");
        }
        // Case-insensitive scheme (RFC 6750 §2.1 follows RFC 7235).
        let token = f.es.sign(claims()).unwrap();
        let headers = h(&[("authorization", format!("bearer  {token}").as_bytes())]);
        assert!(matches!(v.check(jwt, &headers, NOW_MS), Outcome::Valid { .. }));
    }

    #[test]
    fn cookie_and_header_sources() {
        let f = fixture();
        let s = settings(&f, "");
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"from_headers": [{{"name": "X-Token"}}], "from_cookies": ["jwt"],
                "providers": [{{"issuer": "{ISS}", "jwks": {}}}]}}}}"#,
            jwks(&f)
        );
        let s2 = Settings::from_json(json.as_bytes()).unwrap();
        drop(s);
        let jwt = s2.jwt.as_ref().unwrap();
        let mut v = JwtVerifier::new(jwt);
        let token = f.ed.sign(claims()).unwrap();
        let cookie = format!("a=1; jwt={token}; b=2");
        let by_cookie = vec![("cookie".to_owned(), cookie.into_bytes())];
        assert!(matches!(v.check(jwt, &by_cookie, NOW_MS), Outcome::Valid { .. }));
        let by_header = vec![("x-token".to_owned(), token.clone().into_bytes())];
        assert!(matches!(v.check(jwt, &by_header, NOW_MS), Outcome::Valid { cached: true, .. }));
        let bearer_only = bearer(&token);
        assert_eq!(
            v.check(jwt, &bearer_only, NOW_MS),
            Outcome::Callout(Pass::NoCredential),
            "authorization is no longer a source"
        );
    }

    #[test]
    fn remote_keys_arrive_later_and_rotate() {
        let f = fixture();
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"mode": "local_then_callout", "providers": [{{"issuer": "{ISS}",
                "remote_jwks": {{"cluster": "idp"}}}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let jwt = s.jwt.as_ref().unwrap();
        let mut v = JwtVerifier::new(jwt).with_host_crypto(Box::new(BoringSslStandIn));
        let token = f.es.sign(claims()).unwrap();
        assert_eq!(check(&s, &mut v, &token), Outcome::NoKey { provider: 0 });
        assert_eq!(v.without_refresh(jwt, 0), None, "no keys at all: cannot judge");
        let (keys, _) = KeySet::from_jwks(&jwks(&f), &Alg::ASYMMETRIC).unwrap();
        v.set_remote_keys(0, keys, 3);
        assert_eq!(v.remote_version(0), Some(3));
        assert!(matches!(
            check(&s, &mut v, &token),
            Outcome::Valid { mode: Mode::LocalThenCallout, cached: false, .. }
        ));
        assert!(matches!(check(&s, &mut v, &token), Outcome::Valid { cached: true, .. }));
        // Rotation to another key: the cached verdict goes with the old keys.
        let other = ES256KeyPair::generate();
        let mut jwk: Value = serde_json::from_str(&other.public_key().to_jwk()).unwrap();
        jwk["kid"] = "es-2".into();
        let (keys, _) = KeySet::from_jwks(&serde_json::json!({"keys": [jwk]}), &Alg::ASYMMETRIC).unwrap();
        v.set_remote_keys(0, keys, 4);
        assert_eq!(check(&s, &mut v, &token), Outcome::NoKey { provider: 0 });
        assert_eq!(v.without_refresh(jwt, 0), Some(Outcome::Invalid(Reason::UnknownKid)));
    }

    const RSA_PRIVATE: &str = include_str!("../../../tests/data/jwt/rsa-test-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../../tests/data/jwt/rsa-test-public.pem");

    #[test]
    fn rsa_jwk_keys_verify_rs_and_ps_tokens_and_resist_confusion() {
        let mut jwk: Value =
            serde_json::from_str(&RS256KeyPair::from_pem(RSA_PRIVATE).unwrap().public_key().to_jwk()).unwrap();
        jwk["kid"] = "rsa-1".into();
        // Without `alg` the key serves every allowed RSA algorithm (RS256 and PS384 here).
        jwk.as_object_mut().unwrap().remove("alg");
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "algorithms": ["RS256", "PS384"],
                "jwks": {{"keys": [{jwk}]}}}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let mut v = verifier(&s);
        let rs = RS256KeyPair::from_pem(RSA_PRIVATE).unwrap().with_key_id("rsa-1");
        assert!(matches!(check(&s, &mut v, &rs.sign(plain_claims()).unwrap()), Outcome::Valid { .. }));
        let ps = PS384KeyPair::from_pem(RSA_PRIVATE).unwrap();
        assert!(
            matches!(check(&s, &mut v, &ps.sign(plain_claims()).unwrap()), Outcome::Valid { .. }),
            "no kid: any key of the algorithm"
        );
        let rs512 = RS512KeyPair::from_pem(RSA_PRIVATE).unwrap().with_key_id("rsa-1");
        assert_eq!(
            check(&s, &mut v, &rs512.sign(plain_claims()).unwrap()),
            Outcome::Invalid(Reason::Algorithm),
            "not in algorithms"
        );
        // HS256 with the PEM text or the DER as the secret: there is no HS256 key to try.
        for secret in [RSA_PUBLIC.as_bytes().to_vec(), RS256PublicKey::from_pem(RSA_PUBLIC).unwrap().to_der().unwrap()]
        {
            let forged = HS256Key::from_bytes(&secret).with_key_id("rsa-1").authenticate(plain_claims()).unwrap();
            assert_eq!(check(&s, &mut v, &forged), Outcome::Invalid(Reason::Algorithm));
        }
    }

    /// Without the host's crypto (a host with no usable `verify_signature`), ES256 and
    /// ES384 tokens are rejected, however well signed: the module has no ECDSA code, so
    /// it fails closed. RSA, EdDSA and HS256 are still checked in the module.
    #[test]
    fn without_host_crypto_ecdsa_is_rejected_and_the_module_checks_the_rest() {
        let f = fixture();
        let es384 = ES384KeyPair::generate().with_key_id("es384-1");
        let rs256 = RS256KeyPair::from_pem(RSA_PRIVATE).unwrap().with_key_id("rsa-1");
        let mut keys = jwks(&f);
        for (jwk, kid) in [(es384.public_key().to_jwk(), "es384-1"), (rs256.public_key().to_jwk(), "rsa-1")] {
            let mut jwk: Value = serde_json::from_str(&jwk).unwrap();
            jwk["kid"] = kid.into();
            keys["keys"].as_array_mut().unwrap().push(jwk);
        }
        let secret = "0123456789abcdef0123456789abcdef";
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "jwks": {keys}}},
                {{"issuer": "https://hs.example.com", "secret": "{secret}"}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let ecdsa = [f.es.sign(plain_claims()).unwrap(), es384.sign(plain_claims()).unwrap()];
        let mut with_host = verifier(&s);
        for token in &ecdsa {
            assert!(matches!(check(&s, &mut with_host, token), Outcome::Valid { .. }), "the host checks it");
        }
        let mut module_only = JwtVerifier::new(s.jwt.as_ref().unwrap());
        for token in &ecdsa {
            assert_eq!(check(&s, &mut module_only, token), Outcome::Invalid(Reason::Signature), "no host: rejected");
        }
        let hs_payload = format!(r#"{{"iss":"https://hs.example.com","sub":"x","exp":{}}}"#, NOW_S + 600);
        for token in [
            rs256.sign(plain_claims()).unwrap(),
            f.ed.sign(plain_claims()).unwrap(),
            hs256_token(secret, r#"{"alg":"HS256"}"#, &hs_payload),
        ] {
            assert!(
                matches!(check(&s, &mut module_only, &token), Outcome::Valid { cached: false, .. }),
                "the module checks it: {token}"
            );
        }
    }

    /// HS256 tokens built by hand, so the header can say anything and still be signed.
    fn hs256_token(secret: &str, header: &str, payload: &str) -> String {
        let e = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
        let signed = format!("{}.{}", e(header.as_bytes()), e(payload.as_bytes()));
        let mac = hmac_sha256::HMAC::mac(signed.as_bytes(), secret.as_bytes());
        format!("{signed}.{}", e(&mac))
    }

    fn hs256_settings(secret: &str) -> Settings {
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "secret": "{secret}"}}]}}}}"#
        );
        Settings::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn any_crit_header_is_refused_even_when_signed() {
        let secret = "0123456789abcdef0123456789abcdef";
        let s = hs256_settings(secret);
        let mut v = verifier(&s);
        let payload = format!(r#"{{"iss":"{ISS}","sub":"x","exp":{}}}"#, NOW_S + 600);
        let plain = hs256_token(secret, r#"{"alg":"HS256"}"#, &payload);
        assert!(matches!(check(&s, &mut v, &plain), Outcome::Valid { .. }), "the same token without crit is valid");
        for crit in [r#"[]"#, r#"["exp"]"#, r#""b64""#] {
            let token = hs256_token(secret, &format!(r#"{{"alg":"HS256","crit":{crit}}}"#), &payload);
            assert_eq!(check(&s, &mut v, &token), Outcome::Invalid(Reason::Malformed), "crit: {crit}");
        }
    }

    /// A host crypto that answers ES256 checks as told and counts its calls.
    #[derive(Debug, Default)]
    struct CountingHost {
        calls: Rc<std::cell::Cell<usize>>,
        answer: Option<bool>,
    }

    impl HostCrypto for CountingHost {
        fn verify(&self, hash: &str, _spki: &[u8], _signature: &[u8], _signed: &[u8]) -> Option<bool> {
            assert_eq!(hash, "sha256");
            self.calls.set(self.calls.get() + 1);
            self.answer
        }
    }

    #[test]
    fn the_host_checks_ecdsa_and_its_verdict_is_final() {
        let f = fixture();
        let s = settings(&f, "");
        let calls = Rc::new(std::cell::Cell::new(0));
        let host = CountingHost { calls: calls.clone(), answer: Some(false) };
        let mut v = verifier(&s).with_host_crypto(Box::new(host));
        let token = f.es.sign(claims()).unwrap();
        assert_eq!(check(&s, &mut v, &token), Outcome::Invalid(Reason::Signature), "the host said no");
        assert_eq!(calls.get(), 1);
        // EdDSA is never the host's: the module checks it.
        assert!(matches!(check(&s, &mut v, &f.ed.sign(claims()).unwrap()), Outcome::Valid { .. }));
        assert_eq!(calls.get(), 1);
        // A host that cannot answer (None): rejected, the module has no ECDSA code.
        let host = CountingHost { calls: calls.clone(), answer: None };
        let mut v = verifier(&s).with_host_crypto(Box::new(host));
        assert_eq!(check(&s, &mut v, &token), Outcome::Invalid(Reason::Signature));
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn the_same_invalid_token_is_judged_once_and_forged_floods_stay_bounded() {
        let f = fixture();
        let s = settings(&f, "");
        let calls = Rc::new(std::cell::Cell::new(0));
        // The host says no without work (a debug build verifies slowly).
        let mut v = verifier(&s).with_host_crypto(Box::new(CountingHost { calls: calls.clone(), answer: Some(false) }));
        let payload =
            |n: usize| format!(r#"{{"iss":"{ISS}","aud":"prefect","sub":"x","n":{n},"exp":{}}}"#, NOW_S + 600);
        let forged = forge(r#"{"alg":"ES256","kid":"es-1"}"#, &payload(0), &[7u8; 64]);
        for _ in 0..5 {
            assert_eq!(check(&s, &mut v, &forged), Outcome::Invalid(Reason::Signature));
        }
        assert_eq!(calls.get(), 1, "one signature check for five requests");
        for n in 1..=3000 {
            let token = forge(r#"{"alg":"ES256","kid":"es-1"}"#, &payload(n), &[7u8; 64]);
            assert_eq!(check(&s, &mut v, &token), Outcome::Invalid(Reason::Signature));
        }
        assert_eq!(v.rejects.len(), RECENT_REJECTS, "bounded under a flood of distinct forgeries");
        // Cheap checks first: an expired forgery never reaches a signature check.
        let before = calls.get();
        let expired = forge(r#"{"alg":"ES256","kid":"es-1"}"#, &format!(r#"{{"iss":"{ISS}","exp":1}}"#), &[7u8; 64]);
        assert_eq!(check(&s, &mut v, &expired), Outcome::Invalid(Reason::Expired));
        assert_eq!(calls.get(), before);
    }

    #[test]
    fn require_and_rules_refuse_valid_tokens_that_lack_a_claim() {
        let secret = "0123456789abcdef0123456789abcdef";
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "secret": "{secret}",
                "require": {{"aud": "vminsert.*"}}}}],
                "rules": [{{"path": "/api/admin", "require": {{"groups": "admin"}}}},
                          {{"path": "/api/flows", "require": {{"scope": ["flows:read", "flows:admin"]}}}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let jwt = s.jwt.as_ref().unwrap();
        let mut v = verifier(&s);
        let token = |claims: serde_json::Value| {
            let mut c = claims.as_object().unwrap().clone();
            c.insert("iss".into(), ISS.into());
            c.insert("exp".into(), (NOW_S + 600).into());
            hs256_token(secret, r#"{"alg":"HS256"}"#, &serde_json::Value::Object(c).to_string())
        };
        let at = |path: &str, token: &str| {
            let headers = vec![
                (":path".to_owned(), path.as_bytes().to_vec()),
                ("authorization".to_owned(), format!("Bearer {token}").into_bytes()),
            ];
            headers
        };
        let ops = token(serde_json::json!({"aud": "vminsert.example", "groups": ["ops"], "scope": "flows:read"}));
        let admin = token(serde_json::json!({"aud": "vminsert.example", "groups": ["admin"]}));
        let other_aud = token(serde_json::json!({"aud": "grafana", "groups": ["admin"], "scope": "flows:read"}));
        let cases = [
            ("/api/other", &ops, true),
            ("/api/flows/1", &ops, true),
            ("/api/admin/users", &ops, false),
            ("/api/admin/users", &admin, true),
            ("/api/flows", &admin, false),
            ("/api/other", &other_aud, false),
            // Not canonical: every rule applies (a `//` could reach /api/admin downstream).
            ("/api//admin", &ops, false),
            ("/api%2Fadmin", &admin, false),
        ];
        for round in ["first", "cached"] {
            for (path, token, allowed) in &cases {
                let got = v.check(jwt, &at(path, token), NOW_MS);
                match (allowed, &got) {
                    (true, Outcome::Valid { .. }) | (false, Outcome::Insufficient) => {}
                    _ => panic!("{round}: {path}: {got:?}"),
                }
            }
        }
    }

    #[test]
    fn hs256_needs_its_secret() {
        let secret = "0123456789abcdef0123456789abcdef";
        let json = format!(
            r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{ISS}", "secret": "{secret}"}}]}}}}"#
        );
        let s = Settings::from_json(json.as_bytes()).unwrap();
        let mut v = verifier(&s);
        let c = plain_claims();
        let good = HS256Key::from_bytes(secret.as_bytes()).authenticate(c.clone()).unwrap();
        assert!(matches!(check(&s, &mut v, &good), Outcome::Valid { .. }));
        let bad = HS256Key::from_bytes(b"another secret, also 32 bytes long").authenticate(c).unwrap();
        assert_eq!(check(&s, &mut v, &bad), Outcome::Invalid(Reason::Signature));
    }
}
