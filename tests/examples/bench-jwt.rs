//! `make bench`'s JWT material (bench/run.py runs it): a fresh ES256 key, its public JWKS,
//! one token the load repeats (as real clients do) and `N` distinct tokens (first-seen
//! cost), as one JSON line. Test-only: the key lives as long as this process.
//!
//!     bench-jwt ISSUER AUDIENCE SUBJECT N

use jwt_simple::prelude::*;
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [issuer, audience, subject, n] = args.as_slice() else {
        return Err("usage: bench-jwt ISSUER AUDIENCE SUBJECT N".into());
    };
    let key = ES256KeyPair::generate().with_key_id("bench-es256");
    let mut jwk: Value = serde_json::from_str(&key.public_key().to_jwk())?;
    jwk["kid"] = "bench-es256".into();
    jwk["alg"] = "ES256".into();
    let token = |nonce: usize| {
        let claims = Claims::with_custom_claims(json!({"n": nonce}), Duration::from_hours(24))
            .with_issuer(issuer)
            .with_audience(audience)
            .with_subject(subject);
        key.sign(claims)
    };
    let fresh = (1..=n.parse::<usize>()?).map(token).collect::<Result<Vec<_>, _>>()?;
    println!("{}", json!({"jwks": {"keys": [jwk]}, "token": token(0)?, "fresh": fresh}));
    Ok(())
}
