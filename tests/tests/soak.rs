//! 10. The soak with auth-service faults (see `nebula_authz_tests::soak`): cache off and
//!     on, each through 500s, refused connections, a hang past the timeout and garbage.
//!     `make test` runs it for ~30 s; `make soak` for minutes (`NEBULA_SOAK_SECONDS`).

use std::time::Duration;

use nebula_authz_tests::soak::{self, Plan, PHASES};
use nebula_authz_tests::Env;

/// Allowed growth of Envoy's RSS over a run: loose, to catch a leak, not to measure.
const RSS_BOUND_KIB: u64 = 100 * 1024;
const TIMEOUT_MS: u64 = 1000;

#[test]
fn soak_through_auth_faults() {
    let total: f64 = std::env::var("NEBULA_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30.0);
    let phase = Duration::from_secs_f64(total / 2.0 / PHASES.len() as f64);
    let plans = [
        Plan {
            name: "cache off",
            plugin_config: format!(r#"{{"auth": {{"cluster": "auth", "timeout_ms": {TIMEOUT_MS}}}}}"#),
            cache: false,
            timeout: Duration::from_millis(TIMEOUT_MS),
            phase,
            workers: 6,
        },
        Plan {
            name: "cache on",
            // forward_auth off: one decision per credential, so the pool credentials hit.
            plugin_config: format!(
                r#"{{"auth": {{"cluster": "auth", "timeout_ms": {TIMEOUT_MS}, "forward_auth": false}},
                    "cache": {{"default_ttl": 2, "negative_ttl": 1}}}}"#
            ),
            cache: true,
            timeout: Duration::from_millis(TIMEOUT_MS),
            phase,
            workers: 6,
        },
    ];
    let mut runs = Vec::new();
    let mut violations = Vec::new();
    for plan in &plans {
        let mut env = Env::builder().concurrency(2).plugin_config(&plan.plugin_config).start();
        let figures = soak::run(&env, plan);
        assert!(env.alive(), "{}: Envoy exited during the soak; log tail:\n{}", plan.name, env.log_tail());
        violations.extend(figures.violations(plan.timeout, RSS_BOUND_KIB));
        if !violations.is_empty() {
            violations.push(format!("{} Envoy log tail:\n{}", plan.name, env.log_tail()));
        }
        runs.push(figures);
    }
    eprintln!("soak, {total:.0} s in all, phases of {phase:?}:\n{}", soak::table(&runs));
    assert!(violations.is_empty(), "soak violations:\n{}\n\n{}", violations.join("\n"), soak::table(&runs));
}
