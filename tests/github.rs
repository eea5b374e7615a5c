//! Approval through GitHub pull request reviews, end to end: a real git
//! origin with `refs/pull/N/head`, a real `changegate serve`, signed
//! deliveries built from the shared fixtures, and a fake GitHub REST API.

mod common;

use changegate::store::Store;
use common::gate_fixture::*;
use common::github::*;
use common::server::{self, Server};
use common::{db, TestRepo};
use serde_json::{json, Value};

const POLICY_TWO: &str = "approvals:\n  required: 2\n";

fn change(title: &str, script: &str) -> String {
    format!(
        "title: {title}\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: {script}\n"
    )
}

/// `main` with one policy and two scripts; nothing to approve yet.
fn origin(policy: &str) -> TestRepo {
    let repo = TestRepo::new();
    for (name, body) in [
        ("ok.sh", "echo ran >> \"$RUNS\"\n"),
        ("fail.sh", "echo ran >> \"$RUNS\"\nexit 3\n"),
    ] {
        repo.write(name, format!("#!/bin/sh\n{body}"));
        std::fs::set_permissions(
            repo.path().join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    repo.write("policies/p.yaml", policy);
    repo.write("README", "infra\n");
    repo.commit("main");
    repo
}

fn status(server: &Server, id: &str) -> Value {
    let (code, body) = server.get(&format!("/api/v1/changes/{id}"), Some("alice-token"));
    assert_eq!(code, 200, "{body}");
    body
}

fn summary(server: &Server, id: &str) -> (String, u64) {
    let s = status(server, id);
    (
        s["state"].as_str().unwrap().to_string(),
        s["approvals"]["policies"][0]["counted"].as_u64().unwrap(),
    )
}

/// Waits until `id` is in `state` with `counted` approvals.
fn wait_state(server: &Server, id: &str, state: &str, counted: u64) {
    wait_for(
        || {
            let (code, body) = server.get(&format!("/api/v1/changes/{id}"), Some("alice-token"));
            code == 200
                && body["state"] == state
                && body["approvals"]["policies"][0]["counted"] == counted
        },
        &format!("`{id}` {state} with {counted} approvals"),
    );
}

fn wait_status(github: &FakeGithub, sha: git2::Oid, context: &str, state: &str, text: &str) {
    let what = format!("status {state} \"{text}\" on {sha}");
    wait_status_where(github, sha, context, &what, |s, d| s == state && d == text);
}

/// The review events of one review id in the audit log.
fn audited_reviews(server: &Server, review: u64) -> usize {
    server
        .get("/api/v1/audit", Some("alice-token"))
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "github.review" && e["data"]["review"] == review)
        .count()
}

#[test]
fn reviews_on_a_pull_request_approve_the_digest_at_its_head() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_TWO);
        let base = repo.main_tip();
        let (server, _db) = start_server(&repo, backend, &github);
        let ctx = "changegate/d";

        // Carol opens PR #1 adding change `d`.
        let head1 = repo.push_to_pr(1, &[("changes/d.yaml", &change("d", "./fail.sh"))], "carol");
        let mut pr = pull(1, head1, base, "carol-gh");
        github.state.lock().unwrap().pulls.insert(1, pr.clone());
        deliver_pr(&server, "pr1-opened", "opened", &pr, "carol-gh");
        wait_state(&server, "d", "proposed", 0);
        wait_status(
            &github,
            head1,
            ctx,
            "pending",
            "0 of 2 approvals (policy p)",
        );

        // The author's own approval does not count.
        let r = review(11, "carol-gh", "approved", head1, 1_000);
        deliver_review(&server, "r11", "submitted", &pr, &r);
        wait_for(
            || reviews(&server, "d").len() == 1,
            "carol's review recorded",
        );
        assert_eq!(
            reviews(&server, "d"),
            vec![("carol".into(), false, "author".into())],
            "{backend}"
        );

        // Erin pushes an unrelated file; she is now an author too.
        let head2 = repo.push_to_pr(1, &[("docs/notes.md", "notes\n")], "erin");
        pr = pull(1, head2, base, "carol-gh");
        deliver_pr(&server, "pr1-sync1", "synchronize", &pr, "erin-gh");
        let r = review(12, "erin-gh", "approved", head2, 1_010);
        deliver_review(&server, "r12", "submitted", &pr, &r);
        // Alice approves the first commit: the later unrelated push leaves it standing.
        let r = review(13, "alice-gh", "approved", head1, 1_020);
        deliver_review(&server, "r13", "submitted", &pr, &r);
        wait_for(
            || reviews(&server, "d").len() == 3,
            "three reviews recorded",
        );
        let seen = reviews(&server, "d");
        assert!(
            seen.contains(&("erin-gh".into(), false, "author".into())),
            "{backend}: a pusher does not approve: {seen:?}"
        );
        assert!(
            seen.contains(&("alice-gh".into(), true, "".into())),
            "{backend}: {seen:?}"
        );
        assert_eq!(summary(&server, "d"), ("proposed".into(), 1));
        wait_status(
            &github,
            head2,
            ctx,
            "pending",
            "1 of 2 approvals (policy p)",
        );

        // Carol changes `d` itself: Alice's approval is now of another digest.
        let head3 = repo.push_to_pr(
            1,
            &[("changes/d.yaml", &change("d, retitled", "./fail.sh"))],
            "carol",
        );
        pr = pull(1, head3, base, "carol-gh");
        github.state.lock().unwrap().pulls.insert(1, pr.clone());
        deliver_pr(&server, "pr1-sync2", "synchronize", &pr, "carol-gh");
        wait_state(&server, "d", "proposed", 0);
        assert!(reviews(&server, "d").contains(&("alice-gh".into(), false, "stale-digest".into())));

        // Two fresh approvals at the head approve it.
        for (id, who, at) in [(14, "alice-gh", 1_030), (15, "bob-gh", 1_040)] {
            let r = review(id, who, "approved", head3, at);
            deliver_review(&server, &format!("r{id}"), "submitted", &pr, &r);
        }
        wait_state(&server, "d", "approved", 2);
        wait_status(
            &github,
            head3,
            ctx,
            "success",
            "approved: 2 of 2 approvals (policy p)",
        );

        // Dave requests changes: blocked until that review is dismissed.
        let dave = review(16, "dave-gh", "changes_requested", head3, 1_050);
        deliver_review(&server, "r16", "submitted", &pr, &dave);
        wait_state(&server, "d", "proposed", 2);
        wait_status(
            &github,
            head3,
            ctx,
            "pending",
            "changes requested by dave-gh; 2 of 2 approvals (policy p)",
        );
        deliver_review(&server, "r16-dismissed", "dismissed", &pr, &dave);
        wait_state(&server, "d", "approved", 2);

        // A dismissed approval no longer counts.
        let bob = review(15, "bob-gh", "approved", head3, 1_040);
        deliver_review(&server, "r15-dismissed", "dismissed", &pr, &bob);
        wait_state(&server, "d", "proposed", 1);
        assert!(reviews(&server, "d").contains(&("bob-gh".into(), false, "dismissed".into())));
        let again = review(17, "bob-gh", "approved", head3, 1_060);
        let body = review_event("submitted", &pr, &again);
        deliver_signed(&server, "pull_request_review", "r17", &body);
        wait_state(&server, "d", "approved", 2);

        // A redelivery is acknowledged and not applied twice.
        assert_eq!(
            deliver(&server, "pull_request_review", "r17", &body, &sign(&body)),
            200
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert_eq!(audited_reviews(&server, 17), 1, "{backend}");

        // Merged: the approvals bind to the same digest on main, so `d` is ready.
        let before = repo.main_tip();
        let merged = repo.merge_pr(1);
        let mut closed = pr.clone();
        closed["state"] = json!("closed");
        closed["merged"] = json!(true);
        github.state.lock().unwrap().pulls.insert(1, closed.clone());
        deliver_pr(&server, "pr1-closed", "closed", &closed, "carol-gh");
        deliver_signed(&server, "push", "push-main", &push_event(before, merged));
        wait_state(&server, "d", "ready", 2);
        wait_status(
            &github,
            head3,
            ctx,
            "success",
            "approved; ready to run (1 steps)",
        );

        // The step fails: the status on the pull request says so.
        let runs = tempfile::tempdir().unwrap();
        let out = exec_command(&repo, &server, "d", &runs.path().join("runs"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        wait_status(
            &github,
            head3,
            ctx,
            "failure",
            "step only failed; dependents refused until retry or abandon",
        );
    }
}

#[test]
fn the_default_branchs_policies_and_teams_decide_not_the_pull_requests() {
    let github = FakeGithub::start();
    github
        .state
        .lock()
        .unwrap()
        .teams
        .insert("acme/dba".into(), ["alice-gh".to_string()].into());
    let repo = origin("approvals:\n  required: 1\n  from: [\"team:acme/dba\"]\n");
    let base = repo.main_tip();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    // The PR adds `e` and loosens the policy to anyone: that is not in force.
    let head = repo.push_to_pr(
        2,
        &[
            ("changes/e.yaml", &change("e", "./ok.sh")),
            ("policies/p.yaml", "approvals:\n  required: 1\n"),
        ],
        "carol",
    );
    let pr = pull(2, head, base, "carol-gh");
    deliver_pr(&server, "pr2", "opened", &pr, "carol-gh");
    let r = review(21, "bob-gh", "approved", head, 2_000);
    deliver_review(&server, "r21", "submitted", &pr, &r);
    wait_for(
        || server.get("/api/v1/changes/e", Some("alice-token")).0 == 200,
        &format!("`e` proposed: {}", server.log()),
    );
    wait_for(|| reviews(&server, "e").len() == 1, "bob's review recorded");
    assert_eq!(
        reviews(&server, "e"),
        vec![("bob-gh".into(), false, "not-eligible".into())]
    );
    assert_eq!(summary(&server, "e"), ("proposed".into(), 0));
    let r = review(22, "alice-gh", "approved", head, 2_010);
    deliver_review(&server, "r22", "submitted", &pr, &r);
    wait_state(&server, "e", "approved", 1);
    assert!(
        !github
            .requests("GET /orgs/acme/teams/dba/memberships/bob-gh")
            .is_empty(),
        "membership is looked up through the API"
    );
    wait_status(
        &github,
        head,
        "changegate/e",
        "success",
        "approved: 1 of 1 approvals (policy p)",
    );
}

#[test]
fn sync_repairs_missed_webhooks_through_paginated_rate_limited_lists() {
    let github = FakeGithub::start();
    let repo = origin(POLICY_TWO);
    let base = repo.main_tip();
    let (mut server, _database) = start_server(&repo, "sqlite", &github);
    // The server reconciles once at start; wait for it, then stop it, so
    // only `changegate sync` talks to GitHub below.
    wait_for(
        || !github.requests("GET /repos/acme/infra/pulls").is_empty(),
        "the startup sync",
    );
    assert!(server.terminate().success());
    let head = repo.push_to_pr(3, &[("changes/f.yaml", &change("f", "./ok.sh"))], "carol");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    {
        let mut gh = github.state.lock().unwrap();
        gh.max_per_page = 2;
        gh.pulls.insert(3, pull(3, head, base, "carol-gh"));
        // Five reviews that no webhook ever delivered: three pages of two.
        gh.reviews.insert(
            3,
            vec![
                review(31, "carol-gh", "approved", head, 3_000),
                review(32, "dave-gh", "approved", head, 3_010),
                review(33, "alice-gh", "approved", head, 3_020),
                review(34, "erin-gh", "commented", head, 3_030),
                review(35, "bob-gh", "approved", head, 3_040),
            ],
        );
        // Dave pushed a commit to it; no `synchronize` ever said so.
        gh.commits.insert(
            3,
            vec![
                commit(head, "carol-gh", "carol-gh"),
                commit(head, "dave-gh", "web-flow"),
            ],
        );
        gh.forced.push_back(Forced {
            prefix: "GET /repos/acme/infra/pulls/3/reviews".into(),
            status: 403,
            headers: vec![
                ("x-ratelimit-limit".into(), "5000".into()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), (now + 2).to_string()),
            ],
        });
        gh.forced.push_back(Forced {
            prefix: "GET /repos/acme/infra/pulls/3/commits".into(),
            status: 502,
            headers: vec![],
        });
        gh.forced.push_back(Forced {
            prefix: "POST /repos/acme/infra/statuses".into(),
            status: 429,
            headers: vec![("retry-after".into(), "1".into())],
        });
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"))
        .arg("--config")
        .arg(server.config_path())
        .arg("sync")
        .env("CG_TEST_GH_TOKEN", API_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "1 open pull requests; 1 updated; 2 authors added; 5 reviews added, 0 updated"
        ),
        "{}",
        text(&out)
    );
    // Page 1 was refused by the rate limit and asked again after the reset;
    // then pages 2 and 3 followed the Link header.
    let pages = github.requests("GET /repos/acme/infra/pulls/3/reviews");
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert!(
        pages[1].1 >= (now as i64 + 2) * 1000,
        "retried only after the reset: {pages:?}"
    );
    assert!(
        pages[2].0.contains("page=2") && pages[3].0.contains("page=3"),
        "{pages:?}"
    );
    assert_eq!(
        github
            .requests("GET /repos/acme/infra/pulls/3/commits")
            .len(),
        2,
        "a 502 is retried"
    );
    let posts = github.requests("POST /repos/acme/infra/statuses");
    assert!(
        posts.len() >= 2 && posts[1].1 - posts[0].1 >= 1000,
        "429 retried after Retry-After: {posts:?}"
    );
    assert_eq!(
        github
            .statuses(&head.to_string(), "changegate/f")
            .last()
            .unwrap(),
        &(
            "success".to_string(),
            "approved: 2 of 2 approvals (policy p)".to_string()
        )
    );
    // The server sees what sync recorded.
    server.restart();
    wait_for(
        || server.get("/api/v1/changes/f", Some("alice-token")).0 == 200,
        "f known to the server",
    );
    // Write access is looked up again by the restarted server's worker.
    wait_for(
        || reviews(&server, "f").iter().filter(|r| r.1).count() == 2,
        "dave's and bob's reviews count once their write access is known",
    );
    let seen = reviews(&server, "f");
    assert!(
        seen.contains(&("carol".into(), false, "author".into())),
        "{seen:?}"
    );
}

#[test]
fn a_delivery_acknowledged_before_a_crash_is_applied_after_restart() {
    let github = FakeGithub::start();
    let repo = origin(POLICY_TWO);
    let base = repo.main_tip();
    let (mut server, database) = start_server(&repo, "sqlite", &github);
    // The head is not fetchable yet, so the delivery waits in the inbox.
    let head = repo.push_to_pr(4, &[("changes/g.yaml", &change("g", "./ok.sh"))], "carol");
    repo.repo
        .find_reference("refs/pull/4/head")
        .unwrap()
        .delete()
        .unwrap();
    let pr = pull(4, head, base, "carol-gh");
    deliver_pr(&server, "pr4", "opened", &pr, "carol-gh");
    let outcomes = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            Store::connect(&database.url)
                .await
                .unwrap()
                .delivery_outcomes()
                .await
                .unwrap()
        })
    };
    wait_for(
        || outcomes().first().is_some_and(|o| o.2 >= 1),
        "a failed first attempt",
    );
    let (_, outcome, _, error) = outcomes().remove(0);
    assert_eq!(outcome, None, "still waiting to be applied");
    assert!(error.is_some_and(|e| e.contains(&head.to_string()[..7]) || e.contains("revision")));
    server.kill9();
    repo.repo
        .reference("refs/pull/4/head", head, true, "push")
        .unwrap();
    server.restart();
    wait_for(
        || server.get("/api/v1/changes/g", Some("alice-token")).0 == 200,
        "the delivery applied after the restart",
    );
    assert_eq!(outcomes()[0].1.as_deref(), Some("applied"));
    let received = server.get("/api/v1/audit", Some("alice-token")).1;
    let applied = received
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "github.pull_request")
        .count();
    assert_eq!(applied, 1, "applied exactly once");
}

#[test]
fn a_github_app_mints_an_installation_token_and_uses_it() {
    let github = FakeGithub::start();
    {
        let mut gh = github.state.lock().unwrap();
        gh.app = Some((1234, 42));
        gh.token = "ghs_installation_token_from_the_app".into();
    }
    let repo = origin(POLICY_TWO);
    let base = repo.main_tip();
    let database = db::fresh("sqlite");
    // The plain token the other tests use is not accepted here: only the
    // installation token works, so every call below proves the App flow.
    let (section, _keys) = github.app_section();
    let server = server::start_with(repo.path(), &database.url, &tokens(), "", &section);
    let head = repo.push_to_pr(5, &[("changes/h.yaml", &change("h", "./ok.sh"))], "carol");
    let pr = pull(5, head, base, "carol-gh");
    deliver_pr(&server, "pr5", "opened", &pr, "carol-gh");
    wait_status(
        &github,
        head,
        "changegate/h",
        "pending",
        "0 of 2 approvals (policy p)",
    );
    let claims = github.state.lock().unwrap().jwt_claims.clone();
    assert!(!claims.is_empty(), "an installation token was minted");
    assert!(claims[0]["exp"].as_i64().unwrap() > claims[0]["iat"].as_i64().unwrap());
    assert!(
        !server.log().contains("ghs_installation_token_from_the_app"),
        "the token never reaches the log"
    );
}

#[test]
fn two_replicas_on_postgres_apply_each_delivery_once() {
    let github = FakeGithub::start();
    let repo = origin(POLICY_TWO);
    let base = repo.main_tip();
    let database = db::fresh("postgres");
    let start = || {
        server::start_with(
            repo.path(),
            &database.url,
            &tokens(),
            "",
            &github.config_section(),
        )
    };
    let (r1, r2) = (start(), start());
    // Seven collaborators with write access review.
    github
        .state
        .lock()
        .unwrap()
        .writers
        .extend((0..7).map(|i| format!("reviewer-{i}")));
    let head = repo.push_to_pr(6, &[("changes/k.yaml", &change("k", "./ok.sh"))], "carol");
    let pr = pull(6, head, base, "carol-gh");
    deliver_pr(&r1, "pr6", "opened", &pr, "carol-gh");
    // Forty reviews, alternately to each replica; both workers run.
    for i in 0..40u64 {
        let r = review(
            600 + i,
            &format!("reviewer-{}", i % 7),
            "approved",
            head,
            6_000 + i,
        );
        let body = review_event("submitted", &pr, &r);
        let replica = if i % 2 == 0 { &r1 } else { &r2 };
        deliver_signed(replica, "pull_request_review", &format!("r6-{i}"), &body);
    }
    let applied = |server: &Server| -> Vec<String> {
        server
            .get("/api/v1/audit", Some("alice-token"))
            .1
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "github.review" || e["kind"] == "github.pull_request")
            .filter_map(|e| e["data"]["delivery"].as_str().map(str::to_string))
            .collect()
    };
    wait_for(|| applied(&r1).len() >= 41, "every delivery applied");
    let mut seen = applied(&r2);
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(
        (before, seen.len()),
        (41, 41),
        "each delivery applied exactly once across replicas"
    );
    wait_state(&r1, "k", "approved", 7);
    assert!(r1.audit_verify().status.success());
}

// ---- Deliveries from other repositories (one App or organisation secret
// covers many): recorded as ignored, and they change nothing.

const POLICY_ONE: &str = "approvals:\n  required: 1\n";

/// (outcome, reason) of delivery `id`, once it was processed.
fn delivery_outcome(database: &db::TestDatabase, id: &str) -> Option<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        Store::connect(&database.url)
            .await
            .unwrap()
            .delivery_outcomes()
            .await
            .unwrap()
    });
    outcomes
        .into_iter()
        .find(|o| o.0 == id)
        .and_then(|(_, outcome, _, reason)| Some((outcome?, reason.unwrap_or_default())))
}

fn wait_ignored(database: &db::TestDatabase, id: &str, reason: &str) {
    wait_for(
        || delivery_outcome(database, id).is_some(),
        &format!("delivery {id} processed"),
    );
    assert_eq!(
        delivery_outcome(database, id),
        Some(("ignored".to_string(), reason.to_string())),
        "{id}"
    );
}

/// Carol's PR #7 on the configured repository, adding change `d`, opened.
fn tracked_pr(repo: &TestRepo, server: &Server, github: &FakeGithub) -> (git2::Oid, Value) {
    let base = repo.main_tip();
    let head = repo.push_to_pr(7, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
    let pr = pull(7, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(7, pr.clone());
    deliver_pr(server, "fleet-pr7-opened", "opened", &pr, "carol-gh");
    wait_state(server, "d", "proposed", 0);
    (head, pr)
}

fn website() -> Value {
    foreign_repository_json("acme/website", 9_999_001)
}

#[test]
fn a_foreign_review_on_the_same_number_and_commit_does_not_count() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let (server, database) = start_server(&repo, backend, &github);
        let (head, pr) = tracked_pr(&repo, &server, &github);

        // `outsider` approves acme/website #7 at the fleet PR's head commit.
        let r = review(71, "outsider", "approved", head, 1_000);
        let body = from_repository(&review_event("submitted", &pr, &r), &website());
        deliver_signed(&server, "pull_request_review", "website-r71", &body);
        wait_ignored(&database, "website-r71", "foreign repository acme/website");
        assert!(
            reviews(&server, "d").is_empty(),
            "{backend}: nothing recorded"
        );
        assert_eq!(summary(&server, "d"), ("proposed".into(), 0), "{backend}");
        let metrics = server.metrics();
        assert!(
            metrics.contains("changegate_webhooks_foreign_total{reason=\"foreign-repository\"} 1"),
            "{backend}: {metrics}"
        );

        // The same review on the configured repository counts.
        deliver_review(
            &server,
            "fleet-r72",
            "submitted",
            &pr,
            &review(72, "alice-gh", "approved", head, 1_001),
        );
        wait_state(&server, "d", "approved", 1);
    }
}

#[test]
fn a_foreign_close_with_the_same_number_does_not_close_the_tracked_pull_request() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let (server, database) = start_server(&repo, backend, &github);
        let (head, pr) = tracked_pr(&repo, &server, &github);

        let mut closed = pr.clone();
        closed["state"] = json!("closed");
        let body = from_repository(
            &pull_request_event("closed", &closed, "outsider"),
            &website(),
        );
        deliver_signed(&server, "pull_request", "website-pr7-closed", &body);
        wait_ignored(
            &database,
            "website-pr7-closed",
            "foreign repository acme/website",
        );

        // Still open: a review on it still counts.
        deliver_review(
            &server,
            "fleet-r73",
            "submitted",
            &pr,
            &review(73, "alice-gh", "approved", head, 1_002),
        );
        wait_state(&server, "d", "approved", 1);
    }
}

#[test]
fn a_foreign_push_to_main_fetches_nothing() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let database = db::fresh(backend);
        // No periodic refresh during the test: only a push may fetch.
        let server = server::start_with(
            repo.path(),
            &database.url,
            &tokens(),
            "refresh_secs = 3600",
            &github.config_section(),
        );
        let before = repo.main_tip();
        repo.write("changes/e.yaml", change("e", "./ok.sh"));
        let after = repo.commit("add e on main");
        wait_for(
            || !github.requests("GET /repos/acme/infra/pulls").is_empty(),
            "the start-up reconciliation",
        );
        // API calls about pull requests and the repository (the worker's
        // permission lookups run on their own schedule).
        let api_calls = || {
            github
                .requests("")
                .into_iter()
                .filter(|(r, _)| !r.contains("/collaborators/") && !r.contains("/memberships/"))
                .count()
        };
        let before_calls = api_calls();

        let body = from_repository(&push_event(before, after), &website());
        deliver_signed(&server, "push", "website-push", &body);
        wait_ignored(&database, "website-push", "foreign repository acme/website");
        // The mirror was not fetched: `e`, only on the origin's main, is unknown.
        assert_eq!(
            server.get("/api/v1/changes/e", Some("alice-token")).0,
            404,
            "{backend}"
        );
        assert_eq!(api_calls(), before_calls, "{backend}: no API call either");

        // The configured repository's push fetches it.
        deliver_signed(&server, "push", "fleet-push", &push_event(before, after));
        wait_for(
            || server.get("/api/v1/changes/e", Some("alice-token")).0 == 200,
            "the configured repository's push fetched main",
        );
    }
}

#[test]
fn a_renamed_repository_is_matched_by_its_pinned_id() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let (server, database) = start_server(&repo, backend, &github);
        wait_for(
            || !github.requests("GET /repos/acme/infra").is_empty(),
            "the id pinned from the API",
        );
        let base = repo.main_tip();
        let head = repo.push_to_pr(8, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
        let pr = pull(8, head, base, "carol-gh");
        let renamed = repository_json("acme/infra-v2");
        let body = from_repository(&pull_request_event("opened", &pr, "carol-gh"), &renamed);
        deliver_signed(&server, "pull_request", "renamed-pr8", &body);
        wait_state(&server, "d", "proposed", 0);
        assert_eq!(
            delivery_outcome(&database, "renamed-pr8").map(|o| o.0),
            Some("applied".into()),
            "{backend}"
        );
        // A different repository that took the configured name is not this one.
        let impostor = foreign_repository_json(REPOSITORY, 9_999_002);
        let r = review(81, "outsider", "approved", head, 1_000);
        let body = from_repository(&review_event("submitted", &pr, &r), &impostor);
        deliver_signed(&server, "pull_request_review", "impostor-r81", &body);
        wait_ignored(&database, "impostor-r81", "foreign repository acme/infra");
        assert_eq!(summary(&server, "d"), ("proposed".into(), 0), "{backend}");
        let pinned = server
            .get("/api/v1/audit", Some("alice-token"))
            .1
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "github.repository.pinned")
            .count();
        assert_eq!(pinned, 1, "{backend}: pinned once, and audited");
    }
}

#[test]
fn an_app_delivery_from_another_installation_is_ignored() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        {
            let mut gh = github.state.lock().unwrap();
            gh.app = Some((1234, INSTALLATION_ID));
            gh.token = "ghs_installation_token_from_the_app".into();
        }
        let repo = origin(POLICY_ONE);
        let database = db::fresh(backend);
        let (section, _keys) = github.app_section();
        let server = server::start_with(repo.path(), &database.url, &tokens(), "", &section);
        let base = repo.main_tip();
        let head = repo.push_to_pr(9, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
        let pr = pull(9, head, base, "carol-gh");
        let mut body: Value =
            serde_json::from_slice(&pull_request_event("opened", &pr, "carol-gh")).unwrap();
        body["installation"]["id"] = json!(43);
        deliver_signed(
            &server,
            "pull_request",
            "other-install",
            &serde_json::to_vec(&body).unwrap(),
        );
        wait_ignored(&database, "other-install", "foreign installation 43");
        assert_eq!(
            server.get("/api/v1/changes/d", Some("alice-token")).0,
            404,
            "{backend}"
        );
        let metrics = server.metrics();
        assert!(
            metrics
                .contains("changegate_webhooks_foreign_total{reason=\"foreign-installation\"} 1"),
            "{backend}: {metrics}"
        );

        deliver_pr(&server, "our-install", "opened", &pr, "carol-gh");
        wait_state(&server, "d", "proposed", 0);
    }
}

// ---- Revisions hygiene (SPEC §13): a pull request's base and order.

#[test]
fn a_pull_request_retargeted_away_from_main_contributes_nothing() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let base = repo.main_tip();
        let (server, database) = start_server(&repo, backend, &github);
        let content = change("d", "./ok.sh");
        let head = repo.push_to_pr(1, &[("changes/d.yaml", &content)], "carol");
        let mut pr = pull(1, head, base, "carol-gh");
        deliver_pr(&server, "pr1-opened", "opened", &pr, "carol-gh");
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "alice-gh", "approved", head, 1_000),
        );
        wait_state(&server, "d", "approved", 1);
        // Retargeted to `release`, then closed unmerged.
        pr["base"]["ref"] = json!("release");
        deliver_pr(&server, "pr1-edited", "edited", &pr, "carol-gh");
        pr["state"] = json!("closed");
        deliver_pr(&server, "pr1-closed", "closed", &pr, "carol-gh");
        wait_for(
            || delivery_outcome(&database, "pr1-closed").is_some(),
            "the close processed",
        );
        // The same content pushed straight to main needs its own approval.
        repo.write("changes/d.yaml", &content);
        let after = repo.commit("straight to main");
        deliver_signed(&server, "push", "push-main", &push_event(base, after));
        wait_for(
            || {
                server.get("/api/v1/changes/d", Some("alice-token")).1["commit"]
                    == after.to_string().as_str()
            },
            "main re-read",
        );
        assert_eq!(summary(&server, "d"), ("proposed".into(), 0), "{backend}");
    }
}

#[test]
fn a_late_synchronize_never_rewinds_the_head() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let base = repo.main_tip();
        let (server, database) = start_server(&repo, backend, &github);
        let head1 = repo.push_to_pr(2, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
        let head2 = repo.push_to_pr(2, &[("changes/d.yaml", &change("d", "./fail.sh"))], "carol");
        let at = |pr: &mut Value, when: &str| pr["updated_at"] = json!(when);
        let mut first = pull(2, head1, base, "carol-gh");
        at(&mut first, "2026-01-01T10:00:00Z");
        let mut newer = pull(2, head2, base, "carol-gh");
        at(&mut newer, "2026-01-01T10:05:00Z");
        let mut late = pull(2, head1, base, "carol-gh");
        at(&mut late, "2026-01-01T10:01:00Z");
        deliver_pr(&server, "s1", "opened", &first, "carol-gh");
        deliver_pr(&server, "s2", "synchronize", &newer, "carol-gh");
        deliver_pr(&server, "s3-late", "synchronize", &late, "mallory-gh");
        wait_for(
            || delivery_outcome(&database, "s3-late").is_some(),
            "the late delivery processed",
        );
        let stored = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                Store::connect(&database.url)
                    .await
                    .unwrap()
                    .pull_request(2)
                    .await
                    .unwrap()
                    .unwrap()
            });
        assert_eq!(stored.head_sha, head2.to_string(), "{backend}");
        // Whoever pushed is still an author, however late the news came.
        let audit = server.get("/api/v1/audit", Some("alice-token")).1;
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["data"]["delivery"] == "s3-late" && e["data"]["stale"] == true),
            "{backend}"
        );
    }
}

#[test]
fn reviews_given_while_a_pull_request_aimed_elsewhere_do_not_count_after_a_retarget_onto_main() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let base = repo.main_tip();
        let (server, _database) = start_server(&repo, backend, &github);
        let head = repo.push_to_pr(1, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
        let mut pr = pull(1, head, base, "carol-gh");
        deliver_pr(&server, "pr1-opened", "opened", &pr, "carol-gh");
        wait_for(
            || server.get("/api/v1/changes/d", Some("alice-token")).0 == 200,
            "`d` proposed",
        );
        // Aimed at `release`, Bob approves a merge there…
        pr["base"]["ref"] = json!("release");
        deliver_pr(&server, "pr1-to-release", "edited", &pr, "carol-gh");
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "bob-gh", "approved", head, 1_000),
        );
        // …then it is aimed at main: that approval is not one for main.
        pr["base"]["ref"] = json!("main");
        deliver_pr(&server, "pr1-to-main", "edited", &pr, "carol-gh");
        // While the worker applies the retargets, `d` leaves and comes back.
        wait_for(
            || {
                reviews_if_known(&server, "d")
                    == Some(vec![("bob-gh".into(), false, "dismissed".into())])
            },
            &format!("{backend}: Bob's review dismissed"),
        );
        assert_eq!(summary(&server, "d"), ("proposed".into(), 0), "{backend}");
        deliver_review(
            &server,
            "r2",
            "submitted",
            &pr,
            &review(2, "bob-gh", "approved", head, 2_000),
        );
        wait_state(&server, "d", "approved", 1);
    }
}

#[test]
fn a_head_carrying_a_tree_bomb_touches_nothing_fails_its_status_and_records_its_pusher() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin(POLICY_ONE);
        let (server, database) = start_server(&repo, backend, &github);
        let (_, pr) = tracked_pr(&repo, &server, &github);

        // Mallory pushes onto Carol's pull request a head whose `junk/`
        // names one subtree 1,000 times on each of three levels: 10^9
        // paths for the server to list, from a push of under 100 KiB.
        let bomb = repo.tree_bomb(1000, 3);
        let head = repo.push_folder_to_pr(7, "junk", Some(bomb), "mallory");
        let mut bombed = pr.clone();
        bombed["head"]["sha"] = json!(head.to_string());
        deliver_pr(
            &server,
            "fleet-pr7-bomb",
            "synchronize",
            &bombed,
            "mallory-gh",
        );
        wait_for(
            || delivery_outcome(&database, "fleet-pr7-bomb").is_some(),
            "the bomb's delivery processed",
        );
        assert_eq!(
            delivery_outcome(&database, "fleet-pr7-bomb").map(|o| o.0),
            Some("applied".to_string()),
            "{backend}"
        );
        // Recorded: the new head touches nothing, says why, and Mallory is
        // an author of the pull request all the same.
        let audit = server.get("/api/v1/audit", Some("alice-token")).1;
        let event = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["delivery"] == "fleet-pr7-bomb")
            .unwrap_or_else(|| panic!("{backend}: no audit event for the bomb"))
            .clone();
        assert_eq!(event["data"]["changes"], json!([]), "{backend}: {event}");
        let authors = event["data"]["authors"].as_array().unwrap();
        assert!(authors.contains(&json!("mallory-gh")), "{backend}: {event}");
        let refused = event["data"]["refused"].as_str().unwrap_or_default();
        assert!(
            refused.contains("more than 2000000 tree entries"),
            "{backend}: {event}"
        );
        // Its head fails the aggregate status: "touches nothing" must not
        // read as green.
        wait_for(
            || {
                github
                    .statuses(&head.to_string(), "changegate")
                    .last()
                    .is_some_and(|(state, text)| {
                        state == "failure"
                            && text.starts_with(
                                "head refused: the diff reads more than 2000000 tree entries",
                            )
                    })
            },
            "a failing status on the refused head",
        );
        // `d` is no longer proposed by this pull request, and the server
        // still answers.
        wait_for(
            || server.get("/api/v1/changes/d", Some("alice-token")).0 == 404,
            "`d` gone with the head that proposed it",
        );
        assert_eq!(server.get("/readyz", None).0, 200, "{backend}");

        // Carol takes the bomb out: `d` is proposed again.
        let clean = repo.push_folder_to_pr(7, "junk", None, "carol");
        let mut cleaned = pr.clone();
        cleaned["head"]["sha"] = json!(clean.to_string());
        deliver_pr(
            &server,
            "fleet-pr7-clean",
            "synchronize",
            &cleaned,
            "carol-gh",
        );
        wait_state(&server, "d", "proposed", 0);
        wait_for(
            || {
                github
                    .statuses(&clean.to_string(), "changegate")
                    .last()
                    .is_some_and(|(state, _)| state != "failure")
            },
            "the clean head's status no longer refused",
        );
    }
}
