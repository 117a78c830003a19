//! Micro-benchmarks of the core's hot path, run by `make bench` (not by `make test`):
//! `Settings::plan` (strip + route + callout headers) and `Settings::decide` on typical
//! requests and auth answers, and public-path matching against 10 to 10 000 templates,
//! whose cost per request must stay flat (matchit radix trees).
//!
//! Plain `std::time` and `black_box`, no framework: each case runs in batches of about
//! 2 ms and the median batch is reported in ns per operation.
//! `cargo bench -p nebula-authz --bench hot_path -- [--quick] [--json FILE]`

#![allow(clippy::panic)] // a benchmark with a broken setup should stop loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use nebula_authz::config::Settings;
use nebula_authz::host::header_map;
use nebula_authz::policy::request::Route;
use nebula_authz::policy::route::PublicPaths;
use nebula_authz::policy::route::DEFAULT_PUBLIC_PATHS;

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
    let mut results: Vec<(String, f64)> = Vec::new();
    let mut record = |name: &str, ns: f64| {
        println!("{name:48} {ns:10.1} ns/op");
        results.push((name.to_string(), ns));
    };

    let settings = match Settings::from_json(br#"{"auth": {"cluster": "auth", "authority": "auth:4300"}}"#) {
        Ok(s) => s,
        Err(e) => panic!("bench config: {e}"),
    };
    let protected = request("/api/flows/0b1c2d3e/runs");
    let public = request("/api/health");
    let prefixed = request("/api/accounts/a1/workspaces/w1/events/out");
    record(
        "plan: protected (callout)",
        measure(budget, || drop(black_box(settings.plan(black_box(&protected), || None)))),
    );
    // The callout's trace headers (auth.trace_headers, on by default) against none: the
    // request carries x-request-id, which the default sends.
    let untraced = match Settings::from_json(
        br#"{"auth": {"cluster": "auth", "authority": "auth:4300", "trace_headers": []}, "cache": {}}"#,
    ) {
        Ok(s) => s,
        Err(e) => panic!("bench config: {e}"),
    };
    record(
        "plan: protected, trace_headers: []",
        measure(budget, || drop(black_box(untraced.plan(black_box(&protected), || None)))),
    );
    let traced = match Settings::from_json(br#"{"auth": {"cluster": "auth", "authority": "auth:4300"}, "cache": {}}"#) {
        Ok(s) => s,
        Err(e) => panic!("bench config: {e}"),
    };
    let mut input = Vec::new();
    for (name, s) in [
        ("cache key input: callout (trace headers unkeyed)", &traced),
        ("cache key input: trace_headers: []", &untraced),
    ] {
        let Route::Callout { headers } = s.plan(&protected, || None).route else { panic!("a callout") };
        let callout: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        let Some(cache) = s.cache.as_ref() else { panic!("cache on") };
        record(name, measure(budget, || cache.key_input("auth", black_box(&callout), &mut input)));
    }
    record("plan: public prefix", measure(budget, || drop(black_box(settings.plan(black_box(&public), || None)))));
    record("plan: public {prefix}", measure(budget, || drop(black_box(settings.plan(black_box(&prefixed), || None)))));

    // What the http context does per request (host/http.rs): read the host's buffer in place, then plan.
    let wire = serialize(&protected);
    record(
        "parse + plan: protected (as the adapter runs it)",
        measure(budget, || {
            let headers = header_map::parse(black_box(&wire)).unwrap_or_default();
            drop(black_box(settings.plan(&headers, || None)));
        }),
    );

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
    record(
        "decide: allow (4 identity headers)",
        measure(budget, || drop(black_box(settings.decide(black_box(&allow), 0)))),
    );
    record("decide: deny (401)", measure(budget, || drop(black_box(settings.decide(black_box(&deny), 30)))));

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
    for _round in 0..3 {
        for (best, paths) in per_size.iter_mut().zip(&compiled) {
            let ns = measure(budget / 3, || {
                for path in LOOKUPS {
                    black_box(paths.find(black_box(path)));
                }
            }) / LOOKUPS.len() as f64;
            *best = best.min(ns);
        }
    }
    for (n, ns) in sizes.iter().zip(&per_size) {
        record(&format!("match: {n} templates (per lookup)"), *ns);
    }
    let ratio = per_size[3] / per_size[0];
    println!("{:48} {ratio:10.2}", "match: 10 000 vs 10 templates (ratio)");

    if let Some(path) = json {
        // A list, not a map: the cases stay in the order they ran.
        let results: Vec<serde_json::Value> =
            results.into_iter().map(|(name, ns)| serde_json::json!({ "name": name, "ns": ns })).collect();
        let doc = serde_json::json!({ "unit": "ns/op", "results": results, "templates_10000_vs_10": ratio });
        if let Some(dir) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            panic!("cannot write {path}: {e}");
        }
    }
}
