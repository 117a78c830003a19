//! The per-request log lines (docs/operations.md "Log lines"): a deny at info, a
//! fail-closed at warn, a public or allowed request at debug; each names the context id,
//! `METHOD /path` (policy/request_line.rs: no query, escaped, cut) and the reason. Never a
//! header value, token or cookie. Every line sits behind `log_enabled!`, one atomic load:
//! with the level off nothing is read from the host and nothing is formatted.
//!
//! The module's level follows the host's (`proxy_get_log_level`: Envoy's `wasm`
//! component level), read at VM start, on each configuration and every
//! [`REFRESH_EVERY`] streams (wasm/root_context.rs), so `POST /logging?wasm=debug` on
//! Envoy's admin takes effect without a restart.

use std::fmt::Display;

use log::{debug, info, log_enabled, warn, Level};

use crate::flow::host::{Host, Map};
use crate::policy::request_line::RequestLine;
use crate::telemetry::How;

/// Streams between two reads of the host's log level (one host call each time).
pub const REFRESH_EVERY: u32 = 256;

/// Why a request was denied or allowed.
#[derive(Clone, Copy)]
pub enum Via {
    /// This request's callout.
    AuthService,
    /// An identical callout this request waited for (coalescing).
    Coalesced,
    /// A decision from the cache.
    Cache,
    /// An expired allow served because the auth service failed (`stale_if_error`).
    StaleIfError,
}

impl Via {
    /// How the access log names it (telemetry.rs).
    pub fn how(self) -> How {
        match self {
            Via::AuthService => How::Callout,
            Via::Coalesced => How::Coalesced,
            Via::Cache => How::Cache,
            Via::StaleIfError => How::Stale,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Via::AuthService | Via::Coalesced => "auth service",
            Via::Cache => "cached decision",
            Via::StaleIfError => "stale allow (stale_if_error)",
        }
    }
}

pub fn public<H: Host>(host: &H, id: u32, template: &str) {
    if log_enabled!(Level::Debug) {
        with_request(host, |line| debug!("[{id}] {line} public ({template})"));
    }
}

pub fn allowed<H: Host>(host: &H, id: u32, via: Via) {
    if log_enabled!(Level::Debug) {
        with_request(host, |line| debug!("[{id}] {line} allowed: {}", via.as_str()));
    }
}

pub fn denied<H: Host>(host: &H, id: u32, status: u32, via: Via) {
    if log_enabled!(Level::Info) {
        let reason = match via {
            Via::AuthService | Via::Coalesced => format!("auth service answered {status}"),
            _ => format!("{} {status}", via.as_str()),
        };
        with_request(host, |line| info!("[{id}] {line} denied {status}: {reason}"));
    }
}

/// A local denial (e.g. an invalid JWT) with its own reason.
pub fn denied_because<H: Host>(host: &H, id: u32, status: u32, reason: impl Display) {
    if log_enabled!(Level::Info) {
        with_request(host, |line| info!("[{id}] {line} denied {status}: {reason}"));
    }
}

pub fn failed_closed<H: Host>(host: &H, id: u32, status: u32, reason: impl Display) {
    if log_enabled!(Level::Warn) {
        with_request(host, |line| warn!("[{id}] {line} failed closed {status}: {reason}"));
    }
}

/// Reads `:method` and `:path` of the effective context's request (a waiter's too).
fn with_request<H: Host>(host: &H, log: impl FnOnce(RequestLine)) {
    let method = host.header(Map::RequestHeaders, ":method");
    let path = host.header(Map::RequestHeaders, ":path");
    log(RequestLine { method: method.as_deref().unwrap_or(b"-"), path: path.as_deref().unwrap_or(b"-") });
}
