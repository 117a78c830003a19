//! The filter's decision in Envoy's access log: a real file access log with the format
//! string docs/operations.md documents, read back line by line. One request (or pair)
//! per outcome, each on its own path so its line is found by the path; then the same
//! requests in the latency histograms of `/stats/prometheus`, by what each waited for.
//! Two Envoys: one for every way of deciding but the two that need their own listener or
//! mode: a `principals` rule (a downstream mTLS listener) and `policies` (with them a JWT
//! only identifies the client, so the first Envoy's local JWT lines could not be).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::tls::TestCa;
use nebula_authz_tests::{closed_port, prometheus_value, repo_root, Env, MockJwks};

/// The HS256 secret of the local JWT provider.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The format string docs/operations.md documents (its line starting `[%START_TIME%]`).
fn documented_format() -> String {
    let page = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("docs/operations.md");
    let line = page.lines().find(|l| l.starts_with("[%START_TIME%]")).expect("the format string in docs/operations.md");
    assert!(line.contains("%FILTER_STATE(wasm.nebula_authz:PLAIN)%"), "{line}");
    line.to_string()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token of the provider for `sub`, expired or not.
fn token(sub: &str, expired: bool) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let exp = if expired { now - 3600 } else { now + 3600 };
    let payload = serde_json::json!({"iss": "https://idp", "sub": sub, "iat": now - 10, "exp": exp});
    let signed = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(payload.to_string().as_bytes()));
    format!("{signed}.{}", b64(&hmac_sha256::HMAC::mac(signed.as_bytes(), SECRET.as_bytes())))
}

/// An ES256 token of `issuer` for `sub`, signed by a key of its own named `kid`, and the
/// public JWKS of another key (`kid` `es-1`): a key the token's `kid` is not in.
fn es256_token_and_other_jwks(issuer: &str, sub: &str, kid: &str) -> (String, String) {
    use jwt_simple::prelude::*;
    let key = ES256KeyPair::generate().with_key_id(kid);
    let claims = Claims::create(Duration::from_mins(10)).with_issuer(issuer).with_subject(sub);
    let token = key.sign(claims).expect("sign");
    let other = ES256KeyPair::generate();
    let mut jwk: serde_json::Value = serde_json::from_str(&other.public_key().to_jwk()).expect("a JWK");
    jwk["kid"] = "es-1".into();
    (token, serde_json::json!({"keys": [jwk]}).to_string())
}

/// The access log's lines for `path`, once there are `n` of them (bounded wait: Envoy
/// writes a line when the stream is done and flushes the file every 50 ms here).
fn lines_for(env: &Env, path: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let marker = format!(" {path} HTTP/1.1\"");
        let lines: Vec<String> = env.access_log().into_iter().filter(|l| l.contains(&marker)).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(lines.len(), n, "access log lines for {path}: {:?}", env.access_log());
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `authz="..."` value of a line, field by field.
fn decision(line: &str) -> BTreeMap<String, String> {
    let value = line.split_once("authz=\"").and_then(|(_, rest)| rest.strip_suffix('"')).unwrap_or_else(|| {
        panic!("no authz=\"...\" at the end of {line:?}");
    });
    let fields: BTreeMap<String, String> = value
        .split(' ')
        .map(|field| {
            let (k, v) = field.split_once('=').unwrap_or_else(|| panic!("not key=value: {field:?} in {line:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(keys, ["actor", "how", "ms", "outcome", "reason", "status"], "{line}");
    fields
}

/// `outcome how status reason actor` of a line, and its `ms` as a number.
fn summary(line: &str) -> (String, f64) {
    let d = decision(line);
    let ms = d["ms"].parse().unwrap_or_else(|_| panic!("ms is not a number: {line}"));
    (format!("{} {} {} {} {}", d["outcome"], d["how"], d["status"], d["reason"], d["actor"]), ms)
}

#[test]
fn each_outcome_prints_its_decision_in_the_access_log() {
    // Remote JWKS: one endpoint up (without the key the first token names), one down.
    let (kid_token, jwks_document) = es256_token_and_other_jwks("https://keys.idp", "frank", "es-2");
    let (down_token, _) = es256_token_and_other_jwks("https://down.idp", "grace", "es-1");
    let jwks = MockJwks::start(&jwks_document);
    // A refetch for an unknown kid (or no keys) at once, so that each of the two waits.
    let remote = |cluster: &str| {
        serde_json::json!({"cluster": cluster, "path": "/jwks.json", "timeout_ms": 2000,
            "min_refresh_interval_ms": 0})
    };
    let config = serde_json::json!({
        "auth": {"cluster": "auth", "timeout_ms": 300, "retry_on_reset": false,
            "forward_body": true, "max_body_size": 16},
        "cache": {"default_ttl": 60, "stale_if_error": 60},
        "public_paths": ["/api/health", {"path": "/internal", "source_ranges": ["10.0.0.0/8"], "otherwise": "deny"}],
        "jwt": {"providers": [
            {"issuer": "https://idp", "secret": SECRET, "algorithms": ["HS256"],
             "claims_to_headers": {"sub": "x-nebula-actor-id"}},
            {"issuer": "https://keys.idp", "remote_jwks": remote("jwks")},
            {"issuer": "https://down.idp", "remote_jwks": remote("jwks-down")},
        ]},
    })
    .to_string();
    let env = Env::builder()
        .plugin_config(&config)
        .access_log(&documented_format())
        .cluster("jwks", jwks.addr())
        .cluster("jwks-down", SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port())))
        .start();
    let get = |path: &str, script: &str| env.send(&RawRequest::get(path).bearer(script));

    // An allow cached for 1 s; past it the auth service fails (500) and `stale_if_error`
    // serves the expired allow: that request is sent from the histogram poll below, once due.
    let stale_script = "seq:cc:max-age=1:allow:sam|status:500";
    assert_eq!(get("/api/stale", stale_script).status, 200);
    let stale_due = Instant::now() + Duration::from_millis(1100);

    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("/api/health", "deny", 200, "public public - - -"),
        ("/api/callout", "allow:alice", 200, "allowed callout 200 - alice"),
        ("/api/denied", "deny", 401, "denied callout 401 - -"),
        ("/api/error", "status:500", 403, "failed callout 500 auth_server_error -"),
        ("/api/timeout", "slow:1000:allow:late", 403, "failed callout 504 timeout -"),
        ("/internal", "allow:alice", 403, "source_denied access - - -"),
        // Both wait for a JWKS fetch: the key is still unknown after it; no keys at all.
        ("/api/jwks-kid", &kid_token, 401, "denied jwt - unknown_kid -"),
        ("/api/jwks-down", &down_token, 403, "failed jwt - no_jwks_keys -"),
    ];
    for (path, script, status, _) in &cases {
        let resp = get(path, script);
        assert_eq!(resp.status, *status, "{path}: {resp:?}");
    }
    let jwt_valid =
        env.send(&RawRequest::get("/api/jwt").header("authorization", format!("Bearer {}", token("dave", false))));
    assert_eq!(jwt_valid.status, 200, "{jwt_valid:?}");
    let jwt_expired = env
        .send(&RawRequest::get("/api/jwt-expired").header("authorization", format!("Bearer {}", token("dave", true))));
    assert_eq!(jwt_expired.status, 401, "{jwt_expired:?}");
    // The same request twice: the second is a cache hit; a denial is cached too (negative_ttl).
    for _ in 0..2 {
        let resp = get("/api/cached", "allow:carol");
        assert_eq!(resp.status, 200, "{resp:?}\n{}\n{}", env.access_log().join("\n"), env.log_tail());
        assert_eq!(get("/api/denied-cached", "deny").status, 401);
    }
    // A body the callout carries: the request waits for it, then for its callout. A body
    // over `max_body_size` is answered when it comes: 401, no callout.
    let body = env.send(&RawRequest::post("/api/body", b"12345678".to_vec()).bearer("allow:erin"));
    assert_eq!(body.status, 200, "{body:?}");
    let too_large = env.send(&RawRequest::post("/api/body-too-large", vec![b'x'; 64]).bearer("allow:erin"));
    assert_eq!(too_large.status, 401, "{too_large:?}");
    // Two identical requests at once: one callout, the other waits for its answer.
    let port = env.port;
    let both: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || RawRequest::get("/api/coalesced").bearer("slow:150:allow:bob").send(port)))
        .collect();
    for request in both {
        assert_eq!(request.join().unwrap().status, 200);
    }

    for (path, _, status, want) in &cases {
        let lines = lines_for(&env, path, 1);
        let (got, ms) = summary(&lines[0]);
        assert_eq!(&got, want, "{path}: {}", lines[0]);
        assert!(lines[0].contains(&format!("\" {status} ")), "{path}: the response code: {}", lines[0]);
        // The timeout's line shows the 300 ms it waited in the filter; a request decided
        // in the callback of its headers waited for nothing; one that waited for a JWKS
        // fetch, for its round trip.
        match *path {
            "/api/timeout" => assert!((280.0..2000.0).contains(&ms), "{path}: ms={ms}: {}", lines[0]),
            "/api/health" | "/internal" => assert_eq!(ms, 0.0, "{path}: {}", lines[0]),
            "/api/jwks-kid" | "/api/jwks-down" => assert!(ms > 0.0, "{path}: {}", lines[0]),
            _ => {}
        }
    }
    assert_eq!(summary(&lines_for(&env, "/api/jwt", 1)[0]).0, "allowed jwt - - dave");
    assert_eq!(summary(&lines_for(&env, "/api/jwt-expired", 1)[0]).0, "denied jwt - expired -");
    assert_eq!(summary(&lines_for(&env, "/api/body", 1)[0]).0, "allowed callout 200 - erin");
    let too_large = &lines_for(&env, "/api/body-too-large", 1)[0];
    assert_eq!(summary(too_large).0, "denied filter - request_body_too_large -", "{too_large}");
    assert!(too_large.contains("\" 401 "), "{too_large}");
    let sorted = |path: &str| {
        let mut lines: Vec<String> = lines_for(&env, path, 2).iter().map(|l| summary(l).0).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted("/api/cached"), ["allowed cache - - carol", "allowed callout 200 - carol"]);
    assert_eq!(sorted("/api/denied-cached"), ["denied cache 401 - -", "denied callout 401 - -"]);
    let coalesced: Vec<(String, f64)> = lines_for(&env, "/api/coalesced", 2).iter().map(|l| summary(l)).collect();
    let mut hows: Vec<&str> = coalesced.iter().map(|(s, _)| s.as_str()).collect();
    hows.sort();
    assert_eq!(hows, ["allowed callout 200 - bob", "allowed coalesced 200 - bob"]);
    // Both waited for the one slow answer.
    assert!(coalesced.iter().all(|(_, ms)| *ms >= 100.0), "{coalesced:?}");

    // Each request that waited has one sample of its wait, by what it waited for, and
    // each callout one of its round trip, in microseconds; a request decided at once
    // (public, cache hit, JWT with its keys at hand, access rule) has none. The stale
    // allow waited for its failed callout; the body that came over its limit waited for
    // the body only (`other`); the one the callout carried, for both (`callout`).
    // Envoy merges the workers' histograms at its stats flush (every 5 s): read until
    // they are all there (the counters: the filter hands them over every second).
    let expected = [
        ("nebula_authz_wait_time_us_callout_count", 10),
        ("nebula_authz_wait_time_us_coalesced_count", 1),
        ("nebula_authz_wait_time_us_jwks_count", 2),
        ("nebula_authz_wait_time_us_other_count", 1),
        ("nebula_authz_callout_time_us_count", 10),
        ("nebula_authz_cache_stale_served", 1),
        ("nebula_authz_failed_no_jwks_keys", 1),
    ];
    let mut stale_sent = false;
    let deadline = Instant::now() + Duration::from_secs(12);
    let stats = loop {
        if !stale_sent && Instant::now() >= stale_due {
            let resp = get("/api/stale", stale_script);
            assert_eq!(resp.status, 200, "the expired allow, served stale: {resp:?}");
            stale_sent = true;
        }
        let stats = env.prometheus();
        let counts: Vec<Option<u64>> = expected.iter().map(|(name, _)| prometheus_value(&stats, name)).collect();
        if stale_sent && expected.iter().zip(&counts).all(|((_, n), got)| *got == Some(*n)) {
            break stats;
        }
        assert!(Instant::now() < deadline, "counts {counts:?}, expected {expected:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sorted("/api/stale"), ["allowed callout 200 - sam", "allowed stale 500 auth_server_error sam"]);
    assert_eq!(
        env.auth.count(),
        10,
        "callouts: callout, denied, error, timeout, cached, denied-cached, body, coalesced, stale twice"
    );
    let sum = |name: &str| -> f64 {
        let line = stats.lines().find(|l| l.starts_with(&format!("{name}_sum"))).expect(name);
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    // The timeout alone waited 300 ms = 300 000 µs; the coalesced request about 150 ms.
    assert!(sum("nebula_authz_wait_time_us_callout") >= 290_000.0, "{stats}");
    assert!(sum("nebula_authz_wait_time_us_coalesced") >= 100_000.0, "{stats}");
    assert!(sum("nebula_authz_callout_time_us") >= 290_000.0, "{stats}");
    // Envoy's default buckets, in microseconds: 0.5 µs up to 3.6 s.
    assert!(stats.contains("nebula_authz_wait_time_us_callout_bucket{le=\"0.5\"}"), "{stats}");
    assert!(stats.contains("nebula_authz_wait_time_us_callout_bucket{le=\"3600000\"}"), "{stats}");
    // The failures by reason, one each (no_jwks_keys above); the stale allow's 500 is none.
    for reason in ["auth_server_error", "timeout"] {
        assert_eq!(prometheus_value(&stats, &format!("nebula_authz_failed_{reason}")), Some(1), "{reason}");
    }
}

/// The two ways of deciding the first Envoy cannot hold: a `principals` rule, over a
/// downstream mTLS listener (client certificates optional, verified when sent), and a
/// request no rule of `policies` selects. Each is decided in the callback of its headers:
/// `ms=0.000`.
#[test]
fn a_principal_rule_and_an_unselected_request_print_their_decision() {
    const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";
    const WEBHOOK: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";
    let ca = TestCa::new();
    ca.client("admin", OPS);
    ca.client("webhook", WEBHOOK);
    let config = serde_json::json!({
        "auth": {"cluster": "auth"},
        "public_paths": [{"path": "/admin", "principals": ["spiffe://cluster.local/ns/ops/*"], "otherwise": "deny"}],
        "policies": [{"name": "prefect/ext-authz", "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}],
    })
    .to_string();
    let env =
        Env::builder().plugin_config(&config).downstream_mtls(ca.dir(), false).access_log(&documented_format()).start();
    let send = |client: Option<&str>, request: RawRequest| {
        ca.raw_client(client)
            .send_from(IpAddr::V4(Ipv4Addr::LOCALHOST), env.port, &request.to_bytes())
            .unwrap_or_else(|e| panic!("{client:?}: {e}\n{}", env.log_tail()))
    };
    let cases = [
        ("/admin/users", Some("webhook"), "", 403, "principal_denied access - - -"),
        ("/admin/health", Some("admin"), "", 200, "public public - - -"),
        ("/other", None, "allow:alice", 200, "public unselected - - -"),
        ("/api/flows", Some("webhook"), "allow:alice", 200, "allowed callout 200 - alice"),
    ];
    for (path, client, script, status, _) in cases {
        let resp = send(client, RawRequest::get(path).bearer(script));
        assert_eq!(resp.status, status, "{path} as {client:?}: {resp:?}");
    }
    for (path, client, _, status, want) in cases {
        let line = &lines_for(&env, path, 1)[0];
        let (got, ms) = summary(line);
        assert_eq!(got, want, "{path} as {client:?}: {line}");
        assert!(line.contains(&format!("\" {status} ")), "{path}: the response code: {line}");
        if path != "/api/flows" {
            assert_eq!(ms, 0.0, "{path}: {line}");
        }
    }
    assert_eq!(env.auth.count(), 1, "only the selected request is checked");
}
