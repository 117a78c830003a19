//! The echo upstream: a hyper 1 HTTP/1.1 server that records every request and answers
//! `200 application/json` describing what arrived:
//! `{"method", "path", "headers": {name: [values]}, "body_len"}`; the request's trailers
//! are recorded too. [`start_h2`] serves the same over HTTP/2 (h2c).
//!
//! * a path containing `/stream` gets a chunked body of three chunks 100 ms apart
//!   ([`STREAM_BODY`] in total);
//! * each `x-echo-set-cookie` request header comes back as a `set-cookie` response header;
//! * `upgrade: websocket` gets `101 Switching Protocols` and then every byte is echoed
//!   back on the upgraded connection.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::client::{self, Header};
use crate::mock_server::{MockServer, Records};

/// The three chunks of a `/stream` response, concatenated.
pub const STREAM_CHUNKS: [&str; 3] = ["chunk-0\n", "chunk-1\n", "chunk-2\n"];
pub const STREAM_BODY: &str = "chunk-0\nchunk-1\nchunk-2\n";

/// One request the upstream received.
pub type UpstreamRequest = crate::client::RecordedRequest;

/// The echo upstream: answers with what it received.
pub type Upstream = MockServer;

/// Starts the echo upstream on `rt`.
pub fn start(rt: &Runtime) -> Upstream {
    MockServer::start(rt, "the upstream", |stream, recorded| async move {
        let service = service_fn(move |req| handle(req, recorded.clone()));
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
    })
}

/// Starts the echo upstream on `rt` speaking HTTP/2 with prior knowledge (h2c), as a gRPC
/// backend does: Envoy's cluster then needs `http2_protocol_options`, and request trailers
/// reach it (HTTP/1.1 drops them unless the cluster enables them).
pub fn start_h2(rt: &Runtime) -> Upstream {
    MockServer::start(rt, "the upstream", |stream, recorded| async move {
        let service = service_fn(move |req| handle(req, recorded.clone()));
        let _ = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
    })
}

/// A full body or a channel of chunks.
pub enum EchoBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            EchoBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            EchoBody::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|d| Ok(Frame::data(d)))),
        }
    }
}

async fn handle(mut req: Request<Incoming>, recorded: Records) -> Result<Response<EchoBody>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| req.uri().to_string());
    let headers: Vec<Header> =
        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let websocket = client::values(&headers, "upgrade").iter().any(|v| v.eq_ignore_ascii_case(b"websocket"));

    let (body, trailers) = if websocket {
        (Vec::new(), Vec::new())
    } else {
        match req.body_mut().collect().await {
            Ok(collected) => {
                let trailers: Vec<Header> = collected
                    .trailers()
                    .map(|t| t.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect())
                    .unwrap_or_default();
                (collected.to_bytes().to_vec(), trailers)
            }
            Err(_) => (Vec::new(), Vec::new()),
        }
    };
    let mut headers_json = serde_json::Map::new();
    for (n, v) in &headers {
        headers_json
            .entry(n.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()))
            .as_array_mut()
            .expect("array")
            .push(String::from_utf8_lossy(v).into_owned().into());
    }
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers_json,
        "body_len": body.len(),
    });
    let key = client::values(&headers, "sec-websocket-key").first().map(|k| k.to_vec()).unwrap_or_default();
    let set_cookies: Vec<Vec<u8>> =
        client::values(&headers, "x-echo-set-cookie").into_iter().map(<[u8]>::to_vec).collect();
    recorded.push(UpstreamRequest { method, path: path.clone(), headers, body, trailers });

    if websocket {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = io.flush().await;
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", crate::websocket_accept(&key))
            .body(EchoBody::Full(None))
            .expect("101 response");
        return Ok(resp);
    }

    if path.contains("/stream") {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for (i, chunk) in STREAM_CHUNKS.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if tx.send(Bytes::from_static(chunk.as_bytes())).await.is_err() {
                    break;
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(EchoBody::Stream(rx))
            .expect("stream response");
        return Ok(resp);
    }

    let mut resp = Response::builder().status(StatusCode::OK).header("content-type", "application/json");
    for cookie in set_cookies {
        resp = resp.header("set-cookie", cookie);
    }
    let resp = resp.body(EchoBody::Full(Some(Bytes::from(echo.to_string())))).expect("echo response");
    Ok(resp)
}
