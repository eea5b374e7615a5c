//! `/metrics` in the Prometheus text format.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::AppState;

/// Labels of a claim decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `granted` or `refused`.
    pub outcome: String,
    /// The refusal reason, or empty.
    pub reason: String,
}

/// Labels of a step outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `succeeded` or `failed`.
    pub outcome: String,
}

/// Labels of an alert delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The sink's name.
    pub sink: String,
    /// `delivered` or `failed`.
    pub outcome: String,
}

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The method.
    pub method: String,
    /// The route template, e.g. `/api/v1/changes/{id}`.
    pub route: String,
    /// The status code.
    pub status: String,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Claims by outcome and reason.
    pub claims: Family<ClaimLabels, Counter>,
    /// Reported step outcomes.
    pub steps: Family<StepLabels, Counter>,
    /// Reported step durations, seconds.
    pub step_seconds: Histogram,
    /// Alert deliveries by sink and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// HTTP request durations, seconds.
    pub http_seconds: Family<HttpLabels, Histogram>,
    /// GitHub webhook deliveries by outcome.
    pub webhooks: Family<super::webhooks::WebhookLabels, Counter>,
    breaker_open: Gauge,
    alerts_firing: Gauge,
    outbox_pending: Gauge,
    fleet_action_refusals: Gauge,
    inbox_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("changegate");
        let claims = Family::<ClaimLabels, Counter>::default();
        let steps = Family::<StepLabels, Counter>::default();
        let step_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let http_seconds = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let (breaker_open, alerts_firing, outbox_pending, fleet_action_refusals, inbox_pending) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "claims",
            "Claims by outcome and refusal reason",
            claims.clone(),
        );
        registry.register("steps", "Reported step outcomes", steps.clone());
        registry.register(
            "step_duration_seconds",
            "Reported step durations",
            step_seconds.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Alert deliveries by sink and outcome",
            deliveries.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations",
            http_seconds.clone(),
        );
        let webhooks = Family::<super::webhooks::WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "GitHub webhook deliveries: accepted, duplicate or rejected",
            webhooks.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while the step breaker is open",
            breaker_open.clone(),
        );
        registry.register("alerts_firing", "Alerts firing now", alerts_firing.clone());
        registry.register(
            "outbox_pending",
            "Alert deliveries not yet done (outbox depth)",
            outbox_pending.clone(),
        );
        registry.register(
            "fleet_action_refusals_sticky",
            "Fleet action kinds refused until an operator resets them",
            fleet_action_refusals.clone(),
        );
        registry.register(
            "inbox_pending",
            "Webhook deliveries stored but not yet applied (inbox depth)",
            inbox_pending.clone(),
        );
        Metrics {
            registry,
            claims,
            steps,
            step_seconds,
            deliveries,
            http_seconds,
            webhooks,
            breaker_open,
            alerts_firing,
            outbox_pending,
            fleet_action_refusals,
            inbox_pending,
        }
    }
}

/// Times every request by its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A made-up method is one label, not one series per method.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_seconds
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    if let Ok((breaker, _)) = state.engine.breaker().await {
        m.breaker_open.set(i64::from(matches!(
            breaker,
            crate::gate::Breaker::Open { .. }
        )));
    }
    if let Ok(gauges) = state.engine.store().alert_gauges().await {
        m.alerts_firing.set(gauges.firing);
        m.outbox_pending.set(gauges.pending);
        m.fleet_action_refusals.set(gauges.sticky_refusals);
        m.inbox_pending.set(gauges.inbox);
    }
    let mut text = String::new();
    match encode(&mut text, &m.registry) {
        Ok(()) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
