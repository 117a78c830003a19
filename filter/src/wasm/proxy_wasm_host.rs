//! The host over proxy-wasm's ABI: flow/host.rs's [`Host`] as `hostcalls` (never the
//! SDK's trait helpers, which `unwrap()`: a refused call becomes an `Err` the flow turns
//! into a fail-closed reply, not a trap that would take down every request on this
//! worker), and what only the root context asks (plugin configuration, log level,
//! Envoy's `verify_signature`). No decisions here.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::flow::host::{Body, Host, Map, Refused};
use crate::jwt::signature::{self, HostCrypto};

/// The host of the module's VM: every call acts on the effective context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyWasm;

fn refused(status: Status) -> Refused {
    refused_code(status as u32)
}

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::RequestTrailers => MapType::HttpRequestTrailers,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CalloutAnswer => MapType::HttpCallResponseHeaders,
    }
}

// The SDK's `get_map_bytes` copies every header into a `String` and a `Vec` (and panics on
// an unexpected status); `header_map` takes the host's buffer as it is, for
// flow/header_map.rs's `parse`.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

/// The host's clock, Unix ns (0 if unavailable: every token then looks expired). The
/// SDK's `get_current_time` goes through `SystemTime` and 128-bit arithmetic to the same
/// number, on every cache lookup and twice per callout.
fn now_ns() -> u64 {
    let mut ns: u64 = 0;
    // SAFETY: the host writes one u64 at the pointer it is given.
    match unsafe { proxy_get_current_time_nanoseconds(&mut ns) } {
        STATUS_OK => ns,
        _ => 0,
    }
}

/// proxy-wasm's `Status` codes (the ABI's numbers: the SDK's `types::Status`) the raw
/// calls above answer.
const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;

/// A status as the ABI numbers it (the SDK's `types::Status`), what the SDK's calls and
/// the raw ones above answer.
fn refused_code(code: u32) -> Refused {
    match code {
        STATUS_NOT_FOUND => Refused::NotFound,
        2 => Refused::BadArgument,
        3 => Refused::SerializationFailure,
        4 => Refused::ParseFailure,
        7 => Refused::Empty,
        8 => Refused::CasMismatch,
        10 => Refused::InternalFailure,
        _ => Refused::Unimplemented,
    }
}

impl Host for ProxyWasm {
    #[inline]
    fn header_map(&self, map: Map) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and size it allocated through the SDK's
        // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes) or leaves it null.
        unsafe {
            if proxy_get_header_map_pairs(map_type(map) as u32, &mut data, &mut size) != 0 {
                return None;
            }
            if data.is_null() {
                return Some(Vec::new());
            }
            Some(Vec::from_raw_parts(data, size, size))
        }
    }

    #[inline]
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(map_type(map), name).ok().flatten()
    }

    #[inline]
    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), Refused> {
        hostcalls::add_map_value_bytes(map_type(map), name, value).map_err(refused)
    }

    #[inline]
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Refused> {
        hostcalls::set_map_value_bytes(map_type(map), name, value).map_err(refused)
    }

    #[inline]
    fn remove_header(&self, map: Map, name: &str) -> Result<(), Refused> {
        hostcalls::remove_map_value(map_type(map), name).map_err(refused)
    }

    #[inline]
    fn body(&self, body: Body, len: usize) -> Result<Vec<u8>, Refused> {
        let buffer = match body {
            Body::Request => BufferType::HttpRequestBody,
            Body::CalloutAnswer => BufferType::HttpCallResponseBody,
        };
        hostcalls::get_buffer(buffer, 0, len).map(Option::unwrap_or_default).map_err(refused)
    }

    #[inline]
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused> {
        hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout).map_err(refused)
    }

    #[inline]
    fn reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Refused> {
        hostcalls::send_http_response(status, headers, body).map_err(refused)
    }

    #[inline]
    fn resume(&self) -> Result<(), Refused> {
        hostcalls::resume_http_request().map_err(refused)
    }

    #[inline]
    fn enter(&self, context: u32) -> Result<(), Refused> {
        hostcalls::set_effective_context(context).map_err(refused)
    }

    #[inline]
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Refused> {
        hostcalls::get_shared_data(key).map_err(refused)
    }

    #[inline]
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Refused> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(refused)
    }

    /// The path is joined with NULs on the stack (the SDK's `get_property` builds two
    /// vectors for it, on the path of every callout that sends X-Forwarded-For).
    #[inline]
    fn read_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Refused> {
        let mut joined = [0u8; 64];
        let mut len = 0;
        for (i, part) in path.iter().enumerate() {
            let at = len + usize::from(i > 0);
            let Some(slot) = joined.get_mut(at..at + part.len()) else {
                return hostcalls::get_property(path.to_vec()).map_err(refused);
            };
            slot.copy_from_slice(part.as_bytes());
            len = at + part.len();
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: as `header_map`: the host writes a pointer and size it allocated through
        // the SDK's `proxy_on_memory_allocate`, or leaves it null.
        unsafe {
            match proxy_get_property(joined.as_ptr(), len, &mut data, &mut size) {
                STATUS_OK if data.is_null() => Ok(None),
                STATUS_OK => Ok(Some(Vec::from_raw_parts(data, size, size))),
                STATUS_NOT_FOUND => Ok(None),
                code => Err(refused_code(code)),
            }
        }
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        now_ns() / 1_000_000
    }

    #[inline]
    fn now_us(&self) -> u64 {
        now_ns() / 1_000
    }

    /// A one-segment property path is the name itself (the SDK's `set_property` would
    /// build it in a new `Vec` on every call).
    #[inline]
    fn set_filter_state(&self, name: &str, value: &[u8]) -> Result<(), Refused> {
        // SAFETY: both slices outlive the call; the host copies them.
        match unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) } {
            0 => Ok(()),
            _ => Err(Refused::InternalFailure),
        }
    }

    #[inline]
    fn set_tick_period(&self, period: Duration) -> Result<(), Refused> {
        hostcalls::set_tick_period(period).map_err(refused)
    }

    #[inline]
    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    #[inline]
    fn add_to_counter(&self, id: u32, n: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    #[inline]
    fn define_histogram(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Histogram, name).ok()
    }

    #[inline]
    fn record_histogram(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl ProxyWasm {
    /// The plugin configuration's bytes (`on_configure`).
    pub fn plugin_configuration(&self) -> Result<Vec<u8>, Refused> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .map(Option::unwrap_or_default)
            .map_err(refused)
    }

    /// Sets the module's max log level to the host's (`proxy_get_log_level`: Envoy's
    /// `wasm` component level); keeps the current one if the host has none.
    pub fn follow_log_level(&self) {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
    }
}

const FUNCTION: &str = "verify_signature";

/// The host's signature check: Envoy's `verify_signature` foreign function (its
/// BoringSSL, the code `jwt_authn` runs), used for RSA PKCS#1 and ECDSA once a probe
/// shows it answers right (jwt/signature.rs). ECDSA is checked nowhere else.
#[derive(Debug)]
pub struct EnvoyCrypto;

impl HostCrypto for EnvoyCrypto {
    fn verify(&self, hash: &str, spki: &[u8], signature: &[u8], signed: &[u8]) -> Option<bool> {
        let args = signature::verify_arguments(hash, spki, signature, signed);
        match hostcalls::call_foreign_function(FUNCTION, Some(&args)) {
            Ok(Some(result)) => signature::verify_result(&result),
            _ => None,
        }
    }
}

/// The host crypto to use: Envoy's if it passes the probe, else none (RSA then is
/// checked in the module, ECDSA rejected: root_context.rs logs that as an error where
/// the configuration allows ECDSA).
pub fn probe_crypto() -> Option<Box<dyn HostCrypto>> {
    if signature::host_is_sound(&EnvoyCrypto) {
        info!("JWT: RSA and ECDSA signatures are checked by the host ({FUNCTION})");
        Some(Box::new(EnvoyCrypto))
    } else {
        warn!("JWT: the host has no usable {FUNCTION}; RSA signatures are checked in the module (slower)");
        None
    }
}
