//! What the server reads from git: the default branch, and what open pull
//! requests propose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::view::{PolicyProposal, Proposal, RepoView};
use crate::config::Config;
use crate::git::touched::policy_deletion;
use crate::git::{ChangeRepo, GitError, Snapshot};
use crate::model::{covered_paths, is_policy_path, load_policies, Digest, Entry, TreeView, ABSENT};

/// Where change sets are read from: the bare mirror under `data_dir` when
/// GitHub is configured, else `repo.url`.
pub fn repo_path(config: &Config) -> PathBuf {
    match config.github {
        Some(_) => config.server.data_dir.join("mirror.git"),
        None => config.repo.url.clone(),
    }
}

/// Reads each open pull request's touched changes at its head. A head that
/// cannot be read is skipped with a warning: the inbox worker retries it.
pub fn read_proposals(
    path: &Path,
    open: &[(i64, String, Vec<String>)],
    default_branch: &str,
) -> ReadProposals {
    let mut out = Vec::new();
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    let Ok(repo) = ChangeRepo::open(path) else {
        return (out, policies, errors);
    };
    // A head that touches no valid change may still add or edit one that
    // does not validate: its errors belong in the plan comment too.
    for (pr, head, ids) in open {
        let model = match repo.at(head).and_then(|s| Ok((s.load_model()?, s))) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pr, head = %head, error = %e, "cannot read a pull request head");
                continue;
            }
        };
        let (model, snapshot) = model;
        policies.extend(
            ids.iter()
                .filter(|key| is_policy_path(key))
                .map(|key| policy_at(&repo, &snapshot, *pr, key, default_branch)),
        );
        errors.extend(
            invalid_edits(&repo, &snapshot, &model, default_branch)
                .into_iter()
                .map(|(id, e)| (*pr, id, e)),
        );
        for id in ids {
            let Some(change) = model.changes.get(id) else {
                continue;
            };
            if let Ok(covered) = covered_paths(change, &snapshot) {
                out.push(Proposal {
                    pr: *pr,
                    head_sha: head.clone(),
                    change: change.clone(),
                    digest: Digest::of(&covered),
                    covered,
                });
            }
        }
    }
    (out, policies, errors)
}

/// The change sets a head adds or edits that do not validate there, with
/// their errors: a file whose blob differs from the default branch's.
fn invalid_edits(
    repo: &ChangeRepo,
    head: &crate::git::Snapshot<'_>,
    model: &crate::model::RepoModel,
    default_branch: &str,
) -> Vec<(String, Vec<String>)> {
    let main = repo.at(default_branch).ok();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for d in &model.diagnostics {
        let Some(id) = d
            .path
            .strip_prefix("changes/")
            .and_then(|f| f.strip_suffix(".yaml").or_else(|| f.strip_suffix(".yml")))
            .filter(|id| !id.contains('/'))
        else {
            continue;
        };
        let edited = main
            .as_ref()
            .is_none_or(|m| m.entry(&d.path) != head.entry(&d.path));
        if !edited {
            continue;
        }
        match out.iter_mut().find(|(i, _)| i == id) {
            Some((_, errors)) => errors.push(d.to_string()),
            None => out.push((id.to_string(), vec![d.to_string()])),
        }
    }
    out
}

/// What [`read_proposals`] finds: valid changes, policy files, and the
/// errors of touched change sets that do not validate.
pub type ReadProposals = (
    Vec<Proposal>,
    Vec<PolicyProposal>,
    Vec<(i64, String, Vec<String>)>,
);

/// Policy file `path` as pull request `pr` has it at `snapshot`: its
/// blob, or the deletion of the blob at the merge base.
fn policy_at(
    repo: &ChangeRepo,
    snapshot: &Snapshot<'_>,
    pr: i64,
    path: &str,
    default_branch: &str,
) -> PolicyProposal {
    let blob = match snapshot.entry(path) {
        Some(Entry::Blob(id)) => id,
        _ => policy_deletion(repo, snapshot.commit_id(), path, default_branch)
            .unwrap_or_else(|_| ABSENT.to_string()),
    };
    let policy = snapshot
        .policy_files()
        .ok()
        .and_then(|files| files.into_iter().find(|f| f.path == path))
        .and_then(|file| load_policies(&[file]).policies.into_iter().next());
    PolicyProposal {
        pr,
        head_sha: snapshot.commit_id().to_string(),
        path: path.to_string(),
        blob,
        policy,
    }
}

/// Reads the default branch at `path`: changes, digests, policies and authors.
pub fn read_default_branch(config: &Config, path: &Path) -> Result<RepoView, GitError> {
    let repo = ChangeRepo::open(path)?;
    let snapshot = repo.at(&config.repo.default_branch)?;
    let model = snapshot.load_model()?;
    for d in &model.diagnostics {
        tracing::warn!(diagnostic = %d, "invalid on the default branch");
    }
    let mut changes = BTreeMap::new();
    for (id, change) in model.changes {
        match covered_paths(&change, &snapshot) {
            Ok(covered) => {
                let digest = Digest::of(&covered);
                changes.insert(id, (change, digest, covered));
            }
            Err(e) => tracing::warn!(change = %id, error = %e, "no digest"),
        }
    }
    let paths: Vec<(String, Vec<String>)> = changes
        .iter()
        .map(|(id, (_, _, c))| (id.clone(), c.iter().map(|p| p.path.clone()).collect()))
        .collect();
    let emails = snapshot.touching_emails(&paths)?;
    let authors = emails
        .into_iter()
        .map(|(id, emails)| {
            let who: BTreeSet<String> = config
                .tokens
                .iter()
                .filter(|t| t.emails.iter().any(|e| emails.contains(e)))
                .flat_map(|t| std::iter::once(t.name.clone()).chain(t.github.clone()))
                .collect();
            (id, who)
        })
        .collect();
    let policy_errors = model
        .diagnostics
        .iter()
        .filter(|d| d.path.starts_with("policies/"))
        .cloned()
        .collect();
    Ok(RepoView {
        commit: snapshot.commit_id().to_string(),
        changes,
        policies: model.policies,
        policy_errors,
        authors,
        proposals: Vec::new(),
        proposal_heads: Vec::new(),
        previous_labels: BTreeMap::new(),
        policy_proposals: Vec::new(),
        proposal_errors: Vec::new(),
        tokens_gen: 0,
        policies_since: BTreeMap::new(),
        unapproved_policies: Vec::new(),
    })
}
