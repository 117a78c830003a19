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
fn ip_blocks_treat_a_peer_x_forwarded_for_may_have_named_as_unknown() {
    // On a sidecar (`use_remote_address: false`) `source.address` is the right-most
    // X-Forwarded-For entry the caller sent; Istio's ipBlocks and source.ip match the TCP
    // peer. When the address could have come from X-Forwarded-For, every such test holds.
    let config = with_policies(serde_json::json!({
        "policies": [{"rules": [
            {"to": [{"operation": {"paths": ["/in/*"]}}], "from": [{"source": {"ipBlocks": ["127.0.0.1"]}}]},
            {"to": [{"operation": {"paths": ["/out/*"]}}], "from": [{"source": {"notIpBlocks": ["127.0.0.2"]}}]},
            {"to": [{"operation": {"paths": ["/when/*"]}}], "when": [{"key": "source.ip", "values": ["10.9.0.0/16"]}]},
            {"to": [{"operation": {"paths": ["/whennot/*"]}}],
             "when": [{"key": "source.ip", "notValues": ["127.0.0.2"]}]},
        ]}]
    }));
    let mut sim = Sim::new(&config, 1);
    for (address, xff, path, checked) in [
        ("127.0.0.1:1000", "", "/in/x", true),
        ("127.0.0.2:1000", "", "/in/x", false),
        ("127.0.0.2:1000", "127.0.0.2", "/in/x", true),
        ("127.0.0.2:1000", "10.0.0.1, 127.0.0.2", "/in/x", true),
        ("127.0.0.2:1000", "10.0.0.1", "/in/x", false),
        ("127.0.0.2:1000", "not an address", "/in/x", false),
        ("[::ffff:127.0.0.2]:1000", "127.0.0.2", "/in/x", true),
        ("127.0.0.2:1000", "", "/out/x", false),
        ("127.0.0.2:1000", "127.0.0.2", "/out/x", true),
        ("127.0.0.2:1000", " 127.0.0.2 ", "/out/x", true),
        ("1.2.3.4:1000", "10.9.0.1, 1.2.3.4", "/when/x", true),
        ("1.2.3.4:1000", "", "/when/x", false),
        ("127.0.0.2:1000", "127.0.0.2", "/whennot/x", true),
        ("127.0.0.2:1000", "", "/whennot/x", false),
    ] {
        let id = sim.next_id_for_test();
        sim.host.set_property(id, "source.address", address.as_bytes());
        let extra: Vec<(&str, &str)> = if xff.is_empty() { vec![] } else { vec![("x-forwarded-for", xff)] };
        sim.send(request(path.as_bytes(), &extra));
        sim.settle(|_, _| Answer::Allow.reply());
        assert_eq!(callouts_by(&sim, id) == 1, checked, "{path} from {address}, X-Forwarded-For {xff:?}");
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

/// Two providers: `auth` (the preset's forwardAuth service) and `opa` (ext_authz),
/// `/api/*` checked by both, `/opa/*` by `opa` alone.
fn two_providers(cache: bool) -> String {
    let preset: serde_json::Value = serde_json::from_str(PREFECT).unwrap();
    let mut auth = preset["auth"].clone();
    auth["name"] = "auth".into();
    let opa = serde_json::json!({"name": "opa", "cluster": "opa", "protocol": "ext_authz",
        "upstream_headers": ["x-opa-decision"]});
    let mut config = serde_json::json!({
        "providers": [auth, opa],
        "policies": [
            {"name": "prefect/auth", "provider": "auth", "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]},
            {"name": "prefect/opa", "provider": "opa", "rules": [{"to": [{"operation": {"paths": ["/api/*", "/opa/*"]}}]}]}
        ]
    });
    if cache {
        config["cache"] = serde_json::json!({"entries": 64, "default_ttl": 30});
    }
    config.to_string()
}

fn opa_allow() -> Option<(crate::flow::mock_host::Pairs, Vec<u8>)> {
    Some((super::pairs(&[(":status", "200"), ("x-opa-decision", "ok"), ("cache-control", "max-age=60")]), vec![]))
}

/// The clusters stream `id` called, in order.
fn called(sim: &Sim, id: u32) -> Vec<String> {
    sim.host.dispatched().iter().filter(|d| d.context == id).map(|d| d.cluster.clone()).collect()
}

#[test]
fn a_request_two_providers_select_must_pass_each_in_order() {
    let answers = [Answer::Allow, Answer::Deny, Answer::Reset, Answer::ServerError];
    for first in answers {
        for second in answers {
            let mut sim = Sim::new(&two_providers(false), 1);
            let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
            let opa = move || if second.allows() { opa_allow() } else { second.reply() };
            sim.settle(|cluster, _| if cluster == "auth" { first.reply() } else { opa() });
            let case = format!("{first:?} then {second:?}");
            let expected: Vec<String> =
                if first.allows() { vec!["auth".into(), "opa".into()] } else { vec!["auth".into()] };
            assert_eq!(called(&sim, id), expected, "{case}: providers in order, the first deny ends it");
            let outcome = sim.outcome(id).unwrap();
            match (first.allows(), second.allows()) {
                (true, true) => {
                    assert_eq!(outcome, 0, "{case}");
                    let upstream = sim.streams[&id].upstream.clone().unwrap();
                    for header in [("x-nebula-actor-id", &b"alice"[..]), ("x-opa-decision", b"ok")] {
                        let values: Vec<&[u8]> =
                            upstream.iter().filter(|(n, _)| n == header.0).map(|(_, v)| v.as_slice()).collect();
                        assert_eq!(values, vec![header.1], "{case}: {upstream:?}");
                    }
                }
                _ => assert_ne!(outcome, 0, "{case}: fails closed or denied"),
            }
            // The second provider sees the request as the first's allow left it.
            if first.allows() {
                let sent = sim.host.dispatched().into_iter().find(|d| d.cluster == "opa").unwrap();
                assert!(sent.headers.iter().any(|(n, v)| n == ":path" && v == "/api/flows"), "{case}: {sent:?}");
            }
            sim.check();
        }
    }
    // Selected by one provider only: that one alone.
    let mut sim = Sim::new(&two_providers(false), 1);
    let id = sim.send(spoofing(b"/opa/x", &[]));
    sim.settle(|_, _| opa_allow());
    assert_eq!(called(&sim, id), vec!["opa".to_string()]);
    assert_eq!(sim.outcome(id), Some(0));
    let ui = sim.send(spoofing(b"/ui", &[]));
    assert_eq!((called(&sim, ui).len(), sim.outcome(ui)), (0, Some(0)), "no provider selects /ui");
    sim.check();
}

#[test]
fn each_provider_has_its_own_cache_key() {
    let mut sim = Sim::new(&two_providers(true), 1);
    let send = |sim: &mut Sim| sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    let first = send(&mut sim);
    sim.settle(|cluster, _| if cluster == "auth" { Answer::Allow.reply() } else { opa_allow() });
    assert_eq!(called(&sim, first), vec!["auth".to_string(), "opa".to_string()]);
    // The same request again: both decisions from the cache, neither taken for the other.
    let again = send(&mut sim);
    sim.settle(|_, _| panic!("no callout expected"));
    assert_eq!((called(&sim, again).len(), sim.outcome(again)), (0, Some(0)));
    let upstream = sim.streams[&again].upstream.clone().unwrap();
    assert!(upstream.contains(&("x-opa-decision".into(), b"ok".to_vec())), "{upstream:?}");
    assert!(upstream.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())), "{upstream:?}");
    assert_eq!(sim.counter(Metric::CacheHits), 2);
    // Only opa's policy selects /opa/: its own key, not auth's decision for the same callout.
    let opa_only = sim.send(spoofing(b"/opa/x", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| opa_allow());
    assert_eq!(called(&sim, opa_only), vec!["opa".to_string()]);
    sim.check();
}

#[test]
fn providers_configured_alike_keep_their_decisions_apart() {
    let provider =
        |name: &str| serde_json::json!({"name": name, "cluster": "auth", "upstream_headers": ["x-nebula-actor-id"]});
    let rule = serde_json::json!([{"to": [{"operation": {"paths": ["/api/*"]}}]}]);
    let config = serde_json::json!({
        "providers": [provider("a"), provider("b"), provider("c")],
        "policies": [{"provider": "a", "rules": rule}, {"provider": "b", "rules": rule}, {"provider": "c", "rules": rule}],
        "cache": {"entries": 64, "default_ttl": 30}
    });
    let mut sim = Sim::new(&config.to_string(), 1);
    let first = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(called(&sim, first).len(), 3, "b and c send the same callout; each asks for itself");
    // Each allow sets x-nebula-actor-id: the last replaces the earlier ones (forwardAuth adds
    // with one provider, where the strip step left no copy).
    let upstream = sim.streams[&first].upstream.clone().unwrap();
    let actors = upstream.iter().filter(|(n, _)| n == "x-nebula-actor-id").count();
    assert_eq!(actors, 1, "{upstream:?}");
    let again = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    assert_eq!((called(&sim, again).len(), sim.outcome(again)), (0, Some(0)), "all three from the cache");
    assert_eq!(sim.counter(Metric::Allows), 2, "one allow per request, not per provider");
    sim.check();
}

#[test]
fn a_listed_public_path_is_never_checked_and_the_empty_rule_checks_the_rest() {
    let config = with_policies(serde_json::json!({
        "public_paths": ["/api/health"],
        "policies": [{"rules": [{}]}, {"name": "no rules: selects nothing"}]
    }));
    let mut sim = Sim::new(&config, 1);
    let health = sim.send(spoofing(b"/api/health", &[]));
    let flows = sim.send(spoofing(b"/api/flows", &[]));
    let ui = sim.send(spoofing(b"/ui", &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(
        (callouts_by(&sim, health), callouts_by(&sim, flows), callouts_by(&sim, ui)),
        (0, 1, 1),
        "public first; {{}} matches every other request"
    );
    let config = with_policies(serde_json::json!({"policies": [{"name": "no rules"}]}));
    let mut sim = Sim::new(&config, 1);
    let flows = sim.send(spoofing(b"/api/flows", &[]));
    assert_eq!((callouts_by(&sim, flows), sim.outcome(flows)), (0, Some(0)), "a policy without rules selects nothing");
    sim.check();
}

#[test]
fn a_stale_allow_of_the_first_provider_still_goes_on_to_the_next() {
    let mut config: serde_json::Value = serde_json::from_str(&two_providers(true)).unwrap();
    config["cache"]["stale_if_error"] = 300.into();
    let mut sim = Sim::new(&config.to_string(), 1);
    let send = |sim: &mut Sim| sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    let first = send(&mut sim);
    sim.settle(|cluster, _| if cluster == "auth" { Answer::Allow.reply() } else { Answer::Deny.reply() });
    assert_ne!(sim.outcome(first), Some(0), "opa denies");
    // auth's allow expired and no callout can be sent: auth's answer is its stale allow,
    // and opa, which never allowed this request, must still be asked (and fail closed).
    sim.host.advance(61_000);
    sim.host.fail(crate::flow::mock_host::Fails::Dispatch);
    let again = send(&mut sim);
    sim.settle(|_, _| panic!("no callout can be sent"));
    assert_ne!(sim.outcome(again), Some(0), "a stale allow from auth let the request past opa");
    sim.check();
}

#[test]
fn each_provider_callout_is_timed_from_its_own_dispatch() {
    let mut sim = Sim::new(&two_providers(false), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    for (cluster, ms) in [("auth", 5), ("opa", 7)] {
        let pending = sim.pending();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].1, cluster);
        sim.host.advance(ms);
        sim.answer(pending[0].0, if cluster == "auth" { Answer::Allow.reply() } else { opa_allow() });
    }
    assert_eq!(sim.outcome(id), Some(0));
    let name = crate::metric_names::Histogram::CalloutTime.name();
    assert_eq!(sim.host.histogram(name), vec![5_000, 7_000], "opa's round trip, not the request's wait");
    assert_eq!(sim.host.histogram(crate::metric_names::Histogram::WaitCallout.name()), vec![12_000]);
    sim.check();
}

#[test]
fn an_unselected_request_that_fails_closed_is_counted_once() {
    let config = with_policies(serde_json::json!({
        "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
            "mode": "local_then_callout", "claims_to_headers": {"sub": "x-jwt-sub"}}]},
        "policies": [{"rules": [{"from": [{"source": {"notRequestPrincipals": ["https://idp/*"]}}]}]}]
    }));
    let mut sim = Sim::new(&config, 1);
    // Unselected, and its claim headers cannot be added: it fails closed, not public.
    sim.host.fail(crate::flow::mock_host::Fails::AddHeader);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", &format!("Bearer {}", hs256_token(false)))]));
    assert_ne!(sim.outcome(id), Some(0));
    assert_eq!((sim.counter(Metric::Public), sim.counter(Metric::Errors)), (0, 1));
    sim.check();
}

#[test]
fn every_provider_allow_adds_its_headers_to_the_client_response() {
    let provider = |name: &str| {
        serde_json::json!({"name": name, "cluster": name, "protocol": "ext_authz",
            "client_headers_on_success": [format!("x-{name}")]})
    };
    let config = serde_json::json!({
        "providers": [provider("a"), provider("b")],
        "policies": [{"provider": "a", "rules": [{}]}, {"provider": "b", "rules": [{}]}]
    });
    let mut sim = Sim::new(&config.to_string(), 1);
    let id = sim.send(spoofing(b"/api/flows", &[]));
    sim.settle(|cluster, _| {
        let header = format!("x-{cluster}");
        Some((super::pairs(&[(":status", "200"), (header.as_str(), cluster)]), vec![]))
    });
    assert_eq!(sim.outcome(id), Some(0));
    sim.response(id, super::pairs(&[(":status", "200")]));
    let response = sim.host.stream(id).response;
    for (name, value) in [("x-a", &b"a"[..]), ("x-b", b"b")] {
        assert!(response.contains(&(name.to_string(), value.to_vec())), "{name}: {response:?}");
    }
    sim.check();
}

#[test]
fn the_actor_an_earlier_provider_set_is_the_one_recorded() {
    let mut sim = Sim::new(&two_providers(false), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|cluster, _| if cluster == "auth" { Answer::Allow.reply() } else { opa_allow() });
    assert_eq!(called(&sim, id), vec!["auth".to_string(), "opa".to_string()]);
    let decisions = sim.decisions(id);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["actor"], "alice", "auth set it, opa kept it upstream: {decisions:?}");
    sim.check();
}

/// A property the host refuses to read is no absent property: a rule reading it could
/// have selected the request, so the request fails closed instead of going upstream
/// unchecked.
#[test]
fn a_refused_property_read_fails_the_request_closed() {
    let config = with_policies(serde_json::json!({
        "policies": [{"rules": [{"to": [{"operation": {"ports": ["8443"]}}]}]}]
    }));
    let mut sim = Sim::new(&config, 1);
    let id = sim.next_id_for_test();
    sim.host.set_property(id, "destination.port", &8443i64.to_le_bytes());
    sim.host.fail(crate::flow::mock_host::Fails::Property);
    sim.send(request(b"/api/flows", &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(callouts_by(&sim, id), 0, "no callout without the port");
    assert!(sim.outcome(id).is_some_and(|status| status >= 400), "failed closed, not upstream: {:?}", sim.outcome(id));
    assert_eq!(sim.counter(Metric::Errors), 1);
    sim.check();
}

/// Two providers with `client_headers_on_success` (Istio's `headersToDownstreamOnAllow`):
/// the client gets each allow's headers, the later provider's first, as istiod's two
/// ext_authz filters add theirs on the way back (the one nearer the router first); when
/// the later provider denies, its reply still carries the earlier allow's.
#[test]
fn each_allow_adds_its_client_headers_the_later_provider_first() {
    let mut config: serde_json::Value = serde_json::from_str(&two_providers(false)).unwrap();
    config["providers"][0] = serde_json::json!({"name": "auth", "cluster": "auth", "protocol": "ext_authz",
        "request_headers": ["authorization"], "upstream_headers": ["x-nebula-actor-id"]});
    for provider in 0..2 {
        config["providers"][provider]["client_headers_on_success"] = serde_json::json!(["set-cookie"]);
    }
    let answer = |cookie: &str| {
        Some((super::pairs(&[(":status", "200"), ("x-nebula-actor-id", "alice"), ("set-cookie", cookie)]), vec![]))
    };
    let cookies = |pairs: &[(String, Vec<u8>)]| -> Vec<Vec<u8>> {
        pairs.iter().filter(|(n, _)| n == "set-cookie").map(|(_, v)| v.clone()).collect()
    };
    let mut sim = Sim::new(&config.to_string(), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|cluster, _| if cluster == "auth" { answer("first=1") } else { answer("second=2") });
    assert_eq!(called(&sim, id), vec!["auth".to_string(), "opa".to_string()]);
    sim.response(id, super::pairs(&[(":status", "200"), ("set-cookie", "up=0")]));
    let response = sim.host.stream(id).response;
    assert_eq!(cookies(&response), vec![b"up=0".to_vec(), b"second=2".to_vec(), b"first=1".to_vec()], "{response:?}");
    sim.end(id);
    assert!(!sim.workers[0].kept.keeps("client_headers"));
    sim.check();
}

/// Only a request one provider checks leads or joins an identical callout. A request
/// several providers check sends its own even when another request leads the same
/// callout: its refused dispatch, or its stream going away, must leave the requests
/// waiting for the leader's callout waiting for the leader's answer.
#[test]
fn a_request_several_providers_check_leaves_anothers_waiters_alone() {
    let preset: serde_json::Value = serde_json::from_str(PREFECT).unwrap();
    let mut auth = preset["auth"].clone();
    auth["name"] = "auth".into();
    let config = serde_json::json!({
        "providers": [auth, {"name": "opa", "cluster": "opa", "protocol": "ext_authz"}],
        "cache": {"entries": 64, "default_ttl": 30},
        "policies": [
            {"provider": "auth", "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]},
            // A header the auth callout does not carry: the same auth callout either way.
            {"provider": "opa", "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}],
                "when": [{"key": "request.headers[x-route]", "values": ["opa"]}]}]}
        ]
    })
    .to_string();
    for refused in [true, false] {
        let case = if refused { "its dispatch refused" } else { "its stream gone" };
        let mut sim = Sim::new(&config, 1);
        let token = [("authorization", "Bearer t")];
        let leader = sim.send(request(b"/api/flows", &token));
        let waiter = sim.send(request(b"/api/flows", &token));
        assert_eq!(sim.pending().len(), 1, "{case}: the second request waits for the first's callout");
        if refused {
            sim.host.fail(crate::flow::mock_host::Fails::Dispatch);
        }
        let both = sim.send(request(b"/api/flows", &[token[0], ("x-route", "opa")]));
        if refused {
            assert_eq!(sim.outcome(both), Some(sim.settings.status_on_error), "{case}: fails closed");
            sim.host.recover(crate::flow::mock_host::Fails::Dispatch);
        } else {
            assert_eq!(called(&sim, both), vec!["auth".to_string()], "{case}: its own callout");
            sim.end(both);
        }
        assert_eq!(sim.outcome(waiter), None, "{case}: still waiting for the leader's callout");
        sim.settle(|_, _| Answer::Allow.reply());
        assert_eq!((sim.outcome(leader), sim.outcome(waiter)), (Some(0), Some(0)), "{case}");
        let auth_calls = sim.host.dispatched().iter().filter(|d| d.cluster == "auth").count();
        assert_eq!(auth_calls, if refused { 1 } else { 2 }, "{case}: no callout sent again for the leader's waiter");
        sim.check();
    }
}

/// Each provider's auth service owns the cookies its `add_auth_cookies_to_response`
/// names: the upstream's cookies of any of those names give way to the auth services'.
#[test]
fn every_provider_owns_the_cookies_it_names() {
    let provider = |name: &str, cookie: &str| serde_json::json!({"name": name, "cluster": name, "add_auth_cookies_to_response": [cookie]});
    let config = serde_json::json!({
        "providers": [provider("a", "sid_a"), provider("b", "sid_b")],
        "policies": [{"provider": "a", "rules": [{}]}, {"provider": "b", "rules": [{}]}]
    });
    let mut sim = Sim::new(&config.to_string(), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|cluster, _| {
        let cookie = format!("sid_{cluster}=from-{cluster}");
        Some((super::pairs(&[(":status", "200"), ("set-cookie", cookie.as_str())]), vec![]))
    });
    assert_eq!(sim.outcome(id), Some(0));
    sim.response(
        id,
        super::pairs(&[
            (":status", "200"),
            ("set-cookie", "sid_a=app"),
            ("set-cookie", "sid_b=app"),
            ("set-cookie", "app=1"),
        ]),
    );
    let cookies: Vec<String> = sim
        .host
        .stream(id)
        .response
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(cookies, ["app=1", "sid_a=from-a", "sid_b=from-b"]);
    sim.check();
}
