//! The benchmark's auth service and upstream, in one single-threaded process so that it
//! stays on the load generator's core and is never the bottleneck (`make bench`).
//!
//! * auth: `authorization: Bearer allow` → `200` with the four `x-nebula-*` headers;
//!   anything else → `401` with `www-authenticate` and a short JSON body.
//! * upstream: `200 ok`. `GET /__bench/stats` (sent to the upstream port directly) answers
//!   the request counters as JSON, so bench/run.py can check that each scenario really
//!   called the auth service (or not) and that the identity headers arrived.
//!
//! Prints `{"auth": PORT, "upstream": PORT}` on one line once both listen on 127.0.0.1.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ALLOW_TOKEN: &[u8] = b"Bearer allow";
const DENY_BODY: &str = "{\"detail\":\"not authenticated\"}";

#[derive(Default)]
struct Counters {
    auth: Cell<u64>,
    auth_allowed: Cell<u64>,
    upstream: Cell<u64>,
    /// Upstream requests that carried the auth service's `x-nebula-actor-id`.
    upstream_identity: Cell<u64>,
    /// Upstream requests that still carried a client-sent (spoofed) identity.
    upstream_spoofed: Cell<u64>,
    /// Connections accepted: a proxy that reuses its connections keeps these low.
    auth_connections: Cell<u64>,
    upstream_connections: Cell<u64>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

fn auth(req: &Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    bump(&counters.auth);
    let allowed = req.headers().get("authorization").is_some_and(|v| v.as_bytes() == ALLOW_TOKEN);
    let builder = Response::builder();
    let response = if allowed {
        bump(&counters.auth_allowed);
        builder
            .status(200)
            .header("x-nebula-actor-id", "bench-user")
            .header("x-nebula-actor-permissions", "read,write")
            .header("x-nebula-ratelimit-config", "{\"limit\":100}")
            .header("x-nebula-log-limit-config", "{\"limit\":10}")
            .body(Full::new(Bytes::new()))
    } else {
        builder
            .status(401)
            .header("www-authenticate", "Bearer realm=\"prefect\"")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(DENY_BODY.as_bytes())))
    };
    response.unwrap_or_default()
}

fn upstream(req: &Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    if req.uri().path() == "/__bench/stats" {
        let stats = serde_json::json!({
            "auth": counters.auth.get(),
            "auth_allowed": counters.auth_allowed.get(),
            "upstream": counters.upstream.get(),
            "upstream_identity": counters.upstream_identity.get(),
            "upstream_spoofed": counters.upstream_spoofed.get(),
            "auth_connections": counters.auth_connections.get(),
            "upstream_connections": counters.upstream_connections.get(),
        });
        return Response::new(Full::new(Bytes::from(stats.to_string())));
    }
    bump(&counters.upstream);
    match req.headers().get("x-nebula-actor-id").map(|v| v.as_bytes()) {
        Some(b"bench-user") => bump(&counters.upstream_identity),
        Some(_) => bump(&counters.upstream_spoofed),
        None => {}
    }
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

async fn serve(
    listener: TcpListener,
    counters: Rc<Counters>,
    handler: fn(&Request<Incoming>, &Counters) -> Response<Full<Bytes>>,
    connections: fn(&Counters) -> &Cell<u64>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        bump(connections(&counters));
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req| {
                let response = handler(&req, &counters);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let auth_listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "{{\"auth\": {}, \"upstream\": {}}}",
            auth_listener.local_addr()?.port(),
            upstream_listener.local_addr()?.port()
        );
        let counters = Rc::new(Counters::default());
        tokio::join!(
            serve(auth_listener, counters.clone(), auth, |c| &c.auth_connections),
            serve(upstream_listener, counters, upstream, |c| &c.upstream_connections)
        );
        Ok(())
    })
}
