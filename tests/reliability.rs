//! The reliability suite (issue 8), in the bounded form CI runs:
//!
//! - webhook load with faults: forged signatures, redeliveries, and the
//!   server killed with SIGKILL three times mid-load;
//! - executor faults: the server killed between claim and report, and a
//!   report retried after its answer was lost.
//!
//! `CHANGEGATE_RELIABILITY_DELIVERIES=10000 cargo test --test reliability`
//! runs the long form (README.md, "Reliability").

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use changegate::store::Store;
use changegate::wire::{Outcome, Report};
use common::db;
use common::gate_fixture::*;
use common::github::*;
use common::server;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One delivery of the load: (id, event, body, signature, forged).
type Delivery = (String, &'static str, Vec<u8>, String, bool);

#[test]
fn webhook_load_with_forgeries_redeliveries_and_three_kill_9s_loses_and_forges_nothing() {
    let total: usize = std::env::var("CHANGEGATE_RELIABILITY_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let github = FakeGithub::start();
    let repo = simple_repo("true", "");
    let base = repo.main_tip();
    let database = db::fresh("sqlite");
    let mut server = server::start_with(
        repo.path(),
        &database.url,
        &tokens(),
        "",
        &github.config_section(),
    );
    // A pull request whose reviews the load carries, so deliveries are applied, not only stored.
    let head = repo.push_to_pr(
        1,
        &[(
            "changes/r.yaml",
            "title: r\nkind: config\ntargets: [x]\nsteps:\n  - id: s\n    run: ./step.sh\n",
        )],
        "carol",
    );
    let pr = pull(1, head, base, "carol-gh");
    deliver_pr(&server, "opened", "opened", &pr, "carol-gh");

    // 5% forged, 10% redeliveries of an earlier id, the rest new: half
    // reviews (applied), half check runs (ignored).
    let check_run = std::fs::read(
        common::project_root().join("../shared/fixtures/github-webhooks/check_run.completed.json"),
    )
    .unwrap();
    let mut load: Vec<Delivery> = Vec::with_capacity(total);
    for i in 0..total {
        let (id, event, body) = if i % 10 == 9 && i > 20 {
            let (id, event, body, _, _) = load[i / 2].clone();
            (id, event, body)
        } else if i % 2 == 0 {
            let r = review(
                10_000 + i as u64,
                "alice-gh",
                "approved",
                head,
                5_000 + i as u64,
            );
            (
                format!("load-{i}"),
                "pull_request_review",
                review_event("submitted", &pr, &r),
            )
        } else {
            (format!("load-{i}"), "check_run", check_run.clone())
        };
        let forged = i % 20 == 7;
        let signature = if forged {
            sign(b"something else")
        } else {
            sign(&body)
        };
        let id = if forged { format!("forged-{i}") } else { id };
        load.push((id, event, body, signature, forged));
    }

    let url = RwLock::new(server.url.clone());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    // id → every status answered for it.
    let answers: Mutex<BTreeMap<String, Vec<u16>>> = Mutex::new(BTreeMap::new());
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((id, event, body, signature, _)) = load.get(i) else {
                    break;
                };
                // Like GitHub's redelivery: try again until answered.
                loop {
                    let base = url.read().unwrap().clone();
                    let sent = http
                        .post(format!("{base}/webhooks/github"))
                        .header("X-GitHub-Event", *event)
                        .header("X-GitHub-Delivery", id)
                        .header("X-Hub-Signature-256", signature)
                        .body(body.clone())
                        .send();
                    match sent {
                        Ok(r) => {
                            answers
                                .lock()
                                .unwrap()
                                .entry(id.clone())
                                .or_default()
                                .push(r.status().as_u16());
                            if r.status().as_u16() != 503 {
                                break;
                            }
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Three SIGKILLs mid-load, each followed by a restart.
        for k in 1..=3 {
            while done.load(Ordering::SeqCst) < total * k / 4 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            server.kill9();
            server.restart();
            *url.write().unwrap() = server.url.clone();
        }
    });

    let answers = answers.into_inner().unwrap();
    let forged: BTreeSet<&str> = load.iter().filter(|d| d.4).map(|d| d.0.as_str()).collect();
    for id in &forged {
        assert_eq!(answers[*id], [401], "{id}: a forged delivery is refused");
    }
    let acknowledged: BTreeSet<&str> = answers
        .iter()
        .filter(|(_, codes)| codes.iter().any(|c| *c == 200 || *c == 202))
        .map(|(id, _)| id.as_str())
        .collect();
    let genuine: BTreeSet<&str> = load.iter().filter(|d| !d.4).map(|d| d.0.as_str()).collect();
    assert_eq!(
        acknowledged, genuine,
        "every genuine delivery was acknowledged in the end"
    );

    // Every acknowledged delivery is stored once and processed once.
    let store = block_on(Store::connect(&database.url)).unwrap();
    wait_for(
        || {
            block_on(store.delivery_outcomes())
                .unwrap()
                .iter()
                .all(|o| o.1.is_some())
        },
        "every delivery processed",
    );
    let outcomes = block_on(store.delivery_outcomes()).unwrap();
    let stored: BTreeSet<&str> = outcomes
        .iter()
        .map(|o| o.0.as_str())
        .filter(|id| *id != "opened")
        .collect();
    assert_eq!(
        stored, genuine,
        "zero lost acknowledged writes, zero forged accepted"
    );
    for (id, outcome, _, error) in &outcomes {
        let expected =
            if id.starts_with("load-") && load.iter().any(|d| &d.0 == id && d.1 == "check_run") {
                "ignored"
            } else {
                "applied"
            };
        assert_eq!(outcome.as_deref(), Some(expected), "{id}: {error:?}");
    }
    let audit = block_on(store.audit_events(None)).unwrap();
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for e in &audit {
        match e.kind.as_str() {
            "webhook.received" => {
                for d in e.data["deliveries"].as_array().unwrap() {
                    *received
                        .entry(d["delivery"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
            "github.review" | "github.pull_request" => {
                if let Some(d) = e.data["delivery"].as_str() {
                    *applied.entry(d.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        received.values().all(|n| *n == 1),
        "each delivery recorded once"
    );
    assert_eq!(received.len(), genuine.len() + 1);
    assert!(
        applied.values().all(|n| *n == 1),
        "each delivery applied once: {applied:?}"
    );
    let out = server.audit_verify();
    assert!(out.status.success(), "{}", text(&out));
    let kills = server.log().matches("\"message\":\"listening\"").count();
    assert_eq!(kills, 4, "three restarts happened");
    let refused_while_down = answers
        .values()
        .map(|c| c.iter().filter(|c| **c == 503).count())
        .sum::<usize>();
    println!(
        "{total} deliveries: {} forged, all refused; {} genuine ids, all stored and processed once ({} applied, {} ignored); {} answers of 503 while the database was closing; 3 SIGKILLs; audit chain intact",
        forged.len(),
        genuine.len(),
        outcomes.iter().filter(|o| o.1.as_deref() == Some("applied")).count() - 1,
        outcomes.iter().filter(|o| o.1.as_deref() == Some("ignored")).count(),
        refused_while_down,
    );
}

#[test]
fn a_server_killed_between_claim_and_report_loses_no_outcome() {
    for backend in db::BACKENDS {
        let repo = simple_repo("sleep 2", "");
        let (mut server, _db) = start(&repo, backend, "lease = \"1m\"");
        approve(&server, "alice", &repo, "c");
        approve(&server, "bob", &repo, "c");
        let runs = tempfile::NamedTempFile::new().unwrap();
        let port = server.url.rsplit(':').next().unwrap().to_string();
        let exec = exec_command(&repo, &server, "c", runs.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
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
        // Killed while the step runs, and still down when it ends: the
        // executor keeps its outcome and reports once the server is back.
        server.kill9();
        std::thread::sleep(std::time::Duration::from_secs(3));
        server.restart_on(&port);
        let out = exec.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert!(
            text(&out).contains("report failed"),
            "{backend}: the report was retried: {}",
            text(&out)
        );
        let s = client(&server, "alice").change("c").unwrap();
        assert_eq!(s["state"], "completed", "{backend}");
        assert_eq!(
            s["steps"][0]["attempts"].as_array().unwrap().len(),
            1,
            "{backend}: one attempt"
        );
        assert_eq!(
            std::fs::read_to_string(runs.path())
                .unwrap()
                .lines()
                .count(),
            1,
            "{backend}: run once"
        );
    }
}

#[test]
fn a_report_retried_after_its_answer_was_lost_is_recorded_once() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        let (server, _db) = start(&repo, backend, "");
        approve(&server, "alice", &repo, "c");
        let grant = client(&server, "ci")
            .claim("c", &digest(&repo, "c"), None)
            .unwrap();
        let report = Report {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            duration_ms: 10,
            output_tail: "boom".into(),
        };
        let first = client(&server, "ci")
            .report(&grant.attempt, &report)
            .unwrap();
        assert_eq!(first["recorded"], true);
        // The answer was lost; the executor sends the same report again.
        let again = client(&server, "ci")
            .report(&grant.attempt, &report)
            .unwrap();
        assert_eq!(again["recorded"], false, "{backend}: not recorded twice");
        assert_eq!(again["change_state"], "failed");
        let events = server.get("/api/v1/audit", Some("alice-token")).1;
        let failures = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("step.failed"))
            })
            .count();
        assert_eq!(
            failures, 1,
            "{backend}: one failure recorded, one alert raised"
        );
    }
}
