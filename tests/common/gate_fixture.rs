//! The gate's test fixtures: identities, a one-step change, and helpers
//! that drive a real server through the API client and `changegate exec`.

use std::path::Path;
use std::process::Output;

use changegate::client::Client;

use super::server::{self, Server, TestToken};
use super::{db, TestRepo};

/// alice, bob, dave (operators), carol (an operator whose email makes her
/// an author of what she commits), and two executors.
pub fn tokens() -> Vec<TestToken> {
    let mut t: Vec<TestToken> = ["alice", "bob", "dave"]
        .iter()
        .map(|n| (n.to_string(), "operator", format!("{n}-token")))
        .collect();
    // Carol's commits are hers: her email makes her an author of what she changes.
    t.push((
        "carol".into(),
        "operator;emails = [\"carol@example.com\"]\ngithub = \"carol-gh\"",
        "carol-token".into(),
    ));
    t.push(("ci".into(), "executor", "ci-token".into()));
    t.push(("ci2".into(), "executor", "ci2-token".into()));
    t
}

pub fn client(server: &Server, who: &str) -> Client {
    Client::new(&server.url, &format!("{who}-token"))
}

pub fn start(repo: &TestRepo, backend: &str, server_keys: &str) -> (Server, db::TestDatabase) {
    let database = db::fresh(backend);
    let server = server::start_with(repo.path(), &database.url, &tokens(), server_keys, "");
    (server, database)
}

pub fn exec(repo: &Path, server: &Server, args: &[&str], fleet: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_changegate"))
        .arg("exec")
        .args(args)
        .current_dir(repo)
        .env("CHANGEGATE_URL", &server.url)
        .env("CHANGEGATE_TOKEN", "ci-token")
        .env("FLEET_DIR", fleet)
        .env("RUNS", fleet.join("runs"))
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn digest(repo: &TestRepo, id: &str) -> String {
    String::from_utf8(repo.run(&["digest", id]).stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// A one-step change whose step appends to `runs.log` and runs `./step.sh`.
pub fn simple_repo(step: &str, extra: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write(
        "step.sh",
        format!("#!/bin/sh\necho ran >> \"$RUNS\"\n{step}\n"),
    );
    std::fs::set_permissions(
        repo.path().join("step.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    repo.write(
        "changes/c.yaml",
        format!("title: t\nkind: config\ntargets: [web]\n{extra}steps:\n  - id: only\n    run: ./step.sh\n"),
    );
    repo.write(
        "policies/p.yaml",
        "approvals:\n  required: 1\n  from: [alice, bob, dave]\n",
    );
    repo.commit("one step");
    repo
}

pub fn approve(server: &Server, who: &str, repo: &TestRepo, id: &str) {
    client(server, who)
        .approve(id, &digest(repo, id), "")
        .unwrap();
}

/// Reports `attempt` as the executor `ci`: succeeded, or failed with exit 1.
pub fn report(server: &Server, attempt: &str, succeeded: bool) {
    use changegate::wire::{Outcome, Report};
    let (outcome, exit_code) = match succeeded {
        true => (Outcome::Succeeded, 0),
        false => (Outcome::Failed, 1),
    };
    let report = Report {
        outcome,
        exit_code: Some(exit_code),
        duration_ms: 5,
        output_tail: String::new(),
    };
    client(server, "ci").report(attempt, &report).unwrap();
}

pub fn claim_reason(server: &Server, repo: &TestRepo, id: &str) -> String {
    match client(server, "ci").claim(id, &digest(repo, id), None) {
        Ok(g) => panic!("claim unexpectedly granted: {g:?}"),
        Err(e) => e.reason().unwrap_or("?").to_string(),
    }
}

pub fn wait_for(cond: impl FnMut() -> bool, what: &str) {
    super::receivers::eventually(20, what, cond);
}

/// The last status posted on `sha` in `context`: (state, description).
pub fn last_status(
    github: &super::github::FakeGithub,
    sha: git2::Oid,
    context: &str,
) -> Option<(String, String)> {
    github.statuses(&sha.to_string(), context).last().cloned()
}

/// Waits until the last status on `sha` in `context` is `state` with a
/// description containing `text`.
pub fn wait_status_containing(
    github: &super::github::FakeGithub,
    sha: git2::Oid,
    context: &str,
    state: &str,
    text: &str,
) {
    let what = format!("{context} {state} \"{text}\" on {sha}");
    wait_status_where(github, sha, context, &what, |s, d| {
        s == state && d.contains(text)
    });
}

/// Waits until the last status on `sha` in `context`, (state,
/// description), satisfies `ok`; the timeout names the last one seen.
pub fn wait_status_where(
    github: &super::github::FakeGithub,
    sha: git2::Oid,
    context: &str,
    what: &str,
    ok: impl Fn(&str, &str) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let last = last_status(github, sha, context);
        if last.as_ref().is_some_and(|(s, d)| ok(s, d)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 20s waiting for {what}; the last status: {last:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The project's own `changes/` and `policies/`, committed by Carol (the
/// author) on `main`: the 2017 upgrade and its decommission.
pub fn incident_repo() -> TestRepo {
    let repo = TestRepo::new();
    for dir in ["changes", "policies"] {
        super::copy_tree(
            &super::project_root().join(dir),
            repo.path(),
            &super::project_root(),
        );
    }
    repo.commit_as(
        "the upgrade and the decommission",
        "Carol",
        "carol@example.com",
    );
    repo
}

/// A simulated fleet for the example scripts, whose `release` fails as in 2017.
pub fn fleet_with_failing_release(repo: &TestRepo) -> tempfile::TempDir {
    let fleet = tempfile::tempdir().unwrap();
    let init = std::process::Command::new("./changes/scripts/fleet_init.sh")
        .current_dir(repo.path())
        .env("FLEET_DIR", fleet.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    std::fs::write(
        fleet.path().join("faults/release"),
        "pg_ctl promote timed out",
    )
    .unwrap();
    fleet
}

/// `changegate exec ID` as executor `ci` in `repo`, with `RUNS` for the
/// one-step fixture's run log; the caller picks `.output()` or `.spawn()`.
pub fn exec_command(
    repo: &TestRepo,
    server: &Server,
    id: &str,
    runs: &Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_changegate"));
    cmd.args(["exec", id])
        .current_dir(repo.path())
        .env("CHANGEGATE_URL", &server.url)
        .env("CHANGEGATE_TOKEN", "ci-token")
        .env("RUNS", runs);
    cmd
}

/// (approver, counts, reason) of each review of change `id`.
pub fn reviews(server: &Server, id: &str) -> Vec<(String, bool, String)> {
    reviews_if_known(server, id).unwrap_or_else(|| panic!("no change `{id}`"))
}

/// [`reviews`], or `None` while the server does not know change `id` (a
/// pull request being retargeted away and back, for one).
pub fn reviews_if_known(server: &Server, id: &str) -> Option<Vec<(String, bool, String)>> {
    let change = client(server, "alice").change(id).ok()?;
    let reviews = change["approvals"]["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["approver"].as_str().unwrap().to_string(),
                r["counts"].as_bool().unwrap(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    Some(reviews)
}

/// Writes an executable shell script at `path` in `repo`.
pub fn script(repo: &TestRepo, path: &str, body: &str) {
    repo.write(path, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(
        repo.path().join(path),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}
