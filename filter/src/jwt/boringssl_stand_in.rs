//! Tests only: a [`HostCrypto`] that checks ECDSA (ES256, ES384) as Envoy's BoringSSL
//! does through `verify_signature`, with RustCrypto's p256/p384 (dev-dependencies: the
//! module itself has no ECDSA code). It reads the SubjectPublicKeyInfo the filter sends
//! and the DER `ECDSA-Sig-Value`; RSA it leaves to the module (`None`), as a host would
//! whose answer the module's own check matches. The native tests build every
//! `JwtVerifier` that meets an ES256/ES384 token with it, so they run without Envoy.

use crate::jwt::keys::{P256_SPKI, P384_SPKI};
use crate::jwt::signature::HostCrypto;

#[derive(Debug)]
pub struct BoringSslStandIn;

impl HostCrypto for BoringSslStandIn {
    fn verify(&self, hash: &str, spki: &[u8], signature: &[u8], signed: &[u8]) -> Option<bool> {
        use p256::ecdsa::signature::Verifier as _;
        if let Some(point) = spki.strip_prefix(P256_SPKI) {
            // BoringSSL parses the SPKI at each call: a point off the curve fails there.
            let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return Some(false) };
            let Ok(sig) = p256::ecdsa::Signature::from_der(signature) else { return Some(false) };
            return Some(hash == "sha256" && key.verify(signed, &sig).is_ok());
        }
        if let Some(point) = spki.strip_prefix(P384_SPKI) {
            let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return Some(false) };
            let Ok(sig) = p384::ecdsa::Signature::from_der(signature) else { return Some(false) };
            return Some(hash == "sha384" && key.verify(signed, &sig).is_ok());
        }
        None
    }
}
