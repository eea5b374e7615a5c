//! Where a change's steps stand, from their attempts, and which revision
//! the gate acts on.

use std::collections::HashMap;

use crate::gate::claim::StepProgress;
use crate::gate::{self, ChangeState, RollbackEntry, RolloutProgress, StepState, TargetProgress};
use crate::model::ChangeSet;
use crate::store::{Attempt, AttemptState, ChangeFacts, Phase, RevisionRecord};

/// Which revision of a change the gate acts on (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Focus<'f> {
    /// The digest on the default branch: a fresh revision, or the one in
    /// flight or completed when main still holds it.
    Main,
    /// A revision in flight (running, failed) whose digest the default
    /// branch no longer holds: edited, renamed or deleted since.
    InFlight(&'f RevisionRecord),
    /// A completed revision; the default branch holds another digest, or
    /// none. Completed is final.
    Completed(&'f RevisionRecord),
}

/// The revision to act on, given the digest on the default branch (if the
/// change is there) and the recorded revisions.
pub fn revision_focus<'f>(main_digest: Option<&str>, facts: &'f ChangeFacts) -> Focus<'f> {
    if let Some(r) = facts.in_flight() {
        return if Some(r.digest.as_str()) == main_digest {
            Focus::Main
        } else {
            Focus::InFlight(r)
        };
    }
    match facts.completed() {
        Some(c) if Some(c.digest.as_str()) != main_digest => Focus::Completed(c),
        _ => Focus::Main,
    }
}

/// The progress of each step, from its attempts, retries and abandonment.
/// A per-target step's is its targets' rolled into one (see
/// [`gate::rollout::rollup`]): failed at the first failed target, running
/// part-way, succeeded once every target is through.
pub fn step_progress(change: &ChangeSet, facts: &ChangeFacts) -> Vec<StepProgress> {
    step_progress_in(change, facts, rollout_progress(change, facts).as_ref())
}

/// [`step_progress`], with the rollout's progress already read.
pub fn step_progress_in(
    change: &ChangeSet,
    facts: &ChangeFacts,
    rollout: Option<&RolloutProgress>,
) -> Vec<StepProgress> {
    let index = Latest::of(facts);
    change
        .steps
        .iter()
        .enumerate()
        .map(|(n, step)| {
            let progress = match rollout {
                Some(r) if r.block.contains(&n) => {
                    let on_targets = r.targets.iter().map(|t| &t.steps[n - r.block.start]);
                    let first = |f: fn(&StepProgress) -> bool| on_targets.clone().find(|p| f(p));
                    StepProgress {
                        state: gate::rollout::rollup(on_targets.clone()),
                        running: first(|p| p.running.is_some()).and_then(|p| p.running.clone()),
                        failure: r.targets.iter().find_map(|t| {
                            t.steps[n - r.block.start]
                                .failure
                                .as_ref()
                                .map(|f| format!("on {}: {f}", t.target))
                        }),
                        attempts: on_targets.map(|p| p.attempts).max().unwrap_or(0),
                    }
                }
                _ => index.progress(&step.id, None, Phase::Step, facts),
            };
            let state = if facts.abandonment.is_some() && progress.state == StepState::Pending {
                StepState::Skipped
            } else {
                progress.state
            };
            StepProgress { state, ..progress }
        })
        .collect()
}

/// Once a rollback was asked for: each step to undo, in undo order, with
/// its rollback attempts (`Skipped` for a step without `rollback`).
pub fn rollback_entries(
    change: &ChangeSet,
    facts: &ChangeFacts,
    steps: &[StepProgress],
) -> Option<Vec<RollbackEntry>> {
    facts.rollback.as_ref()?;
    let states: Vec<StepState> = steps.iter().map(|p| p.state).collect();
    Some(
        gate::rollback::rollback_order(&states)
            .into_iter()
            .map(|i| {
                let step = &change.steps[i];
                let progress = if step.rollback.is_some() {
                    progress_of(&step.id, Phase::Rollback, facts)
                } else {
                    StepProgress {
                        state: StepState::Skipped,
                        running: None,
                        failure: None,
                        attempts: 0,
                    }
                };
                RollbackEntry { step: i, progress }
            })
            .collect(),
    )
}

/// Every target's progress through the per-target block, for a change
/// that has one (SPEC §10). The attempts are indexed once, so a claim at
/// 1,000 targets reads each attempt once, not once per target.
pub fn rollout_progress(change: &ChangeSet, facts: &ChangeFacts) -> Option<RolloutProgress> {
    let block = change.per_target_block()?;
    let rollout = change.sweep()?;
    let waves = rollout.waves(&change.targets);
    let index = Latest::of(facts);
    let mut wave_of = Vec::with_capacity(change.targets.len());
    for (w, wave) in waves.iter().enumerate() {
        wave_of.extend(std::iter::repeat_n(w, wave.len()));
    }
    let last = &change.steps[block.end - 1].id;
    let targets = change
        .targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let steps: Vec<StepProgress> = change.steps[block.clone()]
                .iter()
                .map(|s| index.progress(&s.id, Some(target), Phase::Step, facts))
                .collect();
            let done_at = index
                .latest(last, Some(target), Phase::Step)
                .filter(|a| a.state == AttemptState::Succeeded)
                .and_then(|a| a.ended_at);
            TargetProgress {
                target: target.clone(),
                wave: wave_of.get(i).copied().unwrap_or(0),
                steps,
                done_at,
            }
        })
        .collect();
    Some(RolloutProgress {
        block,
        targets,
        waves: waves.len(),
        parallel: rollout.parallel,
        bake_ms: rollout.bake.map_or(0, |b| b.as_secs() as i64 * 1000),
    })
}

/// Where one step stands in one phase (see [`Latest::progress`]).
fn progress_of(step_id: &str, phase: Phase, facts: &ChangeFacts) -> StepProgress {
    Latest::of(facts).progress(step_id, None, phase, facts)
}

/// The latest attempt of each (step, target, phase), and each step's
/// latest attempt number in any phase and on any target.
struct Latest<'f> {
    by_unit: HashMap<(&'f str, Option<&'f str>, Phase), &'f Attempt>,
    numbers: HashMap<&'f str, i64>,
}

impl<'f> Latest<'f> {
    fn of(facts: &'f ChangeFacts) -> Latest<'f> {
        let mut by_unit: HashMap<(&str, Option<&str>, Phase), &Attempt> = HashMap::new();
        let mut numbers: HashMap<&str, i64> = HashMap::new();
        for a in &facts.attempts {
            let key = (a.step_id.as_str(), a.target.as_deref(), a.phase);
            let entry = by_unit.entry(key).or_insert(a);
            if a.attempt_no > entry.attempt_no {
                *entry = a;
            }
            let n = numbers.entry(a.step_id.as_str()).or_insert(0);
            *n = (*n).max(a.attempt_no);
        }
        Latest { by_unit, numbers }
    }

    fn latest(&self, step_id: &str, target: Option<&str>, phase: Phase) -> Option<&'f Attempt> {
        self.by_unit.get(&(step_id, target, phase)).copied()
    }

    /// Where one step (on one target, for a per-target step) stands in one
    /// phase, from its latest attempt there and the retries that re-opened
    /// it. Attempt numbers run across phases and targets, so `attempts` is
    /// the step's latest number in any of them.
    fn progress(
        &self,
        step_id: &str,
        target: Option<&str>,
        phase: Phase,
        facts: &ChangeFacts,
    ) -> StepProgress {
        let retried = |a: &Attempt| {
            facts.retries.iter().any(|r| {
                r.step_id.as_deref() == Some(step_id) && r.after_attempt == Some(a.attempt_no)
            })
        };
        let (state, running, failure) = match self.latest(step_id, target, phase) {
            None => (StepState::Pending, None, None),
            Some(a) if a.state == AttemptState::Running => (
                StepState::Running,
                Some((a.id.clone(), a.lease_expires_at)),
                None,
            ),
            Some(a) if a.state == AttemptState::Succeeded => (StepState::Succeeded, None, None),
            Some(a) if retried(a) => (StepState::Pending, None, None),
            Some(a) if a.state == AttemptState::Interrupted => (
                StepState::Interrupted,
                None,
                Some("interrupted: its lease expired".to_string()),
            ),
            Some(a) => (
                StepState::Failed,
                None,
                Some(
                    a.exit_code
                        .map_or("failed".to_string(), |c| format!("exit {c}")),
                ),
            ),
        };
        StepProgress {
            state,
            running,
            failure,
            attempts: self.numbers.get(step_id).copied().unwrap_or(0),
        }
    }
}

/// A change's state from its facts.
pub fn state_of(change: &ChangeSet, facts: &ChangeFacts, approved: bool) -> ChangeState {
    state_of_in(
        change,
        facts,
        approved,
        rollout_progress(change, facts).as_ref(),
    )
}

/// [`state_of`], with the rollout's progress already read.
pub fn state_of_in(
    change: &ChangeSet,
    facts: &ChangeFacts,
    approved: bool,
    rollout: Option<&RolloutProgress>,
) -> ChangeState {
    let progress = step_progress_in(change, facts, rollout);
    let steps: Vec<StepState> = progress.iter().map(|p| p.state).collect();
    let rollback: Option<Vec<StepState>> = rollback_entries(change, facts, &progress)
        .map(|entries| entries.iter().map(|e| e.progress.state).collect());
    halted(
        gate::change_state(
            facts.abandonment.is_some(),
            approved,
            &steps,
            rollback.as_deref(),
        ),
        facts,
    )
}

/// A standing halt fails a rollout that is still going (SPEC §10); one
/// that completed, or was rolled back or abandoned, keeps its state.
pub fn halted(state: ChangeState, facts: &ChangeFacts) -> ChangeState {
    match state {
        ChangeState::Running | ChangeState::Ready if facts.halt().is_some() => ChangeState::Failed,
        state => state,
    }
}
