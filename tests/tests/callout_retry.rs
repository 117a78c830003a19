//! 18. A callout whose connection was reset or refused before any response byte is sent
//!     again (`auth.retry_on_reset`, on by default): by Envoy first (the callout asks its
//!     router with `x-envoy-retry-on: reset,connect-failure`, one retry, after Envoy's
//!     backoff), then, if Envoy's reply still says reset or refused, once by the filter
//!     within what is left of `timeout_ms` (counted in `nebula_authz_callout_retries`;
//!     Envoy may retry that attempt once too).
//!     An answered status (a real 503 included) or a timeout never is; a garbage answer
//!     only by Envoy (its `reset` covers a protocol error).
//!     The filter tells Envoy's replies from answers by the missing
//!     `x-envoy-upstream-service-time` and Envoy's body (policy/envoy_reply.rs).
//!     That `retry_on_reset: false` turns both off, and which answers the filter sends
//!     again with what budget, is asserted natively too (filter/src/flow/tests/
//!     interleavings.rs); here, how Envoy's router retries and reports.

use std::net::SocketAddr;

use nebula_authz_tests::{closed_port, prometheus_value, Env, RawRequest, FILTER_ERROR_BODY};

fn calls(env: &Env, token: &str) -> usize {
    let want = format!("Bearer {token}");
    env.auth.requests().iter().filter(|r| r.header("authorization").as_deref() == Some(want.as_str())).count()
}

fn retries(env: &Env) -> Option<u64> {
    prometheus_value(&env.prometheus_settled(), "nebula_authz_callout_retries")
}

/// Envoy's count of retries on the `auth` cluster.
fn envoy_retries(env: &Env) -> String {
    RawRequest::get("/stats?filter=cluster.auth.upstream_rq_retry$").send(env.admin_port).text()
}

#[test]
fn a_callout_reset_before_the_answer_is_sent_again() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 2000}}"#);
    // The auth service closes the first connection without a byte, then allows: Envoy's
    // own retry is answered.
    let token = "seq:close|allow:bob";
    env.assert_allowed_as("reset, then allowed on Envoy's retry", &env.get_as("/api/flows", token), "bob");
    assert_eq!(calls(&env, token), 2, "the callout, then Envoy's retry");
    assert_eq!(retries(&env), Some(0), "the filter saw the answer only");
    assert!(envoy_retries(&env).contains("upstream_rq_retry: 1"), "{}", envoy_retries(&env));
    // The retried request is the same request: no chunked framing added on the way.
    let retried = env.auth.last();
    assert_eq!(retried.header("transfer-encoding"), None, "{retried:?}");
    // Reset twice: Envoy's retry is reset too, and the filter sends it once more.
    let token = "seq:close|close|allow:carol";
    env.assert_allowed_as("reset twice, allowed on the filter's retry", &env.get_as("/api/flows", token), "carol");
    assert_eq!(calls(&env, token), 3);
    assert_eq!(retries(&env), Some(1));
    // Reset four times (the filter's retry, and Envoy's retry of it): fail closed.
    let token = "seq:close|close|close|close|allow:dave";
    let resp = env.get_as("/api/flows", token);
    env.check(resp.status == 403 && resp.text() == FILTER_ERROR_BODY && !resp.proxied(), "reset 4 times", &resp);
    assert_eq!(calls(&env, token), 4, "the filter retries once, Envoy once per attempt");
    assert_eq!(retries(&env), Some(2));
}

#[test]
fn answers_timeouts_and_garbage_are_never_retried() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 500}}"#);
    for token in ["status:503", "status:500", "status:502", "slow:2000", "deny", "cc:no-store:status:503"] {
        let resp = env.get_as("/api/flows", token);
        env.check(resp.status != 200 && !resp.proxied(), &format!("{token}: not allowed"), &resp);
        assert_eq!(calls(&env, token), 1, "{token}: answered (or timed out): never retried");
    }
    assert!(envoy_retries(&env).contains("upstream_rq_retry: 0"), "{}", envoy_retries(&env));
    // Garbage instead of HTTP: Envoy's `reset` retry covers a protocol error (one retry);
    // the filter never sends it again.
    let resp = env.get_as("/api/flows", "garbage");
    env.check(resp.status == 403 && !resp.proxied(), "garbage: not allowed", &resp);
    assert_eq!(calls(&env, "garbage"), 2, "Envoy's retry only");
    assert_eq!(retries(&env), Some(0));
    assert_eq!(env.upstream.count(), 0);
}

#[test]
fn the_retry_spends_what_is_left_of_the_timeout() {
    // Reset after 800 ms of a 1000 ms budget; the retry's answer would take 600 ms more:
    // it runs out at 1000 ms in all (a fresh 1000 ms would let the allow in at 1400 ms).
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 1000}}"#);
    let token = "seq:slow:800:close|slow:600:allow:late";
    env.assert_fail_closed("retry past the budget", &env.get_as("/api/flows", token), 403);
    assert_eq!(calls(&env, token), 2);
    // Within the budget the retry is answered in time.
    let token = "seq:slow:100:close|allow:early";
    env.assert_allowed_as("retry within the budget", &env.get_as("/api/flows", token), "early");
}

#[test]
fn a_refused_connection_is_retried_then_fails_closed() {
    let down = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let env = Env::builder().auth_addr(down).plugin_config(r#"{"auth": {"cluster": "auth"}}"#).start();
    env.assert_fail_closed("auth down", &env.get_as("/api/flows", "allow:alice"), 403);
    assert_eq!(retries(&env), Some(1), "connection refused: the filter's retry, after Envoy's");
    let stats = RawRequest::get("/stats?filter=cluster.auth.upstream_cx_connect_fail").send(env.admin_port).text();
    assert!(stats.contains("cluster.auth.upstream_cx_connect_fail: 4"), "four connection attempts: {stats}");
}
