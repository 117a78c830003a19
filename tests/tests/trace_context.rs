//! Trace context on the callout (`auth.trace_headers`): the request's trace headers in
//! every format Envoy's tracers use reach the auth service, in both protocols, as the
//! request carried them; a stripped one never does; a public path sends nothing; and
//! requests that differ only in their trace ids share one cached decision.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{prometheus_value as metric, Env};

/// One request's trace context, every default format; the values differ per `n`.
fn trace(n: u32) -> Vec<(&'static str, String)> {
    vec![
        ("traceparent", format!("00-4bf92f3577b34da6a3ce929d0e0e{n:04x}-00f067aa0ba9{n:04x}-01")),
        ("tracestate", format!("congo=t61rcWkgMzE{n}")),
        ("x-b3-traceid", format!("463ac35c9f64{n:04x}")),
        ("x-b3-spanid", format!("a2fb4a1d1a96{n:04x}")),
        ("x-b3-parentspanid", format!("0020000000{n:06x}")),
        ("x-b3-sampled", "1".to_string()),
        ("x-b3-flags", "1".to_string()),
        ("b3", format!("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d8{n:04x}-1-05e3ac9a4f6e3b90")),
        ("x-datadog-trace-id", format!("{}", 1_000_000 + n)),
        ("x-datadog-parent-id", format!("{}", 2_000_000 + n)),
        ("x-datadog-sampling-priority", "1".to_string()),
        ("x-datadog-origin", "rum".to_string()),
        ("x-datadog-tags", "_dd.p.dm=-4".to_string()),
        ("sw8", format!("1-{n}-NQ==-1-bWVzaA==-aW5zdGFuY2U=-L2FwaQ==-YXV0aA==")),
        ("x-amzn-trace-id", format!("Root=1-5759e988-bd862e3fe1be46a99427{n:04x}")),
    ]
}

fn request(path: &str, token: &str, n: u32) -> RawRequest {
    let mut req = RawRequest::get(path).bearer(token).header("x-secret-trace", "never");
    for (name, value) in trace(n) {
        req = req.header(name, value);
    }
    req
}

/// Sends `n`'s request and asserts the auth service got every trace header of it, the
/// `x-request-id` Envoy settled on for the request (the upstream's), and no stripped one.
fn assert_propagated(env: &Env, what: &str, token: &str, n: u32) {
    let resp = env.send(&request("/api/flows", token, n));
    assert_eq!(resp.status, 200, "{what}: {resp:?}");
    let call = env.auth.last();
    for (name, value) in trace(n) {
        assert_eq!(call.header_all(name), [value], "{what}: {name} reaches the auth service: {:?}", call.headers);
    }
    let upstream = env.upstream.last();
    let rid = upstream.header("x-request-id");
    assert!(rid.as_deref().is_some_and(|r| !r.is_empty()), "{what}: Envoy sets x-request-id: {:?}", upstream.headers);
    assert_eq!(call.header("x-request-id"), rid, "{what}: the auth service logs the request's own id");
    assert!(call.header("x-secret-trace").is_none(), "{what}: a stripped header never goes: {:?}", call.headers);
}

#[test]
fn forward_auth_callouts_carry_the_trace_context_and_share_the_cache() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "trace_headers": ["x-secret-trace", "traceparent",
            "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
            "x-request-id", "x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
            "x-datadog-origin", "x-datadog-tags", "sw8", "x-amzn-trace-id"]},
            "strip_headers": ["x-nebula-*", "x-secret-trace"], "cache": {"default_ttl": 60}}"#,
    );
    assert_propagated(&env, "forward_auth", "allow:alice", 1);

    // Other trace ids, same credential and request: one cache entry serves both.
    let calls = env.auth.count();
    for n in 2..6 {
        let resp = env.send(&request("/api/flows", "allow:alice", n));
        env.assert_allowed_as("other trace ids", &resp, "alice");
    }
    assert_eq!(env.auth.count(), calls, "requests differing only in trace headers share the cached decision");
    let stats = env.prometheus_settled();
    assert_eq!(metric(&stats, "nebula_authz_cache_hits"), Some(4), "{stats}");

    // A public path: no callout, nothing sent.
    let resp = env.send(&request("/api/health", "allow:alice", 7));
    assert_eq!((resp.status, env.auth.count()), (200, calls), "public path: {resp:?}");
}

#[test]
fn ext_authz_callouts_carry_the_trace_context_by_default() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "protocol": "ext_authz"},
            "strip_headers": ["x-nebula-*", "x-secret-trace"]}"#,
    );
    assert_propagated(&env, "ext_authz", "allow:alice", 1);
    // Every request its own context (no cache here): the second one's, not the first's.
    assert_propagated(&env, "ext_authz again", "allow:bob", 2);
    let calls = env.auth.count();
    let resp = env.send(&request("/api/health", "allow:alice", 3));
    assert_eq!((resp.status, env.auth.count()), (200, calls), "public path: {resp:?}");
}

/// Under Envoy's own tracer (Zipkin, every request sampled, as an Istio sidecar), what
/// the filter can see: the client's context, which it forwards as it came, and
/// `x-request-id`; not a trace Envoy starts itself, whose B3 headers Envoy's router
/// writes only on the upstream request (ext_authz instead sends a child span of it:
/// tests/tests/ext_authz_contract.rs).
#[test]
fn under_envoys_tracer_the_filter_forwards_the_clients_context_and_the_request_id() {
    let env = Env::builder()
        .plugin_config(r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "protocol": "ext_authz"}}"#)
        .zipkin_tracing()
        .start();
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
            .header("x-b3-spanid", "a2fb4a1d1a96d312")
            .header("x-b3-sampled", "1"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let (call, up) = (env.auth.last(), env.upstream.last());
    assert_eq!(call.header("x-b3-traceid").as_deref(), Some("463ac35c9f6413ad48485a3953bb6124"));
    assert_eq!(call.header("x-b3-spanid").as_deref(), Some("a2fb4a1d1a96d312"), "forwarded as-is: {:?}", call.headers);
    assert!(call.header("x-b3-parentspanid").is_none(), "no child span minted: {:?}", call.headers);
    // Zipkin's shared span context: Envoy's server span is the client's span id, so the
    // auth service's span hangs under a span Envoy reports.
    assert_eq!(up.header("x-b3-spanid").as_deref(), Some("a2fb4a1d1a96d312"), "{:?}", up.headers);
    assert_eq!(call.header("x-request-id"), up.header("x-request-id"));

    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let (call, up) = (env.auth.last(), env.upstream.last());
    assert!(up.header("x-b3-traceid").is_some(), "Envoy started a trace: {:?}", up.headers);
    assert!(call.header("x-b3-traceid").is_none(), "not visible to a filter: {:?}", call.headers);
    assert!(up.header("x-request-id").is_some() && call.header("x-request-id") == up.header("x-request-id"));
}
