//! Differential tests: the same requests through real Traefik 3.6.13 and through the
//! filter under Envoy (envoy/envoy.yaml), against the same recording auth service and echo
//! upstream. Four setups: Prefect's proxy mode (default plugin configuration), the same
//! with `forwardBody`/`maxBodySize` (`auth.forward_body`/`auth.max_body_size`), seeds
//! 001/002's Authentik middleware (envoy/presets/authentik.json) and oauth2-proxy
//! (envoy/presets/oauth2-proxy.json).
//!
//! For each request it compares what the client got, what the upstream received and what
//! the auth service saw. Every difference must be listed in the setup's TSV under
//! `tests/data/` (case, aspect, category), and the categories of all TSVs must be exactly
//! the rows of docs/traefik.md's "Where we differ from Traefik and why" table: a new difference,
//! a stale row or an undocumented category fails the test.
//! `NEBULA_TRAEFIK_DIFF_WRITE=1` rewrites the TSVs from what was observed (categories of
//! known rows kept, new rows marked `?`) for a maintainer to review.

use std::collections::{BTreeMap, BTreeSet};

use nebula_authz_tests::client::{escape, RawRequest};
use nebula_authz_tests::differential_record::{self, Aspects, Callouts, Gates, Headers, Seen};
use nebula_authz_tests::known_differences;
use nebula_authz_tests::outposts::{AUTHENTIK_COOKIE, OAUTH2_PROXY_COOKIE};
use nebula_authz_tests::traefik::{self, Traefik};
use nebula_authz_tests::{paths, repo_root, Env};

const SEED_000_TSV: &str = "tests/data/traefik_differences.tsv";
const AUTHENTIK_TSV: &str = "tests/data/traefik_differences_authentik.tsv";
const OAUTH2_PROXY_TSV: &str = "tests/data/traefik_differences_oauth2_proxy.tsv";
const FORWARD_BODY_TSV: &str = "tests/data/traefik_differences_forward_body.tsv";
const ALL_TSVS: [&str; 4] = [SEED_000_TSV, FORWARD_BODY_TSV, AUTHENTIK_TSV, OAUTH2_PROXY_TSV];
const DOCS_PAGE: &str = "docs/traefik.md";
const DOCS_SECTION: &str = "## Where we differ from Traefik and why";
/// The comment at the top of each differences TSV this test writes.
const TSV_HEADER: &str = "# Known differences between the filter under Envoy and Traefik 3.6.13, asserted by\n\
         # tests/tests/traefik_diff.rs. Columns: case<TAB>aspect<TAB>category; every\n\
         # category is a row of docs/traefik.md's \"Where we differ from Traefik and why\" table.\n";

/// Response headers compared when the proxy (not the upstream) answered.
const CLIENT_HEADERS: [&str; 6] = ["www-authenticate", "location", "set-cookie", "content-type", "x-internal", "vary"];
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
/// Upstream request headers compared (Prefect's identity contract).
const UPSTREAM_HEADERS: [&str; 5] = [
    "x-nebula-actor-id",
    "x-nebula-actor-permissions",
    "x-nebula-ratelimit-config",
    "x-nebula-log-limit-config",
    "authorization",
];

/// The default setup's corpus: hand-written cases, then the 66 targets of paths.tsv.
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

/// What the proxy on `port` did with `req`, on `env`'s mocks: the listed headers
/// (`CLIENT_HEADERS` of a proxy's own answer, `upstream_headers` of the upstream's
/// request, `AUTH_HEADERS` and the other names of the callout), bodies, and the last
/// callout: Go's client retries a GET once on a reused connection the auth service
/// closed, which depends on connection reuse, not on the contract.
fn observe(port: u16, env: &Env, req: &RawRequest, upstream_headers: &[&str]) -> Seen {
    let aspects = Aspects {
        bodies: true,
        client_headers: Headers::Listed { names: &CLIENT_HEADERS, join: " | ", others: None },
        client_headers_from_upstream: Headers::Skip,
        upstream_headers: Headers::Listed { names: upstream_headers, join: ",", others: None },
        auth_headers: Headers::Listed { names: &AUTH_HEADERS, join: ",", others: Some(&transport_noise) },
        callouts: Callouts::Last,
    };
    differential_record::record(env, || req.try_send(port), &aspects)
}

/// When one side reached the upstream (or called out, or got its answer from the proxy)
/// and the other did not, the details below that are not compared.
const GATES: Gates = Gates { decisive: None, sections: &["upstream.reached", "auth.called", "client.from"] };

/// Replays `corpus` through Envoy (`env`) and `traefik`, and asserts the differences are
/// exactly those in `tsv`, and that every category is documented in docs/traefik.md.
fn assert_differences(
    env: &Env,
    traefik: &Traefik,
    corpus: &[(String, RawRequest)],
    tsv: &str,
    upstream_headers: &[&str],
) {
    let mut observed = BTreeMap::new();
    let mut report = String::new();
    for (id, req) in corpus {
        let ours = observe(env.port, env, req, upstream_headers);
        let theirs = observe(traefik.port, env, req, upstream_headers);
        for (aspect, (a, b)) in differential_record::differences(&ours, &theirs, &GATES) {
            report.push_str(&format!("{id}\t{aspect}\n    ours:    {a}\n    traefik: {b}\n"));
            observed.insert((id.clone(), aspect), (a, b));
        }
    }
    // Shown with --nocapture: every difference with both values.
    eprintln!("{tsv}: {} requests, {} differences:\n{report}", corpus.len(), observed.len());
    let known = known_differences::load(tsv);
    if std::env::var_os("NEBULA_TRAEFIK_DIFF_WRITE").is_some() {
        known_differences::write(tsv, TSV_HEADER, &observed, &known);
    }

    let (unlisted, stale) = known_differences::mismatches(&observed, &known);
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences from Traefik not listed in {tsv}:\n{}\n\nlisted but not observed:\n{}\n\n\
         all differences:\n{report}\nTraefik log:\n{}",
        unlisted.join("\n"),
        stale.join("\n"),
        traefik.log()
    );

    // The docs list exactly the categories of all the TSVs.
    let documented = known_differences::documented_categories(DOCS_PAGE, DOCS_SECTION);
    let mine: BTreeSet<String> = known.values().cloned().collect();
    let undocumented: Vec<&String> = mine.difference(&documented).collect();
    let all: BTreeSet<String> = ALL_TSVS.iter().flat_map(|t| known_differences::load(t).into_values()).collect();
    let unused: Vec<&String> = documented.difference(&all).collect();
    assert!(
        undocumented.is_empty() && unused.is_empty(),
        "{DOCS_PAGE} {DOCS_SECTION:?} must list exactly the categories of the differences TSVs: \
         missing {undocumented:?}, in no TSV {unused:?}"
    );
}

#[test]
fn seed_000_matches_traefik_except_the_documented_differences() {
    let env = Env::start_default();
    let traefik = Traefik::start(&traefik::seed_000(env.auth.port(), env.upstream.port()), "/api/health");
    let corpus = corpus();
    assert!(corpus.len() >= 60, "the corpus must have at least 60 requests, has {}", corpus.len());
    assert_differences(&env, &traefik, &corpus, SEED_000_TSV, &UPSTREAM_HEADERS);
}

/// `maxBodySize` of the forward-body setup.
const MAX_BODY_SIZE: usize = 64;

/// Prefect's proxy mode with `forwardBody`: bodies below, at and over `maxBodySize`, chunked, empty,
/// binary, denied, on a public path; and requests without a body.
fn forward_body_corpus() -> Vec<(String, RawRequest)> {
    let get = RawRequest::get;
    let post = |path: &str, body: Vec<u8>| RawRequest::post(path, body);
    let binary: Vec<u8> = (0u8..=255).step_by(5).collect();
    let cases: Vec<(&str, RawRequest)> = vec![
        ("allow-get", get("/api/flows?limit=5").bearer("allow:alice")),
        ("allow-delete", RawRequest::new("DELETE", "/api/flows/1").bearer("allow:alice")),
        ("allow-post-body", post("/api/flows/filter", b"{\"limit\":1}".to_vec()).bearer("allow:alice")),
        ("allow-binary-body", post("/api/flows", binary).bearer("allow:alice")),
        ("allow-put-body", RawRequest::new("PUT", "/api/flows/1").body(b"{\"name\":\"x\"}".to_vec()).bearer("allow:a")),
        ("allow-empty-body", post("/api/flows", Vec::new()).bearer("allow:alice")),
        ("allow-at-limit", post("/api/flows", vec![b'a'; MAX_BODY_SIZE]).bearer("allow:alice")),
        (
            "allow-chunked-body",
            post("/api/flows", Vec::new()).chunked(vec![b"ab".to_vec(), b"cd".to_vec()]).bearer("allow:c"),
        ),
        (
            "allow-chunked-at-limit",
            post("/api/flows", Vec::new()).chunked(vec![vec![b'x'; 32], vec![b'y'; 32]]).bearer("allow:c"),
        ),
        ("over-limit", post("/api/flows", vec![b'o'; MAX_BODY_SIZE + 1]).bearer("allow:alice")),
        ("over-limit-1k", post("/api/flows", vec![b'k'; 1000]).bearer("allow:alice")),
        (
            "over-limit-chunked",
            post("/api/flows", Vec::new()).chunked(vec![vec![b'x'; 40], vec![b'y'; 40]]).bearer("allow:alice"),
        ),
        ("over-limit-no-credentials", post("/api/flows", vec![b'n'; 100])),
        ("deny-post-body", post("/api/flows", b"secret".to_vec()).bearer("deny")),
        ("deny-no-credentials-body", post("/api/flows", b"x=1".to_vec())),
        ("redirect-post-body", post("/api/flows", b"x=1".to_vec()).bearer("redirect")),
        ("status-500-body", post("/api/flows", b"x=1".to_vec()).bearer("status:500")),
        ("public-post-body", post("/hooks/abc", vec![b'p'; 200])),
    ];
    cases.into_iter().map(|(id, r)| (id.to_owned(), r)).collect()
}

#[test]
fn forward_body_matches_traefik_except_the_documented_differences() {
    let config = format!(
        r#"{{"auth": {{"cluster": "auth", "authority": "auth:4300", "forward_body": true,
            "max_body_size": {MAX_BODY_SIZE}}}}}"#
    );
    let env = Env::start(&config);
    let traefik = Traefik::start(
        &traefik::seed_000_forward_body(env.auth.port(), env.upstream.port(), MAX_BODY_SIZE),
        "/api/health",
    );
    // Not vacuous: both send the body with a GET, and both refuse one over the limit
    // with an empty 401 and no callout.
    for (who, port) in [("ours", env.port), ("traefik", traefik.port)] {
        let body = b"{\"a\":[1,2]}\x00\xff";
        let seen = observe(port, &env, &RawRequest::post("/api/flows", body.to_vec()).bearer("allow:alice"), &[]);
        assert_eq!(seen.get("auth.body"), Some(&escape(body)), "{who}: {seen:?}");
        assert_eq!(seen.get("auth.method").map(String::as_str), Some("GET"), "{who}: {seen:?}");
        assert_eq!(seen.get("upstream.body"), Some(&escape(body)), "{who}: {seen:?}");
        let over = RawRequest::post("/api/flows", vec![b'o'; MAX_BODY_SIZE + 1]).bearer("allow:alice");
        let seen = observe(port, &env, &over, &[]);
        assert_eq!(seen.get("client.status").map(String::as_str), Some("401"), "{who}: {seen:?}");
        assert_eq!(seen.get("client.body").map(String::as_str), Some(""), "{who}: {seen:?}");
        assert_eq!(seen.get("auth.called").map(String::as_str), Some("no"), "{who}: {seen:?}");
    }
    assert_differences(&env, &traefik, &forward_body_corpus(), FORWARD_BODY_TSV, &UPSTREAM_HEADERS);
}

/// `preserveRequestMethod: true` (`auth.preserve_request_method`): both ask the auth
/// service with the client's method, and allow or deny alike.
#[test]
fn preserve_request_method_matches_traefik() {
    let config = r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "preserve_request_method": true}}"#;
    let env = Env::start(config);
    let options = ["preserveRequestMethod: true".to_string()];
    let traefik =
        Traefik::start(&traefik::seed_000_with(env.auth.port(), env.upstream.port(), &options), "/api/health");
    let same = ["client.status", "upstream.reached", "auth.method", "auth.path", "auth.x-forwarded-method"];
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        for token in ["allow:alice", "deny"] {
            let req = RawRequest::new(method, "/api/flows/1").bearer(token);
            let ours = observe(env.port, &env, &req, &[]);
            let theirs = observe(traefik.port, &env, &req, &[]);
            assert_eq!(ours.get("auth.method").map(String::as_str), Some(method), "{method} {token}: {ours:?}");
            for aspect in same {
                assert_eq!(ours.get(aspect), theirs.get(aspect), "{method} {token}: {aspect}: {ours:?} / {theirs:?}");
            }
        }
    }
}

/// Seeds 001/002: the Authentik outpost behind Traefik's middleware, against the preset.
fn authentik_corpus() -> Vec<(String, RawRequest)> {
    let app = |r: RawRequest| r.header("host", "app.example.com");
    let session = |r: RawRequest| app(r).header("cookie", format!("theme=dark; {AUTHENTIK_COOKIE}=akadmin"));
    let cases: Vec<(&str, RawRequest)> = vec![
        ("no-session", app(RawRequest::get("/app/page?x=1"))),
        ("no-session-post", app(RawRequest::post("/app/form", b"a=1".to_vec()))),
        ("no-session-basic-auth", app(RawRequest::get("/app/")).header("authorization", "Basic dXNlcjpwYXNz")),
        ("no-session-forged-host", app(RawRequest::get("/app/")).header("X-Forwarded-Host", "evil.example.com")),
        ("no-session-forged-uri", app(RawRequest::get("/app/")).header("X-Forwarded-Uri", "/admin")),
        ("pending-session", app(RawRequest::get("/app/")).header("cookie", format!("{AUTHENTIK_COOKIE}=pending"))),
        ("session", session(RawRequest::get("/app/page"))),
        ("session-post-body", session(RawRequest::post("/app/form", b"a=1&b=2".to_vec()))),
        ("session-spoofed-listed", session(RawRequest::get("/app/")).header("X-authentik-username", "evil")),
        ("session-spoofed-not-returned", session(RawRequest::get("/app/")).header("X-authentik-entitlements", "admin")),
        ("session-spoofed-unlisted", session(RawRequest::get("/app/")).header("X-authentik-meta-forged", "evil")),
        ("session-forged-forwarding", session(RawRequest::get("/app/")).header("X-Forwarded-For", "6.6.6.6")),
        ("session-websocket-path", session(RawRequest::get("/app/ws?token=1"))),
        ("outpost-callback", app(RawRequest::get("/outpost.goauthentik.io/callback?code=1"))),
        ("outpost-spoofed", app(RawRequest::get("/outpost.goauthentik.io/start")).header("X-authentik-uid", "evil")),
    ];
    cases.into_iter().map(|(id, r)| (id.to_owned(), r)).collect()
}

#[test]
fn authentik_preset_matches_traefik_except_the_documented_differences() {
    let preset = std::fs::read_to_string(repo_root().join("envoy/presets/authentik.json")).expect("authentik preset");
    let env = Env::start(&preset);
    let traefik =
        Traefik::start(&traefik::authentik(env.auth.port(), env.upstream.port()), "/outpost.goauthentik.io/ready");
    // The twelve headers the middleware copies, and one a client forges.
    let mut upstream_headers = traefik::AUTHENTIK_RESPONSE_HEADERS.to_vec();
    upstream_headers.push("x-authentik-meta-forged");
    assert_differences(&env, &traefik, &authentik_corpus(), AUTHENTIK_TSV, &upstream_headers);
}

/// oauth2-proxy: 202/401, headers by regex, the refreshed session cookie to the client.
fn oauth2_proxy_corpus() -> Vec<(String, RawRequest)> {
    let get = RawRequest::get;
    let session = |r: RawRequest, user: &str| r.header("cookie", format!("{OAUTH2_PROXY_COOKIE}={user}"));
    let cases: Vec<(&str, RawRequest)> = vec![
        ("no-session", get("/dashboard/")),
        ("no-session-post", RawRequest::post("/api/write", b"m 1".to_vec())),
        ("session", session(get("/dashboard/"), "alice")),
        ("session-post-body", session(RawRequest::post("/api/write", b"m 1".to_vec()), "alice")),
        ("session-spoofed-regex", session(get("/dashboard/"), "alice").header("X-Auth-Request-User", "evil")),
        ("session-spoofed-regex-absent", session(get("/"), "alice").header("X-Auth-Request-Groups", "admins")),
        ("refresh", session(get("/dashboard/"), "refresh-bob")),
        (
            "refresh-replaces-app-cookie",
            session(get("/dashboard/"), "refresh-bob")
                .header("x-echo-set-cookie", format!("{OAUTH2_PROXY_COOKIE}=stale"))
                .header("x-echo-set-cookie", "app=1; Path=/"),
        ),
        ("app-cookie-kept", session(get("/"), "carol").header("x-echo-set-cookie", "app=1; Path=/")),
        ("sign-in-path", get("/oauth2/sign_in?rd=/dashboard/")),
        ("callback-spoofed", get("/oauth2/callback?code=x").header("X-Auth-Request-Email", "evil@example.com")),
    ];
    cases.into_iter().map(|(id, r)| (id.to_owned(), r)).collect()
}

#[test]
fn oauth2_proxy_preset_matches_traefik_except_the_documented_differences() {
    let preset = std::fs::read_to_string(repo_root().join("envoy/presets/oauth2-proxy.json")).expect("preset");
    let env = Env::start(&preset);
    let traefik = Traefik::start(&traefik::oauth2_proxy(env.auth.port(), env.upstream.port()), "/oauth2/ready");
    let upstream_headers =
        ["x-auth-request-user", "x-auth-request-email", "x-auth-request-preferred-username", "x-auth-request-groups"];
    assert_differences(&env, &traefik, &oauth2_proxy_corpus(), OAUTH2_PROXY_TSV, &upstream_headers);
}
