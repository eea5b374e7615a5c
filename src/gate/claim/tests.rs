//! Unit tests: each claim rule, case by case.

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
        per_target: false,
        rollback: None,
        rollback_timeout: None,
    };
    ChangeSet {
        id: "up".into(),
        title: "t".into(),
        description: None,
        kind: "k".into(),
        targets: vec!["db".into(), "app".into()],
        targets_from: None,
        rollout: None,
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
fn decide(tweak: impl FnOnce(&mut ClaimContext<'_>)) -> Result<Next, RefusalReason> {
    decide_with(tweak).map_err(|r| r.reason)
}

fn decide_with(tweak: impl FnOnce(&mut ClaimContext<'_>)) -> Result<Next, Refusal> {
    decide_on(&change(), tweak)
}

/// As [`decide_with`], for `change` instead of the usual one.
fn decide_on(
    change: &ChangeSet,
    tweak: impl FnOnce(&mut ClaimContext<'_>),
) -> Result<Next, Refusal> {
    let steps = [pending(), pending()];
    let mut c = ClaimContext {
        id: "up",
        change: Some(change),
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
        rollback: None,
    };
    tweak(&mut c);
    claim_decision(&c)
}

#[test]
fn a_ready_change_grants_its_first_step() {
    assert_eq!(decide(|_| {}), Ok(Next::Step(0)));
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
        Ok(Next::Step(0))
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
        Ok(Next::Step(0)),
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
        Ok(Next::Step(0))
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
    assert_eq!(decide_at(go_ahead("backup", D, 2)), Ok(Next::Step(0)));
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
    assert_eq!(decide(|c| c.locks = ours), Ok(Next::Step(0)));
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
        Ok(Next::Step(0)),
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

#[test]
fn every_word_is_the_serialised_one() {
    use crate::gate::StepState;
    use RefusalReason as R;
    let words = |v: serde_json::Value, w: &str| assert_eq!(v, serde_json::json!(w));
    for r in [
        R::Unknown,
        R::NotApproved,
        R::DigestMismatch,
        R::Failed,
        R::Abandoned,
        R::Dependency,
        R::BreakerOpen,
        R::OutsideWindow,
        R::NeedsConfirmation,
        R::Locked,
        R::NotNext,
        R::BlastRadius,
        R::Completed,
        R::PoliciesInvalid,
        R::Superseded,
        R::RevisionInFlight,
        R::RolledBack,
        R::RollbackFailed,
        R::Unsupported,
    ] {
        words(serde_json::to_value(r).unwrap(), r.as_str());
    }
    for s in [
        ChangeState::Proposed,
        ChangeState::Approved,
        ChangeState::Ready,
        ChangeState::Running,
        ChangeState::Completed,
        ChangeState::Failed,
        ChangeState::Abandoned,
        ChangeState::RollingBack,
        ChangeState::RolledBack,
        ChangeState::RollbackFailed,
    ] {
        words(serde_json::to_value(s).unwrap(), s.as_str());
    }
    for s in [
        StepState::Pending,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Interrupted,
        StepState::Skipped,
    ] {
        words(serde_json::to_value(s).unwrap(), s.as_str());
    }
}

#[test]
fn a_change_with_per_target_steps_is_refused_until_rollouts_run() {
    let mut per_target = change();
    per_target.steps[1].per_target = true;
    let refusal = decide_on(&per_target, |_| {}).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Unsupported);
    assert!(
        refusal.detail.contains("nothing runs"),
        "{}",
        refusal.detail
    );
}
