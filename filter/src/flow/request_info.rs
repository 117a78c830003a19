//! The request facts `auth.headers_to_add`'s command operators print
//! (policy/substitution.rs), as proxy-wasm properties: each read only when an operator
//! asks for it, at most once per callout. `source.address` is the one the access step
//! or X-Forwarded-For already read, when they did: one read per request.

use std::borrow::Cow;

use crate::flow::host::Host;
use crate::policy::substitution::RequestInfo;

/// One callout's properties, read lazily (`None`: not read yet).
pub struct HostRequestInfo<'a, H> {
    host: &'a H,
    source: Option<Option<String>>,
    destination: Option<Option<String>>,
    protocol: Option<Option<String>>,
    time: Option<Option<i64>>,
}

impl<'a, H: Host> HostRequestInfo<'a, H> {
    /// With the `source.address` an earlier step read (`None`: not read).
    pub fn with_source(host: &'a H, source: Option<Option<String>>) -> Self {
        HostRequestInfo { host, source, destination: None, protocol: None, time: None }
    }
}

/// proxy-wasm `source.address` (`ip:port`).
pub fn source_address<H: Host>(host: &H) -> Option<String> {
    text(host, &["source", "address"])
}

impl<H: Host> RequestInfo for HostRequestInfo<'_, H> {
    fn source_address(&mut self) -> Option<Cow<'_, str>> {
        let host = self.host;
        self.source.get_or_insert_with(|| source_address(host)).as_deref().map(Cow::Borrowed)
    }

    fn destination_address(&mut self) -> Option<Cow<'_, str>> {
        let host = self.host;
        self.destination.get_or_insert_with(|| text(host, &["destination", "address"])).as_deref().map(Cow::Borrowed)
    }

    fn protocol(&mut self) -> Option<Cow<'_, str>> {
        let host = self.host;
        self.protocol.get_or_insert_with(|| text(host, &["request", "protocol"])).as_deref().map(Cow::Borrowed)
    }

    /// Envoy hands a timestamp property to Wasm as Unix nanoseconds, a little-endian
    /// 64-bit integer (Envoy's attributes documentation: "timestamps ... approximated to
    /// nano-seconds").
    fn start_time_ns(&mut self) -> Option<i64> {
        let host = self.host;
        *self.time.get_or_insert_with(|| {
            let bytes = host.property(&["request", "time"])?;
            Some(i64::from_le_bytes(bytes.as_slice().try_into().ok()?))
        })
    }
}

fn text<H: Host>(host: &H, path: &[&str]) -> Option<String> {
    host.property(path).and_then(|bytes| String::from_utf8(bytes).ok())
}
