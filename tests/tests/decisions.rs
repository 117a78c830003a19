//! 4. What the auth service's answer does: allow (identity headers upstream, nothing
//!    else), deny and redirect (status, body and the allowed headers to the client).

use nebula_authz_tests::mock_auth::REDIRECT_LOCATION;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto, NEBULA_HEADERS};

over_h1_and_h2!(allow_deny_and_redirect, configured_allow_statuses_and_header_lists);

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

fn configured_allow_statuses_and_header_lists(proto: Proto) {
    let env = Env::start_over(
        proto,
        r#"{"auth": {"cluster": "auth", "allow_statuses": [200, 204],
                      "upstream_headers": ["x-nebula-actor-id", "x-other"],
                      "client_headers": ["www-authenticate"]}}"#,
    );

    let resp = env.get_as("/api/flows", "allow:bob");
    env.check(resp.status == 200 && resp.proxied(), "allow: 200 from the upstream", &resp);
    let up = env.upstream.last();
    env.check(up.header_all("x-nebula-actor-id") == ["bob"], "allow: configured x-nebula-actor-id", &resp);
    env.check(up.header_all("x-other") == ["leak"], "allow: configured x-other", &resp);
    for name in &NEBULA_HEADERS[1..] {
        env.check(up.header_all(name).is_empty(), &format!("allow: unconfigured {name} reached the upstream"), &resp);
    }

    let resp = env.send(
        &nebula_authz_tests::RawRequest::get("/api/flows").bearer("status:204").header("x-nebula-actor-id", "evil"),
    );
    env.check(resp.status == 200 && resp.proxied(), "status:204 is in allow_statuses", &resp);
    let up = env.upstream.last();
    env.check(up.header_all("x-nebula-actor-id").is_empty(), "204 allow: the spoofed actor must be stripped", &resp);

    let resp = env.get_as("/api/flows", "deny");
    env.check(resp.status == 401, "deny: 401", &resp);
    env.check(resp.header_all("www-authenticate").len() == 1, "deny: www-authenticate is configured", &resp);
    env.check(resp.header("content-type").as_deref() != Some("application/json"), "deny: content-type is not", &resp);
    env.check(!resp.has_header("x-internal"), "deny: x-internal leaked", &resp);

    let resp = env.get_as("/api/flows", "status:200");
    env.check(resp.status == 200 && resp.proxied(), "status:200 still allows", &resp);
    assert_eq!(env.upstream.count(), 3);
}
