//! The store on both backends: facts, idempotence, and the audit chain.

mod common;

use changegate::git::ChangeRepo;
use changegate::model::{covered_paths, ChangeSet, CoveredPath, Digest, OnBranch, Shared};
use changegate::store::{BranchChange, BranchDelta, ChainBreak, RecordOutcome, Store, SyncReport};
use common::{db, simple_change, TestRepo};

/// Each change at the head with its digest and covered paths.
type AtHead = Vec<(ChangeSet, Digest, Vec<CoveredPath>)>;

fn changes_at_head(repo: &TestRepo) -> (String, AtHead) {
    let r = ChangeRepo::open(repo.path()).unwrap();
    let snap = r.at("HEAD").unwrap();
    let model = snap.load_model().unwrap();
    let changes = model.changes.into_values().map(|c| {
        let covered = covered_paths(&c, &snap).unwrap();
        (c, Digest::of(&covered), covered)
    });
    (snap.commit_id().to_string(), changes.collect())
}

/// Runs `case` once per backend on a fresh, migrated database.
fn on_each_backend<F, Fut>(case: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    db::with_store(&db::BACKENDS, |store, _, _| case(store));
}

fn two_changes() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/a.yaml", simple_change("a"))
        .write("changes/b.yaml", simple_change("b"));
    repo.commit("two changes");
    repo
}

/// The changes of `two_changes`, and of the commit `edit` makes on top.
fn moved_from_two_changes(edit: impl FnOnce(&TestRepo)) -> ((String, AtHead), (String, AtHead)) {
    let repo = two_changes();
    let before = changes_at_head(&repo);
    edit(&repo);
    repo.commit("move");
    (before, changes_at_head(&repo))
}

#[test]
fn migrations_are_idempotent() {
    on_each_backend(|store| async move {
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
    });
}

#[test]
fn syncing_records_each_change_once_with_its_digest() {
    let repo = two_changes();
    let (commit, changes) = changes_at_head(&repo);
    on_each_backend(|store| {
        let changes = changes.clone();
        let commit = commit.clone();
        async move {
            let first = sync(&store, &commit, &changes).await;
            assert_eq!((first.added, first.redigested, first.removed), (2, 0, 0));
            let again = sync(&store, &commit, &changes).await;
            assert_eq!(
                again,
                Default::default(),
                "a second sync of the same commit changes nothing"
            );
            let listed = store.list_changes().await.unwrap();
            assert_eq!(
                listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
                ["a", "b"]
            );
            assert_eq!(listed[0].digest, changes[0].1.as_str());
            assert_eq!(store.audit_events(None).await.unwrap().len(), 2);
        }
    });
}

#[test]
fn a_new_digest_and_a_removed_change_are_recorded() {
    let ((c1, first), (c2, second)) = moved_from_two_changes(|repo| {
        repo.write("run.sh", "echo changed\n")
            .remove("changes/b.yaml");
    });
    on_each_backend(|store| {
        let (first, second, c1, c2) = (first.clone(), second.clone(), c1.clone(), c2.clone());
        async move {
            sync(&store, &c1, &first).await;
            let r = sync(&store, &c2, &second).await;
            assert_eq!((r.added, r.redigested, r.removed), (0, 1, 1));
            let kinds: Vec<String> = store
                .audit_events(None)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            assert_eq!(
                kinds,
                [
                    "change.seen",
                    "change.seen",
                    "change.digest-changed",
                    "change.removed"
                ]
            );
            assert!(store.get_change("b").await.unwrap().is_none());
        }
    });
}

#[test]
fn an_api_approval_is_recorded_once_and_only_for_the_current_digest() {
    let repo = two_changes();
    let (commit, changes) = changes_at_head(&repo);
    on_each_backend(|store| {
        let (commit, changes) = (commit.clone(), changes.clone());
        async move {
            sync(&store, &commit, &changes).await;
            let digest = changes[0].1.as_str();
            assert_eq!(
                store
                    .record_api_approval("a", "alice", digest, "lgtm")
                    .await
                    .unwrap(),
                RecordOutcome::Created
            );
            assert_eq!(
                store
                    .record_api_approval("a", "alice", digest, "again")
                    .await
                    .unwrap(),
                RecordOutcome::AlreadyRecorded
            );
            assert_eq!(
                store
                    .record_api_approval("a", "bob", "sha256:old", "")
                    .await
                    .unwrap(),
                RecordOutcome::StaleDigest {
                    current: digest.to_string()
                }
            );
            assert_eq!(
                store
                    .record_api_approval("nope", "bob", digest, "")
                    .await
                    .unwrap(),
                RecordOutcome::UnknownChange
            );
            let approvals = store.api_approvals("a").await.unwrap();
            assert_eq!(approvals.len(), 1);
            assert_eq!(
                (
                    approvals[0].approver.as_str(),
                    approvals[0].comment.as_str()
                ),
                ("alice", "lgtm")
            );
            let events = store.audit_events(Some("a")).await.unwrap();
            assert_eq!(events.last().unwrap().kind, "approval.recorded");
            assert_eq!(events.last().unwrap().actor, "alice");
            assert_eq!(store.verify_audit().await.unwrap(), Ok(3));
        }
    });
}

/// Records `changes` as every change on `main` at `commit`.
async fn sync(store: &Store, commit: &str, changes: &AtHead) -> SyncReport {
    sync_move(store, commit, None, changes, &[]).await
}

/// Records a read of `main` at `commit`: every change, or with `base`, the
/// move from it (`changes` read again, `removed` gone).
async fn sync_move(
    store: &Store,
    commit: &str,
    base: Option<&str>,
    changes: &AtHead,
    removed: &[&str],
) -> SyncReport {
    let none = std::collections::BTreeSet::new();
    let held: Vec<OnBranch> = changes
        .iter()
        .map(|(change, _, covered)| OnBranch::new(change, covered, &mut Shared::default()))
        .collect();
    let read = changes
        .iter()
        .zip(&held)
        .map(|((change, _, _), held)| BranchChange {
            id: &change.id,
            held,
            emails: &none,
        })
        .collect();
    store
        .sync_changes(&BranchDelta {
            branch: "main",
            commit,
            base,
            read,
            removed: removed.iter().map(|id| id.to_string()).collect(),
            full: base.is_none(),
            invalid: &none,
        })
        .await
        .unwrap()
}

/// A store with five audit events.
async fn five_events(store: &Store, commit: &str, changes: &AtHead) {
    sync(store, commit, changes).await;
    for who in ["alice", "bob", "carol"] {
        store
            .record_api_approval("a", who, changes[0].1.as_str(), "")
            .await
            .unwrap();
    }
    assert_eq!(store.verify_audit().await.unwrap(), Ok(5));
}

/// Five audit events on each backend, then the tampering `statements`:
/// verification must name `expected`.
fn detects_tampering(statements: &'static [&'static str], expected: ChainBreak) {
    let repo = two_changes();
    let (commit, changes) = changes_at_head(&repo);
    on_each_backend(|store| {
        let (commit, changes, expected) = (commit.clone(), changes.clone(), expected.clone());
        async move {
            five_events(&store, &commit, &changes).await;
            for sql in statements {
                store.execute_raw(sql).await.unwrap();
            }
            let verdict = store.verify_audit().await.unwrap();
            assert_eq!(verdict, Err(expected));
        }
    });
}

#[test]
fn an_edited_audit_row_is_detected() {
    detects_tampering(
        &["UPDATE audit SET actor = 'mallory' WHERE seq = 4"],
        ChainBreak::Edited { seq: 4 },
    );
}

#[test]
fn a_deleted_audit_row_is_detected() {
    detects_tampering(
        &["DELETE FROM audit WHERE seq = 3"],
        ChainBreak::Removed {
            expected: 3,
            found: 4,
        },
    );
}

#[test]
fn a_deleted_last_row_is_detected() {
    detects_tampering(
        &["DELETE FROM audit WHERE seq = 5"],
        ChainBreak::Truncated { last: 4, head: 5 },
    );
}

#[test]
fn a_swapped_pair_of_audit_rows_is_detected() {
    // Move 3 and 4 out of the way, then back with their sequence numbers exchanged.
    detects_tampering(
        &[
            "UPDATE audit SET seq = seq + 100 WHERE seq IN (3, 4)",
            "UPDATE audit SET seq = 4 WHERE seq = 103",
            "UPDATE audit SET seq = 3 WHERE seq = 104",
        ],
        ChainBreak::Edited { seq: 3 },
    );
}

#[test]
fn the_two_migration_sets_differ_only_in_dialect() {
    let root = common::project_root().join("migrations");
    let normalise = |backend: &str, file: &str| {
        std::fs::read_to_string(root.join(backend).join(file))
            .unwrap()
            .replace("BIGSERIAL PRIMARY KEY", "AUTO_ID")
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "AUTO_ID")
            .replace("BYTEA", "BYTES")
            .replace("BLOB", "BYTES")
            .lines()
            .filter(|l| {
                !l.starts_with("-- changegate schema")
                    && !l.starts_with("-- same tables")
                    && !l.starts_with("-- The gate's facts")
                    && !l.starts_with("-- Alert delivery")
            })
            .map(|l| {
                l.replace("../sqlite/", "../OTHER/")
                    .replace("../postgres/", "../OTHER/")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for file in ["0001_initial.sql", "0002_gate.sql", "0003_alerts.sql"] {
        assert_eq!(
            normalise("sqlite", file),
            normalise("postgres", file),
            "keep migrations/sqlite/{file} and migrations/postgres/{file} in step"
        );
    }
}

#[test]
fn a_stored_definition_reads_back_as_the_same_change_set() {
    // The project's own change sets: rollouts with shares and bakes,
    // per-target steps, rollbacks, includes, targets from a file.
    let repo = ChangeRepo::open(&common::project_root()).unwrap();
    let model = repo.at("HEAD").unwrap().load_model().unwrap();
    assert!(model.changes.len() >= 3);
    assert!(model.changes.values().any(|c| c.rollout.is_some()));
    for change in model.changes.values() {
        let stored = serde_json::to_string(change).unwrap();
        let mut back: ChangeSet = serde_json::from_str(&stored).unwrap();
        back.id = change.id.clone();
        assert_eq!(&back, change, "{stored}");
    }
}

#[test]
fn a_full_read_leaves_no_write_ahead_log_behind() {
    // A full read writes every change in one transaction; on SQLite the
    // WAL would stay that size, and a restart after a crash reads it back.
    db::with_store(&["sqlite"], |store, url, _| async move {
        let path = url.strip_prefix("sqlite://").unwrap().to_string();
        let repo = TestRepo::new();
        repo.write("run.sh", "");
        for i in 0..400 {
            repo.write(
                &format!("changes/c{i}.yaml"),
                simple_change(&format!("c{i}")),
            );
        }
        repo.commit("400 changes");
        let (commit, changes) = changes_at_head(&repo);
        assert_eq!(sync(&store, &commit, &changes).await.added, 400);
        let wal = std::fs::metadata(format!("{path}-wal")).unwrap().len();
        assert_eq!(wal, 0, "the WAL was checkpointed and truncated");
    });
}

#[test]
fn a_full_read_never_drops_an_author_the_store_knew() {
    // Replica A stored carol as an author of `a` (an edit she undid);
    // replica B's full read finds only alice. carol must stay an author,
    // or she could approve her own change.
    on_each_backend(|store| async move {
        let repo = two_changes();
        let (commit, changes) = changes_at_head(&repo);
        let change = &changes[0].0;
        // No covered paths: the stored row must agree with its digest.
        let held = OnBranch::new(change, &[], &mut Shared::default());
        let none = std::collections::BTreeSet::new();
        let delta = |emails| BranchDelta {
            branch: "main",
            commit: &commit,
            base: None,
            read: vec![BranchChange {
                id: &change.id,
                held: &held,
                emails,
            }],
            removed: Vec::new(),
            full: true,
            invalid: &none,
        };
        let both: std::collections::BTreeSet<String> = ["alice@example.com", "carol@example.com"]
            .map(String::from)
            .into();
        let alice: std::collections::BTreeSet<String> = ["alice@example.com".to_string()].into();
        store.sync_changes(&delta(&both)).await.unwrap();
        let report = store.sync_changes(&delta(&alice)).await.unwrap();
        assert_eq!(report.kept_emails.get(&change.id), Some(&both));
        let stored = store.stored_branch("main").await.unwrap().unwrap();
        assert_eq!(*stored.emails[&change.id], both);
    });
}

/// Asserts that the stored view holds exactly `changes`, each as read.
async fn assert_stored(store: &Store, changes: &AtHead) {
    let stored = store
        .stored_branch("main")
        .await
        .unwrap()
        .expect("a stored view");
    assert_eq!(
        stored.changes.keys().collect::<Vec<_>>(),
        changes.iter().map(|(c, _, _)| &c.id).collect::<Vec<_>>()
    );
    for (change, digest, covered) in changes {
        let held = &stored.changes[&change.id];
        assert_eq!(held.unpack(&change.id), (change.clone(), covered.clone()));
        assert_eq!(&held.digest(), digest);
    }
}

/// An edit of change `a`'s row as a version that knows no `packed` or
/// `outline` writes it: a new digest, and the rest left as it was.
fn edited_by_an_older_version() -> String {
    format!(
        "UPDATE changes SET covered = '[]', default_digest = '{}' WHERE id = 'a'",
        Digest::of(&[])
    )
}

/// Asserts that the stored view holds exactly `changes` with the row of
/// `damaged` unusable: so it came from the pages, not the rows.
async fn assert_stored_from_pages(store: &Store, changes: &AtHead, damaged: &str) {
    let damage = format!("UPDATE changes SET packed = NULL WHERE id = '{damaged}'");
    assert_eq!(store.execute_raw(&damage).await.unwrap(), 1);
    assert_stored(store, changes).await;
}

/// Whether the stored view's pages are marked current.
async fn pages_current(store: &Store) -> bool {
    let marked = "UPDATE branch_views SET pages_at = pages_at WHERE pages_at = updated_at";
    store.execute_raw(marked).await.unwrap() == 1
}

#[test]
fn a_restart_takes_change_sets_from_their_packed_rows_and_rereads_when_they_are_unusable() {
    on_each_backend(|store| async move {
        let repo = two_changes();
        let (commit, changes) = changes_at_head(&repo);
        sync(&store, &commit, &changes).await;
        // Without pages (as after an upgrade to them), the rows are read,
        // each change set unpacks to what was read, and the pages are
        // written again.
        store.execute_raw("DELETE FROM view_pages").await.unwrap();
        assert_stored(&store, &changes).await;
        assert!(pages_current(&store).await);
        assert_eq!(
            store
                .execute_raw("UPDATE view_pages SET page = page")
                .await
                .unwrap(),
            2
        );
        // A row without them (written before they were stored), in another
        // format, damaged, or whose digest moved on without them (as a
        // version that knows no `packed` writes an edit): the branch is
        // read again, not trusted.
        let edited_by_an_older_version = edited_by_an_older_version();
        for damage in [
            edited_by_an_older_version.as_str(),
            "UPDATE changes SET packed = NULL WHERE id = 'a'",
            "UPDATE changes SET outline = NULL WHERE id = 'a'",
            "UPDATE changes SET outline = '{\"format\":0,\"roots\":[],\"depends_on\":[],\"rolls_out\":false}' WHERE id = 'a'",
            "UPDATE changes SET outline = 'not json' WHERE id = 'a'",
            // Covered paths as a version before the digest bound file
            // modes wrote them: the digest still matches, but the modes
            // are unknown.
            "UPDATE changes SET covered = REPLACE(covered, ',\"executable\":false', '') WHERE id = 'a'",
        ] {
            sync(&store, &commit, &changes).await;
            assert!(store.stored_branch("main").await.unwrap().is_some());
            store.execute_raw(damage).await.unwrap();
            store.execute_raw("DELETE FROM view_pages").await.unwrap();
            assert!(
                store.stored_branch("main").await.unwrap().is_none(),
                "{damage}"
            );
            // A full read writes the row again.
            sync(&store, &commit, &changes).await;
            assert!(store.stored_branch("main").await.unwrap().is_some(), "{damage}");
        }
    });
}

#[test]
fn a_restart_takes_the_view_from_its_pages_while_they_are_current() {
    on_each_backend(|store| async move {
        let repo = two_changes();
        let (commit, changes) = changes_at_head(&repo);
        sync(&store, &commit, &changes).await;
        assert!(pages_current(&store).await);
        // The pages are what a restart reads: a row damaged after they
        // were written is not read at all.
        assert_stored_from_pages(&store, &changes, "a").await;
        sync(&store, &commit, &changes).await;

        // A version that knows no pages writes the view: its rows are
        // read, and checked, instead of the pages it left behind.
        let edited_by_an_older_version = edited_by_an_older_version();
        store
            .execute_raw(&edited_by_an_older_version)
            .await
            .unwrap();
        store
            .execute_raw("UPDATE branch_views SET updated_at = updated_at + 1")
            .await
            .unwrap();
        assert!(!pages_current(&store).await);
        assert!(store.stored_branch("main").await.unwrap().is_none());
        sync(&store, &commit, &changes).await;
        // The same write within the millisecond of the pages' stamp: the
        // stamp still says current, but the pages no longer match the rows
        // (ids, digests, emails), so the rows are read, and checked.
        store
            .execute_raw(&edited_by_an_older_version)
            .await
            .unwrap();
        assert!(pages_current(&store).await);
        assert!(store.stored_branch("main").await.unwrap().is_none());
        sync(&store, &commit, &changes).await;
        store
            .execute_raw(r#"UPDATE changes SET emails = '["dev@example.com"]' WHERE id = 'a'"#)
            .await
            .unwrap();
        let stored = store.stored_branch("main").await.unwrap().unwrap();
        assert!(stored.emails["a"].contains("dev@example.com"));
        sync(&store, &commit, &changes).await;

        // A page cut short, or lost: the rows are read, and the pages
        // written again, whole (a damaged row is then not read).
        for damage in [
            "UPDATE view_pages SET body = substr(body, 1, 3) WHERE page = (SELECT MIN(page) FROM view_pages)",
            "DELETE FROM view_pages WHERE page = (SELECT MIN(page) FROM view_pages)",
        ] {
            assert_eq!(store.execute_raw(damage).await.unwrap(), 1, "{damage}");
            assert_stored(&store, &changes).await;
            assert_stored_from_pages(&store, &changes, "a").await;
            sync(&store, &commit, &changes).await;
        }
    });
}

#[test]
fn a_move_rewrites_the_pages_it_touches_and_they_match_the_rows() {
    let ((c1, first), (c2, second)) = moved_from_two_changes(|repo| {
        repo.write(
            "changes/a.yaml",
            simple_change("a").replace("run.sh", "run.sh --again"),
        )
        .write("changes/c.yaml", simple_change("c"))
        .remove("changes/b.yaml");
    });
    on_each_backend(|store| {
        let (first, second, c1, c2) = (first.clone(), second.clone(), c1.clone(), c2.clone());
        async move {
            sync(&store, &c1, &first).await;
            let moved = sync_move(&store, &c2, Some(&c1), &second, &["b"]).await;
            assert_eq!((moved.added, moved.redigested, moved.removed), (1, 1, 1));
            assert!(pages_current(&store).await);
            // From the pages (a damaged row is not read), then from the
            // rows alone: the same view.
            assert_stored_from_pages(&store, &second, "c").await;
            sync(&store, &c2, &second).await;
            store.execute_raw("DELETE FROM view_pages").await.unwrap();
            assert_stored(&store, &second).await;

            // A move over a damaged page drops the pages.
            sync(&store, &c1, &first).await;
            let cut = "UPDATE view_pages SET body = substr(body, 1, 3) WHERE page = (SELECT MIN(page) FROM view_pages)";
            assert_eq!(store.execute_raw(cut).await.unwrap(), 1);
            sync_move(&store, &c2, Some(&c1), &second, &["b"]).await;
            assert!(!pages_current(&store).await);
            assert_stored(&store, &second).await;

            // A move while the pages are not current drops them; the next
            // start reads the rows and writes the pages again.
            sync(&store, &c1, &first).await;
            store
                .execute_raw("UPDATE branch_views SET pages_at = NULL")
                .await
                .unwrap();
            sync_move(&store, &c2, Some(&c1), &second, &["b"]).await;
            assert!(!pages_current(&store).await);
            assert_eq!(
                store
                    .execute_raw("UPDATE view_pages SET page = page")
                    .await
                    .unwrap(),
                0
            );
            assert_stored(&store, &second).await;
            assert!(pages_current(&store).await);
        }
    });
}
