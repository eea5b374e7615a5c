//! Watching a rollout's targets (SPEC §10): before each new target and
//! throughout each bake, the change's Alertmanager sinks are asked for
//! firing alerts on the targets it touched. One, other than changegate's
//! own, halts the rollout: the revision fails, and an alert of ours fires.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::{view, Engine, EngineError};
use crate::clock::now_ms;
use crate::config::SinkKind;
use crate::gate::ChangeState;
use crate::store::{Alert, AlertKind, AlertLabels, ChangeFacts, Halt, Severity};

/// What the fleet monitor said about a rollout's touched targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Watch {
    /// Nothing to ask (no rollout in flight, nothing touched, no
    /// Alertmanager sink), or nothing firing on a touched target.
    Quiet,
    /// This halt stands (recorded now or before).
    Halted(Halt),
    /// A sink could not be asked: the next target waits (fail closed).
    Unreachable(String),
}

/// Alert names of changegate's own alerts: they never halt a rollout.
const OWN_ALERTS: &str = "Changegate";

impl Engine {
    /// The HTTP client that asks Alertmanager, built once.
    fn monitor_http(&self) -> &reqwest::Client {
        self.monitor_http.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default()
        })
    }

    /// The Alertmanager sinks that alerts about change `id` go to: the
    /// fleet monitors a rollout asks.
    fn monitors(&self, id: &str) -> Vec<crate::config::SinkConfig> {
        let names = self.sinks_for(Some(id));
        self.config()
            .alerts
            .sinks
            .iter()
            .filter(|s| s.kind == SinkKind::Alertmanager && names.contains(&s.name))
            .cloned()
            .collect()
    }

    /// Asks every Alertmanager sink of change `id` for an active,
    /// unsilenced, uninhibited alert on one of `touched`; the first found,
    /// as (alert, detail), or why a sink could not be asked.
    async fn ask_monitor(
        &self,
        id: &str,
        touched: &BTreeSet<&str>,
    ) -> Result<Option<(String, String)>, String> {
        let label = self.config().rollouts.target_label.clone();
        for sink in self.monitors(id) {
            let url = format!(
                "{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
                sink.url.trim_end_matches('/')
            );
            let answer = self
                .monitor_http()
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let alerts: Vec<Value> = match answer {
                Ok(r) => r
                    .json()
                    .await
                    .map_err(|e| format!("Alertmanager {} answered unreadably: {e}", sink.name))?,
                Err(e) => {
                    return Err(format!("cannot ask Alertmanager {}: {e}", sink.name));
                }
            };
            for alert in alerts {
                let labels = &alert["labels"];
                let name = labels["alertname"].as_str().unwrap_or("(unnamed)");
                let Some(target) = labels[label.as_str()].as_str() else {
                    continue;
                };
                if touched.contains(target) && !name.starts_with(OWN_ALERTS) {
                    let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
                    return Ok(Some((
                        format!("{name} on {target}"),
                        format!(
                            "firing in Alertmanager {} since {}{}",
                            sink.name,
                            alert["startsAt"].as_str().unwrap_or("?"),
                            if summary.is_empty() {
                                String::new()
                            } else {
                                format!(": {summary}")
                            }
                        ),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Watches change `id`'s rollout once: when its revision in flight is
    /// running and has touched targets, asks the monitor, and records a
    /// halt (with an alert of ours) when something fires on one of them.
    pub(super) async fn watch(&self, id: &str) -> Result<Watch, EngineError> {
        let view = self.view();
        let Some(held) = view.changes.get(id) else {
            return Ok(Watch::Quiet);
        };
        if !held.rolls_out() || self.monitors(id).is_empty() {
            return Ok(Watch::Quiet);
        }
        let (change, digest) = (&held.change(id), &held.digest());
        let facts = self.store.change_facts(id).await?;
        let facts = facts.for_revision(digest.as_str());
        if let Some(h) = facts.halt() {
            return Ok(Watch::Halted(h.clone()));
        }
        if view::state_of(change, &facts, true) != ChangeState::Running {
            return Ok(Watch::Quiet);
        }
        let touched = touched(&facts);
        if touched.is_empty() {
            return Ok(Watch::Quiet);
        }
        let (alert, detail) = match self.ask_monitor(id, &touched).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Watch::Quiet),
            Err(e) => return Ok(Watch::Unreachable(e)),
        };
        let now = now_ms();
        let halt = Halt {
            digest: digest.to_string(),
            alert,
            detail,
            at: now,
        };
        let mut w = self.store.write().await?;
        // Decided again under the write lock: another replica may have
        // halted it, or the rollout ended, since it was read.
        let current = w.change_facts(id).await?.for_revision(digest.as_str());
        if let Some(h) = current.halt() {
            w.commit().await?;
            return Ok(Watch::Halted(h.clone()));
        }
        if view::state_of(change, &current, true) != ChangeState::Running {
            w.commit().await?;
            return Ok(Watch::Quiet);
        }
        w.insert_halt(id, &halt).await?;
        w.audit(
            "changegate",
            "rollout.halted",
            Some(id),
            json!({"alert": halt.alert, "detail": halt.detail, "digest": halt.digest}),
        )
        .await?;
        let targets: Vec<&str> = touched.iter().copied().collect();
        let alert = Alert::firing(
            format!("rollout-halted:{id}:{now}"),
            AlertKind::RolloutHalted,
            AlertLabels {
                alertname: "ChangegateRolloutHalted",
                severity: Severity::Critical,
                change: Some(id),
                step: None,
                targets: &targets.join(","),
            },
            format!("{id} rollout halted: {}", halt.alert),
            format!("The rollout of change {id} halted because {} is {}. No new target is claimed; the targets it touched stay locked until an operator retries or abandons it.", halt.alert, halt.detail),
            self.sinks_for(Some(id)),
            now,
        )
        .about(id)
        .annotated(
            "status_page",
            format!(
                "{}/changes/{id}",
                self.config().server.public_url.trim_end_matches('/')
            ),
        );
        if w.raise_alert(&alert, now).await? {
            w.audit(
                "changegate",
                "alert.raised",
                Some(id),
                json!({"alert": alert.id, "sinks": alert.sinks}),
            )
            .await?;
        }
        w.commit().await?;
        tracing::warn!(change = %id, alert = %halt.alert, "rollout halted");
        Ok(Watch::Halted(halt))
    }

    /// Watches every rollout in flight once (the server does this every
    /// `rollouts.watch_every`, so a bake is watched throughout); returns
    /// the rollouts whose monitor could not be asked, with why.
    pub async fn watch_rollouts(&self) -> Result<Vec<(String, String)>, EngineError> {
        let view = self.view();
        let mut unreachable = Vec::new();
        for (id, held) in view.changes.iter() {
            if !held.rolls_out() {
                continue;
            }
            if let Watch::Unreachable(e) = self.watch(id).await? {
                unreachable.push((id.clone(), e));
            }
        }
        Ok(unreachable)
    }
}

impl Engine {
    /// Rollout figures for `/metrics`: targets of rollouts in flight by
    /// state, and halts by reason, from the store.
    pub async fn rollout_gauges(&self) -> Result<crate::metrics::RolloutGauges, EngineError> {
        use crate::store::AttemptState;
        let view = self.view();
        let mut targets: std::collections::BTreeMap<&'static str, i64> = Default::default();
        let (mut alert, mut failed, mut interrupted) = (0, 0, 0);
        for (id, held) in view.changes.iter() {
            if !held.rolls_out() {
                continue;
            }
            let (change, digest) = (&held.change(id), &held.digest());
            let all = self.store.change_facts(id).await?;
            alert += all.halts.len() as u64;
            for a in all.attempts.iter().filter(|a| a.target.is_some()) {
                match a.state {
                    AttemptState::Failed => failed += 1,
                    AttemptState::Interrupted => interrupted += 1,
                    _ => {}
                }
            }
            let facts = all.for_revision(digest.as_str());
            let state = view::state_of(change, &facts, true);
            if !matches!(state, ChangeState::Running | ChangeState::Failed) {
                continue;
            }
            for t in view::rollout_progress(change, &facts)
                .iter()
                .flat_map(|r| &r.targets)
            {
                *targets.entry(t.state().as_str()).or_default() += 1;
            }
        }
        Ok(crate::metrics::RolloutGauges {
            targets: targets.into_iter().collect(),
            halts: vec![
                ("alert", alert),
                ("failed", failed),
                ("interrupted", interrupted),
            ],
        })
    }
}

/// The targets a revision's attempts ran on.
fn touched(facts: &ChangeFacts) -> BTreeSet<&str> {
    facts
        .attempts
        .iter()
        .filter_map(|a| a.target.as_deref())
        .collect()
}
