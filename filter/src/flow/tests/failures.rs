//! Answers that are no decision fail closed: `status_on_error` with the filter's own body,
//! nothing of the auth service's answer relayed, nothing upstream, and the worker serves
//! the next request as before. How Envoy reports a timeout, a reset or a refused
//! connection is the Envoy suite's (tests/tests/fail_closed.rs); what the flow makes of
//! each report, and of a body over `max_response_bytes`, is here.

use super::answers::Answer;
use super::{pairs, request, Sim};
use crate::flow::mock_host::{End, Pairs};

type Reply = Option<(Pairs, Vec<u8>)>;

const FILTER_ERROR_BODY: &[u8] = b"nebula-authz: authorization check failed\n";

fn answered(status: &str, extra: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut headers = pairs(&[(":status", status), ("x-envoy-upstream-service-time", "1")]);
    headers.extend(pairs(extra));
    Some((headers, body.to_vec()))
}

fn allow(body: &[u8]) -> Reply {
    answered("200", &[("x-nebula-actor-id", "alice")], body)
}

/// Sends one protected request, answers its callouts with `reply`, returns its id.
fn ask(sim: &mut Sim, reply: &dyn Fn() -> Reply) -> u32 {
    let id = sim.send(request(b"/api/flows", &[("authorization", "Bearer t")]));
    sim.settle(|_, _| reply());
    id
}

/// Failed closed with `status` and the filter's own body (not the auth service's).
fn assert_fail_closed(sim: &Sim, id: u32, status: u32, case: &str) {
    let ends = sim.host.stream(id).ends;
    match ends.as_slice() {
        [End::Reply { status: got, body: Some(body), .. }] => {
            assert_eq!(*got, status, "{case}");
            assert_eq!(body.as_slice(), FILTER_ERROR_BODY, "{case}: the filter's body");
        }
        other => panic!("{case}: expected a local reply, got {other:?}"),
    }
    assert!(sim.streams[&id].upstream.is_none(), "{case}: went upstream");
}

#[test]
fn broken_answers_fail_closed_with_the_filters_body() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth"}}"#, 1);
    let big = vec![b'x'; 2 << 20];
    let cases: [(&str, &dyn Fn() -> Reply); 10] = [
        ("timeout", &|| Answer::Timeout.reply()),
        ("reset", &|| Answer::Reset.reply()),
        ("refused", &|| Answer::Refused.reply()),
        ("garbage status", &|| Answer::Garbage.reply()),
        ("500", &|| answered("500", &[], b"status 500")),
        ("503", &|| answered("503", &[], b"status 503")),
        ("502", &|| answered("502", &[], b"status 502")),
        ("100", &|| answered("100", &[], b"")),
        ("401 with a 2 MiB body", &|| answered("401", &[("content-type", "text/plain")], &big)),
        // The 1 MiB default limit applies to every answer, allowing ones included.
        ("200 with a 2 MiB body", &|| allow(&big)),
    ];
    for (case, reply) in cases {
        let id = ask(&mut sim, reply);
        assert_fail_closed(&sim, id, 403, case);
    }
    let id = ask(&mut sim, &|| allow(b"ok"));
    assert_eq!(sim.outcome(id), Some(0), "an allow after the failures");
    sim.check();
}

#[test]
fn status_on_error_and_max_response_bytes_are_honoured() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth", "max_response_bytes": 16}, "status_on_error": 503}"#, 1);
    let id = ask(&mut sim, &|| answered("500", &[], b""));
    assert_fail_closed(&sim, id, 503, "auth 500 with status_on_error 503");
    let id = ask(&mut sim, &|| Answer::Reset.reply());
    assert_fail_closed(&sim, id, 503, "no answer with status_on_error 503");
    // A denial whose body (25 bytes) exceeds max_response_bytes (16).
    let id = ask(&mut sim, &|| answered("401", &[], br#"{"detail":"unauthorized"}"#));
    assert_fail_closed(&sim, id, 503, "deny body over max_response_bytes");
    // 16 bytes fit.
    let id = ask(&mut sim, &|| allow(&[b'x'; 16]));
    assert_eq!(sim.outcome(id), Some(0), "allow body within max_response_bytes");
    sim.check();
}
