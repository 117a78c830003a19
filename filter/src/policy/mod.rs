//! The request policy, pure and host-independent: the `auth` block ([`auth`]), public
//! paths ([`route`]), what a request becomes ([`request`]: strip, public or callout
//! headers), and the auth service's answer turned into allow, deny or fail
//! ([`decision`]), or Envoy's own reply when the auth service never answered
//! ([`envoy_reply`]: what is worth retrying). [`headers`] are the header-name sets and
//! lookups everything shares; [`forward`] is Traefik's forwardAuth contract
//! (X-Forwarded-*, cookies), [`ext_authz`] Envoy ext_authz's (the client's method and
//! path, headers on allow; [`request_body`]: the body in its callout); [`request_line`] is how a request is named in a log line; [`trace`] the
//! trace context every callout carries.
//! Nothing here knows about the cache, JWT or the host.

pub mod auth;
pub mod decision;
pub mod envoy_reply;
pub mod ext_authz;
pub mod forward;
pub mod headers;
pub mod request;
pub mod request_body;
pub mod request_line;
pub mod route;
pub mod substitution;
pub mod trace;
