//! The paths that differ between two trees, by walking both trees' entries
//! side by side.
//!
//! libgit2's tree diff builds a full path string, and a delta, for every
//! entry of a folder it enters. `changes/` holds every change set in one
//! folder, so at 100,000 change sets that was about a third of a pull
//! request event's git work (README, "Growth"). Here an entry that is the
//! same on both sides costs a comparison and nothing is allocated for it;
//! the trees are libgit2's own parsed, cached objects.
//!
//! What a pusher writes is bounded: trees git refuses, trees nested too
//! deep and diffs past a [`Budget`] are refused, never read to the end.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use git2::{Oid, Repository, Tree};

use super::GitError;

/// File mode of a tree entry that is itself a tree.
const TREE_MODE: i32 = 0o040000;

/// How many folders deep a diff goes before it is refused: the walk
/// recurses once per folder, on a thread with a 2 MiB stack, and a pusher
/// can hand-write a tree nested as deep as they like.
use crate::model::MAX_PATH_DEPTH as MAX_DEPTH;

/// What one diff may read and list before it is refused. A pusher can write
/// a tree of a few KiB that names one subtree many times on each level (a
/// tree bomb): its paths grow as a power of its depth, and listing them all
/// would take the server's memory. Real diffs stay far below: a pull
/// request event at 100,000 change sets reads about 200,000 entries.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Tree entries read, on both sides.
    pub entries: usize,
    /// Bytes of the paths listed.
    pub bytes: usize,
}

impl Budget {
    /// The budget of every diff the server makes.
    pub const DEFAULT: Budget = Budget {
        entries: 2_000_000,
        bytes: 64 << 20,
    };
}

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

/// Why a tree is refused.
enum Malformed {
    /// Entries out of git's order: the walk trusts the order, so it could
    /// step past a difference.
    Order,
    /// A name holding `/`: `a/` would compare equal to a folder `a`, so the
    /// walk could skip what lies below it.
    Slash,
    /// A name longer than [`MAX_NAME_BYTES`]: each level keeps its own.
    Long,
}

/// The longest entry name read; file systems allow 255 bytes.
const MAX_NAME_BYTES: usize = 4096;

/// One side of the walk: a tree (or none: empty), the entry under the
/// cursor and the one before it.
struct Cursor<'a, 'r> {
    tree: Option<&'a Tree<'r>>,
    next: usize,
    current: Item,
    previous: Item,
}

impl<'a, 'r> Cursor<'a, 'r> {
    fn new(tree: Option<&'a Tree<'r>>) -> Result<Self, Malformed> {
        let mut cursor = Cursor {
            tree,
            next: 0,
            current: Item::default(),
            previous: Item::default(),
        };
        cursor.read()?;
        Ok(cursor)
    }

    /// Reads entry `next` into `current` (`id` none past the end).
    fn read(&mut self) -> Result<(), Malformed> {
        let entry = self.tree.and_then(|t| t.get(self.next));
        self.current.id = entry.as_ref().map(|e| e.id());
        if let Some(entry) = entry {
            self.current.name.clear();
            self.current.name.extend_from_slice(entry.name_bytes());
            self.current.mode = entry.filemode_raw();
            if self.current.name.contains(&b'/') {
                return Err(Malformed::Slash);
            }
            if self.current.name.len() > MAX_NAME_BYTES {
                return Err(Malformed::Long);
            }
        }
        Ok(())
    }

    fn peek(&self) -> Option<&Item> {
        self.current.id.is_some().then_some(&self.current)
    }

    /// Moves past the current entry, which the next one must follow.
    fn advance(&mut self) -> Result<(), Malformed> {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.next += 1;
        self.read()?;
        match self.peek() {
            Some(now) if self.previous.git_order(now) != Ordering::Less => Err(Malformed::Order),
            _ => Ok(()),
        }
    }
}

/// The paths that differ between tree `from`, read through repository
/// handle `from.0`, and tree `to`, read through `to.0` (a missing tree is
/// empty): added, removed or changed in content or mode, and a folder's
/// files when the folder is added or removed, as libgit2's tree-to-tree
/// diff lists them. The handles may
/// be two opened on the same repository, so that each side's trees stay in
/// the cache of the handle that keeps them ([`super::touched::touched`]).
///
/// [`GitError::Refused`] when a tree on the way is one git itself refuses
/// (entries out of order, a name holding `/`), lies deeper than
/// [`MAX_DEPTH`] folders, or the diff overruns `budget`.
pub fn changed_paths(
    from: (&Repository, Option<&Tree<'_>>),
    to: (&Repository, Option<&Tree<'_>>),
    budget: Budget,
) -> Result<BTreeSet<String>, GitError> {
    let mut listing = Listing {
        paths: BTreeSet::new(),
        left: budget,
        budget,
    };
    let repos = (from.0, to.0);
    walk(repos, from.1, to.1, &mut Vec::new(), 0, &mut listing)?;
    Ok(listing.paths)
}

/// The paths listed so far and what is left of the budget.
struct Listing {
    paths: BTreeSet<String>,
    left: Budget,
    budget: Budget,
}

/// A refusal naming the folder it happened in (shortened: a bomb's paths
/// are long).
fn refused(at: &[u8], why: String) -> GitError {
    let at = String::from_utf8_lossy(at);
    let at = match at.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &at[..i]),
        None => at.into_owned(),
    };
    let at = if at.is_empty() { "/".to_string() } else { at };
    GitError::Refused {
        reason: format!("{why} (at `{at}`)"),
    }
}

fn malformed(at: &[u8], why: Malformed) -> GitError {
    refused(
        at,
        match why {
            Malformed::Order => "a tree's entries are not in git's order, which git refuses".into(),
            Malformed::Slash => "a tree entry's name holds `/`, which git refuses".into(),
            Malformed::Long => format!("a tree entry's name is longer than {MAX_NAME_BYTES} bytes"),
        },
    )
}

/// Which sides hold the entry the walk is at.
enum Step {
    Old,
    New,
    Both,
}

/// Adds to `out` what differs below `prefix` between `from` and `to` (a
/// missing side is an empty tree), `depth` folders down.
fn walk(
    repos: (&Repository, &Repository),
    from: Option<&Tree<'_>>,
    to: Option<&Tree<'_>>,
    prefix: &mut Vec<u8>,
    depth: usize,
    out: &mut Listing,
) -> Result<(), GitError> {
    if depth > MAX_DEPTH {
        return Err(refused(
            prefix,
            format!("folders are nested more than {MAX_DEPTH} deep"),
        ));
    }
    let open = |tree| Cursor::new(tree).map_err(|why| malformed(prefix, why));
    let (mut old, mut new) = (open(from)?, open(to)?);
    loop {
        // Each turn reads one entry on a side, or one on each.
        out.left.entries = out.left.entries.checked_sub(2).ok_or_else(|| {
            refused(
                prefix,
                format!(
                    "the diff reads more than {} tree entries",
                    out.budget.entries
                ),
            )
        })?;
        let step = match (old.peek(), new.peek()) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) => match a.git_order(b) {
                Ordering::Less => Step::Old,
                Ordering::Greater => Step::New,
                Ordering::Equal if a.id == b.id && a.mode == b.mode => {
                    old.advance()
                        .and_then(|()| new.advance())
                        .map_err(|why| malformed(prefix, why))?;
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
        if entry.is_tree() {
            prefix.push(b'/');
            // A folder's path is charged too: long names nested deep must
            // not grow the walk's own buffers unbounded.
            charge(out, prefix)?;
            let (a, b) = (subtree(repos.0, before)?, subtree(repos.1, after)?);
            walk(repos, a.as_ref(), b.as_ref(), prefix, depth + 1, out)?;
        } else {
            charge(out, prefix)?;
            out.paths
                .insert(String::from_utf8_lossy(prefix).into_owned());
        }
        prefix.truncate(len);
        match step {
            Step::Old => old.advance(),
            Step::New => new.advance(),
            Step::Both => old.advance().and_then(|()| new.advance()),
        }
        .map_err(|why| malformed(prefix, why))?;
    }
}

/// Takes `path`'s bytes from what is left of the budget.
fn charge(out: &mut Listing, path: &[u8]) -> Result<(), GitError> {
    out.left.bytes = out.left.bytes.checked_sub(path.len()).ok_or_else(|| {
        refused(
            path,
            format!(
                "the diff lists more than {} MiB of paths",
                out.budget.bytes >> 20
            ),
        )
    })?;
    Ok(())
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

    /// The diff of `a` and `b` with the default budget.
    fn diff(repo: &Repository, a: &Tree<'_>, b: &Tree<'_>) -> Result<BTreeSet<String>, GitError> {
        changed_paths((repo, Some(a)), (repo, Some(b)), Budget::DEFAULT)
    }

    /// Comparing trees `a` and `b` is refused in both directions, saying
    /// `why`.
    fn assert_refused(repo: &Repository, a: Oid, b: Oid, why: &str) {
        let (a, b) = (repo.find_tree(a).unwrap(), repo.find_tree(b).unwrap());
        for (x, y) in [(&a, &b), (&b, &a)] {
            assert_refusal(diff(repo, x, y), why);
        }
    }

    /// `result` is a refusal saying `why`.
    #[track_caller]
    fn assert_refusal(result: Result<BTreeSet<String>, GitError>, why: &str) {
        match result {
            Err(GitError::Refused { reason }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("not refused: {other:?}"),
        }
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
                let ours = diff(&repo, from, to).unwrap();
                assert_eq!(ours, expected, "{files:?}");
            }
            // The head read through a second handle, as pull request events do.
            let head_there = other.find_tree(head_id).unwrap();
            let ours = changed_paths(
                (&repo, Some(&base)),
                (&other, Some(&head_there)),
                Budget::DEFAULT,
            )
            .unwrap();
            assert_eq!(ours, expected, "{files:?}");
        }
    }

    #[test]
    fn a_tree_out_of_git_order_is_refused() {
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
        assert_refused(&repo, base, unsorted, "not in git's order");
    }

    #[test]
    fn a_name_longer_than_a_file_system_allows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"x").unwrap();
        let name = "n".repeat(MAX_NAME_BYTES + 1);
        let long = hand_written(&repo, &[("100644", &name, blob)]);
        let base = tree(&repo, &[("a", "a")]);
        assert_refused(&repo, base, long, "longer than 4096 bytes");
    }

    #[test]
    fn a_name_holding_a_slash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let policies = tree(&repo, &[("a.yaml", "policy")]);
        // `policies/` naming the same folder as `policies`: compared as
        // equal, it would hide that `policies` is gone.
        let slashed = hand_written(&repo, &[("40000", "policies/", policies)]);
        let base = tree(&repo, &[("policies/a.yaml", "policy")]);
        assert_refused(&repo, base, slashed, "holds `/`");
    }

    #[test]
    fn a_tree_nested_deeper_than_the_walk_goes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let nested = |levels: usize| {
            let mut id = tree(&repo, &[("leaf", "x")]);
            for _ in 0..levels {
                let mut builder = repo.treebuilder(None).unwrap();
                builder.insert("d", id, FileMode::Tree.into()).unwrap();
                id = builder.write().unwrap();
            }
            id
        };
        let empty = tree(&repo, &[]);
        let (empty_tree, within) = (
            repo.find_tree(empty).unwrap(),
            repo.find_tree(nested(MAX_DEPTH)).unwrap(),
        );
        assert_eq!(diff(&repo, &empty_tree, &within).unwrap().len(), 1);
        assert_refused(
            &repo,
            empty,
            nested(MAX_DEPTH + 1),
            "nested more than 256 deep",
        );
    }

    /// A tree of a few KiB whose paths are a power of its depth: one subtree
    /// named `width` times on each level.
    fn bomb(repo: &Repository, width: usize, depth: usize) -> Oid {
        let mut id = tree(repo, &[("x", "x")]);
        for _ in 0..depth {
            let mut builder = repo.treebuilder(None).unwrap();
            for i in 0..width {
                builder
                    .insert(format!("{i}"), id, FileMode::Tree.into())
                    .unwrap();
            }
            id = builder.write().unwrap();
        }
        id
    }

    #[test]
    fn a_tree_bomb_is_refused_once_it_overruns_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let empty = repo.find_tree(tree(&repo, &[])).unwrap();
        let budget = Budget {
            entries: 60_000,
            bytes: 1 << 20,
        };
        let diff =
            |b: &Tree<'_>, budget| changed_paths((&repo, Some(&empty)), (&repo, Some(b)), budget);
        // 16^3 = 4,096 paths fit; 16^4 = 65,536 do not.
        let small = repo.find_tree(bomb(&repo, 16, 3)).unwrap();
        assert_eq!(diff(&small, budget).unwrap().len(), 4096);
        let large = repo.find_tree(bomb(&repo, 16, 4)).unwrap();
        assert_refusal(diff(&large, budget), "more than 60000 tree entries");
        // Short paths use the entries, long ones the bytes.
        let tight = Budget {
            entries: 100_000,
            bytes: 4096 * 8,
        };
        assert_refusal(diff(&small, tight), "more than 0 MiB of paths");
        // The server's own budget stops 1000^3 paths from a 60 KiB push.
        let huge = repo.find_tree(bomb(&repo, 1000, 3)).unwrap();
        assert!(matches!(
            changed_paths((&repo, Some(&empty)), (&repo, Some(&huge)), Budget::DEFAULT),
            Err(GitError::Refused { .. })
        ));
    }
}
