//! The `auth` options of Envoy ext_authz's contract that Istio does not render (so the
//! differential test, tests/tests/ext_authz_diff.rs, does not reach them), under Envoy:
//! `path_override`, `upstream_headers_to_append`, and `client_headers_on_success` and
//! `x-envoy-auth-headers-to-remove` with either protocol; and the exact values the
//! command operators of `headers_to_add` print (the differential test compares them
//! with Envoy's own, masking the ports and times that differ run to run), over HTTP/1.1
//! and HTTP/2.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::envoy::host_name;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto};

over_h1_and_h2!(headers_to_add_print_envoys_command_operators);

fn headers_to_add_print_envoys_command_operators(proto: Proto) {
    let env = Env::start_over(
        proto,
        r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "request_headers": ["x-tenant"],
            "headers_to_add": {"x-client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                               "x-client-port": "%DOWNSTREAM_REMOTE_ADDRESS%",
                               "x-local": "%DOWNSTREAM_LOCAL_ADDRESS%", "x-proto": "%PROTOCOL%",
                               "x-host": "on %HOSTNAME%",
                               "x-start": "%START_TIME(%s)%", "x-tenant": "%REQ(x-absent)%",
                               "x-who": "user=%REQ(x-nebula-actor-id?x-user):4% (100%%)"}}}"#,
    );
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("x-tenant", "t1")
            .header("x-user", "alice@example.com")
            .header("x-nebula-actor-id", "evil"),
    );
    env.assert_allowed_as("operators", &resp, "alice");
    let call = env.auth.last();
    let sent: Vec<String> = call.headers.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect();
    let proto_text = match proto {
        Proto::H1 => "HTTP/1.1",
        Proto::H2 => "HTTP/2",
    };
    assert_eq!(call.header("x-client").as_deref(), Some("127.0.0.1"), "{sent:#?}");
    let client = call.header("x-client-port").unwrap_or_default();
    let port = client.strip_prefix("127.0.0.1:").and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p != 0), "the client's address and port: {client:?}");
    assert_eq!(call.header("x-local"), Some(format!("127.0.0.1:{}", env.port)), "the listener's address");
    assert_eq!(call.header("x-proto").as_deref(), Some(proto_text));
    assert_eq!(call.header("x-host"), Some(format!("on {}", host_name())), "the VM's HOSTNAME, read at load");
    let start: u64 = call.header("x-start").and_then(|s| s.parse().ok()).expect("%START_TIME(%s)% prints seconds");
    assert!(start.abs_diff(started) < 60, "the request's start {start}, sent at {started}");
    // Printed empty: neither added nor replacing the client's copy; a stripped identity
    // reads as absent (the fallback), and :4 keeps four bytes.
    assert_eq!(call.header_all("x-tenant"), ["t1"], "an empty value replaces nothing");
    assert_eq!(call.header_all("x-who"), ["user=alic (100%)"]);
    assert!(
        !call.headers.iter().any(|(_, v)| v.contains(&b'%') && !v.ends_with(b"(100%)")),
        "an operator's text reached the auth service: {sent:#?}"
    );
    // Without the headers %REQ% reads: an absent value prints nothing.
    env.assert_allowed_as("no x-user", &env.send(&RawRequest::get("/api/flows").bearer("allow:alice")), "alice");
    let call = env.auth.last();
    assert_eq!(call.header_all("x-who"), ["user= (100%)"]);
    assert!(call.header("x-tenant").is_none(), "{:?}", call.headers);
}

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
