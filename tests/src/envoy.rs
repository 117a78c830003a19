//! The Envoy fixture: mocks first, then envoy/envoy.yaml rendered by
//! scripts/render_envoy.py, then Envoy itself, torn down on drop.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::client::{RawRequest, Response};
use crate::mock_auth::MockAuth;
use crate::upstream::Upstream;
use crate::{repo_root, TempDir};

/// How long Envoy may take to become ready (or to fail).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many log lines a failure message shows.
const LOG_TAIL_LINES: usize = 60;

/// Tools the fixture needs, each overridable by an environment variable.
pub struct Tools {
    pub envoy: PathBuf,
    pub python: PathBuf,
    pub wasm: PathBuf,
}

impl Tools {
    /// `NEBULA_ENVOY` or `ENVOY_BIN` (default `.venv/bin/envoy`), `NEBULA_PYTHON` (default
    /// `.venv/bin/python`), `NEBULA_WASM` (default the release build). Panics, saying
    /// how to get them, when one is missing: the suite never skips.
    pub fn locate(need_wasm: bool) -> Tools {
        let root = repo_root();
        let pick = |vars: &[&str], default: PathBuf| {
            vars.iter().find_map(std::env::var_os).map(PathBuf::from).unwrap_or(default)
        };
        let tools = Tools {
            envoy: pick(&["NEBULA_ENVOY", "ENVOY_BIN"], root.join(".venv/bin/envoy")),
            python: pick(&["NEBULA_PYTHON"], root.join(".venv/bin/python")),
            wasm: pick(&["NEBULA_WASM"], root.join("target/wasm32-wasip1/release/nebula_authz.wasm")),
        };
        for (what, path, var) in [
            ("Envoy", &tools.envoy, "NEBULA_ENVOY/ENVOY_BIN"),
            ("the venv python (with PyYAML)", &tools.python, "NEBULA_PYTHON"),
        ] {
            assert!(
                path.exists(),
                "{what} not found at {}: run `make envoy` (installs Envoy and the venv into \
                 .venv/) or `make test`, or set {var}",
                path.display()
            );
        }
        if need_wasm {
            assert!(
                tools.wasm.exists(),
                "the filter is not built ({} is missing): run `make build` or `make test` \
                 (cargo build --release --target wasm32-wasip1 -p nebula-authz), or set NEBULA_WASM",
                tools.wasm.display()
            );
        }
        tools
    }
}

/// Options for starting an [`Env`].
#[derive(Clone)]
pub struct EnvBuilder {
    plugin_config: Option<String>,
    concurrency: u32,
    auth_addr: Option<SocketAddr>,
    wasm: bool,
    wasmplugin: Option<String>,
    auth_cluster: Option<String>,
    /// Extra clusters (name, address), e.g. a JWKS endpoint.
    clusters: Vec<(String, SocketAddr)>,
    /// Downstream TLS: the certificate directory and whether a client certificate is required.
    tls: Option<(PathBuf, bool)>,
    /// The connection manager's `xff_num_trusted_hops`.
    xff_trusted_hops: Option<u32>,
    /// `use_remote_address: false` instead of envoy.yaml's `true`.
    no_remote_address: bool,
}

impl Default for EnvBuilder {
    fn default() -> Self {
        EnvBuilder {
            plugin_config: None,
            concurrency: 1,
            auth_addr: None,
            wasm: true,
            wasmplugin: None,
            auth_cluster: None,
            clusters: Vec::new(),
            tls: None,
            xff_trusted_hops: None,
            no_remote_address: false,
        }
    }
}

/// Why Envoy did not become ready.
pub struct StartFailure {
    /// `None` if Envoy was still running at the start timeout (then it was killed).
    pub status: Option<ExitStatus>,
    pub log: String,
    pub auth: MockAuth,
    pub upstream: Upstream,
    /// Keeps the mocks alive while the caller inspects them.
    _rt: Runtime,
}

impl std::fmt::Debug for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Envoy did not start (exit status {:?}); log tail:\n{}", self.status, tail(&self.log, LOG_TAIL_LINES))
    }
}

impl EnvBuilder {
    /// The plugin configuration JSON (default: the one in envoy/envoy.yaml).
    pub fn plugin_config(mut self, json: &str) -> Self {
        self.plugin_config = Some(json.to_owned());
        self
    }

    /// Envoy worker threads (default 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Points the `auth` cluster somewhere else than the mock (e.g. a closed port).
    pub fn auth_addr(mut self, addr: SocketAddr) -> Self {
        self.auth_addr = Some(addr);
        self
    }

    /// Takes the plugin configuration from a WasmPlugin manifest (path from the repo root).
    pub fn plugin_config_from_wasmplugin(mut self, manifest: &str) -> Self {
        self.wasmplugin = Some(manifest.to_owned());
        self
    }

    /// Names the auth cluster `name` instead of `auth` (Istio: `outbound|4300||<fqdn>`).
    pub fn auth_cluster_name(mut self, name: &str) -> Self {
        self.auth_cluster = Some(name.to_owned());
        self
    }

    /// Adds a cluster `name` whose one endpoint is `addr` (e.g. a JWKS server).
    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push((name.to_owned(), addr));
        self
    }

    /// Serves TLS with `dir`'s server.pem/server.key, verifying client certificates
    /// against its ca.pem; `require_client_certificate` as in Envoy ([`crate::tls`]).
    pub fn downstream_tls(mut self, dir: &Path, require_client_certificate: bool) -> Self {
        self.tls = Some((dir.to_path_buf(), require_client_certificate));
        self
    }

    /// Sets the connection manager's `xff_num_trusted_hops` (Envoy's own proxy trust).
    pub fn xff_trusted_hops(mut self, hops: u32) -> Self {
        self.xff_trusted_hops = Some(hops);
        self
    }

    /// `use_remote_address: false`: Envoy takes the client address from X-Forwarded-For.
    pub fn without_remote_address(mut self) -> Self {
        self.no_remote_address = true;
        self
    }

    /// Removes the wasm filter from the chain (checks the fixture itself only).
    pub fn without_wasm(mut self) -> Self {
        self.wasm = false;
        self
    }

    /// Starts Envoy and waits until its listener is up; panics with the log tail if not.
    pub fn start(self) -> Env {
        self.try_start().unwrap_or_else(|f| panic!("{f:?}"))
    }

    /// Starts Envoy expecting it to exit during startup; panics if it becomes ready.
    pub fn start_expect_failure(self) -> StartFailure {
        match self.try_start() {
            Ok(env) => panic!(
                "Envoy started (listener on port {}) although it was expected to refuse the \
                 configuration; log tail:\n{}",
                env.port,
                env.log_tail()
            ),
            Err(f) => *f,
        }
    }

    pub fn try_start(self) -> Result<Env, Box<StartFailure>> {
        let tools = Tools::locate(self.wasm);
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let auth = crate::mock_auth::start(&rt);
        let upstream = crate::upstream::start(&rt);
        let dir = TempDir::new("nebula-authz-envoy");
        let config_path = self.render(&tools, &dir, &auth, &upstream);
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path).expect("create envoy.log");
        let child = Command::new(&tools.envoy)
            .arg("-c")
            .arg(&config_path)
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .args(["-l", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.envoy.display()));
        let mut process = EnvoyProcess { child, log_path, exited: None };
        match wait_ready(&mut process, &admin_path) {
            Ok((admin_port, port)) => Ok(Env { process, port, admin_port, auth, upstream, _rt: rt, dir }),
            Err(status) => {
                process.kill();
                Err(Box::new(StartFailure { status, log: process.log(), auth, upstream, _rt: rt }))
            }
        }
    }

    fn render(&self, tools: &Tools, dir: &TempDir, auth: &MockAuth, upstream: &Upstream) -> PathBuf {
        let auth_addr = self.auth_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], auth.port())));
        let mut cmd = Command::new(&tools.python);
        cmd.arg(repo_root().join("scripts/render_envoy.py"))
            .arg("--wasm")
            .arg(&tools.wasm)
            .args(["--listen-port", "0", "--admin-port", "0"])
            .arg("--auth")
            .arg(auth_addr.to_string())
            .arg("--upstream")
            .arg(format!("127.0.0.1:{}", upstream.port()));
        if let Some(json) = &self.plugin_config {
            let plugin_path = dir.path().join("plugin.json");
            fs::write(&plugin_path, json).expect("write plugin.json");
            cmd.arg("--plugin-config").arg(&plugin_path);
        }
        if let Some(manifest) = &self.wasmplugin {
            cmd.arg("--plugin-config-from").arg(repo_root().join(manifest));
        }
        if let Some(name) = &self.auth_cluster {
            cmd.arg("--auth-cluster").arg(name);
        }
        for (name, addr) in &self.clusters {
            cmd.arg("--cluster").arg(format!("{name}={addr}"));
        }
        if let Some((tls, required)) = &self.tls {
            cmd.arg("--tls").arg(tls).arg("--tls-client-cert").arg(if *required { "required" } else { "optional" });
        }
        if let Some(hops) = self.xff_trusted_hops {
            cmd.arg("--xff-trusted-hops").arg(hops.to_string());
        }
        if self.no_remote_address {
            cmd.arg("--no-remote-address");
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.python.display()));
        assert!(
            out.status.success(),
            "scripts/render_envoy.py failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rendered = out.stdout;
        if !self.wasm {
            rendered = strip_wasm_filter(&rendered);
        }
        let path = dir.path().join("envoy.json");
        fs::write(&path, rendered).expect("write envoy.json");
        path
    }
}

/// Drops the `nebula-authz` http filter from a rendered config.
fn strip_wasm_filter(rendered: &[u8]) -> Vec<u8> {
    let mut config: serde_json::Value = serde_json::from_slice(rendered).expect("render_envoy.py printed JSON");
    let filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .expect("http_filters in the rendered config");
    filters.retain(|f| f["name"] != "nebula-authz");
    serde_json::to_vec_pretty(&config).expect("serialize config")
}

struct EnvoyProcess {
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl EnvoyProcess {
    fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the admin address file, admin `/ready` = LIVE, then reads the listener port.
/// `Err(exit status)` if Envoy exited (or `Err(None)` on timeout).
fn wait_ready(process: &mut EnvoyProcess, admin_path: &Path) -> Result<(u16, u16), Option<ExitStatus>> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut poll = || -> Result<(), Option<ExitStatus>> {
        if let Some(status) = process.try_wait() {
            return Err(Some(status));
        }
        if Instant::now() > deadline {
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    };
    let admin_port = loop {
        if let Some(port) =
            fs::read_to_string(admin_path).ok().and_then(|s| s.trim().rsplit(':').next()?.parse::<u16>().ok())
        {
            break port;
        }
        poll()?;
    };
    loop {
        if let Ok(resp) = RawRequest::get("/ready").try_send(admin_port) {
            if resp.status == 200 && resp.text().trim() == "LIVE" {
                break;
            }
        }
        poll()?;
    }
    loop {
        if let Some(port) =
            RawRequest::get("/listeners?format=json").try_send(admin_port).ok().and_then(|resp| listener_port(&resp))
        {
            return Ok((admin_port, port));
        }
        poll()?;
    }
}

fn listener_port(resp: &Response) -> Option<u16> {
    if resp.status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    let port = json["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// The last `n` lines of `log`, without the indented inventory lines Envoy prints at
/// startup (extension lists, header map sizes), which would crowd out everything else.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("]   ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running Envoy with its mock auth service and echo upstream.
///
/// Field order is drop order: Envoy goes first, then the mocks' runtime, then the
/// temporary directory.
pub struct Env {
    process: EnvoyProcess,
    /// The Envoy listener port on 127.0.0.1.
    pub port: u16,
    pub admin_port: u16,
    pub auth: MockAuth,
    pub upstream: Upstream,
    /// Runs the mocks; dropped after Envoy.
    _rt: Runtime,
    dir: TempDir,
}

impl Env {
    pub fn builder() -> EnvBuilder {
        EnvBuilder::default()
    }

    /// Envoy with `plugin_config` as the filter configuration.
    pub fn start(plugin_config: &str) -> Env {
        Env::builder().plugin_config(plugin_config).start()
    }

    /// Envoy with the plugin configuration envoy/envoy.yaml ships.
    pub fn start_default() -> Env {
        Env::builder().start()
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }

    /// The directory holding envoy.json, plugin.json and envoy.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Envoy's process id (e.g. to read its memory from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Whether Envoy is still running (a wasm trap must not take it down).
    pub fn alive(&mut self) -> bool {
        self.process.try_wait().is_none()
    }

    /// Sends `req` to the listener; panics with the log tail if no response arrives.
    pub fn send(&self, req: &RawRequest) -> Response {
        req.try_send(self.port).unwrap_or_else(|e| {
            panic!("no response from Envoy on port {}: {e}\nEnvoy log tail:\n{}", self.port, self.log_tail())
        })
    }

    /// `GET path` with extra headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send(&RawRequest::get(path).headers(headers))
    }

    /// `GET path` with `authorization: Bearer <script>`.
    pub fn get_as(&self, path: &str, script: &str) -> Response {
        self.send(&RawRequest::get(path).bearer(script))
    }

    /// `POST path` with `authorization: Bearer <script>` and a content-length body.
    pub fn post_as(&self, path: &str, script: &str, body: &[u8]) -> Response {
        self.send(&RawRequest::post(path, body).bearer(script))
    }
}
