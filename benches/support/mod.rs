//! Shared by the benchmarks: generated change repositories, and a fresh
//! Postgres database. Each bench uses some of it.
#![allow(dead_code)]

use std::path::Path;

use git2::{IndexAddOption, Repository, Signature};

/// A repository with `n` change sets of 4 steps, each running shared
/// scripts; one in a hundred also checks with `one-percent.sh`.
pub fn generate(dir: &Path, n: usize) {
    Repository::init(dir).unwrap();
    std::fs::create_dir_all(dir.join("changes/scripts")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for s in ["backup", "apply", "verify", "release", "one-percent"] {
        std::fs::write(
            dir.join(format!("changes/scripts/{s}.sh")),
            format!("#!/bin/sh\necho {s}\n"),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("policies/default.yaml"),
        "approvals:\n  required: 2\nexecution:\n  confirm_each_step: true\n",
    )
    .unwrap();
    for i in 0..n {
        let dep = if i > 0 {
            format!("depends_on: [change-{:06}]\n", i - 1)
        } else {
            String::new()
        };
        let check = if i % 100 == 0 {
            "one-percent"
        } else {
            "verify"
        };
        let text = format!(
            "title: Generated change {i}\nkind: config\ntargets: [host-{i}, shared-db]\n{dep}env:\n  HOST: host-{i}\ntimeout: 10m\nsteps:\n  - id: backup\n    run: ./changes/scripts/backup.sh \"$HOST\"\n    targets: [host-{i}]\n  - id: apply\n    check: ./changes/scripts/{check}.sh\n    run: ./changes/scripts/apply.sh \"$HOST\"\n    timeout: 5m\n  - id: verify\n    run: ./changes/scripts/verify.sh \"$HOST\"\n  - id: release\n    confirm: true\n    run: ./changes/scripts/release.sh \"$HOST\"\n    verify: ./changes/scripts/verify.sh\n"
        );
        std::fs::write(dir.join(format!("changes/change-{i:06}.yaml")), text).unwrap();
    }
    commit_all(dir);
}

/// The commit `main` points at.
pub fn head(dir: &Path) -> String {
    let repo = Repository::open(dir).unwrap();
    let id = repo.head().unwrap().peel_to_commit().unwrap().id();
    id.to_string()
}

/// Commits the whole work tree of `dir` on top of `main`.
pub fn commit_more(dir: &Path, message: &str) {
    let repo = Repository::open(dir).unwrap();
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("bench", "bench@example.com").unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .unwrap();
}

/// Commits the whole work tree of `dir` as the first commit on `main`.
pub fn commit_all(dir: &Path) {
    let repo = Repository::open(dir).unwrap();
    repo.set_head("refs/heads/main").unwrap();
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("bench", "bench@example.com").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "generated", &tree, &[])
        .unwrap();
}

/// A fresh, empty Postgres database on the server named by `admin_url`.
pub fn fresh_postgres(rt: &tokio::runtime::Runtime, admin_url: &str, name: &str) -> String {
    rt.block_on(async {
        let admin = changegate::store::Store::connect(admin_url).await.unwrap();
        admin
            .execute_raw(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .execute_raw(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.close().await;
    });
    let (base, _) = admin_url.rsplit_once('/').expect("postgres://host/db");
    format!("{base}/{name}")
}

/// A server running in-process on a bench's runtime. Dropping it asks it
/// to shut down; [`Served::stop`] also waits until it has, so the rounds
/// after it do not share the runtime with its connections and background
/// work.
pub struct Served {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Runs `server` on `rt`, answering at `url`; the future `server` is
    /// given resolves when the server is to shut down.
    pub fn spawn<F>(
        rt: &tokio::runtime::Runtime,
        url: String,
        server: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    ) -> Served
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(server(Box::pin(async move {
            let _ = stopped.await;
        })));
        Served { url, stop, task }
    }

    /// Shuts the server down gracefully and waits until it has.
    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        rt.block_on(self.task)
            .expect("the server shuts down cleanly");
    }
}

/// `serve` in-process on `rt` with the configuration `text`, once it
/// answers `/readyz`.
pub fn serve(rt: &tokio::runtime::Runtime, text: &str) -> Served {
    let config = changegate::config::Config::parse(text).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Served::spawn(rt, url, |shutdown| async move {
        changegate::server::run(config, listener, shutdown)
            .await
            .expect("serve runs and stops cleanly")
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while reqwest::blocking::get(format!("{}/readyz", served.url))
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    served
}
