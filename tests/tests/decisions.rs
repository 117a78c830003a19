//! 4. What the auth service's answer does: allow (identity headers upstream, nothing
//!    else), deny and redirect (status, body and the allowed headers to the client), over
//!    HTTP/1.1 and HTTP/2. `allow_statuses`, `upstream_headers` and `client_headers` as
//!    configured are asserted natively (filter/src/flow/tests/answers.rs).

use nebula_authz_tests::mock_auth::REDIRECT_LOCATION;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto, NEBULA_HEADERS};

over_h1_and_h2!(allow_deny_and_redirect);

fn allow_deny_and_redirect(proto: Proto) {
    let env = Env::start_default_over(proto);

    let resp = env.get_as("/api/flows/1", "allow:alice");
    env.assert_allowed_as("allow", &resp, "alice");
    for name in NEBULA_HEADERS.iter().chain(&["x-other"]) {
        env.check(!resp.has_header(name), &format!("allow: {name} from the auth response reached the client"), &resp);
    }
    let echo = resp.json();
    assert_eq!(echo["path"], "/api/flows/1");
    assert_eq!(echo["headers"]["x-nebula-actor-id"], serde_json::json!(["alice"]));

    env.assert_denied("deny", &env.get_as("/api/flows", "deny"), 1);
    env.assert_denied("no credentials", &env.get("/api/flows", &[]), 1);

    let resp = env.get_as("/api/flows", "redirect");
    env.check(resp.status == 302, "redirect: expected 302", &resp);
    env.check(resp.header_all("location") == [REDIRECT_LOCATION], "redirect: location", &resp);
    env.check(
        resp.header_all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"],
        "redirect: both set-cookie values, in order",
        &resp,
    );
    env.check(resp.body.is_empty(), "redirect: empty body", &resp);
    env.check(!resp.proxied(), "redirect: local reply", &resp);

    // Other 4xx, and a 2xx outside allow_statuses, deny with the auth status and body.
    for status in [403u16, 404, 429, 201] {
        let resp = env.get_as("/api/flows", &format!("status:{status}"));
        env.check(resp.status == status, &format!("status:{status}: expected the auth status"), &resp);
        env.check(resp.text() == format!("status {status}"), &format!("status:{status}: the auth body"), &resp);
        env.check(resp.header_all("content-type") == ["text/plain"], &format!("status:{status}: content-type"), &resp);
    }
    assert_eq!(env.upstream.count(), 1, "only the allowed request may reach the upstream");
}
