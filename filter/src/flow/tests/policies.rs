//! `policies` through whole requests: a request no rule selects never reaches the auth
//! service and still loses the client's identity headers; a request any reading of
//! which a rule selects always reaches it, whatever its spelling; the connection facts
//! (`remoteIpBlocks` behind `trusted_proxies`) and the JWT step's claims
//! (`requestPrincipals`) decide as configured.

use super::answers::{hs256_token, Answer, PREFECT, SECRET};
use super::requests::{internal_spellings, path_table};
use super::{request, spoofing, Sim};
use crate::access::interpretations::{interpretations, Interpretations};
use crate::metric_names::Metric;

/// The Prefect preset's provider, with `policies` instead of public paths.
fn with_policies(extra: serde_json::Value) -> String {
    let mut config: serde_json::Value = serde_json::from_str(PREFECT).unwrap();
    let object = config.as_object_mut().unwrap();
    object.remove("public_paths");
    for (key, value) in extra.as_object().unwrap() {
        object.insert(key.clone(), value.clone());
    }
    config.to_string()
}

fn callouts_by(sim: &Sim, id: u32) -> usize {
    sim.host.dispatched().iter().filter(|d| d.context == id).count()
}

/// Whether some reading of `target` is under `/api/` (the oracle: every parser's view).
fn some_reading_under_api(target: &[u8]) -> bool {
    match interpretations(target) {
        Interpretations::Paths(paths) => paths.iter().any(|p| p.starts_with("/api/")),
        Interpretations::TooMany => true,
    }
}

#[test]
fn selected_spellings_are_checked_and_unselected_requests_never_are() {
    let config = with_policies(serde_json::json!({
        "policies": [{"name": "prefect/ext-authz", "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}]
    }));
    let mut targets: Vec<Vec<u8>> = path_table().into_iter().map(|(_, target, _)| target).collect();
    targets.extend(internal_spellings());
    targets.extend([b"/ui/flows".to_vec(), b"/api".to_vec(), b"/x/../api/flows".to_vec(), b"/%61pi/flows".to_vec()]);
    let (mut checked, mut unchecked) = (0, 0);
    for answer in [Answer::Allow, Answer::Deny] {
        let mut sim = Sim::new(&config, 1);
        for target in &targets {
            let id = sim.send(spoofing(target, &[]));
            sim.settle(|_, _| answer.reply());
            let sent = callouts_by(&sim, id);
            let shown = String::from_utf8_lossy(target);
            if some_reading_under_api(target) {
                assert_eq!(sent, 1, "{shown}: a reading is under /api/, so it is checked");
                assert_eq!(sim.outcome(id), Some(if answer.allows() { 0 } else { 401 }), "{shown}");
                checked += 1;
            } else {
                // The filter may check more than the oracle (a trailing slash is also the path
                // without it), never less; what it leaves unchecked goes upstream.
                if sent == 0 {
                    assert_eq!(sim.outcome(id), Some(0), "{shown}: unselected goes upstream");
                    unchecked += 1;
                }
            }
        }
        sim.check();
        assert!(sim.counter(Metric::Public) > 0, "unselected requests are counted with the public ones");
    }
    assert!(checked > 20 && unchecked > 20, "{checked} checked, {unchecked} unchecked");
}

#[test]
fn not_paths_exclude_only_a_canonical_path() {
    let config = with_policies(serde_json::json!({
        "policies": [{"rules": [{"to": [{"operation": {"notPaths": ["/api/health", "/ui/*"]}}]}]}]
    }));
    let mut sim = Sim::new(&config, 1);
    for (target, checked) in [
        (&b"/api/health"[..], false),
        (b"/ui/assets/app.js", false),
        (b"/api/flows", true),
        (b"/api/health/../flows", true),
        (b"//api/health", true),
        (b"/ui/../api/flows", true),
        (b"/%75i/x", true),
        (b"/api/health/", true),
    ] {
        let id = sim.send(spoofing(target, &[]));
        sim.settle(|_, _| Answer::Allow.reply());
        let shown = String::from_utf8_lossy(target);
        assert_eq!(callouts_by(&sim, id) == 1, checked, "{shown}");
        assert_eq!(sim.outcome(id), Some(0), "{shown}");
    }
    sim.check();
}

#[test]
fn remote_ip_blocks_read_x_forwarded_for_only_behind_trusted_proxies() {
    let config = with_policies(serde_json::json!({
        "trusted_proxies": ["10.0.0.0/8"],
        "policies": [{"rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}]
    }));
    let mut sim = Sim::new(&config, 1);
    for (peer, xff, checked) in [
        ("10.0.0.5:1000", "203.0.113.7", true),
        ("10.0.0.5:1000", "198.51.100.1", false),
        ("10.0.0.5:1000", "203.0.113.7, 198.51.100.1", false),
        ("198.51.100.1:1000", "203.0.113.7", false),
        ("203.0.113.9:1000", "", true),
    ] {
        let id = sim.next_id_for_test();
        sim.host.set_property(id, "source.address", peer.as_bytes());
        let extra: Vec<(&str, &str)> = if xff.is_empty() { vec![] } else { vec![("x-forwarded-for", xff)] };
        sim.send(request(b"/api/flows", &extra));
        sim.settle(|_, _| Answer::Allow.reply());
        assert_eq!(callouts_by(&sim, id) == 1, checked, "{peer} {xff}");
    }
    sim.check();
}

#[test]
fn request_principals_read_the_token_the_jwt_step_verified() {
    let config = |rule: serde_json::Value| {
        with_policies(serde_json::json!({
            "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
                "mode": "local_then_callout", "claims_to_headers": {"sub": "x-jwt-sub"}}]},
            "policies": [{"rules": [rule]}]
        }))
    };
    let bearer = format!("Bearer {}", hs256_token(false));
    // Selected by the verified token's iss/sub.
    let mut sim =
        Sim::new(&config(serde_json::json!({"from": [{"source": {"requestPrincipals": ["https://idp/dave"]}}]})), 1);
    let with_token = sim.send(spoofing(b"/api/flows", &[("authorization", &bearer)]));
    let without = sim.send(spoofing(b"/api/flows", &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!((callouts_by(&sim, with_token), callouts_by(&sim, without)), (1, 0));
    // Excluded by it: upstream unchecked, with the claim headers a valid token brings.
    let mut sim =
        Sim::new(&config(serde_json::json!({"from": [{"source": {"notRequestPrincipals": ["https://idp/*"]}}]})), 1);
    let excluded = sim.send(spoofing(b"/api/flows", &[("authorization", &bearer)]));
    let anonymous = sim.send(spoofing(b"/api/flows", &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!((callouts_by(&sim, excluded), callouts_by(&sim, anonymous)), (0, 1));
    let upstream = sim.streams[&excluded].upstream.clone().unwrap();
    assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
    // An invalid token is refused whether or not a rule selects the request.
    let expired = sim.send(spoofing(b"/ui", &[("authorization", &format!("Bearer {}", hs256_token(true)))]));
    assert_eq!(sim.outcome(expired), Some(401));
}

/// Properties of one stream: (path, value).
type Properties<'a> = &'a [(&'a str, &'a [u8])];

#[test]
fn the_connection_properties_rules_read() {
    let config = with_policies(serde_json::json!({
        "policies": [{"rules": [
            {"to": [{"operation": {"ports": ["8443"]}}]},
            {"from": [{"source": {"principals": ["cluster.local/ns/prefect/sa/web"]}}]},
            {"when": [{"key": "destination.ip", "values": ["10.9.0.0/16"]}, {"key": "connection.sni", "values": ["*.internal"]}]}
        ]}]
    }));
    let mut sim = Sim::new(&config, 1);
    let cases: [(Properties, bool); 6] = [
        (&[("destination.port", &8443i64.to_le_bytes())], true),
        (&[("destination.port", &8080i64.to_le_bytes())], false),
        (
            &[
                ("connection.mtls", &[1]),
                ("connection.uri_san_peer_certificate", b"spiffe://cluster.local/ns/prefect/sa/web"),
            ],
            true,
        ),
        (
            &[
                ("connection.mtls", &[0]),
                ("connection.uri_san_peer_certificate", b"spiffe://cluster.local/ns/prefect/sa/web"),
            ],
            false,
        ),
        (&[("destination.address", b"10.9.1.1:80"), ("connection.requested_server_name", b"a.internal")], true),
        (&[("destination.address", b"10.8.1.1:80"), ("connection.requested_server_name", b"a.internal")], false),
    ];
    for (properties, checked) in cases {
        let id = sim.next_id_for_test();
        for (path, value) in properties {
            sim.host.set_property(id, path, value);
        }
        sim.send(request(b"/api/flows", &[]));
        sim.settle(|_, _| Answer::Allow.reply());
        assert_eq!(callouts_by(&sim, id) == 1, checked, "{properties:?}");
    }
    sim.check();
}
