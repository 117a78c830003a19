//! Differential test of Istio's CUSTOM action: the AuthorizationPolicies of
//! tests/data/custom/policies.yaml (every rule field the filter evaluates and its
//! negation, twenty rules, one provider) and policies-opa.yaml (two more policies,
//! a second provider), with the RequestAuthentication of requestauthentication.yaml, on
//! the providers of tests/data/custom/meshconfig.yaml, rendered
//! (a) as istiod renders them: per provider, sorted by name, an RBAC filter whose shadow
//! rules name the matching rule in the dynamic metadata, then an ext_authz filter enabled
//! by that metadata (scripts/render_ext_authz.py), and
//! (b) through `make convert` (scripts/convert_policy.py: `providers` and `policies`) into
//! the filter;
//! both in Envoy 1.40 with the connection manager istiod renders for a sidecar (path
//! normalization BASE), downstream mTLS (the peer's SPIFFE certificate, as a sidecar's
//! inbound listener verifies it) and one trusted X-Forwarded-For hop, against one
//! recording auth service (the providers told apart by their path prefixes) and one echo
//! upstream.
//!
//! For each request it compares which providers were asked in which order, what each
//! received (method, path, every header), what the upstream received and what the client
//! got. Every difference must be listed in tests/data/custom_differences.tsv (case,
//! aspect, category), and the categories must be exactly the rows of docs/istio.md's
//! "Where the rules differ from Istio's" table. `NEBULA_CUSTOM_DIFF_WRITE=1` rewrites the
//! TSV from what was observed (known categories kept, new rows marked `?`).
//!
//! Two policy sets (one provider; two): the filter's Envoy starts once and takes the
//! second set's configuration over ECDS, as istiod delivers a WasmPlugin change; Envoy as
//! istiod renders a set (no Wasm module to compile) starts per set.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use jwt_simple::prelude::*;

use nebula_authz_tests::client::{escape, RawRequest};
use nebula_authz_tests::differential_record::{self, Aspects, Callouts, Gates, Headers, Seen};
use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::ext_authz_pair::{self, ISTIO_CLUSTER};
use nebula_authz_tests::known_differences;
use nebula_authz_tests::tls::TestCa;
use nebula_authz_tests::{closed_port, paths, repo_root, Env, TempDir};

const MESH: &str = "tests/data/custom/meshconfig.yaml";
const POLICIES: &str = "tests/data/custom/policies.yaml";
/// The second provider's policies: with POLICIES, two providers on one workload.
const POLICIES_OPA: &str = "tests/data/custom/policies-opa.yaml";
/// The policy sets, each the files of its CUSTOM policies: one provider, then two. The
/// filter's Envoy takes each set's configuration over ECDS; istiod's rendering is started
/// per set (quick: no Wasm module to compile).
const SETS: [(&str, &[&str]); 2] = [("one provider", &[POLICIES]), ("two providers", &[POLICIES, POLICIES_OPA])];
/// The mesh's token check: Istio's jwt_authn on one side, what `make convert` turns it
/// into (the filter's `jwt` block) on the other.
const REQUEST_AUTHENTICATION: &str = "tests/data/custom/requestauthentication.yaml";
/// The TEST-ONLY key whose public half is the JWKS of both.
const RSA_PRIVATE: &str = include_str!("../data/jwt/rsa-test-private.pem");
const ISSUER: &str = "https://login.example.com";
/// The second provider's cluster, as Istio names it; its endpoint is the same mock.
const OPA_CLUSTER: &str = "outbound|4301||opa.prefect.svc.cluster.local";
/// The providers' `pathPrefix`es: which provider a callout came from.
const PROVIDERS: [(&str, &str); 2] = [("/authz-http", "authz-http"), ("/opa", "opa")];
const TSV: &str = "tests/data/custom_differences.tsv";
const DOCS: &str = "docs/istio.md";
const DOCS_SECTION: &str = "### Where the rules differ from Istio's";
/// The comment at the top of the differences TSV this test writes.
const TSV_HEADER: &str =
    "# Known differences between the filter's rules (from make convert) and Istio's CUSTOM action as\n\
         # istiod renders it (RBAC shadow rules + ext_authz per provider), asserted by\n\
         # tests/tests/custom_diff.rs. Columns: case<TAB>aspect<TAB>category; every category is a row\n\
         # of docs/istio.md's \"Where the rules differ from Istio's\" table.\n";

/// The client certificates (URI SAN = the workload's SPIFFE identity).
const PEERS: [(&str, &str); 3] = [
    ("gateway", "spiffe://cluster.local/ns/ingress/sa/gateway"),
    ("tenant", "spiffe://cluster.local/ns/tenant-a/sa/worker"),
    ("robot", "spiffe://cluster.local/ns/tenant-b/sa/robot"),
];

fn test_ca() -> TestCa {
    let ca = TestCa::new();
    for (name, uri) in PEERS {
        ca.client(name, uri);
    }
    ca
}

/// A token of the test issuer for `sub` (`groups`, `azp` as given); `forged`: its
/// signature's first byte changed (RSA key generation is slow in a debug build).
fn token(sub: &str, groups: &[&str], azp: &str, forged: bool) -> String {
    token_of(ISSUER, sub, groups, azp, forged)
}

/// As `token`, from `issuer`.
fn token_of(issuer: &str, sub: &str, groups: &[&str], azp: &str, forged: bool) -> String {
    let key = RS256KeyPair::from_pem(RSA_PRIVATE).expect("test RSA key").with_key_id("rsa-1");
    let claims = Claims::with_custom_claims(serde_json::json!({"groups": groups, "azp": azp}), Duration::from_mins(10))
        .with_issuer(issuer)
        .with_audience("prefect-api")
        .with_subject(sub);
    let token = key.sign(claims).expect("sign");
    if !forged {
        return token;
    }
    let at = token.rfind('.').expect("a signature") + 1;
    let flipped = if token[at..].starts_with('A') { "B" } else { "A" };
    format!("{}{flipped}{}", &token[..at], &token[at + 1..])
}

/// The tokens of the corpus, by name.
fn tokens() -> Vec<(&'static str, String)> {
    vec![
        ("admin-cli", token("admin-cli", &["prefect-admins"], "web", false)),
        ("ops-readonly", token("ops-readonly", &["prefect-admins"], "legacy-client", false)),
        ("ops-star", token("ops-*", &[], "web", false)),
        ("svc-batch", token("svc-batch", &["users"], "web", false)),
        ("forged", token("admin-cli", &["prefect-admins"], "web", true)),
        // Signed with the same key by an issuer no jwtRule names, and a credential that
        // is not a JWT (an API key) where the RequestAuthentication reads tokens.
        ("other-issuer", token_of("https://other.example.com", "admin-cli", &["prefect-admins"], "web", false)),
        ("api-key", "pnu_0123456789abcdef".to_owned()),
    ]
}

/// One request of the corpus: who sends it (certificate, source address) and what.
struct Case {
    id: String,
    cert: Option<&'static str>,
    source: IpAddr,
    req: RawRequest,
}

fn ip(last: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(last))
}

/// The path of each rule's scope (one or two per rule of policies.yaml), the paths just
/// outside them, and what no rule selects.
const SCOPED: &[&str] = &[
    "/api/flows",
    "/api/health",
    "/api/health/live",
    "/api/docs",
    "/api/docsy",
    "/api/flows/public",
    "/api/admin/users",
    "/tpl/a/runs",
    "/tpl/a/b/runs",
    "/tpl/runs",
    "/deep/a/b/c",
    "/deep",
    "/x/y/suffix.json",
    "/suffix.json",
    "/exact",
    "/exact/",
    "/exact/below",
    "/methods/x",
    "/notmethods/x",
    "/hosts/x",
    "/nothosts/x",
    "/ports/x",
    "/notports/x",
    "/listener/ports/x",
    "/listener/notports/x",
    "/listener/when/x",
    "/principals/x",
    "/notprincipals/x",
    "/namespaces/x",
    "/notnamespaces/x",
    "/ipblocks/x",
    "/notipblocks/x",
    "/remoteipblocks/x",
    "/notremoteipblocks/x",
    "/when/header/x",
    "/when/peer/x",
    "/when/addr/x",
    "/when/sni/x",
    "/opa/x",
    "/opa/open",
    "/other",
];

/// Every scoped path from every peer (and none) and two source addresses; then the
/// methods, hosts, headers and forwarded addresses the rules look at; two providers
/// answering differently; paths.tsv's hostile targets.
fn corpus(side: &str, tokens: &[(&'static str, String)]) -> Vec<Case> {
    let allow = "allow:alice";
    let local = ip([127, 0, 0, 1]);
    let mut out = Vec::new();
    let mut push = |id: String, cert: Option<&'static str>, source: IpAddr, req: RawRequest| {
        out.push(Case { id, cert, source, req });
    };
    let certs: [Option<&'static str>; 4] = [None, Some("gateway"), Some("tenant"), Some("robot")];
    for path in SCOPED {
        for cert in certs {
            for source in [[127, 0, 0, 1], [127, 0, 0, 2]] {
                let id = format!("GET {path} as {} from {}", cert.unwrap_or("-"), ip(source));
                push(id, cert, ip(source), RawRequest::get(*path).bearer(allow));
            }
        }
    }
    push(
        "GET /ipblocks/x from 127.0.1.5".into(),
        None,
        ip([127, 0, 1, 5]),
        RawRequest::get("/ipblocks/x").bearer(allow),
    );
    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/methods/x", "/notmethods/x", "/other", "/api/flows"] {
            for cert in [None, Some("gateway"), Some("robot")] {
                let id = format!("{method} {path} as {}", cert.unwrap_or("-"));
                push(id, cert, local, RawRequest::new(method, path).bearer(allow));
            }
        }
    }
    let hosts = [
        "api.example.com",
        "API.Example.COM",
        "api.example.com:443",
        "api.example.com.",
        "a.corp.example",
        "A.CORP.EXAMPLE",
        "corp.example",
        "internal.svc",
        "Internal.svc:8080",
        "public.example.com",
        "PUBLIC.example.com",
        "public.example.com:443",
        "public.example.com.",
        "other.example.com",
    ];
    for host in hosts {
        for path in ["/hosts/x", "/nothosts/x"] {
            push(
                format!("GET {path} host {host}"),
                None,
                local,
                RawRequest::get(path).bearer(allow).header("host", host),
            );
        }
    }
    for tenant in ["gold", "Gold", "platinum", "platinum-trial", "free", ""] {
        let id = format!("GET /when/header/x x-tenant {tenant:?}");
        push(id, None, local, RawRequest::get("/when/header/x").bearer(allow).header("x-tenant", tenant));
    }
    push("GET /when/header/x no x-tenant".into(), None, local, RawRequest::get("/when/header/x").bearer(allow));
    // A repeated header: Envoy's RBAC tests each value on its own.
    for (first, second) in [("free", "gold"), ("gold", "platinum-trial"), ("free", "free"), ("x", "platinum")] {
        let id = format!("GET /when/header/x x-tenant {first:?} and {second:?}");
        let req = RawRequest::get("/when/header/x").bearer(allow).header("x-tenant", first).header("x-tenant", second);
        push(id, None, local, req);
    }
    for xff in ["10.9.1.1", "10.8.1.1", "10.9.9.9", "1.2.3.4, 10.9.0.1", "10.9.0.1, 1.2.3.4", "127.0.0.2"] {
        for path in ["/remoteipblocks/x", "/notremoteipblocks/x", "/when/addr/x", "/ipblocks/x", "/notipblocks/x"] {
            let id = format!("GET {path} xff {xff}");
            push(id, None, local, RawRequest::get(path).bearer(allow).header("x-forwarded-for", xff));
        }
    }
    // Two providers on one request: each is asked, in order, and each must allow.
    for (what, script) in [
        ("both allow", allow.to_owned()),
        // Each allow with a cookie and a header for the client (headersToDownstreamOnAllow):
        // the first answer is the first provider's.
        (
            "both allow with client headers",
            format!("seq:h:set-cookie=first=1:h:x-auth-note=first:allow:alice|h:set-cookie=second=2:h:x-auth-note=second:allow:alice|{side}"),
        ),
        ("first denies", "deny".to_owned()),
        ("second denies", format!("seq:allow:alice|deny|{side}")),
        ("second denies after client headers", format!("seq:h:set-cookie=first=1:allow:alice|deny|{side}")),
        ("second fails", format!("seq:allow:alice|status:500|{side}")),
    ] {
        for cert in [None, Some("gateway")] {
            for (method, path) in [("GET", "/api/admin/users"), ("DELETE", "/api/flows"), ("DELETE", "/opa/open")] {
                let id = format!("{method} {path} as {}: {what}", cert.unwrap_or("-"));
                // A `seq:` script counts the arrivals of its exact token: one per request.
                let script = if script.starts_with("seq:") {
                    format!("{script}/{method}{path}/{}", cert.unwrap_or("-"))
                } else {
                    script.clone()
                };
                push(id, cert, local, RawRequest::new(method, path).bearer(&script));
            }
        }
    }
    for (what, path) in [("deny", "/api/flows"), ("deny opa", "/opa/x")] {
        push(format!("GET {path}: {what}"), None, local, RawRequest::get(path).bearer("deny"));
    }
    // Spoofed identity headers: stripped whether or not a rule selects the request.
    for path in ["/api/flows", "/other", "/api/health"] {
        let req = RawRequest::get(path).bearer(allow).header("x-nebula-actor-id", "evil");
        push(format!("GET {path} spoofed"), None, local, req);
    }
    // A spoofed claim header (the RequestAuthentication's outputClaimToHeaders), no token:
    // jwt_authn removes it too (measured), as the filter strips it on every request.
    for path in ["/api/flows", "/other"] {
        let req = RawRequest::get(path).bearer(allow).header("x-jwt-sub", "admin-cli");
        push(format!("GET {path} spoofed claim header"), None, local, req);
    }
    // Tokens: each rule scoped to them, a path no rule selects, and one rule that does not
    // look at tokens.
    for (name, token) in tokens {
        for path in ["/jwt/principals/x", "/jwt/notprincipals/x", "/jwt/claims/x", "/other", "/api/flows"] {
            let req = RawRequest::get(path).bearer(allow).header("x-jwt-assertion", token);
            push(format!("GET {path} token {name}"), None, local, req);
        }
    }
    for path in ["/jwt/principals/x", "/jwt/notprincipals/x", "/jwt/claims/x"] {
        push(format!("GET {path} no token"), None, local, RawRequest::get(path).bearer(allow));
    }
    for case in paths::load() {
        let id = format!("paths.tsv:{} {}", case.line, escape(&case.target));
        push(id, None, local, RawRequest::get(&case.target).bearer(allow));
    }
    out
}

/// Values that differ run to run, or by side only: compared as present or not.
fn volatile(name: &str) -> bool {
    matches!(
        name,
        "date" | "x-request-id" | "x-envoy-upstream-service-time" | "x-envoy-expected-rq-timeout-ms" | "content-length"
    )
}

fn header_value(name: &str, raw: &[u8]) -> Option<String> {
    Some(if volatile(name) { "<set>".to_owned() } else { escape(raw) })
}

/// What the proxy of `env` did with `case`, sent over TLS with its certificate from its
/// source address: every header (`side`, the side's name in the `seq:` tokens, shown as
/// `<side>` in what the upstream and the auth service received), no request body, and
/// each provider's callout.
fn observe(env: &Env, ca: &TestCa, case: &Case, side: &str) -> Seen {
    let of_side = |name: &str, raw: &[u8]| header_value(name, raw).map(|v| v.replace(side, "<side>"));
    let aspects = Aspects {
        bodies: false,
        client_headers: Headers::Every(&header_value),
        client_headers_from_upstream: Headers::Every(&header_value),
        upstream_headers: Headers::Every(&of_side),
        auth_headers: Headers::Every(&of_side),
        callouts: Callouts::ByPathPrefix(&PROVIDERS),
    };
    let send = || ca.raw_client(case.cert).send_from(case.source, env.port, &case.req.to_bytes());
    differential_record::record(env, send, &aspects)
}

/// Gates: when the sides disagree on one, the details below it are not compared. Which
/// providers were asked decides everything after it, so that difference stands alone.
const GATES: Gates = Gates { decisive: Some("auth.providers"), sections: &["upstream.reached", "client.from"] };

/// The trace headers the filter sends on every callout (`auth.trace_headers`) and
/// ext_authz does not without a tracer: the `trace-context` row, told by rule.
fn trace_context(aspect: &str, istio: &str) -> bool {
    let header = aspect.rsplit_once(".header.").map(|(_, h)| h).unwrap_or("");
    aspect.starts_with("auth.")
        && istio == "<none>"
        && nebula_authz::policy::trace::DEFAULT_TRACE_HEADERS.contains(&header)
}

/// The port the policies name where they mean the listener's own (picked at run time).
const LISTENER_PORT: &str = "\"65001\"";

/// A policy file with `port`, the proxy's listener port, for [`LISTENER_PORT`].
fn with_listener_port(path: &str, port: u16) -> String {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.replace(LISTENER_PORT, &format!("\"{port}\""))
}

/// The policy files and the RequestAuthentication in one file, as istiod reads them all,
/// for a listener on `port`.
fn istio_input(dir: &TempDir, files: &[&str], port: u16) -> PathBuf {
    let docs: Vec<String> =
        files.iter().chain([&REQUEST_AUTHENTICATION]).map(|f| with_listener_port(f, port)).collect();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, docs.join("\n---\n")).expect("write");
    path
}

/// Envoy as istiod renders the policies of `files`, on `mocks`' auth service and
/// upstream (or its own).
fn start_istio(ca: &TestCa, files: &[&str], mocks: Option<&Env>) -> Env {
    let dir = TempDir::new("nebula-custom-diff");
    let port = closed_port();
    let mut builder = Env::builder()
        .listen_port(port)
        .ext_authz(&repo_root().join(MESH), &istio_input(&dir, files, port))
        .auth_cluster_name(ISTIO_CLUSTER)
        .auth_alias(OPA_CLUSTER)
        .istio_sidecar()
        .downstream_mtls(ca.dir(), false)
        .xff_trusted_hops(1);
    if let Some(env) = mocks {
        builder = builder.mocks_of(env);
    }
    builder.start()
}

/// `make convert` of `files` and the RequestAuthentication, with no other option, for a
/// listener on `port`: the filter's `jwt` block is what the converter makes of the
/// RequestAuthentication.
fn converted(files: &[&str], port: u16) -> String {
    let dir = TempDir::new("nebula-custom-convert");
    let mut paths = Vec::new();
    for (i, file) in files.iter().chain([&REQUEST_AUTHENTICATION]).enumerate() {
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, with_listener_port(file, port)).expect("write");
        paths.push(path);
    }
    ext_authz_pair::convert_all(&repo_root().join(MESH), &paths, &[])
}

/// Which providers Envoy, as istiod renders the policies, asks for each request: the
/// renderer against what Istio documents for each field (a presence `*`, a suffix `*x`,
/// a prefix `x*`; `not*` as the negation; `from`, `to` and `when` ANDed; the rules of
/// the providers ORed; the providers in name order).
#[test]
fn istio_rendering_selects_as_istio_documents() {
    let ca = test_ca();
    let env = start_istio(&ca, SETS[1].1, None);
    let local = ip([127, 0, 0, 1]);
    let get = |path: &str| RawRequest::get(path).bearer("allow:alice");
    let tokens = tokens();
    let bearer = |path: &str, name: &str| {
        let token = &tokens.iter().find(|(n, _)| *n == name).expect("a token of tokens()").1;
        RawRequest::get(path).bearer("allow:alice").header("x-jwt-assertion", token)
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Option<&'static str>, IpAddr, RawRequest, &str)> = vec![
        ("paths prefix", None, local, get("/api/flows"), "authz-http"),
        ("notPaths exact", None, local, get("/api/health"), "-"),
        ("notPaths exact, below", None, local, get("/api/health/live"), "authz-http"),
        ("notPaths string prefix", None, local, get("/api/docsy"), "-"),
        ("notPaths suffix", None, local, get("/api/flows/public"), "-"),
        ("notPaths: query ignored", None, local, get("/api/health?x=1"), "-"),
        ("normalized before the match", None, local, get("/api/x/../health"), "-"),
        ("template {*}", None, local, get("/tpl/a/runs"), "authz-http"),
        ("template {*} is one segment", None, local, get("/tpl/a/b/runs"), "-"),
        ("template {**}", None, local, get("/deep/a/b/c"), "authz-http"),
        ("suffix", None, local, get("/x/y/suffix.json"), "authz-http"),
        ("exact", None, local, get("/exact"), "authz-http"),
        ("exact, trailing slash", None, local, get("/exact/"), "-"),
        ("methods", None, local, RawRequest::new("POST", "/methods/x").bearer("allow:alice"), "authz-http"),
        ("methods, other", None, local, get("/methods/x"), "-"),
        ("notMethods", None, local, RawRequest::new("DELETE", "/notmethods/x").bearer("allow:alice"), "authz-http"),
        ("notMethods, listed", None, local, get("/notmethods/x"), "-"),
        ("hosts exact, any case", None, local, get("/hosts/x").header("host", "API.example.com"), "authz-http"),
        ("hosts with a port", None, local, get("/hosts/x").header("host", "api.example.com:443"), "-"),
        ("hosts suffix", None, local, get("/hosts/x").header("host", "a.corp.example"), "authz-http"),
        ("hosts prefix", None, local, get("/hosts/x").header("host", "internal.svc"), "authz-http"),
        ("hosts, other", None, local, get("/hosts/x"), "-"),
        ("notHosts", None, local, get("/nothosts/x"), "authz-http"),
        ("notHosts, listed", None, local, get("/nothosts/x").header("host", "PUBLIC.example.com"), "-"),
        ("ports", None, local, get("/ports/x"), "-"),
        ("notPorts", None, local, get("/notports/x"), "authz-http"),
        ("ports, the listener's", None, local, get("/listener/ports/x"), "authz-http"),
        ("notPorts, the listener's", None, local, get("/listener/notports/x"), "-"),
        ("destination.port, the listener's", None, local, get("/listener/when/x"), "authz-http"),
        ("principals", Some("gateway"), local, get("/principals/x"), "authz-http"),
        ("principals suffix", Some("robot"), local, get("/principals/x"), "authz-http"),
        ("principals, other", Some("tenant"), local, get("/principals/x"), "-"),
        ("principals, no certificate", None, local, get("/principals/x"), "-"),
        ("notPrincipals", Some("tenant"), local, get("/notprincipals/x"), "authz-http"),
        ("notPrincipals, no certificate", None, local, get("/notprincipals/x"), "authz-http"),
        ("notPrincipals, listed", Some("gateway"), local, get("/notprincipals/x"), "-"),
        ("namespaces", Some("tenant"), local, get("/namespaces/x"), "authz-http"),
        ("namespaces, other", Some("gateway"), local, get("/namespaces/x"), "-"),
        ("notNamespaces", Some("tenant"), local, get("/notnamespaces/x"), "authz-http"),
        ("notNamespaces, listed", Some("gateway"), local, get("/notnamespaces/x"), "-"),
        ("ipBlocks", None, ip([127, 0, 0, 2]), get("/ipblocks/x"), "authz-http"),
        ("ipBlocks CIDR", None, ip([127, 0, 1, 5]), get("/ipblocks/x"), "authz-http"),
        ("ipBlocks, other", None, local, get("/ipblocks/x"), "-"),
        ("ipBlocks: the peer, not X-Forwarded-For", None, local,
         get("/ipblocks/x").header("x-forwarded-for", "127.0.0.2"), "-"),
        ("notIpBlocks", None, local, get("/notipblocks/x"), "authz-http"),
        ("notIpBlocks, listed", None, ip([127, 0, 0, 2]), get("/notipblocks/x"), "-"),
        ("remoteIpBlocks", None, local, get("/remoteipblocks/x").header("x-forwarded-for", "10.9.1.1"), "authz-http"),
        ("remoteIpBlocks, other", None, local, get("/remoteipblocks/x"), "-"),
        ("notRemoteIpBlocks", None, local, get("/notremoteipblocks/x"), "authz-http"),
        ("notRemoteIpBlocks, listed", None, local,
         get("/notremoteipblocks/x").header("x-forwarded-for", "10.9.1.1"), "-"),
        ("when header", None, local, get("/when/header/x").header("x-tenant", "platinum"), "authz-http"),
        ("when header, notValues", None, local, get("/when/header/x").header("x-tenant", "platinum-trial"), "-"),
        ("when header, case", None, local, get("/when/header/x").header("x-tenant", "Gold"), "-"),
        ("when peer", Some("tenant"), local, get("/when/peer/x"), "authz-http"),
        ("when peer, other namespace", Some("robot"), local, get("/when/peer/x"), "-"),
        ("when addresses", None, local, get("/when/addr/x"), "authz-http"),
        ("when remote.ip notValues", None, local, get("/when/addr/x").header("x-forwarded-for", "10.9.9.9"), "-"),
        ("when sni", None, local, get("/when/sni/x"), "authz-http"),
        ("second provider", None, local, get("/opa/x"), "opa"),
        ("second provider, notPaths", None, local, get("/opa/open"), "-"),
        ("both providers, in name order", None, local, get("/api/admin/users"), "authz-http,opa"),
        ("from and to ANDed", Some("gateway"), local,
         RawRequest::new("DELETE", "/other").bearer("allow:alice"), "opa"),
        ("from and to ANDed, no certificate", None, local,
         RawRequest::new("DELETE", "/other").bearer("allow:alice"), "-"),
        ("no rule", None, local, get("/other"), "-"),
        ("requestPrincipals", None, local, bearer("/jwt/principals/x", "admin-cli"), "authz-http"),
        ("requestPrincipals: *\u{2f}ops-* is the literal subject", None, local,
         bearer("/jwt/principals/x", "ops-star"), "authz-http"),
        ("requestPrincipals prefix", None, local, bearer("/jwt/principals/x", "svc-batch"), "authz-http"),
        ("requestPrincipals, other", None, local, bearer("/jwt/principals/x", "ops-readonly"), "-"),
        ("requestPrincipals, no token", None, local, get("/jwt/principals/x"), "-"),
        ("notRequestPrincipals", None, local, bearer("/jwt/notprincipals/x", "admin-cli"), "authz-http"),
        ("notRequestPrincipals, no token", None, local, get("/jwt/notprincipals/x"), "authz-http"),
        ("notRequestPrincipals, listed", None, local, bearer("/jwt/notprincipals/x", "ops-readonly"), "-"),
        ("request.auth conditions", None, local, bearer("/jwt/claims/x", "admin-cli"), "authz-http"),
        ("request.auth presenter notValues", None, local, bearer("/jwt/claims/x", "ops-readonly"), "-"),
        ("request.auth claim, other", None, local, bearer("/jwt/claims/x", "svc-batch"), "-"),
    ];
    let mut wrong = String::new();
    for (what, cert, source, req, expected) in table {
        let case = Case { id: what.to_owned(), cert, source, req };
        let seen = observe(&env, &ca, &case, "istio");
        let got = seen.get("auth.providers").map(String::as_str).unwrap_or("?");
        let reached = seen.get("upstream.reached").map(String::as_str) == Some("yes");
        if got != expected || !reached {
            wrong.push_str(&format!("{what}: providers {got}, expected {expected}; upstream reached: {reached}\n"));
        }
    }
    assert!(wrong.is_empty(), "Istio's rendering selected otherwise:\n{wrong}\nEnvoy log tail:\n{}", env.log_tail());
}

/// The differential: every request through both, every difference a documented row.
#[test]
fn filter_rules_match_istio_except_the_documented_differences() {
    let started = std::time::Instant::now();
    let ca = test_ca();
    let port = closed_port();
    let configs: Vec<String> = SETS.iter().map(|(_, files)| converted(files, port)).collect();
    let wasm = Tools::locate(true).wasm;
    let filter = Env::builder()
        .listen_port(port)
        .ecds()
        .plugin_config(&configs[0])
        .auth_cluster_name(ISTIO_CLUSTER)
        .auth_alias(OPA_CLUSTER)
        .istio_sidecar()
        .downstream_mtls(ca.dir(), false)
        .xff_trusted_hops(1)
        .start();
    let tokens = tokens();
    let mut observed = BTreeMap::new();
    let mut ruled = BTreeSet::new();
    let mut report = String::new();
    let mut requests = 0;
    for (i, (set, files)) in SETS.iter().enumerate() {
        if i > 0 {
            let before = filter.ecds_counts();
            filter.push_filter(&configs[i], &wasm);
            assert!(filter.wait_ecds(before), "{set}: refused over ECDS; log tail:\n{}", filter.log_tail());
            // A worker takes the new configuration after the main thread accepted it: until
            // the second provider is asked for /opa/x, the previous one is still running.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let probe =
                Case { id: String::new(), cert: None, source: ip([127, 0, 0, 1]), req: RawRequest::get("/opa/x") };
            while observe(&filter, &ca, &probe, "filter").get("auth.providers").map(String::as_str) != Some("opa") {
                assert!(std::time::Instant::now() < deadline, "{set}: never took effect");
            }
        }
        let istio = start_istio(&ca, files, Some(&filter));
        // A corpus per set: its `seq:` tokens are new to the shared auth service.
        let (ours_corpus, theirs_corpus) =
            (corpus(&format!("filter{i}"), &tokens), corpus(&format!("istio{i}"), &tokens));
        let mut asked = BTreeMap::<String, usize>::new();
        requests = ours_corpus.len();
        for (ours_case, theirs_case) in ours_corpus.iter().zip(&theirs_corpus) {
            let ours = observe(&filter, &ca, ours_case, "filter");
            let theirs = observe(&istio, &ca, theirs_case, "istio");
            // Measured with istiod's chained ext_authz filters: each allow's client headers
            // reach the client, the later provider's first (the filter nearer the router
            // encodes first), and the earlier's stay on the later provider's denial.
            let cookies = ours.get("client.header.set-cookie").map(String::as_str);
            if i == 1 && ours_case.id == "GET /api/admin/users as -: both allow with client headers" {
                assert_eq!(cookies, Some("second=2 | first=1"), "{set}: {}", ours_case.id);
            }
            if i == 1 && ours_case.id == "GET /api/admin/users as -: second denies after client headers" {
                let status = ours.get("client.status").map(String::as_str);
                assert_eq!((status, cookies), (Some("401"), Some("first=1")), "{set}: {}", ours_case.id);
            }
            *asked.entry(theirs.get("auth.providers").cloned().unwrap_or_default()).or_default() += 1;
            for (aspect, (a, b)) in differential_record::differences(&ours, &theirs, &GATES) {
                if trace_context(&aspect, &b) {
                    ruled.insert("trace-context".to_owned());
                    continue;
                }
                let id = format!("{set}: {}", ours_case.id);
                report.push_str(&format!("{id}\t{aspect}\n    filter: {a}\n    istio:  {b}\n"));
                observed.insert((id, aspect), (a, b));
            }
        }
        // The corpus reaches each provider of the set, both in order, and leaves requests
        // unchecked: the comparison has every outcome to compare.
        let expected: &[&str] =
            if i == 0 { &["-", "authz-http"] } else { &["-", "authz-http", "authz-http,opa", "opa"] };
        let seen: Vec<&str> = asked.keys().map(String::as_str).collect();
        assert_eq!(seen, expected, "{set}: the providers Istio's rendering asked ({asked:?})");
        assert!(asked.values().all(|n| *n >= 10), "{set}: too few requests for an outcome: {asked:?}");
        eprintln!("{set}: providers asked per request: {asked:?}");
    }
    eprintln!(
        "{TSV}: {} policy sets x {} requests per side in {:.1} s, {} differences:\n{report}",
        SETS.len(),
        requests,
        started.elapsed().as_secs_f64(),
        observed.len()
    );
    let known = known_differences::load(TSV);
    if std::env::var_os("NEBULA_CUSTOM_DIFF_WRITE").is_some() {
        known_differences::write(TSV, TSV_HEADER, &observed, &known);
    }
    let (unlisted, stale) = known_differences::mismatches(&observed, &known);
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences from Istio not listed in {TSV}:\n{}\n\nlisted but not observed:\n{}\n\nall differences:\n{report}",
        unlisted.join("\n"),
        stale.join("\n"),
    );
    let documented = known_differences::documented_categories(DOCS, DOCS_SECTION);
    let mine: BTreeSet<String> = known.values().cloned().chain(ruled).collect();
    assert_eq!(mine, documented, "{DOCS} {DOCS_SECTION:?} must list exactly the categories of {TSV}");
}

/// Why `make convert` refuses providers named `x` and `x-ns`: istiod enables each
/// provider's ext_authz by a prefix of the matching rule's name, and `x`'s rule names
/// (`istio-ext-authz-x-ns[...]`) start with `x-ns`'s prefix, so a request only `x`'s rule
/// selects is checked by both (measured here); `opa` and `opa-nsx` stay apart.
#[test]
fn istio_runs_x_ns_on_the_rules_of_x() {
    let dir = TempDir::new("nebula-custom-diff-prefix");
    let mesh = std::fs::read_to_string(repo_root().join(MESH)).expect("read mesh");
    let policy = |name: &str, provider: &str, path: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  \
             namespace: prefect\nspec:\n  action: CUSTOM\n  provider:\n    name: {provider}\n  rules:\n    \
             - to:\n        - operation:\n            paths: [\"{path}\"]\n"
        )
    };
    for (second, expected) in [("authz-http-ns", "authz-http,authz-http-ns"), ("authz-http-nsx", "authz-http")] {
        let mesh_path = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_path, mesh.replace("name: opa", &format!("name: {second}"))).expect("write mesh");
        let policies = dir.path().join("policies.yaml");
        let text = format!("{}---\n{}", policy("a", "authz-http", "/a/*"), policy("b", second, "/b/*"));
        std::fs::write(&policies, text).expect("write policies");
        let env = Env::builder()
            .ext_authz(&mesh_path, &policies)
            .auth_cluster_name(ISTIO_CLUSTER)
            .auth_alias(OPA_CLUSTER)
            .istio_sidecar()
            .start();
        let asked = |path: &str| {
            let before = env.auth.count();
            let resp = env.send(&RawRequest::get(path).bearer("allow:alice"));
            assert_eq!(resp.status, 200, "{second}: {path}");
            let calls = env.auth.requests_since(before);
            calls.iter().map(|c| c.path.split('/').nth(1).unwrap_or("?").to_owned()).collect::<Vec<_>>().join(",")
        };
        // The second provider's path prefix is /opa whatever its name.
        let named = |list: String| list.replace("opa", second);
        assert_eq!(named(asked("/a/x")), expected, "{second}: a request only authz-http's rule selects");
        assert_eq!(named(asked("/b/x")), second, "{second}: its own rule");
    }
}
