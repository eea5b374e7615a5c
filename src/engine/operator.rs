//! Operator actions (SPEC §3): go-aheads, retries, abandonment and the
//! breaker reset, each audited with who and why.

use serde_json::json;

use super::*;
use crate::store::{AlertKind, AttemptState, Firing, Phase};

impl Engine {
    /// Records an operator's go-ahead for `step`.
    pub async fn proceed(
        &self,
        id: &str,
        step: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let view = self.view();
        let (change, digest, _) = view
            .on_branch(id)
            .ok_or_else(|| EngineError::NotFound(format!("no change `{id}`")))?;
        let change = &change;
        if !change.steps.iter().any(|s| s.id == step) {
            return Err(EngineError::NotFound(format!(
                "change `{id}` has no step `{step}`"
            )));
        }
        let mut w = self.store.write().await?;
        let facts = w.change_facts(id).await?;
        let now = now_ms();
        // A go-ahead given while the step runs would be for its next
        // attempt, a retry no one has seen fail yet.
        if let Some(a) = facts
            .attempts
            .iter()
            .find(|a| a.step_id == step && a.runs_at(now))
        {
            return Err(refused(
                "step-running",
                format!(
                    "step {step} of `{id}` is running (attempt {}); a go-ahead now would count for a retry: give it once the attempt has ended",
                    a.id
                ),
            ));
        }
        // For the step's next attempt, at the digest on main now.
        let attempt_no = facts
            .attempts
            .iter()
            .filter(|a| a.step_id == step)
            .map(|a| a.attempt_no)
            .max()
            .unwrap_or(0)
            + 1;
        let go_ahead = GoAheadRecord {
            step_id: step.to_string(),
            digest: digest.to_string(),
            attempt_no,
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: now_ms(),
        };
        if w.insert_go_ahead(id, &go_ahead).await? {
            w.audit(
                actor,
                "step.go-ahead",
                Some(id),
                json!({"step": step, "digest": go_ahead.digest, "attempt": attempt_no, "reason": reason}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Re-opens the failed step of `id`. Under `retry_requires_approval` it
    /// needs an approval recorded after the failure by someone other than `actor`.
    pub async fn retry(&self, id: &str, actor: &str, reason: &str) -> Result<String, EngineError> {
        let view = self.view();
        let (change, digest, covered) = view
            .on_branch(id)
            .ok_or_else(|| EngineError::NotFound(format!("no change `{id}`")))?;
        let (change, covered) = (&change, &covered[..]);
        let mut w = self.store.write().await?;
        self.expire_in(&mut w).await?;
        let (read, breaker) = self.world_facts(Some(&mut w), &view, id).await?;
        // Going forward needs the default branch to still hold the revision.
        if let view::Focus::InFlight(r) = view::revision_focus(Some(digest.as_str()), &read.facts) {
            return Err(refused(
                "superseded",
                format!("revision {} of `{id}` is in flight, but the default branch now holds {digest}: it cannot go forward; roll it back or abandon it", r.digest),
            ));
        }
        let facts = &read.facts.for_revision(digest.as_str());
        if facts.abandonment.is_some() {
            return Err(refused(
                "abandoned",
                format!("`{id}` was abandoned; it cannot be retried"),
            ));
        }
        let progress = view::step_progress(change, facts);
        let failed = |s: StepState| matches!(s, StepState::Failed | StepState::Interrupted);
        // Once a rollback was asked for, only a failed rollback is retried.
        let (n, phase) = match view::rollback_entries(change, facts, &progress) {
            Some(entries) => (
                entries
                    .iter()
                    .find(|e| failed(e.progress.state))
                    .map(|e| e.step),
                Phase::Rollback,
            ),
            None => (progress.iter().position(|p| failed(p.state)), Phase::Step),
        };
        // A halted rollout with no failed target: the retry lifts the halt.
        let halt = facts.halt().filter(|_| n.is_none() && phase == Phase::Step);
        let (n, failed) = match (n, halt) {
            (Some(n), _) => (n, failed_attempt(facts, &change.steps[n].id, phase)),
            (None, Some(_)) => (change.per_target_block().map_or(0, |b| b.start), None),
            (None, None) => {
                return Err(refused(
                    "not-failed",
                    format!("`{id}` has no failed step or rollback to retry"),
                ))
            }
        };
        let step = &change.steps[n];
        let (failed_no, failed_at) = match (failed, halt) {
            (Some(a), _) => (a.attempt_no, a.ended_at.unwrap_or(a.started_at)),
            (None, Some(h)) => (
                crate::store::halt_lifted(read.facts.halts.len().saturating_sub(1)),
                h.at,
            ),
            (None, None) => {
                return Err(refused(
                    "not-failed",
                    format!(
                        "step {} of `{id}` has no failed attempt left to retry",
                        step.id
                    ),
                ))
            }
        };
        let needs_approval = match view.governing(change, covered) {
            PoliciesInForce::Matched { policies } => {
                policies.iter().any(|p| p.execution.retry_requires_approval)
            }
            PoliciesInForce::BuiltinDefault => true,
        };
        if needs_approval {
            let world = self.world(id, &view, &read, &breaker, now_ms());
            fresh_approval(
                &world,
                (change, &digest, covered),
                facts,
                (failed_at, actor),
                &format!("retrying `{id}`"),
            )?;
        }
        // Recorded after the halt it lifts, whatever the replicas' clocks.
        let at = match halt {
            Some(h) if failed.is_none() => now_ms().max(h.at + 1),
            _ => now_ms(),
        };
        if w.insert_retry(id, &step.id, failed_no, actor, reason, at)
            .await?
        {
            let kind = match (phase, halt) {
                (Phase::Rollback, _) => "rollback.retry",
                (Phase::Step, Some(_)) => "rollout.resumed",
                (Phase::Step, None) => "step.retry",
            };
            w.audit(
                actor,
                kind,
                Some(id),
                json!({"step": step.id, "after_attempt": failed_no, "target": failed.and_then(|a| a.target.clone()), "reason": reason}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(
            match (phase, failed.and_then(|a| a.target.as_deref()), halt) {
                (Phase::Rollback, _, _) => format!("retry of the rollback of step {}", step.id),
                (Phase::Step, Some(t), _) => format!("retry of step {} on {t}", step.id),
                (Phase::Step, None, Some(h)) => {
                    format!("the rollout resumes after the halt on {}", h.alert)
                }
                (Phase::Step, None, None) => format!("retry of step {}", step.id),
            },
        )
    }

    /// Asks for the rollback of failed change `id` (SPEC §11): from now on
    /// its claims run the declared rollbacks, the failed step's first, then
    /// the succeeded steps' last first. Idempotent: `false` when it was
    /// already asked for. Under `rollback_requires_approval` it needs an
    /// approval recorded after the failure by someone other than `actor`.
    pub async fn rollback(&self, id: &str, actor: &str, reason: &str) -> Result<bool, EngineError> {
        let view = self.view();
        let (change, digest, covered) = view
            .on_branch(id)
            .ok_or_else(|| EngineError::NotFound(format!("no change `{id}`")))?;
        let (change, covered) = (&change, &covered[..]);
        let mut w = self.store.write().await?;
        self.expire_in(&mut w).await?;
        let (read, breaker) = self.world_facts(Some(&mut w), &view, id).await?;
        // The seam for a revision that main no longer holds: its claim
        // would have to name its commit for `exec` to materialise.
        if let view::Focus::InFlight(r) = view::revision_focus(Some(digest.as_str()), &read.facts) {
            return Err(refused(
                "superseded",
                format!("revision {} of `{id}` is in flight, but the default branch now holds {digest}; rolling back a superseded revision is not supported yet: abandon it, and undo by hand", r.digest),
            ));
        }
        let facts = &read.facts.for_revision(digest.as_str());
        if facts.rollback.is_some() {
            w.commit().await?;
            return Ok(false);
        }
        // Undoing a sweep means undoing it on each target it reached, which
        // is not built: refuse rather than run a per-target rollback once.
        if let Some(step) = change
            .steps
            .iter()
            .find(|s| s.per_target && s.rollback.is_some())
        {
            return Err(refused(
                "unsupported",
                format!("step {} runs per target and declares a rollback; rolling back a rollout target by target is not supported yet: abandon `{id}` and undo by hand, or declare rollbacks only on steps that run once", step.id),
            ));
        }
        let state = view::state_of(change, facts, true);
        if state != ChangeState::Failed {
            return Err(refused(
                "not-failed",
                format!("`{id}` is {state}; only a failed change is rolled back"),
            ));
        }
        nothing_running(id, facts, "rolled back")?;
        let needs_approval = match view.governing(change, covered) {
            PoliciesInForce::Matched { policies } => policies
                .iter()
                .any(|p| p.execution.rollback_requires_approval),
            PoliciesInForce::BuiltinDefault => false,
        };
        if needs_approval {
            let failed_at = facts
                .attempts
                .iter()
                .filter(|a| matches!(a.state, AttemptState::Failed | AttemptState::Interrupted))
                .filter_map(|a| a.ended_at.or(Some(a.started_at)))
                .max()
                .unwrap_or(0);
            let world = self.world(id, &view, &read, &breaker, now_ms());
            fresh_approval(
                &world,
                (change, &digest, covered),
                facts,
                (failed_at, actor),
                &format!("rolling back `{id}`"),
            )?;
        }
        let now = now_ms();
        w.insert_rollback(id, digest.as_str(), actor, reason, now)
            .await?;
        let mut after = facts.clone();
        after.rollback = Some(crate::store::OperatorAction {
            step_id: None,
            after_attempt: None,
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: now,
        });
        let progress = view::step_progress(change, &after);
        let entries = view::rollback_entries(change, &after, &progress).unwrap_or_default();
        let order: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let s = &change.steps[e.step];
                json!({"step": s.id, "rollback": s.rollback.is_some()})
            })
            .collect();
        w.audit(
            actor,
            "change.rollback-requested",
            Some(id),
            json!({"reason": reason, "digest": digest.as_str(), "order": order}),
        )
        .await?;
        // Nothing to undo is undone at once.
        if view::state_of(change, &after, true) == ChangeState::RolledBack {
            self.finish_rollback(&mut w, id, digest.as_str(), now)
                .await?;
        }
        w.commit().await?;
        Ok(true)
    }

    /// A rollback whose every entry is done: the revision is over, its
    /// locks go and its alerts resolve, once; dependents stay refused.
    pub(super) async fn finish_rollback(
        &self,
        w: &mut WriteTx,
        id: &str,
        digest: &str,
        now: i64,
    ) -> Result<(), EngineError> {
        // Once: a repeated or late report of this revision must not release
        // the locks or resolve the alerts of a revision that runs after it.
        if !w.roll_back_revision(id, digest, now).await? {
            return Ok(());
        }
        let released = w.release_locks(id).await?;
        w.audit(
            "changegate",
            "change.rolled-back",
            Some(id),
            json!({"digest": digest, "locks_released": released}),
        )
        .await?;
        self.resolve_change_alerts(w, id, now).await?;
        Ok(())
    }

    /// Abandons a revision of `id` for good — the one in flight, even when
    /// the default branch moved on or lost the file, else the one on the
    /// default branch: releases its locks; dependents stay refused. A new
    /// digest on main is a new revision, which needs its own approvals.
    pub async fn abandon(&self, id: &str, actor: &str, reason: &str) -> Result<(), EngineError> {
        let view = self.view();
        let mut w = self.store.write().await?;
        // A lease that ran out is interrupted (and alerted) here, before the
        // abandonment resolves the change's alerts, not a moment after it.
        self.expire_in(&mut w).await?;
        let facts = w.change_facts(id).await?;
        let main = view.changes.get(id).map(|h| h.digest());
        let digest = match view::revision_focus(main.as_ref().map(|d| d.as_str()), &facts) {
            view::Focus::InFlight(r) => r.digest.clone(),
            view::Focus::Completed(r) => {
                return Err(refused(
                    "completed",
                    format!(
                        "revision {} of `{id}` completed; there is nothing to abandon",
                        r.digest
                    ),
                ))
            }
            view::Focus::Main => match main {
                Some(d) => d.to_string(),
                None => return Err(EngineError::NotFound(format!("no change `{id}`"))),
            },
        };
        nothing_running(id, &facts, "abandoned")?;
        if w.insert_abandonment(id, &digest, actor, reason, now_ms())
            .await?
        {
            let released = w.release_locks(id).await?;
            w.audit(
                actor,
                "change.abandoned",
                Some(id),
                json!({"reason": reason, "digest": digest, "locks_released": released}),
            )
            .await?;
            self.resolve_change_alerts(&mut w, id, now_ms()).await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Closes the step breaker.
    pub async fn reset_breaker(&self, actor: &str, reason: &str) -> Result<(), EngineError> {
        let mut w = self.store.write().await?;
        let now = now_ms();
        w.reset_breaker(actor, reason, now).await?;
        w.audit(actor, "breaker.reset", None, json!({"reason": reason}))
            .await?;
        for a in w
            .resolve_alerts(Firing::OfKind(AlertKind::BreakerOpen), now)
            .await?
        {
            w.audit(actor, "alert.resolved", None, json!({"alert": a.id}))
                .await?;
        }
        w.commit().await?;
        Ok(())
    }
}

/// Refuses `what` (e.g. "retrying `c`") with `needs-approval` unless
/// someone other than `actor` recorded, after `since`, an approval of the
/// change at its digest that counts under every policy in force: what
/// `retry` and `rollback` ask for when a policy says so.
fn fresh_approval(
    world: &view::World<'_>,
    (change, digest, covered): (
        &crate::model::ChangeSet,
        &crate::model::Digest,
        &[crate::model::CoveredPath],
    ),
    facts: &ChangeFacts,
    (since, actor): (i64, &str),
    what: &str,
) -> Result<(), EngineError> {
    match view::fresh_approver(world, change, digest, covered, facts, since, actor) {
        Some(_) => Ok(()),
        None => Err(refused(
            "needs-approval",
            format!("{what} needs a fresh approval of {digest} that counts under every policy in force, recorded after the failure by someone other than {actor}"),
        )),
    }
}

/// The attempt a retry re-opens: the step's failed or interrupted attempt
/// that is the latest on its target (a per-target step may have several
/// failed targets; the earliest goes first) and was not re-opened yet.
fn failed_attempt<'f>(
    facts: &'f crate::store::ChangeFacts,
    step: &str,
    phase: Phase,
) -> Option<&'f crate::store::Attempt> {
    let of_step = || {
        facts
            .attempts
            .iter()
            .filter(move |a| a.step_id == step && a.phase == phase)
    };
    of_step()
        .filter(|a| {
            !of_step().any(|b| b.target == a.target && b.attempt_no > a.attempt_no)
                && matches!(a.state, AttemptState::Failed | AttemptState::Interrupted)
                && !facts.retries.iter().any(|r| {
                    r.step_id.as_deref() == Some(step) && r.after_attempt == Some(a.attempt_no)
                })
        })
        .min_by_key(|a| a.attempt_no)
        .map(|a| &**a)
}

/// Refuses to end a change while one of its steps runs under a live lease.
/// Ending it releases its locks (and resolves its alerts), and the step
/// would go on changing targets that another change, or a fleet action,
/// could then take. Once the step reports, or its lease runs out (the
/// attempt is then interrupted), the change can be ended.
fn nothing_running(
    id: &str,
    facts: &crate::store::ChangeFacts,
    ended: &str,
) -> Result<(), EngineError> {
    let now = now_ms();
    match facts.attempts.iter().find(|a| a.runs_at(now)) {
        Some(a) => Err(refused(
            "step-running",
            format!(
                "`{id}` is not {ended} while attempt {} of step {} runs (claimed by {}): its targets stay locked until it reports or its lease runs out",
                a.id, a.step_id, a.executor
            ),
        )),
        None => Ok(()),
    }
}
