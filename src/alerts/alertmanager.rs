//! Prometheus Alertmanager, API v2. Alertmanager keeps no state across
//! restarts, so a firing alert is re-sent every `resend` and a resolve for
//! 5 minutes (see [`super::next_after`]).

use serde_json::{json, Value};

use super::AlertSink;
use crate::clock::format_ms;
use crate::config::SinkConfig;
use crate::store::{Alert, AlertState, Delivery};

/// `POST {url}/api/v2/alerts`.
pub struct Alertmanager<'c>(pub &'c SinkConfig);

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

impl AlertSink for Alertmanager<'_> {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Delivery,
        alert: &Alert,
        now: i64,
        link: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let ends_at = match d.event {
            AlertState::Resolved => alert.resolved_at.unwrap_or(now),
            _ => now + 3 * self.0.resend.as_secs() as i64 * 1000,
        };
        Ok(http
            .post(format!(
                "{}/api/v2/alerts",
                self.0.url.trim_end_matches('/')
            ))
            .json(&alertmanager_body(alert, ends_at, link)))
    }

    fn forgets(&self) -> bool {
        true
    }
}
