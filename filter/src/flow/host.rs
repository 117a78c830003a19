//! The host as the request flow sees it: the one port between the flow (plain Rust,
//! natively tested) and proxy-wasm. The wasm build implements it over the ABI's host
//! calls (wasm/proxy_wasm_host.rs, thin: no decisions); the tests, in memory
//! (flow/mock_host.rs: every call recorded, answers scripted).
//!
//! The flow is generic over it (monomorphised: the wasm build pays no indirection, and
//! the module came out 0.8 % smaller than with host calls spread over the steps), and every
//! method takes `&self`: proxy-wasm's host calls act on the *effective* context, which
//! [`Host::enter`] changes, not on a value the caller holds.
//!
//! Log lines are not part of it: they go through the `log` facade, which the SDK wires
//! to `proxy_log` in the wasm build (natively nothing is installed, so nothing is
//! formatted); a disabled level costs one atomic load.

use std::time::Duration;

/// A header map of the effective context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    /// The headers of the callout's answer, while `on_http_call_response` runs.
    CalloutAnswer,
}

/// A body the host holds for the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The client's request body Envoy buffered while the request paused.
    Request,
    /// The callout's answer, while `on_http_call_response` runs.
    CalloutAnswer,
}

/// Why the host refused a call (proxy-wasm's `Status` other than `Ok`; the names are the
/// ABI's, so the log lines read as before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
}

/// What the request flow asks of the host. Each refusal is an `Err` (or `None`) the
/// flow turns into a fail-closed reply; nothing here may panic.
pub trait Host {
    /// A whole header map in the ABI's serialized form, read with one host call
    /// ([`header_map::parse`](crate::flow::header_map::parse) borrows the pairs from it).
    fn header_map(&self, map: Map) -> Option<Vec<u8>>;
    /// One header's value (the first), `None` when absent or refused.
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), Refused>;
    /// Replaces every value of `name` with `value` (`None`: removes it).
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Refused>;
    fn remove_header(&self, map: Map, name: &str) -> Result<(), Refused>;
    /// The first `len` bytes of `body` (empty when the host has none).
    fn body(&self, body: Body, len: usize) -> Result<Vec<u8>, Refused>;
    /// Sends an HTTP call to `cluster`; its token, answered in `on_http_call_response`.
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused>;
    /// Answers the effective context's client locally; the request never goes upstream.
    fn reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Refused>;
    /// Lets the effective context's paused request go on upstream.
    fn resume(&self) -> Result<(), Refused>;
    /// Makes `context` the effective context: later calls act on its stream (a waiter
    /// settled from another context's callback). `Err` when its stream is gone.
    fn enter(&self, context: u32) -> Result<(), Refused>;
    /// A shared-data value (shared by every worker of this Envoy) and its CAS token.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Refused>;
    /// Writes a shared-data value; with `cas`, only if nobody wrote since that read
    /// ([`Refused::CasMismatch`] otherwise).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Refused>;
    /// A proxy-wasm property (`source.address`, `connection.mtls`...), `None` when absent
    /// or unreadable.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.read_property(path).ok().flatten()
    }
    /// The same, telling a refused read (`Err`) from an absent property (`Ok(None)`), for
    /// readers to whom an unreadable property must not look absent: a rule that selects
    /// requests for a check would otherwise let the request through unchecked.
    fn read_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Refused>;
    /// The host's clock in Unix ms (0 if unavailable: every token then looks expired).
    fn now_ms(&self) -> u64;
    /// The same clock in Unix µs (0 if unavailable), for the time a request spends in
    /// the filter: a cache hit or a public path takes well under a millisecond.
    fn now_us(&self) -> u64;
    /// Writes the effective context's filter state `wasm.<name>` (proxy-wasm
    /// `set_property`; Envoy's access log prints it with `%FILTER_STATE(wasm.<name>:PLAIN)%`).
    fn set_filter_state(&self, name: &str, value: &[u8]) -> Result<(), Refused>;
    /// The root context's tick period (orphaned callouts, JWKS waits and refreshes, counters).
    fn set_tick_period(&self, period: Duration) -> Result<(), Refused>;
    /// Defines a counter; its id, `None` if refused.
    fn define_counter(&self, name: &str) -> Option<u32>;
    /// Adds `n` to counter `id` (a refusal is ignored: a metric never fails a request).
    fn add_to_counter(&self, id: u32, n: u64);
    /// Defines a histogram; its id, `None` if refused.
    fn define_histogram(&self, name: &str) -> Option<u32>;
    /// Records one sample in histogram `id` (a refusal is ignored).
    fn record_histogram(&self, id: u32, value: u64);
}
