//! 2. Every row of tests/data/paths.tsv through real Envoy with `Bearer deny`:
//!    `public` rows reach the upstream without a callout; `protected` rows never reach
//!    the upstream, and are either sent to the auth service (401 from the mock) or
//!    rejected by Envoy itself (a 4xx without callout).

use nebula_authz_tests::paths;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto};

over_h1_and_h2!(paths_tsv_replayed_through_envoy);

/// Over h2 each target is sent byte for byte as `:path` (hand-built frames), so rows an
/// h2 client library would refuse still reach Envoy's codec.
fn paths_tsv_replayed_through_envoy(proto: Proto) {
    let env = Env::start_default_over(proto);
    assert_eq!(paths::load().len(), 66, "paths.tsv should hold 66 rows");
    let (report, failures) = paths::replay(&env);
    eprintln!("paths.tsv through Envoy over {proto:?}:\n{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} paths.tsv rows misbehaved:\n{}\n\nfull report:\n{}\n\nEnvoy log tail:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n"),
        report.join("\n"),
        env.log_tail()
    );

    // Protected control with a valid identity.
    let resp = env.get_as("/api/flows", "allow:alice");
    env.assert_allowed_as("protected control /api/flows", &resp, "alice");
}

/// The Prefect preset (tight public templates) as shipped.
fn prefect_preset() -> Env {
    let path = nebula_authz_tests::repo_root().join("envoy/presets/prefect.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Env::start(&json)
}

fn assert_replay(what: &str, env: &Env, cases: &[paths::PathCase]) {
    let (report, failures) = paths::replay_cases(env, cases);
    assert!(
        failures.is_empty(),
        "{what}: {} of {} rows misbehaved:\n{}\n\nfull report:\n{}\n\nEnvoy log tail:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n"),
        report.join("\n"),
        env.log_tail()
    );
}

#[test]
fn hostile_paths_and_prefix_shapes_against_both_templates() {
    let seed = Env::start_default();
    assert_replay("paths_prefix.tsv, default templates", &seed, &paths::load_prefix(paths::Templates::Default));
    drop(seed);
    let tight = prefect_preset();
    assert_replay("paths.tsv, Prefect preset", &tight, &paths::load());
    assert_replay("paths_prefix.tsv, Prefect preset", &tight, &paths::load_prefix(paths::Templates::Tight));
}
