//! Raising and resolving alerts, inside the write transaction of their cause.

use serde_json::json;

use super::{Engine, EngineError};
use crate::clock::format_ms;
use crate::gate::{breaker_state, Breaker};
use crate::model::PoliciesInForce;
use crate::store::{Alert, AlertKind, AlertLabels, Attempt, Firing, Severity, WriteTx};

impl Engine {
    /// The sinks an alert about `change` goes to: the `alerts:` of its
    /// policies, or every configured sink when none names any, or names
    /// only sinks that are not configured (an alert always reaches someone).
    pub(super) fn sinks_for(&self, change: Option<&str>) -> Vec<String> {
        let all: Vec<String> = self
            .config()
            .alerts
            .sinks
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let view = self.view();
        let named: Vec<String> = change
            .and_then(|id| view.on_branch(id))
            .map(|(c, _, covered)| match view.governing(&c, &covered) {
                PoliciesInForce::Matched { policies } => policies
                    .iter()
                    .filter_map(|p| p.alerts.clone())
                    .flatten()
                    .collect(),
                PoliciesInForce::BuiltinDefault => vec![],
            })
            .unwrap_or_default();
        let named: Vec<String> = named.into_iter().filter(|n| all.contains(n)).collect();
        if named.is_empty() {
            all
        } else {
            named
        }
    }

    /// A failed or interrupted step: an alert that fires until a person acts.
    pub(super) async fn alert_step_failed(
        &self,
        w: &mut WriteTx,
        a: &Attempt,
        exit_code: Option<i64>,
        output_tail: &str,
        now: i64,
    ) -> Result<(), EngineError> {
        let view = self.view();
        // A rollout's attempt is about its one target, not the fleet.
        let targets = match &a.target {
            Some(t) => t.clone(),
            None => view
                .changes
                .get(&a.change_id)
                .map(|held| held.change(&a.change_id).targets.join(","))
                .unwrap_or_default(),
        };
        let on = a
            .target
            .as_ref()
            .map(|t| format!(" on {t}"))
            .unwrap_or_default();
        let how = match exit_code {
            Some(code) => format!("exited {code}"),
            None => "was interrupted: its lease expired, the outcome is unknown".to_string(),
        };
        let rollback = a.phase == crate::store::Phase::Rollback;
        let labels = AlertLabels {
            alertname: if rollback {
                "ChangegateRollbackFailed"
            } else {
                "ChangegateStepFailed"
            },
            severity: Severity::Critical,
            change: Some(&a.change_id),
            step: Some(&a.step_id),
            targets: &targets,
        };
        let last_lines: String = {
            let tail = crate::wire::tail(output_tail);
            let skip = tail.chars().count().saturating_sub(4000);
            tail.chars().skip(skip).collect()
        };
        let (id, kind, summary, description) = if rollback {
            (
                format!("rollback-failed:{}", a.id),
                AlertKind::RollbackFailed,
                format!("{} rollback of step {} {how}", a.change_id, a.step_id),
                format!("Change {} could not be rolled back: the fleet is part-way, its dependents are refused and {targets} stay locked until an operator retries the rollback or abandons it.", a.change_id),
            )
        } else {
            (
                format!("step-failed:{}", a.id),
                AlertKind::StepFailed,
                format!("{} step {}{on} {how}", a.change_id, a.step_id),
                format!("Change {} is failed: further steps and its dependents are refused and {targets} stay locked until an operator retries or abandons it.", a.change_id),
            )
        };
        let alert = Alert::firing(
            id,
            kind,
            labels,
            summary,
            description,
            self.sinks_for(Some(&a.change_id)),
            now,
        )
        .annotated("output_tail", last_lines)
        .annotated(
            "status_page",
            format!(
                "{}/changes/{}",
                self.config().server.public_url.trim_end_matches('/'),
                a.change_id
            ),
        );
        if w.raise_alert(&alert, now).await? {
            w.audit(
                "changegate",
                "alert.raised",
                Some(&a.change_id),
                json!({"alert": alert.id, "sinks": alert.sinks}),
            )
            .await?;
        }
        self.alert_if_breaker_opened(w, now).await
    }

    /// Raises the breaker alert when the recorded failures have opened it.
    pub(super) async fn alert_if_breaker_opened(
        &self,
        w: &mut WriteTx,
        now: i64,
    ) -> Result<(), EngineError> {
        let (failures, reset) = w.breaker_facts().await?;
        if let Breaker::Open { since, failures } =
            breaker_state(&failures, reset.map(|r| r.at), self.breaker_config())
        {
            let alert = Alert::firing(
                format!("breaker-open:{since}"),
                AlertKind::BreakerOpen,
                AlertLabels {
                    alertname: "ChangegateBreakerOpen",
                    severity: Severity::Critical,
                    change: None,
                    step: None,
                    targets: "",
                },
                format!("the step breaker opened at {} after {failures} failures", format_ms(since)),
                "Every claim is refused until an operator runs `changegate breaker reset --reason …`.",
                self.sinks_for(None),
                now,
            );
            if w.raise_alert(&alert, now).await? {
                w.audit(
                    "changegate",
                    "breaker.opened",
                    None,
                    json!({"since": since, "failures": failures, "alert": alert.id}),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Fails closed on the default branch's policies: while a policy file
    /// does not validate, an alert fires (raised at the first commit seen
    /// with errors, audited with them); once fixed, it resolves.
    pub(super) async fn alert_on_policy_errors(
        &self,
        view: &super::view::RepoView,
    ) -> Result<(), EngineError> {
        let now = crate::clock::now_ms();
        let mut w = self.store.write().await?;
        let invalid = Firing::OfKind(AlertKind::PoliciesInvalid);
        let firing = w.firing_alerts(invalid).await?;
        if view.policy_errors.is_empty() {
            if !firing.is_empty() {
                w.resolve_alerts(invalid, now).await?;
                w.audit(
                    "changegate",
                    "policies.valid",
                    None,
                    json!({"commit": view.commit}),
                )
                .await?;
            }
        } else if firing.is_empty() {
            let errors: Vec<String> = view.policy_errors.iter().map(|d| d.to_string()).collect();
            let alert = Alert::firing(
                format!("policies-invalid:{}", view.commit),
                AlertKind::PoliciesInvalid,
                AlertLabels {
                    alertname: "ChangegatePoliciesInvalid",
                    severity: Severity::Critical,
                    change: None,
                    step: None,
                    targets: "",
                },
                format!("{} error(s) in policies/ on the default branch: every claim is refused until they are fixed", errors.len()),
                errors.join("\n"),
                self.sinks_for(None),
                now,
            );
            if w.raise_alert(&alert, now).await? {
                w.audit(
                    "changegate",
                    "policies.invalid",
                    None,
                    json!({"commit": view.commit, "errors": errors, "alert": alert.id}),
                )
                .await?;
            }
        }
        w.commit().await?;
        Ok(())
    }

    /// Resolves every firing alert about `change` (completed or abandoned).
    pub(super) async fn resolve_change_alerts(
        &self,
        w: &mut WriteTx,
        change: &str,
        now: i64,
    ) -> Result<(), EngineError> {
        for a in w.resolve_alerts(Firing::OfChange(change), now).await? {
            w.audit(
                "changegate",
                "alert.resolved",
                Some(change),
                json!({"alert": a.id}),
            )
            .await?;
        }
        Ok(())
    }
}
