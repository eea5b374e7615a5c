//! Real receivers on loopback: Prometheus Alertmanager, and a recording
//! HTTP endpoint standing in for a webhook or PagerDuty receiver.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `prometheus-alertmanager`, or `alertmanager` on PATH.
fn alertmanager_binary() -> PathBuf {
    for candidate in [
        "/usr/bin/prometheus-alertmanager",
        "/usr/local/bin/alertmanager",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("Prometheus Alertmanager is not installed: `apt-get install prometheus-alertmanager` (.ci/run does)");
}

/// A real Alertmanager on a loopback port.
pub struct Alertmanager {
    child: Option<Child>,
    /// Its base URL.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager and waits until it is ready.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("am.yml"),
            "route:\n  receiver: fleet-monitor\nreceivers:\n  - name: fleet-monitor\n",
        )
        .unwrap();
        let port = free_port();
        let mut am = Alertmanager {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
        };
        am.restart();
        am
    }

    /// (Re)starts the process: Alertmanager keeps no alerts across restarts.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("am.log")).unwrap();
        let child = Command::new(alertmanager_binary())
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(format!("{}/-/ready", self.url))
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "alertmanager did not start: {}",
                std::fs::read_to_string(self.dir.path().join("am.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Active alerts, from `GET /api/v2/alerts`.
    pub fn alerts(&self) -> Vec<Value> {
        reqwest::blocking::get(format!("{}/api/v2/alerts", self.url))
            .unwrap()
            .json::<Vec<Value>>()
            .unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `X-Changegate-Signature-256` header, if any.
    pub signature: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A recording HTTP receiver on a fixed loopback port; may start late.
pub struct Recorder {
    /// Everything received.
    pub received: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Recorder {
    /// Starts recording POSTs to any path on `port`.
    pub fn start(port: u16) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sink = received.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let signature = headers
                        .get("x-changegate-signature-256")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    sink.lock().unwrap().push(Received {
                        signature,
                        body: body.to_vec(),
                    });
                    "ok"
                }
            },
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Recorder {
            received,
            _runtime: runtime,
        }
    }

    /// A copy of what was received so far.
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Waits up to `secs` for `cond`.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
