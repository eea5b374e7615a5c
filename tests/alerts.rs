//! Alerts reach the fleet monitor and keep firing; fleet actions are budgeted.

mod common;

use common::gate_fixture::*;
use common::receivers::{eventually, free_port, Alertmanager, Recorder};
use common::server::{self, Server};
use common::{db, TestRepo};
use hmac::{Hmac, Mac};
use serde_json::json;

const SECRET: &str = server::WEBHOOK_SECRET;

fn start_with_sinks(repo: &TestRepo, backend: &str, sinks: &str) -> (Server, db::TestDatabase) {
    // The webhook secret comes from the server's environment, never the config file.
    let database = db::fresh(backend);
    let server = server::start_with(repo.path(), &database.url, &tokens(), "", sinks);
    (server, database)
}

fn alertmanager_sink(url: &str) -> String {
    format!("[[alerts.sinks]]\nname = \"fleet-monitor\"\nkind = \"alertmanager\"\nurl = \"{url}\"\nresend = \"1s\"\n")
}

fn webhook_sink(port: u16) -> String {
    format!("[[alerts.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_env = \"CG_TEST_WEBHOOK_SECRET\"\n")
}

fn pagerduty_sink(port: u16) -> String {
    format!("[[alerts.sinks]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{port}/v2/enqueue\"\nrouting_key_env = \"CG_TEST_PD_KEY\"\n")
}

/// Fails the one step of change `c` through the real executor.
fn fail_step(repo: &TestRepo, server: &Server) {
    approve(server, "alice", repo, "c");
    let fleet = tempfile::tempdir().unwrap();
    assert_eq!(
        exec(repo.path(), server, &["c"], fleet.path())
            .status
            .code(),
        Some(1)
    );
}

fn firing_for(am: &Alertmanager, change: &str) -> bool {
    am.alerts()
        .iter()
        .any(|a| a["labels"]["change"] == change && a["status"]["state"] == "active")
}

#[test]
fn a_failed_step_fires_in_alertmanager_with_its_labels_until_abandoned() {
    let am = Alertmanager::start();
    let repo = simple_repo("echo 'disk full' >&2; exit 3", "");
    let (server, _db) = start_with_sinks(&repo, "sqlite", &alertmanager_sink(&am.url));
    fail_step(&repo, &server);
    eventually(15, "the alert in Alertmanager", || firing_for(&am, "c"));
    let alert = am
        .alerts()
        .into_iter()
        .find(|a| a["labels"]["change"] == "c")
        .unwrap();
    assert_eq!(alert["labels"]["alertname"], "ChangegateStepFailed");
    assert_eq!(alert["labels"]["step"], "only");
    assert_eq!(alert["labels"]["targets"], "web");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert!(alert["annotations"]["output_tail"]
        .as_str()
        .unwrap()
        .contains("disk full"));
    assert!(alert["generatorURL"]
        .as_str()
        .unwrap()
        .ends_with("/changes/c"));
    client(&server, "bob")
        .abandon("c", "rolled back by hand")
        .unwrap();
    eventually(15, "the alert to resolve", || !firing_for(&am, "c"));
}

#[test]
fn completing_the_change_resolves_its_alert() {
    let am = Alertmanager::start();
    let repo = simple_repo("test -e \"$RUNS.ok\"", "");
    repo.write("policies/p.yaml", "approvals:\n  required: 1\n  from: [alice, bob, dave]\nexecution:\n  retry_requires_approval: false\n");
    repo.commit("retries without approval");
    let (server, _db) = start_with_sinks(&repo, "sqlite", &alertmanager_sink(&am.url));
    fail_step(&repo, &server);
    eventually(15, "the alert", || firing_for(&am, "c"));
    client(&server, "bob").retry("c", "fixed").unwrap();
    let fleet = tempfile::tempdir().unwrap();
    std::fs::write(format!("{}.ok", fleet.path().join("runs").display()), "").unwrap();
    assert_eq!(
        exec(repo.path(), &server, &["c"], fleet.path())
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        client(&server, "alice").change("c").unwrap()["state"],
        "completed"
    );
    eventually(15, "the alert to resolve", || !firing_for(&am, "c"));
}

#[test]
fn an_alertmanager_restart_loses_nothing_the_next_resend_restores_it() {
    let mut am = Alertmanager::start();
    let repo = simple_repo("false", "");
    let (server, _db) = start_with_sinks(&repo, "sqlite", &alertmanager_sink(&am.url));
    fail_step(&repo, &server);
    eventually(15, "the alert", || firing_for(&am, "c"));
    am.restart(); // Alertmanager keeps no alerts across a restart
    eventually(15, "the re-sent alert after the restart", || {
        firing_for(&am, "c")
    });
}

fn verify_signature(signature: &str, body: &[u8]) -> bool {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|sig| mac.verify_slice(&sig).is_ok())
}

#[test]
fn webhook_and_pagerduty_get_signed_fire_and_resolve_with_stable_dedup_keys() {
    for backend in db::BACKENDS {
        let (hook_port, pd_port) = (free_port(), free_port());
        let (hook, pd) = (Recorder::start(hook_port), Recorder::start(pd_port));
        let repo = simple_repo("false", "");
        let (server, _db) = start_with_sinks(
            &repo,
            backend,
            &format!("{}{}", webhook_sink(hook_port), pagerduty_sink(pd_port)),
        );
        fail_step(&repo, &server);
        eventually(15, "the firing webhook and trigger", || {
            !hook.all().is_empty() && !pd.all().is_empty()
        });
        client(&server, "bob").abandon("c", "done by hand").unwrap();
        eventually(15, "the resolves", || {
            hook.all().len() >= 2 && pd.all().len() >= 2
        });

        let hooks = hook.all();
        for h in &hooks {
            assert!(
                verify_signature(h.signature.as_deref().expect("signed"), &h.body),
                "{backend}: the signature verifies"
            );
        }
        assert_eq!(hooks[0].json()["event"], "firing");
        assert_eq!(hooks[1].json()["event"], "resolved");
        assert_eq!(hooks[0].json()["id"], hooks[1].json()["id"]);
        let pds = pd.all();
        assert_eq!(pds[0].json()["event_action"], "trigger");
        assert_eq!(pds[1].json()["event_action"], "resolve");
        assert_eq!(
            pds[0].json()["dedup_key"],
            pds[1].json()["dedup_key"],
            "{backend}: the dedup key is stable"
        );
        assert_eq!(pds[0].json()["dedup_key"], hooks[0].json()["id"]);
        assert_eq!(pds[0].json()["routing_key"], server::PAGERDUTY_KEY);
    }
}

#[test]
fn a_sink_that_is_down_gets_every_alert_when_it_is_back() {
    let port = free_port(); // nothing listens yet
    let repo = simple_repo("false", "");
    for n in 1..=2 {
        repo.write(&format!("changes/f{n}.yaml"), format!("title: f\nkind: config\ntargets: [t{n}]\nsteps:\n  - id: only\n    run: ./step.sh\n"));
    }
    repo.commit("two more failing changes");
    let (server, _db) = start_with_sinks(&repo, "sqlite", &webhook_sink(port));
    let fleet = tempfile::tempdir().unwrap();
    for id in ["c", "f1", "f2"] {
        approve(&server, "alice", &repo, id);
        assert_eq!(
            exec(repo.path(), &server, &[id], fleet.path())
                .status
                .code(),
            Some(1)
        );
    }
    eventually(10, "failed delivery attempts to be recorded", || {
        let alerts = client(&server, "alice").alerts().unwrap();
        alerts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| a["deliveries"].as_array().unwrap().clone())
            .any(|d| d["state"] == "failing")
    });
    let hook = Recorder::start(port);
    // Three step alerts and the breaker alert (three failures opened it).
    eventually(20, "every alert after the sink came back", || {
        hook.all().len() >= 4
    });
    let ids: std::collections::BTreeSet<String> = hook
        .all()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.iter().any(|i| i.starts_with("breaker-open:")));
}

#[test]
fn deliveries_pending_at_a_kill_9_are_sent_after_restart() {
    for backend in db::BACKENDS {
        let port = free_port();
        let repo = simple_repo("false", "");
        let (mut server, _db) = start_with_sinks(&repo, backend, &webhook_sink(port));
        fail_step(&repo, &server);
        server.kill9();
        let hook = Recorder::start(port);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            hook.all().is_empty(),
            "nothing is sent while the server is down"
        );
        server.restart();
        eventually(20, "the pending alert after the restart", || {
            !hook.all().is_empty()
        });
        assert_eq!(hook.all()[0].json()["event"], "firing", "{backend}");
    }
}

fn ask(server: &Server, action: &str, target: &str) -> u16 {
    server
        .post(
            "/api/v1/actions",
            "monitor-token",
            &json!({"actor": "fleet-sm", "action": action, "target": target}),
        )
        .0
}

fn budget_repo() -> TestRepo {
    let repo = simple_repo("false", "");
    repo.write(
        "policies/fleet.yaml",
        "actions:\n  reboot: { max: 3, per: 10m }\n",
    );
    repo.commit("a reboot budget");
    repo
}

fn start_with_monitor(repo: &TestRepo, backend: &str) -> (Server, db::TestDatabase) {
    let database = db::fresh(backend);
    let mut toks = tokens();
    toks.push(("monitor".into(), "monitor", "monitor-token".into()));
    let server = server::start_with(repo.path(), &database.url, &toks, "", "");
    (server, database)
}

#[test]
fn fleet_actions_are_allowed_locked_or_refused_when_the_budget_is_spent() {
    let repo = budget_repo();
    let (server, _db) = start_with_monitor(&repo, "sqlite");
    assert_eq!(
        server
            .post(
                "/api/v1/actions",
                "alice-token",
                &json!({"actor": "x", "action": "reboot", "target": "h"})
            )
            .0,
        403
    );
    assert_eq!(ask(&server, "reboot", "host-1"), 200);
    assert_eq!(
        ask(&server, "failover", "host-1"),
        200,
        "an action without a budget is allowed"
    );
    fail_step(&repo, &server); // change c now owns `web`
    assert_eq!(
        ask(&server, "reboot", "web"),
        423,
        "a failed change owns its target"
    );
    assert_eq!(ask(&server, "reboot", "host-2"), 200);
    assert_eq!(ask(&server, "reboot", "host-3"), 200);
    assert_eq!(
        ask(&server, "reboot", "host-4"),
        429,
        "the fourth reboot in 10m"
    );
    assert_eq!(
        ask(&server, "reboot", "host-5"),
        429,
        "and it stays refused"
    );
    let alerts = client(&server, "alice").alerts().unwrap();
    assert!(alerts.as_array().unwrap().iter().any(|a| a["id"]
        .as_str()
        .unwrap()
        .starts_with("action-budget:reboot:")
        && a["state"] == "firing"));
    client(&server, "bob")
        .reset_breaker("a person looked at the fleet", Some("reboot"))
        .unwrap();
    assert_eq!(
        ask(&server, "reboot", "host-6"),
        200,
        "reset lifts the refusal"
    );
    let alerts = client(&server, "alice").alerts().unwrap();
    assert!(alerts.as_array().unwrap().iter().all(|a| !a["id"]
        .as_str()
        .unwrap()
        .starts_with("action-budget:")
        || a["state"] == "resolved"));
}

fn parallel_asks(urls: &[String], n: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                s.spawn(move || {
                    let (status, _) = server::post(&url, "/api/v1/actions", "monitor-token", &json!({"actor": "fleet-sm", "action": "reboot", "target": format!("host-{i}")}));
                    status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn fifty_parallel_requests_against_a_budget_of_three_allow_exactly_three() {
    let repo = budget_repo();
    let (server, _db) = start_with_monitor(&repo, "sqlite");
    let statuses = parallel_asks(std::slice::from_ref(&server.url), 50);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 47);
}

#[test]
fn two_replicas_on_postgres_allow_exactly_three_of_fifty() {
    let repo = budget_repo();
    let database = db::fresh("postgres");
    let mut toks = tokens();
    toks.push(("monitor".into(), "monitor", "monitor-token".into()));
    let (a, b) = (
        server::start(repo.path(), &database.url, &toks),
        server::start(repo.path(), &database.url, &toks),
    );
    let statuses = parallel_asks(&[a.url.clone(), b.url.clone()], 50);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
}
