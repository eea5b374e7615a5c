//! Unit tests: each claim rule, case by case.

use super::*;
use crate::gate::{RolloutProgress, TargetProgress};
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

const PENDING: StepProgress = StepProgress {
    state: StepState::Pending,
    running: None,
    failure: None,
    attempts: 0,
};
static TWO_PENDING: [StepProgress; 2] = [PENDING, PENDING];

/// As [`decide_with`], for `change` instead of the usual one.
fn decide_on<'a>(
    change: &'a ChangeSet,
    tweak: impl FnOnce(&mut ClaimContext<'a>),
) -> Result<Next, Refusal> {
    let steps = &TWO_PENDING;
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
        steps,
        go_aheads: &[],
        policies_invalid: None,
        confirm_each_step: false,
        locks: &[],
        max_targets_per_step: None,
        rollback: None,
        rollout: None,
        halt: None,
        monitor_unreachable: None,
        now_ms: NOW,
        max_wave: None,
        min_bake_ms: None,
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
        R::Baking,
        R::Halted,
        R::MonitorUnreachable,
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

/// Now, in the rollout tests (unix ms).
const NOW: i64 = 1_800_000_000_000;
const BAKE: i64 = 600_000;

/// Six targets: a once-step `drain`, per-target `restart` and `probe`,
/// and a once-step `finish`; waves of 1, 2 and 3 targets.
fn fleet() -> ChangeSet {
    let mut c = change();
    c.targets = (1..=6).map(|i| format!("c{i}")).collect();
    let step = |id: &str, per_target: bool| Step {
        id: id.into(),
        per_target,
        confirm: false,
        targets: None,
        ..c.steps[0].clone()
    };
    c.steps = vec![
        step("drain", false),
        step("restart", true),
        step("probe", true),
        step("finish", false),
    ];
    c
}

fn running(attempt: &str) -> StepProgress {
    StepProgress {
        state: StepState::Running,
        running: Some((attempt.into(), NOW + 60_000)),
        failure: None,
        attempts: 1,
    }
}

/// The fleet's progress: per target, its two block steps and when it
/// finished; waves [1, 2, 3].
fn progress(targets: [([StepProgress; 2], Option<i64>); 6], parallel: u32) -> RolloutProgress {
    let waves = [0, 1, 1, 2, 2, 2];
    RolloutProgress {
        block: 1..3,
        targets: targets
            .into_iter()
            .enumerate()
            .map(|(i, (steps, done_at))| TargetProgress {
                target: format!("c{}", i + 1),
                wave: waves[i],
                steps: steps.to_vec(),
                done_at,
            })
            .collect(),
        waves: 3,
        parallel,
        bake_ms: BAKE,
    }
}

fn fresh() -> ([StepProgress; 2], Option<i64>) {
    ([pending(), pending()], None)
}

fn through(at: i64) -> ([StepProgress; 2], Option<i64>) {
    ([done(), done()], Some(at))
}

/// The decision for the fleet with `r`, the drain done, after `tweak`.
/// (The change and its step progress are leaked: a test's lifetime.)
fn decide_rollout<'a>(
    r: &'a RolloutProgress,
    tweak: impl FnOnce(&mut ClaimContext<'a>),
) -> Result<Next, Refusal> {
    let change: &'a ChangeSet = Box::leak(Box::new(fleet()));
    let block_state = crate::gate::rollout::rollup(r.targets.iter().flat_map(|t| &t.steps));
    let steps = [
        done(),
        StepProgress {
            state: block_state,
            ..pending()
        },
        StepProgress {
            state: block_state,
            ..pending()
        },
        pending(),
    ];
    let steps: &'a [StepProgress] = Box::leak(Box::new(steps));
    decide_on(change, |c| {
        c.state = ChangeState::Running;
        c.steps = steps;
        c.rollout = Some(r);
        tweak(c);
    })
}

#[test]
fn the_canary_goes_first_after_the_once_steps() {
    let r = progress([fresh(), fresh(), fresh(), fresh(), fresh(), fresh()], 4);
    assert_eq!(
        decide_rollout(&r, |_| {}),
        Ok(Next::Target { step: 1, target: 0 })
    );
    // Before the block, the once-step runs first, whatever the rollout says.
    let change = fleet();
    let steps = [pending(), pending(), pending(), pending()];
    let r2 = r.clone();
    assert_eq!(
        decide_on(&change, |c| {
            c.steps = &steps;
            c.rollout = Some(&r2);
        }),
        Ok(Next::Step(0))
    );
}

#[test]
fn a_target_goes_on_with_its_next_step_before_a_new_target_starts() {
    let r = progress(
        [
            ([done(), pending()], None),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
        ],
        1,
    );
    assert_eq!(
        decide_rollout(&r, |_| {}),
        Ok(Next::Target { step: 2, target: 0 })
    );
}

#[test]
fn the_next_wave_waits_for_the_bake_with_its_end_in_the_detail() {
    let finished = NOW - 60_000;
    let r = progress(
        [
            through(finished),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
        ],
        4,
    );
    let refusal = decide_rollout(&r, |_| {}).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Baking);
    let until = crate::clock::format_ms(finished + BAKE);
    assert!(refusal.detail.contains(&until), "{}", refusal.detail);
    assert!(
        refusal.detail.contains("wave 2 starts then"),
        "{}",
        refusal.detail
    );
    // Once the bake has passed, wave 2's first target starts.
    assert_eq!(
        decide_rollout(&r, |c| c.now_ms = finished + BAKE),
        Ok(Next::Target { step: 1, target: 1 })
    );
    let statuses = r.wave_statuses(NOW);
    assert_eq!(statuses[0].state, crate::gate::WaveState::Baking);
    assert_eq!(statuses[0].bake_until, Some(finished + BAKE));
    assert_eq!(
        r.wave_statuses(finished + BAKE)[0].state,
        crate::gate::WaveState::Done
    );
}

#[test]
fn no_target_of_a_later_wave_starts_while_one_of_this_wave_runs() {
    let long_ago = NOW - 10 * BAKE;
    // Wave 2 has c2 running and c3 not started; parallel 4 leaves room,
    // so c3 starts, never c4 of wave 3.
    let r = progress(
        [
            through(long_ago),
            ([running("a"), pending()], None),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
        ],
        4,
    );
    assert_eq!(
        decide_rollout(&r, |_| {}),
        Ok(Next::Target { step: 1, target: 2 })
    );
    // With c3 running too, wave 3 waits although places are free.
    let r = progress(
        [
            through(long_ago),
            ([running("a"), pending()], None),
            ([running("b"), pending()], None),
            fresh(),
            fresh(),
            fresh(),
        ],
        4,
    );
    let refusal = decide_rollout(&r, |_| {}).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::NotNext);
    assert!(refusal.detail.contains("wave 2 of 3"), "{}", refusal.detail);
}

#[test]
fn parallel_is_never_exceeded() {
    let long_ago = NOW - 10 * BAKE;
    let r = progress(
        [
            through(long_ago),
            through(long_ago),
            through(long_ago),
            ([running("a"), pending()], None),
            ([done(), pending()], None),
            fresh(),
        ],
        2,
    );
    // c5 is between its steps: it goes on (it holds a place already).
    assert_eq!(
        decide_rollout(&r, |_| {}),
        Ok(Next::Target { step: 2, target: 4 })
    );
    let r = progress(
        [
            through(long_ago),
            through(long_ago),
            through(long_ago),
            ([running("a"), pending()], None),
            ([done(), running("b")], None),
            fresh(),
        ],
        2,
    );
    let refusal = decide_rollout(&r, |_| {}).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::NotNext);
    assert!(
        refusal.detail.contains("2 of at most 2"),
        "{}",
        refusal.detail
    );
}

#[test]
fn the_once_step_after_the_block_runs_when_every_target_is_through() {
    let at = NOW - 10 * BAKE;
    let r = progress(
        [
            through(at),
            through(at),
            through(at),
            through(at),
            through(at),
            through(at),
        ],
        2,
    );
    assert_eq!(decide_rollout(&r, |_| {}), Ok(Next::Step(3)));
}

#[test]
fn a_halt_refuses_with_the_alert() {
    let r = progress(
        [through(NOW), fresh(), fresh(), fresh(), fresh(), fresh()],
        2,
    );
    let refusal = decide_rollout(&r, |c| {
        c.state = ChangeState::Failed;
        c.halt = Some("PgbouncerDown on c1");
    })
    .unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Halted);
    assert!(
        refusal.detail.contains("PgbouncerDown on c1"),
        "{}",
        refusal.detail
    );
}

#[test]
fn an_unreachable_monitor_holds_new_targets_but_not_a_started_one() {
    let r = progress([fresh(), fresh(), fresh(), fresh(), fresh(), fresh()], 2);
    assert_eq!(
        decide_rollout(&r, |c| c.monitor_unreachable = Some("connection refused"))
            .unwrap_err()
            .reason,
        RefusalReason::MonitorUnreachable
    );
    let r = progress(
        [
            ([done(), pending()], None),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
        ],
        2,
    );
    assert_eq!(
        decide_rollout(&r, |c| c.monitor_unreachable = Some("connection refused")),
        Ok(Next::Target { step: 2, target: 0 })
    );
}

#[test]
fn max_wave_and_min_bake_are_blast_radius() {
    let r = progress([fresh(), fresh(), fresh(), fresh(), fresh(), fresh()], 2);
    let refusal = decide_rollout(&r, |c| c.max_wave = Some(2)).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::BlastRadius);
    assert!(
        refusal.detail.contains("wave 3 of 3 holds 3"),
        "{}",
        refusal.detail
    );
    assert!(decide_rollout(&r, |c| c.max_wave = Some(3)).is_ok());
    let refusal = decide_rollout(&r, |c| c.min_bake_ms = Some(BAKE + 1000)).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::BlastRadius);
    assert!(refusal.detail.contains("min_bake"), "{}", refusal.detail);
    assert!(decide_rollout(&r, |c| c.min_bake_ms = Some(BAKE)).is_ok());
}

#[test]
fn a_rollout_checks_and_counts_only_the_claimed_target() {
    let r = progress([fresh(), fresh(), fresh(), fresh(), fresh(), fresh()], 2);
    // Another change holds c6, which the canary does not touch.
    let locks = [("c6".to_string(), "other".to_string(), ChangeState::Failed)];
    assert_eq!(
        decide_rollout(&r, |c| {
            c.locks = &locks;
            c.max_targets_per_step = Some(1);
        }),
        Ok(Next::Target { step: 1, target: 0 })
    );
    let locks = [("c1".to_string(), "other".to_string(), ChangeState::Failed)];
    assert_eq!(
        decide_rollout(&r, |c| c.locks = &locks).unwrap_err().reason,
        RefusalReason::Locked
    );
}

#[test]
fn a_step_run_once_in_a_rollout_waits_for_any_target_it_acts_on() {
    let at = NOW - 10 * BAKE;
    let r = progress(
        [
            through(at),
            through(at),
            through(at),
            through(at),
            through(at),
            through(at),
        ],
        2,
    );
    // `finish` names no targets: it acts on the fleet, and c6 is held.
    let locks = [("c6".to_string(), "other".to_string(), ChangeState::Failed)];
    assert_eq!(
        decide_rollout(&r, |c| c.locks = &locks).unwrap_err().reason,
        RefusalReason::Locked
    );
    assert_eq!(decide_rollout(&r, |_| {}), Ok(Next::Step(3)));
    // It locks nothing it does not name.
    assert!(claim_targets(&fleet(), Next::Step(3)).is_empty());
    // But it counts against the blast radius as the fleet it acts on, as
    // it would in a change without a per-target block.
    let refusal = decide_rollout(&r, |c| c.max_targets_per_step = Some(1)).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::BlastRadius);
    assert!(
        refusal.detail.contains("touches 6 targets"),
        "{}",
        refusal.detail
    );
    assert_eq!(
        decide_rollout(&r, |c| c.max_targets_per_step = Some(6)),
        Ok(Next::Step(3))
    );
}

#[test]
fn a_per_target_step_needs_its_go_ahead_once_before_its_first_target() {
    let r = progress([fresh(), fresh(), fresh(), fresh(), fresh(), fresh()], 2);
    assert_eq!(
        decide_rollout(&r, |c| c.confirm_each_step = true)
            .unwrap_err()
            .reason,
        RefusalReason::NeedsConfirmation
    );
    // Attempts of an earlier revision do not stand in for this one's
    // go-ahead: its targets have not started.
    let change = fleet();
    let mut earlier = [done(), pending(), pending(), pending()];
    earlier[1].attempts = 7;
    assert_eq!(
        decide_on(&change, |c| {
            c.state = ChangeState::Running;
            c.steps = &earlier;
            c.rollout = Some(&r);
            c.confirm_each_step = true;
        })
        .unwrap_err()
        .reason,
        RefusalReason::NeedsConfirmation
    );
    let r = progress(
        [
            through(NOW - 10 * BAKE),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
            fresh(),
        ],
        2,
    );
    let change = fleet();
    let mut steps = [done(), done(), done(), pending()];
    steps[1].state = StepState::Running;
    steps[2].state = StepState::Running;
    assert_eq!(
        decide_on(&change, |c| {
            c.state = ChangeState::Running;
            c.steps = &steps;
            c.rollout = Some(&r);
            c.confirm_each_step = true;
        }),
        Ok(Next::Target { step: 1, target: 1 })
    );
}
