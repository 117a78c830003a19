//! 17. A graceful restart of a healthy auth service must not fail legitimate users: a real
//!     nginx is the auth service, reloaded (`nginx -s reload`) several times under load.
//!     Each reload closes the old workers' keep-alive connections, some of them just as
//!     Envoy sends a callout on one; such a callout was never answered, so it is sent
//!     again (by Envoy, then by the filter), and no allowed request fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nebula_authz_tests::nginx::Nginx;
use nebula_authz_tests::{prometheus_value, Env, RawRequest};

/// Concurrent clients, each one request at a time (one connection per request).
const CLIENTS: usize = 8;
const RELOADS: usize = 5;
const MAX_RELOADS: usize = 15;
/// Load between two reloads.
const BETWEEN_RELOADS: Duration = Duration::from_millis(300);
/// The load is bounded in count as well as in time.
const MAX_REQUESTS_PER_CLIENT: usize = 2_000;

#[test]
fn reloading_the_auth_service_under_load_fails_no_allowed_request() {
    let nginx = Nginx::start();
    let env = Env::builder()
        .auth_addr(SocketAddr::from(([127, 0, 0, 1], nginx.port)))
        .plugin_config(r#"{"auth": {"cluster": "auth", "authority": "auth:4300"}}"#)
        .start();
    env.assert_allowed_as("nginx allows", &env.get_as("/api/flows", "allow:alice"), "alice");
    let resp = env.get_as("/api/flows", "deny");
    env.check(resp.status == 401 && !resp.proxied(), "nginx denies", &resp);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, port) = (stop.clone(), env.port);
            thread::spawn(move || {
                // Status (0: no response) → count.
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                for _ in 0..MAX_REQUESTS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let resp = RawRequest::get("/api/flows").bearer("allow:alice").try_send(port);
                    let status = match resp {
                        Ok(resp) if resp.status == 200 && !resp.proxied() => 1,
                        Ok(resp) => resp.status,
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    // At least RELOADS reloads, and more (up to MAX_RELOADS) until one has reset a callout:
    // a run in which no reload hit a callout in flight would prove nothing.
    let mut reloads = 0;
    while reloads < RELOADS || (reloads < MAX_RELOADS && retried(&env) == 0) {
        thread::sleep(BETWEEN_RELOADS);
        nginx.reload();
        reloads += 1;
    }
    thread::sleep(BETWEEN_RELOADS);
    stop.store(true, Ordering::Relaxed);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for client in clients {
        for (status, n) in client.join().expect("client thread") {
            *statuses.entry(status).or_default() += n;
        }
    }
    let total: usize = statuses.values().sum();
    let allowed = statuses.get(&200).copied().unwrap_or(0);
    let text = env.prometheus_settled();
    let retries = prometheus_value(&text, "nebula_authz_callout_retries");
    eprintln!(
        "{total} requests through {reloads} reloads: statuses {statuses:?}, retries by Envoy {:?} (overflow {:?}), \
         by the filter {retries:?}",
        envoy_retries(&env),
        envoy_stat(&env, "cluster.auth.upstream_rq_retry_overflow"),
    );
    assert!(total >= CLIENTS * RELOADS, "the load was real: {total} requests");
    assert_eq!(
        allowed,
        total,
        "every request of an allowed user must be allowed through {reloads} nginx reloads; statuses \
         (0: no response, 1: a 200 not from the upstream) {statuses:?}\nEnvoy log tail:\n{}",
        env.log_tail()
    );
    // Every allowed request went upstream exactly once (plus the first one).
    assert_eq!(env.upstream.count(), total + 1, "upstream requests");
    // The reloads did reset callouts (else this test proves nothing): Envoy retried them,
    // or, when Envoy's retry was reset too, the filter did.
    let envoy = envoy_retries(&env);
    assert!(
        envoy.unwrap_or(0) + retries.unwrap_or(0) > 0,
        "no callout was reset: Envoy retries {envoy:?}, filter retries {retries:?}\n{text}"
    );
}

/// Callouts retried so far, by Envoy or by the filter.
fn retried(env: &Env) -> u64 {
    let filter = prometheus_value(&env.prometheus(), "nebula_authz_callout_retries").unwrap_or(0);
    envoy_retries(env).unwrap_or(0) + filter
}

/// Envoy's count of retries on the `auth` cluster (`cluster.auth.upstream_rq_retry`).
fn envoy_retries(env: &Env) -> Option<u64> {
    envoy_stat(env, "cluster.auth.upstream_rq_retry")
}

fn envoy_stat(env: &Env, name: &str) -> Option<u64> {
    let stats = RawRequest::get(format!("/stats?filter=^{name}$")).send(env.admin_port).text();
    stats.trim().rsplit_once(": ")?.1.parse().ok()
}
