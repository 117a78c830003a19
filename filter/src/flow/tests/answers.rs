//! The auth service's answers the tests script, and the configurations they run under.

use crate::flow::mock_host::{End, Pairs};

use super::{pairs, request, Sim, SPOOF};

/// One kind of answer to a callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with identity headers and a cookie.
    Allow,
    /// 401 with a challenge and a body.
    Deny,
    /// 302 to the login page.
    Redirect,
    /// 500 from the auth service itself.
    ServerError,
    /// Envoy's own 504 for a callout past its timeout.
    Timeout,
    /// No headers at all: Envoy reset the call.
    Reset,
    /// Envoy's own 503 for a connection refused.
    Refused,
    /// No `:status`, or one that is not a number.
    Garbage,
}

pub const ALL: [Answer; 8] = [
    Answer::Allow,
    Answer::Deny,
    Answer::Redirect,
    Answer::ServerError,
    Answer::Timeout,
    Answer::Reset,
    Answer::Refused,
    Answer::Garbage,
];

impl Answer {
    pub fn reply(self) -> Option<(Pairs, Vec<u8>)> {
        let with = |headers: &[(&str, &str)], body: &str| Some((pairs(headers), body.as_bytes().to_vec()));
        match self {
            Answer::Allow => with(
                &[
                    (":status", "200"),
                    ("x-nebula-actor-id", "alice"),
                    ("x-nebula-actor-permissions", "read"),
                    ("set-cookie", "session=abc; Path=/"),
                    ("cache-control", "max-age=60"),
                ],
                "",
            ),
            Answer::Deny => {
                with(&[(":status", "401"), ("www-authenticate", "Bearer"), ("content-type", "text/plain")], "no")
            }
            Answer::Redirect => with(&[(":status", "302"), ("location", "/auth/login")], ""),
            Answer::ServerError => with(&[(":status", "500"), ("x-envoy-upstream-service-time", "1")], "oops"),
            Answer::Timeout => with(&[(":status", "504"), ("content-type", "text/plain")], "upstream request timeout"),
            Answer::Reset => None,
            Answer::Refused => with(
                &[(":status", "503"), ("content-type", "text/plain")],
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            Answer::Garbage => with(&[(":status", "abc"), ("x-nebula-actor-id", "mallory")], "<html>"),
        }
    }

    /// Whether the request goes upstream after this answer.
    pub fn allows(self) -> bool {
        self == Answer::Allow
    }
}

/// The Prefect preset (forwardAuth, the Prefect public paths).
pub const PREFECT: &str = include_str!("../../../../envoy/presets/prefect.json");

/// Configuration shapes: (name, JSON). Each keeps the Prefect identity headers, so the
/// spoofing checks apply to all.
pub fn configs() -> Vec<(&'static str, String)> {
    let prefect: serde_json::Value = serde_json::from_str(PREFECT).unwrap();
    let with = |patch: serde_json::Value| {
        let mut config = prefect.clone();
        merge(&mut config, &patch);
        config.to_string()
    };
    vec![
        ("prefect", prefect.to_string()),
        (
            "prefect+cache",
            with(serde_json::json!({"cache": {"entries": 64, "default_ttl": 30, "stale_if_error": 300}})),
        ),
        ("prefect+retry", with(serde_json::json!({"auth": {"retry_on_reset": true}}))),
        (
            "prefect+access",
            with(serde_json::json!({"source_ranges": ["10.0.0.0/8"],
                "public_paths": ["/auth", {"path": "/hooks", "source_ranges": ["192.168.0.0/16"]}]})),
        ),
        (
            "ext_authz",
            serde_json::json!({"auth": {"cluster": "auth", "protocol": "ext_authz",
                "upstream_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions",
                    "x-nebula-ratelimit-config", "x-nebula-log-limit-config"]},
                "public_paths": prefect["public_paths"].clone()})
            .to_string(),
        ),
        (
            "ext_authz+cache",
            serde_json::json!({"auth": {"cluster": "auth", "protocol": "ext_authz",
                "upstream_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions",
                    "x-nebula-ratelimit-config", "x-nebula-log-limit-config"]},
                "cache": {"entries": 64},
                "public_paths": prefect["public_paths"].clone()})
            .to_string(),
        ),
        (
            "ext_authz+body",
            serde_json::json!({"auth": {"cluster": "auth", "protocol": "ext_authz",
                "upstream_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions",
                    "x-nebula-ratelimit-config", "x-nebula-log-limit-config"],
                "with_request_body": {"max_request_bytes": 16, "allow_partial_message": true}},
                "public_paths": prefect["public_paths"].clone()})
            .to_string(),
        ),
        ("prefect+forward_body", with(serde_json::json!({"auth": {"forward_body": true, "max_body_size": 16}}))),
        ("prefect+jwt-local", with(jwt_block("local"))),
        ("prefect+jwt-then-callout", with(jwt_block("local_then_callout"))),
    ]
}

/// The HS256 secret of the JWT shapes.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn jwt_block(mode: &str) -> serde_json::Value {
    serde_json::json!({"jwt": {"providers": [{"issuer": "https://idp",
        "secret": String::from_utf8(SECRET.to_vec()).unwrap(), "mode": mode,
        "claims_to_headers": {"sub": "x-jwt-sub"}}]}})
}

/// A token of the JWT shapes' provider, valid at [`NOW_MS`](super::NOW_MS) or expired.
pub fn hs256_token(expired: bool) -> String {
    use jwt_simple::prelude::*;
    let key = HS256Key::from_bytes(SECRET);
    let now = super::NOW_MS / 1000;
    let mut claims = Claims::create(Duration::from_secs(600)).with_issuer("https://idp").with_subject("dave");
    claims.issued_at = Some(UnixTimeStamp::from_secs(now - 1200));
    claims.expires_at = Some(UnixTimeStamp::from_secs(if expired { now - 600 } else { now + 600 }));
    key.authenticate(claims).unwrap()
}

fn merge(into: &mut serde_json::Value, patch: &serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(into), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                match into.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
                    _ => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

fn with(status: &str, extra: &[(&str, &str)], body: &str) -> Option<(Pairs, Vec<u8>)> {
    let mut headers = pairs(&[(":status", status)]);
    headers.extend(pairs(extra));
    Some((headers, body.as_bytes().to_vec()))
}

/// `allow_statuses`, `upstream_headers` and `client_headers` as configured: only the
/// listed headers go upstream (the client's copies removed even when the allow sets
/// none), a listed 2xx allows, and a denial relays only the listed headers.
#[test]
fn configured_allow_statuses_and_header_lists() {
    let config = r#"{"auth": {"cluster": "auth", "allow_statuses": [200, 204],
        "upstream_headers": ["x-nebula-actor-id", "x-other"], "client_headers": ["www-authenticate"]}}"#;
    let mut sim = Sim::new(config, 1);
    let allow = with(
        "200",
        &[
            ("x-nebula-actor-id", "bob"),
            ("x-nebula-actor-permissions", "read,write"),
            ("x-nebula-ratelimit-config", "rl-bob"),
            ("x-nebula-log-limit-config", "ll-bob"),
            ("x-other", "leak"),
        ],
        "ok",
    );
    let bob = sim.send(request(b"/api/flows", &[("authorization", "Bearer bob")]));
    sim.settle(|_, _| allow.clone());
    let up = sim.streams[&bob].upstream.clone().expect("allow: upstream");
    let named = |up: &Pairs, name: &str| -> Vec<Vec<u8>> {
        up.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
    };
    assert_eq!(named(&up, "x-nebula-actor-id"), vec![b"bob".to_vec()]);
    assert_eq!(named(&up, "x-other"), vec![b"leak".to_vec()]);
    for name in ["x-nebula-actor-permissions", "x-nebula-ratelimit-config", "x-nebula-log-limit-config"] {
        assert!(named(&up, name).is_empty(), "allow: unconfigured {name} reached the upstream");
    }
    // 204 is listed: it allows, with no identity, and the client's copy is still removed.
    let spoofed = sim.send(request(b"/api/flows", &[("authorization", "Bearer x"), ("x-nebula-actor-id", SPOOF)]));
    sim.settle(|_, _| with("204", &[], ""));
    let up = sim.streams[&spoofed].upstream.clone().expect("204 is in allow_statuses");
    assert!(named(&up, "x-nebula-actor-id").is_empty(), "204 allow: the spoofed actor must be stripped");
    // A denial relays only client_headers.
    let denied = sim.send(request(b"/api/flows", &[("authorization", "Bearer deny")]));
    let deny = with(
        "401",
        &[("www-authenticate", "Bearer realm=\"prefect\""), ("content-type", "application/json"), ("x-internal", "1")],
        r#"{"detail":"unauthorized"}"#,
    );
    sim.settle(|_, _| deny.clone());
    let ends = sim.host.stream(denied).ends;
    let [End::Reply { status: 401, headers, .. }] = ends.as_slice() else { panic!("deny: {ends:?}") };
    let relayed = |name: &str| headers.iter().filter(|(n, _)| n == name).count();
    assert_eq!(relayed("www-authenticate"), 1, "deny: www-authenticate is configured: {headers:?}");
    assert!(!headers.contains(&("content-type".into(), "application/json".into())), "content-type is not");
    assert_eq!(relayed("x-internal"), 0, "deny: x-internal leaked");
    // 200 still allows.
    let plain = sim.send(request(b"/api/flows", &[("authorization", "Bearer ok")]));
    sim.settle(|_, _| with("200", &[], ""));
    assert_eq!(sim.outcome(plain), Some(0));
    sim.check();
}
