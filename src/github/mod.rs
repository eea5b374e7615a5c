//! GitHub integration (SPEC §4): the inbox worker that applies webhook
//! deliveries, the bare mirror, commit statuses, team lookups and
//! reconciliation (`changegate sync`).
//!
//! Deliveries are applied exactly once: each one's facts are written in the
//! same transaction that marks it processed, and a delivery already marked
//! is never applied again. Git work (fetching, reading heads) happens before
//! that transaction, on blocking threads, one at a time.

pub mod client;
pub mod events;
mod mirror;
pub mod origin;
mod statuses;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

pub use client::{ApiError, GithubClient, StatusUpdate};
use events::{Event, PayloadError, PullRequest, ReviewFact};
pub use mirror::Mirror;
pub use origin::{Foreign, Home};

use crate::clock::now_ms;
use crate::config::GithubConfig;
use crate::engine::{Engine, EngineError};
use crate::git::touched::{digests_at, touched};
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
    pub fn new(engine: Arc<Engine>) -> Result<Option<Github>, SyncError> {
        let Some(config) = engine.config().github.clone() else {
            return Ok(None);
        };
        let client = GithubClient::new(&config)?;
        let mirror = Mirror::open(&engine.repo_path(), &engine.config().repo.url)?;
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
            default_branch,
            git: tokio::sync::Mutex::new(()),
            statuses_at: std::sync::atomic::AtomicI64::new(-1),
            directory_at: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// The repository deliveries must come from, shared with the webhook
    /// handler so its log line and metrics can name foreign traffic.
    pub fn home(&self) -> Arc<Home> {
        self.home.clone()
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

    /// Runs blocking git work on the mirror, one operation at a time.
    async fn with_mirror<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Mirror) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let _one_at_a_time = self.git.lock().await;
        let mirror = self.mirror.clone();
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

    /// Applies every due inbox delivery. Returns how many were finished.
    pub async fn process_inbox(&self) -> Result<usize, SyncError> {
        let mut finished = 0;
        loop {
            let due = self.engine.store().due_deliveries(32).await?;
            if due.is_empty() {
                break;
            }
            for item in due {
                match self
                    .apply_delivery(&item.delivery_id, &item.event, &item.body)
                    .await
                {
                    Ok(()) => finished += 1,
                    Err(SyncError::Payload(e)) => {
                        let mut w = self.engine.store().write().await?;
                        if w.finish_delivery(&item.delivery_id, "rejected", Some(&e.to_string()))
                            .await?
                        {
                            w.audit(
                                "github",
                                "webhook.rejected",
                                None,
                                json!({"delivery": item.delivery_id, "event": item.event, "error": e.to_string()}),
                            )
                            .await?;
                        }
                        w.commit().await?;
                        tracing::warn!(delivery = %item.delivery_id, error = %e, "delivery rejected");
                        finished += 1;
                    }
                    Err(e) => {
                        let attempts = item.attempts + 1;
                        let give_up = attempts >= MAX_DELIVERY_ATTEMPTS;
                        let wait = (1000_i64 << attempts.min(9)).min(300_000);
                        tracing::warn!(delivery = %item.delivery_id, attempts, give_up, error = %e, "delivery not applied");
                        self.engine
                            .store()
                            .delivery_failed(
                                &item.delivery_id,
                                &e.to_string(),
                                now_ms() + wait,
                                give_up,
                            )
                            .await?;
                        if give_up {
                            finished += 1;
                        }
                    }
                }
            }
        }
        if finished > 0 {
            self.engine.refresh().await?;
        }
        Ok(finished)
    }

    /// Applies one delivery and marks it processed, in one transaction.
    pub async fn apply_delivery(
        &self,
        delivery: &str,
        event: &str,
        body: &[u8],
    ) -> Result<(), SyncError> {
        // Another repository's delivery, signed with a shared App or
        // organisation secret, changes nothing: not even a fetch.
        if let Some(foreign) = self.home.foreign(&events::envelope(event, body)?) {
            tracing::info!(%delivery, %event, outcome = "ignored", reason = foreign.label(), "delivery from another repository");
            return self.ignore(delivery, &foreign.reason()).await;
        }
        match events::parse(event, body)? {
            Event::PullRequest {
                action,
                sender,
                pull_request,
            } => {
                // The opener always authors; so does whoever pushed.
                let mut authors = vec![pull_request.user.login.clone()];
                if matches!(action.as_str(), "opened" | "synchronize" | "reopened") {
                    authors.push(sender);
                }
                self.apply_pull_request(&pull_request, &authors, Some((delivery, &action)))
                    .await
            }
            Event::Review {
                pull_request,
                review,
                ..
            } => self
                .apply_review(&pull_request, &review, Some(delivery))
                .await
                .map(|_| ()),
            Event::Push { branch, after } if branch == self.default_branch => {
                let default = self.default_branch.clone();
                self.with_mirror(move |m| m.fetch_all(&default)).await?;
                let mut w = self.engine.store().write().await?;
                if w.finish_delivery(delivery, "applied", None).await? {
                    w.audit(
                        "github",
                        "github.push",
                        None,
                        json!({"delivery": delivery, "branch": branch, "after": after}),
                    )
                    .await?;
                }
                w.commit().await?;
                Ok(())
            }
            Event::Push { branch, .. } => {
                self.ignore(
                    delivery,
                    &format!("push to `{branch}`, not the default branch"),
                )
                .await
            }
            Event::Ignored { why } => self.ignore(delivery, &why).await,
        }
    }

    async fn ignore(&self, delivery: &str, why: &str) -> Result<(), SyncError> {
        let mut w = self.engine.store().write().await?;
        w.finish_delivery(delivery, "ignored", Some(why)).await?;
        w.commit().await?;
        Ok(())
    }

    /// Records a pull request's head, state, authors and touched changes
    /// (with their digests at the head, and at every reviewed commit).
    async fn apply_pull_request(
        &self,
        pr: &PullRequest,
        authors: &[String],
        delivery: Option<(&str, &str)>,
    ) -> Result<(), SyncError> {
        let number = pr.number as i64;
        let store = self.engine.store();
        let record = PullRequestRecord {
            number,
            head_sha: pr.head.sha.clone(),
            base_ref: pr.base.name.clone(),
            base_sha: pr.base.sha.clone(),
            state: pr.state.clone(),
            merged: pr.is_merged(),
            opener: pr.user.login.clone(),
            updated_at: pr.updated_ms(),
        };
        if pr.base.name != self.default_branch {
            // Retargeted away from the default branch, a tracked pull
            // request contributes nothing: its reviews never count for main.
            let known = store.pull_request(number).await?;
            let unchanged = known
                .as_ref()
                .is_some_and(|k| k.base_ref == record.base_ref && k.state == record.state);
            if known.is_none() || (unchanged && delivery.is_none()) {
                return match delivery {
                    Some((d, _)) => {
                        self.ignore(
                            d,
                            &format!(
                                "pull request #{} targets `{}`, not the default branch",
                                pr.number, pr.base.name
                            ),
                        )
                        .await
                    }
                    None => Ok(()),
                };
            }
            let mut w = store.write().await?;
            if let Some((d, _)) = delivery {
                if !w.finish_delivery(d, "applied", None).await? {
                    return Ok(());
                }
            }
            if w.upsert_pull_request(&record).await? {
                w.set_pr_changes(number, &[]).await?;
                w.audit(
                    "github",
                    "github.pull_request",
                    None,
                    json!({
                        "delivery": delivery.map(|(d, _)| d),
                        "action": delivery.map_or("sync", |(_, a)| a),
                        "number": number,
                        "base": pr.base.name,
                        "retargeted": true,
                        "changes": [],
                    }),
                )
                .await?;
            }
            w.commit().await?;
            return Ok(());
        }
        let review_commits: BTreeSet<String> = store.review_commits(number).await?;
        let (default, head, base) = (
            self.default_branch.clone(),
            pr.head.sha.clone(),
            pr.base.sha.clone(),
        );
        let (touched, digests) = self
            .with_mirror(move |m| {
                m.fetch_pull(&default, number)?;
                let touched = touched(m.path(), &head, &base, &default)?;
                let ids: Vec<String> = touched.iter().map(|(id, _)| id.clone()).collect();
                let digests = digests_at(m.path(), &review_commits, &ids)?;
                Ok((touched, digests))
            })
            .await?;
        let mut w = store.write().await?;
        if let Some((d, _)) = delivery {
            if !w.finish_delivery(d, "applied", None).await? {
                return Ok(());
            }
        }
        // A pusher is an author however late their event arrives…
        for login in authors {
            w.add_pr_author(number, login).await?;
        }
        // …but an older delivery never rewinds the head it records.
        let current = w.upsert_pull_request(&record).await?;
        if current {
            w.set_pr_changes(number, &touched).await?;
        }
        w.put_digests(&digests).await?;
        let changes: Vec<&str> = touched.iter().map(|(id, _)| id.as_str()).collect();
        w.audit(
            "github",
            "github.pull_request",
            None,
            json!({
                "delivery": delivery.map(|(d, _)| d),
                "action": delivery.map_or("sync", |(_, a)| a),
                "number": number,
                "head": pr.head.sha,
                "state": pr.state,
                "merged": pr.is_merged(),
                "authors": authors,
                "changes": changes,
                "stale": !current,
            }),
        )
        .await?;
        w.commit().await?;
        Ok(())
    }

    /// Records a review, with the digest at its commit of every change the
    /// pull request touches. An unknown pull request is recorded first,
    /// from the review's own payload.
    async fn apply_review(
        &self,
        pr: &PullRequest,
        review: &ReviewFact,
        delivery: Option<&str>,
    ) -> Result<bool, SyncError> {
        let number = pr.number as i64;
        let store = self.engine.store();
        if store.pull_request(number).await?.is_none() {
            self.apply_pull_request(pr, std::slice::from_ref(&pr.user.login), None)
                .await?;
        }
        let ids: Vec<String> = store
            .pr_changes(number)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let (default, commit) = (self.default_branch.clone(), review.commit_sha.clone());
        let digests = self
            .with_mirror(move |m| {
                let commits = BTreeSet::from([commit.clone()]);
                match digests_at(m.path(), &commits, &ids) {
                    Ok(d) => Ok(d),
                    // Not fetched yet (the review raced the push): fetch and read again.
                    Err(_) => {
                        m.fetch_pull(&default, number)?;
                        digests_at(m.path(), &commits, &ids)
                    }
                }
            })
            .await?;
        let mut w = store.write().await?;
        if let Some(d) = delivery {
            if !w.finish_delivery(d, "applied", None).await? {
                return Ok(false);
            }
        }
        let changed = w
            .upsert_review(
                review.id as i64,
                number,
                &review.reviewer,
                review.state.as_str(),
                &review.commit_sha,
                review.submitted_at,
            )
            .await?;
        w.put_digests(&digests).await?;
        if changed || delivery.is_some() {
            w.audit(
                "github",
                "github.review",
                None,
                json!({
                    "delivery": delivery,
                    "source": if delivery.is_some() { "webhook" } else { "sync" },
                    "number": number,
                    "review": review.id,
                    "reviewer": review.reviewer,
                    "state": review.state.as_str(),
                    "commit": review.commit_sha,
                }),
            )
            .await?;
        }
        w.commit().await?;
        Ok(changed)
    }

    /// Reconciliation: lists every open pull request, its commits and its
    /// reviews through the REST API and records whatever webhooks missed —
    /// heads, authors (commit authors and committers), reviews; pull
    /// requests tracked as open but no longer listed are re-read (closed or
    /// merged).
    pub async fn sync(&self) -> Result<SyncSummary, SyncError> {
        let store = self.engine.store();
        let mut summary = SyncSummary::default();
        self.pin_repository().await?;
        let open = self.client.open_pulls().await?;
        summary.pull_requests = open.len();
        let listed: BTreeSet<u64> = open.iter().map(|p| p.number).collect();
        let mut pulls = open;
        for tracked in store.pull_requests(false).await? {
            if !listed.contains(&(tracked.number as u64)) {
                pulls.push(self.client.pull(tracked.number as u64).await?);
            }
        }
        // The list is the configured repository's, but a pull request that
        // names another base repository is never recorded as this one's.
        let home = |p: &PullRequest| p.base.repo.as_ref().is_none_or(|r| self.home.is_home(r));
        for pr in pulls.iter().filter(|p| home(p)) {
            if pr.base.name != self.default_branch {
                // Retargeted away (recorded if tracked); nothing else to read.
                self.apply_pull_request(pr, std::slice::from_ref(&pr.user.login), None)
                    .await?;
                continue;
            }
            let number = pr.number as i64;
            let known = store.pull_request(number).await?;
            let stale = known.as_ref().is_none_or(|k| {
                k.head_sha != pr.head.sha || k.state != pr.state || k.merged != pr.is_merged()
            });
            if stale {
                self.apply_pull_request(pr, std::slice::from_ref(&pr.user.login), None)
                    .await?;
                summary.pull_requests_updated += 1;
            }
            let logins = self.client.commit_logins(pr.number).await?;
            let mut w = store.write().await?;
            let mut added = Vec::new();
            for login in logins {
                if w.add_pr_author(number, &login).await? {
                    added.push(login);
                }
            }
            if !added.is_empty() {
                w.audit(
                    "github",
                    "github.authors",
                    None,
                    json!({"number": number, "added": added, "source": "sync"}),
                )
                .await?;
            }
            w.commit().await?;
            summary.authors_added += added.len();
            let recorded = store.recorded_reviews(number).await?;
            for review in self.client.reviews(pr.number).await? {
                let Ok(fact) = review.fact(pr.number, None) else {
                    tracing::warn!(
                        pr = pr.number,
                        review = review.id,
                        "review without reviewer, commit or time; skipped"
                    );
                    continue;
                };
                let is_new = !recorded.contains_key(&(review.id as i64));
                if self.apply_review(pr, &fact, None).await? {
                    if is_new {
                        summary.reviews_added += 1;
                    } else {
                        summary.reviews_updated += 1;
                    }
                }
            }
        }
        self.engine.refresh().await?;
        Ok(summary)
    }

    /// Looks up, for every reviewer, whatever the cache holds no fresh
    /// answer to: write access to the repository, and membership of each
    /// team a policy in force names. Returns true when an answer changed.
    pub async fn refresh_directory(&self) -> Result<bool, SyncError> {
        let view = self.engine.view();
        let teams: BTreeSet<(String, String)> = view
            .policies
            .iter()
            .flat_map(|p| p.approvals.from.iter())
            .filter_map(|a| match a {
                Approver::Team { org, slug } => Some((org.clone(), slug.clone())),
                Approver::User(_) => None,
            })
            .collect();
        let mut logins: BTreeSet<String> = self.engine.store().reviewers().await?;
        logins.extend(
            self.engine
                .config()
                .tokens
                .iter()
                .filter_map(|t| t.github.clone()),
        );
        let ttl = std::time::Duration::from_secs(self.config.team_ttl.as_secs());
        let cache = self.engine.directory();
        let mut changed = false;
        for login in &logins {
            if cache.writer_is_stale(login, ttl) {
                match self.client.can_write(login).await {
                    Ok(yes) => changed |= cache.put_writer(login, yes),
                    Err(e) => {
                        tracing::warn!(%login, error = %e, "permission lookup failed; keeping the last answer")
                    }
                }
            }
            for (org, slug) in &teams {
                if !cache.member_is_stale(org, slug, login, ttl) {
                    continue;
                }
                match self.client.is_team_member(org, slug, login).await {
                    Ok(member) => changed |= cache.put_member(org, slug, login, member),
                    Err(e) => {
                        tracing::warn!(%org, %slug, %login, error = %e, "team lookup failed; keeping the last answer")
                    }
                }
            }
        }
        Ok(changed)
    }

    /// One pass of the worker: apply the inbox, refresh the directory
    /// (permissions, teams), and bring commit statuses up to date. The
    /// directory is refreshed when a fact was recorded since (a new
    /// reviewer) and once a minute (answers go stale); statuses are worked
    /// out again when a fact was recorded or an answer changed, so an idle
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
            self.statuses_at.store(seq, Ordering::SeqCst);
        }
        self.post_statuses().await?;
        Ok(())
    }
}
