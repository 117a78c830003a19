//! A raw HTTP/1.1 client on a std `TcpStream`.
//!
//! Requests are written byte for byte as built, so hostile request targets (raw NUL,
//! backslashes, absolute-form, `*`), mixed-case duplicate headers and non-UTF-8 values go
//! on the wire unchanged. Every request carries `connection: close` and the response is
//! read to EOF, so there is no framing guesswork on our side.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one exchange may take before the client gives up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A header as it appeared on the wire: lower-cased name, raw value bytes.
pub type Header = (String, Vec<u8>);

/// All values of `name` (case-insensitive) in wire order.
pub fn values<'a>(headers: &'a [Header], name: &str) -> Vec<&'a [u8]> {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
}

/// All values of `name`, lossily decoded, in wire order.
pub fn values_lossy(headers: &[Header], name: &str) -> Vec<String> {
    values(headers, name).into_iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// Shows bytes readably: printable ASCII as is, everything else as `\xHH`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Which HTTP version a test speaks to Envoy's listener (`codec_type: AUTO` takes both
/// HTTP/1.1 and HTTP/2 with prior knowledge on one port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, the request's bytes exactly as built.
    H1,
    /// HTTP/2 through the `h2` crate ([`crate::h2_client`]).
    H2,
}

pub(crate) enum Body {
    None,
    Full(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// An HTTP/1.1 request written exactly as built.
pub struct RawRequest {
    method: String,
    target: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Body,
    /// Sent after a chunked body (RFC 9112 §7.1.2) or as the h2 trailers HEADERS frame.
    trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawRequest {
    pub fn new(method: &str, target: impl AsRef<[u8]>) -> Self {
        RawRequest {
            method: method.to_owned(),
            target: target.as_ref().to_vec(),
            headers: Vec::new(),
            body: Body::None,
            trailers: Vec::new(),
        }
    }

    pub fn get(target: impl AsRef<[u8]>) -> Self {
        Self::new("GET", target)
    }

    /// A POST with a `content-length` body.
    pub fn post(target: impl AsRef<[u8]>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", target).body(body)
    }

    /// Adds a header exactly as given (name case and value bytes preserved).
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Adds several `(name, value)` headers.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Self {
        for (n, v) in headers {
            self = self.header(n, v);
        }
        self
    }

    /// `authorization: Bearer <script>`; see [`crate::mock_auth`] for the scripts.
    pub fn bearer(self, script: &str) -> Self {
        self.header("authorization", format!("Bearer {script}"))
    }

    /// A body sent with `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Full(body.into());
        self
    }

    /// A body sent with `transfer-encoding: chunked`, one chunk per element.
    pub fn chunked(mut self, chunks: Vec<Vec<u8>>) -> Self {
        self.body = Body::Chunked(chunks);
        self
    }

    /// Adds a trailer field exactly as given; sent only after a [`RawRequest::chunked`] body
    /// over HTTP/1.1 (the h2 client lower-cases the name, as HTTP/2 requires).
    pub fn trailer(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.trailers.push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// The trailers as added, in order.
    pub fn trailer_list(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.trailers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// The headers as added, in order (no `host`/`connection` defaults).
    pub fn header_list(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// The first value of `name` (case-insensitive) as added.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.as_slice())
    }

    pub(crate) fn body_ref(&self) -> &Body {
        &self.body
    }

    /// The request as it goes on the wire. `host: localhost` and `connection: close`
    /// are added unless already present.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut headers = self.headers.clone();
        if !self.has_header("host") {
            headers.insert(0, (b"host".to_vec(), b"localhost".to_vec()));
        }
        if !self.has_header("connection") {
            headers.push((b"connection".to_vec(), b"close".to_vec()));
        }
        match &self.body {
            Body::None => {}
            Body::Full(b) => headers.push((b"content-length".to_vec(), b.len().to_string().into_bytes())),
            Body::Chunked(_) => headers.push((b"transfer-encoding".to_vec(), b"chunked".to_vec())),
        }
        for (n, v) in &headers {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match &self.body {
            Body::None => {}
            Body::Full(b) => out.extend_from_slice(b),
            Body::Chunked(chunks) => {
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (n, v) in &self.trailers {
                    out.extend_from_slice(n);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    /// Sends the request to 127.0.0.1:`port`; panics (with the request) on I/O errors.
    pub fn send(&self, port: u16) -> Response {
        self.try_send(port)
            .unwrap_or_else(|e| panic!("request {} {} to port {port} failed: {e}", self.method, escape(&self.target)))
    }

    pub fn try_send(&self, port: u16) -> io::Result<Response> {
        send_raw(port, &self.to_bytes())
    }

    /// Sends the request from the loopback address `source` (e.g. 127.0.0.2): the
    /// socket is bound before it connects, so Envoy sees that peer address.
    pub fn send_from(&self, source: IpAddr, port: u16) -> Response {
        send_raw_from(Some(source), port, &self.to_bytes()).unwrap_or_else(|e| {
            panic!("request {} {} from {source} to port {port} failed: {e}", self.method, escape(&self.target))
        })
    }

    /// Sends the request over `proto` (h2c for [`Proto::H2`]).
    pub fn try_send_over(&self, proto: Proto, port: u16) -> io::Result<Response> {
        match proto {
            Proto::H1 => self.try_send(port),
            Proto::H2 => crate::h2_client::send(port, None, self),
        }
    }
}

/// A parsed response. Interim 1xx responses (other than 101) are skipped.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// How long the exchange took (connect to the end of the response).
    pub elapsed: Duration,
    /// When the first bytes of the response arrived (after connect).
    pub first_byte: Duration,
}

impl Response {
    /// The first value of `name`, lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        values_lossy(&self.headers, name).into_iter().next()
    }

    /// All values of `name`, lossily decoded.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        values_lossy(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        !values(&self.headers, name).is_empty()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the response if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{self:?}"))
    }

    /// Whether the response came from the upstream cluster through the router (Envoy
    /// adds `x-envoy-upstream-service-time` to proxied responses, never to local replies).
    pub fn proxied(&self) -> bool {
        self.has_header("x-envoy-upstream-service-time")
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "HTTP {} (first byte after {:?}, complete after {:?})",
            self.status, self.first_byte, self.elapsed
        )?;
        for (n, v) in &self.headers {
            writeln!(f, "{n}: {}", escape(v))?;
        }
        let shown = &self.body[..self.body.len().min(600)];
        write!(f, "\n{}", escape(shown))?;
        if self.body.len() > shown.len() {
            write!(f, "... ({} bytes)", self.body.len())?;
        }
        Ok(())
    }
}

pub(crate) fn connect(source: Option<IpAddr>, port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
        Some(source) => connect_from(source, addr)?,
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// std cannot bind a socket before connecting it; tokio's `TcpSocket` can.
fn connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// Writes `request` as is and reads the response: up to its end when it is framed
/// (content-length or chunked), else until EOF. Returning at the end of the framing
/// matters: after a local reply Envoy waits up to its delayed-close timeout (1 s) for
/// the client to close first.
///
/// A write error (the proxy answered and closed before taking the whole body) is not
/// fatal: whatever response arrived is still read and returned.
pub fn send_raw(port: u16, request: &[u8]) -> io::Result<Response> {
    send_raw_from(None, port, request)
}

/// [`send_raw`] from the local address `source` (`None`: the kernel's choice).
pub fn send_raw_from(source: Option<IpAddr>, port: u16, request: &[u8]) -> io::Result<Response> {
    send_parts_from(source, port, &[request], Duration::ZERO)
}

/// As [`send_raw`], writing `parts` one after the other with `pause` between them (a
/// client that sends its body slowly).
pub fn send_in_parts(port: u16, parts: &[&[u8]], pause: Duration) -> io::Result<Response> {
    send_parts_from(None, port, parts, pause)
}

fn send_parts_from(source: Option<IpAddr>, port: u16, parts: &[&[u8]], pause: Duration) -> io::Result<Response> {
    let start = Instant::now();
    let stream = connect(source, port)?;
    exchange(stream, parts, pause, start)
}

/// Writes `parts` on `stream` (plain TCP or TLS) and reads the response, as [`send_raw`].
pub(crate) fn exchange(
    mut stream: impl Read + Write,
    parts: &[&[u8]],
    pause: Duration,
    start: Instant,
) -> io::Result<Response> {
    let mut write_result = Ok(());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        write_result = stream.write_all(part).and_then(|()| stream.flush());
        if write_result.is_err() {
            break;
        }
    }
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut first_byte = None;
    let read_result = loop {
        if Instant::now() > deadline {
            break Err(io::Error::new(io::ErrorKind::TimedOut, "response not finished"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                first_byte.get_or_insert_with(|| start.elapsed());
                buf.extend_from_slice(&chunk[..n]);
                if let Ok(Some((mut resp, _))) = parse_response(&buf, false) {
                    resp.elapsed = start.elapsed();
                    resp.first_byte = first_byte.unwrap_or(resp.elapsed);
                    return Ok(resp);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    match parse_response(&buf, true) {
        Ok(Some((mut resp, _))) => {
            resp.elapsed = start.elapsed();
            resp.first_byte = first_byte.unwrap_or(resp.elapsed);
            Ok(resp)
        }
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection ended without a complete response (write: {:?}, read: {:?}); got {} bytes: {}",
                write_result.err(),
                read_result.err(),
                buf.len(),
                escape(&buf[..buf.len().min(300)])
            ),
        )),
        Err(e) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {}", escape(&buf[..buf.len().min(300)]))))
        }
    }
}

/// Parses one response from `buf`: `Ok(None)` if incomplete. On success also returns the
/// number of bytes consumed. Interim 1xx responses other than 101 are skipped. A body
/// without content-length or chunked framing runs to EOF, so it is only complete when
/// `eof` says the connection has ended.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(Response, usize)>, String> {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&buf[offset..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("unparseable response head: {e}")),
        };
        let status = parsed.code.unwrap_or(0);
        let headers: Vec<Header> =
            parsed.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
        let body_start = offset + head_len;
        if (100..200).contains(&status) && status != 101 {
            offset = body_start;
            continue;
        }
        let rest = &buf[body_start..];
        let chunked = values(&headers, "transfer-encoding")
            .iter()
            .any(|v| String::from_utf8_lossy(v).to_ascii_lowercase().contains("chunked"));
        let length = values(&headers, "content-length")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        let (body, used) = if status == 101 || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if chunked {
            match decode_chunked(rest)? {
                Some(x) => x,
                None => return Ok(None),
            }
        } else if let Some(len) = length {
            if rest.len() < len {
                return Ok(None);
            }
            (rest[..len].to_vec(), len)
        } else if eof {
            (rest.to_vec(), rest.len())
        } else {
            return Ok(None);
        };
        let resp = Response { status, headers, body, elapsed: Duration::ZERO, first_byte: Duration::ZERO };
        return Ok(Some((resp, body_start + used)));
    }
}

/// Decodes a chunked body: `Ok(None)` if incomplete; on success (body, bytes consumed).
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[pos..pos + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The outcome of a WebSocket attempt: the handshake response and, after a 101, the
/// bytes that came back after sending the payload.
#[derive(Debug)]
pub struct WsOutcome {
    pub response: Response,
    pub echoed: Vec<u8>,
}

/// Sends a WebSocket upgrade for `path`, and after `101` writes `payload` and reads the
/// same number of bytes back (the echo upstream returns them verbatim). Without a 101
/// the response is read by its framing and `echoed` stays empty.
pub fn websocket_echo(port: u16, path: &str, headers: &[(&str, &str)], payload: &[u8]) -> io::Result<WsOutcome> {
    let start = Instant::now();
    let mut stream = connect(None, port)?;
    let req = RawRequest::get(path)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .headers(headers)
        .to_bytes();
    // RawRequest adds no `connection: close` when a connection header exists.
    stream.write_all(&req)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let (mut response, used) = loop {
        if let Some(parsed) = parse_response(&buf, false).map_err(io::Error::other)? {
            break parsed;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no upgrade response"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF before the upgrade response: {}", escape(&buf)),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    response.elapsed = start.elapsed();
    let mut echoed = buf[used..].to_vec();
    if response.status != 101 {
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(WsOutcome { response, echoed: Vec::new() });
    }
    stream.write_all(payload)?;
    while echoed.len() < payload.len() {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "echo incomplete"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        echoed.extend_from_slice(&chunk[..n]);
    }
    Ok(WsOutcome { response, echoed })
}

/// One request a mock server (auth service or upstream) received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as received.
    pub path: String,
    /// In wire order: (lower-cased name, raw value).
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// The request's trailers, in wire order (only the echo upstream records them).
    pub trailers: Vec<Header>,
}

impl RecordedRequest {
    /// The first value of `name`, lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        values_lossy(&self.headers, name).into_iter().next()
    }

    /// All values of `name`, lossily decoded.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        values_lossy(&self.headers, name)
    }

    /// All values of `name` as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Vec<Vec<u8>> {
        values(&self.headers, name).into_iter().map(<[u8]>::to_vec).collect()
    }

    /// The header names, in wire order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}
