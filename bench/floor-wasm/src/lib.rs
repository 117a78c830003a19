//! The floor of the instruction targets (`make bench-callgrind`): per path, only the host calls that path cannot do
//! without, with no parsing beyond finding a few headers, no routing, no cache key and
//! no counters. What one of its rows costs, no proxy-wasm filter on this Envoy can cost
//! less for the same work; the bench prints each target's bound next to its floor.
//!
//! The plugin configuration names the path, `{"floor": "<kind>"}`:
//!   * `public`: read the request's header map, continue (a public path).
//!   * `jwt`: the map, the clock, one identity header added (a verified token, cached).
//!   * `hit`: the map, the peer address (`source.address`: the X-Forwarded-For the cache
//!     key covers), the clock, the four identity headers the auth service returns added
//!     (a cache hit).
//!   * `callout`: the map, the peer address, one callout with the filter's forwardAuth
//!     headers (X-Forwarded-*, Envoy's retry headers); on its answer, its header map read
//!     and every `x-nebula-*` header of it added, then resume (a callout, allowed).
//!   * `callout-noxf`: the same without X-Forwarded-* and the address read.
//!
//! Bench code: a header it cannot find is sent empty; nothing here is a filter.

#[cfg(target_family = "wasm")]
mod floor {
    use std::cell::Cell;
    use std::time::Duration;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Public,
        Jwt,
        Hit,
        Callout,
        CalloutNoXf,
    }

    const KINDS: [(&str, Kind); 5] = [
        ("public", Kind::Public),
        ("jwt", Kind::Jwt),
        ("hit", Kind::Hit),
        ("callout", Kind::Callout),
        ("callout-noxf", Kind::CalloutNoXf),
    ];

    /// What the bench's auth service answers an allow with (tests/src/bin/bench-backend.rs).
    const IDENTITY: [(&str, &str); 4] = [
        ("x-nebula-actor-id", "bench-user"),
        ("x-nebula-actor-permissions", "read,write"),
        ("x-nebula-ratelimit-config", "{\"limit\":100}"),
        ("x-nebula-log-limit-config", "{\"limit\":10}"),
    ];

    thread_local! {
        static KIND: Cell<Kind> = const { Cell::new(Kind::Public) };
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, size: usize) -> bool {
            let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten();
            let text: String = String::from_utf8_lossy(&config.unwrap_or_default()).split_whitespace().collect();
            match KINDS.iter().find(|(name, _)| text == format!("{{\"floor\":\"{name}\"}}")) {
                Some((_, kind)) => {
                    KIND.with(|k| k.set(*kind));
                    true
                }
                None => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("floor-wasm: unknown configuration {text}"));
                    false
                }
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor;

    impl Context for Floor {
        fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body_size: usize, _trailers: usize) {
            let answer = header_map(MapType::HttpCallResponseHeaders);
            for (name, value) in pairs(&answer) {
                if name.starts_with(b"x-nebula-") {
                    let name = std::str::from_utf8(name).unwrap_or_default();
                    let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value);
                }
            }
            let _ = hostcalls::resume_http_request();
        }
    }

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            let kind = KIND.with(Cell::get);
            let buffer = header_map(MapType::HttpRequestHeaders);
            let request = pairs(&buffer);
            let get = |name: &str| {
                let found = request.iter().find(|(n, _)| *n == name.as_bytes());
                found.and_then(|(_, v)| std::str::from_utf8(v).ok()).unwrap_or_default()
            };
            let address = match kind {
                Kind::Hit | Kind::Callout => hostcalls::get_property(vec!["source", "address"]).ok().flatten(),
                _ => None,
            };
            // `ip:port` → `ip`, borrowed: a floor allocates nothing it does not need.
            let address = std::str::from_utf8(address.as_deref().unwrap_or_default()).unwrap_or_default();
            let peer = address.rsplit_once(':').map_or(address, |(ip, _)| ip);
            match kind {
                Kind::Public => Action::Continue,
                Kind::Jwt | Kind::Hit => {
                    let _ = hostcalls::get_current_time();
                    let added = if kind == Kind::Jwt { &IDENTITY[..1] } else { &IDENTITY[..] };
                    for (name, value) in added {
                        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
                    }
                    Action::Continue
                }
                Kind::Callout | Kind::CalloutNoXf => {
                    let mut callout = vec![
                        (":method", "GET"),
                        (":path", "/"),
                        (":authority", "auth:4300"),
                        ("authorization", get("authorization")),
                    ];
                    if kind == Kind::Callout {
                        callout.extend([
                            ("x-forwarded-method", get(":method")),
                            ("x-forwarded-proto", "http"),
                            ("x-forwarded-host", get(":authority")),
                            ("x-forwarded-uri", get(":path")),
                            ("x-forwarded-for", peer),
                        ]);
                    }
                    callout.extend([("x-envoy-retry-on", "reset,connect-failure"), ("content-length", "0")]);
                    match hostcalls::dispatch_http_call("auth", callout, None, vec![], Duration::from_secs(5)) {
                        Ok(_) => Action::Pause,
                        Err(_) => {
                            let _ = hostcalls::send_http_response(500, vec![], None);
                            Action::Pause
                        }
                    }
                }
            }
        }
    }

    /// One map read in place (as the filter's flow/header_map.rs does).
    fn header_map(map: MapType) -> Vec<u8> {
        #[link(wasm_import_module = "env")]
        extern "C" {
            fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host allocated `size` bytes through the SDK's allocator, or left it null.
        unsafe {
            if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 || data.is_null() {
                return Vec::new();
            }
            Vec::from_raw_parts(data, size, size)
        }
    }

    /// The (name, value) pairs of a serialized map; stops at the first inconsistency.
    fn pairs(buffer: &[u8]) -> Vec<(&[u8], &[u8])> {
        let word =
            |at: usize| buffer.get(at..at + 4).map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize);
        let count = word(0);
        let mut out = Vec::with_capacity(count.min(64));
        let mut at = 4 + count.saturating_mul(8);
        for i in 0..count {
            let (name_len, value_len) = (word(4 + i * 8), word(8 + i * 8));
            let name = buffer.get(at..at + name_len);
            let value = buffer.get(at + name_len + 1..at + name_len + 1 + value_len);
            let (Some(name), Some(value)) = (name, value) else { break };
            out.push((name, value));
            at += name_len + value_len + 2;
        }
        out
    }
}
