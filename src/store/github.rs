//! GitHub facts: pull requests, their authors and touched changes, reviews,
//! the digest of a change at a commit, the webhook inbox's processing, and
//! the commit statuses to post.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, WriteTx};
use crate::clock::now_ms;

/// A pull request as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRecord {
    /// Its number.
    pub number: i64,
    /// The head commit.
    pub head_sha: String,
    /// The branch it merges into.
    pub base_ref: String,
    /// The base commit.
    pub base_sha: String,
    /// `open` or `closed`.
    pub state: String,
    /// Closed by merging.
    pub merged: bool,
    /// Who opened it.
    pub opener: String,
    /// When GitHub last changed it (unix ms): an older delivery never
    /// replaces what a newer one recorded.
    pub updated_at: i64,
}

/// A recorded review, with the digest of one change at its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReview {
    /// GitHub's review id.
    pub review_id: i64,
    /// The pull request.
    pub pr_number: i64,
    /// The reviewer's login.
    pub reviewer: String,
    /// What it says.
    pub state: super::ReviewState,
    /// The commit reviewed.
    pub commit_sha: String,
    /// Unix milliseconds.
    pub submitted_at: i64,
    /// Dismissed since.
    pub dismissed: bool,
    /// The change's digest at `commit_sha`; `None` until computed, and
    /// `absent` when the change does not exist there.
    pub digest: Option<String>,
}

/// GitHub facts about one change, from every open or merged pull request
/// that touches it.
#[derive(Debug, Clone, Default)]
pub struct GithubFacts {
    /// Reviews, oldest first.
    pub reviews: Vec<StoredReview>,
    /// Openers and pushers of those pull requests.
    pub authors: BTreeSet<String>,
}

/// A delivery waiting in the inbox.
#[derive(Debug, Clone)]
pub struct InboxItem {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The raw payload, decompressed.
    pub body: Vec<u8>,
    /// Earlier failed attempts.
    pub attempts: i64,
}

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

/// Payloads larger than this are stored deflated: GitHub's payloads are
/// repetitive JSON and shrink several-fold, so each commit writes less.
const COMPRESS_OVER_BYTES: usize = 4 * 1024;

/// A delivery ready to store: compressed off the write path, so the one
/// writer only writes.
#[derive(Debug, Clone)]
pub struct PreparedDelivery {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload as stored.
    stored: Vec<u8>,
    /// `identity` or `deflate`.
    encoding: &'static str,
    /// The raw payload's size.
    bytes: usize,
}

impl PreparedDelivery {
    /// Prepares (compresses) a raw delivery.
    pub fn new(delivery_id: &str, event: &str, body: &[u8]) -> PreparedDelivery {
        let (encoding, stored) = encode_body(body);
        PreparedDelivery {
            delivery_id: delivery_id.to_string(),
            event: event.to_string(),
            stored,
            encoding,
            bytes: body.len(),
        }
    }

    /// Bytes written for it.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

fn encode_body(body: &[u8]) -> (&'static str, Vec<u8>) {
    use std::io::Write;
    if body.len() <= COMPRESS_OVER_BYTES {
        return ("identity", body.to_vec());
    }
    let mut e = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(body).expect("writing to memory");
    ("deflate", e.finish().expect("writing to memory"))
}

fn decode_body(encoding: &str, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    match encoding {
        "identity" => Ok(stored),
        "deflate" => {
            let mut out = Vec::with_capacity(stored.len() * 4);
            flate2::read::DeflateDecoder::new(&stored[..])
                .read_to_end(&mut out)
                .map_err(|e| StoreError::Corrupt(format!("inbox payload: {e}")))?;
            Ok(out)
        }
        other => Err(StoreError::Corrupt(format!(
            "inbox payload encoding `{other}`"
        ))),
    }
}

const REVIEW_COLUMNS: &str = "r.review_id, r.pr_number, r.reviewer, r.state, r.commit_sha, r.submitted_at, CAST(CASE WHEN r.dismissed THEN 1 ELSE 0 END AS BIGINT) AS dismissed, d.digest, pc.change_id";

/// Pull requests whose reviews and authors count: open, or merged.
const COUNTED_PRS: &str = "(p.state = 'open' OR p.merged)";

fn review(r: &AnyRow) -> Result<StoredReview, StoreError> {
    Ok(StoredReview {
        review_id: r.try_get("review_id")?,
        pr_number: r.try_get("pr_number")?,
        reviewer: r.try_get("reviewer")?,
        state: r.try_get("state")?,
        commit_sha: r.try_get("commit_sha")?,
        submitted_at: r.try_get("submitted_at")?,
        dismissed: r.try_get::<i64, _>("dismissed")? != 0,
        digest: r.try_get("digest")?,
    })
}

fn pull_request(r: &AnyRow) -> Result<PullRequestRecord, StoreError> {
    Ok(PullRequestRecord {
        number: r.try_get("number")?,
        head_sha: r.try_get("head_sha")?,
        base_ref: r.try_get("base_ref")?,
        base_sha: r.try_get("base_sha")?,
        state: r.try_get("state")?,
        merged: r.try_get::<i64, _>("merged")? != 0,
        opener: r.try_get("opener")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const PR_COLUMNS: &str = "number, head_sha, base_ref, base_sha, state, CAST(CASE WHEN merged THEN 1 ELSE 0 END AS BIGINT) AS merged, opener, updated_at";

/// GitHub facts of change `id`, or of every change when `id` is `None`.
pub(crate) async fn github_facts(
    conn: &mut AnyConnection,
    id: Option<&str>,
) -> Result<BTreeMap<String, GithubFacts>, StoreError> {
    let filter = if id.is_some() {
        "AND pc.change_id = $1"
    } else {
        ""
    };
    fn query<'q>(
        sql: &'q str,
        id: Option<&str>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let q = sqlx::query(sql);
        match id {
            Some(id) => q.bind(id.to_string()),
            None => q,
        }
    }
    let mut out: BTreeMap<String, GithubFacts> = BTreeMap::new();
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM reviews r
         JOIN pr_changes pc ON pc.pr_number = r.pr_number
         JOIN pull_requests p ON p.number = r.pr_number
         LEFT JOIN commit_digests d ON d.commit_sha = r.commit_sha AND d.change_id = pc.change_id
         WHERE {COUNTED_PRS} {filter} ORDER BY r.submitted_at, r.review_id"
    );
    for r in query(&sql, id).fetch_all(&mut *conn).await? {
        let change: String = r.try_get("change_id")?;
        out.entry(change).or_default().reviews.push(review(&r)?);
    }
    let sql = format!(
        "SELECT pc.change_id, pp.login FROM pr_pushers pp
         JOIN pr_changes pc ON pc.pr_number = pp.pr_number
         JOIN pull_requests p ON p.number = pp.pr_number
         WHERE {COUNTED_PRS} {filter}"
    );
    for r in query(&sql, id).fetch_all(&mut *conn).await? {
        let change: String = r.try_get("change_id")?;
        out.entry(change)
            .or_default()
            .authors
            .insert(r.try_get("login")?);
    }
    Ok(out)
}

impl Store {
    /// The pinned numeric id of the configured repository `full_name`.
    pub async fn pinned_repository(&self, full_name: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT repo_id FROM github_repository WHERE full_name = $1")
            .bind(full_name.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let id: i64 = r.try_get("repo_id")?;
            u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("repository id {id}")))
        })
        .transpose()
    }

    /// A pull request, if tracked.
    pub async fn pull_request(&self, number: i64) -> Result<Option<PullRequestRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {PR_COLUMNS} FROM pull_requests WHERE number = $1"
        ))
        .bind(number)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(pull_request)
        .transpose()
    }

    /// Tracked pull requests: open ones, or every one with `all`.
    pub async fn pull_requests(&self, all: bool) -> Result<Vec<PullRequestRecord>, StoreError> {
        let filter = if all { "" } else { "WHERE state = 'open'" };
        sqlx::query(&format!(
            "SELECT {PR_COLUMNS} FROM pull_requests {filter} ORDER BY number"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pull_request)
        .collect()
    }

    /// The changes a pull request touches, with their digests at its head.
    pub async fn pr_changes(&self, number: i64) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query(
            "SELECT change_id, digest FROM pr_changes WHERE pr_number = $1 ORDER BY change_id",
        )
        .bind(number)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("change_id")?, r.try_get("digest")?)))
        .collect()
    }

    /// Commits that a pull request's reviews were made on.
    pub async fn review_commits(&self, number: i64) -> Result<BTreeSet<String>, StoreError> {
        sqlx::query("SELECT DISTINCT commit_sha FROM reviews WHERE pr_number = $1")
            .bind(number)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("commit_sha")?))
            .collect()
    }

    /// Every reviewer's login.
    pub async fn reviewers(&self) -> Result<BTreeSet<String>, StoreError> {
        sqlx::query("SELECT DISTINCT reviewer FROM reviews")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("reviewer")?))
            .collect()
    }

    /// Review ids already recorded for a pull request, with their state.
    pub async fn recorded_reviews(
        &self,
        number: i64,
    ) -> Result<BTreeMap<i64, (String, bool)>, StoreError> {
        sqlx::query("SELECT review_id, state, CAST(CASE WHEN dismissed THEN 1 ELSE 0 END AS BIGINT) AS dismissed FROM reviews WHERE pr_number = $1")
            .bind(number)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("review_id")?,
                    (r.try_get("state")?, r.try_get::<i64, _>("dismissed")? != 0),
                ))
            })
            .collect()
    }

    /// Deliveries due for processing, oldest first.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<InboxItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, event, body, encoding, attempts FROM inbox
             WHERE processed_at IS NULL AND next_attempt_at <= $1
             ORDER BY received_at, delivery_id LIMIT $2",
        )
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let encoding: String = r.try_get("encoding")?;
                let stored: Vec<u8> = r.try_get("body")?;
                Ok(InboxItem {
                    delivery_id: r.try_get("delivery_id")?,
                    event: r.try_get("event")?,
                    body: decode_body(&encoding, stored)?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Records a failed attempt at a delivery; with `give_up`, it is
    /// finished as `failed` and audited.
    pub async fn delivery_failed(
        &self,
        delivery_id: &str,
        error: &str,
        next_attempt_at: i64,
        give_up: bool,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        if give_up {
            if w.finish_delivery(delivery_id, "failed", Some(error))
                .await?
            {
                w.audit(
                    "github",
                    "webhook.failed",
                    None,
                    serde_json::json!({"delivery": delivery_id, "error": error}),
                )
                .await?;
            }
        } else {
            sqlx::query("UPDATE inbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE delivery_id = $1 AND processed_at IS NULL")
                .bind(delivery_id)
                .bind(error)
                .bind(next_attempt_at)
                .execute(w.conn())
                .await?;
        }
        w.commit().await
    }

    /// How each delivery ended: (delivery id, outcome, attempts, last error);
    /// outcome is `None` while it waits.
    pub async fn delivery_outcomes(
        &self,
    ) -> Result<Vec<(String, Option<String>, i64, Option<String>)>, StoreError> {
        sqlx::query("SELECT delivery_id, outcome, attempts, last_error FROM inbox ORDER BY received_at, delivery_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("delivery_id")?,
                    r.try_get("outcome")?,
                    r.try_get("attempts")?,
                    r.try_get("last_error")?,
                ))
            })
            .collect()
    }

    /// The audit chain's length: it moves with every recorded fact, so an
    /// unchanged value means nothing a commit status shows has changed.
    pub async fn audit_seq(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("seq")?)
    }

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

impl WriteTx {
    /// Pins the configured repository `full_name` to GitHub's id for it.
    /// The first pin stands (replicas racing agree, or the later is
    /// ignored); returns the id in force.
    pub async fn pin_repository(&mut self, full_name: &str, id: u64) -> Result<u64, StoreError> {
        let key = full_name.to_ascii_lowercase();
        sqlx::query("INSERT INTO github_repository (full_name, repo_id, pinned_at) VALUES ($1, $2, $3) ON CONFLICT (full_name) DO NOTHING")
            .bind(&key)
            .bind(id as i64)
            .bind(now_ms())
            .execute(self.conn())
            .await?;
        let pinned: i64 = sqlx::query("SELECT repo_id FROM github_repository WHERE full_name = $1")
            .bind(&key)
            .fetch_one(self.conn())
            .await?
            .try_get("repo_id")?;
        Ok(pinned as u64)
    }

    /// Marks a delivery done with `outcome`; false if it already was (by
    /// another worker), in which case the caller must not apply it.
    pub async fn finish_delivery(
        &mut self,
        delivery_id: &str,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE inbox SET processed_at = $2, outcome = $3, last_error = COALESCE($4, last_error) WHERE delivery_id = $1 AND processed_at IS NULL")
            .bind(delivery_id)
            .bind(now_ms())
            .bind(outcome)
            .bind(error)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Records a pull request's current head, base and state.
    /// Returns false, and changes nothing, when the stored record is newer
    /// (a late delivery must not rewind the head).
    pub async fn upsert_pull_request(
        &mut self,
        pr: &PullRequestRecord,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO pull_requests (number, head_sha, base_ref, base_sha, state, merged, opener, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (number) DO UPDATE SET head_sha = $2, base_ref = $3, base_sha = $4, state = $5, merged = $6, updated_at = $8
             WHERE pull_requests.updated_at <= $8",
        )
        .bind(pr.number)
        .bind(&pr.head_sha)
        .bind(&pr.base_ref)
        .bind(&pr.base_sha)
        .bind(&pr.state)
        .bind(pr.merged)
        .bind(&pr.opener)
        .bind(pr.updated_at)
        .execute(self.conn())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records `login` as an author of the pull request (its opener, or
    /// someone who pushed to it). Returns true when new.
    pub async fn add_pr_author(&mut self, number: i64, login: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO pr_pushers (pr_number, login) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(number)
        .bind(login)
        .execute(self.conn())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Replaces the changes a pull request touches (id, digest at head).
    pub async fn set_pr_changes(
        &mut self,
        number: i64,
        changes: &[(String, String)],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pr_changes WHERE pr_number = $1")
            .bind(number)
            .execute(self.conn())
            .await?;
        for (id, digest) in changes {
            sqlx::query(
                "INSERT INTO pr_changes (pr_number, change_id, digest) VALUES ($1, $2, $3)",
            )
            .bind(number)
            .bind(id)
            .bind(digest)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Records digests of changes at commits (commit, change, digest).
    pub async fn put_digests(
        &mut self,
        digests: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        for (sha, id, digest) in digests {
            sqlx::query("INSERT INTO commit_digests (commit_sha, change_id, digest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(sha)
                .bind(id)
                .bind(digest)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    /// Records a review. A dismissal marks the recorded review dismissed
    /// for good; an edit keeps its verdict. Returns true when anything changed.
    pub async fn upsert_review(
        &mut self,
        review_id: i64,
        pr_number: i64,
        reviewer: &str,
        state: super::ReviewState,
        commit_sha: &str,
        submitted_at: i64,
    ) -> Result<bool, StoreError> {
        let dismissed = state == super::ReviewState::Dismissed;
        let n = sqlx::query(
            "INSERT INTO reviews (review_id, pr_number, reviewer, state, commit_sha, submitted_at, dismissed)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (review_id) DO UPDATE SET
                 state = CASE WHEN $7 THEN reviews.state ELSE $4 END,
                 dismissed = reviews.dismissed OR $7
             WHERE reviews.dismissed <> (reviews.dismissed OR $7) OR (NOT $7 AND reviews.state <> $4)",
        )
        .bind(review_id)
        .bind(pr_number)
        .bind(reviewer)
        .bind(state)
        .bind(commit_sha)
        .bind(submitted_at)
        .bind(dismissed)
        .execute(self.conn())
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

impl Store {
    /// Stores webhook deliveries in the inbox, each once per delivery id,
    /// in one transaction (one fsync for the batch) with one audit event
    /// naming them. Returns, per delivery, false for a redelivery.
    pub async fn store_deliveries(
        &self,
        deliveries: Vec<PreparedDelivery>,
    ) -> Result<Vec<bool>, StoreError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.write().await?;
        // One statement for the batch; RETURNING names the rows inserted.
        // (`$N` written out: the Any driver's query builder writes `?`,
        // which Postgres refuses.)
        let rows: Vec<String> = (0..deliveries.len())
            .map(|i| {
                let n = i * 4;
                format!("(${}, ${}, ${}, ${}, $1)", n + 2, n + 3, n + 4, n + 5)
            })
            .collect();
        let sql = format!(
            "INSERT INTO inbox (delivery_id, event, body, encoding, received_at) VALUES {} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
            rows.join(", ")
        );
        let mut insert = sqlx::query(&sql).bind(now_ms());
        let mut summary = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            summary.push((d.delivery_id.clone(), d.event.clone(), d.bytes));
            insert = insert
                .bind(d.delivery_id)
                .bind(d.event)
                .bind(d.stored)
                .bind(d.encoding);
        }
        let mut inserted: BTreeSet<String> = insert
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(|r| r.try_get("delivery_id"))
            .collect::<Result<_, _>>()?;
        // A delivery id twice in one batch: the first one is the new one.
        let stored: Vec<bool> = summary
            .iter()
            .map(|(id, _, _)| inserted.remove(id))
            .collect();
        let received: Vec<serde_json::Value> = summary
            .iter()
            .zip(&stored)
            .filter(|(_, new)| **new)
            .map(|((id, event, bytes), _)| serde_json::json!({"delivery": id, "event": event, "bytes": bytes}))
            .collect();
        if !received.is_empty() {
            w.audit(
                "github",
                "webhook.received",
                None,
                serde_json::json!({"deliveries": received}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(stored)
    }

    /// Deliveries in the inbox: (delivery id, event, body bytes, processed).
    pub async fn inbox(&self) -> Result<Vec<(String, String, Vec<u8>, bool)>, StoreError> {
        let rows = sqlx::query("SELECT delivery_id, event, body, encoding, processed_at FROM inbox ORDER BY received_at, delivery_id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("delivery_id")?,
                    r.try_get("event")?,
                    decode_body(&r.try_get::<String, _>("encoding")?, r.try_get("body")?)?,
                    r.try_get::<Option<i64>, _>("processed_at")?.is_some(),
                ))
            })
            .collect()
    }
}
