//! 2. Every row of tests/data/paths.tsv through real Envoy with `Bearer deny`:
//!    `public` rows reach the upstream without a callout; `protected` rows never reach
//!    the upstream, and are either sent to the auth service (401 from the mock) or
//!    rejected by Envoy itself (a 4xx without callout).

use nebula_authz_tests::client::{escape, RawRequest};
use nebula_authz_tests::paths::{self, Expected};
use nebula_authz_tests::Env;

#[test]
fn paths_tsv_replayed_through_envoy() {
    let env = Env::start_default();
    let cases = paths::load();
    assert_eq!(cases.len(), 66, "paths.tsv should hold 66 rows");

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let auth_before = env.auth.count();
        let up_before = env.upstream.count();
        let result = RawRequest::get(&case.target).bearer("deny").try_send(env.port);
        let called_out = env.auth.count() > auth_before;
        let reached = env.upstream.count() > up_before;
        let (outcome, ok) = match (&result, case.expected) {
            (Err(e), Expected::Public) => (format!("no response: {e}"), false),
            (Err(e), Expected::Protected) => (format!("connection closed without a response ({e})"), !reached),
            (Ok(resp), Expected::Public) => {
                let got_path = reached.then(|| env.upstream.last().path);
                let ok = resp.status == 200
                    && resp.proxied()
                    && !called_out
                    && got_path.as_deref().map(str::as_bytes) == Some(case.target.as_slice());
                (format!("{} upstream path {:?}, callout {called_out}", resp.status, got_path), ok)
            }
            (Ok(resp), Expected::Protected) if reached => {
                (format!("REACHED THE UPSTREAM (callout: {called_out}) -> {}", resp.status), false)
            }
            (Ok(resp), Expected::Protected) if called_out => {
                (format!("auth consulted -> {}", resp.status), !resp.proxied() && resp.status == 401)
            }
            (Ok(resp), Expected::Protected) => (
                format!("rejected by Envoy without callout -> {} {:?}", resp.status, resp.text().trim()),
                !resp.proxied() && (400..500).contains(&resp.status),
            ),
        };
        let line = format!("{:<9} {:<62} {}", format!("{:?}", case.expected), escape(&case.target), outcome);
        if !ok {
            failures.push(format!("{line}  (paths.tsv:{}, {}; reached upstream: {reached})", case.line, case.note));
        }
        report.push(line);
    }
    eprintln!("paths.tsv through Envoy:\n{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} paths.tsv rows misbehaved:\n{}\n\nfull report:\n{}\n\nEnvoy log tail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        report.join("\n"),
        env.log_tail()
    );

    // Protected control with a valid identity.
    let resp = env.get_as("/api/flows", "allow:alice");
    env.assert_allowed_as("protected control /api/flows", &resp, "alice");
}
