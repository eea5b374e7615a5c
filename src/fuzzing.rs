//! Entry points for fuzzing, shared by the `fuzz/` targets (cargo-fuzz) and
//! the regression-corpus test (`tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes, must never panic, and asserts what must hold for any
//! input.

use std::collections::BTreeMap;

use crate::model::{covered_paths, load_repo, Digest, Entry, SourceFile, TreeView};

/// A small fixed tree: two scripts, so `./path` references can resolve.
struct Tree(BTreeMap<&'static str, Entry>);

impl Tree {
    fn new() -> Tree {
        Tree(BTreeMap::from([
            ("scripts", Entry::Tree),
            ("scripts/apply.sh", Entry::Executable("a".repeat(40))),
            ("check.sh", Entry::Blob("b".repeat(40))),
        ]))
    }
}

impl TreeView for Tree {
    fn entry(&self, path: &str) -> Option<Entry> {
        self.0.get(path).cloned()
    }

    fn blobs_under(&self, dir: &str, _: &mut usize) -> Result<Vec<(String, Entry)>, String> {
        Ok(self
            .0
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{dir}/")))
            .filter(|(_, e)| !matches!(e, Entry::Tree))
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect())
    }
}

/// `data` as `changes/fuzz.yaml` (beside a valid `changes/base.yaml`):
/// every problem is a diagnostic located in a file, and a valid change set
/// has a digest.
pub fn change_set(data: &[u8]) {
    let files = [
        SourceFile::new("changes/fuzz.yaml", data.to_vec()),
        SourceFile::new(
            "changes/base.yaml",
            b"title: base\nkind: config\ntargets: [a]\nsteps:\n  - id: s\n    run: ./check.sh\n"
                .to_vec(),
        ),
    ];
    let tree = Tree::new();
    let model = load_repo(&files, &[], &tree);
    for d in &model.diagnostics {
        assert!(
            d.path.starts_with("changes/") && d.line >= 1 && d.column >= 1,
            "a diagnostic without a place: {d}"
        );
    }
    for change in model.changes.values() {
        if let Ok(covered) = covered_paths(change, &tree) {
            assert!(Digest::of(&covered).as_str().starts_with("sha256:"));
        }
    }
}

/// `data` as `policies/fuzz.yaml`: every problem is a located diagnostic.
pub fn policy(data: &[u8]) {
    let files = [SourceFile::new("policies/fuzz.yaml", data.to_vec())];
    let model = load_repo(&[], &files, &Tree::new());
    for d in &model.diagnostics {
        assert!(
            d.path == "policies/fuzz.yaml" && d.line >= 1 && d.column >= 1,
            "a diagnostic without a place: {d}"
        );
    }
}

/// The first byte picks the `X-GitHub-Event`; the rest is the payload.
/// Parsing either yields an event or a precise error, never a panic.
pub fn webhook_payload(data: &[u8]) {
    const EVENTS: [&str; 5] = [
        "pull_request",
        "pull_request_review",
        "push",
        "check_run",
        "ping",
    ];
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[*first as usize % EVENTS.len()];
    if let Err(e) = crate::github::events::parse(event, body) {
        assert!(!e.to_string().is_empty());
    }
}

/// The first byte is the secret's length; then the secret, then the body.
/// Any claimed signature is checked without a panic; the right one
/// verifies and a one-bit change of it does not.
pub fn signature(data: &[u8]) {
    use crate::server::webhooks::signature_matches;
    use hmac::{Hmac, Mac};
    let Some((len, rest)) = data.split_first() else {
        return;
    };
    let (secret, body) = rest.split_at((*len as usize).min(rest.len()));
    // Arbitrary claims, including non-hex and odd lengths.
    let claim = String::from_utf8_lossy(body);
    let _ = signature_matches(secret, body, &claim);
    let _ = signature_matches(secret, body, &format!("sha256={claim}"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let right = hex::encode(mac.finalize().into_bytes());
    assert!(signature_matches(secret, body, &format!("sha256={right}")));
    let mut wrong = right.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).expect("hex");
    assert!(!signature_matches(secret, body, &format!("sha256={wrong}")));
}
