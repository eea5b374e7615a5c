//! The default branch's view is kept in the store (issue: restart in
//! O(what moved)): a restart over an unmoved branch reads no change set
//! from git, and a moved tip re-reads exactly the change sets it can have
//! changed. Counted by `changegate_change_sets_read_total`, on SQLite and
//! Postgres, with a real `serve` on a real repository.

mod common;

use std::collections::BTreeMap;

use common::gate_fixture::*;
use common::server::{self, Server};
use common::{db, TestRepo};

const READS: &str = "changegate_change_sets_read_total";

/// 40 change sets: the first 10 run the shared script, the others their own.
fn origin() -> TestRepo {
    let repo = TestRepo::new();
    script(&repo, "scripts/shared.sh", "echo shared");
    for i in 0..40 {
        let run = if i < 10 {
            "./scripts/shared.sh".to_string()
        } else {
            script(&repo, &format!("scripts/own-{i}.sh"), "echo own");
            format!("./scripts/own-{i}.sh")
        };
        repo.write(
            &format!("changes/c{i:02}.yaml"),
            format!("title: c{i}\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: {run}\n    timeout: 5m\n"),
        );
    }
    repo.commit("forty changes");
    repo
}

/// Every listed change's digest, by id.
fn digests(server: &Server) -> BTreeMap<String, String> {
    let (code, body) = server.get("/api/v1/changes", Some("alice-token"));
    assert_eq!(code, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let ids: std::collections::BTreeSet<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|id| a.get(*id) != b.get(*id))
        .collect();
    ids.into_iter().cloned().collect()
}

#[test]
fn a_restart_reads_only_what_moved() {
    for backend in db::BACKENDS {
        let repo = origin();
        let database = db::fresh(backend);
        let mut server = server::start_with(
            repo.path(),
            &database.url,
            &tokens(),
            "refresh_secs = 1",
            "",
        );
        assert_eq!(
            server.metric(READS, None),
            40.0,
            "{backend}: the first start reads all"
        );
        let before = digests(&server);
        assert_eq!(before.len(), 40);

        // Unmoved: nothing read from git, the same changes served.
        server.terminate();
        server.restart();
        assert_eq!(
            server.metric(READS, None),
            0.0,
            "{backend}: an unmoved restart reads none"
        );
        assert_eq!(digests(&server), before);

        // Moved while down: the shared script changed under 10 changes.
        server.terminate();
        script(&repo, "scripts/shared.sh", "echo shared, second edition");
        repo.write("README.md", "unrelated\n");
        repo.commit("edit the shared script");
        server.restart();
        assert_eq!(
            server.metric(READS, None),
            10.0,
            "{backend}: exactly the affected"
        );
        let after = digests(&server);
        let expected: Vec<String> = (0..10).map(|i| format!("c{i:02}")).collect();
        assert_eq!(differing(&before, &after), expected);

        // Moved while running: one added, one removed, one own script edited.
        repo.remove("changes/c39.yaml");
        repo.write(
            "changes/c40.yaml",
            "title: c40\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./scripts/shared.sh\n    timeout: 5m\n",
        );
        script(&repo, "scripts/own-20.sh", "echo own, edited");
        repo.commit("add c40, drop c39, edit c20's script");
        wait_for(
            || digests(&server).contains_key("c40"),
            "the running server sees the move",
        );
        assert_eq!(
            server.metric(READS, None),
            12.0,
            "{backend}: c40 and c20 read; c39 gone"
        );
        let moved = digests(&server);
        assert_eq!(differing(&after, &moved), ["c20", "c39", "c40"]);

        // And what it stored is what a full read finds.
        server.terminate();
        let fresh = db::fresh(backend);
        let full = server::start_with(repo.path(), &fresh.url, &tokens(), "", "");
        assert_eq!(digests(&full), moved, "{backend}: incremental = full");
        assert_eq!(full.metric(READS, None), 40.0);
    }
}

#[test]
fn a_pull_request_event_reads_only_the_change_sets_it_touches() {
    use common::github::*;
    let github = FakeGithub::start();
    let repo = origin();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let before = server.metric(READS, None);
    assert_eq!(before, 40.0);
    let base = repo.main_tip();
    let head = repo.push_to_pr(
        1,
        &[(
            "changes/c15.yaml",
            "title: c15 edited\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./scripts/own-15.sh\n    timeout: 5m\n",
        )],
        "carol",
    );
    let pr = pull(1, head, base, "carol-gh");
    deliver_pr(&server, "pr1", "opened", &pr, "carol-gh");
    wait_for(
        || {
            !github
                .statuses(&head.to_string(), "changegate/c15")
                .is_empty()
        },
        "the status of the touched change",
    );
    // c15 at the head and at the merge base (what it touches), and once
    // more at the head for the plan: none of the other 39.
    assert_eq!(server.metric(READS, None) - before, 3.0);
}

#[test]
fn an_edit_undone_before_the_next_read_still_makes_its_author_an_author() {
    for backend in db::BACKENDS {
        let repo = origin();
        let database = db::fresh(backend);
        let mut server = server::start_with(repo.path(), &database.url, &tokens(), "", "");
        server.terminate();
        // Carol edits c25's script and puts it back: no net change, so
        // nothing is re-read, but she touched what c25 runs.
        script(&repo, "scripts/own-25.sh", "echo carol was here");
        repo.commit_as("edit", "Carol", "carol@example.com");
        script(&repo, "scripts/own-25.sh", "echo own");
        repo.commit_as("undo", "Carol", "carol@example.com");
        server.restart();
        assert_eq!(server.metric(READS, None), 0.0, "{backend}: nothing moved");
        let digest = digests(&server)["c25"].clone();
        client(&server, "carol")
            .approve("c25", &digest, "")
            .unwrap();
        let status = client(&server, "alice").change("c25").unwrap();
        assert_eq!(status["approvals"]["reviews"][0]["approver"], "carol");
        assert_eq!(
            status["approvals"]["reviews"][0]["reason"], "author",
            "{backend}"
        );
        // The stored view keeps her too: a restart over the unmoved
        // branch, which reads nothing from git, still knows she is one.
        server.restart();
        assert_eq!(server.metric(READS, None), 0.0, "{backend}: nothing moved");
        let status = client(&server, "alice").change("c25").unwrap();
        assert_eq!(
            status["approvals"]["reviews"][0]["reason"], "author",
            "{backend}: after a second restart"
        );
    }
}

#[test]
fn a_view_stored_for_another_branch_is_not_reused() {
    let repo = origin();
    let database = db::fresh("sqlite");
    let mut server = server::start_with(repo.path(), &database.url, &tokens(), "", "");
    let on_main = digests(&server);
    server.terminate();
    // `prod` differs from main in one change; then back to main.
    let main = repo.main_tip();
    repo.branch("prod", main);
    script(&repo, "scripts/own-30.sh", "echo prod only");
    let prod = repo.commit("prod");
    repo.repo.set_head("refs/heads/main").unwrap();
    repo.repo
        .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .unwrap();
    assert_ne!(prod, main);
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(
        server.config_path(),
        config.replace("default_branch = \"main\"", "default_branch = \"prod\""),
    )
    .unwrap();
    server.restart();
    assert_eq!(differing(&on_main, &digests(&server)), ["c30"]);
    std::fs::write(server.config_path(), config).unwrap();
    server.restart();
    assert_eq!(digests(&server), on_main, "main's digests, not prod's");
}

#[test]
fn a_file_added_and_removed_in_an_included_folder_makes_an_author_at_a_full_read() {
    // The first start reads the branch in full; the rule for who touched
    // a change must be the one a move uses: a covered folder counts, even
    // for a file no longer there.
    let repo = origin();
    repo.write("lib/base.sh", "echo base\n").write(
        "changes/inc.yaml",
        "title: inc\nkind: config\ntargets: [web]\ninclude: [lib/]\nsteps:\n  - id: only\n    run: ./scripts/shared.sh\n    timeout: 5m\n",
    );
    repo.commit("a change that includes lib/");
    repo.write("lib/tmp.sh", "echo carol\n");
    repo.commit_as("add", "Carol", "carol@example.com");
    std::fs::remove_file(repo.path().join("lib/tmp.sh")).unwrap();
    repo.commit_as("remove", "Carol", "carol@example.com");
    let database = db::fresh("sqlite");
    let server = server::start_with(repo.path(), &database.url, &tokens(), "", "");
    let digest = digests(&server)["inc"].clone();
    client(&server, "carol")
        .approve("inc", &digest, "")
        .unwrap();
    let status = client(&server, "alice").change("inc").unwrap();
    assert_eq!(status["approvals"]["reviews"][0]["approver"], "carol");
    assert_eq!(status["approvals"]["reviews"][0]["reason"], "author");
}
