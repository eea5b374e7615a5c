//! The changes on the default branch as last read: their digests and
//! definitions, and the labels of their earlier revisions.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::Row;

use super::{Store, StoreError, StoredChange, SyncReport};
use crate::clock::now_ms;
use crate::model::{ChangeSet, Digest};

/// The labels (kind, targets) of every earlier revision, as stored: the
/// list so far plus the definition being replaced.
fn earlier_labels(replaced: &str, so_far: Option<&str>) -> String {
    let mut all: Vec<Value> = so_far
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(replaced) {
        let label = serde_json::json!({"kind": v["kind"], "targets": v["targets"]});
        if !all.contains(&label) {
            all.push(label);
        }
    }
    Value::Array(all).to_string()
}

impl Store {
    /// Loads the changes found at `commit` of the default branch, with their
    /// digests, and records what changed.
    pub async fn sync_changes(
        &self,
        commit: &str,
        changes: &[(ChangeSet, Digest)],
    ) -> Result<SyncReport, StoreError> {
        let mut w = self.write().await?;
        let mut report = SyncReport::default();
        let known: Vec<(String, String, String, Option<String>)> =
            sqlx::query("SELECT id, default_digest, definition, previous_definition FROM changes")
                .fetch_all(w.conn())
                .await?
                .into_iter()
                .map(|r| {
                    Ok((
                        r.try_get("id")?,
                        r.try_get("default_digest")?,
                        r.try_get("definition")?,
                        r.try_get("previous_definition")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()?;
        let now = now_ms();
        for (change, digest) in changes {
            let definition = serde_json::to_string(change).unwrap_or_default();
            let before = known.iter().find(|(id, _, _, _)| *id == change.id);
            let previous = before.map(|(_, d, _, _)| d.as_str());
            // Every earlier revision's kind and targets, cumulatively: two
            // edits in a row must not shed a policy either.
            let labels = before.map(|(_, _, old, earlier)| earlier_labels(old, earlier.as_deref()));
            if previous == Some(digest.as_str()) {
                continue;
            }
            sqlx::query(
                "INSERT INTO changes (id, title, kind, default_commit, default_digest, definition, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET title = $2, kind = $3, default_commit = $4, default_digest = $5, definition = $6, updated_at = $7,
                   previous_definition = $8",
            )
            .bind(&change.id)
            .bind(&change.title)
            .bind(&change.kind)
            .bind(commit)
            .bind(digest.as_str())
            .bind(&definition)
            .bind(now)
            .bind(labels)
            .execute(w.conn())
            .await?;
            sqlx::query("INSERT INTO change_digests (change_id, commit_sha, digest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(&change.id)
                .bind(commit)
                .bind(digest.as_str())
                .execute(w.conn())
                .await?;
            let (kind, data) = match previous {
                None => {
                    report.added += 1;
                    (
                        "change.seen",
                        serde_json::json!({"commit": commit, "digest": digest}),
                    )
                }
                Some(old) => {
                    report.redigested += 1;
                    (
                        "change.digest-changed",
                        serde_json::json!({"commit": commit, "digest": digest, "previous": old}),
                    )
                }
            };
            w.audit("changegate", kind, Some(&change.id), data).await?;
        }
        for (id, _, _, _) in &known {
            if !changes.iter().any(|(c, _)| c.id == *id) {
                sqlx::query("DELETE FROM changes WHERE id = $1")
                    .bind(id)
                    .execute(w.conn())
                    .await?;
                w.audit(
                    "changegate",
                    "change.removed",
                    Some(id),
                    serde_json::json!({"commit": commit}),
                )
                .await?;
                report.removed += 1;
            }
        }
        w.commit().await?;
        Ok(report)
    }

    /// Revisions neither completed nor rolled back: (change, digest).
    pub async fn open_revisions(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query("SELECT change_id, digest FROM revisions WHERE completed_at IS NULL AND rolled_back_at IS NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("change_id")?, r.try_get("digest")?)))
            .collect()
    }

    /// For each change whose digest on the default branch changed: the
    /// kinds and targets it had before, whose policies keep governing it.
    pub async fn previous_labels(
        &self,
    ) -> Result<BTreeMap<String, Vec<(String, Vec<String>)>>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, previous_definition FROM changes WHERE previous_definition IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let text: String = r.try_get("previous_definition")?;
            let Ok(Value::Array(all)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let labels = all
                .iter()
                .map(|v| {
                    let kind = v["kind"].as_str().unwrap_or_default().to_string();
                    let targets = v["targets"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    (kind, targets)
                })
                .collect();
            out.insert(id, labels);
        }
        Ok(out)
    }

    /// Every known change, by id.
    pub async fn list_changes(&self) -> Result<Vec<StoredChange>, StoreError> {
        let rows = sqlx::query("SELECT id, title, kind, default_commit, default_digest, definition FROM changes ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_change).collect()
    }

    /// One change, if known.
    pub async fn get_change(&self, id: &str) -> Result<Option<StoredChange>, StoreError> {
        let row = sqlx::query("SELECT id, title, kind, default_commit, default_digest, definition FROM changes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored_change).transpose()
    }
}

fn stored_change(r: &sqlx::any::AnyRow) -> Result<StoredChange, StoreError> {
    let definition: String = r.try_get("definition")?;
    Ok(StoredChange {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        kind: r.try_get("kind")?,
        commit: r.try_get("default_commit")?,
        digest: r.try_get("default_digest")?,
        definition: serde_json::from_str(&definition).unwrap_or(Value::Null),
    })
}
