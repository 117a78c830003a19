//! Verification keys for local JWT checks, typed by algorithm.
//!
//! Every key is bound to exactly one algorithm when it is loaded (an RSA key becomes
//! one `RS256`, `PS256`, ... key per allowed algorithm), and jwt-simple refuses a token
//! whose `alg` is not the key's. So a public key can never be used as an HMAC secret
//! (algorithm confusion), and `alg: none` has no key at all. Symmetric keys come only
//! from an explicit `secret`, never from a JWKS.

use std::fmt;

use jwt_simple::prelude::*;
use jwt_simple::Error;
use serde_json::{Map, Value};

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
}

/// One public key (or the HS256 secret), usable for exactly one algorithm.
#[derive(Clone)]
enum Verifier {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
}

/// A key with its `kid` (if any) and its one algorithm.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Alg,
    verifier: Verifier,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (a secret, in the HS256 case).
        write!(f, "Key({:?}, {})", self.kid, self.alg.name())
    }
}

impl Key {
    /// Verifies the signature and the registered claims; the custom claims are read by
    /// the caller from the payload it already decoded.
    pub fn verify(&self, token: &str, options: VerificationOptions) -> Result<JWTClaims<NoCustomClaims>, Error> {
        let o = Some(options);
        match &self.verifier {
            Verifier::RS256(k) => k.verify_token(token, o),
            Verifier::RS384(k) => k.verify_token(token, o),
            Verifier::RS512(k) => k.verify_token(token, o),
            Verifier::PS256(k) => k.verify_token(token, o),
            Verifier::PS384(k) => k.verify_token(token, o),
            Verifier::PS512(k) => k.verify_token(token, o),
            Verifier::ES256(k) => k.verify_token(token, o),
            Verifier::ES384(k) => k.verify_token(token, o),
            Verifier::EdDSA(k) => k.verify_token(token, o),
            Verifier::HS256(k) => k.verify_token(token, o),
        }
    }
}

/// The keys of one provider.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

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
            keys: vec![Key { kid: None, alg: Alg::HS256, verifier: Verifier::HS256(HS256Key::from_bytes(secret)) }],
        }
    }

    /// A P-256, P-384 or Ed25519 PEM public key (SPKI `PUBLIC KEY`), for the allowed
    /// algorithm of its type.
    pub fn from_pem(pem: &str, kid: Option<&str>, allowed: &[Alg]) -> Result<KeySet, String> {
        let kid = kid.map(str::to_owned);
        // jwt-go (seed 004's jwt-middleware) also reads SPKI under the non-standard
        // `EC PUBLIC KEY` label; so do we.
        let relabelled = pem
            .replace("-----BEGIN EC PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----")
            .replace("-----END EC PUBLIC KEY-----", "-----END PUBLIC KEY-----");
        let pem = relabelled.as_str();
        // No RSA PEM: its PKCS#1/PKCS#8 decoders cost ~33 KB of wasm, which the 1 MiB
        // module cannot spare; RSA keys come as JWK (`jwks`, `remote_jwks`).
        let keys: Vec<Key> = if let Ok(k) = ES256PublicKey::from_pem(pem) {
            one(kid, Alg::ES256, Verifier::ES256(k), allowed)
        } else if let Ok(k) = ES384PublicKey::from_pem(pem) {
            one(kid, Alg::ES384, Verifier::ES384(k), allowed)
        } else if let Ok(k) = Ed25519PublicKey::from_pem(pem) {
            one(kid, Alg::EdDSA, Verifier::EdDSA(k), allowed)
        } else {
            return Err("is not a P-256, P-384 or Ed25519 PEM public key (give RSA keys as a JWK in jwks)".into());
        };
        if keys.is_empty() {
            return Err("is a key for none of the provider's algorithms".into());
        }
        Ok(KeySet { keys })
    }

    /// A JWKS document (`{"keys": [...]}`). Keys of unsupported types or algorithms,
    /// private or symmetric (`oct`) keys and keys jwt-simple refuses are skipped and
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

fn one(kid: Option<String>, alg: Alg, verifier: Verifier, allowed: &[Alg]) -> Vec<Key> {
    if allowed.contains(&alg) {
        vec![Key { kid, alg, verifier }]
    } else {
        Vec::new()
    }
}

fn rsa_keys(n: &[u8], e: &[u8], kid: Option<String>, algs: &[Alg]) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for &alg in algs.iter().filter(|a| Alg::RSA.contains(a)) {
        let bad = |e: Error| format!("RSA key refused: {e}");
        let verifier = match alg {
            Alg::RS256 => Verifier::RS256(RS256PublicKey::from_components(n, e).map_err(bad)?),
            Alg::RS384 => Verifier::RS384(RS384PublicKey::from_components(n, e).map_err(bad)?),
            Alg::RS512 => Verifier::RS512(RS512PublicKey::from_components(n, e).map_err(bad)?),
            Alg::PS256 => Verifier::PS256(PS256PublicKey::from_components(n, e).map_err(bad)?),
            Alg::PS384 => Verifier::PS384(PS384PublicKey::from_components(n, e).map_err(bad)?),
            _ => Verifier::PS512(PS512PublicKey::from_components(n, e).map_err(bad)?),
        };
        keys.push(Key { kid: kid.clone(), alg, verifier });
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
        Base64UrlSafeNoPadding::decode_to_vec(v, None).map_err(|_| format!("{name:?} is not base64url"))
    };
    let want = |alg: Alg| algs.contains(&alg);
    let refused = |e: Error| format!("key refused: {e}");
    let json = jwk.to_string();
    let (alg, verifier) = match (text("kty"), text("crv")) {
        (Some("RSA"), _) => return rsa_keys(&decode("n")?, &decode("e")?, kid, &algs),
        (Some("EC"), Some("P-256")) if want(Alg::ES256) => {
            (Alg::ES256, Verifier::ES256(ES256PublicKey::from_jwk(&json).map_err(refused)?))
        }
        (Some("EC"), Some("P-384")) if want(Alg::ES384) => {
            (Alg::ES384, Verifier::ES384(ES384PublicKey::from_jwk(&json).map_err(refused)?))
        }
        (Some("OKP"), Some("Ed25519")) if want(Alg::EdDSA) => {
            (Alg::EdDSA, Verifier::EdDSA(Ed25519PublicKey::from_jwk(&json).map_err(refused)?))
        }
        (Some("EC"), Some("P-256" | "P-384")) | (Some("OKP"), Some("Ed25519")) => return Ok(Vec::new()),
        (kty, crv) => return Err(format!("unsupported key type {kty:?} / curve {crv:?}")),
    };
    Ok(vec![Key { kid, alg, verifier }])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

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

    /// The key of seed 004's jwt-middleware example, as written there.
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
}
