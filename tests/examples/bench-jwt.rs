//! `make bench`'s JWT material (bench/run.py runs it), as one JSON line: fresh ES256,
//! RS256 (2048-bit) and EdDSA keys and their public JWKS, one ES256 token the load
//! repeats (as real clients do), and per algorithm `N` distinct valid tokens
//! (first-seen cost) and `N` distinct forged ones (the right shape, issuer and `kid`,
//! a random signature: what a flood costs). Test-only: the keys live as long as this
//! process.
//!
//!     bench-jwt ISSUER AUDIENCE SUBJECT N

use std::time::{SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding;
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [issuer, audience, subject, n] = args.as_slice() else {
        return Err("usage: bench-jwt ISSUER AUDIENCE SUBJECT N".into());
    };
    let n: usize = n.parse()?;
    let es = ES256KeyPair::generate().with_key_id("bench-es256");
    let rs = RS256KeyPair::generate(2048)?.with_key_id("bench-rs256");
    let ed = Ed25519KeyPair::generate().with_key_id("bench-eddsa");
    let jwk = |text: String, kid: &str, alg: &str| -> Result<Value, serde_json::Error> {
        let mut jwk: Value = serde_json::from_str(&text)?;
        jwk["kid"] = kid.into();
        jwk["alg"] = alg.into();
        Ok(jwk)
    };
    let keys = vec![
        jwk(es.public_key().to_jwk(), "bench-es256", "ES256")?,
        jwk(rs.public_key().to_jwk(), "bench-rs256", "RS256")?,
        jwk(ed.public_key().to_jwk(), "bench-eddsa", "EdDSA")?,
    ];
    let claims = |nonce: usize| {
        Claims::with_custom_claims(json!({"n": nonce}), Duration::from_hours(24))
            .with_issuer(issuer)
            .with_audience(audience)
            .with_subject(subject)
    };
    let es_tokens = (1..=n).map(|i| es.sign(claims(i))).collect::<Result<Vec<_>, _>>()?;
    let rs_tokens = (1..=n).map(|i| rs.sign(claims(i))).collect::<Result<Vec<_>, _>>()?;
    let ed_tokens = (1..=n).map(|i| ed.sign(claims(i))).collect::<Result<Vec<_>, _>>()?;
    let mut random = Xorshift::seeded();
    // A forgery keeps a real token's header and (distinct) claims and replaces the
    // signature by random bytes of the right length (an RSA one below the modulus, so
    // the full public-key operation runs).
    let mut forge = |token: &String, len: usize| -> Result<String, jwt_simple::reexports::ct_codecs::Error> {
        let mut sig: Vec<u8> = (0..len).map(|_| random.byte()).collect();
        if len == 256 {
            sig[0] &= 0x7f;
        }
        let signed = token.rsplit_once('.').map_or(token.as_str(), |(head, _)| head);
        Ok(format!("{signed}.{}", Base64UrlSafeNoPadding::encode_to_string(&sig)?))
    };
    let es_forged = es_tokens.iter().map(|t| forge(t, 64)).collect::<Result<Vec<_>, _>>()?;
    let rs_forged = rs_tokens.iter().map(|t| forge(t, 256)).collect::<Result<Vec<_>, _>>()?;
    let invalid = forge(&es.sign(claims(0))?, 64)?;
    println!(
        "{}",
        json!({
            "jwks": {"keys": keys},
            "token": es.sign(claims(0))?,
            "invalid": invalid,
            "fresh": {"ES256": es_tokens, "RS256": rs_tokens, "EdDSA": ed_tokens},
            "forged": {"ES256": es_forged, "RS256": rs_forged},
        })
    );
    Ok(())
}

/// Random signature bytes: any source will do, they only have to differ.
struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> Xorshift {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Xorshift(nanos | 1)
    }

    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u8
    }
}
