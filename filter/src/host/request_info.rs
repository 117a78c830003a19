//! The request facts `auth.headers_to_add`'s command operators print
//! (policy/substitution.rs), as proxy-wasm properties: each read only when an operator
//! asks for it, at most once per callout. `source.address` is the one the access step
//! or X-Forwarded-For already read, when they did: one read per request.

use std::borrow::Cow;

use proxy_wasm::hostcalls;

use crate::host::steps::access;
use crate::policy::substitution::RequestInfo;

/// One callout's properties, read lazily (`None`: not read yet).
#[derive(Default)]
pub struct HostRequestInfo {
    source: Option<Option<String>>,
    destination: Option<Option<String>>,
    protocol: Option<Option<String>>,
    time: Option<Option<i64>>,
}

impl HostRequestInfo {
    /// With the `source.address` an earlier step read (`None`: not read).
    pub fn with_source(source: Option<Option<String>>) -> Self {
        HostRequestInfo { source, ..Default::default() }
    }
}

impl RequestInfo for HostRequestInfo {
    fn source_address(&mut self) -> Option<Cow<'_, str>> {
        self.source.get_or_insert_with(access::address).as_deref().map(Cow::Borrowed)
    }

    fn destination_address(&mut self) -> Option<Cow<'_, str>> {
        self.destination.get_or_insert_with(|| text(&["destination", "address"])).as_deref().map(Cow::Borrowed)
    }

    fn protocol(&mut self) -> Option<Cow<'_, str>> {
        self.protocol.get_or_insert_with(|| text(&["request", "protocol"])).as_deref().map(Cow::Borrowed)
    }

    /// Envoy hands a timestamp property to Wasm as Unix nanoseconds, a little-endian
    /// 64-bit integer (Envoy's attributes documentation: "timestamps ... approximated to
    /// nano-seconds").
    fn start_time_ns(&mut self) -> Option<i64> {
        *self.time.get_or_insert_with(|| {
            let bytes = property(&["request", "time"])?;
            Some(i64::from_le_bytes(bytes.as_slice().try_into().ok()?))
        })
    }
}

fn text(path: &[&str]) -> Option<String> {
    property(path).and_then(|bytes| String::from_utf8(bytes).ok())
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}
