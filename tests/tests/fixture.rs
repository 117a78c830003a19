//! The harness itself, through Envoy WITHOUT the filter: if these fail, the fixture,
//! mocks or client are broken, not the filter.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::upstream::STREAM_BODY;
use nebula_authz_tests::{websocket_echo, Env};

#[test]
fn envoy_without_the_filter_proxies_bodies_streams_and_websockets() {
    let env = Env::builder().without_wasm().start();

    let resp = env.get("/api/flows?x=1", &[("x-custom", "c")]);
    env.check(resp.status == 200 && resp.proxied(), "plain GET", &resp);
    let echo = resp.json();
    assert_eq!(echo["path"], "/api/flows?x=1");
    assert_eq!(echo["headers"]["x-custom"][0], "c");
    assert_eq!(env.upstream.last().path, "/api/flows?x=1");

    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let resp = env.send(&RawRequest::post("/api/post", body.clone()));
    env.check(resp.status == 200, "POST", &resp);
    assert_eq!(env.upstream.last().body, body);

    let chunks = vec![b"hello ".to_vec(), b"chunked ".to_vec(), b"world".to_vec()];
    let resp = env.send(&RawRequest::new("POST", "/api/chunked").chunked(chunks));
    env.check(resp.status == 200, "chunked POST", &resp);
    assert_eq!(env.upstream.last().body, b"hello chunked world");

    let resp = env.get("/api/stream", &[]);
    env.check(resp.text() == STREAM_BODY, "streamed body", &resp);

    let ws = websocket_echo(env.port, "/api/ws", &[], b"ping-pong").expect("websocket");
    env.check(ws.response.status == 101, "websocket upgrade", &ws.response);
    assert_eq!(ws.echoed, b"ping-pong");

    // The mock auth service is reachable and scriptable (without Envoy).
    let resp = RawRequest::get("/").bearer("allow:alice").send(env.auth.port());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-nebula-actor-id").as_deref(), Some("alice"));
    let resp = RawRequest::get("/").bearer("redirect").send(env.auth.port());
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header_all("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(env.auth.count(), 2);
}
