//! Alert delivery (SPEC §5): a worker drains the durable outbox to the
//! configured sinks, at least once, with exponential backoff capped at 5
//! minutes. Alertmanager keeps no state across restarts, so a firing alert
//! is re-sent every `resend`, and a resolve is re-sent for 5 minutes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::clock::{backoff_ms, format_ms, now_ms};
use crate::config::{Config, SinkConfig, SinkKind};
use crate::metrics::{DeliveryLabels, Metrics};
use crate::store::{Alert, Delivery, Store};

/// The longest wait between delivery attempts.
pub const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// How long a resolve keeps being re-sent to Alertmanager.
pub const RESOLVE_RESEND_MS: i64 = 5 * 60 * 1000;

/// `sha256=<hex hmac>` of `body` under `secret`, as `X-Changegate-Signature-256` carries it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Alertmanager API v2 body for `alert`, ending at `ends_at`.
pub fn alertmanager_body(alert: &Alert, ends_at: i64, generator_url: &str) -> Value {
    json!([{
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": format_ms(alert.raised_at),
        "endsAt": format_ms(ends_at),
        "generatorURL": generator_url,
    }])
}

/// The webhook body: the event and the whole alert.
pub fn webhook_body(alert: &Alert, event: &str) -> Value {
    json!({"id": alert.id, "event": event, "alert": alert})
}

/// The PagerDuty Events API v2 body; the dedup key is the alert id.
pub fn pagerduty_body(alert: &Alert, event: &str, routing_key: &str) -> Value {
    let action = if event == "resolved" {
        "resolve"
    } else {
        "trigger"
    };
    json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": alert.id,
        "payload": {
            "summary": alert.annotations["summary"],
            "source": "changegate",
            "severity": alert.labels["severity"],
            "custom_details": alert.annotations,
        },
    })
}

/// What to do with a delivery after one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// The delivery's new state.
    pub state: &'static str,
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
            state: "failing",
            at: now + backoff_ms(1000, d.attempts, MAX_BACKOFF_MS),
        };
    }
    let resend = sink.resend.as_secs() as i64 * 1000;
    match (sink.kind, d.event.as_str()) {
        (SinkKind::Alertmanager, "firing") if alert.state == "firing" => Next {
            state: "delivered",
            at: now + resend,
        },
        (SinkKind::Alertmanager, "resolved")
            if now < alert.resolved_at.unwrap_or(now) + RESOLVE_RESEND_MS =>
        {
            Next {
                state: "delivered",
                at: (now + resend).min(alert.resolved_at.unwrap_or(now) + RESOLVE_RESEND_MS),
            }
        }
        _ => Next {
            state: "done",
            at: now,
        },
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
    let request = match sink.kind {
        SinkKind::Alertmanager => {
            let ends_at = match d.event.as_str() {
                "resolved" => alert.resolved_at.unwrap_or(now),
                _ => now + 3 * sink.resend.as_secs() as i64 * 1000,
            };
            http.post(format!("{}/api/v2/alerts", sink.url.trim_end_matches('/')))
                .json(&alertmanager_body(alert, ends_at, &link))
        }
        SinkKind::Webhook => {
            let var = sink.secret_env.as_deref().unwrap_or_default();
            let secret = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
            let body =
                serde_json::to_vec(&webhook_body(alert, &d.event)).map_err(|e| e.to_string())?;
            http.post(&sink.url)
                .header("content-type", "application/json")
                .header(
                    "x-changegate-signature-256",
                    signature(secret.as_bytes(), &body),
                )
                .body(body)
        }
        SinkKind::Pagerduty => {
            let var = sink.routing_key_env.as_deref().unwrap_or_default();
            let key = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
            http.post(&sink.url)
                .json(&pagerduty_body(alert, &d.event, &key))
        }
    };
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
                    "failing",
                    now + MAX_BACKOFF_MS,
                    Some(&format!("no sink named `{}` is configured", d.sink)),
                    None,
                )
                .await?;
            continue;
        };
        // A firing re-send after the alert resolved would re-open it in Alertmanager.
        if d.event == "firing"
            && alert.state == "resolved"
            && (sink.kind == SinkKind::Alertmanager || d.delivered_at.is_some())
        {
            store.finish_delivery(d.id, "done", now, None, None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // GitHub's published vector for the same construction.
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
