//! The HTTP layer's one error type: each variant is a status code and a
//! JSON body that never leaks internal text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::Role;
use crate::engine::EngineError;
use crate::gate::Refusal;
use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or unknown bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The identity's role may not do this.
    #[error("this needs the {0} role")]
    Forbidden(Role),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with recorded state; `reason` is a stable word.
    #[error("{reason}: {detail}")]
    Conflict {
        /// Machine-readable reason, e.g. `stale-digest`.
        reason: &'static str,
        /// For a person.
        detail: String,
    },
    /// A claim refused by the gate: 409 with the rule and what would satisfy it.
    #[error("claim refused: {}", .0.detail)]
    Refused(Refusal),
    /// The request is well-formed JSON that says something impossible.
    #[error("{0}")]
    Invalid(String),
    /// The database cannot be reached; retry later.
    #[error("the database is unavailable")]
    Unavailable,
    /// Anything else; details go to the log only.
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable
        } else {
            tracing::error!(error = %e, "store error");
            ApiError::Internal
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(e) => e.into(),
            EngineError::Git(e) => {
                tracing::error!(error = %e, "git error");
                ApiError::Internal
            }
            EngineError::Refused { reason, detail } => ApiError::Conflict { reason, detail },
            EngineError::NotFound(what) => ApiError::NotFound(what),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "detail": self.to_string()}),
            ),
            ApiError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "detail": self.to_string()}),
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not-found", "detail": what}),
            ),
            ApiError::Conflict { reason, detail } => (
                StatusCode::CONFLICT,
                json!({"reason": reason, "detail": detail}),
            ),
            ApiError::Refused(r) => (
                StatusCode::CONFLICT,
                json!({"reason": r.reason, "detail": r.detail}),
            ),
            ApiError::Invalid(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid", "detail": detail}),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "detail": self.to_string()}),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal", "detail": self.to_string()}),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
