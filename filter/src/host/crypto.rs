//! The host's signature check: Envoy's `verify_signature` foreign function (its
//! BoringSSL, the code `jwt_authn` runs), used for RSA PKCS#1 and ECDSA once a probe
//! shows it answers right (jwt/signature.rs).

use log::{info, warn};
use proxy_wasm::hostcalls;

use crate::jwt::signature::{self, HostCrypto};

const FUNCTION: &str = "verify_signature";

#[derive(Debug)]
pub struct EnvoyCrypto;

impl HostCrypto for EnvoyCrypto {
    fn verify(&self, hash: &str, spki: &[u8], signature: &[u8], signed: &[u8]) -> Option<bool> {
        let args = signature::verify_arguments(hash, spki, signature, signed);
        match hostcalls::call_foreign_function(FUNCTION, Some(&args)) {
            Ok(Some(result)) => signature::verify_result(&result),
            _ => None,
        }
    }
}

/// The host crypto to use: Envoy's if it passes the probe, else none (the module's).
pub fn probe() -> Option<Box<dyn HostCrypto>> {
    if signature::host_is_sound(&EnvoyCrypto) {
        info!("JWT: RSA and ECDSA signatures are checked by the host ({FUNCTION})");
        Some(Box::new(EnvoyCrypto))
    } else {
        warn!("JWT: the host has no usable {FUNCTION}; every signature is checked in the module (slower)");
        None
    }
}
