//! The gate at work: gathers facts from git and the store, asks the pure
//! core ([`crate::gate`]) for decisions, and records the outcomes — each in
//! one write transaction, so concurrent executors and replicas cannot both
//! win a race.

mod actions;
pub use actions::{ActionAnswer, ActionDecision};
mod alerting;
mod directory;
mod operator;
mod policy_review;
mod read;
mod revisions;
mod rollouts;
mod run;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use crate::clock::now_ms;
use crate::config::Config;
use crate::gate::{breaker_state, Breaker, BreakerConfig, ChangeState, Refusal, StepState};
use crate::git::{ChangeRepo, GitError};
use crate::model::PoliciesInForce;
use crate::redact::redact;
use crate::store::alerts::AlertGauges;
use crate::store::{
    Alert, Attempt, AuditEvent, BranchChange, BranchDelta, ChangeFacts, Delivery, GoAheadRecord,
    RecordOutcome, Store, StoreError, SyncReport, WorldFacts, WriteTx,
};
pub use directory::DirectoryCache;
pub use read::{read_branch, read_proposals, repo_path, BranchRead};
use view::{status_of, World};

/// Emails for a change no commit touched (none within the history read).
static NO_EMAILS: BTreeSet<String> = BTreeSet::new();
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
    /// The service cannot answer yet.
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

fn refused(reason: &'static str, detail: impl Into<String>) -> EngineError {
    EngineError::Refused {
        reason,
        detail: detail.into(),
    }
}

/// The gate service: shared by every HTTP handler.
pub struct Engine {
    /// The configuration; `[[tokens]]` may be swapped while serving
    /// ([`Engine::reload_tokens`]), so every use takes a snapshot.
    config: RwLock<Arc<Config>>,
    /// Bumped, under the config's write lock, each time `[[tokens]]` is
    /// swapped: a view read with an older generation is read again even if
    /// the default branch did not move (authorship goes through the
    /// identities' emails).
    tokens_gen: std::sync::atomic::AtomicU64,
    /// One refresh at a time: two would race to publish their views.
    refreshing: tokio::sync::Mutex<()>,
    store: Store,
    view: RwLock<Arc<RepoView>>,
    directory: DirectoryCache,
    /// Revisions read from their commits, by (change, digest); `None`
    /// where the commit does not hold that revision.
    revisions: std::sync::Mutex<RevisionCache>,
    /// Asks Alertmanager about a rollout's targets ([`rollouts`]).
    monitor_http: std::sync::OnceLock<reqwest::Client>,
}

/// Revisions read from their commits, by (change, digest).
type RevisionCache = HashMap<(String, String), Option<Arc<view::RevisionSet>>>;

impl Engine {
    /// An engine with an empty view; call [`Engine::refresh`].
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        Engine {
            config: RwLock::new(config),
            tokens_gen: Default::default(),
            refreshing: Default::default(),
            store,
            view: RwLock::new(Arc::new(RepoView::default())),
            directory: DirectoryCache::default(),
            revisions: Default::default(),
            monitor_http: Default::default(),
        }
    }

    /// `text` with secrets removed ([`redact`]), including this server's
    /// own: the GitHub token and the webhook secret. For output tails,
    /// reasons and comments, before they are stored or sent anywhere.
    pub fn scrub(&self, text: &str) -> String {
        let own: Vec<String> = self
            .config()
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

    /// The configuration now: a snapshot, since `[[tokens]]` may be
    /// reloaded while serving.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Swaps in a new `[[tokens]]` (SIGHUP, or the file changed) and reads
    /// the default branch again, since who authored what is read through
    /// the identities' emails: a new identity must not approve a change it
    /// wrote. The rest of the configuration needs a restart.
    pub async fn reload_tokens(
        &self,
        tokens: Vec<crate::config::TokenConfig>,
    ) -> Result<SyncReport, EngineError> {
        {
            let mut config = self.config.write().expect("config lock");
            let mut next = Config::clone(&config);
            next.tokens = tokens;
            *config = Arc::new(next);
            self.tokens_gen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.refresh().await
    }

    /// Where change sets are read from: the server's bare mirror when
    /// GitHub is configured, else `repo.url` itself.
    pub fn repo_path(&self) -> std::path::PathBuf {
        repo_path(&self.config())
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
        let config = self.config();
        BreakerConfig {
            max_failures: config.breaker.max_failures as usize,
            window_ms: config.breaker.window.as_secs() as i64 * 1000,
        }
    }

    /// Re-reads the default branch, records changes and digests, and swaps the view.
    pub async fn refresh(&self) -> Result<SyncReport, EngineError> {
        let _one_at_a_time = self.refreshing.lock().await;
        // The configuration and its tokens' generation, read together.
        let (config, tokens_gen) = {
            let config = self.config.read().expect("config lock");
            (
                config.clone(),
                self.tokens_gen.load(std::sync::atomic::Ordering::SeqCst),
            )
        };
        let path = repo_path(&config);
        let old = self.view();
        let tip = ChangeRepo::open(&path)?
            .at(&config.repo.default_branch)?
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
        // Read with other identities: authorship must be read again.
        let stale = old.tokens_gen != tokens_gen;
        if !stale
            && tip == old.commit
            && open == old.proposal_heads
            && old.unapproved_policies.is_empty()
        {
            return Ok(SyncReport::default());
        }
        let (mut view, report) = if tip == old.commit {
            let mut same = (*old).clone();
            same.proposals.clear();
            same.policy_proposals.clear();
            same.proposal_errors.clear();
            if stale {
                // Other identities: the same emails name other authors.
                same.authors = read::authors_of(&config, &same.emails).into();
                same.tokens_gen = tokens_gen;
            }
            if !same.unapproved_policies.is_empty() {
                self.review_policies(&mut same).await?;
            }
            (same, SyncReport::default())
        } else {
            // What the last read left: in memory, else stored by the last run.
            let stored = match old.commit.is_empty() {
                true => self
                    .store
                    .stored_branch(&config.repo.default_branch)
                    .await?
                    .map(RepoView::from_stored),
                false => None,
            };
            let base_commit = match &stored {
                Some(stored) => Some(stored.commit.clone()),
                None if !old.commit.is_empty() => Some(old.commit.clone()),
                None => None,
            };
            let mut found = match stored {
                Some(stored) if stored.commit == tip => {
                    read::stored_at_tip(&config, &path, stored)?
                }
                Some(stored) => read_branch(&config, &path, Some(&stored), &tip)?,
                None if old.commit.is_empty() => read_branch(&config, &path, None, &tip)?,
                None => read_branch(&config, &path, Some(&*old), &tip)?,
            };
            let mut report = self
                .store_branch(&config, &found, base_commit.as_deref())
                .await?;
            if report.stale_base {
                tracing::info!("another replica stored a later read; reading the branch in full");
                found = read_branch(&config, &path, None, &tip)?;
                report = self.store_branch(&config, &found, None).await?;
            }
            let mut view = found.view;
            if !report.kept_emails.is_empty() {
                // Authors the store knew and this read did not find stay.
                let emails = Arc::make_mut(&mut view.emails);
                for (id, all) in std::mem::take(&mut report.kept_emails) {
                    emails.insert(id, Arc::new(all));
                }
                view.authors = Arc::new(read::authors_of(&config, &view.emails));
            }
            view.tokens_gen = tokens_gen;
            tracing::info!(
                commit = %view.commit,
                changes = view.changes.len(),
                read = found.read.len(),
                full = found.full,
                "default branch read"
            );
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
                view.proposal_errors
                    .extend(old.proposal_errors.iter().filter(|e| of_it(e.0)).cloned());
            } else {
                let (changes, policies, errors) = read_proposals(
                    &path,
                    std::slice::from_ref(head),
                    &config.repo.default_branch,
                );
                view.proposals.extend(changes);
                view.policy_proposals.extend(policies);
                view.proposal_errors.extend(errors);
            }
        }
        view.proposal_heads = open;
        let branch_read = view.commit != old.commit;
        *self.view.write().expect("view lock") = Arc::new(view);
        drop(old);
        if branch_read {
            // Off the runtime's threads: trimming a large heap takes a while.
            tokio::task::spawn_blocking(release_freed_memory);
        }
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
            .map(|held| held.depends_on().map(String::from).collect())
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
            config: self.config(),
            view,
            dependency_facts: &read.others,
            locks: &read.locks,
            breaker,
            now,
            directory: &self.directory,
            revisions: self.revision_sets(view, [(id, &read.facts)]),
            monitor_unreachable: None,
            brief: false,
        }
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
            config: self.config(),
            view: &view,
            dependency_facts: &facts,
            locks: &locks,
            breaker: &breaker,
            now: now_ms(),
            directory: &self.directory,
            revisions: self.revision_sets(&view, facts.iter().map(|(id, f)| (id.as_str(), f))),
            monitor_unreachable: None,
            brief: false,
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

    /// Stores what `found` read (against the stored view at `base`): the
    /// changes read, the ids gone, the invalid ones and the commit. Nothing
    /// is written when the stored view is already at that commit.
    async fn store_branch(
        &self,
        config: &Config,
        found: &BranchRead,
        base: Option<&str>,
    ) -> Result<SyncReport, EngineError> {
        let view = &found.view;
        if !found.full && base == Some(view.commit.as_str()) {
            return Ok(SyncReport::default());
        }
        let read = found
            .read
            .iter()
            .chain(&found.authors_grew)
            .map(|id| BranchChange {
                id,
                held: &view.changes[id],
                emails: view.emails.get(id).map_or(&NO_EMAILS, |e| e),
            })
            .collect();
        Ok(self
            .store
            .sync_changes(&BranchDelta {
                branch: &config.repo.default_branch,
                commit: &view.commit,
                base: if found.full { None } else { base },
                read,
                removed: found.removed.clone(),
                full: found.full,
                invalid: &view.invalid,
            })
            .await?)
    }

    /// Whether the database answers and the default branch has been read.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.store.ping().await?;
        // Nothing can be listed, approved or claimed before the default
        // branch was read once (a remote that is down at start).
        if self.view().commit.is_empty() {
            return Err(EngineError::NotReady(
                "the default branch has not been read yet",
            ));
        }
        Ok(())
    }

    /// Records `approver`'s approval of change `id` at `digest` through the
    /// API: only at the change's digest on the default branch, once per
    /// approver and retry epoch, with the comment scrubbed of secrets.
    pub async fn approve(
        &self,
        id: &str,
        approver: &str,
        digest: &str,
        comment: &str,
    ) -> Result<RecordOutcome, EngineError> {
        Ok(self
            .store
            .record_api_approval(id, approver, digest, &self.scrub(comment))
            .await?)
    }

    /// Every alert, newest first, with its delivery state per sink.
    pub async fn alerts(&self) -> Result<Vec<(Alert, Vec<Delivery>)>, EngineError> {
        Ok(self.store.alerts().await?)
    }

    /// The audit log in chain order, of change `change` or of everything.
    pub async fn audit(&self, change: Option<&str>) -> Result<Vec<AuditEvent>, EngineError> {
        Ok(self.store.audit_events(change).await?)
    }

    /// Alert, outbox and inbox counts, for the gauges.
    pub async fn alert_gauges(&self) -> Result<AlertGauges, EngineError> {
        Ok(self.store.alert_gauges().await?)
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
}

/// Hands memory freed after reading the branch back to the system. glibc
/// keeps what a thread freed in that thread's arena, so without this the
/// resident set after reading 100,000 change sets stays at the read's
/// peak (the files, their YAML trees and the copies made on the way).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it touches no live memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
