//! The gate's promise, tried as an attacker would: only real, eligible
//! reviewers count; a retry needs an approval that counts; a go-ahead is
//! bound to the attempt and digest it was given for. Each test reproduces
//! one hole exactly as it was reported, on SQLite and Postgres.

mod common;

use common::gate_fixture::*;
use common::github::*;
use common::server::Server;
use common::{db, TestRepo};
use serde_json::Value;

/// `main` with one policy, a script, and change `c` committed by Carol.
fn repo_with(policy: &str, step: &str, change_extra: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write("step.sh", format!("#!/bin/sh\n{step}\n"));
    std::fs::set_permissions(
        repo.path().join("step.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    repo.write("policies/p.yaml", policy);
    repo.write(
        "changes/c.yaml",
        format!("title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n{change_extra}"),
    );
    repo.commit_as("change c", "Carol", "carol@example.com");
    repo
}

/// PR #1 adding `c` to a repository whose `main` holds only `policy`,
/// opened by Carol; returns its head and the pull request.
fn pr_adding_c(repo: &TestRepo, server: &Server, github: &FakeGithub) -> (git2::Oid, Value) {
    let base = repo.main_tip();
    let head = repo.push_to_pr(
        1,
        &[(
            "changes/c.yaml",
            "title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n",
        )],
        "carol",
    );
    let pr = pull(1, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(server, "pr1", "opened", &pr, "carol-gh");
    wait_for(
        || server.get("/api/v1/changes/c", Some("alice-token")).0 == 200,
        "the pull request's change is known",
    );
    (head, pr)
}

fn github_origin(policy: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write("step.sh", "#!/bin/sh\ntrue\n");
    repo.write("policies/p.yaml", policy);
    repo.commit("main");
    repo
}

#[test]
fn an_identity_named_in_from_is_not_the_github_user_with_that_login() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        // `bob` is a token identity with no `github` login. Anyone may
        // register the GitHub login `bob`; give him write access too.
        github.state.lock().unwrap().writers.insert("bob".into());
        let repo = github_origin("approvals:\n  required: 1\n  from: [bob]\n");
        let (server, _db) = start_server(&repo, backend, &github);
        let (head, pr) = pr_adding_c(&repo, &server, &github);
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "bob", "approved", head, 1_000),
        );
        // Once his write access is known, only the identity rule is left.
        wait_for(
            || reviews(&server, "c") == [("bob".to_string(), false, "not-eligible".to_string())],
            "the GitHub user bob's review shown as not eligible",
        );
        assert_eq!(
            client(&server, "alice").change("c").unwrap()["state"],
            "proposed"
        );
    }
}

#[test]
fn a_team_entry_is_looked_up_by_github_login_never_by_token_name() {
    for backend in db::BACKENDS {
        let repo = repo_with(
            "approvals:\n  required: 1\n  from: [\"team:acme/leads\"]\n",
            "true",
            "",
        );
        let github = FakeGithub::start();
        // The GitHub user `bob` is a lead; the token identity `bob` names no login.
        github
            .state
            .lock()
            .unwrap()
            .teams
            .insert("acme/leads".into(), ["bob".to_string()].into());
        let (server, _db) = start_server(&repo, backend, &github);
        // The GitHub user bob comments on an unrelated pull request, so his
        // membership is looked up and cached.
        let base = repo.main_tip();
        let head = repo.push_to_pr(2, &[("README", "typo\n")], "erin");
        let pr = pull(2, head, base, "erin-gh");
        deliver_pr(&server, "pr2", "opened", &pr, "erin-gh");
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "bob", "commented", head, 1_000),
        );
        wait_for(
            || {
                !github
                    .requests("GET /orgs/acme/teams/leads/memberships/bob")
                    .is_empty()
            },
            "the GitHub user bob's membership looked up",
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The identity bob approves through the API: he is not that lead.
        approve(&server, "bob", &repo, "c");
        assert_eq!(
            reviews(&server, "c"),
            [("bob".to_string(), false, "not-eligible".to_string())],
            "{backend}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "not-approved",
            "{backend}"
        );
    }
}

#[test]
fn a_review_from_someone_without_write_access_does_not_count() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        // No `from`: the built-in default lets any eligible reviewer count.
        let repo = github_origin("approvals:\n  required: 1\n");
        let (server, _db) = start_server(&repo, backend, &github);
        let (head, pr) = pr_adding_c(&repo, &server, &github);
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "stranger", "approved", head, 1_000),
        );
        wait_for(
            || {
                !github
                    .requests("GET /repos/acme/infra/collaborators/stranger/permission")
                    .is_empty()
            },
            "the stranger's permission looked up",
        );
        wait_for(
            || {
                reviews(&server, "c")
                    == [("stranger".to_string(), false, "no-write-access".to_string())]
            },
            "the stranger's review shown as not counting",
        );
        assert_eq!(
            client(&server, "alice").change("c").unwrap()["state"],
            "proposed",
            "{backend}"
        );
        // A collaborator's review counts.
        deliver_review(
            &server,
            "r2",
            "submitted",
            &pr,
            &review(2, "alice-gh", "approved", head, 1_001),
        );
        wait_for(
            || client(&server, "alice").change("c").unwrap()["state"] == "approved",
            "approved by a collaborator",
        );
    }
}

#[test]
fn retry_needs_a_fresh_approval_that_counts() {
    for backend in db::BACKENDS {
        let repo = repo_with(
            "approvals:\n  required: 1\n  from: [alice, dave]\n",
            "exit 1",
            "",
        );
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let failed = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
        let dave = client(&server, "dave");
        // Carol is the author; Bob is not in `from`. Neither approval counts.
        approve(&server, "carol", &repo, "c");
        approve(&server, "bob", &repo, "c");
        assert_eq!(
            dave.retry("c", "fixed").unwrap_err().reason(),
            Some("needs-approval"),
            "{backend}"
        );
        approve(&server, "alice", &repo, "c");
        dave.retry("c", "fixed").unwrap();
    }
}

#[test]
fn a_go_ahead_given_at_an_older_digest_does_not_let_the_step_run() {
    for backend in db::BACKENDS {
        let repo = repo_with(
            "approvals:\n  required: 1\n  from: [alice, bob, dave]\n",
            "true",
            "    confirm: true\n",
        );
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        let old = digest(&repo, "c");
        // Given before any approval, then the script changes on main.
        client(&server, "bob")
            .proceed("c", "only", "looks fine")
            .unwrap();
        repo.write("step.sh", "#!/bin/sh\necho something else\n");
        repo.commit("edit the step");
        let new = digest(&repo, "c");
        assert_ne!(old, new);
        wait_for(
            || client(&server, "alice").change("c").unwrap()["digest"] == new.as_str(),
            "main re-read",
        );
        approve(&server, "alice", &repo, "c");
        let refusal = client(&server, "ci").claim("c", &new, None).unwrap_err();
        assert_eq!(refusal.reason(), Some("needs-confirmation"), "{backend}");
        assert!(refusal.to_string().contains(&old), "{backend}: {refusal}");
        client(&server, "bob")
            .proceed("c", "only", "read the new script")
            .unwrap();
        client(&server, "ci").claim("c", &new, None).unwrap();
    }
}

/// One failing step that needs a go-ahead, approved by alice; retries need
/// no fresh approval; bob has given the go-ahead for its first attempt.
fn failing_step_with_its_go_ahead(backend: &str) -> (TestRepo, Server, db::TestDatabase) {
    let repo = repo_with(
        "approvals:\n  required: 1\n  from: [alice, bob, dave]\nexecution:\n  retry_requires_approval: false\n",
        "exit 1",
        "    confirm: true\n",
    );
    let (server, database) = start(&repo, backend, "");
    approve(&server, "alice", &repo, "c");
    client(&server, "bob").proceed("c", "only", "go").unwrap();
    (repo, server, database)
}

#[test]
fn a_go_ahead_is_refused_while_its_step_runs_so_none_waits_for_a_retry() {
    for backend in db::BACKENDS {
        let (repo, server, _db) = failing_step_with_its_go_ahead(backend);
        let bob = client(&server, "bob");
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        // Given now, it would be for attempt 2: a retry of a failure no
        // one has seen yet.
        let early = bob.proceed("c", "only", "in advance").unwrap_err();
        assert_eq!(early.reason(), Some("step-running"), "{backend}: {early}");
        report(&server, &grant.attempt, false);
        bob.retry("c", "flaky host").unwrap();
        let refusal = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap_err();
        assert_eq!(refusal.reason(), Some("needs-confirmation"), "{backend}");
    }
}

#[test]
fn a_retried_attempt_needs_a_new_go_ahead() {
    for backend in db::BACKENDS {
        let (repo, server, _db) = failing_step_with_its_go_ahead(backend);
        let bob = client(&server, "bob");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let failed = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
        bob.retry("c", "flaky host").unwrap();
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "needs-confirmation",
            "{backend}"
        );
        bob.proceed("c", "only", "go again").unwrap();
        client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
    }
}

// ---- Hole 1: exactly the approved blobs run (hermetic execution).

/// A repository whose change `c` runs `run`, approved by Alice, on a server.
fn approved(
    run: &str,
    files: &[(&str, &str)],
    backend: &str,
) -> (TestRepo, Server, db::TestDatabase) {
    let repo = TestRepo::new();
    for (path, body) in files {
        script(&repo, path, body);
    }
    repo.write(
        "policies/p.yaml",
        "approvals:\n  required: 1\n  from: [alice, bob, dave]\n",
    );
    repo.write(
        "changes/c.yaml",
        format!("title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: {run}\n"),
    );
    repo.commit_as("change c", "Carol", "carol@example.com");
    let (server, database) = start(&repo, backend, "");
    approve(&server, "alice", &repo, "c");
    (repo, server, database)
}

fn runs_log(runs: &tempfile::NamedTempFile) -> String {
    std::fs::read_to_string(runs.path()).unwrap_or_default()
}

#[test]
fn a_helper_sourced_by_a_covered_script_but_not_covered_never_runs() {
    for backend in db::BACKENDS {
        let (repo, server, _db) = approved(
            "./ops/a.sh",
            &[
                (
                    "ops/a.sh",
                    ". \"$(dirname \"$0\")/helper.sh\"\necho a-ran >> \"$RUNS\"",
                ),
                ("ops/helper.sh", "echo helper-v1 >> \"$RUNS\""),
            ],
            backend,
        );
        // After the approval, the uncovered helper is edited on main: the
        // digest does not move, so no new approval is asked for.
        let before = digest(&repo, "c");
        script(
            &repo,
            "ops/helper.sh",
            "echo helper-v2-unreviewed >> \"$RUNS\"",
        );
        repo.commit("edit the helper");
        assert_eq!(digest(&repo, "c"), before);
        let runs = tempfile::NamedTempFile::new().unwrap();
        let out = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{backend}: it fails loudly: {}",
            text(&out)
        );
        assert!(
            !runs_log(&runs).contains("helper-v2"),
            "{backend}: the unreviewed helper ran"
        );
        assert!(
            text(&out).contains("hint: `ops/helper.sh` is in the repository but not covered")
                && text(&out).contains("include: [ops/]"),
            "{backend}: {}",
            text(&out)
        );
    }
}

#[test]
fn a_script_named_without_dot_slash_is_not_there_for_the_step() {
    for backend in db::BACKENDS {
        let (repo, server, _db) = approved(
            "sh ops/b.sh",
            &[("ops/b.sh", "echo b-v1 >> \"$RUNS\"")],
            backend,
        );
        script(&repo, "ops/b.sh", "echo b-v2-unreviewed >> \"$RUNS\"");
        repo.commit("edit b.sh");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let out = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        assert_eq!(runs_log(&runs), "", "{backend}: nothing of ops/b.sh ran");
        assert!(
            text(&out).contains("`ops/b.sh` is in the repository"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_covered_symlink_is_a_validation_error() {
    let repo = TestRepo::new();
    script(&repo, "real.sh", "echo real");
    std::os::unix::fs::symlink("real.sh", repo.path().join("link.sh")).unwrap();
    repo.write(
        "changes/c.yaml",
        "title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./link.sh\n",
    );
    repo.commit("a symlinked step");
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("`link.sh` is a symbolic link: the digest would cover the link's text"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_uncommitted_file_in_the_checkout_does_not_exist_for_the_step() {
    for backend in db::BACKENDS {
        let (repo, server, _db) = approved(
            "./step.sh",
            &[("step.sh", "echo covered-ran >> \"$RUNS\"\npwd >> \"$RUNS\"\nstat -c %a . >> \"$RUNS\"\nif [ -e extra.sh ]; then sh extra.sh; fi")],
            backend,
        );
        // The CI checkout holds an uncommitted, uncovered file.
        repo.write("extra.sh", "echo extra-ran >> \"$RUNS\"\n");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let out = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        let log = runs_log(&runs);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "covered-ran", "{backend}: {log}");
        assert!(!log.contains("extra-ran"), "{backend}: {log}");
        // It ran in a private directory (0700) outside the checkout, since removed.
        let world = std::path::Path::new(lines[1]);
        assert!(!world.starts_with(repo.path()), "{backend}: {log}");
        assert_eq!(lines[2], "700", "{backend}: {log}");
        assert!(
            !world.exists(),
            "{backend}: {} was not removed",
            world.display()
        );
    }
}

#[test]
fn a_step_whose_files_cannot_be_written_fails_without_running() {
    let (repo, server, _db) = approved(
        "./step.sh",
        &[("step.sh", "echo ran >> \"$RUNS\"")],
        "sqlite",
    );
    // No private directory can be made: the files are written while the
    // claim is decided, so the claimed attempt fails, saying why.
    let runs = tempfile::NamedTempFile::new().unwrap();
    let out = exec_command(&repo, &server, "c", runs.path())
        .env("TMPDIR", "/nonexistent/changegate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot create a private directory")
            && text(&out).contains("the step did not run"),
        "{}",
        text(&out)
    );
    assert_eq!(runs_log(&runs), "", "nothing ran");
    let change = client(&server, "alice").change("c").unwrap();
    assert_eq!(change["state"], "failed", "{change}");
    let attempt = &change["steps"][0]["attempts"][0];
    assert_eq!(attempt["exit_code"], 126, "{attempt}");
    assert!(
        attempt["output_tail"]
            .as_str()
            .unwrap()
            .contains("the step did not run"),
        "{attempt}"
    );
}

#[test]
fn the_private_directory_is_removed_when_exec_is_terminated() {
    let (repo, server, _db) = approved(
        "./step.sh",
        &[("step.sh", "pwd >> \"$RUNS\"\nsleep 30")],
        "sqlite",
    );
    let runs = tempfile::NamedTempFile::new().unwrap();
    let mut child = exec_command(&repo, &server, "c", runs.path())
        .spawn()
        .unwrap();
    wait_for(|| runs_log(&runs).lines().count() == 1, "the step started");
    let world = std::path::PathBuf::from(runs_log(&runs).trim());
    assert!(world.exists());
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(!world.exists(), "{} was not removed", world.display());
}

// ---- Holes 6–8: limits, secrets and hygiene.

fn audit_kinds(server: &Server) -> Vec<String> {
    server
        .get("/api/v1/audit", Some("alice-token"))
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn serve_refuses_to_start_with_github_and_an_empty_webhook_secret() {
    let repo = github_origin("approvals:\n  required: 1\n");
    let github = FakeGithub::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("changegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n[repo]\nurl = {:?}\n{}",
            dir.path(),
            repo.path(),
            github.config_section()
        ),
    )
    .unwrap();
    for secret in [Some(""), None] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"));
        cmd.args(["serve", "--config"]).arg(&config);
        match secret {
            Some(s) => cmd.env("CG_TEST_GH_SECRET", s),
            None => cmd.env_remove("CG_TEST_GH_SECRET"),
        };
        // A server that starts anyway would run forever: give it 20 s.
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{secret:?}: serve started without a webhook secret");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{secret:?}: {}", text(&out));
        assert!(
            text(&out).contains("webhook secret `CG_TEST_GH_SECRET` is unset or empty"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn made_up_ids_get_404_and_leave_no_audit_event() {
    for backend in db::BACKENDS {
        let repo = repo_with("approvals:\n  required: 1\n", "true", "");
        let database = db::fresh(backend);
        let mut toks = tokens();
        toks.push(("monitor".into(), "monitor", "monitor-token".into()));
        let server = common::server::start_with(repo.path(), &database.url, &toks, "", "");
        let before = audit_kinds(&server).len();
        let long = "a".repeat(300);
        for id in [long.as_str(), "UPPER", "..", "a%2Fb"] {
            let (code, _) = server.post(
                &format!("/api/v1/changes/{id}/claim"),
                "ci-token",
                &serde_json::json!({"digest": "sha256:x"}),
            );
            assert_eq!(code, 404, "{backend}: {id}");
        }
        let (code, body) = server.post(
            "/api/v1/actions",
            "monitor-token",
            &serde_json::json!({"actor": "fleet", "action": "reboot", "target": "x".repeat(5000)}),
        );
        assert_eq!(code, 422, "{backend}: {body}");
        assert_eq!(
            audit_kinds(&server).len(),
            before,
            "{backend}: nothing audited"
        );
    }
}

#[test]
fn impossible_reports_are_refused_with_422() {
    for backend in db::BACKENDS {
        let repo = repo_with("approvals:\n  required: 1\n  from: [alice]\n", "true", "");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        let path = format!("/api/v1/attempts/{}/report", grant.attempt);
        for bad in [
            serde_json::json!({"outcome": "succeeded", "exit_code": 0, "duration_ms": -5}),
            serde_json::json!({"outcome": "failed", "exit_code": 999, "duration_ms": 5}),
            serde_json::json!({"outcome": "exploded", "exit_code": 0, "duration_ms": 5}),
        ] {
            let (code, _) = server.post(&path, "ci-token", &bad);
            assert_eq!(code, 422, "{backend}: {bad}");
        }
        // Still running: nothing was recorded.
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["steps"][0]["state"], "running", "{backend}");
    }
}

#[test]
fn the_server_redacts_credentials_in_output_tails_and_reasons() {
    for backend in db::BACKENDS {
        let repo = repo_with("approvals:\n  required: 1\n  from: [alice]\n", "true", "");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        // A report sent straight to the API, past the executor's own redaction.
        let (code, _) = server.post(
            &format!("/api/v1/attempts/{}/report", grant.attempt),
            "ci-token",
            &serde_json::json!({"outcome": "failed", "exit_code": 1, "duration_ms": 5,
                "output_tail": "connecting to postgres://app:s3cretpw@db/app\nPGPASSWORD=hunter2 psql\n"}),
        );
        assert_eq!(code, 200, "{backend}");
        client(&server, "bob")
            .abandon("c", "the DSN postgres://app:s3cretpw@db/app is wrong")
            .unwrap();
        let everything = format!(
            "{}{}",
            client(&server, "alice").change("c").unwrap(),
            server.get("/api/v1/audit", Some("alice-token")).1
        );
        assert!(!everything.contains("s3cretpw"), "{backend}: {everything}");
        assert!(!everything.contains("hunter2"), "{backend}: {everything}");
        assert!(
            everything.contains("postgres://[redacted]@db/app"),
            "{backend}"
        );
    }
}

#[test]
fn pages_send_security_headers_and_metrics_bound_methods() {
    let repo = repo_with("approvals:\n  required: 1\n", "true", "");
    let (server, _db) = start(&repo, "sqlite", "");
    let http = reqwest::blocking::Client::new();
    for path in ["/", "/changes/c", "/feed.atom"] {
        let r = http
            .get(format!("{}{path}", server.url))
            .bearer_auth("alice-token")
            .send()
            .unwrap();
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script-src"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        http.request(method, format!("{}/api/v1/changes", server.url))
            .send()
            .unwrap();
    }
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!metrics.contains("MADEUP"), "one label for made-up methods");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}

#[test]
fn a_huge_delivery_header_is_truncated_in_the_log() {
    let github = FakeGithub::start();
    let repo = github_origin("approvals:\n  required: 1\n");
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let before = server.log().len();
    let huge = "x".repeat(60_000);
    for _ in 0..20 {
        let code = reqwest::blocking::Client::new()
            .post(format!("{}/webhooks/github", server.url))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", &huge)
            .header("X-Hub-Signature-256", "sha256=00")
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(code, 401);
    }
    let grown = server.log().len() - before;
    assert!(
        grown < 20 * 1_000,
        "the log grew {grown} bytes for 20 requests"
    );
}

#[test]
fn a_step_cannot_read_the_executors_token_from_its_environment_block() {
    for backend in db::BACKENDS {
        // The step walks up to `changegate exec` and dumps its environment
        // block, base64-encoded so plain redaction would not catch it.
        let (repo, server, _db) = approved(
            "./step.sh",
            &[(
                "step.sh",
                r#"pid=$$
while [ "$pid" -gt 1 ]; do
  pid=$(awk '{print $4}' "/proc/$pid/stat")
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "changegate exec"; then
    tr '\0' '\n' < "/proc/$pid/environ" | grep CHANGEGATE_TOKEN | tr -d '\n' | base64 -w0 | tee -a "$RUNS"
  fi
done
echo"#,
            )],
            backend,
        );
        let runs = tempfile::NamedTempFile::new().unwrap();
        let out = exec_command(&repo, &server, "c", runs.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        use base64::Engine;
        let leaked = base64::engine::general_purpose::STANDARD.encode("CHANGEGATE_TOKEN=ci-token");
        let encode = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        assert!(
            !runs_log(&runs).contains(&leaked),
            "{backend}: the step read the token"
        );
        // Root may read any environment block: there it shows the token overwritten.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(
                runs_log(&runs),
                encode("CHANGEGATE_TOKEN=********"),
                "{backend}"
            );
        }
        let stored = client(&server, "alice").change("c").unwrap()["steps"][0]["attempts"][0]
            ["output_tail"]
            .to_string();
        assert!(!stored.contains(&leaked), "{backend}: {stored}");
    }
}

/// POSTs `body` as a forged delivery from each of `n` threads at once;
/// the status of each, or `None` where the server closed the connection
/// before reading it all (as it may for a refused body).
fn forged_at_once(url: &str, n: usize, body: &std::sync::Arc<Vec<u8>>) -> Vec<Option<u16>> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (url, body, barrier) = (url.to_string(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(std::time::Duration::from_secs(60))
                    .build()
                    .unwrap();
                barrier.wait();
                http.post(format!("{url}/webhooks/github"))
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("forged-{i}"))
                    .header("X-Hub-Signature-256", "sha256=00")
                    .body(body.to_vec())
                    .send()
                    .ok()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn concurrent_large_forged_bodies_stay_within_the_memory_budget() {
    let github = FakeGithub::start();
    let repo = github_origin("approvals:\n  required: 1\n");
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let before = server.peak_rss_kib();
    let body = std::sync::Arc::new(vec![b'x'; 20 << 20]);
    let codes = forged_at_once(&server.url, 16, &body);
    let grown_mib = server.peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("16 concurrent 20 MB forgeries: peak RSS grew {grown_mib} MiB; answers {codes:?}");
    assert!(grown_mib < 150, "peak RSS grew {grown_mib} MiB: {codes:?}");
    assert!(
        codes.iter().all(|c| matches!(c, Some(401 | 503) | None)),
        "{codes:?}"
    );
    assert!(
        codes.contains(&Some(401)),
        "some were read and refused: {codes:?}"
    );
    // Still serving.
    assert_eq!(server.get("/healthz", None).0, 200);
}

#[test]
fn a_server_without_github_reads_no_webhook_body() {
    let repo = repo_with("approvals:\n  required: 1\n", "true", "");
    let (server, _db) = start(&repo, "sqlite", "");
    let before = server.peak_rss_kib();
    let body = std::sync::Arc::new(vec![b'x'; 20 << 20]);
    let codes = forged_at_once(&server.url, 16, &body);
    let grown_mib = server.peak_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 40, "peak RSS grew {grown_mib} MiB: {codes:?}");
    assert!(
        codes.iter().all(|c| matches!(c, Some(404) | None)),
        "{codes:?}"
    );
}

/// Reads from `stream` until the server closes it; `None` if it is still
/// open after `limit`. Returns what the server sent before closing.
fn read_until_closed(
    stream: &mut std::net::TcpStream,
    limit: std::time::Duration,
) -> Option<String> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(_) => return None,
        }
    }
}

fn slow_server() -> (Server, db::TestDatabase, String) {
    let repo = repo_with("approvals:\n  required: 1\n", "true", "");
    let (server, database) = start(
        &repo,
        "sqlite",
        "header_timeout = \"1s\"\nbody_timeout = \"1s\"",
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    (server, database, addr)
}

#[test]
fn a_client_that_never_finishes_its_headers_is_closed_by_the_header_timeout() {
    use std::io::Write;
    let (_server, _db, addr) = slow_server();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The documented timeout is 1s here; the connection is gone well within 10s.
    let answer = read_until_closed(&mut stream, std::time::Duration::from_secs(10));
    assert!(answer.is_some(), "still open after 10s");
}

#[test]
fn an_idle_kept_alive_connection_is_closed_by_the_header_timeout() {
    use std::io::Write;
    let (_server, _db, addr) = slow_server();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut stream, std::time::Duration::from_secs(10));
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
}

#[test]
fn a_dribbled_body_is_cut_off_by_the_body_timeout() {
    use std::io::Write;
    let (_server, _db, addr) = slow_server();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"POST /api/v1/changes/c/approvals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"digest\":")
        .unwrap();
    let answer = read_until_closed(&mut stream, std::time::Duration::from_secs(10));
    assert!(answer.is_some(), "still open after 10s");
    assert!(!answer.unwrap().contains(" 200 "), "nothing was approved");
}

#[test]
fn validate_warns_where_a_step_reaches_for_an_uncovered_file() {
    let repo = TestRepo::new();
    script(
        &repo,
        "ops/a.sh",
        ". \"$(dirname \"$0\")/helper.sh\"\nsource lib/common.sh\nbash ops/tool.sh\n./ops/covered.sh",
    );
    for path in [
        "ops/helper.sh",
        "lib/common.sh",
        "ops/tool.sh",
        "ops/covered.sh",
        "ops/b.sh",
    ] {
        script(&repo, path, "true");
    }
    repo.write(
        "changes/c.yaml",
        "title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: one\n    run: ./ops/a.sh && ./ops/covered.sh\n  - id: two\n    run: sh ops/b.sh\n",
    );
    repo.commit("scripts");
    let out = repo.run(&["validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings alone pass: {}",
        text(&out)
    );
    let said = text(&out);
    for expected in [
        "ops/a.sh:2:4: warning: `ops/a.sh` refers to `ops/helper.sh`, which the digest of `c` does not cover, so the step will not find it; add `include: [ops/]` to changes/c.yaml",
        "ops/a.sh:3:8: warning: `ops/a.sh` refers to `lib/common.sh`",
        "ops/a.sh:4:6: warning: `ops/a.sh` refers to `ops/tool.sh`",
        "changes/c.yaml:8:13: warning: step `two` names `ops/b.sh` without `./`",
        "valid, 4 warnings",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    assert!(
        !said.contains("ops/covered.sh"),
        "a covered path is fine:\n{said}"
    );
    let strict = repo.run(&["validate", "--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    assert!(
        text(&strict).contains("ops/a.sh:2:4: error:"),
        "{}",
        text(&strict)
    );
    let json = repo.run(&["validate", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["warnings"][0]["path"], "changes/c.yaml");
}

#[test]
fn plan_says_whom_each_from_entry_resolves_to() {
    let repo = repo_with(
        "approvals:\n  required: 2\n  from: [alice, bob, frank, \"team:acme/leads\"]\n",
        "true",
        "",
    );
    let config = repo.path().join("changegate.toml");
    std::fs::write(
        &config,
        format!("[[tokens]]\nname = \"alice\"\nrole = \"operator\"\nsha256 = \"{0}\"\ngithub = \"alice-gh\"\n[[tokens]]\nname = \"bob\"\nrole = \"operator\"\nsha256 = \"{1}\"\n", "a".repeat(64), "b".repeat(64)),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"))
        .args(["plan", "c"])
        .current_dir(repo.path())
        .env("CHANGEGATE_CONFIG", &config)
        .output()
        .unwrap();
    let said = text(&out);
    for expected in [
        "`alice`: the identity alice, through the API or as GitHub user alice-gh (with write access)",
        "`bob`: the identity bob, through the API only (no `github` login configured; the GitHub user bob does not count)",
        "`frank`: the GitHub user frank (with write access)",
        "`team:acme/leads`: members of that team, by GitHub login",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
}

#[test]
fn an_approval_older_than_expire_after_at_the_first_claim_does_not_count() {
    for backend in db::BACKENDS {
        let repo = repo_with(
            "approvals:\n  required: 1\n  from: [alice, bob]\n  expire_after: 1s\n",
            "true",
            "",
        );
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "not-approved",
            "{backend}"
        );
        assert_eq!(
            reviews(&server, "c"),
            [("alice".to_string(), false, "expired".to_string())],
            "{backend}"
        );
        approve(&server, "bob", &repo, "c");
        client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
    }
}

#[test]
fn a_path_owners_policy_governs_changes_that_cover_its_paths() {
    for backend in db::BACKENDS {
        let repo = TestRepo::new();
        script(&repo, "ops/db/migrate.sh", "true");
        script(&repo, "ops/web.sh", "true");
        repo.write(
            "policies/p.yaml",
            "approvals:\n  required: 1\n  from: [alice, bob]\n",
        );
        repo.write(
            "policies/db-owners.yaml",
            "match:\n  paths: [\"ops/db/**\"]\napprovals:\n  required: 1\n  from: [dave]\n",
        );
        for (id, run) in [("db", "./ops/db/migrate.sh"), ("web", "./ops/web.sh")] {
            repo.write(
                &format!("changes/{id}.yaml"),
                format!("title: t\nkind: config\ntargets: [{id}-host]\nsteps:\n  - id: only\n    run: {run}\n"),
            );
        }
        repo.commit_as("two changes", "Carol", "carol@example.com");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "db");
        approve(&server, "alice", &repo, "web");
        assert_eq!(
            claim_reason(&server, &repo, "db"),
            "not-approved",
            "{backend}: the owners must approve"
        );
        client(&server, "ci")
            .claim("web", &digest(&repo, "web"), None)
            .unwrap();
        approve(&server, "dave", &repo, "db");
        client(&server, "ci")
            .claim("db", &digest(&repo, "db"), None)
            .unwrap();
    }
}

// ---- Revisions (SPEC §13): policies fail closed.

#[test]
fn a_policy_that_does_not_validate_refuses_every_claim_until_fixed() {
    for backend in db::BACKENDS {
        let strict = "approvals:\n  required: 2\n  from: [alice, bob]\nexecution:\n  confirm_each_step: true\n";
        let repo = repo_with(&strict.replace("required: 2", "requird: 2"), "true", "");
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve(&server, "dave", &repo, "c");
        let refusal = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap_err();
        assert_eq!(
            refusal.reason(),
            Some("policies-invalid"),
            "{backend}: {refusal}"
        );
        assert!(
            refusal.to_string().contains("policies/p.yaml:2:3"),
            "{backend}: {refusal}"
        );
        let firing = |server: &Server| {
            client(server, "alice")
                .alerts()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["kind"] == "policies-invalid" && a["state"] == "firing")
                .count()
        };
        assert_eq!(firing(&server), 1, "{backend}: an alert fires");
        assert!(
            audit_kinds(&server).contains(&"policies.invalid".to_string()),
            "{backend}"
        );
        // Fixed on main: the strict policy governs (dave is not in `from`).
        repo.write("policies/p.yaml", strict);
        repo.commit("fix the policy");
        wait_for(|| firing(&server) == 0, "the alert resolves");
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "not-approved",
            "{backend}"
        );
        assert!(
            audit_kinds(&server).contains(&"policies.valid".to_string()),
            "{backend}"
        );
    }
}

#[test]
fn an_overnight_window_is_valid_and_keeps_its_policy_in_force() {
    let repo = repo_with(
        "approvals:\n  required: 2\n  from: [alice, bob]\nexecution:\n  windows: [\"mon-thu 22:00-02:00 UTC\"]\n",
        "true",
        "",
    );
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (server, _db) = start(&repo, "sqlite", "");
    approve(&server, "dave", &repo, "c");
    // Not the built-in default: one approval from outside `from` is not enough.
    assert_eq!(claim_reason(&server, &repo, "c"), "not-approved");
}

#[test]
fn a_client_that_reserves_the_webhook_budget_and_dribbles_is_cut_off() {
    use std::io::Write;
    let github = FakeGithub::start();
    let repo = github_origin("approvals:\n  required: 1\n");
    let database = db::fresh("sqlite");
    let server = common::server::start_with(
        repo.path(),
        &database.url,
        &tokens(),
        "body_timeout = \"2s\"\nwebhook_memory_mib = 25",
        &github.config_section(),
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    // Declares 25 MiB (the whole budget), then sends a byte every 300 ms:
    // never idle long enough for an idle timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: slow\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: 26214400\r\n\r\n{")
        .unwrap();
    let dribbler = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            if slow.write_all(b" ").is_err() {
                return true; // cut off
            }
        }
        false
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let body = push_event(repo.main_tip(), repo.main_tip());
    assert_eq!(
        deliver(&server, "push", "real-1", &body, &sign(&body)),
        503,
        "the budget is held"
    );
    assert!(
        dribbler.join().unwrap(),
        "the dribbler was cut off within its deadline"
    );
    deliver_signed(&server, "push", "real-2", &body);
}
