//! One request's flow, as one state value driven by the host's callbacks. `Request::run`
//! lists the request's steps in order (each in flow/steps/); the rest of this file is
//! what the request waits for between callbacks and how each wait ends.

use std::time::Duration;

use log::warn;

use crate::authz_policy::Selected;
use crate::flow::host::{Host, Map};
use crate::flow::outcome::{Step, Waiting};
use crate::flow::reply::{fail_closed, reply};
use crate::flow::request_info::HostRequestInfo;
use crate::flow::request_log::{self, Via};
use crate::flow::steps::access::{self, PeerFacts};
use crate::flow::steps::body::{self, BodyWait};
use crate::flow::steps::{cache, callout, decide, inject, jwks_wait, jwt, public, select, strip};
use crate::flow::worker::Worker;
use crate::flow::{decision_log, header_map};
use crate::flow::{jwks_fetch, Flow};
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::decision::{Failure, FAILURE_BODY};
use crate::policy::envoy_reply::ENVOY_RETRY_HEADERS;
use crate::policy::forward::CalloutHeader;
use crate::policy::request_body::BodyVerdict;
use crate::telemetry::{Decided, How, Outcome};

/// One request (one http context): what it waits for, and its body when the callout
/// carries it.
pub struct Request {
    id: u32,
    waiting: Option<Waiting>,
    /// With `auth.with_request_body` or `auth.forward_body`, a protected request that has a body.
    body: Option<BodyWait>,
    /// With `policies`: the provider checking the request now (`providers` order), and
    /// those still to check it after an allow, in order.
    provider: usize,
    remaining: Selected,
}

/// Which pass over the request's headers [`Request::run`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The headers just arrived (`end_of_stream`: no body follows).
    Headers { end_of_stream: bool },
    /// The request waited for its own JWKS fetch, which is over.
    AfterJwksFetch,
}

impl Pass {
    fn is_first(self) -> bool {
        matches!(self, Pass::Headers { .. })
    }
}

impl Request {
    pub fn new(id: u32) -> Request {
        Request { id, waiting: None, body: None, provider: 0, remaining: Selected::default() }
    }

    /// The request's steps, in order. Each answers a [`Step`]: on to the next, or the
    /// request stops there (upstream, replied, or paused until what it waits for comes).
    /// The callout's headers are built only past the JWT step (a locally verified token
    /// needs neither them nor the peer address they may read).
    fn run<H: Host>(&mut self, host: &H, worker: &mut Worker, settings: &Settings, pass: Pass) -> Step {
        let id = self.id;
        // One host call for the whole map; then only the headers actually present are removed.
        let Some(buffer) = host.header_map(Map::RequestHeaders) else { return self.fail(host, worker, settings) };
        let Some(headers) = header_map::parse(&buffer) else { return self.fail(host, worker, settings) };
        let routed = settings.route(&headers);
        // The second pass runs on the request the first one stripped.
        if pass.is_first() && strip::strip(host, &routed.strip).is_err() {
            return self.fail(host, worker, settings);
        }
        let public = routed.public(&settings.public);
        let (public, peer) = match &settings.access {
            None => (public, PeerFacts::default()),
            Some(rules) => match access::apply(host, worker, id, settings, rules, &headers, (public, routed.path)) {
                Step::Next(checked) => checked,
                _ => return Step::Replied,
            },
        };
        match (public, pass) {
            (None, _) => {}
            (Some(template), Pass::Headers { .. }) => return public::pass(host, worker, id, settings, template),
            // It was protected on its first pass: the same request cannot have become public.
            (Some(_), Pass::AfterJwksFetch) => return self.fail(host, worker, settings),
        }
        if let (Pass::Headers { end_of_stream: false }, Some(_)) = (pass, &settings.auth.with_request_body) {
            self.body = Some(BodyWait { since_ms: host.now_ms(), received: 0, complete: false, seen: false });
        }
        let claims = match jwt::check(host, worker, id, settings, &headers, pass.is_first()).next() {
            Ok(claims) => claims,
            Err(decided) => return decided,
        };
        // X-Forwarded-For and the operators of headers_to_add reuse the address an access
        // rule or a policy read: one property read.
        let PeerFacts { principal, mut address } = peer;
        if let Some(selection) = &settings.selection {
            let step = select::select(host, worker, id, settings, selection, &headers, claims.as_ref(), &mut address);
            match step.next() {
                Ok(selected) => self.start_providers(worker, selected),
                Err(decided) => {
                    self.body = None;
                    return decided;
                }
            }
        }
        // Each selected provider in turn: its own callout, cache key and decision.
        let main = settings;
        let Some(settings) = main.provider(self.provider) else { return self.fail(host, worker, main) };
        let mut built = match settings.callout(&headers, HostRequestInfo::with_source(host, address)) {
            Ok(callout) => callout,
            Err(failure) => return fail_closed(host, worker, id, settings, failure),
        };
        if let Some((name, principal)) = principal {
            built.push((name, principal.into()));
        }
        if self.body.is_some() {
            // The body is not part of the cache key: such a decision is neither looked up,
            // stored nor shared with an identical callout.
            let trace = settings.trace_headers(&headers, &built);
            let callout = built.iter().chain(&trace).map(|(n, v)| (n.to_string(), v.to_string())).collect();
            return self.body_step(host, worker, settings, callout);
        }
        let lookup = match cache::probe(host, worker, settings, &built) {
            Ok(decision) => {
                let step =
                    inject::apply_decision(host, worker, id, settings, &decision, Via::Cache, inject::Said::default());
                return self.then_next_provider(host, worker, main, step);
            }
            Err(lookup) => lookup,
        };
        if let Some(lookup) = lookup.as_ref().filter(|lookup| self.coalesces() && callout::join(worker, lookup, id)) {
            return Step::Paused(Waiting::Coalesced { lookup: lookup.clone() });
        }
        let trace = settings.trace_headers(&headers, &built);
        let step = callout::send(host, worker, id, settings, sent(&built, &trace), lookup, None);
        self.then_next_provider(host, worker, main, step)
    }

    /// The providers `selected` checks the request with: the first now, the others after.
    fn start_providers(&mut self, worker: &mut Worker, selected: Selected) {
        let mut order = selected.iter();
        self.provider = order.next().unwrap_or(0);
        self.remaining = Selected(order.fold(0, |bits, i| bits | (1 << i)));
        self.mark_providers_left(worker);
    }

    fn mark_providers_left(&self, worker: &mut Worker) {
        worker.kept.set_providers_left(self.id, !self.remaining.is_empty());
    }

    /// Only a request one provider checks, the first, waits for an identical callout or
    /// lets others wait for its own: a waiter is settled from another request's callback,
    /// which cannot go on to its next provider, and an orphaned callout is resent by the
    /// root context to the first provider.
    fn coalesces(&self) -> bool {
        self.provider == 0 && self.remaining.is_empty()
    }

    /// After a provider's verdict on this request (`step`): an allow with providers left
    /// goes on to the next one, over the request as the allow left it (its upstream
    /// headers added, as Istio's next ext_authz filter sees it); anything else stands.
    fn then_next_provider<H: Host>(&mut self, host: &H, worker: &mut Worker, main: &Settings, step: Step) -> Step {
        let Step::Upstream = step else { return step };
        let Some(next) = self.remaining.iter().next() else { return Step::Upstream };
        self.remaining.0 &= !(1 << next);
        self.provider = next;
        self.mark_providers_left(worker);
        self.next_provider(host, worker, main)
    }

    /// The callout of the provider now due, built from the request's current headers.
    fn next_provider<H: Host>(&mut self, host: &H, worker: &mut Worker, main: &Settings) -> Step {
        let Some(settings) = main.provider(self.provider) else { return self.fail(host, worker, main) };
        let Some(buffer) = host.header_map(Map::RequestHeaders) else { return self.fail(host, worker, main) };
        let Some(headers) = header_map::parse(&buffer) else { return self.fail(host, worker, main) };
        let mut built = match settings.callout(&headers, HostRequestInfo::with_source(host, None)) {
            Ok(callout) => callout,
            Err(failure) => return fail_closed(host, worker, self.id, settings, failure),
        };
        if let Some((name, principal)) = access::principal_again(host, settings) {
            built.push((name, principal.into()));
        }
        let lookup = match cache::probe(host, worker, settings, &built) {
            Ok(decision) => {
                let step = inject::apply_decision(
                    host,
                    worker,
                    self.id,
                    settings,
                    &decision,
                    Via::Cache,
                    inject::Said::default(),
                );
                return self.then_next_provider(host, worker, main, step);
            }
            Err(lookup) => lookup,
        };
        let trace = settings.trace_headers(&headers, &built);
        let step = callout::send(host, worker, self.id, settings, sent(&built, &trace), lookup, None);
        self.then_next_provider(host, worker, main, step)
    }

    /// The body seen so far against its limit: wait for more, answer 413 (401
    /// forward-auth), or send the callout (`callout`: its headers) with it.
    fn body_step<H: Host>(
        &mut self,
        host: &H,
        worker: &mut Worker,
        settings: &Settings,
        callout: Vec<(String, String)>,
    ) -> Step {
        let (Some(rules), Some(wait)) = (&settings.auth.with_request_body, self.body.as_ref()) else {
            return self.fail(host, worker, settings);
        };
        match rules.step(wait.received, wait.complete) {
            BodyVerdict::Wait => {
                if !wait.seen {
                    body::wait(worker, self.id, wait.since_ms);
                }
                Step::Paused(Waiting::Body { callout })
            }
            BodyVerdict::TooLarge => {
                let answer = rules.too_large();
                let decided = Decided::new(Outcome::Denied, How::Filter).reason("request_body_too_large");
                decision_log::record(host, worker, self.id, Some(settings), decided);
                request_log::failed_closed(
                    host,
                    self.id,
                    answer.status,
                    format_args!("request body over {}", rules.field()),
                );
                reply(host, self.id, answer.status, answer.headers.to_vec(), answer.body);
                Step::Replied
            }
            BodyVerdict::Send { len, partial } => {
                let callout: Vec<(&str, &str)> = callout.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let id = self.id;
                let sent = body::with_body(host, rules, callout, len, partial, |headers, bytes| {
                    callout::send(host, worker, id, settings, headers, None, Some(bytes))
                });
                match sent {
                    // A refused dispatch's stale allow: the headers wait in Pause.
                    Some(Step::Upstream) => {
                        crate::flow::reply::resume(host, self.id);
                        Step::Resumed
                    }
                    Some(step) => step,
                    None => fail_closed(host, worker, self.id, settings, Failure::HostError),
                }
            }
        }
    }

    /// Sends the callout once more, with what is left of `auth.timeout` since `sent_ms`:
    /// its connection was reset or refused before any answer. The callout is rebuilt from
    /// the request (already stripped, which changes nothing it sends). `None` when no
    /// time is left or it cannot be sent; the caller then decides on Envoy's reply.
    fn retry<H: Host>(&self, host: &H, worker: &mut Worker, settings: &Settings, sent_ms: u64) -> Option<u32> {
        let elapsed = Duration::from_millis(host.now_ms().saturating_sub(sent_ms));
        let left = settings.auth.timeout.saturating_sub(elapsed);
        if left.is_zero() {
            return None;
        }
        let buffer = host.header_map(Map::RequestHeaders)?;
        let headers = header_map::parse(&buffer)?;
        let mut built = settings.callout(&headers, HostRequestInfo::with_source(host, None)).ok()?;
        // Only a protected request sends a callout: it carried the principal if there was one.
        if let Some((name, principal)) = access::principal_again(host, settings) {
            built.push((name, principal.into()));
        }
        let trace = settings.trace_headers(&headers, &built);
        let callout = sent(&built, &trace);
        let auth = &settings.auth;
        let token = match (&auth.with_request_body, &self.body) {
            (Some(rules), Some(wait)) => {
                let BodyVerdict::Send { len, partial } = rules.step(wait.received, wait.complete) else { return None };
                body::with_body(host, rules, callout, len, partial, |headers, bytes| {
                    callout::dispatch_within(host, worker, auth, headers, Some(bytes), left)
                })?
                .ok()?
            }
            _ => callout::dispatch_within(host, worker, auth, callout, None, left).ok()?,
        };
        worker.counters.count(Metric::CalloutRetries);
        warn!(
            "[{}] callout connection reset or refused before an answer: sent again ({} ms left)",
            self.id,
            left.as_millis() as u64
        );
        Some(token)
    }

    /// Fail closed: `status_on_error` with a short body; the request never goes upstream.
    fn fail<H: Host>(&self, host: &H, worker: &mut Worker, settings: &Settings) -> Step {
        fail_closed(host, worker, self.id, settings, Failure::HostError)
    }

    /// What the callback answers the host after a step: go on, or hold the request
    /// (replied, resumed already, or waiting: then remembered).
    fn hold<T>(&mut self, step: Step<T>) -> Flow {
        match step {
            Step::Next(_) | Step::Upstream => Flow::Continue,
            Step::Replied | Step::Resumed => Flow::Pause,
            Step::Paused(waiting) => {
                self.waiting = Some(waiting);
                Flow::Pause
            }
        }
    }

    /// A second pass ended a request that was paused: resume it if allowed.
    fn resume_if_allowed<H: Host>(&mut self, host: &H, step: Step) {
        match step {
            Step::Next(()) | Step::Upstream => crate::flow::reply::resume(host, self.id),
            Step::Replied | Step::Resumed => {}
            Step::Paused(waiting) => self.waiting = Some(waiting),
        }
    }

    fn waits(&self, worker: &Worker) -> bool {
        match &self.waiting {
            None => false,
            Some(Waiting::Callout { .. } | Waiting::Jwks { .. } | Waiting::Body { .. }) => true,
            Some(Waiting::Coalesced { lookup }) => worker.in_flight.is_waiting(&lookup.key, self.id),
            Some(Waiting::JwksElsewhere) => jwks_wait::is_waiting(worker, self.id),
        }
    }

    fn hold_while_waiting(&self, worker: &Worker) -> Flow {
        if self.waits(worker) {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    /// The request's headers: its steps, or 500 without a configuration.
    pub fn on_request_headers<H: Host>(
        &mut self,
        host: &H,
        worker: &mut Worker,
        settings: Option<&Settings>,
        end_of_stream: bool,
    ) -> Flow {
        let Some(settings) = settings else {
            request_log::failed_closed(host, self.id, 500, "nebula-authz has no configuration");
            worker.counters.count(Metric::Errors);
            let decided = Decided::new(Outcome::Failed, How::Filter).reason("no_configuration");
            decision_log::record(host, worker, self.id, None, decided);
            reply(host, self.id, 500, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
            return Flow::Pause;
        };
        let step = self.run(host, worker, settings, Pass::Headers { end_of_stream });
        if let Step::Paused(_) = step {
            decision_log::paused(host, worker, self.id, settings);
        }
        self.hold(step)
    }

    /// With `allow_on_headers_stop_iteration`, Envoy calls this while the headers are
    /// held: Pause buffers the chunk (StopIterationAndBuffer) and `body_size` is all
    /// buffered so far. Without it Envoy holds the body itself; either way a body
    /// callback answering Continue must never be what lets a request through early.
    pub fn on_request_body<H: Host>(
        &mut self,
        host: &H,
        worker: &mut Worker,
        settings: Option<&Settings>,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if let Some(wait) = self.body.as_mut() {
            if !wait.seen {
                wait.seen = true;
                body::delivered(worker);
            }
            wait.received = body_size;
            wait.complete = end_of_stream;
            if let (Some(Waiting::Body { .. }), Some(settings)) = (&self.waiting, settings) {
                let Some(Waiting::Body { callout }) = self.waiting.take() else { return Flow::Pause };
                let step = self.body_step(host, worker, settings, callout);
                return self.hold(step);
            }
        }
        self.hold_while_waiting(worker)
    }

    /// On every path, whether the headers were held or already went upstream: the
    /// trailers are not forwarded before this returns. Failing here answers the client
    /// locally (Envoy resets the stream instead if the response has begun); either way
    /// the upstream request ends without them.
    pub fn on_request_trailers<H: Host>(&mut self, host: &H, worker: &mut Worker, settings: Option<&Settings>) -> Flow {
        let Some(settings) = settings else { return self.hold_while_waiting(worker) };
        if strip::trailers(host, settings).is_err() {
            let step = self.fail(host, worker, settings);
            return self.hold(step);
        }
        // Trailers end a body whose last data callback did not.
        if let Some(wait) = self.body.as_mut() {
            wait.complete = true;
            if let Some(Waiting::Body { .. }) = &self.waiting {
                let Some(Waiting::Body { callout }) = self.waiting.take() else { return Flow::Pause };
                let step = self.body_step(host, worker, settings, callout);
                return self.hold(step);
            }
        }
        self.hold_while_waiting(worker)
    }

    /// The upstream's response headers: what an allow kept for the client is added.
    pub fn on_response_headers<H: Host>(&mut self, host: &H, worker: &mut Worker, settings: Option<&Settings>) -> Flow {
        if settings.is_some_and(Settings::any_client_headers_on_success) {
            if let Err(status) = inject::add_client_headers(host, worker, self.id) {
                warn!("[{}] cannot add the auth headers to the response: {status:?}", self.id);
            }
        }
        let cookies = worker.kept.take_cookies(self.id);
        if let (Some(cookies), Some(settings)) = (cookies, settings) {
            if let Err(status) = inject::add_auth_cookies(host, settings, &cookies) {
                // The request was allowed; a lost cookie is not worth failing the response.
                warn!("[{}] cannot add the auth cookies to the response: {status:?}", self.id);
            }
        }
        Flow::Continue
    }

    /// The answer to one of this request's calls (`token`): its callout (decide → inject,
    /// or one retry), or its JWKS fetch (then the second pass).
    pub fn on_call_answer<H: Host>(
        &mut self,
        host: &H,
        worker: &mut Worker,
        settings: Option<&Settings>,
        token: u32,
        body_size: usize,
    ) {
        let (resend, sent_ms, sent_us, retried) = match self.waiting.take() {
            Some(Waiting::Callout { token: t, resend, sent_ms, sent_us, retried }) if t == token => {
                (resend, sent_ms, sent_us, retried)
            }
            Some(Waiting::Jwks { token: t, provider }) if t == token => {
                let Some(settings) = settings else { return };
                if let Some(jwt) = &settings.jwt {
                    // OIDC discovery: the openid-configuration came; wait for its JWKS.
                    if let Some(next) = jwks_fetch::finish_fetch(host, worker, jwt, provider, token, body_size) {
                        self.waiting = Some(Waiting::Jwks { token: next, provider });
                        return;
                    }
                }
                // Its token again, with the keys the fetch brought (no second fetch).
                let step = self.run(host, worker, settings, Pass::AfterJwksFetch);
                self.resume_if_allowed(host, step);
                return;
            }
            other => {
                self.waiting = other;
                return;
            }
        };
        let Some(main) = settings else { return };
        let Some(settings) = main.provider(self.provider) else { return };
        let may_retry = settings.auth.retry_on_reset && !retried;
        let lookup = resend.as_ref().map(|c| &c.lookup);
        let outcome = match decide::answer_or_retry(host, worker, settings, lookup, body_size, may_retry) {
            Some(outcome) => outcome,
            None => match self.retry(host, worker, settings, sent_ms) {
                Some(token) => {
                    self.waiting = Some(Waiting::Callout { token, resend, sent_ms, sent_us, retried: true });
                    return;
                }
                None => decide::answer(host, worker, settings, lookup, body_size),
            },
        };
        decision_log::callout_time(host, worker, self.id, settings, sent_us);
        if self.remaining.is_empty() {
            let _: Step = callout::settle(host, worker, self.id, settings, lookup, &outcome);
            decision_log::answered(worker);
            return;
        }
        // Providers left: nobody waits for this callout (see `coalesces`).
        let step = inject::apply(host, worker, self.id, settings, &outcome, Via::AuthService);
        let step = self.then_next_provider(host, worker, main, step);
        decision_log::answered(worker);
        self.resume_if_allowed(host, step);
    }

    /// The stream is over (completed or reset): stop waiting, and do not strand waiters.
    pub fn on_stream_end<H: Host>(&mut self, host: &H, worker: &mut Worker) {
        worker.kept.forget(self.id);
        decision_log::forget(worker, self.id);
        if self.body.as_ref().is_some_and(|b| !b.seen) {
            body::arrived(worker, self.id);
        }
        match self.waiting.take() {
            Some(Waiting::Coalesced { lookup }) => worker.in_flight.leave(&lookup.key, self.id),
            Some(Waiting::Callout { resend: Some(resend), .. }) => callout::abandon(host, worker, self.id, resend),
            Some(Waiting::JwksElsewhere) => jwks_wait::leave(worker, self.id),
            _ => {}
        }
    }
}

/// The headers to send: the callout `built` (its cache key was taken on it), then the
/// request's `trace` headers; with room for the retry headers the dispatch may add.
fn sent<'a>(built: &'a [CalloutHeader<'a>], trace: &'a [CalloutHeader<'a>]) -> Vec<(&'a str, &'a str)> {
    let mut sent = Vec::with_capacity(built.len() + trace.len() + ENVOY_RETRY_HEADERS.len());
    sent.extend(built.iter().chain(trace).map(|(name, value)| (*name, value.as_ref())));
    sent
}
