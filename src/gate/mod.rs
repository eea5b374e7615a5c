//! The gate: pure decisions over recorded facts. Nothing here does I/O;
//! the store and server gather facts, call these, and record the outcome.

pub mod approval;
pub mod breaker;
pub mod claim;
pub mod policy_review;
pub mod rollback;
pub mod rollout;

use serde::Serialize;

pub use approval::{
    approval_status, who_matches, ApprovalFact, ApprovalStatus, Directory, People, Person, Source,
    Verdict,
};
pub use breaker::{breaker_state, Breaker, BreakerConfig};
pub use claim::{
    claim_decision, claim_targets, ClaimContext, GoAhead, Next, Refusal, RefusalReason,
    RollbackEntry,
};
pub use rollout::{RolloutProgress, TargetProgress, Unit, WaveState, WaveStatus};

/// A change's lifecycle state (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeState {
    /// Seen, not yet approved at its digest.
    Proposed,
    /// Quorum met at a pull request's digest, not yet on the default branch.
    Approved,
    /// On the default branch and approved at the digest found there.
    Ready,
    /// A step has been claimed.
    Running,
    /// Every step succeeded.
    Completed,
    /// A step failed or was interrupted.
    Failed,
    /// An operator gave up on it.
    Abandoned,
    /// An operator asked for its rollback; rollback attempts run (SPEC §11).
    RollingBack,
    /// Every rollback succeeded or had nothing to run: terminal.
    RolledBack,
    /// A rollback attempt failed or was interrupted.
    RollbackFailed,
}

impl ChangeState {
    /// The word the API and the spec use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Proposed => "proposed",
            ChangeState::Approved => "approved",
            ChangeState::Ready => "ready",
            ChangeState::Running => "running",
            ChangeState::Completed => "completed",
            ChangeState::Failed => "failed",
            ChangeState::Abandoned => "abandoned",
            ChangeState::RollingBack => "rolling-back",
            ChangeState::RolledBack => "rolled-back",
            ChangeState::RollbackFailed => "rollback-failed",
        }
    }
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step's state, from its latest attempt (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not yet claimed (or re-opened by a retry).
    Pending,
    /// Claimed; its lease is live.
    Running,
    /// Its commands exited 0.
    Succeeded,
    /// A command exited non-zero, timed out, or the executor reported failure.
    Failed,
    /// The lease expired: the outcome is unknown and it is never re-run automatically.
    Interrupted,
    /// Not run (the change was abandoned before it).
    Skipped,
}

impl StepState {
    /// The word the API and the spec use.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Interrupted => "interrupted",
            StepState::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The change's state from its recorded facts: abandonment ends anything;
/// once a rollback was asked for, its entries (in the order they undo)
/// decide; otherwise the steps do.
pub fn change_state(
    abandoned: bool,
    approved_here: bool,
    steps: &[StepState],
    rollback: Option<&[StepState]>,
) -> ChangeState {
    if abandoned {
        ChangeState::Abandoned
    } else if let Some(entries) = rollback {
        rollback::rollback_state(entries)
    } else if steps
        .iter()
        .any(|s| matches!(s, StepState::Failed | StepState::Interrupted))
    {
        ChangeState::Failed
    } else if !steps.is_empty()
        && steps
            .iter()
            .all(|s| matches!(s, StepState::Succeeded | StepState::Skipped))
    {
        ChangeState::Completed
    } else if steps.iter().any(|s| *s != StepState::Pending) {
        ChangeState::Running
    } else if approved_here {
        ChangeState::Ready
    } else {
        ChangeState::Proposed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepState::*;

    #[test]
    fn states_follow_the_steps() {
        assert_eq!(
            change_state(false, false, &[Pending, Pending], None),
            ChangeState::Proposed
        );
        assert_eq!(
            change_state(false, true, &[Pending, Pending], None),
            ChangeState::Ready
        );
        assert_eq!(
            change_state(false, true, &[Succeeded, Running], None),
            ChangeState::Running
        );
        assert_eq!(
            change_state(false, true, &[Succeeded, Succeeded], None),
            ChangeState::Completed
        );
        assert_eq!(
            change_state(false, true, &[Succeeded, Interrupted], None),
            ChangeState::Failed
        );
        assert_eq!(
            change_state(true, true, &[Succeeded, Failed], None),
            ChangeState::Abandoned
        );
    }

    #[test]
    fn a_failure_is_failed_even_if_approval_was_lost() {
        assert_eq!(
            change_state(false, false, &[Failed, Pending], None),
            ChangeState::Failed
        );
    }
}
