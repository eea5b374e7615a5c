//! Nothing acknowledged is lost when `serve` is killed with SIGKILL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{self, TestToken};
use common::{db, simple_change, TestRepo};
use serde_json::json;

const WRITERS: usize = 4;
const PER_WRITER: usize = 60;

#[test]
fn every_acknowledged_write_survives_kill_9_and_the_chain_verifies() {
    for backend in db::BACKENDS {
        let repo = TestRepo::new();
        repo.write("run.sh", "")
            .write("changes/a.yaml", simple_change("a"));
        repo.commit("one change");
        let digest = String::from_utf8(repo.run(&["digest", "a"]).stdout)
            .unwrap()
            .trim()
            .to_string();
        // Approvals are unique per approver and digest, so each write is its own identity.
        let mut tokens: Vec<TestToken> = (0..WRITERS * PER_WRITER)
            .map(|n| (format!("op{n}"), "operator", format!("op{n}-token")))
            .collect();
        tokens.push(("viewer".into(), "reader", "viewer-token".into()));
        let database = db::fresh(backend);
        let mut server = server::start(repo.path(), &database.url, &tokens);

        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (url, digest, acknowledged) =
                    (server.url.clone(), digest.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    for i in 0..PER_WRITER {
                        let n = w * PER_WRITER + i;
                        let sent = client
                            .post(format!("{url}/api/v1/changes/a/approvals"))
                            .bearer_auth(format!("op{n}-token"))
                            .json(&json!({"digest": digest}))
                            .send();
                        match sent {
                            Ok(r) if r.status() == 201 => {
                                acknowledged.lock().unwrap().push(format!("op{n}"))
                            }
                            Ok(r) => panic!("op{n}: unexpected {}", r.status()),
                            Err(_) => return, // killed: this write was never acknowledged
                        }
                    }
                })
            })
            .collect();
        // Kill mid-stream: after some writes were acknowledged, before all were.
        while acknowledged.lock().unwrap().len() < 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        for w in writers {
            w.join().unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        assert!(
            acknowledged.len() < WRITERS * PER_WRITER,
            "{backend}: the kill came too late to test anything"
        );

        server.restart();
        let (status, change) = server.get("/api/v1/changes/a", Some("viewer-token"));
        assert_eq!(status, 200);
        let stored: Vec<String> = change["approvals"]["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["approver"].as_str().unwrap().to_string())
            .collect();
        for name in &acknowledged {
            assert!(
                stored.contains(name),
                "{backend}: acknowledged approval by {name} was lost"
            );
        }
        let out = server.audit_verify();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("audit chain intact: {} events", stored.len() + 1)),
            "{backend}: {text}"
        );
    }
}
