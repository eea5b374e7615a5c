//! Whether an executor may claim a change's next step (SPEC §3, "A claim
//! is granted only if…"). The first unmet rule, in the spec's order, is the
//! answer, with a detail that says what would satisfy it.

use serde::Serialize;

use super::{Breaker, ChangeState, StepState};
use crate::model::{ChangeSet, Window};

/// Why a claim was refused; serialised as the spec's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
mod tests {
    use super::*;
    use crate::model::Step;

    const D: &str = "sha256:approved";

    fn change() -> ChangeSet {
        let step = |id: &str, confirm: bool, targets: Option<Vec<String>>| Step {
            id: id.into(),
            run: "true".into(),
            check: None,
            verify: None,
            timeout: None,
            confirm,
            targets,
        };
        ChangeSet {
            id: "up".into(),
            title: "t".into(),
            description: None,
            kind: "k".into(),
            targets: vec!["db".into(), "app".into()],
            depends_on: vec![],
            env: Default::default(),
            include: vec![],
            timeout: None,
            steps: vec![
                step("backup", false, Some(vec!["db".into()])),
                step("switch", true, None),
            ],
        }
    }

    fn pending() -> StepProgress {
        StepProgress {
            state: StepState::Pending,
            running: None,
            failure: None,
            attempts: 0,
        }
    }

    fn done() -> StepProgress {
        StepProgress {
            state: StepState::Succeeded,
            running: None,
            failure: None,
            attempts: 1,
        }
    }

    /// The decision on a context where every rule holds, after `tweak`.
    fn decide(tweak: impl FnOnce(&mut ClaimContext<'_>)) -> Result<usize, RefusalReason> {
        decide_with(tweak).map_err(|r| r.reason)
    }

    fn decide_with(tweak: impl FnOnce(&mut ClaimContext<'_>)) -> Result<usize, Refusal> {
        let change = change();
        let steps = [pending(), pending()];
        let mut c = ClaimContext {
            id: "up",
            change: Some(&change),
            state: ChangeState::Ready,
            approved_digest: D,
            approval_summary: "2 of 2 approvals (policy pg)",
            executor_digest: D,
            dependencies: &[],
            breaker: &Breaker::Closed,
            now: (0, 600),
            windows: &[],
            steps: &steps,
            go_aheads: &[],
            policies_invalid: None,
            confirm_each_step: false,
            locks: &[],
            max_targets_per_step: None,
        };
        tweak(&mut c);
        claim_decision(&c)
    }

    #[test]
    fn a_ready_change_grants_its_first_step() {
        assert_eq!(decide(|_| {}), Ok(0));
    }

    #[test]
    fn unknown() {
        assert_eq!(decide(|c| c.change = None), Err(RefusalReason::Unknown));
    }

    #[test]
    fn not_approved() {
        assert_eq!(
            decide(|c| c.state = ChangeState::Proposed),
            Err(RefusalReason::NotApproved)
        );
    }

    #[test]
    fn digest_mismatch() {
        assert_eq!(
            decide(|c| c.executor_digest = "sha256:other"),
            Err(RefusalReason::DigestMismatch)
        );
    }

    #[test]
    fn failed_abandoned_and_completed() {
        assert_eq!(
            decide(|c| c.state = ChangeState::Failed),
            Err(RefusalReason::Failed)
        );
        assert_eq!(
            decide(|c| c.state = ChangeState::Abandoned),
            Err(RefusalReason::Abandoned)
        );
        assert_eq!(
            decide(|c| c.state = ChangeState::Completed),
            Err(RefusalReason::Completed)
        );
    }

    #[test]
    fn dependency_names_the_failed_step() {
        let deps = [Dependency {
            id: "base".into(),
            state: Some(ChangeState::Failed),
            failure: Some("step release, exit 1".into()),
        }];
        let refusal = decide_with(|c| c.dependencies = Box::leak(Box::new(deps))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::Dependency);
        assert_eq!(
            refusal.detail,
            "dependency base is failed (step release, exit 1); it must be completed first"
        );
    }

    #[test]
    fn a_completed_dependency_is_fine() {
        let deps = [Dependency {
            id: "base".into(),
            state: Some(ChangeState::Completed),
            failure: None,
        }];
        assert_eq!(
            decide(|c| c.dependencies = Box::leak(Box::new(deps))),
            Ok(0)
        );
    }

    #[test]
    fn breaker_open() {
        let open = Breaker::Open {
            since: 0,
            failures: 3,
        };
        assert_eq!(
            decide(|c| c.breaker = Box::leak(Box::new(open))),
            Err(RefusalReason::BreakerOpen)
        );
    }

    #[test]
    fn outside_window() {
        let w: Vec<Window> = vec!["mon-thu 09:00-17:00 UTC".parse().unwrap()];
        let w: &'static [Window] = Box::leak(w.into_boxed_slice());
        let windows: &'static [(&str, &[Window])] = Box::leak(Box::new([("pg", w)]));
        assert_eq!(
            decide(|c| c.windows = windows),
            Ok(0),
            "monday 10:00 is inside"
        );
        assert_eq!(
            decide(|c| {
                c.windows = windows;
                c.now = (4, 600)
            }),
            Err(RefusalReason::OutsideWindow)
        );
    }

    #[test]
    fn needs_confirmation_per_step_or_per_policy() {
        let first_done: &'static [StepProgress] = Box::leak(Box::new([done(), pending()]));
        assert_eq!(
            decide(|c| c.steps = first_done),
            Err(RefusalReason::NeedsConfirmation),
            "step switch has confirm: true"
        );
        assert_eq!(
            decide(|c| c.confirm_each_step = true),
            Err(RefusalReason::NeedsConfirmation)
        );
        let given = go_ahead("backup", D, 1);
        assert_eq!(
            decide(|c| {
                c.confirm_each_step = true;
                c.go_aheads = given
            }),
            Ok(0)
        );
    }

    fn go_ahead(step: &str, digest: &str, attempt_no: i64) -> &'static [GoAhead] {
        Box::leak(Box::new([GoAhead {
            step_id: step.into(),
            digest: digest.into(),
            attempt_no,
        }]))
    }

    #[test]
    fn a_go_ahead_given_at_another_digest_does_not_count_and_the_detail_says_so() {
        let refusal = decide_with(|c| {
            c.confirm_each_step = true;
            c.go_aheads = go_ahead("backup", "sha256:older", 1)
        })
        .unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::NeedsConfirmation);
        assert!(
            refusal
                .detail
                .contains("given at sha256:older, not at the approved sha256:approved"),
            "{}",
            refusal.detail
        );
    }

    #[test]
    fn a_retried_step_needs_a_new_go_ahead() {
        // Attempt 1 failed and was retried: the go-ahead for attempt 1 is used up.
        let retried: &'static [StepProgress] = Box::leak(Box::new([
            StepProgress {
                attempts: 1,
                ..pending()
            },
            pending(),
        ]));
        let decide_at = |given| {
            decide(|c| {
                c.confirm_each_step = true;
                c.steps = retried;
                c.go_aheads = given
            })
        };
        assert_eq!(
            decide_at(go_ahead("backup", D, 1)),
            Err(RefusalReason::NeedsConfirmation)
        );
        assert_eq!(decide_at(go_ahead("backup", D, 2)), Ok(0));
    }

    #[test]
    fn locked_by_another_change_but_not_by_itself() {
        let theirs: &'static [(String, String, ChangeState)] = Box::leak(Box::new([(
            "db".into(),
            "other".into(),
            ChangeState::Failed,
        )]));
        assert_eq!(decide(|c| c.locks = theirs), Err(RefusalReason::Locked));
        let ours: &'static [(String, String, ChangeState)] =
            Box::leak(Box::new([("db".into(), "up".into(), ChangeState::Running)]));
        assert_eq!(decide(|c| c.locks = ours), Ok(0));
    }

    #[test]
    fn not_next_while_a_step_runs() {
        let running: &'static [StepProgress] = Box::leak(Box::new([
            StepProgress {
                state: StepState::Running,
                running: Some(("a1".into(), 0)),
                failure: None,
                attempts: 1,
            },
            pending(),
        ]));
        assert_eq!(
            decide(|c| {
                c.state = ChangeState::Running;
                c.steps = running
            }),
            Err(RefusalReason::NotNext)
        );
    }

    #[test]
    fn blast_radius() {
        let first_done: &'static [StepProgress] = Box::leak(Box::new([done(), pending()]));
        let at_second = |c: &mut ClaimContext<'_>| {
            c.steps = first_done;
            c.go_aheads = go_ahead("switch", D, 1);
            c.max_targets_per_step = Some(1)
        };
        assert_eq!(
            decide(at_second),
            Err(RefusalReason::BlastRadius),
            "switch touches db and app"
        );
        assert_eq!(
            decide(|c| c.max_targets_per_step = Some(1)),
            Ok(0),
            "backup touches only db"
        );
    }

    #[test]
    fn the_first_unmet_rule_wins() {
        let open = Breaker::Open {
            since: 0,
            failures: 3,
        };
        let r = decide(|c| {
            c.executor_digest = "sha256:other";
            c.breaker = Box::leak(Box::new(open))
        });
        assert_eq!(r, Err(RefusalReason::DigestMismatch));
    }

    #[test]
    fn an_invalid_policy_refuses_every_claim() {
        let refusal =
            decide_with(|c| c.policies_invalid = Some("policies/p.yaml:3:5: bad")).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::PoliciesInvalid);
        assert!(refusal.detail.contains("policies/p.yaml:3:5: bad"));
    }
}
