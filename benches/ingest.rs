//! Webhook ingest: signed ~30 KB `pull_request_review` deliveries from 64
//! concurrent clients on loopback, each stored durably (inbox row + audit
//! event, committed) before its 2xx. In one run:
//!
//! - what each stage of the durable path costs one delivery, on one core:
//!   the signature, reading where it comes from, and each inbox
//!   compression (`lz4`, `deflate`, `none`);
//! - the load from 64 in-process clients against a no-op axum handler (the
//!   baseline), then against changegate with each compression;
//! - single-row durable SQLite transactions (30 KB blob, WAL,
//!   `synchronous=FULL`) on the same disk, one after another;
//! - when `wrk` is installed, the same against `wrk -t2 -c64` running
//!   `benches/webhook.lua` (a fresh `X-GitHub-Delivery` per request),
//!   in-process and against `serve` as a process of its own, checking
//!   afterwards that every 202 left a row.
//!
//! Every server is stopped after its round.
//!
//! Set `CHANGEGATE_BENCH_POSTGRES_URL` to also measure Postgres, and
//! `CHANGEGATE_BENCH_DELIVERIES` to change the count (default 20,000).
//! See README.md, "Webhook ingest".

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use changegate::store::InboxCompression;
use hmac::{Hmac, Mac};

const CLIENTS: usize = 64;
const SECRET: &str = "bench-webhook-secret";

struct Load {
    bodies: Vec<(String, Vec<u8>, String)>,
}

fn deliveries(n: usize) -> Load {
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/github-webhooks/pull_request_review.submitted.json"),
    )
    .expect("the shared fixtures beside the repository");
    let template: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
    let bodies = (0..n)
        .map(|i| {
            let mut v = template.clone();
            v["review"]["id"] = serde_json::json!(1_000_000 + i);
            v["review"]["state"] = serde_json::json!("approved");
            let body = serde_json::to_vec_pretty(&v).unwrap();
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(&body);
            let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            (format!("bench-{i}"), body, sig)
        })
        .collect();
    Load { bodies }
}

struct Outcome {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends every delivery from `CLIENTS` concurrent clients; every answer must be 2xx.
fn drive(url: &str, load: &Load) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(load.bodies.len())));
    let bodies = Arc::new(load.bodies.clone());
    let started = Instant::now();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (client, next, latencies, bodies) = (
                client.clone(),
                next.clone(),
                latencies.clone(),
                bodies.clone(),
            );
            let url = format!("{url}/webhooks/github");
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, body, sig)) = bodies.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    let status = client
                        .post(&url)
                        .header("X-GitHub-Event", "pull_request_review")
                        .header("X-GitHub-Delivery", id)
                        .header("X-Hub-Signature-256", sig)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert!(status.is_success(), "delivery {id}: {status}");
                    mine.push(t.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pick = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize];
    Outcome {
        per_sec: l.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

/// A no-op axum handler that reads the body and answers 202.
fn noop_server(rt: &tokio::runtime::Runtime) -> support::Served {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/webhooks/github",
        axum::routing::post(|_body: axum::body::Bytes| async { axum::http::StatusCode::ACCEPTED }),
    );
    support::Served::spawn(rt, url, |shutdown| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap()
    })
}

/// The configuration of a changegate that stores deliveries (the inbox
/// worker off, so only ingest is measured), with `change_sets` on `main`.
fn changegate_config(
    data: &std::path::Path,
    database_url: &str,
    compression: &str,
    change_sets: usize,
) -> String {
    let repo = data.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    support::generate(&repo, change_sets);
    format!(
        "[server]\ndata_dir = {:?}\ndatabase_url = {database_url:?}\ninbox_compression = {compression:?}\n[repo]\nurl = {:?}\n[github]\napi_url = \"http://127.0.0.1:9\"\nrepository = \"acme/infra\"\nwebhook_secret_env = \"CHANGEGATE_BENCH_SECRET\"\nworker = false\n",
        data, repo
    )
}

/// `changegate serve` in-process, storing deliveries.
fn changegate_server(
    rt: &tokio::runtime::Runtime,
    data: &std::path::Path,
    database_url: &str,
    compression: &str,
) -> support::Served {
    support::serve(rt, &changegate_config(data, database_url, compression, 1))
}

/// `changegate serve` as a process of its own (the release binary, run as
/// an operator runs it); killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    url: String,
}

impl ServeProcess {
    fn start(data: &std::path::Path, compression: &str, change_sets: usize) -> ServeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = data.join("changegate.toml");
        let text = changegate_config(data, "sqlite://bench.db", compression, change_sets).replacen(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            1,
        );
        std::fs::write(&config, text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("CHANGEGATE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(300);
        while reqwest::blocking::get(format!("{url}/readyz"))
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        ServeProcess { child, url }
    }

    /// A line of `/proc/PID/status`, in MiB.
    fn mib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` as a process of its own, with 10,000 change sets on `main`:
/// (idle RSS, peak RSS under one round of the load), in MiB.
fn memory_under_load(load: &Load) -> (f64, f64) {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), "lz4", 10_000);
    std::thread::sleep(Duration::from_secs(2));
    let idle = server.mib("VmRSS");
    drive(&server.url, load);
    (idle, server.mib("VmHWM"))
}

/// Single-row durable transactions per second: 30 KB blobs, one commit each.
fn sqlite_transactions(dir: &std::path::Path, blob: &[u8]) -> f64 {
    use sqlx::ConnectOptions;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("raw.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
        let mut conn = options.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(3) {
            sqlx::query("INSERT INTO t (body) VALUES ($1)")
                .bind(blob)
                .execute(&mut conn)
                .await
                .unwrap();
            n += 1;
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
}

/// The median time, on one core, of `f` over `n` runs.
fn stage_cost(n: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// What each stage of the durable path costs one delivery, on one core.
fn stages(body: &[u8], signature: &str) {
    use changegate::store::PreparedDelivery;
    const RUNS: usize = 3_000;
    let line = |label: &str, d: Duration, extra: String| {
        let us = d.as_secs_f64() * 1e6;
        println!(
            "    {label:<36} {us:>7.1} µs   {:>4.2} cores at 10,000/s{extra}",
            us / 100.0
        );
    };
    println!(
        "  stages, per {} byte delivery on one core (median of {RUNS}):",
        body.len()
    );
    line(
        "signature (HMAC-SHA256, verify)",
        stage_cost(RUNS, || {
            assert!(changegate::server::webhooks::signature_matches(
                SECRET.as_bytes(),
                std::hint::black_box(body),
                signature
            ))
        }),
        String::new(),
    );
    for (label, compression) in [
        ("inbox compression lz4", InboxCompression::Lz4),
        (
            "inbox compression deflate (fast)",
            InboxCompression::Deflate,
        ),
        ("inbox compression none", InboxCompression::None),
    ] {
        let stored = PreparedDelivery::new("d", "e", body, compression).stored_len();
        line(
            label,
            stage_cost(RUNS, || {
                std::hint::black_box(PreparedDelivery::new("d", "e", body, compression));
            }),
            format!("   stores {stored} bytes"),
        );
    }
}

/// One `wrk -t2 -c64` run of `benches/webhook.lua` against `url`.
struct WrkOutcome {
    sent: u64,
    accepted: u64,
    other: u64,
    outcome: Outcome,
}

fn wrk(url: &str, body: &std::path::Path, signature: &str, seconds: u64) -> WrkOutcome {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/webhook.lua");
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "-s"])
        .arg(&script)
        .arg(url)
        .env("CHANGEGATE_WRK_BODY", body)
        .env("CHANGEGATE_WRK_SIGNATURE", signature)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("webhook-lua: "))
        .unwrap_or_else(|| panic!("no summary from benches/webhook.lua in: {text}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("`{name}` in: {line}"))
    };
    WrkOutcome {
        sent: field("sent"),
        accepted: field("accepted"),
        other: field("other"),
        outcome: Outcome {
            per_sec: field("accepted") as f64 / (field("duration_us") as f64 / 1e6),
            p50: Duration::from_micros(field("p50_us")),
            p99: Duration::from_micros(field("p99_us")),
        },
    }
}

/// Inbox rows in a SQLite database: every delivery wrk saw accepted must be one.
fn inbox_rows(db: &std::path::Path) -> u64 {
    use sqlx::ConnectOptions;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .connect()
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n as u64
    })
}

fn report(label: &str, o: &Outcome, baseline: Option<&Outcome>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("   {:.2}× the no-op's throughput", o.per_sec / b.per_sec)
    });
    println!(
        "  {label:<34} {:>8.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms{ratio}",
        o.per_sec,
        o.p50.as_secs_f64() * 1000.0,
        o.p99.as_secs_f64() * 1000.0
    );
}

/// The round with the median throughput.
fn median(mut rounds: Vec<Outcome>) -> Outcome {
    rounds.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    rounds.swap_remove(rounds.len() / 2)
}

fn main() {
    // Only `cargo bench` runs this (not `cargo test`'s bench smoke run).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    std::env::set_var("CHANGEGATE_BENCH_SECRET", SECRET);
    let n: usize = std::env::var("CHANGEGATE_BENCH_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    const ROUNDS: usize = 3;
    let load = deliveries(n);
    let size = load.bodies[0].1.len();
    println!("webhook ingest: {n} signed pull_request_review deliveries of {size} bytes, {CLIENTS} concurrent clients, loopback; {ROUNDS} rounds, median shown");
    stages(&load.bodies[0].1, &load.bodies[0].2);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let pg_admin = std::env::var("CHANGEGATE_BENCH_POSTGRES_URL").ok();
    const COMPRESSIONS: [&str; 3] = ["lz4", "deflate", "none"];
    let mut noop = Vec::new();
    let mut sqlite: Vec<Vec<Outcome>> = COMPRESSIONS.iter().map(|_| Vec::new()).collect();
    let mut postgres = Vec::new();
    // Each server is stopped after its round, so no round shares the
    // runtime with an earlier one's connections and background work.
    for round in 0..ROUNDS {
        let server = noop_server(&server_rt);
        noop.push(drive(&server.url, &load));
        server.stop(&server_rt);
        for (c, compression) in COMPRESSIONS.iter().enumerate() {
            let dir = data.path().join(format!("round-{round}-{compression}"));
            std::fs::create_dir_all(&dir).unwrap();
            let server = changegate_server(&server_rt, &dir, "sqlite://bench.db", compression);
            sqlite[c].push(drive(&server.url, &load));
            server.stop(&server_rt);
        }
        if let Some(admin) = &pg_admin {
            let url =
                support::fresh_postgres(&server_rt, admin, &format!("changegate_bench_{round}"));
            let pg_dir = data.path().join(format!("pg-{round}"));
            std::fs::create_dir_all(&pg_dir).unwrap();
            let server = changegate_server(&server_rt, &pg_dir, &url, "lz4");
            postgres.push(drive(&server.url, &load));
            server.stop(&server_rt);
        }
    }
    println!("  in-process clients:");
    let noop = median(noop);
    report("no-op axum handler", &noop, None);
    let mut sqlite = sqlite.into_iter().map(median);
    let default = sqlite.next().unwrap();
    report("changegate, SQLite, lz4 (default)", &default, Some(&noop));
    for (compression, outcome) in COMPRESSIONS[1..].iter().zip(sqlite) {
        report(
            &format!("changegate, SQLite, {compression}"),
            &outcome,
            Some(&noop),
        );
    }
    if !postgres.is_empty() {
        report("changegate, Postgres, lz4", &median(postgres), Some(&noop));
    }
    let tx = sqlite_transactions(data.path(), &load.bodies[0].1);
    println!(
        "  {:<34} {tx:>8.0} /s   (one 30 KB row per commit, same disk)",
        "single-row SQLite transactions"
    );
    println!(
        "  changegate stores {:.1}× the deliveries per second that one transaction per delivery allows",
        default.per_sec / tx
    );
    wrk_rounds(&server_rt, data.path(), &load);
    let (idle, peak) = memory_under_load(&load);
    println!("  serve RSS with 10,000 change sets: {idle:.1} MiB idle, {peak:.1} MiB peak under this load (SQLite)");
}

/// `wrk -t2 -c64` with `benches/webhook.lua`, 10 s per round, against the
/// no-op handler and changegate (SQLite) with lz4 (the default) and deflate.
fn wrk_rounds(rt: &tokio::runtime::Runtime, data: &std::path::Path, load: &Load) {
    let installed = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    if !installed {
        println!("  wrk: not installed; skipped (apt-get install wrk)");
        return;
    }
    let (_, body, signature) = &load.bodies[0];
    let body_path = data.join("wrk-body.json");
    std::fs::write(&body_path, body).unwrap();
    const SECONDS: u64 = 10;
    let mut noop = Vec::new();
    let mut runs: [Vec<Outcome>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    // Every 202 is a stored row; a request cut off at the end may be
    // stored without its answer having been counted.
    let all_stored = |w: &WrkOutcome, dir: &std::path::Path| {
        let rows = inbox_rows(&dir.join("bench.db"));
        assert_eq!(w.other, 0, "every fresh delivery gets 202");
        assert!(
            w.accepted <= rows && rows <= w.sent,
            "{} accepted, {rows} stored, {} sent",
            w.accepted,
            w.sent
        );
    };
    for round in 0..ROUNDS_WRK {
        let server = noop_server(rt);
        let w = wrk(&server.url, &body_path, signature, SECONDS);
        server.stop(rt);
        assert_eq!(w.other, 0, "the no-op handler answers 202");
        noop.push(w.outcome);
        for (c, compression) in ["lz4", "deflate"].iter().enumerate() {
            let dir = data.join(format!("wrk-{round}-{compression}"));
            std::fs::create_dir_all(&dir).unwrap();
            let server = changegate_server(rt, &dir, "sqlite://bench.db", compression);
            let w = wrk(&server.url, &body_path, signature, SECONDS);
            all_stored(&w, &dir);
            server.stop(rt);
            runs[c].push(w.outcome);
        }
        let dir = data.join(format!("wrk-{round}-process"));
        std::fs::create_dir_all(&dir).unwrap();
        let server = ServeProcess::start(&dir, "lz4", 1);
        let w = wrk(&server.url, &body_path, signature, SECONDS);
        all_stored(&w, &dir);
        drop(server);
        runs[2].push(w.outcome);
    }
    println!("  wrk -t2 -c64 -d{SECONDS}s, benches/webhook.lua ({ROUNDS_WRK} rounds, median; every 202 checked stored):");
    let noop = median(noop);
    report("no-op axum handler", &noop, None);
    let [lz4, deflate, process] = runs;
    report(
        "changegate, SQLite, lz4 (default)",
        &median(lz4),
        Some(&noop),
    );
    report(
        "changegate `serve` process, lz4",
        &median(process),
        Some(&noop),
    );
    report("changegate, SQLite, deflate", &median(deflate), Some(&noop));
}

const ROUNDS_WRK: usize = 3;
