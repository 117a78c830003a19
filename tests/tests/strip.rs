//! 1. Identity headers sent by the client are removed on every path, in any case and
//!    any count; on an allowed request only the auth service's values arrive.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{Env, NEBULA_HEADERS};

/// Spoofed identity headers: mixed case, repeated, one with a non-UTF-8 value.
fn spoofed(req: RawRequest) -> RawRequest {
    req.header("X-Nebula-Actor-Id", "evil")
        .header("X-Nebula-Actor-Id", "evil")
        .header("x-nebula-actor-permissions", "admin")
        .header("X-NEBULA-RATELIMIT-CONFIG", "unlimited")
        .header("x-Nebula-Log-Limit-Config", b"none\xe9")
}

const SPOOFED_VALUES: [&str; 4] = ["evil", "admin", "unlimited", "none"];

#[test]
fn spoofed_identity_headers_never_reach_upstream_or_auth() {
    let env = Env::start_default();

    // Public path: no callout, and none of the identity headers arrive.
    let resp = env.send(&spoofed(RawRequest::get("/api/health")).bearer("deny"));
    env.check(resp.status == 200 && resp.proxied(), "public /api/health should reach the upstream", &resp);
    env.check(env.auth.count() == 0, "a public path must not call the auth service", &resp);
    let up = env.upstream.last();
    for name in NEBULA_HEADERS {
        let got = up.header_all(name);
        env.check(got.is_empty(), &format!("public path: spoofed {name} reached the upstream: {got:?}"), &resp);
    }

    // Public path below a prefix, spoofed headers only (no authorization at all).
    let resp = env.send(&spoofed(RawRequest::get("/hooks/my-webhook-slug")));
    env.check(resp.status == 200 && resp.proxied(), "public /hooks/... should reach the upstream", &resp);
    let up = env.upstream.last();
    for name in NEBULA_HEADERS {
        env.check(
            up.header_all(name).is_empty(),
            &format!("public /hooks: spoofed {name} reached the upstream"),
            &resp,
        );
    }

    // Protected path, allowed: exactly the auth service's values, one each.
    let resp = env.send(&spoofed(RawRequest::get("/api/flows")).bearer("allow:alice"));
    let up = env.assert_allowed_as("protected allowed with spoofed headers", &resp, "alice");
    for (name, value) in &up.headers {
        let value = String::from_utf8_lossy(value);
        env.check(
            !SPOOFED_VALUES.iter().any(|s| value.contains(s)),
            &format!("a spoofed value reached the upstream: {name}: {value}"),
            &resp,
        );
    }

    // Protected path, denied: nothing reaches the upstream.
    let before = env.upstream.count();
    let resp = env.send(&spoofed(RawRequest::get("/api/flows")).bearer("deny"));
    env.assert_denied("protected denied with spoofed headers", &resp, before);

    // The auth service never sees client identity headers.
    let auth_requests = env.auth.requests();
    assert_eq!(auth_requests.len(), 2, "expected two callouts (allowed + denied)");
    for req in auth_requests {
        let leaked: Vec<_> = req.header_names().into_iter().filter(|n| n.starts_with("x-nebula-")).collect();
        assert!(leaked.is_empty(), "the auth service received client identity headers {leaked:?}: {req:?}");
    }
}
