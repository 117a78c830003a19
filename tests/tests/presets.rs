//! The presets in envoy/presets/, each run as shipped against a mock that speaks its
//! service's protocol (tests/src/outposts.rs; Prefect: tests/src/mock_auth.rs).

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::outposts::{
    AUTHENTIK_AUTHORIZE, AUTHENTIK_COOKIE, AUTHENTIK_PATH, OAUTH2_PROXY_COOKIE, OAUTH2_PROXY_PATH,
};
use nebula_authz_tests::{repo_root, Env};

fn preset(name: &str) -> Env {
    let path = repo_root().join("envoy/presets").join(format!("{name}.json"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Env::start(&json)
}

#[test]
fn prefect_preset_is_seed_000() {
    let env = preset("prefect");
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice").header("x-nebula-actor-id", "evil"));
    env.assert_allowed_as("prefect allow", &resp, "alice");
    let auth = env.auth.last();
    assert_eq!((auth.method.as_str(), auth.path.as_str()), ("GET", "/"), "{auth:?}");
    assert_eq!(auth.header_all("x-forwarded-uri"), ["/api/flows"], "{auth:?}");
    let before = env.upstream.count();
    let resp = env.get_as("/api/flows", "deny");
    env.assert_denied("prefect deny", &resp, before);
    let resp = env.get("/api/health", &[("x-nebula-actor-id", "evil")]);
    assert_eq!(resp.status, 200, "public path: {resp:?}");
    assert!(env.upstream.last().header("x-nebula-actor-id").is_none(), "spoof stripped on a public path");
    assert_eq!(env.auth.count(), 2, "public paths make no callout");
}

#[test]
fn authentik_preset_redirects_to_login_then_passes_the_identity() {
    let env = preset("authentik");
    // No session: the outpost's 302 reaches the browser intact, built from X-Forwarded-*.
    let resp = env.send(&RawRequest::get("/app/page?x=1").header("host", "app.example.com"));
    assert_eq!(resp.status, 302, "{resp:?}");
    let location = resp.header("location").unwrap_or_default();
    assert_eq!(
        location,
        format!("{AUTHENTIK_AUTHORIZE}http://app.example.com/outpost.goauthentik.io/callback&state=/app/page%3Fx=1"),
        "{resp:?}"
    );
    assert_eq!(resp.header_all("set-cookie"), [format!("{AUTHENTIK_COOKIE}=pending; Path=/; HttpOnly; SameSite=Lax")]);
    assert_eq!(resp.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    assert!(resp.text().contains("Found"), "the outpost's body: {resp:?}");
    assert!(!resp.has_header("vary"), "only client_headers are relayed: {resp:?}");
    assert_eq!(env.upstream.count(), 0);
    let auth = env.auth.last();
    assert_eq!(auth.path, AUTHENTIK_PATH, "{auth:?}");
    assert_eq!(auth.header_all("host"), ["ak-outpost-authentik-embedded-outpost.authentik.svc.cluster.local:9000"]);

    // With a session: the identity headers reach the app, forged ones do not.
    let resp = env.send(
        &RawRequest::get("/app/page")
            .header("host", "app.example.com")
            .header("cookie", format!("theme=dark; {AUTHENTIK_COOKIE}=akadmin"))
            .header("X-authentik-username", "evil")
            .header("X-authentik-meta-forged", "evil"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let up = env.upstream.last();
    assert_eq!(up.header_all("x-authentik-username"), ["akadmin"], "{up:?}");
    assert_eq!(up.header_all("x-authentik-groups"), ["admins|users"], "{up:?}");
    assert_eq!(up.header_all("x-authentik-email"), ["akadmin@example.com"], "{up:?}");
    assert!(up.header("x-authentik-meta-forged").is_none(), "x-authentik-* are stripped: {up:?}");
    assert!(up.header("content-type").is_none(), "only the listed headers are injected: {up:?}");

    // The outpost's own endpoints are public (Envoy routes them to the outpost).
    let before = env.auth.count();
    let resp = env.send(&RawRequest::get("/outpost.goauthentik.io/callback?code=1").header("X-authentik-uid", "evil"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.auth.count(), before, "no callout for the outpost's paths");
    assert!(env.upstream.last().header("x-authentik-uid").is_none(), "stripped on public paths too");

    // Without X-Forwarded-Host the outpost cannot tell the app: forward_auth is required.
    let env = Env::start(
        &std::fs::read_to_string(repo_root().join("envoy/presets/authentik.json"))
            .expect("preset")
            .replace("\"forward_auth\": true", "\"forward_auth\": false"),
    );
    let resp = env.send(&RawRequest::get("/app/page").header("cookie", format!("{AUTHENTIK_COOKIE}=akadmin")));
    assert_eq!((resp.status, resp.text().as_str()), (400, "no app for hostname"), "{resp:?}");
}

#[test]
fn oauth2_proxy_preset_allows_on_202_and_refreshes_its_cookie() {
    let env = preset("oauth2-proxy");
    let resp = env.send(&RawRequest::get("/dashboard/"));
    assert_eq!(resp.status, 401, "no session: {resp:?}");
    assert_eq!(env.upstream.count(), 0);
    assert_eq!(env.auth.last().path, OAUTH2_PROXY_PATH);

    let resp = env.send(
        &RawRequest::get("/dashboard/")
            .header("cookie", format!("{OAUTH2_PROXY_COOKIE}=alice"))
            .header("X-Auth-Request-User", "evil")
            .header("X-Auth-Request-Groups", "admins"),
    );
    assert_eq!(resp.status, 200, "202 allows: {resp:?}");
    let up = env.upstream.last();
    assert_eq!(up.header_all("x-auth-request-user"), ["alice"], "regex-selected header: {up:?}");
    assert_eq!(up.header_all("x-auth-request-email"), ["alice@example.com"], "{up:?}");
    assert_eq!(up.header_all("x-auth-request-preferred-username"), ["alice"], "{up:?}");
    assert!(up.header("x-auth-request-groups").is_none(), "forged header matching the regex is stripped: {up:?}");
    assert!(resp.header_all("set-cookie").is_empty(), "no refresh, no cookie: {resp:?}");

    // A refreshed session cookie replaces the app's cookie of the same name; others stay.
    let resp = env.send(
        &RawRequest::get("/dashboard/")
            .header("cookie", format!("{OAUTH2_PROXY_COOKIE}=refresh-bob"))
            .header("x-echo-set-cookie", format!("{OAUTH2_PROXY_COOKIE}=stale"))
            .header("x-echo-set-cookie", "app=1"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header_all("set-cookie"),
        ["app=1".to_string(), format!("{OAUTH2_PROXY_COOKIE}=refresh-bob-refreshed; Path=/; HttpOnly; Secure")],
        "{resp:?}"
    );

    // Its sign-in and callback endpoints are public.
    let before = env.auth.count();
    let resp = env.send(&RawRequest::get("/oauth2/callback?code=x"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.auth.count(), before);
}
