//! The last approved text of each policy file (SPEC §13, "Policy edits are
//! reviewed like changes"), and the baseline taken when review began.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError, WriteTx};

/// A policy file's text as approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedPolicy {
    /// `policies/<name>.yaml`.
    pub path: String,
    /// The git blob id of `text`.
    pub blob: String,
    /// The file's content.
    pub text: String,
    /// The default-branch commit it was first in force at.
    pub commit: String,
    /// `baseline` (in force before policy review began) or `reviewed`.
    pub how: String,
    /// Unix milliseconds.
    pub approved_at: i64,
}

fn approved(r: &sqlx::any::AnyRow) -> Result<ApprovedPolicy, StoreError> {
    Ok(ApprovedPolicy {
        path: r.try_get("path")?,
        blob: r.try_get("blob")?,
        text: r.try_get("text")?,
        commit: r.try_get("commit_sha")?,
        how: r.try_get("how")?,
        approved_at: r.try_get("approved_at")?,
    })
}

const COLUMNS: &str = "path, blob, text, commit_sha, how, approved_at";

impl Store {
    /// The policies in force under review, by path; `None` before the
    /// baseline was taken.
    pub async fn approved_policies(
        &self,
    ) -> Result<Option<BTreeMap<String, ApprovedPolicy>>, StoreError> {
        let taken = sqlx::query("SELECT commit_sha FROM policy_baseline WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !taken {
            return Ok(None);
        }
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM approved_policies ORDER BY path"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| approved(r).map(|p| (p.path.clone(), p)))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

impl WriteTx {
    /// Takes the baseline once: `files` (the default branch's policies at
    /// `commit`) become approved. Returns false if it was already taken.
    pub async fn take_policy_baseline(
        &mut self,
        commit: &str,
        files: &[ApprovedPolicy],
        now: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO policy_baseline (id, commit_sha, taken_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(commit)
        .bind(now)
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1;
        if inserted {
            for f in files {
                self.approve_policy(f).await?;
            }
        }
        Ok(inserted)
    }

    /// Records `p` as the text in force for its path.
    pub async fn approve_policy(&mut self, p: &ApprovedPolicy) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO approved_policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (path) DO UPDATE SET blob = excluded.blob, text = excluded.text,
               commit_sha = excluded.commit_sha, how = excluded.how, approved_at = excluded.approved_at"
        ))
        .bind(&p.path)
        .bind(&p.blob)
        .bind(&p.text)
        .bind(&p.commit)
        .bind(&p.how)
        .bind(p.approved_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// An approved deletion: the file no longer governs anything.
    pub async fn remove_approved_policy(&mut self, path: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM approved_policies WHERE path = $1")
            .bind(path)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
