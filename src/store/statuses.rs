//! Commit statuses: what each (sha, context) should show, and what GitHub
//! was last told; the poster sends the difference.

use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::now_ms;

/// A commit status that GitHub has not been told yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStatus {
    /// The commit.
    pub sha: String,
    /// `changegate/<id>`.
    pub context: String,
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// The text.
    pub description: String,
    /// The change's page.
    pub target_url: String,
    /// Failed posts so far.
    pub attempts: i64,
}

impl Store {
    /// Records what status `(sha, context)` should show. Returns true when
    /// that differs from what GitHub was last told.
    pub async fn want_status(
        &self,
        sha: &str,
        context: &str,
        state: &str,
        description: &str,
        target_url: &str,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO commit_statuses (sha, context, state, description, target_url, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (sha, context) DO UPDATE SET state = $3, description = $4, target_url = $5,
                 updated_at = $6, attempts = 0, next_attempt_at = 0, last_error = NULL
             WHERE commit_statuses.state <> $3 OR commit_statuses.description <> $4",
        )
        .bind(sha)
        .bind(context)
        .bind(state)
        .bind(description)
        .bind(target_url)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Statuses GitHub has not been told yet and that are due.
    pub async fn due_statuses(&self) -> Result<Vec<PendingStatus>, StoreError> {
        sqlx::query(
            "SELECT sha, context, state, description, target_url, attempts FROM commit_statuses
             WHERE (posted IS NULL OR posted <> state || ':' || description) AND next_attempt_at <= $1
             ORDER BY updated_at",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(PendingStatus {
                sha: r.try_get("sha")?,
                context: r.try_get("context")?,
                state: r.try_get("state")?,
                description: r.try_get("description")?,
                target_url: r.try_get("target_url")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
    }

    /// GitHub has `state: description` for `(sha, context)`, unless the
    /// wanted status changed meanwhile.
    pub async fn status_posted(&self, s: &PendingStatus) -> Result<(), StoreError> {
        sqlx::query("UPDATE commit_statuses SET posted = $3 || ':' || $4, last_error = NULL WHERE sha = $1 AND context = $2 AND state = $3 AND description = $4")
            .bind(&s.sha)
            .bind(&s.context)
            .bind(&s.state)
            .bind(&s.description)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A post failed; try again at `next_attempt_at`.
    pub async fn status_failed(
        &self,
        s: &PendingStatus,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE commit_statuses SET attempts = attempts + 1, last_error = $3, next_attempt_at = $4 WHERE sha = $1 AND context = $2")
            .bind(&s.sha)
            .bind(&s.context)
            .bind(error)
            .bind(next_attempt_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
