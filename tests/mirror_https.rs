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

/// Every file under `dir` holding `needle`, byte for byte.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// Every row of every table of the Postgres database at `url`, as text.
fn postgres_rows(url: &str) -> String {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert!(tables.len() > 10, "the schema is there: {tables:?}");
        let mut all = String::new();
        for t in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT CAST(x AS TEXT) FROM \"{t}\" x"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            for r in rows {
                all.push_str(&r);
                all.push('\n');
            }
        }
        all
    })
}

/// Asserts `token` is nowhere the server wrote: its data directory (the
/// mirror and config), the database (the SQLite files, or every row of
/// every Postgres table) and its log; neither as itself nor as the
/// basic-auth header that carried it.
fn assert_nowhere(server: &Server, database: &db::TestDatabase, token: &str) {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    let mut dirs = vec![server.dir.path().to_path_buf()];
    let rows = match database.url.strip_prefix("sqlite://") {
        Some(file) => {
            dirs.push(std::path::Path::new(file).parent().unwrap().to_path_buf());
            String::new()
        }
        None => postgres_rows(&database.url),
    };
    for needle in [token, basic.as_str()] {
        for dir in &dirs {
            assert_eq!(
                files_holding(dir, needle.as_bytes()),
                Vec::<String>::new(),
                "{needle}"
            );
        }
        assert!(!rows.contains(needle), "{needle} in the database");
        assert!(!server.log().contains(needle), "{needle} in the log");
    }
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
        assert_nowhere(&server, &database, API_TOKEN);
        assert_eq!(server.metric("changegate_mirror_fetch_failing", None), 0.0);
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
            || server.metric("changegate_mirror_fetch_failures_total", Some("auth")) >= 2.0,
            "two refused fetches, counted as auth",
        );
        assert_eq!(
            server.get("/readyz", None).0,
            503,
            "{backend}: not read yet"
        );
        assert_eq!(server.metric("changegate_mirror_fetch_failing", None), 1.0);
        let log = server.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("mirror fetch failed; retrying with backoff"))
            .collect();
        assert_eq!(warned.len(), 1, "logged once per streak:\n{log}");
        assert!(
            warned[0].contains("\"reason\":\"auth\"") && warned[0].contains("refused the token"),
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
        assert_eq!(server.metric("changegate_mirror_fetch_failing", None), 0.0);
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
        || untrusted.metric("changegate_mirror_fetch_failures_total", Some("tls")) >= 1.0,
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
            unreachable.metric(
                "changegate_mirror_fetch_failures_total",
                Some("unreachable"),
            ) >= 1.0
        },
        "an unreachable remote",
    );
    assert_eq!(unreachable.get("/readyz", None).0, 503);
}

#[test]
fn a_redirect_is_not_followed_and_gets_no_token() {
    let github = FakeGithub::start();
    let repo = origin();
    let git = GitHttps::start(repo.path(), Arc::new(|_| true));
    // One redirect to 127.0.0.1 (another origin), one to a URL whose
    // percent-encoded user decodes to look like `localhost`.
    for route in ["/moved/", "/sneaky/"] {
        let database = db::fresh("sqlite");
        let server = start_remote(
            &git.url.replace("/test/", route),
            &database.url,
            &tokens(),
            &github.config_section(),
            &trusting(&git),
            false,
        );
        wait_for(
            || server.metric("changegate_mirror_fetch_failures_total", None) >= 1.0,
            "the fetch refused",
        );
        assert_eq!(server.get("/readyz", None).0, 503);
        assert!(
            server.log().contains("mirror fetch failed"),
            "{}",
            server.log()
        );
    }
    let seen = git.seen();
    assert!(
        seen.iter().filter(|s| s.status == 301).count() >= 2,
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|s| s.token.is_none()),
        "no token crossed a redirect: {seen:#?}"
    );
}

/// The token each pack fetch (`POST …/git-upload-pack`) carried, in order.
fn pack_tokens(git: &GitHttps) -> Vec<String> {
    git.seen()
        .into_iter()
        .filter(|s| s.request.starts_with("POST") && s.status == 200)
        .filter_map(|s| s.token)
        .collect()
}

#[test]
fn an_app_token_is_reused_then_renewed_before_it_runs_out_and_never_written_down() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        {
            let mut state = github.state.lock().unwrap();
            state.app = Some((1234, INSTALLATION_ID));
            // Three seconds more than the five minutes a fetch wants left.
            state.app_token_secs = Some(303);
        }
        let (section, _keys) = github.app_section();
        let repo = origin();
        let state = github.state.clone();
        let git = GitHttps::start(
            repo.path(),
            Arc::new(move |t| state.lock().unwrap().token_ok(t)),
        );
        let database = db::fresh(backend);
        let started = std::time::Instant::now();
        let server = start_remote(
            &git.url,
            &database.url,
            &tokens(),
            &section,
            &trusting(&git),
            true,
        );
        assert_eq!(ids(&server), ["a"]);
        // Within its first three seconds, the token is used again.
        let head = open_pull_request(&repo, &server, &github);
        let early = pack_tokens(&git);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "too slow to tell reuse from renewal"
        );
        assert!(
            early.len() >= 2 && early.iter().all(|t| *t == early[0]),
            "{backend}: reused: {early:?}"
        );
        assert!(early[0].starts_with("ghs_minted_"));

        // Past that, less than five minutes are left: the next fetch renews.
        std::thread::sleep(std::time::Duration::from_secs(4));
        let next = repo.push_to_pr(1, &[("changes/b.yaml", &change("b2"))], "carol");
        assert_ne!(next, head);
        let pr = pull(1, next, repo.main_tip(), "carol-gh");
        deliver_pr(&server, "pr1-sync", "synchronize", &pr, "carol-gh");
        wait_for(
            || {
                !github
                    .statuses(&next.to_string(), "changegate/b")
                    .is_empty()
            },
            "a status for the new head",
        );
        let all = pack_tokens(&git);
        assert_ne!(
            all.last().unwrap(),
            &early[0],
            "{backend}: renewed: {all:?}"
        );
        assert!(
            git.seen()
                .iter()
                .filter(|s| s.token.is_some())
                .all(|s| s.status == 200),
            "no fetch offered a token the remote refused"
        );
        let minted: Vec<String> = github
            .state
            .lock()
            .unwrap()
            .minted
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        assert!(minted.len() >= 2);
        for token in &minted {
            assert_nowhere(&server, &database, token);
        }
    }
}
