//! Policy edits are reviewed like changes (SPEC §13): a pull request that
//! loosens its own policy does not govern anything once merged unless the
//! policy's approvers in force approved that edit; every tracked pull
//! request carries the aggregate `changegate` status.

mod common;

use common::gate_fixture::*;
use common::github::*;
use common::server::Server;
use common::{db, TestRepo};
use serde_json::{json, Value};

const STRICT: &str = "approvals:\n  required: 2\n";

fn change(title: &str) -> String {
    format!(
        "title: {title}\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: \"true\"\n"
    )
}

/// `main` with the strict policy and a change `old` already merged.
fn origin() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("policies/p.yaml", STRICT);
    repo.write("changes/old.yaml", change("old"));
    repo.commit("main");
    repo
}

fn state(server: &Server, id: &str) -> (String, u64, u64) {
    let (code, s) = server.get(&format!("/api/v1/changes/{id}"), Some("alice-token"));
    assert_eq!(code, 200, "{s}");
    let tally = &s["approvals"]["policies"][0];
    (
        s["state"].as_str().unwrap().to_string(),
        tally["counted"].as_u64().unwrap(),
        tally["required"].as_u64().unwrap(),
    )
}

fn firing_policy_alerts(server: &Server) -> Vec<Value> {
    client(server, "alice")
        .alerts()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "policy-unapproved" && a["state"] == "firing")
        .cloned()
        .collect()
}

fn page(server: &Server) -> String {
    reqwest::blocking::Client::new()
        .get(format!("{}/", server.url))
        .bearer_auth("alice-token")
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn merge(repo: &TestRepo, server: &Server, github: &FakeGithub, number: u64, pr: &Value) {
    let before = repo.main_tip();
    let merged = repo.merge_pr(number);
    let mut closed = pr.clone();
    closed["state"] = json!("closed");
    closed["merged"] = json!(true);
    github
        .state
        .lock()
        .unwrap()
        .pulls
        .insert(number, closed.clone());
    deliver_pr(
        server,
        &format!("pr{number}-closed"),
        "closed",
        &closed,
        "carol-gh",
    );
    deliver_signed(
        server,
        "push",
        &format!("push-{number}"),
        &push_event(before, merged),
    );
}

#[test]
fn a_pull_request_that_loosens_its_own_policy_does_not_govern_after_merge() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin();
        let base = repo.main_tip();
        let (server, _db) = start_server(&repo, backend, &github);
        // `old` was approved once under the strict policy, through the API.
        approve(&server, "alice", &repo, "old");
        assert_eq!(
            state(&server, "old"),
            ("proposed".into(), 1, 2),
            "{backend}"
        );

        // PR #2 adds `e` and lowers `required` to 1, with one approval.
        let head = repo.push_to_pr(
            2,
            &[
                ("changes/e.yaml", &change("e")),
                ("policies/p.yaml", "approvals:\n  required: 1\n"),
            ],
            "carol",
        );
        let pr = pull(2, head, base, "carol-gh");
        github.state.lock().unwrap().pulls.insert(2, pr.clone());
        deliver_pr(&server, "pr2", "opened", &pr, "carol-gh");
        let r = review(21, "bob-gh", "approved", head, 2_000);
        deliver_review(&server, "r21", "submitted", &pr, &r);
        wait_status_containing(
            &github,
            head,
            "changegate/policies",
            "pending",
            "policy edit needs the approvers in force: policies/p.yaml 1 of 2",
        );
        wait_status_containing(
            &github,
            head,
            "changegate/e",
            "pending",
            "1 of 2 approvals (policy p)",
        );
        wait_status_containing(
            &github,
            head,
            "changegate",
            "pending",
            "changegate/policies:",
        );

        // Merged with one approval: the strict text stays in force.
        merge(&repo, &server, &github, 2, &pr);
        wait_for(
            || firing_policy_alerts(&server).len() == 1,
            &format!("{backend}: the unapproved policy revision alerts"),
        );
        assert_eq!(state(&server, "e"), ("proposed".into(), 1, 2), "{backend}");
        assert_eq!(
            state(&server, "old"),
            ("proposed".into(), 1, 2),
            "{backend}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "e"),
            "not-approved",
            "{backend}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "old"),
            "not-approved",
            "{backend}"
        );
        wait_status_containing(
            &github,
            head,
            "changegate/policies",
            "failure",
            "merged without approval: the last approved text of policies/p.yaml stays in force",
        );
        let html = page(&server);
        assert!(
            html.contains("Policy edits not in force") && html.contains("policies/p.yaml"),
            "{backend}: the page says so"
        );
        let audit = server.get("/api/v1/audit", Some("alice-token")).1;
        let kinds: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"policies.baseline"), "{backend}: {kinds:?}");
        assert!(kinds.contains(&"policy.unapproved"), "{backend}: {kinds:?}");

        // A policy-only PR, approved by two reviewers as the strict text in
        // force requires, gets both statuses and takes effect once merged.
        let head3 = repo.push_to_pr(
            3,
            &[("policies/p.yaml", "# reviewed\napprovals:\n  required: 1\n")],
            "carol",
        );
        let pr3 = pull(3, head3, repo.main_tip(), "carol-gh");
        github.state.lock().unwrap().pulls.insert(3, pr3.clone());
        deliver_pr(&server, "pr3", "opened", &pr3, "carol-gh");
        wait_status_containing(
            &github,
            head3,
            "changegate/policies",
            "pending",
            "policies/p.yaml 0 of 2",
        );
        wait_status_containing(
            &github,
            head3,
            "changegate",
            "pending",
            "changegate/policies:",
        );
        // Carol, the author, does not count for her own policy edit.
        for (id, who, at) in [
            (31, "carol-gh", 3_000),
            (32, "alice-gh", 3_010),
            (33, "bob-gh", 3_020),
        ] {
            deliver_review(
                &server,
                &format!("r{id}"),
                "submitted",
                &pr3,
                &review(id, who, "approved", head3, at),
            );
        }
        wait_status_containing(
            &github,
            head3,
            "changegate/policies",
            "success",
            "policy edit approved: policies/p.yaml 2 of 2",
        );
        wait_status_containing(&github, head3, "changegate", "success", "all 1 approved");
        merge(&repo, &server, &github, 3, &pr3);
        wait_for(
            || state(&server, "e") == ("ready".into(), 1, 1),
            &format!("{backend}: the approved text is in force"),
        );
        wait_for(
            || firing_policy_alerts(&server).is_empty(),
            &format!("{backend}: the alert resolves"),
        );
        assert!(
            !page(&server).contains("Policy edits not in force"),
            "{backend}"
        );
    }
}

#[test]
fn a_pull_request_that_touches_nothing_still_gets_the_aggregate_status() {
    let github = FakeGithub::start();
    let repo = origin();
    let base = repo.main_tip();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let head = repo.push_to_pr(4, &[("README", "docs only\n")], "carol");
    let pr = pull(4, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(4, pr.clone());
    deliver_pr(&server, "pr4", "opened", &pr, "carol-gh");
    wait_status_containing(
        &github,
        head,
        "changegate",
        "success",
        "touches no change set or policy",
    );
    assert!(github
        .statuses(&head.to_string(), "changegate/policies")
        .is_empty());
}

#[test]
fn approving_a_commit_that_never_had_the_file_does_not_approve_its_deletion() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin();
        let m0 = repo.main_tip();
        // PR #6 starts before `freeze.yaml` exists and adds a change.
        let c1 = repo.push_to_pr(6, &[("changes/e.yaml", &change("e"))], "carol");
        repo.write("policies/freeze.yaml", STRICT);
        let m1 = repo.commit("freeze");
        let (server, _db) = start_server(&repo, backend, &github);
        let pr = pull(6, c1, m1, "carol-gh");
        github.state.lock().unwrap().pulls.insert(6, pr.clone());
        deliver_pr(&server, "pr6", "opened", &pr, "carol-gh");
        for (id, who, at) in [(61, "alice-gh", 6_000), (62, "bob-gh", 6_010)] {
            deliver_review(
                &server,
                &format!("r{id}"),
                "submitted",
                &pr,
                &review(id, who, "approved", c1, at),
            );
        }
        wait_status_containing(&github, c1, "changegate/e", "success", "approved");
        // Then the branch takes main in, and deletes `freeze.yaml`: the two
        // approvals were of a commit that never had it, not of its deletion.
        let git = &repo.repo;
        let mut index = git2::Index::new().unwrap();
        index
            .read_tree(&git.find_commit(m1).unwrap().tree().unwrap())
            .unwrap();
        index
            .remove_path(std::path::Path::new("policies/freeze.yaml"))
            .unwrap();
        let e = git
            .find_commit(c1)
            .unwrap()
            .tree()
            .unwrap()
            .get_path(std::path::Path::new("changes/e.yaml"))
            .unwrap();
        index
            .add(&git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: 0,
                id: e.id(),
                flags: 0,
                flags_extended: 0,
                path: b"changes/e.yaml".to_vec(),
            })
            .unwrap();
        let tree = git.find_tree(index.write_tree_to(git).unwrap()).unwrap();
        let sig = git2::Signature::now("carol", "carol@example.com").unwrap();
        let parents = [&git.find_commit(c1).unwrap(), &git.find_commit(m1).unwrap()];
        let c2 = git
            .commit(
                None,
                &sig,
                &sig,
                "merge main; drop the freeze",
                &tree,
                &parents,
            )
            .unwrap();
        git.reference("refs/pull/6/head", c2, true, "pull request head")
            .unwrap();
        git.reference("refs/heads/pr-6", c2, true, "pull request branch")
            .unwrap();
        let pr = pull(6, c2, m1, "carol-gh");
        github.state.lock().unwrap().pulls.insert(6, pr.clone());
        deliver_pr(&server, "pr6-sync", "synchronize", &pr, "carol-gh");
        wait_status_containing(
            &github,
            c2,
            "changegate/policies",
            "pending",
            "policy edit needs the approvers in force: policies/freeze.yaml 0 of 2",
        );
        wait_status_containing(&github, c2, "changegate", "pending", "changegate/policies:");
        let _ = m0;
    }
}

#[test]
fn restoring_an_older_approved_text_needs_fresh_approvals() {
    let github = FakeGithub::start();
    let repo = origin();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let loose = "approvals:\n  required: 1\n";
    // Two reviewed edits: loosen (PR #2, reviewed a minute ago), then
    // tighten again (PR #3, reviewed now).
    let started = now();
    for (number, text) in [(2u64, loose), (3, "approvals:\n  required: 2\n")] {
        let mut at = if number == 2 { started - 60 } else { now() + 1 };
        let head = repo.push_to_pr(number, &[("policies/p.yaml", text)], "carol");
        let pr = pull(number, head, repo.main_tip(), "carol-gh");
        github
            .state
            .lock()
            .unwrap()
            .pulls
            .insert(number, pr.clone());
        deliver_pr(&server, &format!("pr{number}"), "opened", &pr, "carol-gh");
        for who in ["alice-gh", "bob-gh"] {
            at += 1;
            let id = number * 10 + at % 10;
            deliver_review(
                &server,
                &format!("r{id}"),
                "submitted",
                &pr,
                &review(id, who, "approved", head, at),
            );
        }
        wait_status_containing(
            &github,
            head,
            "changegate/policies",
            "success",
            "policy edit approved",
        );
        merge(&repo, &server, &github, number, &pr);
        wait_for(
            || {
                let audit = server.get("/api/v1/audit", Some("alice-token")).1;
                audit
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["kind"] == "policy.approved")
                    .count()
                    == (number - 1) as usize
            },
            &format!("PR #{number}'s text in force"),
        );
    }
    // PR #4 restores the loose text byte for byte: the approvals PR #2 got
    // for that text were given before the strict one took effect.
    let head = repo.push_to_pr(4, &[("policies/p.yaml", loose)], "carol");
    let pr = pull(4, head, repo.main_tip(), "carol-gh");
    github.state.lock().unwrap().pulls.insert(4, pr.clone());
    deliver_pr(&server, "pr4", "opened", &pr, "carol-gh");
    wait_status_containing(
        &github,
        head,
        "changegate/policies",
        "pending",
        "policy edit needs the approvers in force: policies/p.yaml 0 of 2",
    );
}
