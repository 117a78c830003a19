//! The calibration module of `make bench-profile` (bench/profile.py). Envoy's binary has
//! no symbols, so callgrind names its functions by address only. Per request this module
//! calls every host function the filter uses a different number of times ([`CALLS`]);
//! the profile then names each ABI entry point by its call count. Envoy's own trace log
//! (`[vm->host] env.proxy_...`) gives the exact count of each name in the same run.
//!
//! `GET /allow`: the calls, two callouts, then resume. `GET /deny`: the calls, then a
//! local reply. Results of the calls are ignored: only that they happen counts.

#[cfg(target_family = "wasm")]
mod probe {
    use std::time::Duration;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    /// (host function, calls per request): distinct counts, none equal to the callouts'
    /// (2), the resume's (1) or a small multiple of them.
    const CALLS: &[(&str, usize)] = &[
        ("proxy_get_header_map_pairs", 3),
        ("proxy_remove_header_map_value", 4),
        ("proxy_add_header_map_value", 5),
        ("proxy_get_property", 6),
        ("proxy_increment_metric", 7),
        ("proxy_replace_header_map_value", 8),
        ("proxy_get_header_map_value", 18),
        ("proxy_get_shared_data", 10),
        ("proxy_set_shared_data", 11),
        ("proxy_set_header_map_pairs", 12),
        ("proxy_get_buffer_bytes", 13),
        ("proxy_get_current_time_nanoseconds", 14),
        ("proxy_log", 15),
        ("proxy_define_metric", 16),
        // Plus the SDK's own, one per proxy_on_http_call_response.
        ("proxy_set_effective_context", 2),
    ];

    fn times(name: &str) -> usize {
        CALLS.iter().find(|(n, _)| *n == name).map_or(0, |(_, t)| *t)
    }

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Probe { id: context_id, pending: 0 }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Probe {
        id: u32,
        pending: u32,
    }

    impl Probe {
        fn calls(&self) {
            let req = MapType::HttpRequestHeaders;
            let metric = hostcalls::define_metric(MetricType::Counter, "probe").unwrap_or(0);
            for _ in 1..times("proxy_define_metric") {
                let _ = hostcalls::define_metric(MetricType::Counter, "probe");
            }
            for _ in 1..times("proxy_get_header_map_pairs") {
                let _ = hostcalls::get_map_bytes(req);
            }
            for i in 0..times("proxy_add_header_map_value") {
                let _ = hostcalls::add_map_value(req, "x-probe", if i % 2 == 0 { "a" } else { "b" });
            }
            for _ in 0..times("proxy_remove_header_map_value") {
                let _ = hostcalls::remove_map_value(req, "x-probe");
            }
            for _ in 0..times("proxy_get_property") {
                let _ = hostcalls::get_property(vec!["source", "address"]);
            }
            for _ in 0..times("proxy_increment_metric") {
                let _ = hostcalls::increment_metric(metric, 1);
            }
            for _ in 0..times("proxy_replace_header_map_value") {
                let _ = hostcalls::set_map_value(req, "x-probe-set", Some("v"));
            }
            for _ in 0..times("proxy_get_header_map_value") {
                let _ = hostcalls::get_map_value_bytes(req, "authorization");
            }
            for _ in 0..times("proxy_get_shared_data") {
                let _ = hostcalls::get_shared_data("probe");
            }
            for _ in 0..times("proxy_set_shared_data") {
                let _ = hostcalls::set_shared_data("probe", Some(b"v"), None);
            }
            // Replaces the whole map: with what it holds (read once more, counted above).
            let current = hostcalls::get_map_bytes(req).unwrap_or_default();
            let pairs: Vec<(&str, &[u8])> = current.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            for _ in 0..times("proxy_set_header_map_pairs") {
                let _ = hostcalls::set_map_bytes(req, pairs.clone());
            }
            for _ in 0..times("proxy_get_buffer_bytes") {
                let _ = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, 16);
            }
            for _ in 0..times("proxy_get_current_time_nanoseconds") {
                let _ = hostcalls::get_current_time();
            }
            for _ in 0..times("proxy_set_effective_context") {
                let _ = hostcalls::set_effective_context(self.id);
            }
            for _ in 0..times("proxy_log") {
                // Below Envoy's level (-l error): the host call happens, nothing is written.
                let _ = hostcalls::log(LogLevel::Warn, "probe");
            }
        }
    }

    impl Context for Probe {
        fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
            self.pending -= 1;
            if self.pending == 0 {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    impl HttpContext for Probe {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.calls();
            let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path").ok().flatten();
            if path.as_deref() == Some(b"/deny".as_slice()) {
                let _ = hostcalls::send_http_response(401, vec![], None);
                return Action::Pause;
            }
            let headers = vec![(":method", "GET"), (":path", "/"), (":authority", "auth:4300")];
            for _ in 0..2 {
                let timeout = Duration::from_secs(5);
                if hostcalls::dispatch_http_call("auth", headers.clone(), None, vec![], timeout).is_ok() {
                    self.pending += 1;
                }
            }
            if self.pending == 0 {
                return Action::Continue;
            }
            Action::Pause
        }
    }
}
