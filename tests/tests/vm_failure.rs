//! 12. When the VM cannot start. `fail_open: false` in envoy/envoy.yaml (Istio's
//!     `failStrategy: FAIL_CLOSE`): a module that fails to load never lets a request
//!     through unfiltered.
//!     * A static listener: Envoy refuses the whole configuration (it does not start).
//!     * ECDS (how Istio delivers a WasmPlugin): Envoy starts, the filter has no valid
//!       config, and every request on the listener gets a local 500 until a loadable
//!       module arrives; then requests are filtered as usual.

use nebula_authz_tests::{Env, TempDir};

fn garbage_module(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0 truncated, not a module").expect("write the broken module");
    path
}

#[test]
fn a_module_that_fails_to_load_keeps_a_static_listener_from_starting() {
    let dir = TempDir::new("nebula-authz-vm-failure");
    let failure = Env::builder().wasm_file(&garbage_module(&dir)).start_expect_failure();
    assert!(failure.status.is_some_and(|s| !s.success()), "Envoy should exit with an error: {failure:?}");
    assert!(
        failure.log.contains("Unable to create Wasm") || failure.log.contains("Failed to load Wasm"),
        "Envoy should say the module did not load: {failure:?}"
    );
    assert_eq!(failure.upstream.count() + failure.auth.count(), 0, "a request got through");
}

#[test]
fn a_module_that_fails_to_load_by_ecds_fails_every_request_closed() {
    let dir = TempDir::new("nebula-authz-vm-failure");
    let broken = garbage_module(&dir);
    let env = Env::builder().ecds().wasm_file(&broken).start();
    for (path, script) in [("/api/flows", "allow:alice"), ("/api/health", "deny"), ("/api/flows", "deny")] {
        let resp = env.get_as(path, script);
        env.check(resp.status == 500 && !resp.proxied(), &format!("{path} without a filter config: local 500"), &resp);
    }
    assert_eq!(env.upstream.count() + env.auth.count(), 0, "a request went past the missing filter");
    let (accepted, refused) = env.ecds_counts();
    assert_eq!((accepted, refused > 0), (0, true), "Envoy should count the refused module");

    // A loadable module arrives: filtering as usual.
    let wasm = nebula_authz_tests::envoy::Tools::locate(true).wasm;
    let before = env.ecds_counts();
    env.push_filter(r#"{"auth": {"cluster": "auth"}}"#, &wasm);
    assert!(env.wait_ecds(before), "the good module was refused; log tail:\n{}", env.log_tail());
    env.assert_allowed_as("after a good module", &env.get_as("/api/flows", "allow:alice"), "alice");
    env.assert_denied("after a good module", &env.get_as("/api/flows", "deny"), 1);
}

/// The smallest proxy-wasm module Envoy runs that traps in `on_request_headers`: a VM
/// that fails at run time (as a panic in a filter would).
const TRAPPING_MODULE: &str = r#"(module
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable))"#;

/// A VM that traps: with `fail_open: false` (envoy.yaml, Istio's FAIL_CLOSE), and with
/// `failure_policy` FAIL_CLOSED or FAIL_RELOAD, no request reaches the upstream; with
/// FAIL_OPEN (Istio's FAIL_OPEN) requests after the failure skip the filter and do.
#[test]
fn a_vm_that_fails_at_run_time_fails_closed_unless_configured_to_fail_open() {
    let dir = TempDir::new("nebula-authz-vm-failure");
    let module = dir.path().join("trap.wasm");
    std::fs::write(&module, wat::parse_str(TRAPPING_MODULE).expect("assemble the trapping module"))
        .expect("write the trapping module");
    let mut report = Vec::new();
    for policy in [None, Some("FAIL_CLOSED"), Some("FAIL_RELOAD"), Some("FAIL_OPEN")] {
        let mut builder = Env::builder().wasm_file(&module);
        if let Some(policy) = policy {
            builder = builder.failure_policy(policy);
        }
        let mut env = builder.start();
        let mut statuses: Vec<u16> = (0..3).map(|_| env.get_as("/api/flows", "deny").status).collect();
        if policy == Some("FAIL_RELOAD") {
            // Envoy reloads the failed VM after its backoff (1 s): keep asking until it did;
            // the new VM traps again, so nothing changes for the requests.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while env.stat("wasm.nebula-authz.vm_reload_success").unwrap_or(0) == 0 {
                assert!(std::time::Instant::now() < deadline, "FAIL_RELOAD never reloaded the VM");
                std::thread::sleep(std::time::Duration::from_millis(200));
                statuses.push(env.get_as("/api/flows", "deny").status);
            }
            statuses.push(env.get_as("/api/flows", "deny").status);
        }
        let reached = env.upstream.count();
        let reloads = env.stat("wasm.nebula-authz.vm_reload_success").unwrap_or(0);
        report
            .push(format!("{policy:?}: statuses {statuses:?}, reached the upstream {reached}, VMs reloaded {reloads}"));
        assert!(env.alive(), "Envoy exited after the trap; log tail:\n{}", env.log_tail());
        assert!(env.log().contains("unreachable"), "the trap should be logged; log tail:\n{}", env.log_tail());
        match policy {
            Some("FAIL_OPEN") => {
                assert!(reached > 0, "FAIL_OPEN lets requests through once the VM failed: {report:?}")
            }
            _ => {
                assert_eq!(reached, 0, "{policy:?}: a request reached the upstream past a failed VM: {report:?}");
                assert!(statuses.iter().all(|s| *s >= 500), "{policy:?}: expected 5xx: {report:?}");
            }
        }
    }
    eprintln!("a trapping VM:\n{}", report.join("\n"));
}
