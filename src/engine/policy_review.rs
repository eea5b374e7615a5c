//! Policy edits are reviewed like changes (SPEC §13). With GitHub, the
//! policies in force are the last approved text of each file: the baseline
//! taken when review began, then each revision on the default branch whose
//! pull request reviews approved it. Without GitHub there are no pull
//! requests to review an edit, and the default branch's files are in force
//! as read.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::view::{self, RepoView, UnapprovedPolicy};
use super::{Engine, EngineError};
use crate::clock::now_ms;
use crate::gate::policy_review::{edit_rule, pending_edits, policy_name};
use crate::gate::{approval_status, ApprovalStatus, People};
use crate::git::{blob_id, ChangeRepo};
use crate::model::{deletion_of, ABSENT};
use crate::model::{load_policies, Policy, SourceFile};
use crate::store::{Alert, AlertKind, AlertLabels, ApprovedPolicy, Firing, Severity};

/// A policy file's git blob id: of its bytes, or, for one too large to
/// read, the id of the unread blob (so two oversize versions differ).
fn blob_of(file: &SourceFile) -> String {
    match &file.oversize {
        Some((_, blob)) => blob.clone(),
        None => blob_id(&file.bytes),
    }
}

/// Since when a text has been in force, for judging the next edit: when it
/// was approved, or forever for the baseline (reviews from before review
/// began still speak for the edits they saw).
fn in_force_since(a: &ApprovedPolicy) -> i64 {
    if a.how == "baseline" {
        0
    } else {
        a.approved_at
    }
}

fn parse(path: &str, text: &[u8]) -> Option<Policy> {
    load_policies(&[SourceFile::new(path.to_string(), text.to_vec())])
        .policies
        .into_iter()
        .next()
}

impl Engine {
    /// Puts the policies in force into `view`: approves each revision on
    /// the default branch whose reviews are satisfied, keeps the last
    /// approved text of each file whose revision is not (alerting until it
    /// is approved or reverted), and takes the baseline on first use.
    pub(super) async fn review_policies(&self, view: &mut RepoView) -> Result<(), EngineError> {
        if self.config().github.is_none() {
            return Ok(());
        }
        let now = now_ms();
        let main: BTreeMap<String, SourceFile> = {
            let repo = ChangeRepo::open(&self.repo_path())?;
            let snapshot = repo.at(&view.commit)?;
            snapshot
                .policy_files()?
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect()
        };
        let approved_as = |f: &SourceFile, how: &str| ApprovedPolicy {
            path: f.path.clone(),
            blob: blob_of(f),
            text: String::from_utf8_lossy(&f.bytes).into_owned(),
            commit: view.commit.clone(),
            how: how.to_string(),
            approved_at: now,
        };
        let mut approved = match self.store.approved_policies().await? {
            Some(approved) => approved,
            None => {
                // Policies in force before review began are approved by definition.
                let baseline: Vec<ApprovedPolicy> =
                    main.values().map(|f| approved_as(f, "baseline")).collect();
                let mut w = self.store.write().await?;
                if w.take_policy_baseline(&view.commit, &baseline, now).await? {
                    let files: Vec<&str> = baseline.iter().map(|p| p.path.as_str()).collect();
                    w.audit(
                        "changegate",
                        "policies.baseline",
                        None,
                        json!({"commit": view.commit, "files": files}),
                    )
                    .await?;
                }
                w.commit().await?;
                self.store.approved_policies().await?.unwrap_or_default()
            }
        };
        let main_blobs = main.iter().map(|(p, f)| (p.clone(), blob_of(f))).collect();
        let in_force = approved
            .iter()
            .map(|(p, a)| (p.clone(), a.blob.clone()))
            .collect();
        let mut newly_approved = Vec::new();
        let mut unapproved = Vec::new();
        for edit in pending_edits(&main_blobs, &in_force) {
            let old = approved
                .get(&edit.path)
                .and_then(|a| parse(&a.path, a.text.as_bytes()));
            let new = main.get(&edit.path).and_then(|f| parse(&f.path, &f.bytes));
            // A deletion is of the text in force: approving another
            // deletion (or a commit that never had the file) is not this.
            let on_main = match (&edit.on_main, &edit.in_force) {
                (Some(blob), _) => blob.clone(),
                (None, Some(in_force)) => deletion_of(in_force),
                (None, None) => ABSENT.to_string(),
            };
            let status = self
                .policy_edit_status(
                    &edit.path,
                    &on_main,
                    old.as_ref(),
                    new.as_ref(),
                    approved.get(&edit.path).map_or(0, in_force_since),
                )
                .await?;
            if status.satisfied {
                let text = main.get(&edit.path).map(|f| approved_as(f, "reviewed"));
                newly_approved.push((edit.path, on_main, text, status));
            } else {
                unapproved.push(UnapprovedPolicy {
                    path: edit.path,
                    on_main,
                    previous_in_force: edit.in_force.is_some(),
                    approvals: status.summary(),
                });
            }
        }
        let mut w = self.store.write().await?;
        for (path, blob, text, status) in newly_approved {
            match &text {
                Some(p) => w.approve_policy(p).await?,
                None => w.remove_approved_policy(&path).await?,
            }
            let approvers: Vec<&String> =
                status.policies.iter().flat_map(|p| &p.approvers).collect();
            w.audit(
                "changegate",
                "policy.approved",
                None,
                json!({"path": path, "blob": blob, "commit": view.commit, "approvers": approvers}),
            )
            .await?;
            match text {
                Some(p) => approved.insert(path, p),
                None => approved.remove(&path),
            };
        }
        let wanted: BTreeSet<String> = unapproved
            .iter()
            .map(|u| format!("{}@{}", u.path, u.on_main))
            .collect();
        let kind = AlertKind::PolicyUnapproved;
        for alert in w.firing_alerts(Firing::OfKind(kind)).await? {
            if !wanted.contains(&alert.subject) {
                for a in w
                    .resolve_alerts(Firing::About(kind, &alert.subject), now)
                    .await?
                {
                    w.audit("changegate", "alert.resolved", None, json!({"alert": a.id}))
                        .await?;
                }
            }
        }
        for u in &unapproved {
            let alert = self.policy_unapproved_alert(u, now);
            if w.raise_alert(&alert, now).await? {
                w.audit(
                    "changegate",
                    "policy.unapproved",
                    None,
                    json!({"path": u.path, "blob": u.on_main, "commit": view.commit, "approvals": u.approvals, "alert": alert.id}),
                )
                .await?;
            }
        }
        w.commit().await?;
        let since: BTreeMap<String, i64> = approved
            .iter()
            .map(|(p, a)| (p.clone(), in_force_since(a)))
            .collect();
        let files: Vec<SourceFile> = approved
            .into_values()
            .map(|a| SourceFile::new(a.path, a.text.into_bytes()))
            .collect();
        let model = load_policies(&files);
        view.policies = model.policies;
        view.policy_errors = model.diagnostics;
        view.policies_since = since;
        view.unapproved_policies = unapproved;
        Ok(())
    }

    fn policy_unapproved_alert(&self, u: &UnapprovedPolicy, now: i64) -> Alert {
        let kept = if u.previous_in_force {
            "its last approved text stays in force"
        } else {
            "it governs nothing until approved"
        };
        let subject = format!("{}@{}", u.path, u.on_main);
        Alert::firing(
            format!("policy-unapproved:{subject}"),
            AlertKind::PolicyUnapproved,
            AlertLabels {
                alertname: "ChangegatePolicyUnapproved",
                severity: Severity::Warning,
                change: None,
                step: None,
                targets: "",
            },
            format!("{} on the default branch was not approved ({}): {kept}", u.path, u.approvals),
            "A policy edit needs approval from the eligible approvers of the policy in force, with `required` the larger of old and new. Approve the pull request that made it, or revert it.",
            self.sinks_for(None),
            now,
        )
        .labelled("policy", &u.path)
        .about(subject)
    }

    /// The approval of the revision `digest` (a blob id, or a deletion) of
    /// policy file `path`, replacing `old` (in force since `since`, unix
    /// ms) with `new`. Only reviews given since the text in force took
    /// effect count or block: an approval of an older text, or a request
    /// for changes on a long-merged pull request, speaks to another edit.
    async fn policy_edit_status(
        &self,
        path: &str,
        digest: &str,
        old: Option<&Policy>,
        new: Option<&Policy>,
        since: i64,
    ) -> Result<ApprovalStatus, EngineError> {
        let mut facts = self.store.world(path, &[]).await?.facts;
        facts.github.reviews.retain(|r| r.submitted_at > since);
        facts.approvals.retain(|a| a.created_at > since);
        let rule = edit_rule(old, new);
        let identities: BTreeSet<String> = self
            .config()
            .tokens
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let people = People {
            authors: &facts.github.authors,
            identities: &identities,
            directory: &self.directory,
            as_of: now_ms(),
        };
        Ok(approval_status(
            digest,
            &[(policy_name(path), rule)],
            &view::approval_facts(&self.config(), &facts),
            &people,
        ))
    }

    /// The approval of each policy file that open pull request `pr` adds,
    /// edits or deletes at `head`, by path; none read at another head.
    pub async fn pr_policy_edits(
        &self,
        pr: i64,
        head: &str,
    ) -> Result<Vec<(String, ApprovalStatus)>, EngineError> {
        let view = self.view();
        let mut out = Vec::new();
        for p in view
            .policy_proposals
            .iter()
            .filter(|p| p.pr == pr && p.head_sha == head)
        {
            let name = policy_name(&p.path);
            let old = view.policies.iter().find(|q| q.name == name);
            let status = self
                .policy_edit_status(
                    &p.path,
                    &p.blob,
                    old,
                    p.policy.as_ref(),
                    view.policies_since.get(&p.path).copied().unwrap_or(0),
                )
                .await?;
            out.push((p.path.clone(), status));
        }
        Ok(out)
    }
}
