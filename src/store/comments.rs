//! The plan comment of each pull request: the body it should show, what
//! GitHub was last given, and a claim so one poster at a time creates or
//! edits it (across replicas).

use sha2::Digest as _;
use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::now_ms;

/// A plan comment GitHub has not been given yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingComment {
    /// The pull request.
    pub pr: i64,
    /// What it should show.
    pub body: String,
    /// The comment, once created.
    pub comment_id: Option<i64>,
    /// Failed posts so far.
    pub attempts: i64,
}

fn hash(body: &str) -> String {
    hex::encode(sha2::Sha256::digest(body.as_bytes()))
}

impl Store {
    /// Records what pull request `pr`'s plan comment should show. Returns
    /// true when that differs from what it was.
    pub async fn want_comment(&self, pr: i64, body: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO plan_comments (pr_number, body, body_hash, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (pr_number) DO UPDATE SET body = $2, body_hash = $3, updated_at = $4,
                 attempts = 0, next_attempt_at = 0, last_error = NULL
             WHERE plan_comments.body_hash <> $3",
        )
        .bind(pr)
        .bind(body)
        .bind(hash(body))
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Plan comments GitHub has not been given yet, that are due and that
    /// no poster holds.
    pub async fn due_comments(&self) -> Result<Vec<PendingComment>, StoreError> {
        let now = now_ms();
        sqlx::query(
            "SELECT pr_number, body, comment_id, attempts FROM plan_comments
             WHERE (posted_hash IS NULL OR posted_hash <> body_hash)
               AND next_attempt_at <= $1 AND claimed_until < $1
             ORDER BY updated_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(PendingComment {
                pr: r.try_get("pr_number")?,
                body: r.try_get("body")?,
                comment_id: r.try_get("comment_id")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
    }

    /// Takes pull request `pr`'s comment for `for_ms`: `false` when another
    /// poster holds it. One statement, so two replicas never both win.
    pub async fn claim_comment(&self, pr: i64, for_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE plan_comments SET claimed_until = $2 WHERE pr_number = $1 AND claimed_until < $3",
        )
        .bind(pr)
        .bind(now + for_ms)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records the comment's id as soon as it is known (created or found),
    /// so that it is edited, never created again.
    pub async fn comment_found(&self, pr: i64, comment_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE plan_comments SET comment_id = $2 WHERE pr_number = $1")
            .bind(pr)
            .bind(comment_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// GitHub shows `body` in the comment; the claim is released.
    pub async fn comment_posted(&self, pr: i64, body: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE plan_comments SET posted_hash = $2, claimed_until = 0, last_error = NULL WHERE pr_number = $1")
            .bind(pr)
            .bind(hash(body))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A post failed; try again at `next_attempt_at`. The claim is released.
    pub async fn comment_failed(
        &self,
        pr: i64,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE plan_comments SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, claimed_until = 0 WHERE pr_number = $1")
            .bind(pr)
            .bind(error)
            .bind(next_attempt_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
