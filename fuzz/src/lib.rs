//! The properties the fuzz targets check, one public function per target
//! (`fuzz_targets/<name>.rs` calls `nebula_authz_fuzz::<name>`). Each takes any bytes,
//! must never panic on its own, and panics (a libFuzzer crash) when a property fails:
//! a round trip that changes something, a public path that is not canonical, a valid
//! token whose signature does not check out, an identity header that reaches the auth
//! service. `tests/corpus.rs` runs them over the committed corpus in `cargo test`.
//!
//! Inputs that hold headers are lines `name: value` (`:path: /x` for pseudo-headers);
//! names are lower-cased and CR/NUL dropped from values, as Envoy hands them over.

#![allow(clippy::panic)]

use std::borrow::Cow;

use base64::Engine;
use nebula_authz::access::interpretations::{interpretations, Interpretations};
use nebula_authz::access::{Facts, Gate, Peer};
use nebula_authz::cache::control::{freshness, Freshness};
use nebula_authz::cache::shared::reencode_slot;
use nebula_authz::flow::header_map;
use nebula_authz::jwt::keys::{Alg, KeySet};
use nebula_authz::jwt::verifier::{JwtVerifier, Outcome};
use nebula_authz::plugin_config::Settings;
use nebula_authz::policy::auth::IDENTITY_HEADERS;
use nebula_authz::policy::request::Route;
use nebula_authz::policy::route::{canonical_path, PathMatch, PublicPaths, DEFAULT_PUBLIC_PATHS};

type Headers = Vec<(String, Vec<u8>)>;

// The targets' own configurations, parsed once per thread (a parse per input would be
// most of the work).
thread_local! {
    static SLOT_SETTINGS: Settings =
        fixed(br#"{"auth": {"cluster": "auth"}, "cache": {"stale_if_error": 60}}"#.to_vec());
    static JWT_SETTINGS: Settings = fixed(format!(
        r#"{{"auth": {{"cluster": "auth"}}, "jwt": {{"providers": [{{"issuer": "{JWT_ISSUER}", "secret": "{JWT_SECRET}",
            "claims_to_headers": {{"sub": "x-nebula-actor-id", "scope": "x-nebula-actor-permissions", "org.team": "x-team"}}}}]}}}}"#
    ).into_bytes());
    // Indexed by the input's flags: bit 0 trust_forward_header, bit 1 preserve_request_method.
    static FORWARD_SETTINGS: [Settings; 4] = [0u8, 1, 2, 3].map(|flags| {
        let (trust, preserve) = (flags & 1 == 1, flags & 2 == 2);
        fixed(format!(
            r#"{{"auth": {{"cluster": "auth", "trust_forward_header": {trust}, "preserve_request_method": {preserve}}}}}"#
        ).into_bytes())
    });
}

fn fixed(json: Vec<u8>) -> Settings {
    match Settings::from_json(&json) {
        Ok(settings) => settings,
        Err(e) => panic!("the fuzz target's own configuration must parse: {e}"),
    }
}

/// The plugin configuration parser: deterministic, errors are the documented kind, and a
/// configuration that parses never makes a path-confusion form of a public path public.
pub fn config(data: &[u8]) {
    let first = Settings::from_json(data);
    match (&first, Settings::from_json(data)) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, &b, "the same bytes gave two errors"),
        (a, b) => panic!("the same bytes parsed differently: {:?} / {:?}", a.is_ok(), b.is_ok()),
    }
    match first {
        Err(e) => assert!(e.to_string().starts_with("invalid plugin configuration"), "{e}"),
        Ok(settings) => {
            // Re-serialized (the JSON value pretty-printed), it parses to the same settings:
            // the configuration is a function of the JSON, not of its bytes. The cache
            // fingerprint is the one thing that follows the bytes, on purpose.
            let value: serde_json::Value = match serde_json::from_slice(data) {
                Ok(value) => value,
                Err(e) => panic!("parsed as a configuration but not as JSON: {e}"),
            };
            let again = match serde_json::to_vec_pretty(&value).map(|b| Settings::from_json(&b)) {
                Ok(Ok(again)) => again,
                Ok(Err(e)) => panic!("the re-serialized configuration is refused: {e}"),
                Err(e) => panic!("cannot re-serialize: {e}"),
            };
            assert_eq!(summary(&again), summary(&settings), "re-serialized configuration parses differently");
            for confused in
                [&b"//api/health"[..], b"/api/health/../flows", b"/api%2Fhealth", b"/api/./health", b"api/health"]
            {
                assert!(!settings.public.is_public(confused), "{} is public", String::from_utf8_lossy(confused));
            }
        }
    }
}

/// What two parses of one configuration must agree on (all but the JWT keys, whose
/// Debug form holds hash sets, and the cache fingerprint).
fn summary(s: &Settings) -> String {
    let cache = s.cache.as_ref().map(|c| (c.entries, c.default_ttl, c.max_ttl, c.negative_ttl, c.stale_if_error));
    let jwt = s.jwt.as_ref().map(|j| j.providers.len());
    format!("{:?}\n{:?}\n{:?}\n{}\n{cache:?}\n{jwt:?}", s.auth, s.strip, s.public, s.status_on_error)
}

/// The host's serialized header map: what parses re-serializes to a map that parses
/// the same, no longer than the input; any list of headers survives the round trip.
pub fn header_map(data: &[u8]) {
    if let Some(pairs) = header_map::parse(data) {
        let bytes = serialize_map(&pairs);
        // Every length and terminator was checked: the input starts with exactly these
        // bytes (an empty buffer is the empty map, whose serialization is 4 bytes).
        assert!(data.is_empty() || data.starts_with(&bytes), "the map parsed is not what the buffer holds");
        assert_eq!(header_map::parse(&bytes).as_ref(), Some(&pairs), "round trip changed the map");
    }
    let headers = header_lines(data);
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    assert_eq!(header_map::parse(&serialize_map(&pairs)), Some(pairs), "a serialized map did not parse back");
}

/// The canonical-path rule and the public-path matcher. Input: template lines, then the
/// request target as the last line (no template line: seed 000's public paths). A public
/// target is canonical, with or without its query; the query never changes the answer;
/// and matchit agrees with a naive segment-by-segment matcher on every canonical path.
pub fn public_path(data: &[u8]) {
    let (templates, target) = match data.iter().rposition(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let templates: Vec<String> = if templates.is_empty() {
        DEFAULT_PUBLIC_PATHS.iter().map(|t| t.to_string()).collect()
    } else {
        templates.split(|&b| b == b'\n').take(16).map(|t| String::from_utf8_lossy(t).into_owned()).collect()
    };
    let fields: Vec<String> = (0..templates.len()).map(|i| format!("public_paths[{i}]")).collect();
    let Ok(paths) = PublicPaths::compile(&templates, &fields) else { return };
    let found = paths.find(target);
    let canonical = canonical_path(target);
    let shown = String::from_utf8_lossy(target);
    if let Some(template) = found {
        let Some(path) = canonical else { panic!("{shown:?} is public ({template}) but not canonical") };
        let query_at = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
        assert_eq!(path.as_bytes(), &target[..query_at], "the canonical path is the target before '?'");
        assert_unambiguous(path);
        assert!(naive_match(template, path), "{path:?} is public by {template:?}, which does not cover it");
        assert_eq!(paths.find(path.as_bytes()), Some(template), "{path:?} without its query");
        let with_query = format!("{path}?next=/../admin%2F;x");
        assert_eq!(paths.find(with_query.as_bytes()), Some(template), "{with_query:?}");
    }
    if let Some(path) = canonical {
        let naive = templates.iter().find(|t| naive_match(t, path));
        assert_eq!(naive.is_some(), found.is_some(), "{path:?}: naive matcher {naive:?}, matchit {found:?}");
    }
}

/// The deny side of the access rules. Input: a first byte (bit 0: the client is inside
/// the rule's range, bit 1: it presents the rule's identity; bits 2-3: the rule has
/// `source_ranges` (0 or 1), `principals` (2) or both (3)), then the rule's template
/// (`otherwise: deny`, the only public path) and the request target on two lines (one
/// line: the target, under `/internal`). Whenever a parser model ([`parser_readings`])
/// reads the target under the template, a client the rule does not admit gets its deny;
/// an admitted client is never denied; a denial always has an interpretation under the
/// rule (or a target past the work limit); a canonical target is public exactly for an
/// admitted client.
pub fn access_deny(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (template, target) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (String::from_utf8_lossy(&rest[..at]).into_owned(), &rest[at + 1..]),
        None => ("/internal".to_owned(), rest),
    };
    let (inside, identified) = (flags & 1 == 1, flags & 2 == 2);
    let (ranges, principals) = match flags >> 2 & 3 {
        2 => (false, true),
        3 => (true, true),
        _ => (true, false),
    };
    let mut rule = serde_json::json!({"path": template, "otherwise": "deny", "deny_status": 451});
    if ranges {
        rule["source_ranges"] = serde_json::json!(["10.0.0.0/8"]);
    }
    if principals {
        rule["principals"] = serde_json::json!([ADMITTED_PRINCIPAL]);
    }
    let config = serde_json::json!({"auth": {"cluster": "auth"}, "public_paths": [rule]});
    let Ok(settings) = Settings::from_json(config.to_string().as_bytes()) else { return };
    let Some(access) = &settings.access else { panic!("{config}: the rule is configured") };
    let admitted = (!ranges || inside) && (!principals || identified);
    let peer = FuzzPeer { address: if inside { "10.1.2.3:4" } else { "192.0.2.1:4" }, identified };
    let headers: Headers = Vec::new();
    let mut facts = Facts::new(access, peer, &headers);
    let matched = settings.public.classify(target);
    let gate = access.gate(&settings.public, matched, target, &mut facts);
    let shown = String::from_utf8_lossy(target);
    let denied = matches!(gate, Gate::Deny { status: 451, .. });
    assert!(denied || matches!(gate, Gate::Pass), "{shown:?}: {gate:?}");
    if admitted {
        assert!(!denied, "{shown:?} denied to an admitted client");
    }
    if let Some(path) = canonical_path(target) {
        assert_eq!(matched == PathMatch::Public(0), naive_match(&template, path), "{shown:?}");
        assert_eq!(denied, !admitted && naive_match(&template, path), "{shown:?}: canonical, {gate:?}");
    } else if !admitted {
        let models = parser_readings(target);
        if let Some(read) = models.iter().find(|p| naive_match(&template, p)) {
            assert!(denied, "{shown:?} is read as {read:?}, under {template:?}, and was not denied");
        }
    }
    if denied {
        let covered = match interpretations(target) {
            Interpretations::Paths(paths) => paths.iter().any(|p| settings.public.template_of(p) == Some(0)),
            Interpretations::TooMany => true,
        };
        assert!(covered, "{shown:?} denied without an interpretation under {template:?}");
    }
}

/// The identity [`access_deny`]'s rule admits.
const ADMITTED_PRINCIPAL: &str = "spiffe://td/ns/a/sa/ok";

struct FuzzPeer {
    address: &'static str,
    identified: bool,
}

impl Peer for FuzzPeer {
    fn address(&mut self) -> Option<String> {
        Some(self.address.to_owned())
    }
    fn principal(&mut self) -> Option<String> {
        self.identified.then(|| ADMITTED_PRINCIPAL.to_owned())
    }
}

/// What parsers behind a proxy serve for a request target, each written out plainly,
/// one path per parser: a router on the raw path; uvicorn/Starlette (decoded once, dot
/// segments kept); nginx (decoded, slashes merged, dots resolved); Envoy's
/// `normalize_path` alone (unreserved bytes decoded, dots resolved before any merge)
/// and with `UNESCAPE_AND_FORWARD` (`%2F`/`%5C` decoded too, `\` a slash); Tomcat
/// (parameters dropped from the raw path, then decoded and resolved); IIS (decoded
/// twice, overlong UTF-8, `\` a slash); a C backend (cut at the first NUL); a client
/// library that cuts the fragment. Empty segments are merged for the match.
pub fn parser_readings(target: &[u8]) -> Vec<String> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let path = if path.starts_with(b"/") { path.to_vec() } else { [b"/", path].concat() };
    let unquote = |p: &[u8], decode: &dyn Fn(u8) -> bool| -> Vec<u8> {
        let mut out = Vec::with_capacity(p.len());
        let mut i = 0;
        while let Some(&b) = p.get(i) {
            let hex = p.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()).filter(|&d| b == b'%' && decode(d)) {
                Some(d) if !hex.is_some_and(|h| h.starts_with(['+', '-'])) => {
                    out.push(d);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    };
    let all = |_: u8| true;
    let unreserved = |d: u8| d.is_ascii_alphanumeric() || b"-._~".contains(&d);
    let unreserved_and_slashes = |d: u8| unreserved(d) || d == b'/' || d == b'\\';
    let overlong = |p: Vec<u8>| -> Vec<u8> {
        let mut out = Vec::with_capacity(p.len());
        let mut i = 0;
        while let Some(&b) = p.get(i) {
            match (b, p.get(i + 1)) {
                (0xC0 | 0xC1, Some(&c @ 0x80..=0xBF)) => {
                    out.push((b & 1) << 6 | (c & 0x3F));
                    i += 2;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    };
    let slashes = |p: Vec<u8>| -> Vec<u8> { p.into_iter().map(|b| if b == b'\\' { b'/' } else { b }).collect() };
    let no_parameters = |p: &[u8]| -> Vec<u8> {
        let text = String::from_utf8_lossy(p).into_owned();
        text.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/").into_bytes()
    };
    let until = |p: &[u8], end: u8| -> Vec<u8> { p.split(|&b| b == end).next().unwrap_or_default().to_vec() };
    // RFC 3986 §5.2.4, with `merge` first or not; empty segments merged after.
    let segments = |p: &[u8], resolve: bool, merge: bool| -> String {
        let text = String::from_utf8_lossy(p).into_owned();
        let body = text.strip_prefix('/').unwrap_or(&text);
        let mut kept: Vec<&str> = Vec::new();
        let parts: Vec<&str> = body.split('/').collect();
        for (i, segment) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *segment {
                "" if merge && !last => {}
                ".." if resolve => {
                    kept.pop();
                    if last {
                        kept.push("");
                    }
                }
                "." if resolve => {
                    if last {
                        kept.push("");
                    }
                }
                _ => kept.push(segment),
            }
        }
        let joined = format!("/{}", kept.join("/"));
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if c != '/' || !out.ends_with('/') {
                out.push(c);
            }
        }
        out
    };
    vec![
        segments(&path, false, true),
        segments(&unquote(&path, &all), false, true),
        segments(&unquote(&path, &all), true, true),
        segments(&unquote(&path, &unreserved), true, false),
        segments(&slashes(unquote(&path, &unreserved_and_slashes)), true, true),
        segments(&unquote(&no_parameters(&path), &all), true, true),
        segments(&slashes(overlong(unquote(&unquote(&path, &all), &all))), true, true),
        segments(&until(&unquote(&path, &all), 0), true, true),
        segments(&unquote(&until(&path, b'#'), &all), true, true),
    ]
}

/// `Cache-Control`/`Age` freshness: never a zero lifetime, independent of header order
/// and of how the directives are split over header lines; `no-store` anywhere forbids.
pub fn cache_control(data: &[u8]) {
    let headers = header_lines(data);
    let got = freshness(&headers);
    if let Freshness::Seconds(n) = got {
        assert!(n > 0, "a lifetime of 0 must be Forbidden");
    }
    let mut reversed = headers.clone();
    reversed.reverse();
    assert_eq!(freshness(&reversed), got, "header order changed the lifetime");
    let mut split: Headers = Vec::new();
    for (name, value) in &headers {
        if name == "cache-control" {
            split.extend(value.split(|&b| b == b',').map(|d| (name.clone(), d.to_vec())));
        } else {
            split.push((name.clone(), value.clone()));
        }
    }
    assert_eq!(freshness(&split), got, "one directive per header line changed the lifetime");
    let mut no_store = headers;
    no_store.push(("cache-control".into(), b"no-store".to_vec()));
    assert_eq!(freshness(&no_store), Freshness::Forbidden, "no-store must forbid storing");
}

/// The shared cache's slot decoder: any bytes in a slot are a miss or a decision for
/// exactly the key looked up, a valid slot re-encodes to the same bytes, and it is fresh
/// exactly until its expiry.
pub fn cache_slot(data: &[u8]) {
    SLOT_SETTINGS.with(|settings| cache_slot_with(settings, data));
}

fn cache_slot_with(settings: &Settings, data: &[u8]) {
    let Some(cache) = &settings.cache else { panic!("cache configured") };
    let lookup = cache.lookup("auth", &[(":path", "/"), ("authorization", "Bearer t")]);
    let now = 1_700_000_000_000;
    if let Some((_, expires)) = cache.fresh_until(data, &lookup, now) {
        assert!(now < expires, "served at or after its expiry");
        assert_eq!(&data[1..33], &lookup.key.0, "served for another key");
    }
    if cache.stale(data, &lookup, now).is_some() {
        assert_eq!(&data[1..33], &lookup.key.0, "served stale for another key");
    }
    // A slot that decodes re-encodes to exactly its bytes: one encoding per decision.
    if let Some(again) = reencode_slot(data) {
        assert_eq!(again, data, "a decoded slot re-encoded differently");
    }
    // The slot of the same bytes under the looked-up key: the decision decoded from it
    // is served for that key while fresh, and never at or after its expiry.
    if data.len() >= 49 && reencode_slot(data).is_some() {
        let mut ours = data.to_vec();
        ours[1..33].copy_from_slice(&lookup.key.0);
        let expires = u64::from_be_bytes(ours[33..41].try_into().unwrap_or_default());
        let fresh = cache.fresh_until(&ours, &lookup, now);
        assert_eq!(fresh.is_some(), now < expires, "fresh exactly before its expiry");
    }
}

/// The secret of [`jwt`]'s HS256 provider (also in the corpus generator).
pub const JWT_SECRET: &str = "nebula-authz-fuzz-secret-0123456789abcdef";
/// Its issuer.
pub const JWT_ISSUER: &str = "https://issuer.example";
/// The instant tokens are checked at (Unix ms).
pub const JWT_NOW_MS: u64 = 1_700_000_000_000;

/// Local JWT verification (header, payload, signature, claims, claim headers): a token
/// is valid only if an independent HMAC-SHA256 of its first two segments is its
/// signature, and the headers it yields are valid header values.
pub fn jwt(data: &[u8]) {
    JWT_SETTINGS.with(|settings| jwt_with(settings, data));
}

fn jwt_with(settings: &Settings, data: &[u8]) {
    let Some(jwt) = &settings.jwt else { panic!("jwt configured") };
    let token: Vec<u8> = data.iter().copied().filter(|b| !b"\r\n\0".contains(b)).collect();
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(&token);
    let headers: Headers = vec![(":path".into(), b"/api/flows".to_vec()), ("authorization".into(), value)];
    let mut verifier = JwtVerifier::new(jwt);
    let outcome = verifier.check(jwt, &headers, JWT_NOW_MS);
    if let Outcome::Valid { headers: claims, .. } = outcome {
        let text = String::from_utf8_lossy(&token);
        let parts: Vec<&str> = text.trim().split('.').collect();
        assert_eq!(parts.len(), 3, "a valid token has three segments: {text:?}");
        let signed = format!("{}.{}", parts[0], parts[1]);
        let mac = hmac_sha256::HMAC::mac(signed.as_bytes(), JWT_SECRET.as_bytes());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[2]);
        assert_eq!(signature.ok().as_deref(), Some(&mac[..]), "valid without a good signature: {text:?}");
        for (name, value) in claims.iter() {
            assert!(["x-nebula-actor-id", "x-nebula-actor-permissions", "x-team"].contains(&name.as_str()), "{name}");
            assert!(!value.bytes().any(|b| b"\r\n\0".contains(&b)), "{name}: {value:?} is not a header value");
        }
        // The verified-token cache gives the same answer.
        let again = verifier.check(jwt, &headers, JWT_NOW_MS);
        assert!(matches!(again, Outcome::Valid { cached: true, .. }), "cached: {again:?}");
    }
}

/// JWKS documents: a set that loads has a key; private or symmetric material never loads.
pub fn jwks(data: &[u8]) {
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let names = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256"];
    let allowed: Vec<Alg> = names.iter().filter_map(|n| Alg::from_name(n)).collect();
    let only_private = document["keys"]
        .as_array()
        .is_some_and(|keys| keys.iter().all(|k| k.get("d").is_some() || k.get("k").is_some()));
    match KeySet::from_jwks(&document, &allowed) {
        Ok((set, skipped)) => {
            assert!(!set.is_empty(), "a loaded set has a key");
            assert!(!only_private, "private or symmetric key material was loaded");
            assert!(skipped.iter().all(|s| s.starts_with("keys[")), "{skipped:?}");
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

/// The callout a request becomes (strip, public route, forward-auth headers). Input: a
/// first byte (bit 0: trust_forward_header, bit 1: preserve_request_method), then header
/// lines. Every spelling of an identity header (any case, `_` or `-`) and only those are
/// stripped from headers and trailers; no stripped header reaches the auth service, each X-Forwarded-* is
/// sent once, without trust they describe the request Envoy received, not what the
/// client claims, and the callout is a GET unless the client's method is preserved.
pub fn forward_auth(data: &[u8]) {
    let Some((&flags, lines)) = data.split_first() else { return };
    let (trust, preserve) = (flags & 1 == 1, flags & 2 == 2);
    FORWARD_SETTINGS.with(|all| forward_auth_with(&all[usize::from(flags & 3)], trust, preserve, lines));
}

fn forward_auth_with(settings: &Settings, trust: bool, preserve: bool, lines: &[u8]) {
    let headers = header_lines(lines);
    let peer = "10.1.2.3:4567";
    let plan = settings.plan(&headers, || Some(peer.to_owned()));
    for name in &plan.strip {
        assert!(settings.strip.contains(name), "{name} stripped but not in the strip set");
    }
    // Every spelling of an identity header is stripped, from the headers and from the
    // trailers alike (the same list): `_` read as `-`, as CGI/WSGI-style applications do.
    let trailers = settings.strip_list(&headers);
    for (name, _) in &headers {
        let folded = name.replace('_', "-");
        let identity = IDENTITY_HEADERS.contains(&folded.as_str());
        for (list, what) in [(&plan.strip, "headers"), (&trailers, "trailers")] {
            let listed = list.iter().any(|s| s.eq_ignore_ascii_case(name));
            assert_eq!(listed, identity, "{name}: stripped from the {what}: {listed}, an identity header: {identity}");
        }
        // The strip set cannot tell `_` from `-`.
        let dashes = settings.strip.contains(&folded);
        assert_eq!(settings.strip.contains(name), dashes, "{name} and {folded} differ");
        assert_eq!(settings.strip.contains(&name.replace('-', "_")), dashes, "{name} with underscores differs");
    }
    let first = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    match plan.route {
        Route::Public { .. } => {
            let path = first(":path").unwrap_or_default();
            assert!(canonical_path(path).is_some(), "public but not canonical: {path:?}");
        }
        Route::Reject(_) => {}
        Route::Callout { headers: callout } => {
            let callout: Vec<(&str, &str)> = callout.iter().map(|(n, v)| (*n, Cow::as_ref(v))).collect();
            let method = match preserve {
                true => std::str::from_utf8(first(":method").unwrap_or(b"GET")).unwrap_or("not text"),
                false => "GET",
            };
            assert_eq!(&callout[..3], &[(":method", method), (":path", "/"), (":authority", "auth")][..]);
            for (name, _) in &callout[3..] {
                assert!(!settings.strip.contains(name), "stripped header {name} sent to the auth service");
                assert!(!name.starts_with(':'), "pseudo-header {name} sent as a header");
                if name.starts_with("x-forwarded-") {
                    assert_eq!(callout.iter().filter(|(n, _)| n == name).count(), 1, "{name} sent twice");
                }
            }
            if !trust {
                let sent = |name: &str| callout.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes());
                fn nonempty(v: Option<&[u8]>) -> Option<&[u8]> {
                    v.filter(|v| !v.is_empty())
                }
                assert_eq!(sent("x-forwarded-method"), nonempty(first(":method")), "x-forwarded-method");
                assert_eq!(sent("x-forwarded-uri"), nonempty(first(":path")), "x-forwarded-uri");
                assert_eq!(sent("x-forwarded-host"), nonempty(first(":authority")), "x-forwarded-host");
                assert_eq!(sent("x-forwarded-for"), Some(&b"10.1.2.3"[..]), "x-forwarded-for is the peer");
                assert!(sent("x-forwarded-port").is_none() && sent("x-real-ip").is_none(), "client forwarding header");
            }
        }
    }
}

/// `name: value` lines as Envoy hands headers over (names lower-cased, no CR/NUL).
pub fn header_lines(data: &[u8]) -> Headers {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().skip(1).position(|&b| b == b':')? + 1;
            let name = std::str::from_utf8(&line[..colon]).ok()?.trim().to_ascii_lowercase();
            let value: Vec<u8> = line[colon + 1..].iter().copied().filter(|b| !b"\r\0".contains(b)).collect();
            let value = value.trim_ascii().to_vec();
            (!name.is_empty()).then_some((name, value))
        })
        .collect()
}

/// The proxy-wasm map serialization: count, (name length, value length) pairs, then
/// each name and value followed by a NUL (all little-endian u32).
pub fn serialize_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(*value);
        out.push(0);
    }
    out
}

/// Nothing another parser could read differently: no escapes, parameters, backslashes,
/// empty or dot segments, only printable ASCII.
fn assert_unambiguous(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{path:?} has a control, space or non-ASCII byte");
    for bad in ["%", ";", "\\", "#", "?", "//"] {
        assert!(!path.contains(bad), "{path:?} contains {bad:?}");
    }
    let body = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    assert!(body.is_empty() || body.split('/').all(|s| s != "." && s != ".."), "{path:?} has a dot segment");
}

/// The template semantics written out plainly (route.rs docs): `/a/{x}` covers `/a/<one
/// segment>` and everything below it; `/{prefix}/a/b` covers paths of at least one more
/// segment ending in `a/b`; one trailing `/` aside. `=` covers nothing below the
/// template; `==` nothing below it either, and its trailing `/` must be the path's.
fn naive_match(template: &str, path: &str) -> bool {
    let trailing = |s: &str| s.len() > 1 && s.ends_with('/');
    let (exact, template) = match template.strip_prefix('=') {
        Some(rest) => (true, rest),
        None => (false, template),
    };
    let (strict, template) = match template.strip_prefix('=') {
        Some(rest) if exact => (true, rest),
        _ => (false, template),
    };
    if strict && template == "/" {
        return path == "/";
    }
    if strict && trailing(template) != trailing(path) {
        return false;
    }
    let segments = |s: &str| -> Vec<String> {
        let body = s.strip_prefix('/').unwrap_or(s);
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').map(str::to_owned).collect()
        }
    };
    let (t, p) = (segments(template), segments(path));
    let same = |t: &String, p: &String| (t.starts_with('{') && t.ends_with('}')) || t == p;
    match t.first().map(String::as_str) {
        None => false,
        Some("{prefix}") => {
            let rest = &t[1..];
            p.len() > rest.len() && rest.iter().zip(&p[p.len() - rest.len()..]).all(|(t, p)| same(t, p))
        }
        Some(_) if exact => p.len() == t.len() && t.iter().zip(&p).all(|(t, p)| same(t, p)),
        Some(_) => p.len() >= t.len() && t.iter().zip(&p).all(|(t, p)| same(t, p)),
    }
}

/// The `policies` rule matcher against a simple model of Istio's (RBAC as istiod renders
/// a rule: `pilot/pkg/security/authz/model`). Input: a rule's JSON on the first line,
/// then header lines; `@peer: <ip>` is the TCP peer, and `source.address` is what an
/// Istio sidecar (`use_remote_address: false`) settles on: the right-most
/// X-Forwarded-For entry when it parses, else the peer. For a canonical path, the
/// filter selects every request the model selects (the check is the safe side). The
/// model covers `paths`, `methods`, `hosts` (and their `not*`), `ipBlocks`/`notIpBlocks`,
/// `when` on a request header and `source.ip`; any other rule is skipped.
pub fn authz_rules(data: &[u8]) {
    use nebula_authz::authz_policy::policy_config::RawRule;
    use nebula_authz::authz_policy::request_facts::RequestFacts;
    use nebula_authz::authz_policy::rule::Rule;

    let (first, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(rule_json) = serde_json::from_slice::<serde_json::Value>(first) else { return };
    let Some(model_rule) = istio_model::Rule::read(&rule_json) else { return };
    let Ok(raw) = RawRule::parse("rule", &rule_json) else { return };
    let Ok(rule) = Rule::compile("rule", raw) else { return };
    let mut headers = header_lines(rest);
    let peer = headers
        .iter()
        .find(|(n, _)| n == "@peer")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<std::net::IpAddr>().ok());
    headers.retain(|(n, _)| !n.starts_with('@'));
    let Some(peer) = peer else { return };
    let path = headers.iter().find(|(n, _)| n == ":path").map(|(_, v)| v.clone()).unwrap_or_default();
    if canonical_path(&path).is_none() {
        return;
    }
    let xff_last = headers
        .iter()
        .rfind(|(n, _)| n == "x-forwarded-for")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.rsplit(',').next()?.trim().parse::<std::net::IpAddr>().ok());
    let source = xff_last.unwrap_or(peer);
    let request = istio_model::Request { headers: &headers, peer };
    if !model_rule.selects(&request) {
        return;
    }
    let mut facts = RequestFacts::new(&headers, None, FixedConnection(source));
    assert!(rule.matches(&mut facts), "Istio's rule {rule_json} selects {headers:?} from {peer}, the filter does not");
}

struct FixedConnection(std::net::IpAddr);

impl nebula_authz::authz_policy::request_facts::Connection for FixedConnection {
    fn source_ip(&mut self) -> Option<std::net::IpAddr> {
        Some(self.0)
    }
    fn remote_ip(&mut self) -> Option<std::net::IpAddr> {
        Some(self.0)
    }
    fn principal(&mut self) -> Option<&str> {
        None
    }
    fn destination_ip(&mut self) -> Option<std::net::IpAddr> {
        None
    }
    fn destination_port(&mut self) -> Option<u16> {
        None
    }
    fn sni(&mut self) -> Option<&str> {
        None
    }
}

/// Istio's matching, written from its documentation and Envoy's RBAC, not from the
/// filter: values are exact, `x*` prefix, `*x` suffix, `*` any; a field holds when one
/// of its values matches and none of its `not` values does; a repeated header matches
/// when one of its values does (Envoy 1.40, measured); `ipBlocks` and `source.ip` read
/// the TCP peer.
mod istio_model {
    use std::net::IpAddr;

    use serde_json::Value;

    pub struct Request<'a> {
        pub headers: &'a [(String, Vec<u8>)],
        pub peer: IpAddr,
    }

    impl Request<'_> {
        fn values(&self, name: &str) -> Vec<&[u8]> {
            self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
        }
    }

    /// One field: its values and `not` values.
    struct Field {
        values: Vec<String>,
        not: Vec<String>,
    }

    impl Field {
        fn holds(&self, matches: impl Fn(&str) -> bool) -> bool {
            (self.values.is_empty() || self.values.iter().any(|v| matches(v))) && !self.not.iter().any(|v| matches(v))
        }
    }

    fn glob(pattern: &str, text: &[u8], ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| if ignore_case { a.eq_ignore_ascii_case(b) } else { a == b };
        let p = pattern.as_bytes();
        if pattern == "*" {
            !text.is_empty()
        } else if let Some(s) = p.strip_prefix(b"*") {
            text.len() >= s.len() && eq(&text[text.len() - s.len()..], s)
        } else if let Some(s) = p.strip_suffix(b"*") {
            text.len() >= s.len() && eq(&text[..s.len()], s)
        } else {
            eq(text, p)
        }
    }

    fn in_range(cidr: &str, ip: IpAddr) -> bool {
        let (net, len) = cidr.split_once('/').map_or((cidr, None), |(n, l)| (n, l.parse::<u32>().ok()));
        let Ok(net) = net.parse::<IpAddr>() else { return false };
        let to_bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u128::from(u32::from(v4)) << 96, 32),
                None => (u128::from(v6), 128),
            },
        };
        let ((n, width), (i, iwidth)) = (to_bits(net), to_bits(ip));
        let len = len.unwrap_or(width);
        if width != iwidth || len > width {
            return false;
        }
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        n & mask == i & mask
    }

    fn strings(v: Option<&Value>) -> Option<Vec<String>> {
        match v {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|i| i.as_str().map(str::to_string)).collect(),
            Some(_) => None,
        }
    }

    /// Field `name` and its `not` form in the JSON object `o`; `None` when either is
    /// not a list of strings.
    fn field(o: &serde_json::Map<String, Value>, name: &str, not: &str) -> Option<Field> {
        Some(Field { values: strings(o.get(name))?, not: strings(o.get(not))? })
    }

    fn only(o: &serde_json::Map<String, Value>, known: &[&str]) -> bool {
        o.keys().all(|k| known.contains(&k.as_str()))
    }

    struct Operation {
        paths: Field,
        methods: Field,
        hosts: Field,
    }

    enum Condition {
        Header(String, Field),
        SourceIp(Field),
    }

    pub struct Rule {
        to: Vec<Operation>,
        from: Vec<Field>,
        when: Vec<Condition>,
    }

    fn list(v: Option<&Value>) -> Option<Vec<&serde_json::Map<String, Value>>> {
        match v {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(Value::as_object).collect(),
            Some(_) => None,
        }
    }

    impl Rule {
        /// The rule, when the model covers every field it uses.
        pub fn read(v: &Value) -> Option<Rule> {
            let r = v.as_object()?;
            if !only(r, &["to", "from", "when"]) {
                return None;
            }
            let mut rule = Rule { to: Vec::new(), from: Vec::new(), when: Vec::new() };
            for t in list(r.get("to"))? {
                let op = t.get("operation")?.as_object()?;
                if !only(t, &["operation"])
                    || !only(op, &["paths", "notPaths", "methods", "notMethods", "hosts", "notHosts"])
                {
                    return None;
                }
                let paths = field(op, "paths", "notPaths")?;
                if paths.values.iter().chain(&paths.not).any(|p| p.contains('{')) {
                    return None;
                }
                let (methods, hosts) = (field(op, "methods", "notMethods")?, field(op, "hosts", "notHosts")?);
                rule.to.push(Operation { paths, methods, hosts });
            }
            for f in list(r.get("from"))? {
                let source = f.get("source")?.as_object()?;
                if !only(f, &["source"]) || !only(source, &["ipBlocks", "notIpBlocks"]) {
                    return None;
                }
                rule.from.push(field(source, "ipBlocks", "notIpBlocks")?);
            }
            for c in list(r.get("when"))? {
                if !only(c, &["key", "values", "notValues"]) {
                    return None;
                }
                let key = c.get("key")?.as_str()?;
                let values = field(c, "values", "notValues")?;
                if key == "source.ip" {
                    rule.when.push(Condition::SourceIp(values));
                } else {
                    let name = key.strip_prefix("request.headers[")?.strip_suffix(']')?;
                    if name.is_empty() || name.contains(['[', ']']) {
                        return None;
                    }
                    rule.when.push(Condition::Header(name.to_ascii_lowercase(), values));
                }
            }
            Some(rule)
        }

        pub fn selects(&self, r: &Request) -> bool {
            let one = |name: &str| r.values(name).first().copied();
            let path = one(":path").map(|p| &p[..p.iter().position(|&b| b == b'?').unwrap_or(p.len())]);
            let operation = |o: &Operation| {
                o.paths.holds(|v| path.is_some_and(|p| glob(v, p, false)))
                    && o.methods.holds(|v| one(":method").is_some_and(|m| v == "*" || glob(v, m, false)))
                    && o.hosts.holds(|v| one(":authority").is_some_and(|h| v == "*" || glob(v, h, true)))
            };
            let condition = |c: &Condition| match c {
                Condition::Header(name, f) => {
                    let values = r.values(name);
                    f.holds(|v| values.iter().any(|h| v == "*" || glob(v, h, false)))
                }
                Condition::SourceIp(f) => f.holds(|v| in_range(v, r.peer)),
            };
            (self.to.is_empty() || self.to.iter().any(operation))
                && (self.from.is_empty() || self.from.iter().any(|f| f.holds(|v| in_range(v, r.peer))))
                && self.when.iter().all(condition)
        }
    }
}
