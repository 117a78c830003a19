//! Ed25519 (EdDSA) signature checks with the module's one SHA-512.
//!
//! ed25519-dalek 2 hashes with sha2 0.10, through digest 0.10's traits; the RSA code
//! hashes with sha2 0.11. Each brought its own SHA-512 (11 KB of code, which every
//! sidecar's V8 compiles). Here sha2 0.11's `Sha512` is put behind digest 0.10's traits
//! and handed to ed25519-dalek's `hazmat::raw_verify`, with the checks `verify_strict`
//! adds to it (RFC 8032 §5.1.7 and its small-order points), so the result is
//! `verify_strict`'s: the tests below compare the two on valid, altered and small-order
//! inputs.

use curve25519_dalek::edwards::CompressedEdwardsY;
use digest::consts::U64;
use digest::{FixedOutput, HashMarker, Output, OutputSizeUser, Update};
use ed25519_dalek::{Signature, VerifyingKey};
use rsa::sha2::Digest as _;

/// sha2 0.11's SHA-512 with digest 0.10's traits.
#[derive(Clone, Default)]
struct Sha512(rsa::sha2::Sha512);

impl HashMarker for Sha512 {}

impl OutputSizeUser for Sha512 {
    type OutputSize = U64;
}

impl Update for Sha512 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

impl FixedOutput for Sha512 {
    fn finalize_into(self, out: &mut Output<Self>) {
        out.copy_from_slice(&self.0.finalize());
    }
}

/// `key.verify_strict(message, signature).is_ok()`: the signature's `R` and the key are
/// points of large order (neither a small-order point a forger can choose), `s` is
/// canonical, and `[s]B = R + [k]A`.
pub fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let Some(r) = CompressedEdwardsY(signature.r_bytes().to_owned()).decompress() else { return false };
    if r.is_small_order() || key.is_weak() {
        return false;
    }
    ed25519_dalek::hazmat::raw_verify::<Sha512>(key, message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use jwt_simple::prelude::*;

    #[test]
    fn agrees_with_verify_strict() {
        let pair = Ed25519KeyPair::generate();
        let key = VerifyingKey::from_bytes(&pair.public_key().to_bytes().try_into().unwrap()).unwrap();
        // The identity point (order 1) and a point of order 8: small-order R values.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let order_8 = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
            0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
        ];
        let mut checked = 0;
        for n in 0..64u8 {
            let message: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let token = pair.sign(JWTClaims { custom: NoCustomClaims {}, ..Claims::create(Duration::from_secs(60)) });
            let token = token.unwrap();
            let signature = base64_signature(&token);
            let signed = &token.as_bytes()[..token.rfind('.').unwrap()];
            let mut variants = vec![(signed.to_vec(), signature)];
            let mut altered = signature;
            altered[usize::from(n) % 64] ^= 1 << (n % 8);
            variants.push((signed.to_vec(), altered));
            variants.push((message.clone(), signature));
            let mut small_r = signature;
            small_r[..32].copy_from_slice(if n % 2 == 0 { &identity } else { &order_8 });
            variants.push((signed.to_vec(), small_r));
            let mut big_s = signature;
            big_s[63] |= 0xf0;
            variants.push((signed.to_vec(), big_s));
            for (message, bytes) in variants {
                let signature = Signature::from_bytes(&bytes);
                let strict = key.verify_strict(&message, &signature).is_ok();
                assert_eq!(verify_strict(&key, &message, &signature), strict, "{n}: {bytes:?}");
                checked += usize::from(strict);
            }
        }
        assert_eq!(checked, 64, "each genuine signature verifies, nothing else does");
        // The identity as key and as R with s = 0 satisfies [s]B = R + [k]A for every
        // message: only the small-order checks refuse it, as verify_strict does.
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        let forged = Signature::from_bytes(&forged);
        assert!(ed25519_dalek::hazmat::raw_verify::<Sha512>(&weak, b"any", &forged).is_ok(), "the equation holds");
        assert!(weak.verify_strict(b"any", &forged).is_err());
        assert!(!verify_strict(&weak, b"any", &forged));
    }

    fn base64_signature(token: &str) -> [u8; 64] {
        use base64::Engine as _;
        let encoded = &token[token.rfind('.').unwrap() + 1..];
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).unwrap().try_into().unwrap()
    }
}
