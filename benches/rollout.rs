//! Fleet rollouts' costs (SPEC §10), each against a baseline measured in
//! the same run, on a 1,000-target change whose per-target step is `true`:
//!
//! 1. The server's overhead per target: one claim and one report of a
//!    (step, target), driven through the API client (no lease renewal, no
//!    command run), against a shell loop that runs `sh -c true` once per
//!    target of the same list.
//! 2. `GET /api/v1/changes/{id}` once all 1,000 targets are through: p50
//!    and p99.
//! 3. End to end: `changegate exec ID --continue` over the 1,000 targets at
//!    `parallel` 1, 4 and 16.
//!
//! On SQLite, and on Postgres too when `CHANGEGATE_BENCH_POSTGRES_URL`
//! names a server (a database `changegate_bench_rollout` is re-created).
//! `CHANGEGATE_BENCH_TARGETS` changes the fleet's size. See README.md,
//! "Benchmarks".

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use changegate::client::Client;
use changegate::git::ChangeRepo;
use changegate::wire::{Outcome, Report};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The change repository: `targets` hosts, and one change per `parallel`
/// (`p1`, `p4`, `p16`) plus `direct` (driven by the client), each a canary
/// of one then the rest, with one per-target step `true`.
fn repository(dir: &Path, targets: usize) {
    git2::Repository::init(dir).unwrap();
    std::fs::create_dir_all(dir.join("changes/fleet")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let hosts: String = (1..=targets).map(|i| format!("host-{i:05}\n")).collect();
    std::fs::write(dir.join("changes/fleet/hosts.txt"), hosts).unwrap();
    std::fs::write(
        dir.join("policies/default.yaml"),
        "approvals:\n  required: 1\n",
    )
    .unwrap();
    for (id, parallel) in [("direct", 1), ("p1", 1), ("p4", 4), ("p16", 16)] {
        std::fs::write(
            dir.join(format!("changes/{id}.yaml")),
            format!("title: restart {id}\nkind: config\ntargets_from: changes/fleet/hosts.txt\nrollout:\n  canary: 1\n  waves: [\"100%\"]\n  parallel: {parallel}\nsteps:\n  - id: restart\n    per_target: true\n    run: \"true\"\n"),
        )
        .unwrap();
    }
    support::commit_all(dir);
}

/// `serve` in-process on `database_url`.
fn start_server(
    rt: &tokio::runtime::Runtime,
    repo: &Path,
    data: &Path,
    database_url: &str,
) -> support::Served {
    let hash = |t: &str| changegate::server::auth::token_hash(t);
    let text = format!(
        "[server]\ndata_dir = {data:?}\ndatabase_url = {database_url:?}\n[repo]\nurl = {repo:?}\n[[tokens]]\nname = \"alice\"\nrole = \"operator\"\nsha256 = {:?}\n[[tokens]]\nname = \"ci\"\nrole = \"executor\"\nsha256 = {:?}\n",
        hash("alice-token"),
        hash("ci-token"),
    );
    support::serve(rt, &text)
}

/// Every measurement on one backend.
fn measure(backend: &str, database_url: &str, repo: &Path, data: &Path, targets: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = start_server(&rt, repo, data, database_url);
    let url = server.url.clone();
    let alice = Client::new(&url, "alice-token");
    let ci = Client::new(&url, "ci-token");
    let snapshot_repo = ChangeRepo::open(repo).unwrap();
    let snapshot = snapshot_repo.at("HEAD").unwrap();
    let digest = |id: &str| snapshot.change(id).unwrap().digest.to_string();
    for id in ["direct", "p1", "p4", "p16"] {
        alice.approve(id, &digest(id), "bench").unwrap();
    }
    println!("{backend}: {targets} targets");

    // 1. The server's overhead per target, and the shell loop's.
    let direct = digest("direct");
    let done = Report {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 0,
        output_tail: String::new(),
    };
    let mut per_target = Vec::with_capacity(targets);
    for _ in 0..targets {
        let started = Instant::now();
        let grant = ci.claim("direct", &direct, None).unwrap();
        ci.report(&grant.attempt, &done).unwrap();
        per_target.push(started.elapsed());
    }
    per_target.sort();
    let started = Instant::now();
    let looped = Command::new("sh")
        .arg("-c")
        .arg("while read -r t; do CHANGEGATE_TARGET=\"$t\" sh -c true; done < changes/fleet/hosts.txt")
        .current_dir(repo)
        .status()
        .unwrap();
    assert!(looped.success());
    let shell = started.elapsed() / targets as u32;
    let (p50, p99) = (percentile(&per_target, 0.5), percentile(&per_target, 0.99));
    println!(
        "  claim + report per target            median {:>7.2} ms  p99 {:>7.2} ms  (first {:.2} ms, last {:.2} ms)",
        ms(p50),
        ms(p99),
        ms(per_target[0]),
        ms(*per_target.last().unwrap()),
    );
    println!(
        "  shell loop, `sh -c true` per target  {:>7.2} ms per target  → overhead {:.1}× the loop",
        ms(shell),
        ms(p50) / ms(shell)
    );

    // 2. The change's status with every target through.
    let http = reqwest::blocking::Client::new();
    let mut reads = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        let r = http
            .get(format!("{url}/api/v1/changes/direct"))
            .bearer_auth("alice-token")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().unwrap();
        reads.push(started.elapsed());
        assert!(body.len() > targets * 50);
    }
    reads.sort();
    println!(
        "  GET /api/v1/changes/{{id}}             p50 {:>7.2} ms  p99 {:>7.2} ms",
        ms(percentile(&reads, 0.5)),
        ms(percentile(&reads, 0.99))
    );

    // 3. End to end with `exec`, at each `parallel`.
    for (id, parallel) in [("p1", 1), ("p4", 4), ("p16", 16)] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["exec", id, "--continue"])
            .current_dir(repo)
            .env("CHANGEGATE_URL", &url)
            .env("CHANGEGATE_TOKEN", "ci-token")
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        println!(
            "  exec --continue, parallel {parallel:>2}          {:>7.2} s   ({:.2} ms per target)",
            took.as_secs_f64(),
            ms(took) / targets as f64
        );
    }
    let status = alice.change("p16").unwrap();
    assert_eq!(status["state"], "completed");
    server.stop(&rt);
}

fn main() {
    // Only `cargo bench` runs this (not `cargo test`'s bench smoke run).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let targets: usize = std::env::var("CHANGEGATE_BENCH_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let repo = tempfile::tempdir().unwrap();
    repository(repo.path(), targets);
    let data = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", data.path().join("bench.db").display());
    measure("SQLite", &sqlite, repo.path(), data.path(), targets);
    if let Ok(admin) = std::env::var("CHANGEGATE_BENCH_POSTGRES_URL") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = support::fresh_postgres(&rt, &admin, "changegate_bench_rollout");
        let data = tempfile::tempdir().unwrap();
        measure("Postgres", &url, repo.path(), data.path(), targets);
    }
}
