//! Reconciliation (`changegate sync`) through the REST API, and the
//! directory: write access and team memberships of reviewers.

use super::*;

impl Github {
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
}
