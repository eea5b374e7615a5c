//! What people look at: the status page in a real browser, the Atom feed
//! through a real Atom parser, and /metrics through a Prometheus parser.

mod common;

use common::browser::{console_errors, headless};
use common::gate_fixture::*;
use common::server::{self, Server};
use common::{db, TestRepo};

fn start_public(repo: &TestRepo) -> (Server, db::TestDatabase) {
    let database = db::fresh("sqlite");
    let server = server::start_with(
        repo.path(),
        &database.url,
        &tokens(),
        "public_pages = true",
        "",
    );
    (server, database)
}

fn body(url: &str) -> (u16, String) {
    let resp = reqwest::blocking::get(url).unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

/// The 2017 replay: the upgrade failed at release, the decommission is approved and blocked.
fn replayed_incident() -> (TestRepo, Server, db::TestDatabase, tempfile::TempDir) {
    let repo = incident_repo();
    let (server, database) = start_public(&repo);
    let fleet = fleet_with_failing_release(&repo);
    let (up, down) = (
        "2017-12-12-state-machine-pg10",
        "2017-12-14-decommission-pg96",
    );
    for who in ["alice", "bob"] {
        approve(&server, who, &repo, up);
        approve(&server, who, &repo, down);
    }
    for step in [
        "backup",
        "create-instance",
        "restore",
        "point-state-machine",
        "release",
    ] {
        client(&server, "alice").proceed(up, step, "ok").unwrap();
    }
    assert_eq!(
        exec(repo.path(), &server, &[up, "--continue"], fleet.path())
            .status
            .code(),
        Some(1)
    );
    (repo, server, database, fleet)
}

#[test]
fn a_browser_shows_the_failed_change_first_in_red_with_its_approvals_and_the_blocked_dependent() {
    let (_repo, server, _db, _fleet) = replayed_incident();
    let (dom, stderr) = headless(&format!("{}/", server.url), "--dump-dom");
    assert!(
        console_errors(&stderr).is_empty(),
        "console errors: {:?}",
        console_errors(&stderr)
    );
    let failed_at = dom.find("id=\"failed\"").expect("the failed section");
    let first_change = dom.find("2017-12-12-state-machine-pg10").unwrap();
    assert!(failed_at < first_change, "the failed change comes first");
    let first_row = &dom[failed_at..][dom[failed_at..]
        .find("<tr class=\"failed\">")
        .expect("a red row")..];
    assert!(
        first_row.starts_with(
            "<tr class=\"failed\"><td><a href=\"/changes/2017-12-12-state-machine-pg10\""
        ),
        "the first red row is the upgrade"
    );
    assert!(
        dom.contains("dependency 2017-12-12-state-machine-pg10 is failed (step release, exit 1)"),
        "the blocked dependent names its blocker"
    );

    let detail_url = format!("{}/changes/2017-12-12-state-machine-pg10", server.url);
    let (detail, stderr) = headless(&detail_url, "--dump-dom");
    assert!(console_errors(&stderr).is_empty(), "{stderr}");
    assert!(
        detail.contains("<span class=\"approvals\">2 of 2</span>"),
        "approvals read 2 of 2"
    );
    assert!(
        detail.contains("pg_ctl promote timed out"),
        "the output tail is shown"
    );
    assert!(
        detail.contains("<td>100755</td>"),
        "the scripts' mode is shown: the digest binds it"
    );

    // The screenshot is kept as an artifact, and its pixels prove the red.
    let artifacts = common::project_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &format!("{}/", server.url),
        &format!("--screenshot={}", shot.display()),
    );
    headless(
        &detail_url,
        &format!(
            "--screenshot={}",
            artifacts.join("change-page.png").display()
        ),
    );
    let (pixels, channels) = common::browser::png_pixels(&shot);
    let reddish = pixels
        .chunks(channels)
        .filter(|p| {
            (p[0] as i32 - 0xfd).abs() < 6
                && (p[1] as i32 - 0xec).abs() < 6
                && (p[2] as i32 - 0xec).abs() < 6
        })
        .count();
    assert!(
        reddish > 5_000,
        "the failed row is painted red ({reddish} pixels)"
    );
}

#[test]
fn a_title_with_a_script_tag_renders_as_text() {
    let repo = simple_repo("true", "");
    repo.write("changes/c.yaml", "title: \"<script>alert('x')</script> & <b>bold</b>\"\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n");
    repo.commit("hostile title");
    let (server, _db) = start_public(&repo);
    for path in ["/", "/changes/c"] {
        let (status, html) = body(&format!("{}{path}", server.url));
        assert_eq!(status, 200);
        assert!(
            !html.contains("<script>alert"),
            "{path} must not carry the script"
        );
        assert!(
            html.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"),
            "{path}: {html}"
        );
    }
}

#[test]
fn pages_need_a_token_unless_public() {
    let repo = simple_repo("true", "");
    let database = db::fresh("sqlite");
    let server = server::start(repo.path(), &database.url, &tokens());
    assert_eq!(body(&format!("{}/", server.url)).0, 401);
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/", server.url))
        .header("cookie", "changegate_token=alice-token")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn the_feed_is_atom_that_a_real_parser_reads() {
    let repo = simple_repo("false", "");
    let (server, _db) = start_public(&repo);
    approve(&server, "alice", &repo, "c");
    let fleet = tempfile::tempdir().unwrap();
    assert_eq!(
        exec(repo.path(), &server, &["c"], fleet.path())
            .status
            .code(),
        Some(1)
    );
    client(&server, "bob").abandon("c", "by hand").unwrap();
    let resp = reqwest::blocking::get(format!("{}/feed.atom", server.url)).unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/atom+xml"));
    let feed = feed_rs::parser::parse(resp.bytes().unwrap().as_ref()).expect("valid Atom");
    assert_eq!(feed.feed_type, feed_rs::model::FeedType::Atom);
    let titles: Vec<String> = feed
        .entries
        .iter()
        .map(|e| e.title.as_ref().unwrap().content.clone())
        .collect();
    assert!(titles.iter().any(|t| t == "step.failed c"), "{titles:?}");
    assert!(
        titles.iter().any(|t| t == "change.abandoned c"),
        "{titles:?}"
    );
    let failed = feed
        .entries
        .iter()
        .find(|e| e.title.as_ref().unwrap().content == "step.failed c")
        .unwrap();
    assert!(
        failed.links[0].href.ends_with("/changes/c"),
        "each entry links to the detail page"
    );
}

fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let text = server.metrics();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_parse_and_move_as_the_gate_acts() {
    let repo = simple_repo("false", "");
    let (server, _db) = start_public(&repo);
    let before = scrape(&server);
    assert_eq!(
        value(
            &before,
            "changegate_claims_total",
            &[("outcome", "refused"), ("reason", "not-approved")]
        ),
        0.0
    );
    assert!(client(&server, "ci")
        .claim("c", &digest(&repo, "c"), None)
        .is_err());
    approve(&server, "alice", &repo, "c");
    let fleet = tempfile::tempdir().unwrap();
    assert_eq!(
        exec(repo.path(), &server, &["c"], fleet.path())
            .status
            .code(),
        Some(1)
    );
    let after = scrape(&server);
    assert_eq!(
        value(
            &after,
            "changegate_claims_total",
            &[("outcome", "refused"), ("reason", "not-approved")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "changegate_claims_total", &[("outcome", "granted")]),
        1.0
    );
    assert_eq!(
        value(&after, "changegate_steps_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(value(&after, "changegate_alerts_firing", &[]), 1.0);
    assert_eq!(value(&after, "changegate_breaker_open", &[]), 0.0);
    assert!(
        after.samples.iter().any(|s| s
            .metric
            .starts_with("changegate_http_request_duration_seconds")),
        "HTTP durations are kept"
    );
}

/// The example sweep (its bake cut to 1s), run until `pg-cluster-07` of
/// wave 2 does not come back.
fn halted_sweep() -> (TestRepo, Server, db::TestDatabase, tempfile::TempDir) {
    const SWEEP: &str = "changes/2017-12-14-restart-pgbouncer.yaml";
    let repo = incident_repo();
    let yaml = std::fs::read_to_string(repo.path().join(SWEEP)).unwrap();
    repo.write(SWEEP, yaml.replace("bake: 10m", "bake: 1s"));
    repo.commit_as(
        "a one-second bake for the test",
        "Carol",
        "carol@example.com",
    );
    let (server, database) = start_public(&repo);
    let fleet = fleet_with_failing_release(&repo);
    std::fs::write(fleet.path().join("faults/pgbouncer-pg-cluster-07"), "no").unwrap();
    approve(&server, "alice", &repo, "2017-12-14-restart-pgbouncer");
    let out = exec(
        repo.path(),
        &server,
        &["2017-12-14-restart-pgbouncer", "--continue", "--wait"],
        fleet.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    (repo, server, database, fleet)
}

#[test]
fn a_browser_shows_the_rollout_grid_with_the_failed_target_first_and_the_feed_and_metrics_follow() {
    let (_repo, server, _db, _fleet) = halted_sweep();
    let url = format!("{}/changes/2017-12-14-restart-pgbouncer", server.url);
    let (dom, stderr) = headless(&url, "--dump-dom");
    assert!(console_errors(&stderr).is_empty(), "{stderr}");
    let grid = &dom[dom.find("id=\"rollout\"").expect("the rollout grid")..];
    let grid = &grid[..grid.find("</table>").unwrap()];
    let rows: Vec<&str> = grid.split("<tr").skip(2).collect();
    assert_eq!(rows.len(), 3, "three waves: {grid}");
    // Wave 2: the failed cluster first, in red, then the others.
    let first_cell = &rows[1][rows[1].find("<span class=\"cell").unwrap()..];
    assert!(
        first_cell.starts_with("<span class=\"cell t-failed\" title=\"pg-cluster-07: failed at restart\">pg-cluster-07</span>"),
        "{first_cell}"
    );
    assert!(
        rows[1].starts_with(" class=\"failed\""),
        "wave 2 is the failed wave"
    );
    // Wave 3 was never touched.
    assert_eq!(rows[2].matches("t-pending").count(), 30, "{}", rows[2]);
    assert!(dom.contains("id=\"failed-targets\""));
    assert!(dom.contains("of 40 targets done"));

    let artifacts = common::project_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("rollout-grid.png");
    let _ = std::fs::remove_file(&shot);
    headless(&url, &format!("--screenshot={}", shot.display()));
    let (pixels, channels) = common::browser::png_pixels(&shot);
    let count = |rgb: [i32; 3]| {
        pixels
            .chunks(channels)
            .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i]).abs() < 6))
            .count()
    };
    assert!(count([0xc6, 0x28, 0x28]) > 300, "the failed target is red");
    assert!(
        count([0x2e, 0x7d, 0x32]) > 1_000,
        "the restarted targets are green"
    );

    let feed = reqwest::blocking::get(format!("{}/feed.atom", server.url)).unwrap();
    let feed = feed_rs::parser::parse(feed.bytes().unwrap().as_ref()).expect("valid Atom");
    let titles: Vec<String> = feed
        .entries
        .iter()
        .map(|e| e.title.as_ref().unwrap().content.clone())
        .collect();
    assert!(
        titles
            .iter()
            .any(|t| t == "2017-12-14-restart-pgbouncer: wave 1 of 3 done (1 of 40 targets)"),
        "{titles:?}"
    );

    let metrics = scrape(&server);
    assert_eq!(
        value(
            &metrics,
            "changegate_rollout_targets",
            &[("state", "failed")]
        ),
        1.0
    );
    // Wave 3, and any of wave 2 the halt kept from starting.
    assert!(
        value(
            &metrics,
            "changegate_rollout_targets",
            &[("state", "pending")]
        ) >= 30.0
    );
    assert_eq!(
        value(
            &metrics,
            "changegate_rollout_halts_total",
            &[("reason", "failed")]
        ),
        1.0
    );
}
