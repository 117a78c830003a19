//! The filter's per-request log lines under the real Envoy (docs/operations.md "Log
//! lines"): the module follows Envoy's `wasm` log level; each deny (info) and each
//! fail-closed (warn) is one line with the context id, method, path and reason; public
//! and allowed requests log at debug; no credential, token, cookie or query ever appears.
//! Envoy's own replies to the callout (connection refused/reset, timeout) are named as
//! what they are, not as the auth service's answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nebula_authz_tests::{closed_port, Env, RawRequest};

const SECRET: &str = "s3cr3t-token-value";
const COOKIE: &str = "session=cookie-secret-value";

/// The module's lines in Envoy's log (`wasm log nebula-authz ...: <message>`).
fn module_lines(env: &Env) -> Vec<String> {
    env.log().lines().filter(|l| l.contains("wasm log")).map(str::to_owned).collect()
}

/// Waits (Envoy writes its log asynchronously) for a module line containing every `part`.
fn wait_line(env: &Env, parts: &[&str]) -> String {
    wait_line_after(env, 0, parts)
}

/// [`wait_line`] among the module's lines after the first `skip`.
fn wait_line_after(env: &Env, skip: usize, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = module_lines(env);
        if let Some(line) = lines.into_iter().skip(skip).find(|l| parts.iter().all(|p| l.contains(p))) {
            eprintln!("{line}");
            return line;
        }
        if Instant::now() > deadline {
            panic!("no log line with {parts:?}; module lines:\n{}", module_lines(env).join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_secrets(env: &Env) {
    let log = env.log();
    for secret in [SECRET, "cookie-secret-value", "q=hidden-query"] {
        assert!(!log.contains(secret), "Envoy's log holds {secret:?}:\n{}", env.log_tail());
    }
}

/// `GET target` scripted by `script`, carrying a cookie and an API key header that must
/// never be logged.
fn with_secrets(target: &str, script: &str) -> RawRequest {
    secrets(RawRequest::get(target), script)
}

fn secrets(req: RawRequest, script: &str) -> RawRequest {
    req.bearer(script).header("cookie", COOKIE).header("x-api-key", SECRET)
}

#[test]
fn denies_and_fail_closed_are_logged_at_the_default_level_allows_are_not() {
    // Envoy's default: info. The mock treats `deny:<anything>` as a 401 denial.
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 300}}"#);
    // An unknown script denies: the bearer token itself is the secret here.
    // The accepted configuration logs at warning: Istio's sidecars log at `warning`, and
    // this line is how a rollout sees that the plugin attached and enforces.
    let line = wait_line(&env, &["configured: auth cluster \"auth\""]);
    assert!(line.contains("[warning]"), "the configured line shows at a sidecar's default level: {line}");
    let resp = env.send(&with_secrets("/api/flows?q=hidden-query", &format!("deny-{SECRET}")));
    assert_eq!(resp.status, 401, "{resp:?}");
    let line = wait_line(&env, &["GET /api/flows", "denied 401"]);
    assert!(line.contains("[info]"), "a deny logs at info: {line}");
    assert!(line.contains("auth service answered 401"), "the reason: {line}");
    assert!(line.contains("] [") || line.contains(": ["), "the context id: {line}");

    let resp = env.send(&secrets(RawRequest::post("/api/flows/filter", "{}"), "status:503"));
    assert_eq!(resp.status, 403, "{resp:?}");
    let line = wait_line(&env, &["POST /api/flows/filter", "failed closed 403"]);
    assert!(line.contains("[warning]"), "a fail-closed logs at warn: {line}");
    assert!(line.contains("auth service answered 503"), "a real 503 from the auth service: {line}");

    let resp = env.send(&with_secrets("/api/flows", "slow:3000"));
    assert_eq!(resp.status, 403, "{resp:?}");
    let line = wait_line(&env, &["GET /api/flows", "failed closed 403", "timed out"]);
    assert!(line.contains("timed out after 300 ms"), "Envoy's 504, named as a timeout: {line}");
    assert!(!line.contains("answered 504"), "the auth service did not answer 504: {line}");

    // Allowed and public requests log nothing at info. A denial sent after their
    // responses marks the end: a request's line is written when it is decided, before its
    // response, and Envoy's log sink keeps the order lines reach it in, so once the
    // marker's line is in the log, any line of theirs is too (no fixed sleep).
    let before = module_lines(&env).len();
    assert_eq!(env.send(&with_secrets("/api/flows", "allow:alice")).status, 200);
    assert_eq!(env.send(&RawRequest::get("/api/health")).status, 200);
    assert_eq!(env.send(&RawRequest::get("/api/log-marker").bearer("deny")).status, 401);
    wait_line_after(&env, before, &["GET /api/log-marker", "denied 401"]);
    let after = module_lines(&env);
    assert!(
        after[before..].iter().all(|l| !l.contains("allowed") && !l.contains("public")),
        "allow/public lines at the default level:\n{}",
        after[before..].join("\n")
    );
    assert_no_secrets(&env);

    // The same Envoy: its replies named as what they are, hostile paths escaped.
    reset_connection_is_named_as_such(&env);
    hostile_paths_are_logged_escaped_and_bounded(&env);
}

#[test]
fn refused_connection_is_named_as_such() {
    let down = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let env = Env::builder().auth_addr(down).start();
    let resp = env.send(&with_secrets("/api/flows", "allow:alice"));
    assert_eq!(resp.status, 403, "{resp:?}");
    let line = wait_line(&env, &["GET /api/flows", "failed closed 403"]);
    assert!(line.contains("connection refused"), "a refused connection is Envoy's 503: {line}");
    assert!(!line.contains("answered 503"), "the auth service did not answer: {line}");
    assert_no_secrets(&env);
}

fn reset_connection_is_named_as_such(env: &Env) {
    let before = module_lines(env).len();
    // The mock closes the connection without an answer.
    let resp = env.send(&with_secrets("/api/flows", "close"));
    assert_eq!(resp.status, 403, "{resp:?}");
    let line = wait_line_after(env, before, &["GET /api/flows", "failed closed 403"]);
    assert!(line.contains("connection reset"), "a closed connection is Envoy's 503: {line}");
    assert!(!line.contains("answered 503"), "the auth service did not answer: {line}");
}

#[test]
fn debug_level_logs_public_and_allowed_requests() {
    let env = Env::builder().component_log_level("wasm:debug").start();
    assert_eq!(env.send(&with_secrets("/api/flows?q=hidden-query", "allow:alice")).status, 200);
    let line = wait_line(&env, &["GET /api/flows", "allowed"]);
    assert!(line.contains("[debug]"), "{line}");
    assert_eq!(env.send(&RawRequest::get("/api/health?q=hidden-query")).status, 200);
    let line = wait_line(&env, &["GET /api/health", "public"]);
    assert!(line.contains("[debug]") && line.contains("/api/health"), "{line}");
    assert_no_secrets(&env);
}

fn hostile_paths_are_logged_escaped_and_bounded(env: &Env) {
    let long = format!("/api/{}", "a".repeat(5000));
    assert_eq!(env.send(&RawRequest::get(&long).bearer("deny")).status, 401);
    let line = wait_line(env, &["GET /api/aaaa", "denied 401"]);
    assert!(line.len() < 1000, "a long path is cut: {} bytes", line.len());
    // A raw control byte in the path must not become a line break or an escape sequence.
    let before = module_lines(env).len();
    let resp = env.send(&RawRequest::get(b"/api/fl\x1bows".as_slice()).bearer("deny"));
    if resp.status == 401 {
        let line = wait_line_after(env, before, &["GET /api/fl", "denied 401"]);
        assert!(!line.contains('\x1b'), "the ESC byte is escaped: {line:?}");
    }
}
