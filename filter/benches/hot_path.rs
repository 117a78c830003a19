//! Micro-benchmarks of the core's hot path, run by `make bench` (not by `make test`):
//! `Settings::plan` (strip + route + callout headers) and `Settings::decide` on typical
//! requests and auth answers, and public-path matching against 10 to 10 000 templates,
//! whose cost per request must stay flat (matchit radix trees).
//!
//! Plain `std::time` and `black_box`, no framework: each case runs in batches of about
//! 2 ms and the median batch is reported in ns per operation.
//! `cargo bench -p nebula-authz --bench hot_path -- [--quick] [--json FILE] [FILTER]`
//! (FILTER: only the cases whose name holds it).

#![allow(clippy::panic)] // a benchmark with a broken setup should stop loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use nebula_authz::access::{Facts, Gate, Peer};
use nebula_authz::authz_policy::request_facts::{Connection, RequestFacts};
use nebula_authz::flow::header_map;
use nebula_authz::plugin_config::Settings;
use nebula_authz::policy::route::DEFAULT_PUBLIC_PATHS;
use nebula_authz::policy::route::{PathMatch, PublicPaths};

type Headers = Vec<(String, Vec<u8>)>;

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

/// What Envoy hands the filter for a typical API call (wrk/curl-like client).
fn request(path: &str) -> Headers {
    headers(&[
        (":authority", "api.example.com"),
        (":path", path),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "prefect/3.1.0 (API 0.8.4)"),
        ("accept", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c2f4e-2a3b-4c5d-8e9f-0a1b2c3d4e5f"),
    ])
}

/// The proxy-wasm wire form of a header map, as the host hands it to the filter.
fn serialize(headers: &Headers) -> Vec<u8> {
    let mut out = (headers.len() as u32).to_le_bytes().to_vec();
    for (name, value) in headers {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in headers {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(value);
        out.push(0);
    }
    out
}

/// ns per call of `f`: median over batches of about 2 ms within `budget`.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut per_batch = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        if start.elapsed() >= Duration::from_millis(2) || per_batch >= 1 << 30 {
            break;
        }
        per_batch *= 2;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + budget;
    while Instant::now() < end || samples.len() < 5 {
        let start = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A client at 127.0.0.3, no certificate.
struct BenchPeer;

impl Peer for BenchPeer {
    fn address(&mut self) -> Option<String> {
        Some("127.0.0.3:40000".to_string())
    }
    fn principal(&mut self) -> Option<String> {
        None
    }
}

/// What host/steps/access.rs does with a request's headers.
#[inline(never)]
fn route_and_gate(settings: &Settings, headers: &Headers) -> (bool, Gate) {
    let routed = settings.route(headers);
    let Some(access) = &settings.access else { panic!("access rules configured") };
    let target = match routed.path {
        PathMatch::NotCanonical if access.deny_rules => {
            headers.iter().find(|(n, _)| n == ":path").map_or(&[][..], |(_, p)| p.as_slice())
        }
        _ => &[],
    };
    let mut facts = Facts::new(access, BenchPeer, headers);
    (routed.public(&settings.public).is_some(), access.gate(&settings.public, routed.path, target, &mut facts))
}

/// The connection facts `policies` rules read, as the host would answer them.
struct BenchConnection;

impl Connection for BenchConnection {
    fn source_ip(&mut self) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, 7]))
    }
    fn remote_ip(&mut self) -> Option<IpAddr> {
        self.source_ip()
    }
    fn principal(&mut self) -> Option<&str> {
        Some("spiffe://cluster.local/ns/prefect/sa/web")
    }
    fn destination_ip(&mut self) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, 1]))
    }
    fn destination_port(&mut self) -> Option<u16> {
        Some(8080)
    }
    fn sni(&mut self) -> Option<&str> {
        None
    }
}

/// `n` CUSTOM rules as a chart renders them (host, path prefix, methods), the last one
/// the request's: `api.example.com`, `/api/*`, not from the ingress gateway.
fn policy_rules(n: usize) -> String {
    let mut rules: Vec<serde_json::Value> = (1..n)
        .map(|i| {
            serde_json::json!({"to": [{"operation": {"hosts": [format!("svc{i}.example.com")],
                "paths": [format!("/svc{i}/*")], "methods": ["GET", "POST"]}}]})
        })
        .collect();
    rules.push(serde_json::json!({"to": [{"operation": {"hosts": ["api.example.com"], "paths": ["/api/*"]}}],
        "from": [{"source": {"notPrincipals": ["cluster.local/ns/istio-system/*"]}}]}));
    serde_json::json!({"auth": {"cluster": "auth"}, "policies": [{"name": "prefect/ext-authz", "rules": rules}]})
        .to_string()
}

/// `Settings::plan` as one call (callgrind counts it per request).
#[inline(never)]
fn plan_once(settings: &Settings, headers: &Headers) {
    drop(black_box(settings.plan(headers, || None)));
}

/// The cases run, and their results.
struct Bench {
    budget: Duration,
    filter: Option<String>,
    results: Vec<(String, f64)>,
}

impl Bench {
    fn wanted(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| name.contains(f.as_str()))
    }

    /// Measures `f` as the case `name`, if the filter wants it.
    fn case(&mut self, name: &str, f: impl FnMut()) {
        if self.wanted(name) {
            let ns = measure(self.budget, f);
            self.record(name, ns);
        }
    }

    fn record(&mut self, name: &str, ns: f64) {
        println!("{name:48} {ns:10.1} ns/op");
        self.results.push((name.to_string(), ns));
    }
}

/// `n` templates: seed 000's eight, then generated ones of the three kinds (plain prefix,
/// `{param}` segments, leading `{prefix}`).
fn templates(n: usize) -> Vec<String> {
    let mut list: Vec<String> = DEFAULT_PUBLIC_PATHS.iter().map(|s| s.to_string()).collect();
    for i in list.len()..n {
        list.push(match i % 10 {
            8 => format!("/api/accounts/{{account}}/area{i}/settings"),
            9 => format!("/{{prefix}}/stream{i}/out"),
            _ => format!("/svc{i}/docs"),
        });
    }
    list.truncate(n);
    list
}

/// The paths looked up per matching iteration: the same for every list size.
const LOOKUPS: [&[u8]; 5] = [
    b"/api/flows/0b1c2d3e/runs",                        // protected: misses both trees
    b"/api/accounts/a1/workspaces/w1/flow_runs/filter", // protected, deep
    b"/api/health",                                     // public prefix
    b"/api/accounts/a1/workspaces/w1/events/out",       // public via {prefix}
    b"/hooks/incoming/slack?token=abc",                 // public prefix, query
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1));
    let budget = Duration::from_millis(if quick { 60 } else { 300 });
    // A plain argument runs only the cases whose name holds it.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--") && Some(*a) != json).cloned();
    let mut bench = Bench { budget, filter, results: Vec::new() };

    let settings = match Settings::from_json(br#"{"auth": {"cluster": "auth", "authority": "auth:4300"}}"#) {
        Ok(s) => s,
        Err(e) => panic!("bench config: {e}"),
    };
    let protected = request("/api/flows/0b1c2d3e/runs");
    let public = request("/api/health");
    let prefixed = request("/api/accounts/a1/workspaces/w1/events/out");
    bench.case("plan: protected (callout)", || plan_once(&settings, black_box(&protected)));
    // The callout's trace headers (auth.trace_headers, on by default) against none: the
    // request carries x-request-id, which the default sends.
    let untraced = match Settings::from_json(
        br#"{"auth": {"cluster": "auth", "authority": "auth:4300", "trace_headers": []}, "cache": {}}"#,
    ) {
        Ok(s) => s,
        Err(e) => panic!("bench config: {e}"),
    };
    bench.case("plan: protected, trace_headers: []", || plan_once(&untraced, black_box(&protected)));
    // The cache key is taken on the callout before its trace headers are added (a cache
    // hit never builds them), so it is the same with or without them.
    let mut input = Vec::new();
    let Ok(keyed) = untraced.callout(&protected, || None) else { panic!("a callout") };
    let callout: Vec<(&str, &str)> = keyed.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let Some(cache) = untraced.cache.as_ref() else { panic!("cache on") };
    bench.case("cache key input: callout", || cache.key_input("auth", black_box(&callout), &mut input));
    bench.case("plan: public prefix", || plan_once(&settings, black_box(&public)));
    bench.case("plan: public {prefix}", || plan_once(&settings, black_box(&prefixed)));

    // What the http context does per request (flow/request.rs): read the host's buffer in place, then plan.
    let wire = serialize(&protected);
    bench.case("parse + plan: protected (as the adapter runs it)", || {
        let headers = header_map::parse(black_box(&wire)).unwrap_or_default();
        drop(black_box(settings.plan(&headers, || None)));
    });

    // The access step as the adapter runs it (flow/steps/access.rs), after the route:
    // deny rules configured, a client outside their range.
    let access_settings = match Settings::from_json(
        br#"{"auth": {"cluster": "auth"}, "source_ranges": ["127.0.0.0/8"], "public_paths": ["/api/health",
            {"path": "/internal", "source_ranges": ["127.0.0.2/32"], "otherwise": "deny"}]}"#,
    ) {
        Ok(s) => s,
        Err(e) => panic!("bench access config: {e}"),
    };
    // Non-canonical: one spelling of /internal (denied at its first interpretation),
    // one under no rule (every interpretation matched, then checked).
    let hidden = request("/x/..%2f%69nternal/./metrics;v=1");
    let escaped = request("/api/flows/my%20flow/runs");
    let cases = [
        ("protected", &protected),
        ("public", &public),
        ("non-canonical, denied", &hidden),
        ("non-canonical, checked", &escaped),
    ];
    for (name, req) in cases {
        bench.case(&format!("route + access: {name}"), || {
            black_box(route_and_gate(&access_settings, black_box(req)));
        });
    }

    // `policies`: which provider checks a request (flow/steps/select.rs without the host),
    // through every rule (the request's is the last) or none of them.
    let unselected = request("/ui/flows");
    let hostile = request("/x/..%2f%61pi/./flows;v=1");
    for n in [10, 100] {
        let s = match Settings::from_json(policy_rules(n).as_bytes()) {
            Ok(s) => s,
            Err(e) => panic!("bench policies config: {e}"),
        };
        let Some(selection) = s.selection.as_ref() else { panic!("policies configured") };
        for (name, req, selected) in [
            ("selected by the last", &protected, true),
            ("none", &unselected, false),
            ("hostile spelling", &hostile, true),
        ] {
            let mut facts = RequestFacts::new(req.as_slice(), None, BenchConnection);
            if selection.select(&mut facts).is_empty() == selected {
                panic!("{n} rules, {name}: selected should be {selected}");
            }
            bench.case(&format!("select: {n} rules, {name}"), || {
                let mut facts = RequestFacts::new(black_box(req.as_slice()), None, BenchConnection);
                black_box(selection.select(&mut facts));
            });
        }
    }

    let allow = headers(&[
        (":status", "200"),
        ("x-nebula-actor-id", "bench-user"),
        ("x-nebula-actor-permissions", "read,write"),
        ("x-nebula-ratelimit-config", "{\"limit\":100}"),
        ("x-nebula-log-limit-config", "{\"limit\":10}"),
        ("content-length", "0"),
        ("date", "Mon, 23 Nov 2026 15:00:00 GMT"),
        ("x-envoy-upstream-service-time", "1"),
    ]);
    let deny = headers(&[
        (":status", "401"),
        ("www-authenticate", "Bearer realm=\"prefect\""),
        ("content-type", "application/json"),
        ("content-length", "30"),
        ("date", "Mon, 23 Nov 2026 15:00:00 GMT"),
    ]);
    bench.case("decide: allow (4 identity headers)", || drop(black_box(settings.decide(black_box(&allow), 0))));
    bench.case("decide: deny (401)", || drop(black_box(settings.decide(black_box(&deny), 30))));

    // Sizes interleaved over three rounds, best round kept: a busy machine only ever
    // makes a round slower, and the first case measured must not pay the warm-up alone.
    let sizes = [10, 100, 1_000, 10_000];
    let compiled: Vec<PublicPaths> = sizes
        .iter()
        .map(|&n| match PublicPaths::compile(&templates(n), &[]) {
            Ok(p) => p,
            Err(e) => panic!("{n} templates: {e}"),
        })
        .collect();
    let mut per_size = vec![f64::INFINITY; sizes.len()];
    let rounds = if bench.wanted("match:") { 3 } else { 0 };
    for _round in 0..rounds {
        for (best, paths) in per_size.iter_mut().zip(&compiled) {
            let ns = measure(budget / 3, || {
                for path in LOOKUPS {
                    black_box(paths.find(black_box(path)));
                }
            }) / LOOKUPS.len() as f64;
            *best = best.min(ns);
        }
    }
    let ratio = per_size[3] / per_size[0];
    if rounds > 0 {
        for (n, ns) in sizes.iter().zip(&per_size) {
            bench.record(&format!("match: {n} templates (per lookup)"), *ns);
        }
        println!("{:48} {ratio:10.2}", "match: 10 000 vs 10 templates (ratio)");
    }

    if let Some(path) = json {
        // A list, not a map: the cases stay in the order they ran.
        let results: Vec<serde_json::Value> =
            bench.results.into_iter().map(|(name, ns)| serde_json::json!({ "name": name, "ns": ns })).collect();
        let mut doc = serde_json::json!({ "unit": "ns/op", "results": results });
        if rounds > 0 {
            doc["templates_10000_vs_10"] = serde_json::json!(ratio);
        }
        if let Some(dir) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            panic!("cannot write {path}: {e}");
        }
    }
}
