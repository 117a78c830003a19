//! One request of a differential test, recorded alike whichever proxy it went through:
//! what the client got, and what the auth service and the upstream received for exactly
//! this request, as `aspect -> value` ([`Seen`]), and the aspects two proxies disagree
//! on ([`differences`]). The tests against Traefik, Envoy's ext_authz and Istio's CUSTOM
//! action differ only in how they send (plain, or TLS from a chosen source address: the
//! `send` closure) and in what they compare ([`Aspects`]: which headers, whether bodies,
//! which callouts).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use crate::client::{escape, values_lossy, Header, RecordedRequest, Response};
use crate::Env;

/// What one proxy did with one request, as `aspect -> value`.
pub type Seen = BTreeMap<String, String>;

/// How a message's headers become aspects of its section (`client`, `upstream`, `auth`).
pub enum Headers<'a> {
    /// None of them.
    Skip,
    /// Every header, as `<section>.header.<name>`: its values in wire order, each as
    /// `value(name, raw)` shows it (`None`: left out), joined by ` | `.
    Every(&'a dyn Fn(&str, &[u8]) -> Option<String>),
    /// Only `names`, as `<section>.<name>` (lower-cased): the values joined by `join`,
    /// empty when absent. With `others`: also the names of the rest but those `others`
    /// calls noise, sorted, as `<section>.other-headers` (a new header is then seen).
    Listed { names: &'a [&'a str], join: &'a str, others: Option<&'a dyn Fn(&str) -> bool> },
}

/// Which of a request's callouts are recorded, and under which section.
pub enum Callouts<'a> {
    /// The first, under `auth`; `auth.called` and `auth.retried` say whether there was
    /// one and more than one (not how many: retries depend on connection reuse). The
    /// first because a retry's `x-envoy-expected-rq-timeout-ms` is the time left, which
    /// depends on the retry back-off's jitter.
    First,
    /// The last, under `auth`; `auth.called` says whether there was one.
    Last,
    /// Each, under `auth.<provider>` with the path after the provider's prefix: the first
    /// `(path prefix, provider)` whose prefix its path starts with (`?` for none).
    /// `auth.providers`: the providers asked, in order (`-` for none).
    ByPathPrefix(&'a [(&'a str, &'a str)]),
}

/// What a differential test compares of one request.
pub struct Aspects<'a> {
    /// Whether the bodies the upstream and the auth service received are aspects. The
    /// body of a proxy's own answer always is; the echo upstream's answer describes its
    /// request, already compared under `upstream`.
    pub bodies: bool,
    /// The response's headers when the proxy answered (`client.from` = `proxy`).
    pub client_headers: Headers<'a>,
    /// The response's headers when the upstream answered (`client.from` = `upstream`).
    pub client_headers_from_upstream: Headers<'a>,
    /// The headers of the request the upstream received (the last, if several).
    pub upstream_headers: Headers<'a>,
    /// The headers of each recorded callout.
    pub auth_headers: Headers<'a>,
    pub callouts: Callouts<'a>,
}

/// Sends one request with `send` (to whichever proxy, over whichever transport) and
/// records what the client got and what `mocks`' auth service and upstream received
/// meanwhile. The mocks record a request before they answer it and the proxy answers
/// after the upstream did, so when `send` returns they hold all of this request's
/// (nothing else is sent meanwhile: the tests send one request at a time).
pub fn record(mocks: &Env, send: impl FnOnce() -> io::Result<Response>, aspects: &Aspects) -> Seen {
    let (auth_before, upstream_before) = (mocks.auth.count(), mocks.upstream.count());
    let response = send();
    let calls = mocks.auth.requests_since(auth_before);
    let upstream = mocks.upstream.requests_since(upstream_before);
    let mut seen = Seen::new();
    match &response {
        Err(e) => put(&mut seen, "client.status", format!("no response ({})", e.kind())),
        Ok(resp) => client(&mut seen, resp, !upstream.is_empty(), aspects),
    }
    put(&mut seen, "upstream.reached", yes_no(!upstream.is_empty()));
    if let Some(up) = upstream.last() {
        request(&mut seen, "upstream", up, &up.path, aspects.bodies, &aspects.upstream_headers);
    }
    let callout = |seen: &mut Seen, section: &str, call: &RecordedRequest, path: &str| {
        request(seen, section, call, path, aspects.bodies, &aspects.auth_headers)
    };
    match aspects.callouts {
        Callouts::First | Callouts::Last => {
            put(&mut seen, "auth.called", yes_no(!calls.is_empty()));
            let call = if let Callouts::First = aspects.callouts {
                put(&mut seen, "auth.retried", yes_no(calls.len() > 1));
                calls.first()
            } else {
                calls.last()
            };
            if let Some(call) = call {
                callout(&mut seen, "auth", call, &call.path);
            }
        }
        Callouts::ByPathPrefix(providers) => {
            let asked: Vec<&str> = calls.iter().map(|c| provider_of(providers, &c.path).0).collect();
            put(&mut seen, "auth.providers", if asked.is_empty() { "-".to_owned() } else { asked.join(",") });
            for call in &calls {
                let (provider, path) = provider_of(providers, &call.path);
                callout(&mut seen, &format!("auth.{provider}"), call, path);
            }
        }
    }
    seen
}

/// The provider a callout went to, by its path prefix, and the path after it.
fn provider_of<'p, 'q>(providers: &[(&str, &'p str)], path: &'q str) -> (&'p str, &'q str) {
    providers.iter().find_map(|(prefix, name)| Some((*name, path.strip_prefix(prefix)?))).unwrap_or(("?", path))
}

fn put(seen: &mut Seen, aspect: &str, value: impl Into<String>) {
    seen.insert(aspect.to_owned(), value.into());
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn client(seen: &mut Seen, resp: &Response, upstream_reached: bool, aspects: &Aspects) {
    put(seen, "client.status", resp.status.to_string());
    let from_proxy = !(upstream_reached && resp.status == 200);
    put(seen, "client.from", if from_proxy { "proxy" } else { "upstream" });
    if from_proxy {
        put(seen, "client.body", escape(&resp.body));
        headers(seen, "client", &resp.headers, &aspects.client_headers);
    } else {
        headers(seen, "client", &resp.headers, &aspects.client_headers_from_upstream);
    }
}

/// A request a mock received, under `section`, `path` for its path.
fn request(seen: &mut Seen, section: &str, req: &RecordedRequest, path: &str, bodies: bool, which: &Headers) {
    put(seen, &format!("{section}.method"), req.method.clone());
    put(seen, &format!("{section}.path"), escape(path.as_bytes()));
    if bodies {
        put(seen, &format!("{section}.body"), escape(&req.body));
    }
    headers(seen, section, &req.headers, which);
}

fn headers(seen: &mut Seen, section: &str, list: &[Header], which: &Headers) {
    match which {
        Headers::Skip => {}
        Headers::Every(value) => {
            let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (name, raw) in list {
                if let Some(value) = value(name, raw) {
                    by_name.entry(name.as_str()).or_default().push(value);
                }
            }
            for (name, values) in by_name {
                put(seen, &format!("{section}.header.{name}"), values.join(" | "));
            }
        }
        Headers::Listed { names, join, others } => {
            for name in *names {
                put(seen, &format!("{section}.{}", name.to_ascii_lowercase()), values_lossy(list, name).join(join));
            }
            if let Some(noise) = others {
                let rest: BTreeSet<&str> =
                    list.iter().map(|(n, _)| n.as_str()).filter(|n| !names.contains(n) && !noise(n)).collect();
                put(seen, &format!("{section}.other-headers"), rest.into_iter().collect::<Vec<_>>().join(","));
            }
        }
    }
}

/// Aspects that decide which others are compared.
pub struct Gates<'a> {
    /// When the sides disagree on this one, it is the only difference: it decides all
    /// that follows (which providers were asked).
    pub decisive: Option<&'a str>,
    /// When the sides disagree on one (whether the upstream was reached, the auth
    /// service called, who answered the client), the rest of its section is not compared.
    pub sections: &'a [&'a str],
}

/// The aspects on which `ours` and `theirs` differ, each as (ours, theirs), `<none>` for
/// an absent one, as `gates` allow.
pub fn differences(ours: &Seen, theirs: &Seen, gates: &Gates) -> BTreeMap<String, (String, String)> {
    let none = String::from("<none>");
    let pick = |seen: &Seen, key: &str| seen.get(key).unwrap_or(&none).clone();
    let mut out = BTreeMap::new();
    if let Some(gate) = gates.decisive {
        if ours.get(gate) != theirs.get(gate) {
            out.insert(gate.to_owned(), (pick(ours, gate), pick(theirs, gate)));
            return out;
        }
    }
    for gate in gates.sections {
        if ours.get(*gate) != theirs.get(*gate) {
            out.insert((*gate).to_owned(), (pick(ours, gate), pick(theirs, gate)));
        }
    }
    let keys: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for key in keys {
        let section = key.split('.').next().unwrap_or("");
        let gated = gates.sections.iter().any(|g| g.starts_with(section) && out.contains_key(*g));
        if gated || out.contains_key(key.as_str()) {
            continue;
        }
        let (a, b) = (pick(ours, key), pick(theirs, key));
        if a != b {
            out.insert(key.clone(), (a, b));
        }
    }
    out
}
