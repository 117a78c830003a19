//! The Traefik forwardAuth request contract: X-Forwarded-* on the callout, generated from
//! what Envoy received unless `trust_forward_header`, and never doubled; with trust,
//! what Envoy at the edge hands over (its own X-Forwarded-Proto, its X-Forwarded-For).
//! `forward_auth: false` and the configuration error for a forgeable listed header are
//! asserted natively (filter/src/flow/tests/requests.rs, filter/src/plugin_config.rs).

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
