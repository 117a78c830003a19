//! mTLS for the access tests: a CA made per run with the openssl CLI (Debian's
//! `openssl`), a server certificate for 127.0.0.1, client certificates with chosen URI
//! SANs, and two HTTPS clients that present one or none: the venv's Python `ssl`
//! ([`TestCa::get`]), and rustls for raw HTTP/1.1 requests ([`TestCa::raw_client`]).

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::client::Response;
use crate::envoy::Tools;
use crate::TempDir;

/// A CA, with `server.pem`/`server.key`/`ca.pem` in [`TestCa::dir`] (what
/// `EnvBuilder::downstream_mtls` serves) and client certificates beside them.
pub struct TestCa {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}): install Debian's openssl (`make test` does: apt-get install openssl)")
    });
    assert!(out.status.success(), "openssl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// A new CA (P-256 keys, valid one day) and a server certificate for 127.0.0.1/localhost.
    pub fn new() -> TestCa {
        let dir = TempDir::new("nebula-authz-ca");
        let d = dir.path();
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
        #[rustfmt::skip]
        openssl(d, &["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=nebula-authz test CA", "-days", "1",
                     "-out", "ca.pem"]);
        let ca = TestCa { dir };
        ca.issue("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth");
        ca
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client certificate `name.pem`/`name.key` whose only URI SAN is `uri`.
    pub fn client(&self, name: &str, uri: &str) {
        self.issue(name, &format!("/CN={name}"), &format!("subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth"));
    }

    fn issue(&self, name: &str, subject: &str, extensions: &str) {
        let d = self.dir.path();
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(d.join(&ext), format!("{extensions}\n")).expect("write extensions");
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        openssl(d, &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
        #[rustfmt::skip]
        openssl(d, &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                     "-days", "1", "-extfile", &ext, "-out", &pem]);
    }

    /// `GET path` over TLS to 127.0.0.1:`port` with `headers`, presenting the client
    /// certificate `client` (see [`TestCa::client`]) or none. `Err` when the TLS
    /// handshake or the exchange fails (e.g. a required certificate is missing).
    pub fn get(
        &self,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        client: Option<&str>,
    ) -> Result<Response, String> {
        let tools = Tools::locate(false);
        let d = self.dir.path();
        let (cert, key) = match client {
            Some(name) => (
                d.join(format!("{name}.pem")).display().to_string(),
                d.join(format!("{name}.key")).display().to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let headers = serde_json::to_string(&headers).expect("headers as JSON");
        let out = Command::new(&tools.python)
            .args(["-c", HTTPS_CLIENT, &d.join("ca.pem").display().to_string(), &cert, &key])
            .args([&port.to_string(), path, &headers])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", tools.python.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("bad client output: {e}"))?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Ok(Response {
            status: json["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
            headers: json["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (text(&h[0]).to_ascii_lowercase(), text(&h[1]).into_bytes()))
                .collect(),
            body: text(&json["body"]).into_bytes(),
            elapsed: Duration::ZERO,
            first_byte: Duration::ZERO,
        })
    }
}

/// A TLS client for raw HTTP/1.1 requests (any request target, byte for byte) that
/// trusts a [`TestCa`] and presents one of its client certificates, or none.
pub struct RawTlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TestCa {
    /// A [`RawTlsClient`] presenting the client certificate `client` (see
    /// [`TestCa::client`]), or none.
    pub fn raw_client(&self, client: Option<&str>) -> RawTlsClient {
        let d = self.dir.path();
        let read = |name: &str| std::fs::read(d.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&read("ca.pem")).expect("CA PEM")).expect("add the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&format!("{name}.pem")))
                    .collect::<Result<_, _>>()
                    .expect("client certificate PEM");
                let key = PrivateKeyDer::from_pem_slice(&read(&format!("{name}.key"))).expect("client key PEM");
                builder.with_client_auth_cert(certs, key).expect("client certificate and key")
            }
        };
        RawTlsClient { config: Arc::new(config) }
    }
}

impl RawTlsClient {
    /// Sends `request` as is over a new TLS connection from the local address `source`
    /// to 127.0.0.1:`port`, and reads the response ([`crate::client::send_raw`]).
    pub fn send_from(&self, source: IpAddr, port: u16, request: &[u8]) -> io::Result<Response> {
        let start = Instant::now();
        let tcp = crate::client::connect(Some(source), port)?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let tls = rustls::ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        crate::client::exchange(rustls::StreamOwned::new(tls, tcp), &[request], Duration::ZERO, start)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// argv: ca.pem, client cert (or ""), client key (or ""), port, path, headers as JSON pairs.
const HTTPS_CLIENT: &str = r#"
import http.client, json, ssl, sys
ca, cert, key, port, path, headers = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=15)
conn.request("GET", path, headers=dict(json.loads(headers)))
resp = conn.getresponse()
body = resp.read().decode("utf-8", "replace")
print(json.dumps({"status": resp.status, "headers": resp.getheaders(), "body": body}))
"#;
