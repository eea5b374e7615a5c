//! `changegate serve` as a process on loopback, on both backends.

mod common;

use std::collections::BTreeSet;

use common::server::{self, Server, TestToken};
use common::{db, simple_change, TestRepo};
use serde_json::json;

fn tokens() -> Vec<TestToken> {
    [
        ("alice", "operator"),
        ("bob", "operator"),
        ("ci", "executor"),
        ("viewer", "reader"),
    ]
    .iter()
    .map(|(name, role)| (name.to_string(), *role, format!("{name}-token")))
    .collect()
}

fn repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/a.yaml", simple_change("a"))
        .write("changes/b.yaml", simple_change("b"));
    repo.commit("two changes");
    repo
}

fn digest_of(repo: &TestRepo, id: &str) -> String {
    String::from_utf8(repo.run(&["digest", id]).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn on_each_backend(case: impl Fn(&TestRepo, Server)) {
    for backend in db::BACKENDS {
        let repo = repo();
        let database = db::fresh(backend);
        let server = server::start(repo.path(), &database.url, &tokens());
        case(&repo, server);
    }
}

#[test]
fn health_and_readiness_answer_without_a_token() {
    on_each_backend(|_, server| {
        assert_eq!(server.get("/healthz", None).0, 200);
        assert_eq!(server.get("/readyz", None).0, 200);
    });
}

#[test]
fn the_api_needs_a_valid_token() {
    on_each_backend(|_, server| {
        assert_eq!(server.get("/api/v1/changes", None).0, 401);
        assert_eq!(server.get("/api/v1/changes", Some("wrong-token")).0, 401);
        assert_eq!(server.get("/api/v1/changes", Some("viewer-token")).0, 200);
    });
}

#[test]
fn a_wrong_role_gets_403() {
    on_each_backend(|repo, server| {
        let body = json!({"digest": digest_of(repo, "a")});
        assert_eq!(
            server
                .post("/api/v1/changes/a/approvals", "viewer-token", &body)
                .0,
            403
        );
        assert_eq!(
            server
                .post("/api/v1/changes/a/approvals", "ci-token", &body)
                .0,
            403
        );
    });
}

#[test]
fn changes_on_the_default_branch_are_listed_with_their_digests() {
    on_each_backend(|repo, server| {
        let (status, list) = server.get("/api/v1/changes", Some("viewer-token"));
        assert_eq!(status, 200);
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(list[0]["digest"], digest_of(repo, "a"));
        let (status, one) = server.get("/api/v1/changes/a", Some("viewer-token"));
        assert_eq!(status, 200);
        assert_eq!(one["state"], "proposed");
        assert_eq!(one["steps"][0]["id"], "apply");
        assert_eq!(one["steps"][0]["state"], "pending");
        assert_eq!(
            server.get("/api/v1/changes/nope", Some("viewer-token")).0,
            404
        );
    });
}

#[test]
fn an_approval_is_recorded_once_per_digest() {
    on_each_backend(|repo, server| {
        let digest = digest_of(repo, "a");
        let body = json!({"digest": digest, "comment": "checked the plan"});
        let (status, created) = server.post("/api/v1/changes/a/approvals", "alice-token", &body);
        assert_eq!(
            (status, &created["created"]),
            (201, &json!(true)),
            "{created}"
        );
        let (status, again) = server.post("/api/v1/changes/a/approvals", "alice-token", &body);
        assert_eq!((status, &again["created"]), (200, &json!(false)));
        let (status, stale) = server.post(
            "/api/v1/changes/a/approvals",
            "bob-token",
            &json!({"digest": "sha256:0000"}),
        );
        assert_eq!(
            (status, stale["reason"].as_str()),
            (409, Some("stale-digest")),
            "{stale}"
        );
        assert_eq!(
            server
                .post("/api/v1/changes/nope/approvals", "bob-token", &body)
                .0,
            404
        );
        let (_, one) = server.get("/api/v1/changes/a", Some("viewer-token"));
        assert_eq!(one["approvals"]["reviews"].as_array().unwrap().len(), 1);
        assert_eq!(one["approvals"]["reviews"][0]["approver"], "alice");
        let (_, audit) = server.get("/api/v1/audit?change=a", Some("viewer-token"));
        let kinds: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["change.seen", "approval.recorded"]);
    });
}

#[test]
fn malformed_bodies_get_a_4xx_and_record_nothing() {
    on_each_backend(|_, server| {
        for body in [
            json!({}),
            json!({"digest": 5}),
            json!({"digest": "x", "extra": 1}),
        ] {
            let status = server
                .post("/api/v1/changes/a/approvals", "alice-token", &body)
                .0;
            assert!((400..500).contains(&status), "{body} got {status}");
        }
        let (_, audit) = server.get("/api/v1/audit", Some("viewer-token"));
        assert_eq!(
            audit.as_array().unwrap().len(),
            2,
            "only the two change.seen events"
        );
    });
}

#[test]
fn openapi_describes_the_served_routes() {
    on_each_backend(|_, server| {
        let (status, doc) = server.get("/openapi.json", None);
        assert_eq!(status, 200);
        let paths: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/api/v1/changes",
            "/api/v1/changes/{id}",
            "/api/v1/changes/{id}/approvals",
            "/api/v1/audit",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains(p), "{p} missing from {paths:?}");
        }
    });
}

#[test]
fn every_error_answer_is_documented_json() {
    on_each_backend(|_, server| {
        let http = reqwest::blocking::Client::new();
        let url = |p: &str| format!("{}{p}", server.url);
        let approve = || {
            http.post(url("/api/v1/changes/a/approvals"))
                .bearer_auth("alice-token")
        };
        let answers = [
            (
                "not JSON",
                approve()
                    .header("content-type", "application/json")
                    .body("{\"digest\":"),
                400,
                "malformed",
            ),
            (
                "no content type",
                approve().body("{}"),
                415,
                "unsupported-media-type",
            ),
            (
                "JSON of the wrong shape",
                approve().json(&json!({"digest": 5})),
                422,
                "invalid",
            ),
            (
                "over the limit",
                approve()
                    .header("content-type", "application/json")
                    .body(format!("{{\"digest\":\"{}\"}}", "x".repeat(3 << 20))),
                413,
                "too-large",
            ),
            (
                "an unknown route",
                http.get(url("/api/v1/nope")),
                404,
                "not-found",
            ),
            (
                "another method",
                http.delete(url("/api/v1/changes"))
                    .bearer_auth("alice-token"),
                405,
                "method-not-allowed",
            ),
        ];
        for (what, request, status, error) in answers {
            // A server that refuses a body before reading it all closes the
            // connection, which can reset it under a client still writing:
            // try again until the answer itself is read.
            let response = (0..5)
                .find_map(|_| request.try_clone().unwrap().send().ok())
                .unwrap_or_else(|| panic!("{what}: no answer in 5 tries"));
            assert_eq!(response.status().as_u16(), status, "{what}");
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{what}"
            );
            let body: serde_json::Value = response.json().unwrap();
            assert_eq!(body["error"], error, "{what}: {body}");
            assert!(body["detail"].is_string(), "{what}: {body}");
        }
        // The OpenAPI lists them, each with its body.
        let (_, doc) = server.get("/openapi.json", None);
        let post = &doc["paths"]["/api/v1/changes/{id}/approvals"]["post"]["responses"];
        for status in [
            "400", "401", "403", "404", "409", "413", "415", "422", "500", "503",
        ] {
            let schema = &post[status]["content"]["application/json"]["schema"]["$ref"];
            assert!(schema.is_string(), "{status} undocumented: {post}");
        }
        assert_eq!(
            post["409"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RefusalBody"
        );
    });
}

#[test]
fn sigterm_shuts_down_gracefully() {
    on_each_backend(|_, mut server| {
        let status = server.terminate();
        assert!(status.success(), "{status}\n{}", server.log());
        assert!(server.log().contains("\"stopped\""), "{}", server.log());
    });
}

#[test]
fn secrets_never_reach_the_log() {
    on_each_backend(|repo, server| {
        server.post(
            "/api/v1/changes/a/approvals",
            "alice-token",
            &json!({"digest": digest_of(repo, "a")}),
        );
        server.get("/api/v1/changes", Some("wrong-secret-token"));
        let log = server.log();
        for secret in ["alice-token", "wrong-secret-token", "viewer-token"] {
            assert!(!log.contains(secret), "{secret} leaked into the log");
        }
    });
}

#[test]
fn the_readme_quick_start_serves_the_examples_on_embedded_sqlite() {
    // A checkout of the project: its own changes/ and policies/ on `main`.
    let repo = TestRepo::new();
    for dir in ["changes", "policies"] {
        common::copy_tree(
            &common::project_root().join(dir),
            repo.path(),
            &common::project_root(),
        );
    }
    repo.commit("the project's examples");
    // README: `changegate token new me --role reader >> changegate.toml`, then `changegate serve`.
    let out = common::changegate(repo.path(), &["token", "new", "me", "--role", "reader"]);
    assert!(out.status.success());
    std::fs::write(repo.path().join("changegate.toml"), &out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let token = stderr.trim().rsplit(' ').next().unwrap().to_string();
    let server = server::start_as_new_user(repo.path());
    assert!(
        repo.path().join("changegate.db").exists(),
        "the default database is ./changegate.db"
    );
    let (status, list) = server.get("/api/v1/changes", Some(&token));
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "2017-12-12-state-machine-pg10",
            "2017-12-14-decommission-pg96",
            "2017-12-14-restart-pgbouncer"
        ]
    );
    // The sweep's 40 clusters in three waves, before anything ran.
    let (_, sweep) = server.get("/api/v1/changes/2017-12-14-restart-pgbouncer", Some(&token));
    let sizes: Vec<usize> = sweep["rollout"]["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["targets"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [1, 9, 30], "{sweep}");
    assert!(
        !server.log().contains(&token),
        "the token must not be logged"
    );
}
