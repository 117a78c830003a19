//! 9. Non-UTF-8 header bytes from the client or the auth service do not break the
//!    filter: requests after them still get the right answers.

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::mock_auth::LATIN1_ACTOR;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto, FILTER_ERROR_BODY};

over_h1_and_h2!(non_utf8_header_values_do_not_break_the_filter);

fn non_utf8_header_values_do_not_break_the_filter(proto: Proto) {
    let mut env = Env::start_default_over(proto);

    // A non-UTF-8 value in a header the filter ignores, and in one it strips.
    let resp = env.send(
        &RawRequest::get("/api/flows")
            .bearer("allow:alice")
            .header("X-Custom", b"caf\xe9")
            .header("X-Nebula-Actor-Id", b"caf\xe9"),
    );
    let up = env.assert_allowed_as("client headers with a raw 0xE9", &resp, "alice");
    assert_eq!(up.header_bytes("x-custom"), [b"caf\xe9".to_vec()], "x-custom must pass through byte for byte");

    // ...and in one the filter forwards to the auth service: sent byte for byte, or
    // refused (fail closed) without a callout. Anything else is wrong.
    let auth_before = env.auth.count();
    let up_before = env.upstream.count();
    let resp =
        env.send(&RawRequest::get("/api/flows").bearer("allow:alice").header("Origin", b"https://caf\xe9.example"));
    if env.auth.count() > auth_before {
        let req = env.auth.last();
        env.check(
            req.header_bytes("origin") == [b"https://caf\xe9.example".to_vec()],
            &format!("origin must reach the auth service byte for byte: {req:?}"),
            &resp,
        );
        env.assert_allowed_as("non-UTF-8 origin forwarded", &resp, "alice");
    } else {
        env.check(resp.status == 403, "non-UTF-8 origin not forwarded: expected fail closed", &resp);
        env.check(resp.text() == FILTER_ERROR_BODY, "non-UTF-8 origin: filter body", &resp);
        env.check(env.upstream.count() == up_before, "non-UTF-8 origin: upstream reached without a callout", &resp);
    }

    // The auth service answers with a non-UTF-8 identity: passed on byte for byte, or
    // refused as a malformed answer (fail closed). Anything else is wrong.
    let resp = env.get_as("/api/flows", "latin1");
    if resp.status == 200 {
        let up = env.upstream.last();
        env.check(resp.proxied(), "latin1 allow: 200 must come from the upstream", &resp);
        env.check(
            up.header_bytes("x-nebula-actor-id") == [LATIN1_ACTOR.to_vec()],
            &format!("latin1 allow: upstream x-nebula-actor-id {:?}", up.header_bytes("x-nebula-actor-id")),
            &resp,
        );
    } else {
        let before = env.upstream.count();
        env.check(resp.status == 403, "latin1: expected 200 (bytes passed on) or 403 (fail closed)", &resp);
        env.check(resp.text() == FILTER_ERROR_BODY, "latin1 fail closed: filter body", &resp);
        env.check(env.upstream.count() == before, "latin1 fail closed: upstream reached", &resp);
    }

    // Envoy and the VM are alive, and ordinary requests get the right answers.
    assert!(env.alive(), "Envoy exited; log tail:\n{}", env.log_tail());
    env.assert_allowed_as("allow afterwards", &env.get_as("/api/flows", "allow:bob"), "bob");
    let before = env.upstream.count();
    env.assert_denied("deny afterwards", &env.get_as("/api/flows", "deny"), before);
    let resp = env.get_as("/api/health", "");
    env.check(resp.status == 200 && resp.proxied(), "public afterwards", &resp);
    let log = env.log();
    assert!(
        !log.contains("panicked") && !log.contains("Function: proxy_on"),
        "the filter trapped; log tail:\n{}",
        env.log_tail()
    );
}
