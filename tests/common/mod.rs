//! Test support: real git repositories in temp dirs, built with git2.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use changegate::git::ChangeRepo;
use changegate::model::{Diagnostic, RepoModel};
use git2::{Oid, Repository, Signature};

/// A git repository in a temp dir whose commits tests write file by file.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl TestRepo {
    /// An empty repository whose first commit will be on `main`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("git init");
        repo.set_head("refs/heads/main").expect("set HEAD");
        TestRepo { dir, repo }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file into the work tree (creating folders).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.dir.path().join(path)).unwrap();
        self
    }

    /// Commits the whole work tree onto HEAD's branch.
    pub fn commit(&self, message: &str) -> Oid {
        self.commit_as(message, "Test", "test@example.com")
    }

    /// Commits the whole work tree as author and committer `name <email>`.
    pub fn commit_as(&self, message: &str, name: &str, email: &str) -> Oid {
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now(name, email).unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    /// A tree object of `entries` (name, id, mode), written without a work
    /// tree.
    pub fn folder(&self, entries: impl IntoIterator<Item = (String, Oid, i32)>) -> Oid {
        let mut builder = self.repo.treebuilder(None).unwrap();
        for (name, id, mode) in entries {
            builder.insert(name, id, mode).unwrap();
        }
        builder.write().unwrap()
    }

    /// A small tree that names one subtree `width` times on each of
    /// `depth` levels: `width^depth` files.
    pub fn tree_bomb(&self, width: usize, depth: usize) -> Oid {
        let blob = self.repo.blob(b"x").unwrap();
        let mut id = self.folder([("x".to_string(), blob, 0o100644)]);
        for _ in 0..depth {
            id = self.folder((0..width).map(|i| (format!("{i}"), id, 0o040000)));
        }
        id
    }

    /// Commits onto HEAD its tree with the top-level `folders` (name, tree)
    /// set, without a work tree: trees written by hand, such as a tree
    /// bomb, cannot be checked out.
    pub fn commit_folders(&self, folders: &[(&str, Oid)]) -> Oid {
        let head = self.repo.head().unwrap().peel_to_commit().unwrap();
        let mut root = self.repo.treebuilder(Some(&head.tree().unwrap())).unwrap();
        for (name, id) in folders {
            root.insert(name, *id, 0o040000).unwrap();
        }
        let tree = self.repo.find_tree(root.write().unwrap()).unwrap();
        let sig = Signature::now("mallory", "mallory@example.com").unwrap();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, "by hand", &tree, &[&head])
            .unwrap()
    }

    /// Creates branch `name` at `at` and checks it out, so later commits land there.
    pub fn branch(&self, name: &str, at: Oid) {
        let commit = self.repo.find_commit(at).unwrap();
        self.repo.branch(name, &commit, true).unwrap();
        self.repo.set_head(&format!("refs/heads/{name}")).unwrap();
        self.repo
            .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .unwrap();
    }

    /// The checked model at `rev`.
    pub fn model(&self, rev: &str) -> RepoModel {
        ChangeRepo::open(self.path())
            .unwrap()
            .at(rev)
            .unwrap()
            .load_model()
            .unwrap()
    }

    /// The diagnostics at HEAD, as `path:line:col: message` lines.
    pub fn errors(&self) -> Vec<String> {
        self.model("HEAD")
            .diagnostics
            .iter()
            .map(Diagnostic::to_string)
            .collect()
    }

    /// Runs the `changegate` binary in this repository.
    pub fn run(&self, args: &[&str]) -> Output {
        changegate(self.path(), args)
    }
}

/// Runs the `changegate` binary in `dir`.
pub fn changegate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_changegate"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run changegate")
}

/// The project's own repository root (for its example change sets).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies every file below `from` into `to`, keeping paths relative to `base`.
pub fn copy_tree(from: &Path, to: &Path, base: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            copy_tree(&path, to, base);
        } else {
            let target = to.join(path.strip_prefix(base).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&path, target).unwrap();
        }
    }
}

/// A minimal valid change set running `./run.sh`.
pub fn simple_change(title: &str) -> String {
    format!(
        "title: {title}\nkind: config\ntargets: [web]\nsteps:\n  - id: apply\n    run: ./run.sh\n"
    )
}

/// Asserts that some error line contains every fragment.
#[track_caller]
pub fn assert_error(errors: &[String], fragments: &[&str]) {
    assert!(
        errors
            .iter()
            .any(|e| fragments.iter().all(|f| e.contains(f))),
        "no error containing {fragments:?} in:\n{}",
        errors.join("\n")
    );
}

pub mod browser;
pub mod db;
pub mod gate_fixture;
pub mod git_https;
pub mod github;
pub mod receivers;
pub mod server;
