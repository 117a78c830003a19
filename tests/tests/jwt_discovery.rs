//! OIDC discovery under a real Envoy: a provider with only `issuer` and a cluster
//! (`discovery`) fetches the issuer's openid-configuration, then the `jwks_uri` it names,
//! once per Envoy; later refreshes fetch only the keys, and a failed one keeps them. That
//! a document naming keys on another host, or another issuer, is never followed is
//! asserted natively (filter/src/flow/tests/jwt_flow.rs, jwt/oidc_discovery.rs).

use jwt_simple::prelude::*;
use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{Env, MockJwks, Response};
use serde_json::{json, Value};

const ISS: &str = "https://login.example.com/realms/prefect";
const WELL_KNOWN: &str = "/realms/prefect/.well-known/openid-configuration";
const CERTS: &str = "/realms/prefect/protocol/openid-connect/certs";

fn jwks(keys: &[&ES256KeyPair]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut jwk: Value = serde_json::from_str(&k.public_key().to_jwk()).expect("jwk");
            jwk["kid"] = k.key_id().clone().expect("kid").into();
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn openid_configuration(issuer: &str, jwks_uri: &str) -> String {
    json!({"issuer": issuer, "jwks_uri": jwks_uri, "id_token_signing_alg_values_supported": ["ES256"]}).to_string()
}

fn get_with(env: &Env, key: &ES256KeyPair, iss: &str, sub: &str) -> Response {
    let token = key.sign(Claims::create(Duration::from_mins(10)).with_issuer(iss).with_subject(sub)).expect("sign");
    env.send(&RawRequest::get("/api/flows").header("authorization", format!("Bearer {token}")))
}

fn config(issuers: &[&str]) -> String {
    let providers: Vec<Value> = issuers
        .iter()
        .map(|iss| {
            json!({"issuer": iss, "discovery": {"cluster": "idp", "timeout_ms": 2000, "min_refresh_interval_ms": 0},
                   "claims_to_headers": {"sub": "x-nebula-actor-id"}})
        })
        .collect();
    json!({"auth": {"cluster": "auth", "authority": "auth:4300"}, "jwt": {"providers": providers}}).to_string()
}

fn counter(env: &Env, name: &str) -> u64 {
    let stat = format!("wasmcustom.nebula_authz.jwt.{name}");
    let text = RawRequest::get(format!("/stats?filter=^{stat}$")).send(env.admin_port).text();
    text.lines().find_map(|line| line.strip_prefix(&stat)?.strip_prefix(": ")?.trim().parse().ok()).unwrap_or(0)
}

/// Polls until the counter reaches `at_least` (bounded: fails after 10 s).
fn wait_for_counter(env: &Env, name: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while counter(env, name) < at_least {
        assert!(std::time::Instant::now() < deadline, "{name} never reached {at_least}; log:\n{}", env.log_tail());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn paths(idp: &MockJwks) -> Vec<String> {
    idp.requests().into_iter().map(|r| r.path).collect()
}

#[test]
fn discovery_finds_the_jwks_once_per_envoy_and_then_refreshes_only_the_keys() {
    let (es1, es2) = (ES256KeyPair::generate().with_key_id("es-1"), ES256KeyPair::generate().with_key_id("es-2"));
    let idp = MockJwks::start(&jwks(&[&es1]));
    idp.set_at(WELL_KNOWN, &openid_configuration(ISS, &format!("https://login.example.com{CERTS}")));
    let env = Env::builder().plugin_config(&config(&[ISS])).cluster("idp", idp.addr()).concurrency(2).start();

    // At start: the document, then its jwks_uri, for the whole Envoy (2 workers + main).
    wait_for_counter(&env, "jwks_refreshes", 1);
    for i in 0..4 {
        let resp = get_with(&env, &es1, ISS, &format!("user-{i}"));
        env.check(resp.status == 200 && resp.proxied(), &format!("token {i}: expected 200"), &resp);
        let got = env.upstream.last().header("x-nebula-actor-id");
        env.check(got.as_deref() == Some(format!("user-{i}").as_str()), "claim header", &resp);
    }
    assert_eq!(paths(&idp), [WELL_KNOWN, CERTS], "the document, then the keys it names, once");
    for fetch in idp.requests() {
        assert_eq!(fetch.header("host").as_deref(), Some("login.example.com"), "asked for the issuer's host");
    }

    // A new kid: the keys are fetched again, not the document.
    idp.set(&jwks(&[&es1, &es2]));
    let resp = get_with(&env, &es2, ISS, "rotated");
    env.check(resp.status == 200 && resp.proxied(), "a rotated key verifies after one refetch", &resp);
    assert_eq!(paths(&idp), [WELL_KNOWN, CERTS, CERTS]);

    // The provider goes down: the refresh fails, the keys stay (as for remote_jwks).
    idp.down();
    let es3 = ES256KeyPair::generate().with_key_id("es-3");
    let resp = get_with(&env, &es3, ISS, "x");
    env.check(resp.status == 401 && !resp.proxied(), "an unknown kid while the provider is down", &resp);
    wait_for_counter(&env, "jwks_failures", 1); // counters reach Envoy once a second
    assert!(counter(&env, "jwks_failures") >= 1);
    let resp = get_with(&env, &es1, ISS, "still-here");
    env.check(resp.status == 200 && resp.proxied(), "the keys survive a failed refresh", &resp);
    assert_eq!(env.auth.count(), 0, "local mode: nothing went to the auth service");
}
