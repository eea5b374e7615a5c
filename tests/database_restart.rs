//! A Postgres restart under a running server: writes get 503 while the
//! database is down, and the server recovers without a restart of its own.

mod common;

use std::process::Command;
use std::time::Duration;

use common::gate_fixture::*;
use common::receivers::eventually;
use common::server;
use serde_json::json;

/// A Postgres of this test's own (the shared one must not go down), started
/// by the same script CI uses: (admin URL, data dir, bin dir).
fn own_postgres() -> (String, String, String) {
    let port = common::receivers::free_port();
    let out = Command::new(common::project_root().join(".ci/postgres.sh"))
        .env("PGPORT_TEST", port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot start a Postgres: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap()
            .to_string()
    };
    (
        var("CHANGEGATE_TEST_POSTGRES_URL"),
        var("CHANGEGATE_TEST_PGDATA"),
        var("CHANGEGATE_TEST_PGBIN"),
    )
}

fn pg_ctl(bin: &str, data: &str, action: &str) {
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{bin}/pg_ctl"),
            "-D",
            data,
            "-w",
            "-m",
            "fast",
            action,
        ])
        .arg("-l")
        .arg(format!("{data}/server.log"))
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {action}");
}

#[test]
fn writes_get_503_while_postgres_is_down_and_succeed_after_it_returns() {
    let (url, data, bin) = own_postgres();
    let repo = simple_repo("true", "");
    for n in 0..3 {
        repo.write(
            &format!("changes/c{n}.yaml"),
            "title: t\nkind: config\ntargets: [web]\nsteps:\n  - id: only\n    run: ./step.sh\n",
        );
    }
    repo.commit("more changes");
    let server = server::start(repo.path(), &url, &tokens());
    let approve_c = |id: &str| {
        server.post(
            &format!("/api/v1/changes/{id}/approvals"),
            "alice-token",
            &json!({"digest": digest(&repo, id)}),
        )
    };
    assert_eq!(approve_c("c0").0, 201);

    pg_ctl(&bin, &data, "stop");
    let (status, body) = approve_c("c1");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(
        server.get("/readyz", None).0,
        503,
        "not ready without its database"
    );
    assert_eq!(server.get("/healthz", None).0, 200, "but alive");

    pg_ctl(&bin, &data, "start");
    eventually(30, "readiness after the database returns", || {
        server.get("/readyz", None).0 == 200
    });
    assert_eq!(
        approve_c("c2").0,
        201,
        "writes succeed again without restarting the server"
    );
    let audit = server.get("/api/v1/audit", Some("alice-token")).1;
    let approvals: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "approval.recorded")
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        approvals,
        ["c0", "c2"],
        "nothing acknowledged is lost, and the refused write left no trace"
    );
    pg_ctl(&bin, &data, "stop");
    let _ = std::fs::remove_dir_all(&data);
    std::thread::sleep(Duration::from_millis(10));
}
