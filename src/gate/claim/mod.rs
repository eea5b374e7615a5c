//! Whether an executor may claim a change's next step (SPEC §3, "A claim
//! is granted only if…"). The first unmet rule, in the spec's order, is the
//! answer, with a detail that says what would satisfy it.

use serde::Serialize;

use super::rollout::RolloutProgress;
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
    /// The change was rolled back: nothing is left to run.
    RolledBack,
    /// A rollback attempt failed: `retry` re-runs it or `abandon` ends it.
    RollbackFailed,
    /// The wave before has not baked yet (SPEC §10): the detail says until when.
    Baking,
    /// A firing alert on a target the rollout touched halted it (SPEC §10).
    Halted,
    /// The fleet monitor could not be asked about the touched targets, so
    /// no new target starts (fail closed).
    MonitorUnreachable,
}

impl RefusalReason {
    /// The word the API and the spec use.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unknown => "unknown",
            RefusalReason::NotApproved => "not-approved",
            RefusalReason::DigestMismatch => "digest-mismatch",
            RefusalReason::Failed => "failed",
            RefusalReason::Abandoned => "abandoned",
            RefusalReason::Dependency => "dependency",
            RefusalReason::BreakerOpen => "breaker-open",
            RefusalReason::OutsideWindow => "outside-window",
            RefusalReason::NeedsConfirmation => "needs-confirmation",
            RefusalReason::Locked => "locked",
            RefusalReason::NotNext => "not-next",
            RefusalReason::BlastRadius => "blast-radius",
            RefusalReason::Completed => "completed",
            RefusalReason::PoliciesInvalid => "policies-invalid",
            RefusalReason::Superseded => "superseded",
            RefusalReason::RevisionInFlight => "revision-in-flight",
            RefusalReason::RolledBack => "rolled-back",
            RefusalReason::RollbackFailed => "rollback-failed",
            RefusalReason::Baking => "baking",
            RefusalReason::Halted => "halted",
            RefusalReason::MonitorUnreachable => "monitor-unreachable",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The rule.
    pub reason: RefusalReason,
    /// For a person: what is wrong and what would satisfy it.
    pub detail: String,
}

fn refuse<T>(reason: RefusalReason, detail: impl Into<String>) -> Result<T, Refusal> {
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
    /// Once a rollback was asked for: what is undone, in order.
    pub rollback: Option<&'a [RollbackEntry]>,
    /// For a change with per-target steps: every target's progress.
    pub rollout: Option<&'a RolloutProgress>,
    /// The alert that halted the rollout, if one stands.
    pub halt: Option<&'a str>,
    /// Why the fleet monitor could not be asked, when it could not.
    pub monitor_unreachable: Option<&'a str>,
    /// Now (unix ms), for the bake.
    pub now_ms: i64,
    /// The strictest `max_wave` of the governing policies.
    pub max_wave: Option<u32>,
    /// The strictest (longest) `min_bake` of the governing policies, in ms.
    pub min_bake_ms: Option<i64>,
}

/// One step to undo, in undo order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackEntry {
    /// The step's index in the change.
    pub step: usize,
    /// Its rollback attempts (`Skipped` when it declares no `rollback`).
    pub progress: StepProgress,
}

/// What a granted claim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Step `n`'s commands.
    Step(usize),
    /// Per-target step `step` on the change's target `target` (an index
    /// into its targets).
    Target {
        /// The step's index in the change.
        step: usize,
        /// The target's index in the change's targets.
        target: usize,
    },
    /// The rollback of step `step`, entry `entry` of the rollback order.
    Rollback {
        /// The step's index in the change.
        step: usize,
        /// Its place in the undo order.
        entry: usize,
    },
}

/// The index of the step to claim, or the first unmet rule. The rules run
/// in this order, so a refusal names the most fundamental problem; adding a
/// rule means one small function below and one line here.
pub fn claim_decision(c: &ClaimContext<'_>) -> Result<Next, Refusal> {
    let change = known(c)?;
    policies_valid(c)?;
    if let Some(entries) = c.rollback {
        return rollback_claim(c, change, entries);
    }
    claimable_state(c, change)?;
    digest_matches(c)?;
    dependencies_completed(c)?;
    breaker_closed(c)?;
    inside_windows(c)?;
    let next = next_unit(c, next_step(c)?)?;
    go_ahead_given(c, change, next)?;
    targets_free(c, change, next)?;
    not_running(c, change, next)?;
    within_blast_radius(c, change, next)?;
    Ok(next)
}

/// The step, or in the per-target block the (step, target) the rollout
/// allows now: waves in order, each after the last one's bake, at most
/// `parallel` targets at once.
fn next_unit(c: &ClaimContext<'_>, step: usize) -> Result<Next, Refusal> {
    match c.rollout {
        Some(r) if r.block.contains(&step) => match r.next(c.now_ms)? {
            Some(unit) if unit.fresh && c.monitor_unreachable.is_some() => refuse(
                RefusalReason::MonitorUnreachable,
                format!(
                    "{}; no new target starts until the fleet monitor answers",
                    c.monitor_unreachable.unwrap_or_default()
                ),
            ),
            Some(unit) => Ok(Next::Target {
                step: unit.step,
                target: unit.target,
            }),
            // Every target is through; the rollup says otherwise only if
            // the progress is inconsistent: refuse rather than guess.
            None => refuse(
                RefusalReason::NotNext,
                format!("every target of `{}` is through the per-target steps", c.id),
            ),
        },
        _ => Ok(Next::Step(step)),
    }
}

impl Next {
    /// The step's index in the change.
    pub fn step(self) -> usize {
        match self {
            Next::Step(n) | Next::Target { step: n, .. } | Next::Rollback { step: n, .. } => n,
        }
    }
}

/// The targets a claim of `next` touches and locks: one target of a
/// per-target step; for a step run once, [`ChangeSet::once_targets`].
pub fn claim_targets(change: &ChangeSet, next: Next) -> &[String] {
    match next {
        Next::Target { target, .. } => std::slice::from_ref(&change.targets[target]),
        Next::Step(n) | Next::Rollback { step: n, .. } => change.once_targets(n),
    }
}

/// Undoing, once asked for: the next entry in undo order, one at a time,
/// at the digest that ran. Approval, windows, the breaker and go-aheads
/// were for going forward; the rollback commands were approved with the
/// change, and an incident does not wait for a window (SPEC §11).
fn rollback_claim(
    c: &ClaimContext<'_>,
    change: &ChangeSet,
    entries: &[RollbackEntry],
) -> Result<Next, Refusal> {
    use RefusalReason as R;
    let id = c.id;
    match c.state {
        ChangeState::RollingBack => {}
        ChangeState::RolledBack => {
            return refuse(
                R::RolledBack,
                format!("`{id}` was rolled back; nothing is left to run"),
            )
        }
        ChangeState::Abandoned => return refuse(R::Abandoned, format!("`{id}` was abandoned")),
        _ => {
            let failed = entries
                .iter()
                .find(|e| e.progress.failure.is_some())
                .map(|e| {
                    format!(
                        " (the rollback of step {} {})",
                        change.steps[e.step].id,
                        e.progress.failure.as_deref().unwrap_or("failed")
                    )
                })
                .unwrap_or_default();
            return refuse(
                R::RollbackFailed,
                format!("the rollback of `{id}` failed{failed}; `changegate retry` re-runs it, or `abandon` ends it"),
            );
        }
    }
    digest_matches(c)?;
    if let Some(e) = entries.iter().find(|e| e.progress.running.is_some()) {
        let (attempt, lease) = e.progress.running.as_ref().expect("running");
        return refuse(
            R::NotNext,
            format!(
                "the rollback of step {} is already running (attempt {attempt}, lease until {})",
                change.steps[e.step].id,
                crate::clock::format_ms(*lease)
            ),
        );
    }
    match entries
        .iter()
        .position(|e| e.progress.state == StepState::Pending)
    {
        Some(entry) => Ok(Next::Rollback {
            step: entries[entry].step,
            entry,
        }),
        None => refuse(
            R::RolledBack,
            format!("every rollback of `{id}` already ran"),
        ),
    }
}

/// The change is on the default branch.
fn known<'a>(c: &ClaimContext<'a>) -> Result<&'a ChangeSet, Refusal> {
    c.change.ok_or_else(|| Refusal {
        reason: RefusalReason::Unknown,
        detail: format!("no change `{}` on the default branch", c.id),
    })
}

/// Every policy validates: without all of them, nobody can tell what would
/// be enough (fail closed).
fn policies_valid(c: &ClaimContext<'_>) -> Result<(), Refusal> {
    match c.policies_invalid {
        Some(error) => refuse(
            RefusalReason::PoliciesInvalid,
            format!("a policy on the default branch does not validate, so no claim is granted until it is fixed: {error}"),
        ),
        None => Ok(()),
    }
}

/// The change is ready or running: approved, not failed, not finished.
fn claimable_state(c: &ClaimContext<'_>, change: &ChangeSet) -> Result<(), Refusal> {
    use RefusalReason as R;
    let id = c.id;
    match c.state {
        ChangeState::Ready | ChangeState::Running => Ok(()),
        ChangeState::Proposed | ChangeState::Approved => refuse(
            R::NotApproved,
            format!(
                "`{id}` is not approved at {}: {}",
                c.approved_digest, c.approval_summary
            ),
        ),
        ChangeState::Failed if c.halt.is_some() => refuse(
            R::Halted,
            format!(
                "the rollout of `{id}` halted: {}; `changegate retry` or `abandon` it",
                c.halt.unwrap_or_default()
            ),
        ),
        ChangeState::Failed => {
            let why = c
                .steps
                .iter()
                .zip(&change.steps)
                .find_map(|(p, s)| p.failure.as_ref().map(|f| format!("step {} {f}", s.id)));
            refuse(
                R::Failed,
                format!(
                    "`{id}` failed ({}); `changegate retry` or `abandon` it",
                    why.unwrap_or_default()
                ),
            )
        }
        ChangeState::Abandoned => refuse(R::Abandoned, format!("`{id}` was abandoned")),
        ChangeState::RollingBack | ChangeState::RollbackFailed | ChangeState::RolledBack => refuse(
            R::RolledBack,
            format!("`{id}` is {}: it does not go forward again", c.state),
        ),
        ChangeState::Completed => refuse(
            R::Completed,
            format!("every step of `{id}` already succeeded"),
        ),
    }
}

/// The executor's checkout is exactly what was approved.
fn digest_matches(c: &ClaimContext<'_>) -> Result<(), Refusal> {
    if c.executor_digest == c.approved_digest {
        return Ok(());
    }
    refuse(
        RefusalReason::DigestMismatch,
        format!(
            "the checkout's digest is {} but {} was approved; check out the approved commit",
            c.executor_digest, c.approved_digest
        ),
    )
}

/// Every `depends_on` change is completed.
fn dependencies_completed(c: &ClaimContext<'_>) -> Result<(), Refusal> {
    let Some(dep) = c
        .dependencies
        .iter()
        .find(|d| d.state != Some(ChangeState::Completed))
    else {
        return Ok(());
    };
    let how = match (dep.state, &dep.failure) {
        (None, _) => "not on the default branch".to_string(),
        (Some(ChangeState::Failed), Some(f)) => format!("failed ({f})"),
        (Some(s), _) => s.as_str().to_string(),
    };
    refuse(
        RefusalReason::Dependency,
        format!("dependency {} is {how}; it must be completed first", dep.id),
    )
}

/// The step breaker is closed.
fn breaker_closed(c: &ClaimContext<'_>) -> Result<(), Refusal> {
    match c.breaker {
        Breaker::Open { since, failures } => refuse(
            RefusalReason::BreakerOpen,
            format!("the step breaker opened at {} after {failures} failures; an operator must run `changegate breaker reset --reason …`", crate::clock::format_ms(*since)),
        ),
        _ => Ok(()),
    }
}

/// Now is inside a window of every governing policy that has windows.
fn inside_windows(c: &ClaimContext<'_>) -> Result<(), Refusal> {
    for (policy, windows) in c.windows {
        if !windows.iter().any(|w| w.contains(c.now.0, c.now.1)) {
            let list: Vec<String> = windows.iter().map(ToString::to_string).collect();
            return refuse(
                RefusalReason::OutsideWindow,
                format!("policy {policy} allows steps only in {}", list.join(" or ")),
            );
        }
    }
    Ok(())
}

/// The first step that has not succeeded (or been skipped).
fn next_step(c: &ClaimContext<'_>) -> Result<usize, Refusal> {
    c.steps
        .iter()
        .position(|s| !matches!(s.state, StepState::Succeeded | StepState::Skipped))
        .ok_or_else(|| Refusal {
            reason: RefusalReason::Completed,
            detail: format!("every step of `{}` already succeeded", c.id),
        })
}

/// A step that needs a go-ahead has one for its next attempt at the
/// approved digest: one given for an earlier attempt or another digest
/// does not carry over.
/// A per-target step needs its go-ahead once per revision, before its
/// first target (its state rolls up this revision's targets): the waves
/// and the bake gate the rest.
fn go_ahead_given(c: &ClaimContext<'_>, change: &ChangeSet, next: Next) -> Result<(), Refusal> {
    let next = next.step();
    let step = &change.steps[next];
    if !(step.confirm || c.confirm_each_step) || c.steps[next].state != StepState::Pending {
        return Ok(());
    }
    let attempt_no = c.steps[next].attempts + 1;
    let mut given = c
        .go_aheads
        .iter()
        .filter(|g| g.step_id == step.id && g.attempt_no == attempt_no);
    if given.clone().any(|g| g.digest == c.approved_digest) {
        return Ok(());
    }
    let elsewhere = given
        .next()
        .map(|g| {
            format!(
                " (the go-ahead recorded was given at {}, not at the approved {})",
                g.digest, c.approved_digest
            )
        })
        .unwrap_or_default();
    refuse(
        RefusalReason::NeedsConfirmation,
        format!(
            "step {} needs a go-ahead for attempt {attempt_no} at {}{elsewhere}: `changegate proceed {} {} --reason …`",
            step.id, c.approved_digest, c.id, step.id
        ),
    )
}

/// No other change holds a lock on a target the claim acts on: any of the
/// change's targets; in a rollout, the one target of a per-target claim,
/// and for a step run once, the targets it acts on (its own, else all),
/// although it locks only those it names.
fn targets_free(c: &ClaimContext<'_>, change: &ChangeSet, next: Next) -> Result<(), Refusal> {
    let touched = match (c.rollout, next) {
        (Some(_), Next::Target { .. }) => claim_targets(change, next),
        (Some(_), _) => change.steps[next.step()].effective_targets(change),
        (None, _) => &change.targets[..],
    };
    match c
        .locks
        .iter()
        .find(|(t, holder, _)| holder != c.id && touched.contains(t))
    {
        Some((target, holder, state)) => refuse(
            RefusalReason::Locked,
            format!("target {target} is locked by change {holder} ({state})"),
        ),
        None => Ok(()),
    }
}

/// The next step is not already running under a live lease.
fn not_running(c: &ClaimContext<'_>, change: &ChangeSet, next: Next) -> Result<(), Refusal> {
    let Next::Step(next) = next else {
        return Ok(()); // a rollout's targets run side by side, `parallel` at most
    };
    match &c.steps[next].running {
        Some((attempt, lease)) => refuse(
            RefusalReason::NotNext,
            format!(
                "step {} is already running (attempt {attempt}, lease until {})",
                change.steps[next].id,
                crate::clock::format_ms(*lease)
            ),
        ),
        None => Ok(()),
    }
}

/// The claim touches no more targets than the strictest policy allows,
/// and a rollout's waves and bake keep to `max_wave` and `min_bake`.
fn within_blast_radius(
    c: &ClaimContext<'_>,
    change: &ChangeSet,
    next: Next,
) -> Result<(), Refusal> {
    let step = &change.steps[next.step()];
    // A rollout's unit is one target. A step run once acts on the fleet
    // unless it names its own targets, as `targets_free` already takes it:
    // counting only the targets it locks (none) let any change with a
    // per-target block run a sweeping step past `max_targets_per_step`.
    let touched = match next {
        Next::Target { .. } => 1,
        Next::Step(_) | Next::Rollback { .. } => step.effective_targets(change).len(),
    };
    if let Some(max) = c.max_targets_per_step.filter(|&max| touched > max as usize) {
        return refuse(
            RefusalReason::BlastRadius,
            format!(
                "step {} touches {touched} targets; policy allows {max} per step",
                step.id
            ),
        );
    }
    let Some(r) = c.rollout else { return Ok(()) };
    let largest = (0..r.waves)
        .map(|w| (w, r.targets.iter().filter(|t| t.wave == w).count()))
        .max_by_key(|&(w, n)| (n, std::cmp::Reverse(w)));
    if let (Some(max), Some((w, n))) = (c.max_wave, largest) {
        if n > max as usize {
            return refuse(
                RefusalReason::BlastRadius,
                format!(
                    "wave {} of {} holds {n} targets; policy allows {max} per wave (execution.max_wave): add waves",
                    w + 1,
                    r.waves
                ),
            );
        }
    }
    match c.min_bake_ms {
        Some(min) if r.bake_ms < min => refuse(
            RefusalReason::BlastRadius,
            format!(
                "the rollout bakes {}s after each wave; policy asks for at least {}s (execution.min_bake)",
                r.bake_ms / 1000,
                min / 1000
            ),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
