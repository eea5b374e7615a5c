//! Claims, heartbeats and reports (SPEC §3): the executor's side of the
//! gate, each decided and recorded in one write transaction.

use serde_json::json;

use super::*;
use crate::gate;
use crate::gate::Next;
use crate::store::{AttemptState, Phase};
use crate::wire::{tail, AttemptAnswer, ClaimGrant, GrantRollout, Outcome, Report};
use view::World;

impl Engine {
    /// Marks attempts whose lease ran out as interrupted: a failure whose
    /// outcome is unknown, never re-run automatically.
    pub async fn expire_leases(&self) -> Result<Vec<Attempt>, EngineError> {
        let mut w = self.store.write().await?;
        let expired = self.expire_in(&mut w).await?;
        w.commit().await?;
        Ok(expired)
    }

    /// Claims the next step of `id` for `executor`, whose checkout has `digest`.
    pub async fn claim(
        &self,
        id: &str,
        digest: &str,
        executor: &str,
    ) -> Result<Result<ClaimGrant, Refusal>, EngineError> {
        let view = self.view();
        // A rollout asks the fleet monitor before each new target; outside
        // the write lock, since it is a network round trip. A halt found
        // is recorded, and the decision below reads it.
        let watch = self.watch(id).await?;
        let unreachable = match &watch {
            rollouts::Watch::Unreachable(e) => Some(e.as_str()),
            _ => None,
        };
        let mut w = self.store.write().await?;
        self.expire_in(&mut w).await?;
        let (read, breaker) = self.world_facts(Some(&mut w), &view, id).await?;
        let facts = &read.facts;
        let now = now_ms();
        let world = World {
            monitor_unreachable: unreachable,
            brief: true,
            ..self.world(id, &view, &read, &breaker, now)
        };
        let (decision, status) = view::decide_claim(&world, id, facts, digest);
        let next = match decision {
            Ok(next) => next,
            Err(refusal) => {
                w.audit(
                    executor,
                    "claim.refused",
                    Some(id),
                    json!({"reason": refusal.reason, "detail": refusal.detail, "digest": digest}),
                )
                .await?;
                w.commit().await?;
                return Ok(Err(refusal));
            }
        };
        let change = &view.changes[id].change(id);
        let (index, phase, number, total) = match next {
            Next::Step(n) | Next::Target { step: n, .. } => {
                (n, Phase::Step, n + 1, change.steps.len())
            }
            Next::Rollback { step, entry } => {
                let total = view::rollback_entries(
                    change,
                    &facts.for_revision(digest),
                    &view::step_progress(change, &facts.for_revision(digest)),
                )
                .map_or(0, |e| e.len());
                (step, Phase::Rollback, entry + 1, total)
            }
        };
        let step = &change.steps[index];
        let target = match next {
            Next::Target { target, .. } => Some(change.targets[target].clone()),
            _ => None,
        };
        let attempt_no = facts
            .attempts
            .iter()
            .filter(|a| a.step_id == step.id)
            .map(|a| a.attempt_no)
            .max()
            .unwrap_or(0)
            + 1;
        let lease_ms = self.config().server.lease.as_secs() as i64 * 1000;
        let attempt = Attempt {
            id: format!("{id}.{}.{attempt_no}", step.id),
            change_id: id.to_string(),
            step_id: step.id.clone(),
            attempt_no,
            executor: executor.to_string(),
            digest: digest.to_string(),
            state: AttemptState::Running,
            lease_expires_at: now + lease_ms,
            started_at: now,
            ended_at: None,
            exit_code: None,
            duration_ms: None,
            output_tail: None,
            late_report: None,
            phase,
            target: target.clone(),
        };
        w.insert_attempt(&attempt).await?;
        let timeout = step.timeout.or(change.timeout).map_or(900, |t| t.as_secs());
        let (check, run, verify, timeout) = match phase {
            Phase::Step => {
                w.insert_revision(id, digest, &view.commit, now).await?;
                // A rollout locks each target from its first claim, so the
                // targets it has not reached stay free (SPEC §10).
                let locked = match change.per_target_block() {
                    Some(_) => gate::claim_targets(change, next),
                    None => &change.targets[..],
                };
                w.take_locks(id, locked, now).await?;
                (
                    step.check.clone(),
                    step.run.clone(),
                    step.verify.clone(),
                    timeout,
                )
            }
            // The locks are held since the failure; the rollback alone runs.
            Phase::Rollback => (
                None,
                step.rollback.clone().unwrap_or_default(),
                None,
                step.rollback_timeout.map_or(timeout, |t| t.as_secs()),
            ),
        };
        let event = match phase {
            Phase::Step => "step.claimed",
            Phase::Rollback => "rollback.claimed",
        };
        w.audit(
            executor,
            event,
            Some(id),
            json!({"step": step.id, "attempt": attempt.id, "digest": digest, "target": target}),
        )
        .await?;
        w.commit().await?;
        let rollout = match (next, status.rollout.as_ref(), change.sweep()) {
            (Next::Target { target, .. }, Some(r), Some(sweep)) => {
                let waves = sweep.waves(&change.targets);
                let mut end = 0;
                let wave = waves.iter().position(|w| {
                    end += w.len();
                    target < end
                });
                Some(GrantRollout {
                    target: change.targets[target].clone(),
                    wave: wave.map_or(0, |w| w + 1),
                    waves: waves.len(),
                    done: r.done,
                    targets: change.targets.len(),
                    parallel: r.parallel,
                })
            }
            _ => None,
        };
        Ok(Ok(ClaimGrant {
            attempt: attempt.id,
            change: id.to_string(),
            step: step.id.clone(),
            step_number: number,
            steps_total: total,
            check,
            run,
            verify,
            env: change.env.clone(),
            timeout_secs: timeout,
            lease_expires_at: attempt.lease_expires_at,
            lease_secs: self.config().server.lease.as_secs(),
            phase,
            rollout,
        }))
    }

    /// The attempt `attempt_id` of `executor`, after expiring stale leases.
    async fn owned_attempt(
        &self,
        w: &mut WriteTx,
        attempt_id: &str,
        executor: &str,
    ) -> Result<Attempt, EngineError> {
        self.expire_in(w).await?;
        let a = w
            .attempt(attempt_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no attempt `{attempt_id}`")))?;
        if a.executor != executor {
            return Err(refused(
                "not-yours",
                format!("attempt {attempt_id} belongs to {}", a.executor),
            ));
        }
        Ok(a)
    }

    /// Renews a running attempt's lease; refuses once it has ended.
    pub async fn heartbeat(
        &self,
        attempt_id: &str,
        executor: &str,
    ) -> Result<Attempt, EngineError> {
        let mut w = self.store.write().await?;
        let a = self.owned_attempt(&mut w, attempt_id, executor).await?;
        if a.state != AttemptState::Running {
            w.commit().await?;
            return Err(refused(
                "ended",
                format!("attempt {attempt_id} is {}; stop the step", a.state),
            ));
        }
        let until = now_ms() + self.config().server.lease.as_secs() as i64 * 1000;
        w.renew_lease(attempt_id, until).await?;
        w.commit().await?;
        Ok(Attempt {
            lease_expires_at: until,
            ..a
        })
    }

    /// Records an attempt's outcome. Idempotent: the same report again
    /// changes nothing; a report after the lease expired is kept but does
    /// not un-fail the change.
    pub async fn report(
        &self,
        attempt_id: &str,
        executor: &str,
        report: &Report,
    ) -> Result<AttemptAnswer, EngineError> {
        let view = self.view();
        let mut w = self.store.write().await?;
        let a = self.owned_attempt(&mut w, attempt_id, executor).await?;
        let output = self.scrub(tail(&report.output_tail));
        let a_was_running = a.state == AttemptState::Running;
        let now = now_ms();
        match a.state {
            AttemptState::Running => {
                let state = match report.outcome {
                    Outcome::Succeeded => AttemptState::Succeeded,
                    Outcome::Failed => AttemptState::Failed,
                };
                w.finish_attempt(
                    attempt_id,
                    state,
                    report.exit_code,
                    Some(report.duration_ms),
                    &output,
                    now,
                )
                .await?;
                if state == AttemptState::Failed {
                    self.alert_step_failed(&mut w, &a, report.exit_code, &output, now)
                        .await?;
                }
                let kind = match (a.phase, state == AttemptState::Succeeded) {
                    (Phase::Step, true) => "step.succeeded",
                    (Phase::Step, false) => "step.failed",
                    (Phase::Rollback, true) => "rollback.succeeded",
                    (Phase::Rollback, false) => "rollback.failed",
                };
                w.audit(executor, kind, Some(&a.change_id), json!({"step": a.step_id, "attempt": a.id, "exit_code": report.exit_code, "duration_ms": report.duration_ms}))
                    .await?;
            }
            AttemptState::Interrupted => {
                w.record_late_report(
                    attempt_id,
                    &serde_json::to_string(report).unwrap_or_default(),
                )
                .await?;
                w.audit(
                    executor,
                    "step.late-report",
                    Some(&a.change_id),
                    json!({"step": a.step_id, "attempt": a.id, "outcome": report.outcome}),
                )
                .await?;
            }
            AttemptState::Succeeded | AttemptState::Failed => {} // already reported: idempotent
        }
        let all = w.change_facts(&a.change_id).await?;
        // The attempt's own revision: main's, or the one in flight elsewhere.
        let revision = all.revisions.iter().find(|r| r.digest == a.digest).cloned();
        let change = match view.changes.get(&a.change_id) {
            Some(held) if held.digest().as_str() == a.digest => Some(Arc::new((
                held.change(&a.change_id),
                held.digest(),
                Vec::new(),
            ))),
            _ => revision
                .as_ref()
                .and_then(|r| self.revision_set(&a.change_id, r)),
        };
        let facts = all.for_revision(&a.digest);
        let change_state = match change.as_deref() {
            Some((change, _, _)) => {
                let rollout = view::rollout_progress(change, &facts);
                let state = view::state_of_in(change, &facts, true, rollout.as_ref());
                if let (true, Outcome::Succeeded, Some(r)) =
                    (a_was_running, report.outcome, &rollout)
                {
                    self.record_wave_done(&mut w, change, r, &a).await?;
                }
                if state == ChangeState::Completed && !facts.attempts.is_empty() {
                    w.complete_revision(&a.change_id, &a.digest, now).await?;
                }
                if state == ChangeState::Completed
                    && !facts.attempts.is_empty()
                    && w.release_locks(&a.change_id).await? > 0
                {
                    w.audit(
                        "changegate",
                        "change.completed",
                        Some(&a.change_id),
                        json!({"locks": "released"}),
                    )
                    .await?;
                    self.resolve_change_alerts(&mut w, &a.change_id, now)
                        .await?;
                }
                if state == ChangeState::RolledBack {
                    self.finish_rollback(&mut w, &a.change_id, &a.digest, now)
                        .await?;
                }
                state
            }
            None => ChangeState::Failed,
        };
        let recorded = w.attempt(attempt_id).await?.unwrap_or(a);
        w.commit().await?;
        Ok(AttemptAnswer {
            recorded: a_was_running,
            attempt: recorded,
            change_state,
        })
    }

    /// When `a` finished its target's last per-target step and with it a
    /// wave, records `rollout.wave-done` (and `rollout.done` for the last
    /// wave): once, since reports are decided one at a time.
    async fn record_wave_done(
        &self,
        w: &mut WriteTx,
        change: &crate::model::ChangeSet,
        r: &gate::RolloutProgress,
        a: &Attempt,
    ) -> Result<(), EngineError> {
        let Some(target) = &a.target else {
            return Ok(());
        };
        let Some(t) = r.targets.iter().find(|t| &t.target == target) else {
            return Ok(());
        };
        let waves = r.wave_statuses(now_ms());
        let wave = &waves[t.wave];
        let last_step = change.steps[r.block.end - 1].id == a.step_id;
        if !last_step || !matches!(wave.state, gate::WaveState::Done | gate::WaveState::Baking) {
            return Ok(());
        }
        w.audit(
            "changegate",
            "rollout.wave-done",
            Some(&a.change_id),
            json!({"wave": wave.index, "waves": waves.len(), "targets": wave.targets.len(), "done": r.targets_done(), "of": r.targets.len(), "bake_until": wave.bake_until}),
        )
        .await?;
        if r.targets_done() == r.targets.len() {
            w.audit(
                "changegate",
                "rollout.done",
                Some(&a.change_id),
                json!({"targets": r.targets.len(), "waves": waves.len()}),
            )
            .await?;
        }
        Ok(())
    }

    /// Interrupts attempts whose lease ran out, and alerts on each.
    pub(super) async fn expire_in(&self, w: &mut WriteTx) -> Result<Vec<Attempt>, EngineError> {
        let now = now_ms();
        let expired = w.expire_leases(now).await?;
        for a in &expired {
            w.audit(
                "changegate",
                if a.phase == Phase::Rollback {
                    "rollback.interrupted"
                } else {
                    "step.interrupted"
                },
                Some(&a.change_id),
                json!({"step": a.step_id, "attempt": a.id, "lease_expired_at": a.lease_expires_at}),
            )
            .await?;
            self.alert_step_failed(w, a, None, "", now).await?;
        }
        Ok(expired)
    }
}
