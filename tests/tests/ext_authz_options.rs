//! The `auth` options of Envoy ext_authz's contract that Istio does not render (so the
//! differential test, tests/tests/ext_authz_diff.rs, does not reach them), under Envoy:
//! `path_override`, `upstream_headers_to_append`, and `client_headers_on_success` and
//! `x-envoy-auth-headers-to-remove` with either protocol.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::Env;

#[test]
fn path_override_and_headers_to_add_shape_the_callout() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "path_override": "/verify",
            "request_headers": ["x-tenant"], "headers_to_add": {"x-check": "yes"}}}"#,
    );
    let resp = env.send(
        &RawRequest::new("PUT", "/api/flows/1?q=1")
            .bearer("allow:alice")
            .header("host", "api.example.com")
            .header("x-tenant", "t1")
            .header("x-check", "client")
            .header("cookie", "s=1")
            .body(b"{}".to_vec()),
    );
    env.assert_allowed_as("path_override", &resp, "alice");
    let call = env.auth.last();
    assert_eq!((call.method.as_str(), call.path.as_str()), ("PUT", "/verify"), "method kept, path fixed");
    assert_eq!(call.header("host").as_deref(), Some("api.example.com"), "the client's authority");
    assert_eq!(call.header_all("x-check"), ["yes"], "headers_to_add replaces the client's value");
    assert_eq!(call.header("x-tenant").as_deref(), Some("t1"));
    assert_eq!(call.header("content-length").as_deref(), Some("0"), "no body, as ext_authz without with_request_body");
    assert!(call.header("cookie").is_none() && call.header("x-forwarded-uri").is_none(), "{:?}", call.headers);
    assert_eq!(env.upstream.last().body, b"{}", "the upstream still gets the body");
}

#[test]
fn upstream_headers_to_append_keep_the_clients_values() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "upstream_headers_to_append": ["x-trace"]}}"#,
    );
    let resp =
        env.send(&RawRequest::get("/api/flows").bearer("h:x-trace=from-auth:allow:alice").header("x-trace", "c"));
    env.assert_allowed_as("append", &resp, "alice");
    assert_eq!(env.upstream.last().header_all("x-trace"), ["c", "from-auth"], "appended after the client's value");
}

#[test]
fn headers_on_success_and_headers_to_remove_by_protocol() {
    let script = "h:x-envoy-auth-headers-to-remove=x-drop:h:x-auth-user=alice:allow:alice";
    for (protocol, removed) in [("ext_authz", true), ("forward_auth", false)] {
        let env = Env::start(&format!(
            r#"{{"auth": {{"cluster": "auth", "protocol": "{protocol}", "client_headers_on_success": ["x-auth-*"]}}}}"#
        ));
        let resp = env.send(&RawRequest::get("/api/flows").bearer(script).header("x-drop", "1"));
        let up = env.assert_allowed_as(protocol, &resp, "alice");
        assert_eq!(resp.header_all("x-auth-user"), ["alice"], "{protocol}: client_headers_on_success");
        assert_eq!(up.header("x-drop").is_none(), removed, "{protocol}: x-envoy-auth-headers-to-remove");
        assert!(up.header("x-envoy-auth-headers-to-remove").is_none(), "{protocol}: never upstream");
        // On deny, client_headers decide: ext_authz's default is every header, forward_auth's a list.
        let resp = env.send(&RawRequest::get("/api/flows").bearer("h:x-auth-user=alice:deny"));
        assert_eq!(resp.status, 401);
        assert_eq!(resp.header("x-auth-user").is_some(), removed, "{protocol}: deny headers {resp:?}");
    }
}
