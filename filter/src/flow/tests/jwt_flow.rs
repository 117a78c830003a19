//! Local JWT verification inside the flow: `local` decides without a callout,
//! `local_then_callout` keeps the claims for the callout's allow; a spoofed identity
//! never survives either way.

use jwt_simple::prelude::*;

use super::answers::Answer;
use super::{spoofing, Sim, NOW_MS};
use crate::flow::mock_host::End;
use crate::flow::Flow;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config(mode: &str) -> String {
    serde_json::json!({"auth": {"cluster": "auth", "upstream_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions"]},
        "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
            "mode": mode, "claims_to_headers": {"sub": "x-jwt-sub"}}]}})
    .to_string()
}

fn token(expired: bool) -> String {
    let key = HS256Key::from_bytes(SECRET);
    let now = NOW_MS / 1000;
    let mut claims = Claims::create(Duration::from_secs(600)).with_issuer("https://idp").with_subject("dave");
    claims.issued_at = Some(UnixTimeStamp::from_secs(now - 1200));
    claims.expires_at = Some(UnixTimeStamp::from_secs(if expired { now - 600 } else { now + 600 }));
    key.authenticate(claims).unwrap()
}

/// The client also spoofs the claim header.
fn spoofed_sub(path: &[u8], extra: &[(&str, &str)]) -> crate::flow::mock_host::Pairs {
    let mut headers = spoofing(path, extra);
    headers.push(("X_Jwt_Sub".into(), super::SPOOF.as_bytes().to_vec()));
    headers
}

#[test]
fn local_mode_decides_without_a_callout() {
    let mut sim = Sim::new(&config("local"), 1);
    let valid = sim.send(spoofed_sub(b"/api/flows", &[("authorization", &format!("Bearer {}", token(false)))]));
    assert_eq!(sim.streams[&valid].first, Flow::Continue);
    let upstream = sim.streams[&valid].upstream.clone().unwrap();
    assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
    let expired = sim.send(spoofing(b"/api/flows", &[("authorization", &format!("Bearer {}", token(true)))]));
    assert_eq!(sim.outcome(expired), Some(401));
    let garbage = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer eyJhbGciOi.x.y")]));
    assert!(sim.outcome(garbage).is_some());
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert!(sim.host.dispatched().iter().all(|d| d.context != valid && d.context != expired));
}

#[test]
fn local_then_callout_adds_the_claims_only_on_the_callouts_allow() {
    for answer in [Answer::Allow, Answer::Deny, Answer::Reset] {
        let mut sim = Sim::new(&config("local_then_callout"), 1);
        let id = sim.send(spoofed_sub(b"/api/flows", &[("authorization", &format!("Bearer {}", token(false)))]));
        assert_eq!(sim.pending().len(), 1);
        sim.settle(|_, _| answer.reply());
        sim.check();
        let ends = sim.host.stream(id).ends;
        if answer.allows() {
            assert_eq!(ends, vec![End::Resume]);
            let upstream = sim.streams[&id].upstream.clone().unwrap();
            assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
            assert!(upstream.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())), "{upstream:?}");
        } else {
            assert!(matches!(ends.as_slice(), [End::Reply { .. }]), "{answer:?}: {ends:?}");
        }
    }
}

/// A verification failure counted under `nebula_authz.jwt.<name>`.
fn jwt_counter(sim: &mut Sim, name: &str) -> u64 {
    // Flushes every worker's counts to the host first.
    sim.counter(crate::metric_names::Metric::Callouts);
    sim.host.counter(&format!("nebula_authz.jwt.{name}"))
}

/// HS256 by hand, so the header can carry anything and still be signed.
fn hs256(secret: &[u8], header: &str, payload: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.to_string().as_bytes()));
    let mac = hmac_sha256::HMAC::mac(signed.as_bytes(), secret);
    format!("{signed}.{}", b64(&mac))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The local reply `id` got, if any: (status, headers).
fn replied(sim: &Sim, id: u32) -> Option<(u32, Vec<(String, String)>)> {
    match sim.host.stream(id).ends.first() {
        Some(End::Reply { status, headers, .. }) => Some((*status, headers.clone())),
        _ => None,
    }
}

/// The filter's own answer to a token it judged: `status` with `challenge`, no callout,
/// nothing upstream.
fn assert_refused(sim: &Sim, id: u32, status: u32, challenge: &str, case: &str) {
    let (got, headers) = replied(sim, id).unwrap_or_else(|| panic!("{case}: not answered locally"));
    assert_eq!(got, status, "{case}");
    let challenges: Vec<&str> =
        headers.iter().filter(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str()).collect();
    assert_eq!(challenges, vec![challenge], "{case}");
    assert!(sim.host.dispatched().iter().all(|d| d.context != id), "{case}: a callout was sent");
    assert!(sim.streams[&id].upstream.is_none(), "{case}: went upstream");
}

const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
const INSUFFICIENT_SCOPE: &str = r#"Bearer error="insufficient_scope""#;

fn exp() -> u64 {
    NOW_MS / 1000 + 600
}

#[test]
fn a_crit_header_is_rejected_even_empty_and_even_signed() {
    let mut sim = Sim::new(&config("local"), 1);
    let payload = serde_json::json!({"iss": "https://idp", "sub": "hs-user", "exp": exp()});
    let plain = sim.send(spoofed_sub(
        b"/api/flows",
        &[("authorization", &bearer(&hs256(SECRET, r#"{"alg":"HS256"}"#, &payload)))],
    ));
    let upstream = sim.streams[&plain].upstream.clone().expect("without crit: upstream");
    assert!(upstream.contains(&("x-jwt-sub".into(), b"hs-user".to_vec())), "{upstream:?}");
    for crit in ["[]", r#"["exp"]"#] {
        let token = hs256(SECRET, &format!(r#"{{"alg":"HS256","crit":{crit}}}"#), &payload);
        let id = sim.send(spoofed_sub(b"/api/flows", &[("authorization", &bearer(&token))]));
        assert_refused(&sim, id, 401, INVALID_TOKEN, &format!("crit: {crit}"));
    }
    sim.check();
    assert_eq!(jwt_counter(&mut sim, "rejected.malformed"), 2, "each counted as malformed");
}

#[test]
fn require_and_path_rules_answer_403_insufficient_scope() {
    let config = serde_json::json!({"auth": {"cluster": "auth"},
        "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
            "require": {"email": "*@example.com"}, "claims_to_headers": {"sub": "x-nebula-actor-id"}}],
            "rules": [{"path": "/api/admin", "require": {"scope": "admin"}}]}});
    let mut sim = Sim::new(&config.to_string(), 1);
    let token = |email: &str, scope: &str| {
        let claims =
            serde_json::json!({"iss": "https://idp", "sub": "u", "exp": exp(), "email": email, "scope": scope});
        hs256(SECRET, r#"{"alg":"HS256"}"#, &claims)
    };
    let reader = token("alice@example.com", "flows:read");
    let admin = token("root@example.com", "flows:read admin");
    let outsider = token("eve@example.org", "admin");
    let cases = [
        ("/api/flows", &reader, 0),
        ("/api/admin/users", &reader, 403),
        ("/api/admin/users", &admin, 0),
        ("/api//admin/users", &reader, 403),
        ("/api/flows", &outsider, 403),
        ("/api/admin", &outsider, 403),
    ];
    for (path, token, want) in cases {
        let id = sim.send(spoofing(path.as_bytes(), &[("authorization", &bearer(token))]));
        if want == 0 {
            assert_eq!(sim.outcome(id), Some(0), "{path}");
        } else {
            assert_refused(&sim, id, 403, INSUFFICIENT_SCOPE, path);
        }
    }
    assert!(sim.host.dispatched().is_empty(), "no callout");
    sim.check();
    assert_eq!(jwt_counter(&mut sim, "insufficient"), 4);
}

#[test]
fn forward_false_removes_the_verified_token_before_the_upstream() {
    let config = serde_json::json!({"auth": {"cluster": "auth"},
        "jwt": {"forward": false, "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_cookies": ["jwt"], "from_params": ["access_token"],
            "providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
                "claims_to_headers": {"sub": "x-nebula-actor-id"}}]}});
    let mut sim = Sim::new(&config.to_string(), 1);
    let token =
        hs256(SECRET, r#"{"alg":"HS256"}"#, &serde_json::json!({"iss": "https://idp", "sub": "u", "exp": exp()}));
    let header = |upstream: &crate::flow::mock_host::Pairs, name: &str| -> Vec<Vec<u8>> {
        upstream.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
    };
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", &bearer(&token))]));
    let upstream = sim.streams[&id].upstream.clone().expect("header token: upstream");
    assert!(header(&upstream, "authorization").is_empty(), "the authorization header was removed: {upstream:?}");
    assert_eq!(header(&upstream, "x-nebula-actor-id"), vec![b"u".to_vec()], "the claim header is set");
    let cookie = format!("a=1; jwt={token}; b=2");
    let id = sim.send(spoofing(b"/api/flows", &[("cookie", &cookie)]));
    let upstream = sim.streams[&id].upstream.clone().expect("cookie token: upstream");
    assert_eq!(header(&upstream, "cookie"), vec![b"a=1; b=2".to_vec()], "only the token's cookie was removed");
    let id = sim.send(spoofing(b"/api/flows", &[("cookie", &format!("jwt={token}"))]));
    let upstream = sim.streams[&id].upstream.clone().expect("cookie alone: upstream");
    assert!(header(&upstream, "cookie").is_empty(), "the token's cookie alone: no cookie header left");
    let id = sim.send(spoofing(format!("/api/flows?access_token={token}&x=1").as_bytes(), &[]));
    let upstream = sim.streams[&id].upstream.clone().expect("query token: upstream");
    assert_eq!(header(&upstream, ":path"), vec![b"/api/flows?x=1".to_vec()], "the query token was removed");
    assert_eq!(header(&upstream, "x-nebula-actor-id"), vec![b"u".to_vec()]);
    // Not a JWT of ours: forwarded untouched to the callout and the upstream.
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer api-key")]));
    sim.settle(|_, _| Answer::Allow.reply());
    let call = sim.host.dispatched().into_iter().find(|d| d.context == id).expect("a callout");
    assert!(call.headers.contains(&("authorization".into(), "Bearer api-key".into())), "{:?}", call.headers);
    let upstream = sim.streams[&id].upstream.clone().expect("API key: allowed");
    assert_eq!(header(&upstream, "authorization"), vec![b"Bearer api-key".to_vec()], "an API key is not removed");
    sim.check();
}

#[test]
fn unknown_issuers_can_be_rejected_locally() {
    let mut config: serde_json::Value = serde_json::from_str(&config("local")).unwrap();
    config["jwt"]["unknown_issuer"] = "reject".into();
    let mut sim = Sim::new(&config.to_string(), 1);
    let claims = serde_json::json!({"iss": "https://other.example.com", "sub": "x", "exp": exp()});
    let id =
        sim.send(spoofing(b"/api/flows", &[("authorization", &bearer(&hs256(SECRET, r#"{"alg":"HS256"}"#, &claims)))]));
    assert_refused(&sim, id, 401, INVALID_TOKEN, "another issuer, unknown_issuer: reject");
    sim.check();
    assert_eq!(jwt_counter(&mut sim, "rejected.unknown_issuer"), 1);
}

/// `not_jwt: reject` (what `make convert` writes for a RequestAuthentication): an API
/// key where tokens are read is answered 401 with no callout, as Envoy's jwt_authn
/// answers a token it cannot parse; a request without the header is still checked.
#[test]
fn credentials_that_are_not_jwts_can_be_rejected_locally() {
    let mut config: serde_json::Value = serde_json::from_str(&config("local_then_callout")).unwrap();
    config["jwt"]["not_jwt"] = "reject".into();
    let mut sim = Sim::new(&config.to_string(), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer pnu_0123456789abcdef")]));
    assert_refused(&sim, id, 401, INVALID_TOKEN, "an API key, not_jwt: reject");
    assert!(sim.host.dispatched().is_empty(), "no callout for a refused credential");
    let id = sim.send(spoofing(b"/api/flows", &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert!(sim.streams[&id].upstream.is_some(), "no credential: the callout decides, and allows");
    sim.check();
    assert_eq!(jwt_counter(&mut sim, "rejected.malformed"), 1);
}

/// `local_then_callout` with the token in its own header: an invalid token is refused
/// locally; without one, the callout alone decides.
#[test]
fn local_then_callout_refuses_invalid_tokens_locally_and_lets_the_callout_decide_without_one() {
    let mut config: serde_json::Value = serde_json::from_str(&config("local_then_callout")).unwrap();
    config["jwt"]["from_headers"] = serde_json::json!([{"name": "x-jwt"}]);
    let mut sim = Sim::new(&config.to_string(), 1);
    let valid = sim.send(spoofed_sub(b"/api/flows", &[("authorization", "Bearer t"), ("x-jwt", &token(false))]));
    sim.settle(|_, _| Answer::Allow.reply());
    let upstream = sim.streams[&valid].upstream.clone().expect("valid JWT, auth allows");
    assert!(
        upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())),
        "claim headers the auth service does not set stay"
    );
    assert!(upstream.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())), "{upstream:?}");
    let expired = sim.send(spoofed_sub(b"/api/flows", &[("authorization", "Bearer t"), ("x-jwt", &token(true))]));
    assert_refused(&sim, expired, 401, INVALID_TOKEN, "expired JWT in local_then_callout");
    let none = sim.send(spoofed_sub(b"/api/flows", &[("authorization", "Bearer t")]));
    assert_eq!(sim.pending().len(), 1, "no JWT: the callout decides");
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(sim.outcome(none), Some(0));
    sim.check();
}

/// No keys at all (the JWKS endpoint refuses the connection): `local` fails closed with
/// no callout; `local_then_callout` lets the callout decide, with no claim header.
#[test]
fn without_any_keys_local_fails_closed_and_local_then_callout_asks_the_auth_service() {
    let key = ES256KeyPair::generate().with_key_id("es-1");
    let config = serde_json::json!({"auth": {"cluster": "auth"}, "jwt": {"providers": [
        {"issuer": "https://idp", "remote_jwks": {"cluster": "jwks", "timeout_ms": 1000},
            "claims_to_headers": {"sub": "x-nebula-actor-id"}},
        {"issuer": "https://second", "mode": "local_then_callout", "remote_jwks": {"cluster": "jwks", "timeout_ms": 1000},
            "claims_to_headers": {"sub": "x-nebula-actor-id"}}]}});
    let mut sim = Sim::new(&config.to_string(), 1);
    let sign = |issuer: &str| {
        let mut claims = Claims::create(Duration::from_secs(600)).with_issuer(issuer).with_subject("x");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000));
        claims.expires_at = Some(UnixTimeStamp::from_secs(exp()));
        bearer(&key.sign(claims).unwrap())
    };
    let refused = || Answer::Refused.reply();
    let local = sim.send(spoofing(b"/api/flows", &[("authorization", &sign("https://idp"))]));
    sim.settle(|cluster, _| {
        assert_eq!(cluster, "jwks", "no callout in local mode");
        refused()
    });
    assert_eq!(sim.outcome(local), Some(sim.settings.status_on_error), "local mode, JWKS unreachable, no keys");
    let second = sim.send(spoofing(b"/api/flows", &[("authorization", &sign("https://second"))]));
    sim.settle(|cluster, _| if cluster == "auth" { Answer::Deny.reply() } else { refused() });
    assert_eq!(sim.outcome(second), Some(401), "local_then_callout, no keys: the callout decides");
    let call = sim.host.dispatched().into_iter().find(|d| d.cluster == "auth").expect("the auth service was asked");
    assert!(call.headers.iter().all(|(n, _)| n != "x-nebula-actor-id"), "nothing injected towards the auth service");
    sim.check();
    assert_eq!(jwt_counter(&mut sim, "keys_unavailable"), 2);
}

/// `forward: false` in `local_then_callout`: the auth service sees the token, the
/// upstream does not.
#[test]
fn forward_false_in_local_then_callout_shows_the_token_to_the_auth_service_only() {
    let mut config: serde_json::Value = serde_json::from_str(&config("local_then_callout")).unwrap();
    config["auth"]["request_headers"] = serde_json::json!(["authorization", "cookie"]);
    config["jwt"]["from_cookies"] = serde_json::json!(["jwt"]);
    config["jwt"]["forward"] = false.into();
    let mut sim = Sim::new(&config.to_string(), 1);
    let cookie = format!("jwt={}; theme=dark", token(false));
    let id = sim.send(spoofed_sub(b"/api/flows", &[("authorization", "Bearer t"), ("cookie", &cookie)]));
    sim.settle(|_, _| Answer::Allow.reply());
    let call = sim.host.dispatched().into_iter().find(|d| d.context == id).expect("local_then_callout asks");
    assert!(call.headers.contains(&("cookie".into(), cookie.clone())), "the auth service got {:?}", call.headers);
    let upstream = sim.streams[&id].upstream.clone().expect("allowed");
    let cookies: Vec<_> = upstream.iter().filter(|(n, _)| n == "cookie").map(|(_, v)| v.clone()).collect();
    assert_eq!(cookies, vec![b"theme=dark".to_vec()], "the upstream's cookie");
    assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
    sim.check();
}

/// OIDC discovery: a document naming keys on another host, or another issuer, is never
/// followed; only the documents are fetched, each failure is counted, and the provider's
/// tokens fail closed (no keys).
#[test]
fn a_discovery_document_naming_another_host_or_issuer_is_never_followed() {
    const ISS: &str = "https://login.example.com/realms/prefect";
    const OTHER: &str = "https://login.example.com/realms/other";
    let providers: Vec<serde_json::Value> = [ISS, OTHER]
        .iter()
        .map(|iss| {
            serde_json::json!({"issuer": iss, "discovery": {"cluster": "idp", "timeout_ms": 2000},
                "claims_to_headers": {"sub": "x-nebula-actor-id"}})
        })
        .collect();
    let config = serde_json::json!({"auth": {"cluster": "auth"}, "jwt": {"providers": providers}});
    let document = |issuer: &str, jwks_uri: &str| {
        serde_json::json!({"issuer": issuer, "jwks_uri": jwks_uri, "id_token_signing_alg_values_supported": ["ES256"]})
            .to_string()
    };
    let idp = |_: &str, sent: &[(String, String)]| {
        let path = sent.iter().find(|(n, _)| n == ":path").map(|(_, v)| v.as_str()).unwrap_or_default();
        let body = match path {
            "/realms/prefect/.well-known/openid-configuration" => {
                document(ISS, "https://keys.attacker.example.net/certs")
            }
            "/realms/other/.well-known/openid-configuration" => {
                document("https://login.example.com/realms/impostor", "https://login.example.com/certs")
            }
            other => panic!("fetched {other}: only the discovery documents may be"),
        };
        Some((super::pairs(&[(":status", "200")]), body.into_bytes()))
    };
    let mut sim = Sim::new(&config.to_string(), 1);
    sim.settle(idp);
    let key = ES256KeyPair::generate().with_key_id("es-1");
    for iss in [ISS, OTHER] {
        let mut claims = Claims::create(Duration::from_secs(600)).with_issuer(iss).with_subject("x");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000));
        claims.expires_at = Some(UnixTimeStamp::from_secs(exp()));
        let id = sim.send(spoofing(b"/api/flows", &[("authorization", &bearer(&key.sign(claims).unwrap()))]));
        sim.settle(idp);
        assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error), "{iss}: no keys could be found");
    }
    let fetched = sim.host.dispatched();
    assert!(fetched.len() >= 2, "{fetched:?}");
    assert!(fetched.iter().all(|d| d.cluster == "idp"), "no callout: local mode");
    sim.check();
    assert!(jwt_counter(&mut sim, "jwks_failures") >= 2);
}
