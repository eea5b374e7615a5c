//! The gate's costs, against baselines measured in the same run:
//!
//! 1. Per-step executor overhead: `changegate exec` of a step whose command
//!    is `true`, against `sh -c true` and one HTTP round trip to `/healthz`;
//!    for a change covering one small file and one covering 100 files
//!    (10 MB), each materialised into a private directory (hermetic
//!    execution), plus the materialisation alone.
//! 2. `GET /api/v1/changes/{id}` (approval status, steps, blockers) with
//!    1,000 and 10,000 changes (`CHANGEGATE_BENCH_CHANGES`, e.g.
//!    `1000,10000,100000`) and ten GitHub reviews each: p50 and p99.
//!
//! The server runs in-process on a temp SQLite. See README.md, "Benchmarks".

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use changegate::client::Client;
use changegate::config::{Config, Role, TokenConfig};
use changegate::server::auth::token_hash;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts `serve` in-process on `repo` with a temp SQLite; returns its URL.
fn start_server(repo: &Path, data: &Path, runtime: &tokio::runtime::Runtime) -> String {
    let token = |name: &str, role| TokenConfig {
        name: name.into(),
        role,
        sha256: token_hash(&format!("{name}-token")),
        github: None,
        emails: vec![],
    };
    let mut config = Config {
        tokens: vec![
            token("alice", Role::Operator),
            token("bob", Role::Operator),
            token("ci", Role::Executor),
        ],
        ..Config::default()
    };
    config.server.data_dir = data.to_path_buf();
    config.repo.url = repo.to_path_buf();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(changegate::server::run(
        config,
        listener,
        std::future::pending(),
    ));
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while client
        .get(format!("{url}/readyz"))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    url
}

fn medians(label: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let m = percentile(&times, 0.5);
    println!(
        "  {label:<40} median {:>8.2} ms   (n = {})",
        ms(m),
        times.len()
    );
    m
}

fn exec_overhead(runtime: &tokio::runtime::Runtime) {
    const N: usize = 50;
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    git2::Repository::init(repo.path()).unwrap();
    std::fs::create_dir_all(repo.path().join("changes")).unwrap();
    // 100 files of 100 KiB: a change that covers 10 MB.
    std::fs::create_dir_all(repo.path().join("payload")).unwrap();
    for f in 0..100 {
        // Distinct content per file (xorshift), so git neither deltas nor
        // compresses them against each other: 10 MB of real reading.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (f as u64 + 1);
        let bytes: Vec<u8> = (0..100 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(repo.path().join(format!("payload/f{f:03}.bin")), bytes).unwrap();
    }
    for i in 0..N {
        std::fs::write(
            repo.path().join(format!("changes/t{i:02}.yaml")),
            "title: t\nkind: bench\ntargets: [x]\nsteps:\n  - id: noop\n    run: \"true\"\n",
        )
        .unwrap();
        for (prefix, target) in [("big", "y"), ("shm", "z")] {
            std::fs::write(
                repo.path().join(format!("changes/{prefix}{i:02}.yaml")),
                format!("title: t\nkind: bench\ntargets: [{target}{i}]\ninclude: [payload/]\nsteps:\n  - id: noop\n    run: \"true\"\n"),
            )
            .unwrap();
        }
    }
    support::commit_all(repo.path());
    // Pack the objects, as a CI checkout's are (`git gc`, when git is here).
    let _ = Command::new("git")
        .args(["gc", "-q"])
        .current_dir(repo.path())
        .status();
    let url = start_server(repo.path(), data.path(), runtime);
    let alice = Client::new(&url, "alice-token");
    let digest = |id: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["digest", id])
            .current_dir(repo.path())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for i in 0..N {
        for id in [
            format!("t{i:02}"),
            format!("big{i:02}"),
            format!("shm{i:02}"),
        ] {
            alice.approve(&id, &digest(&id), "").unwrap();
        }
    }
    println!("per-step executor overhead ({N} runs each, same run):");
    let sh = (0..N)
        .map(|_| {
            let t = Instant::now();
            assert!(Command::new("sh")
                .args(["-c", "true"])
                .status()
                .unwrap()
                .success());
            t.elapsed()
        })
        .collect();
    let sh = medians("sh -c true", sh);
    let http = (0..N)
        .map(|_| {
            let client = reqwest::blocking::Client::new();
            let t = Instant::now();
            assert!(client
                .get(format!("{url}/healthz"))
                .send()
                .unwrap()
                .status()
                .is_success());
            t.elapsed()
        })
        .collect();
    let http = medians("one HTTP round trip to /healthz", http);
    // `step_dirs`: where exec makes its private directories (TMPDIR).
    let exec_all = |prefix: &str, step_dirs: &Path| -> Vec<Duration> {
        (0..N)
            .map(|i| {
                let t = Instant::now();
                let out = Command::new(env!("CARGO_BIN_EXE_changegate"))
                    .args(["exec", &format!("{prefix}{i:02}")])
                    .current_dir(repo.path())
                    .env("CHANGEGATE_URL", &url)
                    .env("CHANGEGATE_TOKEN", "ci-token")
                    .env("TMPDIR", step_dirs)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                t.elapsed()
            })
            .collect()
    };
    let disk = std::env::temp_dir();
    let small = medians("changegate exec, 1 covered file", exec_all("t", &disk));
    let big = medians(
        "changegate exec, 100 covered files (10 MB)",
        exec_all("big", &disk),
    );
    // The same with the step directories on tmpfs, where a runner has one:
    // no dirty pages to write back, so no writeback throttling either.
    let shm = Path::new("/dev/shm");
    let in_memory = shm
        .is_dir()
        .then(|| medians("  … with TMPDIR=/dev/shm (tmpfs)", exec_all("shm", shm)));
    // The materialisation alone, in-process, as `exec` does it (libgit2's
    // per-read hash check off; each blob checked against its id).
    git2::opts::strict_hash_verification(false);
    let git = changegate::git::ChangeRepo::open(repo.path()).unwrap();
    let snapshot = git.at("HEAD").unwrap();
    let model = snapshot.load_model().unwrap();
    let covered = changegate::model::covered_paths(&model.changes["big00"], &snapshot).unwrap();
    let write = (0..N)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let t = Instant::now();
            snapshot.materialize(&covered, dir.path()).unwrap();
            t.elapsed()
        })
        .collect();
    let write = medians("materialise 100 files (10 MB) alone, one thread", write);
    git2::opts::strict_hash_verification(true);
    println!(
        "  overhead per step: {:.2} ms (1 file), {:.2} ms (100 files, 10 MB) over `sh -c true`; {:.1}× one /healthz round trip; the 10 MB costs {:.2} ms more ({:.2} ms of it writing the files)",
        ms(small) - ms(sh),
        ms(big) - ms(sh),
        (ms(small) - ms(sh)) / ms(http),
        ms(big) - ms(small),
        ms(write)
    );
    if let Some(m) = in_memory {
        println!(
            "  overhead per step with the step directory on tmpfs: {:.2} ms (100 files, 10 MB)",
            ms(m) - ms(sh)
        );
    }
}

/// Approval status (`GET /api/v1/changes/{id}`) with `changes` changes and
/// ten GitHub reviews each (one merged pull request per change, reviews
/// bound through the digest at their commit), inserted in bulk.
fn status_latency(runtime: &tokio::runtime::Runtime, changes: usize) {
    let reviews_per_change = 10;
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    support::generate(repo.path(), changes);
    let url = start_server(repo.path(), data.path(), runtime);
    let store = runtime
        .block_on(changegate::store::Store::connect(&format!(
            "sqlite://{}",
            data.path().join("changegate.db").display()
        )))
        .unwrap();
    let list: serde_json::Value = Client::new(&url, "alice-token").changes().unwrap();
    let digests: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (n, chunk) in digests.chunks(500).enumerate() {
        let numbered = chunk.iter().enumerate().map(|(j, c)| (n * 500 + j, c));
        let mut prs = Vec::new();
        let mut touched = Vec::new();
        let mut digest_rows = Vec::new();
        let mut reviews = Vec::new();
        for (i, (id, d)) in numbered {
            prs.push(format!(
                "({i}, 'c{i}', 'main', '', 'closed', TRUE, 'author-{i}', 0)"
            ));
            touched.push(format!("({i}, '{id}', '{d}')"));
            digest_rows.push(format!("('c{i}', '{id}', '{d}')"));
            for k in 0..reviews_per_change {
                reviews.push(format!(
                    "({}, {i}, 'reviewer-{k}', 'approved', 'c{i}', {k}, FALSE)",
                    i * reviews_per_change + k
                ));
            }
        }
        for sql in [
            format!("INSERT INTO pull_requests (number, head_sha, base_ref, base_sha, state, merged, opener, updated_at) VALUES {}", prs.join(",")),
            format!("INSERT INTO pr_changes (pr_number, change_id, digest) VALUES {}", touched.join(",")),
            format!("INSERT INTO commit_digests (commit_sha, change_id, digest) VALUES {}", digest_rows.join(",")),
            format!("INSERT INTO reviews (review_id, pr_number, reviewer, state, commit_sha, submitted_at, dismissed) VALUES {}", reviews.join(",")),
        ] {
            runtime.block_on(store.execute_raw(&sql)).unwrap();
        }
    }
    let client = Client::new(&url, "alice-token");
    let mut times = Vec::new();
    for i in 0..2000 {
        let id = &digests[(i * 7919) % digests.len()].0;
        let t = Instant::now();
        let status = client.change(id).unwrap();
        times.push(t.elapsed());
        assert_eq!(
            status["approvals"]["reviews"].as_array().unwrap().len(),
            reviews_per_change
        );
    }
    times.sort();
    println!(
        "  {changes:>7} changes, {:>9} reviews: p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        changes * reviews_per_change,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    exec_overhead(&runtime);
    let sizes: Vec<usize> = std::env::var("CHANGEGATE_BENCH_CHANGES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("CHANGEGATE_BENCH_CHANGES: numbers"))
        .collect();
    println!("GET /api/v1/changes/{{id}}, 10 GitHub reviews per change (2000 requests, one keep-alive client):");
    for changes in sizes {
        status_latency(&runtime, changes);
    }
}
