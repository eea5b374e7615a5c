//! For unit tests: change sets checked against a tree in which every path
//! is a blob.

use std::collections::BTreeSet;

use super::{covered_paths, load_change, ChangeSet, CoveredPath, Entry, SourceFile, TreeView};

/// A tree in which every path is a blob (of id `0…0`) and no folder has
/// anything below it.
pub struct EveryPathABlob;

impl TreeView for EveryPathABlob {
    fn entry(&self, _: &str) -> Option<Entry> {
        Some(Entry::Blob("0".repeat(40)))
    }
    fn blobs_under(&self, _: &str, _: &mut usize) -> Result<Vec<(String, Entry)>, String> {
        Ok(Vec::new())
    }
}

/// `changes/<id>.yaml` holding `yaml`, checked with `known` as the other
/// change ids; panics when it does not validate.
pub fn change(id: &str, yaml: &str, known: &[&str]) -> ChangeSet {
    let ids: BTreeSet<String> = known.iter().map(|k| k.to_string()).collect();
    let file = SourceFile::new(format!("changes/{id}.yaml"), yaml.as_bytes().to_vec());
    load_change(&file, &ids, &EveryPathABlob).unwrap()
}

/// The covered paths of `change` in that tree.
pub fn covered(change: &ChangeSet) -> Vec<CoveredPath> {
    covered_paths(change, &EveryPathABlob).unwrap()
}
