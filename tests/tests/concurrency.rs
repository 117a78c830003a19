//! 8. Many requests in flight at once (two Envoy workers, callouts answered in a
//!    scrambled order): each upstream request carries its own identity, no cross-talk.

use std::sync::{Arc, Barrier};
use std::thread;

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::{over_h1_and_h2, Env, Proto};

const REQUESTS: usize = 64;

over_h1_and_h2!(concurrent_requests_keep_their_own_identity);

fn concurrent_requests_keep_their_own_identity(proto: Proto) {
    let env = Env::builder().proto(proto).concurrency(2).start();
    let port = env.port;
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let handles: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                // Delays from 0 to 60 ms in a scrambled order, so answers overtake each other.
                let delay = i * 37 % 61;
                let req = RawRequest::get(format!("/api/flows/{i}")).bearer(&format!("slow:{delay}:allow:actor-{i}"));
                barrier.wait();
                req.try_send_over(proto, port)
            })
        })
        .collect();

    let mut failures = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        match handle.join().expect("client thread panicked") {
            Err(e) => failures.push(format!("request {i}: {e}")),
            Ok(resp) if resp.status != 200 => {
                failures.push(format!("request {i}: status {}: {}", resp.status, resp.text()))
            }
            Ok(resp) => {
                let echo = resp.json();
                let path = echo["path"].as_str().unwrap_or("").to_owned();
                let actor = echo["headers"]["x-nebula-actor-id"].clone();
                if path != format!("/api/flows/{i}") || actor != serde_json::json!([format!("actor-{i}")]) {
                    failures.push(format!("request {i}: upstream saw path {path} with actor {actor}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cross-talk or failures:\n{}\nEnvoy log tail:\n{}",
        failures.join("\n"),
        env.log_tail()
    );

    let ups = env.upstream.requests();
    assert_eq!(ups.len(), REQUESTS, "every request should reach the upstream once");
    for up in &ups {
        let i = up.path.rsplit('/').next().unwrap_or("");
        let want = format!("actor-{i}");
        assert_eq!(up.header_all("x-nebula-actor-id"), std::slice::from_ref(&want), "upstream {}: {up:?}", up.path);
        assert_eq!(up.header_all("x-nebula-ratelimit-config"), [format!("rl-{want}")], "upstream {}", up.path);
    }
    assert_eq!(env.auth.count(), REQUESTS, "one callout per request");
}
