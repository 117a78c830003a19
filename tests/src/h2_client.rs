//! The HTTP/2 side of the test client: a [`RawRequest`] sent as one h2 stream.
//!
//! [`send`] uses the `h2` crate (a real, well-kept client: flow control, SETTINGS,
//! CONTINUATION) over h2c with prior knowledge or over TLS with ALPN `h2`. The request
//! is translated the way any h2 client translates it: `host` becomes `:authority`,
//! names are lower-cased, connection-specific headers (`connection`, `transfer-encoding`,
//! ...) are dropped, and each chunk of a chunked body becomes one DATA frame.
//!
//! `http::Uri` refuses some request targets a hostile client can still put in `:path`
//! (raw NUL, fragments, `*`, no leading slash). [`send_raw_path`] writes such a `:path`
//! byte for byte in hand-built frames (HPACK from `loona-hpack`), so the paths.tsv replay
//! shows what Envoy's codec does with each one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::client::{Body, RawRequest, Response, CLIENT_TIMEOUT};

/// Connection-specific headers an h2 client must not send (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

/// A TLS client that trusts one CA and offers ALPN `h2` only.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts `ca_pem` (one PEM certificate).
    pub fn new(ca_pem: &str) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).expect("CA certificate PEM");
        roots.add(ca).expect("add the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsClient { config: Arc::new(config) }
    }
}

/// Sends `req` as one HTTP/2 stream to 127.0.0.1:`port` (h2c, or TLS when `tls` is set)
/// on a fresh connection, and reads the whole response.
pub fn send(port: u16, tls: Option<&TlsClient>, req: &RawRequest) -> io::Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match tokio::time::timeout(CLIENT_TIMEOUT, exchange_on(port, tls, req)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "h2 exchange not finished")),
        }
    })
}

async fn exchange_on(port: u16, tls: Option<&TlsClient>, req: &RawRequest) -> io::Result<Response> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => exchange(tcp, "http", req, start).await,
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
            let stream = connector.connect(name, tcp).await?;
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() != Some(b"h2".as_slice()) {
                return Err(io::Error::other(format!("TLS handshake negotiated ALPN {alpn:?}, not h2")));
            }
            exchange(stream, "https", req, start).await
        }
    }
}

/// Builds the `http::Request` an h2 client would send for `req`; `Err` when `http`
/// cannot express the target.
fn build(scheme: &str, req: &RawRequest) -> io::Result<http::Request<()>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let authority = req.header_value("host").map(|v| String::from_utf8_lossy(v).into_owned());
    let authority = authority.unwrap_or_else(|| "localhost".to_owned());
    let target = String::from_utf8(req.target().to_vec())
        .map_err(|_| invalid(format!("the h2 client cannot send a non-UTF-8 target {:?}", req.target())))?;
    let uri = if target.starts_with("http://") || target.starts_with("https://") {
        target.clone()
    } else {
        format!("{scheme}://{authority}{target}")
    };
    let uri: http::Uri =
        uri.parse().map_err(|e| invalid(format!("the h2 client cannot send target {target:?}: {e}")))?;
    let method = http::Method::from_bytes(req.method().as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in req.header_list() {
        let name = HeaderName::from_bytes(name).map_err(|e| invalid(format!("header name {name:?}: {e}")))?;
        if name == http::header::HOST || CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_bytes(value).map_err(|e| invalid(format!("header {name} value: {e}")))?;
        builder = builder.header(name, value);
    }
    if let Body::Full(b) = req.body_ref() {
        builder = builder.header(http::header::CONTENT_LENGTH, b.len());
    }
    builder.body(()).map_err(|e| invalid(e.to_string()))
}

/// The request's trailers as an h2 trailer block (names lower-cased); `None` without any.
fn trailer_map(req: &RawRequest) -> io::Result<Option<http::HeaderMap>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let mut map = http::HeaderMap::new();
    for (name, value) in req.trailer_list() {
        let name = HeaderName::from_bytes(name).map_err(|e| invalid(format!("trailer name {name:?}: {e}")))?;
        let value = HeaderValue::from_bytes(value).map_err(|e| invalid(format!("trailer {name} value: {e}")))?;
        map.append(name, value);
    }
    Ok((!map.is_empty()).then_some(map))
}

async fn exchange<T>(io: T, scheme: &str, req: &RawRequest, start: Instant) -> io::Result<Response>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = build(scheme, req)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(8 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_error)?;
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.map_err(h2_error)?;
    let chunks: Vec<Vec<u8>> = match req.body_ref() {
        Body::None => Vec::new(),
        Body::Full(b) => vec![b.clone()],
        Body::Chunked(chunks) => chunks.iter().filter(|c| !c.is_empty()).cloned().collect(),
    };
    let trailers = trailer_map(req)?;
    let (response, mut stream) =
        client.send_request(request, chunks.is_empty() && trailers.is_none()).map_err(h2_error)?;
    let last = chunks.len().saturating_sub(1);
    let mut sent = true;
    for (i, chunk) in chunks.into_iter().enumerate() {
        // The h2 crate queues what exceeds the window. An error here means Envoy answered
        // (and reset the stream) before taking the body: the response is still read.
        if stream.send_data(Bytes::from(chunk), i == last && trailers.is_none()).is_err() {
            sent = false;
            break;
        }
    }
    if let (Some(trailers), true) = (trailers, sent) {
        // A HEADERS frame with END_STREAM after the data (RFC 9113 §8.1).
        let _ = stream.send_trailers(trailers);
    }
    let response = response.await.map_err(h2_error)?;
    let first_byte = start.elapsed();
    let status = response.status().as_u16();
    let headers = response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let mut body_stream = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = body_stream.data().await {
        let chunk = chunk.map_err(h2_error)?;
        let _ = body_stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    driver.abort();
    Ok(Response { status, headers, body, elapsed: start.elapsed(), first_byte })
}

fn h2_error(e: h2::Error) -> io::Error {
    if let Some(reason) = e.reason() {
        return io::Error::new(io::ErrorKind::ConnectionReset, format!("h2: {e} ({reason:?})"));
    }
    match e.into_io() {
        Some(io) => io,
        None => io::Error::other("h2 protocol error"),
    }
}

// ---------------------------------------------------------------------------------------
// Raw frames, for a `:path` no client library will build.

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn read_frame(stream: &mut TcpStream) -> io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[3], head[4], id, payload))
}

/// The payload of a HEADERS or DATA frame without padding (and priority fields).
fn unpad(kind: u8, flags: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed padded frame");
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first().ok_or_else(bad)?);
        p = &p[1..];
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        p = p.get(5..).ok_or_else(bad)?;
    }
    Ok(p.get(..p.len().checked_sub(pad).ok_or_else(bad)?).ok_or_else(bad)?.to_vec())
}

/// `GET` with `:path` = `path` byte for byte (plus `:scheme http`, `:authority
/// localhost` and `headers`) on a fresh h2c connection. A stream reset or GOAWAY from
/// Envoy comes back as an `Err` naming the error code.
pub fn send_raw_path(port: u16, path: &[u8], headers: &[(&str, &str)]) -> io::Result<Response> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut fields: Vec<(&[u8], &[u8])> =
        vec![(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"), (b":path", path)];
    fields.extend(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let block = loona_hpack::Encoder::new().encode(fields);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    stream.write_all(&out)?;

    let mut decoder = loona_hpack::Decoder::new();
    let mut block = Vec::new();
    let mut head: Option<(u16, Vec<crate::client::Header>)> = None;
    let mut first_byte = None;
    let mut body = Vec::new();
    loop {
        let (kind, flags, id, payload) = read_frame(&mut stream)?;
        match kind {
            SETTINGS if flags & ACK == 0 => stream.write_all(&frame(SETTINGS, ACK, 0, &[]))?,
            PING if flags & ACK == 0 => stream.write_all(&frame(PING, ACK, 0, &payload))?,
            GOAWAY => {
                let code = payload.get(4..8).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, format!("GOAWAY (error code {code:?})")));
            }
            RST_STREAM if id == 1 => {
                let code = payload.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                match head {
                    // A reset after a complete response head with NO_ERROR ends the body.
                    Some(_) if code == Some(0) => break,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("RST_STREAM (error code {code:?})"),
                        ))
                    }
                }
            }
            HEADERS | CONTINUATION if id == 1 => {
                first_byte.get_or_insert_with(|| start.elapsed());
                block.extend(if kind == HEADERS { unpad(kind, flags, &payload)? } else { payload });
                if flags & END_HEADERS != 0 {
                    let fields = decoder
                        .decode(&block)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
                    block.clear();
                    let status = fields
                        .iter()
                        .find(|(n, _)| n == b":status")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
                    if let Some(status) = status.filter(|s| !(100..200).contains(s)) {
                        let headers = fields
                            .into_iter()
                            .filter(|(n, _)| !n.starts_with(b":"))
                            .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), v))
                            .collect();
                        head = Some((status, headers));
                    }
                }
                if flags & END_STREAM != 0 && head.is_some() {
                    break;
                }
            }
            DATA if id == 1 => {
                body.extend(unpad(kind, flags, &payload)?);
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    let (status, headers) = head.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no response head"))?;
    let elapsed = start.elapsed();
    Ok(Response { status, headers, body, elapsed, first_byte: first_byte.unwrap_or(elapsed) })
}
