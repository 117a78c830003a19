//! What Envoy 1.40's HTTP ext_authz really sends and does, with an `envoyExtAuthzHttp`
//! provider rendered as istiod renders it (scripts/render_ext_authz.py): the facts the
//! filter's `protocol: ext_authz` reproduces, recorded against the mock auth service and
//! echo upstream. If an Envoy upgrade changes one, this fails before the differential
//! test (tests/tests/ext_authz_diff.rs) turns into a list of surprises.

use std::path::PathBuf;

use nebula_authz_tests::client::{RawRequest, RecordedRequest};
use nebula_authz_tests::envoy::host_name;
use nebula_authz_tests::{repo_root, Env};

const POLICY: &str = "tests/data/policy-mode/authorizationpolicy.yaml";
const EVERY_FIELD: &str = "tests/data/policy-mode/meshconfig-every-field.yaml";
const MINIMAL: &str = "tests/data/policy-mode/meshconfig-minimal.yaml";
const ISTIO_CLUSTER: &str = "outbound|4300||auth.prefect.svc.cluster.local";

fn ext_authz(mesh: &str) -> Env {
    let (mesh, policy): (PathBuf, PathBuf) = (repo_root().join(mesh), repo_root().join(POLICY));
    Env::builder().ext_authz(&mesh, &policy).auth_cluster_name(ISTIO_CLUSTER).istio_sidecar().start()
}

/// The callout's headers in wire order, as `name: value` lines; of the every-field
/// setup's command operators, the client's port and the start time's digits masked.
fn lines(call: &RecordedRequest) -> Vec<String> {
    call.headers
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v);
            let v = match n.as_str() {
                "x-op-client" => v.rsplit_once(':').map_or(v.to_string(), |(ip, _)| format!("{ip}:<port>")),
                "x-op-start" | "x-op-epoch" => v.chars().map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect(),
                _ => v.to_string(),
            };
            format!("{n}: {v}")
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn expect_headers(call: &RecordedRequest, expected: &[impl AsRef<str>], what: &str) {
    let want = sorted(expected.iter().map(|s| s.as_ref().to_string()).collect());
    assert_eq!(sorted(lines(call)), want, "{what}: the auth service received other headers");
}

#[test]
fn ext_authz_with_every_provider_field() {
    let env = ext_authz(EVERY_FIELD);

    // The client's method, pathPrefix + the client's path with its query, the client's
    // :authority as host; of the client's headers only authorization and the listed
    // patterns (exact, prefix, suffix; any case); includeAdditionalHeadersInCheck
    // overwrites a client value, its command operators printed (a value that prints
    // empty adds nothing and keeps the client's: x-tenant-region); and two headers of
    // Envoy's own.
    let resp = env.send(
        &RawRequest::new("DELETE", "/api/flows/1?x=%2F&y")
            .header("host", "api.example.com:8443")
            .bearer("allow:alice")
            .header("Origin", "https://app.example.com")
            .header("cookie", "session=1")
            .header("x-tenant-id", "t1")
            .header("x-tenant-region", "eu")
            .header("b3-trace", "abc")
            .header("user-agent", "curl/8")
            .header("x-request-id", "from-client")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-envoy-internal", "false"),
    );
    assert_eq!(resp.status, 200, "allowed: {resp:?}");
    let call = env.auth.last();
    assert_eq!((call.method.as_str(), call.path.as_str()), ("DELETE", "/check/api/flows/1?x=%2F&y"));
    expect_headers(
        &call,
        &[
            "host: api.example.com:8443",
            "content-length: 0",
            "authorization: Bearer allow:alice",
            "origin: https://app.example.com",
            "x-tenant-id: overwritten",
            "x-tenant-region: eu",
            "b3-trace: abc",
            "x-auth-static: from-mesh-config",
            "x-op-client: 127.0.0.1:<port>",
            "x-op-client-ip: 127.0.0.1",
            &format!("x-op-local: 127.0.0.1:{}", env.port),
            "x-op-local-ip: 127.0.0.1",
            "x-op-proto: HTTP/1.1",
            &format!("x-op-host: {}", host_name()),
            "x-op-req: https://app.|DELETE|api.example.com:8443|100%",
            "x-op-start: NNNN-NN-NNTNN:NN:NN.NNNZ",
            "x-op-epoch: NNNNNNNNNN.NNN NNNN/NN/NN NN:NN:NN+NNNN",
            "x-envoy-internal: true",
            "x-envoy-expected-rq-timeout-ms: 2500",
        ],
        "GET with every kind of header",
    );
    // %START_TIME% is the request's start, in UTC: now, give or take the test's pace.
    let epoch = call.header("x-op-epoch").unwrap_or_default();
    let secs: u64 = epoch.split('.').next().and_then(|s| s.parse().ok()).expect("%s prints seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    assert!(secs.abs_diff(now) < 60, "START_TIME {epoch:?} is not now ({now})");
    let start = call.header("x-op-start").unwrap_or_default();
    assert_eq!(start[..10].replace('-', "/"), epoch[15..25], "one instant in both formats: {start} / {epoch}");

    // A repeated header goes as one line, its values joined with a comma in their order
    // (cookie too, when listed: not RFC 6265's "; ").
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("x-tenant-region", "eu")
            .header("origin", "https://a.example.com")
            .header("x-tenant-region", "us"),
    );
    assert_eq!(resp.status, 200, "allowed: {resp:?}");
    let call = env.auth.last();
    assert_eq!(call.header_all("x-tenant-region"), ["eu,us"], "{:?}", call.headers);

    // A body up to maxRequestBytes goes along, with content-length and
    // x-envoy-auth-partial-body: false; the upstream gets it unchanged.
    let body = b"{\"name\":\"flow\"}".to_vec();
    let resp = env.send(&RawRequest::post("/api/flows", body.clone()).bearer("allow:alice"));
    assert_eq!(resp.status, 200, "small body: {resp:?}");
    let call = env.auth.last();
    assert_eq!((call.method.as_str(), call.body.as_slice()), ("POST", body.as_slice()));
    assert_eq!(call.header("content-length").as_deref(), Some("15"));
    assert_eq!(call.header("x-envoy-auth-partial-body").as_deref(), Some("false"));
    assert_eq!(env.upstream.last().body, body, "the upstream gets the body unchanged");

    // A chunked body arrives whole, with a content-length.
    let resp = env.send(
        &RawRequest::post("/api/flows", Vec::new()).chunked(vec![b"ab".to_vec(), b"cd".to_vec()]).bearer("allow:a"),
    );
    assert_eq!(resp.status, 200, "chunked body: {resp:?}");
    let call = env.auth.last();
    assert_eq!((call.body.as_slice(), call.header("content-length").as_deref()), (&b"abcd"[..], Some("4")));

    // Over maxRequestBytes without allowPartialMessage: 413 from Envoy, no callout.
    let (auth_before, up_before) = (env.auth.count(), env.upstream.count());
    let resp = env.send(&RawRequest::post("/api/flows", vec![b'x'; 65]).bearer("allow:alice"));
    assert_eq!((resp.status, resp.text().as_str()), (413, "Payload Too Large"), "{resp:?}");
    assert_eq!((env.auth.count(), env.upstream.count()), (auth_before, up_before), "413: nothing called");

    // Allow: headersToUpstreamOnAllow replaces the client's copies; the auth service's
    // x-envoy-auth-headers-to-remove removes client headers; headersToDownstreamOnAllow
    // goes to the client; nothing else crosses.
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer(
                "h:x-envoy-auth-headers-to-remove=x-drop-me, cookie:h:set-cookie=s=1:h:x-auth-user=alice:allow:alice",
            )
            .header("x-nebula-actor-id", "evil")
            .header("x-drop-me", "1")
            .header("cookie", "a=b"),
    );
    assert_eq!(resp.status, 200, "allow: {resp:?}");
    let up = env.upstream.last();
    assert_eq!(up.header_all("x-nebula-actor-id"), ["alice"], "headersToUpstreamOnAllow replaces");
    assert!(up.header("x-drop-me").is_none() && up.header("cookie").is_none(), "headers-to-remove: {:?}", up.headers);
    assert!(up.header("x-other").is_none() && up.header("x-envoy-auth-headers-to-remove").is_none());
    assert_eq!(resp.header_all("set-cookie"), ["s=1"], "headersToDownstreamOnAllow");
    assert_eq!(resp.header_all("x-auth-user"), ["alice"], "headersToDownstreamOnAllow pattern");

    // Deny: the auth status and body, the listed headers plus www-authenticate and
    // location (ext_authz's defaults); content-type as the auth service sent it.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("deny"));
    assert_eq!((resp.status, resp.text().as_str()), (401, r#"{"detail":"unauthorized"}"#));
    assert_eq!(resp.header("content-type").as_deref(), Some("application/json"));
    assert!(resp.header("www-authenticate").is_some() && resp.header("x-internal").is_none(), "{resp:?}");
    let resp = env.send(&RawRequest::get("/api/flows").bearer("redirect"));
    assert_eq!(resp.status, 302);
    assert!(resp.header("location").is_some(), "location is a default client header: {resp:?}");

    // An auth 5xx, or no answer: statusOnError, empty body.
    for script in ["status:500", "close"] {
        let resp = env.send(&RawRequest::get("/api/flows").bearer(script));
        assert_eq!((resp.status, resp.body.len()), (502, 0), "{script}: {resp:?}");
    }

    // notPaths: no callout at all.
    let before = env.auth.count();
    let resp = env.send(&RawRequest::get("/api/health").header("x-nebula-actor-id", "evil"));
    assert_eq!((resp.status, env.auth.count()), (200, before), "public path");
    assert_eq!(env.upstream.last().header("x-nebula-actor-id").as_deref(), Some("evil"), "ext_authz strips nothing");
}

#[test]
fn ext_authz_with_the_fewest_provider_fields() {
    let env = ext_authz(MINIMAL);

    // No includeRequestHeadersInCheck: only authorization of the client's headers; the
    // timeout is Istio's default, 600 s. A body over maxRequestBytes with
    // allowPartialMessage: its first bytes, x-envoy-auth-partial-body: true.
    let resp = env.send(
        &RawRequest::post("/api/flows?limit=5", b"0123456789abcdefXYZ".to_vec())
            .bearer("allow:alice")
            .header("origin", "https://app.example.com")
            .header("x-nebula-actor-id", "evil"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = env.auth.last();
    assert_eq!((call.method.as_str(), call.path.as_str()), ("POST", "/api/flows?limit=5"));
    assert_eq!(call.body, b"0123456789abcdef", "the first maxRequestBytes bytes");
    expect_headers(
        &call,
        &[
            "host: localhost",
            "content-length: 16",
            "authorization: Bearer allow:alice",
            "x-envoy-auth-partial-body: true",
            "x-envoy-internal: true",
            "x-envoy-expected-rq-timeout-ms: 600000",
        ],
        "partial body, no header lists",
    );
    let up = env.upstream.last();
    assert_eq!(up.body, b"0123456789abcdefXYZ", "the upstream gets the whole body");
    assert_eq!(up.header_all("x-nebula-actor-id"), ["evil"], "no headersToUpstreamOnAllow: nothing replaced");

    // No headersToDownstreamOnDeny: every auth response header reaches the client.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("deny"));
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("x-internal").as_deref(), Some("secret"), "every header on deny: {resp:?}");
    // No statusOnError: 403.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("status:503"));
    assert_eq!((resp.status, resp.body.len()), (403, 0), "{resp:?}");
}

/// With Envoy's tracer on (Zipkin, as an Istio sidecar's default), ext_authz's HTTP
/// client sends the context of a child span of the request's span, in the tracer's own
/// format only (B3 for Zipkin: no `traceparent`, no `x-request-id`), whether the client
/// started the trace or Envoy did. Without a tracer it sends none (the tests above).
#[test]
fn ext_authz_under_a_tracer_sends_a_child_span() {
    let (mesh, policy): (PathBuf, PathBuf) = (repo_root().join(MINIMAL), repo_root().join(POLICY));
    let env = Env::builder()
        .ext_authz(&mesh, &policy)
        .auth_cluster_name(ISTIO_CLUSTER)
        .istio_sidecar()
        .zipkin_tracing()
        .start();
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
            .header("x-b3-spanid", "a2fb4a1d1a96d312")
            .header("x-b3-sampled", "1")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("x-request-id", "from-client"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = env.auth.last();
    assert_eq!(call.header("x-b3-traceid").as_deref(), Some("463ac35c9f6413ad48485a3953bb6124"), "the client's trace");
    assert_eq!(call.header("x-b3-parentspanid").as_deref(), Some("a2fb4a1d1a96d312"), "child of the client's span");
    let span = call.header("x-b3-spanid").unwrap_or_default();
    assert!(span.len() == 16 && span != "a2fb4a1d1a96d312", "a span of its own: {:?}", call.headers);
    assert_eq!(call.header("x-b3-sampled").as_deref(), Some("1"));
    assert!(call.header("traceparent").is_none() && call.header("x-request-id").is_none(), "{:?}", call.headers);

    // Envoy starts the trace: the child span of Envoy's own span.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let (call, up) = (env.auth.last(), env.upstream.last());
    assert_eq!(call.header("x-b3-traceid"), up.header("x-b3-traceid"), "the request's trace: {:?}", call.headers);
    assert_eq!(call.header("x-b3-parentspanid"), up.header("x-b3-spanid"), "{:?} / {:?}", call.headers, up.headers);
    assert!(call.header("x-request-id").is_none(), "{:?}", call.headers);
}
