//! Istio CUSTOM rules (`policies`) under the real Envoy: the connection and request
//! facts a rule reads come from Envoy's properties as Envoy sets them, one Envoy for all.
//! `destination.port` is the listener's (only known once Envoy listens: the rules are
//! pushed over ECDS then), `source.address` the client's bound loopback address,
//! `:authority` the Host header (any case, with a port), and the principal the verified
//! client certificate's URI SAN over downstream mTLS. A request a rule selects is
//! checked (the auth service sees it); one no rule selects goes upstream unchecked with
//! the client's identity headers stripped. Then two providers: each asked in order, the
//! first denial ending the request, the last allow's identity upstream once.

use std::net::IpAddr;

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::tls::TestCa;
use nebula_authz_tests::Env;

const WEBHOOK: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";
const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const SPOOF: &str = "spoofed-by-client";

fn rules(port: u16) -> String {
    serde_json::json!({
        "auth": {"cluster": "auth"},
        "policies": [{"name": "prefect/ext-authz", "rules": [
            {"to": [{"operation": {"ports": [port.to_string()], "paths": ["/port/*"]}}]},
            {"to": [{"operation": {"ports": [(port ^ 1).to_string()], "paths": ["/other-port/*"]}}]},
            {"from": [{"source": {"ipBlocks": ["127.0.0.2/32"]}}], "to": [{"operation": {"paths": ["/ip/*"]}}]},
            {"to": [{"operation": {"hosts": ["prefect.example.com"], "paths": ["/host/*"]}}]},
            {"from": [{"source": {"principals": ["cluster.local/ns/prefect/sa/webhook"]}}],
             "to": [{"operation": {"paths": ["/peer/*"]}}]},
            {"from": [{"source": {"namespaces": ["ops"]}}], "to": [{"operation": {"paths": ["/ns/*"]}}]}
        ]}]
    })
    .to_string()
}

/// (case, source address, client certificate, path, Host, whether a rule selects it)
type Case = (&'static str, &'static str, Option<&'static str>, &'static str, &'static str, bool);

#[test]
fn rules_read_the_properties_envoy_sets() {
    let ca = TestCa::new();
    ca.client("webhook", WEBHOOK);
    ca.client("admin", ADMIN);
    // Client certificates optional (verified when sent), so a client without one gets in.
    // `use_remote_address: false`, as on an Istio sidecar: `source.address` is the TCP
    // peer unless the request carries X-Forwarded-For.
    let env = Env::builder()
        .without_remote_address()
        .ecds()
        .plugin_config(r#"{"auth": {"cluster": "auth"}}"#)
        .downstream_mtls(ca.dir(), false)
        .start();
    let before = env.ecds_counts();
    env.push_filter(&rules(env.port), &Tools::locate(true).wasm);
    assert!(env.wait_ecds(before), "the policies configuration was refused; log tail:\n{}", env.log_tail());

    let cases: &[Case] = &[
        ("the listener's port", "127.0.0.2", None, "/port/x", "localhost", true),
        ("another port", "127.0.0.2", None, "/other-port/x", "localhost", false),
        ("the peer inside ipBlocks", "127.0.0.2", None, "/ip/x", "localhost", true),
        ("a peer outside", "127.0.0.3", None, "/ip/x", "localhost", false),
        ("the host in another case, with a port", "127.0.0.3", None, "/host/x", "Prefect.Example.COM:443", true),
        ("another host", "127.0.0.3", None, "/host/x", "api.example.com", false),
        ("the webhook's certificate", "127.0.0.3", Some("webhook"), "/peer/x", "localhost", true),
        ("another certificate", "127.0.0.3", Some("admin"), "/peer/x", "localhost", false),
        ("no certificate", "127.0.0.3", None, "/peer/x", "localhost", false),
        ("the ops namespace", "127.0.0.3", Some("admin"), "/ns/x", "localhost", true),
        ("another namespace", "127.0.0.3", Some("webhook"), "/ns/x", "localhost", false),
        ("a spelling of a selected path", "127.0.0.2", None, "/x/../ip/%78", "localhost", true),
    ];
    // A caller outside ipBlocks naming an inside address (or any) in X-Forwarded-For:
    // Envoy takes `source.address` from it, so the filter cannot tell the peer and the
    // rule selects the request (Istio's RBAC matches the TCP peer).
    let forwarded: &[(&str, &str, &str)] = &[
        ("a peer outside naming one inside", "127.0.0.3", "127.0.0.2"),
        ("a peer outside naming another outside", "127.0.0.3", "10.1.2.3"),
        ("a peer inside naming one outside", "127.0.0.2", "10.1.2.3"),
    ];
    for &(case, source, xff) in forwarded {
        let auth = env.auth.count();
        let request = RawRequest::get("/ip/x").bearer("allow:alice").header("x-forwarded-for", xff).to_bytes();
        let resp = ca
            .raw_client(None)
            .send_from(source.parse().expect("an address"), env.port, &request)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", env.log_tail()));
        env.check(env.auth.count() > auth, &format!("{case}: checked"), &resp);
    }
    for &(case, source, cert, path, host, selected) in cases {
        let (auth, up) = (env.auth.count(), env.upstream.count());
        let request = RawRequest::get(path)
            .header("host", host)
            .bearer("allow:alice")
            .header("x-nebula-actor-id", SPOOF)
            .to_bytes();
        let source: IpAddr = source.parse().expect("an address");
        let resp = ca
            .raw_client(cert)
            .send_from(source, env.port, &request)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", env.log_tail()));
        let called = env.auth.count() > auth;
        env.check(called == selected, &format!("{case}: checked = {selected}"), &resp);
        env.check(resp.proxied() && env.upstream.count() == up + 1, &format!("{case}: goes upstream"), &resp);
        let actor = env.upstream.last().header_all("x-nebula-actor-id");
        let expected: Vec<String> = if selected { vec!["alice".into()] } else { vec![] };
        assert_eq!(actor, expected, "{case}: the auth service's identity, never the client's");
    }

    // Two providers on the same Envoy (a configuration change, pushed the same way): both
    // the mock auth service, told apart by their callout path.
    let before = env.ecds_counts();
    env.push_filter(&two_providers(), &Tools::locate(true).wasm);
    assert!(env.wait_ecds(before), "the two-provider configuration was refused; log tail:\n{}", env.log_tail());
    let cases: &[ProviderCase] = &[
        ("allow:alice", "/both/x", &["/", "/second"], 200, Some("alice")),
        ("seq:allow:a|allow:b", "/both/x", &["/", "/second"], 200, Some("b")),
        ("deny", "/both/x", &["/"], 401, None),
        ("seq:allow:c|deny", "/both/x", &["/", "/second"], 401, None),
        ("allow:dave", "/second/x", &["/second"], 200, Some("dave")),
        ("allow:erin", "/neither/x", &[], 200, None),
    ];
    for &(script, path, callouts, status, actor) in cases {
        let case = format!("{script} on {path}");
        let (auth, up) = (env.auth.count(), env.upstream.count());
        let request = RawRequest::get(path).bearer(script).header("x-nebula-actor-id", SPOOF).to_bytes();
        let resp = ca
            .raw_client(None)
            .send_from("127.0.0.2".parse().expect("an address"), env.port, &request)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", env.log_tail()));
        let sent: Vec<String> = env.auth.requests()[auth..].iter().map(|r| r.path.clone()).collect();
        assert_eq!(sent, callouts, "{case}: the providers asked, in order");
        env.check(resp.status == status, &format!("{case}: status {status}"), &resp);
        if status == 200 {
            env.check(env.upstream.count() == up + 1, &format!("{case}: goes upstream"), &resp);
            let actors = env.upstream.last().header_all("x-nebula-actor-id");
            let expected: Vec<String> = actor.map(str::to_string).into_iter().collect();
            assert_eq!(actors, expected, "{case}: the last allow's identity, once");
        } else {
            env.check(env.upstream.count() == up, &format!("{case}: nothing upstream"), &resp);
        }
    }
}

/// (script, path, the callouts' paths in order, status, the upstream's actor)
type ProviderCase = (&'static str, &'static str, &'static [&'static str], u16, Option<&'static str>);

fn two_providers() -> String {
    serde_json::json!({
        "providers": [{"name": "first", "cluster": "auth"}, {"name": "second", "cluster": "auth", "path": "/second"}],
        "policies": [
            {"provider": "first", "rules": [{"to": [{"operation": {"paths": ["/both/*"]}}]}]},
            {"provider": "second", "rules": [{"to": [{"operation": {"paths": ["/both/*", "/second/*"]}}]}]}
        ]
    })
    .to_string()
}
