//! Fleet rollouts (SPEC §10): every validation rule of `targets_from`,
//! `rollout` and per-target steps, on real git repositories, each with its
//! position; and what `plan` and the digest make of a valid rollout.

mod common;

use common::{assert_error, TestRepo};

/// A repository with `fleet.txt` (if given) and `changes/c.yaml`.
fn repo_with(fleet: Option<&str>, change: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write("run.sh", "#!/bin/sh\n");
    if let Some(f) = fleet {
        repo.write("fleet.txt", f);
    }
    repo.write("changes/c.yaml", change);
    repo.commit("change");
    repo
}

/// A change over `fleet.txt` with `rollout` (YAML lines, indented by two)
/// and one per-target step between two ordinary ones.
fn rollout_change(rollout: &str) -> String {
    format!(
        "title: t\nkind: k\ntargets: [lb]\ntargets_from: fleet.txt\nrollout:\n{rollout}steps:\n  - id: drain\n    run: ./run.sh\n  - id: restart\n    per_target: true\n    run: ./run.sh \"$CHANGEGATE_TARGET\"\n  - id: undrain\n    run: ./run.sh\n"
    )
}

const FLEET: &str = "# forty clusters, one per line\nc01\nc02\nc03\n\nc04 # the last\n";

#[test]
fn a_valid_rollout_merges_the_targets_in_order() {
    let repo = repo_with(
        Some(FLEET),
        &rollout_change("  canary: 1\n  waves: [\"50%\", \"100%\"]\n  bake: 10m\n  parallel: 2\n"),
    );
    assert_eq!(repo.errors(), Vec::<String>::new());
    let model = repo.model("HEAD");
    let c = &model.changes["c"];
    assert_eq!(c.targets, ["lb", "c01", "c02", "c03", "c04"]);
    let r = c.rollout.as_ref().unwrap();
    let waves: Vec<Vec<&str>> = r
        .waves(&c.targets)
        .iter()
        .map(|w| w.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(waves, [vec!["lb"], vec!["c01", "c02"], vec!["c03", "c04"]]);
    assert!(c.steps[1].per_target);
}

#[test]
fn a_missing_targets_file_is_an_error() {
    let repo = repo_with(None, &rollout_change("  canary: 1\n"));
    assert_error(
        &repo.errors(),
        &[
            "changes/c.yaml:4:15:",
            "`targets_from` names `fleet.txt`",
            "not in the tree",
        ],
    );
}

#[test]
fn an_empty_targets_file_is_an_error() {
    let repo = repo_with(Some("# nothing yet\n\n"), &rollout_change("  canary: 1\n"));
    assert_error(&repo.errors(), &["changes/c.yaml:4:15:", "lists no target"]);
}

#[test]
fn a_target_in_both_lists_is_an_error_at_its_line_in_the_file() {
    let repo = repo_with(Some("c01\nlb\n"), &rollout_change("  canary: 1\n"));
    assert_eq!(
        repo.errors(),
        ["fleet.txt:2:1: target `lb` is listed twice (first at changes/c.yaml:3:11)"]
    );
}

#[test]
fn a_target_with_a_space_or_a_control_character_is_an_error_at_its_line() {
    let repo = repo_with(
        Some("c01\nc 02\nc03\u{1b}[31m\n"),
        &rollout_change("  canary: 1\n"),
    );
    let errors = repo.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_error(&errors[..1], &["fleet.txt:2:1:", "\"c 02\"", "one word"]);
    assert_error(
        &errors[1..],
        &["fleet.txt:3:1:", "\"c03\\u{1b}[31m\"", "control character"],
    );
}

#[test]
fn per_target_steps_must_be_one_block() {
    let repo = repo_with(
        Some(FLEET),
        "title: t\nkind: k\ntargets_from: fleet.txt\nrollout:\n  canary: 1\nsteps:\n  - id: a\n    per_target: true\n    run: ./run.sh\n  - id: b\n    run: ./run.sh\n  - id: c\n    per_target: true\n    run: ./run.sh\n",
    );
    assert_error(
        &repo.errors(),
        &[
            "changes/c.yaml:12:5:",
            "one contiguous block",
            "`c` is per-target, but `b` before it is not",
        ],
    );
}

#[test]
fn waves_must_increase() {
    let repo = repo_with(
        Some(FLEET),
        &rollout_change("  waves: [\"50%\", \"25%\", \"100%\"]\n"),
    );
    assert_error(
        &repo.errors(),
        &["changes/c.yaml:6:18:", "must increase: 25% comes after 50%"],
    );
}

#[test]
fn waves_must_end_at_100_percent() {
    let repo = repo_with(
        Some(FLEET),
        &rollout_change("  waves: [\"25%\", \"90%\"]\n"),
    );
    assert_error(
        &repo.errors(),
        &["changes/c.yaml:6:18:", "must end at \"100%\", not 90%"],
    );
}

#[test]
fn a_malformed_percentage_is_an_error() {
    for (bad, col) in [("\"2.5%\"", 11), ("\"150%\"", 11), ("ten", 11), ("0", 11)] {
        let repo = repo_with(Some(FLEET), &rollout_change(&format!("  canary: {bad}\n")));
        assert_error(
            &repo.errors(),
            &[&format!("changes/c.yaml:6:{col}:"), "`rollout.canary`"],
        );
    }
}

#[test]
fn a_canary_larger_than_the_fleet_is_an_error() {
    let repo = repo_with(Some(FLEET), &rollout_change("  canary: 6\n"));
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:6:11: `rollout.canary` is 6 targets, but the change has 5"]
    );
}

#[test]
fn parallel_zero_is_an_error() {
    let repo = repo_with(Some(FLEET), &rollout_change("  parallel: 0\n"));
    assert_error(
        &repo.errors(),
        &["changes/c.yaml:6:13:", "rollout.parallel"],
    );
}

#[test]
fn a_rollout_without_a_per_target_step_is_an_error() {
    let repo = repo_with(
        Some(FLEET),
        "title: t\nkind: k\ntargets_from: fleet.txt\nrollout:\n  canary: 1\nsteps:\n  - id: a\n    run: ./run.sh\n",
    );
    assert_error(
        &repo.errors(),
        &[
            "changes/c.yaml:5:3:",
            "`rollout` without a `per_target: true` step",
        ],
    );
}

#[test]
fn a_per_target_step_may_not_name_targets() {
    let repo = repo_with(
        Some(FLEET),
        "title: t\nkind: k\ntargets_from: fleet.txt\nsteps:\n  - id: a\n    per_target: true\n    targets: [c01]\n    run: ./run.sh\n",
    );
    assert_error(
        &repo.errors(),
        &["changes/c.yaml:7:14:", "cannot also name `targets`"],
    );
}

#[test]
fn the_digest_covers_the_targets_file_and_plan_prints_the_waves() {
    let repo = repo_with(
        Some(FLEET),
        &rollout_change("  canary: 1\n  waves: [\"50%\", \"100%\"]\n  bake: 10m\n  parallel: 2\n"),
    );
    let digest = |repo: &TestRepo| String::from_utf8(repo.run(&["digest", "c"]).stdout).unwrap();
    let before = digest(&repo);
    repo.write("fleet.txt", format!("{FLEET}c05\n"));
    repo.commit("one more cluster");
    assert_ne!(digest(&repo), before, "adding a target is a new digest");

    let plan = String::from_utf8(repo.run(&["plan", "c"]).stdout).unwrap();
    for line in [
        "rollout over 6 targets (`targets` and fleet.txt): canary, then 50%, 100%; bake 10m; 2 at once",
        "  wave 1: lb",
        "  wave 2: c01, c02",
        "  wave 3: c03, c04, c05",
        "restart  [per target",
    ] {
        assert!(plan.contains(line), "missing {line:?} in:\n{plan}");
    }
}
