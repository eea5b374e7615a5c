//! Reading change sets and policies from git objects (never a working tree).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use git2::{ObjectType, Repository, Tree, TreeWalkMode, TreeWalkResult};

use crate::model::{load_repo_with_progress, Entry, RepoModel, SourceFile, TreeView};

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
    /// Any other libgit2 failure.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
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
        })
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
}

impl<'r> Snapshot<'r> {
    /// The full commit id, hex.
    pub fn commit_id(&self) -> &str {
        &self.commit_id
    }

    /// The blobs directly in folder `dir` (not below it), sorted by name.
    pub fn files_in(&self, dir: &str) -> Result<Vec<SourceFile>, GitError> {
        let Ok(entry) = self.tree.get_path(Path::new(dir)) else {
            return Ok(Vec::new());
        };
        let Ok(subtree) = entry.to_object(self.repo)?.peel_to_tree() else {
            return Ok(Vec::new());
        };
        let mut files = Vec::new();
        let mut known = self.entries.borrow_mut();
        for entry in subtree
            .iter()
            .filter(|e| e.kind() == Some(ObjectType::Blob))
        {
            let blob = self.repo.find_blob(entry.id())?;
            let path = format!("{dir}/{}", String::from_utf8_lossy(entry.name_bytes()));
            known.insert(path.clone(), Some(Entry::Blob(entry.id().to_string())));
            files.push(SourceFile {
                path,
                bytes: blob.content().to_vec(),
            });
        }
        Ok(files)
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
        let policies = self.files_in("policies")?;
        Ok(load_repo_with_progress(&changes, &policies, self, progress))
    }
}

impl TreeView for Snapshot<'_> {
    fn entry(&self, path: &str) -> Option<Entry> {
        if let Some(known) = self.entries.borrow().get(path) {
            return known.clone();
        }
        let entry = self
            .tree
            .get_path(Path::new(path))
            .ok()
            .and_then(|e| match e.kind()? {
                ObjectType::Blob => Some(Entry::Blob(e.id().to_string())),
                ObjectType::Tree => Some(Entry::Tree),
                _ => None,
            });
        self.entries
            .borrow_mut()
            .insert(path.to_string(), entry.clone());
        entry
    }

    fn blobs_under(&self, dir: &str) -> Vec<(String, String)> {
        let subtree = self
            .tree
            .get_path(Path::new(dir))
            .ok()
            .and_then(|e| e.to_object(self.repo).ok())
            .and_then(|o| o.peel_to_tree().ok());
        let mut out = Vec::new();
        if let Some(subtree) = subtree {
            let _ = subtree.walk(TreeWalkMode::PreOrder, |root, entry| {
                if entry.kind() == Some(ObjectType::Blob) {
                    let name = String::from_utf8_lossy(entry.name_bytes());
                    out.push((format!("{dir}/{root}{name}"), entry.id().to_string()));
                }
                TreeWalkResult::Ok
            });
        }
        out
    }
}

/// How far back authorship is looked for: older history is not read.
pub const AUTHOR_HISTORY_LIMIT: usize = 5_000;

impl Snapshot<'_> {
    /// For each change (id, covered paths), the author and committer emails
    /// of every commit reachable from this one that changed a covered path.
    /// One walk of history serves all changes.
    pub fn touching_emails(
        &self,
        changes: &[(String, Vec<String>)],
    ) -> Result<BTreeMap<String, BTreeSet<String>>, GitError> {
        let mut out: BTreeMap<String, BTreeSet<String>> = changes
            .iter()
            .map(|(id, _)| (id.clone(), BTreeSet::new()))
            .collect();
        let mut walk = self.repo.revwalk()?;
        walk.push(git2::Oid::from_str(&self.commit_id)?)?;
        for oid in walk.take(AUTHOR_HISTORY_LIMIT) {
            let commit = self.repo.find_commit(oid?)?;
            let tree = commit.tree()?;
            let parent_tree = commit.parents().next().map(|p| p.tree()).transpose()?;
            let diff = self
                .repo
                .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
            let mut touched: BTreeSet<String> = BTreeSet::new();
            for delta in diff.deltas() {
                for file in [delta.old_file(), delta.new_file()] {
                    if let Some(p) = file.path().and_then(|p| p.to_str()) {
                        touched.insert(p.to_string());
                    }
                }
            }
            let emails = [
                commit.author().email().map(str::to_string),
                commit.committer().email().map(str::to_string),
            ];
            for (id, paths) in changes {
                if paths.iter().any(|p| touched.contains(p)) {
                    out.get_mut(id)
                        .expect("every change has an entry")
                        .extend(emails.iter().flatten().cloned());
                }
            }
        }
        Ok(out)
    }
}
