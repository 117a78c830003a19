//! 9. The shared decision cache (`cache` section): what is reused, for how long, by which
//!    worker, and what is never reused. The mock auth service counts the callouts;
//!    lifetimes are 1 s so that expiry is observable without long sleeps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nebula_authz_tests::client::{self, RawRequest, Response};
use nebula_authz_tests::{closed_port, prometheus_value as metric, Env, FILTER_ERROR_BODY};

/// Just past a 1-second lifetime.
const PAST_ONE_SECOND: Duration = Duration::from_millis(1_200);

fn config(cache: &str) -> String {
    format!(r#"{{"auth": {{"cluster": "auth", "authority": "auth:4300"}}, "cache": {cache}}}"#)
}

/// Callouts the auth service received with exactly `Bearer <token>`.
fn calls(env: &Env, token: &str) -> usize {
    let want = format!("Bearer {token}");
    env.auth.requests().iter().filter(|r| r.header("authorization").as_deref() == Some(want.as_str())).count()
}

/// `/stats/prometheus` once every `(name, value)` shows: the filter counts in worker memory
/// and hands the counts to Envoy every second (flow/counters.rs FLUSH_PERIOD), so this
/// polls (bounded: 10 s) and returns the last text either way; the caller asserts on it.
fn flushed(env: &Env, expected: &[(&str, u64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = env.prometheus();
        if expected.iter().all(|(name, value)| metric(&text, name) == Some(*value)) || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_decision_is_reused_within_its_lifetime_and_not_after() {
    let env = Env::start(&config(r#"{"default_ttl": 1}"#));
    let token = "allow:alice";
    env.assert_allowed_as("first request", &env.get_as("/api/flows", token), "alice");
    assert_eq!(calls(&env, token), 1);
    // Hits inject the cached identity headers, exactly as the auth service sent them.
    env.assert_allowed_as("cached", &env.get_as("/api/flows", token), "alice");
    env.assert_allowed_as("cached again", &env.get_as("/api/flows", token), "alice");
    assert_eq!(calls(&env, token), 1, "within the lifetime: no callout");
    // forward_auth (on by default) shows the auth service the method and URI: they are keyed.
    env.assert_allowed_as("other URI", &env.get_as("/api/flows/2", token), "alice");
    env.assert_allowed_as("other method", &env.post_as("/api/flows", token, b"{}"), "alice");
    assert_eq!(calls(&env, token), 3, "another method or URI is another question");
    thread::sleep(PAST_ONE_SECOND);
    env.assert_allowed_as("after expiry", &env.get_as("/api/flows", token), "alice");
    assert_eq!(calls(&env, token), 4, "after the lifetime: a new callout");

    // Spoofed identity headers are still stripped on a hit.
    let resp = env.send(&RawRequest::get("/api/flows").bearer(token).header("x-nebula-actor-id", "evil"));
    env.assert_allowed_as("cached, with a spoofed header", &resp, "alice");
}

#[test]
fn without_forward_auth_a_decision_covers_every_path_and_method() {
    let env = Env::start(
        r#"{"auth": {"cluster": "auth", "authority": "auth:4300", "forward_auth": false}, "cache": {"default_ttl": 60}}"#,
    );
    let token = "allow:paula";
    env.assert_allowed_as("GET", &env.get_as("/api/flows", token), "paula");
    env.assert_allowed_as("other URI", &env.get_as("/api/flows/2?x=1", token), "paula");
    env.assert_allowed_as("POST", &env.post_as("/api/deployments", token, b"{}"), "paula");
    assert_eq!(calls(&env, token), 1, "the auth service sees only the credential: one question");
}

#[test]
fn cache_control_decides_what_is_stored() {
    // default_ttl 0: only what the auth service says may be cached is cached.
    let env = Env::start(&config(r#"{"default_ttl": 0, "negative_ttl": 0}"#));
    let told = "cc:max-age=1:allow:bob";
    let silent = "allow:silent";
    let no_store = "cc:no-store, max-age=60:allow:carol";
    let no_cache = "cc:no-cache:allow:dan";
    for _ in 0..3 {
        for (token, actor) in [(told, "bob"), (silent, "silent"), (no_store, "carol"), (no_cache, "dan")] {
            env.assert_allowed_as(token, &env.get_as("/api/flows", token), actor);
        }
    }
    assert_eq!(calls(&env, told), 1, "max-age=1: stored");
    assert_eq!(calls(&env, silent), 3, "default_ttl 0: not stored without a max-age");
    assert_eq!(calls(&env, no_store), 3, "no-store: never stored");
    assert_eq!(calls(&env, no_cache), 3, "no-cache: never stored");
    thread::sleep(PAST_ONE_SECOND);
    env.assert_allowed_as("after max-age", &env.get_as("/api/flows", told), "bob");
    assert_eq!(calls(&env, told), 2);
    // negative_ttl 0: denials are not stored.
    for _ in 0..2 {
        env.assert_denied("deny", &env.get_as("/api/flows", "deny"), env.upstream.count());
    }
    assert_eq!(calls(&env, "deny"), 2);
}

#[test]
fn errors_are_never_cached() {
    let env = Env::start(&config(r#"{"default_ttl": 60, "negative_ttl": 60}"#));
    // `close` is never answered: each request tries four times (auth.retry_on_reset:
    // Envoy's retry, the filter's, Envoy's retry of that; tests/tests/callout_retry.rs).
    for (token, attempts) in
        [("status:503", 1), ("cc:max-age=60:status:500", 1), ("close", 4), ("status:404", 1), ("redirect", 1)]
    {
        for _ in 0..2 {
            let before = env.upstream.count();
            let resp = env.get_as("/api/flows", token);
            env.check(resp.status != 200 && env.upstream.count() == before, &format!("{token}: not allowed"), &resp);
        }
        assert_eq!(calls(&env, token), 2 * attempts, "{token}: asked again every time");
    }
}

#[test]
fn denials_are_cached_for_negative_ttl() {
    let env = Env::start(&config(r#"{"negative_ttl": 1}"#));
    env.assert_denied("first deny", &env.get_as("/api/flows", "deny"), env.upstream.count());
    // The cached denial is the auth service's reply: status, body, relayed headers.
    env.assert_denied("cached deny", &env.get_as("/api/flows", "deny"), env.upstream.count());
    assert_eq!(calls(&env, "deny"), 1);
    thread::sleep(PAST_ONE_SECOND);
    env.assert_denied("deny after negative_ttl", &env.get_as("/api/flows", "deny"), env.upstream.count());
    assert_eq!(calls(&env, "deny"), 2);
    // A 302 (with set-cookie) is never cached.
    for _ in 0..2 {
        assert_eq!(env.get_as("/api/flows", "redirect").status, 302);
    }
    assert_eq!(calls(&env, "redirect"), 2);
}

#[test]
fn a_bearer_jwt_is_never_cached_past_its_exp() {
    use base64::Engine;
    // A JWT is no mock script: the mock denies it, and the denial is cached for up to
    // negative_ttl (60 s), but never past the token's exp (in 1 to 2 s).
    let env = Env::start(&config(r#"{"negative_ttl": 60, "max_ttl": 60}"#));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let exp = now + 2;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(&format!(r#"{{"sub":"a","exp":{exp}}}"#)));
    env.assert_denied("first", &env.get_as("/api/flows", &token), 0);
    env.assert_denied("cached", &env.get_as("/api/flows", &token), 0);
    assert_eq!(calls(&env, &token), 1);
    let until_exp = Duration::from_secs(exp)
        .saturating_sub(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock"));
    thread::sleep(until_exp + Duration::from_millis(200));
    env.assert_denied("after exp", &env.get_as("/api/flows", &token), 0);
    assert_eq!(calls(&env, &token), 2, "the entry ended at the token's exp, not after negative_ttl");
}

#[test]
fn tokens_differing_in_one_byte_never_share_a_decision() {
    // One slot for everything: every lookup collides, and the stored key must tell.
    let env = Env::start(&config(r#"{"entries": 1, "default_ttl": 60}"#));
    let (a, b) = ("allow:alice", "allow:alicf");
    for round in 0..3 {
        for (token, actor) in [(a, "alice"), (b, "alicf")] {
            env.assert_allowed_as(&format!("round {round}, {token}"), &env.get_as("/api/flows", token), actor);
        }
    }
    assert_eq!((calls(&env, a), calls(&env, b)), (3, 3), "each overwrites the other's single slot");
    // With room for both, each is asked once.
    let env = Env::start(&config(r#"{"entries": 1000, "default_ttl": 60}"#));
    for _ in 0..3 {
        for (token, actor) in [(a, "alice"), (b, "alicf")] {
            env.assert_allowed_as(token, &env.get_as("/api/flows", token), actor);
        }
    }
    assert_eq!((calls(&env, a), calls(&env, b)), (1, 1));
    // Other inputs the auth service sees are keyed too: a different origin is another callout.
    let resp = env.send(&RawRequest::get("/api/flows").bearer(a).header("origin", "https://x.example"));
    env.assert_allowed_as("same token, other origin", &resp, "alice");
    assert_eq!(calls(&env, a), 2);
}

#[test]
fn a_decision_made_on_one_worker_is_a_hit_on_the_other() {
    let env = Env::builder().concurrency(2).plugin_config(&config(r#"{"default_ttl": 60}"#)).start();
    let token = "allow:shared";
    env.assert_allowed_as("first", &env.get_as("/api/flows", token), "shared");
    // Many connections at once: the kernel spreads them over both workers' listeners.
    const CONNECTIONS: usize = 24;
    for resp in concurrent_gets(env.port, token, CONNECTIONS) {
        env.check(
            resp.status == 200 && resp.json()["headers"]["x-nebula-actor-id"] == serde_json::json!(["shared"]),
            "cached allow",
            &resp,
        );
    }
    assert_eq!(calls(&env, token), 1, "one callout for {} requests on two workers", CONNECTIONS + 1);
    assert_both_workers_served(&env);
}

/// Both workers took connections (Envoy counts them per worker).
fn assert_both_workers_served(env: &Env) {
    let stats = RawRequest::get("/stats?filter=worker_.\\.downstream_cx_total").send(env.admin_port).text();
    let per_worker: Vec<u64> = stats
        .lines()
        .filter(|l| l.starts_with("listener.") && l.contains(".worker_"))
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse().ok())
        .collect();
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|n| *n > 0),
        "both workers must have served connections: {stats}"
    );
}

#[test]
fn concurrent_identical_requests_share_one_callout() {
    let env = Env::start(&config(r#"{"default_ttl": 60}"#));
    const N: usize = 8;
    // no-store: nothing is cached, so only coalescing can save callouts.
    let run = |token: &'static str| concurrent_gets(env.port, token, N);
    let token = "cc:no-store:slow:1500:allow:dave";
    for resp in run(token) {
        env.check(resp.status == 200, "coalesced allow", &resp);
        env.check(resp.json()["headers"]["x-nebula-actor-id"] == serde_json::json!(["dave"]), "actor", &resp);
    }
    assert_eq!(calls(&env, token), 1, "{N} concurrent identical requests, one callout");
    assert_eq!(env.upstream.count(), N, "every request went upstream once");

    // The leader's callout fails: every waiter fails closed too.
    let token = "slow:1500:status:503";
    for resp in run(token) {
        env.check(resp.status == 403 && resp.text() == FILTER_ERROR_BODY, "fail closed", &resp);
    }
    assert_eq!(calls(&env, token), 1);
    assert_eq!(env.upstream.count(), N, "no failed request went upstream");
    let text = flushed(&env, &[("nebula_authz_coalesced", 2 * (N as u64 - 1))]);
    assert_eq!(metric(&text, "nebula_authz_coalesced"), Some(2 * (N as u64 - 1)), "{text}");
}

#[test]
fn waiters_survive_the_reset_of_the_request_they_wait_for() {
    let env = Env::start(&config(r#"{"default_ttl": 60}"#));
    let token = "cc:no-store:slow:1500:allow:erin";
    // The leader: its callout is sent, then its client goes away.
    let mut leader = TcpStream::connect(("127.0.0.1", env.port)).expect("connect");
    let req = format!("GET /api/flows HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n");
    leader.write_all(req.as_bytes()).expect("write");
    thread::sleep(Duration::from_millis(300));
    let port = env.port;
    let waiters: Vec<_> =
        (0..3).map(|_| thread::spawn(move || RawRequest::get("/api/flows").bearer(token).send(port))).collect();
    thread::sleep(Duration::from_millis(300));
    drop(leader);
    for waiter in waiters {
        let resp = waiter.join().expect("client thread");
        env.check(resp.status == 200, "a waiter whose leader was reset is still answered", &resp);
        env.check(resp.json()["headers"]["x-nebula-actor-id"] == serde_json::json!(["erin"]), "actor", &resp);
    }
    assert_eq!(calls(&env, token), 2, "the leader's callout, then one resent for the three waiters");
}

#[test]
fn stale_if_error_serves_a_recently_expired_allow() {
    let env = Env::start(&config(r#"{"default_ttl": 1, "stale_if_error": 60}"#));
    // `once:`: allows the first time, answers 503 after that.
    let token = "once:allow:erin";
    env.assert_allowed_as("first", &env.get_as("/api/flows", token), "erin");
    thread::sleep(PAST_ONE_SECOND);
    env.assert_allowed_as("auth answers 503, stale allow served", &env.get_as("/api/flows", token), "erin");
    assert_eq!(calls(&env, token), 2, "the expired entry was not served without asking");
    // Nothing cached for this token: fail closed.
    let resp = env.get_as("/api/flows", "status:503");
    env.check(resp.status == 403 && !resp.proxied(), "no cached allow: fail closed", &resp);
    // A denial is never served stale.
    let text = flushed(&env, &[("nebula_authz_cache_stale_served", 1)]);
    assert_eq!(metric(&text, "nebula_authz_cache_stale_served"), Some(1), "{text}");

    // Without stale_if_error the same sequence fails closed.
    let env = Env::start(&config(r#"{"default_ttl": 1}"#));
    env.assert_allowed_as("first", &env.get_as("/api/flows", token), "erin");
    thread::sleep(PAST_ONE_SECOND);
    let resp = env.get_as("/api/flows", token);
    env.check(resp.status == 403 && resp.text() == FILTER_ERROR_BODY, "expired, auth 503, no stale_if_error", &resp);
    assert_eq!(env.upstream.count(), 1, "only the first request went upstream");
}

/// Every kind of answer that is a decision against a credential, as a mock script, with
/// the status the client gets for it: 401/403 with and without `no-store` (stored for
/// `negative_ttl` without it), a redirect, another 4xx, a 2xx not in `allow_statuses`,
/// and a 401 whose 2 MiB body fails closed (malformed, but a refusal all the same).
const DENIALS: [(&str, u16); 8] = [
    ("bigbody", 403),
    ("cc:no-store:deny", 401),
    ("deny", 401),
    ("cc:no-store:status:403", 403),
    ("status:403", 403),
    ("redirect", 302),
    ("status:404", 404),
    ("status:202", 202),
];

/// Allowed (as `rev`), then `denial` (the credential was revoked), then 500 for ever.
fn revoked_after_allow(denial: &str) -> String {
    format!("seq:allow:rev|{denial}|status:500")
}

const REVOCATION_CACHE: &str = r#"{"default_ttl": 1, "negative_ttl": 1, "stale_if_error": 30}"#;

/// Issue 15's reproduction, for every kind of denial: an allow expires, the auth service
/// then denies the credential, then fails. The allow from before the denial must never be
/// served stale, whether or not the denial itself could be stored.
#[test]
fn a_denial_ends_the_stale_allow_of_its_key() {
    let env = Env::start(&config(REVOCATION_CACHE));
    let tokens: Vec<String> = DENIALS.iter().map(|(denial, _)| revoked_after_allow(denial)).collect();
    // The control: the same allow, then only failures, is served stale (stale_if_error works).
    let control = "seq:allow:rev|status:500";
    for token in tokens.iter().map(String::as_str).chain([control]) {
        env.assert_allowed_as(token, &env.get_as("/api/flows", token), "rev");
    }
    thread::sleep(PAST_ONE_SECOND);
    for (token, (denial, status)) in tokens.iter().zip(DENIALS) {
        let before = env.upstream.count();
        let resp = env.get_as("/api/flows", token);
        env.check(
            resp.status == status && !resp.proxied() && env.upstream.count() == before,
            &format!("{denial}: the denial reaches the client"),
            &resp,
        );
    }
    let mut stale_served = 0;
    for when in ["right after the denial", "once a stored denial has expired too"] {
        for (token, (denial, _)) in tokens.iter().zip(DENIALS) {
            let before = env.upstream.count();
            let resp = env.get_as("/api/flows", token);
            env.check(
                resp.status != 200 && !resp.proxied() && env.upstream.count() == before,
                &format!("{denial}, then auth 500 ({when}): the allow from before the denial was served"),
                &resp,
            );
        }
        env.assert_allowed_as(&format!("control, {when}"), &env.get_as("/api/flows", control), "rev");
        stale_served += 1;
        thread::sleep(PAST_ONE_SECOND);
    }
    let text = flushed(&env, &[("nebula_authz_cache_stale_served", stale_served)]);
    assert_eq!(metric(&text, "nebula_authz_cache_stale_served"), Some(stale_served), "only the control: {text}");
}

/// The same across workers: the denial is answered on one worker, the failures that follow
/// arrive on both (many connections at once), and neither serves the old allow.
#[test]
fn a_denial_on_one_worker_ends_the_stale_allow_on_both() {
    let env = Env::builder().concurrency(2).plugin_config(&config(REVOCATION_CACHE)).start();
    let tokens: Vec<String> = DENIALS.iter().map(|(denial, _)| revoked_after_allow(denial)).collect();
    for token in &tokens {
        env.assert_allowed_as(token, &env.get_as("/api/flows", token), "rev");
    }
    thread::sleep(PAST_ONE_SECOND);
    for (token, (denial, status)) in tokens.iter().zip(DENIALS) {
        let resp = env.get_as("/api/flows", token);
        env.check(resp.status == status && !resp.proxied(), &format!("{denial}: the denial reaches the client"), &resp);
    }
    let upstream = env.upstream.count();
    const CONNECTIONS: usize = 16;
    for (token, (denial, _)) in tokens.iter().zip(DENIALS) {
        for resp in concurrent_gets(env.port, token, CONNECTIONS) {
            env.check(
                resp.status != 200 && !resp.proxied(),
                &format!("{denial}, then auth 500 on either worker: the allow from before the denial was served"),
                &resp,
            );
        }
    }
    assert_eq!(env.upstream.count(), upstream, "nothing reached the upstream after the denials");
    let text = env.prometheus();
    assert_eq!(metric(&text, "nebula_authz_cache_stale_served"), Some(0), "{text}");
    assert_both_workers_served(&env);
}

#[test]
fn auth_down_with_nothing_cached_fails_closed() {
    let down = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let env = Env::builder().auth_addr(down).plugin_config(&config(r#"{"stale_if_error": 60}"#)).start();
    env.assert_fail_closed("auth down, empty cache", &env.get_as("/api/flows", "allow:alice"), 403);
}

#[test]
fn metrics_are_exported_with_the_documented_names() {
    let env = Env::start(&config(r#"{"default_ttl": 60}"#));
    env.assert_allowed_as("miss", &env.get_as("/api/flows", "allow:m"), "m");
    env.assert_allowed_as("hit", &env.get_as("/api/flows", "allow:m"), "m");
    env.assert_denied("deny", &env.get_as("/api/flows", "deny"), env.upstream.count());
    assert_eq!(env.get_as("/api/health", "").status, 200);
    assert_eq!(env.get_as("/api/flows", "status:500").status, 403);
    let expected = [
        ("nebula_authz_callouts", 3),
        ("nebula_authz_allows", 2),
        ("nebula_authz_denies", 1),
        ("nebula_authz_public", 1),
        ("nebula_authz_errors", 1),
        ("nebula_authz_cache_hits", 1),
        ("nebula_authz_cache_misses", 3),
        ("nebula_authz_cache_stale_served", 0),
        ("nebula_authz_coalesced", 0),
    ];
    let text = flushed(&env, &expected);
    for (name, value) in expected {
        assert_eq!(metric(&text, name), Some(value), "{name} in /stats/prometheus:\n{text}");
        // Envoy 1.40's exact line: no `envoy_` prefix, no `wasmcustom`, empty tag set.
        assert!(text.lines().any(|l| l == format!("{name}{{}} {value}")), "{name}{{}} {value}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} counter")), "{name} is a counter:\n{text}");
    }
    let stats = RawRequest::get("/stats?filter=nebula_authz").send(env.admin_port).text();
    assert!(stats.contains("wasmcustom.nebula_authz.cache_hits: 1"), "/stats:\n{stats}");
}

/// 100 000 distinct credentials through a 64-slot cache: Envoy's heap must not grow with
/// them. Each is denied (401, cached for `negative_ttl`; no upstream hop keeps this fast):
/// stored without a bound, 100 000 such entries (~170 bytes each, plus the shared-data
/// map's key and node) would take well over 16 MB.
#[test]
fn a_flood_of_distinct_tokens_stays_within_the_slot_bound() {
    let env = Env::builder().concurrency(2).plugin_config(&config(r#"{"entries": 64, "negative_ttl": 300}"#)).start();
    const TOKENS: usize = 100_000;
    const CONNECTIONS: usize = 8;
    let allocated = |env: &Env| -> u64 {
        let resp = RawRequest::get("/memory").send(env.admin_port);
        resp.json()["allocated"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    // Warm up (connections, stats, the 64 slots), then measure.
    send_keep_alive(env.port, CONNECTIONS, 1_000, "warm");
    let (before, rss_before) = (allocated(&env), rss_kb(&env));
    let started = Instant::now();
    send_keep_alive(env.port, CONNECTIONS, TOKENS, "flood");
    let elapsed = started.elapsed();
    let (after, rss_after) = (allocated(&env), rss_kb(&env));
    let grew = after.saturating_sub(before);
    eprintln!(
        "{TOKENS} tokens in {elapsed:?}: allocated {before} -> {after} (+{grew} bytes), RSS {rss_before} -> {rss_after} kB"
    );
    assert!(env.auth.count() >= TOKENS, "every token was a callout");
    assert!(grew < 4 << 20, "Envoy's heap grew by {grew} bytes for {TOKENS} distinct tokens");
}

/// Envoy's resident set size, from `/proc/<pid>/status`.
fn rss_kb(env: &Env) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", env.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `total` GETs with distinct tokens `<prefix>-<i>` (the mock denies them) over
/// `connections` keep-alive connections; panics on anything but the mock's 401.
fn send_keep_alive(port: u16, connections: usize, total: usize, prefix: &str) {
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let prefix = prefix.to_owned();
            thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                stream.set_read_timeout(Some(client::CLIENT_TIMEOUT)).expect("timeout");
                let _ = stream.set_nodelay(true);
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                for i in (c..total).step_by(connections) {
                    let req =
                        format!("GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {prefix}-{i}\r\n\r\n");
                    stream.write_all(req.as_bytes()).expect("write");
                    loop {
                        if let Some((resp, used)) = client::parse_response(&buf, false).expect("valid response") {
                            assert_eq!(resp.status, 401, "token {i}: {resp:?}");
                            buf.drain(..used);
                            break;
                        }
                        let n = stream.read(&mut chunk).expect("read");
                        assert!(n > 0, "Envoy closed the connection");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

/// `n` GETs of /api/flows with `token`, each on its own connection, released together.
fn concurrent_gets(port: u16, token: &str, n: usize) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let token = token.to_owned();
            thread::spawn(move || {
                barrier.wait();
                RawRequest::get("/api/flows").bearer(&token).send(port)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("client thread")).collect()
}
