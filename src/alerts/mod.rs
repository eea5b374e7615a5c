//! Alert delivery (SPEC §5): a worker drains the durable outbox to the
//! configured sinks, at least once, with exponential backoff capped at 5
//! minutes. Alertmanager keeps no state across restarts, so a firing alert
//! is re-sent every `resend`, and a resolve is re-sent for 5 minutes.

mod alertmanager;
mod pagerduty;
mod webhook;

use std::time::Duration;

pub use alertmanager::{alertmanager_body, Alertmanager};
pub use pagerduty::{pagerduty_body, Pagerduty};
pub use webhook::{signature, webhook_body, Webhook};

use crate::clock::{backoff_ms, now_ms};
use crate::config::{Config, SinkConfig, SinkKind};
use crate::metrics::{DeliveryLabels, Metrics};
use crate::store::{Alert, AlertState, Delivery, DeliveryState, Store};

/// The longest wait between delivery attempts.
pub const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// How long a resolve keeps being re-sent to Alertmanager.
pub const RESOLVE_RESEND_MS: i64 = 5 * 60 * 1000;

/// What to do with a delivery after one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// The delivery's new state.
    pub state: DeliveryState,
    /// When it is next due.
    pub at: i64,
}

/// The next state of a delivery after a try at `now` that `succeeded` (a
/// pure rule, so it can be tested without a sink).
pub fn next_after(
    d: &Delivery,
    alert: &Alert,
    sink: &SinkConfig,
    succeeded: bool,
    now: i64,
) -> Next {
    if !succeeded {
        return Next {
            state: DeliveryState::Failing,
            at: now + backoff_ms(1000, d.attempts, MAX_BACKOFF_MS),
        };
    }
    let resend = sink.resend.as_secs() as i64 * 1000;
    let forgets = sink_for(sink).forgets();
    match (forgets, d.event) {
        (true, AlertState::Firing) if alert.state == AlertState::Firing => Next {
            state: DeliveryState::Delivered,
            at: now + resend,
        },
        (true, AlertState::Resolved)
            if now < alert.resolved_at.unwrap_or(now) + RESOLVE_RESEND_MS =>
        {
            Next {
                state: DeliveryState::Delivered,
                at: (now + resend).min(alert.resolved_at.unwrap_or(now) + RESOLVE_RESEND_MS),
            }
        }
        _ => Next {
            state: DeliveryState::Done,
            at: now,
        },
    }
}

/// A place alerts go. Adding one is a file in `alerts/` implementing this,
/// a [`SinkKind`] variant, and its line in [`sink_for`].
pub trait AlertSink {
    /// The request that delivers `d.event` (`firing` or `resolved`) of
    /// `alert`; `link` is the alert's page.
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Delivery,
        alert: &Alert,
        now: i64,
        link: &str,
    ) -> Result<reqwest::RequestBuilder, String>;

    /// Whether the receiver forgets alerts (Alertmanager), so a firing
    /// alert is re-sent every `resend` and a resolve for 5 minutes; other
    /// sinks get each event once.
    fn forgets(&self) -> bool {
        false
    }
}

/// The sink behind `[[alerts.sinks]]` entry `config`.
pub fn sink_for(config: &SinkConfig) -> Box<dyn AlertSink + '_> {
    match config.kind {
        SinkKind::Alertmanager => Box::new(Alertmanager(config)),
        SinkKind::Webhook => Box::new(Webhook(config)),
        SinkKind::Pagerduty => Box::new(Pagerduty(config)),
    }
}

async fn send(
    http: &reqwest::Client,
    config: &Config,
    sink: &SinkConfig,
    d: &Delivery,
    alert: &Alert,
    now: i64,
) -> Result<(), String> {
    let link = format!(
        "{}/changes/{}",
        config.server.public_url.trim_end_matches('/'),
        alert.change_id.as_deref().unwrap_or("")
    );
    let request = sink_for(sink).request(http, d, alert, now, &link)?;
    let resp = request.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {}", sink.name, resp.status()))
    }
}

/// Delivers what is due once; returns how many deliveries were tried.
pub async fn deliver_due(
    store: &Store,
    config: &Config,
    http: &reqwest::Client,
    metrics: &Metrics,
) -> Result<usize, crate::store::StoreError> {
    let now = now_ms();
    let due = store.claim_deliveries(now, 30_000, 100).await?;
    let tried = due.len();
    for (d, alert) in due {
        let Some(sink) = config.alerts.sinks.iter().find(|s| s.name == d.sink) else {
            store
                .finish_delivery(
                    d.id,
                    DeliveryState::Failing,
                    now + MAX_BACKOFF_MS,
                    Some(&format!("no sink named `{}` is configured", d.sink)),
                    None,
                )
                .await?;
            continue;
        };
        // A firing re-send after the alert resolved would re-open it in Alertmanager.
        if d.event == AlertState::Firing
            && alert.state == AlertState::Resolved
            && (sink_for(sink).forgets() || d.delivered_at.is_some())
        {
            store
                .finish_delivery(d.id, DeliveryState::Done, now, None, None)
                .await?;
            continue;
        }
        let result = send(http, config, sink, &d, &alert, now).await;
        let next = next_after(&d, &alert, sink, result.is_ok(), now_ms());
        let outcome = if result.is_ok() {
            "delivered"
        } else {
            "failed"
        };
        metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                sink: sink.name.clone(),
                outcome: outcome.into(),
            })
            .inc();
        match &result {
            Ok(()) => {
                tracing::debug!(alert = %alert.id, sink = %sink.name, event = %d.event, "alert delivered")
            }
            Err(e) => {
                tracing::warn!(alert = %alert.id, sink = %sink.name, event = %d.event, error = %e, retry_in_ms = next.at - now, "alert delivery failed")
            }
        }
        store
            .finish_delivery(
                d.id,
                next.state,
                next.at,
                result.as_ref().err().map(String::as_str),
                result.is_ok().then_some(now),
            )
            .await?;
    }
    Ok(tried)
}

/// Runs the delivery worker forever, every half second.
pub async fn worker(
    store: Store,
    config: std::sync::Arc<Config>,
    metrics: std::sync::Arc<Metrics>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client without TLS always builds");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Err(e) = deliver_due(&store, &config, &http, &metrics).await {
            tracing::warn!(error = %e, "alert delivery pass failed");
        }
    }
}
