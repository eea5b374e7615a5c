//! A valid change set on the default branch as the server keeps it between
//! reads: what a pass over every change asks for (the digest, covered
//! roots, dependencies, whether it rolls out) in the open, and the rest
//! packed. Parsed, 100,000 change sets of four steps took about 300 MiB;
//! packed, they take a tenth of that, and a status or a claim unpacks the
//! one it needs in microseconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{covered_roots, ChangeSet, CoveredPath, Digest};

/// Text most packed change sets share (keys, the usual values), given to
/// LZ4 as a dictionary so that even a short change set compresses.
const DICTIONARY: &[u8] = br#"{"title":"","description":"","kind":"config","targets":[],"targets_from":"","rollout":{},"depends_on":[],"env":{},"include":[],"timeout":"10m","steps":[{"id":"","run":"./changes/scripts/","check":"./changes/scripts/","verify":"./changes/scripts/","rollback":"./changes/scripts/","timeout":"5m","confirm":false,"targets":[]},{"id":"release","run":"./changes/scripts/","confirm":true}]}"#;

/// The first byte of packed bytes: which dictionary and encoding wrote
/// them. Stored rows in another format are not used (the branch is read
/// again). Change it with the dictionary, and whenever `ChangeSet`'s
/// serialized form changes: a stored row is unpacked without another
/// check of its shape.
const PACK_FORMAT: u8 = 1;

/// No stored change set unpacks to more JSON than this (its file is at
/// most 1 MiB of YAML), so a damaged length prefix cannot ask for 4 GiB.
const LARGEST_CHANGE: usize = 16 << 20;

/// What the store keeps beside the packed bytes, so that a restart needs
/// neither to parse nor to compress a change set. It binds the packed
/// bytes to a digest and a checksum of their JSON: a row whose digest
/// moved without them (written by a version that knew no `packed`) or
/// whose bytes were damaged is read again, never unpacked into something
/// other than what was approved. Its format changes with the packed
/// bytes', so that a row in another format differs and is written again.
#[derive(Serialize, Deserialize)]
struct Outline {
    format: u8,
    digest: String,
    check: u32,
    roots: Vec<String>,
    depends_on: Vec<String>,
    rolls_out: bool,
}

/// One change set on the default branch.
#[derive(Debug, Clone)]
pub struct OnBranch {
    /// The SHA-256 of its digest ([`Digest::of`] its covered paths).
    digest: [u8; 32],
    /// The blob id of `changes/<id>.yaml`, when it is taken out of
    /// `covered` (its path follows from the id).
    own_blob: Option<[u8; 20]>,
    /// Its other covered paths: most change sets run the same scripts, so
    /// equal lists are held once ([`Shared`]).
    covered: Arc<[CoveredPath]>,
    /// Its covered roots other than its own file ([`covered_roots`]),
    /// shared the same way.
    roots: Arc<[Arc<str>]>,
    /// The ids it depends on.
    depends_on: Box<[Box<str>]>,
    /// Whether it rolls out target by target (it has a per-target block).
    rolls_out: bool,
    /// [`PACK_FORMAT`], then the change set as JSON, LZ4-compressed with
    /// [`DICTIONARY`]. Shared, so that copying a view to edit it does not
    /// copy every change set.
    packed: Arc<[u8]>,
    /// The CRC-32 of that JSON, stored with it.
    check: u32,
}

/// One copy of each covered root, root list and covered list that many
/// change sets share (a script every change runs is held once, not
/// 100,000 times).
#[derive(Debug, Default)]
pub struct Shared {
    roots: HashSet<Arc<str>>,
    root_lists: HashSet<Arc<[Arc<str>]>>,
    covered_lists: HashSet<Arc<[CoveredPath]>>,
}

impl Shared {
    fn root(&mut self, root: &str) -> Arc<str> {
        if let Some(known) = self.roots.get(root) {
            return known.clone();
        }
        let root: Arc<str> = Arc::from(root);
        self.roots.insert(root.clone());
        root
    }

    fn list<T: Eq + std::hash::Hash>(set: &mut HashSet<Arc<[T]>>, list: Vec<T>) -> Arc<[T]> {
        if let Some(known) = set.get(&list[..]) {
            return known.clone();
        }
        let list: Arc<[T]> = list.into();
        set.insert(list.clone());
        list
    }
}

/// A change row as the store holds it, for [`OnBranch::from_stored`].
pub struct Stored<'a> {
    /// Its `packed` bytes.
    pub packed: Vec<u8>,
    /// Its `outline`.
    pub outline: &'a str,
    /// Its covered paths, sorted by path.
    pub covered: &'a [CoveredPath],
    /// The digest it was stored with (`sha256:<hex>`).
    pub digest: &'a str,
}

impl OnBranch {
    /// Packs `change` with its covered paths (sorted by path, each once, as
    /// [`covered_paths`](super::covered_paths) gives them); the digest is
    /// worked out from them.
    pub fn new(change: &ChangeSet, covered: &[CoveredPath], shared: &mut Shared) -> OnBranch {
        let json = serde_json::to_vec(change).expect("a change set always serializes");
        let own = format!("changes/{}.yaml", change.id);
        let roots: Vec<String> = covered_roots(change)
            .into_iter()
            .filter(|r| *r != own)
            .collect();
        let mut packed = vec![PACK_FORMAT];
        packed.extend(lz4_flex::block::compress_prepend_size_with_dict(
            &json, DICTIONARY,
        ));
        let digest = Digest::sha256_of(covered);
        let outline = Outline {
            format: PACK_FORMAT,
            digest: Digest::from_sha256(digest).as_str().to_string(),
            check: crc32fast::hash(&json),
            roots,
            depends_on: change.depends_on.clone(),
            rolls_out: change.per_target_block().is_some(),
        };
        OnBranch::assemble(&change.id, packed, outline, digest, covered, shared)
    }

    /// Change `id` as [`OnBranch::stored`] left it, or `None`, and then it
    /// must be read again, when: the outline does not parse or is of
    /// another format; the bytes are of another format, do not decode, or
    /// do not match the outline's checksum; or the outline, the covered
    /// paths and the row disagree on the digest.
    pub fn from_stored(id: &str, stored: Stored<'_>, shared: &mut Shared) -> Option<OnBranch> {
        let outline: Outline = serde_json::from_str(stored.outline).ok()?;
        let packed = stored.packed;
        let digest = Digest::sha256_of(stored.covered);
        let fits = outline.format == PACK_FORMAT
            && packed.first() == Some(&PACK_FORMAT)
            && outline.digest == stored.digest
            && Digest::from_sha256(digest).as_str() == stored.digest;
        // The length prefix is stored bytes too: it is checked before
        // anything that size is allocated.
        let size = u32::from_le_bytes(packed.get(1..5)?.try_into().ok()?) as usize;
        if !fits || size > LARGEST_CHANGE {
            return None;
        }
        let json =
            lz4_flex::block::decompress_size_prepended_with_dict(&packed[1..], DICTIONARY).ok()?;
        if crc32fast::hash(&json) != outline.check {
            return None;
        }
        Some(OnBranch::assemble(
            id,
            packed,
            outline,
            digest,
            stored.covered,
            shared,
        ))
    }

    /// What the store keeps of it beside its covered paths: (`packed`,
    /// `outline`) for [`OnBranch::from_stored`].
    pub fn stored(&self) -> (Vec<u8>, String) {
        let outline = Outline {
            format: PACK_FORMAT,
            digest: self.digest().as_str().to_string(),
            check: self.check,
            roots: self.roots.iter().map(|r| r.to_string()).collect(),
            depends_on: self.depends_on().map(str::to_string).collect(),
            rolls_out: self.rolls_out,
        };
        let outline = serde_json::to_string(&outline).expect("an outline always serializes");
        (self.packed.to_vec(), outline)
    }

    fn assemble(
        id: &str,
        packed: Vec<u8>,
        outline: Outline,
        digest: [u8; 32],
        covered: &[CoveredPath],
        shared: &mut Shared,
    ) -> OnBranch {
        let own = format!("changes/{id}.yaml");
        // Taken out only when it reads back as it was (lowercase hex).
        let own_blob = covered
            .iter()
            .find(|c| c.path == own && !c.executable)
            .and_then(|c| {
                let bytes = <[u8; 20]>::try_from(hex::decode(&c.blob).ok()?).ok()?;
                (hex::encode(bytes) == c.blob).then_some(bytes)
            });
        let others: Vec<CoveredPath> = covered
            .iter()
            .filter(|c| own_blob.is_none() || c.path != own)
            .cloned()
            .collect();
        let roots: Vec<Arc<str>> = outline.roots.iter().map(|r| shared.root(r)).collect();
        OnBranch {
            digest,
            own_blob,
            covered: Shared::list(&mut shared.covered_lists, others),
            roots: Shared::list(&mut shared.root_lists, roots),
            depends_on: outline
                .depends_on
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            rolls_out: outline.rolls_out,
            packed: packed.into(),
            check: outline.check,
        }
    }

    /// Its digest.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(self.digest)
    }

    /// The change set as JSON, as `serde_json` writes a `ChangeSet`.
    pub fn definition(&self) -> String {
        let json = self.json();
        String::from_utf8(json).expect("packed from serde_json's output, which is UTF-8")
    }

    fn json(&self) -> Vec<u8> {
        // `new` wrote these bytes, or `from_stored` checked them against
        // the checksum `new` took: a failure here is a bug, not bad input.
        lz4_flex::block::decompress_size_prepended_with_dict(&self.packed[1..], DICTIONARY)
            .expect("packed by OnBranch::new")
    }

    /// The change set `id`.
    pub fn change(&self, id: &str) -> ChangeSet {
        // The JSON of a `ChangeSet` as `new` serialized it (a stored row
        // keeps `PACK_FORMAT` in step with the serialized form).
        let mut change: ChangeSet =
            serde_json::from_slice(&self.json()).expect("packed by OnBranch::new");
        change.id = id.to_string();
        change
    }

    /// The covered paths of change `id`, sorted by path.
    pub fn covered(&self, id: &str) -> Vec<CoveredPath> {
        let mut covered = self.covered.to_vec();
        if let Some(blob) = self.own_blob {
            let own = CoveredPath {
                path: format!("changes/{id}.yaml"),
                blob: hex::encode(blob),
                executable: false,
            };
            let at = covered.partition_point(|c| c.path < own.path);
            covered.insert(at, own);
        }
        covered
    }

    /// The change set `id` and its covered paths.
    pub fn unpack(&self, id: &str) -> (ChangeSet, Vec<CoveredPath>) {
        (self.change(id), self.covered(id))
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
    use crate::model::testing;

    #[test]
    fn a_change_set_unpacks_as_it_was_packed() {
        let text = "title: Rotate\nkind: config\ntargets: [db-1]\ndepends_on: [base]\nenv:\n  HOST: db-1\nsteps:\n  - id: apply\n    run: ./changes/scripts/apply.sh \"$HOST\"\n    check: ./changes/scripts/check.sh\n    timeout: 5m\n  - id: release\n    confirm: true\n    run: ./changes/scripts/release.sh\n";
        let change = testing::change("rotate", text, &["base"]);
        let covered = testing::covered(&change);
        let mut shared = Shared::default();
        let held = OnBranch::new(&change, &covered, &mut shared);
        let (back, back_covered) = held.unpack("rotate");
        assert_eq!(back, change);
        assert_eq!(back_covered, covered);
        assert_eq!(held.digest(), Digest::of(&covered));
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
        let json = serde_json::to_vec(&change).unwrap();
        assert!(
            held.packed_len() * 2 < json.len(),
            "{} of {}",
            held.packed_len(),
            json.len()
        );
    }

    #[test]
    fn the_stored_form_reads_back_and_damage_is_refused() {
        let text = "title: t\nkind: k\ntargets: [x]\ndepends_on: [base]\ninclude: [lib/]\nsteps:\n  - id: s\n    run: ./changes/scripts/apply.sh\n";
        let change = testing::change("a", text, &["base"]);
        let covered = testing::covered(&change);
        let mut shared = Shared::default();
        let held = OnBranch::new(&change, &covered, &mut shared);
        let (packed, outline) = held.stored();
        let digest = held.digest();
        let stored = |packed: Vec<u8>, outline: &str| {
            let row = Stored {
                packed,
                outline,
                covered: &covered,
                digest: digest.as_str(),
            };
            OnBranch::from_stored("a", row, &mut Shared::default())
        };
        let back = stored(packed.clone(), &outline).expect("reads back");
        assert_eq!(back.unpack("a"), (change, covered.clone()));
        assert_eq!(back.digest(), digest);
        assert_eq!(back.depends_on().collect::<Vec<_>>(), ["base"]);
        let roots = |h: &OnBranch| h.roots().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(roots(&back), roots(&held));
        assert!(
            roots(&back).contains(&"lib".to_string()),
            "{:?}",
            roots(&back)
        );
        // Another format, cut short, a byte changed that still decodes, a
        // damaged outline: not used.
        let mut other = packed.clone();
        other[0] = PACK_FORMAT + 1;
        let cut = packed[..packed.len() - 3].to_vec();
        let mut flipped = packed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(
            lz4_flex::block::decompress_size_prepended_with_dict(&flipped[1..], DICTIONARY).is_ok()
        );
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        for (bytes, outline) in [
            (other, outline.clone()),
            (huge, outline.clone()),
            (cut, outline.clone()),
            (flipped, outline.clone()),
            (Vec::new(), outline.clone()),
            (
                packed.clone(),
                outline.replace("\"format\":1", "\"format\":2"),
            ),
            (packed.clone(), "{}".to_string()),
        ] {
            assert!(stored(bytes, &outline).is_none(), "{outline}");
        }
        // A row whose digest moved on without its packed change set (as a
        // version that knew no `packed` writes it): not used.
        let moved_digest = Digest::of(&covered[1..]);
        let moved = Stored {
            packed,
            outline: &outline,
            covered: &covered[1..],
            digest: moved_digest.as_str(),
        };
        assert!(OnBranch::from_stored("a", moved, &mut Shared::default()).is_none());
    }

    #[test]
    fn change_sets_running_the_same_scripts_share_their_lists() {
        let mut shared = Shared::default();
        let held: Vec<OnBranch> = ["a", "b"]
            .iter()
            .map(|id| {
                let text = "title: t\nkind: k\ntargets: [x]\nsteps:\n  - id: s\n    run: ./changes/scripts/apply.sh\n";
                let change = testing::change(id, text, &[]);
                let covered = testing::covered(&change);
                let held = OnBranch::new(&change, &covered, &mut shared);
                assert_eq!(held.covered(id), covered, "{id}");
                held
            })
            .collect();
        assert!(Arc::ptr_eq(&held[0].covered, &held[1].covered));
        assert!(Arc::ptr_eq(&held[0].roots, &held[1].roots));
        assert_eq!(
            held[0].covered.len(),
            1,
            "the own file is not in the shared list"
        );
    }
}
