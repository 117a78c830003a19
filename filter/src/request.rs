//! What to do with a client request, from its headers alone: which spoofed identity
//! headers to strip, then public (continue), callout (with these headers) or reject.

use crate::config::Settings;
use crate::decision::Failure;
use crate::headers;

/// The plan for one request's headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<'h> {
    /// Header names to remove from the client request, every path, before anything else.
    pub strip: Vec<&'h str>,
    pub route: Route<'h>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'h> {
    /// A public path: no callout.
    Public { template: &'h str },
    /// Ask the auth service with exactly these headers (pseudo-headers first).
    Callout { headers: Vec<(&'h str, &'h str)> },
    /// The request cannot be checked faithfully: fail closed.
    Reject(Failure),
}

impl Settings {
    /// `headers` is the client request header map as Envoy hands it over (`:path` included).
    pub fn plan<'h>(&'h self, headers: &'h [(String, Vec<u8>)]) -> Plan<'h> {
        let strip = headers::present(headers, &self.strip);
        let path = headers.iter().find(|(name, _)| name == ":path").map(|(_, v)| v.as_slice());
        if let Some(template) = path.and_then(|p| self.public.find(p)) {
            return Plan { strip, route: Route::Public { template } };
        }
        Plan { strip, route: self.callout(headers) }
    }

    fn callout<'h>(&'h self, headers: &'h [(String, Vec<u8>)]) -> Route<'h> {
        let auth = &self.auth;
        let mut out: Vec<(&str, &str)> =
            vec![(":method", "GET"), (":path", &auth.path), (":authority", &auth.authority)];
        // A stripped header is never forwarded, even if a request_headers pattern matches it.
        for (name, value) in
            headers::select(headers, &auth.request_headers).into_iter().filter(|(n, _)| !self.strip.contains(n))
        {
            // The host ABI takes text; a credential we cannot pass unchanged is not passed.
            match std::str::from_utf8(value) {
                Ok(value) => out.push((name, value)),
                Err(_) => return Route::Reject(Failure::RequestHeaderNotText),
            }
        }
        Route::Callout { headers: out }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn public_path_strips_and_continues() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[
            (":path", b"/api/health"),
            ("x-nebula-actor-id", b"evil"),
            ("x-nebula-actor-id", b"evil2"),
            ("x-nebula-actor-permissions", b"admin"),
            ("authorization", b"Bearer t"),
        ]);
        let plan = s.plan(&headers);
        assert_eq!(plan.strip, vec!["x-nebula-actor-id", "x-nebula-actor-permissions"]);
        assert_eq!(plan.route, Route::Public { template: "/api/health" });
    }

    #[test]
    fn protected_path_calls_out_with_only_the_configured_headers() {
        let s = settings(r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "path": "/check"}}"#);
        let headers = h(&[
            (":authority", b"api.example.com"),
            (":path", b"/api/flows"),
            (":method", b"POST"),
            ("authorization", b"Bearer t"),
            ("cookie", b"session=1"),
            ("origin", b"https://app.example.com"),
            ("x-nebula-actor-id", b"evil"),
            ("access-control-request-method", b"PUT"),
        ]);
        let plan = s.plan(&headers);
        assert_eq!(plan.strip, vec!["x-nebula-actor-id"]);
        assert_eq!(
            plan.route,
            Route::Callout {
                headers: vec![
                    (":method", "GET"),
                    (":path", "/check"),
                    (":authority", "auth:4300"),
                    ("authorization", "Bearer t"),
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "PUT"),
                ]
            }
        );
    }

    /// Istio-style patterns in request_headers forward matching headers, never stripped ones.
    #[test]
    fn request_header_patterns_never_forward_identity_headers() {
        let s = settings(r#"{"auth": {"cluster": "auth", "request_headers": ["authorization", "x-*", "*-token"]}}"#);
        let headers = h(&[
            (":path", b"/api/flows"),
            ("authorization", b"Bearer t"),
            ("x-request-id", b"r1"),
            ("x-nebula-actor-id", b"evil"),
            ("x-csrf-token", b"c"),
            ("cookie", b"session=1"),
        ]);
        let Route::Callout { headers: sent } = s.plan(&headers).route else { panic!("expected a callout") };
        assert_eq!(&sent[3..], &[("authorization", "Bearer t"), ("x-request-id", "r1"), ("x-csrf-token", "c")]);
    }

    #[test]
    fn missing_path_is_protected() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[(":method", b"CONNECT"), (":authority", b"x:443")]);
        let plan = s.plan(&headers);
        assert!(matches!(plan.route, Route::Callout { .. }));
    }

    #[test]
    fn credential_that_is_not_text_fails_closed() {
        let s = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let headers = h(&[(":path", b"/api/flows"), ("authorization", b"Bearer \xe9")]);
        let plan = s.plan(&headers);
        assert_eq!(plan.route, Route::Reject(Failure::RequestHeaderNotText));
        // Bytes that are not forwarded do not matter.
        let headers = h(&[(":path", b"/api/flows"), ("x-custom", b"\xe9")]);
        let plan = s.plan(&headers);
        assert!(matches!(plan.route, Route::Callout { .. }));
    }
}
