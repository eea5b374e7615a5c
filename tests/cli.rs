//! The command line: exit codes, output formats, and the project's own examples.

mod common;

use common::{changegate, project_root, simple_change, TestRepo};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn valid_repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/c.yaml", simple_change("c"));
    repo.commit("valid");
    repo
}

#[test]
fn validate_exits_0_when_everything_is_valid() {
    let repo = valid_repo();
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("checked 1 change sets and 0 policies at HEAD"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn validate_exits_1_and_prints_every_error_when_invalid() {
    let repo = valid_repo();
    repo.write(
        "changes/d.yaml",
        "title: t\nkind: k\ntargets: [x]\nsteps:\n  - id: a\n    run: ./nope.sh\n    verfy: x\n",
    );
    repo.commit("invalid");
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("changes/d.yaml:6:10: `run` runs `./nope.sh`"),
        "{text}"
    );
    assert!(
        text.contains("changes/d.yaml:7:5: unknown key `verfy` in a step: did you mean `verify`?"),
        "{text}"
    );
    assert!(text.contains(": 2 errors"), "{text}");
}

#[test]
fn validate_exits_2_outside_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = changegate(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not inside a git repository"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_exits_2_on_an_unknown_revision() {
    let repo = valid_repo();
    let out = repo.run(&["validate", "--rev", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown revision `no-such-branch`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_exits_2_on_a_usage_error() {
    let repo = valid_repo();
    assert_eq!(
        repo.run(&["validate", "--no-such-flag"]).status.code(),
        Some(2)
    );
}

#[test]
fn validate_reads_any_revision_and_another_directory() {
    let repo = valid_repo();
    let good = repo.repo.head().unwrap().target().unwrap().to_string();
    repo.write("changes/c.yaml", "broken: [");
    repo.commit("break it");
    let elsewhere = tempfile::tempdir().unwrap();
    let repo_arg = repo.path().to_str().unwrap();
    assert_eq!(
        changegate(elsewhere.path(), &["validate", "--repo", repo_arg])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        changegate(
            elsewhere.path(),
            &["validate", "--repo", repo_arg, "--rev", &good]
        )
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        changegate(
            elsewhere.path(),
            &["validate", "--repo", repo_arg, "--rev", "HEAD~1"]
        )
        .status
        .code(),
        Some(0)
    );
}

#[test]
fn validate_json_lists_errors_with_positions() {
    let repo = valid_repo();
    repo.write("changes/d.yaml", "title: t\n");
    repo.commit("incomplete");
    let out = repo.run(&["validate", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["change_sets"], 2);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0]["path"], "changes/d.yaml");
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[0]["column"], 1);
}

#[test]
fn the_projects_own_examples_validate_clean() {
    // Copy changes/ and policies/ from the project into a fresh repository, so the
    // test checks the files as they are in this checkout, committed with git2.
    let repo = TestRepo::new();
    for dir in ["changes", "policies"] {
        common::copy_tree(&project_root().join(dir), repo.path(), &project_root());
    }
    repo.commit("examples");
    let model = repo.model("HEAD");
    assert!(model.is_valid(), "{:#?}", model.diagnostics);
    assert_eq!(model.change_files, 3);
    let sweep = &model.changes["2017-12-14-restart-pgbouncer"];
    assert_eq!(sweep.targets.len(), 40, "changes/fleet/clusters.txt");
    assert_eq!(sweep.per_target_block(), Some(1..2));
    assert!(
        model.changes["2017-12-14-decommission-pg96"].depends_on
            == ["2017-12-12-state-machine-pg10"]
    );
    let upgrade = &model.changes["2017-12-12-state-machine-pg10"];
    let last = upgrade.steps.last().unwrap();
    assert_eq!(last.id, "release");
    assert!(last
        .verify
        .as_deref()
        .unwrap()
        .contains("assert_primary.sh \"$NEW_DB\""));
    assert_eq!(model.policies.len(), 4);
}

#[test]
fn plan_shows_steps_gates_covered_paths_digest_and_policies() {
    let repo = valid_repo();
    repo.write(
        "policies/web.yaml",
        "match:\n  targets: [web]\napprovals:\n  required: 2\n  from: [alice, bob]\nexecution:\n  confirm_each_step: true\n",
    );
    repo.commit("policy");
    let digest = stdout(&repo.run(&["digest", "c"]));
    let out = repo.run(&["plan", "c"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "1. apply  [needs a go-ahead; targets web]",
        "run     ./run.sh",
        "changes/c.yaml",
        "run.sh",
        &format!("digest {}", digest.trim()),
        "web: 2 approvals from alice, bob, not an author; a go-ahead before every step",
        "at least 2 approvals",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn plan_takes_policies_from_the_default_branch_not_the_planned_rev() {
    let repo = valid_repo();
    repo.write("policies/web.yaml", "approvals:\n  required: 2\n");
    let main = repo.commit("strict policy on main");
    repo.branch("loosen", main);
    repo.write("policies/web.yaml", "approvals:\n  required: 1\n");
    repo.commit("a PR that loosens its own policy");
    let out = repo.run(&["plan", "c", "--rev", "loosen", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["approvals_needed"][0]["required"], 2, "{v}");
    assert!(v["policies_from"].as_str().unwrap().starts_with("main"));
}

#[test]
fn plan_falls_back_to_the_builtin_default_when_no_policy_matches() {
    let repo = valid_repo();
    let out = repo.run(&["plan", "c"]);
    assert!(
        stdout(&out).contains("built-in default: 1 approval from anyone who is not an author"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn plan_and_digest_of_an_unknown_change_exit_2() {
    let repo = valid_repo();
    for cmd in ["plan", "digest"] {
        let out = repo.run(&[cmd, "nope"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("no change `nope` at HEAD"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn plan_of_an_invalid_change_prints_its_errors_and_exits_1() {
    let repo = valid_repo();
    repo.write("changes/c.yaml", "title: t\n");
    repo.commit("break");
    let out = repo.run(&["plan", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("changes/c.yaml:1:1: the change set is missing the required key `kind`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn schema_prints_draft_2020_12_json_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["change-set", "policy"] {
        let out = changegate(dir.path(), &["schema", kind]);
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(v["additionalProperties"], false);
    }
}
