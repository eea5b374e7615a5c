//! The paths that differ between two trees, by walking both trees' entries
//! side by side.
//!
//! libgit2's tree diff builds a full path string, and a delta, for every
//! entry of a folder it enters. `changes/` holds every change set in one
//! folder, so at 100,000 change sets that was about a third of a pull
//! request event's git work (README, "Growth"). Here an entry that is the
//! same on both sides costs a comparison and nothing is allocated for it;
//! the trees are libgit2's own parsed, cached objects.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use git2::{Oid, Repository, Tree};

/// File mode of a tree entry that is itself a tree.
const TREE_MODE: i32 = 0o040000;

/// How many folders deep the walk goes before leaving the diff to libgit2,
/// whose iterator keeps its stack on the heap: the walk recurses once per
/// folder, on a thread with a 2 MiB stack, and a pusher can hand-write a
/// tree nested as deep as they like. Real repositories stay far shallower.
const MAX_DEPTH: usize = 256;

/// One entry, read once over FFI into a buffer the walk reuses: at 100,000
/// entries per folder, calls into libgit2 are most of the walk's cost.
#[derive(Default)]
struct Item {
    name: Vec<u8>,
    mode: i32,
    id: Option<Oid>,
}

impl Item {
    fn is_tree(&self) -> bool {
        self.mode == TREE_MODE
    }

    /// Git's order of entries in one tree (`base_name_compare`): by name,
    /// a folder's name read as if a `/` followed it.
    fn git_order(&self, other: &Item) -> Ordering {
        let (x, y) = (&self.name, &other.name);
        let common = x.len().min(y.len());
        x[..common].cmp(&y[..common]).then_with(|| {
            let next = |item: &Item| match item.name.get(common) {
                Some(&c) => c,
                None if item.is_tree() => b'/',
                None => 0,
            };
            next(self).cmp(&next(other))
        })
    }
}

/// One side of the walk: a tree (or none: empty), the entry under the
/// cursor and the one before it.
struct Cursor<'a, 'r> {
    tree: Option<&'a Tree<'r>>,
    next: usize,
    current: Item,
    previous: Item,
    /// Whether a name read so far holds a `/`: `a/` would compare equal to
    /// a folder `a`, so the walk could skip what lies below it.
    slash: bool,
}

impl<'a, 'r> Cursor<'a, 'r> {
    fn new(tree: Option<&'a Tree<'r>>) -> Self {
        let mut cursor = Cursor {
            tree,
            next: 0,
            current: Item::default(),
            previous: Item::default(),
            slash: false,
        };
        cursor.read();
        cursor
    }

    /// Reads entry `next` into `current` (`id` none past the end).
    fn read(&mut self) {
        let entry = self.tree.and_then(|t| t.get(self.next));
        self.current.id = entry.as_ref().map(|e| e.id());
        if let Some(entry) = entry {
            self.current.name.clear();
            self.current.name.extend_from_slice(entry.name_bytes());
            self.slash |= self.current.name.contains(&b'/');
            self.current.mode = entry.filemode();
        }
    }

    fn peek(&self) -> Option<&Item> {
        self.current.id.is_some().then_some(&self.current)
    }

    /// Moves past the current entry; false when the next one does not come
    /// after it.
    fn advance(&mut self) -> bool {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.next += 1;
        self.read();
        self.peek()
            .is_none_or(|now| self.previous.git_order(now) == Ordering::Less)
    }
}

/// The paths that differ between tree `from`, read through repository
/// handle `from.0`, and tree `to`, read through `to.0` (added, removed or
/// changed in content or mode; a folder's files when the folder is added
/// or removed), as libgit2's tree-to-tree diff lists them. The handles may
/// be two opened on the same repository, so that each side's trees stay in
/// the cache of the handle that keeps them ([`super::touched::touched`]).
/// `None` when a tree on the way is not in git's order (git refuses such a
/// tree; a hand-made one must not make the walk step past a difference) or
/// lies deeper than [`MAX_DEPTH`] folders: the caller asks libgit2 instead.
pub(super) fn changed_paths(
    from: (&Repository, &Tree<'_>),
    to: (&Repository, &Tree<'_>),
) -> Result<Option<BTreeSet<String>>, git2::Error> {
    let mut out = BTreeSet::new();
    let repos = (from.0, to.0);
    let sorted = walk(
        repos,
        Some(from.1),
        Some(to.1),
        &mut Vec::new(),
        0,
        &mut out,
    )?;
    Ok(sorted.then_some(out))
}

/// Which sides hold the entry the walk is at.
enum Step {
    Old,
    New,
    Both,
}

/// Adds to `out` what differs below `prefix` between `from` and `to` (a
/// missing side is an empty tree), `depth` folders down; false when a tree
/// is out of order or too deep.
fn walk(
    repos: (&Repository, &Repository),
    from: Option<&Tree<'_>>,
    to: Option<&Tree<'_>>,
    prefix: &mut Vec<u8>,
    depth: usize,
    out: &mut BTreeSet<String>,
) -> Result<bool, git2::Error> {
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    let (mut old, mut new) = (Cursor::new(from), Cursor::new(to));
    loop {
        if old.slash || new.slash {
            return Ok(false);
        }
        let step = match (old.peek(), new.peek()) {
            (None, None) => return Ok(true),
            (Some(a), Some(b)) => match a.git_order(b) {
                Ordering::Less => Step::Old,
                Ordering::Greater => Step::New,
                Ordering::Equal if a.id == b.id && a.mode == b.mode => {
                    if !(old.advance() && new.advance()) {
                        return Ok(false);
                    }
                    continue;
                }
                Ordering::Equal => Step::Both,
            },
            (Some(_), None) => Step::Old,
            (None, Some(_)) => Step::New,
        };
        // The entry that differs, and the trees on each side below it.
        let (entry, before, after) = match step {
            Step::Old => (
                &old.current,
                old.current.is_tree().then_some(&old.current),
                None,
            ),
            Step::New => (
                &new.current,
                None,
                new.current.is_tree().then_some(&new.current),
            ),
            Step::Both => (
                &new.current,
                old.current.is_tree().then_some(&old.current),
                new.current.is_tree().then_some(&new.current),
            ),
        };
        let len = prefix.len();
        prefix.extend_from_slice(&entry.name);
        let sorted = if entry.is_tree() {
            prefix.push(b'/');
            let (a, b) = (subtree(repos.0, before)?, subtree(repos.1, after)?);
            walk(repos, a.as_ref(), b.as_ref(), prefix, depth + 1, out)?
        } else {
            out.insert(String::from_utf8_lossy(prefix).into_owned());
            true
        };
        prefix.truncate(len);
        let advanced = match step {
            Step::Old => old.advance(),
            Step::New => new.advance(),
            Step::Both => old.advance() && new.advance(),
        };
        if !(sorted && advanced) {
            return Ok(false);
        }
    }
}

/// The tree an entry names, read through `repo`; none for a missing side.
fn subtree<'r>(repo: &'r Repository, side: Option<&Item>) -> Result<Option<Tree<'r>>, git2::Error> {
    side.and_then(|e| e.id)
        .map(|id| repo.find_tree(id))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{FileMode, Oid};

    /// A tree from `(path, content)` pairs, folders made as needed; a
    /// content starting with `exec:` is an executable file.
    fn tree(repo: &Repository, files: &[(&str, &str)]) -> Oid {
        let mut here: Vec<(&str, &str)> = Vec::new();
        let mut below: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
        for (path, content) in files {
            match path.split_once('/') {
                Some((dir, rest)) => below.entry(dir).or_default().push((rest, content)),
                None => here.push((path, content)),
            }
        }
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, content) in here {
            let (mode, bytes) = match content.strip_prefix("exec:") {
                Some(rest) => (FileMode::BlobExecutable, rest),
                None => (FileMode::Blob, content),
            };
            let blob = repo.blob(bytes.as_bytes()).unwrap();
            builder.insert(name, blob, mode.into()).unwrap();
        }
        for (dir, files) in below {
            let sub = tree(repo, &files);
            builder.insert(dir, sub, FileMode::Tree.into()).unwrap();
        }
        builder.write().unwrap()
    }

    /// What libgit2's own tree diff lists.
    fn libgit2(repo: &Repository, from: &Tree<'_>, to: &Tree<'_>) -> BTreeSet<String> {
        let diff = repo.diff_tree_to_tree(Some(from), Some(to), None).unwrap();
        diff.deltas()
            .flat_map(|d| [d.old_file().path_bytes(), d.new_file().path_bytes()])
            .flatten()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// A tree object written byte by byte, as git would never write it:
    /// `(mode, name, id)` in the order given.
    fn hand_written(repo: &Repository, entries: &[(&str, &str, Oid)]) -> Oid {
        let mut raw = Vec::new();
        for (mode, name, id) in entries {
            raw.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            raw.extend_from_slice(id.as_bytes());
        }
        let odb = repo.odb().unwrap();
        odb.write(git2::ObjectType::Tree, &raw).unwrap()
    }

    /// The walk leaves trees `a` and `b` to libgit2, in both directions.
    fn assert_left_to_libgit2(repo: &Repository, a: Oid, b: Oid) {
        let (a, b) = (repo.find_tree(a).unwrap(), repo.find_tree(b).unwrap());
        assert_eq!(changed_paths((repo, &a), (repo, &b)).unwrap(), None);
        assert_eq!(changed_paths((repo, &b), (repo, &a)).unwrap(), None);
    }

    #[test]
    fn lists_what_libgit2_lists_through_one_handle_or_two() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let base: &[(&str, &str)] = &[
            ("a", "1"),
            ("a.b", "2"),
            ("a-c/x", "3"),
            ("b/c/d", "4"),
            ("b/c/e", "5"),
            ("b/f", "6"),
            ("changes/one.yaml", "one"),
            ("changes/two.yaml", "two"),
            ("changes/scripts/run.sh", "exec:echo"),
            ("keep/same", "7"),
            ("z", "8"),
        ];
        let heads: &[&[(&str, &str)]] = &[
            base,
            // One file edited deep down, one added, one removed.
            &[
                ("a", "1"),
                ("a.b", "2"),
                ("a-c/x", "3"),
                ("b/c/d", "4 edited"),
                ("b/c/e2", "5"),
                ("changes/one.yaml", "one"),
                ("changes/scripts/run.sh", "exec:echo"),
                ("changes/three.yaml", "three"),
                ("keep/same", "7"),
                ("z", "8"),
            ],
            // A file becomes a folder of the same name and back; a mode
            // change only; a folder removed whole.
            &[
                ("a/inner", "1"),
                ("a.b", "2"),
                ("a-c", "3"),
                ("changes/one.yaml", "one"),
                ("changes/two.yaml", "two"),
                ("changes/scripts/run.sh", "echo"),
                ("keep/same", "7"),
                ("z", "8"),
            ],
            // Everything gone but one, then a new name sorting first.
            &[("0", "new"), ("keep/same", "7")],
        ];
        let base = repo.find_tree(tree(&repo, base)).unwrap();
        let other = Repository::open_bare(dir.path()).unwrap();
        for files in heads {
            let head_id = tree(&repo, files);
            let head = repo.find_tree(head_id).unwrap();
            let expected = libgit2(&repo, &base, &head);
            for (from, to) in [(&base, &head), (&head, &base)] {
                let expected = libgit2(&repo, from, to);
                let ours = changed_paths((&repo, from), (&repo, to)).unwrap();
                assert_eq!(ours, Some(expected), "{files:?}");
            }
            // The head read through a second handle, as pull request events do.
            let head_there = other.find_tree(head_id).unwrap();
            let ours = changed_paths((&repo, &base), (&other, &head_there)).unwrap();
            assert_eq!(ours, Some(expected), "{files:?}");
        }
    }

    #[test]
    fn a_tree_out_of_git_order_is_left_to_libgit2() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = |s: &str| repo.blob(s.as_bytes()).unwrap();
        // `b` before `a`: git would refuse it, and a walk trusting the
        // order could step past `a`.
        let unsorted = hand_written(
            &repo,
            &[
                ("100644", "b", blob("b")),
                ("100644", "a", blob("a edited")),
            ],
        );
        let base = tree(&repo, &[("a", "a"), ("b", "b")]);
        assert_left_to_libgit2(&repo, base, unsorted);
    }

    #[test]
    fn a_name_holding_a_slash_is_left_to_libgit2() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let policies = tree(&repo, &[("a.yaml", "policy")]);
        // `policies/` naming the same folder as `policies`: compared as
        // equal, it would hide that `policies` is gone.
        let slashed = hand_written(&repo, &[("40000", "policies/", policies)]);
        let base = tree(&repo, &[("policies/a.yaml", "policy")]);
        assert_left_to_libgit2(&repo, base, slashed);
    }

    #[test]
    fn a_tree_nested_deeper_than_the_walk_goes_is_left_to_libgit2() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let nested = |levels: usize| {
            let mut id = tree(&repo, &[("leaf", "x")]);
            for _ in 0..levels {
                let mut builder = repo.treebuilder(None).unwrap();
                builder.insert("d", id, FileMode::Tree.into()).unwrap();
                id = builder.write().unwrap();
            }
            repo.find_tree(id).unwrap()
        };
        let empty = repo.find_tree(tree(&repo, &[])).unwrap();
        let within = changed_paths((&repo, &empty), (&repo, &nested(MAX_DEPTH))).unwrap();
        assert_eq!(within.map(|paths| paths.len()), Some(1));
        let deeper = nested(MAX_DEPTH + 1);
        assert_eq!(
            changed_paths((&repo, &empty), (&repo, &deeper)).unwrap(),
            None
        );
        assert_eq!(
            changed_paths((&repo, &deeper), (&repo, &empty)).unwrap(),
            None
        );
    }
}
