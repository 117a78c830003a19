//! The decision each outcome path records for Envoy's access log (flow/decision_log.rs),
//! field by field, and the time it spent in the filter in its histogram; with
//! `telemetry` off, nothing is written and the clock is not read for it.

use super::answers::{hs256_token, Answer, SECRET};
use super::{request, Sim};
use crate::metric_names::Histogram;

const PROTECTED: &[u8] = b"/api/flows";

/// The one decision stream `id` recorded, as `outcome how status reason actor`.
fn decided(sim: &Sim, id: u32) -> String {
    let decisions = sim.decisions(id);
    assert_eq!(decisions.len(), 1, "stream {id}: {decisions:?}");
    let d = &decisions[0];
    format!("{} {} {} {} {}", d["outcome"], d["how"], d["status"], d["reason"], d["actor"])
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

#[test]
fn each_callout_answer_records_its_outcome_status_and_reason() {
    let expected = [
        (Answer::Allow, "allowed callout 200 - alice"),
        (Answer::Deny, "denied callout 401 - -"),
        (Answer::Redirect, "denied callout 302 - -"),
        (Answer::ServerError, "failed callout 500 auth_server_error -"),
        (Answer::Timeout, "failed callout 504 timeout -"),
        (Answer::Reset, "failed callout - no_response -"),
        (Answer::Refused, "failed callout 503 refused -"),
        (Answer::Garbage, "failed callout - bad_status -"),
    ];
    for (answer, want) in expected {
        let mut sim = Sim::new(r#"{"auth": {"cluster": "auth", "retry_on_reset": false}}"#, 1);
        let id = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
        sim.host.advance(7);
        sim.settle(|_, _| answer.reply());
        sim.check();
        assert_eq!(decided(&sim, id), want, "{answer:?}");
        // 7 ms in the filter, all of it waiting for the callout.
        assert_eq!(sim.decisions(id)[0]["ms"], "7.000", "{answer:?}");
        assert_eq!(sim.host.histogram(Histogram::WaitCallout.name()), [7000], "{answer:?}");
        assert_eq!(sim.host.histogram(Histogram::CalloutTime.name()), [7000], "{answer:?}");
    }
}

#[test]
fn public_cache_coalesced_and_stale_say_how_they_were_decided() {
    let config = r#"{"auth": {"cluster": "auth", "retry_on_reset": false},
                     "cache": {"stale_if_error": 300}}"#;
    let mut sim = Sim::new(config, 1);
    let public = sim.send(request(b"/api/health", &[]));
    let first = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
    let waiter = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
    sim.settle(|_, _| Answer::Allow.reply());
    let cached = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
    sim.check();
    assert_eq!(decided(&sim, public), "public public - - -");
    assert_eq!(decided(&sim, first), "allowed callout 200 - alice");
    assert_eq!(decided(&sim, waiter), "allowed coalesced 200 - alice");
    assert_eq!(decided(&sim, cached), "allowed cache - - alice");
    // The two that waited have a sample each; the public path and the cache hit waited
    // for nothing, and did not read the clock.
    for h in [Histogram::WaitCallout, Histogram::WaitCoalesced] {
        assert_eq!(sim.host.histogram(h.name()).len(), 1, "{h:?}");
    }
    assert_eq!(sim.decisions(cached)[0]["ms"], "0.000");
    for id in [public, cached] {
        assert!(!sim.host.calls_in(id).contains(&"now_us"), "{:?}", sim.host.calls_in(id));
    }
    // Past the allow's max-age (60 s), the auth service fails: the expired allow is served.
    sim.host.advance(61_000);
    let stale = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
    sim.settle(|_, _| Answer::ServerError.reply());
    sim.check();
    assert_eq!(decided(&sim, stale), "allowed stale 500 auth_server_error alice");
    // Each failure a stale allow covers is named on its line, with Envoy's status if any.
    for (failure, want) in [
        (Answer::Timeout, "allowed stale 504 timeout alice"),
        (Answer::Refused, "allowed stale 503 refused alice"),
        (Answer::Reset, "allowed stale - no_response alice"),
        (Answer::Garbage, "allowed stale - bad_status alice"),
    ] {
        let id = sim.send(request(PROTECTED, &[("authorization", "Bearer k")]));
        sim.settle(|_, _| failure.reply());
        sim.check();
        assert_eq!(decided(&sim, id), want, "{failure:?}");
    }
    let denied = sim.send(request(PROTECTED, &[("authorization", "Bearer other")]));
    sim.settle(|_, _| Answer::Deny.reply());
    let denied_again = sim.send(request(PROTECTED, &[("authorization", "Bearer other")]));
    sim.check();
    assert_eq!(decided(&sim, denied), "denied callout 401 - -");
    assert_eq!(decided(&sim, denied_again), "denied cache 401 - -");
}

#[test]
fn access_rules_and_local_jwt_record_their_own_outcomes() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth"}, "source_ranges": ["10.0.0.0/8"]}"#, 1);
    let id = sim.next_id_for_test();
    sim.host.set_property(id, "source.address", b"192.0.2.1:4000");
    let outside = sim.send(request(PROTECTED, &[]));
    sim.check();
    assert_eq!(decided(&sim, outside), "source_denied access - - -");

    let config = serde_json::json!({"auth": {"cluster": "auth"},
        "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
            "claims_to_headers": {"sub": "x-nebula-actor-id"},
            "require": {"sub": "dave"}}]}})
    .to_string();
    let mut sim = Sim::new(&config, 1);
    let (name, value) = bearer(&hs256_token(false));
    let valid = sim.send(request(PROTECTED, &[(name, &value)]));
    let (name, value) = bearer(&hs256_token(true));
    let expired = sim.send(request(PROTECTED, &[(name, &value)]));
    sim.check();
    assert_eq!(decided(&sim, valid), "allowed jwt - - dave");
    assert_eq!(decided(&sim, expired), "denied jwt - expired -");
    assert!(sim.host.histogram(Histogram::WaitJwks.name()).is_empty(), "decided without waiting");
}

#[test]
fn a_failure_before_the_callout_names_its_reason() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth"}}"#, 1);
    sim.host.fail(crate::flow::mock_host::Fails::Dispatch);
    let id = sim.send(request(PROTECTED, &[]));
    sim.check();
    assert_eq!(decided(&sim, id), "failed callout - dispatch_failed -");
    assert_eq!(sim.counter_named("nebula_authz.failed.dispatch_failed"), 1);
}

#[test]
fn with_telemetry_off_nothing_is_written_or_timed() {
    let config = r#"{"auth": {"cluster": "auth"}, "telemetry": {"filter_state": false, "histograms": false}}"#;
    let mut sim = Sim::new(config, 1);
    let id = sim.send(request(PROTECTED, &[]));
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert!(sim.host.stream(id).filter_state.is_empty());
    assert!(Histogram::ALL.iter().all(|h| sim.host.histogram(h.name()).is_empty()));
    assert!(!sim.host.calls_in(id).contains(&"now_us"), "{:?}", sim.host.calls_in(id));
    // The failure counters are kept either way.
    let mut sim = Sim::new(config, 1);
    sim.send(request(PROTECTED, &[]));
    sim.settle(|_, _| Answer::Timeout.reply());
    assert_eq!(sim.counter_named("nebula_authz.failed.timeout"), 1);
}
