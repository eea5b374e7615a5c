//! Rollback as approved (SPEC §11): which steps are undone, in what order,
//! and what the change's state is while they are.

use super::{ChangeState, StepState};

/// The steps to undo, by index, in the order they are undone: the failed
/// (or interrupted) step first, since it may have half-run, then every step
/// that succeeded, last first. Steps that never ran are not undone.
///
/// With rollouts (SPEC §10) an entry becomes (step, target) and a
/// per-target step's targets are undone in reverse target order; the order
/// of steps stays this one.
pub fn rollback_order(steps: &[StepState]) -> Vec<usize> {
    let failed = steps
        .iter()
        .position(|s| matches!(s, StepState::Failed | StepState::Interrupted));
    let succeeded = (0..steps.len())
        .rev()
        .filter(|&i| steps[i] == StepState::Succeeded);
    failed.into_iter().chain(succeeded).collect()
}

/// Where a rollback stands, from the state of each entry in undo order
/// (`Skipped` for a step without `rollback`): one failed or interrupted
/// entry fails it; all done or skipped ends it.
pub fn rollback_state(entries: &[StepState]) -> ChangeState {
    if entries
        .iter()
        .any(|s| matches!(s, StepState::Failed | StepState::Interrupted))
    {
        ChangeState::RollbackFailed
    } else if entries
        .iter()
        .all(|s| matches!(s, StepState::Succeeded | StepState::Skipped))
    {
        ChangeState::RolledBack
    } else {
        ChangeState::RollingBack
    }
}

/// How many entries are undone (succeeded or skipped), of how many.
pub fn undone(entries: &[StepState]) -> (usize, usize) {
    let done = entries
        .iter()
        .filter(|s| matches!(s, StepState::Succeeded | StepState::Skipped))
        .count();
    (done, entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepState::*;

    #[test]
    fn the_failed_step_first_then_the_succeeded_ones_last_first() {
        assert_eq!(
            rollback_order(&[Succeeded, Succeeded, Failed, Pending]),
            vec![2, 1, 0]
        );
        assert_eq!(
            rollback_order(&[Succeeded, Interrupted, Pending]),
            vec![1, 0]
        );
        // A failure at the first step: only it is undone.
        assert_eq!(rollback_order(&[Failed, Pending, Pending]), vec![0]);
    }

    #[test]
    fn states_follow_the_entries() {
        assert_eq!(
            rollback_state(&[Pending, Pending]),
            ChangeState::RollingBack
        );
        assert_eq!(
            rollback_state(&[Succeeded, Running]),
            ChangeState::RollingBack
        );
        assert_eq!(
            rollback_state(&[Succeeded, Skipped, Succeeded]),
            ChangeState::RolledBack
        );
        assert_eq!(
            rollback_state(&[Succeeded, Interrupted, Pending]),
            ChangeState::RollbackFailed
        );
        // Nothing to undo at all is done at once.
        assert_eq!(rollback_state(&[Skipped]), ChangeState::RolledBack);
        assert_eq!(undone(&[Succeeded, Skipped, Pending]), (2, 3));
    }
}
