//! What the server reads from git: the default branch, and what open pull
//! requests propose.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::view::{PolicyProposal, Proposal, RepoView};
use crate::config::Config;
use crate::git::touched::policy_deletion;
use crate::git::{ChangeRepo, GitError, Snapshot};
use crate::model::{
    covered_paths, is_policy_path, load_policies, EmailSets, EmailsById, Entry, OnBranch,
    RootIndex, Shared, SourceFile, TreeView, ABSENT,
};

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
/// Only the touched change sets and the change set files that differ from
/// the default branch are read, never the whole commit.
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
    for (pr, head, ids) in open {
        let snapshot = match repo.at(head) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pr, head = %head, error = %e, "cannot read a pull request head");
                continue;
            }
        };
        // `policies/` is read once per head, not once per policy file it
        // touches: a head adding P files read P² blobs.
        let touched: Vec<&String> = ids.iter().filter(|key| is_policy_path(key)).collect();
        if !touched.is_empty() {
            let files = snapshot.policy_files().unwrap_or_default();
            policies.extend(
                touched
                    .into_iter()
                    .map(|key| policy_at(&repo, &snapshot, &files, *pr, key, default_branch)),
            );
        }
        // A head that touches no valid change may still add or edit one
        // that does not validate: its errors belong in the plan comment.
        // Compared with where it left the branch, so that a change set
        // mended on the branch since is not the pull request's edit.
        let edited: BTreeSet<String> = match merge_base(&repo, head, default_branch)
            .and_then(|base| repo.changed_paths(&base, head))
        {
            Ok(changed) => changed
                .into_iter()
                .filter_map(|p| {
                    let id = p.strip_prefix("changes/")?.strip_suffix(".yaml")?;
                    (!id.contains('/')).then(|| id.to_string())
                })
                .collect(),
            Err(e) => {
                tracing::warn!(pr, head = %head, error = %e, "cannot compare a pull request head");
                BTreeSet::new()
            }
        };
        let wanted: BTreeSet<&String> = ids
            .iter()
            .filter(|key| !is_policy_path(key))
            .chain(edited.iter())
            .collect();
        for (id, found) in snapshot.changes_by_id(wanted) {
            match found {
                Ok(at) if ids.contains(&id) => out.push(Proposal {
                    pr: *pr,
                    head_sha: head.clone(),
                    change: at.change,
                    digest: at.digest,
                    covered: at.covered,
                }),
                Err(GitError::InvalidChange { problems, .. }) if edited.contains(&id) => {
                    errors.push((*pr, id, problems.iter().map(|d| d.to_string()).collect()));
                }
                _ => {}
            }
        }
    }
    (out, policies, errors)
}

/// Where `head` left the default branch.
fn merge_base(repo: &ChangeRepo, head: &str, default_branch: &str) -> Result<String, GitError> {
    let git = repo.git();
    let tip = git.refname_to_id(&format!("refs/heads/{default_branch}"))?;
    let head = git.revparse_single(head)?.peel_to_commit()?.id();
    Ok(git.merge_base(head, tip)?.to_string())
}

/// What [`read_proposals`] finds: valid changes, policy files, and the
/// errors of touched change sets that do not validate.
pub type ReadProposals = (
    Vec<Proposal>,
    Vec<PolicyProposal>,
    Vec<(i64, String, Vec<String>)>,
);

/// Policy file `path` as pull request `pr` has it at `snapshot` (whose
/// policy `files` are given): its blob, or the deletion of the blob at the
/// merge base.
fn policy_at(
    repo: &ChangeRepo,
    snapshot: &Snapshot<'_>,
    files: &[SourceFile],
    pr: i64,
    path: &str,
    default_branch: &str,
) -> PolicyProposal {
    let blob = match snapshot.entry(path).as_ref().and_then(Entry::file_blob) {
        Some(id) => id.to_string(),
        None => policy_deletion(repo, snapshot.commit_id(), path, default_branch)
            .unwrap_or_else(|_| ABSENT.to_string()),
    };
    let policy = files.iter().find(|f| f.path == path).and_then(|file| {
        load_policies(std::slice::from_ref(file))
            .policies
            .into_iter()
            .next()
    });
    PolicyProposal {
        pr,
        head_sha: snapshot.commit_id().to_string(),
        path: path.to_string(),
        blob,
        policy,
    }
}

/// What a read of the default branch found.
pub struct BranchRead {
    /// The view (commit, changes, emails, invalid ids, policies); the rest
    /// is left for the engine to fill.
    pub view: RepoView,
    /// Change ids read from git and valid at the commit.
    pub read: Vec<String>,
    /// Change ids that were valid before and are gone or invalid now.
    pub removed: Vec<String>,
    /// Change ids not read whose authors grew: commits in between touched
    /// what they cover and left no net change. Stored with `read`, or a
    /// restart would forget those authors.
    pub authors_grew: Vec<String>,
    /// Whether every change set was read (`read` is all of them).
    pub full: bool,
}

/// Reads the default branch at `tip`, costing what moved since `base`
/// (the view in memory, or the one stored by the last run):
/// - `base` at `tip`: no change set is read, only `policies/`;
/// - `base` at another commit: the trees are compared, and only the change
///   sets a changed path can affect are read again ([`RootIndex::affected`]);
/// - no `base`, or its commit is gone (a force-push, a GC): everything.
pub fn read_branch(
    config: &Config,
    path: &Path,
    base: Option<&RepoView>,
    tip: &str,
) -> Result<BranchRead, GitError> {
    let repo = ChangeRepo::open(path)?;
    let snapshot = repo.at(tip)?;
    let Some(base) = base else {
        return read_default_branch(config, &snapshot);
    };
    // Only forward: after a force-push, the history the emails came from
    // is not the branch's any more.
    let forward = repo
        .descends_from(snapshot.commit_id(), &base.commit)
        .and_then(|yes| {
            let changed = repo.changed_paths(&base.commit, snapshot.commit_id())?;
            let commits = repo.commits_between(&base.commit, snapshot.commit_id())?;
            Ok(yes.then_some((changed, commits)))
        });
    let (changed, commits) = match forward {
        Ok(Some(moved)) => moved,
        Ok(None) => {
            tracing::warn!(from = %base.commit, "the branch was rewritten since it was read; reading it in full");
            return read_default_branch(config, &snapshot);
        }
        Err(e) => {
            tracing::warn!(from = %base.commit, error = %e, "cannot compare with the commit read last; reading the branch in full");
            return read_default_branch(config, &snapshot);
        }
    };
    let ids = RootIndex::of_branch(base.changes.iter()).affected(&changed, &base.invalid);
    let mut view = fresh_view(&snapshot)?;
    // One copy of the maps the delta edits (the base is shared with readers).
    let mut changes = (*base.changes).clone();
    let mut emails = (*base.emails).clone();
    view.invalid = base.invalid.clone();
    let (mut read, mut removed, mut shared) = (Vec::new(), Vec::new(), Shared::default());
    for (id, found) in snapshot.changes_by_id(&ids) {
        let was_valid = changes.remove(&id).is_some();
        emails.remove(&id);
        view.invalid.remove(&id);
        match found {
            Ok(at) => {
                let held = OnBranch::new(&at.change, &at.covered, &mut shared);
                changes.insert(id.clone(), held);
                read.push(id);
                continue;
            }
            Err(GitError::NoSuchChange { .. }) => {}
            Err(e) => {
                tracing::warn!(change = %id, error = %e, "invalid on the default branch");
                view.invalid.insert(id.clone());
            }
        }
        if was_valid {
            removed.push(id);
        }
    }
    view.roots = Arc::new(RootIndex::of_branch(changes.iter()));
    let reread: BTreeSet<String> = read.iter().cloned().collect();
    emails.extend(EmailSets::share(
        snapshot.touching_emails(&view.roots, &reread)?,
    ));
    // Each new commit makes its authors authors of what it touched, even
    // where a later commit undid it (no net change, nothing re-read).
    let was_read: BTreeSet<&String> = read.iter().collect();
    let mut authors_grew = BTreeSet::new();
    for (touched, by) in &commits {
        for id in view.roots.covering(touched) {
            if let Some(known) = emails.get_mut(&id) {
                if by.iter().all(|e| known.contains(e)) {
                    continue;
                }
                Arc::make_mut(known).extend(by.iter().cloned());
                if !was_read.contains(&id) {
                    authors_grew.insert(id);
                }
            }
        }
    }
    view.changes = Arc::new(changes);
    view.emails = Arc::new(emails);
    view.authors = Arc::new(authors_of(config, &view.emails));
    Ok(BranchRead {
        view,
        read,
        removed,
        authors_grew: authors_grew.into_iter().collect(),
        full: false,
    })
}

/// The view stored by the last run, when the branch has not moved since:
/// only `policies/` is read from git, and the stored rows are taken as
/// they are (no copy, no history walk).
pub fn stored_at_tip(
    config: &Config,
    path: &Path,
    stored: RepoView,
) -> Result<BranchRead, GitError> {
    let repo = ChangeRepo::open(path)?;
    let mut view = fresh_view(&repo.at(&stored.commit)?)?;
    view.roots = Arc::new(RootIndex::of_branch(stored.changes.iter()));
    view.authors = Arc::new(authors_of(config, &stored.emails));
    view.changes = stored.changes;
    view.emails = stored.emails;
    view.invalid = stored.invalid;
    Ok(BranchRead {
        view,
        read: Vec::new(),
        removed: Vec::new(),
        authors_grew: Vec::new(),
        full: false,
    })
}

/// A view of `snapshot` with its policies read and nothing else.
fn fresh_view(snapshot: &Snapshot<'_>) -> Result<RepoView, GitError> {
    let policies = snapshot.policy_model()?;
    Ok(RepoView {
        commit: snapshot.commit_id().to_string(),
        policies: policies.policies,
        policy_errors: policies.diagnostics,
        ..RepoView::default()
    })
}

/// Names and logins of each change's authors: the identities in
/// `[[tokens]]` whose emails made the commits. Changes without one are
/// left out, and changes with the same emails share one set.
pub fn authors_of(config: &Config, emails: &EmailsById) -> BTreeMap<String, Arc<BTreeSet<String>>> {
    let mut by_emails: HashMap<*const BTreeSet<String>, Option<Arc<BTreeSet<String>>>> =
        HashMap::new();
    emails
        .iter()
        .filter_map(|(id, emails)| {
            let who = by_emails.entry(Arc::as_ptr(emails)).or_insert_with(|| {
                let who: BTreeSet<String> = config
                    .tokens
                    .iter()
                    .filter(|t| t.emails.iter().any(|e| emails.contains(e)))
                    .flat_map(|t| std::iter::once(t.name.clone()).chain(t.github.clone()))
                    .collect();
                (!who.is_empty()).then(|| Arc::new(who))
            });
            Some((id.clone(), who.clone()?))
        })
        .collect()
}

/// Reads every change set at `snapshot`, logging progress at least every
/// two seconds (a repository of 100,000 change sets takes a while).
fn read_default_branch(config: &Config, snapshot: &Snapshot<'_>) -> Result<BranchRead, GitError> {
    let started = std::time::Instant::now();
    let mut logged = started;
    let (mut changes, mut shared) = (Vec::new(), Shared::default());
    // Each change set is packed as soon as it is checked: the models of
    // 100,000 change sets never exist at once.
    let diagnostics = snapshot.check_changes(
        &mut |done, total| {
            if logged.elapsed() >= std::time::Duration::from_secs(2) {
                logged = std::time::Instant::now();
                tracing::info!(done, total, "reading change sets");
            }
        },
        &mut |change| match covered_paths(&change, snapshot) {
            Ok(covered) => {
                let held = OnBranch::new(&change, &covered, &mut shared);
                changes.push((change.id, held));
            }
            Err(e) => tracing::warn!(change = %change.id, error = %e, "no digest"),
        },
    )?;
    for d in &diagnostics {
        tracing::warn!(diagnostic = %d, "invalid on the default branch");
    }
    let mut view = fresh_view(snapshot)?;
    view.changes = Arc::new(changes.into_iter().collect());
    // Every change set file without a digest is re-checked on each move,
    // whatever its errors were reported against (a targets file, say).
    view.invalid = snapshot
        .change_ids()
        .into_iter()
        .filter(|id| !view.changes.contains_key(id))
        .collect();
    view.roots = Arc::new(RootIndex::of_branch(view.changes.iter()));
    let all: BTreeSet<String> = view.changes.keys().cloned().collect();
    view.emails = Arc::new(EmailSets::share(
        snapshot.touching_emails(&view.roots, &all)?,
    ));
    view.authors = Arc::new(authors_of(config, &view.emails));
    let read = all.into_iter().collect();
    Ok(BranchRead {
        view,
        read,
        removed: Vec::new(),
        authors_grew: Vec::new(),
        full: true,
    })
}
