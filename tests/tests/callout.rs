//! 3. What the filter sends to the auth service: method, path, authority, and only the
//!    configured request headers, with all their values, byte for byte.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{over_h1_and_h2, AuthRequest, Env, Proto};

over_h1_and_h2!(callout_carries_only_the_configured_headers, callout_honours_path_authority_timeout_and_header_list);

/// Headers Envoy's async client adds on its own.
fn added_by_envoy(name: &str) -> bool {
    matches!(name, "host" | "content-length" | "x-request-id") || name.starts_with("x-envoy-")
}

/// Headers outside `configured` that the auth service received.
fn unexpected_headers<'a>(req: &'a AuthRequest, configured: &[&str]) -> Vec<&'a str> {
    req.header_names().into_iter().filter(|n| !configured.contains(n) && !added_by_envoy(n)).collect()
}

/// All values of `name`, joined with "," (Envoy may fold repeated headers into one line).
fn joined(req: &AuthRequest, name: &str) -> String {
    req.header_all(name).join(",")
}

const DEFAULT_REQUEST_HEADERS: [&str; 8] = [
    "authorization",
    "origin",
    "access-control-request-method",
    // forward_auth (on by default); their values are checked in forward_auth.rs.
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-for",
];

fn callout_carries_only_the_configured_headers(proto: Proto) {
    let env = Env::start_default_over(proto);

    let resp = env.send(
        &RawRequest::get("/api/flows?limit=5")
            .header("Authorization", "Bearer allow:alice")
            .header("Origin", "https://a.example.com")
            .header("origin", "https://b.example.com")
            .header("Access-Control-Request-Method", "PATCH")
            .header("Cookie", "session=abc")
            .header("X-Custom", "custom")
            .header("User-Agent", "raw-client/1")
            .header("X-Nebula-Actor-Id", "evil")
            .header("x-nebula-actor-permissions", "admin"),
    );
    env.assert_allowed_as("allowed GET", &resp, "alice");
    let req = env.auth.last();
    assert_eq!(req.method, "GET", "callout method: {req:?}");
    assert_eq!(req.path, "/", "callout path (auth.path defaults to /): {req:?}");
    assert_eq!(req.header_all("host"), ["auth:4300"], "callout authority from envoy.yaml: {req:?}");
    assert_eq!(req.header_all("authorization"), ["Bearer allow:alice"], "{req:?}");
    assert_eq!(joined(&req, "origin"), "https://a.example.com,https://b.example.com", "both origins: {req:?}");
    assert_eq!(req.header_all("access-control-request-method"), ["PATCH"], "{req:?}");
    assert_eq!(req.header_all("x-forwarded-uri"), ["/api/flows?limit=5"], "{req:?}");
    assert_eq!(
        req.header_all("x-envoy-expected-rq-timeout-ms"),
        ["5000"],
        "the callout timeout should default to 5000 ms: {req:?}"
    );
    assert!(req.body.is_empty(), "the callout has no body: {req:?}");
    let extra = unexpected_headers(&req, &DEFAULT_REQUEST_HEADERS);
    assert!(extra.is_empty(), "the callout carried unconfigured headers {extra:?}: {req:?}");

    // CORS preflight: no authorization; origin and method go to the auth service.
    let before = env.upstream.count();
    let resp = env.send(
        &RawRequest::new("OPTIONS", "/api/flows")
            .header("Origin", "https://app.example.com")
            .header("Access-Control-Request-Method", "PUT")
            .header("Access-Control-Request-Headers", "authorization, content-type"),
    );
    env.assert_denied("CORS preflight without credentials", &resp, before);
    let req = env.auth.last();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/"), "preflight callout: {req:?}");
    assert_eq!(req.header_all("origin"), ["https://app.example.com"], "{req:?}");
    assert_eq!(req.header_all("access-control-request-method"), ["PUT"], "{req:?}");
    assert!(req.header_all("authorization").is_empty(), "{req:?}");
    let extra = unexpected_headers(&req, &DEFAULT_REQUEST_HEADERS);
    assert!(extra.is_empty(), "the preflight callout carried unconfigured headers {extra:?}: {req:?}");
    assert_eq!(env.auth.count(), 2);
}

fn callout_honours_path_authority_timeout_and_header_list(proto: Proto) {
    let env = Env::start_over(
        proto,
        r#"{"auth": {"cluster": "auth", "authority": "authz.internal:9000", "path": "/check",
                      "timeout_ms": 1234, "request_headers": ["authorization", "x-custom"]}}"#,
    );
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:bob")
            .header("X-Custom", "one")
            .header("x-custom", "two")
            .header("Origin", "https://app.example.com")
            .header("Cookie", "session=abc"),
    );
    env.assert_allowed_as("allowed with custom callout", &resp, "bob");
    let req = env.auth.last();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/check"), "{req:?}");
    assert_eq!(req.header_all("host"), ["authz.internal:9000"], "{req:?}");
    assert_eq!(req.header_all("x-envoy-expected-rq-timeout-ms"), ["1234"], "{req:?}");
    assert_eq!(req.header_all("authorization"), ["Bearer allow:bob"], "{req:?}");
    assert_eq!(joined(&req, "x-custom"), "one,two", "both x-custom values: {req:?}");
    let extra = unexpected_headers(
        &req,
        &[
            "authorization",
            "x-custom",
            "x-forwarded-method",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-uri",
            "x-forwarded-for",
        ],
    );
    assert!(extra.is_empty(), "the callout carried unconfigured headers {extra:?}: {req:?}");
}
