//! Commit statuses (SPEC §4, §13). Each tracked pull request's head shows
//! `changegate/<id>` for every change it touches, `changegate/policies`
//! when it edits policies, and the aggregate `changegate` that branch
//! protection can require in advance. What each should say is stored; the
//! poster sends only what GitHub has not been told, with backoff.

use super::{Github, StatusUpdate, SyncError};
use crate::clock::{backoff_ms, now_ms};
use crate::engine::view::{ChangeStatus, UnapprovedPolicy};
use crate::gate::approval::NotCounted;
use crate::gate::{ApprovalStatus, ChangeState, StepState};
use crate::model::{is_valid_change_id, RESERVED_CHANGE_ID};
use crate::store::PullRequestRecord;

/// The aggregate context: success only when every other one is.
pub const AGGREGATE: &str = "changegate";
/// The context for the policy files a pull request edits.
pub const POLICIES: &str = "changegate/policies";

/// The context of change set files whose names are no change id: no id
/// holds a space, so no change set's context is this.
pub const INVALID_FILE_NAMES: &str = "changegate/other change set files";

/// One commit status: GitHub's state and the text beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `success`, `pending`, `failure` or `error`.
    pub state: &'static str,
    /// At most 140 characters once posted.
    pub description: String,
}

fn wanted(state: &'static str, description: impl Into<String>) -> Wanted {
    Wanted {
        state,
        description: description.into(),
    }
}

/// A change as an open pull request proposes it.
pub fn proposed(approval: &ApprovalStatus) -> Wanted {
    if approval.satisfied {
        return wanted("success", format!("approved: {}", approval.summary()));
    }
    match approval
        .reviews
        .iter()
        .find(|r| r.reason == Some(NotCounted::ChangesRequested))
    {
        Some(r) => wanted(
            "pending",
            format!(
                "changes requested by {}; {}",
                r.approver,
                approval.summary()
            ),
        ),
        None => wanted("pending", approval.summary()),
    }
}

/// An open pull request that edits a change whose revision completed.
pub fn edits_completed(id: &str) -> Wanted {
    wanted(
        "failure",
        format!("`{id}` completed; an edit never runs under the same id: use a new change id"),
    )
}

/// A change a merged pull request brought to the default branch: how it runs.
pub fn merged(status: &ChangeStatus) -> Wanted {
    let done = status
        .steps
        .iter()
        .filter(|s| s.state == StepState::Succeeded)
        .count();
    let total = status.steps.len();
    match status.state {
        ChangeState::Proposed | ChangeState::Approved => wanted(
            "pending",
            format!(
                "merged; needs approval at the merged digest: {}",
                status.approvals.summary()
            ),
        ),
        ChangeState::Ready => wanted("success", format!("approved; ready to run ({total} steps)")),
        ChangeState::Running => match &status.rollout {
            Some(r) => wanted("pending", r.summary()),
            None => wanted(
                "pending",
                format!("running: {done} of {total} steps succeeded"),
            ),
        },
        ChangeState::Completed => wanted(
            "success",
            format!("completed: {total} of {total} steps succeeded"),
        ),
        ChangeState::Failed if status.rollout.as_ref().is_some_and(|r| r.halt.is_some()) => {
            let r = status.rollout.as_ref().expect("a rollout");
            wanted(
                "failure",
                format!(
                    "halted by {}; {} of {} targets done; retry or abandon",
                    r.halt.as_ref().map_or("", |h| h.alert.as_str()),
                    r.done,
                    r.targets.len()
                ),
            )
        }
        ChangeState::Failed => {
            let failed = status
                .steps
                .iter()
                .find(|s| matches!(s.state, StepState::Failed | StepState::Interrupted))
                .map_or("a step".to_string(), |s| format!("step {}", s.id));
            wanted(
                "failure",
                format!("{failed} failed; dependents refused until retry or abandon"),
            )
        }
        ChangeState::Abandoned => wanted("error", "abandoned"),
        ChangeState::RollingBack => {
            let (undone, total) = status
                .rollback
                .as_ref()
                .map_or((0, 0), |r| (r.undone, r.total));
            wanted(
                "pending",
                format!("rolling back: {undone} of {total} undone"),
            )
        }
        ChangeState::RolledBack => wanted("error", "rolled back"),
        ChangeState::RollbackFailed => wanted("failure", "rollback failed; retry or abandon it"),
    }
}

/// The policy files an open pull request edits, each with its approval.
pub fn policy_edits(edits: &[(String, ApprovalStatus)]) -> Wanted {
    if edits.is_empty() {
        return wanted("pending", "reading the policy files at this head");
    }
    let waiting: Vec<String> = edits
        .iter()
        .filter(|(_, a)| !a.satisfied)
        .map(|(path, a)| format!("{path} {}", tally(a)))
        .collect();
    if waiting.is_empty() {
        let all: Vec<String> = edits
            .iter()
            .map(|(path, a)| format!("{path} {}", tally(a)))
            .collect();
        wanted(
            "success",
            format!("policy edit approved: {}", all.join(", ")),
        )
    } else {
        wanted(
            "pending",
            format!(
                "policy edit needs the approvers in force: {}",
                waiting.join(", ")
            ),
        )
    }
}

/// "1 of 2": the tally of a policy edit's single rule.
fn tally(a: &ApprovalStatus) -> String {
    a.policies.first().map_or_else(String::new, |p| {
        format!("{} of {}", p.counted.min(p.required), p.required)
    })
}

/// The policy files (`paths`, at `blobs`) a merged pull request edited:
/// in force, or not because that revision was not approved.
pub fn merged_policy_edits(edits: &[(String, String)], unapproved: &[UnapprovedPolicy]) -> Wanted {
    let refused: Vec<&str> = edits
        .iter()
        .filter(|(path, blob)| {
            unapproved
                .iter()
                .any(|u| &u.path == path && &u.on_main == blob)
        })
        .map(|(path, _)| path.as_str())
        .collect();
    if refused.is_empty() {
        wanted("success", "merged; the policy edit is in force")
    } else {
        wanted(
            "failure",
            format!(
                "merged without approval: the last approved text of {} stays in force",
                refused.join(", ")
            ),
        )
    }
}

/// The aggregate status over every other context of one head.
pub fn aggregate(parts: &[(String, Wanted)]) -> Wanted {
    let rank = |s: &str| match s {
        "failure" | "error" => 2,
        "pending" => 1,
        _ => 0,
    };
    let worst = parts.iter().map(|(_, w)| rank(w.state)).max().unwrap_or(0);
    if parts.is_empty() {
        return wanted("success", "touches no change set or policy");
    }
    if worst == 0 {
        return wanted("success", format!("all {} approved", parts.len()));
    }
    let open: Vec<String> = parts
        .iter()
        .filter(|(_, w)| rank(w.state) > 0)
        .map(|(context, w)| format!("{context}: {}", w.description))
        .collect();
    wanted(
        if worst == 2 { "failure" } else { "pending" },
        open.join("; "),
    )
}

/// GitHub allows 140 characters.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!(
            "{}…",
            &s[..s[..i].char_indices().last().map_or(0, |(j, _)| j)]
        ),
        None => s.to_string(),
    }
}

impl Github {
    /// Works out the commit statuses each tracked pull request should show,
    /// and records those that changed.
    pub async fn update_statuses(&self) -> Result<usize, SyncError> {
        let store = self.engine.store();
        let public = self
            .engine
            .config()
            .server
            .public_url
            .trim_end_matches('/')
            .to_string();
        let mut changed = 0;
        let view = self.engine.view();
        for pr in store.pull_requests(true).await? {
            if pr.state != "open" && !pr.merged {
                continue;
            }
            let mut parts = Vec::new();
            let mut policies = Vec::new();
            for (key, blob) in store.pr_changes(pr.number).await? {
                if crate::model::is_policy_path(&key) {
                    policies.push((key, blob));
                } else if let Some(w) = self.change_status(&pr, &key).await? {
                    parts.push((
                        format!("changegate/{key}"),
                        w,
                        format!("{public}/changes/{key}"),
                    ));
                }
            }
            // Change sets the head adds or edits that do not validate have
            // no digest, so `pr_changes` lacks them; without a context of
            // their own the aggregate would read as touching nothing. Only
            // errors read at this head count (the view may lag a push).
            let read_here = view
                .proposal_heads
                .iter()
                .any(|(n, head, _)| *n == pr.number && *head == pr.head_sha);
            let errors = view.proposal_errors.iter().filter(|e| e.0 == pr.number);
            for (_, id, problems) in errors.filter(|_| read_here) {
                // A file name that is no change id gets one shared context,
                // and `changegate/policies` is taken.
                let context = if is_valid_change_id(id) && id != RESERVED_CHANGE_ID {
                    format!("changegate/{id}")
                } else {
                    INVALID_FILE_NAMES.to_string()
                };
                if !parts.iter().any(|(c, _, _)| *c == context) {
                    let first = problems.first().map_or("", String::as_str);
                    parts.push((
                        context,
                        wanted("failure", format!("does not validate: {first}")),
                        format!("{public}/"),
                    ));
                }
            }
            if !policies.is_empty() {
                let w = if pr.state == "open" {
                    let edits = self.engine.pr_policy_edits(pr.number, &pr.head_sha).await?;
                    // Every touched file must be read at this head before
                    // anything is said about it.
                    if edits.len() < policies.len() {
                        wanted("pending", "reading the policy files at this head")
                    } else {
                        policy_edits(&edits)
                    }
                } else {
                    merged_policy_edits(&policies, &view.unapproved_policies)
                };
                parts.push((POLICIES.to_string(), w, format!("{public}/")));
            }
            let summary: Vec<(String, Wanted)> = parts
                .iter()
                .map(|(c, w, _)| (c.clone(), w.clone()))
                .collect();
            // A head that could not be read touches nothing that is known,
            // which must not read as "touches no change set".
            // Until the view has read this head, what it touches that does
            // not validate is unknown: "nothing" must not read as green.
            let overall = match &pr.refused {
                Some(why) => wanted("failure", format!("head refused: {why}")),
                None if pr.state == "open" && !read_here => wanted("pending", "reading this head"),
                None => aggregate(&summary),
            };
            parts.push((AGGREGATE.to_string(), overall, format!("{public}/")));
            for (context, w, url) in parts {
                if store
                    .want_status(&pr.head_sha, &context, w.state, &w.description, &url)
                    .await?
                {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// What `changegate/<id>` should say on `pr`'s head.
    async fn change_status(
        &self,
        pr: &PullRequestRecord,
        id: &str,
    ) -> Result<Option<Wanted>, SyncError> {
        if pr.state == "open" {
            let on_main = self.engine.status(id).await?;
            if on_main.is_some_and(|s| s.state == ChangeState::Completed) {
                return Ok(Some(edits_completed(id)));
            }
            return Ok(self
                .engine
                .pr_approval(pr.number, id)
                .await?
                .map(|a| proposed(&a)));
        }
        Ok(self.engine.status(id).await?.map(|s| merged(&s)))
    }

    /// Posts every commit status GitHub has not been told yet.
    pub async fn post_statuses(&self) -> Result<usize, SyncError> {
        let store = self.engine.store();
        let mut posted = 0;
        for s in store.due_statuses().await? {
            let update = StatusUpdate {
                state: s.state.clone(),
                description: truncate(&s.description, 140),
                context: s.context.clone(),
                target_url: s.target_url.clone(),
            };
            match self.client.post_status(&s.sha, &update).await {
                Ok(()) => {
                    store.status_posted(&s).await?;
                    posted += 1;
                }
                Err(e) => {
                    let wait = backoff_ms(1000, s.attempts, 300_000);
                    tracing::warn!(sha = %s.sha, context = %s.context, error = %e, "commit status not posted; will retry");
                    store
                        .status_failed(&s, &e.to_string(), now_ms() + wait)
                        .await?;
                }
            }
        }
        Ok(posted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::approval::PolicyTally;

    fn approval(counted: u32, required: u32) -> ApprovalStatus {
        ApprovalStatus {
            satisfied: counted >= required,
            policies: vec![PolicyTally {
                name: "pg".into(),
                required,
                counted,
                approvers: vec![],
            }],
            reviews: vec![],
        }
    }

    #[test]
    fn a_rollout_reads_as_its_wave_and_targets_done() {
        use crate::engine::view::{RolloutStatus, TargetStatus};
        use crate::gate::{WaveState, WaveStatus};
        let wave = |index, state, bake_until| WaveStatus {
            index,
            targets: vec![],
            state,
            bake_until,
        };
        let target = |state| TargetStatus {
            target: "c".into(),
            wave: 1,
            state,
            step: "restart".into(),
            attempt: None,
        };
        let at = 1_795_705_200_000 + 20 * 60_000; // 15:20 UTC
        let mut r = RolloutStatus {
            waves: vec![
                wave(1, WaveState::Done, Some(0)),
                wave(2, WaveState::Baking, Some(at)),
                wave(3, WaveState::Pending, None),
            ],
            targets: (0..40)
                .map(|i| {
                    target(if i < 11 {
                        StepState::Succeeded
                    } else {
                        StepState::Pending
                    })
                })
                .collect(),
            done: 11,
            parallel: 4,
            halt: None,
        };
        assert_eq!(
            r.summary(),
            "wave 2 of 3 baking until 15:20 UTC; 11 of 40 targets done"
        );
        r.waves[1].state = WaveState::Done;
        r.waves[2].state = WaveState::Running;
        assert_eq!(r.summary(), "wave 3 of 3 running; 11 of 40 targets done");
    }

    #[test]
    fn the_aggregate_is_the_worst_of_its_parts() {
        assert_eq!(aggregate(&[]).state, "success");
        let ok = ("changegate/a".to_string(), wanted("success", "approved"));
        let waiting = (
            "changegate/b".to_string(),
            wanted("pending", "1 of 2 approvals"),
        );
        let failed = (
            "changegate/c".to_string(),
            wanted("failure", "step x failed"),
        );
        assert_eq!(
            aggregate(std::slice::from_ref(&ok)),
            wanted("success", "all 1 approved")
        );
        assert_eq!(
            aggregate(&[ok.clone(), waiting.clone()]),
            wanted("pending", "changegate/b: 1 of 2 approvals")
        );
        assert_eq!(aggregate(&[waiting, ok, failed]).state, "failure");
    }

    #[test]
    fn a_policy_edit_waits_for_every_file() {
        let edits = vec![
            ("policies/pg.yaml".to_string(), approval(1, 2)),
            ("policies/web.yaml".to_string(), approval(1, 1)),
        ];
        assert_eq!(
            policy_edits(&edits),
            wanted(
                "pending",
                "policy edit needs the approvers in force: policies/pg.yaml 1 of 2"
            )
        );
        let edits = vec![("policies/pg.yaml".to_string(), approval(2, 2))];
        assert_eq!(policy_edits(&edits).state, "success");
    }

    #[test]
    fn a_merged_unapproved_edit_fails() {
        let unapproved = vec![UnapprovedPolicy {
            path: "policies/pg.yaml".into(),
            on_main: "b2".into(),
            previous_in_force: true,
            approvals: "1 of 2 approvals (policy pg)".into(),
        }];
        let edits = vec![("policies/pg.yaml".to_string(), "b2".to_string())];
        assert_eq!(merged_policy_edits(&edits, &unapproved).state, "failure");
        let later = vec![("policies/pg.yaml".to_string(), "b1".to_string())];
        assert_eq!(merged_policy_edits(&later, &unapproved).state, "success");
    }

    #[test]
    fn descriptions_are_cut_at_140_characters() {
        let long = "x".repeat(200);
        assert_eq!(truncate(&long, 140).chars().count(), 140);
        assert_eq!(truncate("short", 140), "short");
    }
}
