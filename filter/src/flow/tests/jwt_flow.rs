//! Local JWT verification inside the flow: `local` decides without a callout,
//! `local_then_callout` keeps the claims for the callout's allow; a spoofed identity
//! never survives either way.

use jwt_simple::prelude::*;

use super::answers::Answer;
use super::{spoofing, Sim, NOW_MS};
use crate::flow::mock_host::End;
use crate::flow::Flow;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config(mode: &str) -> String {
    serde_json::json!({"auth": {"cluster": "auth", "upstream_headers": ["x-nebula-actor-id", "x-nebula-actor-permissions"]},
        "jwt": {"providers": [{"issuer": "https://idp", "secret": String::from_utf8(SECRET.to_vec()).unwrap(),
            "mode": mode, "claims_to_headers": {"sub": "x-jwt-sub"}}]}})
    .to_string()
}

fn token(expired: bool) -> String {
    let key = HS256Key::from_bytes(SECRET);
    let now = NOW_MS / 1000;
    let mut claims = Claims::create(Duration::from_secs(600)).with_issuer("https://idp").with_subject("dave");
    claims.issued_at = Some(UnixTimeStamp::from_secs(now - 1200));
    claims.expires_at = Some(UnixTimeStamp::from_secs(if expired { now - 600 } else { now + 600 }));
    key.authenticate(claims).unwrap()
}

/// The client also spoofs the claim header.
fn spoofed_sub(path: &[u8], extra: &[(&str, &str)]) -> crate::flow::mock_host::Pairs {
    let mut headers = spoofing(path, extra);
    headers.push(("X_Jwt_Sub".into(), super::SPOOF.as_bytes().to_vec()));
    headers
}

#[test]
fn local_mode_decides_without_a_callout() {
    let mut sim = Sim::new(&config("local"), 1);
    let valid = sim.send(spoofed_sub(b"/api/flows", &[("authorization", &format!("Bearer {}", token(false)))]));
    assert_eq!(sim.streams[&valid].first, Flow::Continue);
    let upstream = sim.streams[&valid].upstream.clone().unwrap();
    assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
    let expired = sim.send(spoofing(b"/api/flows", &[("authorization", &format!("Bearer {}", token(true)))]));
    assert_eq!(sim.outcome(expired), Some(401));
    let garbage = sim.send(spoofing(b"/api/flows", &[("authorization", "Bearer eyJhbGciOi.x.y")]));
    assert!(sim.outcome(garbage).is_some());
    sim.settle(|_, _| Answer::Allow.reply());
    sim.check();
    assert!(sim.host.dispatched().iter().all(|d| d.context != valid && d.context != expired));
}

#[test]
fn local_then_callout_adds_the_claims_only_on_the_callouts_allow() {
    for answer in [Answer::Allow, Answer::Deny, Answer::Reset] {
        let mut sim = Sim::new(&config("local_then_callout"), 1);
        let id = sim.send(spoofed_sub(b"/api/flows", &[("authorization", &format!("Bearer {}", token(false)))]));
        assert_eq!(sim.pending().len(), 1);
        sim.settle(|_, _| answer.reply());
        sim.check();
        let ends = sim.host.stream(id).ends;
        if answer.allows() {
            assert_eq!(ends, vec![End::Resume]);
            let upstream = sim.streams[&id].upstream.clone().unwrap();
            assert!(upstream.contains(&("x-jwt-sub".into(), b"dave".to_vec())), "{upstream:?}");
            assert!(upstream.contains(&("x-nebula-actor-id".into(), b"alice".to_vec())), "{upstream:?}");
        } else {
            assert!(matches!(ends.as_slice(), [End::Reply { .. }]), "{answer:?}: {ends:?}");
        }
    }
}
