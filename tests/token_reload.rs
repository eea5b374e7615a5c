//! Tokens without a restart (SPEC §12): `serve` re-reads `[[tokens]]` when
//! its configuration file changes and on SIGHUP, which never stops it; a
//! file that does not validate changes nothing.

mod common;

use std::io::Write;

use common::gate_fixture::{client, incident_repo, reviews, tokens};
use common::receivers::eventually;
use common::server::{self, Server};
use common::{db, TestRepo};

/// `changegate token new NAME --role ROLE`: (the block for the file, the token).
fn token_new(dir: &std::path::Path, name: &str, role: &str, extra: &str) -> (String, String) {
    let out = common::changegate(dir, &["token", "new", name, "--role", role]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let token = stderr.trim().rsplit(' ').next().unwrap().to_string();
    let block = format!("{}{extra}\n", String::from_utf8(out.stdout).unwrap());
    (block, token)
}

/// Appends `text` to `path`, as `>>` does.
fn append(path: &std::path::Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn status(server: &Server, token: &str) -> u16 {
    server.get("/api/v1/changes", Some(token)).0
}

fn hangup(server: &Server) {
    // SAFETY: kill(2) with a pid we started and a plain signal number.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) }, 0);
}

#[test]
fn the_readme_first_five_minutes_work_without_a_restart() {
    // README: `serve` in a checkout, then `token new me --role reader >>
    // changegate.toml`, then curl. No file exists when serve starts.
    let repo = TestRepo::new();
    for dir in ["changes", "policies"] {
        common::copy_tree(
            &common::project_root().join(dir),
            repo.path(),
            &common::project_root(),
        );
    }
    repo.commit("the project's examples");
    let server = server::start_as_new_user(repo.path());
    let (block, token) = token_new(repo.path(), "me", "reader", "");
    assert_eq!(status(&server, &token), 401, "not a token yet");
    append(&repo.path().join("changegate.toml"), &block);
    eventually(10, "the new token to work", || {
        status(&server, &token) == 200
    });
    let log = server.log();
    assert!(log.contains("tokens reloaded"), "{log}");
    assert!(!log.contains(&token), "the token must not be logged");
}

#[test]
fn sighup_reloads_tokens_and_never_stops_the_server() {
    for backend in db::BACKENDS {
        let repo = incident_repo();
        let database = db::fresh(backend);
        let mut server = server::start_with(
            repo.path(),
            &database.url,
            &tokens(),
            "reload_on_change = false",
            "",
        );
        let (block, token) = token_new(repo.path(), "newcomer", "reader", "");
        append(server.config_path(), &block);
        // Without watching the file, nothing changes until the signal.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert_eq!(status(&server, &token), 401, "{backend}");
        hangup(&server);
        eventually(10, "SIGHUP to load the token", || {
            status(&server, &token) == 200
        });
        for _ in 0..3 {
            hangup(&server);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            status(&server, "alice-token"),
            200,
            "{backend}: still serving"
        );
        assert!(
            server.try_exit().is_none(),
            "{backend}: SIGHUP must not stop serve"
        );
        assert!(server.log().contains("\"reason\":\"SIGHUP\""), "{backend}");
    }
}

#[test]
fn an_invalid_file_is_refused_and_the_running_tokens_stay() {
    for backend in db::BACKENDS {
        let repo = incident_repo();
        let database = db::fresh(backend);
        let server = server::start_with(repo.path(), &database.url, &tokens(), "", "");
        let good = std::fs::read_to_string(server.config_path()).unwrap();
        std::fs::write(
            server.config_path(),
            format!("{good}\n[[tokens]]\nname = \"broken\"\n"),
        )
        .unwrap();
        eventually(10, "the refusal in the log", || {
            server.log().contains("configuration not reloaded")
        });
        hangup(&server);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            status(&server, "alice-token"),
            200,
            "{backend}: the running tokens stay"
        );
        // A valid file without alice: her token stops working.
        let without_alice: String = good
            .split("[[tokens]]")
            .filter(|block| !block.contains("name = \"alice\""))
            .collect::<Vec<_>>()
            .join("[[tokens]]");
        std::fs::write(server.config_path(), without_alice).unwrap();
        eventually(10, "alice's token to stop working", || {
            status(&server, "alice-token") == 401
        });
        assert_eq!(status(&server, "bob-token"), 200, "{backend}");
    }
}

#[test]
fn an_identity_added_by_a_reload_cannot_approve_what_it_wrote() {
    for backend in db::BACKENDS {
        // Carol committed the examples; at start no identity has her email.
        let repo = incident_repo();
        let database = db::fresh(backend);
        let without_carol: Vec<_> = tokens().into_iter().filter(|t| t.0 != "carol").collect();
        let server = server::start_with(repo.path(), &database.url, &without_carol, "", "");
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"carol-token"));
        append(
            server.config_path(),
            &format!("\n[[tokens]]\nname = \"carol\"\nrole = \"operator\"\nsha256 = \"{hash}\"\nemails = [\"carol@example.com\"]\n"),
        );
        eventually(10, "carol's token to work", || {
            status(&server, "carol-token") == 200
        });
        let id = "2017-12-14-restart-pgbouncer";
        let digest = client(&server, "alice").change(id).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        client(&server, "carol")
            .approve(id, &digest, "mine")
            .unwrap();
        let carol = reviews(&server, id)
            .into_iter()
            .find(|r| r.0 == "carol")
            .expect("carol's approval is recorded");
        assert_eq!((carol.1, carol.2.as_str()), (false, "author"), "{backend}");
    }
}
