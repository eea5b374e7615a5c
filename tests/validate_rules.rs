//! Every validation rule of SPEC §1, checked on real git repositories.

mod common;

use common::{assert_error, simple_change, TestRepo};

fn repo_with(change: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write("run.sh", "#!/bin/sh\n")
        .write("changes/c.yaml", change);
    repo.commit("change");
    repo
}

#[test]
fn a_valid_change_set_has_no_errors() {
    let repo = repo_with(&simple_change("ok"));
    assert_eq!(repo.errors(), Vec::<String>::new());
    assert_eq!(repo.model("HEAD").changes["c"].steps[0].run, "./run.sh");
}

#[test]
fn unknown_key_names_the_nearest_valid_key_with_line_and_column() {
    let repo = repo_with(
        "title: t\nkind: k\ntargets: [web]\nsteps:\n  - id: a\n    run: ./run.sh\n    verfy: ./run.sh\n",
    );
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:7:5: unknown key `verfy` in a step: did you mean `verify`?"]
    );
}

#[test]
fn an_unknown_key_far_from_any_valid_one_lists_the_valid_keys() {
    let repo = repo_with(&(simple_change("t") + "zzzzzzzz: 1\n"));
    assert_error(
        &repo.errors(),
        &[
            "changes/c.yaml:7:1:",
            "unknown key `zzzzzzzz`",
            "expected one of: title, description",
        ],
    );
}

#[test]
fn missing_required_keys_are_each_reported() {
    let repo = repo_with("description: nothing else\n");
    let errors = repo.errors();
    for key in ["title", "kind", "targets", "steps"] {
        assert_error(
            &errors,
            &[
                "changes/c.yaml:1:1:",
                &format!("missing the required key `{key}`"),
            ],
        );
    }
    assert_eq!(errors.len(), 4, "{errors:?}");
}

#[test]
fn all_errors_in_a_file_are_reported_not_just_the_first() {
    let repo = repo_with(
        "title: t\nkind: k\ntargets: [web]\ntimeout: 5x\nstepz: []\nsteps:\n  - id: Bad_Id\n    run: ./missing.sh\n    confirm: maybe\n",
    );
    let errors = repo.errors();
    assert_error(&errors, &["c.yaml:4:10:", "invalid duration `5x`"]);
    assert_error(
        &errors,
        &[
            "c.yaml:5:1:",
            "unknown key `stepz`",
            "did you mean `steps`?",
        ],
    );
    assert_error(&errors, &["c.yaml:7:9:", "step id `Bad_Id` must match"]);
    assert_error(
        &errors,
        &["c.yaml:8:10:", "`./missing.sh`", "not in the tree"],
    );
    assert_error(
        &errors,
        &["c.yaml:9:14:", "`confirm` must be true or false"],
    );
    assert_eq!(errors.len(), 5, "{errors:?}");
}

#[test]
fn duplicate_step_ids_are_rejected() {
    let repo = repo_with(
        "title: t\nkind: k\ntargets: [web]\nsteps:\n  - id: a\n    run: ./run.sh\n  - id: a\n    run: ./run.sh\n",
    );
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:7:9: duplicate step id `a` (first used at 5:9)"]
    );
}

#[test]
fn depends_on_must_name_an_existing_change() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/base.yaml", simple_change("base"))
        .write(
            "changes/c.yaml",
            simple_change("c") + "depends_on: [bsae]\n",
        );
    repo.commit("c");
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:7:14: `depends_on` names `bsae`, but there is no changes/bsae.yaml: did you mean `base`?"]
    );
}

#[test]
fn depends_on_cycles_are_rejected() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/a.yaml", simple_change("a") + "depends_on: [b]\n")
        .write("changes/b.yaml", simple_change("b") + "depends_on: [c]\n")
        .write("changes/c.yaml", simple_change("c") + "depends_on: [a]\n");
    repo.commit("cycle");
    let errors = repo.errors();
    assert_eq!(errors.len(), 1, "one report per cycle: {errors:?}");
    assert_error(&errors, &["changes/c.yaml:7:14:", "cycle: a → b → c → a"]);
}

#[test]
fn a_change_may_not_depend_on_itself() {
    let repo = repo_with(&(simple_change("c") + "depends_on: [c]\n"));
    assert_error(
        &repo.errors(),
        &["c.yaml:7:14:", "names `c`, the change itself"],
    );
}

#[test]
fn command_paths_must_be_in_the_tree_at_the_revision() {
    let repo = TestRepo::new();
    repo.write("changes/c.yaml", simple_change("c"));
    repo.commit("no script");
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:6:10: `run` runs `./run.sh`, but that path is not in the tree at this revision"]
    );
    // In the work tree but not committed: still missing, because validation reads git objects.
    repo.write("run.sh", "");
    assert_eq!(repo.errors().len(), 1);
}

#[test]
fn paths_with_dot_dot_are_rejected() {
    let repo = repo_with(
        "title: t\nkind: k\ntargets: [web]\ninclude: [lib/../secrets]\nsteps:\n  - id: a\n    run: ./run.sh && cat ./x/../../etc/passwd\n    check: cat ../outside\n",
    );
    let errors = repo.errors();
    assert_error(
        &errors,
        &[
            "c.yaml:4:11:",
            "`include` names `lib/../secrets`",
            "contains `..`",
        ],
    );
    assert_error(
        &errors,
        &["c.yaml:7:10:", "`./x/../../etc/passwd`", "contains `..`"],
    );
    assert_error(&errors, &["c.yaml:8:12:", "`../outside`", "contains `..`"]);
}

#[test]
fn include_entries_must_exist() {
    let repo = repo_with(&(simple_change("c") + "include: [scripts/lib/]\n"));
    assert_error(
        &repo.errors(),
        &[
            "c.yaml:7:11:",
            "`include` names `scripts/lib/`",
            "not in the tree",
        ],
    );
}

#[test]
fn step_targets_must_be_among_the_change_targets() {
    let repo = repo_with(
        "title: t\nkind: k\ntargets: [web, db]\nsteps:\n  - id: a\n    run: ./run.sh\n    targets: [db, cache]\n",
    );
    assert_eq!(
        repo.errors(),
        ["changes/c.yaml:7:19: step target `cache` is not among the change's targets"]
    );
}

#[test]
fn the_id_is_the_file_stem_and_must_match_the_pattern() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/Upper_Case.yaml", simple_change("x"));
    repo.commit("bad id");
    assert_error(
        &repo.errors(),
        &["changes/Upper_Case.yaml:1:1:", "change id `Upper_Case`"],
    );
}

#[test]
fn the_id_policies_is_reserved_for_the_policy_edits_status() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/policies.yaml", simple_change("x"))
        .write("changes/policies-v2.yaml", simple_change("y"));
    repo.commit("a change named like the policy status");
    let errors = repo.errors();
    assert_error(
        &errors,
        &[
            "changes/policies.yaml:1:1:",
            "change id `policies` is reserved",
        ],
    );
    assert!(
        !errors.iter().any(|e| e.contains("policies-v2")),
        "only the exact id is reserved: {errors:?}"
    );
}

#[test]
fn only_yaml_files_directly_under_changes_are_change_sets() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/scripts/helper.yaml", "not: a change set\n")
        .write("changes/README.md", "# notes\n")
        .write("changes/c.yaml", simple_change("c"));
    repo.commit("mixed");
    let model = repo.model("HEAD");
    assert_eq!(model.change_files, 1);
    assert!(model.is_valid(), "{:?}", model.diagnostics);
}

#[test]
fn a_yml_file_is_flagged_rather_than_silently_ignored() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/c.yml", simple_change("c"));
    repo.commit("yml");
    assert_error(
        &repo.errors(),
        &["changes/c.yml:1:1:", "rename it to changes/c.yaml"],
    );
}

#[test]
fn durations_accept_seconds_minutes_hours_and_days_only() {
    for (timeout, ok) in [
        ("30s", true),
        ("15m", true),
        ("2h", true),
        ("1d", true),
        ("1w", false),
        ("15", false),
        ("0m", false),
    ] {
        let repo = repo_with(&(simple_change("c") + &format!("timeout: {timeout}\n")));
        assert_eq!(
            repo.errors().is_empty(),
            ok,
            "timeout {timeout}: {:?}",
            repo.errors()
        );
    }
}

#[test]
fn wrong_types_say_what_was_expected() {
    let repo =
        repo_with("title: [a list]\nkind: k\ntargets: web\nsteps:\n  - id: a\n    run: ./run.sh\n");
    let errors = repo.errors();
    assert_error(
        &errors,
        &["c.yaml:1:8:", "`title` must be a string, found a list"],
    );
    assert_error(
        &errors,
        &[
            "c.yaml:3:10:",
            "`targets` must be a list of strings, found a scalar",
        ],
    );
}

#[test]
fn empty_targets_and_steps_are_rejected() {
    let repo = repo_with("title: t\nkind: k\ntargets: []\nsteps: []\n");
    let errors = repo.errors();
    assert_error(&errors, &["c.yaml:3:10:", "at least one target"]);
    assert_error(&errors, &["c.yaml:4:8:", "at least one step"]);
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let repo = repo_with("title: t\nkind: [unclosed\ntargets: [web]\n");
    let errors = repo.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("changes/c.yaml:"), "{errors:?}");
    assert!(errors[0].contains("invalid YAML"), "{errors:?}");
    let line: usize = errors[0].split(':').nth(1).unwrap().parse().unwrap();
    assert!(
        (2..=4).contains(&line),
        "line {line} should be near the unclosed list: {errors:?}"
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    let repo = repo_with(&(simple_change("c") + "title: again\n"));
    assert_error(
        &repo.errors(),
        &[
            "c.yaml:7:1:",
            "duplicate key `title` (first written at 1:1)",
        ],
    );
}

mod policies {
    use super::*;

    fn repo_with_policy(name: &str, policy: &str) -> TestRepo {
        let repo = TestRepo::new();
        repo.write("run.sh", "")
            .write("changes/c.yaml", simple_change("c"))
            .write(&format!("policies/{name}.yaml"), policy);
        repo.commit("policy");
        repo
    }

    #[test]
    fn a_full_policy_decodes() {
        let repo = repo_with_policy(
            "pg",
            "description: d\nmatch:\n  kinds: [postgres-upgrade]\n  targets: [\"*-db\"]\napprovals:\n  required: 2\n  from: [alice, bob, \"team:acme/infra-leads\"]\n  author_may_approve: false\nexecution:\n  confirm_each_step: true\n  windows: [\"mon-thu 09:00-17:00 UTC\"]\n  max_targets_per_step: 1\n  retry_requires_approval: true\nalerts: [fleet-monitor]\nactions:\n  reboot: { max: 3, per: 10m }\n",
        );
        let model = repo.model("HEAD");
        assert!(model.is_valid(), "{:?}", model.diagnostics);
        let p = &model.policies[0];
        assert_eq!(
            (
                p.name.as_str(),
                p.approvals.required,
                p.execution.max_targets_per_step
            ),
            ("pg", 2, Some(1))
        );
        assert_eq!(p.actions["reboot"].per.as_secs(), 600);
        assert!(p.governs_changes);
    }

    #[test]
    fn policy_keys_are_checked_with_suggestions() {
        let repo = repo_with_policy(
            "p",
            "approvals:\n  requird: 2\nexecution:\n  windows: [\"someday\"]\n",
        );
        let errors = repo.errors();
        assert_error(
            &errors,
            &[
                "policies/p.yaml:2:3:",
                "unknown key `requird`",
                "did you mean `required`?",
            ],
        );
        assert_error(
            &errors,
            &["policies/p.yaml:4:13:", "invalid window `someday`"],
        );
    }

    #[test]
    fn a_policy_that_can_never_be_satisfied_is_rejected() {
        let repo = repo_with_policy("p", "approvals:\n  required: 3\n  from: [alice, bob]\n");
        assert_error(
            &repo.errors(),
            &[
                "policies/p.yaml:3:9:",
                "required` is 3 but `from` names only 2 people",
            ],
        );
    }

    #[test]
    fn an_actions_only_policy_governs_no_change() {
        let repo = repo_with_policy("budgets", "actions:\n  reboot: { max: 3, per: 10m }\n");
        let model = repo.model("HEAD");
        assert!(model.is_valid(), "{:?}", model.diagnostics);
        assert!(!model.policies[0].governs_changes);
    }

    #[test]
    fn two_files_budgeting_the_same_action_are_an_error() {
        let repo = repo_with_policy("a", "actions:\n  reboot: { max: 3, per: 10m }\n");
        repo.write(
            "policies/b.yaml",
            "actions:\n  failover: { max: 1, per: 1h }\n  reboot: { max: 5, per: 1h }\n",
        );
        repo.commit("second budget");
        assert_eq!(
            repo.errors(),
            ["policies/b.yaml:3:3: action `reboot` already has a budget in policies/a.yaml:2:3; budget each action in one file"]
        );
    }

    #[test]
    fn bad_globs_and_approvers_are_rejected() {
        let repo = repo_with_policy("p", "match:\n  targets: [\"[unclosed\"]\napprovals:\n  from: [\"team:no-slash\", \"has space\"]\n");
        let errors = repo.errors();
        assert_error(&errors, &["p.yaml:2:13:", "not a valid glob"]);
        assert_error(
            &errors,
            &["p.yaml:4:10:", "`team:no-slash`", "team:org/slug"],
        );
        assert_error(&errors, &["p.yaml:4:27:", "`has space`"]);
    }
}
