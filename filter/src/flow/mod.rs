//! The request flow, host-independent: one [`request::Request`] per http context (its
//! steps listed once in `Request::run`, each step in [`steps`]), one [`worker::Worker`]
//! per VM owned by the root context ([`root_tasks`]: its tick and its own calls), and
//! the host behind one trait ([`host::Host`]). Plain Rust: the wasm build implements the
//! host over proxy-wasm (wasm/), the tests in memory (`mock_host`).
//!
//! - [`host`]: the port; [`header_map`]: the host's header wire format, read in place.
//! - [`outcome`]: what a step did ([`outcome::Step`]) and what a paused request waits for.
//! - [`worker`]: what a worker keeps between requests; [`counters`]: its counters.
//! - [`reply`], [`request_log`], [`request_info`]: resume or reply, the log lines, the
//!   properties `headers_to_add` prints; [`decision_log`]: each request's decision for
//!   Envoy's access log and the latency histograms.
//! - [`jwks_fetch`], [`discovery_fetch`]: remote JWKS through shared data.

pub mod counters;
pub mod decision_log;
pub mod discovery_fetch;
pub mod header_map;
pub mod host;
pub mod jwks_fetch;
#[cfg(test)]
pub mod mock_host;
pub mod outcome;
pub mod reply;
pub mod request;
pub mod request_info;
pub mod request_log;
pub mod root_tasks;
pub mod steps;
pub mod worker;

#[cfg(test)]
mod tests;

/// What a host callback answers: let the request (or its body) go on, or hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}
