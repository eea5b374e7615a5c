//! Whether an executor may claim a change's next step (SPEC §3, "A claim
//! is granted only if…"). The first unmet rule, in the spec's order, is the
//! answer, with a detail that says what would satisfy it.

use serde::Serialize;

use super::{Breaker, ChangeState, StepState};
use crate::model::{ChangeSet, Window};

/// Why a claim was refused; serialised as the spec's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    /// No such change on the default branch.
    Unknown,
    /// Not approved at the default branch's digest.
    NotApproved,
    /// The executor's checkout differs from what was approved.
    DigestMismatch,
    /// A step failed; retry or abandon first.
    Failed,
    /// Abandoned for good.
    Abandoned,
    /// A `depends_on` change is not completed.
    Dependency,
    /// The step breaker is open.
    BreakerOpen,
    /// Outside every execution window of a policy.
    OutsideWindow,
    /// The step needs an operator's go-ahead.
    NeedsConfirmation,
    /// A target is locked by another change.
    Locked,
    /// Another step of this change is running.
    NotNext,
    /// The step touches more targets than a policy allows.
    BlastRadius,
    /// Every step already succeeded.
    Completed,
    /// A policy file on the default branch does not validate: every claim
    /// is refused until it is fixed (fail closed).
    PoliciesInvalid,
    /// The executor's revision is in flight, but the default branch no
    /// longer holds its digest: it cannot go forward (SPEC §13).
    Superseded,
    /// Another revision of this change is in flight; a new one waits.
    RevisionInFlight,
}

/// A refused claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The rule.
    pub reason: RefusalReason,
    /// For a person: what is wrong and what would satisfy it.
    pub detail: String,
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> Result<usize, Refusal> {
    Err(Refusal {
        reason,
        detail: detail.into(),
    })
}

/// A dependency and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Its id.
    pub id: String,
    /// Its state (`None`: not on the default branch).
    pub state: Option<ChangeState>,
    /// For a failed dependency: which step and how, e.g. "step release, exit 1".
    pub failure: Option<String>,
}

/// A step's progress: its state and, while running, its attempt and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProgress {
    /// From the latest attempt.
    pub state: StepState,
    /// The running attempt's id and lease expiry (unix ms).
    pub running: Option<(String, i64)>,
    /// For a failed step: "exit 1" or "interrupted".
    pub failure: Option<String>,
    /// Attempts made so far: the next one is `attempts + 1`.
    pub attempts: i64,
}

/// A recorded go-ahead: for attempt `attempt_no` of `step_id` at `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAhead {
    /// The step.
    pub step_id: String,
    /// The digest it was given at.
    pub digest: String,
    /// The attempt it is for.
    pub attempt_no: i64,
}

/// Everything a claim decision reads.
#[derive(Debug, Clone)]
pub struct ClaimContext<'a> {
    /// The requested id.
    pub id: &'a str,
    /// The change on the default branch, if any.
    pub change: Option<&'a ChangeSet>,
    /// Its state.
    pub state: ChangeState,
    /// The default branch digest, which is what approvals bind to.
    pub approved_digest: &'a str,
    /// "1 of 2 approvals (policy …)", for the not-approved detail.
    pub approval_summary: &'a str,
    /// What the executor computed from its checkout.
    pub executor_digest: &'a str,
    /// Its `depends_on`, resolved.
    pub dependencies: &'a [Dependency],
    /// The step breaker.
    pub breaker: &'a Breaker,
    /// Now, as (weekday from Monday = 0, minute of the UTC day).
    pub now: (u8, u16),
    /// Each governing policy's windows (a policy without windows is absent).
    pub windows: &'a [(&'a str, &'a [Window])],
    /// Per step, in order.
    pub steps: &'a [StepProgress],
    /// Every go-ahead recorded for the change.
    pub go_aheads: &'a [GoAhead],
    /// A policy demands a go-ahead for every step.
    pub confirm_each_step: bool,
    /// Held target locks: (target, holding change, its state).
    pub locks: &'a [(String, String, ChangeState)],
    /// The strictest `max_targets_per_step` of the governing policies.
    pub max_targets_per_step: Option<u32>,
    /// The first error in a policy file on the default branch, if any.
    pub policies_invalid: Option<&'a str>,
}

/// The index of the step to claim, or the first unmet rule.
pub fn claim_decision(c: &ClaimContext<'_>) -> Result<usize, Refusal> {
    use RefusalReason as R;
    let id = c.id;
    let Some(change) = c.change else {
        return refuse(
            R::Unknown,
            format!("no change `{id}` on the default branch"),
        );
    };
    // Without every policy, nobody can tell what would be enough: refuse.
    if let Some(error) = c.policies_invalid {
        return refuse(
            R::PoliciesInvalid,
            format!("a policy on the default branch does not validate, so no claim is granted until it is fixed: {error}"),
        );
    }
    match c.state {
        ChangeState::Ready | ChangeState::Running => {}
        ChangeState::Proposed | ChangeState::Approved => {
            return refuse(
                R::NotApproved,
                format!(
                    "`{id}` is not approved at {}: {}",
                    c.approved_digest, c.approval_summary
                ),
            )
        }
        ChangeState::Failed => {
            let why = c
                .steps
                .iter()
                .zip(&change.steps)
                .find_map(|(p, s)| p.failure.as_ref().map(|f| format!("step {} {f}", s.id)));
            return refuse(
                R::Failed,
                format!(
                    "`{id}` failed ({}); `changegate retry` or `abandon` it",
                    why.unwrap_or_default()
                ),
            );
        }
        ChangeState::Abandoned => return refuse(R::Abandoned, format!("`{id}` was abandoned")),
        ChangeState::Completed => {
            return refuse(
                R::Completed,
                format!("every step of `{id}` already succeeded"),
            )
        }
    }
    if c.executor_digest != c.approved_digest {
        return refuse(
            R::DigestMismatch,
            format!(
                "the checkout's digest is {} but {} was approved; check out the approved commit",
                c.executor_digest, c.approved_digest
            ),
        );
    }
    for dep in c.dependencies {
        if dep.state != Some(ChangeState::Completed) {
            let how = match (dep.state, &dep.failure) {
                (None, _) => "not on the default branch".to_string(),
                (Some(ChangeState::Failed), Some(f)) => format!("failed ({f})"),
                (Some(s), _) => serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            };
            return refuse(
                R::Dependency,
                format!("dependency {} is {how}; it must be completed first", dep.id),
            );
        }
    }
    if let Breaker::Open { since, failures } = c.breaker {
        return refuse(
            R::BreakerOpen,
            format!("the step breaker opened at {} after {failures} failures; an operator must run `changegate breaker reset --reason …`", crate::clock::format_ms(*since)),
        );
    }
    for (policy, windows) in c.windows {
        if !windows.iter().any(|w| w.contains(c.now.0, c.now.1)) {
            let list: Vec<String> = windows.iter().map(ToString::to_string).collect();
            return refuse(
                R::OutsideWindow,
                format!("policy {policy} allows steps only in {}", list.join(" or ")),
            );
        }
    }
    let Some(next) = c
        .steps
        .iter()
        .position(|s| !matches!(s.state, StepState::Succeeded | StepState::Skipped))
    else {
        return refuse(
            R::Completed,
            format!("every step of `{id}` already succeeded"),
        );
    };
    let step = &change.steps[next];
    if (step.confirm || c.confirm_each_step) && c.steps[next].state == StepState::Pending {
        // A go-ahead is for the next attempt at the approved digest: one
        // given for an earlier attempt or another digest does not carry over.
        let attempt_no = c.steps[next].attempts + 1;
        let mut given = c
            .go_aheads
            .iter()
            .filter(|g| g.step_id == step.id && g.attempt_no == attempt_no);
        if !given.clone().any(|g| g.digest == c.approved_digest) {
            let elsewhere = given
                .next()
                .map(|g| {
                    format!(
                        " (the go-ahead recorded was given at {}, not at the approved {})",
                        g.digest, c.approved_digest
                    )
                })
                .unwrap_or_default();
            return refuse(
                R::NeedsConfirmation,
                format!(
                    "step {} needs a go-ahead for attempt {attempt_no} at {}{elsewhere}: `changegate proceed {id} {} --reason …`",
                    step.id, c.approved_digest, step.id
                ),
            );
        }
    }
    if let Some((target, holder, state)) = c
        .locks
        .iter()
        .find(|(t, holder, _)| holder != id && change.targets.contains(t))
    {
        let state = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return refuse(
            R::Locked,
            format!("target {target} is locked by change {holder} ({state})"),
        );
    }
    if let Some((attempt, lease)) = &c.steps[next].running {
        return refuse(
            R::NotNext,
            format!(
                "step {} is already running (attempt {attempt}, lease until {})",
                step.id,
                crate::clock::format_ms(*lease)
            ),
        );
    }
    if let Some(max) = c.max_targets_per_step {
        let n = step.effective_targets(change).len();
        if n > max as usize {
            return refuse(
                R::BlastRadius,
                format!(
                    "step {} touches {n} targets; policy allows {max} per step",
                    step.id
                ),
            );
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests;
