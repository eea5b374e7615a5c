//! How cost grows with the repository, at 1,000 and 10,000 (and, with
//! `CHANGEGATE_BENCH_SIZES=1000,10000,100000`, 100,000):
//!
//! - **first start**: `changegate serve` (the release binary, a process of
//!   its own, fresh SQLite) from spawn until `/readyz` answers 200, with N
//!   change sets on `main`;
//! - **restart**: the same again over the same database and branch;
//! - **moved**: a restart after one commit that edits a script 1% of the
//!   change sets run;
//! - **memory**: the resident set once idle after the first start;
//! - **pull request**: the git work of a `pull_request` event whose head
//!   edits one change set (`touched`, then the digests at the head), in
//!   process, on a repository kept open as `serve` keeps its mirror, each
//!   event reading its head through a handle of its own as `serve` does:
//!   median and 90th percentile of 31 events, each with a head of its own
//!   (enough for heads' trees to have filled one shared object cache; the
//!   first event after start, which also parses the default branch, is
//!   shown too; the webhook and database around it are measured by
//!   `benches/ingest.rs`);
//! - **digest**: `changegate digest` of one change in a repository of N
//!   files (median of 10 runs).
//!
//! With `CHANGEGATE_BENCH_ONLY=pull_request`, only the pull request
//! figure is measured (a few minutes at 100,000, most of it making the
//! repository).
//!
//! With `CHANGEGATE_BENCH_BASE_BIN` naming another `changegate` binary
//! (the previous commit's, built with `cargo build --release`), each
//! figure is measured for it too, alternately in the same run, with the
//! ratio.
//!
//! See README.md, "Benchmarks".

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (seconds until ready, idle RSS in MiB) for `serve` (the binary `bin`)
/// on `repo`, keeping its database in `data`.
fn startup(bin: &Path, repo: &Path, data: &Path) -> (f64, f64) {
    let port = free_port();
    let config = data.join("changegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n[repo]\nurl = {:?}\n",
            data, repo
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("CHANGEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let client = reqwest::blocking::Client::new();
    while client
        .get(&url)
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "serve never became ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(child.id(), "VmRSS") as f64 / 1024.0;
    child.kill().unwrap();
    child.wait().unwrap();
    (ready, rss)
}

/// A repository of `files` files, one change set covering two of them.
fn files_repo(dir: &Path, files: usize) {
    git2::Repository::init(dir).unwrap();
    for i in 0..files {
        let path = dir.join(format!("data/{:03}/file-{i:06}.txt", i % 1000));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{i}\n")).unwrap();
    }
    std::fs::create_dir_all(dir.join("changes")).unwrap();
    std::fs::write(dir.join("apply.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        dir.join("changes/one.yaml"),
        "title: one\nkind: config\ntargets: [a]\nsteps:\n  - id: s\n    run: ./apply.sh ./data/000/file-000000.txt\n",
    )
    .unwrap();
    support::commit_all(dir);
}

fn digest_median(repo: &Path) -> f64 {
    let mut times: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_changegate"))
                .args(["digest", "one", "--repo"])
                .arg(repo)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// One binary's figures at one size: first start, idle RSS, unmoved
/// restart, restart after a 1% move (seconds, MiB).
fn lifecycle(bin: &Path, n: usize) -> [f64; 4] {
    let repo = tempfile::tempdir().unwrap();
    support::generate(repo.path(), n);
    let data = tempfile::tempdir().unwrap();
    let (first, rss) = startup(bin, repo.path(), data.path());
    let (restart, _) = startup(bin, repo.path(), data.path());
    std::fs::write(
        repo.path().join("changes/scripts/one-percent.sh"),
        "#!/bin/sh\necho one percent, edited\n",
    )
    .unwrap();
    support::commit_more(repo.path(), "edit the script 1% of the change sets run");
    let (moved, _) = startup(bin, repo.path(), data.path());
    [first, rss, restart, moved]
}

/// Median and 90th percentile milliseconds of the git work of a pull
/// request event whose head edits one change set, in a repository of `n`
/// (this binary only). As in `serve`, the repository stays open between
/// events (`Mirror::read`), so the default branch's trees are cached after
/// the first; each event has a head of its own, so the head's trees are
/// new to every one.
fn pull_request_ms(n: usize) -> (f64, f64) {
    use changegate::git::touched::{digests_at, touched, Known};
    const EVENTS: usize = 31;
    let repo = tempfile::tempdir().unwrap();
    support::generate(repo.path(), n);
    let main = changegate::git::ChangeRepo::open(repo.path())
        .unwrap()
        .at("main")
        .unwrap()
        .load_model()
        .unwrap();
    let base = support::head(repo.path());
    let edited = repo.path().join("changes/change-000050.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    let heads: Vec<String> = (0..=EVENTS)
        .map(|i| {
            let title = format!("Edited change 50, push {i}");
            std::fs::write(&edited, text.replace("Generated change 50", &title)).unwrap();
            support::commit_more(repo.path(), "edit one change set");
            support::head(repo.path())
        })
        .collect();
    let none = std::collections::BTreeSet::new();
    let roots = changegate::model::RootIndex::new(main.changes.values());
    let git = changegate::git::ChangeRepo::open(repo.path()).unwrap();
    let event = |head: &String| {
        let t = Instant::now();
        let event = git.reopen().unwrap();
        let known = Known {
            roots: &roots,
            invalid: &none,
            at: &base,
        };
        let found = touched(&git, &event, head, &base, "main", known).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let ids = vec![found[0].0.clone()];
        digests_at(&event, &[head.clone()].into(), &ids, "main").unwrap();
        t.elapsed().as_secs_f64() * 1000.0
    };
    let first = event(&heads[0]);
    let mut times: Vec<f64> = heads[1..].iter().map(event).collect();
    times.sort_by(f64::total_cmp);
    println!("{n:>8}  pull request event, the first after start: {first:.2} ms");
    (times[times.len() / 2], times[times.len() * 9 / 10])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // As `main` does for `serve`.
    changegate::git::init_object_reads();
    let sizes: Vec<usize> = std::env::var("CHANGEGATE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("CHANGEGATE_BENCH_SIZES: numbers"))
        .collect();
    let head = Path::new(env!("CARGO_BIN_EXE_changegate")).to_path_buf();
    let base = std::env::var_os("CHANGEGATE_BENCH_BASE_BIN").map(std::path::PathBuf::from);
    println!(
        "{:>8}  {:>6}  {:>12}  {:>10}  {:>12}  {:>12}  {:>16}",
        "N", "binary", "first start", "idle RSS", "restart", "moved 1%", "digest, N files"
    );
    if std::env::var("CHANGEGATE_BENCH_ONLY").is_ok_and(|only| only == "pull_request") {
        for n in sizes {
            let (median, p90) = pull_request_ms(n);
            println!("{n:>8}  pull request touching one change: {median:.2} ms (90th percentile {p90:.2} ms)");
        }
        return;
    }
    for n in sizes {
        let files = tempfile::tempdir().unwrap();
        files_repo(files.path(), n);
        let digest = digest_median(files.path());
        let mut rows = vec![("head", lifecycle(&head, n))];
        if let Some(base) = &base {
            rows.push(("base", lifecycle(base, n)));
        }
        for (name, [first, rss, restart, moved]) in &rows {
            println!(
                "{n:>8}  {name:>6}  {first:>10.2} s  {rss:>6.1} MiB  {restart:>10.2} s  {moved:>10.2} s  {digest:>13.2} ms"
            );
        }
        let (median, p90) = pull_request_ms(n);
        println!("{n:>8}  pull request touching one change: {median:.2} ms (90th percentile {p90:.2} ms)");
        if let [(_, h), (_, b)] = rows.as_slice() {
            println!(
                "{n:>8}  {:>6}  {:>11.2}×  {:>9.2}×  {:>11.2}×  {:>11.2}×",
                "h/b",
                h[0] / b[0],
                h[1] / b[1],
                h[2] / b[2],
                h[3] / b[3]
            );
        }
    }
}
