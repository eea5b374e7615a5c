//! The gate end to end: real `serve`, the API client the CLI uses, and the
//! real `changegate exec` running steps in a real checkout.

mod common;

use std::time::{Duration, Instant};

use changegate::client::Client;
use common::db;
use common::gate_fixture::*;
use common::server::{self, Server};
use serde_json::Value;

#[test]
fn the_2017_incident_replayed_fails_safe() {
    for backend in db::BACKENDS {
        let repo = incident_repo();
        let (server, _db) = start(&repo, backend, "");
        let fleet = fleet_with_failing_release(&repo);
        let up = "2017-12-12-state-machine-pg10";
        let down = "2017-12-14-decommission-pg96";

        // Two peers approve; the author's own approval is refused.
        approve(&server, "carol", &repo, up);
        for who in ["alice", "bob"] {
            approve(&server, who, &repo, up);
        }
        let status = client(&server, "alice").change(up).unwrap();
        assert_eq!(status["approvals"]["reviews"][0]["approver"], "carol");
        assert_eq!(status["approvals"]["reviews"][0]["reason"], "author");
        assert_eq!(status["approvals"]["satisfied"], true);
        assert_eq!(status["state"], "ready");
        assert_eq!(status["approvals"]["policies"][1]["counted"], 2);

        for step in [
            "backup",
            "create-instance",
            "restore",
            "point-state-machine",
            "release",
        ] {
            client(&server, "alice")
                .proceed(up, step, "watched the plan")
                .unwrap();
        }
        let run = exec(repo.path(), &server, &[up, "--continue"], fleet.path());
        assert_eq!(run.status.code(), Some(1), "{}", text(&run));
        assert!(
            text(&run).contains("✘ release failed: `run` exited 1"),
            "{}",
            text(&run)
        );

        let status = client(&server, "alice").change(up).unwrap();
        assert_eq!(status["state"], "failed");
        let steps: Vec<&str> = status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            ["succeeded", "succeeded", "succeeded", "succeeded", "failed"]
        );
        assert!(status["steps"][4]["attempts"][0]["output_tail"]
            .as_str()
            .unwrap()
            .contains("pg_ctl promote timed out"));
        assert_eq!(
            status["locks"],
            serde_json::json!(["state-machine", "state-machine-db"]),
            "a failed change keeps its targets"
        );

        // Two days later: the decommission is approved, but refused.
        for who in ["alice", "bob"] {
            approve(&server, who, &repo, down);
        }
        client(&server, "alice")
            .proceed(down, "final-snapshot", "looks done")
            .unwrap();
        let run = exec(repo.path(), &server, &[down], fleet.path());
        assert_eq!(run.status.code(), Some(3), "{}", text(&run));
        assert!(
            text(&run).contains(&format!(
                "refused: dependency: dependency {up} is failed (step release, exit 1)"
            )),
            "{}",
            text(&run)
        );
        assert_eq!(
            std::fs::read_to_string(fleet.path().join("sm-pg96/role"))
                .unwrap()
                .trim(),
            "primary",
            "the old primary survives"
        );
        let audit: Value = server.get("/api/v1/audit", Some("alice-token")).1;
        let kinds: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"step.failed") && kinds.contains(&"claim.refused"),
            "{kinds:?}"
        );
        // The list (all facts read at once) says exactly what each change's own page says.
        let list = client(&server, "alice").changes().unwrap();
        for c in list.as_array().unwrap() {
            assert_eq!(
                c,
                &client(&server, "alice")
                    .change(c["id"].as_str().unwrap())
                    .unwrap(),
                "{backend}"
            );
        }
    }
}

#[test]
fn the_authors_own_approval_is_refused() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        repo.write("policies/p.yaml", "approvals:\n  required: 1\n");
        repo.write("step.sh", "#!/bin/sh\necho carol was here\n");
        repo.commit_as(
            "carol edits the script the step runs",
            "Carol",
            "carol@example.com",
        );
        let (server, _db) = start(&repo, backend, "");
        let answer = client(&server, "carol")
            .approve("c", &digest(&repo, "c"), "mine, but fine")
            .unwrap();
        assert_eq!(answer["created"], true, "the approval is recorded...");
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(
            s["approvals"]["reviews"][0]["reason"], "author",
            "{backend}: ...but never counts"
        );
        assert_eq!(s["approvals"]["satisfied"], false);
        approve(&server, "alice", &repo, "c");
        assert_eq!(
            client(&server, "alice").change("c").unwrap()["approvals"]["satisfied"],
            true
        );
    }
}

#[test]
fn an_approval_at_an_old_digest_stops_counting_when_a_covered_script_changes() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        let (mut server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        assert_eq!(
            client(&server, "alice").change("c").unwrap()["state"],
            "ready"
        );
        repo.write("step.sh", "#!/bin/sh\nrm -rf /srv\n");
        repo.commit("edit the script the step runs");
        server.restart(); // re-reads the default branch
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "proposed");
        assert_eq!(s["approvals"]["reviews"][0]["reason"], "stale-digest");
        assert_eq!(claim_reason(&server, &repo, "c"), "not-approved");
    }
}

#[test]
fn claims_are_refused_with_the_first_unmet_rule() {
    let repo = simple_repo("true", "");
    repo.write(
        "changes/wide.yaml",
        "title: w\nkind: config\ntargets: [a, b]\nsteps:\n  - id: both\n    run: ./step.sh\n",
    );
    repo.write("policies/narrow.yaml", "match:\n  targets: [a]\nexecution:\n  max_targets_per_step: 1\n  confirm_each_step: true\n");
    repo.commit("wide change");
    let (server, _db) = start(&repo, "sqlite", "");
    let ci = client(&server, "ci");
    assert_eq!(
        ci.claim("nope", "sha256:x", None).unwrap_err().reason(),
        Some("unknown")
    );
    assert_eq!(claim_reason(&server, &repo, "c"), "not-approved");
    approve(&server, "alice", &repo, "c");
    assert_eq!(
        ci.claim("c", "sha256:other", None).unwrap_err().reason(),
        Some("digest-mismatch")
    );
    approve(&server, "alice", &repo, "wide");
    assert_eq!(claim_reason(&server, &repo, "wide"), "needs-confirmation");
    client(&server, "bob")
        .proceed("wide", "both", "ok")
        .unwrap();
    assert_eq!(claim_reason(&server, &repo, "wide"), "blast-radius");
    let grant = ci.claim("c", &digest(&repo, "c"), None).unwrap();
    assert_eq!(grant.step, "only");
    assert_eq!(claim_reason(&server, &repo, "c"), "not-next");
}

#[test]
fn two_executors_racing_for_a_step_get_one_grant() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let d = digest(&repo, "c");
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let (url, d) = (server.url.clone(), d.clone());
                    s.spawn(move || {
                        Client::new(&url, if i % 2 == 0 { "ci-token" } else { "ci2-token" })
                            .claim("c", &d, None)
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|ok| **ok).count(),
            1,
            "{backend}: exactly one claim wins"
        );
    }
}

#[test]
fn two_replicas_racing_for_a_step_grant_it_once() {
    let repo = simple_repo("true", "");
    let database = db::fresh("postgres");
    let (a, b) = (
        server::start(repo.path(), &database.url, &tokens()),
        server::start(repo.path(), &database.url, &tokens()),
    );
    approve(&a, "alice", &repo, "c");
    let d = digest(&repo, "c");
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (url, d) = (
                    if i % 2 == 0 {
                        a.url.clone()
                    } else {
                        b.url.clone()
                    },
                    d.clone(),
                );
                s.spawn(move || {
                    usize::from(Client::new(&url, "ci-token").claim("c", &d, None).is_ok())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);
}

#[test]
fn a_killed_executors_step_becomes_interrupted_and_is_not_rerun() {
    for backend in db::BACKENDS {
        let repo = simple_repo("sleep 60", "");
        let (server, _db) = start(&repo, backend, "lease = \"2s\"");
        approve(&server, "alice", &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let mut child = exec_command(&repo, &server, "c", runs.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            || {
                std::fs::read_to_string(runs.path())
                    .unwrap_or_default()
                    .contains("ran")
            },
            "the step to start",
        );
        child.kill().unwrap(); // SIGKILL: no report, no more heartbeats
        child.wait().unwrap();
        wait_for(
            || client(&server, "alice").change("c").unwrap()["steps"][0]["state"] == "interrupted",
            "the lease to expire",
        );
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(
            s["state"], "failed",
            "{backend}: an interrupted step counts as a failure"
        );
        assert_eq!(claim_reason(&server, &repo, "c"), "failed");
        assert_eq!(
            std::fs::read_to_string(runs.path())
                .unwrap()
                .lines()
                .count(),
            1,
            "{backend}: never re-run automatically"
        );
        // A late report is recorded but does not un-fail the change.
        let attempt = s["steps"][0]["attempts"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let late = changegate::wire::Report {
            outcome: changegate::wire::Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 1,
            output_tail: String::new(),
        };
        let answer = client(&server, "ci").report(&attempt, &late).unwrap();
        assert_eq!(answer["change_state"], "failed");
        assert_eq!(answer["recorded"], false, "a late report changes nothing");
        assert!(answer["attempt"]["late_report"].is_string());
        // And the same report again is still idempotent.
        let again = client(&server, "ci").report(&attempt, &late).unwrap();
        assert_eq!(
            (
                again["change_state"].as_str(),
                again["attempt"]["state"].as_str()
            ),
            (Some("failed"), Some("interrupted"))
        );
    }
}

#[test]
fn a_step_that_times_out_fails_and_its_processes_are_killed() {
    let repo = simple_repo(
        "sleep 30 & echo $! > \"$RUNS.child\"; wait",
        "timeout: 1s\n",
    );
    let (server, _db) = start(&repo, "sqlite", "");
    approve(&server, "alice", &repo, "c");
    let runs = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let out = exec_command(&repo, &server, "c", runs.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout ended the step"
    );
    assert!(text(&out).contains("timed out after 1s"), "{}", text(&out));
    let pid = std::fs::read_to_string(format!("{}.child", runs.path().display())).unwrap();
    // Gone, or a zombie waiting for init: either way it no longer runs.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.split(' ').nth(2) == Some("Z"),
        "the step's background child was killed with its group: {stat}"
    );
    let s = client(&server, "alice").change("c").unwrap();
    assert_eq!(s["steps"][0]["attempts"][0]["exit_code"], 124);
}

#[test]
fn sigterm_to_exec_kills_the_step_and_reports_it_failed() {
    let repo = simple_repo("sleep 60", "");
    let (server, _db) = start(&repo, "sqlite", "");
    approve(&server, "alice", &repo, "c");
    let runs = tempfile::NamedTempFile::new().unwrap();
    let child = exec_command(&repo, &server, "c", runs.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        || {
            std::fs::read_to_string(runs.path())
                .unwrap_or_default()
                .contains("ran")
        },
        "the step to start",
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = client(&server, "alice").change("c").unwrap();
    assert_eq!(s["steps"][0]["state"], "failed");
    assert_eq!(s["steps"][0]["attempts"][0]["exit_code"], 143);
}

#[test]
fn retry_needs_a_fresh_approval_from_someone_else() {
    for backend in db::BACKENDS {
        let repo = simple_repo("test -e \"$RUNS.ok\"", "");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let run = |server: &Server| {
            exec_command(&repo, server, "c", runs.path())
                .output()
                .unwrap()
        };
        assert_eq!(run(&server).status.code(), Some(1));
        let bob = client(&server, "bob");
        assert_eq!(
            bob.retry("c", "fixed the host").unwrap_err().reason(),
            Some("needs-approval"),
            "{backend}"
        );
        approve(&server, "bob", &repo, "c");
        assert_eq!(
            bob.retry("c", "fixed the host").unwrap_err().reason(),
            Some("needs-approval"),
            "{backend}: the actor's own approval does not do"
        );
        approve(&server, "alice", &repo, "c");
        bob.retry("c", "fixed the host").unwrap();
        std::fs::write(format!("{}.ok", runs.path().display()), "").unwrap();
        let second = run(&server);
        assert_eq!(second.status.code(), Some(0), "{}", text(&second));
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "completed");
        assert_eq!(
            s["locks"],
            serde_json::json!([]),
            "completion releases the locks"
        );
        assert_eq!(s["steps"][0]["attempts"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn retry_without_approval_when_the_policy_allows_it() {
    let repo = simple_repo("false", "");
    repo.write("policies/p.yaml", "approvals:\n  required: 1\n  from: [alice, bob, dave]\nexecution:\n  retry_requires_approval: false\n");
    repo.commit("no approval for retries");
    let (server, _db) = start(&repo, "sqlite", "");
    approve(&server, "alice", &repo, "c");
    let fleet = tempfile::tempdir().unwrap();
    assert_eq!(
        exec(repo.path(), &server, &["c"], fleet.path())
            .status
            .code(),
        Some(1)
    );
    client(&server, "bob").retry("c", "flaky").unwrap();
    assert_eq!(
        client(&server, "alice").change("c").unwrap()["steps"][0]["state"],
        "pending"
    );
}

#[test]
fn abandon_releases_the_locks_and_dependents_stay_refused() {
    for backend in db::BACKENDS {
        let repo = simple_repo("false", "");
        repo.write("changes/next.yaml", "title: n\nkind: config\ntargets: [web]\ndepends_on: [c]\nsteps:\n  - id: only\n    run: ./step.sh\n");
        repo.write(
            "changes/other.yaml",
            "title: o\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n",
        );
        repo.commit("dependent and neighbour");
        let (server, _db) = start(&repo, backend, "");
        for id in ["c", "next", "other"] {
            approve(&server, "alice", &repo, id);
        }
        let fleet = tempfile::tempdir().unwrap();
        assert_eq!(
            exec(repo.path(), &server, &["c"], fleet.path())
                .status
                .code(),
            Some(1)
        );
        assert_eq!(
            claim_reason(&server, &repo, "other"),
            "locked",
            "{backend}: the failed change keeps web"
        );
        client(&server, "bob")
            .abandon("c", "rolled back by hand")
            .unwrap();
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "abandoned");
        assert_eq!(s["locks"], serde_json::json!([]));
        assert_eq!(
            claim_reason(&server, &repo, "next"),
            "dependency",
            "{backend}"
        );
        assert!(
            client(&server, "ci")
                .claim("other", &digest(&repo, "other"), None)
                .is_ok(),
            "{backend}: web is free again"
        );
        assert_eq!(claim_reason(&server, &repo, "c"), "abandoned");
    }
}

#[test]
fn a_change_is_not_abandoned_while_its_step_runs() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        repo.write(
            "changes/other.yaml",
            "title: o\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n",
        );
        repo.commit("neighbour");
        let (server, _db) = start(&repo, backend, "");
        for id in ["c", "other"] {
            approve(&server, "alice", &repo, id);
        }
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        // Abandoning now would free `web` while the step still changes it.
        let refused = client(&server, "bob").abandon("c", "stop it").unwrap_err();
        assert_eq!(
            refused.reason(),
            Some("step-running"),
            "{backend}: {refused}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "other"),
            "locked",
            "{backend}: web stays locked"
        );
        report(&server, &grant.attempt, false);
        client(&server, "bob").abandon("c", "stop it").unwrap();
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "abandoned", "{backend}");
        assert_eq!(s["locks"], serde_json::json!([]), "{backend}");
    }
}

#[test]
fn the_breaker_opens_after_three_failures_until_reset() {
    for backend in db::BACKENDS {
        let repo = simple_repo("false", "");
        for n in 1..=3 {
            repo.write(&format!("changes/f{n}.yaml"), format!("title: f\nkind: config\ntargets: [t{n}]\nsteps:\n  - id: only\n    run: ./step.sh\n"));
        }
        repo.commit("three failing changes");
        let (server, _db) = start(&repo, backend, "");
        let fleet = tempfile::tempdir().unwrap();
        for id in ["f1", "f2", "f3", "c"] {
            approve(&server, "alice", &repo, id);
        }
        for id in ["f1", "f2"] {
            assert_eq!(
                exec(repo.path(), &server, &[id], fleet.path())
                    .status
                    .code(),
                Some(1)
            );
        }
        assert_eq!(
            client(&server, "alice").breaker().unwrap()["breaker"]["state"],
            "closed"
        );
        assert_eq!(
            exec(repo.path(), &server, &["f3"], fleet.path())
                .status
                .code(),
            Some(1)
        );
        assert_eq!(
            client(&server, "alice").breaker().unwrap()["breaker"]["state"],
            "open"
        );
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "breaker-open",
            "{backend}"
        );
        assert_eq!(
            client(&server, "ci")
                .reset_breaker("x", None)
                .unwrap_err()
                .reason(),
            Some("forbidden")
        );
        client(&server, "bob")
            .reset_breaker("the three hosts were fixed", None)
            .unwrap();
        assert!(
            client(&server, "ci")
                .claim("c", &digest(&repo, "c"), None)
                .is_ok(),
            "{backend}"
        );
    }
}

#[test]
fn exec_refuses_a_dirty_checkout() {
    let repo = simple_repo("true", "");
    let (server, _db) = start(&repo, "sqlite", "");
    approve(&server, "alice", &repo, "c");
    repo.write("step.sh", "#!/bin/sh\necho not what was approved\n");
    let fleet = tempfile::tempdir().unwrap();
    let out = exec(repo.path(), &server, &["c"], fleet.path());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("dirty: covered path step.sh"),
        "{}",
        text(&out)
    );
}

#[test]
fn demo_replays_the_incident_on_the_projects_own_changes() {
    let out = common::changegate(&common::project_root(), &["demo"]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "carol, the author, approves her own change → recorded, not counted (author)",
        "approvals: 2 of 2 (policy postgres-upgrades) → the change is ready",
        "✘ release failed: `run` exited 1",
        "is refused: 409: dependency: dependency 2017-12-12-state-machine-pg10 is failed (step release, exit 1)",
        "An edit of the failed upgrade is pushed on main and approved; CI's claim of it is refused: 409: revision-in-flight: revision sha256:",
        "sm-pg96 still exists and is still the primary",
        "The failure blocked everything that should stop.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn demo_second_ending_rolls_the_upgrade_back_onto_sm_pg96() {
    let out = common::changegate(&common::project_root(), &["demo", "--rollback"]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "✘ release failed: `run` exited 1",
        "↩ rollback 1/5 of step release",
        "↩ rollback 2/5 of step point-state-machine",
        "↩ rollback 4/5 of step create-instance",
        "is rolled-back; the state machine uses sm-pg96, sm-pg10 is dropped; locks: 0",
        "is refused: 409: dependency: dependency 2017-12-12-state-machine-pg10 is rolled-back",
        "sm-pg96 still exists and is still the primary",
        "The failure blocked everything that should stop.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // The skipped steps are not run: backup and restore have no rollback.
    assert!(!text.contains("rollback of step backup"), "{text}");
}
