//! Hostile and broken files get a precise error and never a panic.

mod common;

use common::{assert_error, TestRepo};

fn errors_for(content: &[u8]) -> Vec<String> {
    let repo = TestRepo::new();
    repo.write("changes/c.yaml", content);
    repo.commit("bad input");
    let errors = repo.errors();
    assert!(!errors.is_empty(), "bad input was accepted");
    errors
}

#[test]
fn an_empty_file_is_an_error() {
    assert_error(
        &errors_for(b""),
        &["changes/c.yaml:1:1:", "the file is empty"],
    );
}

#[test]
fn binary_garbage_is_an_error() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_error(
        &errors_for(&garbage),
        &["changes/c.yaml:", "not valid UTF-8"],
    );
}

#[test]
fn non_utf8_is_reported_at_its_position() {
    assert_error(
        &errors_for(b"title: ok\nkind: caf\xe9\n"),
        &["changes/c.yaml:2:10:", "not valid UTF-8 (byte 0xe9)"],
    );
}

#[test]
fn control_characters_are_an_error() {
    assert_error(&errors_for(b"title: a\x00b\n"), &["changes/c.yaml:"]);
}

#[test]
fn deeply_nested_yaml_is_refused() {
    let deep = "a: ".to_string() + &"[".repeat(100_000) + &"]".repeat(100_000);
    // The scanner's own flow-nesting limit or our depth limit, whichever comes first.
    let errors = errors_for(deep.as_bytes());
    assert!(
        errors.iter().any(|e| e.starts_with("changes/c.yaml:1:")
            && (e.contains("deeper than") || e.contains("recursion limit"))),
        "{errors:?}"
    );
    let block: String = (0..1000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    assert_error(
        &errors_for(block.as_bytes()),
        &["changes/c.yaml:", "deeper than"],
    );
}

#[test]
fn a_10_mb_file_is_refused_before_parsing() {
    let big = "# padding\n".repeat(1_000_000);
    assert_error(
        &errors_for(big.as_bytes()),
        &["changes/c.yaml:1:1:", "10000000 bytes", "limited to"],
    );
}

#[test]
fn billion_laughs_aliases_are_refused() {
    let mut doc = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        doc.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    assert_error(
        &errors_for(doc.as_bytes()),
        &["changes/c.yaml:1:", "anchors"],
    );
}

#[test]
fn an_alias_to_an_unknown_anchor_is_an_error() {
    assert_error(&errors_for(b"title: *nowhere\n"), &["changes/c.yaml:1:"]);
}

#[test]
fn tags_and_multiple_documents_are_refused() {
    assert_error(
        &errors_for(b"title: !!binary aGk=\n"),
        &["changes/c.yaml:1:", "tags"],
    );
    assert_error(
        &errors_for(b"title: a\n---\ntitle: b\n"),
        &["changes/c.yaml:2:1:", "exactly one YAML document"],
    );
}

#[test]
fn a_scalar_or_list_at_the_top_is_an_error() {
    assert_error(
        &errors_for(b"just a string\n"),
        &["changes/c.yaml:1:1:", "must be a mapping, found a scalar"],
    );
    assert_error(
        &errors_for(b"- a\n- b\n"),
        &["changes/c.yaml:1:1:", "must be a mapping, found a list"],
    );
}

#[test]
fn complex_mapping_keys_are_refused() {
    assert_error(
        &errors_for(b"? [a, b]\n: c\n"),
        &["changes/c.yaml:1:", "mapping keys must be plain strings"],
    );
}

#[test]
fn bad_files_do_not_hide_good_ones() {
    let repo = TestRepo::new();
    repo.write("run.sh", "")
        .write("changes/bad.yaml", b"\xff\xfe")
        .write("changes/good.yaml", common::simple_change("g"));
    repo.commit("mixed");
    let model = repo.model("HEAD");
    assert_eq!(model.diagnostics.len(), 1);
    assert!(model.changes.contains_key("good"));
}

/// A tree of one commit held in memory, so thousands of mutated files can be
/// checked without a commit each.
struct MapTree(std::collections::BTreeMap<String, String>);

impl changegate::model::TreeView for MapTree {
    fn entry(&self, path: &str) -> Option<changegate::model::Entry> {
        if let Some(oid) = self.0.get(path) {
            return Some(changegate::model::Entry::Blob(oid.clone()));
        }
        let prefix = format!("{path}/");
        self.0
            .keys()
            .any(|k| k.starts_with(&prefix))
            .then_some(changegate::model::Entry::Tree)
    }

    fn blobs_under(
        &self,
        dir: &str,
        _: &mut usize,
    ) -> Result<Vec<(String, changegate::model::Entry)>, String> {
        let prefix = format!("{dir}/");
        Ok(self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), changegate::model::Entry::Blob(v.clone())))
            .collect())
    }
}

#[test]
fn thousands_of_mutated_examples_never_panic() {
    use changegate::model::{load_repo, SourceFile};
    let root = common::project_root();
    let originals: Vec<(String, Vec<u8>)> = [
        "changes/2017-12-12-state-machine-pg10.yaml",
        "changes/2017-12-14-decommission-pg96.yaml",
        "policies/postgres-upgrades.yaml",
        "policies/fleet-actions.yaml",
    ]
    .iter()
    .map(|p| (p.to_string(), std::fs::read(root.join(p)).unwrap()))
    .collect();
    let scripts = root.join("changes/scripts");
    let mut tree = MapTree(Default::default());
    for dir in [scripts.clone(), scripts.join("lib")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                tree.0.insert(rel, "0".repeat(40));
            }
        }
    }
    // A fixed xorshift sequence: reproducible, no extra dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b":-[]{}&*!|>'\"#\n ,.?%@`\\\t\x00\xff";
    let load = |files: &[(String, Vec<u8>)]| {
        let (changes, policies): (Vec<SourceFile>, Vec<SourceFile>) = files
            .iter()
            .map(|(path, bytes)| SourceFile::new(path.clone(), bytes.clone()))
            .partition(|f| f.path.starts_with("changes/"));
        load_repo(&changes, &policies, &tree)
    };
    assert!(
        load(&originals).is_valid(),
        "{:?}",
        load(&originals).diagnostics
    );
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut files = originals.clone();
        let target = (next() % files.len() as u64) as usize;
        let mutated = &mut files[target].1;
        for _ in 0..1 + next() % 4 {
            let at = (next() % mutated.len() as u64) as usize;
            match next() % 3 {
                0 => mutated[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                1 => {
                    mutated.remove(at);
                }
                _ => mutated.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
            }
        }
        let model = load(&files);
        rejected += usize::from(!model.is_valid());
        for d in &model.diagnostics {
            assert!(d.line >= 1 && d.column >= 1 && !d.message.is_empty(), "{d}");
        }
    }
    // Mutations inside comments and free text stay valid; the rest must be caught.
    assert!(
        (300..3000).contains(&rejected),
        "{rejected} of 3000 mutations rejected"
    );
}
