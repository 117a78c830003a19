//! deploy/observability/ against a real Prometheus (Debian's, `make prometheus-tools`)
//! scraping real Envoys with the filter for a few seconds: every dashboard query answers
//! with data, under a plain Envoy's stats tags (`envoy_cluster_name`) and Istio's
//! (`cluster_name`), and every alert and recording rule loads and evaluates without
//! error. The alerts' firing is unit-tested by `promtool test rules`
//! (deploy/observability/prometheus-rules.test.yaml).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::ext_authz_pair::ISTIO_CLUSTER;
use nebula_authz_tests::{repo_root, Env, TempDir};

/// The auth cluster as the dashboard's `auth_cluster` variable selects it: a plain
/// Envoy's (envoy/envoy.yaml) and Istio's `outbound|4300||auth.<namespace>...`.
const PLAIN_CLUSTER: &str = "auth";
const ISTIO_CLUSTER_REGEX: &str = "outbound[|]4300[|][|]auth[.].*";

/// 2 once both Envoys' callout latency histograms have new samples in Prometheus.
const LATENCY_IN_BOTH: &str = r#"count(rate(envoy_cluster_upstream_rq_time_count{envoy_cluster_name="auth"}[10s]) > 0
    or rate(envoy_cluster_upstream_rq_time_count{cluster_name=~"outbound.*"}[10s]) > 0)"#;

const CONFIG: &str = r#"{"auth": {"cluster": "auth", "authority": "auth:4300"}, "cache": {"default_ttl": 60}}"#;

/// Debian's `prometheus` binary: `NEBULA_PROMETHEUS`, else where `make prometheus-tools`
/// unpacks it, else `PATH`.
fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NEBULA_PROMETHEUS") {
        return PathBuf::from(path);
    }
    let unpacked = repo_root().join("target/tools/prometheus/root/usr/bin/prometheus");
    if unpacked.is_file() {
        return unpacked;
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("prometheus")).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("no prometheus binary: run `make prometheus-tools` (Debian's prometheus package)"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The Prometheus server, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[(&str, u16)]) -> Prometheus {
        let dir = TempDir::new("nebula-prometheus");
        let rules = repo_root().join("deploy/observability/prometheus-rules.yaml");
        let mut config = format!(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\nrule_files: [{:?}]\nscrape_configs:\n",
            rules.display().to_string()
        );
        for (job, admin) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /stats/prometheus\n    static_configs: [{{targets: [\"127.0.0.1:{admin}\"]}}]\n"
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, _dir: dir }
    }

    /// The result of an instant query (`data.result`), or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let resp = RawRequest::get(format!("/api/v1/query?query={}", encode(promql)))
            .try_send(self.port)
            .map_err(|e| e.to_string())?;
        // While it starts, Prometheus answers 503 in plain text.
        if resp.status != 200 {
            return Err(format!("{}: {}", resp.status, resp.text()));
        }
        let body = resp.json();
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", resp.status, resp.text())),
        }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        RawRequest::get(path).send(self.port).json()
    }
}

/// RFC 3986 percent-encoding of a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A few requests of every outcome the dashboard shows: callouts (each token once),
/// cache hits, denials, public paths, failures closed.
fn traffic(env: &Env, round: u32) {
    for (path, token) in [
        ("/api/flows", format!("allow:user{round}")),
        ("/api/flows", "allow:alice".to_string()),
        ("/api/flows", "allow:alice".to_string()),
        ("/api/flows", "deny".to_string()),
        ("/api/health", String::new()),
        ("/api/flows", "status:500".to_string()),
    ] {
        let req = RawRequest::get(path);
        let req = if token.is_empty() { req } else { req.bearer(&token) };
        env.send(&req);
    }
}

/// Every PromQL target of the dashboard, as `(panel title, expr)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/observability/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard")).expect("dashboard JSON");
    let mut out = vec![];
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((panel["title"].as_str().unwrap_or_default().to_string(), expr.to_string()));
            }
        }
    }
    out
}

#[test]
fn a_real_prometheus_answers_every_dashboard_query_under_both_labellings() {
    let plain = Env::builder().plugin_config(CONFIG).ecds().start();
    let istio = Env::builder()
        .plugin_config(&CONFIG.replace(r#""cluster": "auth""#, &format!(r#""cluster": "{ISTIO_CLUSTER}""#)))
        .auth_cluster_name(ISTIO_CLUSTER)
        .istio_stats_tags()
        .start();
    let istio_scrape = istio.prometheus();
    assert!(
        istio_scrape.contains("cluster_name=\"outbound|4300||auth.prefect.svc.cluster.local\"")
            && !istio_scrape.contains("envoy_cluster_name="),
        "Istio's tags: the auth cluster's stats labelled cluster_name only"
    );
    let prometheus = Prometheus::start(&[("plain", plain.admin_port), ("istio", istio.admin_port)]);

    // Traffic until Prometheus has both targets up and a few scrapes of each (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    loop {
        traffic(&plain, round);
        traffic(&istio, round);
        round += 1;
        let scrapes = prometheus.query("min(count_over_time(nebula_authz_callouts[10s]))");
        let enough = scrapes
            .as_ref()
            .ok()
            .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok())
            .is_some_and(|n| n >= 4.0);
        // Envoy hands histograms to /stats/prometheus at its stats flush (every 5 s by
        // default), counters at once: wait for a flushed callout latency in both.
        let latency = prometheus.query(LATENCY_IN_BOTH);
        let both = latency.as_ref().ok().and_then(|r| r.first()?["value"][1].as_str().map(str::to_owned));
        if enough && both.as_deref() == Some("2") {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped both Envoys' data: {scrapes:?} {latency:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut problems = vec![];
    for (title, expr) in dashboard_queries() {
        let expr = expr.replace("$__rate_interval", "10s");
        let variants: Vec<(&str, String)> = if expr.contains("$auth_cluster") {
            vec![
                ("plain Envoy", expr.replace("$auth_cluster", PLAIN_CLUSTER)),
                ("Istio", expr.replace("$auth_cluster", ISTIO_CLUSTER_REGEX)),
            ]
        } else {
            vec![("both", expr)]
        };
        for (labelling, promql) in variants {
            match prometheus.query(&promql) {
                Ok(result) if result.is_empty() => problems.push(format!("{title} ({labelling}): no data: {promql}")),
                Ok(result) => {
                    for sample in &result {
                        let value = sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
                        if !value.is_some_and(f64::is_finite) {
                            problems.push(format!("{title} ({labelling}): {sample} is not a number: {promql}"));
                        }
                    }
                }
                Err(e) => problems.push(format!("{title} ({labelling}): {e}: {promql}")),
            }
        }
    }

    // The rules: loaded, evaluated, none in error; the recording rule has data.
    let rules = prometheus.get("/api/v1/rules");
    let mut count = 0;
    for group in rules["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            count += 1;
            if rule["health"] != "ok" {
                problems.push(format!("rule {}: health {} {}", rule["name"], rule["health"], rule["lastError"]));
            }
        }
    }
    let expected = std::fs::read_to_string(repo_root().join("deploy/observability/prometheus-rules.yaml"))
        .expect("read the rules")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
        .count();
    if count != expected {
        problems.push(format!("{count} rules loaded, the file has {expected}: {rules}"));
    }
    if prometheus.query("nebula_authz:requests:rate5m").map_or(true, |r| r.is_empty()) {
        problems.push("nebula_authz:requests:rate5m has no data".into());
    }
    // The ECDS counter the configuration alert reads exists under the name it selects.
    let rejected = prometheus
        .query(r#"{__name__=~"envoy_extension_config_discovery_http_filter_.*nebula_authz.*_update_rejected"}"#);
    if rejected.as_ref().map_or(true, |r| r.is_empty()) {
        problems.push(format!("no ECDS update_rejected counter of the filter: {rejected:?}"));
    }
    assert!(problems.is_empty(), "after {round} rounds of traffic:\n{}", problems.join("\n"));
}
