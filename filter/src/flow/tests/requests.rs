//! Whole requests over the input space: every configuration shape × the hostile path
//! table × request shapes (identity headers in every spelling, repeated and odd headers,
//! trailers) × every kind of auth answer. The invariants of [`Sim::check`] hold on every
//! run; the outcome each answer must give is asserted too.

use super::answers::{configs, hs256_token, Answer, ALL, PREFECT};
use super::{pairs, request, spoofing, Sim, IDENTITY_SPELLINGS, SPOOF};
use crate::flow::mock_host::{End, Pairs};
use crate::flow::Flow;
use crate::metric_names::Metric;

/// tests/data/internal_spellings.txt: spellings of `/internal/metrics` beyond the path
/// table, each read under `/internal` by some parser behind Envoy.
pub fn internal_spellings() -> Vec<Vec<u8>> {
    let list = include_str!("../../../../tests/data/internal_spellings.txt");
    list.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(|l| l.as_bytes().to_vec()).collect()
}

/// tests/data/paths.tsv: (public?, raw request-target bytes, note).
pub fn path_table() -> Vec<(bool, Vec<u8>, String)> {
    let table = include_str!("../../../../tests/data/paths.tsv");
    table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols[0] == "public", unescape(cols[1]), cols.get(2).unwrap_or(&"").to_string())
        })
        .collect()
}

/// `\xHH` is one raw byte; everything else is literal.
fn unescape(target: &str) -> Vec<u8> {
    let bytes = target.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 3 < bytes.len() + 1 {
            if let Ok(b) = u8::from_str_radix(&target[i + 2..i + 4], 16) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Calls the stream `id` sent itself.
fn sent_by(sim: &Sim, id: u32) -> usize {
    sim.host.dispatched().iter().filter(|d| d.context == id).count()
}

/// Sends from a client address inside the access configuration's `source_ranges`.
fn send_inside(sim: &mut Sim, headers: Pairs, end_of_stream: bool) -> u32 {
    let id = sim.next_id_for_test();
    sim.host.set_property(id, "source.address", b"10.1.2.3:5555");
    sim.send_on(0, headers, end_of_stream)
}

/// Every row of the hostile path table, under every configuration and every answer:
/// public exactly when the table says so (for the configurations with the Prefect
/// public paths), and a protected row never reaches the upstream without the auth
/// service's allow.
#[test]
fn hostile_paths_are_public_only_when_canonical() {
    let table = path_table();
    assert!(table.len() >= 60, "{}", table.len());
    for (name, config) in configs() {
        for answer in [Answer::Allow, Answer::Deny, Answer::Reset] {
            let mut sim = Sim::new(&config, 1);
            let mut sent = Vec::new();
            for (public, path, note) in &table {
                let id = sim.send(spoofing(path, &[("authorization", "Bearer t")]));
                sent.push((id, *public, path.clone(), note.clone()));
            }
            sim.settle(|_, _| answer.reply());
            sim.check();
            for (id, public, path, note) in sent {
                let went_public = sim.streams[&id].first == Flow::Continue && sent_by(&sim, id) == 0;
                let shown = String::from_utf8_lossy(&path);
                if !public {
                    assert!(!went_public, "{name}: protected {shown:?} ({note}) went upstream unchecked");
                    if !answer.allows() {
                        assert_ne!(sim.outcome(id), Some(0), "{name}/{answer:?}: {shown:?} went upstream");
                    }
                } else if name != "prefect+access" {
                    assert!(went_public, "{name}: public {shown:?} ({note}) was not public");
                }
            }
        }
    }
}

/// Each answer under each configuration: an allow goes upstream with the auth
/// service's identity (once, not the client's), anything else is answered locally.
#[test]
fn every_answer_under_every_configuration() {
    for (name, config) in configs() {
        for answer in ALL {
            let mut sim = Sim::new(&config, 1);
            let headers = spoofing(b"/api/flows/filter", &[("authorization", "Bearer t"), ("cookie", "a=b")]);
            let id = send_inside(&mut sim, headers, true);
            sim.settle(|_, _| answer.reply());
            sim.check();
            let outcome = sim.outcome(id);
            match answer {
                Answer::Allow => {
                    assert_eq!(outcome, Some(0), "{name}/{answer:?}");
                    let upstream = sim.streams[&id].upstream.clone().unwrap();
                    let ids: Vec<_> = upstream.iter().filter(|(n, _)| n == "x-nebula-actor-id").collect();
                    assert_eq!(ids.len(), 1, "{name}: {upstream:?}");
                    assert_eq!(ids[0].1, b"alice");
                }
                _ => {
                    let status = outcome.unwrap_or_else(|| panic!("{name}/{answer:?}: never ended"));
                    assert!(status >= 300, "{name}/{answer:?}: {status}");
                    assert!(sim.streams[&id].upstream.is_none());
                }
            }
        }
    }
}

/// The access rules' source range: inside → the callout decides; outside or unknown → 403,
/// no callout, counted.
#[test]
fn access_rules_deny_before_any_callout() {
    let config = &configs().into_iter().find(|(n, _)| *n == "prefect+access").unwrap().1;
    let mut sim = Sim::new(config, 1);
    // The address is read from the host when the rule needs it: set before the headers.
    for (address, expect_callout) in [(Some("10.9.9.9:1"), true), (Some("203.0.113.7:1"), false), (None, false)] {
        let id = sim.next_id_for_test();
        if let Some(address) = address {
            sim.host.set_property(id, "source.address", address.as_bytes());
        }
        let sent = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer t")]));
        assert_eq!(sent, id);
        assert_eq!(sent_by(&sim, id), usize::from(expect_callout), "{address:?}");
        if !expect_callout {
            assert_eq!(sim.outcome(id), Some(403), "{address:?}");
        }
    }
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert_eq!(sim.counter(Metric::SourceDenied), 2);
}

/// Trailers carry the identity headers in every spelling: none survives, whether the
/// request is public, waits for its callout, or was already allowed.
#[test]
fn identity_trailers_are_stripped_on_every_path() {
    for (name, config) in configs() {
        for path in [&b"/api/health"[..], b"/api/flows"] {
            let mut sim = Sim::new(&config, 1);
            let id = send_inside(&mut sim, spoofing(path, &[("authorization", "Bearer t"), ("te", "trailers")]), false);
            let spoofed: Pairs =
                IDENTITY_SPELLINGS.iter().map(|n| (n.to_string(), SPOOF.as_bytes().to_vec())).collect();
            let mut trailers = pairs(&[("grpc-status", "0")]);
            trailers.extend(spoofed);
            sim.trailers(id, trailers);
            sim.settle(|_, _| Answer::Allow.reply());
            sim.check();
            let left = sim.host.stream(id).trailers;
            assert!(left.iter().all(|(_, v)| v != SPOOF.as_bytes()), "{name}: {left:?}");
            assert!(left.iter().any(|(n, _)| n == "grpc-status"), "{name}: other trailers stay");
        }
    }
}

/// A tiny deterministic generator (xorshift): the same cases every run, many of them.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next() % from.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Odd but legal request headers a client may send around the identity ones.
const ODD: &[(&str, &str)] = &[
    ("authorization", "Bearer t"),
    ("authorization", "Bearer second"),
    ("cookie", "a=1"),
    ("cookie", "b=2; c=3"),
    ("x-forwarded-for", "1.2.3.4"),
    ("x-forwarded-host", "evil.example"),
    ("x-empty", ""),
    ("x-long", "0123456789012345678901234567890123456789012345678901234567890123456789"),
    ("origin", "https://app.example"),
    ("x-envoy-auth-partial-body", "true"),
];

/// Generated runs: a configuration, a batch of requests (random paths from the table,
/// identity spellings, odd and repeated headers, tokens valid, expired or garbage,
/// bodies, trailers), answers drawn per callout, streams going away at random. The
/// invariants hold on every run, and a protected path never goes upstream unchecked.
#[test]
fn generated_runs_keep_every_invariant() {
    let table = path_table();
    let configs = configs();
    let valid = format!("Bearer {}", hs256_token(false));
    let expired = format!("Bearer {}", hs256_token(true));
    let tokens = [valid.as_str(), expired.as_str(), "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "Bearer t"];
    let mut gen = Gen::new(0x5eed_f10e);
    for run in 0..400 {
        let (name, config) = gen.pick(&configs);
        let mut sim = Sim::new(config, 1 + (gen.next() % 2) as usize);
        let mut sent = Vec::new();
        for _ in 0..1 + gen.next() % 6 {
            let (public, path, _) = gen.pick(&table);
            let mut extra: Vec<(&str, &str)> = Vec::new();
            for _ in 0..gen.next() % 4 {
                extra.push(*gen.pick(ODD));
            }
            if gen.chance(50) {
                extra.push(("authorization", *gen.pick(&tokens[..])));
            }
            let headers = if gen.chance(70) { spoofing(path, &extra) } else { request(path, &extra) };
            let worker = (gen.next() % sim.workers.len() as u64) as usize;
            let id = sim.next_id_for_test();
            if gen.chance(80) {
                sim.host.set_property(id, "source.address", b"10.0.0.1:1");
            }
            let with_body = gen.chance(30);
            sim.send_on(worker, headers, !with_body);
            if with_body {
                let chunk = vec![b'x'; (gen.next() % 24) as usize];
                if gen.chance(50) {
                    sim.body(id, &chunk, true);
                } else {
                    sim.body(id, &chunk, false);
                    let mut trailers = pairs(&[("x-checksum", "1")]);
                    trailers.push((gen.pick(IDENTITY_SPELLINGS).to_string(), SPOOF.as_bytes().to_vec()));
                    sim.trailers(id, trailers);
                    let left = sim.host.stream(id).trailers;
                    assert!(left.iter().all(|(_, v)| v != SPOOF.as_bytes()), "run {run} ({name}): {left:?}");
                }
            }
            sent.push((id, *public));
        }
        for (id, _) in &sent {
            if gen.chance(15) {
                sim.end(*id);
            }
        }
        let mut answers = gen;
        sim.settle(|_, _| answers.pick(&ALL).reply());
        gen = answers;
        sim.check();
        for (id, public) in &sent {
            // A denied or failed request never resumes: its only end is the reply.
            if let Some(End::Reply { status, .. }) = sim.host.stream(*id).ends.first() {
                assert!(*status >= 300, "run {run} ({name}): {status}");
            }
            // Nothing non-canonical is public: a protected path that went upstream was
            // allowed by the auth service, or carried a valid token.
            let unchecked = sim.streams[id].first == Flow::Continue && sent_by(&sim, *id) == 0;
            if !public && unchecked {
                let upstream = sim.streams[id].upstream.clone().unwrap_or_default();
                let by_token = upstream.iter().any(|(n, v)| n == "x-jwt-sub" && v == b"dave");
                let cached = sim.counter(Metric::CacheHits) > 0;
                assert!(by_token || cached, "run {run} ({name}): a protected path went upstream unchecked");
            }
        }
    }
}

/// The preset itself: Prefect's public-path list as shipped.
#[test]
fn the_preset_is_what_the_path_table_expects() {
    let mut sim = Sim::new(PREFECT, 1);
    let id = sim.send(request(b"/api/health", &[]));
    assert_eq!(sim.streams[&id].first, Flow::Continue);
    assert_eq!(sim.counter(Metric::Public), 1);
}

/// What an allow keeps for the client's response: the auth service's cookies replace
/// the upstream's of the same name (`add_auth_cookies_to_response`), ext_authz's
/// `client_headers_on_success` are added; a denied request's response gets neither, and
/// nothing is kept once the stream is over.
#[test]
fn an_allow_keeps_cookies_and_client_headers_for_the_response() {
    let cookies = r#"{"auth": {"cluster": "auth", "add_auth_cookies_to_response": ["session"]}}"#;
    let client =
        r#"{"auth": {"cluster": "auth", "protocol": "ext_authz", "client_headers_on_success": ["set-cookie"]}}"#;
    for config in [cookies, client] {
        let mut sim = Sim::new(config, 1);
        let allowed = sim.send(request(b"/api/flows", &[("authorization", "Bearer t")]));
        sim.settle(|_, _| Answer::Allow.reply());
        let upstream = pairs(&[(":status", "200"), ("set-cookie", "session=upstream"), ("set-cookie", "other=1")]);
        assert_eq!(sim.response(allowed, upstream.clone()), Flow::Continue);
        let response = sim.host.stream(allowed).response;
        assert!(response.contains(&("set-cookie".into(), b"session=abc; Path=/".to_vec())), "{config}: {response:?}");
        assert!(response.contains(&("set-cookie".into(), b"other=1".to_vec())), "{config}: {response:?}");
        // What was kept is used once: a second response callback gets nothing.
        sim.response(allowed, upstream.clone());
        let again = sim.host.stream(allowed).response;
        assert_eq!(again, upstream, "{config}");
        sim.end(allowed);
        assert!(!sim.workers[0].kept.keeps("cookies") && !sim.workers[0].kept.keeps("client_headers"));
        sim.check();
    }
}

/// An `otherwise: deny` rule holds for every spelling of its path: a client outside its
/// range gets its status, with no callout, whenever an interpretation of the target falls
/// under the rule (an oracle from the public-path match and the interpretations, not the
/// gate); a client inside is never denied by it.
#[test]
fn deny_rules_hold_for_every_spelling() {
    use crate::access::interpretations::{interpretations, Interpretations};
    use crate::policy::route::PathMatch;
    let config = r#"{"auth": {"cluster": "auth"}, "public_paths": ["/auth", "/api/health",
        {"path": "/internal", "source_ranges": ["10.0.0.0/8"], "otherwise": "deny", "deny_status": 410},
        {"path": "/hooks", "source_ranges": ["10.0.0.0/8"], "otherwise": "deny", "deny_status": 404}]}"#;
    let mut targets: Vec<Vec<u8>> = path_table().into_iter().map(|(_, path, _)| path).collect();
    let spellings = internal_spellings();
    assert_eq!(spellings.len(), 12, "tests/data/internal_spellings.txt");
    targets.extend(spellings);
    for (address, inside) in [("10.1.1.1:1", true), ("203.0.113.9:1", false)] {
        let mut sim = Sim::new(config, 1);
        let mut sent = Vec::new();
        for target in &targets {
            let id = sim.next_id_for_test();
            sim.host.set_property(id, "source.address", address.as_bytes());
            sim.send(spoofing(target, &[("authorization", "Bearer t")]));
            sent.push((id, target.clone()));
        }
        sim.settle(|_, _| Answer::Allow.reply());
        sim.check();
        let settings = sim.settings.clone();
        for (id, target) in sent {
            let covered: Vec<usize> = match settings.public.classify(&target) {
                PathMatch::Public(index) => vec![index],
                PathMatch::Protected => Vec::new(),
                PathMatch::NotCanonical => match interpretations(&target) {
                    Interpretations::Paths(paths) => {
                        paths.iter().filter_map(|p| settings.public.template_of(p)).collect()
                    }
                    Interpretations::TooMany => {
                        panic!("{}: too many interpretations", String::from_utf8_lossy(&target))
                    }
                },
            };
            let statuses: Vec<u32> = covered
                .iter()
                .filter_map(|i| match settings.public.template(*i) {
                    Some("/internal") => Some(410),
                    Some("/hooks") => Some(404),
                    _ => None,
                })
                .collect();
            let shown = String::from_utf8_lossy(&target);
            let outcome = sim.outcome(id);
            if inside || statuses.is_empty() {
                assert!(!matches!(outcome, Some(404 | 410)), "{address}: {shown} denied by a rule: {outcome:?}");
            } else {
                assert!(
                    outcome.is_some_and(|s| statuses.contains(&s)),
                    "{address}: {shown} must be denied ({statuses:?}), got {outcome:?}"
                );
                assert_eq!(sent_by(&sim, id), 0, "{shown}: denied before any callout");
            }
        }
    }
}

/// A client that forges every forwarding header Traefik knows (names lower-cased, as
/// Envoy's codecs hand them over).
const FORGED: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil.example.com"),
    ("x-forwarded-uri", "/api/health"),
    ("x-forwarded-method", "GET"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-prefix", "/evil"),
    ("x-real-ip", "6.6.6.6"),
];

/// The callout's `x-forwarded-*` headers (name, value) for one request from 127.0.0.1.
fn forwarded_on_the_callout(config: &str) -> Vec<(String, String)> {
    let mut sim = Sim::new(config, 1);
    let id = sim.next_id_for_test();
    sim.host.set_property(id, "source.address", b"127.0.0.1:5555");
    let mut extra = vec![("authorization", "Bearer t"), (":scheme", "http")];
    extra.extend_from_slice(FORGED);
    sim.send(request(b"/api/flows", &extra));
    let call = sim.host.dispatched()[0].clone();
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(sim.outcome(id), Some(0));
    sim.check();
    call.headers.into_iter().filter(|(n, _)| n.starts_with("x-forwarded-") || n == "x-real-ip").collect()
}

/// `trust_forward_header`: a proxy in front is believed (its X-Forwarded-* pass, a listed
/// one too, and X-Forwarded-For is extended with the peer); `forward_auth: false` sends
/// none of them. The forwardAuth values themselves are unit-tested in policy/forward.rs.
#[test]
fn trusted_forwarding_headers_pass_and_forward_auth_off_sends_none() {
    let trusted = r#"{"auth": {"cluster": "auth", "trust_forward_header": true,
        "request_headers": ["authorization", "x-forwarded-prefix"]}}"#;
    let sent = forwarded_on_the_callout(trusted);
    let get = |name: &str| -> Vec<&str> { sent.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect() };
    for (name, want) in [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "evil.example.com"),
        ("x-forwarded-uri", "/api/health"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "6.6.6.6, 127.0.0.1"),
    ] {
        assert_eq!(get(name), vec![want], "{name}: {sent:?}");
    }
    assert!(get("x-real-ip").is_empty(), "x-real-ip is not listed: {sent:?}");
    let off = forwarded_on_the_callout(r#"{"auth": {"cluster": "auth", "forward_auth": false}}"#);
    assert!(off.is_empty(), "forward_auth off still sent {off:?}");
}

/// The address a source rule read is the callout's X-Forwarded-For too: one
/// `source.address` read per request (each is a ~10 k-instruction host call in Envoy).
#[test]
fn the_peer_address_is_read_once_per_request() {
    let mut sim = Sim::new(r#"{"auth": {"cluster": "auth"}, "source_ranges": ["10.0.0.0/8"]}"#, 1);
    let id = send_inside(&mut sim, request(b"/api/flows", &[("authorization", "Bearer t")]), true);
    let call = sim.host.dispatched()[0].clone();
    assert!(call.headers.contains(&("x-forwarded-for".into(), "10.1.2.3".into())), "{:?}", call.headers);
    sim.settle(|_, _| Answer::Allow.reply());
    assert_eq!(sim.outcome(id), Some(0));
    let reads = sim.host.calls_in(id).into_iter().filter(|c| *c == "property").count();
    assert_eq!(reads, 1, "one property read: {:?}", sim.host.calls_in(id));
    sim.check();
}
