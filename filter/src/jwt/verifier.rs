//! Local JWT verification: find the credential, decide whether it is a JWT of a known
//! issuer, verify it (jwt-simple), and turn its claims into headers.
//!
//! Only JWT-shaped credentials (`eyJ….….…`) of a configured issuer are decided here.
//! Anything else (a Prefect API key, a cookie, a JWT from an issuer no provider names)
//! goes to the callout unchanged. A JWT of a known issuer that fails any check is
//! rejected without a callout, whatever the mode.

use std::rc::Rc;

use jwt_simple::prelude::{UnixTimeStamp, VerificationOptions, MAX_HEADER_LENGTH};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use crate::jwt::cache::{token_hash, Entry, VerifiedCache};
use crate::jwt::config::{JwtSettings, Mode, Provider, UnknownIssuer};
use crate::jwt::keys::{Alg, Key, KeySet};
use crate::policy::headers::Header;

/// RFC 6750 §3.1: the challenge of a 401 for a token that failed verification.
pub const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer error="invalid_token""#;
/// The body of that 401 (the reason goes to the log and metrics, not to the client).
pub const INVALID_TOKEN_BODY: &[u8] = b"nebula-authz: invalid token\n";

/// Longest claim header value the filter sets.
const MAX_CLAIM_HEADER_BYTES: usize = 8 * 1024;

/// The headers a valid token's claims become (shared with the cache).
pub type ClaimHeaders = Rc<[(String, String)]>;

/// Why a JWT was rejected; `as_str` names the metric and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not decodable: base64, JSON, segments, critical headers.
    Malformed,
    TooLarge,
    /// `alg` is not one of the provider's (`none`, HS256 against public keys, ...).
    Algorithm,
    UnknownKid,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingExp,
    /// No provider has the token's `iss` (with `unknown_issuer: reject`).
    UnknownIssuer,
    /// A mapped claim cannot be a header value (control characters, too long).
    ClaimHeader,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::Algorithm,
        Reason::UnknownKid,
        Reason::Signature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Issuer,
        Reason::Audience,
        Reason::MissingExp,
        Reason::UnknownIssuer,
        Reason::ClaimHeader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::Algorithm => "algorithm",
            Reason::UnknownKid => "unknown_kid",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::MissingExp => "missing_exp",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::ClaimHeader => "claim_header",
        }
    }

    fn from_error(e: &jwt_simple::Error) -> Reason {
        match e.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => Reason::Signature,
            Some(JWTError::TokenHasExpired) => Reason::Expired,
            Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => Reason::NotYetValid,
            Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => Reason::Issuer,
            Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => Reason::Audience,
            Some(JWTError::AlgorithmMismatch) => Reason::Algorithm,
            Some(JWTError::TokenTooLong) => Reason::TooLarge,
            _ => Reason::Malformed,
        }
    }
}

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
    /// A valid token of a provider: set `headers`, then allow (`Local`) or call out.
    Valid { mode: Mode, headers: ClaimHeaders, cached: bool },
    /// 401 `invalid_token`, no callout.
    Invalid(Reason),
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

/// The per-worker state: remote keys and the verified-token cache.
#[derive(Debug)]
pub struct JwtVerifier {
    remote: Vec<Remote>,
    /// Bumped per provider whenever its keys change; cached entries carry it.
    generations: Vec<u64>,
    cache: VerifiedCache,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> JwtVerifier {
        let n = settings.providers.len();
        JwtVerifier {
            remote: (0..n).map(|_| Remote::default()).collect(),
            generations: vec![0; n],
            cache: VerifiedCache::new(settings.cache_entries),
        }
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
        let Some(token) = credential.filter(|c| looks_like_jwt(c)) else {
            return Outcome::Callout(Pass::NotJwt);
        };
        if token.len() > settings.max_token_bytes {
            return Outcome::Invalid(Reason::TooLarge);
        }
        let hash = token_hash(token);
        let generations = &self.generations;
        if let Some(e) = self.cache.get(&hash, now_ms, |p| generations.get(p).copied().unwrap_or(u64::MAX)) {
            let mode = settings.providers.get(e.provider).map_or(Mode::Local, |p| p.mode);
            return Outcome::Valid { mode, headers: e.headers.clone(), cached: true };
        }
        let unverified = match Unverified::decode(token) {
            Ok(u) => u,
            Err(reason) => return Outcome::Invalid(reason),
        };
        let Some((index, provider)) =
            settings.providers.iter().enumerate().find(|(_, p)| Some(p.issuer.as_str()) == unverified.issuer())
        else {
            return match settings.unknown_issuer {
                UnknownIssuer::Callout => Outcome::Callout(Pass::UnknownIssuer),
                UnknownIssuer::Reject => Outcome::Invalid(Reason::UnknownIssuer),
            };
        };
        let Some(alg) = Alg::from_name(&unverified.alg).filter(|a| provider.algorithms.contains(a)) else {
            return Outcome::Invalid(Reason::Algorithm);
        };
        let Some(exp) = unverified.claims.get("exp").and_then(Value::as_u64) else {
            return Outcome::Invalid(Reason::MissingExp);
        };
        let remote = self.remote.get(index).map(|r| &r.keys);
        let kid = unverified.kid.as_deref();
        let candidates: Vec<&Key> =
            provider.keys.candidates(alg, kid).chain(remote.into_iter().flat_map(|k| k.candidates(alg, kid))).collect();
        if candidates.is_empty() {
            return match provider.remote {
                Some(_) => Outcome::NoKey { provider: index },
                None => Outcome::Invalid(Reason::UnknownKid),
            };
        }
        if let Err(reason) = verify(provider, &candidates, token, settings.max_token_bytes, now_ms) {
            return Outcome::Invalid(reason);
        }
        let headers: Rc<[(String, String)]> = match claim_headers(provider, &unverified.claims) {
            Ok(h) => Rc::from(h),
            Err(reason) => return Outcome::Invalid(reason),
        };
        let valid_until_ms = exp.saturating_add(provider.leeway.as_secs()).saturating_mul(1000);
        let generation = self.generations.get(index).copied().unwrap_or(0);
        self.cache.insert(
            hash,
            Entry { provider: index, generation, valid_until_ms, headers: headers.clone() },
            now_ms,
        );
        Outcome::Valid { mode: provider.mode, headers, cached: false }
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

/// A compact JWS: three dot-separated segments, the header a base64url JSON object
/// (`eyJ` is how `{"` encodes). JWEs (five segments) and opaque keys are not.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// The header and claims of a token before its signature is checked: used only to pick
/// the provider and key, and (after verification) to read claims for headers.
struct Unverified {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
}

impl Unverified {
    fn decode(token: &str) -> Result<Unverified, Reason> {
        let mut segments = token.split('.');
        let mut object = |max: usize| -> Result<Map<String, Value>, Reason> {
            let segment = segments.next().filter(|s| s.len() <= max).ok_or(Reason::Malformed)?;
            let bytes = Base64UrlSafeNoPadding::decode_to_vec(segment, None).map_err(|_| Reason::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
        };
        let header = object(MAX_HEADER_LENGTH)?;
        let claims = object(usize::MAX)?;
        let text = |name: &str| header.get(name).and_then(Value::as_str).map(str::to_owned);
        // jwt-simple checks `alg` and the rest of the header again when verifying.
        Ok(Unverified { alg: text("alg").unwrap_or_default(), kid: text("kid"), claims })
    }

    fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Signature and registered claims with each candidate key; the most telling failure
/// wins (a claim error means a key did verify the signature).
fn verify(provider: &Provider, keys: &[&Key], token: &str, max_token_bytes: usize, now_ms: u64) -> Result<(), Reason> {
    let mut failure = Reason::Signature;
    for key in keys {
        let options = VerificationOptions {
            allowed_issuers: Some(std::iter::once(provider.issuer.clone()).collect()),
            allowed_audiences: provider.audiences.clone(),
            time_tolerance: Some(provider.leeway.into()),
            max_token_length: Some(max_token_bytes),
            // The host's clock (Envoy's), not the VM's: one time source for the filter.
            artificial_time: Some(UnixTimeStamp::from_millis(now_ms)),
            ..Default::default()
        };
        match key.verify(token, options) {
            Ok(_) => return Ok(()),
            Err(e) => match Reason::from_error(&e) {
                Reason::Signature => {}
                other => failure = other,
            },
        }
    }
    Err(failure)
}

/// `claims_to_headers` (ordered by claim name). Missing or null claims set nothing.
fn claim_headers(provider: &Provider, claims: &Map<String, Value>) -> Result<Vec<(String, String)>, Reason> {
    let mut out = Vec::with_capacity(provider.claims_to_headers.len());
    for (claim, header) in &provider.claims_to_headers {
        let Some(value) = lookup(claims, claim) else { continue };
        let Some(text) = header_value(value) else { continue };
        if text.len() > MAX_CLAIM_HEADER_BYTES || text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Reason::ClaimHeader);
        }
        out.push((header.clone(), text));
    }
    Ok(out)
}

/// A top-level claim by name (names may contain dots: `https://example.com/roles`), else
/// a `.` path into nested objects (`realm_access.roles`).
fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Strings as they are, arrays joined with commas, objects as JSON.
fn header_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Some(parts.join(","))
        }
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::Settings;
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

    fn verifier(s: &Settings) -> JwtVerifier {
        JwtVerifier::new(s.jwt.as_ref().unwrap())
    }

    #[test]
    fn valid_tokens_become_headers_and_are_cached() {
        let f = fixture();
        let s = settings(&f, "");
        let mut v = verifier(&s);
        for token in [f.es.sign(claims()).unwrap(), f.ed.sign(claims()).unwrap()] {
            let Outcome::Valid { mode, headers, cached } = check(&s, &mut v, &token) else {
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
                Outcome::Valid { mode: Mode::Local, headers: Rc::from(vec![]), cached: false },
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
        let mut v = JwtVerifier::new(jwt);
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
