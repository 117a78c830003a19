//! The Envoy fixture: mocks first, then envoy/envoy.yaml rendered by
//! scripts/render_envoy.py, then Envoy itself, torn down on drop.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::client::{Proto, RawRequest, Response};
use crate::h2_client::TlsClient;
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

/// The file access log's name in the Envoy's directory.
const ACCESS_LOG: &str = "access.log";

/// Options for starting an [`Env`].
#[derive(Clone)]
pub struct EnvBuilder {
    plugin_config: Option<String>,
    concurrency: u32,
    /// `--component-log-level` (e.g. `wasm:debug`), for the tests of the filter's log lines.
    component_log_level: Option<String>,
    auth_addr: Option<SocketAddr>,
    wasm: bool,
    wasmplugin: Option<String>,
    auth_cluster: Option<String>,
    /// Extra clusters (name, address), e.g. a JWKS endpoint.
    clusters: Vec<(String, SocketAddr)>,
    /// Extra clusters whose one endpoint is the mock auth service (a second provider).
    auth_aliases: Vec<String>,
    /// (mesh config, AuthorizationPolicy): Envoy's native ext_authz as istiod renders it
    /// instead of the wasm filter (scripts/render_ext_authz.py).
    ext_authz: Option<(PathBuf, PathBuf)>,
    /// The connection manager as istiod renders a sidecar's (`render_envoy.py --istio-sidecar`).
    istio_sidecar: bool,
    /// Another Env's mocks instead of new ones (two proxies, one auth service and upstream).
    mocks: Option<(MockAuth, Upstream)>,
    proto: Proto,
    tls: bool,
    ecds: bool,
    wasm_file: Option<PathBuf>,
    failure_policy: Option<String>,
    /// Downstream mTLS: the certificate directory and whether a client certificate is required.
    mtls: Option<(PathBuf, bool)>,
    /// The connection manager's `xff_num_trusted_hops`.
    xff_trusted_hops: Option<u32>,
    /// The listener's port, when the test must know it before Envoy starts (a policy
    /// naming it); otherwise Envoy picks a free one.
    listen_port: Option<u16>,
    /// `use_remote_address: false` instead of envoy.yaml's `true`.
    no_remote_address: bool,
    without_body_stop_iteration: bool,
    /// The echo upstream speaks HTTP/2 (h2c) and its cluster too.
    upstream_h2: bool,
    /// HTTP/1.1 trailers enabled on the connection manager and the upstream cluster.
    http1_trailers: bool,
    /// Envoy's Zipkin tracer on the connection manager, every request sampled.
    zipkin: bool,
    /// Istio's stats tags (cluster stats labelled `cluster_name`).
    istio_stats_tags: bool,
    /// A file access log with this text format (`Env::access_log` reads it).
    access_log: Option<String>,
}

impl Default for EnvBuilder {
    fn default() -> Self {
        EnvBuilder {
            plugin_config: None,
            concurrency: 1,
            component_log_level: None,
            auth_addr: None,
            wasm: true,
            wasmplugin: None,
            auth_cluster: None,
            clusters: Vec::new(),
            auth_aliases: Vec::new(),
            ext_authz: None,
            istio_sidecar: false,
            mocks: None,
            proto: Proto::H1,
            tls: false,
            ecds: false,
            wasm_file: None,
            failure_policy: None,
            listen_port: None,
            mtls: None,
            xff_trusted_hops: None,
            no_remote_address: false,
            without_body_stop_iteration: false,
            upstream_h2: false,
            http1_trailers: false,
            zipkin: false,
            istio_stats_tags: false,
            access_log: None,
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

    /// Envoy's `--component-log-level` (e.g. `wasm:debug`); Envoy's own level stays info.
    pub fn component_log_level(mut self, levels: &str) -> Self {
        self.component_log_level = Some(levels.to_owned());
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

    /// Adds a cluster `name` whose one endpoint is the mock auth service, as the auth
    /// cluster's: a second provider's service, told apart by its path prefix.
    pub fn auth_alias(mut self, name: &str) -> Self {
        self.auth_aliases.push(name.to_owned());
        self
    }

    /// Replaces the wasm filter by Envoy's ext_authz (and the RBAC shadow rules that gate it)
    /// as istiod renders the `envoyExtAuthzHttp` provider of `mesh` for `policy`; name the
    /// auth cluster as Istio does with [`EnvBuilder::auth_cluster_name`].
    pub fn ext_authz(mut self, mesh: &Path, policy: &Path) -> Self {
        self.ext_authz = Some((mesh.to_path_buf(), policy.to_path_buf()));
        self.wasm = false;
        self
    }

    /// Renders the connection manager as istiod does for a sidecar (path normalization
    /// BASE), for the comparisons with Istio's ext_authz.
    pub fn istio_sidecar(mut self) -> Self {
        self.istio_sidecar = true;
        self
    }

    /// Uses `env`'s auth service and upstream (they keep running on `env`'s runtime, so
    /// `env` must outlive this one).
    pub fn mocks_of(mut self, env: &Env) -> Self {
        self.mocks = Some((env.auth.clone(), env.upstream.clone()));
        self
    }

    /// The protocol [`Env::send`] speaks (default HTTP/1.1).
    pub fn proto(mut self, proto: Proto) -> Self {
        self.proto = proto;
        self
    }

    /// Serves the listener over TLS (a CA and a `localhost` certificate made for this
    /// run, ALPN `h2` and `http/1.1`); [`Env::send`] then speaks HTTP/2 over TLS.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self.proto = Proto::H2;
        self
    }

    /// Delivers the wasm filter by ECDS from a watched file, as istiod does for a
    /// WasmPlugin; [`Env::push_filter`] then changes it while Envoy runs.
    pub fn ecds(mut self) -> Self {
        self.ecds = true;
        self
    }

    /// Sets the wasm filter's `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`,
    /// `FAIL_RELOAD`) instead of envoy.yaml's `fail_open: false`.
    pub fn failure_policy(mut self, policy: &str) -> Self {
        self.failure_policy = Some(policy.to_owned());
        self
    }

    /// Loads this module file instead of the release build.
    pub fn wasm_file(mut self, path: &Path) -> Self {
        self.wasm_file = Some(path.to_path_buf());
        self
    }

    /// Serves TLS with `dir`'s server.pem/server.key, verifying client certificates
    /// against its ca.pem; `require_client_certificate` as in Envoy ([`crate::tls`]).
    pub fn downstream_mtls(mut self, dir: &Path, require_client_certificate: bool) -> Self {
        self.mtls = Some((dir.to_path_buf(), require_client_certificate));
        self
    }

    /// Sets the connection manager's `xff_num_trusted_hops` (Envoy's own proxy trust).
    /// Listens on `port` (e.g. from [`crate::closed_port`]) instead of a port Envoy picks.
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    pub fn xff_trusted_hops(mut self, hops: u32) -> Self {
        self.xff_trusted_hops = Some(hops);
        self
    }

    /// `use_remote_address: false`: Envoy takes the client address from X-Forwarded-For.
    pub fn without_remote_address(mut self) -> Self {
        self.no_remote_address = true;
        self
    }

    /// Leaves `allow_on_headers_stop_iteration` out even with `auth.with_request_body`.
    pub fn without_body_stop_iteration(mut self) -> Self {
        self.without_body_stop_iteration = true;
        self
    }

    /// Removes the wasm filter from the chain (checks the fixture itself only).
    /// An HTTP/2 (h2c) echo upstream behind a cluster that speaks HTTP/2 to it, as a gRPC
    /// backend's: request trailers reach it (`render_envoy.py --upstream-h2`).
    pub fn upstream_h2(mut self) -> Self {
        self.upstream_h2 = true;
        self
    }

    /// HTTP/1.1 trailers accepted from clients and sent to an HTTP/1.1 upstream
    /// (`enable_trailers`, `render_envoy.py --http1-trailers`).
    pub fn http1_trailers(mut self) -> Self {
        self.http1_trailers = true;
        self
    }

    /// Tags stats as Istio's bootstrap does: Envoy's default tags off, cluster stats
    /// labelled `cluster_name` in `/stats/prometheus` (not `envoy_cluster_name`).
    pub fn istio_stats_tags(mut self) -> Self {
        self.istio_stats_tags = true;
        self
    }

    /// Traces every request with Envoy's Zipkin tracer (B3), as an Istio sidecar does by
    /// default; its spans go to a closed port (nothing here reads them).
    pub fn zipkin_tracing(mut self) -> Self {
        self.zipkin = true;
        self
    }

    /// A file access log on the connection manager with this text format (a line each;
    /// Envoy flushes it every 50 ms here): [`Env::access_log`].
    pub fn access_log(mut self, format: &str) -> Self {
        self.access_log = Some(format.to_string());
        self
    }

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
        let mut tools = Tools::locate(self.wasm && self.wasm_file.is_none());
        if let Some(path) = &self.wasm_file {
            tools.wasm = path.clone();
        }
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let (auth, upstream) = match &self.mocks {
            Some((auth, upstream)) => (auth.clone(), upstream.clone()),
            None if self.upstream_h2 => (crate::mock_auth::start(&rt), crate::upstream::start_h2(&rt)),
            None => (crate::mock_auth::start(&rt), crate::upstream::start(&rt)),
        };
        let dir = TempDir::new("nebula-authz-envoy");
        let tls = self.tls.then(|| make_certificates(dir.path()));
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
            // The file access log's buffer goes to disk this often (Envoy's default: 10 s).
            .args(["--file-flush-interval-msec", "50"])
            .args(self.component_log_level.iter().flat_map(|l| ["--component-log-level", l.as_str()]))
            // As a container runtime sets it: the host name Envoy's %HOSTNAME% prints
            // (gethostname), for the filter's %HOSTNAME% (envoy.yaml's host_env_keys).
            .env("HOSTNAME", host_name())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.envoy.display()));
        let mut process = EnvoyProcess { child, log_path, exited: None };
        match wait_ready(&mut process, &admin_path) {
            Ok((admin_port, port)) => {
                Ok(Env { process, port, admin_port, auth, upstream, proto: self.proto, tls, _rt: rt, dir })
            }
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
            .arg("--listen-port")
            .arg(self.listen_port.unwrap_or(0).to_string())
            .args(["--admin-port", "0"])
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
        if self.istio_sidecar {
            cmd.arg("--istio-sidecar");
        }
        for (name, addr) in &self.clusters {
            cmd.arg("--cluster").arg(format!("{name}={addr}"));
        }
        for name in &self.auth_aliases {
            cmd.arg("--cluster").arg(format!("{name}={auth_addr}"));
        }
        if let Some(policy) = &self.failure_policy {
            cmd.arg("--failure-policy").arg(policy);
        }
        if self.ecds {
            let ecds = dir.path().join("ecds");
            fs::create_dir_all(&ecds).expect("create the ECDS directory");
            cmd.arg("--ecds").arg(ecds);
        }
        if self.tls {
            cmd.arg("--tls").arg(dir.path().join("server.pem")).arg(dir.path().join("server.key"));
        }
        if let Some((certs, required)) = &self.mtls {
            cmd.arg("--tls").arg(certs.join("server.pem")).arg(certs.join("server.key"));
            cmd.arg("--client-ca").arg(certs.join("ca.pem"));
            cmd.arg("--tls-client-cert").arg(if *required { "required" } else { "optional" });
        }
        if let Some(hops) = self.xff_trusted_hops {
            cmd.arg("--xff-trusted-hops").arg(hops.to_string());
        }
        if self.no_remote_address {
            cmd.arg("--no-remote-address");
        }
        if self.without_body_stop_iteration {
            cmd.arg("--without-body-stop-iteration");
        }
        if self.upstream_h2 {
            cmd.arg("--upstream-h2");
        }
        if self.http1_trailers {
            cmd.arg("--http1-trailers");
        }
        if self.istio_stats_tags {
            cmd.arg("--istio-stats-tags");
        }
        if let Some(format) = &self.access_log {
            cmd.arg("--access-log").arg(dir.path().join(ACCESS_LOG)).arg(format);
        }
        if self.zipkin {
            cmd.arg("--zipkin").arg(format!("127.0.0.1:{}", crate::closed_port()));
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.python.display()));
        assert!(
            out.status.success(),
            "scripts/render_envoy.py failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rendered = out.stdout;
        let path = dir.path().join("envoy.json");
        if let Some((mesh, policy)) = &self.ext_authz {
            rendered = render_ext_authz(tools, &path, rendered, mesh, policy);
        } else if !self.wasm {
            rendered = strip_wasm_filter(&rendered);
        }
        fs::write(&path, rendered).expect("write envoy.json");
        path
    }
}

/// scripts/render_ext_authz.py over a rendered config.
fn render_ext_authz(tools: &Tools, path: &Path, rendered: Vec<u8>, mesh: &Path, policy: &Path) -> Vec<u8> {
    fs::write(path, rendered).expect("write envoy.json");
    let out = Command::new(&tools.python)
        .arg(repo_root().join("scripts/render_ext_authz.py"))
        .args([path, mesh, policy])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.python.display()));
    assert!(
        out.status.success(),
        "scripts/render_ext_authz.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and a server certificate for `localhost` signed by it, new for each run: writes
/// `server.pem` and `server.key` into `dir` and returns a client trusting the CA.
fn make_certificates(dir: &Path) -> TlsClient {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "nebula-authz test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    fs::write(dir.join("server.pem"), cert.pem()).expect("write server.pem");
    fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
    TlsClient::new(&ca_cert.pem())
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

/// The machine's host name, as `gethostname` returns it (Linux: the UTS node name).
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).expect("read the host name")
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
    /// What [`Env::send`] speaks.
    pub proto: Proto,
    /// Set when the listener serves TLS: trusts this run's CA.
    pub tls: Option<TlsClient>,
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

    /// [`Env::start`], with [`Env::send`] speaking `proto`.
    pub fn start_over(proto: Proto, plugin_config: &str) -> Env {
        Env::builder().proto(proto).plugin_config(plugin_config).start()
    }

    /// [`Env::start_default`], with [`Env::send`] speaking `proto`.
    pub fn start_default_over(proto: Proto) -> Env {
        Env::builder().proto(proto).start()
    }

    /// Everything Envoy has logged so far.
    /// The file access log's lines so far (`EnvBuilder::access_log`).
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join(ACCESS_LOG)).unwrap_or_default().lines().map(str::to_owned).collect()
    }

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

    /// Sends `req` to the listener over [`Env::proto`]; panics with the log tail if no
    /// response arrives.
    pub fn send(&self, req: &RawRequest) -> Response {
        self.try_send(req).unwrap_or_else(|e| {
            panic!(
                "no response from Envoy on port {} ({:?}): {e}\nEnvoy log tail:\n{}",
                self.port,
                self.proto,
                self.log_tail()
            )
        })
    }

    /// Envoy's `/stats` lines matching the regex `filter`.
    pub fn stats(&self, filter: &str) -> String {
        RawRequest::get(format!("/stats?filter={filter}"))
            .try_send(self.admin_port)
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// Envoy's counter or gauge `name` from `/stats` (`None` if it has none such).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let resp = RawRequest::get(format!("/stats?filter={name}")).try_send(self.admin_port).ok()?;
        resp.text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }

    /// Pushes a new version of the ECDS resource (an [`EnvBuilder::ecds`] Env): the
    /// plugin configuration `plugin_config` and the module `wasm`, written next to the
    /// watched file and renamed over it (atomic, as Envoy's file watch requires). Returns
    /// the version pushed; [`Env::wait_ecds`] waits for Envoy's verdict.
    pub fn push_filter(&self, plugin_config: &str, wasm: &Path) -> u64 {
        let path = self.dir().join("ecds").join("nebula-authz.json");
        let text = fs::read_to_string(&path).expect("read the ECDS resource");
        let mut resource: serde_json::Value = serde_json::from_str(&text).expect("ECDS resource JSON");
        let version = resource["version_info"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(1) + 1;
        resource["version_info"] = version.to_string().into();
        let config = &mut resource["resources"][0]["typed_config"]["config"];
        config["configuration"]["value"] = plugin_config.into();
        config["vm_config"]["code"]["local"]["filename"] = wasm.display().to_string().into();
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&resource).expect("serialize")).expect("write ECDS resource");
        fs::rename(&tmp, &path).expect("rename the ECDS resource into place");
        version
    }

    /// The filter's ECDS subscription counters: (`update_success`, `update_rejected`).
    /// (`config_reload` is no use here: Envoy 1.40 counts a rejected update in it too.)
    pub fn ecds_counts(&self) -> (u64, u64) {
        let prefix = "extension_config_discovery.http_filter.nebula-authz";
        (
            self.stat(&format!("{prefix}.update_success")).unwrap_or(0),
            self.stat(&format!("{prefix}.update_rejected")).unwrap_or(0),
        )
    }

    /// Waits (up to 60 s: a new module is compiled by V8 on Envoy's main thread, which
    /// takes seconds on a loaded machine) until Envoy has accepted or rejected one more
    /// ECDS update than `before` (from [`Env::ecds_counts`]); returns whether it was
    /// accepted.
    pub fn wait_ecds(&self, before: (u64, u64)) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.ecds_counts();
            if now.0 > before.0 {
                return true;
            }
            if now.1 > before.1 {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy neither accepted nor rejected the ECDS update (counts {now:?}); log tail:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `req` over [`Env::proto`] (TLS when the listener serves it).
    pub fn try_send(&self, req: &RawRequest) -> std::io::Result<Response> {
        match (&self.tls, self.proto) {
            (Some(tls), _) => crate::h2_client::send(self.port, Some(tls), req),
            (None, proto) => req.try_send_over(proto, self.port),
        }
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
