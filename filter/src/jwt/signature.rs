//! Where a token's signature is checked.
//!
//! Envoy lends its BoringSSL to wasm modules through the `verify_signature` foreign
//! function (a SubjectPublicKeyInfo, a hash name, the signature, the signed bytes).
//! RSA PKCS#1 v1.5 (RS256/384/512) and ECDSA (ES256/384) checked there cost what they
//! cost `jwt_authn`, which runs the same code; compiled to wasm the same checks cost
//! 5–15× more (no 64×64-bit multiply, no assembly).
//!
//! ECDSA is checked only there: the module has no ECDSA code (it would cost about 96 KB
//! of module, which every VM compiles at start), so on a host without a usable
//! `verify_signature` an ES256/ES384 token is rejected (fail closed). RSA PKCS#1 falls
//! back to the module's `rsa` crate, which PSS needs anyway; PSS, EdDSA and HS256 (which
//! that function cannot do) are always checked by the module's own crates
//! (jwt/keys.rs). The host port is a trait so the core stays pure.

use crate::jwt::jwt_config::JwtSettings;
use crate::jwt::keys::{Alg, Key};

/// The host's signature check, if it has one.
pub trait HostCrypto: std::fmt::Debug {
    /// `Some(verdict)` when the host checked the signature; `None` when it could not
    /// (no such function, an error): the module then checks RSA itself and rejects ECDSA.
    fn verify(&self, hash: &str, spki: &[u8], signature: &[u8], signed: &[u8]) -> Option<bool>;
}

/// No host crypto: RSA, EdDSA and HS256 are checked in the module, ES256/ES384 are
/// rejected (hosts without `verify_signature`; unit tests of that case).
#[derive(Debug)]
pub struct ModuleOnly;

impl HostCrypto for ModuleOnly {
    fn verify(&self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

/// Whether `signature` (the JWS signature bytes) is `key`'s over `signed`.
pub fn verify(host: &dyn HostCrypto, key: &Key, signed: &[u8], signature: &[u8]) -> bool {
    let (Some(hash), Some(spki)) = (key.alg.host_hash(), key.spki()) else {
        return key.verify(signed, signature);
    };
    // JWS carries ECDSA signatures as r || s (RFC 7518 §3.4); BoringSSL takes the DER
    // form. No host verdict (no function, an error, not a signature of that size):
    // rejected, the module cannot check it.
    let ecdsa = |len| ecdsa_der(signature, len).and_then(|der| host.verify(hash, spki, &der, signed)) == Some(true);
    match key.alg {
        Alg::ES256 => ecdsa(32),
        Alg::ES384 => ecdsa(48),
        _ => host.verify(hash, spki, signature, signed).unwrap_or_else(|| key.verify(signed, signature)),
    }
}

/// The error to log when the host has no usable `verify_signature` and the
/// configuration allows ES256 or ES384 (the default `algorithms` do): every such token
/// will be rejected. `None` when the configuration allows neither.
pub fn without_host_crypto(jwt: &JwtSettings) -> Option<String> {
    let allowed: Vec<&str> = Alg::HOST_ONLY
        .into_iter()
        .filter(|alg| jwt.providers.iter().any(|p| p.algorithms.contains(alg)))
        .map(Alg::name)
        .collect();
    (!allowed.is_empty()).then(|| {
        format!(
            "JWT: {} tokens will be rejected: this host has no usable verify_signature (the module has no \
             ECDSA code; Envoy 1.40 has the function); RSA, EdDSA and HS256 are checked in the module",
            allowed.join(" and ")
        )
    })
}

/// `r || s` (each `len` bytes) as a DER `ECDSA-Sig-Value`; `None` if it cannot be one
/// (the module's check then rejects it too).
pub fn ecdsa_der(signature: &[u8], len: usize) -> Option<Vec<u8>> {
    if signature.len() != 2 * len {
        return None;
    }
    let (r, s) = signature.split_at(len);
    let integer = |x: &[u8]| -> Option<Vec<u8>> {
        let x = &x[x.iter().take_while(|b| **b == 0).count()..];
        let first = *x.first()?; // zero is never a valid r or s
        let mut out = vec![0x02];
        let pad = first >= 0x80; // DER integers are signed
        out.push(u8::try_from(x.len() + usize::from(pad)).ok()?);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(x);
        Some(out)
    };
    let (r, s) = (integer(r)?, integer(s)?);
    let body_len = u8::try_from(r.len() + s.len()).ok().filter(|l| *l < 0x80)?;
    let mut out = vec![0x30, body_len];
    out.extend(r);
    out.extend(s);
    Some(out)
}

/// Envoy's `VerifySignatureArguments` protobuf: hash_function = 1, public_key = 2
/// (DER), signature = 3, text = 4, all length-delimited.
pub fn verify_arguments(hash: &str, spki: &[u8], signature: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hash.len() + spki.len() + signature.len() + signed.len() + 16);
    for (number, bytes) in [(1u8, hash.as_bytes()), (2, spki), (3, signature), (4, signed)] {
        out.push(number << 3 | 2);
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    out
}

/// Envoy's `VerifySignatureResult`: result = 1 (bool; absent means false), error = 2.
/// `None` if the bytes are not such a message.
pub fn verify_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut rest = bytes;
    while let Some((&tag, tail)) = rest.split_first() {
        let (value, tail) = varint(tail)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                result = value != 0;
                rest = tail;
            }
            (_, 0) => rest = tail,
            (_, 2) => rest = tail.get(usize::try_from(value).ok()?..)?,
            _ => return None,
        }
    }
    Some(result)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// A known-good ES256 signature and its key: at start, the filter checks that the
/// host's `verify_signature` accepts it and refuses it altered before trusting the host.
pub mod probe {
    pub const P256_POINT_HEX: &str = "045d154ca41c3b8f92744dcee2b7d4fd4a3acdff74c755f5ef190f911b8aa04900ce1e34bd725e3cec08d66bedd7f1c77c26e3fa8b8a88baf4f3452c5c6174d3d2";
    pub const ES256_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3OTYxMTk5NTYsImV4cCI6MTc5NjIwNjM1NiwibmJmIjoxNzk2MTE5OTU2LCJpc3MiOiJodHRwczovL2lzc3VlciIsInN1YiI6ImJlbmNoLXVzZXIiLCJhdWQiOiJhdWQifQ.yCoqDxmgwwq26cIRMHg5-7FRSpvbTNRGaoDU8IRMqLo_ZeEoDP63SNXAIF9fZksFu9P3rdSSdOBFlETS2GBa3Q";
}

/// Whether `host` verifies right: the probe signature with the probe key, and not once
/// altered. A host that fails either is not used.
pub fn host_is_sound(host: &dyn HostCrypto) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let point: Option<Vec<u8>> = (0..probe::P256_POINT_HEX.len())
        .step_by(2)
        .map(|i| probe::P256_POINT_HEX.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    let Some((signed, sig)) = probe::ES256_TOKEN.rsplit_once('.') else { return false };
    let (Some(point), Ok(sig)) = (point, URL_SAFE_NO_PAD.decode(sig)) else { return false };
    let Some(der) = ecdsa_der(&sig, 32) else { return false };
    let spki = [crate::jwt::keys::P256_SPKI, &point].concat();
    let mut altered = signed.as_bytes().to_vec();
    altered[0] ^= 1;
    host.verify("sha256", &spki, &der, signed.as_bytes()) == Some(true)
        && host.verify("sha256", &spki, &der, &altered) == Some(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ecdsa_signatures_become_minimal_der() {
        let mut sig = vec![0u8; 64];
        sig[31] = 1; // r = 1
        sig[32] = 0x80; // s has its top bit set: a 0x00 pad
        let der = ecdsa_der(&sig, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 1, 1]);
        assert_eq!(&der[5..9], &[0x02, 33, 0x00, 0x80]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert_eq!(ecdsa_der(&[0u8; 64], 32), None, "r = 0");
        assert_eq!(ecdsa_der(&[1u8; 63], 32), None, "wrong length");
        assert_eq!(ecdsa_der(&[0xffu8; 96], 48).unwrap().len(), 2 + 2 * (2 + 49));
    }

    #[test]
    fn protobuf_arguments_and_results() {
        let long = vec![7u8; 300];
        let args = verify_arguments("sha256", b"k", &long, b"");
        assert_eq!(&args[..8], &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6']);
        assert_eq!(&args[8..11], &[0x12, 1, b'k']);
        assert_eq!(&args[11..14], &[0x1a, 0xac, 0x02], "300 as a varint");
        assert_eq!(&args[args.len() - 2..], &[0x22, 0]);
        assert_eq!(verify_result(&[0x08, 1]), Some(true));
        assert_eq!(verify_result(&[0x08, 1, 0x12, 2, b'n', b'o']), Some(true));
        assert_eq!(verify_result(&[0x12, 3, b'b', b'a', b'd']), Some(false), "proto3 omits false");
        assert_eq!(verify_result(&[]), Some(false));
        assert_eq!(verify_result(&[0x12, 9, b'x']), None, "truncated");
        assert_eq!(verify_result(&[0x0d, 1, 2, 3, 4]), None, "fixed32 is no field of it");
    }

    #[derive(Debug)]
    struct Yes;
    impl HostCrypto for Yes {
        fn verify(&self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
            Some(true)
        }
    }

    #[test]
    fn only_a_sound_host_is_used() {
        assert!(host_is_sound(&crate::jwt::boringssl_stand_in::BoringSslStandIn));
        assert!(!host_is_sound(&Yes), "a host that says yes to everything");
        assert!(!host_is_sound(&ModuleOnly), "a host without the function");
    }

    #[test]
    fn a_host_without_crypto_is_an_error_only_where_ecdsa_is_allowed() {
        use crate::plugin_config::Settings;
        let error = |providers: &str| {
            let json = format!(r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{providers}]}}}}"#);
            let settings = Settings::from_json(json.as_bytes()).unwrap();
            without_host_crypto(settings.jwt.as_ref().unwrap())
        };
        let remote = |issuer: &str, algorithms: &str| {
            format!(r#"{{"issuer": "{issuer}", "remote_jwks": {{"cluster": "idp"}} {algorithms}}}"#)
        };
        let rejected = " tokens will be rejected: this host has no usable verify_signature (the module has no ECDSA \
                        code; Envoy 1.40 has the function); RSA, EdDSA and HS256 are checked in the module";
        assert_eq!(error(&remote("a", "")), Some(format!("JWT: ES256 and ES384{rejected}")), "the default algorithms");
        assert_eq!(error(&remote("a", r#", "algorithms": ["RS256", "PS256", "EdDSA"]"#)), None);
        assert_eq!(error(r#"{"issuer": "h", "secret": "0123456789abcdef0123456789abcdef"}"#), None);
        let two = [remote("a", r#", "algorithms": ["RS256"]"#), remote("b", r#", "algorithms": ["ES384"]"#)].join(",");
        assert_eq!(error(&two), Some(format!("JWT: ES384{rejected}")), "any provider's");
    }
}
