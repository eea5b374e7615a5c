//! A valid change set on the default branch as the server keeps it between
//! reads: what a pass over every change asks for (the digest, covered
//! roots, dependencies, whether it rolls out) in the open, and the rest
//! packed. Parsed, 100,000 change sets of four steps took about 300 MiB;
//! packed, they take a tenth of that, and a status or a claim unpacks the
//! one it needs in microseconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{covered_roots, ChangeSet, CoveredPath, Digest};

/// Text most packed change sets share (keys, the usual values), given to
/// LZ4 as a dictionary so that even a short change set compresses.
const DICTIONARY: &[u8] = br#"[{"path":"changes/scripts/","blob":""},{"path":"changes/","blob":""}]
[{"title":"","description":"","kind":"config","targets":[],"targets_from":"","rollout":{},"depends_on":[],"env":{},"include":[],"timeout":"10m","steps":[{"id":"","run":"./changes/scripts/","check":"./changes/scripts/","verify":"./changes/scripts/","rollback":"./changes/scripts/","timeout":"5m","confirm":false,"targets":[]},{"id":"release","run":"./changes/scripts/","confirm":true}]}"#;

/// One change set on the default branch.
#[derive(Debug, Clone)]
pub struct OnBranch {
    /// Its digest.
    pub digest: Digest,
    /// Its covered roots other than its own file ([`covered_roots`]).
    roots: Box<[Arc<str>]>,
    /// The ids it depends on.
    depends_on: Box<[Box<str>]>,
    /// Whether it rolls out target by target (it has a per-target block).
    rolls_out: bool,
    /// `[change, covered]` as JSON, LZ4-compressed with [`DICTIONARY`].
    packed: Box<[u8]>,
}

/// One copy of each covered root shared by many change sets (a script
/// every change runs is held once, not 100,000 times).
#[derive(Debug, Default)]
pub struct Roots(HashSet<Arc<str>>);

impl Roots {
    fn get(&mut self, root: &str) -> Arc<str> {
        if let Some(known) = self.0.get(root) {
            return known.clone();
        }
        let root: Arc<str> = Arc::from(root);
        self.0.insert(root.clone());
        root
    }
}

impl OnBranch {
    /// Packs `change` with its digest and covered paths.
    pub fn new(
        change: &ChangeSet,
        digest: Digest,
        covered: &[CoveredPath],
        roots: &mut Roots,
    ) -> OnBranch {
        let json = serde_json::to_vec(&(change, covered))
            .expect("a change set and its covered paths always serialize");
        let own = format!("changes/{}.yaml", change.id);
        OnBranch {
            digest,
            roots: covered_roots(change)
                .iter()
                .filter(|r| **r != own)
                .map(|r| roots.get(r))
                .collect(),
            depends_on: change
                .depends_on
                .iter()
                .map(|d| d.as_str().into())
                .collect(),
            rolls_out: change.per_target_block().is_some(),
            packed: lz4_flex::block::compress_prepend_size_with_dict(&json, DICTIONARY).into(),
        }
    }

    /// The change set `id` and its covered paths.
    pub fn unpack(&self, id: &str) -> (ChangeSet, Vec<CoveredPath>) {
        // Only `new` wrote these bytes, from values that serialize and
        // parse back: a failure here is a bug, not bad input.
        let json = lz4_flex::block::decompress_size_prepended_with_dict(&self.packed, DICTIONARY)
            .expect("packed by OnBranch::new");
        let (mut change, covered): (ChangeSet, Vec<CoveredPath>) =
            serde_json::from_slice(&json).expect("packed by OnBranch::new");
        change.id = id.to_string();
        (change, covered)
    }

    /// The change set `id`.
    pub fn change(&self, id: &str) -> ChangeSet {
        self.unpack(id).0
    }

    /// Its covered roots other than `changes/<id>.yaml`.
    pub fn roots(&self) -> impl Iterator<Item = &Arc<str>> {
        self.roots.iter()
    }

    /// The ids it depends on.
    pub fn depends_on(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().map(|d| &**d)
    }

    /// Whether it rolls out target by target.
    pub fn rolls_out(&self) -> bool {
        self.rolls_out
    }

    /// Bytes held for the packed part (for the memory figures).
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }
}

/// Per change: the emails of the commits that touched what it covers.
/// Most changes share one set (a fleet repository has few committers), so
/// equal sets are held once.
pub type EmailsById = BTreeMap<String, Arc<BTreeSet<String>>>;

/// One shared copy of each distinct set of emails.
#[derive(Debug, Default)]
pub struct EmailSets(HashMap<BTreeSet<String>, Arc<BTreeSet<String>>>);

impl EmailSets {
    /// The shared copy of `emails`.
    pub fn get(&mut self, emails: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        self.0
            .entry(emails)
            .or_insert_with_key(|e| Arc::new(e.clone()))
            .clone()
    }

    /// `by_id` with equal sets shared.
    pub fn share(by_id: BTreeMap<String, BTreeSet<String>>) -> EmailsById {
        let mut sets = EmailSets::default();
        by_id.into_iter().map(|(id, e)| (id, sets.get(e))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load_change, Entry, SourceFile, TreeView};
    use std::collections::BTreeSet;

    struct Tree;
    impl TreeView for Tree {
        fn entry(&self, _: &str) -> Option<Entry> {
            Some(Entry::Blob("0".repeat(40)))
        }
        fn blobs_under(&self, _: &str) -> Vec<(String, Entry)> {
            Vec::new()
        }
    }

    #[test]
    fn a_change_set_unpacks_as_it_was_packed() {
        let ids: BTreeSet<String> = ["base"].map(String::from).into();
        let text = "title: Rotate\nkind: config\ntargets: [db-1]\ndepends_on: [base]\nenv:\n  HOST: db-1\nsteps:\n  - id: apply\n    run: ./changes/scripts/apply.sh \"$HOST\"\n    check: ./changes/scripts/check.sh\n    timeout: 5m\n  - id: release\n    confirm: true\n    run: ./changes/scripts/release.sh\n";
        let change = load_change(
            &SourceFile {
                path: "changes/rotate.yaml".into(),
                bytes: text.as_bytes().to_vec(),
            },
            &ids,
            &Tree,
        )
        .unwrap();
        let covered = crate::model::covered_paths(&change, &Tree).unwrap();
        let digest = Digest::of(&covered);
        let mut roots = Roots::default();
        let held = OnBranch::new(&change, digest.clone(), &covered, &mut roots);
        let (back, back_covered) = held.unpack("rotate");
        assert_eq!(back, change);
        assert_eq!(back_covered, covered);
        assert_eq!(held.digest, digest);
        assert_eq!(held.depends_on().collect::<Vec<_>>(), ["base"]);
        let roots_held: Vec<&str> = held.roots().map(|r| &**r).collect();
        assert!(
            !roots_held.contains(&"changes/rotate.yaml"),
            "{roots_held:?}"
        );
        assert!(
            roots_held.contains(&"changes/scripts/apply.sh"),
            "{roots_held:?}"
        );
        assert!(!held.rolls_out());
        // The dictionary earns its place: well under the JSON's size.
        let json = serde_json::to_vec(&(&change, &covered)).unwrap();
        assert!(
            held.packed_len() * 2 < json.len(),
            "{} of {}",
            held.packed_len(),
            json.len()
        );
    }

    #[test]
    fn a_root_shared_by_many_change_sets_is_held_once() {
        let mut roots = Roots::default();
        let a = roots.get("changes/scripts/apply.sh");
        let b = roots.get("changes/scripts/apply.sh");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
