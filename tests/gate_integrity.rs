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

/// (approver, counts, reason) of each review of change `id`.
fn reviews(server: &Server, id: &str) -> Vec<(String, bool, String)> {
    client(server, "alice").change(id).unwrap()["approvals"]["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["approver"].as_str().unwrap().to_string(),
                r["counts"].as_bool().unwrap(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
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

#[test]
fn a_retried_attempt_needs_a_new_go_ahead() {
    for backend in db::BACKENDS {
        let repo = repo_with(
            "approvals:\n  required: 1\n  from: [alice, bob, dave]\nexecution:\n  retry_requires_approval: false\n",
            "exit 1",
            "    confirm: true\n",
        );
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let bob = client(&server, "bob");
        bob.proceed("c", "only", "go").unwrap();
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
