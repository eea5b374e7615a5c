//! What a pull request touches, read from git objects: the changes whose
//! digest and the policy files whose blob differ from the merge base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{ChangeRepo, GitError, Snapshot};
use crate::model::{covered_paths, deletion_of, is_policy_path, Digest, Entry, TreeView, ABSENT};

impl Snapshot<'_> {
    /// The YAML files under `policies/`, with their content.
    pub fn policy_files(&self) -> Result<Vec<crate::model::SourceFile>, GitError> {
        Ok(self
            .files_in("policies")?
            .into_iter()
            .filter(|f| f.path.ends_with(".yaml") || f.path.ends_with(".yml"))
            .collect())
    }

    /// The digest of every valid change, by id, and the blob id of every
    /// policy file, by path.
    pub fn subjects(&self) -> Result<BTreeMap<String, String>, GitError> {
        let model = self.load_model()?;
        let mut out: BTreeMap<String, String> = model
            .changes
            .values()
            .filter_map(|c| {
                covered_paths(c, self)
                    .ok()
                    .map(|covered| (c.id.clone(), Digest::of(&covered).to_string()))
            })
            .collect();
        for f in self.policy_files()? {
            if let Some(Entry::Blob(id)) = self.entry(&f.path) {
                out.insert(f.path, id);
            }
        }
        Ok(out)
    }
}

/// What a pull request touches, with its digest (or blob) at `head`: each
/// change whose digest differs from the merge base with the default
/// branch, and each policy file it adds, edits or deletes ([`ABSENT`]).
pub fn touched(
    mirror: &Path,
    head: &str,
    base: &str,
    default_branch: &str,
) -> Result<Vec<(String, String)>, GitError> {
    let repo = ChangeRepo::open(mirror)?;
    let head_id = repo.at(head)?.commit_id().to_string();
    let base_id = repo
        .at(base)
        .or_else(|_| repo.at(&format!("refs/heads/{default_branch}")))?
        .commit_id()
        .to_string();
    let git = repo.git();
    let merge_base = git.merge_base(
        git2::Oid::from_str(&head_id)?,
        git2::Oid::from_str(&base_id)?,
    )?;
    let at_head = repo.at(&head_id)?.subjects()?;
    let at_base = repo.at(&merge_base.to_string())?.subjects()?;
    let deleted_policies = at_base
        .iter()
        .filter(|(k, _)| is_policy_path(k) && !at_head.contains_key(*k))
        .map(|(k, blob)| (k.clone(), deletion_of(blob)))
        .collect::<Vec<_>>();
    let mut out: Vec<(String, String)> = at_head
        .into_iter()
        .filter(|(id, d)| at_base.get(id) != Some(d))
        .chain(deleted_policies)
        .collect();
    out.sort();
    Ok(out)
}

/// (commit, key, digest) for each commit and touched key (a change id or a
/// policy path); [`ABSENT`] where it does not exist at that commit, except
/// a policy file that the commit deletes: [`deletion_of`] its blob at the
/// merge base with `default_branch`.
pub fn digests_at(
    mirror: &Path,
    commits: &BTreeSet<String>,
    keys: &[String],
    default_branch: &str,
) -> Result<Vec<(String, String, String)>, GitError> {
    let repo = ChangeRepo::open(mirror)?;
    let mut out = Vec::new();
    for commit in commits {
        let subjects = repo.at(commit)?.subjects()?;
        for key in keys {
            let digest = match subjects.get(key) {
                Some(d) => d.clone(),
                None if is_policy_path(key) => policy_deletion(&repo, commit, key, default_branch)?,
                None => ABSENT.to_string(),
            };
            out.push((commit.clone(), key.clone(), digest));
        }
    }
    Ok(out)
}

/// What `commit`, which lacks policy file `path`, records for it: the
/// deletion of its blob at the merge base with `default_branch`, or
/// [`ABSENT`] when it was not there either (nothing was deleted).
pub fn policy_deletion(
    repo: &ChangeRepo,
    commit: &str,
    path: &str,
    default_branch: &str,
) -> Result<String, GitError> {
    let tip = repo.at(&format!("refs/heads/{default_branch}"))?;
    let base = repo.git().merge_base(
        git2::Oid::from_str(repo.at(commit)?.commit_id())?,
        git2::Oid::from_str(tip.commit_id())?,
    )?;
    Ok(match repo.at(&base.to_string())?.entry(path) {
        Some(Entry::Blob(blob)) => deletion_of(&blob),
        _ => ABSENT.to_string(),
    })
}
