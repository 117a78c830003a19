//! Verification keys for local JWT checks, typed by algorithm.
//!
//! Every key is bound to exactly one algorithm when it is loaded (an RSA key becomes
//! one `RS256`, `PS256`, ... key per allowed algorithm), and a token is only tried with
//! keys of its `alg`. So a public key can never be used as an HMAC secret (algorithm
//! confusion), and `alg: none` has no key at all. Symmetric keys come only from an
//! explicit `secret`, never from a JWKS.
//!
//! Everything that can be computed once per key is, when the key loads: the RSA
//! modulus and its Montgomery parameters (rsa 0.10, crypto-bigint), the decoded Ed25519
//! point, and the SubjectPublicKeyInfo DER the host's crypto takes (jwt/signature.rs).
//!
//! ECDSA keys (P-256, P-384) are only their SubjectPublicKeyInfo: the module has no
//! ECDSA code, the host's BoringSSL checks ES256/ES384 signatures. Loading checks what
//! needs no curve arithmetic (an uncompressed point of the curve's length); whether the
//! point is on the curve BoringSSL checks when it parses the key, at each verification,
//! where a bad point fails the signature check.

use std::fmt;
use std::rc::Rc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::sha2::{Sha256, Sha384, Sha512};
use rsa::{pkcs1v15, pss, BoxedUint};
use serde_json::{Map, Value};

use crate::jwt::ed25519;

/// The algorithms the filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
}

impl Alg {
    pub const ALL: [Alg; 10] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
    ];
    /// The default `algorithms`: every asymmetric one.
    pub const ASYMMETRIC: [Alg; 9] =
        [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512, Alg::ES256, Alg::ES384, Alg::EdDSA];
    const RSA: [Alg; 6] = [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512];

    /// The JOSE name, as in a token's `alg` header.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Checked only by the host's `verify_signature`: the module has no code for them
    /// (the p256/p384 crates cost about 96 KB of the module, and every KB of code costs
    /// start-up time and memory in each VM, docs/performance.md "Footprint").
    pub const HOST_ONLY: [Alg; 2] = [Alg::ES256, Alg::ES384];

    /// The hash the host's `verify_signature` takes for this algorithm, where the host
    /// can verify it (RSA PKCS#1 v1.5 and ECDSA; not PSS, EdDSA or HMAC).
    pub fn host_hash(self) -> Option<&'static str> {
        match self {
            Alg::RS256 | Alg::ES256 => Some("sha256"),
            Alg::RS384 | Alg::ES384 => Some("sha384"),
            Alg::RS512 => Some("sha512"),
            _ => None,
        }
    }
}

/// One public key (or the HS256 secret), usable for exactly one algorithm.
#[derive(Clone)]
enum Verifier {
    RS256(pkcs1v15::VerifyingKey<Sha256>),
    RS384(pkcs1v15::VerifyingKey<Sha384>),
    RS512(pkcs1v15::VerifyingKey<Sha512>),
    PS256(pss::VerifyingKey<Sha256>),
    PS384(pss::VerifyingKey<Sha384>),
    PS512(pss::VerifyingKey<Sha512>),
    /// ES256 or ES384: the key is its `spki`, for the host (jwt/signature.rs).
    HostOnly,
    EdDSA(ed25519_dalek::VerifyingKey),
    HS256(Rc<[u8]>),
}

/// A key with its `kid` (if any) and its one algorithm.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Alg,
    verifier: Verifier,
    /// The public key as SubjectPublicKeyInfo DER, for the host's crypto (RSA, EC; the
    /// only form of an EC key).
    spki: Option<Rc<[u8]>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (a secret, in the HS256 case).
        write!(f, "Key({:?}, {})", self.kid, self.alg.name())
    }
}

impl Key {
    /// The key's SubjectPublicKeyInfo DER, where the host can verify with it.
    pub fn spki(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }

    /// Checks `signature` (the JWS signature bytes) over `signed` (`header.payload`) in
    /// this module. ES256/ES384 are never valid here: only the host checks them.
    pub fn verify(&self, signed: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier as _;
        match &self.verifier {
            Verifier::RS256(k) => pkcs1(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::RS384(k) => pkcs1(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::RS512(k) => pkcs1(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::PS256(k) => pss_sig(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::PS384(k) => pss_sig(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::PS512(k) => pss_sig(signature).is_some_and(|s| k.verify(signed, &s).is_ok()),
            Verifier::HostOnly => false,
            Verifier::EdDSA(k) => {
                ed25519_dalek::Signature::from_slice(signature).is_ok_and(|s| ed25519::verify_strict(k, signed, &s))
            }
            Verifier::HS256(secret) => {
                let mac = hmac_sha256::HMAC::mac(signed, secret);
                // Constant time: the comparison must not tell how many bytes matched.
                signature.len() == mac.len() && signature.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        }
    }
}

fn pkcs1(signature: &[u8]) -> Option<pkcs1v15::Signature> {
    pkcs1v15::Signature::try_from(signature).ok()
}

fn pss_sig(signature: &[u8]) -> Option<pss::Signature> {
    pss::Signature::try_from(signature).ok()
}

/// The keys of one provider.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

// SubjectPublicKeyInfo DER prefixes of the uncompressed point forms (RFC 5480, RFC 8410):
// the key bytes follow.
pub const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
pub const P384_SPKI: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00,
    0x22, 0x03, 0x62, 0x00,
];
const ED25519_SPKI: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn extend(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    /// Keys for a token's `alg` and `kid`. A token without `kid` may use any key of its
    /// algorithm; a token with one only the keys that carry the same `kid`, or keys
    /// without any `kid` (a PEM given without a name).
    pub fn candidates<'k>(&'k self, alg: Alg, kid: Option<&'k str>) -> impl Iterator<Item = &'k Key> + 'k {
        self.keys.iter().filter(move |k| k.alg == alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Whether a key names this `kid` (for any algorithm).
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The HS256 key from an explicit shared secret.
    pub fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key { kid: None, alg: Alg::HS256, verifier: Verifier::HS256(Rc::from(secret)), spki: None }],
        }
    }

    /// A P-256, P-384 or Ed25519 PEM public key (SPKI `PUBLIC KEY`), for the allowed
    /// algorithm of its type.
    pub fn from_pem(pem: &str, kid: Option<&str>, allowed: &[Alg]) -> Result<KeySet, String> {
        let kid = kid.map(str::to_owned);
        let not_ours = || "is not a P-256, P-384 or Ed25519 PEM public key (give RSA keys as a JWK in jwks)".to_owned();
        let der = pem_body(pem).ok_or_else(not_ours)?;
        let key = if let Some(point) = der.strip_prefix(P256_SPKI) {
            ec_key(Alg::ES256, point, kid).map_err(|_| not_ours())?
        } else if let Some(point) = der.strip_prefix(P384_SPKI) {
            ec_key(Alg::ES384, point, kid).map_err(|_| not_ours())?
        } else if let Some(raw) = der.strip_prefix(ED25519_SPKI) {
            ed25519_key(raw, kid).map_err(|_| not_ours())?
        } else {
            return Err(not_ours());
        };
        if !allowed.contains(&key.alg) {
            return Err("is a key for none of the provider's algorithms".into());
        }
        Ok(KeySet { keys: vec![key] })
    }

    /// A JWKS document (`{"keys": [...]}`). Keys of unsupported types or algorithms,
    /// private or symmetric (`oct`) keys and keys that do not decode are skipped and
    /// reported; the set must keep at least one key.
    pub fn from_jwks(jwks: &Value, allowed: &[Alg]) -> Result<(KeySet, Vec<String>), String> {
        let list =
            jwks.get("keys").and_then(Value::as_array).ok_or("a JWKS must be an object with a \"keys\" array")?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            match jwk_keys(jwk, allowed) {
                Ok(keys) if keys.is_empty() => skipped.push(format!("keys[{i}]: no allowed algorithm")),
                Ok(keys) => set.keys.extend(keys),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if set.is_empty() {
            let why = if skipped.is_empty() { "no keys".to_owned() } else { skipped.join("; ") };
            return Err(format!("no usable key ({why})"));
        }
        Ok((set, skipped))
    }
}

/// The DER inside a `PUBLIC KEY` PEM (Traefik's jwt-middleware plugin, like jwt-go, also
/// writes SPKI under the non-standard `EC PUBLIC KEY` label; both are read).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let pem = pem.trim();
    let (label, rest) = pem.strip_prefix("-----BEGIN ")?.split_once("-----")?;
    if label != "PUBLIC KEY" && label != "EC PUBLIC KEY" {
        return None;
    }
    let body = rest.trim_end().strip_suffix(&format!("-----END {label}-----"))?;
    let text: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(text).ok()
}

/// A P-256 or P-384 key from its uncompressed SEC1 point (`04 || x || y`, SEC 1 §2.3.3),
/// as the SubjectPublicKeyInfo the host verifies with (RFC 5480). Whether the point is on
/// the curve is BoringSSL's check when it parses the key (at each verification: a bad
/// point fails the signature check, the token is rejected).
fn ec_key(alg: Alg, point: &[u8], kid: Option<String>) -> Result<Key, String> {
    let (prefix, coordinate) = match alg {
        Alg::ES256 => (P256_SPKI, 32),
        _ => (P384_SPKI, 48),
    };
    if point.first() != Some(&0x04) {
        return Err("key refused: only uncompressed points are read".into());
    }
    if point.len() != 1 + 2 * coordinate {
        return Err(format!("key refused: an uncompressed point of this curve is {} bytes", 1 + 2 * coordinate));
    }
    Ok(Key { kid, alg, verifier: Verifier::HostOnly, spki: Some([prefix, point].concat().into()) })
}

fn ed25519_key(raw: &[u8], kid: Option<String>) -> Result<Key, String> {
    let bytes: &[u8; 32] = raw.try_into().map_err(|_| "key refused: an Ed25519 key is 32 bytes".to_owned())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| "key refused: not a valid Ed25519 key")?;
    Ok(Key { kid, alg: Alg::EdDSA, verifier: Verifier::EdDSA(key), spki: None })
}

fn rsa_keys(n: &[u8], e: &[u8], kid: Option<String>, algs: &[Alg]) -> Result<Vec<Key>, String> {
    let bad = |e: rsa::Error| format!("RSA key refused: {e}");
    let uint = |bytes: &[u8]| {
        let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
        let bits = u32::try_from(bytes.len().max(1) * 8).map_err(|_| "RSA key refused: too large".to_owned())?;
        BoxedUint::from_be_slice(bytes, bits).map_err(|_| "RSA key refused: not an integer".to_owned())
    };
    // Checks the modulus size (1024 to 8192 bits) and the exponent; precomputes the
    // Montgomery parameters once for every verification.
    let public = rsa::PublicKey::new(uint(n)?, uint(e)?).map_err(bad)?;
    let spki: Rc<[u8]> = public.to_public_key_der().map_err(|e| format!("RSA key refused: {e}"))?.as_bytes().into();
    let mut keys = Vec::new();
    for &alg in algs.iter().filter(|a| Alg::RSA.contains(a)) {
        let p = public.clone();
        let verifier = match alg {
            Alg::RS256 => Verifier::RS256(pkcs1v15::VerifyingKey::new(p)),
            Alg::RS384 => Verifier::RS384(pkcs1v15::VerifyingKey::new(p)),
            Alg::RS512 => Verifier::RS512(pkcs1v15::VerifyingKey::new(p)),
            Alg::PS256 => Verifier::PS256(pss::VerifyingKey::new(p)),
            Alg::PS384 => Verifier::PS384(pss::VerifyingKey::new(p)),
            _ => Verifier::PS512(pss::VerifyingKey::new(p)),
        };
        keys.push(Key { kid: kid.clone(), alg, verifier, spki: Some(spki.clone()) });
    }
    Ok(keys)
}

/// The typed keys one JWK yields: its `alg` if it names one, else every allowed
/// algorithm of its key type.
fn jwk_keys(jwk: &Value, allowed: &[Alg]) -> Result<Vec<Key>, String> {
    let obj: &Map<String, Value> = jwk.as_object().ok_or("not an object")?;
    let text = |name: &str| obj.get(name).and_then(Value::as_str);
    if obj.contains_key("d") || obj.contains_key("k") {
        return Err("private or symmetric key material is never loaded from a JWKS".into());
    }
    if let Some(u) = text("use") {
        if u != "sig" {
            return Err(format!("\"use\": {u:?} is not \"sig\""));
        }
    }
    let kid = text("kid").map(str::to_owned);
    let algs: Vec<Alg> = match text("alg") {
        Some(name) => match Alg::from_name(name) {
            Some(a) if allowed.contains(&a) && a != Alg::HS256 => vec![a],
            _ => return Err(format!("\"alg\": {name:?} is not allowed")),
        },
        None => allowed.to_vec(),
    };
    let decode = |name: &str| -> Result<Vec<u8>, String> {
        let v = text(name).ok_or_else(|| format!("missing {name:?}"))?;
        URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).map_err(|_| format!("{name:?} is not base64url"))
    };
    let want = |alg: Alg| algs.contains(&alg);
    let coordinates = |len: usize| -> Result<Vec<u8>, String> {
        let (x, y) = (decode("x")?, decode("y")?);
        if x.len() != len || y.len() != len {
            return Err(format!("key refused: x and y must be {len} bytes"));
        }
        Ok([&[0x04][..], &x, &y].concat())
    };
    let key = match (text("kty"), text("crv")) {
        (Some("RSA"), _) => return rsa_keys(&decode("n")?, &decode("e")?, kid, &algs),
        (Some("EC"), Some("P-256")) if want(Alg::ES256) => ec_key(Alg::ES256, &coordinates(32)?, kid)?,
        (Some("EC"), Some("P-384")) if want(Alg::ES384) => ec_key(Alg::ES384, &coordinates(48)?, kid)?,
        (Some("OKP"), Some("Ed25519")) if want(Alg::EdDSA) => ed25519_key(&decode("x")?, kid)?,
        (Some("EC"), Some("P-256" | "P-384")) | (Some("OKP"), Some("Ed25519")) => return Ok(Vec::new()),
        (kty, crv) => return Err(format!("unsupported key type {kty:?} / curve {crv:?}")),
    };
    Ok(vec![key])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use jwt_simple::prelude::{ES256KeyPair, ES384KeyPair, Ed25519KeyPair};

    #[test]
    fn names_round_trip_and_none_is_not_an_algorithm() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Alg::from_name("none"), None);
        assert_eq!(Alg::from_name("rs256"), None, "names are case-sensitive (RFC 7515)");
    }

    #[test]
    fn jwks_skips_symmetric_private_and_foreign_keys() {
        let es = ES256KeyPair::generate().with_key_id("ec-1");
        let mut pub_jwk: Value = serde_json::from_str(&es.public_key().to_jwk()).unwrap();
        pub_jwk["kid"] = "ec-1".into();
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            serde_json::from_str::<Value>(&es.to_jwk()).unwrap(),
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            pub_jwk,
        ]});
        let (set, skipped) = KeySet::from_jwks(&jwks, &Alg::ASYMMETRIC).unwrap();
        assert_eq!(set.keys.len(), 1, "{skipped:?}");
        assert_eq!((set.keys[0].kid.as_deref(), set.keys[0].alg), (Some("ec-1"), Alg::ES256));
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[1].contains("private"), "{skipped:?}");
        assert!(skipped[0].contains("symmetric"), "{skipped:?}");
        assert!(skipped[2].contains("unsupported key type Some(\"EC\") / curve Some(\"P-521\")"), "{skipped:?}");
        assert!(skipped[3].contains("RSA key refused"), "{skipped:?}");
    }

    #[test]
    fn jwks_alg_member_narrows_the_algorithms() {
        let k = Ed25519KeyPair::generate();
        let mut jwk: Value = serde_json::from_str(&k.public_key().to_jwk()).unwrap();
        jwk["alg"] = "ES256".into();
        let err = KeySet::from_jwks(&serde_json::json!({"keys": [jwk]}), &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err, "no usable key (keys[0]: no allowed algorithm)");
        jwk["alg"] = "HS256".into();
        let err = KeySet::from_jwks(&serde_json::json!({"keys": [jwk]}), &Alg::ALL).unwrap_err();
        assert!(err.contains("\"alg\": \"HS256\" is not allowed"), "{err}");
        let err = KeySet::from_jwks(&serde_json::json!({"keys": []}), &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err, "no usable key (no keys)");
        let err = KeySet::from_jwks(&serde_json::json!([1]), &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err, "a JWKS must be an object with a \"keys\" array");
    }

    /// The key of the Traefik jwt-middleware plugin's example, as written there.
    #[test]
    fn seed_004_ec_public_key_label_is_read() {
        let pem = "-----BEGIN EC PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5OEKUhuyWPQV7Cf+Y1WohGNVr86Y
OBpuIeL4TqJhGp35CYnrZahUsh9bEzXRstrXMUjTWKkaEcP2bv7cqKoe2Q==
-----END EC PUBLIC KEY-----";
        let set = KeySet::from_pem(pem, Some("vicmet"), &Alg::ASYMMETRIC).unwrap();
        assert_eq!(
            set.keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect::<Vec<_>>(),
            vec![(Some("vicmet"), Alg::ES256)]
        );
    }

    #[test]
    fn pem_keys_get_one_key_per_allowed_algorithm() {
        let ec = ES384KeyPair::generate();
        let set = KeySet::from_pem(&ec.public_key().to_pem().unwrap(), Some("p384"), &Alg::ASYMMETRIC).unwrap();
        assert_eq!(set.keys.iter().map(|k| k.alg).collect::<Vec<_>>(), vec![Alg::ES384]);
        let err = KeySet::from_pem(&ec.public_key().to_pem().unwrap(), None, &[Alg::RS256]).unwrap_err();
        assert_eq!(err, "is a key for none of the provider's algorithms");
        let err =
            KeySet::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", None, &Alg::ASYMMETRIC)
                .unwrap_err();
        assert!(err.starts_with("is not a P-256, P-384 or Ed25519 PEM public key"), "{err}");
        let rsa = include_str!("../../../tests/data/jwt/rsa-test-public.pem");
        let err = KeySet::from_pem(rsa, None, &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err, "is not a P-256, P-384 or Ed25519 PEM public key (give RSA keys as a JWK in jwks)");
    }

    /// EC keys load as their SubjectPublicKeyInfo with the checks that need no curve
    /// arithmetic; a point off the curve loads and is refused by the host's check (the
    /// stand-in for Envoy's BoringSSL), so its tokens are rejected.
    #[test]
    fn ec_keys_load_as_spki_and_a_point_off_the_curve_fails_at_verification() {
        use crate::jwt::boringssl_stand_in::BoringSslStandIn;
        use crate::jwt::signature::{self, ModuleOnly};
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let jwk =
            |x: &[u8], y: &[u8]| serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}]});
        let (set, _) = KeySet::from_jwks(&jwk(&[1; 32], &[2; 32]), &Alg::ASYMMETRIC).unwrap();
        let key = &set.keys[0];
        assert_eq!(key.spki().unwrap(), [P256_SPKI, &[4], &[1; 32], &[2; 32]].concat());
        let signature = [7u8; 64];
        assert!(!signature::verify(&BoringSslStandIn, key, b"a.b", &signature), "off the curve: no valid signature");
        assert!(!signature::verify(&ModuleOnly, key, b"a.b", &signature), "no host: rejected");
        let err = KeySet::from_jwks(&jwk(&[1; 31], &[2; 32]), &Alg::ASYMMETRIC).unwrap_err();
        assert_eq!(err, "no usable key (keys[0]: key refused: x and y must be 32 bytes)");
        // PEM: the curve from the SPKI's OID, then the point's form and length.
        let pem =
            |der: &[u8]| format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----", STANDARD.encode(der));
        let p384 = [P384_SPKI, &[4], &[9; 96]].concat();
        let set = KeySet::from_pem(&pem(&p384), None, &Alg::ASYMMETRIC).unwrap();
        assert_eq!((set.keys[0].alg, set.keys[0].spki().unwrap()), (Alg::ES384, &p384[..]));
        let not_ours = "is not a P-256, P-384 or Ed25519 PEM public key (give RSA keys as a JWK in jwks)";
        for bad in [[P256_SPKI, &[2], &[9; 32]].concat(), [P256_SPKI, &[4], &[9; 63]].concat(), p384[..90].to_vec()] {
            assert_eq!(KeySet::from_pem(&pem(&bad), None, &Alg::ASYMMETRIC).unwrap_err(), not_ours, "{bad:02x?}");
        }
    }
}
