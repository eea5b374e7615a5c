//! The inbox worker: stored deliveries applied exactly once, in the
//! transaction that marks each processed; failures retried with backoff.

use super::*;
use crate::store::InboxOutcome;

impl Github {
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
                        if w.finish_delivery(
                            &item.delivery_id,
                            InboxOutcome::Rejected,
                            Some(&e.to_string()),
                        )
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
                        let wait = crate::clock::backoff_ms(1000, attempts, 300_000);
                        if matches!(e, SyncError::Git(GitError::Fetch { .. })) && !give_up {
                            // The mirror logged the failure once for its streak.
                            tracing::debug!(delivery = %item.delivery_id, attempts, error = %e, "delivery waits for the mirror");
                        } else {
                            tracing::warn!(delivery = %item.delivery_id, attempts, give_up, error = %e, "delivery not applied");
                        }
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
            self.metrics
                .webhooks_foreign
                .get_or_create(&crate::metrics::ForeignLabels {
                    reason: foreign.label(),
                })
                .inc();
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
                if w.finish_delivery(delivery, InboxOutcome::Applied, None)
                    .await?
                {
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

    pub(super) async fn ignore(&self, delivery: &str, why: &str) -> Result<(), SyncError> {
        let mut w = self.engine.store().write().await?;
        w.finish_delivery(delivery, InboxOutcome::Ignored, Some(why))
            .await?;
        w.commit().await?;
        Ok(())
    }
}
