//! Step 7: apply the decision. An allow adds the auth service's headers (and a JWT's
//! claim headers kept for it) to the upstream request, and its cookies to the client's
//! response; a denial relays the auth service's answer; a failure fails closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::thread::LocalKey;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use crate::cache::shared::Decision;
use crate::config::Settings;
use crate::host::header_map;
use crate::host::metrics::count;
use crate::host::reply::{fail_closed, reply, Applied};
use crate::host::request_log::{self, Via};
use crate::host::steps::decide::Outcome;
use crate::jwt::verifier::ClaimHeaders;
use crate::metrics::Metric;
use crate::policy::decision::Failure;
use crate::policy::ext_authz::{AllowExtra, Protocol};
use crate::policy::forward;

/// Owned (name, value) pairs.
type OwnedHeaders = Vec<(String, Vec<u8>)>;

thread_local! {
    /// `Set-Cookie` values of the allowing auth response, by context id, for the client's
    /// response (`auth.add_auth_cookies_to_response`); a thread-local map rather than a
    /// field because an allow may be applied to a waiting request's context.
    static AUTH_COOKIES: RefCell<HashMap<u32, Vec<Vec<u8>>>> = RefCell::new(HashMap::new());
    /// Claim headers of a valid JWT in `local_then_callout`, by context id, added if the
    /// callout allows (a waiting request's allow is applied from another context).
    static JWT_CLAIMS: RefCell<HashMap<u32, ClaimHeaders>> = RefCell::new(HashMap::new());
    /// ext_authz `client_headers_on_success` of the allowing auth response, by context id,
    /// for the client's response (as `AUTH_COOKIES`).
    static CLIENT_HEADERS: RefCell<HashMap<u32, OwnedHeaders>> = RefCell::new(HashMap::new());
}

/// Keeps a valid JWT's claim headers for the callout's allow (`local_then_callout`).
pub fn keep_claims(id: u32, claims: ClaimHeaders) {
    JWT_CLAIMS.with(|c| c.borrow_mut().insert(id, claims));
}

/// The stream is over: drop what was kept for it.
pub fn forget(id: u32) {
    take(&AUTH_COOKIES, id);
    take(&JWT_CLAIMS, id);
    take(&CLIENT_HEADERS, id);
}

/// What `map` keeps for `id`, removed. Most requests keep nothing: an empty map is not
/// hashed into (every request ends here, issue 13).
fn take<T>(map: &'static LocalKey<RefCell<HashMap<u32, T>>>, id: u32) -> Option<T> {
    map.with(|m| {
        let mut m = m.borrow_mut();
        if m.is_empty() {
            None
        } else {
            m.remove(&id)
        }
    })
}

/// Applies `outcome` to the effective context's request (`id` is for the logs).
pub fn apply(id: u32, settings: &Settings, outcome: &Outcome) -> Applied {
    let (decision, via) = match outcome {
        Outcome::Decided(decision) => (decision, Via::AuthService),
        Outcome::Stale(decision) => {
            count(Metric::CacheStaleServed);
            (decision, Via::StaleIfError)
        }
        Outcome::Failed(failure) => return fail_closed(id, settings, *failure),
    };
    apply_decision(id, settings, decision, via)
}

/// Injects an allow's headers, or replies with a denial.
pub fn apply_decision(id: u32, settings: &Settings, decision: &Decision, via: Via) -> Applied {
    match decision {
        Decision::Allow { inject, cookies, extra } => {
            // local_then_callout: the token's claim headers, unless the auth service sets
            // the same header (it has the last word).
            let claims = take(&JWT_CLAIMS, id);
            let claims = claims.as_deref().unwrap_or_default();
            for (name, value) in claims.iter().filter(|(c, _)| !inject.iter().any(|(n, _)| n.eq_ignore_ascii_case(c))) {
                if hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
                    return fail_closed(id, settings, Failure::HostError);
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
                    true => hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)),
                    false => hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value),
                };
                if done.is_err() {
                    return fail_closed(id, settings, Failure::HostError);
                }
            }
            if !cookies.is_empty() {
                AUTH_COOKIES.with(|c| c.borrow_mut().insert(id, cookies.clone()));
            }
            if let Some(extra) = extra {
                if apply_extra(id, extra).is_err() {
                    return fail_closed(id, settings, Failure::HostError);
                }
            }
            request_log::allowed(id, via);
            count(Metric::Allows);
            Applied::Allowed
        }
        Decision::Deny { status, headers, body } => {
            request_log::denied(id, *status, via);
            count(Metric::Denies);
            let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            reply(id, *status, headers, (!body.is_empty()).then_some(body.as_slice()));
            Applied::Replied
        }
    }
}

/// ext_authz's other allow effects: append, then remove (`x-envoy-auth-headers-to-remove`);
/// the headers for the client's response are kept until it comes.
fn apply_extra(id: u32, extra: &AllowExtra) -> Result<(), Status> {
    for (name, value) in &extra.append {
        hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value)?;
    }
    for name in &extra.remove {
        hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)?;
    }
    if !extra.to_client.is_empty() {
        CLIENT_HEADERS.with(|c| c.borrow_mut().insert(id, extra.to_client.clone()));
    }
    Ok(())
}

/// ext_authz `client_headers_on_success`: added to the client's response of an allowed
/// request (next to the upstream's own, as Envoy does).
pub fn add_client_headers(id: u32) -> Result<(), Status> {
    let Some(headers) = take(&CLIENT_HEADERS, id) else { return Ok(()) };
    for (name, value) in headers {
        hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, &name, &value)?;
    }
    Ok(())
}

/// The client's response of an allowed request: the auth service's cookies, if it set any.
pub fn response_cookies(id: u32) -> Option<Vec<Vec<u8>>> {
    take(&AUTH_COOKIES, id)
}

/// `addAuthCookiesToResponse`: the auth service's cookies replace the upstream's
/// cookies of the same names on the client's response.
pub fn add_auth_cookies(settings: &Settings, cookies: &[Vec<u8>]) -> Result<(), Status> {
    // In place, like the request headers: a refused or malformed map is an error here
    // (logged by the caller), never a panic.
    let buffer = header_map::read(MapType::HttpResponseHeaders).ok_or(Status::InternalFailure)?;
    let response = header_map::parse(&buffer).ok_or(Status::ParseFailure)?;
    let upstream: Vec<&[u8]> =
        response.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| *v).collect();
    let merged = forward::merge_set_cookies(&upstream, cookies, &settings.auth.add_auth_cookies_to_response);
    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", None)?;
    for value in merged {
        hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", value)?;
    }
    Ok(())
}
