//! A JWKS endpoint for the JWT tests: serves whatever document the test sets (keys can
//! change between requests, as an identity provider rotating keys), or fails with 503
//! while "down", and records every fetch. [`MockJwks::set_at`] serves another document
//! at one path (an OIDC openid-configuration beside the keys); [`MockJwks::delay`] makes
//! every answer late (a slow identity provider). It runs on its own runtime so that a test
//! can start it before Envoy and hand its address to [`crate::EnvBuilder::cluster`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;

use crate::client::{Header, RecordedRequest};
use crate::mock_server::MockServer;

/// `Some(document)` to serve, `None` to answer 503.
type Document = Arc<Mutex<Option<String>>>;
/// Documents served at one path each, before the default one.
type Routes = Arc<Mutex<HashMap<String, String>>>;

pub struct MockJwks {
    server: MockServer,
    document: Document,
    routes: Routes,
    delay: Arc<Mutex<Duration>>,
    _rt: Runtime,
}

impl MockJwks {
    /// Starts serving `document` (a JWKS JSON text) on 127.0.0.1.
    pub fn start(document: &str) -> MockJwks {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let doc: Document = Arc::new(Mutex::new(Some(document.to_owned())));
        let served = doc.clone();
        let routes: Routes = Arc::default();
        let by_path = routes.clone();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let late = delay.clone();
        let server = MockServer::start(&rt, "the JWKS endpoint", move |stream, recorded| {
            let (served, by_path, late) = (served.clone(), by_path.clone(), late.clone());
            async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let headers: Vec<Header> =
                        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
                    recorded.push(RecordedRequest {
                        method: req.method().to_string(),
                        path: req.uri().path().to_owned(),
                        headers,
                        body: Vec::new(),
                        trailers: Vec::new(),
                    });
                    let routed = by_path.lock().expect("routes").get(req.uri().path()).cloned();
                    let down = served.lock().expect("document").is_none();
                    let answer = match routed.filter(|_| !down).or_else(|| served.lock().expect("document").clone()) {
                        Some(doc) => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(doc))),
                        None => Response::builder().status(503).body(Full::new(Bytes::from_static(b"down"))),
                    };
                    let wait = *late.lock().expect("delay");
                    async move {
                        tokio::time::sleep(wait).await;
                        Ok::<_, Infallible>(answer.expect("response"))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            }
        });
        MockJwks { server, document: doc, routes, delay, _rt: rt }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server.port()))
    }

    /// Serves `document` from now on.
    pub fn set(&self, document: &str) {
        *self.document.lock().expect("document") = Some(document.to_owned());
    }

    /// Serves `document` at `path` (and the default document everywhere else).
    pub fn set_at(&self, path: &str, document: &str) {
        self.routes.lock().expect("routes").insert(path.to_owned(), document.to_owned());
    }

    /// Answers every later fetch `delay` after it arrives.
    pub fn delay(&self, delay: Duration) {
        *self.delay.lock().expect("delay") = delay;
    }

    /// Answers 503 from now on.
    pub fn down(&self) {
        *self.document.lock().expect("document") = None;
    }

    /// How many fetches arrived.
    pub fn count(&self) -> usize {
        self.server.count()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }
}
