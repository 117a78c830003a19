//! Access rules under the real Envoy: source ranges from distinct loopback
//! sources (the client socket is bound to 127.0.0.2/.3/.4 before it connects),
//! X-Forwarded-For spoofing with and without `trusted_proxies`, a range-restricted
//! public path replayed with the path-confusion table, peer principals over a
//! downstream mTLS listener with a CA made per run, and `otherwise: deny` rules held
//! for every spelling of their path (the table again, from four clients over mTLS).
//! That the peer address is read once per request is asserted natively, by counting
//! the host calls (filter/src/flow/tests/requests.rs).

use std::net::IpAddr;

use nebula_authz::access::interpretations::{interpretations, Interpretations};
use nebula_authz::plugin_config::Settings;
use nebula_authz::policy::route::PathMatch;
use nebula_authz_tests::client::{escape, RawRequest};
use nebula_authz_tests::paths::{self, Expected};
use nebula_authz_tests::tls::TestCa;
use nebula_authz_tests::{Env, Response};

const DENIED_BODY: &str = "nebula-authz: access denied\n";
const INSIDE: &str = "127.0.0.2";
const OUTSIDE: &str = "127.0.0.3";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn from(env: &Env, source: &str, req: RawRequest) -> Response {
    req.send_from(ip(source), env.port)
}

/// The filter's counter `nebula_authz_<name>` from `/stats/prometheus`, once settled.
fn counter(env: &Env, name: &str) -> u64 {
    let text = env.prometheus_settled();
    let name = format!("nebula_authz_{name}");
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name || n.strip_prefix(&name).is_some_and(|rest| rest.starts_with('{')))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A local access denial: `status`, the short body, no callout, nothing upstream.
fn assert_access_denied(env: &Env, case: &str, resp: &Response, status: u16, auth_before: usize, up_before: usize) {
    env.check(resp.status == status, &format!("{case}: expected {status}"), resp);
    env.check(resp.text() == DENIED_BODY, &format!("{case}: expected {DENIED_BODY:?}"), resp);
    env.check(!resp.proxied(), &format!("{case}: must be a local reply"), resp);
    env.check(env.auth.count() == auth_before, &format!("{case}: no callout before an access denial"), resp);
    env.check(env.upstream.count() == up_before, &format!("{case}: nothing may reach the upstream"), resp);
}

#[test]
fn top_level_source_ranges_deny_outside_before_the_callout() {
    let env = Env::start(r#"{"auth": {"cluster": "auth"}, "source_ranges": ["127.0.0.2/32"]}"#);
    env.assert_allowed_as(
        "inside, protected",
        &from(&env, INSIDE, RawRequest::get("/api/flows").bearer("allow:alice")),
        "alice",
    );
    let resp = from(&env, INSIDE, RawRequest::get("/api/health"));
    env.check(resp.status == 200 && resp.proxied(), "inside, public path", &resp);

    let (auth, up) = (env.auth.count(), env.upstream.count());
    let resp = from(&env, OUTSIDE, RawRequest::get("/api/flows").bearer("allow:alice"));
    assert_access_denied(&env, "outside, protected", &resp, 403, auth, up);
    let resp = from(&env, OUTSIDE, RawRequest::get("/api/health"));
    assert_access_denied(&env, "outside, public", &resp, 403, auth, up);
    // Without trusted_proxies a client's X-Forwarded-For is never the address.
    let spoofed = RawRequest::get("/api/flows").bearer("allow:alice").header("x-forwarded-for", INSIDE);
    assert_access_denied(&env, "outside, spoofed X-Forwarded-For", &from(&env, OUTSIDE, spoofed), 403, auth, up);
    let resp = RawRequest::get("/api/health").send(env.port);
    assert_access_denied(&env, "127.0.0.1", &resp, 403, auth, up);
    assert_eq!(counter(&env, "source_denied"), 4, "each denial is counted in its own metric");
    assert_eq!(counter(&env, "errors"), 0, "an access denial is not an error");
}

#[test]
fn trusted_proxies_take_the_right_most_untrusted_x_forwarded_for() {
    // 127.0.0.3 plays a trusted proxy in front of Envoy.
    let env = Env::start(
        r#"{"auth": {"cluster": "auth"}, "source_ranges": ["127.0.0.2/32"], "trusted_proxies": ["127.0.0.3/32"]}"#,
    );
    let via_proxy = |xff: Option<&str>, source: &str| {
        let mut req = RawRequest::get("/api/flows").bearer("allow:alice");
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        from(&env, source, req)
    };
    env.assert_allowed_as("the proxy forwards an inside client", &via_proxy(Some(INSIDE), OUTSIDE), "alice");
    env.assert_allowed_as("an inside client directly", &via_proxy(None, INSIDE), "alice");
    let (auth, up) = (env.auth.count(), env.upstream.count());
    // The client forged the left entry; the proxy appended the real (outside) one.
    let resp = via_proxy(Some("127.0.0.2, 127.0.0.9"), OUTSIDE);
    assert_access_denied(&env, "forged left-most entry", &resp, 403, auth, up);
    assert_access_denied(&env, "the proxy itself, no client", &via_proxy(None, OUTSIDE), 403, auth, up);
    let resp = via_proxy(Some(INSIDE), "127.0.0.4");
    assert_access_denied(&env, "an untrusted peer's X-Forwarded-For", &resp, 403, auth, up);
    assert_access_denied(&env, "garbage", &via_proxy(Some("127.0.0.2, x"), OUTSIDE), 403, auth, up);
}

/// Envoy's own `xff_num_trusted_hops` already moves `source.address` to the client it
/// finds in X-Forwarded-For: the filter's `trusted_proxies` must not be set on top.
#[test]
fn envoy_xff_num_trusted_hops_sets_the_source_address() {
    let env = Env::builder()
        .plugin_config(r#"{"auth": {"cluster": "auth"}, "source_ranges": ["127.0.0.2/32"]}"#)
        .xff_trusted_hops(1)
        .start();
    let req = RawRequest::get("/api/flows").bearer("allow:alice").header("x-forwarded-for", INSIDE);
    env.assert_allowed_as("one trusted hop names the client", &from(&env, OUTSIDE, req), "alice");
    let (auth, up) = (env.auth.count(), env.upstream.count());
    let req = RawRequest::get("/api/flows").bearer("allow:alice").header("x-forwarded-for", "127.0.0.2, 127.0.0.9");
    assert_access_denied(&env, "the hop Envoy trusts is outside", &from(&env, OUTSIDE, req), 403, auth, up);
}

/// Without `use_remote_address: true` Envoy takes the client from the right-most
/// X-Forwarded-For entry and reports it as `source.address`: a client talking to Envoy
/// directly then chooses its own address. Why envoy/envoy.yaml keeps it `true` at the edge.
#[test]
fn without_use_remote_address_envoy_takes_the_source_from_x_forwarded_for() {
    let env = Env::builder()
        .plugin_config(r#"{"auth": {"cluster": "auth"}, "source_ranges": ["127.0.0.2/32"]}"#)
        .without_remote_address()
        .start();
    let req = RawRequest::get("/api/flows").bearer("allow:alice").header("x-forwarded-for", INSIDE);
    env.assert_allowed_as("the forged X-Forwarded-For became source.address", &from(&env, OUTSIDE, req), "alice");
    let (auth, up) = (env.auth.count(), env.upstream.count());
    let resp = from(&env, OUTSIDE, RawRequest::get("/api/flows").bearer("allow:alice"));
    assert_access_denied(&env, "no X-Forwarded-For: the peer", &resp, 403, auth, up);
}

/// The default public paths, with `/hooks` public only from 127.0.0.2 and `/internal`
/// only from there too, else 404.
const RESTRICTED_HOOKS: &str = r#"{"auth": {"cluster": "auth"}, "public_paths": [
    "/auth", "/api/docs", "/api/openapi.json", "/api/health", "/api/version",
    {"path": "/hooks", "source_ranges": ["127.0.0.2/32"]},
    {"path": "/internal", "source_ranges": ["127.0.0.2/32"], "otherwise": "deny", "deny_status": 404},
    "/{prefix}/task_runs/subscriptions/scheduled", "/{prefix}/events/out"]}"#;

fn is_hooks(target: &[u8]) -> bool {
    target.strip_prefix(b"/hooks").is_some_and(|rest| rest.is_empty() || rest[0] == b'/' || rest[0] == b'?')
}

#[test]
fn a_range_restricted_public_path_is_checked_from_outside() {
    let env = Env::start(RESTRICTED_HOOKS);
    let resp = from(&env, INSIDE, RawRequest::get("/hooks/my-webhook-slug"));
    env.check(resp.status == 200 && resp.proxied() && env.auth.count() == 0, "inside: /hooks is public", &resp);
    let up = env.upstream.count();
    env.assert_denied(
        "outside: /hooks is checked",
        &from(&env, OUTSIDE, RawRequest::get("/hooks/x").bearer("deny")),
        up,
    );
    env.assert_allowed_as(
        "outside, with a credential",
        &from(&env, OUTSIDE, RawRequest::get("/hooks/x").bearer("allow:bob")),
        "bob",
    );
    // Other public paths are public from anywhere.
    let resp = from(&env, OUTSIDE, RawRequest::get("/api/health"));
    env.check(resp.status == 200 && resp.proxied(), "outside: /api/health stays public", &resp);
    // `otherwise: deny`: a local 404 instead of the check.
    let resp = from(&env, INSIDE, RawRequest::get("/internal/metrics"));
    env.check(resp.status == 200 && resp.proxied(), "inside: /internal is public", &resp);
    let (auth, up) = (env.auth.count(), env.upstream.count());
    let resp = from(&env, OUTSIDE, RawRequest::get("/internal/metrics").bearer("allow:bob"));
    assert_access_denied(&env, "outside: /internal", &resp, 404, auth, up);
    assert_eq!(counter(&env, "source_denied"), 1);

    // The path-confusion table: from inside as written; from outside no form of
    // /hooks/... is public (each is checked: 401 from the mock, or refused by Envoy).
    for (source, name) in [(INSIDE, "inside"), (OUTSIDE, "outside")] {
        let outside = source == OUTSIDE;
        let (report, failures) =
            paths::replay_with(&env, &paths::load(), Some(ip(source)), |case| match case.expected {
                Expected::Public if outside && is_hooks(&case.target) => Expected::Protected,
                expected => expected,
            });
        assert!(
            failures.is_empty(),
            "paths.tsv from {name} ({source}): {} of {} rows misbehaved:\n{}\n\nfull report:\n{}",
            failures.len(),
            report.len(),
            failures.join("\n"),
            report.join("\n")
        );
    }
    assert!(paths::load().iter().filter(|c| c.expected == Expected::Public && is_hooks(&c.target)).count() >= 2);
}

const WEBHOOK: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";
const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const PEER_HEADER: &str = "x-nebula-peer-principal";

fn test_ca() -> TestCa {
    let ca = TestCa::new();
    ca.client("webhook", WEBHOOK);
    ca.client("admin", ADMIN);
    ca
}

/// A webhook sender in the mesh: /hooks public for the webhook sender's identity (else
/// checked), /api/admin only for the ops service accounts (else 403), and the verified
/// identity sent to the auth service.
#[test]
fn principals_over_mtls_with_and_without_a_certificate() {
    let ca = test_ca();
    let config = format!(
        r#"{{"auth": {{"cluster": "auth"}}, "principal_header": "{PEER_HEADER}", "public_paths": [
            "/api/health",
            {{"path": "/hooks", "principals": ["{WEBHOOK}"]}},
            {{"path": "/api/admin", "principals": ["spiffe://cluster.local/ns/ops/sa/*"], "otherwise": "deny"}}]}}"#
    );
    // Client certificates optional (always verified), so a client without one reaches the filter.
    let env = Env::builder().plugin_config(&config).downstream_mtls(ca.dir(), false).start();
    let get = |path: &str, headers: &[(&str, &str)], client: Option<&str>| {
        ca.get(env.port, path, headers, client)
            .unwrap_or_else(|e| panic!("GET {path} as {client:?}: {e}\n{}", env.log_tail()))
    };
    let spoof = (PEER_HEADER, "spiffe://cluster.local/ns/ops/sa/admin");

    // The webhook sender.
    let resp = get("/hooks/flow-run", &[], Some("webhook"));
    env.check(resp.status == 200 && resp.proxied() && env.auth.count() == 0, "webhook: /hooks is public", &resp);
    let (auth, up) = (env.auth.count(), env.upstream.count());
    assert_access_denied(&env, "webhook: /api/admin", &get("/api/admin/users", &[], Some("webhook")), 403, auth, up);
    let resp = get("/api/flows", &[("authorization", "Bearer allow:alice"), spoof], Some("webhook"));
    env.assert_allowed_as("webhook: protected path", &resp, "alice");
    let sent = env.auth.last();
    assert_eq!(sent.header_all(PEER_HEADER), [WEBHOOK], "the auth service gets the verified identity, only it");
    assert!(env.upstream.last().header_all(PEER_HEADER).is_empty(), "a client's copy never reaches the upstream");
    // Reset twice (the callout and Envoy's retry of it): the filter's own retry carries
    // the identity too.
    let token = "seq:close|close|allow:erin";
    let before = env.auth.count();
    let resp = get("/api/flows", &[("authorization", &format!("Bearer {token}")), spoof], Some("webhook"));
    env.assert_allowed_as("webhook: allowed on the filter's retry", &resp, "erin");
    let sent = env.auth.requests();
    assert_eq!(sent.len() - before, 3, "the callout, Envoy's retry, the filter's retry");
    for (i, request) in sent[before..].iter().enumerate() {
        assert_eq!(request.header_all(PEER_HEADER), [WEBHOOK], "attempt {i}: {request:?}");
    }

    // The admin service account.
    let resp = get("/api/admin/users", &[spoof], Some("admin"));
    env.check(resp.status == 200 && resp.proxied(), "admin: /api/admin is public for it", &resp);
    assert!(env.upstream.last().header_all(PEER_HEADER).is_empty(), "stripped on public paths too");
    let up = env.upstream.count();
    env.assert_denied(
        "admin: /hooks is checked",
        &get("/hooks/flow-run", &[("authorization", "Bearer deny")], Some("admin")),
        up,
    );
    assert_eq!(env.auth.last().header_all(PEER_HEADER), [ADMIN]);

    // No certificate: no verified peer, so no principal rule matches.
    let up = env.upstream.count();
    env.assert_denied(
        "no cert: /hooks is checked",
        &get("/hooks/flow-run", &[("authorization", "Bearer deny")], None),
        up,
    );
    let (auth, up) = (env.auth.count(), env.upstream.count());
    assert_access_denied(&env, "no cert: /api/admin", &get("/api/admin", &[spoof], None), 403, auth, up);
    let resp = get("/api/flows", &[("authorization", "Bearer allow:carol"), spoof], None);
    env.assert_allowed_as("no cert: protected path", &resp, "carol");
    assert!(env.auth.last().header_all(PEER_HEADER).is_empty(), "no identity, and the client's copy is stripped");
    assert_eq!(counter(&env, "principal_denied"), 2);
}

/// `require_client_certificate`, and a top-level `principals` list.
#[test]
fn required_client_certificates_and_top_level_principals() {
    let ca = test_ca();
    let config = r#"{"auth": {"cluster": "auth"}, "principals": ["spiffe://cluster.local/ns/prefect/*"]}"#;
    let env = Env::builder().plugin_config(config).downstream_mtls(ca.dir(), true).start();
    let bearer = [("authorization", "Bearer allow:alice")];
    let resp = ca.get(env.port, "/api/flows", &bearer, Some("webhook")).expect("webhook over mTLS");
    env.assert_allowed_as("webhook: in the namespace", &resp, "alice");
    let (auth, up) = (env.auth.count(), env.upstream.count());
    let resp = ca.get(env.port, "/api/health", &[], Some("admin")).expect("admin over mTLS");
    assert_access_denied(&env, "admin: outside the namespace, public path too", &resp, 403, auth, up);
    let refused = ca.get(env.port, "/api/health", &[], None);
    assert!(refused.is_err(), "a client without a certificate must not get through: {refused:?}");
    assert_eq!(env.auth.count(), auth, "no callout without a handshake");
    assert_eq!(counter(&env, "principal_denied"), 1);
}

/// Deny rules for a range, an identity and both; the rest as by default. Every deny
/// status differs, so a reply names the rule that gave it.
fn deny_rules_config() -> String {
    format!(
        r#"{{"auth": {{"cluster": "auth"}}, "public_paths": [
            "/auth", "/api/docs", "/api/openapi.json", "/api/version",
            {{"path": "/hooks", "source_ranges": ["{INSIDE}/32"], "otherwise": "deny", "deny_status": 404}},
            {{"path": "/api/health", "principals": ["{WEBHOOK}"], "otherwise": "deny", "deny_status": 403}},
            {{"path": "/internal", "source_ranges": ["{INSIDE}/32"], "principals": ["{WEBHOOK}"],
              "otherwise": "deny", "deny_status": 410}},
            "/{{prefix}}/task_runs/subscriptions/scheduled", "/{{prefix}}/events/out"]}}"#
    )
}

/// tests/data/internal_spellings.txt: spellings of `/internal/metrics` beyond the
/// table's (each one a parser behind Envoy reads as `/internal/...`).
fn internal_spellings() -> Vec<Vec<u8>> {
    let list = std::fs::read_to_string(paths::tsv_path().with_file_name("internal_spellings.txt"))
        .expect("tests/data/internal_spellings.txt");
    list.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(|l| l.as_bytes().to_vec()).collect()
}
/// What the filter must do with `target` for a client: the status of the first deny
/// rule that covers an interpretation of it and does not admit the client (any of
/// them may come first), else nothing (public, checked, or refused by Envoy).
struct Expect {
    deny: Vec<u16>,
    public: bool,
}

/// From the filter's own definitions, not its gate: the public-path match of the
/// canonical form, and of each interpretation for a non-canonical one.
fn expect(settings: &Settings, target: &[u8], admitted: impl Fn(&str) -> bool) -> Expect {
    let rules = [("/hooks", 404), ("/api/health", 403), ("/internal", 410)];
    let rule_of = |index: usize| {
        let template = settings.public.template(index)?;
        rules.iter().find(|(t, _)| *t == template).map(|&(t, status)| (t, status))
    };
    let (covered, public): (Vec<usize>, bool) = match settings.public.classify(target) {
        PathMatch::Public(index) => (vec![index], true),
        PathMatch::Protected => (Vec::new(), false),
        PathMatch::NotCanonical => match interpretations(target) {
            Interpretations::Paths(paths) => {
                (paths.iter().filter_map(|p| settings.public.template_of(p)).collect(), false)
            }
            Interpretations::TooMany => panic!("{}: a table row is short", escape(target)),
        },
    };
    let deny: Vec<u16> =
        covered.into_iter().filter_map(rule_of).filter(|(t, _)| !admitted(t)).map(|(_, status)| status).collect();
    Expect { public: public && deny.is_empty(), deny }
}

/// The whole path-confusion table, and more spellings of `/internal`, against deny
/// rules, through one Envoy with an optional-certificate mTLS listener, from inside
/// and outside the range, with and without the admitted identity: a client a rule
/// does not admit gets that rule's deny for every path with an interpretation under
/// it; an admitted client is never denied by it (checked, public, or refused by Envoy).
#[test]
fn deny_rules_hold_for_every_spelling_from_every_client() {
    let ca = test_ca();
    let config = deny_rules_config();
    let settings = Settings::from_json(config.as_bytes()).expect("the test's configuration parses");
    let env = Env::builder().plugin_config(&config).downstream_mtls(ca.dir(), false).start();
    let mut targets: Vec<Vec<u8>> = paths::load().into_iter().map(|c| c.target).collect();
    let spellings = internal_spellings();
    assert_eq!(spellings.len(), 12, "tests/data/internal_spellings.txt");
    targets.extend(spellings.iter().cloned());
    for spelling in &spellings {
        let expected = expect(&settings, spelling, |_| false);
        assert!(expected.deny.contains(&410), "{} is a spelling of /internal/...", escape(spelling));
    }

    let mut failures = Vec::new();
    let mut denied = 0;
    // Targets Envoy's codec refuses (a 4xx before any filter) for the client every rule
    // admits, which goes first: they never reach the filter, from any client.
    let mut refused_by_envoy: Vec<(Vec<u8>, u16)> = Vec::new();
    for (source, cert) in [(INSIDE, Some("webhook")), (INSIDE, None), (OUTSIDE, Some("webhook")), (OUTSIDE, None)] {
        let client = ca.raw_client(cert);
        let admitted = |template: &str| match template {
            "/hooks" => source == INSIDE,
            "/api/health" => cert.is_some(),
            _ => source == INSIDE && cert.is_some(),
        };
        for target in &targets {
            let expected = expect(&settings, target, admitted);
            let (auth, up) = (env.auth.count(), env.upstream.count());
            let request = RawRequest::get(target).bearer("allow:bob").to_bytes();
            let result = client.send_from(ip(source), env.port, &request);
            let (called, reached) = (env.auth.count() > auth, env.upstream.count() > up);
            let by_envoy = |resp: &Response| {
                !called
                    && !reached
                    && !resp.proxied()
                    && resp.text() != DENIED_BODY
                    && (400..500).contains(&resp.status)
            };
            let (outcome, ok) = match &result {
                Err(e) => (format!("no response: {e}"), false),
                Ok(resp) if source == INSIDE && cert.is_some() && by_envoy(resp) => {
                    refused_by_envoy.push((target.clone(), resp.status));
                    (format!("{} refused by Envoy", resp.status), expected.deny.is_empty())
                }
                Ok(resp) if refused_by_envoy.contains(&(target.clone(), resp.status)) && by_envoy(resp) => {
                    (format!("{} refused by Envoy", resp.status), true)
                }
                Ok(resp) if !expected.deny.is_empty() => {
                    denied += 1;
                    let ok = expected.deny.contains(&resp.status)
                        && resp.text() == DENIED_BODY
                        && !resp.proxied()
                        && !called
                        && !reached;
                    let body = if resp.text() == DENIED_BODY { "the access denial" } else { "another body" };
                    (format!("{} with {body} (callout {called}, upstream {reached})", resp.status), ok)
                }
                Ok(resp) => {
                    let ours = resp.text() == DENIED_BODY;
                    let ok = !ours
                        && match (expected.public, reached) {
                            (true, _) => resp.status == 200 && resp.proxied() && !called,
                            // Checked: the mock allows bob; or refused by Envoy itself.
                            (false, true) => resp.status == 200 && called,
                            (false, false) => by_envoy(resp),
                        };
                    (format!("{} (callout {called}, upstream {reached})", resp.status), ok)
                }
            };
            if !ok {
                failures.push(format!(
                    "from {source} cert {cert:?}: {:<50} expected deny {:?} public {} -> {outcome}",
                    escape(target),
                    expected.deny,
                    expected.public
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests misbehaved:\n{}",
        failures.len(),
        targets.len() * 4,
        failures.join("\n")
    );
    assert!(denied >= 90, "the table attacks the rules' paths: {denied} denials expected");
    assert!(
        refused_by_envoy.len() <= 8,
        "Envoy refuses only the few targets its codec cannot carry: {refused_by_envoy:?}"
    );
}
