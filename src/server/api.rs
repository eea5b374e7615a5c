//! JSON endpoints under `/api/v1`, plus health and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Identity;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::config::Role;
use crate::engine::ChangeStatus;
use crate::engine::{ActionAnswer, ActionDecision};
use crate::metrics::{ClaimLabels, StepLabels};
use crate::store::{Alert, Attempt, AuditEvent, BreakerReset, Delivery, RecordOutcome};
use crate::wire::{AttemptAnswer, AttemptId, ChangeId, ClaimGrant, Report};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers and the default branch has been read.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "database unavailable, or the default branch not read yet")))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match state.engine.ready().await {
        Ok(()) => Ok("ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::Unavailable)
        }
    }
}

/// Every change on the default branch, with state, approvals, steps and blockers.
#[utoipa::path(get, path = "/api/v1/changes", security(("bearer" = [])),
    responses((status = 200, body = [ChangeStatus]), (status = 401), (status = 503)))]
pub async fn list_changes(
    _who: Identity,
    State(state): State<AppState>,
) -> Result<Json<Vec<ChangeStatus>>, ApiError> {
    Ok(Json(state.engine.list().await?))
}

/// One change: state, digest, approvals with eligibility, steps, attempts, blockers.
#[utoipa::path(get, path = "/api/v1/changes/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")),
    responses((status = 200, body = ChangeStatus), (status = 401), (status = 404)))]
#[tracing::instrument(skip_all, fields(change = %clip(&id, 100)))]
pub async fn get_change(
    _who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ChangeStatus>, ApiError> {
    let id = known_id(&id)?;
    let status = state
        .engine
        .status(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no change `{id}`")))?;
    Ok(Json(status))
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
#[tracing::instrument(skip_all, fields(change = %clip(&id, 100), approver = %who.name))]
pub async fn record_approval(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ApprovalRequest>,
) -> Result<(StatusCode, Json<ApprovalRecorded>), ApiError> {
    who.require(Role::Operator)?;
    let id = known_id(&id)?;
    let outcome = state
        .engine
        .approve(&id, &who.name, &req.digest, &req.comment)
        .await?;
    let recorded = |created| {
        Json(ApprovalRecorded {
            change: id.to_string(),
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

/// A claim for the next step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The digest the executor computed from its checkout.
    pub digest: String,
    /// A label for the executor (e.g. the CI run), for the record.
    #[serde(default)]
    pub executor: Option<String>,
}

/// Claims the change's next step: 200 with the attempt, or 409 with the first unmet rule.
#[utoipa::path(post, path = "/api/v1/changes/{id}/claim", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ClaimRequest,
    responses((status = 200, body = ClaimGrant), (status = 409, description = "`{reason, detail}`: the first unmet rule"), (status = 401), (status = 403)))]
#[tracing::instrument(skip_all, fields(change = %clip(&id, 100), executor = %who.name))]
pub async fn claim(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimGrant>, ApiError> {
    who.require(Role::Executor)?;
    let id = known_id(&id)?;
    let decision = state.engine.claim(&id, &req.digest, &who.name).await?;
    let (outcome, reason) = match &decision {
        Ok(_) => ("granted", String::new()),
        Err(r) => ("refused", r.reason.as_str().to_string()),
    };
    state
        .metrics
        .claims
        .get_or_create(&ClaimLabels {
            outcome: outcome.into(),
            reason,
        })
        .inc();
    match decision {
        Ok(grant) => {
            tracing::info!(step = %grant.step, attempt = %grant.attempt, label = req.executor.as_deref().unwrap_or(""), "claim granted");
            Ok(Json(grant))
        }
        Err(refusal) => {
            tracing::info!(reason = ?refusal.reason, "claim refused");
            Err(ApiError::Refused(refusal))
        }
    }
}

/// Renews the attempt's lease; 409 once the attempt has ended (stop the step).
#[utoipa::path(post, path = "/api/v1/attempts/{id}/heartbeat", security(("bearer" = [])),
    params(("id" = String, Path, description = "attempt id")),
    responses((status = 200, body = Attempt), (status = 409), (status = 404)))]
pub async fn heartbeat(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Attempt>, ApiError> {
    who.require(Role::Executor)?;
    let id = known_attempt(&id)?;
    Ok(Json(state.engine.heartbeat(&id, &who.name).await?))
}

/// Records the attempt's outcome; idempotent.
#[utoipa::path(post, path = "/api/v1/attempts/{id}/report", security(("bearer" = [])),
    params(("id" = String, Path, description = "attempt id")), request_body = Report,
    responses((status = 200, body = AttemptAnswer), (status = 404), (status = 409)))]
#[tracing::instrument(skip_all, fields(attempt = %clip(&id, 100)))]
pub async fn report(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Report>,
) -> Result<Json<AttemptAnswer>, ApiError> {
    who.require(Role::Executor)?;
    let id = known_attempt(&id)?;
    possible_report(&req)?;
    let answer = state.engine.report(&id, &who.name, &req).await?;
    if answer.recorded {
        let outcome = req.outcome.as_str().to_string();
        state
            .metrics
            .steps
            .get_or_create(&StepLabels { outcome })
            .inc();
        state
            .metrics
            .step_seconds
            .observe(req.duration_ms as f64 / 1000.0);
        let undo = answer.attempt.phase == crate::store::Phase::Rollback;
        if undo
            && matches!(
                answer.change_state,
                crate::gate::ChangeState::RolledBack | crate::gate::ChangeState::RollbackFailed
            )
        {
            state
                .metrics
                .rollbacks
                .get_or_create(&StepLabels {
                    outcome: answer.change_state.as_str().to_string(),
                })
                .inc();
        }
    }
    Ok(Json(answer))
}

/// An operator's reason, for the record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why.
    pub reason: String,
}

/// A go-ahead for one step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProceedRequest {
    /// The step.
    pub step: String,
    /// Why.
    pub reason: String,
}

/// Done.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// The change.
    pub change: String,
    /// What was recorded.
    pub recorded: String,
}

/// At most `max` characters of `text`, for answers that echo input.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A change id that cannot exist is unknown: 404 before anything is read
/// or recorded, so made-up ids never reach the audit trail.
fn known_id(id: &str) -> Result<ChangeId, ApiError> {
    ChangeId::parse(id).ok_or_else(|| ApiError::NotFound(format!("no change `{}`", clip(id, 100))))
}

/// Attempt ids are `<change>.<step>.<n>`; anything else is unknown.
fn known_attempt(id: &str) -> Result<AttemptId, ApiError> {
    AttemptId::parse(id)
        .ok_or_else(|| ApiError::NotFound(format!("no attempt `{}`", clip(id, 100))))
}

/// A name in a fleet action request: 1 to 100 of `[A-Za-z0-9._:/@-]`.
fn action_name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "`{field}` must be 1 to 100 of [A-Za-z0-9._:/@-], not `{}`",
            clip(value, 100)
        )))
    }
}

/// A report must say something that can have happened.
fn possible_report(r: &Report) -> Result<(), ApiError> {
    if r.duration_ms < 0 {
        return Err(ApiError::Invalid(format!(
            "`duration_ms` is {}: a step cannot take negative time",
            r.duration_ms
        )));
    }
    if let Some(code) = r.exit_code.filter(|c| !(0..=255).contains(c)) {
        return Err(ApiError::Invalid(format!(
            "`exit_code` is {code}: exit codes are 0 to 255"
        )));
    }
    Ok(())
}

fn need_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::Conflict {
            reason: "reason-required",
            detail: "operator actions are recorded with a reason; give one".into(),
        });
    }
    Ok(())
}

/// Records the go-ahead for a step that needs confirmation.
#[utoipa::path(post, path = "/api/v1/changes/{id}/proceed", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ProceedRequest,
    responses((status = 200, body = Done), (status = 404),
              (status = 409, description = "`step-running` (the step has an attempt under a live lease), `reason-required`")))]
pub async fn proceed(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ProceedRequest>,
) -> Result<Json<Done>, ApiError> {
    who.require(Role::Operator)?;
    let id = known_id(&id)?;
    need_reason(&req.reason)?;
    state
        .engine
        .proceed(&id, &req.step, &who.name, &state.engine.scrub(&req.reason))
        .await?;
    Ok(Json(Done {
        change: id.into(),
        recorded: format!("go-ahead for step {}", req.step),
    }))
}

/// Re-opens the failed step.
#[utoipa::path(post, path = "/api/v1/changes/{id}/retry", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ReasonRequest,
    responses((status = 200, body = Done), (status = 404), (status = 409, description = "`needs-approval`, `not-failed` or `abandoned`")))]
pub async fn retry(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<Done>, ApiError> {
    who.require(Role::Operator)?;
    let id = known_id(&id)?;
    need_reason(&req.reason)?;
    let recorded = state
        .engine
        .retry(&id, &who.name, &state.engine.scrub(&req.reason))
        .await?;
    Ok(Json(Done {
        change: id.into(),
        recorded,
    }))
}

/// Asks for the rollback of a failed change (SPEC §11): the executor then
/// runs the declared rollbacks, the failed step's first, then the
/// succeeded steps' last first. Asking again changes nothing.
#[utoipa::path(post, path = "/api/v1/changes/{id}/rollback", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ReasonRequest,
    responses((status = 200, body = Done), (status = 404),
              (status = 409, description = "`not-failed`, `needs-approval`, `superseded`, `step-running` or `reason-required`")))]
pub async fn rollback(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<Done>, ApiError> {
    who.require(Role::Operator)?;
    let id = known_id(&id)?;
    need_reason(&req.reason)?;
    let created = state
        .engine
        .rollback(&id, &who.name, &state.engine.scrub(&req.reason))
        .await?;
    Ok(Json(Done {
        change: id.into(),
        recorded: if created {
            "rollback requested".into()
        } else {
            "rollback already requested".into()
        },
    }))
}

/// Abandons the change for good: its locks are released, its dependents stay refused.
#[utoipa::path(post, path = "/api/v1/changes/{id}/abandon", security(("bearer" = [])),
    params(("id" = String, Path, description = "change id")), request_body = ReasonRequest,
    responses((status = 200, body = Done), (status = 404),
              (status = 409, description = "`step-running` (a step of the change has an attempt under a live lease), `reason-required`, or nothing to abandon")))]
pub async fn abandon(
    who: Identity,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<Done>, ApiError> {
    who.require(Role::Operator)?;
    let id = known_id(&id)?;
    need_reason(&req.reason)?;
    state
        .engine
        .abandon(&id, &who.name, &state.engine.scrub(&req.reason))
        .await?;
    Ok(Json(Done {
        change: id.into(),
        recorded: "abandoned".into(),
    }))
}

/// The step breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    /// `closed` or `open` (with `since` and `failures`).
    #[schema(value_type = Object)]
    pub breaker: crate::gate::Breaker,
    /// The last reset.
    pub last_reset: Option<BreakerReset>,
}

/// The step breaker's state.
#[utoipa::path(get, path = "/api/v1/breaker", security(("bearer" = [])), responses((status = 200, body = BreakerView)))]
pub async fn breaker(
    _who: Identity,
    State(state): State<AppState>,
) -> Result<Json<BreakerView>, ApiError> {
    let (breaker, last_reset) = state.engine.breaker().await?;
    Ok(Json(BreakerView {
        breaker,
        last_reset,
    }))
}

/// A breaker reset: the step breaker, or one fleet action kind's refusal.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Why.
    pub reason: String,
    /// The action kind whose refusal to lift; absent: the step breaker.
    #[serde(default)]
    pub action: Option<String>,
}

/// Closes the step breaker, or lifts a fleet action kind's sticky refusal.
#[utoipa::path(post, path = "/api/v1/breaker/reset", security(("bearer" = [])), request_body = ResetRequest,
    responses((status = 200, body = BreakerView), (status = 403),
              (status = 409, description = "`reason-required`")))]
pub async fn reset_breaker(
    who: Identity,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ResetRequest>,
) -> Result<Json<BreakerView>, ApiError> {
    who.require(Role::Operator)?;
    need_reason(&req.reason)?;
    match &req.action {
        Some(action) => {
            state
                .engine
                .reset_action(&who.name, action, &state.engine.scrub(&req.reason))
                .await?
        }
        None => {
            state
                .engine
                .reset_breaker(&who.name, &state.engine.scrub(&req.reason))
                .await?
        }
    }
    let (breaker, last_reset) = state.engine.breaker().await?;
    Ok(Json(BreakerView {
        breaker,
        last_reset,
    }))
}

/// An alert and its delivery to each sink.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
    /// One row per sink and event.
    pub deliveries: Vec<Delivery>,
}

/// Every alert, newest first, with its delivery state per sink.
#[utoipa::path(get, path = "/api/v1/alerts", security(("bearer" = [])), responses((status = 200, body = [AlertView])))]
pub async fn alerts(
    _who: Identity,
    State(state): State<AppState>,
) -> Result<Json<Vec<AlertView>>, ApiError> {
    let all = state.engine.alerts().await?;
    Ok(Json(
        all.into_iter()
            .map(|(alert, deliveries)| AlertView { alert, deliveries })
            .collect(),
    ))
}

/// A fleet monitor's request to take one automated action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Who in the fleet automation asks (recorded).
    pub actor: String,
    /// The action kind, e.g. `reboot`; budgets in `policies/` name it.
    pub action: String,
    /// The instance or service it would act on.
    pub target: String,
}

/// Asks before an automated fleet action: 200 allowed, 423 the target is
/// owned by a running or failed change, 429 the action's budget is spent.
#[utoipa::path(post, path = "/api/v1/actions", security(("bearer" = [])), request_body = ActionRequest,
    responses((status = 200, body = ActionAnswer), (status = 423, body = ActionAnswer), (status = 429, body = ActionAnswer), (status = 403)))]
#[tracing::instrument(skip_all, fields(action = %clip(&req.action, 100), target = %clip(&req.target, 100)))]
pub async fn actions(
    who: Identity,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<(StatusCode, Json<ActionAnswer>), ApiError> {
    who.require(Role::Monitor)?;
    action_name("actor", &req.actor)?;
    action_name("action", &req.action)?;
    action_name("target", &req.target)?;
    let answer = state
        .engine
        .request_action(&who.name, &req.actor, &req.action, &req.target)
        .await?;
    let status = match answer.decision {
        ActionDecision::Allowed => StatusCode::OK,
        ActionDecision::Locked => StatusCode::LOCKED,
        ActionDecision::BudgetSpent => StatusCode::TOO_MANY_REQUESTS,
    };
    Ok((status, Json(answer)))
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
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    Ok(Json(state.engine.audit(q.change.as_deref()).await?))
}
