//! Integration-test harness for the nebula-authz proxy-wasm filter.
//!
//! [`Env`] runs the real envoy/envoy.yaml (rendered by scripts/render_envoy.py) with the
//! built `.wasm`, a scriptable [`MockAuth`] service and an [`Upstream`] echo server on
//! ephemeral ports; [`RawRequest`] puts exact bytes on the wire. The tests live in
//! `tests/tests/*.rs`; shared assertions live here so they are written once.

pub mod client;
pub mod differential_record;
pub mod envoy;
pub mod ext_authz_pair;
pub mod h2_client;
pub mod known_differences;
pub mod mock_auth;
pub mod mock_jwks;
pub mod mock_server;
pub mod nginx;
pub mod outposts;
pub mod paths;
pub mod soak;
pub mod tls;
pub mod traefik;
pub mod upstream;
mod ws_accept;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use client::{websocket_echo, Proto, RawRequest, Response, WsOutcome};
pub use envoy::{Env, EnvBuilder, StartFailure};
pub use mock_auth::{AuthRequest, MockAuth};
pub use mock_jwks::MockJwks;
pub use upstream::{Upstream, UpstreamRequest};
pub use ws_accept::websocket_accept;

/// Runs each named `fn(Proto)` of a test file once per protocol, as the tests
/// `h1::<name>` and `h2::<name>`, so every assertion holds over HTTP/1.1 and HTTP/2.
#[macro_export]
macro_rules! over_h1_and_h2 {
    ($($name:ident),+ $(,)?) => {
        mod h1 {
            $( #[test] fn $name() { super::$name($crate::Proto::H1) } )+
        }
        mod h2 {
            $( #[test] fn $name() { super::$name($crate::Proto::H2) } )+
        }
    };
}

/// The body of the filter's fail-closed reply.
pub const FILTER_ERROR_BODY: &str = "nebula-authz: authorization check failed\n";

/// The identity headers the filter strips from clients and takes from the auth service.
pub const NEBULA_HEADERS: [&str; 4] =
    ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config", "x-nebula-log-limit-config"];

/// The repository root (the parent of this crate), symlinks resolved.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest.canonicalize().unwrap_or_else(|_| manifest.to_path_buf());
    manifest.parent().expect("tests/ has a parent directory").to_path_buf()
}

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// The value of the counter `name` in `/stats/prometheus` text (its first line, any tags).
pub fn prometheus_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name || n.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .and_then(|(_, v)| v.trim().parse().ok())
}

impl Env {
    /// Envoy's `/stats/prometheus` (the `nebula_authz_*` counters among them).
    pub fn prometheus(&self) -> String {
        let resp = RawRequest::get("/stats/prometheus").send(self.admin_port);
        assert_eq!(resp.status, 200, "admin /stats/prometheus: {resp:?}");
        resp.text()
    }

    /// `/stats/prometheus` once the filter's counters have settled. The filter counts in
    /// worker memory and hands the counts to Envoy once a second (filter/src/flow/counters.rs
    /// `FLUSH_PERIOD`), so a read right after a request may miss it: this reads until the
    /// `nebula_authz_*` lines stay the same for longer than one flush period (bounded:
    /// 15 s), and returns that text.
    pub fn prometheus_settled(&self) -> String {
        let counters = |text: &str| -> Vec<String> {
            text.lines().filter(|l| l.starts_with("nebula_authz_")).map(str::to_owned).collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut text = self.prometheus();
        let mut since = std::time::Instant::now();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let next = self.prometheus();
            if counters(&next) != counters(&text) {
                since = std::time::Instant::now();
            }
            text = next;
            if since.elapsed() > std::time::Duration::from_millis(1_500) || std::time::Instant::now() > deadline {
                return text;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared assertions. Each panics with the response and the Envoy log tail.

impl Env {
    /// Panics with `what`, the response and the Envoy log tail.
    pub fn fail(&self, what: &str, resp: &Response) -> ! {
        panic!(
            "{what}\nresponse:\n{resp:?}\nauth requests: {}, upstream requests: {}\nEnvoy log tail:\n{}",
            self.auth.count(),
            self.upstream.count(),
            self.log_tail()
        )
    }

    /// Asserts `cond`, failing with [`Env::fail`].
    pub fn check(&self, cond: bool, what: &str, resp: &Response) {
        if !cond {
            self.fail(what, resp);
        }
    }

    /// The filter's fail-closed reply with `status`, and nothing reached the upstream.
    pub fn assert_fail_closed(&self, case: &str, resp: &Response, status: u16) {
        self.check(resp.status == status, &format!("{case}: expected the fail-closed status {status}"), resp);
        self.check(
            resp.text() == FILTER_ERROR_BODY,
            &format!("{case}: expected the filter's error body {FILTER_ERROR_BODY:?}"),
            resp,
        );
        self.check(
            resp.header("content-type").is_some_and(|v| v.starts_with("text/plain")),
            &format!("{case}: expected content-type text/plain"),
            resp,
        );
        self.check(!resp.proxied(), &format!("{case}: the reply must be local, not proxied"), resp);
        self.check(self.upstream.count() == 0, &format!("{case}: the upstream must never be reached"), resp);
    }

    /// An allowed request: 200 from the upstream, whose last request carries exactly the
    /// auth service's four identity headers for `actor` (one value each) and no `x-other`.
    pub fn assert_allowed_as(&self, case: &str, resp: &Response, actor: &str) -> UpstreamRequest {
        self.check(resp.status == 200 && resp.proxied(), &format!("{case}: expected 200 from the upstream"), resp);
        let up = self.upstream.last();
        let expected = [actor.to_owned(), "read,write".to_owned(), format!("rl-{actor}"), format!("ll-{actor}")];
        for (name, want) in NEBULA_HEADERS.iter().zip(expected) {
            let got = up.header_all(name);
            self.check(
                got == [want.clone()],
                &format!(
                    "{case}: upstream {name} = {got:?}, expected exactly [{want:?}]; upstream headers: {:?}",
                    up.headers
                ),
                resp,
            );
        }
        self.check(
            up.header("x-other").is_none(),
            &format!("{case}: x-other from the auth response leaked upstream"),
            resp,
        );
        up
    }

    /// The mock's 401: status, body, `www-authenticate`, `content-type`; no `x-internal`;
    /// upstream untouched (`upstream_before` = its count before the request).
    pub fn assert_denied(&self, case: &str, resp: &Response, upstream_before: usize) {
        self.check(resp.status == 401, &format!("{case}: expected 401"), resp);
        self.check(resp.text() == mock_auth::DENY_BODY, &format!("{case}: expected the auth service's body"), resp);
        self.check(
            resp.header_all("www-authenticate") == [mock_auth::WWW_AUTHENTICATE],
            &format!("{case}: expected www-authenticate from the auth service"),
            resp,
        );
        self.check(
            resp.header_all("content-type") == ["application/json"],
            &format!("{case}: expected content-type application/json"),
            resp,
        );
        self.check(
            !resp.has_header("x-internal"),
            &format!("{case}: x-internal from the auth response leaked to the client"),
            resp,
        );
        self.check(
            self.upstream.count() == upstream_before,
            &format!("{case}: a denied request reached the upstream"),
            resp,
        );
    }
}
