//! `/metrics` in the Prometheus text format, and the request timer.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::{Gauges, HttpLabels};

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
    let mut gauges = Gauges::default();
    if let Ok((breaker, _)) = state.engine.breaker().await {
        gauges.breaker_open = matches!(breaker, crate::gate::Breaker::Open { .. });
    }
    if let Ok(g) = state.engine.alert_gauges().await {
        gauges.alerts_firing = g.firing;
        gauges.outbox_pending = g.pending;
        gauges.fleet_action_refusals = g.sticky_refusals;
        gauges.inbox_pending = g.inbox;
    }
    if let Ok(r) = state.engine.rollout_gauges().await {
        gauges.rollouts = r;
    }
    m.set_gauges(gauges);
    match m.encode() {
        Ok(text) => (
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
