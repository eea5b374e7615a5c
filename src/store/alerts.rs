//! SQL for alerts, their delivery outbox, and fleet actions.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Backend, Store, StoreError, WriteTx};

/// An alert: raised in the same transaction as its cause.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// Stable id; also the PagerDuty dedup key.
    pub id: String,
    /// What it is about.
    #[schema(value_type = String)]
    pub kind: super::AlertKind,
    /// Which one of its kind: the fleet action, the policy file and blob;
    /// empty when the kind says it all.
    pub subject: String,
    /// The change, if any.
    pub change_id: Option<String>,
    /// The step, if any.
    pub step_id: Option<String>,
    /// Firing or resolved.
    #[schema(value_type = String)]
    pub state: super::AlertState,
    /// Alertmanager labels: alertname, change, step, targets, severity.
    #[schema(value_type = Object)]
    pub labels: Value,
    /// summary, description, output_tail.
    #[schema(value_type = Object)]
    pub annotations: Value,
    /// The sinks it goes to.
    pub sinks: Vec<String>,
    /// Unix ms.
    pub raised_at: i64,
    /// Unix ms.
    pub resolved_at: Option<i64>,
}

/// Which firing alerts an action is about.
#[derive(Debug, Clone, Copy)]
pub enum Firing<'a> {
    /// Every one about change `id`.
    OfChange(&'a str),
    /// Every one of a kind.
    OfKind(super::AlertKind),
    /// The ones of a kind about one subject.
    About(super::AlertKind, &'a str),
}

/// How urgent an alert is, as Alertmanager's `severity` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A person must act: a failed step, an open breaker, broken policies.
    Critical,
    /// Worth a look: a refused fleet action, a policy edit not in force.
    Warning,
}

impl Severity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// The labels every sink reads.
#[derive(Debug, Clone, Copy)]
pub struct AlertLabels<'a> {
    /// Alertmanager's `alertname`, e.g. `ChangegateStepFailed`.
    pub alertname: &'static str,
    /// How urgent.
    pub severity: Severity,
    /// The change, if the alert is about one.
    pub change: Option<&'a str>,
    /// The step, if the alert is about one.
    pub step: Option<&'a str>,
    /// Targets, comma-separated, or empty.
    pub targets: &'a str,
}

impl Alert {
    /// A firing alert `id` of `kind` raised at `now`, going to `sinks`,
    /// with the labels every sink reads and the annotations `summary`,
    /// `description` and an empty `output_tail`.
    pub fn firing(
        id: impl Into<String>,
        kind: super::AlertKind,
        labels: AlertLabels<'_>,
        summary: impl Into<String>,
        description: impl Into<String>,
        sinks: Vec<String>,
        now: i64,
    ) -> Alert {
        Alert {
            id: id.into(),
            kind,
            subject: String::new(),
            change_id: labels.change.map(str::to_string),
            step_id: labels.step.map(str::to_string),
            state: super::AlertState::Firing,
            labels: serde_json::json!({
                "alertname": labels.alertname,
                "change": labels.change.unwrap_or(""),
                "step": labels.step.unwrap_or(""),
                "targets": labels.targets,
                "severity": labels.severity.as_str(),
            }),
            annotations: serde_json::json!({
                "summary": summary.into(),
                "description": description.into(),
                "output_tail": "",
            }),
            sinks,
            raised_at: now,
            resolved_at: None,
        }
    }

    /// Says which one of its kind it is (see [`Alert::subject`]).
    pub fn about(mut self, subject: impl Into<String>) -> Alert {
        self.subject = subject.into();
        self
    }

    /// Sets annotation `key` (e.g. `output_tail`, `status_page`).
    pub fn annotated(mut self, key: &str, value: impl Into<String>) -> Alert {
        self.annotations[key] = Value::String(value.into());
        self
    }

    /// Sets an extra label `key` (e.g. `policy`).
    pub fn labelled(mut self, key: &str, value: impl Into<String>) -> Alert {
        self.labels[key] = Value::String(value.into());
        self
    }
}

/// One delivery of one alert event to one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Outbox row id.
    pub id: i64,
    /// The alert.
    pub alert_id: String,
    /// The sink's name.
    pub sink: String,
    /// The event it carries: the alert firing or resolved.
    #[schema(value_type = String)]
    pub event: super::AlertState,
    /// Pending, delivered (Alertmanager: re-sent while due), failing or done.
    #[schema(value_type = String)]
    pub state: super::DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// When it is next due (unix ms).
    pub next_attempt_at: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last success (unix ms).
    pub delivered_at: Option<i64>,
}

fn alert(r: &AnyRow) -> Result<Alert, sqlx::Error> {
    let json = |col: &str| -> Result<Value, sqlx::Error> {
        Ok(serde_json::from_str(&r.try_get::<String, _>(col)?).unwrap_or(Value::Null))
    };
    Ok(Alert {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        change_id: r.try_get("change_id")?,
        step_id: r.try_get("step_id")?,
        state: r.try_get("state")?,
        labels: json("labels")?,
        annotations: json("annotations")?,
        sinks: serde_json::from_str(&r.try_get::<String, _>("sinks")?).unwrap_or_default(),
        raised_at: r.try_get("raised_at")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}

fn delivery(r: &AnyRow) -> Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        id: r.try_get("id")?,
        alert_id: r.try_get("alert_id")?,
        sink: r.try_get("sink")?,
        event: r.try_get("event")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

const ALERT_COLUMNS: &str =
    "id, kind, subject, change_id, step_id, state, labels, annotations, sinks, raised_at, resolved_at";
const DELIVERY_COLUMNS: &str =
    "id, alert_id, sink, event, state, attempts, next_attempt_at, last_error, delivered_at";

impl WriteTx {
    /// Raises an alert (once per id) and queues its delivery to each sink.
    pub async fn raise_alert(&mut self, a: &Alert, now: i64) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'firing', $6, $7, $8, $9, NULL) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&a.id)
        .bind(a.kind)
        .bind(&a.subject)
        .bind(&a.change_id)
        .bind(&a.step_id)
        .bind(a.labels.to_string())
        .bind(a.annotations.to_string())
        .bind(serde_json::to_string(&a.sinks).unwrap_or_default())
        .bind(now)
        .execute(self.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        for sink in &a.sinks {
            self.queue(&a.id, sink, super::AlertState::Firing, now)
                .await?;
        }
        Ok(true)
    }

    async fn queue(
        &mut self,
        alert_id: &str,
        sink: &str,
        event: super::AlertState,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO outbox (alert_id, sink, payload, state, next_attempt_at, created_at, event) VALUES ($1, $2, '', 'pending', $3, $3, $4)")
            .bind(alert_id)
            .bind(sink)
            .bind(now)
            .bind(event)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Resolves the firing alerts `which` names; stops their firing
    /// re-sends and queues the resolve. Returns them.
    pub async fn resolve_alerts(
        &mut self,
        which: Firing<'_>,
        now: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        let alerts = self.firing_alerts(which).await?;
        for a in &alerts {
            sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1")
                .bind(&a.id)
                .bind(now)
                .execute(self.conn())
                .await?;
            sqlx::query("UPDATE outbox SET state = 'done' WHERE alert_id = $1 AND event = 'firing' AND state = 'delivered'")
                .bind(&a.id)
                .execute(self.conn())
                .await?;
            for sink in &a.sinks {
                self.queue(&a.id, sink, super::AlertState::Resolved, now)
                    .await?;
            }
        }
        Ok(alerts)
    }

    /// The firing alerts `which` names.
    pub async fn firing_alerts(&mut self, which: Firing<'_>) -> Result<Vec<Alert>, StoreError> {
        let select = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing'");
        let rows = match which {
            Firing::OfChange(change) => {
                sqlx::query(&format!("{select} AND change_id = $1"))
                    .bind(change.to_string())
                    .fetch_all(self.conn())
                    .await?
            }
            Firing::OfKind(kind) => {
                sqlx::query(&format!("{select} AND kind = $1"))
                    .bind(kind)
                    .fetch_all(self.conn())
                    .await?
            }
            Firing::About(kind, subject) => {
                sqlx::query(&format!("{select} AND kind = $1 AND subject = $2"))
                    .bind(kind)
                    .bind(subject.to_string())
                    .fetch_all(self.conn())
                    .await?
            }
        };
        Ok(rows.iter().map(alert).collect::<Result<_, _>>()?)
    }

    /// Is an alert with this id already recorded?
    pub async fn alert_exists(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 AS one FROM alerts WHERE id = $1")
            .bind(id)
            .fetch_optional(self.conn())
            .await?
            .is_some())
    }

    /// How many `action` requests were allowed since `since` (unix ms).
    pub async fn actions_allowed_since(
        &mut self,
        action: &str,
        since: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM fleet_actions WHERE action = $1 AND decision = 'allowed' AND at > $2")
            .bind(action)
            .bind(since)
            .fetch_one(self.conn())
            .await?
            .try_get("n")?)
    }

    /// Records a fleet action request and its decision.
    pub async fn record_action(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        decision: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO fleet_actions (actor, action, target, decision, at) VALUES ($1, $2, $3, $4, $5)")
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(decision)
            .bind(at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// The breaker of one action kind: `Some((opened_at, reset_at))`.
    pub async fn action_breaker(
        &mut self,
        action: &str,
    ) -> Result<(Option<i64>, Option<i64>), StoreError> {
        let row = sqlx::query("SELECT state, opened_at, reset_at FROM breakers WHERE name = $1")
            .bind(format!("action:{action}"))
            .fetch_optional(self.conn())
            .await?;
        Ok(match row {
            Some(r) if r.try_get::<String, _>("state")? == "open" => {
                (r.try_get("opened_at")?, r.try_get("reset_at")?)
            }
            Some(r) => (None, r.try_get("reset_at")?),
            None => (None, None),
        })
    }

    /// Opens (sticky) or resets the breaker of one action kind.
    pub async fn set_action_breaker(
        &mut self,
        action: &str,
        open: bool,
        actor: &str,
        reason: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let name = format!("action:{action}");
        if open {
            sqlx::query(
                "INSERT INTO breakers (name, state, opened_at, reason) VALUES ($1, 'open', $2, $3)
                 ON CONFLICT (name) DO UPDATE SET state = 'open', opened_at = $2, reason = $3",
            )
            .bind(name)
            .bind(at)
            .bind(reason)
            .execute(self.conn())
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO breakers (name, state, reset_by, reset_reason, reset_at) VALUES ($1, 'closed', $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET state = 'closed', reset_by = $2, reset_reason = $3, reset_at = $4",
            )
            .bind(name)
            .bind(actor)
            .bind(reason)
            .bind(at)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Every alert, newest first, with its deliveries.
    pub async fn alerts(&self) -> Result<Vec<(Alert, Vec<Delivery>)>, StoreError> {
        let alerts: Vec<Alert> = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY raised_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(alert)
        .collect::<Result<_, _>>()?;
        let deliveries: Vec<Delivery> = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM outbox ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(delivery)
        .collect::<Result<_, _>>()?;
        Ok(alerts
            .into_iter()
            .map(|a| {
                let mine = deliveries
                    .iter()
                    .filter(|d| d.alert_id == a.id)
                    .cloned()
                    .collect();
                (a, mine)
            })
            .collect())
    }

    /// Claims up to `limit` due deliveries for `lease_ms`, so that no other
    /// worker (or replica) sends them meanwhile. A resolve waits until its
    /// alert's firing event has gone out, so receivers see them in order. On Postgres the claim uses
    /// `FOR UPDATE SKIP LOCKED`; SQLite has one process.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<(Delivery, Alert)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let lock = if self.backend == Backend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let due: Vec<Delivery> = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE state IN ('pending', 'delivered', 'failing') AND next_attempt_at <= $1
             AND NOT (event = 'resolved' AND EXISTS (SELECT 1 FROM outbox f WHERE f.alert_id = outbox.alert_id AND f.sink = outbox.sink
                                                     AND f.event = 'firing' AND f.state IN ('pending', 'failing')))
             ORDER BY next_attempt_at LIMIT $2{lock}"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(delivery)
        .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(due.len());
        for d in due {
            sqlx::query("UPDATE outbox SET next_attempt_at = $2 WHERE id = $1")
                .bind(d.id)
                .bind(now + lease_ms)
                .execute(&mut *tx)
                .await?;
            let a = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
                .bind(&d.alert_id)
                .fetch_one(&mut *tx)
                .await?;
            out.push((d, alert(&a)?));
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records a delivery's outcome: its new state and when it is next due.
    pub async fn finish_delivery(
        &self,
        id: i64,
        state: super::DeliveryState,
        next_attempt_at: i64,
        error: Option<&str>,
        delivered_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET state = $2, next_attempt_at = $3, last_error = $4, attempts = attempts + 1,
             delivered_at = COALESCE($5, delivered_at) WHERE id = $1 AND state != 'done'",
        )
        .bind(id)
        .bind(state)
        .bind(next_attempt_at)
        .bind(error)
        .bind(delivered_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Alert numbers for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertGauges {
    /// Alerts firing now.
    pub firing: i64,
    /// Deliveries not done.
    pub pending: i64,
    /// Fleet action kinds refused until reset.
    pub sticky_refusals: i64,
    /// Webhook deliveries stored but not yet applied (inbox depth).
    pub inbox: i64,
}

impl Store {
    /// Counts for the metrics.
    pub async fn alert_gauges(&self) -> Result<AlertGauges, StoreError> {
        let count = |sql: &'static str| async move {
            Ok::<i64, StoreError>(sqlx::query(sql).fetch_one(&self.pool).await?.try_get("n")?)
        };
        Ok(AlertGauges {
            firing: count("SELECT COUNT(*) AS n FROM alerts WHERE state = 'firing'").await?,
            pending: count(
                "SELECT COUNT(*) AS n FROM outbox WHERE state IN ('pending', 'failing')",
            )
            .await?,
            sticky_refusals: count(
                "SELECT COUNT(*) AS n FROM breakers WHERE name LIKE 'action:%' AND state = 'open'",
            )
            .await?,
            inbox: count("SELECT COUNT(*) AS n FROM inbox WHERE processed_at IS NULL").await?,
        })
    }
}
