//! A real git server over TLS on loopback: `git http-backend` (git's own
//! smart HTTP CGI) behind a rustls listener whose certificate a throwaway CA
//! signed, asking for basic auth `x-access-token:<token>` the way GitHub
//! does (401 with `WWW-Authenticate: Basic` first). Under `/moved/` it
//! redirects to the same repository at `127.0.0.1` (another origin); under
//! `/sneaky/`, to a URL whose percent-encoded user makes it read as
//! `localhost` once decoded.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// Decides whether a presented token may fetch.
pub type Check = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET /test/repo.git/info/refs?service=git-upload-pack`.
    pub request: String,
    /// The token presented with `x-access-token`, if any.
    pub token: Option<String>,
    /// The answer's status.
    pub status: u16,
}

/// The running server.
pub struct GitHttps {
    /// The remote's URL, for `repo.url`.
    pub url: String,
    /// The throwaway CA's certificate (PEM), for `SSL_CERT_FILE`.
    pub ca: PathBuf,
    /// Every request, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _certs: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=changegate test CA",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

impl GitHttps {
    /// Serves the repository at `repo` (a work tree) as
    /// `https://localhost:PORT/test/repo.git`, letting through tokens
    /// `check` accepts.
    pub fn start(repo: &Path, check: Check) -> GitHttps {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = tempfile::tempdir().unwrap();
        make_certs(certs.path());
        let chain = vec![CertificateDer::from_pem_file(certs.path().join("server.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(certs.path().join("server.key")).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let root = repo.parent().unwrap().to_path_buf();
        let name = repo.file_name().unwrap().to_string_lossy().to_string();
        let (seen2, check2) = (seen.clone(), check.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen, check) = (acceptor.clone(), seen2.clone(), check2.clone());
                let (root, name) = (root.clone(), name.clone());
                tokio::spawn(async move {
                    // A client that rejects the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (seen, check) = (seen.clone(), check.clone());
                        let (root, name) = (root.clone(), name.clone());
                        async move { answer(req, peer, port, &root, &name, &check, &seen).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        GitHttps {
            url: format!("https://localhost:{port}/test/repo.git"),
            ca: certs.path().join("ca.pem"),
            seen,
            _certs: certs,
            _runtime: runtime,
        }
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The token in `Authorization: Basic base64(x-access-token:<token>)`.
fn presented(req: &hyper::Request<hyper::body::Incoming>) -> Option<String> {
    use base64::Engine;
    let basic = req
        .headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    pair.strip_prefix("x-access-token:").map(str::to_string)
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    port: u16,
    root: &Path,
    name: &str,
    check: &Check,
    seen: &Mutex<Vec<Seen>>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let request = format!("{} {}", req.method(), req.uri());
    let token = presented(&req);
    let record = |status: u16| {
        seen.lock().unwrap().push(Seen {
            request: request.clone(),
            token: token.clone(),
            status,
        })
    };
    let path = req.uri().path_and_query().map_or("", |p| p.as_str());
    let moved = match (path.strip_prefix("/moved/"), path.strip_prefix("/sneaky/")) {
        (Some(rest), _) => Some(format!("https://127.0.0.1:{port}/test/{rest}")),
        (_, Some(rest)) => Some(format!(
            "https://localhost:{port}%2F@127.0.0.1:{port}/test/{rest}"
        )),
        _ => None,
    };
    if let Some(location) = moved {
        record(301);
        return Ok(hyper::Response::builder()
            .status(301)
            .header("location", location)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    if !token.as_deref().is_some_and(|t| check(t)) {
        record(401);
        return Ok(hyper::Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"GitHub\"")
            .body(Full::new(Bytes::from_static(
                b"Invalid username or token.\n",
            )))
            .unwrap());
    }
    let Some(rest) = req.uri().path().strip_prefix("/test/repo.git") else {
        record(404);
        return Ok(hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap());
    };
    let path_info = format!("/{name}{rest}");
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |h: &str| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", &path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", peer.ip().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = cgi.spawn().expect("git http-backend");
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    // CGI output: headers, a blank line, the body.
    let out = output.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&out[..split.0]).to_string();
    let mut response = hyper::Response::builder();
    let mut status = 200;
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("status") {
            status = v.trim()[..3].parse().unwrap();
        } else {
            response = response.header(k.trim(), v.trim());
        }
    }
    record(status);
    Ok(response
        .status(status)
        .body(Full::new(Bytes::copy_from_slice(&out[split.0 + split.1..])))
        .unwrap())
}
