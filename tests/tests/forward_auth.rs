//! The Traefik forwardAuth request contract: X-Forwarded-* on the callout, generated from
//! what Envoy received unless `trust_forward_header`, and never doubled.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::Env;

/// A client that forges every forwarding header Traefik knows.
fn spoofed(req: RawRequest) -> RawRequest {
    req.header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.example.com")
        .header("X-Forwarded-Uri", "/api/health")
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Port", "8443")
        .header("X-Forwarded-Prefix", "/evil")
        .header("X-Real-Ip", "6.6.6.6")
}

#[test]
fn callout_describes_the_request_and_ignores_forged_forwarding_headers() {
    let env = Env::start_default();
    let req = spoofed(RawRequest::post("/api/flows/filter?limit=5", b"{}".to_vec()).bearer("allow:alice"))
        .header("host", "api.example.com");
    let resp = env.send(&req);
    env.assert_allowed_as("POST with forged X-Forwarded-*", &resp, "alice");
    let auth = env.auth.last();
    for (name, want) in [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-uri", "/api/flows/filter?limit=5"),
        ("x-forwarded-for", "127.0.0.1"),
    ] {
        assert_eq!(auth.header_all(name), [want], "{name} on the callout: {auth:?}");
    }
    for name in ["x-forwarded-port", "x-forwarded-prefix", "x-real-ip"] {
        assert!(auth.header_all(name).is_empty(), "forged {name} reached the auth service: {auth:?}");
    }
    assert_eq!(auth.method, "GET", "the callout is a GET whatever the client's method: {auth:?}");
    assert!(auth.body.is_empty(), "{auth:?}");
}

#[test]
fn trusted_forwarding_headers_pass_and_x_forwarded_for_is_extended() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "trust_forward_header": true,
                      "request_headers": ["authorization", "x-forwarded-prefix"]}}"#,
    );
    let resp = env.send(&spoofed(RawRequest::get("/api/flows").bearer("allow:bob")));
    env.assert_allowed_as("trusted proxy in front", &resp, "bob");
    let auth = env.auth.last();
    for (name, want) in [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "evil.example.com"),
        ("x-forwarded-uri", "/api/health"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        // envoy/envoy.yaml is an edge (use_remote_address): Envoy itself has already
        // replaced X-Forwarded-Proto; trust passes on what Envoy hands over.
        ("x-forwarded-proto", "http"),
    ] {
        assert_eq!(auth.header_all(name), [want], "{name} on the callout: {auth:?}");
    }
    let xff = auth.header("x-forwarded-for").unwrap_or_default();
    assert!(xff.starts_with("6.6.6.6,") && xff.ends_with(", 127.0.0.1"), "the client's chain + the peer: {auth:?}");
    assert!(auth.header_all("x-real-ip").is_empty(), "x-real-ip is not listed: {auth:?}");
}

#[test]
fn forward_auth_off_sends_only_the_listed_headers() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "forward_auth": false}}"#);
    let resp = env.send(&spoofed(RawRequest::get("/api/flows").bearer("allow:carol")));
    env.assert_allowed_as("forward_auth off", &resp, "carol");
    let auth = env.auth.last();
    let forwarded: Vec<&str> = auth.header_names().into_iter().filter(|n| n.starts_with("x-forwarded-")).collect();
    assert!(forwarded.is_empty(), "forward_auth off still sent {forwarded:?}: {auth:?}");
}

#[test]
fn forwarding_header_without_trust_is_a_config_error() {
    let failure = Env::builder()
        .plugin_config(r#"{"auth": {"cluster": "auth", "request_headers": ["x-real-ip"]}}"#)
        .start_expect_failure();
    assert!(
        failure.log.contains("auth.request_headers[0]: \"x-real-ip\" is a forwarding header the client could forge"),
        "expected the config error in the log:\n{failure:?}"
    );
}
