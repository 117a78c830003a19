//! 1. Identity headers sent by the client are removed on every path, in any case and
//!    any count; on an allowed request only the auth service's values arrive. Over
//!    HTTP/1.1 and HTTP/2 (where names arrive lower-cased and `cookie` may be split).

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto, NEBULA_HEADERS};

over_h1_and_h2!(spoofed_identity_headers_never_reach_upstream_or_auth, cookie_crumbs_all_reach_auth_and_upstream);

/// Spoofed identity headers: mixed case, repeated, one with a non-UTF-8 value, and
/// spelled with underscores (the same header to CGI/WSGI-style applications; every
/// spelling is generated in tests/tests/trailers.rs).
fn spoofed(req: RawRequest) -> RawRequest {
    req.header("X-Nebula-Actor-Id", "evil")
        .header("X-Nebula-Actor-Id", "evil")
        .header("x-nebula-actor-permissions", "admin")
        .header("X-NEBULA-RATELIMIT-CONFIG", "unlimited")
        .header("x-Nebula-Log-Limit-Config", b"none\xe9")
        .header("x_nebula_actor_id", "evil")
        .header("X_Nebula-Actor_Permissions", "admin")
}

/// The upstream's header names that are identity headers once `_` reads as `-`.
fn identity_spellings(up: &nebula_authz_tests::UpstreamRequest) -> Vec<&str> {
    let folded = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    up.header_names().into_iter().filter(|n| NEBULA_HEADERS.contains(&folded(n).as_str())).collect()
}

const SPOOFED_VALUES: [&str; 4] = ["evil", "admin", "unlimited", "none"];

fn spoofed_identity_headers_never_reach_upstream_or_auth(proto: Proto) {
    let env = Env::start_default_over(proto);

    // Public path: no callout, and none of the identity headers arrive.
    let resp = env.send(&spoofed(RawRequest::get("/api/health")).bearer("deny"));
    env.check(resp.status == 200 && resp.proxied(), "public /api/health should reach the upstream", &resp);
    env.check(env.auth.count() == 0, "a public path must not call the auth service", &resp);
    let up = env.upstream.last();
    let got = identity_spellings(&up);
    env.check(got.is_empty(), &format!("public path: spoofed {got:?} reached the upstream"), &resp);

    // Public path below a prefix, spoofed headers only (no authorization at all).
    let resp = env.send(&spoofed(RawRequest::get("/hooks/my-webhook-slug")));
    env.check(resp.status == 200 && resp.proxied(), "public /hooks/... should reach the upstream", &resp);
    let up = env.upstream.last();
    let got = identity_spellings(&up);
    env.check(got.is_empty(), &format!("public /hooks: spoofed {got:?} reached the upstream"), &resp);

    // Trailers: envoy.yaml as shipped speaks HTTP/1.1 to the upstream without
    // `enable_trailers`, so Envoy delivers none (tests/tests/trailers.rs runs the
    // configurations that do, and checks the filter strips them there).
    let resp = env.send(
        &spoofed(RawRequest::new("POST", "/api/health"))
            .chunked(vec![b"x".to_vec()])
            .trailer("x-nebula-actor-id", "evil"),
    );
    env.check(resp.status == 200 && resp.proxied(), "public POST with trailers should reach the upstream", &resp);
    let up = env.upstream.last();
    env.check(up.trailers.is_empty(), &format!("the shipped config delivered trailers: {:?}", up.trailers), &resp);

    // Protected path, allowed: exactly the auth service's values, one each.
    let resp = env.send(&spoofed(RawRequest::get("/api/flows")).bearer("allow:alice"));
    let up = env.assert_allowed_as("protected allowed with spoofed headers", &resp, "alice");
    let got = identity_spellings(&up);
    env.check(
        got == NEBULA_HEADERS,
        &format!("allowed: identity headers {got:?}, expected only the injected ones"),
        &resp,
    );
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

/// The crumbs of every `cookie` value, in order (h2 clients may send one field per crumb,
/// RFC 9113 §8.2.3; Envoy joins them with "; ").
fn crumbs(values: &[String]) -> Vec<String> {
    values.iter().flat_map(|v| v.split(';')).map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
}

/// With `cookie` forwarded to the auth service (session-cookie login, as Prefect's UI
/// uses), every crumb reaches it and the upstream, however the client split them.
fn cookie_crumbs_all_reach_auth_and_upstream(proto: Proto) {
    let env =
        Env::start_over(proto, r#"{"auth": {"cluster": "auth", "request_headers": ["authorization", "cookie"]}}"#);
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("cookie", "session=abc")
            .header("cookie", "csrf=1; theme=dark")
            .header("x-nebula-actor-id", "evil")
            .header("X-Nebula-Actor-Id", "evil2"),
    );
    env.assert_allowed_as("cookie crumbs", &resp, "alice");
    let want = ["session=abc", "csrf=1", "theme=dark"];
    let auth = env.auth.last();
    env.check(crumbs(&auth.header_all("cookie")) == want, &format!("auth service cookie: {auth:?}"), &resp);
    let up = env.upstream.last();
    env.check(crumbs(&up.header_all("cookie")) == want, &format!("upstream cookie: {up:?}"), &resp);
    if proto == Proto::H2 {
        // Envoy's h2 codec joins the crumbs into one field before the filter sees them.
        env.check(
            auth.header_all("cookie") == ["session=abc; csrf=1; theme=dark"],
            &format!("h2: the auth service should get one joined cookie: {auth:?}"),
            &resp,
        );
    }
}
