//! `auth.with_request_body` under Envoy 1.40 (ext_authz `with_request_body`): the body
//! reaches the auth service byte-exact, 413 over the limit, `allow_partial_message`, a
//! client sending its body in pieces, requests without a body unchanged, identity headers
//! still injected after a body callout, the body sent again with a retried callout, and
//! the guard for an Envoy without `allow_on_headers_stop_iteration`. Then
//! `auth.forward_body` (Traefik `forwardBody` + `maxBodySize`) in the forward-auth shape;
//! tests/tests/traefik_diff.rs compares it with the real Traefik. That body requests
//! bypass the decision cache, and that the guard is off once the worker has seen a body,
//! are asserted natively (filter/src/flow/tests/cache_flow.rs, interleavings.rs).

use std::time::Duration;

use nebula_authz_tests::client::{send_in_parts, RawRequest};
use nebula_authz_tests::Env;

/// A denial after a body callout: the auth service's answer, nothing upstream.
fn assert_denied_after_a_body_callout(env: &Env) {
    let before = env.upstream.count();
    let resp = env.send(&RawRequest::post("/api/flows", b"secret".to_vec()).bearer("deny"));
    env.check(resp.status == 401 && resp.text().contains("unauthorized"), "body deny: the auth service's 401", &resp);
    assert_eq!(env.upstream.count(), before, "a denied body request never reaches the upstream");
    assert_eq!(env.auth.last().body, b"secret");
}

const CONFIG: &str = r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "timeout_ms": 2000,
    "with_request_body": {"max_request_bytes": 64}}}"#;
const PARTIAL: &str = r#"{"auth": {"cluster": "auth", "protocol": "ext_authz",
    "with_request_body": {"max_request_bytes": 16, "allow_partial_message": true, "pack_as_bytes": true}}}"#;

/// The scenarios of one configuration share its Envoy (each counts from where the one
/// before left off).
#[test]
fn with_request_body() {
    let env = Env::start(CONFIG);
    the_body_reaches_the_auth_service_and_the_upstream_byte_exact(&env);
    over_the_limit_is_413_and_no_callout(&env);
    a_slow_client_sending_its_body_in_pieces(&env);
    the_filters_retry_of_a_reset_callout_carries_the_body_again(&env);
}

fn the_body_reaches_the_auth_service_and_the_upstream_byte_exact(env: &Env) {
    let body: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(37)).collect();
    let resp = env.send(&RawRequest::post("/api/flows", body.clone()).bearer("allow:alice"));
    let up = env.assert_allowed_as("body", &resp, "alice");
    let call = env.auth.last();
    assert_eq!(call.body, body, "the auth service gets the body byte for byte");
    assert_eq!(call.header("content-length").as_deref(), Some("64"));
    assert_eq!(call.header("x-envoy-auth-partial-body").as_deref(), Some("false"), "as ext_authz: complete");
    assert_eq!(up.body, body, "the upstream still gets the body unchanged");

    // Without a body: the callout is as before (content-length 0, no partial header).
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:bob"));
    env.assert_allowed_as("no body", &resp, "bob");
    let call = env.auth.last();
    assert_eq!(call.header("content-length").as_deref(), Some("0"));
    assert!(call.header("x-envoy-auth-partial-body").is_none(), "{:?}", call.headers);

    assert_denied_after_a_body_callout(env);
}

fn over_the_limit_is_413_and_no_callout(env: &Env) {
    let upstream = env.upstream.count();
    for (case, req) in [
        ("content-length", RawRequest::post("/api/flows", vec![b'c'; 65]).bearer("allow:alice")),
        ("chunked", RawRequest::new("POST", "/api/flows").chunked(vec![vec![b'x'; 40], vec![b'y'; 40]])),
    ] {
        let before = env.auth.count();
        let resp = env.send(&req.bearer("allow:alice"));
        env.check(resp.status == 413 && !resp.proxied(), &format!("{case}: expected Envoy's 413"), &resp);
        assert_eq!(resp.text(), "Payload Too Large", "{case}");
        assert_eq!(env.auth.count(), before, "{case}: no callout for a body over the limit");
    }
    assert_eq!(env.upstream.count(), upstream);
}

#[test]
fn allow_partial_message_sends_the_first_max_bytes() {
    let env = Env::start(PARTIAL);
    let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let resp = env.send(&RawRequest::post("/api/flows", body.clone()).bearer("allow:alice"));
    let up = env.assert_allowed_as("partial", &resp, "alice");
    let call = env.auth.last();
    assert_eq!(call.body, body[..16], "the first max_request_bytes");
    assert_eq!(call.header("content-length").as_deref(), Some("16"));
    assert_eq!(call.header("x-envoy-auth-partial-body").as_deref(), Some("true"));
    assert_eq!(up.body.len(), body.len(), "the upstream gets the whole body");
    assert!(up.body == body, "the upstream's body is unchanged");

    let resp = env.send(&RawRequest::post("/api/flows", b"0123456789abcdef".to_vec()).bearer("allow:bob"));
    env.assert_allowed_as("exactly max", &resp, "bob");
    assert_eq!(env.auth.last().header("x-envoy-auth-partial-body").as_deref(), Some("false"));
}

fn a_slow_client_sending_its_body_in_pieces(env: &Env) {
    let before = env.auth.count();
    let head = "POST /api/flows HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer allow:alice\r\n\
                content-length: 30\r\nconnection: close\r\n\r\n";
    let parts: [&[u8]; 4] = [head.as_bytes(), b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"];
    let resp = send_in_parts(env.port, &parts, Duration::from_millis(300)).expect("send in parts");
    let up = env.assert_allowed_as("slow body", &resp, "alice");
    assert_eq!(env.auth.count(), before + 1, "one callout, after the whole body");
    assert_eq!(env.auth.last().body, b"0123456789abcdefghijABCDEFGHIJ");
    assert_eq!(up.body, b"0123456789abcdefghijABCDEFGHIJ");
}

#[test]
fn without_allow_on_headers_stop_iteration_a_body_request_fails_closed() {
    let env = Env::builder().plugin_config(CONFIG).without_body_stop_iteration().start();
    let resp = env.send(&RawRequest::post("/api/flows", b"{}".to_vec()).bearer("allow:alice"));
    env.check(resp.status == 500 && !resp.proxied(), "expected the guard's 500", &resp);
    assert_eq!(env.auth.count(), 0);
    assert_eq!(env.upstream.count(), 0);
    assert!(env.log().contains("allow_on_headers_stop_iteration"), "the log names the setting");
    // Requests without a body are unaffected.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice"));
    env.assert_allowed_as("no body", &resp, "alice");
}

fn the_filters_retry_of_a_reset_callout_carries_the_body_again(env: &Env) {
    // Reset twice: Envoy's own retry, then the filter's, which rebuilds the callout.
    let token = "seq:close|close|allow:carol";
    let resp = env.send(&RawRequest::post("/api/flows", b"retry me".to_vec()).bearer(token));
    env.assert_allowed_as("retried with body", &resp, "carol");
    let want = format!("Bearer {token}");
    let calls: Vec<_> = env
        .auth
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization").as_deref() == Some(want.as_str()))
        .collect();
    assert_eq!(calls.len(), 3, "the callout, Envoy's retry, the filter's retry");
    for call in &calls {
        assert_eq!(call.body, b"retry me", "every attempt carries the body");
        assert_eq!(call.header("x-envoy-auth-partial-body").as_deref(), Some("false"));
    }
    assert_eq!(env.upstream.last().body, b"retry me");
}

const FORWARD: &str = r#"{"auth": {"cluster": "auth", "timeout_ms": 2000, "forward_body": true, "max_body_size": 64}}"#;

#[test]
fn forward_body() {
    let env = Env::start(FORWARD);
    forward_body_sends_the_body_with_the_forward_auth_get(&env);
    forward_body_over_max_body_size_is_an_empty_401_and_no_callout(&env);
}

fn forward_body_sends_the_body_with_the_forward_auth_get(env: &Env) {
    let body: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(41)).collect();
    let resp = env.send(&RawRequest::post("/api/flows?x=1", body.clone()).bearer("allow:alice"));
    let up = env.assert_allowed_as("forward body", &resp, "alice");
    let call = env.auth.last();
    assert_eq!(call.method, "GET", "Traefik's GET, whatever the client's method");
    assert_eq!(call.body, body, "the auth service gets the body byte for byte");
    assert_eq!(call.header("content-length").as_deref(), Some("64"));
    assert_eq!(call.header("x-forwarded-method").as_deref(), Some("POST"));
    assert_eq!(call.header("x-forwarded-uri").as_deref(), Some("/api/flows?x=1"));
    assert!(call.header("x-envoy-auth-partial-body").is_none(), "not ext_authz's header: {:?}", call.headers);
    assert_eq!(up.body, body, "the upstream still gets the body unchanged");

    // Chunked, in pieces: the whole body, once.
    let before = env.auth.count();
    let req = RawRequest::post("/api/flows", Vec::new()).chunked(vec![b"0123".to_vec(), b"4567".to_vec()]);
    let up = env.assert_allowed_as("chunked", &env.send(&req.bearer("allow:bob")), "bob");
    assert_eq!(env.auth.count(), before + 1);
    assert_eq!(env.auth.last().body, b"01234567");
    assert_eq!(up.body, b"01234567");

    // Without a body: the callout carries none, as before.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:carol"));
    env.assert_allowed_as("no body", &resp, "carol");
    let call = env.auth.last();
    assert!(call.body.is_empty());
    assert!(call.header("x-envoy-auth-partial-body").is_none());

    assert_denied_after_a_body_callout(env);
}

fn forward_body_over_max_body_size_is_an_empty_401_and_no_callout(env: &Env) {
    let upstream = env.upstream.count();
    for (case, req) in [
        ("content-length", RawRequest::post("/api/flows", vec![b'c'; 65])),
        ("chunked", RawRequest::new("POST", "/api/flows").chunked(vec![vec![b'x'; 40], vec![b'y'; 40]])),
    ] {
        let before = env.auth.count();
        let resp = env.send(&req.bearer("allow:alice"));
        env.check(resp.status == 401 && !resp.proxied(), &format!("{case}: expected Traefik's 401"), &resp);
        assert!(resp.body.is_empty(), "{case}: an empty 401, as Traefik's");
        assert!(resp.header("content-type").is_none(), "{case}: {:?}", resp.headers);
        assert_eq!(env.auth.count(), before, "{case}: no callout for a body over the limit");
    }
    assert_eq!(env.upstream.count(), upstream);
}
