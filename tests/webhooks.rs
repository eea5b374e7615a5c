//! `POST /webhooks/github` with real GitHub payloads, signed over the exact
//! fixture bytes: verified, deduplicated, stored before the 2xx.

mod common;

use changegate::store::Store;
use common::gate_fixture::*;
use common::github::{
    deliver, from_repository, repository_json, sign, start_server, FakeGithub, REPOSITORY,
};
use common::server::Server;
use common::{db, TestRepo};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        common::project_root()
            .join("../shared/fixtures/github-webhooks")
            .join(name),
    )
    .unwrap()
}

fn start(repo: &TestRepo, backend: &str) -> (Server, db::TestDatabase, FakeGithub) {
    let github = FakeGithub::start();
    let (server, database) = start_server(repo, backend, &github);
    (server, database, github)
}

fn inbox(database: &db::TestDatabase) -> Vec<(String, String, Vec<u8>, bool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        Store::connect(&database.url)
            .await
            .unwrap()
            .inbox()
            .await
            .unwrap()
    })
}

#[test]
fn signed_deliveries_are_stored_byte_for_byte_once() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        let (server, database, _github) = start(&repo, backend);
        let review = fixture("pull_request_review.submitted.approved.atlantis-trimmed.json");
        let first = deliver(
            &server,
            "pull_request_review",
            "d-1",
            &review,
            &sign(&review),
        );
        assert_eq!(first, 202, "{backend}: {}", server.log());
        assert_eq!(
            deliver(
                &server,
                "pull_request_review",
                "d-1",
                &review,
                &sign(&review)
            ),
            200,
            "a redelivery is acknowledged"
        );
        let opened = fixture("pull_request.opened.json");
        assert_eq!(
            deliver(&server, "pull_request", "d-2", &opened, &sign(&opened)),
            202
        );
        let stored = inbox(&database);
        assert_eq!(
            stored.len(),
            2,
            "{backend}: the redelivery is not stored twice"
        );
        assert_eq!(stored[0].2, review, "{backend}: the raw bytes are kept");
        let audit: serde_json::Value = server.get("/api/v1/audit", Some("alice-token")).1;
        let received = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "webhook.received")
            .flat_map(|e| e["data"]["deliveries"].as_array().unwrap().clone())
            .map(|d| d["delivery"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(
            received,
            ["d-1", "d-2"],
            "{backend}: each stored delivery is audited once"
        );
    }
}

#[test]
fn forged_or_unsigned_deliveries_get_401_and_nothing_is_stored() {
    let repo = simple_repo("true", "");
    let (server, database, _github) = start(&repo, "sqlite");
    let body = fixture("pull_request_review.submitted.json");
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        deliver(
            &server,
            "pull_request_review",
            "f-1",
            &tampered,
            &sign(&body)
        ),
        401,
        "body changed after signing"
    );
    assert_eq!(
        deliver(&server, "pull_request_review", "f-2", &body, "sha256=00"),
        401
    );
    assert_eq!(
        deliver(&server, "pull_request_review", "f-3", &body, ""),
        401
    );
    let truncated = sign(&body)[..40].to_string();
    assert_eq!(
        deliver(&server, "pull_request_review", "f-4", &body, &truncated),
        401,
        "a truncated signature"
    );
    assert!(inbox(&database).is_empty());
    let metrics = server.metrics();
    assert!(
        metrics
            .contains("changegate_webhooks_total{outcome=\"rejected\",reason=\"bad-signature\"} 4"),
        "{metrics}"
    );
}

#[test]
fn unknown_events_are_acknowledged_and_recorded() {
    let repo = simple_repo("true", "");
    let (server, database, _github) = start(&repo, "sqlite");
    // From the configured repository (the fixture's own is foreign here).
    let body = from_repository(
        &fixture("check_run.completed.json"),
        &repository_json(REPOSITORY),
    );
    assert_eq!(
        deliver(&server, "check_run", "u-1", &body, &sign(&body)),
        202
    );
    assert_eq!(inbox(&database)[0].1, "check_run");
    let outcomes = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                Store::connect(&database.url)
                    .await
                    .unwrap()
                    .delivery_outcomes()
                    .await
                    .unwrap()
            })
    };
    // A signed delivery that is not JSON is rejected with the reason, not retried.
    let garbage = b"{\"action\": \"opened\", \"pull_request\": ";
    assert_eq!(
        deliver(&server, "pull_request", "u-2", garbage, &sign(garbage)),
        202
    );
    wait_for(
        || outcomes().iter().all(|o| o.1.is_some()),
        "the deliveries to be processed",
    );
    let all = outcomes();
    let (_, outcome, _, why) = &all[0];
    assert_eq!(outcome.as_deref(), Some("ignored"));
    assert!(why.as_deref().unwrap().contains("check_run"));
    let (_, outcome, attempts, why) = &all[1];
    assert_eq!(outcome.as_deref(), Some("rejected"));
    assert_eq!(*attempts, 0, "a payload that cannot parse is not retried");
    assert!(why.as_deref().unwrap().contains("line 1"), "{why:?}");
    let metrics = server.metrics();
    assert!(
        metrics.contains("changegate_inbox_pending 0"),
        "the inbox depth is exported: {metrics}"
    );
}

#[test]
fn bodies_over_25_mb_are_refused_with_413() {
    let repo = simple_repo("true", "");
    let (server, database, _github) = start(&repo, "sqlite");
    let big = vec![b' '; 25 * 1024 * 1024 + 1];
    assert_eq!(deliver(&server, "push", "big-1", &big, &sign(&big)), 413);
    assert!(inbox(&database).is_empty());
}

#[test]
fn a_delivery_acknowledged_before_a_kill_9_is_there_after_restart() {
    let repo = simple_repo("true", "");
    let (mut server, database, _github) = start(&repo, "sqlite");
    let body = fixture("push.json");
    assert_eq!(deliver(&server, "push", "k-1", &body, &sign(&body)), 202);
    server.kill9();
    server.restart();
    assert_eq!(inbox(&database).len(), 1);
    assert_eq!(
        deliver(&server, "push", "k-1", &body, &sign(&body)),
        200,
        "still deduplicated after the restart"
    );
}

#[test]
fn concurrent_deliveries_share_commits_and_each_is_stored_once() {
    for backend in db::BACKENDS {
        let repo = simple_repo("true", "");
        let (server, database, _github) = start(&repo, backend);
        let body = fixture("check_run.created.json");
        // 48 deliveries from 16 threads, every third one a redelivery.
        let codes: Vec<(String, u16)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let (server, body) = (&server, &body);
                    s.spawn(move || {
                        (0..3)
                            .map(|i| {
                                let id = format!("c-{}", (t * 3 + i) % 32);
                                let code = deliver(server, "check_run", &id, body, &sign(body));
                                (id, code)
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
        assert!(
            codes.iter().all(|(_, c)| *c == 202 || *c == 200),
            "{codes:?}"
        );
        assert_eq!(
            codes.iter().filter(|(_, c)| *c == 202).count(),
            32,
            "{backend}: one 202 per delivery id"
        );
        assert_eq!(inbox(&database).len(), 32);
        if backend == "sqlite" {
            // The background checkpointer copies the WAL into the database
            // file: 32 small deliveries are far below the 1,000 pages at
            // which a commit would have run SQLite's own checkpoint.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match rows_in_database_file(&database) {
                    Some(32) => break,
                    seen => assert!(
                        std::time::Instant::now() < deadline,
                        "the database file alone holds {seen:?} inbox rows, not 32"
                    ),
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let out = server.audit_verify();
        assert!(out.status.success(), "{backend}: {}", text(&out));
    }
}

/// Inbox rows in a copy of the SQLite database file taken without its WAL:
/// the rows a checkpoint has copied there. None while a copy is torn.
fn rows_in_database_file(database: &db::TestDatabase) -> Option<usize> {
    let file = database.url.strip_prefix("sqlite://").unwrap();
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join("copy.db");
    std::fs::copy(file, &path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .ok()?;
        let rows = store.inbox().await.ok().map(|rows| rows.len());
        store.close().await;
        rows
    })
}

#[test]
fn one_batch_with_a_repeated_delivery_id_stores_it_once() {
    use changegate::store::{InboxCompression, PreparedDelivery};
    db::with_store(&db::BACKENDS, |store, _, backend| async move {
        let big = fixture("pull_request_review.submitted.json");
        let d = |id: &str, c| PreparedDelivery::new(id, "pull_request_review", &big, c);
        assert!(
            d("x", InboxCompression::Lz4).stored_len() < big.len() / 3,
            "large payloads are stored compressed"
        );
        // Rows written under each setting read back alike.
        let mut inbox = store.inbox_writer();
        let stored = inbox
            .store(&[
                d("a", InboxCompression::Lz4),
                d("b", InboxCompression::Deflate),
                d("a", InboxCompression::None),
            ])
            .await
            .unwrap();
        assert_eq!(stored, [true, true, false], "{backend}");
        assert_eq!(
            inbox
                .store(&[d("b", InboxCompression::None)])
                .await
                .unwrap(),
            [false]
        );
        inbox
            .store(&[d("c", InboxCompression::None)])
            .await
            .unwrap();
        let inbox = store.inbox().await.unwrap();
        assert_eq!(inbox.len(), 3);
        for (id, _, body, _) in &inbox {
            assert_eq!(body, &big, "{backend} {id}: decompressed byte for byte");
        }
        // One audit event per batch; none for the redelivery.
        assert_eq!(store.verify_audit().await.unwrap(), Ok(2), "{backend}");
    });
}

#[test]
fn a_batch_that_fails_stores_none_of_it_and_the_writer_goes_on() {
    use changegate::store::{InboxCompression, PreparedDelivery};
    db::with_store(&db::BACKENDS, |store, url, backend| async move {
        let big = fixture("pull_request_review.submitted.json");
        let d = |id: &str| {
            PreparedDelivery::new(id, "pull_request_review", &big, InboxCompression::Lz4)
        };
        let mut inbox = store.inbox_writer();
        assert_eq!(inbox.store(&[d("a")]).await.unwrap(), [true]);
        // Another writer appends between batches: the next batch chains
        // after its event, not after the head the inbox writer last saw.
        let mut w = store.write().await.unwrap();
        w.audit("test", "between.batches", None, serde_json::json!({}))
            .await
            .unwrap();
        w.commit().await.unwrap();
        // The batch fails after its insert ran: the audit head is gone.
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let raw = |sql: &'static str| sqlx::query(sql).execute(&pool);
        raw("DELETE FROM audit_head").await.unwrap();
        assert!(inbox.store(&[d("b"), d("c")]).await.is_err(), "{backend}");
        // Restored, the same writer stores again, and "b" is new: the
        // failed batch left nothing behind.
        raw("INSERT INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .await
            .unwrap();
        pool.close().await;
        assert_eq!(
            inbox.store(&[d("b"), d("a")]).await.unwrap(),
            [true, false],
            "{backend}"
        );
        let ids: Vec<String> = store
            .inbox()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(ids.len(), 2, "{backend}: {ids:?}");
        assert_eq!(store.verify_audit().await.unwrap(), Ok(3), "{backend}");
    });
}

#[test]
fn an_inbox_row_that_cannot_be_read_is_failed_and_the_rest_go_on() {
    use changegate::store::{InboxCompression, PreparedDelivery};
    db::with_store(&db::BACKENDS, |store, url, backend| async move {
        let big = fixture("pull_request_review.submitted.json");
        let d = |id: &str| {
            PreparedDelivery::new(id, "pull_request_review", &big, InboxCompression::Lz4)
        };
        store
            .inbox_writer()
            .store(&[d("bad"), d("good")])
            .await
            .unwrap();
        // A damaged row (or one in an encoding this version lacks).
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE inbox SET encoding = 'zstd' WHERE delivery_id = 'bad'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let due = store.due_deliveries(10).await.unwrap();
        let ids: Vec<&str> = due.iter().map(|i| i.delivery_id.as_str()).collect();
        assert_eq!(ids, ["good"], "{backend}");
        assert_eq!(due[0].body, big);
        let outcomes = store.delivery_outcomes().await.unwrap();
        let bad = outcomes.iter().find(|o| o.0 == "bad").unwrap();
        assert_eq!(bad.1.as_deref(), Some("failed"), "{backend}");
        assert!(bad.3.as_deref().unwrap().contains("zstd"), "{bad:?}");
        // Audited: the batch's receipt, then the failure.
        assert_eq!(store.verify_audit().await.unwrap(), Ok(2), "{backend}");
    });
}
