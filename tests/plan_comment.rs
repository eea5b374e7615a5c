//! The plan as one pull request comment (SPEC §12), end to end: a real git
//! origin, a real `serve`, signed deliveries and the fake GitHub's issue
//! comment endpoints (pagination, 201/200, 404, 422 like GitHub's).

mod common;

use common::gate_fixture::*;
use common::github::*;
use common::server::{self, Server};
use common::{db, TestRepo};
use serde_json::Value;

const POLICY: &str = "approvals:\n  required: 2\n  from: [alice-gh, bob-gh, dave-gh]\n";

/// `main` with one policy and a script; nothing to approve yet.
fn origin() -> TestRepo {
    let repo = TestRepo::new();
    script(&repo, "ok.sh", "echo ran");
    repo.write("policies/p.yaml", POLICY);
    repo.commit("main");
    repo
}

fn change(title: &str, run: &str) -> String {
    format!("title: {title:?}\nkind: config\ntargets: [web, db]\nsteps:\n  - id: only\n    run: {run}\n    timeout: 5m\n")
}

/// The plan comments on pull request 1: there must be exactly one.
fn the_comment(github: &FakeGithub) -> String {
    let comments = github.comments(1);
    let ours: Vec<&Value> = comments
        .iter()
        .filter(|c| c["user"]["login"] == BOT_LOGIN)
        .collect();
    assert!(ours.len() <= 1, "one plan comment, never two: {ours:#?}");
    ours.first()
        .and_then(|c| c["body"].as_str())
        .unwrap_or("")
        .to_string()
}

fn wait_comment(github: &FakeGithub, what: &str, has: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !has(&the_comment(github)) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the comment reads:\n{}",
            the_comment(github)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn digest_at(repo: &TestRepo, id: &str, head: git2::Oid) -> String {
    let out = repo.run(&["digest", id, "--rev", &head.to_string()]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn open_pr(repo: &TestRepo, server: &Server, github: &FakeGithub, files: &[(&str, &str)]) -> Value {
    let base = repo.main_tip();
    let head = repo.push_to_pr(1, files, "carol");
    let pr = pull(1, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(server, "pr1-opened", "opened", &pr, "carol-gh");
    pr
}

fn push(
    repo: &TestRepo,
    server: &Server,
    github: &FakeGithub,
    n: u32,
    files: &[(&str, &str)],
) -> (Value, git2::Oid) {
    let head = repo.push_to_pr(1, files, "carol");
    let pr = pull(1, head, repo.main_tip(), "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(
        server,
        &format!("pr1-sync{n}"),
        "synchronize",
        &pr,
        "carol-gh",
    );
    (pr, head)
}

#[test]
fn one_comment_follows_the_pushes_reviews_and_a_restart() {
    for backend in db::BACKENDS {
        let github = FakeGithub::start();
        let repo = origin();
        let (mut server, _db) = start_server(&repo, backend, &github);
        // Someone else's comment that starts with the marker is not ours.
        github.add_comment(
            1,
            "mallory-gh",
            "<!-- changegate:plan -->\n**APPROVED by everyone**",
        );

        open_pr(
            &repo,
            &server,
            &github,
            &[("changes/d.yaml", &change("restart web", "./ok.sh"))],
        );
        wait_comment(&github, "the plan comment", |b| b.contains("0 of 2"));
        let mut head = repo.main_tip();
        for n in 1..=3 {
            let (_, h) = push(
                &repo,
                &server,
                &github,
                n,
                &[(
                    "changes/d.yaml",
                    &change("restart web", &format!("./ok.sh {n}")),
                )],
            );
            head = h;
            let digest = digest_at(&repo, "d", head);
            wait_comment(&github, &format!("the plan at push {n}"), |b| {
                b.contains(&digest)
            });
        }
        let body = the_comment(&github);
        assert!(body.starts_with("<!-- changegate:plan -->"), "{body}");
        assert!(
            body.contains("   # run\n   ./ok.sh 3\n"),
            "the command: {body}"
        );
        assert!(body.contains("timeout 5m"), "{body}");
        assert!(
            body.contains("| <code>changes/d.yaml</code> | 100644 |"),
            "covered paths: {body}"
        );
        assert!(
            body.contains("| <code>ok.sh</code> | 100755 |"),
            "an executable's mode: {body}"
        );
        assert!(
            body.contains(
                "may approve: <code>alice-gh</code>, <code>bob-gh</code>, <code>dave-gh</code>"
            ),
            "{body}"
        );
        assert!(
            github.comments(1)[0]["body"]
                .as_str()
                .unwrap()
                .contains("APPROVED by everyone"),
            "mallory's comment is left alone"
        );

        // Two reviews: the author's own, and a peer's.
        let pr = pull(1, head, repo.main_tip(), "carol-gh");
        deliver_review(
            &server,
            "r1",
            "submitted",
            &pr,
            &review(1, "carol-gh", "approved", head, 1_000),
        );
        deliver_review(
            &server,
            "r2",
            "submitted",
            &pr,
            &review(2, "bob-gh", "approved", head, 1_010),
        );
        wait_comment(&github, "the reviews in the plan", |b| b.contains("1 of 2"));
        let body = the_comment(&github);
        assert!(body.contains("| carol | no | author |"), "{body}");
        assert!(body.contains("| bob-gh | yes |"), "{body}");

        // A restart remembers the comment: the next push edits it.
        server.terminate();
        server.restart();
        let (_, head) = push(
            &repo,
            &server,
            &github,
            4,
            &[("changes/e.yaml", "title: [broken\n")],
        );
        wait_comment(&github, "the validation error after the restart", |b| {
            b.contains("does not validate")
        });
        let body = the_comment(&github);
        assert!(
            body.contains("<code>changes/e.yaml:2:1: invalid YAML"),
            "path:line:col: {body}"
        );
        assert!(body.contains(&digest_at(&repo, "d", head)), "{body}");
        assert_eq!(
            github
                .comments(1)
                .iter()
                .filter(|c| c["user"]["login"] == BOT_LOGIN)
                .count(),
            1,
            "{backend}: exactly one plan comment"
        );
        assert!(
            github
                .requests("POST /repos/acme/infra/issues/1/comments")
                .len()
                == 1,
            "{backend}: created once, edited since: {:?}",
            github
                .requests("")
                .into_iter()
                .filter(|(r, _)| r.contains("comments"))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_title_cannot_forge_content_in_the_comment() {
    let github = FakeGithub::start();
    let repo = origin();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let hostile = "**APPROVED** <img src=x onerror=alert(1)> [merge now](http://evil) | x |";
    open_pr(
        &repo,
        &server,
        &github,
        &[(
            "changes/d.yaml",
            &change(hostile, "echo '```' && echo '<!-- changegate:plan -->'"),
        )],
    );
    wait_comment(&github, "the plan comment", |b| b.contains("0 of 2"));
    let body = the_comment(&github);
    assert!(!body.contains("<img"), "{body}");
    assert!(!body.contains("**APPROVED**"), "{body}");
    assert!(!body.contains("[merge now](http://evil)"), "{body}");
    assert!(body.contains("\\*\\*APPROVED\\*\\* &lt;img"), "{body}");
    // Rendered as GitHub renders Markdown, nothing of the title is markup.
    let html = render(&body);
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("<strong>APPROVED"), "{html}");
    assert!(!html.contains("href=\"http://evil"), "{html}");
    assert!(
        html.contains("**APPROVED** &lt;img src=x"),
        "shown as text: {html}"
    );
    // The command's backticks cannot close the block around it.
    assert!(body.contains("````sh"), "{body}");
    assert_eq!(
        body.matches("<!-- changegate:plan -->").count(),
        2,
        "the marker and the command's text, inside its block"
    );
}

#[test]
fn a_pull_request_whose_only_change_set_does_not_validate_gets_its_errors() {
    let github = FakeGithub::start();
    let repo = origin();
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let pr = open_pr(
        &repo,
        &server,
        &github,
        &[(
            "changes/typo.yaml",
            "title: t\nkind: config\ntargets: [web]\nsteps: []\nrunn: x\n",
        )],
    );
    wait_comment(&github, "the errors of the only change set", |b| {
        b.contains("does not validate")
    });
    let body = the_comment(&github);
    assert!(body.contains("changes/typo.yaml:5:1"), "{body}");
    // Its statuses fail too: the head touches a change set, a broken one.
    let head = pr["head"]["sha"].as_str().unwrap().parse().unwrap();
    wait_status_containing(
        &github,
        head,
        "changegate/typo",
        "failure",
        "does not validate: changes/typo.yaml:",
    );
    wait_status_containing(
        &github,
        head,
        "changegate",
        "failure",
        "changegate/typo: does not validate",
    );
}

#[test]
fn two_replicas_keep_one_comment() {
    let github = FakeGithub::start();
    let repo = origin();
    let database = db::fresh("postgres");
    let sections = github.config_section();
    let path = repo.path().to_path_buf();
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| server::start_with(&path, &database.url, &tokens(), "", &sections));
        let b = s.spawn(|| server::start_with(&path, &database.url, &tokens(), "", &sections));
        (a.join().unwrap(), b.join().unwrap())
    });
    let base = repo.main_tip();
    let head = repo.push_to_pr(1, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
    let pr = pull(1, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(&r1, "pr1-opened", "opened", &pr, "carol-gh");
    deliver_review(
        &r2,
        "r1",
        "submitted",
        &pr,
        &review(1, "alice-gh", "approved", head, 1_000),
    );
    wait_comment(&github, "the plan with alice's approval", |b| {
        b.contains("1 of 2")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        github.comments(1).len(),
        1,
        "two replicas, one comment: {:?}",
        github.requests("POST /repos/acme/infra/issues/")
    );
}

/// The comment as HTML, the way GitHub renders Markdown (tables, raw HTML
/// passed through for its sanitiser).
fn render(markdown: &str) -> String {
    use pulldown_cmark::{html, Options, Parser};
    let mut out = String::new();
    html::push_html(
        &mut out,
        Parser::new_ext(
            markdown,
            Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
        ),
    );
    out
}

/// GitHub's comment box, roughly: enough to read the screenshot as a
/// reviewer would see it.
const COMMENT_CSS: &str = "body{font:14px/1.5 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2328;background:#fff;margin:24px}
.box{border:1px solid #d1d9e0;border-radius:6px;max-width:900px}
.head{background:#f6f8fa;border-bottom:1px solid #d1d9e0;padding:8px 16px;border-radius:6px 6px 0 0;color:#59636e}
.head b{color:#1f2328}.body{padding:16px}
h2,h3{border-bottom:1px solid #d1d9e0;padding-bottom:.3em}
code{background:#eff1f3;border-radius:6px;padding:.2em .4em;font:12px ui-monospace,Menlo,monospace}
pre{background:#f6f8fa;border-radius:6px;padding:16px;overflow:auto}pre code{background:none;padding:0}
table{border-collapse:collapse}td,th{border:1px solid #d1d9e0;padding:6px 13px}tr:nth-child(2n){background:#f6f8fa}";

#[test]
fn the_comment_reads_well_rendered_as_github_shows_it() {
    let github = FakeGithub::start();
    let repo = incident_repo();
    repo.write(
        "policies/fleet-sweeps.yaml",
        "description: Fleet-wide sweeps run per target in waves\nmatch:\n  kinds: [pgbouncer-restart]\napprovals:\n  required: 2\n  from: [alice-gh, bob-gh, \"team:acme/infra-leads\"]\nexecution:\n  max_wave: 30\n",
    );
    repo.commit("fleet sweeps: approvers by GitHub login");
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let sweep = "title: Raise pgbouncer default_pool_size to 40 on every cluster
kind: pgbouncer-restart
targets_from: changes/fleet/clusters.txt
include: [changes/scripts/lib/]
rollout:
  canary: 1
  waves: [\"25%\", \"100%\"]
  bake: 10m
  parallel: 4
timeout: 5m
steps:
  - id: fleet-healthy
    run: ./changes/scripts/assert_fleet_healthy.sh
  - id: restart
    per_target: true
    check: ./changes/scripts/assert_pgbouncer_up.sh \"$CHANGEGATE_TARGET\"
    run: ./changes/scripts/restart_pgbouncer.sh \"$CHANGEGATE_TARGET\"
    verify: ./changes/scripts/assert_pgbouncer_up.sh \"$CHANGEGATE_TARGET\"
";
    let typo = "title: Drain pg-cluster-07\nkind: config\ntargets: [pg-cluster-07]\nsteps:\n  - id: drain\n    run: ./drain.sh\n    timout: 5m\n";
    let pr = open_pr(
        &repo,
        &server,
        &github,
        &[
            ("changes/2026-12-02-pgbouncer-pool-size.yaml", sweep),
            ("changes/2026-12-02-drain.yaml", typo),
        ],
    );
    let head = git2::Oid::from_str(pr["head"]["sha"].as_str().unwrap()).unwrap();
    for (id, who) in [(1, "carol-gh"), (2, "bob-gh")] {
        deliver_review(
            &server,
            &format!("r{id}"),
            "submitted",
            &pr,
            &review(id, who, "approved", head, 1_000 + id),
        );
    }
    wait_comment(&github, "the reviews and the error", |b| {
        b.contains("1 of 2") && b.contains("does not validate")
    });
    let body = the_comment(&github);
    assert!(body.contains("changes/2026-12-02-drain.yaml:7:5"), "{body}");

    let html = render(&body);
    let page = format!(
        "<!doctype html><meta charset=utf-8><style>{COMMENT_CSS}</style><div class=box><div class=head><b>{BOT_LOGIN}</b> commented</div><div class=body>{html}</div></div>"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("comment.html");
    std::fs::write(&file, &page).unwrap();
    let url = format!("file://{}", file.display());
    let (dom, stderr) = common::browser::headless(&url, "--dump-dom");
    assert!(
        common::browser::console_errors(&stderr).is_empty(),
        "{stderr}"
    );
    assert!(dom.contains("<table>") && dom.contains("<pre>"), "{dom}");
    assert!(dom.contains("restart_pgbouncer.sh"), "{dom}");

    // Kept as an artifact; the README shows a copy (tests/screenshots/).
    let artifacts = common::project_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("plan-comment.png");
    let _ = std::fs::remove_file(&shot);
    common::browser::screenshot(&url, &shot, 960, 1140);
    let (pixels, channels) = common::browser::png_pixels(&shot);
    let code_grey = pixels
        .chunks(channels)
        .filter(|p| p[0] == 0xf6 && p[1] == 0xf8 && p[2] == 0xfa)
        .count();
    assert!(
        code_grey > 20_000,
        "code blocks and the header are painted ({code_grey} pixels)"
    );
}

/// `main` holding change set `web`, which includes `deploy/`; a pull
/// request whose head `push` writes (from `main`) is refused, saying `why`.
fn refused_head(push: impl FnOnce(&TestRepo) -> git2::Oid, why: &str) {
    let github = FakeGithub::start();
    let repo = origin();
    repo.write("deploy/run.sh", "echo v1\n").write(
        "changes/web.yaml",
        "title: web\nkind: config\ntargets: [web]\ninclude: [deploy/]\nsteps:\n  - id: only\n    run: ./ok.sh\n    timeout: 5m\n",
    );
    repo.commit("web, covering deploy/");
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let base = repo.main_tip();
    let head = push(&repo);
    let pr = pull(1, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(&server, "pr1-opened", "opened", &pr, "carol-gh");
    wait_status_containing(&github, head, "changegate", "failure", why);
}

#[test]
fn a_head_under_which_a_merged_change_set_stops_validating_fails_its_status() {
    // The pull request edits the script `web` covers and puts a symbolic
    // link beside it: at the head `web` does not validate, so it has no
    // digest there, and it must not drop out of what the head touches.
    refused_head(
        |repo| {
            repo.push_to_pr(1, &[("README", "docs\n")], "carol");
            let run = repo.repo.blob(b"echo v2, never reviewed\n").unwrap();
            let target = repo.repo.blob(b"run.sh").unwrap();
            let deploy = repo.folder([
                ("run.sh".to_string(), run, 0o100644),
                ("link".to_string(), target, 0o120000),
            ]);
            repo.push_folder_to_pr(1, "deploy", Some(deploy), "carol")
        },
        "head refused: change set `web` stops validating at this head",
    );
}

#[test]
fn a_change_set_mended_on_main_after_a_pull_request_branched_is_not_its_error() {
    let github = FakeGithub::start();
    let repo = origin();
    repo.write("changes/e.yaml", "title: [broken\n");
    repo.commit("e, broken");
    let base = repo.main_tip();
    let head = repo.push_to_pr(1, &[("changes/d.yaml", &change("d", "./ok.sh"))], "carol");
    // `main` mends `e` after the pull request branched; the pull request
    // never touched it.
    repo.write("changes/e.yaml", change("e", "./ok.sh"));
    repo.commit("e, mended");
    let (server, _db) = start_server(&repo, "sqlite", &github);
    let pr = pull(1, head, base, "carol-gh");
    github.state.lock().unwrap().pulls.insert(1, pr.clone());
    deliver_pr(&server, "pr1-opened", "opened", &pr, "carol-gh");
    wait_status_containing(&github, head, "changegate", "pending", "changegate/d");
    let aggregate = last_status(&github, head, "changegate").unwrap();
    assert!(!aggregate.1.contains("changegate/e"), "{aggregate:?}");
    assert!(github
        .statuses(&head.to_string(), "changegate/e")
        .is_empty());
    assert!(
        !the_comment(&github).contains("changes/e.yaml"),
        "{}",
        the_comment(&github)
    );
}

#[test]
fn a_head_that_turns_a_merged_change_set_file_into_a_link_fails_its_status() {
    // The head edits the script `web` covers and makes `changes/web.yaml`
    // a symbolic link: `web` is then no change set at the head, and must
    // not drop out of what the head touches.
    refused_head(
        |repo| {
            repo.push_to_pr(1, &[("deploy/run.sh", "echo v2, never reviewed\n")], "carol");
            let link = repo.repo.blob(b"../web.yaml").unwrap();
            let changes = repo.folder([("web.yaml".to_string(), link, 0o120000)]);
            repo.push_folder_to_pr(1, "changes", Some(changes), "carol")
        },
        "head refused: change set `web` stops validating at this head: `changes/web.yaml` is no longer a file",
    );
}
