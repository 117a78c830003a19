//! 13. HTTP/2 over TLS: the listener with a downstream TLS transport socket (a CA and a
//!     `localhost` certificate made for this run), ALPN `h2`. The behaviour suites run
//!     over h2c through `over_h1_and_h2!`; this checks the TLS path end to end.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{Env, NEBULA_HEADERS};

#[test]
fn tls_with_alpn_h2_allows_denies_strips_and_serves_public_paths() {
    let env = Env::builder().tls().start();

    let resp = env.send(&RawRequest::get("/api/flows?x=1").bearer("allow:alice").header("x-nebula-actor-id", "evil"));
    env.assert_allowed_as("TLS h2 allow", &resp, "alice");
    let call = env.auth.last();
    assert_eq!(call.header_all("x-forwarded-proto"), ["https"], "the callout names the TLS scheme: {call:?}");
    assert_eq!(call.header_all("x-forwarded-uri"), ["/api/flows?x=1"], "{call:?}");

    env.assert_denied("TLS h2 deny", &env.get_as("/api/flows", "deny"), 1);

    let resp = env.send(&RawRequest::get("/api/health").header("x-nebula-actor-id", "evil"));
    env.check(resp.status == 200 && resp.proxied(), "TLS h2 public path", &resp);
    let up = env.upstream.last();
    for name in NEBULA_HEADERS {
        assert!(up.header_all(name).is_empty(), "public path over TLS: {name} reached the upstream: {up:?}");
    }
    assert_eq!(env.auth.count(), 2, "the public path must not call the auth service");

    let body = vec![7u8; 100_000];
    let up = env.assert_allowed_as("TLS h2 POST", &env.post_as("/api/flows", "allow:bob", &body), "bob");
    assert_eq!(up.body, body, "the POST body changed on the way");

    // Envoy really spoke HTTP/2 over TLS on those connections.
    let h2 = env.stat("http.ingress.downstream_cx_http2_total").unwrap_or(0);
    let tls =
        env.stat("listener.127.0.0.1_0.ssl.handshake").or_else(|| env.stat("http.ingress.downstream_cx_ssl_total"));
    assert!(h2 >= 4, "expected 4 HTTP/2 connections, Envoy counted {h2}");
    assert!(tls.unwrap_or(0) >= 4, "expected 4 TLS connections, Envoy counted {tls:?}");
}
