//! Local JWT verification: the `jwt` block ([`config`]), where tokens are read from and
//! how they are taken out of the request ([`source`]), keys bound to one algorithm
//! ([`keys`]), a credential turned into a verdict and claims into headers
//! ([`verifier`]), recently verified tokens ([`cache`]), and when a remote JWKS is
//! fetched, shared by every worker ([`jwks`]), found by OIDC discovery ([`discovery`]). Pure; the host side is host/jwks.rs
//! (shared data, fetches) and host/steps/jwt.rs (the request step).

pub mod cache;
pub mod config;
pub mod discovery;
pub mod jwks;
pub mod keys;
pub mod reason;
pub mod require;
pub mod signature;
pub mod source;
pub mod verifier;
