//! PagerDuty Events API v2; the dedup key is the alert id, so a resolve
//! closes the incident its trigger opened.

use serde_json::{json, Value};

use super::AlertSink;
use crate::config::SinkConfig;
use crate::store::{Alert, AlertState, Delivery};

/// `POST {url}` with the routing key from `routing_key_env`.
pub struct Pagerduty<'c>(pub &'c SinkConfig);

/// The PagerDuty Events API v2 body; the dedup key is the alert id.
pub fn pagerduty_body(alert: &Alert, event: AlertState, routing_key: &str) -> Value {
    let action = if event == AlertState::Resolved {
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

impl AlertSink for Pagerduty<'_> {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Delivery,
        alert: &Alert,
        _now: i64,
        _link: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let var = self.0.routing_key_env.as_deref().unwrap_or_default();
        let key = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
        Ok(http
            .post(&self.0.url)
            .json(&pagerduty_body(alert, d.event, &key)))
    }
}
