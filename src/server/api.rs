//! JSON endpoints under `/api/v1`, plus health and readiness.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Identity;
use super::error::ApiError;
use super::AppState;
use crate::config::Role;
use crate::store::{ApiApproval, AuditEvent, RecordOutcome, StoredChange};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "database unavailable")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// One step of a change and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// The step id.
    pub id: String,
    /// `pending`, `running`, `succeeded`, `failed`, `interrupted` or `skipped`.
    pub state: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<serde_json::Value>,
}

/// A change with its steps and recorded approvals.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeView {
    /// The change as found on the default branch.
    #[serde(flatten)]
    pub change: StoredChange,
    /// Steps in run order.
    pub steps: Vec<StepView>,
    /// Approvals recorded through the API, bound to digests.
    pub recorded_approvals: Vec<ApiApproval>,
}

/// Every known change.
#[utoipa::path(get, path = "/api/v1/changes", security(("bearer" = [])),
    responses((status = 200, body = [StoredChange]), (status = 401), (status = 503)))]
pub async fn list_changes(
    _who: Identity,
    State(state): State<AppState>,
) -> Result<Json<Vec<StoredChange>>, ApiError> {
    Ok(Json(state.store.list_changes().await?))
}

/// One change: state, digest at the default branch, steps and approvals.
#[utoipa::path(get, path = "/api/v1/changes/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")),
    responses((status = 200, body = ChangeView), (status = 401), (status = 404)))]
#[tracing::instrument(skip_all, fields(change = %id))]
pub async fn get_change(
    _who: Identity,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ChangeView>, ApiError> {
    let change = state
        .store
        .get_change(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no change `{id}`")))?;
    let steps = change.definition["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| StepView {
                    id: s["id"].as_str().unwrap_or_default().to_string(),
                    state: "pending".into(),
                    attempts: vec![],
                })
                .collect()
        })
        .unwrap_or_default();
    let recorded_approvals = state.store.api_approvals(&id).await?;
    Ok(Json(ChangeView {
        change,
        steps,
        recorded_approvals,
    }))
}

/// An approval of exactly one digest.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// The digest approved: `sha256:…`, as `changegate digest` prints it.
    pub digest: String,
    /// Why, for the record.
    #[serde(default)]
    pub comment: String,
}

/// What was recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalRecorded {
    /// The change.
    pub change: String,
    /// The approving identity.
    pub approver: String,
    /// The digest approved.
    pub digest: String,
    /// False when the same approval was already on record.
    pub created: bool,
}

/// Records the caller's approval of a change at a digest.
#[utoipa::path(post, path = "/api/v1/changes/{id}/approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ApprovalRequest,
    responses((status = 201, body = ApprovalRecorded, description = "recorded"),
              (status = 200, body = ApprovalRecorded, description = "already recorded"),
              (status = 401), (status = 403), (status = 404),
              (status = 409, description = "`stale-digest`: the digest is not the change's current one")))]
#[tracing::instrument(skip_all, fields(change = %id, approver = %who.name))]
pub async fn record_approval(
    who: Identity,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<ApprovalRequest>,
) -> Result<(StatusCode, Json<ApprovalRecorded>), ApiError> {
    who.require(Role::Operator)?;
    let outcome = state
        .store
        .record_api_approval(&id, &who.name, &req.digest, &req.comment)
        .await?;
    let recorded = |created| {
        Json(ApprovalRecorded {
            change: id.clone(),
            approver: who.name.clone(),
            digest: req.digest.clone(),
            created,
        })
    };
    match outcome {
        RecordOutcome::Created => {
            tracing::info!(digest = %req.digest, "approval recorded");
            Ok((StatusCode::CREATED, recorded(true)))
        }
        RecordOutcome::AlreadyRecorded => Ok((StatusCode::OK, recorded(false))),
        RecordOutcome::UnknownChange => Err(ApiError::NotFound(format!("no change `{id}`"))),
        RecordOutcome::StaleDigest { current } => Err(ApiError::Conflict {
            reason: "stale-digest",
            detail: format!(
                "`{id}` is at {current} on the default branch, not {}; approve what will run",
                req.digest
            ),
        }),
    }
}

/// `?change=` filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only events of this change.
    pub change: Option<String>,
}

/// The audit log, in chain order.
#[utoipa::path(get, path = "/api/v1/audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [AuditEvent]), (status = 401)))]
pub async fn audit(
    _who: Identity,
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    Ok(Json(state.store.audit_events(q.change.as_deref()).await?))
}
