//! 6. Bodies are held while the callout is pending and arrive intact after an allow;
//!    chunked bodies, streamed responses and WebSocket upgrades work.

use std::time::Duration;

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::upstream::STREAM_BODY;
use nebula_authz_tests::{over_h1_and_h2, websocket_echo, Env, Proto};

over_h1_and_h2!(request_bodies_and_streamed_responses);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Over h2 a "chunked" body is one DATA frame per chunk (Envoy re-frames it upstream).
fn request_bodies_and_streamed_responses(proto: Proto) {
    let env = Env::start_default_over(proto);

    let body = pattern(256 * 1024);
    let resp = env.post_as("/api/flows", "allow:alice", &body);
    let up = env.assert_allowed_as("POST 256 KiB", &resp, "alice");
    env.check(up.method == "POST" && up.body == body, "POST 256 KiB: body changed on the way", &resp);

    let chunks: Vec<Vec<u8>> = vec![pattern(10), pattern(70_000), b"tail".to_vec()];
    let whole = chunks.concat();
    let resp = env.send(&RawRequest::new("PUT", "/api/flows/1").bearer("allow:alice").chunked(chunks));
    let up = env.assert_allowed_as("chunked PUT", &resp, "alice");
    env.check(up.method == "PUT" && up.body == whole, "chunked PUT: body changed on the way", &resp);

    // Body held while a slow allow is pending.
    let body = pattern(64 * 1024);
    let resp = env.post_as("/api/flows", "slow:300", &body);
    let up = env.assert_allowed_as("POST with a slow allow", &resp, "slow");
    env.check(up.body == body, "POST with a slow allow: body changed", &resp);

    // Denied after a delay: the body never reaches the upstream.
    let before = env.upstream.count();
    let resp = env.post_as("/api/flows", "slow:500:deny", &pattern(64 * 1024));
    env.assert_denied("POST with a slow deny", &resp, before);
    let resp = env.send(
        &RawRequest::new("POST", "/api/flows").bearer("slow:500:deny").chunked(vec![pattern(1000), pattern(2000)]),
    );
    env.assert_denied("chunked POST with a slow deny", &resp, before);

    // Public POST: no callout, body intact.
    let auth_before = env.auth.count();
    let body = pattern(10_000);
    let resp = env.send(&RawRequest::post("/hooks/my-webhook-slug", body.clone()));
    env.check(resp.status == 200 && resp.proxied(), "public POST /hooks/...", &resp);
    env.check(env.upstream.last().body == body, "public POST: body changed", &resp);
    env.check(env.auth.count() == auth_before, "public POST: no callout", &resp);

    // Streamed response (3 chunks, 100 ms apart) after an allow.
    let resp = env.get_as("/api/stream", "allow:alice");
    env.check(resp.status == 200, "stream: 200", &resp);
    env.check(resp.text() == STREAM_BODY, "stream: the whole body", &resp);
    env.check(resp.elapsed >= Duration::from_millis(180), "stream: chunks should take ~200 ms", &resp);
    env.check(
        resp.elapsed - resp.first_byte >= Duration::from_millis(150),
        "stream: the response should be passed on as it comes, not buffered",
        &resp,
    );
}

#[test]
fn websocket_upgrades() {
    let env = Env::start_default();

    let public = "/api/accounts/A/workspaces/W/events/out";
    let ws = websocket_echo(env.port, public, &[], b"hello public socket").expect("public websocket");
    env.check(ws.response.status == 101, "public events/out: 101", &ws.response);
    assert_eq!(ws.echoed, b"hello public socket", "public events/out: echo");
    assert_eq!(env.auth.count(), 0, "public events/out must not call the auth service");

    let auth = [("authorization", "Bearer allow:alice")];
    let ws = websocket_echo(env.port, "/api/ws", &auth, b"hello protected socket").expect("protected websocket");
    env.check(ws.response.status == 101, "protected /api/ws with allow: 101", &ws.response);
    assert_eq!(ws.echoed, b"hello protected socket", "protected /api/ws: echo");
    let up = env.upstream.last();
    assert_eq!(up.header_all("x-nebula-actor-id"), ["alice"], "websocket upgrade upstream headers: {up:?}");
    assert_eq!(env.auth.count(), 1);

    let before = env.upstream.count();
    let deny = [("authorization", "Bearer deny")];
    let ws = websocket_echo(env.port, "/api/ws", &deny, b"x").expect("denied websocket");
    env.assert_denied("denied websocket upgrade", &ws.response, before);
    assert!(ws.echoed.is_empty());
}
