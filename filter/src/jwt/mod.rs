//! Local JWT verification: the `jwt` block ([`jwt_config`]), where tokens are read from and
//! how they are taken out of the request ([`source`]), keys bound to one algorithm
//! ([`keys`]), a credential turned into a verdict and claims into headers
//! ([`verifier`]), recently verified tokens ([`token_cache`]), and when a remote JWKS is
//! fetched, shared by every worker ([`jwks_schedule`]), found by OIDC discovery
//! ([`oidc_discovery`]). Where a signature is checked: [`signature`] (tests stand in
//! for the host's crypto with [`boringssl_stand_in`]); EdDSA with the module's one
//! SHA-512: [`ed25519`]. Pure; the fetches through shared data are flow/jwks_fetch.rs
//! and the request step flow/steps/jwt.rs.

#[cfg(test)]
pub mod boringssl_stand_in;
pub mod ed25519;
pub mod jwks_schedule;
pub mod jwt_config;
pub mod keys;
pub mod oidc_discovery;
pub mod reason;
pub mod require;
pub mod signature;
pub mod source;
pub mod token_cache;
pub mod verifier;
