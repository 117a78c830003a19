//! Differential test: the same requests through real Traefik 3.6.13 configured as seed
//! 000's proxy mode and through the filter under Envoy (envoy/envoy.yaml, default plugin
//! configuration), against the same recording auth service and echo upstream.
//!
//! For each request it compares what the client got, what the upstream received and what
//! the auth service saw. Every difference must be listed in
//! `tests/data/traefik_differences.tsv` (case, aspect, category), and every category there
//! must be a row of README.md's "Where we differ from Traefik and why" table: a new
//! difference, a stale row or an undocumented category fails the test.
//! `NEBULA_TRAEFIK_DIFF_WRITE=1` rewrites the TSV from what was observed (categories of
//! known rows kept, new rows marked `?`) for a maintainer to review.

use std::collections::{BTreeMap, BTreeSet};

use nebula_authz_tests::client::{escape, RawRequest, RecordedRequest, Response};
use nebula_authz_tests::mock_server::MockServer;
use nebula_authz_tests::traefik::Traefik;
use nebula_authz_tests::{paths, repo_root, Env};

const DIFFERENCES_TSV: &str = "tests/data/traefik_differences.tsv";
const README_SECTION: &str = "### Where we differ from Traefik and why";

/// Response headers compared when the proxy (not the upstream) answered.
const CLIENT_HEADERS: [&str; 5] = ["www-authenticate", "location", "set-cookie", "content-type", "x-internal"];
/// Callout headers compared; any other name (outside the transport noise) is listed.
const AUTH_HEADERS: [&str; 12] = [
    "authorization",
    "origin",
    "access-control-request-method",
    "cookie",
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-for",
    "x-forwarded-port",
    "x-real-ip",
    "x-nebula-actor-id",
];
/// Added by the HTTP clients of Envoy and Go on their own; not part of the contract.
fn transport_noise(name: &str) -> bool {
    matches!(name, "host" | "user-agent" | "accept-encoding" | "content-length" | "x-request-id")
        || name.starts_with("x-envoy-")
}
/// Upstream request headers compared (the identity contract).
const UPSTREAM_HEADERS: [&str; 5] = [
    "x-nebula-actor-id",
    "x-nebula-actor-permissions",
    "x-nebula-ratelimit-config",
    "x-nebula-log-limit-config",
    "authorization",
];

/// The hand-written part of the corpus; paths.tsv adds its 66 targets.
fn corpus() -> Vec<(String, RawRequest)> {
    let get = RawRequest::get;
    let spoof = |r: RawRequest| r.header("x-nebula-actor-id", "evil").header("X-Nebula-Actor-Permissions", "admin");
    let forged = |r: RawRequest| {
        r.header("X-Forwarded-For", "6.6.6.6")
            .header("X-Forwarded-Host", "evil.example.com")
            .header("X-Forwarded-Uri", "/api/health")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Method", "DELETE")
            .header("X-Real-Ip", "6.6.6.6")
    };
    let cases: Vec<(&str, RawRequest)> = vec![
        // Allows.
        ("allow-get", get("/api/flows").bearer("allow:alice")),
        ("allow-query", get("/api/flows?limit=5&offset=10").bearer("allow:alice")),
        ("allow-nested", get("/api/accounts/a/workspaces/w/flows").bearer("allow:bob")),
        ("allow-post-body", RawRequest::post("/api/flows/filter", b"{\"limit\":1}".to_vec()).bearer("allow:alice")),
        ("allow-put-body", RawRequest::new("PUT", "/api/flows/1").body(b"{\"name\":\"x\"}".to_vec()).bearer("allow:a")),
        ("allow-delete", RawRequest::new("DELETE", "/api/flows/1").bearer("allow:alice")),
        ("allow-patch", RawRequest::new("PATCH", "/api/flows/1").body(b"{}".to_vec()).bearer("allow:alice")),
        ("allow-origin", get("/api/flows").bearer("allow:alice").header("Origin", "https://app.example.com")),
        ("allow-cookie-not-sent", get("/api/flows").bearer("allow:alice").header("Cookie", "session=abc")),
        (
            "allow-chunked-body",
            RawRequest::post("/api/flows", Vec::new()).chunked(vec![b"ab".to_vec(), b"cd".to_vec()]).bearer("allow:c"),
        ),
        ("allow-spoofed-identity", spoof(get("/api/flows").bearer("allow:alice"))),
        ("allow-forged-forwarding", forged(get("/api/flows").bearer("allow:alice"))),
        ("allow-authority", get("/api/flows").bearer("allow:alice").header("host", "api.example.com:8443")),
        // Denies and other answers.
        ("deny-no-credentials", get("/api/flows")),
        ("deny-script", get("/api/flows").bearer("deny")),
        ("deny-post-body", RawRequest::post("/api/flows", b"secret".to_vec()).bearer("deny")),
        ("deny-spoofed-identity", spoof(get("/api/flows").bearer("deny"))),
        ("deny-forged-forwarding", forged(get("/api/flows"))),
        ("status-403", get("/api/flows").bearer("status:403")),
        ("status-404", get("/api/flows").bearer("status:404")),
        ("status-429", get("/api/flows").bearer("status:429")),
        ("status-201", get("/api/flows").bearer("status:201")),
        ("status-204", get("/api/flows").bearer("status:204")),
        ("status-500", get("/api/flows").bearer("status:500")),
        ("status-503", get("/api/flows").bearer("status:503")),
        ("redirect", get("/api/flows").bearer("redirect")),
        ("redirect-relative", get("/api/flows").bearer("redirect-relative")),
        ("auth-closes", get("/api/flows").bearer("close")),
        // CORS preflights.
        (
            "preflight",
            RawRequest::new("OPTIONS", "/api/flows")
                .header("Origin", "https://app.example.com")
                .header("Access-Control-Request-Method", "POST")
                .header("Access-Control-Request-Headers", "authorization"),
        ),
        (
            "preflight-allowed",
            RawRequest::new("OPTIONS", "/api/flows")
                .bearer("allow:cors")
                .header("Origin", "https://app.example.com")
                .header("Access-Control-Request-Method", "PUT"),
        ),
        // Public paths.
        ("public-spoofed-identity", spoof(get("/api/health"))),
        ("public-post-body", RawRequest::post("/hooks/abc", b"payload".to_vec())),
        ("public-with-credentials", get("/api/version").bearer("allow:alice")),
        ("public-events-out", spoof(get("/api/accounts/a/workspaces/w/events/out"))),
        ("public-string-prefix", get("/authx")),
        ("public-string-prefix-2", get("/api/healthcheck")),
        ("public-case", get("/API/HEALTH")),
    ];
    let mut out: Vec<(String, RawRequest)> = cases.into_iter().map(|(id, r)| (id.to_owned(), r)).collect();
    for case in paths::load() {
        out.push((format!("paths.tsv:{}", case.line), RawRequest::get(&case.target)));
    }
    out
}

/// What one proxy did with one request, as `aspect -> value`.
type Seen = BTreeMap<String, String>;

fn new_since(server: &MockServer, before: usize) -> Vec<RecordedRequest> {
    server.requests().into_iter().skip(before).collect()
}

fn observe(port: u16, env: &Env, req: &RawRequest) -> Seen {
    let (auth_before, up_before) = (env.auth.count(), env.upstream.count());
    let resp = req.try_send(port);
    let auth = new_since(&env.auth, auth_before);
    let upstream = new_since(&env.upstream, up_before);
    let mut seen = Seen::new();
    let mut put = |k: &str, v: String| {
        seen.insert(k.to_owned(), v);
    };
    match &resp {
        Err(e) => put("client.status", format!("no response ({})", e.kind())),
        Ok(resp) => client(resp, !upstream.is_empty(), &mut put),
    }
    put("upstream.reached", if upstream.is_empty() { "no" } else { "yes" }.into());
    if let Some(up) = upstream.last() {
        put("upstream.method", up.method.clone());
        put("upstream.path", escape(up.path.as_bytes()));
        put("upstream.body", escape(&up.body));
        for name in UPSTREAM_HEADERS {
            put(&format!("upstream.{name}"), up.header_all(name).join(","));
        }
    }
    // Whether, not how often: Go's client retries a GET once on a reused connection the
    // auth service closed, which depends on connection reuse, not on the contract.
    put("auth.called", if auth.is_empty() { "no" } else { "yes" }.into());
    if let Some(callout) = auth.last() {
        put("auth.method", callout.method.clone());
        put("auth.path", callout.path.clone());
        put("auth.body", escape(&callout.body));
        for name in AUTH_HEADERS {
            put(&format!("auth.{name}"), callout.header_all(name).join(","));
        }
        let mut other: Vec<&str> =
            callout.header_names().into_iter().filter(|n| !AUTH_HEADERS.contains(n) && !transport_noise(n)).collect();
        other.sort_unstable();
        other.dedup();
        put("auth.other-headers", other.join(","));
    }
    seen
}

fn client(resp: &Response, upstream_reached: bool, put: &mut impl FnMut(&str, String)) {
    put("client.status", resp.status.to_string());
    // The echo upstream's body describes its request (compared under upstream.*).
    let from = if upstream_reached && resp.status == 200 { "upstream" } else { "proxy" };
    put("client.from", from.into());
    if from == "proxy" {
        put("client.body", escape(&resp.body));
        for name in CLIENT_HEADERS {
            put(&format!("client.{name}"), resp.header_all(name).join(" | "));
        }
    }
}

/// The aspects that differ. When one side reached the upstream (or called out, or got its
/// answer from the proxy) and the other did not, the details below that are not compared.
fn differences(ours: &Seen, traefik: &Seen) -> BTreeMap<String, (String, String)> {
    let keys: BTreeSet<&String> = ours.keys().chain(traefik.keys()).collect();
    let none = String::from("<none>");
    let mut out = BTreeMap::new();
    for gate in ["upstream.reached", "auth.called", "client.from"] {
        if ours.get(gate) != traefik.get(gate) {
            out.insert(
                gate.to_owned(),
                (ours.get(gate).unwrap_or(&none).clone(), traefik.get(gate).unwrap_or(&none).clone()),
            );
        }
    }
    for key in keys {
        let section = key.split('.').next().unwrap_or("");
        let gated = ["upstream.reached", "auth.called", "client.from"]
            .iter()
            .any(|g| g.starts_with(section) && *g != key && out.contains_key(*g));
        if gated || out.contains_key(key.as_str()) {
            continue;
        }
        let (a, b) = (ours.get(key).unwrap_or(&none), traefik.get(key).unwrap_or(&none));
        if a != b {
            out.insert(key.clone(), (a.clone(), b.clone()));
        }
    }
    out
}

/// (case, aspect) -> category, from the TSV.
fn load_known() -> BTreeMap<(String, String), String> {
    let path = repo_root().join(DIFFERENCES_TSV);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut known = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{DIFFERENCES_TSV}:{}: expected case<TAB>aspect<TAB>category: {line:?}", i + 1);
        known.insert((cols[0].to_owned(), cols[1].to_owned()), cols[2].to_owned());
    }
    known
}

/// The categories (first column, in backticks) of README.md's differences table.
fn readme_categories() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme.split(README_SECTION).nth(1).unwrap_or_else(|| panic!("README.md has no {README_SECTION:?}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1)?.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned))
        .collect()
}

fn write_tsv(observed: &BTreeMap<(String, String), (String, String)>, known: &BTreeMap<(String, String), String>) {
    let mut text = String::from(
        "# Known differences between the filter under Envoy and Traefik 3.6.13 (seed 000 proxy mode),\n\
         # asserted by tests/tests/traefik_diff.rs. Columns: case<TAB>aspect<TAB>category; every\n\
         # category is a row of README.md's \"Where we differ from Traefik and why\" table.\n",
    );
    for key in observed.keys() {
        let category = known.get(key).map(String::as_str).unwrap_or("?");
        text.push_str(&format!("{}\t{}\t{category}\n", key.0, key.1));
    }
    std::fs::write(repo_root().join(DIFFERENCES_TSV), text).expect("write the differences TSV");
}

#[test]
fn filter_matches_traefik_except_the_documented_differences() {
    let env = Env::start_default();
    let traefik = Traefik::start(env.auth.port(), env.upstream.port(), "/api/health");
    let corpus = corpus();
    assert!(corpus.len() >= 60, "the corpus must have at least 60 requests, has {}", corpus.len());

    let mut observed = BTreeMap::new();
    let mut report = String::new();
    for (id, req) in &corpus {
        let ours = observe(env.port, &env, req);
        let theirs = observe(traefik.port, &env, req);
        for (aspect, (a, b)) in differences(&ours, &theirs) {
            report.push_str(&format!("{id}\t{aspect}\n    ours:    {a}\n    traefik: {b}\n"));
            observed.insert((id.clone(), aspect), (a, b));
        }
    }
    // Shown with --nocapture: every difference with both values.
    eprintln!("{} requests, {} differences:\n{report}", corpus.len(), observed.len());
    let known = load_known();
    if std::env::var_os("NEBULA_TRAEFIK_DIFF_WRITE").is_some() {
        write_tsv(&observed, &known);
    }

    let unlisted: Vec<String> =
        observed.keys().filter(|k| !known.contains_key(*k)).map(|(c, a)| format!("{c}\t{a}")).collect();
    let stale: Vec<String> =
        known.keys().filter(|k| !observed.contains_key(*k)).map(|(c, a)| format!("{c}\t{a}")).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences from Traefik not listed in {DIFFERENCES_TSV}:\n{}\n\nlisted but not observed:\n{}\n\n\
         all differences:\n{report}\nTraefik log:\n{}",
        unlisted.join("\n"),
        stale.join("\n"),
        traefik.log()
    );

    let categories: BTreeSet<String> = known.values().cloned().collect();
    let documented = readme_categories();
    let undocumented: Vec<&String> = categories.difference(&documented).collect();
    let unused: Vec<&String> = documented.difference(&categories).collect();
    assert!(
        undocumented.is_empty() && unused.is_empty(),
        "README.md {README_SECTION:?} must list exactly the categories of {DIFFERENCES_TSV}: \
         missing {undocumented:?}, not observed {unused:?}"
    );
}
