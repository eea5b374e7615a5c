//! Fleet rollouts (SPEC §10), end to end: a real `serve` on SQLite and
//! Postgres, `changegate exec` driving the waves in a real checkout, a
//! real Alertmanager that halts one, and two replicas sharing a sweep.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use common::gate_fixture::*;
use common::receivers::{eventually, Alertmanager};
use common::server::{self, Server};
use common::{db, TestRepo};
use serde_json::{json, Value};

/// A sweep over `n` hosts (`h001`…) listed in `changes/fleet/hosts.txt`:
/// `prep` once, `restart` per target, `finish` once. `restart.sh` logs
/// `start HOST NS` and `end HOST NS` to `$RUNS`, sleeps for the seconds in
/// `$FLEET_DIR/sleep` if present, and fails on a host named by a file
/// `$FLEET_DIR/fail-HOST`.
fn sweep_repo(n: usize, rollout: &str, policy_extra: &str) -> TestRepo {
    let repo = TestRepo::new();
    script(
        &repo,
        "once.sh",
        "echo \"once $1 $(date +%s%N)\" >> \"$RUNS\"",
    );
    script(
        &repo,
        "restart.sh",
        r#"t="$CHANGEGATE_TARGET"
echo "start $t $(date +%s%N)" >> "$RUNS"
if [ -e "$FLEET_DIR/sleep" ]; then sleep "$(cat "$FLEET_DIR/sleep")"; fi
if [ -e "$FLEET_DIR/fail-$t" ]; then echo "pgbouncer on $t did not come back"; exit 1; fi
echo "end $t $(date +%s%N)" >> "$RUNS""#,
    );
    let hosts: String = (1..=n).map(|i| format!("{}\n", host(i))).collect();
    repo.write("changes/fleet/hosts.txt", format!("# the fleet\n{hosts}"));
    repo.write(
        "changes/sweep.yaml",
        format!(
            "title: restart pgbouncer everywhere\nkind: config\ntargets_from: changes/fleet/hosts.txt\nrollout:\n{rollout}\nsteps:\n  - id: prep\n    run: ./once.sh prep\n  - id: restart\n    per_target: true\n    run: ./restart.sh\n  - id: finish\n    run: ./once.sh finish\n"
        ),
    );
    repo.write(
        "policies/p.yaml",
        format!("approvals:\n  required: 1\n  from: [alice, bob, dave]\nexecution:\n  retry_requires_approval: false\n{policy_extra}"),
    );
    repo.commit("a sweep");
    repo
}

fn host(i: usize) -> String {
    format!("h{i:03}")
}

/// What `restart.sh` logged: per host, its (start, end) in ns; and the
/// once-steps in order.
struct Runs {
    spans: BTreeMap<String, Vec<(i128, Option<i128>)>>,
    once: Vec<String>,
}

fn runs(fleet: &Path) -> Runs {
    let text = std::fs::read_to_string(fleet.join("runs")).unwrap_or_default();
    let mut spans: BTreeMap<String, Vec<(i128, Option<i128>)>> = BTreeMap::new();
    let mut once = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[..] {
            ["start", h, ns] => spans
                .entry(h.into())
                .or_default()
                .push((ns.parse().unwrap(), None)),
            ["end", h, ns] => {
                spans.get_mut(h).unwrap().last_mut().unwrap().1 = Some(ns.parse().unwrap())
            }
            ["once", step, _] => once.push(step.to_string()),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    Runs { spans, once }
}

impl Runs {
    /// The most hosts ever running at once.
    fn most_at_once(&self) -> usize {
        let mut edges: Vec<(i128, i32)> = Vec::new();
        for runs in self.spans.values() {
            for (start, end) in runs {
                edges.push((*start, 1));
                edges.push((end.unwrap_or(i128::MAX), -1));
            }
        }
        edges.sort();
        let (mut now, mut most) = (0, 0);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        most as usize
    }

    fn first_start(&self, hosts: &[String]) -> i128 {
        hosts.iter().map(|h| self.spans[h][0].0).min().unwrap()
    }

    fn last_end(&self, hosts: &[String]) -> i128 {
        hosts
            .iter()
            .map(|h| self.spans[h][0].1.unwrap())
            .max()
            .unwrap()
    }
}

fn hosts(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(host).collect()
}

fn status(server: &Server) -> Value {
    client(server, "alice").change("sweep").unwrap()
}

fn action(server: &Server, target: &str) -> u16 {
    server
        .post(
            "/api/v1/actions",
            "monitor-token",
            &json!({"actor": "fleet-sm", "action": "reboot", "target": target}),
        )
        .0
}

/// The titles of the Atom feed's entries.
fn feed_titles(server: &Server) -> Vec<String> {
    let body = reqwest::blocking::Client::new()
        .get(format!("{}/feed.atom", server.url))
        .bearer_auth("alice-token")
        .send()
        .unwrap()
        .text()
        .unwrap();
    body.split("<title>")
        .skip(2)
        .filter_map(|t| t.split("</title>").next())
        .map(str::to_string)
        .collect()
}

fn start_sweep(
    repo: &TestRepo,
    backend: &str,
    server_keys: &str,
    sections: &str,
) -> (Server, db::TestDatabase) {
    let database = db::fresh(backend);
    let mut toks = tokens();
    toks.push(("monitor".into(), "monitor", "monitor-token".into()));
    let server = server::start_with(repo.path(), &database.url, &toks, server_keys, sections);
    approve(&server, "alice", repo, "sweep");
    (server, database)
}

#[test]
fn waves_run_in_order_each_after_the_bake_and_never_beyond_parallel() {
    for backend in db::BACKENDS {
        let repo = sweep_repo(
            12,
            "  canary: 1\n  waves: [\"50%\", \"100%\"]\n  bake: 2s\n  parallel: 3\n",
            "",
        );
        let (server, _db) = start_sweep(&repo, backend, "", "");
        let fleet = tempfile::tempdir().unwrap();
        std::fs::write(fleet.path().join("sleep"), "0.3").unwrap();

        // Before anything runs, every target is free and every wave pending.
        let s = status(&server);
        let waves: Vec<usize> = s["rollout"]["waves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["targets"].as_array().unwrap().len())
            .collect();
        assert_eq!(waves, [1, 5, 6], "{backend}");
        assert_eq!(s["rollout"]["parallel"], 3, "{backend}");

        let out = exec(
            repo.path(),
            &server,
            &["sweep", "--continue", "--wait"],
            fleet.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert!(text(&out).contains("▶ wave 2/3"), "{}", text(&out));
        assert!(text(&out).contains("waiting (--wait)"), "{}", text(&out));

        let r = runs(fleet.path());
        assert_eq!(r.once, ["prep", "finish"], "{backend}");
        assert_eq!(r.spans.len(), 12, "{backend}: every host ran");
        for (h, spans) in &r.spans {
            assert_eq!(spans.len(), 1, "{backend}: {h} ran once");
        }
        let (w1, w2, w3) = (hosts(1..=1), hosts(2..=6), hosts(7..=12));
        let bake_ns = 2_000_000_000;
        assert!(
            r.first_start(&w2) >= r.last_end(&w1) + bake_ns,
            "{backend}: wave 2 baked"
        );
        assert!(
            r.first_start(&w3) >= r.last_end(&w2) + bake_ns,
            "{backend}: wave 3 baked"
        );
        let most = r.most_at_once();
        assert!(most <= 3, "{backend}: {most} hosts at once, parallel is 3");
        assert!(most >= 2, "{backend}: the sweep ran hosts side by side");

        let s = status(&server);
        assert_eq!(s["state"], "completed", "{backend}");
        assert_eq!(s["rollout"]["done"], 12, "{backend}");
        assert!(
            s["rollout"]["waves"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "done"),
            "{backend}: {}",
            s["rollout"]
        );
        assert_eq!(s["locks"], json!([]), "{backend}");
        let titles = feed_titles(&server);
        for t in [
            "sweep: wave 1 of 3 done (1 of 12 targets)",
            "sweep: wave 2 of 3 done (6 of 12 targets)",
            "sweep: every target done (12)",
        ] {
            assert!(titles.contains(&t.to_string()), "{backend}: {titles:?}");
        }
        // Each (step, target) has its own attempt.
        let attempts = s["steps"][1]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 12, "{backend}");
        assert!(
            attempts.iter().all(|a| a["target"].is_string()),
            "{backend}"
        );
    }
}

#[test]
fn exec_exits_3_on_baking_and_untouched_targets_stay_free() {
    for backend in db::BACKENDS {
        let repo = sweep_repo(
            4,
            "  canary: 1\n  waves: [\"100%\"]\n  bake: 1h\n  parallel: 2\n",
            "",
        );
        let (server, _db) = start_sweep(&repo, backend, "", "");
        let fleet = tempfile::tempdir().unwrap();
        let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(3), "{backend}: {}", text(&out));
        assert!(text(&out).contains("refused: baking"), "{}", text(&out));

        let s = status(&server);
        assert_eq!(s["state"], "running", "{backend}");
        let wave = &s["rollout"]["waves"][0];
        assert_eq!(wave["state"], "baking", "{backend}");
        let until = wave["bake_until"].as_i64().unwrap();
        let in_an_hour = changegate::clock::now_ms() + 3_600_000;
        assert!((in_an_hour - until).abs() < 60_000, "{backend}: {until}");
        assert!(
            text(&out).contains(&changegate::clock::format_ms(until)),
            "{}",
            text(&out)
        );
        assert_eq!(s["blockers"][0]["reason"], "baking", "{backend}");
        assert_eq!(
            s["rollout"]["targets"][0]["state"], "succeeded",
            "{backend}"
        );
        assert_eq!(s["rollout"]["targets"][1]["state"], "pending", "{backend}");
        // Locked from its first claim: only the canary.
        assert_eq!(s["locks"], json!(["h001"]), "{backend}");
        assert_eq!(action(&server, "h001"), 423, "{backend}");
        assert_eq!(action(&server, "h003"), 200, "{backend}");
    }
}

#[test]
fn the_first_failed_target_halts_the_sweep_and_stays_locked() {
    for backend in db::BACKENDS {
        let repo = sweep_repo(
            10,
            "  canary: 1\n  waves: [\"50%\", \"100%\"]\n  parallel: 2\n",
            "",
        );
        let (server, _db) = start_sweep(&repo, backend, "", "");
        let fleet = tempfile::tempdir().unwrap();
        std::fs::write(fleet.path().join("fail-h003"), "").unwrap();
        let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        assert!(
            text(&out).contains("✘ restart on h003 failed"),
            "{}",
            text(&out)
        );

        let s = status(&server);
        assert_eq!(s["state"], "failed", "{backend}");
        assert_eq!(s["blockers"][0]["reason"], "failed", "{backend}");
        let r = runs(fleet.path());
        // Wave 3 (h006…h010) never started; `finish` never ran.
        for h in hosts(6..=10) {
            assert!(!r.spans.contains_key(&h), "{backend}: {h} untouched");
        }
        assert_eq!(r.once, ["prep"], "{backend}");
        let targets = s["rollout"]["targets"].as_array().unwrap();
        assert_eq!(targets[2]["state"], "failed", "{backend}");
        assert!(targets[2]["attempt"].is_string(), "{backend}");
        assert_eq!(targets[7]["state"], "pending", "{backend}");
        assert_eq!(s["rollout"]["waves"][1]["state"], "failed", "{backend}");
        // The failed target is quarantined; an untouched one is the monitor's.
        assert_eq!(action(&server, "h003"), 423, "{backend}");
        assert_eq!(action(&server, "h008"), 200, "{backend}");
        // A second executor cannot go on with it either.
        assert_eq!(claim_reason(&server, &repo, "sweep"), "failed", "{backend}");

        // Fixed and retried: the failed target runs again, then the rest.
        std::fs::remove_file(fleet.path().join("fail-h003")).unwrap();
        let retried = client(&server, "bob")
            .retry("sweep", "pgbouncer fixed")
            .unwrap();
        assert!(
            retried["recorded"].as_str().unwrap_or("").contains("h003"),
            "{backend}: {retried}"
        );
        let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        let r = runs(fleet.path());
        assert_eq!(r.spans["h003"].len(), 2, "{backend}");
        assert_eq!(r.spans.len(), 10, "{backend}");
        assert_eq!(status(&server)["state"], "completed", "{backend}");
        assert_eq!(action(&server, "h003"), 200, "{backend}");
    }
}

#[test]
fn max_wave_and_min_bake_are_refused_as_blast_radius() {
    for backend in db::BACKENDS {
        for (policy, says) in [
            ("  max_wave: 4\n", "wave 3 of 3 holds 5"),
            ("  min_bake: 1h\n", "execution.min_bake"),
        ] {
            let repo = sweep_repo(
                10,
                "  canary: 1\n  waves: [\"50%\", \"100%\"]\n  bake: 10m\n",
                policy,
            );
            let (server, _db) = start_sweep(&repo, backend, "", "");
            let fleet = tempfile::tempdir().unwrap();
            let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
            assert_eq!(out.status.code(), Some(3), "{backend}: {}", text(&out));
            assert!(
                text(&out).contains("refused: blast-radius"),
                "{}",
                text(&out)
            );
            assert!(text(&out).contains(says), "{backend}: {}", text(&out));
            assert!(
                !fleet.path().join("runs").exists(),
                "{backend}: nothing ran"
            );
        }
    }
}

#[test]
fn a_real_alertmanager_alert_on_a_touched_target_halts_the_bake() {
    for backend in db::BACKENDS {
        let am = Alertmanager::start();
        let repo = sweep_repo(3, "  canary: 1\n  waves: [\"100%\"]\n  bake: 1h\n", "");
        let sections = format!(
            "[rollouts]\nwatch_every = \"1s\"\n\n[[alerts.sinks]]\nname = \"fleet-monitor\"\nkind = \"alertmanager\"\nurl = \"{}\"\nresend = \"1s\"\n",
            am.url
        );
        let (server, _db) = start_sweep(&repo, backend, "", &sections);
        let fleet = tempfile::tempdir().unwrap();
        let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(3), "{backend}: {}", text(&out));
        let post = |name: &str, target: &str| {
            let r = reqwest::blocking::Client::new()
                .post(format!("{}/api/v2/alerts", am.url))
                .json(&json!([{"labels": {"alertname": name, "target": target, "severity": "critical"},
                                "annotations": {"summary": format!("{name} on {target}")}}]))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
        };
        // changegate's own alert on the canary, and a foreign one on a
        // target the rollout has not touched: neither halts it.
        post("ChangegateStepFailed", "h001");
        post("PgbouncerDown", "h003");
        std::thread::sleep(std::time::Duration::from_secs(4));
        let s = status(&server);
        assert_eq!(s["state"], "running", "{backend}: {}", s["blockers"]);
        assert_eq!(s["rollout"]["halt"], Value::Null, "{backend}");

        // PgbouncerDown on the canary, during its bake: halted.
        post("PgbouncerDown", "h001");
        wait_for(|| status(&server)["state"] == "failed", "the halt");
        let s = status(&server);
        assert_eq!(s["blockers"][0]["reason"], "halted", "{backend}");
        let detail = s["blockers"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("PgbouncerDown on h001"),
            "{backend}: {detail}"
        );
        assert_eq!(
            s["rollout"]["halt"]["alert"], "PgbouncerDown on h001",
            "{backend}"
        );
        eventually(15, "changegate's halt alert in Alertmanager", || {
            am.alerts().iter().any(|a| {
                a["labels"]["alertname"] == "ChangegateRolloutHalted"
                    && a["labels"]["change"] == "sweep"
                    && a["status"]["state"] == "active"
            })
        });
        assert_eq!(claim_reason(&server, &repo, "sweep"), "halted", "{backend}");
        // A retry while the alert fires: the next look halts it again.
        // Once it is resolved, a retry lifts the halt for good.
        client(&server, "bob").retry("sweep", "looking").unwrap();
        wait_for(|| status(&server)["state"] == "failed", "the halt again");
        let resolve = reqwest::blocking::Client::new()
            .post(format!("{}/api/v2/alerts", am.url))
            .json(&json!([{"labels": {"alertname": "PgbouncerDown", "target": "h001", "severity": "critical"},
                            "endsAt": "2020-01-01T00:00:00Z"}]))
            .send()
            .unwrap();
        assert_eq!(resolve.status(), 200);
        eventually(10, "the alert to resolve in Alertmanager", || {
            !am.alerts().iter().any(|a| {
                a["labels"]["alertname"] == "PgbouncerDown"
                    && a["labels"]["target"] == "h001"
                    && a["status"]["state"] == "active"
            })
        });
        let lifted = client(&server, "bob")
            .retry("sweep", "pgbouncer is back")
            .unwrap();
        assert!(
            lifted["recorded"]
                .as_str()
                .unwrap_or("")
                .contains("resumes"),
            "{backend}: {lifted}"
        );
        std::thread::sleep(std::time::Duration::from_secs(3));
        let s = status(&server);
        assert_eq!(s["state"], "running", "{backend}: {}", s["blockers"]);
        assert_eq!(s["blockers"][0]["reason"], "baking", "{backend}");
        assert!(
            feed_titles(&server)
                .contains(&"sweep: rollout halted by PgbouncerDown on h001".to_string()),
            "{backend}"
        );
        assert_eq!(action(&server, "h001"), 423, "{backend}");
        let audit = server
            .get("/api/v1/audit?change=sweep", Some("alice-token"))
            .1;
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "rollout.halted"),
            "{backend}"
        );
    }
}

#[test]
fn an_executor_killed_mid_wave_leaves_its_target_interrupted_never_re_run() {
    for backend in db::BACKENDS {
        let repo = sweep_repo(4, "  canary: 1\n  waves: [\"100%\"]\n  parallel: 2\n", "");
        let (server, _db) = start_sweep(&repo, backend, "lease = \"2s\"", "");
        let fleet = tempfile::tempdir().unwrap();
        std::fs::write(fleet.path().join("sleep"), "0.2").unwrap();
        // The canary runs; then the second wave's hosts hang.
        let out = exec(repo.path(), &server, &["sweep"], fleet.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{backend}: prep: {}",
            text(&out)
        );
        let out = exec(repo.path(), &server, &["sweep"], fleet.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{backend}: canary: {}",
            text(&out)
        );
        std::fs::write(fleet.path().join("sleep"), "30").unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["exec", "sweep", "--continue"])
            .current_dir(repo.path())
            .env("CHANGEGATE_URL", &server.url)
            .env("CHANGEGATE_TOKEN", "ci-token")
            .env("FLEET_DIR", fleet.path())
            .env("RUNS", fleet.path().join("runs"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            || {
                status(&server)["rollout"]["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["state"] == "running")
                    .count()
                    == 2
            },
            "two targets running",
        );
        child.kill().unwrap(); // SIGKILL: no report, no heartbeat
        child.wait().unwrap();
        wait_for(
            || status(&server)["state"] == "failed",
            "the leases to expire",
        );
        let s = status(&server);
        let interrupted: Vec<&Value> = s["rollout"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "interrupted")
            .collect();
        assert_eq!(interrupted.len(), 2, "{backend}: {}", s["rollout"]);
        // Never re-run by itself: the next exec is refused.
        let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
        assert_eq!(out.status.code(), Some(3), "{backend}: {}", text(&out));
        assert!(text(&out).contains("refused: failed"), "{}", text(&out));
        let r = runs(fleet.path());
        for t in interrupted {
            let h = t["target"].as_str().unwrap();
            assert_eq!(r.spans[h].len(), 1, "{backend}: {h} started once");
        }
        assert_eq!(
            r.spans.len(),
            3,
            "{backend}: the fourth host was never claimed"
        );
    }
}

#[test]
fn a_failed_rollout_is_neither_rolled_back_nor_abandoned_while_a_target_still_runs() {
    for backend in db::BACKENDS {
        let repo = sweep_repo(3, "  canary: 1\n  waves: [\"100%\"]\n  parallel: 2\n", "");
        let (server, _db) = start_sweep(&repo, backend, "", "");
        let ci = client(&server, "ci");
        let sweep = digest(&repo, "sweep");
        for _ in ["prep", "canary"] {
            let grant = ci.claim("sweep", &sweep, None).unwrap();
            report(&server, &grant.attempt, true);
        }
        let first = ci.claim("sweep", &sweep, None).unwrap();
        let second = ci.claim("sweep", &sweep, None).unwrap();
        report(&server, &first.attempt, false);
        assert_eq!(status(&server)["state"], "failed", "{backend}");
        // The change failed, but a target is still being restarted.
        let operator = client(&server, "bob");
        for refusal in [
            operator.rollback("sweep", "undo").unwrap_err(),
            operator.abandon("sweep", "give up").unwrap_err(),
        ] {
            assert_eq!(
                refusal.reason(),
                Some("step-running"),
                "{backend}: {refusal}"
            );
            assert!(refusal.to_string().contains(&second.attempt), "{refusal}");
        }
        assert_eq!(
            status(&server)["locks"].as_array().map(Vec::len),
            Some(3),
            "{backend}: every target stays locked: {}",
            status(&server)["locks"]
        );
        report(&server, &second.attempt, true);
        operator.abandon("sweep", "give up").unwrap();
        assert_eq!(status(&server)["state"], "abandoned", "{backend}");
    }
}

#[test]
fn two_executors_on_two_postgres_replicas_share_200_targets_within_parallel() {
    let repo = sweep_repo(
        200,
        "  canary: 1\n  waves: [\"10%\", \"50%\", \"100%\"]\n  bake: 1s\n  parallel: 8\n",
        "",
    );
    let database = db::fresh("postgres");
    let path = repo.path().to_path_buf();
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| server::start(&path, &database.url, &tokens()));
        let b = s.spawn(|| server::start(&path, &database.url, &tokens()));
        (a.join().unwrap(), b.join().unwrap())
    });
    approve(&r1, "alice", &repo, "sweep");
    let fleet = tempfile::tempdir().unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| exec(&path, &r1, &["sweep", "--continue", "--wait"], fleet.path()));
        let b = s.spawn(|| exec(&path, &r2, &["sweep", "--continue", "--wait"], fleet.path()));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    let r = runs(fleet.path());
    assert_eq!(r.spans.len(), 200, "every target ran");
    for (h, spans) in &r.spans {
        assert_eq!(spans.len(), 1, "{h} ran once");
    }
    assert_eq!(r.once, ["prep", "finish"]);
    let most = r.most_at_once();
    assert!(most <= 8, "{most} targets at once, parallel is 8");
    // Waves: 1, 19 (to 10%), 80 (to 50%), 100; none started early.
    let waves = [
        hosts(1..=1),
        hosts(2..=20),
        hosts(21..=100),
        hosts(101..=200),
    ];
    for w in 1..waves.len() {
        assert!(
            r.first_start(&waves[w]) >= r.last_end(&waves[w - 1]) + 1_000_000_000,
            "wave {} started before wave {} baked",
            w + 1,
            w
        );
    }
    // Both executors took part, each through its own replica.
    for (out, name) in [(&a, "first"), (&b, "second")] {
        assert!(
            text(out).contains("▶ wave"),
            "the {name} executor ran targets: {}",
            text(out)
        );
    }
    let s = client(&r2, "alice").change("sweep").unwrap();
    assert_eq!(s["state"], "completed");
    assert_eq!(s["rollout"]["done"], 200);
}

#[test]
fn rolling_back_a_per_target_step_is_refused_not_run_once() {
    let repo = sweep_repo(3, "  canary: 1\n  waves: [\"100%\"]\n", "");
    let yaml = std::fs::read_to_string(repo.path().join("changes/sweep.yaml")).unwrap();
    repo.write(
        "changes/sweep.yaml",
        yaml.replace(
            "    run: ./restart.sh\n",
            "    run: ./restart.sh\n    rollback: ./once.sh undo\n",
        ),
    );
    repo.commit("a per-target rollback");
    let (server, _db) = start_sweep(&repo, "sqlite", "", "");
    let fleet = tempfile::tempdir().unwrap();
    std::fs::write(fleet.path().join("fail-h001"), "").unwrap();
    let out = exec(repo.path(), &server, &["sweep", "--continue"], fleet.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    match client(&server, "alice").rollback("sweep", "undo it") {
        Err(changegate::client::ClientError::Refused { status, reason, .. }) => {
            assert_eq!((status, reason.as_str()), (409, "unsupported"));
        }
        other => panic!("rollback of a per-target step: {other:?}"),
    }
    assert_eq!(status(&server)["state"], "failed");
    assert_eq!(runs(fleet.path()).once, ["prep"], "no rollback ran");
}
