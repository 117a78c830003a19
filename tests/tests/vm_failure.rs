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
