//! The request policy, pure and host-independent: the `auth` block ([`auth`]), public
//! paths ([`route`]), what a request becomes ([`request`]: strip, public or callout
//! headers), and the auth service's answer turned into allow, deny or fail
//! ([`decision`]). [`headers`] are the header-name sets and lookups everything shares;
//! [`forward`] is Traefik's forwardAuth contract (X-Forwarded-*, cookies);
//! [`request_line`] is how a request is named in a log line.
//! Nothing here knows about the cache, JWT or the host.

pub mod auth;
pub mod decision;
pub mod forward;
pub mod headers;
pub mod request;
pub mod request_line;
pub mod route;
