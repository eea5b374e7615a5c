//! Reading change sets and policies from git objects (never a working tree).

mod diff;
pub mod touched;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;

use git2::{ObjectType, Repository, Tree, TreeWalkMode, TreeWalkResult};

use diff::Budget;

use crate::model::references::{bare_words, references};
use crate::model::{
    covered_paths, is_too_deep, load_change, load_repo_with_progress, too_deep, unreadable_path,
    ChangeChecker, ChangeIds, ChangeSet, CoveredPath, Diagnostic, Digest, Entry, RepoModel,
    SourceFile, TreeView, MAX_FILE_BYTES, MAX_FOLDER_ENTRIES, MAX_FOLDER_PATH_BYTES,
};

/// Change set files read from git by this process: what the persisted view
/// saves (`/metrics` shows it; a restart over an unmoved branch adds none).
static CHANGE_SETS_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many change set files this process has read from git.
pub fn change_sets_read() -> u64 {
    CHANGE_SETS_READ.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_reads(n: usize) {
    CHANGE_SETS_READ.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Why the repository or revision could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No git repository at or above the path.
    #[error("{path} is not inside a git repository")]
    NotARepository {
        /// The path given.
        path: String,
    },
    /// The revision does not name a commit.
    #[error("unknown revision `{rev}`: {message}")]
    UnknownRev {
        /// The rev-spec given.
        rev: String,
        /// git's explanation.
        message: String,
    },
    /// Fetching the remote failed; `reason` is `auth`, `tls`,
    /// `unreachable` or `other`.
    #[error("fetching {remote} failed ({reason}): {message}")]
    Fetch {
        /// The remote's URL (it never holds a credential).
        remote: String,
        /// The kind of failure.
        reason: &'static str,
        /// libgit2's account of the remote's answer.
        message: String,
    },
    /// Any other libgit2 failure.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// Writing a covered file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A covered path does not hold the covered blob at this commit.
    #[error("`{path}` at {commit} is not the covered blob {blob}")]
    NotCovered {
        /// The path.
        path: String,
        /// The commit read.
        commit: String,
        /// The blob the digest covers.
        blob: String,
    },
    /// The commit has no `changes/<id>.yaml`.
    #[error("no change `{id}` at {commit}")]
    NoSuchChange {
        /// The change id asked for.
        id: String,
        /// The commit read.
        commit: String,
    },
    /// A tree that git itself refuses, or one that would cost too much to
    /// read (a tree bomb): nothing is read from it. Retrying cannot help.
    #[error("tree refused: {reason}")]
    Refused {
        /// What is wrong, and where.
        reason: String,
    },
    /// The change set does not pass `validate`.
    #[error("change `{id}` at {commit} is not valid:\n{}", .problems.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    InvalidChange {
        /// The change id.
        id: String,
        /// The commit read.
        commit: String,
        /// What is wrong, with positions.
        problems: Vec<Diagnostic>,
    },
}

/// How this process reads git objects, set once before any git work, from
/// one thread (these are libgit2's global options):
/// - parsed trees of any size stay in each open repository's object cache
///   (by default only trees under 4 KiB do, so a `changes/` folder of
///   100,000 entries, several MiB, was parsed again on every lookup), with
///   the cache's total capped at 64 MiB;
/// - objects are not re-hashed on every read. libgit2 checks each one with
///   collision-detecting SHA-1 each time it is read, which was a third of
///   a pull request event's git work at 100,000 change sets. Objects were
///   checked when they were fetched (the pack indexer hashes each one),
///   digests are built from object ids, and every blob whose bytes are
///   used (a change set, a policy, what a step runs) is checked against
///   its id with plain SHA-1 (`Snapshot::source_file`, `materialize`).
pub fn init_object_reads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: libgit2 global options, set once, before any git work
        // and (from `main`) before any other thread exists. The cache is
        // per open repository; its total is bounded across all of them
        // (the mirror stays open: `Mirror::read`).
        unsafe {
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Tree, 32 << 20);
            // git2 has no wrapper for the total; libgit2's default is 256 MiB.
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as libc::c_int,
                (64 << 20) as libc::ssize_t,
            );
        }
    });
}

/// A git repository holding `changes/` and `policies/`.
pub struct ChangeRepo {
    repo: Repository,
}

impl ChangeRepo {
    /// Opens the repository containing `dir` (a work tree or a bare repository).
    pub fn open(dir: &Path) -> Result<Self, GitError> {
        Repository::discover(dir)
            .map(|repo| ChangeRepo { repo })
            .map_err(|_| GitError::NotARepository {
                path: dir.display().to_string(),
            })
    }

    /// The commit named by `rev` (any rev-spec: `HEAD`, a branch, a sha).
    pub fn at(&self, rev: &str) -> Result<Snapshot<'_>, GitError> {
        let commit = self
            .repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| GitError::UnknownRev {
                rev: rev.to_string(),
                message: e.message().to_string(),
            })?;
        Ok(Snapshot {
            repo: &self.repo,
            commit_id: commit.id().to_string(),
            tree: commit.tree()?,
            entries: RefCell::default(),
            dirs: RefCell::default(),
            listings: RefCell::default(),
            cached: Cell::new(0),
            listed: Cell::new(0),
            over_budget: Cell::new(false),
        })
    }

    /// Every path that differs between the trees of commits `from` and
    /// `to` (added, removed or changed; both sides of a rename). Subtrees
    /// with the same id are skipped, so this costs what moved ([`diff`]).
    pub fn changed_paths(&self, from: &str, to: &str) -> Result<BTreeSet<String>, GitError> {
        self.changed_paths_to(from, self, to)
    }

    /// [`ChangeRepo::changed_paths`] with commit `to` read through another
    /// handle on the same repository (see [`ChangeRepo::reopen`]).
    pub fn changed_paths_to(
        &self,
        from: &str,
        other: &ChangeRepo,
        to: &str,
    ) -> Result<BTreeSet<String>, GitError> {
        fn tree<'r>(repo: &'r Repository, rev: &str) -> Result<Tree<'r>, GitError> {
            Ok(repo.revparse_single(rev)?.peel_to_commit()?.tree()?)
        }
        let (old, new) = (tree(&self.repo, from)?, tree(&other.repo, to)?);
        diff::changed_paths(
            (&self.repo, Some(&old)),
            (&other.repo, Some(&new)),
            Budget::DEFAULT,
        )
    }

    /// Another handle on this repository, with an object cache of its own:
    /// for reading commits whose trees will not be read again (a pull
    /// request's head), so that they do not push the default branch's
    /// parsed trees out of this handle's cache. Dropping it frees them.
    pub fn reopen(&self) -> Result<ChangeRepo, GitError> {
        Ok(ChangeRepo {
            repo: Repository::open(self.repo.path())?,
        })
    }

    /// The commits after `base` up to `tip` (at most
    /// [`AUTHOR_HISTORY_LIMIT`]): for each, the paths it changed against its
    /// first parent and its author's and committer's emails.
    pub fn commits_between(&self, base: &str, tip: &str) -> Result<Vec<CommitTouch>, GitError> {
        let mut walk = self.repo.revwalk()?;
        walk.push(git2::Oid::from_str(tip)?)?;
        walk.hide(git2::Oid::from_str(base)?)?;
        let mut out = Vec::new();
        for oid in walk.take(AUTHOR_HISTORY_LIMIT) {
            let commit = self.repo.find_commit(oid?)?;
            let parent = commit.parents().next().map(|p| p.id().to_string());
            let paths = match parent {
                Some(parent) => self.changed_paths(&parent, &commit.id().to_string())?,
                None => BTreeSet::new(),
            };
            let emails = [commit.author().email(), commit.committer().email()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            out.push((paths, emails));
        }
        Ok(out)
    }

    /// Whether commit `descendant` has `ancestor` in its history (or is it).
    pub fn descends_from(&self, descendant: &str, ancestor: &str) -> Result<bool, GitError> {
        let (d, a) = (
            git2::Oid::from_str(descendant)?,
            git2::Oid::from_str(ancestor)?,
        );
        Ok(d == a || self.repo.graph_descendant_of(d, a)?)
    }

    /// The underlying libgit2 repository.
    pub fn git(&self) -> &Repository {
        &self.repo
    }
}

/// The tree of one commit.
pub struct Snapshot<'r> {
    repo: &'r Repository,
    commit_id: String,
    tree: Tree<'r>,
    /// Lookups by path. Every lookup re-reads each tree object on the way,
    /// so without this, 10,000 change sets running the same scripts would
    /// re-parse the 10,000-entry `changes/` tree once per command.
    entries: RefCell<HashMap<String, Option<Entry>>>,
    /// Folders looked up so far, parsed ([`Snapshot::dir`]).
    dirs: RefCell<HashMap<String, Option<Tree<'r>>>>,
    /// Folder listings by tree id ([`Snapshot::listing`]): many change
    /// sets may cover one folder, and many names may hold one tree. At
    /// most [`MAX_CACHED_ENTRIES`] entries in all.
    listings: RefCell<HashMap<git2::Oid, Rc<Listing>>>,
    /// Entries in `listings`.
    cached: Cell<usize>,
    /// Entries walked and listed to change sets so far, against
    /// [`MAX_SNAPSHOT_FOLDER_ENTRIES`].
    listed: Cell<usize>,
    /// Whether a change set was refused for that budget.
    over_budget: Cell<bool>,
}

/// The entries below one folder, pre-order, with paths relative to it; or
/// why they cannot all be listed.
type Listing = Result<Vec<(String, ListedKind)>, Unlisted>;

/// Why a folder's entries cannot all be listed (paths relative to it).
#[derive(Debug)]
enum Unlisted {
    UnsafeName {
        root: String,
        name: String,
    },
    TooMany,
    TooLong,
    TooDeep(String),
    Unreadable(String),
    /// More entries than the walk was allowed (the read's budget).
    OverCap,
}

/// At most this many entries are kept in one snapshot's listing cache;
/// past it, folders are walked again (and charged again) each time.
const MAX_CACHED_ENTRIES: usize = 1_000_000;

impl Unlisted {
    /// The reason, for folder `dir`.
    fn explain(&self, dir: &str) -> String {
        match self {
            // git refuses to check these out; a path through one would
            // leave the folder a step runs in (`inc/../../x`).
            Unlisted::UnsafeName { root, name } => format!(
                "`{dir}/{root}` holds an entry named `{}`, which no checkout may hold",
                name.escape_debug()
            ),
            Unlisted::TooMany => format!(
                "the folders the change covers, up to `{dir}`, hold more than {MAX_FOLDER_ENTRIES} files and folders"
            ),
            Unlisted::TooLong => format!(
                "the paths below `{dir}` run past {} MiB",
                MAX_FOLDER_PATH_BYTES >> 20
            ),
            Unlisted::TooDeep(below) => too_deep(&format!("{dir}/{below}")),
            Unlisted::Unreadable(e) => format!("`{dir}` cannot be read: {e}"),
            Unlisted::OverCap => over_snapshot_budget(dir),
        }
    }
}

#[derive(Debug, Clone)]
enum ListedKind {
    Folder,
    /// A blob: its git mode and id ([`file_entry`] makes the entry).
    File(i32, git2::Oid),
    /// A submodule or anything else that is not a file: not listed.
    Other,
}

fn over_snapshot_budget(dir: &str) -> String {
    format!(
        "the folders that this commit's change sets cover hold more than {MAX_SNAPSHOT_FOLDER_ENTRIES} files and folders in all, up to `{dir}`"
    )
}

/// At most this many entries are listed below covered folders for all the
/// change sets of one commit together. [`MAX_FOLDER_ENTRIES`] bounds one
/// change set; without this, N change sets covering one large folder
/// (free to push: each is a few bytes) would cost N times its walk. At
/// 100,000 change sets, each may still cover 80 entries (each is listed
/// twice: to validate and to digest).
pub const MAX_SNAPSHOT_FOLDER_ENTRIES: usize = 16_000_000;

/// At most this many bytes of files are read from one folder at once
/// ([`Snapshot::files_in`]): `changes/` at 100,000 change sets holds about
/// 50 MiB.
pub const MAX_FOLDER_FILE_BYTES: usize = 256 << 20;

impl<'r> Snapshot<'r> {
    /// The full commit id, hex.
    pub fn commit_id(&self) -> &str {
        &self.commit_id
    }

    /// The blobs directly in folder `dir` (not below it), sorted by name;
    /// refused past [`MAX_FOLDER_FILE_BYTES`] in all.
    pub fn files_in(&self, dir: &str) -> Result<Vec<SourceFile>, GitError> {
        let Ok(entry) = self.tree.get_path(Path::new(dir)) else {
            return Ok(Vec::new());
        };
        let Ok(subtree) = entry.to_object(self.repo)?.peel_to_tree() else {
            return Ok(Vec::new());
        };
        let (mut files, mut held) = (Vec::new(), 0usize);
        let mut known = self.entries.borrow_mut();
        for entry in subtree
            .iter()
            .filter(|e| e.kind() == Some(ObjectType::Blob))
        {
            // Each file is at most 1 MiB, but a folder can name one blob
            // as often as it likes, and these are all held at once.
            if held > MAX_FOLDER_FILE_BYTES {
                return Err(GitError::Refused {
                    reason: format!(
                        "the files in `{dir}` hold more than {} MiB",
                        MAX_FOLDER_FILE_BYTES >> 20
                    ),
                });
            }
            let path = format!("{dir}/{}", String::from_utf8_lossy(entry.name_bytes()));
            known.insert(
                path.clone(),
                file_entry(ObjectType::Blob, entry.filemode_raw(), entry.id()),
            );
            let file = self.source_file(path, entry.id())?;
            held += file.bytes.len();
            files.push(file);
        }
        Ok(files)
    }

    /// The valid policies at this commit, without reading any change set.
    pub fn policies(&self) -> Result<Vec<crate::model::Policy>, GitError> {
        Ok(self.policy_model()?.policies)
    }

    /// The policies at this commit and their errors, without reading any
    /// change set.
    pub fn policy_model(&self) -> Result<RepoModel, GitError> {
        Ok(crate::model::load_policies(&self.files_in("policies")?))
    }

    /// The ids of every change set file at this commit, without reading them.
    pub fn change_ids(&self) -> BTreeSet<String> {
        self.changes_dir().all().into_iter().collect()
    }

    /// `changes/` at this commit, to look change set files up by name.
    fn changes_dir(&self) -> ChangesDir<'r> {
        ChangesDir(self.dir("changes"))
    }

    /// Folder `dir` (`""` for the root) at this commit, parsed once: every
    /// lookup by path below it is then a binary search per level, where
    /// `get_path` parses each tree on the way again (a `changes/` of
    /// 100,000 entries is megabytes).
    fn dir(&self, dir: &str) -> Option<Tree<'r>> {
        if dir.is_empty() {
            return Some(self.tree.clone());
        }
        if let Some(known) = self.dirs.borrow().get(dir) {
            return known.clone();
        }
        // Checked once per path: only paths that pass are cached.
        if unreadable_path(dir).is_some() {
            return None;
        }
        let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
        let tree = self.dir(parent).and_then(|p| {
            let entry = named(&p, name)?;
            (entry.kind() == Some(ObjectType::Tree)).then_some(())?;
            entry.to_object(self.repo).ok()?.into_tree().ok()
        });
        self.dirs.borrow_mut().insert(dir.to_string(), tree.clone());
        tree
    }

    /// Changes `ids` at this commit, each read and checked on its own as
    /// [`Snapshot::change`] does, listing `changes/` once for all of them.
    pub fn changes_by_id<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Result<ChangeAt, GitError>> {
        let dir = self.changes_dir();
        ids.into_iter()
            .map(|id| (id.clone(), self.change_among(id, &dir)))
            .collect()
    }

    /// Every change set and policy at this commit, checked.
    pub fn load_model(&self) -> Result<RepoModel, GitError> {
        self.load_model_with_progress(&mut |_, _| {})
    }

    /// [`Snapshot::load_model`], reporting `progress(done, total)` as it goes.
    pub fn load_model_with_progress(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RepoModel, GitError> {
        let changes = self.files_in("changes")?;
        count_reads(changes.len());
        let policies = self.files_in("policies")?;
        Ok(load_repo_with_progress(&changes, &policies, self, progress))
    }

    /// Checks every change set file at this commit one at a time, handing
    /// each valid one to `keep` as soon as it is checked, so that neither
    /// every file nor every model is held at once (the server keeps change
    /// sets packed); returns every problem found, dependency cycles
    /// included. Calls `progress(done, total)` as it goes.
    pub fn check_changes(
        &self,
        progress: &mut dyn FnMut(usize, usize),
        keep: &mut dyn FnMut(ChangeSet),
    ) -> Result<Vec<Diagnostic>, GitError> {
        let dir = self.changes_dir();
        let Some(subtree) = dir.0.clone() else {
            return Ok(Vec::new());
        };
        let blobs = || {
            subtree
                .iter()
                .filter(|e| e.kind() == Some(ObjectType::Blob))
        };
        let total = blobs().count();
        let mut checker = ChangeChecker::new(&dir, self);
        for entry in blobs() {
            count_reads(1);
            let path = format!("changes/{}", String::from_utf8_lossy(entry.name_bytes()));
            self.entries.borrow_mut().insert(
                path.clone(),
                file_entry(ObjectType::Blob, entry.filemode_raw(), entry.id()),
            );
            if let Some(change) = checker.check(&self.source_file(path, entry.id())?) {
                keep(change);
            }
            if checker.files % 1000 == 0 && checker.files > 0 {
                progress(checker.files, total);
            }
        }
        Ok(checker.finish())
    }
}

/// One commit's changed paths and its author's and committer's emails.
pub type CommitTouch = (BTreeSet<String>, Vec<String>);

/// Names git refuses to check out: `.`, `..`, and `.git` in any case.
fn is_unsafe_name(name: &str) -> bool {
    name.is_empty() || name == "." || name == ".." || name.eq_ignore_ascii_case(".git")
}

/// The entry `name` in `tree`. A name no git tree can hold (one with a NUL
/// byte, which makes libgit2's lookup panic) is simply not there.
fn named<'t>(tree: &'t Tree<'_>, name: &str) -> Option<git2::TreeEntry<'t>> {
    if name.contains('\0') {
        return None;
    }
    tree.get_name(name)
}

/// `changes/` at one commit: ids are looked up by name (a binary search in
/// the tree), so checking one change set's `depends_on` does not list
/// 100,000 others.
struct ChangesDir<'r>(Option<Tree<'r>>);

impl ChangeIds for ChangesDir<'_> {
    fn contains(&self, id: &str) -> bool {
        self.0.as_ref().is_some_and(|t| {
            named(t, &format!("{id}.yaml")).is_some_and(|e| e.kind() == Some(ObjectType::Blob))
        })
    }

    fn all(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|t| t.iter())
            .filter(|e| e.kind() == Some(ObjectType::Blob))
            .filter_map(|e| {
                let name = String::from_utf8_lossy(e.name_bytes());
                name.strip_suffix(".yaml").map(str::to_string)
            })
            .collect()
    }
}

/// One change set read on its own, with what its digest covers.
pub struct ChangeAt {
    /// The checked change set.
    pub change: ChangeSet,
    /// Every path the digest covers, with its blob.
    pub covered: Vec<CoveredPath>,
    /// The digest of `covered`.
    pub digest: Digest,
}

impl Snapshot<'_> {
    /// Change `id` at this commit, read and checked on its own, with its
    /// covered paths and digest: the one way the CLI computes a digest.
    /// Only `changes/<id>.yaml` and the files it covers are read.
    pub fn change(&self, id: &str) -> Result<ChangeAt, GitError> {
        self.change_among(id, &self.changes_dir())
    }

    /// [`Snapshot::change`] against `change_ids`, the ids at this commit.
    fn change_among(&self, id: &str, change_ids: &dyn ChangeIds) -> Result<ChangeAt, GitError> {
        let missing = || GitError::NoSuchChange {
            id: id.to_string(),
            commit: self.commit_id.clone(),
        };
        let path = format!("changes/{id}.yaml");
        let Some(blob) = self
            .entry(&path)
            .and_then(|e| e.file_blob().map(str::to_string))
        else {
            return Err(missing());
        };
        let file = self.source_file(path, git2::Oid::from_str(&blob)?)?;
        count_reads(1);
        let invalid = |problems| GitError::InvalidChange {
            id: id.to_string(),
            commit: self.commit_id.clone(),
            problems,
        };
        let change = load_change(&file, change_ids, self).map_err(invalid)?;
        let covered = covered_paths(&change, self).map_err(|message| {
            invalid(vec![Diagnostic {
                path: format!("changes/{id}.yaml"),
                line: 1,
                column: 1,
                message,
            }])
        })?;
        Ok(ChangeAt {
            digest: Digest::of(&covered),
            change,
            covered,
        })
    }
}

/// git's mode for a symbolic link.
const LINK_MODE: i32 = 0o120000;
/// git's mode for an executable file (libgit2 reads any mode with an
/// execute bit as this one).
const EXECUTABLE_MODE: i32 = 0o100755;

/// What a tree entry of `kind` under git mode `mode` (raw, as the tree
/// holds it: libgit2's `filemode()` reads any mode with an execute bit as
/// 100755, `120755` too) is.
fn file_entry(kind: ObjectType, mode: i32, id: git2::Oid) -> Option<Entry> {
    match kind {
        ObjectType::Blob => Some(match mode {
            LINK_MODE => Entry::Link(id.to_string()),
            EXECUTABLE_MODE => Entry::Executable(id.to_string()),
            // 100664: written by early versions of git; git reads it as 100644.
            0o100644 | 0o100664 => Entry::Blob(id.to_string()),
            odd => Entry::OddMode(odd),
        }),
        ObjectType::Tree => Some(Entry::Tree),
        _ => None,
    }
}

impl TreeView for Snapshot<'_> {
    fn file_text(&self, path: &str) -> Option<String> {
        self.text(path)
    }

    fn entry(&self, path: &str) -> Option<Entry> {
        if let Some(known) = self.entries.borrow().get(path) {
            return known.clone();
        }
        // Each folder on the way is a frame of `dir`; only paths that pass
        // are cached.
        if unreadable_path(path).is_some() {
            return None;
        }
        let trimmed = path.trim_end_matches('/');
        let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        let entry = self
            .dir(parent)
            .and_then(|t| named(&t, name).map(|e| (e.kind(), e.filemode_raw(), e.id())))
            .and_then(|(kind, mode, id)| file_entry(kind?, mode, id));
        self.entries
            .borrow_mut()
            .insert(path.to_string(), entry.clone());
        entry
    }

    fn blobs_under(&self, dir: &str, budget: &mut usize) -> Result<Vec<(String, Entry)>, String> {
        let Some(subtree) = self.dir(dir.trim_end_matches('/')) else {
            return Ok(Vec::new());
        };
        // Checked before any walk: once either budget is spent, a folder
        // costs nothing more to refuse.
        let left = MAX_SNAPSHOT_FOLDER_ENTRIES - self.listed.get();
        let listing = self.listing(&subtree, (*budget).min(left));
        let listing = match listing.as_ref() {
            Ok(listing) => listing,
            Err(Unlisted::OverCap) if left <= *budget => return Err(self.refuse_over_budget(dir)),
            Err(Unlisted::OverCap) => return Err(Unlisted::TooMany.explain(dir)),
            Err(why) => return Err(why.explain(dir)),
        };
        // A cached listing is charged again for each change set it serves.
        if listing.len() > *budget {
            return Err(Unlisted::TooMany.explain(dir));
        }
        if listing.len() > left {
            return Err(self.refuse_over_budget(dir));
        }
        *budget -= listing.len();
        self.listed.set(self.listed.get() + listing.len());
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (below, kind) in listing {
            let path = format!("{dir}/{below}");
            bytes += path.len();
            if bytes > MAX_FOLDER_PATH_BYTES {
                return Err(Unlisted::TooLong.explain(dir));
            }
            if is_too_deep(&path) {
                return Err(too_deep(&path));
            }
            if let ListedKind::File(mode, id) = kind {
                if let Some(e) = file_entry(ObjectType::Blob, *mode, *id) {
                    out.push((path, e));
                }
            }
        }
        Ok(out)
    }
}

impl<'r> Snapshot<'r> {
    /// Whether a change set read from this snapshot was refused because
    /// the read as a whole ran past [`MAX_SNAPSHOT_FOLDER_ENTRIES`]: what
    /// was read after that depends on the order of reading.
    pub fn over_budget(&self) -> bool {
        self.over_budget.get()
    }

    fn refuse_over_budget(&self, dir: &str) -> String {
        self.over_budget.set(true);
        over_snapshot_budget(dir)
    }

    /// Every entry below `tree`, read from git once per tree id while the
    /// cache has room. A walk stops past `cap` entries ([`Unlisted::OverCap`],
    /// not cached); every entry walked is charged to the read's budget.
    fn listing(&self, tree: &Tree<'r>, cap: usize) -> Rc<Listing> {
        if let Some(known) = self.listings.borrow().get(&tree.id()) {
            return known.clone();
        }
        let (mut out, mut bytes, mut refused) = (Vec::new(), 0usize, None);
        // Pre-order: a folder is seen, and can be refused, before libgit2
        // descends into it (its walk recurses once per folder). Each bound
        // below holds for the relative paths, so it holds for the full
        // ones too: the caller checks those again.
        let walked = tree.walk(TreeWalkMode::PreOrder, |root, entry| {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{root}{name}");
            refused = if is_unsafe_name(&name) {
                Some(Unlisted::UnsafeName {
                    root: root.to_string(),
                    name: name.to_string(),
                })
            } else if out.len() == cap {
                Some(Unlisted::OverCap)
            } else if bytes + path.len() > MAX_FOLDER_PATH_BYTES {
                Some(Unlisted::TooLong)
            } else if is_too_deep(&path) {
                Some(Unlisted::TooDeep(path.clone()))
            } else {
                None
            };
            if refused.is_some() {
                return TreeWalkResult::Abort;
            }
            bytes += path.len();
            let kind = match entry.kind() {
                Some(ObjectType::Tree) => ListedKind::Folder,
                Some(ObjectType::Blob) => ListedKind::File(entry.filemode_raw(), entry.id()),
                _ => ListedKind::Other,
            };
            out.push((path, kind));
            TreeWalkResult::Ok
        });
        let walked_entries = out.len();
        let listing = match (refused, walked) {
            (Some(why), _) => Err(why),
            // A tree that cannot be read must not list as fewer files.
            (None, Err(e)) => Err(Unlisted::Unreadable(e.message().to_string())),
            (None, Ok(())) => Ok(out),
        };
        let listing = Rc::new(listing);
        match listing.as_ref() {
            // The caller charges what it lists; a cap depends on the
            // caller, so such a walk is neither kept nor listed.
            Ok(_) => {}
            Err(Unlisted::OverCap) => {
                self.listed.set(self.listed.get() + walked_entries);
                return listing;
            }
            Err(_) => self.listed.set(self.listed.get() + walked_entries),
        }
        let size = listing.as_ref().as_ref().map_or(1, Vec::len);
        if self.cached.get() + size <= MAX_CACHED_ENTRIES {
            self.cached.set(self.cached.get() + size);
            self.listings
                .borrow_mut()
                .insert(tree.id(), listing.clone());
        }
        listing
    }
}

impl Snapshot<'_> {
    /// Writes exactly the `covered` blobs of this commit below `dest`, with
    /// git's file modes (0755 for executables, 0644 otherwise) and private
    /// folders (0700): the world a step runs in (SPEC §11).
    pub fn materialize(&self, covered: &[CoveredPath], dest: &Path) -> Result<(), GitError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o700);
        for c in covered {
            // Only plain names: a tree can name an entry `..` (libgit2
            // looks it up like any other), and joined to `dest` it would
            // write outside it.
            let relative = Path::new(&c.path);
            if !relative
                .components()
                .all(|p| matches!(p, std::path::Component::Normal(n) if !is_unsafe_name(&n.to_string_lossy())))
            {
                return Err(GitError::Refused {
                    reason: format!("`{}` does not stay inside the checkout", c.path),
                });
            }
            let entry = self.tree.get_path(relative)?;
            let as_approved = match file_entry(ObjectType::Blob, entry.filemode_raw(), entry.id()) {
                Some(Entry::Blob(_)) => !c.executable,
                Some(Entry::Executable(_)) => c.executable,
                _ => false,
            };
            if entry.id().to_string() != c.blob || !as_approved {
                return Err(GitError::NotCovered {
                    path: c.path.clone(),
                    commit: self.commit_id.clone(),
                    blob: c.blob.clone(),
                });
            }
            let blob = self.repo.find_blob(entry.id())?;
            // The bytes written are the approved blob: checked against its
            // id here (exec turns libgit2's slower per-read check off).
            if blob_id(blob.content()) != c.blob {
                return Err(GitError::NotCovered {
                    path: c.path.clone(),
                    commit: self.commit_id.clone(),
                    blob: c.blob.clone(),
                });
            }
            let path = dest.join(&c.path);
            if let Some(parent) = path.parent() {
                dirs.create(parent).map_err(|e| io_error(&path, e))?;
            }
            // The mode the digest bound, which the check above made git's.
            let mode = if c.executable { 0o755 } else { 0o644 };
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut f| f.write_all(blob.content()))
                .map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }
}

impl Snapshot<'_> {
    /// The text of the blob at `path`, if it is UTF-8 and under 1 MiB. The
    /// lookup goes through the entry cache: a path under a 10,000-entry
    /// folder would otherwise re-parse that folder's tree on every read.
    fn text(&self, path: &str) -> Option<String> {
        let entry = self.entry(path)?;
        let file = self
            .source_file(
                path.to_string(),
                git2::Oid::from_str(entry.file_blob()?).ok()?,
            )
            .ok()?;
        if file.oversize.is_some() {
            return None;
        }
        String::from_utf8(file.bytes).ok()
    }

    /// A blob's bytes, checked against its id. libgit2 does not re-hash
    /// what it reads ([`init_object_reads`]), and what a change set or a
    /// policy says must be exactly what its digest names: a blob whose
    /// bytes were replaced on disk under the same id is refused, as
    /// `materialize` refuses one for a step.
    /// The file `path` holding blob `id`, its bytes checked against the id;
    /// a blob over [`MAX_FILE_BYTES`] is not read at all (its size comes
    /// from the object's header): a few KiB of compressed zeros can hold
    /// gigabytes, and a folder can name one blob a thousand times.
    fn source_file(&self, path: String, id: git2::Oid) -> Result<SourceFile, GitError> {
        let (size, _) = self.repo.odb()?.read_header(id)?;
        if size > MAX_FILE_BYTES {
            return Ok(SourceFile::oversize(path, size, id.to_string()));
        }
        let blob = self.repo.find_blob(id)?;
        checked(&blob)?;
        Ok(SourceFile::new(path, blob.content()))
    }

    /// `validate`'s warnings (SPEC §11): where a covered script, or a step
    /// command, refers to a file in the repository that the change's
    /// digest does not cover, so the step would not find it. Each names
    /// the `include` entry that would cover it.
    pub fn uncovered_warnings(&self, model: &RepoModel) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let mut read_refs = HashMap::new();
        for change in model.changes.values() {
            let Ok(covered) = covered_paths(change, self) else {
                continue;
            };
            let covered: BTreeSet<&str> = covered.iter().map(|c| c.path.as_str()).collect();
            let own = format!("changes/{}.yaml", change.id);
            let exists = |p: &str| self.entry(p).is_some_and(|e| e.file_blob().is_some());
            let include = |p: &str| match p.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => p.to_string(),
            };
            // Read only when a warning needs a position in it.
            let mut own_text: Option<String> = None;
            for step in &change.steps {
                for (_, command) in step.commands() {
                    for (_, word) in bare_words(command) {
                        if covered.contains(word) || !exists(word) {
                            continue;
                        }
                        let text =
                            own_text.get_or_insert_with(|| self.text(&own).unwrap_or_default());
                        let (line, column) = position_of(text, word);
                        out.push(Diagnostic {
                            path: own.clone(),
                            line,
                            column,
                            message: format!("step `{}` names `{word}` without `./`, so the digest does not cover it and the step will not find it; write `./{word}`, or add `include: [{}]`", step.id, include(word)),
                        });
                    }
                }
            }
            for script in covered.iter().filter(|p| **p != own) {
                // Many changes run the same scripts: read each once.
                let refs = read_refs.entry(script.to_string()).or_insert_with(|| {
                    self.text(script)
                        .map(|text| references(&text, Some(script)))
                        .unwrap_or_default()
                });
                for r in refs.iter() {
                    if covered.contains(r.path.as_str()) || !exists(&r.path) {
                        continue;
                    }
                    out.push(Diagnostic {
                        path: script.to_string(),
                        line: r.line,
                        column: r.column,
                        message: format!("`{script}` refers to `{}`, which the digest of `{}` does not cover, so the step will not find it; add `include: [{}]` to {own}", r.path, change.id, include(&r.path)),
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.path, a.line, a.column, &a.message).cmp(&(&b.path, b.line, b.column, &b.message))
        });
        out.dedup();
        out
    }
}

/// 1-based (line, column) of the first `word` in `text`, else (1, 1).
fn position_of(text: &str, word: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(n, line)| line.find(word).map(|c| (n + 1, c + 1)))
        .unwrap_or((1, 1))
}

/// Refuses a blob whose bytes do not hash to its id (see `source_file`).
fn checked(blob: &git2::Blob<'_>) -> Result<(), GitError> {
    let id = blob.id();
    if blob_id(blob.content()) != id.to_string() {
        tracing::error!(object = %id, "a git object does not match its id; refused");
        return Err(GitError::Git(git2::Error::from_str(&format!(
            "object {id} does not match its id"
        ))));
    }
    Ok(())
}

/// The git blob id of `content`: SHA-1 over `blob <len>\0` and the bytes.
pub fn blob_id(content: &[u8]) -> String {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}

fn io_error(path: &Path, source: std::io::Error) -> GitError {
    GitError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How far back authorship is looked for: older history is not read.
pub const AUTHOR_HISTORY_LIMIT: usize = 5_000;

impl Snapshot<'_> {
    /// For each change in `ids`, the author and committer emails of every
    /// commit reachable from this one that changed what it covers, by the
    /// rule a move uses too ([`RootIndex::covering`]: its own file, or a
    /// covered root that a path is or lies under, so a file added and
    /// removed inside an included folder counts). One walk of history
    /// serves all changes, and each commit costs the paths it touched.
    pub fn touching_emails(
        &self,
        roots: &crate::model::RootIndex,
        ids: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, GitError> {
        let mut out: BTreeMap<String, BTreeSet<String>> =
            ids.iter().map(|id| (id.clone(), BTreeSet::new())).collect();
        let mut walk = self.repo.revwalk()?;
        walk.push(git2::Oid::from_str(&self.commit_id)?)?;
        for oid in walk.take(AUTHOR_HISTORY_LIMIT) {
            let commit = self.repo.find_commit(oid?)?;
            let tree = commit.tree()?;
            let parent_tree = commit.parents().next().map(|p| p.tree()).transpose()?;
            let emails = [
                commit.author().email().map(str::to_string),
                commit.committer().email().map(str::to_string),
            ];
            let touched = match diff::changed_paths(
                (self.repo, parent_tree.as_ref()),
                (self.repo, Some(&tree)),
                Budget::DEFAULT,
            ) {
                Ok(paths) => roots.covering(&paths),
                // A commit too large or malformed to compare is counted as
                // touching every change: its author approves none of them.
                Err(GitError::Refused { reason }) => {
                    tracing::warn!(commit = %commit.id(), %reason, "a commit on the branch is counted as touching every change");
                    ids.clone()
                }
                Err(e) => return Err(e),
            };
            for id in touched {
                if let Some(known) = out.get_mut(&id) {
                    known.extend(emails.iter().flatten().cloned());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tree_under_many_names_is_walked_once_and_charged_per_listing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let blob = repo.blob(b"x\n").unwrap();
        let mut inner = repo.treebuilder(None).unwrap();
        for i in 0..10 {
            inner.insert(format!("{i}"), blob, 0o100644).unwrap();
        }
        let inner = inner.write().unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        for name in ["a", "b", "c"] {
            root.insert(name, inner, 0o040000).unwrap();
        }
        let root = repo.find_tree(root.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = repo
            .commit(Some("HEAD"), &sig, &sig, "three names", &root, &[])
            .unwrap();
        let changes = ChangeRepo::open(dir.path()).unwrap();
        let snapshot = changes.at(&commit.to_string()).unwrap();
        let mut budget = MAX_FOLDER_ENTRIES;
        for name in ["a", "b", "c", "a"] {
            let files = snapshot.blobs_under(name, &mut budget).unwrap();
            assert_eq!(files.len(), 10);
            assert_eq!(files[0].0, format!("{name}/0"));
        }
        assert_eq!(snapshot.listings.borrow().len(), 1, "one walk");
        assert_eq!(snapshot.listed.get(), 40, "four listings charged");
        assert_eq!(budget, MAX_FOLDER_ENTRIES - 40);
    }

    #[test]
    fn a_walk_stops_at_the_budget_left_and_none_starts_once_it_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let blob = repo.blob(b"x\n").unwrap();
        let folder = |n: usize| {
            let mut b = repo.treebuilder(None).unwrap();
            for i in 0..n {
                b.insert(format!("{i}"), blob, 0o100644).unwrap();
            }
            b.write().unwrap()
        };
        let (big, small) = (folder(10), folder(3));
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("big", big, 0o040000).unwrap();
        root.insert("small", small, 0o040000).unwrap();
        let root = repo.find_tree(root.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = repo
            .commit(Some("HEAD"), &sig, &sig, "two folders", &root, &[])
            .unwrap();
        let changes = ChangeRepo::open(dir.path()).unwrap();
        let snapshot = changes.at(&commit.to_string()).unwrap();
        // A change set with 5 entries left: the walk of `big` stops at the
        // sixth, is charged what it walked, and is not kept.
        let mut budget = 5;
        let refused = snapshot.blobs_under("big", &mut budget).unwrap_err();
        assert!(refused.contains("more than 100000"), "{refused}");
        assert_eq!(snapshot.listed.get(), 5);
        assert!(snapshot.listings.borrow().is_empty());
        assert!(!snapshot.over_budget());
        // With nothing left, no walk starts.
        let mut spent = 0;
        assert!(snapshot.blobs_under("small", &mut spent).is_err());
        assert_eq!(snapshot.listed.get(), 5);
        // The read's own budget: once it is spent, the read is marked.
        snapshot.listed.set(MAX_SNAPSHOT_FOLDER_ENTRIES - 2);
        let mut budget = MAX_FOLDER_ENTRIES;
        let refused = snapshot.blobs_under("small", &mut budget).unwrap_err();
        assert!(refused.contains("in all"), "{refused}");
        assert!(snapshot.over_budget());
        assert_eq!(snapshot.listed.get(), MAX_SNAPSHOT_FOLDER_ENTRIES);
    }
}
