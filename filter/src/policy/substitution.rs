//! Envoy's substitution format strings (its access-log command operators) in the values
//! of `auth.headers_to_add`, as Envoy's ext_authz evaluates them in
//! `http_service.authorization_request.headers_to_add` (Istio's
//! `includeAdditionalHeadersInCheck`): compiled once at configuration load into a
//! [`HeaderTemplate`] of literal text and operators, printed per callout from the
//! client's request headers and the few request facts [`RequestInfo`] reads from the
//! host only when a value needs them.
//!
//! The operators proxy-wasm can print exactly as Envoy 1.40 does (recorded against its
//! ext_authz in tests/tests/ext_authz_diff.rs): `%DOWNSTREAM_REMOTE_ADDRESS%` and
//! `%DOWNSTREAM_LOCAL_ADDRESS%` with or without `_WITHOUT_PORT`, `%REQ(name)%` (with
//! `?fallback` and `:max_len`), `%PROTOCOL%`, `%START_TIME%` (with a format),
//! `%HOSTNAME%` (the VM's `HOSTNAME` environment variable, filled in once at load by
//! [`resolve_hostname`]) and `%%`. Every other operator is refused at load: proxy-wasm
//! exposes nothing to print it from, and its text must never reach the auth service as
//! if it were a value.

use std::borrow::Cow;

use crate::error::ConfigError;
use crate::policy::headers::{self, Header, HeaderNames};

/// The request facts the operators print, read from the host (proxy-wasm properties)
/// only when a header's value needs them; borrowed when the host kept what it read (no
/// copy per use). Any `FnMut() -> Option<String>` is one that knows only the client's
/// address (the forward_auth callout's X-Forwarded-For).
pub trait RequestInfo {
    /// `source.address`: Envoy's downstream remote address (`ip:port`, `[v6]:port`).
    fn source_address(&mut self) -> Option<Cow<'_, str>>;
    /// `destination.address`: Envoy's downstream local address (`ip:port`, `[v6]:port`).
    fn destination_address(&mut self) -> Option<Cow<'_, str>> {
        None
    }
    /// `request.protocol`: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    fn protocol(&mut self) -> Option<Cow<'_, str>> {
        None
    }
    /// `request.time`: when the first byte of the request arrived, in Unix nanoseconds.
    fn start_time_ns(&mut self) -> Option<i64> {
        None
    }
}

impl<F: FnMut() -> Option<String>> RequestInfo for F {
    fn source_address(&mut self) -> Option<Cow<'_, str>> {
        self().map(Cow::Owned)
    }
}

/// A header value: literal text and operators, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `%DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT]%`.
    RemoteAddress {
        port: bool,
    },
    /// `%DOWNSTREAM_LOCAL_ADDRESS[_WITHOUT_PORT]%`.
    LocalAddress {
        port: bool,
    },
    /// `%REQ(name?fallback):max_len%`: names lower-case, `host` as `:authority`.
    Req {
        name: String,
        fallback: Option<String>,
        max_len: Option<usize>,
    },
    Protocol,
    StartTime(Vec<TimePart>),
    /// `%HOSTNAME%` until [`resolve_hostname`] replaces it with text.
    Hostname,
}

/// A piece of a `%START_TIME(...)%` format (strftime in UTC, as Envoy's absl::FormatTime).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimePart {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// `%s`: seconds since the Unix epoch.
    Epoch,
    /// `%z`: always `+0000` (UTC).
    Zone,
    /// `%f` (9 digits) or `%1f`..`%9f`: the fraction of the second, truncated.
    Fraction(u8),
}

/// What a template printed for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Rendered<'h> {
    /// Sent.
    Value(Cow<'h, str>),
    /// Printed nothing: as in Envoy's header parser, the header is not added at all.
    Empty,
    /// A client header it prints is not text (the host ABI takes text): fail closed.
    NotText,
}

const SUPPORTED: &str = "supported: %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, \
     %DOWNSTREAM_LOCAL_ADDRESS%, %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%, %REQ(name)%, %PROTOCOL%, \
     %START_TIME%, %HOSTNAME%, and %% for a literal %";

/// Envoy's default `%START_TIME%`: `%Y-%m-%dT%H:%M:%E3SZ`.
fn default_time() -> Vec<TimePart> {
    use TimePart::*;
    let text = |t: &str| Text(t.to_owned());
    vec![
        Year,
        text("-"),
        Month,
        text("-"),
        Day,
        text("T"),
        Hour,
        text(":"),
        Minute,
        text(":"),
        Second,
        text("."),
        Fraction(3),
        text("Z"),
    ]
}

impl HeaderTemplate {
    /// Compiles `value` (the field is named in errors). A `%` starts an operator or is
    /// `%%`; anything else with a `%` is refused, as Envoy refuses it.
    pub fn parse(field: &str, value: &str) -> Result<HeaderTemplate, ConfigError> {
        let err = |message: String| ConfigError::new(field, message);
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("%%") {
                text.push('%');
                rest = after;
                continue;
            }
            let (operator, after) = split_operator(rest).ok_or_else(|| {
                err(format!(
                    "{:?} is not an operator: Envoy's are %NAME%, %NAME(argument)% or %NAME(argument):length%; \
                     write %% for a literal %",
                    excerpt(rest)
                ))
            })?;
            let part = compile(operator).map_err(err)?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(HeaderTemplate { parts })
    }

    /// The value when it has no operator (the common case: sent as it is).
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// Prints the value for one request: `headers` is the client's request header map
    /// (a `strip` name reads as absent: a spoofed identity never reaches the auth
    /// service), `info` the request facts, read only when an operator needs one. An
    /// absent fact prints nothing, as in Envoy's headers.
    pub fn render<'h, H: Header>(
        &'h self,
        headers: &'h [H],
        strip: &HeaderNames,
        info: &mut impl RequestInfo,
    ) -> Rendered<'h> {
        if let Some(text) = self.as_static() {
            return if text.is_empty() { Rendered::Empty } else { Rendered::Value(text.into()) };
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::RemoteAddress { port } => push_address(&mut out, info.source_address(), *port),
                Part::LocalAddress { port } => push_address(&mut out, info.destination_address(), *port),
                Part::Protocol => out.push_str(info.protocol().as_deref().unwrap_or("")),
                // Unresolved only outside the host (a configuration never resolved).
                Part::Hostname => {}
                Part::StartTime(format) => {
                    if let Some(ns) = info.start_time_ns() {
                        push_time(&mut out, ns, format);
                    }
                }
                Part::Req { name, fallback, max_len } => {
                    let value = request_header(headers, strip, name)
                        .or_else(|| fallback.as_deref().and_then(|f| request_header(headers, strip, f)));
                    if let Some(value) = value {
                        let value = match max_len {
                            Some(max) if value.len() > *max => &value[..*max],
                            _ => value,
                        };
                        match headers::text(value) {
                            Some(value) => out.push_str(value),
                            None => return Rendered::NotText,
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            Rendered::Empty
        } else {
            Rendered::Value(out.into())
        }
    }
}

/// The first value of the client's `name` (Envoy's `%REQ%` prints the first), unless
/// stripped; an empty value is no value.
fn request_header<'h, H: Header>(headers: &'h [H], strip: &HeaderNames, name: &str) -> Option<&'h [u8]> {
    if strip.contains(name) {
        return None;
    }
    headers::first(headers, name).filter(|v| !v.is_empty())
}

/// `%NAME...%` at the start of `s` (which starts with `%`): Envoy's grammar,
/// `%[A-Z][A-Z0-9_]*(\([^)]*\))?(:[0-9]+)?%`. Returns the operator without its `%`s.
fn split_operator(s: &str) -> Option<(&str, &str)> {
    let body = s.strip_prefix('%')?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_') {
        i += 1;
    }
    if i == 0 || !bytes[0].is_ascii_uppercase() {
        return None;
    }
    if bytes.get(i) == Some(&b'(') {
        i += body[i..].find(')')? + 1;
    }
    if bytes.get(i) == Some(&b':') {
        let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        i += 1 + digits;
    }
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    Some((&body[..i], &body[i + 1..]))
}

/// Fills in `%HOSTNAME%` in every value of `templates` (the `(name, value)` pairs of
/// `auth.headers_to_add`): `hostname` is the Wasm VM's `HOSTNAME` environment variable.
/// Envoy prints the machine's host name (`gethostname`); proxy-wasm has no property for
/// it, but a container's `HOSTNAME` is that name (Kubernetes: the pod's), and Envoy
/// hands the VM the host's variables named in `vm_config.environment_variables`. Without
/// it, a value that prints `%HOSTNAME%` is refused rather than sent without it.
pub fn resolve_hostname(
    field: &str,
    templates: &mut [(String, HeaderTemplate)],
    hostname: Option<&str>,
) -> Result<(), ConfigError> {
    for (name, template) in templates.iter_mut() {
        if !template.parts.contains(&Part::Hostname) {
            continue;
        }
        let Some(hostname) = hostname.filter(|h| !h.is_empty() && !h.bytes().any(|b| b.is_ascii_control())) else {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "%HOSTNAME% prints the HOSTNAME environment variable, which the Wasm VM does not have: expose the \
                 host's (Envoy: vm_config.environment_variables.host_env_keys: [HOSTNAME]; Istio WasmPlugin: \
                 vmConfig.env: [{name: HOSTNAME, valueFrom: HOST}], which make convert writes)",
            ));
        };
        let mut parts: Vec<Part> = Vec::with_capacity(template.parts.len());
        for part in std::mem::take(&mut template.parts) {
            let part = if part == Part::Hostname { Part::Text(hostname.to_owned()) } else { part };
            match (parts.last_mut(), part) {
                (Some(Part::Text(before)), Part::Text(text)) => before.push_str(&text),
                (_, part) => parts.push(part),
            }
        }
        template.parts = parts;
    }
    Ok(())
}

/// At most 40 characters of what follows a stray `%`, for the error.
fn excerpt(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// One operator (`NAME`, `NAME(arg)`, with `:len`) → its part, or why it is refused.
fn compile(operator: &str) -> Result<Part, String> {
    // split_operator checked the grammar: NAME, then (argument) up to the first ')', then :digits.
    let name_end = operator.find(['(', ':']).unwrap_or(operator.len());
    let name = &operator[..name_end];
    let (arg, rest) = match operator[name_end..].strip_prefix('(') {
        Some(inner) => match inner.split_once(')') {
            Some((arg, rest)) => (Some(arg), rest),
            None => (Some(inner), ""),
        },
        None => (None, &operator[name_end..]),
    };
    let max_len = rest.strip_prefix(':');
    let shown = format!("%{operator}%");
    let no_arg = |part: Part| -> Result<Part, String> {
        match (arg, max_len) {
            (None, None) => Ok(part),
            (Some(_), _) => Err(format!("{shown}: %{name}% takes no argument")),
            (None, Some(_)) => Err(format!("{shown}: a length limit (:N) applies only to %REQ(...)% here")),
        }
    };
    match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Part::RemoteAddress { port: true }),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Part::RemoteAddress { port: false }),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Part::LocalAddress { port: true }),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Part::LocalAddress { port: false }),
        "PROTOCOL" => no_arg(Part::Protocol),
        "HOSTNAME" => no_arg(Part::Hostname),
        "REQ" => {
            let arg = arg.ok_or_else(|| format!("{shown}: %REQ% needs a header name, %REQ(name)%"))?;
            let max_len = match max_len {
                // u32: the same limit in the wasm32 module as in a native check of the config.
                Some(len) => Some(
                    len.parse::<u32>()
                        .ok()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| format!("{shown}: the length is too large (at most {})", u32::MAX))?,
                ),
                None => None,
            };
            let mut names = arg.split('?');
            let name = req_name(&shown, names.next().unwrap_or(""))?;
            let fallback = names.next().map(|n| req_name(&shown, n)).transpose()?;
            if names.next().is_some() {
                return Err(format!("{shown}: at most one fallback header, %REQ(name?fallback)%"));
            }
            Ok(Part::Req { name, fallback, max_len })
        }
        "START_TIME" => {
            if max_len.is_some() {
                return Err(format!("{shown}: a length limit (:N) applies only to %REQ(...)% here"));
            }
            match arg {
                None | Some("") => Ok(Part::StartTime(default_time())),
                Some(format) => Ok(Part::StartTime(time_format(&shown, format)?)),
            }
        }
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Err(format!(
            "{shown} is not supported: proxy-wasm exposes only the remote address Envoy settled on \
             (%DOWNSTREAM_REMOTE_ADDRESS%), not the direct peer behind X-Forwarded-For; {SUPPORTED}"
        )),
        _ => Err(format!("{shown} is not supported; {SUPPORTED}")),
    }
}

/// A `%REQ%` header name: lower-case; `host` is `:authority` in Envoy's header map.
fn req_name(shown: &str, name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || (i == 0 && b == b':'));
    if !valid {
        return Err(format!("{shown}: {name:?} is not a header name"));
    }
    let name = name.to_ascii_lowercase();
    Ok(if name == "host" { ":authority".to_owned() } else { name })
}

/// A `%START_TIME(format)%` format: the strftime conversions below, in UTC.
fn time_format(shown: &str, format: &str) -> Result<Vec<TimePart>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let spec = match chars.next() {
            Some('%') => {
                text.push('%');
                continue;
            }
            Some(d @ '1'..='9') if chars.clone().next() == Some('f') => {
                chars.next();
                TimePart::Fraction(d as u8 - b'0')
            }
            Some('f') => TimePart::Fraction(9),
            Some('Y') => TimePart::Year,
            Some('m') => TimePart::Month,
            Some('d') => TimePart::Day,
            Some('H') => TimePart::Hour,
            Some('M') => TimePart::Minute,
            Some('S') => TimePart::Second,
            Some('s') => TimePart::Epoch,
            Some('z') => TimePart::Zone,
            other => {
                let spec = other.map(|c| format!("%{c}")).unwrap_or_else(|| "a trailing %".to_owned());
                return Err(format!(
                    "{shown}: the time format {spec} is not supported (supported: %Y %m %d %H %M %S %s %z %f \
                     %1f..%9f %%)"
                ));
            }
        };
        if !text.is_empty() {
            out.push(TimePart::Text(std::mem::take(&mut text)));
        }
        out.push(spec);
    }
    if !text.is_empty() {
        out.push(TimePart::Text(text));
    }
    Ok(out)
}

/// `address` as Envoy prints it: as it is with the port; without, the IP alone (IPv6
/// unbracketed), or the whole address when it is not `ip:port` (a pipe).
fn push_address(out: &mut String, address: Option<Cow<'_, str>>, port: bool) {
    let Some(address) = address else { return };
    if port {
        out.push_str(&address);
        return;
    }
    match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => {
            use std::fmt::Write;
            let _ = write!(out, "{}", socket.ip());
        }
        Err(_) => out.push_str(&address),
    }
}

/// Unix nanoseconds `ns` in `format` (UTC).
fn push_time(out: &mut String, ns: i64, format: &[TimePart]) {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let two = |out: &mut String, n: i64| {
        out.push(char::from(b'0' + (n / 10 % 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    };
    for part in format {
        match part {
            TimePart::Text(text) => out.push_str(text),
            TimePart::Year => {
                if (0..10_000).contains(&year) {
                    two(out, year / 100);
                    two(out, year % 100);
                } else {
                    out.push_str(&year.to_string());
                }
            }
            TimePart::Month => two(out, month),
            TimePart::Day => two(out, day),
            TimePart::Hour => two(out, of_day / 3600),
            TimePart::Minute => two(out, of_day / 60 % 60),
            TimePart::Second => two(out, of_day % 60),
            TimePart::Epoch => out.push_str(&secs.to_string()),
            TimePart::Zone => out.push_str("+0000"),
            TimePart::Fraction(digits) => {
                let digits = usize::from(*digits);
                let padded = format!("{nanos:09}");
                out.push_str(&padded[..digits.min(9)]);
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, exact for every i64 day count that fits a year).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A host that counts its property reads.
    #[derive(Default)]
    struct Facts {
        source: Option<&'static str>,
        destination: Option<&'static str>,
        protocol: Option<&'static str>,
        time: Option<i64>,
        reads: Vec<&'static str>,
    }

    impl RequestInfo for Facts {
        fn source_address(&mut self) -> Option<Cow<'_, str>> {
            self.reads.push("source");
            self.source.map(Cow::Borrowed)
        }
        fn destination_address(&mut self) -> Option<Cow<'_, str>> {
            self.reads.push("destination");
            self.destination.map(Cow::Borrowed)
        }
        fn protocol(&mut self) -> Option<Cow<'_, str>> {
            self.reads.push("protocol");
            self.protocol.map(Cow::Borrowed)
        }
        fn start_time_ns(&mut self) -> Option<i64> {
            self.reads.push("time");
            self.time
        }
    }

    fn names(list: &[&str]) -> HeaderNames {
        HeaderNames::parse("t", &list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), true).unwrap()
    }

    fn render(value: &str, headers: &[(&str, &[u8])], facts: &mut Facts) -> Rendered<'static> {
        let template = HeaderTemplate::parse("f", value).unwrap();
        match template.render(headers, &names(&["x-nebula-*"]), facts) {
            Rendered::Value(v) => Rendered::Value(Cow::Owned(v.into_owned())),
            Rendered::Empty => Rendered::Empty,
            Rendered::NotText => Rendered::NotText,
        }
    }

    fn value(text: &str) -> Rendered<'static> {
        Rendered::Value(Cow::Owned(text.to_owned()))
    }

    #[test]
    fn addresses_print_as_envoy_prints_them() {
        for (source, with_port, without_port) in [
            ("10.1.2.3:51000", "10.1.2.3:51000", "10.1.2.3"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1"),
            ("[::ffff:10.0.0.1]:8080", "[::ffff:10.0.0.1]:8080", "::ffff:10.0.0.1"),
            ("6.6.6.6:0", "6.6.6.6:0", "6.6.6.6"),
            ("/run/envoy.sock", "/run/envoy.sock", "/run/envoy.sock"),
        ] {
            let mut facts = Facts { source: Some(source), destination: Some(source), ..Default::default() };
            assert_eq!(render("%DOWNSTREAM_REMOTE_ADDRESS%", &[], &mut facts), value(with_port), "{source}");
            assert_eq!(render("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &[], &mut facts), value(without_port));
            assert_eq!(render("%DOWNSTREAM_LOCAL_ADDRESS%", &[], &mut facts), value(with_port));
            assert_eq!(render("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", &[], &mut facts), value(without_port));
        }
        // An absent property prints nothing; with nothing else, the header is not sent.
        let mut none = Facts::default();
        assert_eq!(render("%DOWNSTREAM_REMOTE_ADDRESS%", &[], &mut none), Rendered::Empty);
        assert_eq!(render("ip=%DOWNSTREAM_LOCAL_ADDRESS%;", &[], &mut none), value("ip=;"));
    }

    #[test]
    fn req_prints_the_first_client_value_with_fallback_and_max_len() {
        let headers: &[(&str, &[u8])] = &[
            (":authority", b"api.example.com:8443"),
            (":path", b"/api/flows?q=1"),
            ("x-in", b"hello"),
            ("x-multi", b"m1"),
            ("x-multi", b"m2"),
            ("x-empty", b""),
            ("x-nebula-actor-id", b"evil"),
            ("x-bytes", b"\xe9t\xe9"),
            ("x-utf8", "\u{e9}t\u{e9}".as_bytes()),
        ];
        let mut facts = Facts::default();
        for (template, expected) in [
            ("%REQ(x-in)%", value("hello")),
            ("%REQ(X-IN)%", value("hello")),
            ("%REQ(x-absent?x-in)%", value("hello")),
            ("%REQ(x-in?x-absent)%", value("hello")),
            ("%REQ(x-empty?x-in)%", value("hello")),
            ("%REQ(x-in):3%", value("hel")),
            ("%REQ(x-in):0%", Rendered::Empty),
            ("%REQ(x-in):99%", value("hello")),
            ("%REQ(x-multi)%", value("m1")),
            ("%REQ(x-absent)%", Rendered::Empty),
            ("%REQ(x-empty)%", Rendered::Empty),
            ("a%REQ(x-absent)%b", value("ab")),
            ("%REQ(:path)%", value("/api/flows?q=1")),
            ("%REQ(host)%", value("api.example.com:8443")),
            ("%REQ(Host)%", value("api.example.com:8443")),
            ("%REQ(:authority)%", value("api.example.com:8443")),
            ("%REQ(x-nebula-actor-id)%", Rendered::Empty),
            ("%REQ(x-nebula-actor-id?x-in)%", value("hello")),
            ("%REQ(x-bytes)%", Rendered::NotText),
            ("%REQ(x-utf8)%", value("\u{e9}t\u{e9}")),
            ("%REQ(x-utf8):1%", Rendered::NotText),
            ("%REQ(x-in)%%REQ(x-in)%", value("hellohello")),
        ] {
            assert_eq!(render(template, headers, &mut facts), expected, "{template}");
        }
        assert!(facts.reads.is_empty(), "no property read for headers: {:?}", facts.reads);
    }

    #[test]
    fn literal_text_and_percent_signs() {
        let mut facts = Facts { protocol: Some("HTTP/2"), ..Default::default() };
        for (template, expected) in [
            ("static", value("static")),
            ("100%% sure", value("100% sure")),
            ("%%%%", value("%%")),
            ("pre-%PROTOCOL%-post", value("pre-HTTP/2-post")),
            ("%PROTOCOL%%PROTOCOL%", value("HTTP/2HTTP/2")),
            ("", Rendered::Empty),
        ] {
            assert_eq!(render(template, &[], &mut facts), expected, "{template}");
        }
        assert_eq!(HeaderTemplate::parse("f", "100%% sure").unwrap().as_static(), Some("100% sure"));
        assert_eq!(HeaderTemplate::parse("f", "%PROTOCOL%").unwrap().as_static(), None);
    }

    #[test]
    fn start_time_prints_envoys_default_and_formats() {
        // 2026-12-07T01:34:59.364054123Z, as Envoy printed a request's start.
        let ns = 1_796_607_299_364_054_123;
        let mut facts = Facts { time: Some(ns), ..Default::default() };
        for (template, expected) in [
            ("%START_TIME%", "2026-12-07T01:34:59.364Z"),
            ("%START_TIME()%", "2026-12-07T01:34:59.364Z"),
            ("%START_TIME(%s)%", "1796607299"),
            ("%START_TIME(%Y/%m/%dT%H:%M:%S.%3f%z)%", "2026/12/07T01:34:59.364+0000"),
            ("%START_TIME(%9f|%6f|%f|%1f|%%)%", "364054123|364054|364054123|3|%"),
            ("%START_TIME(%s.%3f)%", "1796607299.364"),
            ("at %START_TIME(day %d)%!", "at day 07!"),
        ] {
            assert_eq!(render(template, &[], &mut facts), value(expected), "{template}");
        }
        // Calendar edges: the epoch, a leap day, the last moment of a century leap year.
        for (ns, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000Z"),
            (978_307_199_999_999_999, "2000-12-31T23:59:59.999Z"),
            (4_107_542_400_000_000_000, "2100-03-01T00:00:00.000Z"),
        ] {
            let mut facts = Facts { time: Some(ns), ..Default::default() };
            assert_eq!(render("%START_TIME%", &[], &mut facts), value(expected), "{ns}");
        }
    }

    #[test]
    fn civil_dates_agree_with_counting_days() {
        // Every day of 1970..2400 against a day-by-day count: months and leap years.
        let mut days = 0;
        for year in 1970..2400 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            for (month, len) in
                [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31].iter().enumerate()
            {
                for day in 1..=*len {
                    assert_eq!(civil_from_days(days), (year, month as i64 + 1, day));
                    days += 1;
                }
            }
        }
    }

    /// Every value of up to five characters over the grammar's own characters: parsing
    /// never panics; an accepted value without operators is its text with `%%` as `%`;
    /// an accepted one prints without panicking and never prints an operator's name.
    #[test]
    fn every_short_value_parses_without_panic_and_prints_no_operator_text() {
        let alphabet = ['%', 'R', 'E', 'Q', '(', ')', ':', '1', '?', 'x', '\u{e9}'];
        let headers: &[(&str, &[u8])] = &[("x", b"v"), ("r", b"w")];
        let mut facts = Facts::default();
        let mut value = Vec::new();
        let mut accepted = 0;
        for len in 0..=5u32 {
            for mut n in 0..alphabet.len().pow(len) {
                value.clear();
                for _ in 0..len {
                    value.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let text: String = value.iter().collect();
                let Ok(template) = HeaderTemplate::parse("f", &text) else { continue };
                accepted += 1;
                if let Some(literal) = template.as_static() {
                    assert_eq!(literal, text.replace("%%", "%"), "{text:?}");
                }
                if let Rendered::Value(out) = template.render(headers, &names(&[]), &mut facts) {
                    let unescaped = text.replace("%%", "");
                    assert!(!out.contains("REQ(") || unescaped.contains("REQ("), "{text:?} printed {out:?}");
                }
            }
        }
        assert!(accepted > 1000, "the grammar accepts literal text: {accepted}");
    }

    #[test]
    fn properties_are_read_only_when_an_operator_needs_them() {
        let mut facts = Facts {
            source: Some("10.0.0.1:1"),
            destination: Some("10.0.0.2:2"),
            protocol: Some("HTTP/1.1"),
            time: Some(0),
            ..Default::default()
        };
        let headers: &[(&str, &[u8])] = &[("x-in", b"v")];
        render("static %% text", headers, &mut facts);
        render("%REQ(x-in)%", headers, &mut facts);
        assert!(facts.reads.is_empty(), "{:?}", facts.reads);
        render("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %PROTOCOL%", headers, &mut facts);
        assert_eq!(facts.reads, ["source", "protocol"]);
    }

    #[test]
    fn bad_values_are_refused_with_the_operator_named() {
        for (value, error) in [
            (
                "%UPSTREAM_HOST%",
                "invalid plugin configuration: f: %UPSTREAM_HOST% is not supported; supported: \
                 %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %DOWNSTREAM_LOCAL_ADDRESS%, \
                 %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%, %REQ(name)%, %PROTOCOL%, %START_TIME%, %HOSTNAME%, and %% \
                 for a literal %",
            ),
            ("%HOSTNAME(x)%", "invalid plugin configuration: f: %HOSTNAME(x)%: %HOSTNAME% takes no argument"),
            ("ip=%UPSTREAM_HOST%", "invalid plugin configuration: f: %UPSTREAM_HOST% is not supported; supported:"),
            ("%BYTES_RECEIVED%", "invalid plugin configuration: f: %BYTES_RECEIVED% is not supported; supported:"),
            (
                "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
                "invalid plugin configuration: f: %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% is not supported: \
                 proxy-wasm exposes only the remote address",
            ),
            ("%RESP(x-a)%", "invalid plugin configuration: f: %RESP(x-a)% is not supported;"),
            ("%DYNAMIC_METADATA(a:b)%", "invalid plugin configuration: f: %DYNAMIC_METADATA(a:b)% is not supported;"),
            (
                "100%",
                "invalid plugin configuration: f: \"%\" is not an operator: Envoy's are %NAME%, %NAME(argument)% or \
                 %NAME(argument):length%; write %% for a literal %",
            ),
            ("50% off", "f: \"% off\" is not an operator"),
            ("%protocol%", "f: \"%protocol%\" is not an operator"),
            ("%PROTOCOL", "f: \"%PROTOCOL\" is not an operator"),
            ("%REQ(x-a%", "f: \"%REQ(x-a%\" is not an operator"),
            ("%REQ(x):%", "f: \"%REQ(x):%\" is not an operator"),
            ("%REQ%", "invalid plugin configuration: f: %REQ%: %REQ% needs a header name, %REQ(name)%"),
            ("%REQ()%", "invalid plugin configuration: f: %REQ()%: \"\" is not a header name"),
            ("%REQ(a b)%", "f: %REQ(a b)%: \"a b\" is not a header name"),
            ("%REQ(a?b?c)%", "invalid plugin configuration: f: %REQ(a?b?c)%: at most one fallback header"),
            ("%REQ(a):99999999999999999999999%", "f: %REQ(a):99999999999999999999999%: the length is too large"),
            ("%REQ(a):4294967296%", "f: %REQ(a):4294967296%: the length is too large (at most 4294967295)"),
            ("%PROTOCOL(x)%", "invalid plugin configuration: f: %PROTOCOL(x)%: %PROTOCOL% takes no argument"),
            (
                "%PROTOCOL:3%",
                "invalid plugin configuration: f: %PROTOCOL:3%: a length limit (:N) applies only to %REQ(...)% here",
            ),
            ("%START_TIME:3%", "f: %START_TIME:3%: a length limit (:N) applies only to %REQ(...)% here"),
            (
                "%START_TIME(%c)%",
                "invalid plugin configuration: f: %START_TIME(%c)%: the time format %c is not supported (supported: \
                 %Y %m %d %H %M %S %s %z %f %1f..%9f %%)",
            ),
            ("%START_TIME(%E3S)%", "f: %START_TIME(%E3S)%: the time format %E is not supported"),
            ("%START_TIME(%)%", "f: %START_TIME(%)%: the time format a trailing % is not supported"),
        ] {
            let err = HeaderTemplate::parse("f", value).unwrap_err().to_string();
            assert!(err.contains(error), "{value}:\n  got      {err}\n  expected {error}");
        }
    }

    #[test]
    fn the_plugin_config_refuses_what_it_cannot_print_and_prints_the_rest() {
        use crate::plugin_config::Settings;
        let err = Settings::from_json(
            br#"{"auth": {"cluster": "a", "protocol": "ext_authz", "headers_to_add": {"x-node": "n=%UPSTREAM_HOST%"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "invalid plugin configuration: auth.headers_to_add.x-node: %UPSTREAM_HOST% is not supported"
            ),
            "{err}"
        );
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a", "protocol": "ext_authz", "request_headers": ["x-tenant"],
                "headers_to_add": {"x-ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "x-tenant": "%REQ(x-absent)%",
                                   "x-static": "v"}}}"#,
        )
        .unwrap();
        let headers: &[(&str, &[u8])] = &[(":path", b"/api/flows"), ("x-tenant", b"t1")];
        let facts = Facts { source: Some("[2001:db8::7]:41000"), ..Default::default() };
        let callout = s.callout(headers, facts).unwrap();
        let sent: Vec<(&str, &str)> = callout.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        // x-tenant printed empty: not added, and the client's copy is kept (as Envoy).
        assert_eq!(
            sent[3..],
            [("x-tenant", "t1"), ("x-ip", "2001:db8::7"), ("x-static", "v"), ("content-length", "0")],
            "{sent:?}"
        );
        // A client header it prints that is not text fails closed, as a forwarded one does.
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a", "protocol": "ext_authz", "headers_to_add": {"x-u": "%REQ(x-user)%"}}}"#,
        )
        .unwrap();
        let headers: &[(&str, &[u8])] = &[(":path", b"/api/flows"), ("x-user", b"\xff")];
        assert!(s.callout(headers, Facts::default()).is_err());
    }

    #[test]
    fn hostname_is_filled_in_once_or_refused() {
        let parse = |v: &str| HeaderTemplate::parse("f", v).unwrap();
        let mut templates = vec![
            ("x-a".to_owned(), parse("node=%HOSTNAME%:%PROTOCOL%")),
            ("x-b".to_owned(), parse("%HOSTNAME%")),
            ("x-c".to_owned(), parse("static")),
        ];
        let mut unresolved = templates.clone();
        resolve_hostname("auth.headers_to_add", &mut templates, Some("prefect-server-7d9f")).unwrap();
        assert_eq!(templates[1].1.as_static(), Some("prefect-server-7d9f"), "now a static value");
        let mut facts = Facts { protocol: Some("HTTP/2"), ..Default::default() };
        let out = templates[0].1.render::<(&str, &[u8])>(&[], &names(&[]), &mut facts);
        assert_eq!(out, value("node=prefect-server-7d9f:HTTP/2"));
        // Without the variable (or an empty one) a value that prints it is refused; the
        // others need none.
        for hostname in [None, Some(""), Some("a\nb")] {
            let err = resolve_hostname("auth.headers_to_add", &mut unresolved.clone(), hostname).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid plugin configuration: auth.headers_to_add.x-a: %HOSTNAME% prints the HOSTNAME environment \
                 variable, which the Wasm VM does not have: expose the host's (Envoy: \
                 vm_config.environment_variables.host_env_keys: [HOSTNAME]; Istio WasmPlugin: vmConfig.env: [{name: \
                 HOSTNAME, valueFrom: HOST}], which make convert writes)"
            );
        }
        resolve_hostname("auth.headers_to_add", &mut unresolved[2..], None).unwrap();
        // Never resolved (outside the host): it prints nothing, never its text.
        let out = unresolved[1].1.render::<(&str, &[u8])>(&[], &names(&[]), &mut Facts::default());
        assert_eq!(out, Rendered::Empty);
    }

    #[test]
    fn the_forward_auth_peer_closure_is_a_request_info_with_only_the_address() {
        let mut peer = || Some("10.0.0.7:1".to_owned());
        assert_eq!(peer.source_address().as_deref(), Some("10.0.0.7:1"));
        assert_eq!(peer.destination_address(), None);
        assert_eq!(peer.protocol(), None);
        assert_eq!(peer.start_time_ns(), None);
    }
}
