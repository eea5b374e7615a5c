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
    assert_error(&errors_for(b""), &["changes/c.yaml:1:1:", "the file is empty"]);
}

#[test]
fn binary_garbage_is_an_error() {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert_error(&errors_for(&garbage), &["changes/c.yaml:", "not valid UTF-8"]);
}

#[test]
fn non_utf8_is_reported_at_its_position() {
    assert_error(&errors_for(b"title: ok\nkind: caf\xe9\n"), &["changes/c.yaml:2:10:", "not valid UTF-8 (byte 0xe9)"]);
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
        errors.iter().any(|e| e.starts_with("changes/c.yaml:1:") && (e.contains("deeper than") || e.contains("recursion limit"))),
        "{errors:?}"
    );
    let block: String = (0..1000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    assert_error(&errors_for(block.as_bytes()), &["changes/c.yaml:", "deeper than"]);
}

#[test]
fn a_10_mb_file_is_refused_before_parsing() {
    let big = "# padding\n".repeat(1_000_000);
    assert_error(&errors_for(big.as_bytes()), &["changes/c.yaml:1:1:", "10000000 bytes", "limited to"]);
}

#[test]
fn billion_laughs_aliases_are_refused() {
    let mut doc = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        doc.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    assert_error(&errors_for(doc.as_bytes()), &["changes/c.yaml:1:", "anchors"]);
}

#[test]
fn an_alias_to_an_unknown_anchor_is_an_error() {
    assert_error(&errors_for(b"title: *nowhere\n"), &["changes/c.yaml:1:"]);
}

#[test]
fn tags_and_multiple_documents_are_refused() {
    assert_error(&errors_for(b"title: !!binary aGk=\n"), &["changes/c.yaml:1:", "tags"]);
    assert_error(&errors_for(b"title: a\n---\ntitle: b\n"), &["changes/c.yaml:2:1:", "exactly one YAML document"]);
}

#[test]
fn a_scalar_or_list_at_the_top_is_an_error() {
    assert_error(&errors_for(b"just a string\n"), &["changes/c.yaml:1:1:", "must be a mapping, found a scalar"]);
    assert_error(&errors_for(b"- a\n- b\n"), &["changes/c.yaml:1:1:", "must be a mapping, found a list"]);
}

#[test]
fn complex_mapping_keys_are_refused() {
    assert_error(&errors_for(b"? [a, b]\n: c\n"), &["changes/c.yaml:1:", "mapping keys must be plain strings"]);
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
