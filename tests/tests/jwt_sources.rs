//! Where a JWT is read from and what the upstream sees of it, under a real Envoy:
//! `jwt.from_cookies` and `jwt.from_params` (a query token never reaches the upstream:
//! `:path` rewritten through the ABI, the rest of the target kept byte for byte). Tokens
//! are ES256, minted per run. `jwt.forward: false` (the verified token taken out of its
//! header, cookie or query, also in `local_then_callout`) is asserted natively:
//! filter/src/flow/tests/jwt_flow.rs.

use jwt_simple::prelude::*;
use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{Env, Response};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example.com";

fn key() -> ES256KeyPair {
    ES256KeyPair::generate().with_key_id("es-1")
}

fn token(key: &ES256KeyPair, sub: &str) -> String {
    key.sign(Claims::create(Duration::from_mins(10)).with_issuer(ISS).with_subject(sub)).expect("sign")
}

/// Local mode, the key inline, `sub` → `x-nebula-actor-id`; `jwt` adds fields to the block.
fn config(key: &ES256KeyPair, jwt: Value) -> String {
    let mut jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).expect("jwk");
    jwk["kid"] = "es-1".into();
    let mut block = json!({"providers": [{
        "issuer": ISS, "jwks": {"keys": [jwk]}, "claims_to_headers": {"sub": "x-nebula-actor-id"}
    }]});
    for (name, value) in jwt.as_object().expect("jwt fields") {
        block[name] = value.clone();
    }
    json!({"auth": {"cluster": "auth", "authority": "auth:4300", "request_headers": ["authorization", "cookie"]},
           "jwt": block})
    .to_string()
}

const ALL_SOURCES: &str = r#"{
    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
    "from_cookies": ["jwt"],
    "from_params": ["access_token"]
}"#;

/// 200 from the upstream as `sub` (the token's claim header), with no callout; returns
/// what the upstream received.
fn assert_verified(env: &Env, case: &str, resp: &Response, sub: &str, auth_before: usize) -> (String, Vec<String>) {
    env.check(resp.status == 200 && resp.proxied(), &format!("{case}: expected 200 from the upstream"), resp);
    let up = env.upstream.last();
    env.check(
        up.header_all("x-nebula-actor-id") == [sub],
        &format!("{case}: upstream x-nebula-actor-id = {:?}, expected [{sub:?}]", up.header_all("x-nebula-actor-id")),
        resp,
    );
    env.check(env.auth.count() == auth_before, &format!("{case}: a valid token in local mode calls nobody"), resp);
    (up.path.clone(), up.header_all("cookie"))
}

#[test]
fn a_token_in_a_cookie_or_the_query_verifies_and_a_query_token_never_reaches_the_upstream() {
    let key = key();
    let env = Env::start(&config(&key, serde_json::from_str(ALL_SOURCES).expect("sources")));
    let t = token(&key, "cookie-user");

    // A cookie: verified, and (forward defaults to true) left for the upstream.
    let resp = env.send(&RawRequest::get("/api/flows").header("cookie", format!("theme=dark; jwt={t}")));
    let (path, cookies) = assert_verified(&env, "cookie", &resp, "cookie-user", 0);
    env.check(path == "/api/flows" && cookies == [format!("theme=dark; jwt={t}")], "cookie kept", &resp);

    // The query: verified, and removed from :path, every spelling and copy of it; the
    // rest of the target is unchanged byte for byte.
    let q = token(&key, "query-user");
    for (target, upstream_path) in [
        (format!("/api/flows?page=2&access_token={q}&sort=name"), "/api/flows?page=2&sort=name"),
        (format!("/api/flows?access_token={q}"), "/api/flows"),
        (format!("/api/flows/filter?access_token={q}&access_token=second&access%5Ftoken=third"), "/api/flows/filter"),
        (format!("/api/work_pools/a%20b/x?access%5ftoken={q}&q=a%26b"), "/api/work_pools/a%20b/x?q=a%26b"),
    ] {
        let resp = env.send(&RawRequest::get(&target));
        let (path, _) = assert_verified(&env, &target, &resp, "query-user", 0);
        env.check(
            path == upstream_path,
            &format!("{target}: upstream path {path:?}, expected {upstream_path:?}"),
            &resp,
        );
    }

    // A forged query token is rejected like a forged header, and nothing goes anywhere.
    let upstream_before = env.upstream.count();
    let forged = format!("{}.{}", q.rsplit_once('.').expect("jws").0, "c2ln");
    let resp = env.send(&RawRequest::get(format!("/api/flows?access_token={forged}")));
    env.check(resp.status == 401 && !resp.proxied(), "forged query token: expected the filter's 401", &resp);
    env.check(env.upstream.count() == upstream_before && env.auth.count() == 0, "forged query token went on", &resp);

    // A public path stays public whatever its query says: the JWT step never runs there,
    // so the target goes upstream as it came.
    let target = format!("/api/health?access_token={forged}");
    let resp = env.send(&RawRequest::get(&target));
    env.check(resp.status == 200 && resp.proxied(), "a public path with a query token stays public", &resp);
    env.check(env.upstream.last().path == target, "a public path's target is not rewritten", &resp);

    // Not a JWT in the query: the callout decides, as without the jwt block.
    let upstream_before = env.upstream.count();
    let resp = env.send(&RawRequest::get("/api/flows?access_token=pnu_0123456789"));
    env.assert_denied("API key in the query (the mock denies it)", &resp, upstream_before);
    env.check(env.auth.count() == 1, "a non-JWT query credential goes to the auth service", &resp);
}
