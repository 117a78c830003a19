//! Interleavings only several streams or workers produce: identical callouts coalescing,
//! a stream going away while others wait for its callout, a JWKS fetch finishing on
//! another worker, a lost compare-and-swap, a decision shared through the cache, bodies
//! that come late or never.

use jwt_simple::prelude::*;

use super::answers::{configs, Answer, PREFECT};
use super::{pairs, request, spoofing, Sim, NOW_MS};
use crate::flow::mock_host::End;
use crate::flow::Flow;
use crate::metric_names::Metric;

fn config(name: &str) -> String {
    configs().into_iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn identical_requests_share_one_callout() {
    for answer in [Answer::Allow, Answer::Deny, Answer::Reset] {
        let mut sim = Sim::new(&config("prefect+cache"), 1);
        let a = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
        let b = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
        let c = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer other")]));
        assert_eq!(sim.pending().len(), 2, "b waits for a's callout");
        sim.settle(|_, _| answer.reply());
        sim.check();
        assert_eq!(sim.counter(Metric::Coalesced), 1);
        assert_eq!(sim.outcome(a), sim.outcome(b), "{answer:?}: a waiter gets the leader's decision");
        assert!(sim.outcome(c).is_some());
    }
}

#[test]
fn a_leader_going_away_hands_its_callout_to_the_root() {
    let mut sim = Sim::new(&config("prefect+cache"), 1);
    let leader = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
    let waiter = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
    let (first, _) = sim.pending()[0].clone();
    sim.end(leader);
    // Envoy cancels the deleted context's call; the root sends it again on its tick.
    sim.answer(first, None);
    assert_eq!(sim.host.stream(waiter).ends, vec![], "the cancelled call settles nobody");
    assert_eq!(sim.host.tick_period(), Some(std::time::Duration::from_millis(1)));
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert_eq!(sim.host.stream(waiter).ends, vec![End::Resume]);
    assert_eq!(sim.host.dispatched().len(), 2);
    assert_eq!(sim.host.dispatched()[1].context, super::root(0), "sent again by the root context");
}

#[test]
fn a_waiter_going_away_is_not_settled() {
    let mut sim = Sim::new(&config("prefect+cache"), 1);
    let leader = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
    let waiter = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer same")]));
    sim.end(waiter);
    sim.settle(|_, _| Answer::Deny.reply());
    sim.check();
    assert_eq!(sim.outcome(leader), Some(401));
    assert_eq!(sim.host.stream(waiter).ends, vec![]);
    assert!(!sim.host.calls_in(waiter).contains(&"reply"));
}

#[test]
fn a_decision_is_shared_between_workers_through_the_cache() {
    let mut sim = Sim::new(&config("prefect+cache"), 2);
    let first = sim.send_on(0, request(b"/api/flows", &[("authorization", "Bearer t")]), true);
    sim.settle(|_, _| Answer::Allow.reply());
    let second = sim.send_on(1, spoofing(b"/api/flows", &[("authorization", "Bearer t")]), true);
    assert_eq!(sim.streams[&second].first, Flow::Continue, "worker 1 read worker 0's decision");
    assert_eq!(sim.host.dispatched().len(), 1);
    sim.check();
    assert_eq!(sim.outcome(first), Some(0));
    assert_eq!(sim.counter(Metric::CacheHits), 1);
    // A denial for the same key on another worker ends the shared allow.
    sim.host.advance(61_000);
    let third = sim.send_on(1, request(b"/api/flows", &[("authorization", "Bearer t")]), true);
    sim.settle(|_, _| Answer::Deny.reply());
    assert_eq!(sim.outcome(third), Some(401));
    let fourth = sim.send_on(0, request(b"/api/flows", &[("authorization", "Bearer t")]), true);
    assert_eq!(sim.streams[&fourth].first, crate::flow::Flow::Pause, "no allow served after the denial");
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
}

#[test]
fn stale_if_error_serves_an_expired_allow_only_on_failure() {
    let mut sim = Sim::new(&config("prefect+cache"), 1);
    sim.send(request(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Allow.reply());
    sim.host.advance(61_000);
    let failing = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Reset.reply());
    assert_eq!(sim.outcome(failing), Some(0));
    let denied = sim.send(request(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Deny.reply());
    assert_eq!(sim.outcome(denied), Some(401));
    let after = sim.send(request(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Reset.reply());
    assert_ne!(sim.outcome(after), Some(0), "a denial ends what stale_if_error may serve");
    sim.check();
    assert_eq!(sim.counter(Metric::CacheStaleServed), 1);
}

#[test]
fn a_refused_dispatch_fails_closed_at_once() {
    for (name, config) in configs() {
        let mut sim = Sim::new(&config, 1);
        sim.host.fail(crate::flow::mock_host::Fails::Dispatch);
        let id = sim.next_id_for_test();
        sim.host.set_property(id, "source.address", b"10.0.0.1:1");
        sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
        assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error), "{name}");
        sim.check();
    }
}

#[test]
fn a_reset_callout_is_retried_once_within_the_timeout() {
    let mut sim = Sim::new(&config("prefect+retry"), 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    let mut answers = vec![Answer::Refused, Answer::Allow].into_iter();
    sim.settle(|_, _| answers.next().unwrap().reply());
    sim.check();
    assert_eq!(sim.outcome(id), Some(0));
    assert_eq!(sim.counter(Metric::CalloutRetries), 1);
    // Twice refused: the second failure stands.
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Refused.reply());
    sim.check();
    assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error));
    assert_eq!(sim.counter(Metric::CalloutRetries), 2);
}

/// Only Envoy's reply for a connection reset or refused before any answer is sent again:
/// an answered status (a real 503 included), Envoy's timeout and garbage never are. The
/// retry gets what is left of `timeout_ms`, and `retry_on_reset: false` turns it off,
/// Envoy's own retry included.
#[test]
fn only_a_reset_or_refused_callout_is_retried_within_what_is_left_of_the_timeout() {
    let answered =
        |status: &str| Some((pairs(&[(":status", status), ("x-envoy-upstream-service-time", "1")]), Vec::new()));
    let cases = [
        ("503 from the auth service", answered("503")),
        ("500", answered("500")),
        ("502", answered("502")),
        ("401", answered("401")),
        ("Envoy's timeout", Answer::Timeout.reply()),
        ("garbage", Answer::Garbage.reply()),
        ("no headers", Answer::Reset.reply()),
    ];
    let config = r#"{"auth": {"cluster": "auth", "timeout_ms": 1000}}"#;
    for (case, reply) in cases {
        let mut sim = Sim::new(config, 1);
        let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
        sim.settle(|_, _| reply.clone());
        assert_ne!(sim.outcome(id), Some(0), "{case}");
        assert_eq!(sim.host.dispatched().len(), 1, "{case}: never retried");
        assert_eq!(sim.counter(Metric::CalloutRetries), 0, "{case}");
        sim.check();
    }
    // Reset 800 ms into a 1000 ms budget: the retry gets the 200 ms left, and asks Envoy
    // to retry it once more itself.
    let mut sim = Sim::new(config, 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    let (first, _) = sim.pending()[0];
    let call = sim.host.call(first).unwrap();
    assert!(call.headers.contains(&("x-envoy-retry-on".into(), "reset,connect-failure".into())), "{:?}", call.headers);
    assert_eq!(call.timeout, std::time::Duration::from_millis(1000));
    sim.host.advance(800);
    sim.answer(first, Answer::Refused.reply());
    let (retry, _) = sim.pending()[0];
    let call = sim.host.call(retry).unwrap();
    assert_eq!(call.timeout, std::time::Duration::from_millis(200), "what is left of timeout_ms");
    assert!(call.headers.contains(&("x-envoy-retry-on".into(), "reset,connect-failure".into())));
    sim.answer(retry, Answer::Allow.reply());
    assert_eq!(sim.outcome(id), Some(0));
    sim.check();
    // retry_on_reset: false: neither the filter nor Envoy (no retry header) sends it again.
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth", "retry_on_reset": false}}"#, 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| Answer::Refused.reply());
    assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error), "reset, no retry");
    let calls = sim.host.dispatched();
    assert_eq!(calls.len(), 1, "the filter did not retry");
    assert!(calls[0].headers.iter().all(|(n, _)| !n.starts_with("x-envoy-retry")), "no retry asked of Envoy");
    assert_eq!(sim.counter(Metric::CalloutRetries), 0);
    sim.check();
}

const BODY: &str = r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "timeout_ms": 2000,
    "with_request_body": {"max_request_bytes": 8}}}"#;

#[test]
fn a_body_goes_with_the_callout_once_complete() {
    let mut sim = Sim::new(BODY, 1);
    let id = sim.send_on(0, request(b"/api/flows", &[("content-length", "6")]), false);
    assert!(sim.pending().is_empty(), "the callout waits for the body");
    assert_eq!(sim.body(id, b"abc", false), Flow::Pause);
    assert_eq!(sim.body(id, b"def", true), Flow::Pause);
    let call = sim.host.dispatched()[0].clone();
    assert_eq!(call.body.as_deref(), Some(&b"abcdef"[..]));
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert_eq!(sim.outcome(id), Some(0));
    // Over the limit: 413, no callout.
    let big = sim.send_on(0, request(b"/api/flows", &[]), false);
    sim.body(big, b"0123456789", true);
    assert_eq!(sim.outcome(big), Some(413));
    assert_eq!(sim.host.dispatched().len(), 1);
    // Trailers end a body whose last chunk did not.
    let trailing = sim.send_on(0, request(b"/api/flows", &[]), false);
    sim.body(trailing, b"ab", false);
    sim.trailers(trailing, pairs(&[("x-t", "1")]));
    assert_eq!(sim.host.dispatched().len(), 2);
    sim.settle(|_, _| Answer::Deny.reply());
    sim.check();
}

#[test]
fn a_body_that_never_comes_fails_closed_after_the_timeout() {
    let mut sim = Sim::new(BODY, 1);
    let id = sim.send_on(0, request(b"/api/flows", &[]), false);
    sim.tick(0);
    assert_eq!(sim.outcome(id), None);
    sim.host.advance(2_001);
    sim.tick(0);
    assert_eq!(sim.outcome(id), Some(500));
    sim.check();
    // Once a body callback came on this worker, the guard is off for good.
    let slow = sim.send_on(0, request(b"/api/flows", &[]), false);
    sim.body(slow, b"a", false);
    let later = sim.send_on(0, request(b"/api/flows", &[]), false);
    sim.host.advance(10_000);
    sim.tick(0);
    assert_eq!(sim.outcome(later), None);
    sim.end(slow);
    sim.end(later);
    sim.check();
}

/// A JWT configuration with remote keys, and a token for them.
fn remote_jwks() -> (String, ES256KeyPair, serde_json::Value) {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    jwk["kid"] = "k1".into();
    let config = serde_json::json!({"auth": {"cluster": "auth"},
        "jwt": {"providers": [{"issuer": "https://idp", "remote_jwks": {"cluster": "idp", "path": "/keys"},
            "claims_to_headers": {"sub": "x-nebula-actor-id"}}]}})
    .to_string();
    (config, key, serde_json::json!({"keys": [jwk]}))
}

fn es_token(key: &ES256KeyPair) -> String {
    let mut claims = Claims::create(Duration::from_secs(600)).with_issuer("https://idp").with_subject("carol");
    claims.issued_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000));
    claims.expires_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000 + 600));
    key.sign(claims).unwrap()
}

#[test]
fn a_jwks_fetch_finishing_on_another_worker_wakes_the_waiter() {
    let (config, key, jwks) = remote_jwks();
    let mut sim = Sim::new(&config, 2);
    let bearer = format!("Bearer {}", es_token(&key));
    let fetching = sim.send_on(0, spoofing(b"/api/flows", &[("authorization", &bearer)]), true);
    let waiting = sim.send_on(1, spoofing(b"/api/flows", &[("authorization", &bearer)]), true);
    assert_eq!(sim.pending().len(), 1, "one fetch per Envoy: worker 1 waits for worker 0's");
    assert_eq!(sim.host.tick_period(), Some(crate::flow::steps::jwks_wait::WAIT_TICK));
    let body = jwks.to_string();
    sim.settle(|cluster, _| {
        assert_eq!(cluster, "idp");
        Some((pairs(&[(":status", "200")]), body.clone().into_bytes()))
    });
    sim.check();
    for id in [fetching, waiting] {
        assert_eq!(sim.outcome(id), Some(0), "{id}");
        let upstream = sim.streams[&id].upstream.clone().unwrap();
        assert!(upstream.contains(&("x-nebula-actor-id".into(), b"carol".to_vec())), "{upstream:?}");
    }
}

/// A rotated key reaching both workers while one fetch of the JWKS is in flight: every
/// request waits for that one fetch (none judges the token on the old keys), and each goes
/// upstream with its own claim; when the next fetch fails, the waiters get the filter's
/// 401 (the old keys stay, the kid is still unknown) instead of hanging.
#[test]
fn a_rotated_kid_on_both_workers_waits_for_one_fetch_and_its_failure_answers_all() {
    let (config, k1, jwks) = remote_jwks();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["jwt"]["providers"][0]["remote_jwks"]["min_refresh_interval_ms"] = 0.into();
    let mut sim = Sim::new(&config.to_string(), 2);
    let first = sim.send(request(b"/api/flows", &[("authorization", &format!("Bearer {}", es_token(&k1)))]));
    let body = jwks.to_string();
    sim.settle(|_, _| Some((pairs(&[(":status", "200")]), body.clone().into_bytes())));
    assert_eq!(sim.outcome(first), Some(0));
    // k2 joins the JWKS.
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let mut jwk2: serde_json::Value = serde_json::from_str(&k2.public_key().to_jwk()).unwrap();
    jwk2["kid"] = "k2".into();
    let rotated = serde_json::json!({"keys": [jwks["keys"][0].clone(), jwk2]}).to_string();
    let sign = |key: &ES256KeyPair, sub: &str| {
        let mut claims = Claims::create(Duration::from_secs(600)).with_issuer("https://idp").with_subject(sub);
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000));
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW_MS / 1000 + 600));
        format!("Bearer {}", key.sign(claims).unwrap())
    };
    let ids: Vec<(u32, String)> = (0..6)
        .map(|i| {
            let sub = format!("rotated-{i}");
            (sim.send_on(i % 2, spoofing(b"/api/flows", &[("authorization", &sign(&k2, &sub))]), true), sub)
        })
        .collect();
    assert_eq!(sim.pending().len(), 1, "one fetch for the new kid, whichever worker it reached");
    sim.settle(|_, _| Some((pairs(&[(":status", "200")]), rotated.clone().into_bytes())));
    for (id, sub) in &ids {
        let upstream = sim.streams[id].upstream.clone().unwrap_or_else(|| panic!("{sub}: not upstream"));
        let subs: Vec<_> = upstream.iter().filter(|(n, _)| n == "x-nebula-actor-id").collect();
        assert_eq!(subs, vec![&("x-nebula-actor-id".to_string(), sub.as_bytes().to_vec())], "its own claim");
    }
    assert_eq!(sim.host.dispatched().len(), 2);
    // k3 is unknown and the endpoint fails: one fetch, every waiter answered 401.
    let k3 = ES256KeyPair::generate().with_key_id("k3");
    let ids: Vec<u32> = (0..6)
        .map(|i| sim.send_on(i % 2, spoofing(b"/api/flows", &[("authorization", &sign(&k3, "x"))]), true))
        .collect();
    assert_eq!(sim.pending().len(), 1);
    sim.settle(|_, _| Answer::ServerError.reply());
    for id in ids {
        assert_eq!(sim.outcome(id), Some(401), "unknown kid after a failed fetch");
    }
    assert_eq!(sim.host.dispatched().len(), 3, "one failed fetch for all of them");
    sim.check();
}

#[test]
fn a_waiter_whose_stream_went_away_is_not_woken() {
    let (config, key, jwks) = remote_jwks();
    let mut sim = Sim::new(&config, 2);
    let bearer = format!("Bearer {}", es_token(&key));
    sim.send_on(0, request(b"/api/flows", &[("authorization", &bearer)]), true);
    let waiting = sim.send_on(1, request(b"/api/flows", &[("authorization", &bearer)]), true);
    sim.end(waiting);
    let body = jwks.to_string();
    sim.settle(|_, _| Some((pairs(&[(":status", "200")]), body.clone().into_bytes())));
    sim.check();
    assert_eq!(sim.host.stream(waiting).ends, vec![]);
}

#[test]
fn a_lost_lease_race_neither_fetches_nor_allows() {
    let (config, key, _) = remote_jwks();
    let mut sim = Sim::new(&config, 1);
    // Another worker wins the compare-and-swap on the fetch lease.
    sim.host.cas_conflicts(1);
    let id = sim.send(request(b"/api/flows", &[("authorization", &format!("Bearer {}", es_token(&key)))]));
    assert!(sim.pending().is_empty(), "the loser does not fetch");
    assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error), "no keys, local mode: fails closed");
    sim.check();
}

#[test]
fn a_failed_jwks_fetch_keeps_failing_closed() {
    let (config, key, _) = remote_jwks();
    let mut sim = Sim::new(&config, 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", &format!("Bearer {}", es_token(&key)))]));
    sim.settle(|_, _| Answer::ServerError.reply());
    sim.check();
    assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error));
}

#[test]
fn the_prefect_preset_under_two_workers_and_resets() {
    let mut sim = Sim::new(PREFECT, 2);
    let ids: Vec<u32> =
        (0..6).map(|i| sim.send_on(i % 2, spoofing(b"/api/flows", &[("authorization", "Bearer t")]), true)).collect();
    sim.end(ids[0]);
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert_eq!(sim.counter(Metric::Allows), 5);
}

/// Every host call the flow makes can be refused: the request then fails closed (never
/// goes upstream with a stripped header back, a claim missing, or an unread answer),
/// and the invariants hold.
#[test]
fn a_refused_host_call_fails_closed() {
    use crate::flow::host::Map;
    use crate::flow::mock_host::Fails;
    let refusals = [
        Fails::HeaderMap(Map::RequestHeaders),
        Fails::HeaderMap(Map::CalloutAnswer),
        Fails::AddHeader,
        Fails::SetHeader,
        Fails::RemoveHeader(Map::RequestHeaders),
        Fails::Body,
        Fails::TickPeriod,
    ];
    for (name, config) in configs() {
        for refused in refusals {
            let mut sim = Sim::new(&config, 1);
            sim.host.fail(refused);
            let id = sim.next_id_for_test();
            sim.host.set_property(id, "source.address", b"10.0.0.1:1");
            let with_body = name.ends_with("body");
            sim.send_on(0, spoofing(b"/api/flows", &[("authorization", "Bearer t")]), !with_body);
            if with_body {
                sim.body(id, b"abc", true);
            }
            sim.settle(|_, _| Answer::Allow.reply());
            sim.check();
            if let Some(upstream) = &sim.streams[&id].upstream {
                // Let through only when the refused call was not needed on its way.
                assert!(
                    upstream.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())),
                    "{name}/{refused:?}: went upstream without its identity: {upstream:?}"
                );
            }
        }
    }
}

/// Refused trailer calls: the client is answered locally (status_on_error), so the
/// upstream request ends without the trailers it could not strip.
#[test]
fn a_refused_trailer_call_answers_the_client() {
    use crate::flow::host::Map;
    use crate::flow::mock_host::Fails;
    for refused in [Fails::HeaderMap(Map::RequestTrailers), Fails::RemoveHeader(Map::RequestTrailers)] {
        let mut sim = Sim::new(PREFECT, 1);
        let id = sim.send_on(0, request(b"/api/health", &[]), false);
        sim.host.fail(refused);
        let mut trailers = pairs(&[("x-t", "1")]);
        trailers.push(("x-nebula-actor-id".into(), super::SPOOF.as_bytes().to_vec()));
        assert_eq!(sim.trailers(id, trailers), Flow::Pause, "{refused:?}");
        assert!(
            matches!(sim.host.stream(id).ends.as_slice(), [End::Reply { status: 403, .. }]),
            "{refused:?}: {:?}",
            sim.host.stream(id).ends
        );
    }
}

/// The worker takes a new configuration while a request of the old one waits for its
/// JWKS fetch: the answer still lands in, and the request is checked with, the old
/// configuration's keys.
#[test]
fn a_reconfiguration_during_a_jwks_fetch_keeps_the_requests_own_keys() {
    use crate::jwt::boringssl_stand_in::BoringSslStandIn;
    use crate::jwt::verifier::JwtVerifier;
    use crate::plugin_config::Settings;
    let (config, key, jwks) = remote_jwks();
    let mut sim = Sim::new(&config, 1);
    let id = sim.send(spoofing(b"/api/flows", &[("authorization", &format!("Bearer {}", es_token(&key)))]));
    assert_eq!(sim.pending().len(), 1);
    let newer = std::rc::Rc::new(Settings::from_json(config.as_bytes()).unwrap());
    let jwt = newer.jwt.as_ref().unwrap();
    let verifier = JwtVerifier::new(jwt).with_host_crypto(Box::new(BoringSslStandIn));
    sim.workers[0].set_verifier(Some((verifier, jwt)));
    let body = jwks.to_string();
    sim.settle(|_, _| Some((pairs(&[(":status", "200")]), body.clone().into_bytes())));
    sim.check();
    assert_eq!(sim.outcome(id), Some(0));
    drop(newer);
}
