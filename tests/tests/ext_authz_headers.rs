//! Header handling of `protocol: ext_authz` against Envoy 1.40's own ext_authz, one
//! provider setup each (tests/src/ext_authz_pair.rs): what the auth service gets, what
//! the upstream gets. Each assertion is made of both proxies, so it records what
//! ext_authz really does and proves the filter does the same.

use nebula_authz_tests::client::{RawRequest, RecordedRequest, Response};
use nebula_authz_tests::ext_authz_pair::{start_provider, Pair};
use nebula_authz_tests::Env;

/// What one proxy did with `req`: the client's response, the callout (if any) and the
/// upstream request (if any).
struct Seen {
    side: &'static str,
    resp: Response,
    auth: Option<RecordedRequest>,
    upstream: Option<RecordedRequest>,
}

impl Seen {
    fn auth(&self) -> &RecordedRequest {
        self.auth.as_ref().unwrap_or_else(|| panic!("{}: no callout: {:?}", self.side, self.resp))
    }

    fn upstream(&self) -> &RecordedRequest {
        self.upstream.as_ref().unwrap_or_else(|| panic!("{}: the upstream was not reached: {:?}", self.side, self.resp))
    }
}

fn send(side: &'static str, env: &Env, req: &RawRequest) -> Seen {
    let (auth_before, up_before) = (env.auth.count(), env.upstream.count());
    let resp = env.send(req);
    let auth = env.auth.requests().into_iter().nth(auth_before);
    let upstream = env.upstream.requests().into_iter().nth(up_before);
    Seen { side, resp, auth, upstream }
}

/// `req` through ext_authz, then through the filter.
fn both(pair: &Pair, req: &RawRequest) -> [Seen; 2] {
    [send("ext_authz", &pair.ext_authz, req), send("filter", &pair.filter, req)]
}

/// Token exchange: the auth service swaps the client's token for an internal one. The
/// client's `authorization` must reach the auth service although `headersToUpstreamOnAllow`
/// lists it (ext_authz always sends it), and the upstream gets the auth service's value;
/// on a public path the client's token goes through untouched.
#[test]
fn token_exchange_sends_the_clients_authorization_and_replaces_it_upstream() {
    let pair = start_provider(&[
        "includeRequestHeadersInCheck: [x-tenant-id]",
        "headersToUpstreamOnAllow: [authorization, x-nebula-*]",
    ]);
    let token = "h:authorization=Bearer internal-7:allow:alice";
    let req = RawRequest::get("/api/flows").bearer(token).header("x-tenant-id", "t1");
    for seen in both(&pair, &req) {
        let side = seen.side;
        assert_eq!(seen.resp.status, 200, "{side}: allowed: {:?}", seen.resp);
        let call = seen.auth();
        assert_eq!(call.header_all("authorization"), [format!("Bearer {token}")], "{side}: the client's token");
        assert_eq!(call.header_all("x-tenant-id"), ["t1"], "{side}");
        let up = seen.upstream();
        assert_eq!(up.header_all("authorization"), ["Bearer internal-7"], "{side}: the auth service's token");
        assert_eq!(up.header_all("x-nebula-actor-id"), ["alice"], "{side}");
    }
    let public = RawRequest::get("/api/health").bearer("user-token");
    for seen in both(&pair, &public) {
        assert!(seen.auth.is_none(), "{}: a public path is not checked", seen.side);
        assert_eq!(seen.upstream().header_all("authorization"), ["Bearer user-token"], "{}: untouched", seen.side);
    }
}

/// A pattern in `headersToUpstreamOnAllow` replaces what the auth service sets and
/// nothing else: `*-id` must not remove Envoy's `x-request-id` (tracing, request logs)
/// or the client's `x-tenant-id`, on protected and public paths alike.
#[test]
fn upstream_patterns_replace_only_what_the_auth_service_sets() {
    let pair = start_provider(&["headersToUpstreamOnAllow: [\"*-id\", content-type]"]);
    let protected = RawRequest::post("/api/flows", b"{}".to_vec())
        .bearer("allow:alice")
        .header("x-tenant-id", "t1")
        .header("content-type", "application/json");
    for seen in both(&pair, &protected) {
        let (side, up) = (seen.side, seen.upstream());
        assert_eq!(seen.resp.status, 200, "{side}: {:?}", seen.resp);
        assert_eq!(up.header_all("x-request-id").len(), 1, "{side}: Envoy's x-request-id stays: {:?}", up.headers);
        assert_eq!(up.header_all("x-tenant-id"), ["t1"], "{side}: not set by the auth service: kept");
        assert_eq!(up.header_all("x-nebula-actor-id"), ["alice"], "{side}: set by the auth service");
        assert_eq!(up.header_all("content-type"), ["text/plain"], "{side}: the auth service's value replaces");
    }
    let public = RawRequest::get("/api/health").header("x-tenant-id", "t1");
    for seen in both(&pair, &public) {
        let (side, up) = (seen.side, seen.upstream());
        assert_eq!(up.header_all("x-request-id").len(), 1, "{side}: public path: {:?}", up.headers);
        assert_eq!(up.header_all("x-tenant-id"), ["t1"], "{side}: public path");
    }
}

/// Repeated request headers reach the auth service as ext_authz sends them: one line,
/// the values joined in their order.
#[test]
fn repeated_request_headers_reach_the_auth_service_joined() {
    let pair = start_provider(&["includeRequestHeadersInCheck: [cookie, x-tenant-id]"]);
    let req = RawRequest::get("/api/flows")
        .bearer("allow:alice")
        .header("cookie", "a=1")
        .header("x-tenant-id", "a")
        .header("cookie", "b=2")
        .header("x-tenant-id", "b");
    for seen in both(&pair, &req) {
        let (side, call) = (seen.side, seen.auth());
        // A comma, not the "; " of RFC 6265 §5.4: ext_authz joins every repeated header
        // alike, `cookie` included.
        assert_eq!(call.header_all("cookie"), ["a=1,b=2"], "{side}");
        assert_eq!(call.header_all("x-tenant-id"), ["a,b"], "{side}");
    }
}

/// An allowed upstream header the auth service sets twice reaches the upstream as
/// ext_authz sets it (each value replaces the one before: the last one), in place of the
/// client's.
#[test]
fn a_header_the_auth_service_sets_twice_reaches_the_upstream_once() {
    let pair = start_provider(&["headersToUpstreamOnAllow: [x-nebula-*, x-user]"]);
    let req = RawRequest::get("/api/flows").bearer("h:x-user=one:h:x-user=two:allow:alice").header("x-user", "client");
    for seen in both(&pair, &req) {
        assert_eq!(seen.upstream().header_all("x-user"), ["two"], "{}", seen.side);
    }
}
