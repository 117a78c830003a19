//! The parts of Traefik's forwardAuth contract beyond plain header lists: the
//! `X-Forwarded-*` headers the auth service reads to learn what is being asked for
//! (`trustForwardHeader`), response headers chosen by regex (`authResponseHeadersRegex`)
//! and auth cookies added to the client's response (`addAuthCookiesToResponse`).
//!
//! Modelled on Traefik 3.6.13 `pkg/middlewares/auth/forward.go` (`writeHeader`,
//! `buildModifier`) and the entry point's `forwardedheaders` middleware.
//! `forwardBody`/`maxBodySize` are `auth.forward_body`/`auth.max_body_size`
//! (policy/request_body.rs; docs/traefik.md).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::error::ConfigError;
use crate::policy::headers::{self, Header};

/// Every header Traefik's entry point treats as a forwarding header (its `xHeaders`):
/// without trust, a client's values for these never reach the auth service.
pub const X_FORWARDED_HEADERS: [&str; 11] = [
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-real-ip",
];

/// The headers `forward_auth` always writes on the callout.
const GENERATED: [&str; 5] =
    ["x-forwarded-method", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-uri", "x-forwarded-for"];

/// One of Traefik's forwarding headers (any case).
pub fn is_x_forwarded(name: &str) -> bool {
    X_FORWARDED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `forward_auth` always writes `name` (any case).
pub fn is_generated(name: &str) -> bool {
    GENERATED.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether [`forwarded_headers`] may write `name`: the generated ones, plus
/// `x-forwarded-port`, passed through with trust as in Traefik 3.6.
pub fn is_written(name: &str) -> bool {
    is_generated(name) || name.eq_ignore_ascii_case("x-forwarded-port")
}

/// A header of the callout: its value is borrowed from the request, or built (X-Forwarded-For).
pub type CalloutHeader<'h> = (&'h str, Cow<'h, str>);

/// The `X-Forwarded-*` headers for the callout, from the client request's pseudo-headers
/// and `peer` (proxy-wasm `source.address`, `ip:port`). With `trust`, a client's own
/// `X-Forwarded-Method/Proto/Host/Uri/Port` win and its `X-Forwarded-For` is extended;
/// without, they are ignored and the values describe the request Envoy received.
/// Appended to `out` (the callout's headers); `Err(name)` if a value to send is not text.
pub fn forwarded_headers<'h, H: Header>(
    headers: &'h [H],
    peer: Option<&str>,
    trust: bool,
    out: &mut Vec<CalloutHeader<'h>>,
) -> Result<(), &'static str> {
    // Go's Header.Get: the first value of the name.
    let first = |name: &str| headers.iter().find(|h| h.name().eq_ignore_ascii_case(name)).map(Header::value);
    // Untrusted (the default), the client's copies are not even looked for.
    let trusted = |name: &str| if trust { first(name).filter(|v| !v.is_empty()) } else { None };
    let mut push = |name: &'static str, value: Option<&'h [u8]>| -> Result<(), &'static str> {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push((name, Cow::Borrowed(headers::text(value).ok_or(name)?)));
        }
        Ok(())
    };
    push("x-forwarded-method", trusted("x-forwarded-method").or(first(":method")))?;
    let scheme: &'static [u8] = if first(":scheme") == Some(b"https") { b"https" } else { b"http" };
    push("x-forwarded-proto", trusted("x-forwarded-proto").or(Some(scheme)))?;
    push("x-forwarded-port", trusted("x-forwarded-port"))?;
    push("x-forwarded-host", trusted("x-forwarded-host").or(first(":authority")))?;
    push("x-forwarded-uri", trusted("x-forwarded-uri").or(first(":path")))?;

    let client_ip = peer.and_then(peer_ip);
    let prior: Vec<&str> = if trust {
        let values = headers.iter().filter(|h| h.name().eq_ignore_ascii_case("x-forwarded-for"));
        values.map(|h| headers::text(h.value()).ok_or("x-forwarded-for")).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let xff = match (client_ip, prior.is_empty()) {
        (Some(ip), true) => Some(ip),
        (Some(ip), false) => Some(format!("{}, {ip}", prior.join(", "))),
        (None, false) => Some(prior.join(", ")),
        (None, true) => None,
    };
    if let Some(xff) = xff {
        out.push(("x-forwarded-for", Cow::Owned(xff)));
    }
    Ok(())
}

/// The IP of `ip:port` / `[v6]:port` (Envoy's `source.address`); `None` for anything
/// else (a pipe, an empty property), and then no X-Forwarded-For is built.
pub fn peer_ip(address: &str) -> Option<String> {
    let ip = match address.parse::<SocketAddr>() {
        // What std accepts as IPv4 is already canonical text (decimal, no leading zeros):
        // copied, not printed again.
        Ok(SocketAddr::V4(_)) => return address.rsplit_once(':').map(|(ip, _)| ip.to_owned()),
        Ok(addr) => addr.ip(),
        Err(_) => address.parse::<IpAddr>().ok()?,
    };
    Some(match ip {
        IpAddr::V4(v4) => ipv4_text(v4),
        IpAddr::V6(v6) => v6.to_string(),
    })
}

/// `Ipv4Addr`'s `Display` text without `core::fmt`, which cost more than the rest of the
/// X-Forwarded-* headers on every callout (measured with `make bench-callgrind`).
fn ipv4_text(ip: Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// `authResponseHeadersRegex`: auth response headers copied upstream by pattern. Matched
/// case-insensitively against the lower-case name (Traefik matches Go's canonical
/// `X-Auth-Request-User`; lower-case names make that the only portable reading).
#[derive(Debug)]
pub struct HeaderRegex {
    source: String,
    regex: regex_lite::Regex,
}

impl HeaderRegex {
    pub fn compile(field: &str, source: &str) -> Result<HeaderRegex, ConfigError> {
        if source.is_empty() {
            return Err(ConfigError {
                field: field.into(),
                message: "must not be empty (it would match every header)".into(),
            });
        }
        let regex = regex_lite::RegexBuilder::new(source)
            .case_insensitive(true)
            .size_limit(1 << 16)
            .build()
            .map_err(|e| ConfigError { field: field.into(), message: format!("invalid regex {source:?}: {e}") })?;
        Ok(HeaderRegex { source: source.to_string(), regex })
    }

    /// Whether the auth response header `name` is copied upstream. Pseudo-headers and
    /// connection-level headers never are, whatever the pattern says.
    pub fn matches(&self, name: &str) -> bool {
        !name.starts_with(':') && !crate::policy::headers::is_connection_header(name) && self.regex.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// The cookie name of a `Set-Cookie` value (`name=value; attrs`).
pub fn cookie_name(set_cookie: &[u8]) -> &[u8] {
    let pair = set_cookie.split(|b| *b == b';').next().unwrap_or_default();
    let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
    name.trim_ascii()
}

/// `Set-Cookie` values of an allowing auth response whose cookie is in `names`: the ones
/// `addAuthCookiesToResponse` puts on the client's response.
pub fn auth_cookies<'r, H: Header>(headers: &'r [H], names: &[String]) -> Vec<&'r [u8]> {
    headers
        .iter()
        .map(|h| (h.name(), h.value()))
        .filter(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && names.iter().any(|c| c.as_bytes() == cookie_name(v)))
        .map(|(_, v)| v)
        .collect()
}

/// The client's `Set-Cookie` values: the upstream's own, minus cookies named in `names`
/// (the auth service owns those), then the auth service's (Traefik's `buildModifier`).
pub fn merge_set_cookies<'a>(upstream: &[&'a [u8]], auth: &'a [Vec<u8>], names: &[String]) -> Vec<&'a [u8]> {
    let owned = |v: &[u8]| names.iter().any(|c| c.as_bytes() == cookie_name(v));
    let kept = upstream.iter().copied().filter(|v| !owned(v));
    kept.chain(auth.iter().map(Vec::as_slice)).collect()
}

/// Validates `add_auth_cookies_to_response` names (RFC 6265 cookie-name is a token).
pub fn cookie_names(field: &str, names: &[String]) -> Result<Vec<String>, ConfigError> {
    for (i, name) in names.iter().enumerate() {
        let token =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError {
                field: format!("{field}[{i}]"),
                message: format!("{name:?} is not a cookie name"),
            });
        }
    }
    Ok(names.to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn forwarded<'h>(
        req: &'h [(String, Vec<u8>)],
        peer: Option<&str>,
        trust: bool,
    ) -> Result<Vec<CalloutHeader<'h>>, &'static str> {
        let mut out = Vec::new();
        forwarded_headers(req, peer, trust, &mut out).map(|()| out)
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    fn request() -> Vec<(String, Vec<u8>)> {
        h(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "api.example.com"),
            (":path", "/api/flows?limit=5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example.com"),
            ("x-forwarded-uri", "/api/health"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "8443"),
        ])
    }

    fn text<'a>(out: &'a [CalloutHeader<'a>]) -> Vec<(&'a str, &'a str)> {
        out.iter().map(|(n, v)| (*n, v.as_ref())).collect()
    }

    #[test]
    fn without_trust_the_values_describe_the_request_envoy_received() {
        let req = request();
        let out = forwarded(&req, Some("10.1.2.3:40000"), false).unwrap();
        assert_eq!(
            text(&out),
            vec![
                ("x-forwarded-method", "POST"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-uri", "/api/flows?limit=5"),
                ("x-forwarded-for", "10.1.2.3"),
            ]
        );
    }

    #[test]
    fn with_trust_the_client_values_win_and_xff_is_extended() {
        let mut req = request();
        req.push(("x-forwarded-for".into(), b"7.7.7.7".to_vec()));
        let out = forwarded(&req, Some("[::1]:40000"), true).unwrap();
        assert_eq!(
            text(&out),
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-host", "evil.example.com"),
                ("x-forwarded-uri", "/api/health"),
                ("x-forwarded-for", "6.6.6.6, 7.7.7.7, ::1"),
            ]
        );
        // Trusted but absent: generated as without trust.
        let req = h(&[(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/x")]);
        let out = forwarded(&req, None, true).unwrap();
        assert_eq!(
            text(&out),
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a"),
                ("x-forwarded-uri", "/x")
            ]
        );
    }

    #[test]
    fn non_text_values_are_reported() {
        let mut req = request();
        req.push((":path".into(), b"/\xff".to_vec()));
        req.retain(|(n, v)| n != ":path" || v != b"/api/flows?limit=5");
        assert_eq!(forwarded(&req, None, false).unwrap_err(), "x-forwarded-uri");
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(peer_ip("127.0.0.1:5000").as_deref(), Some("127.0.0.1"));
        assert_eq!(peer_ip("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(peer_ip("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(peer_ip("/tmp/envoy.sock"), None);
        assert_eq!(peer_ip(""), None);
        // The text of an IPv4 socket address is copied: it is what printing its IP gives.
        let printed = |address: &str| -> Option<String> {
            let ip = match address.parse::<SocketAddr>() {
                Ok(addr) => addr.ip(),
                Err(_) => address.parse::<IpAddr>().ok()?,
            };
            Some(ip.to_string())
        };
        let hosts = [
            "127.0.0.1",
            "10.0.0.255",
            "0.0.0.0",
            "255.255.255.255",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "",
            "::1",
            "[::1]",
            "[2001:db8::7]",
            "[::ffff:1.2.3.4]",
            " 1.2.3.4",
        ];
        for host in hosts {
            for port in ["", ":0", ":80", ":65535", ":65536", ":+80", ":080", "::80"] {
                let address = format!("{host}{port}");
                assert_eq!(peer_ip(&address), printed(&address), "{address:?}");
            }
        }
    }

    #[test]
    fn ipv4_text_is_the_display_text() {
        for a in [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255] {
            for b in [0u8, 7, 10, 100, 255] {
                let ip = Ipv4Addr::new(a, b, 255 - b, a / 2);
                assert_eq!(ipv4_text(ip), ip.to_string());
            }
        }
    }

    #[test]
    fn regex_is_case_insensitive_and_never_matches_framing_headers() {
        let re = HeaderRegex::compile("f", "^X-Auth-Request-").unwrap();
        assert!(re.matches("x-auth-request-user"));
        assert!(!re.matches("x-other"));
        let any = HeaderRegex::compile("f", ".").unwrap();
        assert!(any.matches("x-anything"));
        assert!(!any.matches(":status"));
        assert!(!any.matches("content-length"));
        assert!(!any.matches("transfer-encoding"));
        assert_eq!(HeaderRegex::compile("f", "(").unwrap_err().field, "f");
        assert!(HeaderRegex::compile("f", "").is_err());
    }

    #[test]
    fn cookies_owned_by_the_auth_service_replace_the_upstream_ones() {
        assert_eq!(cookie_name(b" sid = 1; Path=/"), b"sid");
        assert_eq!(cookie_name(b"flag"), b"flag");
        let auth = h(&[
            (":status", "200"),
            ("set-cookie", "sid=new; Path=/; HttpOnly"),
            ("set-cookie", "other=1"),
            ("x-set-cookie", "sid=no"),
        ]);
        let names = vec!["sid".to_string()];
        let chosen: Vec<Vec<u8>> = auth_cookies(&auth, &names).into_iter().map(<[u8]>::to_vec).collect();
        assert_eq!(chosen, vec![b"sid=new; Path=/; HttpOnly".to_vec()]);
        let upstream: Vec<&[u8]> = vec![b"sid=old", b"app=1"];
        assert_eq!(
            merge_set_cookies(&upstream, &chosen, &names),
            vec![&b"app=1"[..], &b"sid=new; Path=/; HttpOnly"[..]]
        );
        assert!(cookie_names("f", &["a b".into()]).is_err());
    }
}
