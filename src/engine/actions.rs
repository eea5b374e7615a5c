//! The fleet action budget (SPEC §6): the fleet monitor asks before each
//! automated action, and sweeping actions are refused.

use serde::Serialize;
use serde_json::json;

use super::{Engine, EngineError};
use crate::clock::{format_ms, now_ms};
use crate::store::{Alert, AlertKind, AlertLabels, Firing, Severity};

/// The answer to a fleet action request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionDecision {
    /// 200: go ahead; recorded.
    Allowed,
    /// 423: a running or failed change owns the target.
    Locked,
    /// 429: the budget is spent; refused until an operator resets it.
    BudgetSpent,
}

impl ActionDecision {
    /// The word recorded and answered.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionDecision::Allowed => "allowed",
            ActionDecision::Locked => "locked",
            ActionDecision::BudgetSpent => "budget-spent",
        }
    }
}

/// The decision with what a person needs to know.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionAnswer {
    /// The decision.
    pub decision: ActionDecision,
    /// Why, for a person.
    pub detail: String,
}

impl Engine {
    /// Decides and records one fleet action request.
    pub async fn request_action(
        &self,
        monitor: &str,
        actor: &str,
        action: &str,
        target: &str,
    ) -> Result<ActionAnswer, EngineError> {
        let view = self.view();
        let now = now_ms();
        let mut w = self.store.write().await?;
        let (opened_at, reset_at) = w.action_breaker(action).await?;
        let answer = if let Some(opened) = opened_at {
            ActionAnswer {
                decision: ActionDecision::BudgetSpent,
                detail: format!("`{action}` has been refused since {}: its budget was spent; an operator must run `changegate breaker reset --action {action} --reason …`", format_ms(opened)),
            }
        } else if let Some(lock) = w.locks().await?.into_iter().find(|l| l.target == target) {
            let alert = Alert::firing(
                format!("action-locked:{action}:{target}:{}", lock.change_id),
                AlertKind::ActionRefused,
                AlertLabels {
                    alertname: "ChangegateActionRefused",
                    severity: Severity::Warning,
                    change: Some(&lock.change_id),
                    step: None,
                    targets: target,
                },
                format!("{actor} asked to {action} {target}, which change {} owns", lock.change_id),
                "A running or failed change holds this target; automation must not act on it until a person completes or abandons the change.",
                self.sinks_for(Some(&lock.change_id)),
                now,
            );
            w.raise_alert(&alert, now).await?;
            ActionAnswer {
                decision: ActionDecision::Locked,
                detail: format!(
                    "{target} is locked by change {} (held since {}); the change owns the target",
                    lock.change_id,
                    format_ms(lock.locked_at)
                ),
            }
        } else {
            // Two files budgeting one action is a validation error; until it
            // is fixed, the strictest budget holds, never the first by name.
            let budget = view
                .policies
                .iter()
                .filter_map(|p| p.actions.get(action))
                .min_by_key(|b| {
                    let per = b.per.as_secs().max(1);
                    // Allowed per hour, in thousandths: comparable across windows.
                    u64::from(b.max) * 3_600_000 / per
                });
            match budget {
                None => ActionAnswer {
                    decision: ActionDecision::Allowed,
                    detail: format!("`{action}` has no budget"),
                },
                Some(b) => {
                    let per_ms = b.per.as_secs() as i64 * 1000;
                    let since = (now - per_ms).max(reset_at.unwrap_or(i64::MIN));
                    let used = w.actions_allowed_since(action, since).await?;
                    if used < i64::from(b.max) {
                        ActionAnswer {
                            decision: ActionDecision::Allowed,
                            detail: format!(
                                "{} of {} `{action}` per {} used",
                                used + 1,
                                b.max,
                                b.per
                            ),
                        }
                    } else {
                        let reason = format!(
                            "{used} `{action}` actions within {}: the budget of {} is spent",
                            b.per, b.max
                        );
                        w.set_action_breaker(action, true, monitor, &reason, now)
                            .await?;
                        let alert = Alert::firing(
                            format!("action-budget:{action}:{now}"),
                            AlertKind::ActionBudgetSpent,
                            AlertLabels {
                                alertname: "ChangegateActionBudgetSpent",
                                severity: Severity::Critical,
                                change: None,
                                step: None,
                                targets: target,
                            },
                            format!("fleet automation tried more than {} `{action}` per {}", b.max, b.per),
                            format!("`{action}` is refused until a person runs `changegate breaker reset --action {action} --reason …`."),
                            self.sinks_for(None),
                            now,
                        )
                        .about(action);
                        w.raise_alert(&alert, now).await?;
                        ActionAnswer {
                            decision: ActionDecision::BudgetSpent,
                            detail: format!("{reason}; refused until an operator resets it"),
                        }
                    }
                }
            }
        };
        w.record_action(actor, action, target, answer.decision.as_str(), now)
            .await?;
        w.audit(monitor, "action.requested", None, json!({"actor": actor, "action": action, "target": target, "decision": answer.decision.as_str(), "detail": answer.detail})).await?;
        w.commit().await?;
        Ok(answer)
    }

    /// Lifts the sticky refusal of one action kind and resolves its alerts.
    pub async fn reset_action(
        &self,
        operator: &str,
        action: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let now = now_ms();
        let mut w = self.store.write().await?;
        w.set_action_breaker(action, false, operator, reason, now)
            .await?;
        w.audit(
            operator,
            "action.reset",
            None,
            json!({"action": action, "reason": reason}),
        )
        .await?;
        for a in w
            .resolve_alerts(Firing::About(AlertKind::ActionBudgetSpent, action), now)
            .await?
        {
            w.audit(operator, "alert.resolved", None, json!({"alert": a.id}))
                .await?;
        }
        w.commit().await?;
        Ok(())
    }
}
