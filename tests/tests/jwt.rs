//! Local JWT verification under a real Envoy: tokens minted here with jwt-simple (RSA
//! from the TEST-ONLY key in tests/data/jwt/, EC and Ed25519 generated per run) checked
//! by Envoy's BoringSSL through the ABI, inline JWKS and PEM, Envoy's header limit, and
//! remote JWKS over real callouts (a mock endpoint that rotates keys and goes down, one
//! fetch shared by two real workers, the refresh timer). What the flow does with a
//! verdict (`crit`, `require` and path rules, `forward: false`, `unknown_issuer`,
//! `local_then_callout`, no keys at all, a new kid waiting for another worker's fetch)
//! is asserted natively: filter/src/flow/tests/jwt_flow.rs and interleavings.rs.

use jwt_simple::prelude::*;
use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{Env, MockJwks, Response};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example.com";
const AUD: &str = "prefect-api";
const RSA_PRIVATE: &str = include_str!("../data/jwt/rsa-test-private.pem");
const RSA_PUBLIC: &str = include_str!("../data/jwt/rsa-test-public.pem");
const CHALLENGE: &str = r#"Bearer error="invalid_token""#;

struct Keys {
    rsa: RS256KeyPair,
    es: ES256KeyPair,
    ed: Ed25519KeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: RS256KeyPair::from_pem(RSA_PRIVATE).expect("test RSA key").with_key_id("rsa-1"),
            es: ES256KeyPair::generate().with_key_id("es-1"),
            ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
        }
    }

    /// The public JWKS of the RSA and Ed25519 keys (the EC key goes in as PEM).
    fn jwks(&self) -> Value {
        json!({"keys": [jwk(&self.rsa.public_key().to_jwk(), "rsa-1"), jwk(&self.ed.public_key().to_jwk(), "ed-1")]})
    }
}

fn jwk(text: &str, kid: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).expect("jwk");
    v["kid"] = kid.into();
    v
}

fn claims(sub: &str) -> JWTClaims<Value> {
    Claims::with_custom_claims(
        json!({"scope": ["flows:read", "flows:write"], "org": {"id": 7}}),
        Duration::from_mins(10),
    )
    .with_issuer(ISS)
    .with_audience(AUD)
    .with_subject(sub)
}

fn edited(sub: &str, edit: impl Fn(&mut JWTClaims<Value>)) -> JWTClaims<Value> {
    let mut c = claims(sub);
    edit(&mut c);
    c
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).expect("base64")
}

fn get_with_token(env: &Env, token: &str) -> Response {
    env.send(&RawRequest::get("/api/flows").header("authorization", format!("Bearer {token}")))
}

/// A counter of the filter (`nebula_authz.jwt.<name>`) from Envoy's admin stats. The filter
/// hands its counts to Envoy once a second (flow/counters.rs FLUSH_PERIOD): after a request,
/// [`wait_for_counter`] polls for the count it made.
fn counter(env: &Env, name: &str) -> u64 {
    let stat = format!("wasmcustom.nebula_authz.jwt.{name}");
    let text = RawRequest::get(format!("/stats?filter=^{stat}$")).send(env.admin_port).text();
    text.lines()
        .find_map(|line| line.strip_prefix(&stat)?.strip_prefix(": ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter {stat} in /stats:\n{text}"))
}

/// The newest JWKS version any VM stored (flow/jwks_fetch.rs logs `... keys (version N)`).
fn stored_jwks_version(env: &Env) -> u64 {
    env.log()
        .lines()
        .filter_map(|line| line.split("keys (version ").nth(1)?.strip_suffix(')')?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Polls until `done` (bounded: fails after 10 s with `failure` and the log's tail).
fn wait_until(env: &Env, failure: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{failure}; log:\n{}", env.log_tail());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Polls until the counter reaches `at_least`.
fn wait_for_counter(env: &Env, name: &str, at_least: u64) {
    wait_until(env, &format!("{name} never reached {at_least}"), || counter(env, name) >= at_least);
}

/// The filter's own 401 for a JWT that failed verification, with no callout.
fn assert_invalid_token(env: &Env, case: &str, resp: &Response, auth_before: usize, upstream_before: usize) {
    env.check(resp.status == 401 && !resp.proxied(), &format!("{case}: expected the filter's 401"), resp);
    env.check(resp.header_all("www-authenticate") == [CHALLENGE], &format!("{case}: expected {CHALLENGE}"), resp);
    env.check(
        env.auth.count() == auth_before,
        &format!("{case}: an invalid JWT must not reach the auth service"),
        resp,
    );
    env.check(env.upstream.count() == upstream_before, &format!("{case}: an invalid JWT reached the upstream"), resp);
}

fn local_config(keys: &Keys, extra: &str) -> String {
    json!({
        "auth": {"cluster": "auth", "authority": "auth:4300"},
        "jwt": serde_json::from_str::<Value>(&format!(r#"{{
            "providers": [{{
                "issuer": "{ISS}", "audiences": ["{AUD}"],
                "jwks": {jwks},
                "pem": {{"es-1": {pem}}},
                "claims_to_headers": {{"sub": "x-nebula-actor-id", "scope": "x-nebula-actor-permissions", "org": "x-nebula-org"}}
            }}] {extra}
        }}"#, jwks = keys.jwks(), pem = serde_json::to_string(&keys.es.public_key().to_pem().expect("pem")).expect("pem"))).expect("jwt config"),
    })
    .to_string()
}

#[test]
fn local_mode_allows_valid_tokens_without_a_callout_and_rejects_the_rest() {
    let keys = Keys::new();
    let env = Env::start(&local_config(&keys, ""));

    // RS256, ES256 and EdDSA: allowed, claims as headers, spoofed copies stripped, no callout.
    let tokens = [
        ("RS256", keys.rsa.sign(claims("rsa-user")).expect("sign"), "rsa-user"),
        ("ES256", keys.es.sign(claims("es-user")).expect("sign"), "es-user"),
        ("EdDSA", keys.ed.sign(claims("ed-user")).expect("sign"), "ed-user"),
    ];
    for (alg, token, sub) in &tokens {
        let req = RawRequest::get("/api/flows")
            .header("authorization", format!("Bearer {token}"))
            .header("X-Nebula-Actor-Id", "evil")
            .header("x-nebula-actor-permissions", "admin")
            .header("x-nebula-org", "{\"id\":1}")
            .header("x-nebula-ratelimit-config", "unlimited");
        let resp = env.send(&req);
        env.check(resp.status == 200 && resp.proxied(), &format!("{alg}: expected 200 from the upstream"), &resp);
        let up = env.upstream.last();
        for (name, want) in [
            ("x-nebula-actor-id", vec![sub.to_string()]),
            ("x-nebula-actor-permissions", vec!["flows:read,flows:write".to_string()]),
            ("x-nebula-org", vec![r#"{"id":7}"#.to_string()]),
            ("x-nebula-ratelimit-config", vec![]),
        ] {
            let got = up.header_all(name);
            env.check(got == want, &format!("{alg}: upstream {name} = {got:?}, expected {want:?}"), &resp);
        }
    }
    assert_eq!(env.auth.count(), 0, "valid JWTs in local mode must not call the auth service");
    // The same token again: served from the per-worker cache.
    let resp = get_with_token(&env, &tokens[0].1);
    env.check(resp.status == 200 && resp.proxied(), "a repeated token is still allowed", &resp);
    wait_for_counter(&env, "verified", 3);
    wait_for_counter(&env, "cache_hits", 1);

    // Invalid tokens of our issuer: 401 invalid_token, no callout, nothing upstream.
    let now = Clock::now_since_epoch();
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(serde_json::to_string(&claims("x")).expect("claims").as_bytes());
    let rsa_header = b64(br#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            keys.es.sign(edited("x", |c| c.expires_at = Some(now - Duration::from_mins(5)))).expect("sign"),
            "expired",
        ),
        (
            "not yet valid",
            keys.es.sign(edited("x", |c| c.invalid_before = Some(now + Duration::from_mins(5)))).expect("sign"),
            "not_yet_valid",
        ),
        (
            "wrong aud",
            keys.rsa.sign(edited("x", |c| c.audiences = Some(Audiences::AsString("other".into())))).expect("sign"),
            "audience",
        ),
        ("missing aud", keys.ed.sign(edited("x", |c| c.audiences = None)).expect("sign"), "audience"),
        ("alg none", format!("{none_header}.{payload}."), "algorithm"),
        (
            // Algorithm confusion: HS256 keyed with the RSA public key the filter knows.
            "HS256 with the RSA public key as secret",
            HS256Key::from_bytes(RSA_PUBLIC.as_bytes()).with_key_id("rsa-1").authenticate(claims("x")).expect("mac"),
            "algorithm",
        ),
        ("malformed base64", format!("{rsa_header}.{}!.c2ln", &payload[..20]), "malformed"),
        ("bad signature", format!("{rsa_header}.{payload}.{}", b64(&[7u8; 256])), "signature"),
        (
            "unknown kid",
            ES256KeyPair::from_bytes(&keys.es.to_bytes())
                .expect("key")
                .with_key_id("es-9")
                .sign(claims("x"))
                .expect("sign"),
            "unknown_kid",
        ),
        ("over max_token_bytes", format!("{rsa_header}.{}.c2ln", "A".repeat(20 * 1024)), "too_large"),
        // A tab is a control character: the token is invalid, nothing is injected.
        ("tab in a claim", keys.es.sign(claims("alice\tadmin")).expect("sign"), "claim_header"),
    ];
    // Each case counts under its reason. Counters reach Envoy once a second
    // (flow/counters.rs), so the counts are read once, after every case, not per case.
    let mut expected: std::collections::BTreeMap<&str, (u64, Vec<&str>)> = std::collections::BTreeMap::new();
    for (case, _, reason) in &cases {
        let entry =
            expected.entry(*reason).or_insert_with(|| (counter(&env, &format!("rejected.{reason}")), Vec::new()));
        entry.0 += 1;
        entry.1.push(*case);
    }
    for (case, token, _) in &cases {
        let (auth_before, upstream_before) = (env.auth.count(), env.upstream.count());
        let resp = get_with_token(&env, token);
        assert_invalid_token(&env, case, &resp, auth_before, upstream_before);
    }
    for (reason, (want, cases)) in &expected {
        wait_for_counter(&env, &format!("rejected.{reason}"), *want);
        let got = counter(&env, &format!("rejected.{reason}"));
        assert_eq!(got, *want, "rejected.{reason} after {cases:?}");
    }

    // A 64 KiB token is over Envoy's own header limit (60 KiB): Envoy answers before the
    // filter; either way nothing is called, and the filter keeps serving.
    let (auth_before, upstream_before) = (env.auth.count(), env.upstream.count());
    let huge = format!("{rsa_header}.{}.c2ln", "A".repeat(64 * 1024));
    let resp = get_with_token(&env, &huge);
    env.check(matches!(resp.status, 401 | 431) && !resp.proxied(), "64 KiB token: expected 431 or 401", &resp);
    env.check(
        env.auth.count() == auth_before && env.upstream.count() == upstream_before,
        "64 KiB token went through",
        &resp,
    );
    let resp = get_with_token(&env, &tokens[1].1);
    env.check(resp.status == 200, "the filter still serves after a 64 KiB token", &resp);

    // Not JWTs of ours: the callout decides, as without the jwt block.
    let resp = env.get_as("/api/flows", "allow:api-key-user");
    env.assert_allowed_as("API key", &resp, "api-key-user");
    env.check(
        env.auth.last().header("authorization").as_deref() == Some("Bearer allow:api-key-user"),
        "API key forwarded",
        &resp,
    );
    let before = env.auth.count();
    let other_issuer =
        keys.es.sign(edited("x", |c| c.issuer = Some("https://other.example.com".into()))).expect("sign");
    let upstream_before = env.upstream.count();
    let resp = get_with_token(&env, &other_issuer);
    env.assert_denied("JWT of another issuer (unknown_issuer: callout)", &resp, upstream_before);
    env.check(env.auth.count() == before + 1, "a JWT of another issuer goes to the auth service", &resp);
    // Public paths are untouched by the JWT step too.
    let resp = get_with_token(&env, &cases[0].1);
    env.check(resp.status == 401, "sanity: the expired token is still rejected", &resp);
    let resp = env.send(&RawRequest::get("/api/health").header("authorization", format!("Bearer {}", cases[0].1)));
    env.check(resp.status == 200 && resp.proxied(), "a public path skips the JWT check", &resp);
}

fn remote_config(extra_provider: &str) -> String {
    json!({
        "auth": {"cluster": "auth", "authority": "auth:4300"},
        "jwt": serde_json::from_str::<Value>(&format!(r#"{{"providers": [{{
            "issuer": "{ISS}", "audiences": ["{AUD}"],
            "remote_jwks": {{"cluster": "jwks", "path": "/.well-known/jwks.json", "timeout_ms": 2000, "min_refresh_interval_ms": 0}},
            "claims_to_headers": {{"sub": "x-nebula-actor-id"}} {extra_provider}
        }}]}}"#)).expect("jwt config"),
    })
    .to_string()
}

#[test]
fn remote_jwks_is_fetched_once_per_envoy_refreshed_on_unknown_kid_and_kept_when_down() {
    let es1 = ES256KeyPair::generate().with_key_id("es-1");
    let es2 = ES256KeyPair::generate().with_key_id("es-2");
    let jwks = MockJwks::start(&json!({"keys": [jwk(&es1.public_key().to_jwk(), "es-1")]}).to_string());
    let env = Env::builder().plugin_config(&remote_config("")).cluster("jwks", jwks.addr()).concurrency(2).start();

    // The keys are fetched at start (the first tick), once for the whole Envoy. (A token
    // arriving before any key is known also starts the fetch: see the test below.)
    wait_for_counter(&env, "jwks_refreshes", 1);
    for i in 0..6 {
        let resp = get_with_token(&env, &es1.sign(claims(&format!("user-{i}"))).expect("sign"));
        env.check(resp.status == 200 && resp.proxied(), &format!("es-1 token {i}: expected 200"), &resp);
        env.check(env.upstream.last().header("x-nebula-actor-id") == Some(format!("user-{i}")), "claim header", &resp);
    }
    let fetch = jwks.requests().pop().expect("a JWKS fetch");
    assert_eq!(fetch.method, "GET");
    assert_eq!(fetch.path, "/.well-known/jwks.json");
    assert_eq!(jwks.count(), 1, "one JWKS fetch for the whole Envoy (2 workers + main thread)");

    // Key rotation: a token with a new kid makes the filter refetch, and it verifies.
    jwks.set(
        &json!({"keys": [jwk(&es1.public_key().to_jwk(), "es-1"), jwk(&es2.public_key().to_jwk(), "es-2")]})
            .to_string(),
    );
    let resp = get_with_token(&env, &es2.sign(claims("rotated")).expect("sign"));
    env.check(resp.status == 200 && resp.proxied(), "new kid after a refresh: expected 200", &resp);
    assert_eq!(jwks.count(), 2, "the unknown kid caused exactly one refetch");
    for i in 0..4 {
        let resp = get_with_token(&env, &es2.sign(claims(&format!("rotated-{i}"))).expect("sign"));
        env.check(resp.status == 200, "the other worker reads the new keys from shared data", &resp);
    }
    assert_eq!(jwks.count(), 2, "workers share the refreshed keys");

    // The endpoint goes down: a refresh fails, the old keys stay.
    jwks.down();
    let es3 = ES256KeyPair::generate().with_key_id("es-3");
    let (auth_before, upstream_before) = (env.auth.count(), env.upstream.count());
    let resp = get_with_token(&env, &es3.sign(claims("x")).expect("sign"));
    assert_invalid_token(&env, "unknown kid while the JWKS endpoint is down", &resp, auth_before, upstream_before);
    assert_eq!(jwks.count(), 3, "the unknown kid tried a refresh");
    wait_for_counter(&env, "jwks_failures", 1);
    let resp = get_with_token(&env, &es1.sign(claims("still-here")).expect("sign"));
    env.check(resp.status == 200 && resp.proxied(), "old keys kept after a failed refresh", &resp);
    env.check(env.upstream.last().header("x-nebula-actor-id").as_deref() == Some("still-here"), "claim header", &resp);
    wait_for_counter(&env, "jwks_refreshes", 2);
}

#[test]
fn remote_jwks_is_refreshed_on_the_timer() {
    let es1 = ES256KeyPair::generate().with_key_id("es-1");
    let es2 = ES256KeyPair::generate().with_key_id("es-2");
    let jwks = MockJwks::start(&json!({"keys": [jwk(&es1.public_key().to_jwk(), "es-1")]}).to_string());
    let config = remote_config("")
        .replace(r#""min_refresh_interval_ms":0"#, r#""min_refresh_interval_ms":0,"refresh_interval_ms":1000"#);
    assert!(config.contains("refresh_interval_ms\":1000"), "{config}");
    let env = Env::builder().plugin_config(&config).cluster("jwks", jwks.addr()).start();
    wait_for_counter(&env, "jwks_refreshes", 1);
    // The provider rotates; no request is sent, so only the timer can fetch again. Waited
    // for by the stored JWKS versions in Envoy's log, not the counter: counters are
    // flushed once a second, so `jwks_refreshes` reaching 2 may be a refresh from before
    // the rotation. Two versions past the rotation: the first may be a fetch that was
    // already in flight (the old keys); fetches take turns, so the next began after it.
    let rotated = stored_jwks_version(&env);
    jwks.set(&json!({"keys": [jwk(&es2.public_key().to_jwk(), "es-2")]}).to_string());
    wait_until(&env, "no refresh after the rotation", || stored_jwks_version(&env) >= rotated + 2);
    wait_for_counter(&env, "jwks_refreshes", 2);
    assert_eq!(env.auth.count() + env.upstream.count(), 0, "no request was sent meanwhile");
    let resp = get_with_token(&env, &es2.sign(claims("after-timer")).expect("sign"));
    env.check(resp.status == 200 && resp.proxied(), "the timer-refreshed key verifies", &resp);
    // es-1 left the JWKS: its tokens now fail (unknown kid, and the refetch finds none).
    let (auth_before, upstream_before) = (env.auth.count(), env.upstream.count());
    let resp = get_with_token(&env, &es1.sign(claims("gone")).expect("sign"));
    assert_invalid_token(&env, "a key removed from the JWKS", &resp, auth_before, upstream_before);
}
