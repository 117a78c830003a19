//! 5. Anything but a clean answer from the auth service fails closed with
//!    `status_on_error` and the filter's own body; the upstream is never reached. Here:
//!    the failures as Envoy reports them (its timeout, a connection closed or refused,
//!    garbage instead of HTTP, a 2 MiB answer through the ABI, a cluster it does not
//!    know). What the flow makes of each report, `status_on_error` and
//!    `max_response_bytes` (allows included) are asserted natively:
//!    filter/src/flow/tests/failures.rs.

use std::net::SocketAddr;
use std::time::Duration;

use nebula_authz_tests::{closed_port, over_h1_and_h2, Env, Proto};

over_h1_and_h2!(broken_auth_answers_fail_closed, auth_service_down_fails_closed, unknown_auth_cluster_fails_closed,);

fn broken_auth_answers_fail_closed(proto: Proto) {
    let env = Env::start_over(proto, r#"{"auth": {"cluster": "auth", "timeout_ms": 300}}"#);

    let resp = env.get_as("/api/flows", "slow:3000");
    env.assert_fail_closed("timeout (300 ms, auth answers after 3 s)", &resp, 403);
    env.check(resp.elapsed < Duration::from_millis(2000), "the timeout must fire well before 3 s", &resp);
    env.check(resp.elapsed >= Duration::from_millis(250), "the timeout fired before timeout_ms", &resp);

    for script in ["close", "garbage", "status:500", "status:503", "status:502", "bigbody", "status:100"] {
        let auth_before = env.auth.count();
        let resp = env.get_as("/api/flows", script);
        env.assert_fail_closed(&format!("auth `{script}`"), &resp, 403);
        env.check(env.auth.count() > auth_before, &format!("auth `{script}`: the auth service was not called"), &resp);
        env.check(resp.text() != "status 500", "the auth body must not reach the client", &resp);
    }

    // Envoy is still fine afterwards.
    env.assert_allowed_as("allow after failures", &env.get_as("/api/flows", "allow:alice"), "alice");
}

fn auth_service_down_fails_closed(proto: Proto) {
    let down = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let env = Env::builder().proto(proto).auth_addr(down).start();
    env.assert_fail_closed("auth down (connection refused)", &env.get_as("/api/flows", "allow:alice"), 403);
    env.assert_fail_closed("auth down, POST", &env.post_as("/api/flows", "allow:alice", b"{}"), 403);
    let resp = env.get_as("/api/health", "allow:alice");
    env.check(resp.status == 200 && resp.proxied(), "public paths work without the auth service", &resp);
}

fn unknown_auth_cluster_fails_closed(proto: Proto) {
    let env = Env::start_over(proto, r#"{"auth": {"cluster": "nope"}}"#);
    env.assert_fail_closed("unknown cluster", &env.get_as("/api/flows", "allow:alice"), 403);
    assert_eq!(env.auth.count(), 0, "nothing can reach the mock through an unknown cluster");
    let resp = env.get_as("/api/version", "");
    env.check(resp.status == 200 && resp.proxied(), "public paths work with an unknown auth cluster", &resp);
}
