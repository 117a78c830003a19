//! OIDC discovery (OpenID Connect Discovery 1.0 §4): a provider with `discovery` fetches
//! `<issuer>/.well-known/openid-configuration` through its cluster, then the `jwks_uri`
//! that document names, through the same cluster; from then on the JWKS is refreshed like
//! any `remote_jwks` (flow/jwks_fetch.rs). Pure: URL handling and the document's checks.
//!
//! The `jwks_uri` must be on the issuer's host (or the fetch's `authority`): the cluster
//! leads to one identity provider, and a document must never make the filter ask that
//! cluster for another host's keys (nor fetch from a host nobody configured). Keys on
//! another host need `remote_jwks` with that host's cluster.

use serde_json::Value;

/// The discovery document's path below the issuer (§4.1).
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// An `http(s)://` URL cut into what the checks need.
#[derive(Debug, PartialEq, Eq)]
struct Url<'u> {
    /// `host[:port]` as written.
    authority: &'u str,
    /// Lower-case host (brackets kept for IPv6).
    host: String,
    /// The explicit port, else the scheme's.
    port: u16,
    /// Path and query; `/` when empty.
    path: String,
}

fn parse_url(url: &str) -> Option<Url<'_>> {
    let (rest, default_port) = if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
        (&url[8..], 443)
    } else if url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
        (&url[7..], 80)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // No user info, fragment, spaces or control bytes: nothing a fetch could not say plainly.
    if authority.is_empty() || authority.contains('@') || tail.contains('#') {
        return None;
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], authority[i + 1..].parse().ok()?),
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return None;
    }
    let path = if tail.starts_with('/') { tail.to_owned() } else { format!("/{tail}") };
    Some(Url { authority, host: host.to_ascii_lowercase(), port, path })
}

/// The discovery document's path for `issuer`, and the `:authority` to fetch it with
/// (the issuer's host); `None` if the issuer is not an `http(s)://` URL.
pub fn endpoint(issuer: &str) -> Option<(String, String)> {
    let url = parse_url(issuer)?;
    if url.path.contains('?') {
        return None; // §2: an issuer has no query.
    }
    let base = url.path.trim_end_matches('/');
    Some((format!("{base}{WELL_KNOWN}"), url.authority.to_owned()))
}

/// The path of the `jwks_uri` in a discovery response, checked: status 200, a JSON object
/// whose `issuer` is exactly the provider's (§4.3), and a `jwks_uri` on the issuer's host
/// or on `authority` (the host the discovery fetch asked for).
pub fn jwks_path(status: Option<&[u8]>, body: &[u8], issuer: &str, authority: &str) -> Result<String, String> {
    match status {
        Some(b"200") => {}
        Some(s) => return Err(format!("status {}", String::from_utf8_lossy(s))),
        None => return Err("no response (timeout, reset or unreachable)".into()),
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let found = doc.get("issuer").and_then(Value::as_str);
    if found != Some(issuer) {
        return Err(format!("its issuer is {found:?}, not {issuer:?}"));
    }
    let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("it has no jwks_uri")?;
    let jwks = parse_url(uri).ok_or_else(|| format!("jwks_uri {uri:?} is not an http(s) URL"))?;
    let same = |other: Option<Url<'_>>| other.is_some_and(|o| o.host == jwks.host && o.port == jwks.port);
    let fetched_from = format!("https://{authority}");
    let fetched_from = parse_url(&fetched_from).filter(|_| !authority.contains('/'));
    if !same(parse_url(issuer)) && !same(fetched_from) {
        return Err(format!(
            "jwks_uri {uri:?} is not on the issuer's host (configure remote_jwks with a cluster for that host)"
        ));
    }
    Ok(jwks.path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_document_is_below_the_issuer() {
        let cases = [
            ("https://login.example.com", Some(("/.well-known/openid-configuration", "login.example.com"))),
            ("https://login.example.com/", Some(("/.well-known/openid-configuration", "login.example.com"))),
            (
                "https://Login.example.com:8443/realms/prefect/",
                Some(("/realms/prefect/.well-known/openid-configuration", "Login.example.com:8443")),
            ),
            ("http://[::1]:8080/tenant", Some(("/tenant/.well-known/openid-configuration", "[::1]:8080"))),
            ("login.example.com", None),
            ("https://", None),
            ("https://user@login.example.com", None),
            ("https://login.example.com/?tenant=a", None),
            ("https://login.example.com/a b", None),
            ("https://login.example.com:99999", None),
        ];
        for (issuer, want) in cases {
            let got = endpoint(issuer);
            assert_eq!(got.as_ref().map(|(p, a)| (p.as_str(), a.as_str())), want, "{issuer}");
        }
    }

    fn doc(issuer: &str, jwks_uri: &str) -> Vec<u8> {
        serde_json::json!({"issuer": issuer, "jwks_uri": jwks_uri, "id_token_signing_alg_values_supported": ["RS256"]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn jwks_uri_on_the_issuers_host_is_fetched_by_its_path() {
        let iss = "https://login.example.com/realms/prefect";
        let ok = |uri: &str| jwks_path(Some(b"200"), &doc(iss, uri), iss, "login.example.com");
        assert_eq!(
            ok("https://login.example.com/realms/prefect/protocol/openid-connect/certs").unwrap(),
            "/realms/prefect/protocol/openid-connect/certs"
        );
        assert_eq!(ok("https://LOGIN.example.com:443/keys?v=2").unwrap(), "/keys?v=2");
        assert_eq!(ok("https://login.example.com").unwrap(), "/");
        // The fetch's authority counts as the issuer's host (an IdP reached by an internal name).
        let internal =
            jwks_path(Some(b"200"), &doc(iss, "http://keycloak.idp.svc:8080/certs"), iss, "keycloak.idp.svc:8080");
        assert_eq!(internal.unwrap(), "/certs");
    }

    #[test]
    fn documents_that_do_not_check_out_are_refused() {
        let iss = "https://login.example.com";
        let err = |status: Option<&[u8]>, body: &[u8]| jwks_path(status, body, iss, "login.example.com").unwrap_err();
        let another_host = "jwks_uri \"https://evil.example.net/keys\" is not on the issuer's host (configure remote_jwks with a cluster for that host)";
        type Case = (Option<&'static [u8]>, Vec<u8>, String);
        let cases: Vec<Case> = vec![
            (Some(b"404"), vec![], "status 404".into()),
            (None, vec![], "no response (timeout, reset or unreachable)".into()),
            (Some(b"200"), b"<html>".to_vec(), "not JSON: expected value at line 1 column 1".into()),
            (Some(b"200"), doc("https://other.example.com", "https://login.example.com/keys"), "its issuer is Some(\"https://other.example.com\"), not \"https://login.example.com\"".into()),
            (Some(b"200"), doc("https://login.example.com/", "https://login.example.com/keys"), "its issuer is Some(\"https://login.example.com/\"), not \"https://login.example.com\"".into()),
            (Some(b"200"), br#"{"issuer": "https://login.example.com"}"#.to_vec(), "it has no jwks_uri".into()),
            (Some(b"200"), doc(iss, "https://evil.example.net/keys"), another_host.into()),
            (Some(b"200"), doc(iss, "https://login.example.com.evil.net/keys"), "jwks_uri \"https://login.example.com.evil.net/keys\" is not on the issuer's host (configure remote_jwks with a cluster for that host)".into()),
            (Some(b"200"), doc(iss, "http://login.example.com/keys"), "jwks_uri \"http://login.example.com/keys\" is not on the issuer's host (configure remote_jwks with a cluster for that host)".into()),
            (Some(b"200"), doc(iss, "https://login.example.com:8443/keys"), "jwks_uri \"https://login.example.com:8443/keys\" is not on the issuer's host (configure remote_jwks with a cluster for that host)".into()),
            (Some(b"200"), doc(iss, "https://a@login.example.com/keys"), "jwks_uri \"https://a@login.example.com/keys\" is not an http(s) URL".into()),
            (Some(b"200"), doc(iss, "/keys"), "jwks_uri \"/keys\" is not an http(s) URL".into()),
            (Some(b"200"), doc(iss, "https://login.example.com/ke ys"), "jwks_uri \"https://login.example.com/ke ys\" is not an http(s) URL".into()),
        ];
        for (status, body, want) in cases {
            assert_eq!(err(status, &body), want, "{}", String::from_utf8_lossy(&body));
        }
    }
}
