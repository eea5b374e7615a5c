//! The gate at work: gathers facts from git and the store, asks the pure
//! core ([`crate::gate`]) for decisions, and records the outcomes — each in
//! one write transaction, so concurrent executors and replicas cannot both
//! win a race.

mod actions;
pub use actions::{ActionAnswer, ActionDecision};
mod alerting;
mod directory;
mod policy_review;
mod read;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::now_ms;
use crate::config::Config;
use crate::gate::{breaker_state, Breaker, BreakerConfig, ChangeState, Refusal, StepState};
use crate::git::{ChangeRepo, GitError};
use crate::model::{covered_paths, Digest, PoliciesInForce};
use crate::redact::redact;
use crate::store::{
    Attempt, ChangeFacts, GoAheadRecord, Store, StoreError, SyncReport, WorldFacts, WriteTx,
};
pub use directory::DirectoryCache;
pub use read::{read_default_branch, read_proposals, repo_path};
use view::{status_of, World};
pub use view::{ChangeStatus, Proposal, RepoView};

/// What went wrong while acting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The request is refused by a rule; `reason` is a stable word.
    #[error("{reason}: {detail}")]
    Refused {
        /// E.g. `not-approved`, `unknown`.
        reason: &'static str,
        /// For a person.
        detail: String,
    },
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
}

fn refused(reason: &'static str, detail: impl Into<String>) -> EngineError {
    EngineError::Refused {
        reason,
        detail: detail.into(),
    }
}

/// A granted claim: what the executor must run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimGrant {
    /// The attempt id; heartbeats and the report name it.
    pub attempt: String,
    /// The change.
    pub change: String,
    /// The step.
    pub step: String,
    /// 1-based position of the step.
    pub step_number: usize,
    /// How many steps the change has.
    pub steps_total: usize,
    /// Precondition command, if any.
    pub check: Option<String>,
    /// The command.
    pub run: String,
    /// Postcondition command, if any.
    pub verify: Option<String>,
    /// Variables for the commands.
    pub env: BTreeMap<String, String>,
    /// Step timeout in seconds.
    pub timeout_secs: u64,
    /// Lease expiry (unix ms); heartbeat before it.
    pub lease_expires_at: i64,
    /// How long each heartbeat extends the lease, in seconds.
    pub lease_secs: u64,
}

/// An executor's report of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `succeeded` or `failed`.
    pub outcome: Outcome,
    /// The exit code of the failing (or last) command.
    pub exit_code: Option<i64>,
    /// How long the commands ran.
    pub duration_ms: i64,
    /// The last 64 KiB of output; the server redacts secrets again.
    #[serde(default)]
    pub output_tail: String,
}

/// A step's outcome as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every command exited 0.
    Succeeded,
    /// A command failed or timed out.
    Failed,
}

/// What a report or heartbeat found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptAnswer {
    /// The attempt as now recorded.
    pub attempt: Attempt,
    /// The change's state afterwards.
    #[schema(value_type = String)]
    pub change_state: ChangeState,
    /// False when this report repeated one already recorded (or came late).
    pub recorded: bool,
}

/// The most output kept per attempt.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// The last `OUTPUT_TAIL_BYTES` of `output`, cut at a character boundary.
pub fn tail(output: &str) -> &str {
    let mut start = output.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    &output[start..]
}

/// The gate service: shared by every HTTP handler.
pub struct Engine {
    config: Arc<Config>,
    store: Store,
    view: RwLock<Arc<RepoView>>,
    directory: DirectoryCache,
    /// Revisions read from their commits, by (change, digest); `None`
    /// where the commit does not hold that revision.
    revisions: std::sync::Mutex<RevisionCache>,
}

/// Revisions read from their commits, by (change, digest).
type RevisionCache = HashMap<(String, String), Option<Arc<view::RevisionSet>>>;

impl Engine {
    /// An engine with an empty view; call [`Engine::refresh`].
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        Engine {
            config,
            store,
            view: RwLock::new(Arc::new(RepoView::default())),
            directory: DirectoryCache::default(),
            revisions: Default::default(),
        }
    }

    /// `text` with secrets removed ([`redact`]), including this server's
    /// own: the GitHub token and the webhook secret. For output tails,
    /// reasons and comments, before they are stored or sent anywhere.
    pub fn scrub(&self, text: &str) -> String {
        let own: Vec<String> = self
            .config
            .github
            .iter()
            .flat_map(|g| [&g.token_env, &g.webhook_secret_env])
            .filter_map(|var| std::env::var(var).ok())
            .collect();
        redact(text, &own)
    }

    /// Cached team memberships and repository permissions.
    pub fn directory(&self) -> &DirectoryCache {
        &self.directory
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where change sets are read from: the server's bare mirror when
    /// GitHub is configured, else `repo.url` itself.
    pub fn repo_path(&self) -> std::path::PathBuf {
        repo_path(&self.config)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The default branch as last read.
    pub fn view(&self) -> Arc<RepoView> {
        self.view.read().expect("view lock").clone()
    }

    fn breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            max_failures: self.config.breaker.max_failures as usize,
            window_ms: self.config.breaker.window.as_secs() as i64 * 1000,
        }
    }

    /// Re-reads the default branch, records changes and digests, and swaps the view.
    pub async fn refresh(&self) -> Result<SyncReport, EngineError> {
        let path = self.repo_path();
        let old = self.view();
        let tip = ChangeRepo::open(&path)?
            .at(&self.config.repo.default_branch)?
            .commit_id()
            .to_string();
        let mut open = Vec::new();
        for pr in self.store.pull_requests(false).await? {
            let ids: Vec<String> = self
                .store
                .pr_changes(pr.number)
                .await?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            open.push((pr.number, pr.head_sha, ids));
        }
        // Reading a commit is O(change sets): skip what has not moved, so a
        // timer tick or a review costs nothing and a pull request event
        // re-reads only that pull request's head.
        // A policy revision waiting for approval is looked at again: a
        // review may have arrived since.
        if tip == old.commit && open == old.proposal_heads && old.unapproved_policies.is_empty() {
            return Ok(SyncReport::default());
        }
        let (mut view, report) = if tip == old.commit {
            let mut same = (*old).clone();
            same.proposals.clear();
            same.policy_proposals.clear();
            if !same.unapproved_policies.is_empty() {
                self.review_policies(&mut same).await?;
            }
            (same, SyncReport::default())
        } else {
            let view = read_default_branch(&self.config, &path)?;
            let changes: Vec<_> = view
                .changes
                .values()
                .map(|(c, d, _)| (c.clone(), d.clone()))
                .collect();
            let report = self.store.sync_changes(&view.commit, &changes).await?;
            let mut view = view;
            view.previous_labels = self.store.previous_labels().await?;
            self.review_policies(&mut view).await?;
            self.alert_on_policy_errors(&view).await?;
            self.record_completions(&view).await?;
            (view, report)
        };
        for head in &open {
            if old.proposal_heads.contains(head) {
                let of_it = |pr: i64| pr == head.0;
                view.proposals
                    .extend(old.proposals.iter().filter(|p| of_it(p.pr)).cloned());
                view.policy_proposals
                    .extend(old.policy_proposals.iter().filter(|p| of_it(p.pr)).cloned());
            } else {
                let (changes, policies) = read_proposals(&path, std::slice::from_ref(head));
                view.proposals.extend(changes);
                view.policy_proposals.extend(policies);
            }
        }
        view.proposal_heads = open;
        *self.view.write().expect("view lock") = Arc::new(view);
        Ok(report)
    }

    /// Reads what a decision about `id` needs: under the write lock when
    /// deciding, from the pool when only showing.
    async fn world_facts(
        &self,
        w: Option<&mut WriteTx>,
        view: &RepoView,
        id: &str,
    ) -> Result<(WorldFacts, Breaker), EngineError> {
        let dependencies: Vec<String> = view
            .changes
            .get(id)
            .map(|(c, _, _)| c.depends_on.clone())
            .unwrap_or_default();
        let world = match w {
            Some(w) => w.world(id, &dependencies).await?,
            None => self.store.world(id, &dependencies).await?,
        };
        let breaker = breaker_state(
            &world.failures,
            world.last_reset.as_ref().map(|r| r.at),
            self.breaker_config(),
        );
        Ok((world, breaker))
    }

    /// What a decision about change `id` sees.
    fn world<'a>(
        &'a self,
        id: &str,
        view: &'a RepoView,
        read: &'a WorldFacts,
        breaker: &'a Breaker,
        now: i64,
    ) -> World<'a> {
        World {
            config: &self.config,
            view,
            dependency_facts: &read.others,
            locks: &read.locks,
            breaker,
            now,
            directory: &self.directory,
            revisions: self.revision_sets(view, [(id, &read.facts)]),
        }
    }

    /// For each change whose revision in flight (or completed) is not the
    /// digest on the default branch, that revision's change set, read from
    /// the commit of its first claim (and cached: a commit never changes).
    fn revision_sets<'f>(
        &self,
        view: &RepoView,
        facts: impl IntoIterator<Item = (&'f str, &'f ChangeFacts)>,
    ) -> BTreeMap<String, Arc<view::RevisionSet>> {
        let mut out = BTreeMap::new();
        for (id, facts) in facts {
            let main = view.changes.get(id).map(|(_, d, _)| d.as_str());
            let revision = match view::revision_focus(main, facts) {
                view::Focus::InFlight(r) | view::Focus::Completed(r) => r,
                view::Focus::Main => continue,
            };
            if let Some(set) = self.revision_set(id, revision) {
                out.insert(id.to_string(), set);
            }
        }
        out
    }

    /// Records completion on revisions that completed before revisions were
    /// recorded (migration 0007 cannot tell), while main still holds them:
    /// an edit after that is then refused as after completion.
    async fn record_completions(&self, view: &RepoView) -> Result<(), EngineError> {
        let open = self.store.open_revisions().await?;
        let candidates: Vec<_> = open
            .iter()
            .filter_map(|(id, d)| {
                view.changes
                    .get(id)
                    .filter(|(_, digest, _)| digest.as_str() == d)
                    .map(|(change, digest, _)| (id, change, digest))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let mut w = self.store.write().await?;
        for (id, change, digest) in candidates {
            let of_it = w.change_facts(id).await?.for_revision(digest.as_str());
            if !of_it.attempts.is_empty()
                && view::state_of(change, &of_it, true) == ChangeState::Completed
            {
                w.complete_revision(id, digest.as_str(), now_ms()).await?;
            }
        }
        w.commit().await?;
        Ok(())
    }

    /// Revision `r` of `id`, read from its commit in the repository.
    fn revision_set(
        &self,
        id: &str,
        r: &crate::store::RevisionRecord,
    ) -> Option<Arc<view::RevisionSet>> {
        let key = (id.to_string(), r.digest.clone());
        if let Some(known) = self.revisions.lock().expect("revision cache").get(&key) {
            return known.clone();
        }
        let read = || -> Option<view::RevisionSet> {
            let repo = ChangeRepo::open(&self.repo_path()).ok()?;
            let snapshot = repo.at(&r.commit_sha).ok()?;
            let model = snapshot.load_model().ok()?;
            let change = model.changes.get(id)?.clone();
            let covered = covered_paths(&change, &snapshot).ok()?;
            let digest = Digest::of(&covered);
            (digest.as_str() == r.digest).then_some((change, digest, covered))
        };
        let set = if r.commit_sha.is_empty() {
            None
        } else {
            read().map(Arc::new)
        };
        if set.is_none() {
            tracing::warn!(change = %id, digest = %r.digest, commit = %r.commit_sha, "cannot read the revision in flight from its commit");
        }
        self.revisions
            .lock()
            .expect("revision cache")
            .insert(key, set.clone());
        set
    }

    /// Everything decided about one change, or `None` if unknown.
    pub async fn status(&self, id: &str) -> Result<Option<ChangeStatus>, EngineError> {
        let view = self.view();
        let (read, breaker) = self.world_facts(None, &view, id).await?;
        let world = self.world(id, &view, &read, &breaker, now_ms());
        // Known: on main, proposed, or a revision that left main.
        if !view.changes.contains_key(id)
            && !view.proposed_ids().contains(id)
            && !world.revisions.contains_key(id)
        {
            return Ok(None);
        }
        Ok(Some(status_of(&world, id, &read.facts, None)))
    }

    /// The approval status of change `id` as pull request `pr` proposes it
    /// (at its head's digest), or `None` if that pull request does not touch it.
    pub async fn pr_approval(
        &self,
        pr: i64,
        id: &str,
    ) -> Result<Option<crate::gate::ApprovalStatus>, EngineError> {
        let view = self.view();
        let Some(p) = view
            .proposals
            .iter()
            .find(|p| p.pr == pr && p.change.id == id)
        else {
            return Ok(None);
        };
        let (read, breaker) = self.world_facts(None, &view, id).await?;
        let world = self.world(id, &view, &read, &breaker, now_ms());
        Ok(Some(view::approval_of(
            &world,
            &p.change,
            &p.digest,
            &p.covered,
            &read.facts,
        )))
    }

    /// Every change on the default branch, then every change only proposed.
    pub async fn list(&self) -> Result<Vec<ChangeStatus>, EngineError> {
        let view = self.view();
        // One read of every fact, shared by all changes (dependencies and
        // lock holders included).
        let facts = self.store.all_change_facts().await?;
        let locks = self.store.locks().await?;
        let (failures, reset) = self.store.breaker_facts().await?;
        let breaker = breaker_state(&failures, reset.map(|r| r.at), self.breaker_config());
        let world = World {
            config: &self.config,
            view: &view,
            dependency_facts: &facts,
            locks: &locks,
            breaker: &breaker,
            now: now_ms(),
            directory: &self.directory,
            revisions: self.revision_sets(&view, facts.iter().map(|(id, f)| (id.as_str(), f))),
        };
        let empty = ChangeFacts::default();
        // Revisions in flight stay listed after their file left main.
        let gone: Vec<&str> = world
            .revisions
            .keys()
            .map(String::as_str)
            .filter(|id| !view.changes.contains_key(*id))
            .collect();
        Ok(view
            .changes
            .keys()
            .map(String::as_str)
            .chain(view.proposed_ids())
            .chain(gone)
            .map(|id| status_of(&world, id, facts.get(id).unwrap_or(&empty), None))
            .collect())
    }

    /// The step breaker now.
    pub async fn breaker(
        &self,
    ) -> Result<(Breaker, Option<crate::store::BreakerReset>), EngineError> {
        let (failures, reset) = self.store.breaker_facts().await?;
        Ok((
            breaker_state(
                &failures,
                reset.as_ref().map(|r| r.at),
                self.breaker_config(),
            ),
            reset,
        ))
    }

    /// Marks attempts whose lease ran out as interrupted: a failure whose
    /// outcome is unknown, never re-run automatically.
    pub async fn expire_leases(&self) -> Result<Vec<Attempt>, EngineError> {
        let mut w = self.store.write().await?;
        let expired = self.expire_in(&mut w).await?;
        w.commit().await?;
        Ok(expired)
    }

    /// Claims the next step of `id` for `executor`, whose checkout has `digest`.
    pub async fn claim(
        &self,
        id: &str,
        digest: &str,
        executor: &str,
    ) -> Result<Result<ClaimGrant, Refusal>, EngineError> {
        let view = self.view();
        let mut w = self.store.write().await?;
        self.expire_in(&mut w).await?;
        let (read, breaker) = self.world_facts(Some(&mut w), &view, id).await?;
        let facts = &read.facts;
        let now = now_ms();
        let world = self.world(id, &view, &read, &breaker, now);
        let (decision, _) = view::decide_claim(&world, id, facts, digest);
        let next = match decision {
            Ok(next) => next,
            Err(refusal) => {
                w.audit(
                    executor,
                    "claim.refused",
                    Some(id),
                    json!({"reason": refusal.reason, "detail": refusal.detail, "digest": digest}),
                )
                .await?;
                w.commit().await?;
                return Ok(Err(refusal));
            }
        };
        let (change, _, _) = &view.changes[id];
        let step = &change.steps[next];
        let attempt_no = facts
            .attempts
            .iter()
            .filter(|a| a.step_id == step.id)
            .map(|a| a.attempt_no)
            .max()
            .unwrap_or(0)
            + 1;
        let lease_ms = self.config.server.lease.as_secs() as i64 * 1000;
        let attempt = Attempt {
            id: format!("{id}.{}.{attempt_no}", step.id),
            change_id: id.to_string(),
            step_id: step.id.clone(),
            attempt_no,
            executor: executor.to_string(),
            digest: digest.to_string(),
            state: "running".into(),
            lease_expires_at: now + lease_ms,
            started_at: now,
            ended_at: None,
            exit_code: None,
            duration_ms: None,
            output_tail: None,
            late_report: None,
        };
        w.insert_attempt(&attempt).await?;
        w.insert_revision(id, digest, &view.commit, now).await?;
        w.take_locks(id, &change.targets, now).await?;
        w.audit(
            executor,
            "step.claimed",
            Some(id),
            json!({"step": step.id, "attempt": attempt.id, "digest": digest}),
        )
        .await?;
        w.commit().await?;
        let timeout = step.timeout.or(change.timeout).map_or(900, |t| t.as_secs());
        Ok(Ok(ClaimGrant {
            attempt: attempt.id,
            change: id.to_string(),
            step: step.id.clone(),
            step_number: next + 1,
            steps_total: change.steps.len(),
            check: step.check.clone(),
            run: step.run.clone(),
            verify: step.verify.clone(),
            env: change.env.clone(),
            timeout_secs: timeout,
            lease_expires_at: attempt.lease_expires_at,
            lease_secs: self.config.server.lease.as_secs(),
        }))
    }

    /// The attempt `attempt_id` of `executor`, after expiring stale leases.
    async fn owned_attempt(
        &self,
        w: &mut WriteTx,
        attempt_id: &str,
        executor: &str,
    ) -> Result<Attempt, EngineError> {
        self.expire_in(w).await?;
        let a = w
            .attempt(attempt_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no attempt `{attempt_id}`")))?;
        if a.executor != executor {
            return Err(refused(
                "not-yours",
                format!("attempt {attempt_id} belongs to {}", a.executor),
            ));
        }
        Ok(a)
    }

    /// Renews a running attempt's lease; refuses once it has ended.
    pub async fn heartbeat(
        &self,
        attempt_id: &str,
        executor: &str,
    ) -> Result<Attempt, EngineError> {
        let mut w = self.store.write().await?;
        let a = self.owned_attempt(&mut w, attempt_id, executor).await?;
        if a.state != "running" {
            w.commit().await?;
            return Err(refused(
                "ended",
                format!("attempt {attempt_id} is {}; stop the step", a.state),
            ));
        }
        let until = now_ms() + self.config.server.lease.as_secs() as i64 * 1000;
        w.renew_lease(attempt_id, until).await?;
        w.commit().await?;
        Ok(Attempt {
            lease_expires_at: until,
            ..a
        })
    }

    /// Records an attempt's outcome. Idempotent: the same report again
    /// changes nothing; a report after the lease expired is kept but does
    /// not un-fail the change.
    pub async fn report(
        &self,
        attempt_id: &str,
        executor: &str,
        report: &Report,
    ) -> Result<AttemptAnswer, EngineError> {
        let view = self.view();
        let mut w = self.store.write().await?;
        let a = self.owned_attempt(&mut w, attempt_id, executor).await?;
        let output = self.scrub(tail(&report.output_tail));
        let a_was_running = a.state == "running";
        let now = now_ms();
        match a.state.as_str() {
            "running" => {
                let state = match report.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                };
                w.finish_attempt(
                    attempt_id,
                    state,
                    report.exit_code,
                    Some(report.duration_ms),
                    &output,
                    now,
                )
                .await?;
                if state == "failed" {
                    self.alert_step_failed(&mut w, &a, report.exit_code, &output, now)
                        .await?;
                }
                let kind = if state == "succeeded" {
                    "step.succeeded"
                } else {
                    "step.failed"
                };
                w.audit(executor, kind, Some(&a.change_id), json!({"step": a.step_id, "attempt": a.id, "exit_code": report.exit_code, "duration_ms": report.duration_ms}))
                    .await?;
            }
            "interrupted" => {
                w.record_late_report(
                    attempt_id,
                    &serde_json::to_string(report).unwrap_or_default(),
                )
                .await?;
                w.audit(
                    executor,
                    "step.late-report",
                    Some(&a.change_id),
                    json!({"step": a.step_id, "attempt": a.id, "outcome": report.outcome}),
                )
                .await?;
            }
            _ => {} // already reported: idempotent
        }
        let all = w.change_facts(&a.change_id).await?;
        // The attempt's own revision: main's, or the one in flight elsewhere.
        let revision = all.revisions.iter().find(|r| r.digest == a.digest).cloned();
        let change = match view.changes.get(&a.change_id) {
            Some((c, d, _)) if d.as_str() == a.digest => {
                Some(Arc::new((c.clone(), d.clone(), Vec::new())))
            }
            _ => revision
                .as_ref()
                .and_then(|r| self.revision_set(&a.change_id, r)),
        };
        let facts = all.for_revision(&a.digest);
        let change_state = match change.as_deref() {
            Some((change, _, _)) => {
                let state = view::state_of(change, &facts, true);
                if state == ChangeState::Completed && !facts.attempts.is_empty() {
                    w.complete_revision(&a.change_id, &a.digest, now).await?;
                }
                if state == ChangeState::Completed
                    && !facts.attempts.is_empty()
                    && w.release_locks(&a.change_id).await? > 0
                {
                    w.audit(
                        "changegate",
                        "change.completed",
                        Some(&a.change_id),
                        json!({"locks": "released"}),
                    )
                    .await?;
                    self.resolve_change_alerts(&mut w, &a.change_id, now)
                        .await?;
                }
                state
            }
            None => ChangeState::Failed,
        };
        let recorded = w.attempt(attempt_id).await?.unwrap_or(a);
        w.commit().await?;
        Ok(AttemptAnswer {
            recorded: a_was_running,
            attempt: recorded,
            change_state,
        })
    }

    /// Records an operator's go-ahead for `step`.
    pub async fn proceed(
        &self,
        id: &str,
        step: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let view = self.view();
        let (change, digest, _) = view
            .changes
            .get(id)
            .ok_or_else(|| EngineError::NotFound(format!("no change `{id}`")))?;
        if !change.steps.iter().any(|s| s.id == step) {
            return Err(EngineError::NotFound(format!(
                "change `{id}` has no step `{step}`"
            )));
        }
        let mut w = self.store.write().await?;
        // For the step's next attempt, at the digest on main now.
        let attempt_no = w
            .change_facts(id)
            .await?
            .attempts
            .iter()
            .filter(|a| a.step_id == step)
            .map(|a| a.attempt_no)
            .max()
            .unwrap_or(0)
            + 1;
        let go_ahead = GoAheadRecord {
            step_id: step.to_string(),
            digest: digest.to_string(),
            attempt_no,
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: now_ms(),
        };
        if w.insert_go_ahead(id, &go_ahead).await? {
            w.audit(
                actor,
                "step.go-ahead",
                Some(id),
                json!({"step": step, "digest": go_ahead.digest, "attempt": attempt_no, "reason": reason}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Re-opens the failed step of `id`. Under `retry_requires_approval` it
    /// needs an approval recorded after the failure by someone other than `actor`.
    pub async fn retry(&self, id: &str, actor: &str, reason: &str) -> Result<String, EngineError> {
        let view = self.view();
        let (change, digest, covered) = view
            .changes
            .get(id)
            .ok_or_else(|| EngineError::NotFound(format!("no change `{id}`")))?;
        let mut w = self.store.write().await?;
        self.expire_in(&mut w).await?;
        let (read, breaker) = self.world_facts(Some(&mut w), &view, id).await?;
        // Going forward needs the default branch to still hold the revision.
        if let view::Focus::InFlight(r) = view::revision_focus(Some(digest.as_str()), &read.facts) {
            return Err(refused(
                "superseded",
                format!("revision {} of `{id}` is in flight, but the default branch now holds {digest}: it cannot go forward; roll it back or abandon it", r.digest),
            ));
        }
        let facts = &read.facts.for_revision(digest.as_str());
        if facts.abandonment.is_some() {
            return Err(refused(
                "abandoned",
                format!("`{id}` was abandoned; it cannot be retried"),
            ));
        }
        let progress = view::step_progress(change, facts);
        let Some(n) = progress
            .iter()
            .position(|p| matches!(p.state, StepState::Failed | StepState::Interrupted))
        else {
            return Err(refused(
                "not-failed",
                format!("`{id}` has no failed step to retry"),
            ));
        };
        let step = &change.steps[n];
        let failed = facts
            .attempts
            .iter()
            .filter(|a| a.step_id == step.id)
            .max_by_key(|a| a.attempt_no)
            .expect("a failed step has an attempt");
        let needs_approval = match view.governing(change, covered) {
            PoliciesInForce::Matched { policies } => {
                policies.iter().any(|p| p.execution.retry_requires_approval)
            }
            PoliciesInForce::BuiltinDefault => true,
        };
        if needs_approval {
            let failed_at = failed.ended_at.unwrap_or(failed.started_at);
            let world = self.world(id, &view, &read, &breaker, now_ms());
            if view::fresh_approver(&world, change, digest, covered, facts, failed_at, actor)
                .is_none()
            {
                return Err(refused(
                    "needs-approval",
                    format!("retrying `{id}` needs a fresh approval of {digest} that counts under every policy in force, recorded after the failure by someone other than {actor}"),
                ));
            }
        }
        if w.insert_retry(id, &step.id, failed.attempt_no, actor, reason, now_ms())
            .await?
        {
            w.audit(
                actor,
                "step.retry",
                Some(id),
                json!({"step": step.id, "after_attempt": failed.attempt_no, "reason": reason}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(step.id.clone())
    }

    /// Abandons a revision of `id` for good — the one in flight, even when
    /// the default branch moved on or lost the file, else the one on the
    /// default branch: releases its locks; dependents stay refused. A new
    /// digest on main is a new revision, which needs its own approvals.
    pub async fn abandon(&self, id: &str, actor: &str, reason: &str) -> Result<(), EngineError> {
        let view = self.view();
        let mut w = self.store.write().await?;
        let facts = w.change_facts(id).await?;
        let main = view.changes.get(id).map(|(_, d, _)| d.as_str());
        let digest = match view::revision_focus(main, &facts) {
            view::Focus::InFlight(r) => r.digest.clone(),
            view::Focus::Completed(r) => {
                return Err(refused(
                    "completed",
                    format!(
                        "revision {} of `{id}` completed; there is nothing to abandon",
                        r.digest
                    ),
                ))
            }
            view::Focus::Main => match main {
                Some(d) => d.to_string(),
                None => return Err(EngineError::NotFound(format!("no change `{id}`"))),
            },
        };
        if w.insert_abandonment(id, &digest, actor, reason, now_ms())
            .await?
        {
            let released = w.release_locks(id).await?;
            w.audit(
                actor,
                "change.abandoned",
                Some(id),
                json!({"reason": reason, "digest": digest, "locks_released": released}),
            )
            .await?;
            self.resolve_change_alerts(&mut w, id, now_ms()).await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Closes the step breaker.
    pub async fn reset_breaker(&self, actor: &str, reason: &str) -> Result<(), EngineError> {
        let mut w = self.store.write().await?;
        let now = now_ms();
        w.reset_breaker(actor, reason, now).await?;
        w.audit(actor, "breaker.reset", None, json!({"reason": reason}))
            .await?;
        for a in w.resolve_alerts("breaker-open:", None, now).await? {
            w.audit(actor, "alert.resolved", None, json!({"alert": a.id}))
                .await?;
        }
        w.commit().await?;
        Ok(())
    }
}

impl Engine {
    /// Interrupts attempts whose lease ran out, and alerts on each.
    async fn expire_in(&self, w: &mut WriteTx) -> Result<Vec<Attempt>, EngineError> {
        let now = now_ms();
        let expired = w.expire_leases(now).await?;
        for a in &expired {
            w.audit(
                "changegate",
                "step.interrupted",
                Some(&a.change_id),
                json!({"step": a.step_id, "attempt": a.id, "lease_expired_at": a.lease_expires_at}),
            )
            .await?;
            self.alert_step_failed(w, a, None, "", now).await?;
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_64_kib_on_a_char_boundary() {
        let text = "é".repeat(40_000);
        let t = tail(&text);
        assert!(t.len() <= OUTPUT_TAIL_BYTES && t.len() > OUTPUT_TAIL_BYTES - 2);
        assert!(text.ends_with(t));
    }
}
