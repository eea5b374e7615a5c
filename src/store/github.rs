//! GitHub facts: pull requests, their authors and touched changes, reviews,
//! and the digest of a change at a commit.

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
    /// Why its head could not be read, if it could not.
    pub refused: Option<String>,
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
        refused: r.try_get("refused")?,
    })
}

const PR_COLUMNS: &str = "number, head_sha, base_ref, base_sha, state, CAST(CASE WHEN merged THEN 1 ELSE 0 END AS BIGINT) AS merged, opener, updated_at, refused";

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

    /// The audit chain's length: it moves with every recorded fact, so an
    /// unchanged value means nothing a commit status shows has changed.
    pub async fn audit_seq(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("seq")?)
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

    /// Records a pull request's current head, base and state.
    /// Returns false, and changes nothing, when the stored record is newer
    /// (a late delivery must not rewind the head).
    pub async fn upsert_pull_request(
        &mut self,
        pr: &PullRequestRecord,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO pull_requests (number, head_sha, base_ref, base_sha, state, merged, opener, updated_at, refused)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (number) DO UPDATE SET head_sha = $2, base_ref = $3, base_sha = $4, state = $5, merged = $6, updated_at = $8, refused = $9
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
        .bind(&pr.refused)
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

    /// Marks every recorded review of pull request `number` dismissed, for
    /// good; returns how many.
    pub async fn dismiss_reviews(&mut self, number: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE reviews SET dismissed = TRUE WHERE pr_number = $1 AND NOT dismissed",
        )
        .bind(number)
        .execute(self.conn())
        .await?
        .rows_affected())
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
