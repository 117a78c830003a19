//! The flow's native tests: whole requests driven through flow/request.rs and
//! flow/root_tasks.rs against the in-memory host (flow/mock_host.rs), over generated
//! configurations, requests, auth answers and interleavings. [`Sim`] is the driver;
//! [`Sim::check`] asserts the invariants every run must keep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod answers;
mod cache_flow;
mod decision_values;
mod failures;
mod interleavings;
mod jwt_flow;
mod policies;
mod requests;

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::flow::mock_host::{End, MockHost, Pairs};
use crate::flow::request::Request;
use crate::flow::root_tasks;
use crate::flow::worker::Worker;
use crate::flow::Flow;
use crate::jwt::boringssl_stand_in::BoringSslStandIn;
use crate::jwt::verifier::JwtVerifier;
use crate::metric_names::{Histogram, Metric};
use crate::plugin_config::Settings;
use crate::telemetry::FILTER_STATE_NAME;

/// The clock the tests start at (2030): tokens are minted around it.
pub const NOW_MS: u64 = 1_900_000_000_000;

/// What a client sends as an identity header; no such value may reach the upstream or
/// the auth service.
pub const SPOOF: &str = "spoofed-by-client";

/// Identity header names in the spellings a client may try (case, underscores).
pub const IDENTITY_SPELLINGS: &[&str] = &[
    "x-nebula-actor-id",
    "X-Nebula-Actor-Id",
    "x_nebula_actor_id",
    "X_NEBULA_ACTOR_PERMISSIONS",
    "x-nebula_ratelimit-config",
    "x-nebula-log-limit-config",
];

pub fn pairs(list: &[(&str, &str)]) -> Pairs {
    list.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

/// A request's headers: method, path, authority, then `extra`.
pub fn request(path: &[u8], extra: &[(&str, &str)]) -> Pairs {
    let mut headers = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), path.to_vec()),
        (":authority".into(), b"app".to_vec()),
    ];
    headers.extend(pairs(extra));
    headers
}

/// The same, with every identity spelling spoofed by the client.
pub fn spoofing(path: &[u8], extra: &[(&str, &str)]) -> Pairs {
    let mut headers = request(path, extra);
    for name in IDENTITY_SPELLINGS {
        headers.push((name.to_string(), SPOOF.as_bytes().to_vec()));
    }
    headers
}

/// One stream as the sim saw it.
pub struct Seen {
    pub worker: usize,
    request: Request,
    /// What `on_request_headers` answered.
    pub first: Flow,
    /// The request headers when it went upstream (continued, or resumed).
    pub upstream: Option<Pairs>,
    pub gone: bool,
}

/// Workers over one in-memory host, and the streams they run.
pub struct Sim {
    pub host: MockHost,
    pub settings: Rc<Settings>,
    pub workers: Vec<Worker>,
    pub streams: BTreeMap<u32, Seen>,
    /// Call tokens already answered.
    answered: Vec<u32>,
    next_id: u32,
}

/// The root context of worker `w`.
pub fn root(w: usize) -> u32 {
    1 + w as u32
}

impl Sim {
    pub fn new(config: &str, workers: usize) -> Sim {
        let settings = Rc::new(Settings::from_json(config.as_bytes()).unwrap_or_else(|e| panic!("{e}: {config}")));
        let host = MockHost::new(NOW_MS);
        let workers = (0..workers)
            .map(|_| {
                let mut worker = Worker::default();
                worker.counters.define(&host);
                if let Some(jwt) = &settings.jwt {
                    // Envoy's crypto as the filter finds it at start: ES256/ES384 are checked only there.
                    let verifier = JwtVerifier::new(jwt).with_host_crypto(Box::new(BoringSslStandIn));
                    worker.set_verifier(Some((verifier, jwt)));
                    worker.counters.define_jwt(&host);
                }
                worker
            })
            .collect();
        Sim { host, settings, workers, streams: BTreeMap::new(), answered: Vec::new(), next_id: 100 }
    }

    /// A new stream on worker `w`: its headers arrive (`end_of_stream`: no body follows).
    pub fn send_on(&mut self, w: usize, headers: Pairs, end_of_stream: bool) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let properties = self.host.stream(id).properties;
        self.host.open(id, headers);
        for (path, value) in properties {
            self.host.set_property(id, &path, &value);
        }
        let mut request = Request::new(id);
        let first = request.on_request_headers(&self.host, &mut self.workers[w], Some(&self.settings), end_of_stream);
        let upstream = (first == Flow::Continue).then(|| self.host.stream(id).request);
        self.streams.insert(id, Seen { worker: w, request, first, upstream, gone: false });
        self.snapshot();
        id
    }

    /// The id the next stream gets (to script its properties before its headers).
    pub fn next_id_for_test(&self) -> u32 {
        self.next_id
    }

    pub fn send(&mut self, headers: Pairs) -> u32 {
        self.send_on(0, headers, true)
    }

    /// A body chunk of stream `id` (all buffered so far is what the filter sees).
    pub fn body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Flow {
        let size = self.host.push_body(id, chunk);
        self.host.call_into(id);
        let seen = self.streams.get_mut(&id).unwrap();
        let flow = seen.request.on_request_body(
            &self.host,
            &mut self.workers[seen.worker],
            Some(&self.settings),
            size,
            end_of_stream,
        );
        self.snapshot();
        flow
    }

    pub fn trailers(&mut self, id: u32, trailers: Pairs) -> Flow {
        self.host.set_trailers(id, trailers);
        self.host.call_into(id);
        let seen = self.streams.get_mut(&id).unwrap();
        let flow = seen.request.on_request_trailers(&self.host, &mut self.workers[seen.worker], Some(&self.settings));
        self.snapshot();
        flow
    }

    /// The upstream's response headers arrive.
    pub fn response(&mut self, id: u32, response: Pairs) -> Flow {
        self.host.set_response(id, response);
        self.host.call_into(id);
        let seen = self.streams.get_mut(&id).unwrap();
        seen.request.on_response_headers(&self.host, &mut self.workers[seen.worker], Some(&self.settings))
    }

    /// The stream goes away (client reset, or done): its context is deleted.
    pub fn end(&mut self, id: u32) {
        self.host.close(id);
        let seen = self.streams.get_mut(&id).unwrap();
        seen.gone = true;
        self.host.call_into(id);
        seen.request.on_stream_end(&self.host, &mut self.workers[seen.worker]);
    }

    /// Calls sent and not answered yet: (token, cluster).
    pub fn pending(&self) -> Vec<(u32, String)> {
        self.host
            .dispatched()
            .into_iter()
            .filter(|d| !self.answered.contains(&d.token))
            .map(|d| (d.token, d.cluster))
            .collect()
    }

    /// Answers call `token` (`None`: no headers, Envoy's reset or timeout), in the
    /// context that sent it, as Envoy does.
    pub fn answer(&mut self, token: u32, answer: Option<(Pairs, Vec<u8>)>) {
        let call = self.host.call(token).unwrap();
        assert!(!self.answered.contains(&token), "call {token} answered twice");
        self.answered.push(token);
        let body_size = answer.as_ref().map_or(0, |(_, body)| body.len());
        self.host.answering(answer);
        self.host.call_into(call.context);
        if let Some(w) = (0..self.workers.len()).find(|w| root(*w) == call.context) {
            root_tasks::on_call_answer(
                &self.host,
                &mut self.workers[w],
                Some(&self.settings),
                root(w),
                token,
                body_size,
            );
        } else if let Some(seen) = self.streams.get_mut(&call.context) {
            // A deleted context's calls are cancelled: Envoy never answers them.
            if !seen.gone {
                seen.request.on_call_answer(
                    &self.host,
                    &mut self.workers[seen.worker],
                    Some(&self.settings),
                    token,
                    body_size,
                );
            }
        }
        self.host.answering(None);
        self.snapshot();
    }

    /// Worker `w`'s root context ticks.
    pub fn tick(&mut self, w: usize) {
        self.host.call_into(root(w));
        root_tasks::on_tick(&self.host, &mut self.workers[w], Some(&self.settings), root(w));
        self.snapshot();
    }

    /// Answers every call with `answer(cluster, headers sent)`, ticking each worker in
    /// between (orphans are sent again on a tick), until nothing is in flight.
    pub fn settle(&mut self, mut answer: impl FnMut(&str, &[(String, String)]) -> Option<(Pairs, Vec<u8>)>) {
        for _ in 0..64 {
            for w in 0..self.workers.len() {
                self.tick(w);
            }
            let pending = self.pending();
            if pending.is_empty() {
                return;
            }
            for (token, cluster) in pending {
                let sent = self.host.call(token).unwrap().headers;
                let reply = answer(&cluster, &sent);
                self.answer(token, reply);
            }
        }
        panic!("calls still in flight after 64 rounds: {:?}", self.pending());
    }

    /// Records the headers a stream goes upstream with, when it was just resumed.
    fn snapshot(&mut self) {
        for (id, seen) in self.streams.iter_mut() {
            if seen.upstream.is_none() && self.host.stream(*id).ends.contains(&End::Resume) {
                seen.upstream = Some(self.host.stream(*id).request);
            }
        }
    }

    /// How stream `id` ended: `Some(status)` replied, `Some(0)` went upstream, `None` not yet.
    pub fn outcome(&self, id: u32) -> Option<u32> {
        let seen = &self.streams[&id];
        if seen.first == Flow::Continue {
            return Some(0);
        }
        match self.host.stream(id).ends.first() {
            Some(End::Resume) => Some(0),
            Some(End::Reply { status, .. }) => Some(*status),
            None => None,
        }
    }

    /// The counts of worker `w`, flushed to the host (and so summed over flushes).
    pub fn counter(&mut self, metric: Metric) -> u64 {
        for w in 0..self.workers.len() {
            self.workers[w].counters.flush(&self.host);
        }
        self.host.counter(metric.name())
    }

    /// A counter by its name, flushed.
    pub fn counter_named(&mut self, name: &str) -> u64 {
        for w in 0..self.workers.len() {
            self.workers[w].counters.flush(&self.host);
        }
        self.host.counter(name)
    }

    /// The decision stream `id` recorded for the access log, field by field; every write.
    pub fn decisions(&self, id: u32) -> Vec<BTreeMap<String, String>> {
        self.host
            .stream(id)
            .filter_state
            .iter()
            .filter(|(name, _)| name == FILTER_STATE_NAME)
            .map(|(_, value)| {
                let text = String::from_utf8(value.clone()).unwrap();
                text.split(' ')
                    .map(|field| {
                        let (k, v) = field.split_once('=').unwrap_or_else(|| panic!("{text:?}"));
                        (k.to_string(), v.to_string())
                    })
                    .collect()
            })
            .collect()
    }

    /// Every request that ended recorded exactly one decision, which says what happened
    /// to it (upstream or answered, and with the auth service's status for a relayed
    /// denial); one that never ended recorded none. The decisions add up to the outcome
    /// counters, and each one that waited has one sample in its wait histogram.
    fn check_decisions(&mut self) {
        if !self.settings.telemetry.filter_state {
            return;
        }
        let mut by_outcome: BTreeMap<(String, String), u64> = BTreeMap::new();
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            let decisions = self.decisions(id);
            let Some(ended) = self.outcome(id) else {
                assert!(decisions.is_empty(), "stream {id} never ended but recorded {decisions:?}");
                continue;
            };
            assert_eq!(decisions.len(), 1, "stream {id} (ended {ended}) recorded {decisions:?}");
            let d = &decisions[0];
            let (outcome, how) = (d["outcome"].as_str(), d["how"].as_str());
            if ended == 0 {
                assert!(["public", "allowed"].contains(&outcome), "stream {id} went upstream, recorded {d:?}");
            } else {
                assert!(
                    ["denied", "failed", "source_denied", "principal_denied"].contains(&outcome),
                    "stream {id} was answered {ended}, recorded {d:?}"
                );
            }
            assert_eq!(outcome == "public", ["public", "unselected"].contains(&how), "stream {id}: {d:?}");
            assert!(
                how != "unselected" || self.settings.selection.is_some(),
                "stream {id}: unselected without policies"
            );
            assert_eq!(outcome.ends_with("_denied"), how == "access", "stream {id}: {d:?}");
            if outcome == "failed" {
                assert_ne!(d["reason"], "-", "stream {id} failed without a reason: {d:?}");
            }
            if outcome == "denied" && ["callout", "coalesced", "cache"].contains(&how) {
                assert_eq!(d["status"], ended.to_string(), "stream {id}: a relayed denial's status");
            }
            if outcome != "allowed" {
                assert_eq!(d["actor"], "-", "stream {id}: an actor on a request not allowed: {d:?}");
            }
            *by_outcome.entry((outcome.to_string(), how.to_string())).or_default() += 1;
        }
        let count = |outcome: &str, how: Option<&str>| -> u64 {
            by_outcome.iter().filter(|((o, h), _)| o == outcome && how.is_none_or(|how| how == h)).map(|(_, n)| n).sum()
        };
        let not_jwt = |outcome: &str| count(outcome, None) - count(outcome, Some("jwt"));
        assert_eq!(count("public", None), self.counter(Metric::Public), "public decisions");
        assert_eq!(not_jwt("allowed"), self.counter(Metric::Allows), "allowed decisions (JWT aside)");
        assert_eq!(not_jwt("denied") - count("denied", Some("filter")), self.counter(Metric::Denies), "denials");
        assert_eq!(count("failed", None), self.counter(Metric::Errors), "failed decisions");
        assert_eq!(count("source_denied", None), self.counter(Metric::SourceDenied), "source denials");
        assert_eq!(count("principal_denied", None), self.counter(Metric::PrincipalDenied), "principal denials");
        // A request that paused read the clock (in its own context) and has one wait
        // sample; one decided in the callback of its headers did neither.
        if self.settings.telemetry.histograms {
            let samples: usize = Histogram::ALL
                .iter()
                .filter(|h| **h != Histogram::CalloutTime)
                .map(|h| self.host.histogram(h.name()).len())
                .sum();
            let waited = self
                .streams
                .keys()
                .filter(|id| self.outcome(**id).is_some() && self.host.calls_in(**id).contains(&"now_us"))
                .count();
            assert_eq!(samples, waited, "one wait sample per decided request that paused");
        }
    }

    /// The invariants every run keeps, whatever the configuration, requests and answers.
    pub fn check(&mut self) {
        for (id, seen) in &self.streams {
            let stream = self.host.stream(*id);
            // A paused request ends exactly once (a reply or a resume), unless it went away.
            assert!(stream.ends.len() <= 1, "stream {id} ended {} times: {:?}", stream.ends.len(), stream.ends);
            if seen.first == Flow::Continue {
                assert!(stream.ends.is_empty(), "stream {id} went on and was then ended: {:?}", stream.ends);
            } else if !seen.gone {
                assert_eq!(stream.ends.len(), 1, "paused stream {id} never ended");
            }
            // A stream that went away leaves nothing kept for it on any worker.
            if seen.gone {
                assert!(!self.workers.iter().any(|w| w.kept.keeps_for(*id)), "stream {id} is gone, something kept");
            }
            // No identity header the client sent reaches the upstream.
            if let Some(upstream) = &seen.upstream {
                for (name, value) in upstream {
                    assert!(value != SPOOF.as_bytes(), "stream {id}: the client's {name} reached the upstream");
                }
            }
        }
        // ... nor the auth service.
        for call in self.host.dispatched() {
            for (name, value) in &call.headers {
                assert!(value != SPOOF, "the client's {name} reached cluster {}", call.cluster);
            }
        }
        self.check_decisions();
        // Every callout is counted; every request that ended is counted once by outcome
        // (local JWT verdicts and oversized bodies have counters of their own).
        let clusters: Vec<&str> = std::iter::once(&*self.settings)
            .chain(&self.settings.other_providers)
            .map(|s| s.auth.cluster.as_str())
            .collect();
        let callouts = self.host.dispatched().iter().filter(|d| clusters.contains(&d.cluster.as_str())).count();
        assert_eq!(self.counter(Metric::Callouts), callouts as u64, "callouts counted");
        if self.settings.jwt.is_none() && self.settings.auth.with_request_body.is_none() {
            let ended = self.streams.keys().filter(|id| self.outcome(**id).is_some()).count() as u64;
            let counted: u64 = [
                Metric::Public,
                Metric::Allows,
                Metric::Denies,
                Metric::Errors,
                Metric::SourceDenied,
                Metric::PrincipalDenied,
            ]
            .into_iter()
            .map(|m| self.counter(m))
            .sum();
            assert_eq!(counted, ended, "requests counted by outcome");
        }
    }
}
