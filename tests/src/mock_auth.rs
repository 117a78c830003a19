//! The mock auth service: a raw tokio TCP server (not hyper, so it can send malformed
//! responses), HTTP/1.1 with keep-alive, that records every request and answers as the
//! `authorization` header it receives scripts it.
//!
//! Scripts (`authorization: Bearer <script>`):
//!
//! | script              | answer |
//! |---------------------|--------|
//! | `allow:<actor>`     | 200, the four `x-nebula-*` headers for `<actor>`, `x-other: leak`, body `ok` |
//! | `deny` (or anything unknown, or no header) | 401, `www-authenticate`, `content-type: application/json`, `x-internal: secret`, body `{"detail":"unauthorized"}` |
//! | `redirect`          | 302, `location`, two `set-cookie`, empty body |
//! | `redirect-relative` | 302, `location: /login?rd=%2Fapi`, empty body |
//! | `status:<n>`        | status n, body `status <n>` (no body for 1xx/204/304; a 1xx is sent alone) |
//! | `slow:<ms>`         | sleeps, then as `allow:slow` |
//! | `slow:<ms>:<script>`| sleeps, then as `<script>` (e.g. `slow:500:deny`, `slow:20:allow:actor-7`) |
//! | `close`             | closes the connection without answering |
//! | `garbage`           | writes `NOT HTTP AT ALL\r\n\r\n` and closes |
//! | `latin1`            | 200 with `x-nebula-actor-id: caf\xE9` (a raw non-UTF-8 byte) |
//! | `bigbody`           | 401 with a 2 MiB body |
//! | `bigallow`          | as `allow:big`, but with a 2 MiB body |
//! | `cc:<value>:<script>` | as `<script>`, plus `cache-control: <value>` (e.g. `cc:max-age=2:allow:a`, `cc:no-store:deny`) |
//! | `once:<script>`     | as `<script>` the first time this exact token arrives, `status:503` after that |
//! | `seq:<s1>\|<s2>\|…`  | the n-th arrival of this exact token answers as step n (the last step repeats), e.g. `seq:allow:a\|cc:no-store:deny\|status:500` |
//! | `h:<name>=<value>:<script>` | as `<script>`, plus the header `<name>: <value>` (e.g. `h:x-envoy-auth-headers-to-remove=x-a:allow:a`) |

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::client::{self, Header};
use crate::mock_server::{Fault, MockServer, Records};

/// The actor-id value the `latin1` script sends.
pub const LATIN1_ACTOR: &[u8] = b"caf\xe9";
/// Size of the `bigbody` response body.
pub const BIG_BODY_LEN: usize = 2 * 1024 * 1024;
pub const DENY_BODY: &str = r#"{"detail":"unauthorized"}"#;
pub const WWW_AUTHENTICATE: &str = r#"Bearer realm="prefect""#;
pub const REDIRECT_LOCATION: &str = "https://login.example.com/?next=%2Fapi";

/// One request the auth service received.
pub type AuthRequest = crate::client::RecordedRequest;

/// The mock auth service: scripted by the `authorization` header it receives.
pub type MockAuth = MockServer;

/// Starts the mock auth service on `rt`.
pub fn start(rt: &Runtime) -> MockAuth {
    MockServer::start(rt, "the auth service", |stream, recorded| async move {
        let _ = serve(stream, recorded).await;
    })
}

async fn serve(mut stream: TcpStream, recorded: Records) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Read one request head.
        let (req, head_len, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<Header> =
                        parsed.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
                    let content_length = client::values(&headers, "content-length")
                        .first()
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    let req = AuthRequest {
                        method: parsed.method.unwrap_or("").to_owned(),
                        path: parsed.path.unwrap_or("").to_owned(),
                        headers,
                        body: Vec::new(),
                        trailers: Vec::new(),
                    };
                    break (req, n, content_length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Ok(()),
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // A chunked body (Traefik's Go client sends a `forwardBody` GET so), else content-length.
        let chunked = req.header_all("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
        let (body, used) = loop {
            if chunked {
                match dechunk(&buf[head_len..]) {
                    Ok(Some(done)) => break done,
                    Ok(None) => {}
                    Err(()) => return Ok(()),
                }
            } else if buf.len() >= head_len + content_length {
                break (buf[head_len..head_len + content_length].to_vec(), content_length);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut req = req;
        req.body = body;
        buf.drain(..head_len + used);

        let script =
            req.header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)).unwrap_or_default();
        let close = req.header_all("connection").iter().any(|v| v.eq_ignore_ascii_case("close"));
        // Only `once:` and `seq:` need the history (the memory test sends 100 000 tokens).
        let seen_before = if script.contains("once:") || script.contains("seq:") {
            recorded.count_matching(|r| r.header("authorization") == req.header("authorization"))
        } else {
            0
        };
        // The presets' services (Authentik, oauth2-proxy) answer on their own paths.
        let outpost = crate::outposts::respond(&req);
        let fault = recorded.fault();
        if fault == Fault::None {
            // The observer sees what the script answers, never a faulted request.
            recorded.push(req);
        }

        let reply = match fault {
            Fault::None => None,
            // A connection accepted just as the listener closes: not answered either.
            Fault::Refuse => Some(Reply::Close),
            Fault::Status500 => Some(Reply::Bytes(response(500, &[("content-type", b"text/plain")], b"fault"))),
            Fault::Garbage => Some(Reply::BytesThenClose(b"NOT HTTP AT ALL\r\n\r\n".to_vec())),
            Fault::Hang => {
                recorded.fault_ends(Fault::Hang).await;
                Some(Reply::Close)
            }
        };
        let reply = match (reply, outpost) {
            (Some(reply), _) => reply,
            (None, Some((status, headers, body))) => {
                let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
                Reply::Bytes(response(status, &headers, &body))
            }
            (None, None) => respond(&script, seen_before).await,
        };
        match reply {
            Reply::Bytes(bytes) if close => {
                stream.write_all(&bytes).await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Reply::Bytes(bytes) => stream.write_all(&bytes).await?,
            Reply::Close => return Ok(()),
            Reply::BytesThenClose(bytes) => {
                stream.write_all(&bytes).await?;
                stream.shutdown().await?;
                return Ok(());
            }
        }
    }
}

enum Reply {
    Bytes(Vec<u8>),
    Close,
    BytesThenClose(Vec<u8>),
}

/// A whole chunked body at the start of `buf` (no trailers): (body, bytes used), `None`
/// while incomplete, `Err` when malformed.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let (mut pos, mut body) = (0, Vec::new());
    loop {
        let (n, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        pos += n;
        let size = usize::try_from(size).map_err(|_| ())?;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(());
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
        if size == 0 {
            return Ok(Some((body, pos)));
        }
    }
}

fn response(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodyless {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        out.extend_from_slice(body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn allow(actor: &[u8]) -> Vec<u8> {
    allow_with_body(actor, b"ok")
}

fn allow_with_body(actor: &[u8], body: &[u8]) -> Vec<u8> {
    let actor_text = String::from_utf8_lossy(actor);
    let rl = format!("rl-{actor_text}");
    let ll = format!("ll-{actor_text}");
    response(
        200,
        &[
            ("x-nebula-actor-id", actor),
            ("x-nebula-actor-permissions", b"read,write"),
            ("x-nebula-ratelimit-config", rl.as_bytes()),
            ("x-nebula-log-limit-config", ll.as_bytes()),
            ("x-other", b"leak"),
            ("content-type", b"text/plain"),
        ],
        body,
    )
}

fn deny() -> Vec<u8> {
    response(
        401,
        &[
            ("www-authenticate", WWW_AUTHENTICATE.as_bytes()),
            ("content-type", b"application/json"),
            ("x-internal", b"secret"),
        ],
        DENY_BODY.as_bytes(),
    )
}

/// `respond_to` plus the headers `cc:` and `h:` prefixes ask for; `seen_before` is how
/// many times this exact token arrived before (for `once:` and `seq:`).
async fn respond(script: &str, seen_before: usize) -> Reply {
    let mut script = script.to_owned();
    let mut extra = Vec::new();
    loop {
        if let Some((value, then)) = script.strip_prefix("cc:").and_then(|rest| rest.split_once(':')) {
            extra.push(format!("cache-control: {value}"));
            script = then.to_owned();
        } else if let Some((header, then)) = script.strip_prefix("h:").and_then(|rest| rest.split_once(':')) {
            let (name, value) = header.split_once('=').unwrap_or((header, ""));
            extra.push(format!("{name}: {value}"));
            script = then.to_owned();
        } else if let Some(then) = script.strip_prefix("once:") {
            script = if seen_before > 0 { "status:503".to_owned() } else { then.to_owned() };
        } else if let Some(steps) = script.strip_prefix("seq:") {
            let steps: Vec<&str> = steps.split('|').collect();
            script = steps[seen_before.min(steps.len() - 1)].to_owned();
        } else {
            break;
        }
    }
    match respond_to(&script).await {
        Reply::Bytes(bytes) if !extra.is_empty() => {
            // Right after the status line.
            let at = bytes.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
            let mut out = bytes[..at].to_vec();
            for header in extra {
                out.extend_from_slice(format!("{header}\r\n").as_bytes());
            }
            out.extend_from_slice(&bytes[at..]);
            Reply::Bytes(out)
        }
        reply => reply,
    }
}

async fn respond_to(script: &str) -> Reply {
    let mut script = script.to_owned();
    // `slow:<ms>[:<script>]`, possibly nested.
    while let Some(rest) = script.strip_prefix("slow:") {
        let (ms, then) = rest.split_once(':').unwrap_or((rest, "allow:slow"));
        let ms: u64 = ms.parse().unwrap_or(0);
        let then = then.to_owned();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        script = then;
    }
    if let Some(actor) = script.strip_prefix("allow:") {
        return Reply::Bytes(allow(actor.as_bytes()));
    }
    if let Some(n) = script.strip_prefix("status:") {
        let status: u16 = n.parse().unwrap_or(500);
        if (100..200).contains(&status) {
            // An interim response alone; the final one never comes.
            return Reply::Bytes(response(status, &[], b""));
        }
        let body = format!("status {status}");
        return Reply::Bytes(response(status, &[("content-type", b"text/plain")], body.as_bytes()));
    }
    match script.as_str() {
        "redirect" => Reply::Bytes(response(
            302,
            &[
                ("location", REDIRECT_LOCATION.as_bytes()),
                ("set-cookie", b"a=1; Path=/"),
                ("set-cookie", b"b=2; Path=/"),
            ],
            b"",
        )),
        "redirect-relative" => Reply::Bytes(response(302, &[("location", b"/login?rd=%2Fapi")], b"")),
        "close" => Reply::Close,
        "garbage" => Reply::BytesThenClose(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        "latin1" => Reply::Bytes(allow(LATIN1_ACTOR)),
        "bigallow" => Reply::Bytes(allow_with_body(b"big", &vec![b'x'; BIG_BODY_LEN])),
        "bigbody" => Reply::Bytes(response(401, &[("content-type", b"text/plain")], &vec![b'x'; BIG_BODY_LEN])),
        _ => Reply::Bytes(deny()),
    }
}
