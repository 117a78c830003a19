//! The decision cache inside whole requests: what an answer leaves in the cache, for how
//! long, under which key, and what is never reused. How long an entry lives for given
//! headers (`Cache-Control`, `max_ttl`, a JWT's `exp`) is unit-tested in cache/shared.rs;
//! here the flow decides (hit, miss, stale, coalesced) with the clock moved, not slept.
//! The auth service is scripted by the credential, like the Envoy suite's mock: the
//! callouts for a credential are counted by its `authorization` header.

use super::answers::Answer;
use super::{pairs, Sim, SPOOF};
use crate::flow::mock_host::{End, Pairs};
use crate::flow::Flow;
use crate::metric_names::Metric;

type Reply = Option<(Pairs, Vec<u8>)>;

/// A named answer, and the status the client gets for it.
type Scripted = (&'static str, Box<dyn Fn() -> Reply>, u32);

/// The Envoy suite's configuration: the defaults, with this `cache` block.
fn config(cache: &str) -> String {
    format!(r#"{{"auth": {{"cluster": "auth"}}, "cache": {cache}}}"#)
}

/// `METHOD path` with `authorization: Bearer <token>` and a spoofed identity header.
fn asking(method: &str, path: &str, token: &str, extra: &[(&str, &str)]) -> Pairs {
    let bearer = format!("Bearer {token}");
    let mut headers = pairs(&[(":method", method), (":path", path), (":authority", "app"), ("authorization", &bearer)]);
    headers.extend(pairs(extra));
    headers.push(("x-nebula-actor-id".into(), SPOOF.as_bytes().to_vec()));
    headers
}

/// An allow for `actor` (no cookie: an allow that sets one is never stored), with
/// `cache-control` when given.
fn allow(actor: &str, cache_control: Option<&str>) -> Reply {
    let mut headers = pairs(&[(":status", "200"), ("x-nebula-actor-id", actor)]);
    if let Some(cc) = cache_control {
        headers.extend(pairs(&[("cache-control", cc)]));
    }
    Some((headers, Vec::new()))
}

fn status(code: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let mut headers = pairs(&[(":status", code), ("x-envoy-upstream-service-time", "1")]);
    headers.extend(pairs(extra));
    Some((headers, body.as_bytes().to_vec()))
}

fn deny() -> Reply {
    status("401", &[("www-authenticate", "Bearer"), ("content-type", "text/plain")], "no")
}

/// Callouts the auth service received with exactly `Bearer <token>`.
fn calls(sim: &Sim, token: &str) -> usize {
    let want = format!("Bearer {token}");
    sim.host.dispatched().iter().filter(|d| d.headers.iter().any(|(n, v)| n == "authorization" && *v == want)).count()
}

/// Sends one request on worker `w`, answers its callouts with `reply`, returns its id.
fn ask_on(sim: &mut Sim, w: usize, headers: Pairs, reply: impl Fn() -> Reply) -> u32 {
    let id = sim.send_on(w, headers, true);
    sim.settle(|_, _| reply());
    id
}

fn ask(sim: &mut Sim, headers: Pairs, reply: impl Fn() -> Reply) -> u32 {
    ask_on(sim, 0, headers, reply)
}

/// Went upstream with the auth service's `actor` as its only identity.
fn assert_allowed_as(sim: &Sim, id: u32, actor: &str, case: &str) {
    assert_eq!(sim.outcome(id), Some(0), "{case}: not allowed");
    let upstream = sim.streams[&id].upstream.clone().unwrap();
    let ids: Vec<&Vec<u8>> = upstream.iter().filter(|(n, _)| n == "x-nebula-actor-id").map(|(_, v)| v).collect();
    assert_eq!(ids, vec![&actor.as_bytes().to_vec()], "{case}: {upstream:?}");
}

#[test]
fn a_decision_is_reused_within_its_lifetime_and_not_after() {
    let mut sim = Sim::new(&config(r#"{"default_ttl": 1}"#), 1);
    let token = "alice";
    let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), || allow("alice", None));
    assert_allowed_as(&sim, id, "alice", "first request");
    // Hits inject the cached identity headers (the client's spoofed one removed), with no
    // callout and no pause.
    for case in ["cached", "cached again"] {
        let id = sim.send(asking("GET", "/api/flows", token, &[]));
        assert_eq!(sim.streams[&id].first, Flow::Continue, "{case}");
        assert_allowed_as(&sim, id, "alice", case);
    }
    assert_eq!(calls(&sim, token), 1, "within the lifetime: no callout");
    // forward_auth (on by default) shows the auth service the method and URI: they are keyed.
    let id = ask(&mut sim, asking("GET", "/api/flows/2", token, &[]), || allow("alice", None));
    assert_allowed_as(&sim, id, "alice", "other URI");
    let id = ask(&mut sim, asking("POST", "/api/flows", token, &[]), || allow("alice", None));
    assert_allowed_as(&sim, id, "alice", "other method");
    assert_eq!(calls(&sim, token), 3, "another method or URI is another question");
    sim.host.advance(1_000);
    let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), || allow("alice", None));
    assert_allowed_as(&sim, id, "alice", "after expiry");
    assert_eq!(calls(&sim, token), 4, "after the lifetime: a new callout");
    sim.check();
    assert_eq!((sim.counter(Metric::CacheHits), sim.counter(Metric::CacheMisses)), (2, 4));
}

#[test]
fn without_forward_auth_a_decision_covers_every_path_and_method() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth", "forward_auth": false}, "cache": {"default_ttl": 60}}"#, 1);
    for (method, path) in [("GET", "/api/flows"), ("GET", "/api/flows/2?x=1"), ("POST", "/api/deployments")] {
        let id = ask(&mut sim, asking(method, path, "paula", &[]), || allow("paula", None));
        assert_allowed_as(&sim, id, "paula", &format!("{method} {path}"));
    }
    assert_eq!(calls(&sim, "paula"), 1, "the auth service sees only the credential: one question");
    sim.check();
}

#[test]
fn cache_control_decides_what_is_stored() {
    // default_ttl 0: only what the auth service says may be cached is cached.
    let mut sim = Sim::new(&config(r#"{"default_ttl": 0, "negative_ttl": 0}"#), 1);
    let answers: [(&str, Option<&str>); 4] = [
        ("told", Some("max-age=1")),
        ("silent", None),
        ("no-store", Some("no-store, max-age=60")),
        ("no-cache", Some("no-cache")),
    ];
    for _ in 0..3 {
        for (token, cc) in answers {
            let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), || allow(token, cc));
            assert_allowed_as(&sim, id, token, token);
        }
    }
    assert_eq!(calls(&sim, "told"), 1, "max-age=1: stored");
    assert_eq!(calls(&sim, "silent"), 3, "default_ttl 0: not stored without a max-age");
    assert_eq!(calls(&sim, "no-store"), 3, "no-store: never stored");
    assert_eq!(calls(&sim, "no-cache"), 3, "no-cache: never stored");
    sim.host.advance(1_000);
    let id = ask(&mut sim, asking("GET", "/api/flows", "told", &[]), || allow("told", Some("max-age=1")));
    assert_allowed_as(&sim, id, "told", "after max-age");
    assert_eq!(calls(&sim, "told"), 2);
    // negative_ttl 0: denials are not stored.
    for _ in 0..2 {
        let id = ask(&mut sim, asking("GET", "/api/flows", "deny", &[]), deny);
        assert_eq!(sim.outcome(id), Some(401));
    }
    assert_eq!(calls(&sim, "deny"), 2);
    sim.check();
}

#[test]
fn errors_are_never_cached() {
    let mut sim = Sim::new(&config(r#"{"default_ttl": 60, "negative_ttl": 60}"#), 1);
    // (token, answer, callouts per request): Envoy's reply for a reset connection is sent
    // again once by the filter (auth.retry_on_reset, on by default).
    let reset = || {
        let body = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
        Some((pairs(&[(":status", "503"), ("content-type", "text/plain")]), body.as_bytes().to_vec()))
    };
    let cases: [(&str, &dyn Fn() -> Reply, usize); 6] = [
        ("503", &|| status("503", &[], ""), 1),
        ("500-max-age", &|| status("500", &[("cache-control", "max-age=60")], ""), 1),
        ("reset", &reset, 2),
        ("no-headers", &|| None, 1),
        ("404", &|| status("404", &[], ""), 1),
        ("redirect", &|| status("302", &[("location", "/login")], ""), 1),
    ];
    for (token, reply, attempts) in cases {
        for _ in 0..2 {
            let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), reply);
            let outcome = sim.outcome(id).unwrap();
            assert!(outcome >= 300, "{token}: not allowed: {outcome}");
        }
        assert_eq!(calls(&sim, token), 2 * attempts, "{token}: asked again every time");
    }
    sim.check();
    assert_eq!(sim.counter(Metric::CacheHits), 0);
}

#[test]
fn denials_are_cached_for_negative_ttl_as_the_auth_service_sent_them() {
    let mut sim = Sim::new(&config(r#"{"negative_ttl": 1}"#), 1);
    let first = ask(&mut sim, asking("GET", "/api/flows", "deny", &[]), deny);
    let cached = sim.send(asking("GET", "/api/flows", "deny", &[]));
    assert_eq!(calls(&sim, "deny"), 1);
    // The cached denial is the auth service's reply: status, relayed headers, body.
    let (sent, served) = (sim.host.stream(first).ends, sim.host.stream(cached).ends);
    assert!(matches!(sent.as_slice(), [End::Reply { status: 401, .. }]), "{sent:?}");
    assert_eq!(sent, served);
    let [End::Reply { headers, body, .. }] = served.as_slice() else { unreachable!() };
    assert!(headers.contains(&("www-authenticate".into(), "Bearer".into())), "{headers:?}");
    assert_eq!(body.as_deref(), Some(&b"no"[..]));
    sim.host.advance(1_000);
    let after = ask(&mut sim, asking("GET", "/api/flows", "deny", &[]), deny);
    assert_eq!(sim.outcome(after), Some(401));
    assert_eq!(calls(&sim, "deny"), 2, "after negative_ttl: asked again");
    // A 302 (with set-cookie) is never cached.
    let redirect = || status("302", &[("location", "/login"), ("set-cookie", "state=1")], "");
    for _ in 0..2 {
        let id = ask(&mut sim, asking("GET", "/api/flows", "redirect", &[]), redirect);
        assert_eq!(sim.outcome(id), Some(302));
    }
    assert_eq!(calls(&sim, "redirect"), 2);
    sim.check();
}

#[test]
fn a_bearer_jwt_is_never_cached_past_its_exp() {
    use base64::Engine;
    // Denied, and the denial cached for up to negative_ttl (60 s), but never past the
    // token's exp (in 2 s).
    let mut sim = Sim::new(&config(r#"{"negative_ttl": 60, "max_ttl": 60}"#), 1);
    let exp = super::NOW_MS / 1000 + 2;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(&format!(r#"{{"sub":"a","exp":{exp}}}"#)));
    for _ in 0..2 {
        let id = ask(&mut sim, asking("GET", "/api/flows", &token, &[]), deny);
        assert_eq!(sim.outcome(id), Some(401));
    }
    assert_eq!(calls(&sim, &token), 1);
    sim.host.advance(1_999);
    ask(&mut sim, asking("GET", "/api/flows", &token, &[]), deny);
    assert_eq!(calls(&sim, &token), 1, "still before exp");
    sim.host.advance(1);
    ask(&mut sim, asking("GET", "/api/flows", &token, &[]), deny);
    assert_eq!(calls(&sim, &token), 2, "the entry ended at the token's exp, not after negative_ttl");
    sim.check();
}

#[test]
fn tokens_differing_in_one_byte_never_share_a_decision() {
    let (a, b) = ("alice", "alicf");
    // One slot for everything: every lookup collides, and the stored key must tell.
    for (entries, each) in [(1, 3), (1000, 1)] {
        let mut sim = Sim::new(&config(&format!(r#"{{"entries": {entries}, "default_ttl": 60}}"#)), 1);
        for round in 0..3 {
            for token in [a, b] {
                let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), || allow(token, None));
                assert_allowed_as(&sim, id, token, &format!("{entries} entries, round {round}, {token}"));
            }
        }
        assert_eq!((calls(&sim, a), calls(&sim, b)), (each, each), "{entries} entries");
        if entries > 1 {
            // Other inputs the auth service sees are keyed too: another origin is another callout.
            let headers = asking("GET", "/api/flows", a, &[("origin", "https://x.example")]);
            let id = ask(&mut sim, headers, || allow(a, None));
            assert_allowed_as(&sim, id, a, "same token, other origin");
            assert_eq!(calls(&sim, a), 2);
        }
        sim.check();
    }
}

#[test]
fn concurrent_identical_requests_share_one_callout_even_when_not_stored() {
    const N: usize = 8;
    let mut sim = Sim::new(&config(r#"{"default_ttl": 60}"#), 1);
    // no-store: nothing is cached, so only coalescing saves callouts.
    let ids: Vec<u32> = (0..N).map(|_| sim.send(asking("GET", "/api/flows", "dave", &[]))).collect();
    assert_eq!(sim.pending().len(), 1, "{N} identical requests, one callout");
    sim.settle(|_, _| allow("dave", Some("no-store")));
    for id in &ids {
        assert_allowed_as(&sim, *id, "dave", "coalesced allow");
    }
    // The leader's callout fails: every waiter fails closed too, and nothing is stored.
    let ids: Vec<u32> = (0..N).map(|_| sim.send(asking("GET", "/api/flows", "dave", &[]))).collect();
    sim.settle(|_, _| status("503", &[], ""));
    for id in &ids {
        assert_eq!(sim.outcome(*id), Some(sim.settings.status_on_error), "fail closed");
    }
    assert_eq!(calls(&sim, "dave"), 2);
    sim.check();
    assert_eq!(sim.counter(Metric::Coalesced), 2 * (N as u64 - 1));
}

/// Trace headers differ on every request and never change the answer: requests that
/// differ only in them share one decision (stored, or one callout in flight), and the
/// callout that is sent carries the trace headers of the request that sent it.
#[test]
fn requests_differing_only_in_trace_headers_share_a_decision() {
    let traced = |token: &str, n: usize| {
        let parent = format!("00-{n:032x}-{n:016x}-01");
        asking("GET", "/api/flows", token, &[("traceparent", &parent), ("x-request-id", &n.to_string())])
    };
    let sent_trace = |sim: &Sim, i: usize| -> Vec<(String, String)> {
        let d = &sim.host.dispatched()[i];
        d.headers.iter().filter(|(n, _)| n == "traceparent" || n == "x-request-id").cloned().collect()
    };
    let mut sim = Sim::new(&config(r#"{"default_ttl": 60}"#), 2);
    let first = ask(&mut sim, traced("erin", 1), || allow("erin", None));
    assert_allowed_as(&sim, first, "erin", "first");
    let want = vec![
        ("traceparent".to_string(), format!("00-{:032x}-{:016x}-01", 1, 1)),
        ("x-request-id".to_string(), "1".to_string()),
    ];
    assert_eq!(sent_trace(&sim, 0), want, "the callout carries its request's trace headers");
    for (n, w) in [(2, 0), (3, 1)] {
        let id = ask_on(&mut sim, w, traced("erin", n), || allow("erin", None));
        assert_allowed_as(&sim, id, "erin", "other trace ids, same decision");
    }
    assert_eq!(calls(&sim, "erin"), 1, "one decision for requests differing only in trace ids");
    // In flight: one callout, with the leader's trace headers.
    let ids: Vec<u32> = (10..14).map(|n| sim.send(traced("frank", n))).collect();
    assert_eq!(sim.pending().len(), 1, "coalesced across trace ids");
    sim.settle(|_, _| allow("frank", Some("no-store")));
    for id in &ids {
        assert_allowed_as(&sim, *id, "frank", "coalesced");
    }
    assert_eq!(sent_trace(&sim, 1)[1], ("x-request-id".to_string(), "10".to_string()));
    sim.check();
}

/// Every kind of answer that is a decision against a credential, with the status the
/// client gets for it: 401/403 with and without `no-store` (stored for `negative_ttl`
/// without it), a redirect, another 4xx, a 2xx not in `allow_statuses`, and a 401 whose
/// body is past `max_response_bytes` (malformed, but a refusal all the same).
fn denials() -> Vec<Scripted> {
    let big = || status("401", &[], &"x".repeat(2 << 20));
    vec![
        ("bigbody", Box::new(big), 403),
        ("no-store-deny", Box::new(|| status("401", &[("cache-control", "no-store")], "no")), 401),
        ("deny", Box::new(deny), 401),
        ("no-store-403", Box::new(|| status("403", &[("cache-control", "no-store")], "")), 403),
        ("403", Box::new(|| status("403", &[], "")), 403),
        ("redirect", Box::new(|| status("302", &[("location", "/login")], "")), 302),
        ("404", Box::new(|| status("404", &[], "")), 404),
        ("202", Box::new(|| status("202", &[], "")), 202),
    ]
}

/// An allow expires; the auth service then denies the credential (on one worker), then
/// fails (on both): the allow from before the denial is never served stale, whether or not
/// the denial itself could be stored. The control (an allow, then only failures) is.
#[test]
fn a_denial_ends_the_stale_allow_of_its_key_on_every_worker() {
    let revocation = r#"{"default_ttl": 1, "negative_ttl": 1, "stale_if_error": 30}"#;
    let mut sim = Sim::new(&config(revocation), 2);
    let denials = denials();
    for (token, _, _) in &denials {
        let id = ask(&mut sim, asking("GET", "/api/flows", token, &[]), || allow("rev", None));
        assert_allowed_as(&sim, id, "rev", token);
    }
    let control = ask(&mut sim, asking("GET", "/api/flows", "control", &[]), || allow("rev", None));
    assert_allowed_as(&sim, control, "rev", "control");
    sim.host.advance(1_000);
    for (i, (token, reply, client_gets)) in denials.iter().enumerate() {
        let id = ask_on(&mut sim, i % 2, asking("GET", "/api/flows", token, &[]), reply);
        assert_eq!(sim.outcome(id), Some(*client_gets), "{token}: the denial reaches the client");
    }
    let failing = || status("500", &[], "");
    for when in ["right after the denial", "once a stored denial has expired too"] {
        for (token, _, _) in &denials {
            for w in 0..2 {
                let id = ask_on(&mut sim, w, asking("GET", "/api/flows", token, &[]), failing);
                let outcome = sim.outcome(id);
                assert_ne!(outcome, Some(0), "{token}, then auth 500 on worker {w} ({when}): stale allow served");
            }
        }
        let id = ask_on(&mut sim, 1, asking("GET", "/api/flows", "control", &[]), failing);
        assert_allowed_as(&sim, id, "rev", &format!("control, {when}"));
        sim.host.advance(1_000);
    }
    sim.check();
    assert_eq!(sim.counter(Metric::CacheStaleServed), 2, "only the control");
}

#[test]
fn without_stale_if_error_or_an_entry_a_failure_fails_closed() {
    let mut sim = Sim::new(&config(r#"{"default_ttl": 1}"#), 1);
    let id = ask(&mut sim, asking("GET", "/api/flows", "erin", &[]), || allow("erin", None));
    assert_allowed_as(&sim, id, "erin", "first");
    sim.host.advance(1_000);
    let id = ask(&mut sim, asking("GET", "/api/flows", "erin", &[]), || status("503", &[], ""));
    let ends = sim.host.stream(id).ends;
    assert!(
        matches!(ends.as_slice(), [End::Reply { status, body: Some(b), .. }]
            if *status == sim.settings.status_on_error && b.as_slice() == b"nebula-authz: authorization check failed\n"),
        "expired, auth 503, no stale_if_error: {ends:?}"
    );
    // With stale_if_error but nothing stored for the credential: fail closed too, also
    // when the auth service cannot be reached at all.
    let mut sim = Sim::new(&config(r#"{"stale_if_error": 60}"#), 1);
    let id = ask(&mut sim, asking("GET", "/api/flows", "alice", &[]), || Answer::Refused.reply());
    assert_eq!(sim.outcome(id), Some(sim.settings.status_on_error), "auth unreachable, empty cache");
    sim.check();
}

/// The body is no part of the key: a request whose body goes with the callout is never
/// answered from the cache nor stored in it; requests without one still use it.
#[test]
fn body_requests_bypass_the_decision_cache() {
    let config = r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "with_request_body": {"max_request_bytes": 64}},
        "cache": {"entries": 100, "default_ttl": 60}}"#;
    let mut sim = Sim::new(config, 1);
    for _ in 0..2 {
        let id = sim.send_on(0, asking("POST", "/api/flows", "alice", &[("content-length", "2")]), false);
        sim.body(id, b"{}", true);
        sim.settle(|_, _| allow("alice", None));
        assert_allowed_as(&sim, id, "alice", "body request");
    }
    assert_eq!(calls(&sim, "alice"), 2, "each body request asks the auth service");
    for _ in 0..2 {
        let id = ask(&mut sim, asking("GET", "/api/flows", "alice", &[]), || allow("alice", None));
        assert_allowed_as(&sim, id, "alice", "no body");
    }
    assert_eq!(calls(&sim, "alice"), 3, "requests without a body still use the cache");
    sim.check();
}
