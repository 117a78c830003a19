//! 7. Plugin configuration: minimal config, frontend_prefix, custom strip list, and
//!    invalid configurations (Envoy 1.40 refuses to start when on_configure fails on a
//!    static listener with `fail_open: false`).

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto};

over_h1_and_h2!(minimal_config_uses_the_defaults, frontend_prefix_and_custom_strip_headers);

fn minimal_config_uses_the_defaults(proto: Proto) {
    let env = Env::start_over(proto, r#"{ "auth": { "cluster": "auth" } }"#);
    env.assert_allowed_as("minimal config, allow", &env.get_as("/api/flows", "allow:alice"), "alice");
    let req = env.auth.last();
    assert_eq!(req.header_all("host"), ["auth"], "authority defaults to the cluster name: {req:?}");
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/"), "{req:?}");
    assert_eq!(req.header_all("x-envoy-expected-rq-timeout-ms"), ["5000"], "{req:?}");
    env.assert_denied("minimal config, deny", &env.get_as("/api/flows", "deny"), 1);
    for public in ["/auth", "/api/docs", "/api/openapi.json", "/api/health", "/api/version", "/hooks/x"] {
        let resp = env.get_as(public, "deny");
        env.check(resp.status == 200 && resp.proxied(), &format!("default public path {public}"), &resp);
    }
    assert_eq!(env.auth.count(), 2, "public paths must not call the auth service");
}

fn frontend_prefix_and_custom_strip_headers(proto: Proto) {
    let env = Env::start_over(
        proto,
        r#"{"auth": {"cluster": "auth"}, "frontend_prefix": "/ui",
            "strip_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config",
                              "x-nebula-log-limit-config", "x-evil"]}"#,
    );
    let resp = env.send(&RawRequest::get("/ui/assets/app.js").header("X-Evil", "1").header("x-EVIL", "2"));
    env.check(resp.status == 200 && resp.proxied(), "/ui/assets/app.js is public with frontend_prefix /ui", &resp);
    assert_eq!(env.auth.count(), 0, "a frontend path must not call the auth service");
    let up = env.upstream.last();
    assert_eq!(up.path, "/ui/assets/app.js");
    assert!(up.header_all("x-evil").is_empty(), "configured strip header x-evil reached the upstream: {up:?}");

    env.assert_denied("/api/flows stays protected", &env.get_as("/api/flows", "deny"), 1);
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice").header("x-evil", "3"));
    let up = env.assert_allowed_as("allowed with x-evil", &resp, "alice");
    assert!(up.header_all("x-evil").is_empty(), "x-evil reached the upstream on an allowed path: {up:?}");
}

/// (case, plugin config, text the error log line must contain)
const INVALID: [(&str, &str, &str); 6] = [
    ("unknown field", r#"{"auth": {"cluster": "auth", "timout_ms": 300}}"#, "auth.timout_ms"),
    ("wrong type", r#"{"auth": {"cluster": "auth", "timeout_ms": "fast"}}"#, "auth.timeout_ms"),
    ("missing auth.cluster", r#"{"auth": {"timeout_ms": 300}}"#, "cluster"),
    ("status_on_error 200", r#"{"auth": {"cluster": "auth"}, "status_on_error": 200}"#, "status_on_error"),
    ("relative public path", r#"{"auth": {"cluster": "auth"}, "public_paths": ["api/health"]}"#, "public_paths"),
    ("unknown top-level field", r#"{"auth": {"cluster": "auth"}, "public_path": ["/x"]}"#, "public_path"),
];

#[test]
fn invalid_configs_keep_envoy_from_starting() {
    let mut failures = Vec::new();
    for (case, config, field) in INVALID {
        let failure = Env::builder().plugin_config(config).start_expect_failure();
        let log = &failure.log;
        let exited_with_error = failure.status.is_some_and(|s| !s.success());
        let error_line = log
            .lines()
            .find(|l| l.contains("wasm log") && (l.contains("][error]") || l.contains("][critical]")))
            .unwrap_or("");
        if !exited_with_error {
            failures.push(format!("{case}: Envoy did not exit with an error ({:?})", failure.status));
        }
        if !log.contains("Unable to create Wasm plugin nebula-authz") {
            failures.push(format!("{case}: Envoy did not report the plugin failure"));
        }
        if !error_line.contains(field) {
            failures.push(format!("{case}: the filter's error line does not name {field:?}: {error_line:?}"));
        }
        if log.lines().filter(|l| l.contains("wasm log") && l.contains("][error]")).count() > 1 {
            failures.push(format!("{case}: more than one error line per VM load"));
        }
        assert_eq!(failure.upstream.count() + failure.auth.count(), 0, "{case}: a request got through");
        if failures.iter().any(|f| f.starts_with(case)) {
            failures.push(format!("{case} log tail:\n{}", nebula_authz_tests::envoy::tail(log, 15)));
        }
    }
    assert!(failures.is_empty(), "invalid configurations:\n{}", failures.join("\n"));
}
