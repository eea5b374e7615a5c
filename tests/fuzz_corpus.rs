//! The fuzz targets' regression corpus (`fuzz/corpus/<target>/`), plus the
//! shared GitHub fixtures as webhook payloads, run through the same entry
//! points the fuzzer drives. Each must return without a panic.

mod common;

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = common::project_root().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{target}: an empty corpus tests nothing");
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn run(target: &str, entry: fn(&[u8])) {
    for (name, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{target} panicked on {name}");
    }
}

#[test]
fn change_sets() {
    run("change_set", changegate::fuzzing::change_set);
}

#[test]
fn policies() {
    run("policy", changegate::fuzzing::policy);
}

#[test]
fn signatures() {
    run("signature", changegate::fuzzing::signature);
}

#[test]
fn webhook_payloads_including_every_shared_fixture_as_every_event() {
    run("webhook_payload", changegate::fuzzing::webhook_payload);
    let fixtures = common::project_root().join("../shared/fixtures/github-webhooks");
    let mut seen = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        for event in 0u8..5 {
            let mut data = vec![event];
            data.extend_from_slice(&body);
            changegate::fuzzing::webhook_payload(&data);
            // Truncated anywhere, it is still an error, never a panic.
            changegate::fuzzing::webhook_payload(&data[..data.len() / 2]);
        }
        seen += 1;
    }
    assert!(
        seen >= 10,
        "the shared fixtures are beside the repository: {}",
        Path::new(&fixtures).display()
    );
}
