//! Revisions (SPEC §13): approvals, attempts, completion and abandonment
//! belong to one `(id, digest)`, never to the id alone. Each test is a hole
//! that was reproduced on the id-bound design, on SQLite and Postgres.

mod common;

use common::gate_fixture::*;
use common::server::Server;
use common::{db, TestRepo};
use serde_json::Value;

const POLICY: &str = "approvals:\n  required: 2\n  from: [alice, bob]\n";

fn change_text(steps: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!("title: t\nkind: config\ntargets: [web]\n{extra}steps:\n");
    for (id, run) in steps {
        text.push_str(&format!("  - id: {id}\n    run: {run}\n"));
    }
    text
}

/// `main` with the two-approval policy and change `c` running `steps`.
fn repo_with(steps: &[(&str, &str)]) -> TestRepo {
    let repo = TestRepo::new();
    script(&repo, "s1.sh", "echo s1 >> \"$RUNS\"");
    script(&repo, "s2.sh", "echo s2 >> \"$RUNS\"");
    script(&repo, "s2-new.sh", "echo s2-new-unreviewed >> \"$RUNS\"");
    script(&repo, "fail.sh", "exit 1");
    repo.write("policies/p.yaml", POLICY);
    repo.write("changes/c.yaml", change_text(steps, ""));
    repo.commit_as("change c", "Carol", "carol@example.com");
    repo
}

fn approve_both(server: &Server, repo: &TestRepo, id: &str) {
    approve(server, "alice", repo, id);
    approve(server, "bob", repo, id);
}

fn status(server: &Server, id: &str) -> Value {
    client(server, "alice").change(id).unwrap()
}

fn exec_out(
    repo: &TestRepo,
    server: &Server,
    runs: &tempfile::NamedTempFile,
) -> std::process::Output {
    exec_command(repo, server, "c", runs.path())
        .output()
        .unwrap()
}

#[test]
fn an_edit_on_main_while_running_never_runs_without_approval() {
    for backend in db::BACKENDS {
        let repo = repo_with(&[("s1", "./s1.sh"), ("s2", "./s2.sh")]);
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve_both(&server, &repo, "c");
        let old = digest(&repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            exec_out(&repo, &server, &runs).status.code(),
            Some(0),
            "{backend}: s1"
        );
        // s2's command changes on main.
        repo.write(
            "changes/c.yaml",
            change_text(&[("s1", "./s1.sh"), ("s2", "./s2-new.sh")], ""),
        );
        repo.commit("edit s2");
        let new = digest(&repo, "c");
        wait_for(
            || status(&server, "c")["main_digest"] == new.as_str(),
            "main re-read",
        );
        let s = status(&server, "c");
        assert_eq!(
            s["digest"],
            old.as_str(),
            "{backend}: the revision in flight is shown"
        );
        assert_eq!(s["state"], "running", "{backend}");
        assert_eq!(
            s["blockers"][0]["reason"], "revision-in-flight",
            "{backend}: {s}"
        );
        assert!(s["warnings"]
            .as_array()
            .unwrap()
            .contains(&"superseded".into()));
        // The page shows both digests.
        let page = reqwest::blocking::Client::new()
            .get(format!("{}/changes/c", server.url))
            .bearer_auth("alice-token")
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(
            page.contains(&old) && page.contains(&new) && page.contains("superseded"),
            "{backend}"
        );
        // Neither the new digest nor the old one goes forward.
        let ci = client(&server, "ci");
        assert_eq!(
            ci.claim("c", &new, None).unwrap_err().reason(),
            Some("revision-in-flight")
        );
        assert_eq!(
            ci.claim("c", &old, None).unwrap_err().reason(),
            Some("superseded")
        );
        let refused = exec_out(&repo, &server, &runs);
        assert_eq!(
            refused.status.code(),
            Some(3),
            "{backend}: {}",
            text(&refused)
        );
        assert!(!std::fs::read_to_string(runs.path())
            .unwrap()
            .contains("s2-new-unreviewed"));
        // Abandoned, the new digest is a new revision: its own approvals, from step one.
        client(&server, "bob")
            .abandon("c", "superseded by the edit")
            .unwrap();
        assert_eq!(
            ci.claim("c", &new, None).unwrap_err().reason(),
            Some("not-approved"),
            "{backend}"
        );
        approve_both(&server, &repo, "c");
        let grant = ci.claim("c", &new, None).unwrap();
        assert_eq!(
            grant.step, "s1",
            "{backend}: a new revision runs from its first step"
        );
    }
}

#[test]
fn completed_is_final_and_an_edit_after_it_never_runs() {
    for backend in db::BACKENDS {
        let repo = repo_with(&[("s1", "./s1.sh")]);
        repo.write(
            "changes/d.yaml",
            "title: d\nkind: config\ntargets: [db]\ndepends_on: [c]\nsteps:\n  - id: only\n    run: ./s2.sh\n",
        );
        repo.commit("dependent d");
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve_both(&server, &repo, "c");
        let old = digest(&repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(exec_out(&repo, &server, &runs).status.code(), Some(0));
        assert_eq!(status(&server, "c")["state"], "completed");
        // Rewritten on main: new command, new target.
        repo.write(
            "changes/c.yaml",
            "title: t\nkind: config\ntargets: [other]\nsteps:\n  - id: s1\n    run: ./s2-new.sh\n",
        );
        repo.commit("rewrite c");
        let new = digest(&repo, "c");
        wait_for(
            || status(&server, "c")["main_digest"] == new.as_str(),
            "main re-read",
        );
        let s = status(&server, "c");
        assert_eq!(s["state"], "completed", "{backend}");
        assert_eq!(
            s["digest"],
            old.as_str(),
            "{backend}: completed at the digest that ran"
        );
        assert!(
            s["warnings"]
                .as_array()
                .unwrap()
                .contains(&"edited-after-completion".into()),
            "{s}"
        );
        approve_both(&server, &repo, "c");
        assert_eq!(
            client(&server, "ci")
                .claim("c", &new, None)
                .unwrap_err()
                .reason(),
            Some("completed"),
            "{backend}"
        );
        // Dependents are satisfied by the completed revision.
        approve_both(&server, &repo, "d");
        client(&server, "ci")
            .claim("d", &digest(&repo, "d"), None)
            .unwrap();
    }
}

#[test]
fn a_completed_change_deleted_and_re_added_does_not_run_its_new_content() {
    for backend in db::BACKENDS {
        let repo = repo_with(&[("s1", "./s1.sh")]);
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve_both(&server, &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(exec_out(&repo, &server, &runs).status.code(), Some(0));
        repo.remove("changes/c.yaml");
        repo.commit("delete c");
        wait_for(
            || {
                status(&server, "c")["main_digest"].is_null()
                    && status(&server, "c")["warnings"].as_array().unwrap().len() == 1
            },
            "main re-read",
        );
        repo.write(
            "changes/c.yaml",
            change_text(&[("other", "./s2-new.sh")], ""),
        );
        repo.commit("re-add c with other content");
        let new = digest(&repo, "c");
        wait_for(
            || status(&server, "c")["main_digest"] == new.as_str(),
            "main re-read",
        );
        approve_both(&server, &repo, "c");
        assert_eq!(
            client(&server, "ci")
                .claim("c", &new, None)
                .unwrap_err()
                .reason(),
            Some("completed"),
            "{backend}"
        );
    }
}

#[test]
fn a_failed_change_deleted_from_main_keeps_its_locks_until_abandoned() {
    for backend in db::BACKENDS {
        let repo = repo_with(&[("s1", "./fail.sh")]);
        repo.write("changes/e.yaml", change_text(&[("only", "./s1.sh")], ""));
        repo.commit("e on the same target");
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve_both(&server, &repo, "c");
        approve_both(&server, &repo, "e");
        let runs = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(exec_out(&repo, &server, &runs).status.code(), Some(1));
        repo.remove("changes/c.yaml");
        repo.commit("delete the failed change");
        wait_for(
            || {
                status(&server, "c")["main_digest"].is_null()
                    && status(&server, "c")["warnings"].as_array().unwrap().len() == 1
            },
            "main re-read",
        );
        let s = status(&server, "c");
        assert_eq!(
            s["state"], "failed",
            "{backend}: still listed, still failed: {s}"
        );
        let listed = client(&server, "alice").changes().unwrap();
        assert!(
            listed.as_array().unwrap().iter().any(|c| c["id"] == "c"),
            "{backend}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "e"),
            "locked",
            "{backend}: web stays locked"
        );
        client(&server, "bob")
            .abandon("c", "the file is gone; cleaning up")
            .unwrap();
        client(&server, "ci")
            .claim("e", &digest(&repo, "e"), None)
            .unwrap();
    }
}

#[test]
fn an_abandoned_id_runs_again_with_new_content_and_new_approvals() {
    for backend in db::BACKENDS {
        let repo = repo_with(&[("s1", "./fail.sh")]);
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        approve_both(&server, &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(exec_out(&repo, &server, &runs).status.code(), Some(1));
        client(&server, "bob")
            .abandon("c", "wrong approach")
            .unwrap();
        repo.write("changes/c.yaml", change_text(&[("s1", "./s1.sh")], ""));
        repo.commit("a better approach");
        let new = digest(&repo, "c");
        wait_for(
            || status(&server, "c")["digest"] == new.as_str(),
            "main re-read",
        );
        assert_eq!(
            status(&server, "c")["state"],
            "proposed",
            "{backend}: a new revision"
        );
        approve_both(&server, &repo, "c");
        assert_eq!(
            exec_out(&repo, &server, &runs).status.code(),
            Some(0),
            "{backend}"
        );
        assert_eq!(status(&server, "c")["state"], "completed", "{backend}");
    }
}

#[test]
fn editing_kind_does_not_move_a_change_out_of_its_policy() {
    for backend in db::BACKENDS {
        let repo = TestRepo::new();
        script(&repo, "upgrade.sh", "true");
        script(&repo, "drop.sh", "echo dropping the old database");
        repo.write(
            "policies/pg.yaml",
            "match:\n  kinds: [postgres-upgrade]\napprovals:\n  required: 2\n  from: [alice, bob]\n",
        );
        repo.write(
            "changes/c.yaml",
            "title: t\nkind: postgres-upgrade\ntargets: [db]\nsteps:\n  - id: only\n    run: ./upgrade.sh\n",
        );
        repo.commit_as("an upgrade", "Carol", "carol@example.com");
        let (server, _db) = start(&repo, backend, "refresh_secs = 1");
        // Relabelled on main, with a destructive command.
        repo.write(
            "changes/c.yaml",
            "title: t\nkind: config\ntargets: [db]\nsteps:\n  - id: only\n    run: ./drop.sh\n",
        );
        repo.commit("just a config change");
        wait_for(
            || status(&server, "c")["digest"] == digest(&repo, "c").as_str(),
            "main re-read",
        );
        // A second, trivial edit must not shed the policy either.
        repo.write(
            "changes/c.yaml",
            "title: t2\nkind: config\ntargets: [db]\nsteps:\n  - id: only\n    run: ./drop.sh\n",
        );
        repo.commit("retitle");
        let new = digest(&repo, "c");
        wait_for(
            || status(&server, "c")["digest"] == new.as_str(),
            "main re-read",
        );
        approve(&server, "dave", &repo, "c");
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "not-approved",
            "{backend}"
        );
        let policies = status(&server, "c")["approvals"]["policies"].clone();
        assert_eq!(policies[0]["name"], "pg", "{backend}: {policies}");
    }
}
