//! The proxy-wasm adapter (wasm build only), thin: the root context
//! ([`root_context`]: configuration, the worker, its tick), the http context
//! ([`http_context`]: each callback hands the request's state to flow/request.rs), and
//! the host calls ([`proxy_wasm_host`]: flow/host.rs's trait over the ABI, no decisions).
//! `proxy_wasm::hostcalls` appears in [`proxy_wasm_host`] only.

mod http_context;
pub mod proxy_wasm_host;
mod root_context;
