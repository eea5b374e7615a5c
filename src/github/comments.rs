//! Keeps one plan comment per open pull request (SPEC §12): rendered from
//! what the server knows ([`super::plan`]), recorded, and posted by one
//! poster at a time with the same backoff as commit statuses.

use super::client::{ApiError, IssueComment};
use super::plan::{self, PlanChange, PolicyLine};
use super::{Github, SyncError};
use crate::clock::{backoff_ms, now_ms};
use crate::model::{is_policy_path, ChangeSet, CoveredPath, PoliciesInForce};
use crate::store::PendingComment;

/// How long a poster holds a comment: longer than the calls it makes.
const CLAIM_MS: i64 = 120_000;

impl Github {
    /// Works out the plan comment each open pull request should show and
    /// records those that changed.
    pub async fn update_plans(&self) -> Result<usize, SyncError> {
        let store = self.engine.store();
        let view = self.engine.view();
        let public = self.engine.config().server.public_url.clone();
        let mut changed = 0;
        for pr in store.pull_requests(false).await? {
            let ids: Vec<String> = store
                .pr_changes(pr.number)
                .await?
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| !is_policy_path(key))
                .collect();
            let mut approvals = Vec::new();
            for id in &ids {
                if let Some(a) = self.engine.pr_approval(pr.number, id).await? {
                    approvals.push((id.as_str(), a));
                }
            }
            let mut changes = Vec::new();
            for id in &ids {
                let proposal = view
                    .proposals
                    .iter()
                    .find(|p| p.pr == pr.number && &p.change.id == id);
                let approval = approvals.iter().find(|(i, _)| i == id).map(|(_, a)| a);
                if let (Some(p), Some(approval)) = (proposal, approval) {
                    changes.push(PlanChange::Valid {
                        change: &p.change,
                        digest: p.digest.as_str(),
                        covered: &p.covered,
                        approval,
                        policies: policy_lines(&view, &p.change, &p.covered),
                    });
                }
            }
            // Change sets the head adds or edits that do not validate.
            for (_, id, errors) in view.proposal_errors.iter().filter(|e| e.0 == pr.number) {
                changes.push(PlanChange::Invalid {
                    id,
                    errors: errors.clone(),
                });
            }
            if changes.is_empty() {
                continue;
            }
            let body = plan::render(pr.number, &pr.head_sha, &public, &changes);
            if store.want_comment(pr.number, &body).await? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Posts every plan comment GitHub has not been given yet: edits the
    /// pull request's comment in place, creating it only when none exists.
    pub async fn post_plans(&self) -> Result<usize, SyncError> {
        let store = self.engine.store();
        let mut posted = 0;
        for c in store.due_comments().await? {
            // Another poster (replica) may hold it: then it is theirs.
            if !store.claim_comment(c.pr, CLAIM_MS).await? {
                continue;
            }
            match self.post_plan(&c).await {
                Ok(()) => {
                    store.comment_posted(c.pr, &c.body).await?;
                    posted += 1;
                }
                Err(e) => {
                    let wait = backoff_ms(2_000, c.attempts, 300_000);
                    tracing::warn!(pr = c.pr, error = %e, "plan comment not posted; will retry");
                    store
                        .comment_failed(c.pr, &e.to_string(), now_ms() + wait)
                        .await?;
                }
            }
        }
        Ok(posted)
    }

    /// Gives GitHub `c`'s body: in the comment recorded, else in ours
    /// found by its marker, else in a new one.
    async fn post_plan(&self, c: &PendingComment) -> Result<(), SyncError> {
        let store = self.engine.store();
        let number = c.pr as u64;
        let known = match c.comment_id {
            Some(id) => Some(id as u64),
            None => self.find_plan(number).await?,
        };
        if let Some(id) = known {
            match self.client.update_comment(id, &c.body).await {
                Ok(()) => {
                    store.comment_found(c.pr, id as i64).await?;
                    return Ok(());
                }
                // Deleted by someone: make it again.
                Err(ApiError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let id = self.client.create_comment(number, &c.body).await?;
        store.comment_found(c.pr, id as i64).await?;
        Ok(())
    }

    /// Our plan comment on pull request `number`, if one exists: it starts
    /// with the marker and was written by us (this App, or this token's
    /// user), so a comment someone else starts with the marker is ignored.
    async fn find_plan(&self, number: u64) -> Result<Option<u64>, SyncError> {
        let app = self.config.app_id;
        let login = match app {
            Some(_) => None,
            None => self.client.login().await?,
        };
        let ours = |c: &IssueComment| {
            let by_us = match (app, &login) {
                (Some(app), _) => c
                    .performed_via_github_app
                    .as_ref()
                    .is_some_and(|a| a.id == app),
                (None, Some(login)) => c.user.as_ref().is_some_and(|u| &u.login == login),
                (None, None) => false,
            };
            by_us
                && c.body
                    .as_deref()
                    .is_some_and(|b| b.starts_with(plan::MARKER))
        };
        Ok(self
            .client
            .comments(number)
            .await?
            .iter()
            .find(|c| ours(c))
            .map(|c| c.id))
    }
}

/// The policies in force on the default branch that govern `change`.
fn policy_lines(
    view: &crate::engine::RepoView,
    change: &ChangeSet,
    covered: &[CoveredPath],
) -> Vec<PolicyLine> {
    match view.governing(change, covered) {
        PoliciesInForce::Matched { policies } => policies
            .iter()
            .map(|p| PolicyLine {
                name: p.name.clone(),
                required: p.approvals.required,
                from: p.approvals.from.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        PoliciesInForce::BuiltinDefault => Vec::new(),
    }
}
