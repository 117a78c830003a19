//! Apply the decision. An allow adds the auth service's headers (and a JWT's claim
//! headers kept for it) to the upstream request, and its cookies to the client's
//! response; a denial relays the auth service's answer; a failure fails closed.

use crate::cache::shared::Decision;
use crate::flow::decision_log;
use crate::flow::header_map;
use crate::flow::host::{Host, Map, Refused};
use crate::flow::outcome::Step;
use crate::flow::reply::{fail_closed, fail_closed_by, reply};
use crate::flow::request_log::{self, Via};
use crate::flow::steps::decide::Outcome;
use crate::flow::worker::{take, Worker};
use crate::metric_names::Metric;
use crate::plugin_config::Settings;
use crate::policy::decision::Failure;
use crate::policy::ext_authz::{AllowExtra, Protocol};
use crate::policy::forward;
use crate::telemetry::{Decided, Outcome as Ended};

/// Applies `outcome` to the effective context's request `id`, which reached it `via` its
/// own callout or an identical one: [`Step::Upstream`] when allowed (the caller resumes
/// or continues it), else [`Step::Replied`].
pub fn apply<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    outcome: &Outcome,
    via: Via,
) -> Step {
    let (decision, via, status) = match outcome {
        Outcome::Decided(decision, status) => (decision, via, *status),
        Outcome::Stale(decision, failure) => {
            worker.counters.count(Metric::CacheStaleServed);
            (decision, Via::StaleIfError, failure.status())
        }
        Outcome::Failed(failure) => return fail_closed_by(host, worker, id, settings, *failure, via.how()),
    };
    apply_decision(host, worker, id, settings, decision, via, status)
}

/// Injects an allow's headers, or replies with a denial (`status`: what the callout
/// answered, for the access log).
pub fn apply_decision<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    decision: &Decision,
    via: Via,
    status: Option<u32>,
) -> Step {
    match decision {
        Decision::Allow { inject, cookies, extra } => {
            // local_then_callout: the token's claim headers, unless the auth service sets
            // the same header (it has the last word).
            let claims = take(&mut worker.kept.claims, id);
            let claims = claims.as_deref().unwrap_or_default();
            // Looked up only when it is written.
            let telemetry = &settings.telemetry;
            let actor = telemetry.actor_header.as_deref().filter(|_| telemetry.filter_state).and_then(|actor| {
                let set = |(name, _): &&(String, _)| name.eq_ignore_ascii_case(actor);
                inject.iter().find(set).map(|(_, v)| v.as_slice()).or_else(|| {
                    claims.iter().find(|(name, _)| name.eq_ignore_ascii_case(actor)).map(|(_, v)| v.as_bytes())
                })
            });
            let decided = Decided::new(Ended::Allowed, via.how()).status(status).actor(actor);
            for (name, value) in claims.iter().filter(|(c, _)| !inject.iter().any(|(n, _)| n.eq_ignore_ascii_case(c))) {
                if host.add_header(Map::RequestHeaders, name, value.as_bytes()).is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            // forward_auth: added, not replaced: the strip step removed every name that can
            // be injected (`upstream_headers` are in the strip set, and request headers
            // matching `upstream_headers_regex` are stripped too), so none is there to
            // replace, and an add spares the host its search for an existing value. Waiters
            // and cache hits went through the strip step too. ext_authz: replaced, as
            // Envoy's `setCopy`, since the client's copy of a listed header the auth service
            // does not set stays (one value per name: policy/decision.rs).
            let replace = settings.auth.protocol == Protocol::ExtAuthz;
            for (name, value) in inject {
                let done = match replace {
                    true => host.set_header(Map::RequestHeaders, name, Some(value)),
                    false => host.add_header(Map::RequestHeaders, name, value),
                };
                if done.is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            if !cookies.is_empty() {
                worker.kept.cookies.insert(id, cookies.clone());
            }
            if let Some(extra) = extra {
                if apply_extra(host, worker, id, extra).is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            request_log::allowed(host, id, via);
            worker.counters.count(Metric::Allows);
            decision_log::record(host, worker, id, Some(settings), decided);
            Step::Upstream
        }
        Decision::Deny { status: replied, headers, body } => {
            request_log::denied(host, id, *replied, via);
            worker.counters.count(Metric::Denies);
            // A cached denial's status is the one the auth service answered then.
            let decided = Decided::new(Ended::Denied, via.how()).status(status.or(Some(*replied)));
            decision_log::record(host, worker, id, Some(settings), decided);
            let status = replied;
            let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            reply(host, id, *status, headers, (!body.is_empty()).then_some(body.as_slice()));
            Step::Replied
        }
    }
}

/// ext_authz's other allow effects: append, then remove (`x-envoy-auth-headers-to-remove`);
/// the headers for the client's response are kept until it comes.
fn apply_extra<H: Host>(host: &H, worker: &mut Worker, id: u32, extra: &AllowExtra) -> Result<(), Refused> {
    for (name, value) in &extra.append {
        host.add_header(Map::RequestHeaders, name, value)?;
    }
    for name in &extra.remove {
        host.remove_header(Map::RequestHeaders, name)?;
    }
    if !extra.to_client.is_empty() {
        worker.kept.client_headers.insert(id, extra.to_client.clone());
    }
    Ok(())
}

/// ext_authz `client_headers_on_success`: added to the client's response of an allowed
/// request (next to the upstream's own, as Envoy does).
pub fn add_client_headers<H: Host>(host: &H, worker: &mut Worker, id: u32) -> Result<(), Refused> {
    let Some(headers) = take(&mut worker.kept.client_headers, id) else { return Ok(()) };
    for (name, value) in headers {
        host.add_header(Map::ResponseHeaders, &name, &value)?;
    }
    Ok(())
}

/// `addAuthCookiesToResponse`: the auth service's cookies replace the upstream's
/// cookies of the same names on the client's response.
pub fn add_auth_cookies<H: Host>(host: &H, settings: &Settings, cookies: &[Vec<u8>]) -> Result<(), Refused> {
    // In place, like the request headers: a refused or malformed map is an error here
    // (logged by the caller), never a panic.
    let buffer = host.header_map(Map::ResponseHeaders).ok_or(Refused::InternalFailure)?;
    let response = header_map::parse(&buffer).ok_or(Refused::ParseFailure)?;
    let upstream: Vec<&[u8]> =
        response.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| *v).collect();
    let merged = forward::merge_set_cookies(&upstream, cookies, &settings.auth.add_auth_cookies_to_response);
    host.set_header(Map::ResponseHeaders, "set-cookie", None)?;
    for value in merged {
        host.add_header(Map::ResponseHeaders, "set-cookie", value)?;
    }
    Ok(())
}
