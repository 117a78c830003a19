//! The filter's decision in Envoy's access log: a real file access log with the format
//! string docs/operations.md documents, read back line by line. One Envoy, one request
//! (or pair) per outcome, each on its own path so its line is found by the path; then
//! the same requests in the latency histograms of `/stats/prometheus`, by how each was
//! decided.

use std::collections::BTreeMap;
use std::thread;

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{prometheus_value, repo_root, Env};

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
    let config = serde_json::json!({
        "auth": {"cluster": "auth", "timeout_ms": 300, "retry_on_reset": false},
        "cache": {"default_ttl": 60},
        "public_paths": ["/api/health", {"path": "/internal", "source_ranges": ["10.0.0.0/8"], "otherwise": "deny"}],
        "jwt": {"providers": [{"issuer": "https://idp", "secret": SECRET, "algorithms": ["HS256"],
            "claims_to_headers": {"sub": "x-nebula-actor-id"}}]},
    })
    .to_string();
    let env = Env::builder().plugin_config(&config).access_log(&documented_format()).start();
    let get = |path: &str, script: &str| env.send(&RawRequest::get(path).bearer(script));

    let cases: &[(&str, &str, u16, &str)] = &[
        ("/api/health", "deny", 200, "public public - - -"),
        ("/api/callout", "allow:alice", 200, "allowed callout 200 - alice"),
        ("/api/denied", "deny", 401, "denied callout 401 - -"),
        ("/api/error", "status:500", 403, "failed callout 500 auth_server_error -"),
        ("/api/timeout", "slow:1000:allow:late", 403, "failed callout 504 timeout -"),
        ("/internal", "allow:alice", 403, "source_denied access - - -"),
    ];
    for (path, script, status, _) in cases {
        let resp = get(path, script);
        assert_eq!(resp.status, *status, "{path}: {resp:?}");
    }
    let jwt_valid =
        env.send(&RawRequest::get("/api/jwt").header("authorization", format!("Bearer {}", token("dave", false))));
    assert_eq!(jwt_valid.status, 200, "{jwt_valid:?}");
    let jwt_expired = env
        .send(&RawRequest::get("/api/jwt-expired").header("authorization", format!("Bearer {}", token("dave", true))));
    assert_eq!(jwt_expired.status, 401, "{jwt_expired:?}");
    // The same request twice: the second is a cache hit.
    for _ in 0..2 {
        let resp = get("/api/cached", "allow:carol");
        assert_eq!(resp.status, 200, "{resp:?}\n{}\n{}", env.access_log().join("\n"), env.log_tail());
    }
    // Two identical requests at once: one callout, the other waits for its answer.
    let port = env.port;
    let both: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || RawRequest::get("/api/coalesced").bearer("slow:150:allow:bob").send(port)))
        .collect();
    for request in both {
        assert_eq!(request.join().unwrap().status, 200);
    }

    for (path, _, status, want) in cases {
        let lines = lines_for(&env, path, 1);
        let (got, ms) = summary(&lines[0]);
        assert_eq!(&got, want, "{path}: {}", lines[0]);
        assert!(lines[0].contains(&format!("\" {status} ")), "{path}: the response code: {}", lines[0]);
        // The timeout's line shows the 300 ms it waited in the filter; a request decided
        // in the callback of its headers waited for nothing.
        match *path {
            "/api/timeout" => assert!((280.0..2000.0).contains(&ms), "{path}: ms={ms}: {}", lines[0]),
            "/api/health" | "/internal" => assert_eq!(ms, 0.0, "{path}: {}", lines[0]),
            _ => {}
        }
    }
    assert_eq!(summary(&lines_for(&env, "/api/jwt", 1)[0]).0, "allowed jwt - - dave");
    assert_eq!(summary(&lines_for(&env, "/api/jwt-expired", 1)[0]).0, "denied jwt - expired -");
    let mut cached: Vec<String> = lines_for(&env, "/api/cached", 2).iter().map(|l| summary(l).0).collect();
    cached.sort();
    assert_eq!(cached, ["allowed cache - - carol", "allowed callout 200 - carol"]);
    let coalesced: Vec<(String, f64)> = lines_for(&env, "/api/coalesced", 2).iter().map(|l| summary(l)).collect();
    let mut hows: Vec<&str> = coalesced.iter().map(|(s, _)| s.as_str()).collect();
    hows.sort();
    assert_eq!(hows, ["allowed callout 200 - bob", "allowed coalesced 200 - bob"]);
    // Both waited for the one slow answer.
    assert!(coalesced.iter().all(|(_, ms)| *ms >= 100.0), "{coalesced:?}");
    assert_eq!(env.auth.count(), 6, "callouts: callout, denied, error, timeout, cached, coalesced");

    // Each request that waited has one sample of its wait, by what it waited for, and
    // each callout one of its round trip, in microseconds; a request decided at once
    // (public, cache hit, JWT, access rule) has none. Envoy merges the workers'
    // histograms at its stats flush (every 5 s): read until they are all there.
    let expected = [
        ("nebula_authz_wait_time_us_callout", 6),
        ("nebula_authz_wait_time_us_coalesced", 1),
        ("nebula_authz_wait_time_us_jwks", 0),
        ("nebula_authz_wait_time_us_other", 0),
        ("nebula_authz_callout_time_us", 6),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    let stats = loop {
        let stats = env.prometheus();
        let counts: Vec<Option<u64>> =
            expected.iter().map(|(name, _)| prometheus_value(&stats, &format!("{name}_count"))).collect();
        if expected.iter().zip(&counts).all(|((_, n), got)| *got == Some(*n)) {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "histogram counts {counts:?}, expected {expected:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
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
    // The failures by reason, one each.
    for reason in ["auth_server_error", "timeout"] {
        assert_eq!(prometheus_value(&stats, &format!("nebula_authz_failed_{reason}")), Some(1), "{reason}");
    }
}
