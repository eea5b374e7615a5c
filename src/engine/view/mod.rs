//! What the server knows of the default branch, and a change's status
//! derived from it and the recorded facts.

mod approvals;
mod progress;

pub use approvals::{approval_facts, approval_of, fresh_approver};
pub use progress::{
    halted, revision_focus, rollback_entries, rollout_progress, state_of, state_of_in,
    step_progress, step_progress_in, Focus,
};

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::clock::weekday_minute;
use crate::config::Config;
use crate::gate::claim::Dependency;
use crate::gate::{
    self, ApprovalStatus, Breaker, ChangeState, ClaimContext, Directory, Next, Refusal, StepState,
};
use crate::model::{
    policies_in_force, ChangeSet, CoveredPath, Diagnostic, Digest, EmailsById, OnBranch,
    PoliciesInForce, Policy, Window,
};
use crate::store::{
    Attempt, ChangeFacts, GoAheadRecord, OperatorAction, RevisionRecord, TargetLock,
};

/// Each valid change set on the default branch by id, packed
/// ([`OnBranch`]: unpack the one a decision needs).
pub type BranchChanges = BTreeMap<String, OnBranch>;

/// The default branch as last read.
#[derive(Debug, Clone, Default)]
pub struct RepoView {
    /// Its commit.
    pub commit: String,
    /// Valid change sets with their digests and covered paths. Shared
    /// (like `authors` and `emails`): a view is copied on every refresh,
    /// and a copy of 100,000 change sets is not free.
    pub changes: Arc<BranchChanges>,
    /// The policies in force.
    pub policies: Vec<Policy>,
    /// Errors in `policies/` files: while any, every claim is refused.
    pub policy_errors: Vec<Diagnostic>,
    /// Per change: the kinds and targets of its earlier revisions on the
    /// default branch. Policies that matched those keep governing it.
    pub previous_labels: BTreeMap<String, Vec<(String, Vec<String>)>>,
    /// Per change: names and logins of its authors (from commit emails).
    pub authors: Arc<BTreeMap<String, Arc<BTreeSet<String>>>>,
    /// Per change: the emails of the commits that touched what it covers
    /// (authors are worked out from them and `[[tokens]]`).
    pub emails: Arc<EmailsById>,
    /// Change sets on the default branch that do not validate.
    pub invalid: BTreeSet<String>,
    /// Its changes by covered root, for what a pull request touches.
    pub roots: Arc<crate::model::RootIndex>,
    /// Changes in open pull requests that differ from the default branch.
    pub proposals: Vec<Proposal>,
    /// What `proposals` were read from: (pull request, head, touched ids).
    pub proposal_heads: Vec<(i64, String, Vec<String>)>,
    /// Policy files that open pull requests add, edit or delete.
    pub policy_proposals: Vec<PolicyProposal>,
    /// The generation of `[[tokens]]` the authors were read with.
    pub tokens_gen: u64,
    /// Change sets an open pull request touches that do not validate at
    /// its head: (pull request, change id, `path:line:col: message`s).
    pub proposal_errors: Vec<(i64, String, Vec<String>)>,
    /// When each policy file's text in force took effect (unix ms), with
    /// GitHub: an edit counts only reviews given since.
    pub policies_since: BTreeMap<String, i64>,
    /// Policy files whose text on the default branch is not in force
    /// because that revision was not approved (with GitHub only).
    pub unapproved_policies: Vec<UnapprovedPolicy>,
}

/// A policy file as an open pull request would have it.
#[derive(Debug, Clone)]
pub struct PolicyProposal {
    /// The pull request.
    pub pr: i64,
    /// The head it was read at.
    pub head_sha: String,
    /// `policies/<name>.yaml`.
    pub path: String,
    /// Its blob id at the head, or `absent` when the pull request deletes it.
    pub blob: String,
    /// The policy at the head, if it is there and valid.
    pub policy: Option<Policy>,
}

/// A policy file on the default branch whose revision was not approved:
/// the last approved text stays in force (SPEC §13).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UnapprovedPolicy {
    /// `policies/<name>.yaml`.
    pub path: String,
    /// Its blob id on the default branch, or `absent` when deleted there.
    pub on_main: String,
    /// Whether a last approved text stays in force (false: a new file,
    /// which governs nothing until approved).
    pub previous_in_force: bool,
    /// Its approvals, e.g. "1 of 2 approvals (policy pg)".
    pub approvals: String,
}

impl RepoView {
    /// The view as the last run stored it: its commit, changes, emails and
    /// invalid ids (policies and the rest are read afresh).
    pub fn from_stored(stored: crate::store::StoredBranch) -> RepoView {
        RepoView {
            commit: stored.commit,
            invalid: stored.invalid,
            changes: Arc::new(stored.changes),
            emails: Arc::new(stored.emails),
            ..RepoView::default()
        }
    }

    /// The policies governing `change` (with covered paths `covered`):
    /// those matching it now, and those that matched any earlier revision
    /// on the default branch, so editing `kind` or `targets` never moves a
    /// change out of a policy (SPEC §13, "No relabelling").
    pub fn governing(&self, change: &ChangeSet, covered: &[CoveredPath]) -> PoliciesInForce<'_> {
        let mut governing = policies_in_force(change, covered, &self.policies);
        for (kind, targets) in self.previous_labels.get(&change.id).into_iter().flatten() {
            let mut before = change.clone();
            before.kind = kind.clone();
            before.targets = targets.clone();
            governing = match (governing, policies_in_force(&before, &[], &self.policies)) {
                (
                    PoliciesInForce::Matched { mut policies },
                    PoliciesInForce::Matched { policies: more },
                ) => {
                    for p in more {
                        if !policies.iter().any(|q| q.name == p.name) {
                            policies.push(p);
                        }
                    }
                    PoliciesInForce::Matched { policies }
                }
                (PoliciesInForce::BuiltinDefault, then) => then,
                (now, PoliciesInForce::BuiltinDefault) => now,
            };
        }
        governing
    }
}

/// A change as [`RepoView::lookup`] finds it: (change, digest, covered
/// paths, the proposal when it is only proposed).
type Found<'a> = (
    Cow<'a, ChangeSet>,
    Cow<'a, Digest>,
    Cow<'a, [CoveredPath]>,
    Option<&'a Proposal>,
);

/// A change set as an open pull request would have it.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The pull request.
    pub pr: i64,
    /// Its head commit.
    pub head_sha: String,
    /// The change set at the head.
    pub change: ChangeSet,
    /// Its digest at the head.
    pub digest: Digest,
    /// Its covered paths at the head.
    pub covered: Vec<CoveredPath>,
}

impl RepoView {
    /// The change on the default branch, else its latest proposal.
    fn lookup(&self, id: &str) -> Option<Found<'_>> {
        match self.changes.get(id) {
            Some(held) => {
                let (change, covered) = held.unpack(id);
                let digest = Cow::Owned(held.digest());
                Some((Cow::Owned(change), digest, Cow::Owned(covered), None))
            }
            None => self
                .proposals
                .iter()
                .rev()
                .find(|p| p.change.id == id)
                .map(|p| {
                    let (change, covered) =
                        (Cow::Borrowed(&p.change), Cow::Borrowed(&p.covered[..]));
                    (change, Cow::Borrowed(&p.digest), covered, Some(p))
                }),
        }
    }

    /// The change `id` on the default branch, unpacked: (change, digest,
    /// covered paths).
    pub fn on_branch(&self, id: &str) -> Option<(ChangeSet, Digest, Vec<CoveredPath>)> {
        let held = self.changes.get(id)?;
        let (change, covered) = held.unpack(id);
        Some((change, held.digest(), covered))
    }

    /// Ids of changes only proposed so far.
    pub fn proposed_ids(&self) -> BTreeSet<&str> {
        self.proposals
            .iter()
            .map(|p| p.change.id.as_str())
            .filter(|id| !self.changes.contains_key(*id))
            .collect()
    }
}

/// A step as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepStatus {
    /// The step id.
    pub id: String,
    /// From its latest attempt.
    #[schema(value_type = String)]
    pub state: StepState,
    /// An operator's go-ahead is needed before it can be claimed.
    pub needs_confirmation: bool,
    /// The go-ahead its next attempt would use, at the current digest.
    pub confirmation: Option<GoAheadRecord>,
    /// Every attempt, oldest first: its own and its rollback's (`phase`).
    #[schema(value_type = Vec<Attempt>)]
    pub attempts: Vec<Arc<Attempt>>,
    /// Once a rollback was asked for and the step is among those undone:
    /// where its rollback stands (`skipped` when it declares none).
    #[schema(value_type = Option<String>)]
    pub rollback: Option<StepState>,
}

/// A rollback asked for (SPEC §11), and how far it got.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RollbackStatus {
    /// Who asked, why and when.
    pub requested: OperatorAction,
    /// Steps undone (succeeded or with nothing to undo).
    pub undone: usize,
    /// Steps to undo.
    pub total: usize,
}

/// A rollout as the API shows it (SPEC §10).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutStatus {
    /// Each wave: `index` from 1, its `targets`, `state` (pending, running,
    /// baking, done, failed) and `bake_until` (unix ms) once it is done.
    #[schema(value_type = Vec<Object>)]
    pub waves: Vec<gate::WaveStatus>,
    /// Each target, in declared order.
    pub targets: Vec<TargetStatus>,
    /// Targets through every per-target step.
    pub done: usize,
    /// At most this many targets at once.
    pub parallel: u32,
    /// The alert that halted it, while that halt stands.
    pub halt: Option<crate::store::Halt>,
}

impl RolloutStatus {
    /// Where a running rollout is, e.g. `wave 2 of 3 baking until 14:20 UTC;
    /// 11 of 40 targets done`.
    pub fn summary(&self) -> String {
        let r = self;
        let of = r.waves.len();
        let wave = r
            .waves
            .iter()
            .find(|w| w.state == gate::WaveState::Baking)
            .or_else(|| r.waves.iter().find(|w| w.state != gate::WaveState::Done));
        let at = match wave {
            Some(w) if w.state == gate::WaveState::Baking => format!(
                "wave {} of {of} baking until {}",
                w.index,
                crate::clock::format_hm(w.bake_until.unwrap_or_default())
            ),
            Some(w) => format!("wave {} of {of} {}", w.index, w.state.as_str()),
            None => format!("{of} waves done; finishing"),
        };
        format!("{at}; {} of {} targets done", r.done, r.targets.len())
    }
}

/// One target of a rollout.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetStatus {
    /// The target.
    pub target: String,
    /// Its wave, from 1.
    pub wave: usize,
    /// Pending, running, succeeded, failed or interrupted.
    #[schema(value_type = String)]
    pub state: StepState,
    /// The per-target step it is at (running, failed, or next); the last
    /// one once it is through.
    pub step: String,
    /// That step's latest attempt on it, if any.
    pub attempt: Option<String>,
}

/// A change with everything decided about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChangeStatus {
    /// The change id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its kind.
    pub kind: String,
    /// Lifecycle state.
    #[schema(value_type = String)]
    pub state: ChangeState,
    /// The digest on the default branch: what approvals must bind to.
    pub digest: String,
    /// The default branch commit.
    pub commit: String,
    /// Its targets.
    pub targets: Vec<String>,
    /// Its dependencies.
    pub depends_on: Vec<String>,
    /// Whom the approvals come from and whether they count.
    #[schema(value_type = Object)]
    pub approvals: ApprovalStatus,
    /// Steps in order.
    pub steps: Vec<StepStatus>,
    /// Why the next claim would be refused, if it would.
    #[schema(value_type = Vec<Object>)]
    pub blockers: Vec<Refusal>,
    /// Targets this change holds.
    pub locks: Vec<String>,
    /// Covered paths and their blobs.
    #[schema(value_type = Vec<Object>)]
    pub covered_paths: Vec<CoveredPath>,
    /// The abandonment, if any.
    pub abandonment: Option<OperatorAction>,
    /// The rollback, once asked for.
    pub rollback: Option<RollbackStatus>,
    /// For a change with per-target steps: its waves and targets.
    pub rollout: Option<RolloutStatus>,
    /// The digest on the default branch, when this revision is not it
    /// (`null` when the file is gone from it).
    pub main_digest: Option<String>,
    /// Things a person should know: `superseded`, `edited-after-completion`.
    pub warnings: Vec<String>,
}

/// Everything the decision needs beyond one change's facts.
pub struct World<'a> {
    /// The server's configuration.
    pub config: Arc<Config>,
    /// The default branch.
    pub view: &'a RepoView,
    /// Facts of the change's dependencies.
    pub dependency_facts: &'a BTreeMap<String, ChangeFacts>,
    /// Every held lock.
    pub locks: &'a [TargetLock],
    /// The step breaker.
    pub breaker: &'a Breaker,
    /// Now (unix ms).
    pub now: i64,
    /// Cached team memberships and repository permissions.
    pub directory: &'a (dyn Directory + Sync),
    /// For changes whose revision in flight (or completed) is not the one
    /// on the default branch: that revision's change set, read from its
    /// commit.
    pub revisions: BTreeMap<String, Arc<RevisionSet>>,
    /// Why the fleet monitor could not be asked about a rollout's targets,
    /// when a claim asked and it could not.
    pub monitor_unreachable: Option<&'a str>,
    /// A claim's decision: the status leaves out a rollout's rows per
    /// target and per wave, which only people read.
    pub brief: bool,
}

/// A revision's change set, digest and covered paths, read from its commit.
pub type RevisionSet = (ChangeSet, Digest, Vec<CoveredPath>);

/// The claim decision for `id` with the executor's digest (the gate's
/// answer, step index included), plus the status it was decided from.
pub fn decide_claim(
    world: &World<'_>,
    id: &str,
    facts: &ChangeFacts,
    executor_digest: &str,
) -> (Result<Next, Refusal>, ChangeStatus) {
    let (status, decision) = assess(world, id, facts, Some(executor_digest));
    (decision, status)
}

/// Everything decided about change `id`. `executor_digest` is the claimant's
/// digest; without one (a status read) the approved digest is assumed.
pub fn status_of(
    world: &World<'_>,
    id: &str,
    facts: &ChangeFacts,
    executor_digest: Option<&str>,
) -> ChangeStatus {
    assess(world, id, facts, executor_digest).0
}

/// The status of `id` and the gate's decision on a claim, which is also
/// the first of the status's blockers.
fn assess(
    world: &World<'_>,
    id: &str,
    facts: &ChangeFacts,
    executor_digest: Option<&str>,
) -> (ChangeStatus, Result<Next, Refusal>) {
    let found = world.view.lookup(id);
    let main = found
        .as_ref()
        .map(|(c, d, covered, p)| (&**c, &**d, &**covered, *p));
    // A proposal has no revisions yet; a change on main may.
    let main_digest = main
        .filter(|m| m.3.is_none())
        .map(|m| m.1.as_str().to_string());
    let elsewhere = |r: &RevisionRecord| {
        world
            .revisions
            .get(id)
            .filter(|set| set.1.as_str() == r.digest)
            .cloned()
    };
    match revision_focus(main_digest.as_deref(), facts) {
        Focus::InFlight(r) => {
            if let Some(set) = elsewhere(r) {
                let (mut s, _) = status_at(
                    world,
                    id,
                    Some((&set.0, &set.1, &set.2[..], None)),
                    &facts.for_revision(&r.digest),
                    facts,
                    executor_digest,
                );
                let main_says = main_digest.as_ref().map_or(
                    "the change is no longer on the default branch".to_string(),
                    |d| format!("the default branch now holds {d}"),
                );
                let refusal = if executor_digest == Some(r.digest.as_str()) {
                    Refusal {
                        reason: gate::RefusalReason::Superseded,
                        detail: format!("revision {} of `{id}` is {}, but {main_says}: it cannot go forward; roll it back or `changegate abandon {id}`", r.digest, s.state),
                    }
                } else {
                    Refusal {
                        reason: gate::RefusalReason::RevisionInFlight,
                        detail: format!("revision {} of `{id}` is {} and {main_says}; a new revision starts only once that one is completed, rolled back or abandoned", r.digest, s.state),
                    }
                };
                s.blockers.insert(0, refusal.clone());
                s.commit = r.commit_sha.clone();
                s.main_digest = main_digest.clone();
                s.warnings.push("superseded".into());
                return (s, Err(refusal));
            }
        }
        Focus::Completed(c) => {
            if let Some(set) = elsewhere(c) {
                let (mut s, _) = status_at(
                    world,
                    id,
                    Some((&set.0, &set.1, &set.2[..], None)),
                    &facts.for_revision(&c.digest),
                    facts,
                    executor_digest,
                );
                let refusal = Refusal {
                    reason: gate::RefusalReason::Completed,
                    detail: format!("revision {} of `{id}` completed; a different digest on the default branch never runs under the same id: use a new change id", c.digest),
                };
                s.state = ChangeState::Completed;
                s.blockers = vec![refusal.clone()];
                s.commit = c.commit_sha.clone();
                s.main_digest = main_digest.clone();
                s.warnings.push("edited-after-completion".into());
                return (s, Err(refusal));
            }
        }
        Focus::Main => {}
    }
    let revision_facts = match &main_digest {
        Some(d) => facts.for_revision(d),
        None => facts.clone(),
    };
    let (mut s, decision) = status_at(world, id, main, &revision_facts, facts, executor_digest);
    // The revision in flight (or completed) could not be read from its
    // commit: still refuse, from its record alone (fail closed).
    match revision_focus(main_digest.as_deref(), facts) {
        Focus::InFlight(r) => {
            let refusal = Refusal {
                reason: gate::RefusalReason::RevisionInFlight,
                detail: format!("revision {} of `{id}` is in flight (its change set cannot be read from commit `{}`); a new revision starts only once it is abandoned", r.digest, r.commit_sha),
            };
            s.blockers.insert(0, refusal.clone());
            s.main_digest = main_digest;
            s.warnings.push("superseded".into());
            (s, Err(refusal))
        }
        Focus::Completed(c) => {
            let refusal = Refusal {
                reason: gate::RefusalReason::Completed,
                detail: format!("revision {} of `{id}` completed; a different digest never runs under the same id: use a new change id", c.digest),
            };
            s.blockers = vec![refusal.clone()];
            s.state = ChangeState::Completed;
            s.main_digest = main_digest;
            s.warnings.push("edited-after-completion".into());
            (s, Err(refusal))
        }
        Focus::Main => (s, decision),
    }
}

/// The status of one revision of `id` (`found`), from its own facts;
/// `all` holds every revision's, for attempt numbering.
fn status_at(
    world: &World<'_>,
    id: &str,
    found: Option<(&ChangeSet, &Digest, &[CoveredPath], Option<&Proposal>)>,
    facts: &ChangeFacts,
    all: &ChangeFacts,
    executor_digest: Option<&str>,
) -> (ChangeStatus, Result<Next, Refusal>) {
    let Some((change, digest, covered, proposal)) = found else {
        let refusal = Refusal {
            reason: gate::RefusalReason::Unknown,
            detail: format!("no change `{id}` on the default branch"),
        };
        let status = ChangeStatus {
            id: id.to_string(),
            title: String::new(),
            kind: String::new(),
            state: ChangeState::Proposed,
            digest: String::new(),
            commit: world.view.commit.clone(),
            targets: vec![],
            depends_on: vec![],
            approvals: ApprovalStatus {
                satisfied: false,
                policies: vec![],
                reviews: vec![],
            },
            steps: vec![],
            blockers: vec![refusal.clone()],
            locks: vec![],
            covered_paths: vec![],
            abandonment: None,
            rollback: None,
            rollout: None,
            main_digest: None,
            warnings: vec![],
        };
        return (status, Err(refusal));
    };
    let approvals = approval_of(world, change, digest, covered, facts);
    let rollout = rollout_progress(change, facts);
    let mut progress = step_progress_in(change, facts, rollout.as_ref());
    // Attempt numbers run across revisions: the next is after every one.
    for (p, step) in progress.iter_mut().zip(&change.steps) {
        p.attempts = all
            .attempts
            .iter()
            .filter(|a| a.step_id == step.id)
            .map(|a| a.attempt_no)
            .max()
            .unwrap_or(0);
    }
    let rollback = rollback_entries(change, facts, &progress);
    let rollback_states: Option<Vec<StepState>> = rollback
        .as_ref()
        .map(|entries| entries.iter().map(|e| e.progress.state).collect());
    let state = match proposal {
        Some(_) if approvals.satisfied => ChangeState::Approved,
        Some(_) => ChangeState::Proposed,
        None => halted(
            gate::change_state(
                facts.abandonment.is_some(),
                approvals.satisfied,
                &progress.iter().map(|p| p.state).collect::<Vec<_>>(),
                rollback_states.as_deref(),
            ),
            facts,
        ),
    };
    let dependencies: Vec<Dependency> = change
        .depends_on
        .iter()
        .map(|dep| {
            let dep_change = world
                .view
                .changes
                .get(dep)
                .map(|h| (h.change(dep), h.digest()));
            let dep_facts = world.dependency_facts.get(dep).cloned().unwrap_or_default();
            // A completed revision satisfies dependents, whatever main holds now.
            let state = if dep_facts.completed().is_some() && dep_facts.in_flight().is_none() {
                Some(ChangeState::Completed)
            } else {
                dep_change
                    .as_ref()
                    .map(|(c, d)| state_of(c, &dep_facts.for_revision(d.as_str()), false))
            };
            let failure = dep_change.as_ref().and_then(|(c, _)| {
                step_progress(c, &dep_facts)
                    .iter()
                    .zip(&c.steps)
                    .find_map(|(p, s)| p.failure.as_ref().map(|f| format!("step {}, {f}", s.id)))
            });
            Dependency {
                id: dep.clone(),
                state,
                failure,
            }
        })
        .collect();
    let in_force = world.view.governing(change, covered);
    let governing: Vec<&Policy> = match &in_force {
        PoliciesInForce::Matched { policies } => policies.clone(),
        PoliciesInForce::BuiltinDefault => vec![],
    };
    let windows: Vec<(&str, &[Window])> = governing
        .iter()
        .filter(|p| !p.execution.windows.is_empty())
        .map(|p| (p.name.as_str(), &p.execution.windows[..]))
        .collect();
    let lock_states: Vec<(String, String, ChangeState)> = world
        .locks
        .iter()
        .map(|l| {
            let holder_state = if l.change_id == id {
                state
            } else {
                world
                    .view
                    .changes
                    .get(&l.change_id)
                    .map_or(ChangeState::Failed, |held| {
                        state_of(
                            &held.change(&l.change_id),
                            world
                                .dependency_facts
                                .get(&l.change_id)
                                .unwrap_or(&ChangeFacts::default()),
                            false,
                        )
                    })
            };
            (l.target.clone(), l.change_id.clone(), holder_state)
        })
        .collect();
    let go_aheads: Vec<gate::GoAhead> = facts
        .go_aheads
        .iter()
        .map(|g| gate::GoAhead {
            step_id: g.step_id.clone(),
            digest: g.digest.clone(),
            attempt_no: g.attempt_no,
        })
        .collect();
    let summary = approvals.summary();
    let policy_error = world.view.policy_errors.first().map(|d| d.to_string());
    let halt = facts.halt().map(|h| format!("{} ({})", h.alert, h.detail));
    let ctx = ClaimContext {
        id,
        change: Some(change),
        state,
        approved_digest: digest.as_str(),
        approval_summary: &summary,
        executor_digest: executor_digest.unwrap_or(digest.as_str()),
        dependencies: &dependencies,
        breaker: world.breaker,
        now: weekday_minute(world.now),
        windows: &windows,
        steps: &progress,
        go_aheads: &go_aheads,
        confirm_each_step: governing.iter().any(|p| p.execution.confirm_each_step),
        locks: &lock_states,
        max_targets_per_step: governing
            .iter()
            .filter_map(|p| p.execution.max_targets_per_step)
            .min(),
        policies_invalid: policy_error.as_deref(),
        rollback: rollback.as_deref(),
        rollout: rollout.as_ref(),
        halt: halt.as_deref(),
        monitor_unreachable: world.monitor_unreachable,
        now_ms: world.now,
        max_wave: governing.iter().filter_map(|p| p.execution.max_wave).min(),
        min_bake_ms: governing
            .iter()
            .filter_map(|p| p.execution.min_bake)
            .map(|d| d.as_secs() as i64 * 1000)
            .max(),
    };
    let decision = match proposal {
        Some(p) => Err(Refusal {
            reason: gate::RefusalReason::Unknown,
            detail: format!(
                "`{id}` is proposed in pull request #{} ({}) and not on the default branch yet; it runs once merged and approved there",
                p.pr,
                approvals.summary()
            ),
        }),
        None => gate::claim_decision(&ctx),
    };
    let blockers = decision.clone().err().into_iter().collect();
    let confirm_each = ctx.confirm_each_step;
    let steps = change
        .steps
        .iter()
        .zip(&progress)
        .map(|(s, p)| StepStatus {
            id: s.id.clone(),
            state: p.state,
            needs_confirmation: s.confirm || confirm_each,
            // The go-ahead the next attempt would use, if one is recorded.
            confirmation: facts
                .go_aheads
                .iter()
                .find(|g| {
                    g.step_id == s.id
                        && g.digest == digest.as_str()
                        && g.attempt_no == p.attempts + 1
                })
                .cloned(),
            attempts: facts
                .attempts
                .iter()
                .filter(|a| a.step_id == s.id)
                .cloned()
                .collect(),
            rollback: rollback.as_ref().and_then(|entries| {
                entries
                    .iter()
                    .find(|e| change.steps[e.step].id == s.id)
                    .map(|e| e.progress.state)
            }),
        })
        .collect();
    let rollback = facts
        .rollback
        .clone()
        .zip(rollback_states)
        .map(|(requested, states)| {
            let (undone, total) = gate::rollback::undone(&states);
            RollbackStatus {
                requested,
                undone,
                total,
            }
        });
    let rollout = rollout.map(|r| match world.brief {
        // A claim needs the counts, not a row per target.
        true => RolloutStatus {
            waves: vec![],
            targets: vec![],
            done: r.targets_done(),
            parallel: r.parallel,
            halt: facts.halt().cloned(),
        },
        false => rollout_status(change, &r, facts, world.now),
    });
    let status = ChangeStatus {
        id: id.to_string(),
        title: change.title.clone(),
        kind: change.kind.clone(),
        state,
        digest: digest.to_string(),
        commit: proposal.map_or_else(|| world.view.commit.clone(), |p| p.head_sha.clone()),
        targets: change.targets.clone(),
        depends_on: change.depends_on.clone(),
        approvals,
        steps,
        blockers,
        locks: world
            .locks
            .iter()
            .filter(|l| l.change_id == id)
            .map(|l| l.target.clone())
            .collect(),
        covered_paths: covered.to_vec(),
        abandonment: facts.abandonment.clone(),
        rollback,
        rollout,
        main_digest: None,
        warnings: vec![],
    };
    (status, decision)
}

/// The API's view of a rollout's progress at `now`.
fn rollout_status(
    change: &ChangeSet,
    r: &gate::RolloutProgress,
    facts: &ChangeFacts,
    now: i64,
) -> RolloutStatus {
    // The latest attempt of each (step, target), read once.
    let mut latest: std::collections::HashMap<(&str, &str), &crate::store::Attempt> =
        Default::default();
    for a in &facts.attempts {
        if let Some(t) = &a.target {
            let e = latest.entry((a.step_id.as_str(), t.as_str())).or_insert(a);
            if a.attempt_no > e.attempt_no {
                *e = a;
            }
        }
    }
    let targets = r
        .targets
        .iter()
        .map(|t| {
            // The step it is at: the first not through, else the last.
            let at = t
                .steps
                .iter()
                .position(|p| p.state != StepState::Succeeded)
                .unwrap_or(t.steps.len() - 1);
            let step = &change.steps[r.block.start + at].id;
            let attempt = latest
                .get(&(step.as_str(), t.target.as_str()))
                .map(|a| a.id.clone());
            TargetStatus {
                target: t.target.clone(),
                wave: t.wave + 1,
                state: t.state(),
                step: step.clone(),
                attempt,
            }
        })
        .collect();
    RolloutStatus {
        waves: r.wave_statuses(now),
        targets,
        done: r.targets_done(),
        parallel: r.parallel,
        halt: facts.halt().cloned(),
    }
}
