//! 18. A callout whose connection was reset or refused before any response byte is sent
//!     once more, within the same `timeout_ms` (`auth.retry_on_reset`, on by default); an
//!     answered status (a real 503 included), a timeout or a garbage answer never is.
//!     Envoy reports the first two as its own 503 (see docs: no
//!     `x-envoy-upstream-service-time`, body `upstream connect error or disconnect/reset
//!     before headers. reset reason: ...`), which is how the filter tells them apart.

use std::net::SocketAddr;

use nebula_authz_tests::{closed_port, prometheus_value, Env};

fn calls(env: &Env, token: &str) -> usize {
    let want = format!("Bearer {token}");
    env.auth.requests().iter().filter(|r| r.header("authorization").as_deref() == Some(want.as_str())).count()
}

fn retries(env: &Env) -> Option<u64> {
    prometheus_value(&env.prometheus(), "nebula_authz_callout_retries")
}

#[test]
fn a_callout_reset_before_the_answer_is_sent_again() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 2000}}"#);
    // The auth service closes the first connection without a byte, then allows.
    let token = "seq:close|allow:bob";
    env.assert_allowed_as("reset, then allowed on the retry", &env.get_as("/api/flows", token), "bob");
    assert_eq!(calls(&env, token), 2, "the callout, then one retry");
    assert_eq!(retries(&env), Some(1));
    // Reset twice: one retry only, then fail closed.
    let token = "seq:close|close|allow:carol";
    env.assert_fail_closed("reset twice", &env.get_as("/api/flows", token), 403);
    assert_eq!(calls(&env, token), 2, "never a second retry");
    assert_eq!(retries(&env), Some(2));
}

#[test]
fn answers_timeouts_and_garbage_are_never_retried() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "timeout_ms": 500}}"#);
    for token in ["status:503", "status:500", "status:502", "garbage", "slow:2000", "deny", "cc:no-store:status:503"] {
        let resp = env.get_as("/api/flows", token);
        env.check(resp.status != 200 && !resp.proxied(), &format!("{token}: not allowed"), &resp);
        assert_eq!(calls(&env, token), 1, "{token}: answered (or timed out): never retried");
    }
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
fn a_refused_connection_is_retried_once_then_fails_closed() {
    let down = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let env = Env::builder().auth_addr(down).plugin_config(r#"{"auth": {"cluster": "auth"}}"#).start();
    env.assert_fail_closed("auth down", &env.get_as("/api/flows", "allow:alice"), 403);
    assert_eq!(retries(&env), Some(1), "connection refused: one retry");
    let stats = nebula_authz_tests::RawRequest::get("/stats?filter=cluster.auth.upstream_cx_connect_fail")
        .send(env.admin_port)
        .text();
    assert!(stats.contains("cluster.auth.upstream_cx_connect_fail: 2"), "two connection attempts: {stats}");
}

#[test]
fn retry_on_reset_false_turns_it_off() {
    let env = Env::start(r#"{"auth": {"cluster": "auth", "retry_on_reset": false}}"#);
    let token = "seq:close|allow:bob";
    env.assert_fail_closed("reset, no retry", &env.get_as("/api/flows", token), 403);
    assert_eq!(calls(&env, token), 1);
    assert_eq!(retries(&env), Some(0));
}
