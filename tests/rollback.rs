//! Rollback as approved (SPEC §11), end to end on SQLite and Postgres: a
//! real `serve`, the API client and `changegate exec` running the declared
//! rollbacks in a real checkout.

mod common;

use common::gate_fixture::*;
use common::receivers::{eventually, Alertmanager};
use common::server::{self, Server};
use common::{db, TestRepo};
use serde_json::Value;

/// Four steps; `b` declares no rollback. `s.sh NAME` logs `run NAME` and
/// fails when `$FLEET_DIR/fail-NAME` exists; `undo.sh NAME` logs `undo
/// NAME` and fails when `$FLEET_DIR/fail-undo-NAME` exists. `after`
/// depends on `c`.
fn repo(policy_extra: &str) -> TestRepo {
    let repo = TestRepo::new();
    script(
        &repo,
        "s.sh",
        "echo \"run $1\" >> \"$RUNS\"\n[ ! -e \"$FLEET_DIR/fail-$1\" ]",
    );
    script(
        &repo,
        "undo.sh",
        "echo \"undo $1\" >> \"$RUNS\"\n[ ! -e \"$FLEET_DIR/fail-undo-$1\" ]",
    );
    let step = |id: &str, undo: bool| {
        let rollback = if undo {
            format!("\n    rollback: ./undo.sh {id}")
        } else {
            String::new()
        };
        format!("  - id: {id}\n    run: ./s.sh {id}{rollback}\n")
    };
    repo.write(
        "changes/c.yaml",
        format!(
            "title: t\nkind: config\ntargets: [web]\nsteps:\n{}{}{}{}",
            step("a", true),
            step("b", false),
            step("c", true),
            step("d", true)
        ),
    );
    repo.write(
        "changes/after.yaml",
        "title: later\nkind: config\ntargets: [db]\ndepends_on: [c]\nsteps:\n  - id: x\n    run: ./s.sh x\n",
    );
    repo.write(
        "policies/p.yaml",
        format!("approvals:\n  required: 1\n  from: [alice, bob, dave]\n{policy_extra}"),
    );
    repo.commit("a change with rollbacks");
    repo
}

fn runs(fleet: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(fleet.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `c` approved and run until its step `c` fails.
fn failed_at_c(repo: &TestRepo, server: &Server, fleet: &std::path::Path) {
    approve(server, "alice", repo, "c");
    std::fs::write(fleet.join("fail-c"), "").unwrap();
    let out = exec(repo.path(), server, &["c", "--continue"], fleet);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        client(server, "alice").change("c").unwrap()["state"],
        "failed"
    );
}

fn refusal(r: Result<Value, changegate::client::ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("accepted: {v}"),
        Err(changegate::client::ClientError::Refused { status, reason, .. }) => (status, reason),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_failed_change_is_undone_in_reverse_and_ends_rolled_back() {
    for backend in db::BACKENDS {
        let repo = repo("");
        let database = db::fresh(backend);
        let mut with_reader = tokens();
        with_reader.push(("viewer".into(), "reader", "viewer-token".into()));
        let server = server::start_with(repo.path(), &database.url, &with_reader, "", "");
        let fleet = tempfile::tempdir().unwrap();
        let alice = client(&server, "alice");

        // Not failed: nothing to roll back.
        let (status, reason) = refusal(alice.rollback("c", "not yet"));
        assert_eq!((status, reason.as_str()), (409, "not-failed"), "{backend}");

        failed_at_c(&repo, &server, fleet.path());
        // Only an operator may ask for it.
        for who in ["viewer", "ci"] {
            let (status, _) = refusal(client(&server, who).rollback("c", "me"));
            assert_eq!(status, 403, "{backend}: {who}");
        }

        let first = alice.rollback("c", "release failed").unwrap();
        assert_eq!(first["recorded"], "rollback requested", "{backend}");
        let again = alice.rollback("c", "again").unwrap();
        assert_eq!(again["recorded"], "rollback already requested", "{backend}");
        let s = alice.change("c").unwrap();
        assert_eq!(s["state"], "rolling-back", "{backend}");
        assert_eq!(s["rollback"]["total"], 3, "{backend}: c, b, a");
        assert_eq!(
            s["rollback"]["undone"], 1,
            "{backend}: b has nothing to undo"
        );

        let out = exec(repo.path(), &server, &["c", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert!(
            text(&out).contains("↩ rollback 1/3 of step c"),
            "{}",
            text(&out)
        );
        assert_eq!(
            runs(fleet.path()),
            ["run a", "run b", "run c", "undo c", "undo a"],
            "{backend}: the failed step first, then the succeeded ones last first; b skipped, d never ran"
        );
        let s = alice.change("c").unwrap();
        assert_eq!(s["state"], "rolled-back", "{backend}");
        assert_eq!(
            s["locks"],
            serde_json::json!([]),
            "{backend}: locks released"
        );
        let undo: Vec<&str> = s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| st["rollback"].as_str().unwrap_or("-"))
            .collect();
        assert_eq!(
            undo,
            ["succeeded", "skipped", "succeeded", "-"],
            "{backend}"
        );
        let alerts = alice.alerts().unwrap();
        assert!(
            alerts
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["state"] == "resolved"),
            "{backend}: the step-failed alert resolved: {alerts}"
        );
        // Terminal: neither forward nor back again, and the dependent stays refused.
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "rolled-back",
            "{backend}"
        );
        let (status, reason) = refusal(alice.retry("c", "go on"));
        assert_eq!((status, reason.as_str()), (409, "not-failed"), "{backend}");
        approve(&server, "alice", &repo, "after");
        assert_eq!(
            claim_reason(&server, &repo, "after"),
            "dependency",
            "{backend}"
        );
        // The last report again, as a retrying executor would send it: the
        // rollback is finished once, not again.
        let last = s["steps"][0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|a| a["phase"] == "rollback")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let report = changegate::wire::Report {
            outcome: changegate::wire::Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 1,
            output_tail: String::new(),
        };
        client(&server, "ci").report(&last, &report).unwrap();
        let finished: Value = server.get("/api/v1/audit?change=c", Some("alice-token")).1;
        let rolled_back = finished
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "change.rolled-back")
            .count();
        assert_eq!(rolled_back, 1, "{backend}: finished once");
        let metrics = server.metrics();
        assert!(
            metrics.contains("changegate_rollbacks_total{outcome=\"rolled-back\"} 1"),
            "{backend}: {metrics}"
        );
    }
}

#[test]
fn a_failing_rollback_fires_an_alert_and_is_retried() {
    for backend in db::BACKENDS {
        let repo = repo("execution:\n  retry_requires_approval: false\n");
        let (server, _db) = start(&repo, backend, "");
        let fleet = tempfile::tempdir().unwrap();
        let alice = client(&server, "alice");
        failed_at_c(&repo, &server, fleet.path());
        std::fs::write(fleet.path().join("fail-undo-a"), "").unwrap();
        alice.rollback("c", "release failed").unwrap();

        let out = exec(repo.path(), &server, &["c", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        assert!(
            text(&out).contains("✘ rollback of a failed: `rollback` exited 1"),
            "{}",
            text(&out)
        );
        let s = alice.change("c").unwrap();
        assert_eq!(s["state"], "rollback-failed", "{backend}");
        assert_eq!(
            s["locks"],
            serde_json::json!(["web"]),
            "{backend}: locks stay"
        );
        let firing: Vec<String> = alice
            .alerts()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect();
        assert!(
            firing.contains(&"rollback-failed".to_string()),
            "{backend}: {firing:?}"
        );
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "rollback-failed",
            "{backend}"
        );

        // retry re-runs the failed rollback, and only it.
        std::fs::remove_file(fleet.path().join("fail-undo-a")).unwrap();
        let retried = alice.retry("c", "fixed the undo").unwrap();
        assert_eq!(
            retried["recorded"], "retry of the rollback of step a",
            "{backend}"
        );
        let out = exec(repo.path(), &server, &["c", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert_eq!(
            runs(fleet.path()),
            ["run a", "run b", "run c", "undo c", "undo a", "undo a"],
            "{backend}"
        );
        assert_eq!(
            alice.change("c").unwrap()["state"],
            "rolled-back",
            "{backend}"
        );
        assert!(
            alice
                .alerts()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["state"] == "resolved"),
            "{backend}"
        );
    }
}

#[test]
fn an_interrupted_rollback_is_never_run_again_by_itself() {
    for backend in db::BACKENDS {
        let repo = repo("");
        let (server, _db) = start(&repo, backend, "lease = \"1s\"");
        let fleet = tempfile::tempdir().unwrap();
        let alice = client(&server, "alice");
        failed_at_c(&repo, &server, fleet.path());
        alice.rollback("c", "release failed").unwrap();
        // Claimed, then the executor vanishes: no heartbeat, no report.
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        assert_eq!(grant.run, "./undo.sh c", "{backend}");
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert_eq!(
            claim_reason(&server, &repo, "c"),
            "rollback-failed",
            "{backend}"
        );
        let s = alice.change("c").unwrap();
        assert_eq!(s["state"], "rollback-failed", "{backend}");
        assert_eq!(s["steps"][2]["rollback"], "interrupted", "{backend}");
        assert!(
            runs(fleet.path()).iter().all(|l| !l.starts_with("undo")),
            "{backend}"
        );
    }
}

#[test]
fn rollback_requires_approval_wants_a_fresh_counting_one() {
    for backend in db::BACKENDS {
        let repo = repo("execution:\n  rollback_requires_approval: true\n");
        let (server, _db) = start(&repo, backend, "");
        let fleet = tempfile::tempdir().unwrap();
        failed_at_c(&repo, &server, fleet.path());
        // Alice's approval predates the failure, and carol's does not count.
        approve(&server, "carol", &repo, "c");
        let (status, reason) = refusal(client(&server, "alice").rollback("c", "undo"));
        assert_eq!(
            (status, reason.as_str()),
            (409, "needs-approval"),
            "{backend}"
        );
        // Bob's fresh approval counts; alice may now roll back.
        approve(&server, "bob", &repo, "c");
        let ok = client(&server, "alice").rollback("c", "undo").unwrap();
        assert_eq!(ok["recorded"], "rollback requested", "{backend}");
        assert_eq!(
            client(&server, "alice").change("c").unwrap()["state"],
            "rolling-back",
            "{backend}"
        );
    }
}

#[test]
fn rolled_back_resolves_every_alert_of_the_change_in_alertmanager() {
    for backend in db::BACKENDS {
        let am = Alertmanager::start();
        let repo = repo("execution:\n  retry_requires_approval: false\n");
        let database = db::fresh(backend);
        let sink = format!(
            "[[alerts.sinks]]\nname = \"fleet-monitor\"\nkind = \"alertmanager\"\nurl = \"{}\"\nresend = \"1s\"\n",
            am.url
        );
        let server = server::start_with(repo.path(), &database.url, &tokens(), "", &sink);
        let fleet = tempfile::tempdir().unwrap();
        let firing = |name: &str| {
            am.alerts().iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["change"] == "c"
                    && a["status"]["state"] == "active"
            })
        };
        failed_at_c(&repo, &server, fleet.path());
        eventually(15, "the step's alert", || firing("ChangegateStepFailed"));

        std::fs::write(fleet.path().join("fail-undo-a"), "").unwrap();
        client(&server, "alice").rollback("c", "undo").unwrap();
        let out = exec(repo.path(), &server, &["c", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        eventually(15, "the rollback's alert", || {
            firing("ChangegateRollbackFailed")
        });
        let alert = am
            .alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "ChangegateRollbackFailed")
            .unwrap();
        assert_eq!(alert["labels"]["step"], "a", "{backend}");
        assert_eq!(alert["labels"]["severity"], "critical", "{backend}");

        std::fs::remove_file(fleet.path().join("fail-undo-a")).unwrap();
        client(&server, "bob").retry("c", "undo fixed").unwrap();
        let out = exec(repo.path(), &server, &["c", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "rolled-back", "{backend}");
        assert_eq!(s["locks"], serde_json::json!([]), "{backend}");
        eventually(15, "every alert of the change to resolve", || {
            !firing("ChangegateStepFailed") && !firing("ChangegateRollbackFailed")
        });
    }
}
