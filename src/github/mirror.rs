//! The server's bare mirror of the change repository: fetched on events and
//! on a timer, so pull request heads can be read from git objects.

use std::path::{Path, PathBuf};

use git2::Repository;

use crate::git::GitError;

/// A bare repository under `data_dir` mirroring `repo.url`.
#[derive(Debug, Clone)]
pub struct Mirror {
    path: PathBuf,
    url: String,
}

impl Mirror {
    /// Creates the bare repository at `path` if it does not exist. A local
    /// `url` is made absolute, so the server's working directory never matters.
    pub fn open(path: &Path, url: &Path) -> Result<Mirror, GitError> {
        if !path.join("HEAD").exists() {
            Repository::init_bare(path)?;
        }
        let url = match std::fs::canonicalize(url) {
            Ok(local) => local.display().to_string(),
            Err(_) => url.display().to_string(),
        };
        Ok(Mirror {
            path: path.to_path_buf(),
            url,
        })
    }

    /// The bare repository's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fetches `refspecs` (forced, pruning nothing). Blocking: call it from
    /// a blocking task.
    pub fn fetch(&self, refspecs: &[String]) -> Result<(), GitError> {
        let repo = Repository::open_bare(&self.path)?;
        let mut remote = repo.remote_anonymous(&self.url)?;
        remote.fetch(refspecs, None, None)?;
        Ok(())
    }

    /// The default branch and every pull request head.
    pub fn fetch_all(&self, default_branch: &str) -> Result<(), GitError> {
        self.fetch(&[
            format!("+refs/heads/{default_branch}:refs/heads/{default_branch}"),
            "+refs/pull/*/head:refs/pull/*/head".to_string(),
        ])
    }

    /// The default branch and one pull request's head.
    pub fn fetch_pull(&self, default_branch: &str, number: i64) -> Result<(), GitError> {
        self.fetch(&[
            format!("+refs/heads/{default_branch}:refs/heads/{default_branch}"),
            format!("+refs/pull/{number}/head:refs/pull/{number}/head"),
        ])
    }
}
