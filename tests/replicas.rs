//! Two `serve` replicas on one Postgres: conflicting writes have exactly one winner.

mod common;

use std::time::Duration;

use common::server::{self, TestToken};
use common::{db, simple_change, TestRepo};
use serde_json::json;

const IDENTITIES: usize = 100;

#[test]
fn two_replicas_never_both_win_a_conflict_and_the_chain_stays_linear() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/a.yaml", simple_change("a"))
        .write("changes/b.yaml", simple_change("b"));
    repo.commit("two changes");
    let digest = String::from_utf8(repo.run(&["digest", "a"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut tokens: Vec<TestToken> = (0..IDENTITIES)
        .map(|n| (format!("op{n}"), "operator", format!("op{n}-token")))
        .collect();
    tokens.push(("viewer".into(), "reader", "viewer-token".into()));
    let database = db::fresh("postgres");

    // Both replicas start at once on the empty database and race to record the changes.
    let path = repo.path().to_path_buf();
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| server::start(&path, &database.url, &tokens));
        let b = s.spawn(|| server::start(&path, &database.url, &tokens));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (_, audit) = r1.get("/api/v1/audit", Some("viewer-token"));
    let seen: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "change.seen")
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        seen,
        ["a", "b"],
        "each change is recorded once, by one replica"
    );

    // 200 concurrent writes: every identity approves through both replicas at once.
    let requests: Vec<(String, usize)> = (0..IDENTITIES)
        .flat_map(|n| [(r1.url.clone(), n), (r2.url.clone(), n)])
        .collect();
    let results: Vec<(usize, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .chunks(requests.len() / 20)
            .map(|chunk| {
                let digest = &digest;
                s.spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    chunk
                        .iter()
                        .map(|(url, n)| {
                            let r = client
                                .post(format!("{url}/api/v1/changes/a/approvals"))
                                .bearer_auth(format!("op{n}-token"))
                                .json(&json!({"digest": digest}))
                                .send()
                                .unwrap();
                            (*n, r.status().as_u16())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 2 * IDENTITIES);
    for n in 0..IDENTITIES {
        let mut statuses: Vec<u16> = results
            .iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, s)| *s)
            .collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 201],
            "op{n}: exactly one replica records the approval"
        );
    }

    let (_, change) = r2.get("/api/v1/changes/a", Some("viewer-token"));
    assert_eq!(
        change["approvals"]["reviews"].as_array().unwrap().len(),
        IDENTITIES
    );
    let (_, audit) = r2.get("/api/v1/audit", Some("viewer-token"));
    let seqs: Vec<i64> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=(IDENTITIES as i64 + 2)).collect::<Vec<_>>(),
        "one linear chain, no gaps, no forks"
    );
    let out = r1.audit_verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn two_replicas_grant_a_fleet_action_budget_once() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/a.yaml", simple_change("a"))
        .write(
            "policies/fleet.yaml",
            "actions:\n  reboot: { max: 3, per: 10m }\n",
        );
    repo.commit("a budget of three reboots");
    let tokens: Vec<TestToken> = vec![("monitor".into(), "monitor", "monitor-token".into())];
    let database = db::fresh("postgres");
    let r1 = server::start(repo.path(), &database.url, &tokens);
    let r2 = server::start(repo.path(), &database.url, &tokens);
    // Forty reboots asked at once, half through each replica.
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let url = if i % 2 == 0 { &r1.url } else { &r2.url };
                s.spawn(move || {
                    reqwest::blocking::Client::new()
                        .post(format!("{url}/api/v1/actions"))
                        .bearer_auth("monitor-token")
                        .json(&json!({"actor": "fleet-sm", "action": "reboot", "target": format!("pg-{i}")}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 37, "{codes:?}");
    assert!(r1.audit_verify().status.success());
}
