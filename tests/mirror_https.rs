//! The mirror over HTTPS (SPEC §12): `repo.url` names a real git server on
//! loopback (`git http-backend` behind TLS with a throwaway CA, asking for
//! `x-access-token:<token>`), and `serve` fetches `main` and pull request
//! heads from it with the configured token or the App's installation token,
//! which never reaches the disk or a log line.

mod common;

use std::sync::{Arc, Mutex};

use common::gate_fixture::*;
use common::git_https::GitHttps;
use common::github::*;
use common::server::{start_remote, Server};
use common::{db, TestRepo};

fn origin() -> TestRepo {
    let repo = TestRepo::new();
    script(&repo, "ok.sh", "echo ran");
    repo.write(
        "policies/p.yaml",
        "approvals:\n  required: 1\n  from: [alice-gh, bob-gh]\n",
    );
    repo.write("changes/a.yaml", change("a"));
    repo.commit("main");
    repo
}

fn change(title: &str) -> String {
    format!("title: {title:?}\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./ok.sh\n    timeout: 5m\n")
}

/// The server's certificate is trusted through `SSL_CERT_FILE`.
fn trusting(git: &GitHttps) -> Vec<(&'static str, String)> {
    vec![("SSL_CERT_FILE", git.ca.display().to_string())]
}

fn ids(server: &Server) -> Vec<String> {
    let (code, body) = server.get("/api/v1/changes", Some("alice-token"));
    assert_eq!(code, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

fn metric(server: &Server, name: &str, reason: Option<&str>) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
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

/// Every file under `dir`, searched byte for byte for `secret`.
fn files_holding(dir: &std::path::Path, secret: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// A pull request opened on the origin gets its commit status: its head
/// was fetched over TLS into the mirror.
fn open_pull_request(repo: &TestRepo, server: &Server, github: &FakeGithub) -> git2::Oid {
    let base = repo.main_tip();
    let head = repo.push_to_pr(1, &[("changes/b.yaml", &change("b"))], "carol");
    let pr = pull(1, head, base, "carol-gh");
    deliver_pr(server, "pr1-opened", "opened", &pr, "carol-gh");
    wait_for(
        || {
            !github
                .statuses(&head.to_string(), "changegate/b")
                .is_empty()
        },
        "a status for the pull request's change",
    );
    let mirror = git2::Repository::open_bare(server.dir.path().join("mirror.git")).unwrap();
    assert_eq!(mirror.refname_to_id("refs/pull/1/head").unwrap(), head);
    head
}

#[test]
fn main_and_pull_heads_are_fetched_over_tls_with_the_token() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin();
        let state = github.state.clone();
        let git = GitHttps::start(
            repo.path(),
            Arc::new(move |t| state.lock().unwrap().token_ok(t)),
        );
        let database = db::fresh(backend);
        let server = start_remote(
            &git.url,
            &database.url,
            &tokens(),
            &github.config_section(),
            &trusting(&git),
            true,
        );
        assert_eq!(ids(&server), ["a"], "{backend}: main was read over TLS");
        open_pull_request(&repo, &server, &github);

        let seen = git.seen();
        // GitHub's way: the first request goes without a credential and is
        // challenged; then the token goes as basic auth.
        assert_eq!(seen[0].status, 401, "{seen:#?}");
        assert!(seen[0].token.is_none());
        let packs = seen
            .iter()
            .filter(|s| s.request.starts_with("POST") && s.request.contains("git-upload-pack"))
            .collect::<Vec<_>>();
        assert!(packs.len() >= 2, "main, then the pull request: {seen:#?}");
        assert!(
            packs
                .iter()
                .all(|s| s.status == 200 && s.token.as_deref() == Some(API_TOKEN)),
            "{seen:#?}"
        );
        assert_eq!(
            files_holding(server.dir.path(), API_TOKEN),
            Vec::<String>::new()
        );
        assert!(
            !server.log().contains(API_TOKEN),
            "the token never reaches the log"
        );
        assert_eq!(
            metric(&server, "changegate_mirror_fetch_failing", None),
            0.0
        );
    }
}

#[test]
fn a_wrong_token_is_refused_logged_once_counted_and_not_ready_until_fixed() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin();
        // The remote takes another token until the operator fixes it.
        let accepted = Arc::new(Mutex::new("a-token-we-do-not-have".to_string()));
        let git = GitHttps::start(repo.path(), {
            let accepted = accepted.clone();
            Arc::new(move |t| t == *accepted.lock().unwrap())
        });
        let database = db::fresh(backend);
        let mut server = start_remote(
            &git.url,
            &database.url,
            &tokens(),
            &github.config_section(),
            &trusting(&git),
            false,
        );
        wait_for(
            || {
                metric(
                    &server,
                    "changegate_mirror_fetch_failures_total",
                    Some("auth"),
                ) >= 2.0
            },
            "two refused fetches, counted as auth",
        );
        assert_eq!(
            server.get("/readyz", None).0,
            503,
            "{backend}: not read yet"
        );
        assert_eq!(
            metric(&server, "changegate_mirror_fetch_failing", None),
            1.0
        );
        let log = server.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("mirror fetch failed; retrying with backoff"))
            .collect();
        assert_eq!(warned.len(), 1, "logged once per streak:\n{log}");
        assert!(
            warned[0].contains("\"reason\":\"auth\"") && warned[0].contains("401"),
            "{}",
            warned[0]
        );
        assert!(!log.contains(API_TOKEN));
        assert!(
            git.seen()
                .iter()
                .any(|s| s.token.as_deref() == Some(API_TOKEN) && s.status == 401),
            "our token was offered and refused"
        );

        *accepted.lock().unwrap() = API_TOKEN.to_string();
        server.wait_ready();
        assert_eq!(ids(&server), ["a"]);
        assert!(server.log().contains("mirror fetch recovered"));
        assert_eq!(
            metric(&server, "changegate_mirror_fetch_failing", None),
            0.0
        );
    }
}

#[test]
fn an_untrusted_certificate_and_an_unreachable_remote_are_told_apart() {
    let github = FakeGithub::start();
    let repo = origin();
    let git = GitHttps::start(repo.path(), Arc::new(|_| true));
    let database = db::fresh("sqlite");
    // No SSL_CERT_FILE: the throwaway CA is not among the system's roots.
    let untrusted = start_remote(
        &git.url,
        &database.url,
        &tokens(),
        &github.config_section(),
        &[],
        false,
    );
    wait_for(
        || {
            metric(
                &untrusted,
                "changegate_mirror_fetch_failures_total",
                Some("tls"),
            ) >= 1.0
        },
        "a TLS failure",
    );
    assert_eq!(untrusted.get("/readyz", None).0, 503);
    assert!(
        git.seen().is_empty(),
        "no request crossed an untrusted handshake"
    );
    drop(untrusted);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/test/repo.git",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let database = db::fresh("sqlite");
    let unreachable = start_remote(
        &url,
        &database.url,
        &tokens(),
        &github.config_section(),
        &trusting(&git),
        false,
    );
    wait_for(
        || {
            metric(
                &unreachable,
                "changegate_mirror_fetch_failures_total",
                Some("unreachable"),
            ) >= 1.0
        },
        "an unreachable remote",
    );
    assert_eq!(unreachable.get("/readyz", None).0, 503);
}

#[test]
fn a_redirect_to_another_host_gets_no_token() {
    let github = FakeGithub::start();
    let repo = origin();
    let git = GitHttps::start(repo.path(), Arc::new(|_| true));
    let database = db::fresh("sqlite");
    // The remote answers with a redirect to 127.0.0.1, which then asks for
    // credentials: the token is for `localhost` only.
    let moved = git.url.replace("/test/", "/moved/");
    let server = start_remote(
        &moved,
        &database.url,
        &tokens(),
        &github.config_section(),
        &trusting(&git),
        false,
    );
    wait_for(
        || {
            metric(
                &server,
                "changegate_mirror_fetch_failures_total",
                Some("auth"),
            ) >= 1.0
        },
        "the fetch refused",
    );
    let seen = git.seen();
    assert!(seen.iter().any(|s| s.status == 301), "{seen:#?}");
    assert!(
        seen.iter().all(|s| s.token.is_none()),
        "no token crossed the redirect: {seen:#?}"
    );
    assert!(server
        .log()
        .contains("the token goes only to https://localhost:"));
    assert_eq!(server.get("/readyz", None).0, 503);
}

#[test]
fn an_expired_app_token_is_renewed_and_never_written_down() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        {
            let mut state = github.state.lock().unwrap();
            state.app = Some((1234, INSTALLATION_ID));
            state.app_token_secs = Some(3);
        }
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("app.pem");
        let made = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .output()
            .unwrap();
        assert!(made.status.success());
        let section = github.config_section().replace(
            "token_env = \"CG_TEST_GH_TOKEN\"\n",
            &format!(
                "app_id = 1234\ninstallation_id = {INSTALLATION_ID}\nprivate_key_path = {key:?}\n"
            ),
        );
        let repo = origin();
        let state = github.state.clone();
        let git = GitHttps::start(
            repo.path(),
            Arc::new(move |t| state.lock().unwrap().token_ok(t)),
        );
        let database = db::fresh(backend);
        let server = start_remote(
            &git.url,
            &database.url,
            &tokens(),
            &section,
            &trusting(&git),
            true,
        );
        assert_eq!(ids(&server), ["a"]);
        let first: Vec<String> = git.seen().iter().filter_map(|s| s.token.clone()).collect();
        assert!(
            !first.is_empty(),
            "{backend}: main was fetched with a minted token"
        );
        // Past the first token's life: a fetch must bring a new one.
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert!(!github.state.lock().unwrap().token_ok(&first[0]));
        open_pull_request(&repo, &server, &github);

        let seen = git.seen();
        let used: std::collections::BTreeSet<&str> =
            seen.iter().filter_map(|s| s.token.as_deref()).collect();
        assert!(used.len() >= 2, "the token was renewed: {seen:#?}");
        assert!(
            seen.iter()
                .filter(|s| s.token.is_some())
                .all(|s| s.status == 200),
            "no fetch offered an expired token: {seen:#?}"
        );
        let minted: Vec<String> = github
            .state
            .lock()
            .unwrap()
            .minted
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        for token in &minted {
            assert_eq!(
                files_holding(server.dir.path(), token),
                Vec::<String>::new()
            );
            assert!(!server.log().contains(token.as_str()), "{token} in the log");
        }
    }
}
