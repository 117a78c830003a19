//! The module exports exactly the `proxy_on_*` callbacks the filter implements
//! (third_party/proxy-wasm: one SDK feature per callback, listed in filter/Cargo.toml).
//! Envoy enters the VM only for exported callbacks, so a callback missing here would be
//! silently never called, and one too many costs an entry per request.

use std::collections::BTreeSet;

use nebula_authz_tests::envoy::Tools;

/// What wasm/http_context.rs and wasm/root_context.rs implement, plus what the SDK always needs
/// (context create/delete, the allocator). Not `proxy_on_done`: the http and root contexts
/// release on delete (their `Drop`).
const EXPECTED: [&str; 11] = [
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_delete",
    "proxy_on_http_call_response",
    "proxy_on_memory_allocate",
    "proxy_on_request_body",
    "proxy_on_request_headers",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_tick",
    "proxy_on_vm_start",
];

fn function_exports(module: &[u8]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ExportSection(exports) = payload.expect("the module parses") {
            for export in exports {
                let export = export.expect("an export entry parses");
                if export.kind == wasmparser::ExternalKind::Func {
                    names.insert(export.name.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn the_module_exports_exactly_the_callbacks_it_implements() {
    let tools = Tools::locate(true);
    let module = std::fs::read(&tools.wasm).expect("the module is readable");
    let callbacks: BTreeSet<String> =
        function_exports(&module).into_iter().filter(|name| name.starts_with("proxy_on_")).collect();
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(callbacks, expected, "exported callbacks of {}", tools.wasm.display());
    // Not exported: the SDK defaults Envoy would otherwise enter the VM for per request.
    for absent in ["proxy_on_done", "proxy_on_log", "proxy_on_response_body", "proxy_on_response_trailers"] {
        assert!(!callbacks.contains(absent), "{absent} is exported");
    }
}

/// The vendored SDK's host calls hand a refused call back as `Err(status)`; upstream they
/// panic on any status they do not expect, which in a wasm VM traps and takes every
/// request of the worker with it (third_party/proxy-wasm/README.md). The filter fails
/// such a request closed instead.
#[test]
fn the_vendored_host_calls_return_errors_instead_of_panicking() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../third_party/proxy-wasm/src/hostcalls.rs");
    let source = std::fs::read_to_string(path).expect("the vendored SDK is readable");
    let functions = source.matches("\npub fn ").count();
    let refused = source.matches("status => Err(status),").count();
    assert!(functions >= 50 && refused >= 52, "{functions} host calls, {refused} returning the refusal");
    assert!(!source.contains("unexpected status"), "a host call still panics on an unexpected status");
}
