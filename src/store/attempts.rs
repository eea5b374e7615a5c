//! Recording the gate's outcomes, inside a [`WriteTx`]: attempts and
//! their leases, target locks, go-aheads, retries, revisions, abandonment
//! and breaker resets.

use super::attempt_cache::NEXT_SEQ;
use super::gate::{attempt, RevisionAction, ATTEMPT_COLUMNS};
use super::{Attempt, GoAheadRecord, StoreError, WriteTx};

impl WriteTx {
    /// Marks running attempts whose lease ran out as `interrupted`, and returns them.
    pub async fn expire_leases(&mut self, now: i64) -> Result<Vec<Attempt>, StoreError> {
        let expired: Vec<Attempt> = sqlx::query(&format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE state = 'running' AND lease_expires_at < $1"))
            .bind(now)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(attempt)
            .collect::<Result<_, _>>()?;
        for a in &expired {
            sqlx::query(&format!("UPDATE attempts SET state = 'interrupted', ended_at = lease_expires_at, seq = {NEXT_SEQ} WHERE id = $1"))
                .bind(&a.id)
                .execute(self.conn())
                .await?;
        }
        Ok(expired)
    }

    /// Records a new running attempt. The unique (change, step, attempt_no)
    /// constraint makes a second writer of the same attempt fail.
    pub async fn insert_attempt(&mut self, a: &Attempt) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO attempts (id, change_id, step_id, attempt_no, executor, digest, state, lease_expires_at, started_at, phase, target, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {NEXT_SEQ})",
        ))
        .bind(&a.id)
        .bind(&a.change_id)
        .bind(&a.step_id)
        .bind(a.attempt_no)
        .bind(&a.executor)
        .bind(&a.digest)
        .bind(a.state)
        .bind(a.lease_expires_at)
        .bind(a.started_at)
        .bind(a.phase)
        .bind(&a.target)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Records that a rollout halted on a firing alert; `false` when the
    /// same halt was recorded already.
    pub async fn insert_halt(
        &mut self,
        change_id: &str,
        halt: &super::Halt,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query("INSERT INTO halts (change_id, digest, alert, detail, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(change_id)
            .bind(&halt.digest)
            .bind(&halt.alert)
            .bind(&halt.detail)
            .bind(halt.at)
            .execute(self.conn())
            .await?
            .rows_affected()
            > 0)
    }

    /// Takes every target for `change_id` (keeping those it already holds).
    pub async fn take_locks(
        &mut self,
        change_id: &str,
        targets: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        for t in targets {
            sqlx::query("INSERT INTO target_locks (target, change_id, locked_at) VALUES ($1, $2, $3) ON CONFLICT (target) DO NOTHING")
                .bind(t)
                .bind(change_id)
                .bind(now)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    /// Releases every target `change_id` holds.
    pub async fn release_locks(&mut self, change_id: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM target_locks WHERE change_id = $1")
            .bind(change_id)
            .execute(self.conn())
            .await?
            .rows_affected())
    }

    /// The attempt, if it exists.
    pub async fn attempt(&mut self, id: &str) -> Result<Option<Attempt>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.as_ref().map(attempt).transpose()?)
    }

    /// Extends a running attempt's lease.
    pub async fn renew_lease(&mut self, id: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE attempts SET lease_expires_at = $2, seq = {NEXT_SEQ} WHERE id = $1 AND state = 'running'",
        ))
        .bind(id)
        .bind(until)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Ends a running attempt with its outcome.
    pub async fn finish_attempt(
        &mut self,
        id: &str,
        state: super::AttemptState,
        exit_code: Option<i64>,
        duration_ms: Option<i64>,
        output_tail: &str,
        ended_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE attempts SET state = $2, exit_code = $3, duration_ms = $4, output_tail = $5, ended_at = $6, seq = {NEXT_SEQ} WHERE id = $1 AND state = 'running'"))
            .bind(id)
            .bind(state)
            .bind(exit_code)
            .bind(duration_ms)
            .bind(output_tail)
            .bind(ended_at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Keeps a report that came after the lease expired.
    pub async fn record_late_report(&mut self, id: &str, report: &str) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE attempts SET late_report = $2, seq = {NEXT_SEQ} WHERE id = $1 AND late_report IS NULL"))
            .bind(id)
            .bind(report)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Records a go-ahead for one attempt of a step at a digest (once).
    pub async fn insert_go_ahead(
        &mut self,
        change_id: &str,
        g: &GoAheadRecord,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("INSERT INTO go_aheads (change_id, step_id, digest, attempt_no, actor, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
            .bind(change_id)
            .bind(&g.step_id)
            .bind(&g.digest)
            .bind(g.attempt_no)
            .bind(&g.actor)
            .bind(&g.reason)
            .bind(g.at)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Re-opens a failed step after attempt `after_attempt`.
    pub async fn insert_retry(
        &mut self,
        change_id: &str,
        step_id: &str,
        after_attempt: i64,
        actor: &str,
        reason: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("INSERT INTO retries (change_id, step_id, after_attempt, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(change_id)
            .bind(step_id)
            .bind(after_attempt)
            .bind(actor)
            .bind(reason)
            .bind(at)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Records a revision at its first claim (once).
    pub async fn insert_revision(
        &mut self,
        change_id: &str,
        digest: &str,
        commit: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO revisions (change_id, digest, commit_sha, first_claim_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(change_id)
            .bind(digest)
            .bind(commit)
            .bind(at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Records that revision `digest` of a change completed (once).
    pub async fn complete_revision(
        &mut self,
        change_id: &str,
        digest: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE revisions SET completed_at = $3 WHERE change_id = $1 AND digest = $2 AND completed_at IS NULL")
            .bind(change_id)
            .bind(digest)
            .bind(at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Records that revision `digest` of a change was rolled back; false
    /// when it already was (a repeated or late report), so nothing else
    /// is done again.
    pub async fn roll_back_revision(
        &mut self,
        change_id: &str,
        digest: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE revisions SET rolled_back_at = $3 WHERE change_id = $1 AND digest = $2 AND rolled_back_at IS NULL")
            .bind(change_id)
            .bind(digest)
            .bind(at)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Records the request to roll back revision `digest` (once).
    pub async fn insert_rollback(
        &mut self,
        change_id: &str,
        digest: &str,
        actor: &str,
        reason: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.insert_revision_action(
            RevisionAction::Rollback,
            change_id,
            digest,
            (actor, reason),
            at,
        )
        .await
    }

    /// Abandons revision `digest` of a change (once).
    pub async fn insert_abandonment(
        &mut self,
        change_id: &str,
        digest: &str,
        actor: &str,
        reason: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.insert_revision_action(
            RevisionAction::Abandonment,
            change_id,
            digest,
            (actor, reason),
            at,
        )
        .await
    }

    /// One operator action on one revision, once; false if it was recorded.
    async fn insert_revision_action(
        &mut self,
        kind: RevisionAction,
        change_id: &str,
        digest: &str,
        (actor, reason): (&str, &str),
        at: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(&format!("INSERT INTO {} (change_id, digest, actor, reason, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", kind.table()))
            .bind(change_id)
            .bind(digest)
            .bind(actor)
            .bind(reason)
            .bind(at)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Closes the step breaker: only failures after `at` count from now on.
    pub async fn reset_breaker(
        &mut self,
        actor: &str,
        reason: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO breakers (name, state, reset_by, reset_reason, reset_at) VALUES ('steps', 'closed', $1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET state = 'closed', reset_by = $1, reset_reason = $2, reset_at = $3",
        )
        .bind(actor)
        .bind(reason)
        .bind(at)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
