//! SQL for the gate's facts: attempts, go-aheads, retries, abandonment,
//! target locks and the breaker. Reads take a connection so the same code
//! runs on the pool or inside a [`WriteTx`].

use std::sync::Arc;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::attempt_cache::AttemptCache;
use super::{ApiApproval, Store, StoreError, WriteTx};

/// One attempt at a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// Unique id, e.g. `upgrade.backup.1`.
    pub id: String,
    /// The change.
    pub change_id: String,
    /// The step.
    pub step_id: String,
    /// 1 for the first attempt at this step, then 2…
    pub attempt_no: i64,
    /// The executor that claimed it.
    pub executor: String,
    /// The digest it ran.
    pub digest: String,
    /// Where it stands.
    #[schema(value_type = String)]
    pub state: super::AttemptState,
    /// When the lease runs out unless renewed (unix ms).
    pub lease_expires_at: i64,
    /// When it was claimed (unix ms).
    pub started_at: i64,
    /// When it ended (unix ms).
    pub ended_at: Option<i64>,
    /// The failing or last command's exit code.
    pub exit_code: Option<i64>,
    /// How long the commands ran, as reported.
    pub duration_ms: Option<i64>,
    /// The last 64 KiB of output, secrets redacted.
    pub output_tail: Option<String>,
    /// A report that arrived after the lease expired (JSON), kept for the record.
    pub late_report: Option<String>,
    /// The step's commands, or its rollback.
    #[schema(value_type = String)]
    pub phase: super::Phase,
    /// For a per-target step (SPEC §10): the target it ran on.
    pub target: Option<String>,
}

impl Attempt {
    /// Still running at `now`: not yet reported, and its lease has not run
    /// out (an expired lease is interrupted by the next write).
    pub fn runs_at(&self, now: i64) -> bool {
        self.state == super::AttemptState::Running && self.lease_expires_at > now
    }
}

pub(super) const ATTEMPT_COLUMNS: &str =
    "id, change_id, step_id, attempt_no, executor, digest, state, lease_expires_at, started_at, ended_at, exit_code, duration_ms, output_tail, late_report, phase, target";

pub(super) fn attempt(r: &AnyRow) -> Result<Attempt, sqlx::Error> {
    Ok(Attempt {
        id: r.try_get("id")?,
        change_id: r.try_get("change_id")?,
        step_id: r.try_get("step_id")?,
        attempt_no: r.try_get("attempt_no")?,
        executor: r.try_get("executor")?,
        digest: r.try_get("digest")?,
        state: r.try_get("state")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        exit_code: r.try_get("exit_code")?,
        duration_ms: r.try_get("duration_ms")?,
        output_tail: r.try_get("output_tail")?,
        late_report: r.try_get("late_report")?,
        phase: r.try_get("phase")?,
        target: r.try_get("target")?,
    })
}

/// An operator's record: who, why, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OperatorAction {
    /// The step it concerns, if any.
    pub step_id: Option<String>,
    /// For a retry: the attempt it re-opened.
    pub after_attempt: Option<i64>,
    /// The identity.
    pub actor: String,
    /// Their reason.
    pub reason: String,
    /// Unix ms.
    pub at: i64,
}

fn action(r: &AnyRow, step: bool, after: bool) -> Result<OperatorAction, sqlx::Error> {
    Ok(OperatorAction {
        step_id: if step {
            Some(r.try_get("step_id")?)
        } else {
            None
        },
        after_attempt: if after {
            Some(r.try_get("after_attempt")?)
        } else {
            None
        },
        actor: r.try_get("actor")?,
        reason: r.try_get("reason")?,
        at: r.try_get("at")?,
    })
}

/// An operator's go-ahead: for attempt `attempt_no` of a step at `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GoAheadRecord {
    /// The step.
    pub step_id: String,
    /// The digest it was given at.
    pub digest: String,
    /// The attempt it is for: the step's next one when it was given.
    pub attempt_no: i64,
    /// The identity.
    pub actor: String,
    /// Their reason.
    pub reason: String,
    /// Unix ms.
    pub at: i64,
}

fn go_ahead(r: &AnyRow) -> Result<GoAheadRecord, sqlx::Error> {
    Ok(GoAheadRecord {
        step_id: r.try_get("step_id")?,
        digest: r.try_get("digest")?,
        attempt_no: r.try_get("attempt_no")?,
        actor: r.try_get("actor")?,
        reason: r.try_get("reason")?,
        at: r.try_get("at")?,
    })
}

/// A revision (SPEC §13): one digest of a change that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RevisionRecord {
    /// Its digest.
    pub digest: String,
    /// The default-branch commit of its first claim ('' if recorded before revisions).
    pub commit_sha: String,
    /// Unix ms of its first claim.
    pub first_claim_at: i64,
    /// Unix ms when its last step succeeded.
    pub completed_at: Option<i64>,
    /// Unix ms when its rollback finished.
    pub rolled_back_at: Option<i64>,
}

fn revision(r: &AnyRow) -> Result<RevisionRecord, sqlx::Error> {
    Ok(RevisionRecord {
        digest: r.try_get("digest")?,
        commit_sha: r.try_get("commit_sha")?,
        first_claim_at: r.try_get("first_claim_at")?,
        completed_at: r.try_get("completed_at")?,
        rolled_back_at: r.try_get("rolled_back_at")?,
    })
}

/// Everything recorded about one change's execution and approval.
#[derive(Debug, Clone, Default)]
pub struct ChangeFacts {
    /// Every attempt, oldest first (shared: a rollout's facts hold one per
    /// target, and facts are copied per revision).
    pub attempts: Vec<Arc<Attempt>>,
    /// Go-aheads, each for one attempt at one digest.
    pub go_aheads: Vec<GoAheadRecord>,
    /// Re-opened steps.
    pub retries: Vec<OperatorAction>,
    /// The abandonment of the revision these facts are about (after
    /// [`ChangeFacts::for_revision`]); as read, the latest of any revision.
    pub abandonment: Option<OperatorAction>,
    /// Every abandonment, with the digest of the revision it ended
    /// (`''`: recorded before revisions, for every digest).
    pub abandonments: Vec<(String, OperatorAction)>,
    /// The rollback request of the revision these facts are about (after
    /// [`ChangeFacts::for_revision`]); as read, the latest of any revision.
    pub rollback: Option<OperatorAction>,
    /// Every rollback request, with its revision's digest.
    pub rollbacks: Vec<(String, OperatorAction)>,
    /// Every revision that was claimed, oldest first.
    pub revisions: Vec<RevisionRecord>,
    /// Rollout halts by a firing alert, oldest first (every revision's:
    /// [`ChangeFacts::halt`] says which one stands).
    pub halts: Vec<Halt>,
    /// API approvals.
    pub approvals: Vec<ApiApproval>,
    /// Reviews and authors from the pull requests that touch it.
    pub github: super::GithubFacts,
}

impl ChangeFacts {
    /// Whether revision `digest` was abandoned.
    fn abandoned(&self, digest: &str) -> bool {
        self.abandonments
            .iter()
            .any(|(d, _)| d == digest || d.is_empty())
    }

    /// The revision in flight: claimed, not completed, rolled back or abandoned.
    pub fn in_flight(&self) -> Option<&RevisionRecord> {
        self.revisions.iter().rev().find(|r| {
            r.completed_at.is_none() && r.rolled_back_at.is_none() && !self.abandoned(&r.digest)
        })
    }

    /// The latest completed revision, if any.
    pub fn completed(&self) -> Option<&RevisionRecord> {
        self.revisions
            .iter()
            .filter(|r| r.completed_at.is_some())
            .max_by_key(|r| r.completed_at)
    }

    /// The facts of revision `digest` alone: its attempts, and its
    /// abandonment. Approvals and reviews are bound by digest already.
    pub fn for_revision(&self, digest: &str) -> ChangeFacts {
        let mut facts = self.clone();
        facts.attempts.retain(|a| a.digest == digest);
        facts.abandonment = self
            .abandonments
            .iter()
            .find(|(d, _)| d == digest || d.is_empty())
            .map(|(_, a)| a.clone());
        facts.rollback = self
            .rollbacks
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, a)| a.clone());
        facts.halts.retain(|h| h.digest == digest);
        facts
    }
}

/// A rollout halted by a firing alert on a target it touched (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Halt {
    /// The revision halted.
    pub digest: String,
    /// The alert: its name and target, e.g. `PgbouncerDown on cluster-07`.
    pub alert: String,
    /// For a person: where it was seen and what it says.
    pub detail: String,
    /// Unix ms.
    pub at: i64,
}

fn halt(r: &AnyRow) -> Result<Halt, sqlx::Error> {
    Ok(Halt {
        digest: r.try_get("digest")?,
        alert: r.try_get("alert")?,
        detail: r.try_get("detail")?,
        at: r.try_get("at")?,
    })
}

/// The `after_attempt` of the retry that lifts the change's `n`-th halt
/// (from 0, over every revision): zero or below, since it re-opens no
/// attempt (their numbers start at 1), and one per halt.
pub fn halt_lifted(n: usize) -> i64 {
    -(n as i64)
}

impl ChangeFacts {
    /// The halt that stands for these (one revision's) facts: the latest,
    /// unless a retry that lifts halts ([`halt_lifted`]) came after it. A
    /// retry of a failed target leaves the halt standing.
    pub fn halt(&self) -> Option<&Halt> {
        let lifted = self
            .retries
            .iter()
            .filter(|r| r.after_attempt.is_some_and(|a| a <= 0))
            .map(|r| r.at)
            .max()
            .unwrap_or(i64::MIN);
        self.halts.last().filter(|h| h.at > lifted)
    }
}

/// A held target lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TargetLock {
    /// The target.
    pub target: String,
    /// The change holding it.
    pub change_id: String,
    /// Since (unix ms).
    pub locked_at: i64,
}

/// The step breaker's last reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BreakerReset {
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When (unix ms).
    pub at: i64,
}

/// An operator action recorded per revision, in its own table.
#[derive(Debug, Clone, Copy)]
pub(super) enum RevisionAction {
    /// `abandon`.
    Abandonment,
    /// `rollback`.
    Rollback,
}

impl RevisionAction {
    pub(super) fn table(self) -> &'static str {
        match self {
            RevisionAction::Abandonment => "abandonments",
            RevisionAction::Rollback => "rollbacks",
        }
    }
}

/// Every `kind` action on change `id`, oldest first, with its revision's digest.
async fn revision_actions(
    conn: &mut AnyConnection,
    kind: RevisionAction,
    id: &str,
) -> Result<Vec<(String, OperatorAction)>, StoreError> {
    let sql = format!(
        "SELECT digest, actor, reason, at FROM {} WHERE change_id = $1 ORDER BY at",
        kind.table()
    );
    Ok(sqlx::query(&sql)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("digest")?, action(r, false, false)?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Where a read of facts happens: on committed data, or inside a write
/// transaction, whose reads may hold its own uncommitted rows.
pub(crate) enum Reading<'a> {
    /// Committed: the attempts read go into the cache at once.
    Committed(&'a AttemptCache),
    /// Inside a write transaction: they go in when it commits.
    InTx(&'a AttemptCache, &'a mut AttemptsRead),
}

/// Attempt rows a write transaction read, by change, with their `seq`.
pub(crate) type AttemptsRead = Vec<(String, Vec<(i64, Arc<Attempt>)>)>;

/// Change `id`'s attempts, oldest first: what the cache knows, plus the
/// rows written since ([`super::attempt_cache`]).
async fn attempts_of(
    conn: &mut AnyConnection,
    reading: &mut Reading<'_>,
    id: &str,
) -> Result<Vec<Arc<Attempt>>, StoreError> {
    let cache = match reading {
        Reading::Committed(c) | Reading::InTx(c, _) => *c,
    };
    let rows: Vec<(i64, Arc<Attempt>)> = sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS}, seq FROM attempts WHERE change_id = $1 AND seq > $2"
    ))
    .bind(id)
    .bind(cache.seq(id))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("seq")?, Arc::new(attempt(r)?))))
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(match reading {
        Reading::Committed(cache) => {
            cache.merge(id, &rows);
            cache.attempts_with(id, &[])
        }
        Reading::InTx(cache, read) => {
            let all = cache.attempts_with(id, &rows);
            read.push((id.to_string(), rows));
            all
        }
    })
}

/// The locks change `id` holds, in one row: a rollout holds one per target
/// it reached, and rows come one at a time.
async fn own_locks(
    conn: &mut AnyConnection,
    backend: super::Backend,
    id: &str,
) -> Result<Vec<TargetLock>, StoreError> {
    let sql = match backend {
        super::Backend::Sqlite => "SELECT COALESCE(json_group_array(json_array(target, locked_at)), '[]') AS held FROM (SELECT target, locked_at FROM target_locks WHERE change_id = $1 ORDER BY target)",
        super::Backend::Postgres => "SELECT COALESCE(json_agg(json_build_array(target, locked_at) ORDER BY target), '[]')::text AS held FROM target_locks WHERE change_id = $1",
    };
    let held: String = sqlx::query(sql)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("held")?;
    let pairs: Vec<(String, i64)> = serde_json::from_str(&held)
        .map_err(|e| StoreError::Corrupt(format!("the locks of `{id}` read back as {e}")))?;
    Ok(pairs
        .into_iter()
        .map(|(target, locked_at)| TargetLock {
            target,
            change_id: id.to_string(),
            locked_at,
        })
        .collect())
}

/// The locks other changes than `id` hold.
async fn others_locks(conn: &mut AnyConnection, id: &str) -> Result<Vec<TargetLock>, StoreError> {
    Ok(sqlx::query("SELECT target, change_id, locked_at FROM target_locks WHERE change_id <> $1 ORDER BY target")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(TargetLock {
                target: r.try_get("target")?,
                change_id: r.try_get("change_id")?,
                locked_at: r.try_get("locked_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

pub(crate) async fn change_facts(
    conn: &mut AnyConnection,
    reading: &mut Reading<'_>,
    id: &str,
) -> Result<ChangeFacts, StoreError> {
    let attempts = attempts_of(conn, reading, id).await?;
    let go_aheads = sqlx::query("SELECT step_id, digest, attempt_no, actor, reason, created_at AS at FROM go_aheads WHERE change_id = $1 ORDER BY created_at")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(go_ahead)
        .collect::<Result<_, _>>()?;
    let retries = sqlx::query("SELECT step_id, after_attempt, actor, reason, at FROM retries WHERE change_id = $1 ORDER BY at")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| action(r, true, true))
        .collect::<Result<_, _>>()?;
    let abandonments = revision_actions(conn, RevisionAction::Abandonment, id).await?;
    let abandonment = abandonments.last().map(|(_, a)| a.clone());
    let rollbacks = revision_actions(conn, RevisionAction::Rollback, id).await?;
    let rollback = rollbacks.last().map(|(_, a)| a.clone());
    let revisions = sqlx::query("SELECT digest, commit_sha, first_claim_at, completed_at, rolled_back_at FROM revisions WHERE change_id = $1 ORDER BY first_claim_at")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(revision)
        .collect::<Result<_, _>>()?;
    let halts =
        sqlx::query("SELECT digest, alert, detail, at FROM halts WHERE change_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(halt)
            .collect::<Result<_, _>>()?;
    let approvals = super::api_approvals_on(conn, id).await?;
    let github = super::github::github_facts(conn, Some(id))
        .await?
        .remove(id)
        .unwrap_or_default();
    Ok(ChangeFacts {
        attempts,
        go_aheads,
        retries,
        abandonment,
        abandonments,
        rollback,
        rollbacks,
        revisions,
        halts,
        approvals,
        github,
    })
}

pub(crate) async fn locks(conn: &mut AnyConnection) -> Result<Vec<TargetLock>, StoreError> {
    let rows = sqlx::query("SELECT target, change_id, locked_at FROM target_locks ORDER BY target")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TargetLock {
                target: r.try_get("target")?,
                change_id: r.try_get("change_id")?,
                locked_at: r.try_get("locked_at")?,
            })
        })
        .collect()
}

/// When steps failed or were interrupted, for the breaker.
pub(crate) async fn step_failures(conn: &mut AnyConnection) -> Result<Vec<i64>, StoreError> {
    let rows = sqlx::query("SELECT ended_at FROM attempts WHERE state IN ('failed', 'interrupted') AND ended_at IS NOT NULL")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<i64, _>("ended_at")?))
        .collect()
}

pub(crate) async fn breaker_reset(
    conn: &mut AnyConnection,
) -> Result<Option<BreakerReset>, StoreError> {
    let row = sqlx::query("SELECT reset_by, reset_reason, reset_at FROM breakers WHERE name = 'steps' AND reset_at IS NOT NULL")
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(BreakerReset {
            actor: r.try_get("reset_by")?,
            reason: r.try_get("reset_reason")?,
            at: r.try_get("reset_at")?,
        })
    })
    .transpose()
}

impl Store {
    /// One change's facts.
    pub async fn change_facts(&self, id: &str) -> Result<ChangeFacts, StoreError> {
        let reading = &mut Reading::Committed(&self.attempts);
        change_facts(&mut *self.pool.acquire().await?, reading, id).await
    }

    /// Every held target lock.
    pub async fn locks(&self) -> Result<Vec<TargetLock>, StoreError> {
        locks(&mut *self.pool.acquire().await?).await
    }

    /// Failure times and the last reset, for the breaker.
    pub async fn breaker_facts(&self) -> Result<(Vec<i64>, Option<BreakerReset>), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok((
            step_failures(&mut conn).await?,
            breaker_reset(&mut conn).await?,
        ))
    }
}

impl WriteTx {
    /// One change's facts, read under the write lock.
    pub async fn change_facts(&mut self, id: &str) -> Result<ChangeFacts, StoreError> {
        let reading = &mut Reading::InTx(&self.attempts, &mut self.read);
        change_facts(&mut self.tx, reading, id).await
    }

    /// Every held target lock, read under the write lock.
    pub async fn locks(&mut self) -> Result<Vec<TargetLock>, StoreError> {
        locks(self.conn()).await
    }

    /// Failure times and the last reset, read under the write lock.
    pub async fn breaker_facts(&mut self) -> Result<(Vec<i64>, Option<BreakerReset>), StoreError> {
        Ok((
            step_failures(self.conn()).await?,
            breaker_reset(self.conn()).await?,
        ))
    }
}

impl Store {
    /// Every change's facts in seven queries, for lists and pages; the
    /// per-change reads would be one round trip per table per change.
    pub async fn all_change_facts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ChangeFacts>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut all: std::collections::BTreeMap<String, ChangeFacts> =
            std::collections::BTreeMap::new();
        for r in sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY started_at, attempt_no"
        ))
        .fetch_all(&mut *conn)
        .await?
        {
            let a = attempt(&r)?;
            all.entry(a.change_id.clone())
                .or_default()
                .attempts
                .push(Arc::new(a));
        }
        for r in sqlx::query("SELECT change_id, step_id, digest, attempt_no, actor, reason, created_at AS at FROM go_aheads ORDER BY created_at").fetch_all(&mut *conn).await? {
            all.entry(r.try_get("change_id")?).or_default().go_aheads.push(go_ahead(&r)?);
        }
        for r in sqlx::query(
            "SELECT change_id, step_id, after_attempt, actor, reason, at FROM retries ORDER BY at",
        )
        .fetch_all(&mut *conn)
        .await?
        {
            all.entry(r.try_get("change_id")?)
                .or_default()
                .retries
                .push(action(&r, true, true)?);
        }
        for r in
            sqlx::query("SELECT change_id, digest, actor, reason, at FROM abandonments ORDER BY at")
                .fetch_all(&mut *conn)
                .await?
        {
            let facts = all.entry(r.try_get("change_id")?).or_default();
            let a = action(&r, false, false)?;
            facts.abandonment = Some(a.clone());
            facts.abandonments.push((r.try_get("digest")?, a));
        }
        for r in
            sqlx::query("SELECT change_id, digest, actor, reason, at FROM rollbacks ORDER BY at")
                .fetch_all(&mut *conn)
                .await?
        {
            let facts = all.entry(r.try_get("change_id")?).or_default();
            let a = action(&r, false, false)?;
            facts.rollback = Some(a.clone());
            facts.rollbacks.push((r.try_get("digest")?, a));
        }
        for r in sqlx::query("SELECT change_id, digest, commit_sha, first_claim_at, completed_at, rolled_back_at FROM revisions ORDER BY first_claim_at")
            .fetch_all(&mut *conn)
            .await?
        {
            all.entry(r.try_get("change_id")?)
                .or_default()
                .revisions
                .push(revision(&r)?);
        }
        for r in sqlx::query("SELECT change_id, digest, alert, detail, at FROM halts ORDER BY at")
            .fetch_all(&mut *conn)
            .await?
        {
            all.entry(r.try_get("change_id")?)
                .or_default()
                .halts
                .push(halt(&r)?);
        }
        for r in sqlx::query("SELECT change_id, approver, digest, comment, created_at FROM api_approvals ORDER BY id").fetch_all(&mut *conn).await? {
            all.entry(r.try_get("change_id")?).or_default().approvals.push(ApiApproval {
                approver: r.try_get("approver")?,
                digest: r.try_get("digest")?,
                comment: r.try_get("comment")?,
                created_at: r.try_get("created_at")?,
            });
        }
        for (id, github) in super::github::github_facts(&mut conn, None).await? {
            all.entry(id).or_default().github = github;
        }
        Ok(all)
    }
}

/// What a decision about one change reads: its facts, those of its
/// dependencies and of every lock holder, the locks, and the breaker's inputs.
#[derive(Debug, Clone, Default)]
pub struct WorldFacts {
    /// The change's own facts.
    pub facts: ChangeFacts,
    /// Facts of its dependencies and of every lock holder, by change id.
    pub others: std::collections::BTreeMap<String, ChangeFacts>,
    /// The locks held by others; read from the pool (to show), the
    /// change's own too.
    pub locks: Vec<TargetLock>,
    /// When steps failed or were interrupted.
    pub failures: Vec<i64>,
    /// The step breaker's last reset.
    pub last_reset: Option<BreakerReset>,
}

async fn read_world(
    conn: &mut AnyConnection,
    reading: &mut Reading<'_>,
    backend: super::Backend,
    id: &str,
    dependencies: &[String],
) -> Result<WorldFacts, StoreError> {
    let facts = change_facts(conn, reading, id).await?;
    // A decision reads only the locks of others (a change never waits on
    // itself); the locks a change holds are read for people to see.
    let mut locks = match reading {
        Reading::Committed(_) => own_locks(conn, backend, id).await?,
        Reading::InTx(..) => Vec::new(),
    };
    locks.extend(others_locks(conn, id).await?);
    let mut others = std::collections::BTreeMap::new();
    for other in dependencies
        .iter()
        .chain(locks.iter().map(|l| &l.change_id))
        .filter(|other| *other != id)
    {
        if !others.contains_key(other) {
            others.insert(other.clone(), change_facts(conn, reading, other).await?);
        }
    }
    let failures = step_failures(conn).await?;
    let last_reset = breaker_reset(conn).await?;
    Ok(WorldFacts {
        facts,
        others,
        locks,
        failures,
        last_reset,
    })
}

impl Store {
    /// [`WorldFacts`] for change `id`, read from the pool.
    pub async fn world(&self, id: &str, dependencies: &[String]) -> Result<WorldFacts, StoreError> {
        let reading = &mut Reading::Committed(&self.attempts);
        read_world(
            &mut *self.pool.acquire().await?,
            reading,
            self.backend,
            id,
            dependencies,
        )
        .await
    }
}

impl WriteTx {
    /// [`WorldFacts`] for change `id`, read under the write lock.
    pub async fn world(
        &mut self,
        id: &str,
        dependencies: &[String],
    ) -> Result<WorldFacts, StoreError> {
        let reading = &mut Reading::InTx(&self.attempts, &mut self.read);
        read_world(&mut self.tx, reading, self.backend, id, dependencies).await
    }
}
