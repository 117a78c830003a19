//! Mocks of the forward-auth services the presets target, chosen by the callout path
//! (the Prefect mock in [`crate::mock_auth`] answers everything else). Each speaks the
//! part of its service's protocol a proxy sees:
//!
//! * **Authentik outpost**, `GET /outpost.goauthentik.io/auth/traefik`: needs
//!   `X-Forwarded-Host` (else 400 "no app for hostname", as the outpost does); a session
//!   cookie `authentik_proxy_test=<user>` → 200 with the `X-authentik-*` headers; no
//!   session → 302 to the authorize URL built from `X-Forwarded-Proto/Host/Uri`, with a
//!   state cookie and an HTML body.
//! * **oauth2-proxy**, `GET /oauth2/auth`: cookie `_oauth2_proxy=<user>` → 202 with
//!   `X-Auth-Request-User/Email/Preferred-Username` (a user starting `refresh-` also gets
//!   a refreshed `Set-Cookie: _oauth2_proxy=…`); no cookie → 401 with an empty body.

use crate::client::RecordedRequest;

pub const AUTHENTIK_PATH: &str = "/outpost.goauthentik.io/auth/traefik";
pub const AUTHENTIK_COOKIE: &str = "authentik_proxy_test";
pub const AUTHENTIK_AUTHORIZE: &str = "https://auth.example.com/application/o/authorize/?client_id=test&redirect_uri=";
pub const OAUTH2_PROXY_PATH: &str = "/oauth2/auth";
pub const OAUTH2_PROXY_COOKIE: &str = "_oauth2_proxy";

/// An answer: status, headers, body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// The answer if `req` is for one of the outposts.
pub fn respond(req: &RecordedRequest) -> Option<Answer> {
    let path = req.path.split('?').next().unwrap_or("");
    match path {
        AUTHENTIK_PATH => Some(authentik(req)),
        OAUTH2_PROXY_PATH => Some(oauth2_proxy(req)),
        _ => None,
    }
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie(req: &RecordedRequest, name: &str) -> Option<String> {
    req.header_all("cookie").iter().flat_map(|line| line.split(';')).find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        (n.trim() == name).then(|| v.trim().to_owned())
    })
}

fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

fn authentik(req: &RecordedRequest) -> Answer {
    let Some(host) = req.header("x-forwarded-host") else {
        return (400, vec![h("content-type", "text/plain")], b"no app for hostname".to_vec());
    };
    if let Some(user) = cookie(req, AUTHENTIK_COOKIE).filter(|u| u != "pending") {
        let headers = vec![
            h("X-authentik-username", user.clone()),
            h("X-authentik-groups", "admins|users"),
            h("X-authentik-email", format!("{user}@example.com")),
            h("X-authentik-name", format!("User {user}")),
            h("X-authentik-uid", format!("uid-{user}")),
            h("X-authentik-jwt", "eyJhbGciOiJub25lIn0.e30."),
            h("X-authentik-meta-outpost", "test-outpost"),
            h("X-authentik-meta-provider", "test-provider"),
            h("X-authentik-meta-app", "test-app"),
            h("X-authentik-meta-version", "goauthentik.io/outpost/2024.12.1"),
            h("content-type", "text/plain"),
        ];
        return (200, headers, Vec::new());
    }
    let proto = req.header("x-forwarded-proto").unwrap_or_else(|| "http".into());
    let uri = req.header("x-forwarded-uri").unwrap_or_else(|| "/".into());
    let location = format!(
        "{AUTHENTIK_AUTHORIZE}{proto}://{host}/outpost.goauthentik.io/callback&state={}",
        uri.replace('%', "%25").replace('&', "%26").replace('?', "%3F")
    );
    let headers = vec![
        h("content-type", "text/html; charset=utf-8"),
        h("location", location.clone()),
        h("set-cookie", format!("{AUTHENTIK_COOKIE}=pending; Path=/; HttpOnly; SameSite=Lax")),
        h("vary", "Accept-Encoding"),
    ];
    (302, headers, format!("<a href=\"{location}\">Found</a>.\n").into_bytes())
}

fn oauth2_proxy(req: &RecordedRequest) -> Answer {
    let Some(user) = cookie(req, OAUTH2_PROXY_COOKIE) else {
        return (401, vec![h("content-type", "text/plain; charset=utf-8")], Vec::new());
    };
    let mut headers = vec![
        h("X-Auth-Request-User", user.clone()),
        h("X-Auth-Request-Email", format!("{user}@example.com")),
        h("X-Auth-Request-Preferred-Username", user.clone()),
    ];
    if user.starts_with("refresh-") {
        headers.push(h("set-cookie", format!("{OAUTH2_PROXY_COOKIE}={user}-refreshed; Path=/; HttpOnly; Secure")));
    }
    (202, headers, Vec::new())
}
