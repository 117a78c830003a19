//! Differential tests against Envoy's own ext_authz: one Istio policy-mode setup (a mesh
//! config's `envoyExtAuthzHttp` provider and the AuthorizationPolicy CUSTOM) rendered
//! (a) as istiod renders it, Envoy 1.40's ext_authz gated by RBAC shadow rules
//! (scripts/render_ext_authz.py), and (b) through `make convert`
//! (scripts/convert_policy.py) into the filter; both in Envoy 1.40, in the connection
//! manager istiod renders for a sidecar (path normalization BASE), against one recording
//! auth service and echo upstream.
//!
//! For each request it compares what the auth service received (method, path, every
//! header, body), what the upstream received (method, path, every header, body) and what
//! the client got (status, every header, and the body of a proxy's own answer). Every
//! difference must be listed in the setup's TSV (case, aspect, category), and the
//! categories of all TSVs must be exactly the rows of the docs' "Where we differ from
//! ext_authz" table: a new difference, a stale row or an undocumented category fails.
//! `NEBULA_EXTAUTHZ_DIFF_WRITE=1` rewrites the TSVs from what was observed (categories of
//! known rows kept, new rows marked `?`) for a maintainer to review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use nebula_authz_tests::client::{escape, RawRequest, RecordedRequest, Response};
use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::mock_server::MockServer;
use nebula_authz_tests::{paths, repo_root, Env};

const POLICY: &str = "tests/data/policy-mode/authorizationpolicy.yaml";
const ISTIO_CLUSTER: &str = "outbound|4300||auth.prefect.svc.cluster.local";
const DOCS: &str = "docs/istio.md";
const DOCS_SECTION: &str = "### Where we differ from ext_authz";

struct Setup {
    mesh: &'static str,
    tsv: &'static str,
}

const SEED_000: Setup =
    Setup { mesh: "tests/data/policy-mode/meshconfig.yaml", tsv: "tests/data/ext_authz_differences.tsv" };
const EVERY_FIELD: Setup = Setup {
    mesh: "tests/data/policy-mode/meshconfig-every-field.yaml",
    tsv: "tests/data/ext_authz_differences_every_field.tsv",
};
const MINIMAL: Setup = Setup {
    mesh: "tests/data/policy-mode/meshconfig-minimal.yaml",
    tsv: "tests/data/ext_authz_differences_minimal.tsv",
};
const ALL: [&Setup; 3] = [&SEED_000, &EVERY_FIELD, &MINIMAL];

/// Both proxies; field order is drop order (the filter's Envoy uses ext_authz's mocks).
struct Pair {
    filter: Env,
    ext_authz: Env,
}

fn start(setup: &Setup) -> Pair {
    let (mesh, policy): (PathBuf, PathBuf) = (repo_root().join(setup.mesh), repo_root().join(POLICY));
    let ext_authz = Env::builder().ext_authz(&mesh, &policy).auth_cluster_name(ISTIO_CLUSTER).istio_sidecar().start();
    let out = Command::new(Tools::locate(false).python)
        .arg(repo_root().join("scripts/convert_policy.py"))
        .args([&mesh, &policy])
        .arg("--config-only")
        .output()
        .expect("run scripts/convert_policy.py");
    assert!(out.status.success(), "{}: conversion failed: {}", setup.mesh, String::from_utf8_lossy(&out.stderr));
    let config = String::from_utf8(out.stdout).expect("the converted config is UTF-8");
    let filter = Env::builder()
        .plugin_config(&config)
        .auth_cluster_name(ISTIO_CLUSTER)
        .istio_sidecar()
        .mocks_of(&ext_authz)
        .start();
    Pair { filter, ext_authz }
}

/// The corpus: allows, denies, redirects, each auth status class, bodies (small, at and
/// over the limits, chunked), CORS preflights, spoofed headers; then paths.tsv's targets.
fn corpus() -> Vec<(String, RawRequest)> {
    let get = RawRequest::get;
    let post = RawRequest::post;
    let spoof = |r: RawRequest| r.header("x-nebula-actor-id", "evil").header("X-Nebula-Actor-Permissions", "admin");
    let forged = |r: RawRequest| {
        r.header("X-Forwarded-For", "6.6.6.6")
            .header("X-Forwarded-Host", "evil.example.com")
            .header("X-Forwarded-Uri", "/api/health")
            .header("X-Forwarded-Proto", "https")
            .header("X-Envoy-Internal", "true")
            .header("X-Request-Id", "client-chosen")
    };
    let headers = |r: RawRequest| {
        r.header("Origin", "https://app.example.com")
            .header("Cookie", "session=abc")
            .header("X-Tenant-Id", "t1")
            .header("X-Tenant-Region", "eu")
            .header("B3-Trace", "abc")
            .header("User-Agent", "client/1")
            .header("Content-Type", "application/json")
    };
    let cases: Vec<(&str, RawRequest)> = vec![
        // Allows.
        ("allow-get", get("/api/flows").bearer("allow:alice")),
        ("allow-query", get("/api/flows?limit=5&offset=10&q=%2F..%2F").bearer("allow:alice")),
        ("allow-headers", headers(get("/api/flows")).bearer("allow:alice")),
        ("allow-authority", get("/api/flows").bearer("allow:alice").header("host", "api.example.com:8443")),
        ("allow-delete", RawRequest::new("DELETE", "/api/flows/1").bearer("allow:alice")),
        ("allow-patch", RawRequest::new("PATCH", "/api/flows/1").body(b"{}".to_vec()).bearer("allow:alice")),
        ("allow-spoofed-identity", spoof(get("/api/flows").bearer("allow:alice"))),
        ("allow-forged-forwarding", forged(get("/api/flows").bearer("allow:alice"))),
        (
            "allow-headers-to-remove",
            get("/api/flows")
                .bearer("h:x-envoy-auth-headers-to-remove=x-drop-me, cookie:allow:alice")
                .header("x-drop-me", "1")
                .header("cookie", "a=b"),
        ),
        ("allow-set-cookie", get("/api/flows").bearer("h:set-cookie=s=1:h:x-auth-user=alice:allow:alice")),
        ("allow-identity-replaced", get("/api/flows").bearer("allow:alice").header("x-nebula-actor-id", "alice-old")),
        // Bodies (limits: none in seed 000, 64 bytes strict, 16 bytes partial).
        ("body-small", post("/api/flows/filter", b"{\"limit\":1}".to_vec()).bearer("allow:alice")),
        ("body-16", post("/api/flows", vec![b'a'; 16]).bearer("allow:alice")),
        ("body-64", post("/api/flows", vec![b'b'; 64]).bearer("allow:alice")),
        ("body-65", post("/api/flows", vec![b'c'; 65]).bearer("allow:alice")),
        ("body-large", post("/api/flows", vec![b'd'; 70_000]).bearer("allow:alice")),
        (
            "body-chunked",
            post("/api/flows", Vec::new()).chunked(vec![b"ab".to_vec(), b"cd".to_vec()]).bearer("allow:alice"),
        ),
        (
            "body-chunked-over",
            post("/api/flows", Vec::new()).chunked(vec![vec![b'e'; 40], vec![b'f'; 40]]).bearer("allow:alice"),
        ),
        ("body-deny", post("/api/flows", b"secret".to_vec()).bearer("deny")),
        ("body-empty", post("/api/flows", Vec::new()).bearer("allow:alice")),
        // Denies and other answers: each status class.
        ("deny-no-credentials", get("/api/flows")),
        ("deny-script", get("/api/flows").bearer("deny")),
        ("deny-spoofed-identity", spoof(get("/api/flows").bearer("deny"))),
        ("deny-forged-forwarding", forged(get("/api/flows"))),
        ("status-201", get("/api/flows").bearer("status:201")),
        ("status-204", get("/api/flows").bearer("status:204")),
        ("status-302", get("/api/flows").bearer("redirect")),
        ("status-302-relative", get("/api/flows").bearer("redirect-relative")),
        ("status-304", get("/api/flows").bearer("status:304")),
        ("status-403", get("/api/flows").bearer("status:403")),
        ("status-404", get("/api/flows").bearer("status:404")),
        ("status-429", get("/api/flows").bearer("status:429")),
        ("status-500", get("/api/flows").bearer("status:500")),
        ("status-503", get("/api/flows").bearer("status:503")),
        ("auth-closes", get("/api/flows").bearer("close")),
        ("auth-garbage", get("/api/flows").bearer("garbage")),
        ("deny-with-cookie", get("/api/flows").bearer("h:set-cookie=s=1:deny")),
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
        ("public-post-body", post("/hooks/abc", b"payload".to_vec())),
        ("public-with-credentials", get("/api/version").bearer("allow:alice")),
        ("public-events-out", spoof(get("/api/accounts/a/workspaces/w/events/out"))),
        ("public-string-prefix", get("/api/healthcheck")),
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

/// Header values that differ run to run: compared as present or not.
fn volatile(name: &str) -> bool {
    matches!(name, "date" | "x-request-id" | "x-envoy-upstream-service-time")
}

/// The run-to-run part of the command operators' values in the every-field setup's
/// `includeAdditionalHeadersInCheck` masked (the client's port, each proxy's own
/// listener port, the request's start time); the rest compared as it is.
fn masked(name: &str, value: String) -> String {
    match name {
        "x-op-client" | "x-op-local" => match value.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{host}:<port>")
            }
            _ => value,
        },
        "x-op-start" | "x-op-epoch" => value.chars().map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect(),
        _ => value,
    }
}

fn put_headers(seen: &mut Seen, prefix: &str, headers: &[(String, Vec<u8>)], skip: &[&str]) {
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let value = if volatile(name) { "<set>".to_owned() } else { masked(name, escape(value)) };
        by_name.entry(name.as_str()).or_default().push(value);
    }
    for (name, values) in by_name {
        seen.insert(format!("{prefix}.{name}"), values.join(" | "));
    }
}

fn observe(port: u16, env: &Env, req: &RawRequest) -> Seen {
    let (auth_before, up_before) = (env.auth.count(), env.upstream.count());
    let resp = req.try_send(port);
    let auth = new_since(&env.auth, auth_before);
    let upstream = new_since(&env.upstream, up_before);
    let mut seen = Seen::new();
    match &resp {
        Err(e) => {
            seen.insert("client.status".into(), format!("no response ({})", e.kind()));
        }
        Ok(resp) => client(resp, !upstream.is_empty(), &mut seen),
    }
    seen.insert("upstream.reached".into(), if upstream.is_empty() { "no" } else { "yes" }.into());
    if let Some(up) = upstream.last() {
        seen.insert("upstream.method".into(), up.method.clone());
        seen.insert("upstream.path".into(), escape(up.path.as_bytes()));
        seen.insert("upstream.body".into(), escape(&up.body));
        put_headers(&mut seen, "upstream.header", &up.headers, &[]);
    }
    // Whether, not how often (a retried callout depends on connection reuse).
    seen.insert("auth.called".into(), if auth.is_empty() { "no" } else { "yes" }.into());
    seen.insert("auth.retried".into(), if auth.len() > 1 { "yes" } else { "no" }.into());
    // The first attempt: a retry's x-envoy-expected-rq-timeout-ms is the time left, which
    // depends on the retry back-off's jitter.
    if let Some(call) = auth.first() {
        seen.insert("auth.method".into(), call.method.clone());
        seen.insert("auth.path".into(), escape(call.path.as_bytes()));
        seen.insert("auth.body".into(), escape(&call.body));
        put_headers(&mut seen, "auth.header", &call.headers, &[]);
    }
    seen
}

fn client(resp: &Response, upstream_reached: bool, seen: &mut Seen) {
    seen.insert("client.status".into(), resp.status.to_string());
    // The echo upstream's body describes its request (compared under upstream.*); its
    // length follows, so content-length is compared only on a proxy's own answer.
    let from = if upstream_reached && resp.status == 200 { "upstream" } else { "proxy" };
    seen.insert("client.from".into(), from.into());
    if from == "proxy" {
        seen.insert("client.body".into(), escape(&resp.body));
        put_headers(seen, "client.header", &resp.headers, &[]);
    } else {
        put_headers(seen, "client.header", &resp.headers, &["content-length"]);
    }
}

const GATES: [&str; 3] = ["upstream.reached", "auth.called", "client.from"];

/// The aspects that differ. When one side reached the upstream (or called out, or got its
/// answer from the proxy) and the other did not, the details below that are not compared.
fn differences(ours: &Seen, theirs: &Seen) -> BTreeMap<String, (String, String)> {
    let none = String::from("<none>");
    let mut out = BTreeMap::new();
    for gate in GATES {
        if ours.get(gate) != theirs.get(gate) {
            out.insert(
                gate.to_owned(),
                (ours.get(gate).unwrap_or(&none).clone(), theirs.get(gate).unwrap_or(&none).clone()),
            );
        }
    }
    let keys: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for key in keys {
        let section = key.split('.').next().unwrap_or("");
        let gated = GATES.iter().any(|g| g.starts_with(section) && *g != key && out.contains_key(*g));
        if gated || out.contains_key(key.as_str()) {
            continue;
        }
        let (a, b) = (ours.get(key).unwrap_or(&none), theirs.get(key).unwrap_or(&none));
        if a != b {
            out.insert(key.clone(), (a.clone(), b.clone()));
        }
    }
    out
}

/// (case, aspect) -> category, from a TSV.
fn load_known(tsv: &str) -> BTreeMap<(String, String), String> {
    let path = repo_root().join(tsv);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut known = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{tsv}:{}: expected case<TAB>aspect<TAB>category: {line:?}", i + 1);
        known.insert((cols[0].to_owned(), cols[1].to_owned()), cols[2].to_owned());
    }
    known
}

/// The categories (first column, in backticks) of the docs' differences table.
fn documented_categories() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(repo_root().join(DOCS)).unwrap_or_else(|e| panic!("{DOCS}: {e}"));
    let section = docs.split(DOCS_SECTION).nth(1).unwrap_or_else(|| panic!("{DOCS} has no {DOCS_SECTION:?}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1)?.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned))
        .collect()
}

fn write_tsv(
    tsv: &str,
    observed: &BTreeMap<(String, String), (String, String)>,
    known: &BTreeMap<(String, String), String>,
) {
    let mut text = String::from(
        "# Known differences between the filter (protocol ext_authz, from make convert) and Envoy\n\
         # 1.40's ext_authz as istiod renders the same provider, asserted by\n\
         # tests/tests/ext_authz_diff.rs. Columns: case<TAB>aspect<TAB>category; every category is\n\
         # a row of docs/istio.md's \"Where we differ from ext_authz\" table.\n",
    );
    for key in observed.keys() {
        let category = known.get(key).map(String::as_str).unwrap_or("?");
        text.push_str(&format!("{}\t{}\t{category}\n", key.0, key.1));
    }
    std::fs::write(repo_root().join(tsv), text).expect("write the differences TSV");
}

fn assert_differences(setup: &Setup) {
    let pair = start(setup);
    let corpus = corpus();
    let mut observed = BTreeMap::new();
    let mut report = String::new();
    for (id, req) in &corpus {
        let ours = observe(pair.filter.port, &pair.filter, req);
        let theirs = observe(pair.ext_authz.port, &pair.ext_authz, req);
        for (aspect, (a, b)) in differences(&ours, &theirs) {
            report.push_str(&format!("{id}\t{aspect}\n    ours:      {a}\n    ext_authz: {b}\n"));
            observed.insert((id.clone(), aspect), (a, b));
        }
    }
    eprintln!("{}: {} requests, {} differences:\n{report}", setup.tsv, corpus.len(), observed.len());
    let known = load_known(setup.tsv);
    if std::env::var_os("NEBULA_EXTAUTHZ_DIFF_WRITE").is_some() {
        write_tsv(setup.tsv, &observed, &known);
    }
    let unlisted: Vec<String> =
        observed.keys().filter(|k| !known.contains_key(*k)).map(|(c, a)| format!("{c}\t{a}")).collect();
    let stale: Vec<String> =
        known.keys().filter(|k| !observed.contains_key(*k)).map(|(c, a)| format!("{c}\t{a}")).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences from ext_authz not listed in {}:\n{}\n\nlisted but not observed:\n{}\n\nall differences:\n{report}",
        setup.tsv,
        unlisted.join("\n"),
        stale.join("\n"),
    );

    let documented = documented_categories();
    let mine: BTreeSet<String> = known.values().cloned().collect();
    let undocumented: Vec<&String> = mine.difference(&documented).collect();
    let all: BTreeSet<String> = ALL.iter().flat_map(|s| load_known(s.tsv).into_values()).collect();
    let unused: Vec<&String> = documented.difference(&all).collect();
    assert!(
        undocumented.is_empty() && unused.is_empty(),
        "{DOCS} {DOCS_SECTION:?} must list exactly the categories of the differences TSVs: \
         missing {undocumented:?}, in no TSV {unused:?}"
    );
}

#[test]
fn seed_000_policy_mode_matches_ext_authz_except_the_documented_differences() {
    assert_differences(&SEED_000);
}

#[test]
fn every_provider_field_matches_ext_authz_except_the_documented_differences() {
    assert_differences(&EVERY_FIELD);
}

#[test]
fn minimal_provider_matches_ext_authz_except_the_documented_differences() {
    assert_differences(&MINIMAL);
}
