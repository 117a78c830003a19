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
use crate::flow::worker::Worker;
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
    let (decision, via, said) = match outcome {
        Outcome::Decided(decision, status) => (decision, via, Said { status: *status, failure: None }),
        Outcome::Stale(decision, failure) => {
            worker.counters.count(Metric::CacheStaleServed);
            (decision, Via::StaleIfError, Said { status: failure.status(), failure: Some(failure.code()) })
        }
        Outcome::Failed(failure) => return fail_closed_by(host, worker, id, settings, *failure, via.how()),
    };
    apply_decision(host, worker, id, settings, decision, via, said)
}

/// What the callout answered, for the access log: its status, and for a stale allow why
/// the callout failed (the allow is served because of it, so the line says which).
#[derive(Debug, Clone, Copy, Default)]
pub struct Said {
    pub status: Option<u32>,
    pub failure: Option<&'static str>,
}

/// Injects an allow's headers, or replies with a denial.
pub fn apply_decision<H: Host>(
    host: &H,
    worker: &mut Worker,
    id: u32,
    settings: &Settings,
    decision: &Decision,
    via: Via,
    said: Said,
) -> Step {
    match decision {
        Decision::Allow { inject, cookies, extra } => {
            // local_then_callout: the token's claim headers, unless the auth service sets
            // the same header (it has the last word).
            let claims = worker.kept.take_claims(id);
            let claims = claims.as_deref().unwrap_or_default();
            // Looked up only when it is written.
            let telemetry = &settings.telemetry;
            let actor = telemetry.actor_header.as_deref().filter(|_| telemetry.filter_state).and_then(|actor| {
                let set = |(name, _): &&(String, _)| name.eq_ignore_ascii_case(actor);
                inject.iter().find(set).map(|(_, v)| v.as_slice()).or_else(|| {
                    claims.iter().find(|(name, _)| name.eq_ignore_ascii_case(actor)).map(|(_, v)| v.as_bytes())
                })
            });
            let last = !worker.kept.providers_left(id);
            // Several providers: the upstream keeps an earlier allow's actor header (or claim)
            // unless a later allow replaces it; only the last allow records it.
            let earlier = worker.kept.take_actor(id);
            if let (false, Some(actor)) = (last, actor.or(earlier.as_deref())) {
                worker.kept.keep_actor(id, actor.to_vec());
            }
            let actor = actor.or(earlier.as_deref());
            let mut decided = Decided::new(Ended::Allowed, via.how()).status(said.status).actor(actor);
            if let Some(failure) = said.failure {
                decided = decided.reason(failure);
            }
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
            // Several providers: a later allow replaces what an earlier one set.
            let replace = settings.auth.protocol == Protocol::ExtAuthz || settings.several_providers;
            for (name, value) in inject {
                let done = match replace {
                    true => host.set_header(Map::RequestHeaders, name, Some(value)),
                    false => host.add_header(Map::RequestHeaders, name, value),
                };
                if done.is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            // Several providers: each allow's, as each of Istio's chained ext_authz filters
            // adds its own (kept until the response comes).
            if !cookies.is_empty() {
                worker.kept.add_cookies(id, cookies);
            }
            if let Some(extra) = extra {
                if apply_extra(host, worker, id, extra).is_err() {
                    return fail_closed(host, worker, id, settings, Failure::HostError);
                }
            }
            request_log::allowed(host, id, via);
            // Counted and recorded once per request: by the last provider's allow.
            if last {
                worker.counters.count(Metric::Allows);
                decision_log::record(host, worker, id, Some(settings), decided);
            }
            Step::Upstream
        }
        Decision::Deny { status: replied, headers, body } => {
            request_log::denied(host, id, *replied, via);
            worker.counters.count(Metric::Denies);
            // A cached denial's status is the one the auth service answered then.
            let decided = Decided::new(Ended::Denied, via.how()).status(said.status.or(Some(*replied)));
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
        // Several providers: each of istiod's ext_authz filters adds its own on the way
        // back, the one nearest the router (the later provider) first, so the client gets
        // every allow's headers, the later provider's before the earlier's (measured
        // against Envoy 1.40 in tests/tests/custom_diff.rs).
        let mut all = extra.to_client.clone();
        all.extend(worker.kept.take_client_headers(id).unwrap_or_default());
        worker.kept.keep_client_headers(id, all);
    }
    Ok(())
}

/// ext_authz `client_headers_on_success`: added to the client's response of an allowed
/// request (next to the upstream's own, as Envoy does).
pub fn add_client_headers<H: Host>(host: &H, worker: &mut Worker, id: u32) -> Result<(), Refused> {
    let Some(headers) = worker.kept.take_client_headers(id) else { return Ok(()) };
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
    let merged = forward::merge_set_cookies(&upstream, cookies, &settings.auth_cookie_names());
    host.set_header(Map::ResponseHeaders, "set-cookie", None)?;
    for value in merged {
        host.add_header(Map::ResponseHeaders, "set-cookie", value)?;
    }
    Ok(())
}

/// What applying a decision asks of the host: an allow adds each header once (forward
/// auth) or replaces it (ext_authz), a JWT claim yields to the auth service's own header,
/// a denial is one reply, and a refused write fails closed instead of going on.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::flow::mock_host::{End, Fails, MockHost};

    const ID: u32 = 9;

    fn allow() -> Decision {
        Decision::Allow {
            inject: vec![("x-nebula-actor-id".into(), b"alice".to_vec()), ("x-nebula-org".into(), b"7".to_vec())],
            cookies: vec![],
            extra: None,
        }
    }

    fn host() -> MockHost {
        let host = MockHost::new(0);
        host.open(ID, vec![(":path".into(), b"/api/flows".to_vec())]);
        host
    }

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn forward_auth_adds_and_ext_authz_replaces() {
        for (config, call) in [
            (r#"{"auth": {"cluster": "auth"}}"#, "add_header"),
            (r#"{"auth": {"cluster": "auth", "protocol": "ext_authz"}}"#, "set_header"),
        ] {
            let (host, mut worker) = (host(), Worker::default());
            let step =
                apply_decision(&host, &mut worker, ID, &settings(config), &allow(), Via::AuthService, Said::default());
            assert!(matches!(step, Step::Upstream), "{config}");
            // One call per header, then the decision for the access log: nothing else.
            assert_eq!(host.calls_in(ID), [call, call, "set_filter_state"], "{config}");
            let request = host.stream(ID).request;
            assert!(request.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())), "{request:?}");
            assert!(host.stream(ID).ends.is_empty(), "the caller resumes, not the step");
        }
    }

    #[test]
    fn a_claim_header_yields_to_the_auth_services_own() {
        let (host, mut worker) = (host(), Worker::default());
        let claims: crate::jwt::verifier::ClaimHeaders =
            vec![("X-Nebula-Org".to_string(), "from-jwt".to_string()), ("x-jwt-sub".to_string(), "dave".to_string())]
                .into();
        worker.kept.keep_claims(ID, claims);
        let config = settings(r#"{"auth": {"cluster": "auth"}}"#);
        let step = apply_decision(&host, &mut worker, ID, &config, &allow(), Via::AuthService, Said::default());
        assert!(matches!(step, Step::Upstream));
        let request = host.stream(ID).request;
        let org: Vec<_> = request.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-nebula-org")).collect();
        assert_eq!(org, [&("x-nebula-org".to_string(), b"7".to_vec())], "the auth service has the last word");
        assert!(request.contains(&("x-jwt-sub".into(), b"dave".to_vec())));
        assert!(!worker.kept.keeps("claims"), "the kept claims are used once");
    }

    #[test]
    fn a_denial_is_one_reply_with_the_answer() {
        let (host, mut worker) = (host(), Worker::default());
        let deny = Decision::Deny {
            status: 401,
            headers: vec![("www-authenticate".into(), "Bearer".into())],
            body: b"no".to_vec(),
        };
        let step = apply_decision(
            &host,
            &mut worker,
            ID,
            &settings(r#"{"auth": {"cluster": "auth"}}"#),
            &deny,
            Via::Cache,
            Said::default(),
        );
        assert!(matches!(step, Step::Replied));
        assert_eq!(host.calls_in(ID), ["set_filter_state", "reply"]);
        let ends = host.stream(ID).ends;
        assert_eq!(
            ends,
            [End::Reply {
                status: 401,
                headers: vec![("www-authenticate".into(), "Bearer".into())],
                body: Some(b"no".to_vec())
            }]
        );
    }

    #[test]
    fn a_refused_header_write_fails_closed() {
        for refused in [Fails::AddHeader, Fails::SetHeader] {
            let (host, mut worker) = (host(), Worker::default());
            host.fail(refused);
            let config = match refused {
                Fails::SetHeader => r#"{"auth": {"cluster": "auth", "protocol": "ext_authz"}, "status_on_error": 503}"#,
                _ => r#"{"auth": {"cluster": "auth"}, "status_on_error": 503}"#,
            };
            let step =
                apply_decision(&host, &mut worker, ID, &settings(config), &allow(), Via::AuthService, Said::default());
            assert!(matches!(step, Step::Replied), "{refused:?}");
            assert!(matches!(host.stream(ID).ends.as_slice(), [End::Reply { status: 503, .. }]), "{refused:?}");
        }
    }
}
