//! A real `changegate serve` process on loopback, driven over HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A token identity for the test config: (name, role, token). The role may
/// carry extra keys for the token after `;`.
pub type TestToken = (String, &'static str, String);

/// Secrets every test server finds in its environment. They are set on
/// the child process, never with `set_var` in the multi-threaded test binary.
pub const WEBHOOK_SECRET: &str = "fleet-monitor-shared-secret";
/// The PagerDuty routing key test servers get.
pub const PAGERDUTY_KEY: &str = "routing-key-0123";
/// The GitHub webhook secret test servers get (GitHub's documentation example).
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Where the config and log live.
    pub dir: tempfile::TempDir,
    config: PathBuf,
    /// The working directory `serve` runs in.
    cwd: PathBuf,
    /// Whether to pass `--config`; without it `serve` finds its own.
    explicit_config: bool,
    /// A fixed listen address for restarts, instead of a free port.
    listen: Option<String>,
    /// Extra environment for the process (e.g. `SSL_CERT_FILE`).
    env: Vec<(String, String)>,
}

/// Writes a config with these tokens and starts a server on a free port.
pub fn start(repo: &std::path::Path, database_url: &str, tokens: &[TestToken]) -> Server {
    start_with(repo, database_url, tokens, "", "")
}

/// Like [`start`], with extra `[server]` keys and extra config sections.
pub fn start_with(
    repo: &std::path::Path,
    database_url: &str,
    tokens: &[TestToken],
    server_keys: &str,
    sections: &str,
) -> Server {
    let mut server = configure(
        &repo.display().to_string(),
        repo,
        database_url,
        tokens,
        server_keys,
        sections,
    );
    server.restart();
    server
}

/// A server whose `repo.url` is `url` (e.g. an HTTPS remote), started with
/// `env` added and, unless `wait_ready`, not waited on past `listening`.
pub fn start_remote(
    url: &str,
    database_url: &str,
    tokens: &[TestToken],
    sections: &str,
    env: &[(&str, String)],
    wait_ready: bool,
) -> Server {
    let cwd = std::env::temp_dir();
    let mut server = configure(url, &cwd, database_url, tokens, "", sections);
    server.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    server.spawn();
    if wait_ready {
        server.wait_ready();
    }
    server
}

/// Writes the config file of a server that is not started yet.
fn configure(
    repo_url: &str,
    cwd: &std::path::Path,
    database_url: &str,
    tokens: &[TestToken],
    server_keys: &str,
    sections: &str,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("changegate.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\ndatabase_url = {database_url:?}\n{server_keys}\n{sections}\n",
        dir.path()
    )
    .unwrap();
    writeln!(f, "[repo]\nurl = {repo_url:?}\ndefault_branch = \"main\"\n").unwrap();
    for (name, role, token) in tokens {
        // A role may carry extra keys for its token after `;`, e.g. `operator;emails = ["c@x"]`.
        let (role, extra) = role.split_once(';').unwrap_or((role, ""));
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        writeln!(
            f,
            "[[tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {hash:?}\n{extra}\n"
        )
        .unwrap();
    }
    drop(f);
    Server {
        child: None,
        url: String::new(),
        dir,
        config,
        cwd: cwd.to_path_buf(),
        explicit_config: true,
        listen: None,
        env: Vec::new(),
    }
}

/// Starts `changegate serve` in `cwd` as a new user would: no `--config`,
/// so it reads `./changegate.toml` and defaults; only the port is free-picked.
pub fn start_as_new_user(cwd: &std::path::Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = cwd.join("changegate.toml");
    let mut server = Server {
        child: None,
        url: String::new(),
        dir,
        config,
        cwd: cwd.to_path_buf(),
        explicit_config: false,
        listen: None,
        env: Vec::new(),
    };
    server.restart();
    server
}

impl Server {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// The exit status, if the server process has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// The running server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The server's peak resident set so far (`VmHWM`), in KiB. Not
    /// monotonic: the kernel reads it as the larger of a recorded peak and
    /// an approximate current RSS, and pages handed back with
    /// `madvise` (as `malloc_trim` does) leave the recorded peak behind, so
    /// a later reading can be lower. Compare with `saturating_sub`.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts (again) with the same config and database; waits for `/readyz`.
    /// A process still running is killed first: two would share the
    /// database and keep talking to the fakes of later tests.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the process and waits until it listens (not until ready).
    pub fn spawn(&mut self) {
        self.kill9();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let start_len = std::fs::metadata(self.log_path())
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_changegate"));
        cmd.args(["serve", "--log-format", "json"])
            .current_dir(&self.cwd);
        if self.explicit_config {
            cmd.arg("--config").arg(&self.config);
        } else {
            cmd.env("CHANGEGATE_LISTEN", "127.0.0.1:0");
        }
        if let Some(listen) = &self.listen {
            cmd.env("CHANGEGATE_LISTEN", listen);
        }
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("CG_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("CG_TEST_PD_KEY", PAGERDUTY_KEY)
            .env("CG_TEST_GH_SECRET", GITHUB_SECRET)
            .env("CG_TEST_GH_TOKEN", super::github::API_TOKEN)
            .env_remove("CHANGEGATE_DATABASE_URL")
            .env_remove("CHANGEGATE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let fresh = &log[start_len.min(log.len())..];
            if let Some(addr) = fresh
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| {
                    (v["message"] == "listening")
                        .then(|| v["addr"].as_str().map(str::to_string))
                        .flatten()
                })
            {
                self.url = format!("http://{addr}");
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::blocking::Client::new();
        while client
            .get(format!("{}/readyz", self.url))
            .send()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "serve never became ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts on `port`, the port it had, so clients holding the URL
    /// (a running `exec`) reach it again.
    pub fn restart_on(&mut self, port: &str) {
        self.listen = Some(format!("127.0.0.1:{port}"));
        self.restart();
    }

    /// `changegate audit verify` against this server's database.
    pub fn audit_verify(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["audit", "verify", "--config"])
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    /// The path to the config file, for CLI commands against the same database.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The sum of the samples of metric `name` (with label `reason` equal
    /// to `reason`, when given) on `/metrics`.
    pub fn metric(&self, name: &str, reason: Option<&str>) -> f64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.url))
            .unwrap()
            .text()
            .unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| reason.is_none_or(|r| s.labels.get("reason") == Some(r)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// The `/metrics` page, as text.
    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.url))
            .unwrap()
            .text()
            .unwrap()
    }

    /// GET with an optional bearer token: (status, JSON body or Null).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::blocking::Client::new().get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// POST JSON with a bearer token: (status, JSON body or Null).
    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        post(&self.url, path, token, body)
    }
}

/// POST JSON to `base` with a bearer token; usable from many threads.
pub fn post(base: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
