//! The http context: one per request. [`Authz::on_headers`] lists the request's steps
//! in order (each in host/steps/); the rest of this file is the proxy-wasm callbacks
//! and what the request waits for between them.
//!
//! Host calls go through `hostcalls` (not the SDK's trait helpers, which `unwrap()`), so
//! a refused call becomes a fail-closed reply instead of a trap that would take down
//! every request on this worker.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::cache::shared::Lookup;
use crate::config::Settings;
use crate::host::clock::now_ms;
use crate::host::header_map;
use crate::host::jwks::{self, JwtState};
use crate::host::metrics::count;
use crate::host::reply::{fail_closed, reply, resume, Applied};
use crate::host::request_info::HostRequestInfo;
use crate::host::request_log::{self, Via};
use crate::host::steps::access::{self, PeerFacts};
use crate::host::steps::body::{self, BodyWait};
use crate::host::steps::cache::{self, Probe};
use crate::host::steps::callout::{self, Resend};
use crate::host::steps::jwt::{self, JwtStep};
use crate::host::steps::{decide, inject, jwks_wait, public, strip};
use crate::metrics::Metric;
use crate::policy::decision::{Failure, FAILURE_BODY};
use crate::policy::request_body::BodyStep;

pub struct Authz {
    id: u32,
    settings: Option<Rc<Settings>>,
    jwt: Option<Rc<RefCell<JwtState>>>,
    /// What the request (and its body) waits for.
    pending: Option<Pending>,
    /// With `auth.with_request_body` or `auth.forward_body`, a protected request that has a body.
    body: Option<BodyWait>,
}

enum Pending {
    /// Our own callout (`token`); when caching, its lookup and headers (to resend it
    /// for the requests waiting on it if this stream goes away first); when it was first
    /// sent (Unix ms: a retry gets what is left of the timeout) and whether it is the retry.
    Callout { token: u32, cached: Option<Resend>, sent_ms: u64, retried: bool },
    /// Another request's identical callout on this worker (coalescing).
    Coalesced { lookup: Lookup },
    /// A JWKS fetch for a token whose key is not known yet.
    Jwks { token: u32, provider: usize },
    /// Another context's JWKS fetch: the root context checks the token again when it is
    /// over (host/steps/jwks_wait.rs).
    JwksElsewhere,
    /// The client's body, before the callout (`with_request_body`/`forward_body`): its headers.
    Body { callout: Vec<(String, String)> },
}

impl Authz {
    pub fn new(id: u32, settings: Option<Rc<Settings>>, jwt: Option<Rc<RefCell<JwtState>>>) -> Authz {
        Authz { id, settings, jwt, pending: None, body: None }
    }

    /// The request's steps: strip → public → JWT → cache → callout, then (when the
    /// answer arrives, [`Context::on_http_call_response`]) decide → inject.
    fn on_headers(&mut self, settings: &Settings, end_of_stream: bool) -> Action {
        // One host call for the whole map; then only the headers actually present are removed.
        let Some(buffer) = header_map::read(MapType::HttpRequestHeaders) else {
            return self.fail(settings, Failure::HostError);
        };
        let Some(headers) = header_map::parse(&buffer) else {
            return self.fail(settings, Failure::HostError);
        };
        let routed = settings.route(&headers);
        if strip::strip(&routed.strip).is_err() {
            return self.fail(settings, Failure::HostError);
        }
        let public = routed.public(&settings.public);
        let (public, peer) = match &settings.access {
            None => (public, PeerFacts::default()),
            Some(rules) => match access::apply(self.id, settings, rules, &headers, (public, routed.path)) {
                Ok(checked) => checked,
                Err(replied) => return replied,
            },
        };
        match public {
            Some(template) => public::pass(self.id, template),
            None => {
                if !end_of_stream && settings.auth.with_request_body.is_some() {
                    self.body = Some(BodyWait { since_ms: now_ms(), received: 0, complete: false, seen: false });
                }
                self.protected(settings, &headers, peer, true)
            }
        }
    }

    /// A protected request: JWT → callout headers → cache → (wait for an identical
    /// callout, or send one). The callout's headers are built only past the JWT step (a
    /// locally verified token needs neither them nor the peer address they may read).
    /// `may_fetch` is false on the second pass, after a JWKS fetch.
    fn protected(
        &mut self,
        settings: &Settings,
        headers: &[(&str, &[u8])],
        peer: PeerFacts,
        may_fetch: bool,
    ) -> Action {
        match jwt::check(self.id, settings, self.jwt.as_ref(), headers, may_fetch) {
            JwtStep::Allow => return Action::Continue,
            JwtStep::Wait => return Action::Pause,
            JwtStep::Fetching { token, provider } => {
                self.pending = Some(Pending::Jwks { token, provider });
                return Action::Pause;
            }
            JwtStep::Waiting { provider, until_ms } => {
                if jwks_wait::wait(self.id, settings, provider, until_ms).is_err() {
                    return self.fail(settings, Failure::HostError);
                }
                self.pending = Some(Pending::JwksElsewhere);
                return Action::Pause;
            }
            JwtStep::Callout => {}
        }
        let PeerFacts { principal, address } = peer;
        // X-Forwarded-For and the operators of headers_to_add reuse the address an access
        // rule read: one property read.
        let mut callout = match settings.callout(headers, HostRequestInfo::with_source(address)) {
            Ok(callout) => callout,
            Err(failure) => return self.fail(settings, failure),
        };
        if let Some((name, principal)) = principal {
            callout.push((name, principal.into()));
        }
        let callout: Vec<(&str, &str)> = callout.iter().map(|(name, value)| (*name, value.as_ref())).collect();
        if self.body.is_some() {
            // The body is not part of the cache key: such a decision is neither looked up,
            // stored nor shared with an identical callout.
            let callout = callout.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            self.pending = Some(Pending::Body { callout });
            return self.body_step(settings);
        }
        let lookup = match cache::probe(settings, &callout) {
            Probe::Hit(decision) => {
                return match inject::apply_decision(self.id, settings, &decision, Via::Cache) {
                    Applied::Allowed => Action::Continue,
                    Applied::Replied => Action::Pause,
                }
            }
            Probe::Miss(lookup) => lookup,
        };
        if let Some(lookup) = lookup.as_ref().filter(|lookup| callout::join(lookup, self.id)) {
            self.pending = Some(Pending::Coalesced { lookup: lookup.clone() });
            return Action::Pause;
        }
        if let Some((token, cached)) = callout::send(self.id, settings, callout, lookup, None) {
            self.awaiting(settings, token, cached);
        }
        Action::Pause
    }

    /// The request waits for its first callout `token`.
    fn awaiting(&mut self, settings: &Settings, token: u32, cached: Option<Resend>) {
        // Read only when a retry may need it: one host call per callout.
        let sent_ms = if settings.auth.retry_on_reset { now_ms() } else { 0 };
        self.pending = Some(Pending::Callout { token, cached, sent_ms, retried: false });
    }

    /// The body seen so far against its limit: wait for more, answer 413 (401 forward-auth), or
    /// send the callout with it. Only called while [`Pending::Body`].
    fn body_step(&mut self, settings: &Settings) -> Action {
        let (Some(rules), Some(wait)) = (&settings.auth.with_request_body, self.body.as_ref()) else {
            return self.fail(settings, Failure::HostError);
        };
        match rules.step(wait.received, wait.complete) {
            BodyStep::Wait => {
                if !wait.seen {
                    body::wait(self.id, wait.since_ms);
                }
                Action::Pause
            }
            BodyStep::TooLarge => {
                self.pending = None;
                let answer = rules.too_large();
                request_log::failed_closed(self.id, answer.status, format_args!("request body over {}", rules.field()));
                reply(self.id, answer.status, answer.headers.to_vec(), answer.body);
                Action::Pause
            }
            BodyStep::Send { len, partial } => {
                let Some(Pending::Body { callout }) = self.pending.take() else { return Action::Pause };
                let callout: Vec<(&str, &str)> = callout.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let id = self.id;
                let sent = body::with_body(rules, callout, len, partial, |headers, bytes| {
                    callout::send(id, settings, headers, None, Some(bytes))
                });
                match sent {
                    None => self.fail(settings, Failure::HostError),
                    // Refused: settled by `send`.
                    Some(None) => Action::Pause,
                    Some(Some((token, _))) => {
                        self.awaiting(settings, token, None);
                        Action::Pause
                    }
                }
            }
        }
    }

    /// Sends the callout once more, with what is left of `auth.timeout` since `sent_ms`:
    /// its connection was reset or refused before any answer. The callout is rebuilt from
    /// the request (already stripped, which changes nothing it sends). `None` when no
    /// time is left or it cannot be sent; the caller then decides on Envoy's reply.
    fn retry(&self, settings: &Settings, sent_ms: u64) -> Option<u32> {
        let elapsed = Duration::from_millis(now_ms().saturating_sub(sent_ms));
        let left = settings.auth.timeout.saturating_sub(elapsed);
        if left.is_zero() {
            return None;
        }
        let buffer = header_map::read(MapType::HttpRequestHeaders)?;
        let headers = header_map::parse(&buffer)?;
        let mut callout = settings.callout(&headers, HostRequestInfo::default()).ok()?;
        // Only a protected request sends a callout: it carried the principal if there was one.
        if let Some((name, principal)) = access::principal_again(settings) {
            callout.push((name, principal.into()));
        }
        let callout: Vec<(&str, &str)> = callout.iter().map(|(name, value)| (*name, value.as_ref())).collect();
        let token = match (&settings.auth.with_request_body, &self.body) {
            (Some(rules), Some(wait)) => {
                let BodyStep::Send { len, partial } = rules.step(wait.received, wait.complete) else { return None };
                body::with_body(rules, callout, len, partial, |headers, bytes| {
                    callout::dispatch_within(&settings.auth, headers, Some(bytes), left)
                })?
                .ok()?
            }
            _ => callout::dispatch_within(&settings.auth, callout, None, left).ok()?,
        };
        count(Metric::CalloutRetries);
        warn!(
            "[{}] callout connection reset or refused before an answer: sent again ({} ms left)",
            self.id,
            left.as_millis()
        );
        Some(token)
    }

    /// The request waited for a JWKS fetch: check its token again (no second fetch),
    /// then go on as the first pass would have.
    fn after_jwks(&mut self, settings: &Settings) {
        let Some(buffer) = header_map::read(MapType::HttpRequestHeaders) else {
            self.fail(settings, Failure::HostError);
            return;
        };
        let Some(headers) = header_map::parse(&buffer) else {
            self.fail(settings, Failure::HostError);
            return;
        };
        let routed = settings.route(&headers);
        let mut public = routed.public(&settings.public);
        let mut peer = PeerFacts::default();
        if let Some(rules) = &settings.access {
            // The same rules again: a public path outside them was checked as protected.
            match access::apply(self.id, settings, rules, &headers, (public, routed.path)) {
                Ok(checked) => (public, peer) = checked,
                Err(_) => return,
            }
        }
        if public.is_some() {
            self.fail(settings, Failure::HostError);
            return;
        }
        if let Action::Continue = self.protected(settings, &headers, peer, false) {
            resume(self.id);
        }
    }

    /// Fail closed: `status_on_error` with a short body; the request never goes upstream.
    fn fail(&self, settings: &Settings, failure: Failure) -> Action {
        fail_closed(self.id, settings, failure);
        Action::Pause
    }

    /// The stream is over (completed or reset): stop waiting, and do not strand waiters.
    fn release(&mut self) {
        inject::forget(self.id);
        if self.body.as_ref().is_some_and(|b| !b.seen) {
            body::arrived(self.id);
        }
        match self.pending.take() {
            Some(Pending::Coalesced { lookup }) => callout::leave(&lookup.key, self.id),
            Some(Pending::Callout { cached: Some(resend), .. }) => callout::abandon(self.id, resend),
            Some(Pending::JwksElsewhere) => jwks_wait::leave(self.id),
            _ => {}
        }
    }

    fn waiting(&self) -> bool {
        match &self.pending {
            None => false,
            Some(Pending::Callout { .. } | Pending::Jwks { .. } | Pending::Body { .. }) => true,
            Some(Pending::Coalesced { lookup }) => callout::is_waiting(&lookup.key, self.id),
            Some(Pending::JwksElsewhere) => jwks_wait::is_waiting(self.id),
        }
    }

    fn hold_while_pending(&self) -> Action {
        if self.waiting() {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let (cached, sent_ms, retried) = match self.pending.take() {
            Some(Pending::Callout { token: t, cached, sent_ms, retried }) if t == token => (cached, sent_ms, retried),
            Some(Pending::Jwks { token: t, provider }) if t == token => {
                if let Some(settings) = self.settings.clone() {
                    if let (Some(jwt), Some(state)) = (&settings.jwt, &self.jwt) {
                        if let Ok(mut state) = state.try_borrow_mut() {
                            // OIDC discovery: the openid-configuration came; wait for its JWKS.
                            if let Some(next) = jwks::finish_fetch(jwt, &mut state, provider, token, body_size) {
                                self.pending = Some(Pending::Jwks { token: next, provider });
                                return;
                            }
                        }
                    }
                    self.after_jwks(&settings);
                }
                return;
            }
            other => {
                self.pending = other;
                return;
            }
        };
        let Some(settings) = self.settings.clone() else { return };
        let may_retry = settings.auth.retry_on_reset && !retried;
        let lookup = cached.as_ref().map(|c| &c.lookup);
        let outcome = match decide::answer_or_retry(&settings, lookup, body_size, may_retry) {
            Some(outcome) => outcome,
            None => match self.retry(&settings, sent_ms) {
                Some(token) => {
                    self.pending = Some(Pending::Callout { token, cached, sent_ms, retried: true });
                    return;
                }
                None => decide::answer(&settings, lookup, body_size),
            },
        };
        callout::settle(self.id, &settings, lookup, &outcome);
    }
}

/// The stream is over, completed or reset: Envoy deletes its context (`proxy_on_delete`,
/// which the SDK answers by dropping it). Released here rather than in `on_done` or
/// `on_log`, so neither is exported: two entries into the VM per request fewer (issue 13).
impl Drop for Authz {
    fn drop(&mut self) {
        self.release();
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        match self.settings.clone() {
            Some(settings) => self.on_headers(&settings, end_of_stream),
            None => {
                request_log::failed_closed(self.id, 500, "nebula-authz has no configuration");
                count(Metric::Errors);
                reply(self.id, 500, vec![("content-type", "text/plain")], Some(FAILURE_BODY));
                Action::Pause
            }
        }
    }

    // With `allow_on_headers_stop_iteration`, Envoy calls this while the headers are held:
    // Pause buffers the chunk (StopIterationAndBuffer) and `body_size` is all buffered so
    // far. Without it Envoy holds the body itself; either way a body callback answering
    // Continue must never be what lets a request through early.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(wait) = self.body.as_mut() {
            if !wait.seen {
                wait.seen = true;
                body::delivered();
            }
            wait.received = body_size;
            wait.complete = end_of_stream;
            if let (Some(Pending::Body { .. }), Some(settings)) = (&self.pending, self.settings.clone()) {
                return self.body_step(&settings);
            }
        }
        self.hold_while_pending()
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        let Some(settings) = self.settings.clone() else { return self.hold_while_pending() };
        // On every path, whether the headers were held or already went upstream: the
        // trailers are not forwarded before this returns. Failing here answers the client
        // locally (Envoy resets the stream instead if the response has begun); either
        // way the upstream request ends without them.
        if strip::trailers(&settings).is_err() {
            return self.fail(&settings, Failure::HostError);
        }
        // Trailers end a body whose last data callback did not.
        if let Some(wait) = self.body.as_mut() {
            wait.complete = true;
            if let Some(Pending::Body { .. }) = &self.pending {
                return self.body_step(&settings);
            }
        }
        self.hold_while_pending()
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.settings.as_ref().is_some_and(|s| !s.auth.client_headers_on_success.is_empty()) {
            if let Err(status) = inject::add_client_headers(self.id) {
                warn!("[{}] cannot add the auth headers to the response: {status:?}", self.id);
            }
        }
        let cookies = inject::response_cookies(self.id);
        if let (Some(cookies), Some(settings)) = (cookies, self.settings.clone()) {
            if let Err(status) = inject::add_auth_cookies(&settings, &cookies) {
                // The request was allowed; a lost cookie is not worth failing the response.
                warn!("[{}] cannot add the auth cookies to the response: {status:?}", self.id);
            }
        }
        Action::Continue
    }
}
