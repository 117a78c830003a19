//! A real nginx (Debian's package) as the auth service, for what no mock imitates
//! faithfully: a graceful reload (`nginx -s reload`), where the old workers close their
//! idle keep-alive connections while Envoy may be sending a callout on one of them.
//!
//! It answers like the mock's `allow:<actor>` (200 and the four identity headers) and
//! 401 for anything else; one master with two workers on 127.0.0.1, everything (config,
//! pid, logs, temp files) in a private directory.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How long nginx may take to listen, or an old generation of workers to exit.
const WAIT: Duration = Duration::from_secs(10);

/// A running nginx master (not daemonized: a child of the test), stopped on drop.
pub struct Nginx {
    master: Child,
    binary: PathBuf,
    pub port: u16,
    dir: TempDir,
}

/// `NEBULA_NGINX`, else `/usr/sbin/nginx` (Debian's path), else `nginx` on `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NEBULA_NGINX") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("nginx")
}

impl Nginx {
    /// Starts nginx on a free port; panics (the suite never skips) if it cannot.
    pub fn start() -> Nginx {
        let binary = binary();
        let dir = TempDir::new("nebula-authz-nginx");
        let port = crate::closed_port();
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    map $http_authorization $actor {{
        "~^Bearer allow:(?<a>[A-Za-z0-9_-]+)$" $a;
        default "";
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($actor = "") {{
                return 401 '{{"detail":"unauthorized"}}';
            }}
            add_header x-nebula-actor-id $actor;
            add_header x-nebula-actor-permissions "read,write";
            add_header x-nebula-ratelimit-config "rl-$actor";
            add_header x-nebula-log-limit-config "ll-$actor";
            return 200 "ok";
        }}
    }}
}}
"#
        );
        fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let log = fs::File::create(dir.path().join("stderr.log")).expect("create stderr.log");
        let master = Command::new(&binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; install Debian's nginx (`apt-get install nginx`, which \
                     `make test` does) or set NEBULA_NGINX",
                    binary.display()
                )
            });
        let mut nginx = Nginx { master, binary, port, dir };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.master.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port} within {WAIT:?}:\n{}", nginx.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `nginx -s reload`: the master starts new workers with the (same) config, and the
    /// old ones close their idle keep-alive connections, finish what is in flight and
    /// exit. Returns once the old workers are gone.
    pub fn reload(&self) {
        let before = self.workers();
        self.signal("reload");
        let deadline = Instant::now() + WAIT;
        while self.workers().iter().any(|pid| before.contains(pid)) {
            assert!(Instant::now() < deadline, "the old nginx workers did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The master's and the workers' error log, and what nginx printed.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// The pids of the master's children (its workers), from /proc.
    fn workers(&self) -> Vec<u32> {
        let master = self.master.id().to_string();
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // `pid (comm) state ppid ...`: the fields after the last ')'.
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) == Some(master.as_str())
            })
            .collect()
    }

    fn signal(&self, signal: &str) {
        let status =
            self.ctl(signal).unwrap_or_else(|e| panic!("cannot run {} -s {signal}: {e}", self.binary.display()));
        assert!(status.success(), "nginx -s {signal} failed ({status}):\n{}", self.log());
    }

    /// `nginx -s <signal>` for this instance (found through its pid file).
    fn ctl(&self, signal: &str) -> std::io::Result<std::process::ExitStatus> {
        Command::new(&self.binary)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", signal])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `stop` (SIGTERM) ends the workers too; a SIGKILL of the master would orphan them.
        let _ = self.ctl("stop");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}
