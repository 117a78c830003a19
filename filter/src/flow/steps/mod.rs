//! The request's steps, one file each, in the order flow/request.rs runs them:
//! [`strip`] → [`access`] → [`public`] → [`jwt`] (waiting for a JWKS fetch in flight:
//! [`jwks_wait`]) → [`select`] (only with `policies`) → [`cache`] → [`callout`] (after the request's [`body`] with
//! `auth.with_request_body`) → [`decide`] → [`inject`]. Each is a function over the
//! compiled [`Settings`](crate::plugin_config::Settings), the host and the worker; none
//! keeps the request's state (flow/request.rs does).

pub mod access;
pub mod body;
pub mod cache;
pub mod callout;
pub mod decide;
pub mod inject;
pub mod jwks_wait;
pub mod jwt;
pub mod public;
pub mod select;
pub mod strip;
