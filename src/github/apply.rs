//! Applying pull requests and reviews: what each touches (changes and
//! policy files, read from the mirror) and the digest at each reviewed commit.

use super::*;

impl Github {
    /// Records a pull request's head, state, authors and touched changes
    /// (with their digests at the head, and at every reviewed commit).
    pub(super) async fn apply_pull_request(
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
            refused: None,
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
            if !w.applying(delivery.map(|(d, _)| d)).await? {
                return Ok(());
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
        // Retargeted onto the default branch: reviews given while it aimed
        // elsewhere approved a merge there, not here.
        let retargeted = store
            .pull_request(number)
            .await?
            .is_some_and(|k| k.base_ref != self.default_branch);
        let review_commits: BTreeSet<String> = store.review_commits(number).await?;
        let (default, head, base) = (
            self.default_branch.clone(),
            pr.head.sha.clone(),
            pr.base.sha.clone(),
        );
        // The default branch's changes say which paths matter.
        let main = self.engine.view();
        let read = self
            .with_mirror(move |m| {
                m.fetch_pull(&default, number)?;
                m.read(|repo| {
                    // The head's trees through a handle of their own.
                    let event = repo.reopen()?;
                    let known = Known {
                        roots: &main.roots,
                        invalid: &main.invalid,
                        at: &main.commit,
                    };
                    let touched = touched(repo, &event, &head, &base, &default, known)?;
                    let ids: Vec<String> = touched.iter().map(|(id, _)| id.clone()).collect();
                    let digests = digests_at(&event, &review_commits, &ids, &default)?;
                    Ok((touched, digests))
                })
            })
            .await;
        // A head whose trees are refused (git would refuse them, or they
        // are too large to compare: a tree bomb) touches nothing that can
        // be approved, and its aggregate status fails. Its head and pushers
        // are still recorded, so nothing approved at an earlier head
        // carries over.
        let (touched, digests, refused) = match read {
            Ok((touched, digests)) => (touched, digests, None),
            Err(SyncError::Git(GitError::Refused { reason })) => {
                tracing::warn!(pr = number, head = %pr.head.sha, %reason, "pull request head refused; it touches nothing that can be approved");
                (Vec::new(), Default::default(), Some(reason))
            }
            Err(e) => return Err(e),
        };
        let record = PullRequestRecord {
            refused: refused.clone(),
            ..record
        };
        let mut w = store.write().await?;
        if !w.applying(delivery.map(|(d, _)| d)).await? {
            return Ok(());
        }
        // A pusher is an author however late their event arrives…
        for login in authors {
            w.add_pr_author(number, login).await?;
        }
        // …but an older delivery never rewinds the head it records.
        let current = w.upsert_pull_request(&record).await?;
        if current && retargeted {
            let dismissed = w.dismiss_reviews(number).await?;
            w.audit(
                "github",
                "github.reviews.dismissed",
                None,
                json!({"number": number, "reviews": dismissed, "why": "retargeted onto the default branch"}),
            )
            .await?;
        }
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
                "refused": refused,
            }),
        )
        .await?;
        w.commit().await?;
        Ok(())
    }

    /// Records a review, with the digest at its commit of every change the
    /// pull request touches. An unknown pull request is recorded first,
    /// from the review's own payload.
    pub(super) async fn apply_review(
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
                // The reviewed commit's trees through a handle of their own.
                let at = |repo: &crate::git::ChangeRepo| {
                    digests_at(&repo.reopen()?, &commits, &ids, &default)
                };
                match m.read(at) {
                    Ok(d) => Ok(d),
                    // Not fetched yet (the review raced the push): fetch and read again.
                    Err(_) => {
                        m.fetch_pull(&default, number)?;
                        m.read(at)
                    }
                }
            })
            .await?;
        let mut w = store.write().await?;
        if !w.applying(delivery).await? {
            return Ok(false);
        }
        let changed = w
            .upsert_review(
                review.id as i64,
                number,
                &review.reviewer,
                review.state,
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
}
