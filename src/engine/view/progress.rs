//! Where a change's steps stand, from their attempts, and which revision
//! the gate acts on.

use crate::gate::claim::StepProgress;
use crate::gate::{self, ChangeState, RollbackEntry, StepState};
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
pub fn step_progress(change: &ChangeSet, facts: &ChangeFacts) -> Vec<StepProgress> {
    change
        .steps
        .iter()
        .map(|step| {
            let progress = progress_of(&step.id, Phase::Step, facts);
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

/// Where one step stands in one phase, from its latest attempt in that
/// phase and the retries that re-opened it. Attempt numbers run across
/// phases, so `attempts` is the step's latest number in either.
fn progress_of(step_id: &str, phase: Phase, facts: &ChangeFacts) -> StepProgress {
    let latest = facts
        .attempts
        .iter()
        .filter(|a| a.step_id == step_id && a.phase == phase)
        .max_by_key(|a| a.attempt_no);
    let attempts = facts
        .attempts
        .iter()
        .filter(|a| a.step_id == step_id)
        .map(|a| a.attempt_no)
        .max()
        .unwrap_or(0);
    let retried = |a: &Attempt| {
        facts
            .retries
            .iter()
            .any(|r| r.step_id.as_deref() == Some(step_id) && r.after_attempt == Some(a.attempt_no))
    };
    {
        {
            let (state, running, failure) = match latest {
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
                attempts,
            }
        }
    }
}

/// A change's state from its facts.
pub fn state_of(change: &ChangeSet, facts: &ChangeFacts, approved: bool) -> ChangeState {
    let progress = step_progress(change, facts);
    let steps: Vec<StepState> = progress.iter().map(|p| p.state).collect();
    let rollback: Option<Vec<StepState>> = rollback_entries(change, facts, &progress)
        .map(|entries| entries.iter().map(|e| e.progress.state).collect());
    gate::change_state(
        facts.abandonment.is_some(),
        approved,
        &steps,
        rollback.as_deref(),
    )
}
