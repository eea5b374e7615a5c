//! What a pull request touches, read from git objects: the changes whose
//! digest and the policy files whose blob differ from the merge base.

use std::collections::{BTreeMap, BTreeSet};

use super::{ChangeRepo, GitError, Snapshot};
use crate::model::{deletion_of, is_policy_path, ChangeSet, Entry, RootIndex, TreeView, ABSENT};

impl Snapshot<'_> {
    /// The YAML files under `policies/`, with their content.
    pub fn policy_files(&self) -> Result<Vec<crate::model::SourceFile>, GitError> {
        Ok(self
            .files_in("policies")?
            .into_iter()
            .filter(|f| f.path.ends_with(".yaml") || f.path.ends_with(".yml"))
            .collect())
    }
}

/// The default branch's changes as last read: what [`touched`] rules
/// paths in or out by.
#[derive(Clone, Copy)]
pub struct Known<'a> {
    /// The covered roots of its change sets.
    pub roots: &'a RootIndex,
    /// Its change sets that do not validate.
    pub invalid: &'a BTreeSet<String>,
    /// The commit they were read at (empty: not read yet).
    pub at: &'a str,
}

/// What a pull request touches, with its digest (or blob) at `head`: each
/// change whose digest differs from the merge base with the default
/// branch, and each policy file it adds, edits or deletes ([`deletion_of`]
/// of its blob there).
///
/// Costs what the pull request changed, not the repository's size: only
/// the paths that differ between the merge base and the head are looked
/// at, and only the change sets they can affect are read, using the
/// covered roots of the default branch's changes (`known.roots`, indexed
/// once per read of the branch) and the change sets there that do not
/// validate (`known.invalid`), both read at `known.at`,
/// plus the change sets that differ between `known.at` and the merge base,
/// plus any change set file in the diff itself.
///
/// The default branch's side is read through `repo`, the handle kept open
/// for the process's life, whose cache keeps its parsed trees; the head's
/// through `event`, a handle of its own for this event
/// ([`ChangeRepo::reopen`]), dropped after it. One cache for both filled up
/// with heads' trees, never read again, until libgit2 evicted the default
/// branch's `changes/` tree, which then had to be read again: after about
/// 30 events at 100,000 change sets, events took twice as long.
pub fn touched(
    repo: &ChangeRepo,
    event: &ChangeRepo,
    head: &str,
    base: &str,
    default_branch: &str,
    known: Known<'_>,
) -> Result<Vec<(String, String)>, GitError> {
    let Known {
        roots: known,
        invalid,
        at: known_at,
    } = known;
    if known_at.is_empty() {
        // Without the branch's changes nothing can be ruled out: retry.
        return Err(GitError::Git(git2::Error::from_str(
            "the default branch has not been read yet",
        )));
    }
    let head_id = event.at(head)?.commit_id().to_string();
    let base_id = repo
        .at(base)
        .or_else(|_| repo.at(&format!("refs/heads/{default_branch}")))?
        .commit_id()
        .to_string();
    let git = repo.git();
    let merge_base = git
        .merge_base(
            git2::Oid::from_str(&head_id)?,
            git2::Oid::from_str(&base_id)?,
        )?
        .to_string();
    let changed = repo.changed_paths_to(&merge_base, event, &head_id)?;
    let mut candidates = known.affected(&changed, invalid);
    let (at_head, at_base) = (event.at(&head_id)?, repo.at(&merge_base)?);
    // `known` was read at `known_at`; change sets that differ at the merge
    // base (added or edited since, or not yet read) cover what they cover
    // there.
    if known_at != merge_base {
        // The default branch's own history, not the head: a refusal here
        // is not the pull request's, so it is an error to retry.
        let drift: BTreeSet<String> = repo
            .changed_paths(known_at, &merge_base)
            .map_err(|e| match e {
                GitError::Refused { reason } => GitError::Git(git2::Error::from_str(&format!(
                    "cannot compare the default branch since the pull request's base: {reason}"
                ))),
                e => e,
            })?
            .iter()
            .filter_map(|p| p.strip_prefix("changes/")?.strip_suffix(".yaml"))
            .filter(|id| !id.contains('/'))
            .map(str::to_string)
            .collect();
        let there: Vec<ChangeSet> = at_base
            .changes_by_id(&drift)
            .into_values()
            .filter_map(|at| at.ok().map(|at| at.change))
            .collect();
        candidates.extend(RootIndex::new(there.iter()).covering(&changed));
    }
    let base_digests: BTreeMap<String, String> = at_base
        .changes_by_id(&candidates)
        .into_iter()
        .filter_map(|(id, at)| at.ok().map(|at| (id, at.digest.to_string())))
        .collect();
    let mut out = Vec::new();
    for (id, at) in at_head.changes_by_id(&candidates) {
        match at {
            Ok(at) => {
                let digest = at.digest.to_string();
                if base_digests.get(&id) != Some(&digest) {
                    out.push((id, digest));
                }
            }
            // A change set that validates at the base and not at the head
            // (a symbolic link or `..` entry under a folder it includes, say)
            // would otherwise drop out of what the head touches, and its
            // edited scripts would merge with a passing status.
            Err(GitError::InvalidChange { problems, .. }) if base_digests.contains_key(&id) => {
                let first = problems
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                return Err(GitError::Refused {
                    reason: format!("change set `{id}` stops validating at this head: {first}"),
                });
            }
            // Its file replaced by something that is no file (a symbolic
            // link, a folder, a submodule): the same, or the change would
            // drop out of what the head touches. (A deleted file is a
            // deleted change: nothing of it runs.)
            Err(GitError::NoSuchChange { .. })
                if base_digests.contains_key(&id)
                    && at_head.entry(&format!("changes/{id}.yaml")).is_some() =>
            {
                return Err(GitError::Refused {
                    reason: format!(
                        "change set `{id}` stops validating at this head: `changes/{id}.yaml` is no longer a file"
                    ),
                });
            }
            // New change sets that do not validate are reported with their
            // errors (`read_proposals`), and their statuses fail.
            Err(GitError::InvalidChange { .. } | GitError::NoSuchChange { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Past the read's budget, what validated depends on the order read.
    if at_head.over_budget() || at_base.over_budget() {
        return Err(GitError::Refused {
            reason: format!(
                "the change sets it touches cover more than {} files and folders in all",
                super::MAX_SNAPSHOT_FOLDER_ENTRIES
            ),
        });
    }
    // Policy files as `policy_files` finds them: YAML directly in `policies/`.
    let policy_file = |p: &&String| {
        p.strip_prefix("policies/")
            .is_some_and(|f| !f.contains('/') && (f.ends_with(".yaml") || f.ends_with(".yml")))
    };
    for path in changed.iter().filter(policy_file) {
        let blob = |s: &super::Snapshot<'_>| s.entry(path)?.file_blob().map(str::to_string);
        match (blob(&at_base), blob(&at_head)) {
            (before, Some(now)) if before.as_ref() != Some(&now) => out.push((path.clone(), now)),
            (Some(before), None) => out.push((path.clone(), deletion_of(&before))),
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

/// (commit, key, digest) for each commit and touched key (a change id or a
/// policy path); [`ABSENT`] where it does not exist at that commit (or
/// does not validate there), except a policy file that the commit
/// deletes: [`deletion_of`] its blob at the merge base with
/// `default_branch`. Reads only the keys asked for.
pub fn digests_at(
    repo: &ChangeRepo,
    commits: &BTreeSet<String>,
    keys: &[String],
    default_branch: &str,
) -> Result<Vec<(String, String, String)>, GitError> {
    let change_keys: Vec<&String> = keys.iter().filter(|k| !is_policy_path(k)).collect();
    let mut out = Vec::new();
    for commit in commits {
        let snapshot = repo.at(commit)?;
        let changes = snapshot.changes_by_id(change_keys.iter().copied());
        for key in keys {
            let digest = if is_policy_path(key) {
                match snapshot.entry(key).as_ref().and_then(Entry::file_blob) {
                    Some(blob) => blob.to_string(),
                    None => policy_deletion(repo, commit, key, default_branch)?,
                }
            } else {
                match changes.get(key) {
                    Some(Ok(at)) => at.digest.to_string(),
                    _ => ABSENT.to_string(),
                }
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
    Ok(
        match repo
            .at(&base.to_string())?
            .entry(path)
            .as_ref()
            .and_then(Entry::file_blob)
        {
            Some(blob) => deletion_of(blob),
            None => ABSENT.to_string(),
        },
    )
}
