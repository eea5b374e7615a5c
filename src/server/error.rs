//! The HTTP layer's one error type: each variant is a status code and a
//! JSON body that never leaks internal text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::Role;
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
