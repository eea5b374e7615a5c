//! GitHub integration (SPEC §4): the inbox worker that applies webhook
//! deliveries, the bare mirror, commit statuses, team lookups and
//! reconciliation (`changegate sync`).
//!
//! Deliveries are applied exactly once: each one's facts are written in the
//! same transaction that marks it processed, and a delivery already marked
//! is never applied again. Git work (fetching, reading heads) happens before
//! that transaction, on blocking threads, one at a time.

mod apply;
pub mod client;
mod comments;
pub mod events;
mod inbox;
mod mirror;
pub mod origin;
pub mod plan;
mod reconcile;
mod statuses;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

pub use client::{ApiError, GithubClient, StatusUpdate};
use events::{Event, PayloadError, PullRequest, ReviewFact};
pub use mirror::{init_git_transport, parse_repo_url, FetchFailure, Mirror};
pub use origin::{Foreign, Home};

use crate::clock::now_ms;
use crate::config::GithubConfig;
use crate::engine::{Engine, EngineError};
use crate::git::touched::{digests_at, touched, Known};
use crate::git::GitError;
use crate::model::Approver;
use crate::store::{PullRequestRecord, StoreError};

/// A delivery is given up, and recorded as failed, after this many attempts.
pub const MAX_DELIVERY_ATTEMPTS: i64 = 8;

/// Why applying something failed. Every variant is worth retrying except
/// [`SyncError::Payload`].
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The payload cannot be acted on; retrying will not help.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The mirror could not be fetched or read.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The GitHub API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What reconciliation repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SyncSummary {
    /// Open pull requests listed.
    pub pull_requests: usize,
    /// Pull requests whose head or state was out of date.
    pub pull_requests_updated: usize,
    /// Reviews recorded that no webhook had delivered.
    pub reviews_added: usize,
    /// Reviews whose state changed (e.g. a missed dismissal).
    pub reviews_updated: usize,
    /// Commit authors and committers not yet known as pull request authors
    /// (a missed `synchronize` names no pusher; the commits do).
    pub authors_added: usize,
}

/// The GitHub side of a server (or of `changegate sync`).
pub struct Github {
    engine: Arc<Engine>,
    config: GithubConfig,
    client: GithubClient,
    mirror: Mirror,
    /// The repository deliveries must come from.
    home: Arc<Home>,
    /// Where foreign deliveries are counted.
    metrics: Arc<crate::metrics::Metrics>,
    default_branch: String,
    /// One git operation at a time: fetches into one repository must not race.
    git: tokio::sync::Mutex<()>,
    /// The audit sequence statuses were last worked out at.
    statuses_at: std::sync::atomic::AtomicI64,
    /// When the directory was last refreshed (unix ms).
    directory_at: std::sync::atomic::AtomicI64,
}

impl Github {
    /// The GitHub side of `engine`, or `None` without a `[github]` section.
    /// Mirror fetch failures, and deliveries from elsewhere, are counted in
    /// `metrics`.
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Github>, SyncError> {
        let Some(config) = engine.config().github.clone() else {
            return Ok(None);
        };
        let client = GithubClient::new(&config)?;
        let mirror = Mirror::open(
            &engine.repo_path(),
            &engine.config().repo.url,
            metrics.clone(),
        )?;
        let default_branch = engine.config().repo.default_branch.clone();
        // The installation is compared only under App authentication.
        let installation = config.app_id.and(config.installation_id);
        let home = Arc::new(Home::new(&config.repository, installation));
        Ok(Some(Github {
            engine,
            config,
            client,
            mirror,
            home,
            metrics,
            default_branch,
            git: tokio::sync::Mutex::new(()),
            statuses_at: std::sync::atomic::AtomicI64::new(-1),
            directory_at: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// Pins the configured repository's numeric id: from the store, else
    /// from `GET /repos/{owner}/{repo}` (recorded and audited). Until this
    /// succeeds, deliveries are matched by `full_name`.
    pub async fn pin_repository(&self) -> Result<u64, SyncError> {
        if let Some(id) = self.home.id() {
            return Ok(id);
        }
        let store = self.engine.store();
        let full_name = self.home.full_name().to_string();
        let id = match store.pinned_repository(&full_name).await? {
            Some(id) => id,
            None => {
                let repository = self.client.repository().await?;
                let mut w = store.write().await?;
                let id = w.pin_repository(&full_name, repository.id).await?;
                if id == repository.id {
                    w.audit(
                        "github",
                        "github.repository.pinned",
                        None,
                        json!({"configured": full_name, "id": id, "full_name": repository.full_name}),
                    )
                    .await?;
                }
                w.commit().await?;
                tracing::info!(repository = %full_name, id, "repository id pinned");
                id
            }
        };
        self.home.pin(id);
        Ok(id)
    }

    /// Whether this server applies deliveries (`github.worker`).
    pub fn is_worker(&self) -> bool {
        self.config.worker
    }

    /// Seconds between reconciliations.
    pub fn sync_interval_secs(&self) -> u64 {
        self.config.sync_interval.as_secs()
    }

    /// How long the background refresh should wait before fetching again
    /// while fetches fail (1 s doubling up to `cap`); `None` while healthy.
    pub fn fetch_backoff(&self, cap: std::time::Duration) -> Option<std::time::Duration> {
        self.mirror.backoff(cap)
    }

    /// Runs blocking git work on the mirror, one operation at a time, with
    /// a fresh credential for an HTTPS remote.
    async fn with_mirror<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Mirror) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let _one_at_a_time = self.git.lock().await;
        let credential = match self.mirror.is_remote() {
            // A token that cannot be had fails the fetch like a refused one.
            true => self.client.git_credential().await.map_err(|e| {
                self.mirror
                    .failed(mirror::FetchFailure::Auth, &format!("no token: {e}"))
            })?,
            false => None,
        };
        let mirror = self.mirror.clone().with_credential(credential);
        tokio::task::spawn_blocking(move || work(&mirror))
            .await
            .map_err(|e| GitError::Git(git2::Error::from_str(&format!("git work stopped: {e}"))))?
            .map_err(SyncError::from)
    }

    /// Fetches the default branch and every pull request head, then re-reads.
    pub async fn fetch_and_refresh(&self) -> Result<crate::store::SyncReport, SyncError> {
        let branch = self.default_branch.clone();
        self.with_mirror(move |m| m.fetch_all(&branch)).await?;
        Ok(self.engine.refresh().await?)
    }

    /// One pass of the worker: apply the inbox, refresh the directory
    /// (permissions, teams), and bring commit statuses up to date. The
    /// directory is refreshed when a fact was recorded since (a new
    /// reviewer) and once a minute (answers go stale); statuses are worked
    /// out again (with each pull request's plan comment) when a fact was
    /// recorded or an answer changed, so an idle
    /// tick reads two rows.
    pub async fn tick(&self) -> Result<(), SyncError> {
        use std::sync::atomic::Ordering;
        self.process_inbox().await?;
        let seq = self.engine.store().audit_seq().await?;
        let moved = seq != self.statuses_at.load(Ordering::SeqCst);
        let now = now_ms();
        let directory_changed = if moved || now - self.directory_at.load(Ordering::SeqCst) >= 60_000
        {
            self.directory_at.store(now, Ordering::SeqCst);
            self.refresh_directory().await?
        } else {
            false
        };
        if directory_changed || moved {
            // A review or an answer about a reviewer may approve a policy
            // revision waiting on the default branch.
            if !self.engine.view().unapproved_policies.is_empty() {
                self.engine.refresh().await?;
            }
            self.update_statuses().await?;
            self.update_plans().await?;
            self.statuses_at.store(seq, Ordering::SeqCst);
        }
        self.post_statuses().await?;
        self.post_plans().await?;
        Ok(())
    }
}
