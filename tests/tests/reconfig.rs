//! 11. Live reconfiguration: the filter comes by ECDS from a watched file, as istiod
//!     delivers a WasmPlugin, and changes under load (public paths, upstream headers,
//!     cache on/off, a new module file, an invalid config, a module that fails to load).
//!     No request fails open; an accepted change takes effect; a refused one leaves the
//!     old filter serving (Envoy counts it in `update_rejected`); a cached decision is never
//!     served under another configuration.

use std::path::{Path, PathBuf};

use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::soak::Load;
use nebula_authz_tests::{Env, Response, TempDir};

/// A million slots: the load's one-off credentials would otherwise overwrite the token's
/// slot now and then (a slot collision is a miss by design, see docs "Cache").
const BASE: &str = r#"{"auth": {"cluster": "auth", "timeout_ms": 1000, "forward_auth": false},
    "cache": {"entries": 1048576, "default_ttl": 60, "negative_ttl": 1}}"#;
/// BASE plus a public path and one upstream header.
const CHANGED: &str = r#"{"auth": {"cluster": "auth", "timeout_ms": 1000, "forward_auth": false,
    "upstream_headers": ["x-nebula-actor-id"]},
    "public_paths": ["/api/health", "/api/flows/open"],
    "cache": {"entries": 1048576, "default_ttl": 60, "negative_ttl": 1}}"#;
/// CHANGED without the cache.
const UNCACHED: &str = r#"{"auth": {"cluster": "auth", "timeout_ms": 1000, "forward_auth": false,
    "upstream_headers": ["x-nebula-actor-id"]},
    "public_paths": ["/api/health", "/api/flows/open"]}"#;
const INVALID: &str = r#"{"auth": {"cluster": "auth", "timout_ms": 5}}"#;
const TOKEN: &str = "allow:reconf";
/// Not a timing assertion: how long the workers get to pick up a pushed version.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// A copy of the module with one more custom section: other bytes (a new VM, as when
/// Istio pulls a new image), the same code.
fn module_copy(wasm: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(wasm).expect("read the module");
    let name = b"nebula-authz-test-copy";
    let payload = b"2";
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("nebula_authz_copy.wasm");
    std::fs::write(&path, bytes).expect("write the module copy");
    path
}

/// An allowed request as the echo upstream saw it (the load makes `upstream.last()` racy):
/// 200 proxied, and the identity headers the upstream got.
fn allowed(env: &Env, case: &str, resp: &Response) -> serde_json::Value {
    env.check(resp.status == 200 && resp.proxied(), &format!("{case}: expected 200 from the upstream"), resp);
    let echo = resp.json();
    env.check(echo["headers"]["x-nebula-actor-id"] == serde_json::json!(["reconf"]), &format!("{case}: actor"), resp);
    echo["headers"].clone()
}

/// Pushes a version and waits for Envoy's verdict, then for the workers: the stats move
/// on the main thread, each worker takes the new filter a moment later.
fn push(env: &Env, config: &str, wasm: &Path) -> bool {
    let before = env.ecds_counts();
    env.push_filter(config, wasm);
    let accepted = env.wait_ecds(before);
    std::thread::sleep(SETTLE);
    accepted
}

#[test]
fn config_changes_under_load_never_fail_open() {
    let wasm = Tools::locate(true).wasm;
    let scratch = TempDir::new("nebula-authz-reconfig");
    let copy = module_copy(&wasm, scratch.path());
    let garbage = scratch.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 this is not a module").expect("write garbage module");

    let env = Env::builder().ecds().concurrency(2).plugin_config(BASE).start();
    let load = Load::start(&env, 4, true, false);
    let t = || env.get_as("/api/flows/t", TOKEN);

    // Version 1: the token is allowed by a callout, then from the cache.
    let headers = allowed(&env, "v1: first", &t());
    assert_eq!(headers["x-nebula-actor-permissions"], serde_json::json!(["read,write"]), "v1: all four headers");
    allowed(&env, "v1: cached", &t());
    assert_eq!(load.callouts_for(TOKEN), 1, "v1: the second request should be a cache hit");

    // A new module file, the same configuration: accepted; shared data (the cache)
    // belongs to the vm_id and survives the new VM, and the key (same config) matches.
    assert!(push(&env, BASE, &copy), "a copy of the module was refused; log tail:\n{}", env.log_tail());
    allowed(&env, "new module", &t());
    let after_swap = load.callouts_for(TOKEN);
    assert_eq!(after_swap, 1, "same configuration on a new module: the cached decision should still answer");

    // A changed configuration takes effect, and the old decision is not served.
    load.also_public("/api/flows/open");
    assert!(push(&env, CHANGED, &copy), "CHANGED was refused; log tail:\n{}", env.log_tail());
    let resp = env.get_as("/api/flows/open", "deny");
    env.check(resp.status == 200 && resp.proxied(), "CHANGED: /api/flows/open is public now", &resp);
    let headers = allowed(&env, "CHANGED", &t());
    assert!(headers["x-nebula-actor-permissions"].is_null(), "CHANGED: only the actor id goes upstream: {headers}");
    assert_eq!(
        load.callouts_for(TOKEN),
        after_swap + 1,
        "a decision cached under the old configuration was served under the new one"
    );

    // An invalid configuration and a module that does not load are refused; CHANGED
    // keeps serving (its public path, its cached decision).
    let (_, fails) = env.ecds_counts();
    assert!(!push(&env, INVALID, &copy), "an invalid configuration was accepted");
    assert!(!push(&env, CHANGED, &garbage), "a module that cannot load was accepted");
    assert_eq!(env.ecds_counts().1, fails + 2, "Envoy should count both refusals in update_rejected");
    let log = env.log();
    assert!(log.contains("auth.timout_ms"), "the filter should name the bad field; log tail:\n{}", env.log_tail());
    let resp = env.get_as("/api/flows/open", "deny");
    env.check(resp.status == 200 && resp.proxied(), "refused update: CHANGED still serves", &resp);
    let before = load.callouts_for(TOKEN);
    allowed(&env, "refused update", &t());
    let wasm_lines: Vec<&str> = log.lines().filter(|l| l.contains("wasm") && !l.contains("]   ")).collect();
    assert_eq!(
        load.callouts_for(TOKEN),
        before,
        "refused update: CHANGED's cache still answers; wasm log:\n{}\n{}",
        wasm_lines.join("\n"),
        env.stats("wasm|nebula")
    );

    // Cache off: every request is a callout.
    assert!(push(&env, UNCACHED, &wasm), "UNCACHED was refused; log tail:\n{}", env.log_tail());
    let before = load.callouts_for(TOKEN);
    for _ in 0..2 {
        allowed(&env, "UNCACHED", &t());
    }
    assert_eq!(load.callouts_for(TOKEN), before + 2, "UNCACHED: one callout per request");

    let upstream = load.upstream();
    let outcome = load.stop();
    eprintln!(
        "reconfiguration under load: {} requests, {upstream} reached the upstream, statuses {:?}, ECDS counts {:?}",
        outcome.requests,
        outcome.statuses,
        env.ecds_counts()
    );
    assert!(outcome.requests > 0, "the load sent nothing");
    // A swap never leaves a request without a filter (Envoy's 500 "no filter config")
    // or with a failed VM (503).
    let server_errors: Vec<_> = outcome.statuses.iter().filter(|(s, _)| *s >= 500 || *s == 0).collect();
    assert!(server_errors.is_empty(), "requests failed during reconfiguration: {server_errors:?}");
    assert!(outcome.bypasses.is_empty(), "bypasses during reconfiguration:\n{}", outcome.bypasses.join("\n"));
    assert!(outcome.leaks.is_empty(), "identity leaks during reconfiguration:\n{}", outcome.leaks.join("\n"));
    assert!(outcome.wrong_answers.is_empty(), "denied requests let through:\n{}", outcome.wrong_answers.join("\n"));
    assert_eq!(outcome.body_errors, 0, "POST bodies changed during reconfiguration");
}
