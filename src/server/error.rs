//! The HTTP layer's one error type: each variant is a status code and a
//! JSON body that never leaks internal text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
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
    /// The request is well-formed JSON that says something impossible,
    /// or JSON of the wrong shape.
    #[error("{0}")]
    Invalid(String),
    /// The body is not JSON, or a path or query parameter cannot be read.
    #[error("{0}")]
    Malformed(String),
    /// The body is not declared `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The route exists, not with this method.
    #[error("this route does not answer {0}")]
    MethodNotAllowed(String),
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
            EngineError::NotReady(_) => ApiError::Unavailable,
        }
    }
}

/// axum's extractor rejections, answered as every other error: JSON
/// `{error, detail}` with the status axum chose.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let detail = r.body_text();
        match r.status() {
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Invalid(detail),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".into(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(detail),
            _ => ApiError::Malformed(detail),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Malformed(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Malformed(r.body_text())
    }
}

/// `Json<T>` whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiJson(Json::<T>::from_request(req, state).await?.0))
    }
}

/// `Path<T>` whose rejection is an [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiPath(
            Path::<T>::from_request_parts(parts, state).await?.0,
        ))
    }
}

/// `Query<T>` whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiQuery(
            Query::<T>::from_request_parts(parts, state).await?.0,
        ))
    }
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// A known route asked with another method.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
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
            ApiError::Malformed(detail) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "malformed", "detail": detail}),
            ),
            ApiError::UnsupportedMediaType(detail) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "unsupported-media-type", "detail": detail}),
            ),
            ApiError::TooLarge(detail) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too-large", "detail": detail}),
            ),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method-not-allowed", "detail": self.to_string()}),
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

/// The body of every error answer but a refusal.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable word: `unauthorized`, `forbidden`, `not-found`, `invalid`,
    /// `malformed`, `unsupported-media-type`, `too-large`,
    /// `method-not-allowed`, `unavailable` or `internal`.
    pub error: String,
    /// For a person.
    pub detail: String,
}

/// The body of a 409: a rule's stable word and what would satisfy it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RefusalBody {
    /// E.g. `not-approved`, `stale-digest`.
    pub reason: String,
    /// For a person.
    pub detail: String,
}

/// Completes `/openapi.json` so that every status an operation can answer
/// is listed with its body: the ones each handler declares, plus those any
/// route can give (401 and 403 behind a token, 400/413/415/422 for a JSON
/// body, 400 for a path or query that cannot be read, 500 and 503).
pub fn document_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    use utoipa::PartialSchema as _;
    let components = openapi.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert("ErrorBody".into(), ErrorBody::schema());
    components
        .schemas
        .insert("RefusalBody".into(), RefusalBody::schema());
    let body = |status: &str, fallback: &str| {
        let schema = if status == "409" {
            "RefusalBody"
        } else {
            "ErrorBody"
        };
        ResponseBuilder::new()
            .description(fallback)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let has_id = path.contains('{');
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let mut statuses: Vec<(&str, &str)> = Vec::new();
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                statuses.push(("500", "internal error; details are in the server log"));
                statuses.push(("503", "the database is unavailable; retry later"));
                statuses.push(("401", "no or unknown bearer token"));
                statuses.push(("403", "the token's role may not do this"));
            }
            if has_id {
                statuses.push(("404", "no such id"));
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                statuses.push(("400", "a path or query parameter cannot be read"));
            }
            if op.request_body.is_some() {
                statuses.push(("400", "the body is not JSON"));
                statuses.push(("413", "the body is over the limit"));
                statuses.push(("415", "the body is not `application/json`"));
                statuses.push(("422", "JSON of the wrong shape, or an impossible value"));
            }
            for (status, what) in statuses {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(body(status, what)));
            }
            // Declared error answers without a body get theirs.
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(r) = response else { continue };
                if (status.starts_with('4') || status.starts_with('5')) && r.content.is_empty() {
                    let description = r.description.clone();
                    *r = body(status, &description);
                }
            }
        }
    }
}
