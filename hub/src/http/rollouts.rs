//! The rollout and evaluation routes of the admin API:
//!
//! - `POST /admin/rollouts` starts a plan (JSON; artifacts named by kind,
//!   name and version), `GET /admin/rollouts` lists them, `GET
//!   /admin/rollouts/{id}` shows one with its devices, labels and audit log,
//!   `POST /admin/rollouts/{id}/{approve,pause,resume,abort}` steer it.
//! - `POST /admin/evals` queues an ad-hoc comparison, `GET /admin/evals[/{id}]`
//!   shows jobs and reports, `POST /admin/evals/{id}/cancel` stops one.
//! - `GET /admin/labels`: what `production` and `canary` name per kind.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use outpost_protocol::RolloutId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{check_admin, json_body, resolve_artifact, ArtifactKey};
use super::{ApiError, App};
use crate::evaluation::{EvalError, EvalRequest};
use crate::rollout::controller::Controller;
use crate::rollout::plan::Plan;
use crate::rollout::service::{OperatorCommand, RolloutError};
use crate::rollout::smoke::{launch, LaunchError};

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Exists(_) | RolloutError::Finished(_) => {
                ApiError::Conflict(e.to_string())
            }
            RolloutError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RolloutError::EmptyCohort(_) | RolloutError::Evaluation(_) => {
                ApiError::BadRequest(e.to_string())
            }
            RolloutError::Store(s) => s.into(),
            RolloutError::Stopped => ApiError::Unavailable(e.to_string()),
            RolloutError::NotResumed(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Rollout(e) => e.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::QueueFull => ApiError::Unavailable(e.to_string()),
            EvalError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

fn rollout_id(text: &str) -> Result<RolloutId, ApiError> {
    RolloutId::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Replaces the artifact names at `pointer` (a JSON pointer) of `plan`
/// with the published refs.
pub(super) async fn resolve_field(
    app: &App,
    plan: &mut Value,
    pointer: &str,
) -> Result<(), ApiError> {
    let Some(value) = plan.pointer_mut(pointer) else {
        return Ok(());
    };
    let field = pointer.trim_start_matches('/').replace('/', ".");
    let resolve_one = |v: &Value| {
        serde_json::from_value::<ArtifactKey>(v.clone())
            .map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))
    };
    match value {
        Value::Array(items) => {
            for item in items.iter_mut() {
                let change = resolve_artifact(app, &resolve_one(item)?).await?;
                *item = serde_json::to_value(&change.artifact)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
            }
        }
        Value::Null => {}
        other => {
            let change = resolve_artifact(app, &resolve_one(other)?).await?;
            *other = serde_json::to_value(&change.artifact)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    }
    Ok(())
}

pub(super) async fn start(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let mut plan: Value = json_body(&body)?;
    if plan.pointer("/smoke/gate").is_some() {
        return Err(ApiError::BadRequest(
            "smoke.gate is derived by the hub; name smoke.eval_set and smoke.min_score only".into(),
        ));
    }
    for pointer in ["/candidate", "/eval_set", "/smoke/eval_set"] {
        resolve_field(&app, &mut plan, pointer).await?;
    }
    let plan: Plan =
        serde_json::from_value(plan).map_err(|e| ApiError::BadRequest(format!("plan: {e}")))?;
    let id = launch(&app.artifacts, &app.rollouts, plan).await?;
    let detail = rollout_detail(&app, &id).await?;
    Ok(Json(detail))
}

pub(super) async fn list(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let stored = app.ctx.store.call(|s| s.rollouts(false)).await?;
    let mut out = Vec::with_capacity(stored.len());
    for rollout in stored {
        let controller: Controller = serde_json::from_str(&rollout.controller_json)
            .map_err(|e| ApiError::Internal(format!("rollout {}: {e}", rollout.id)))?;
        out.push(summary(&controller, rollout.created_ms, rollout.updated_ms));
    }
    Ok(Json(json!({ "rollouts": out })))
}

fn summary(controller: &Controller, created_ms: u64, updated_ms: u64) -> Value {
    let plan = controller.plan();
    let devices = controller.devices();
    let on_candidate = devices
        .iter()
        .filter(|d| d.running == Some(crate::rollout::controller::Running::Candidate))
        .count();
    json!({
        "id": plan.id,
        "phase": controller.phase_name(),
        "state": controller.phase(),
        "stage": controller.window(),
        "stage_sizes": controller.stage_sizes(),
        "cohort": devices.len(),
        "on_candidate": on_candidate,
        "candidate": plan.candidate.iter().map(|c| json!({
            "kind": c.kind.as_str(), "name": c.name, "version": c.version, "sha256": c.sha256.to_string(),
        })).collect::<Vec<_>>(),
        "created_ms": created_ms,
        "updated_ms": updated_ms,
    })
}

async fn rollout_detail(app: &App, id: &RolloutId) -> Result<Value, ApiError> {
    let probe = id.clone();
    let stored = app
        .ctx
        .store
        .call(move |s| s.rollout(&probe))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout named {id}")))?;
    let controller: Controller = serde_json::from_str(&stored.controller_json)
        .map_err(|e| ApiError::Internal(format!("rollout {id}: {e}")))?;
    let probe = id.clone();
    let audit = app
        .ctx
        .store
        .call(move |s| s.rollout_audit(&probe, 0, 10_000))
        .await?;
    let labels = app.ctx.store.call(|s| s.labels()).await?;
    let mut detail = summary(&controller, stored.created_ms, stored.updated_ms);
    detail["finished"] = json!(stored.finished);
    detail["plan"] = json!(controller.plan().clone());
    detail["devices"] = json!(controller.devices());
    detail["audit"] = json!(audit);
    detail["labels"] = json!(labels);
    Ok(detail)
}

pub(super) async fn show(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    Ok(Json(rollout_detail(&app, &rollout_id(&id)?).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn command(
    State(app): State<App>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let id = rollout_id(&id)?;
    let reason = if body.is_empty() {
        Reason::default()
    } else {
        json_body(&body)?
    };
    let reason = reason
        .reason
        .unwrap_or_else(|| format!("{verb} by operator"));
    let command = match verb.as_str() {
        "approve" => OperatorCommand::Approve,
        "pause" => OperatorCommand::Pause(reason),
        "resume" => OperatorCommand::Resume,
        "abort" => OperatorCommand::Abort(reason),
        other => {
            return Err(ApiError::NotFound(format!(
                "no rollout command {other:?}; use approve, pause, resume or abort"
            )))
        }
    };
    app.rollouts.command(id.clone(), command).await?;
    Ok(Json(rollout_detail(&app, &id).await?))
}

pub(super) async fn labels(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let labels = app.ctx.store.call(|s| s.labels()).await?;
    Ok(Json(json!({ "labels": labels })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalBody {
    eval_set: ArtifactKey,
    current: Vec<ArtifactKey>,
    candidate: Vec<ArtifactKey>,
}

pub(super) async fn submit_eval(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let body: EvalBody = json_body(&body)?;
    let mut resolve = Vec::new();
    for key in body.current.iter().chain(&body.candidate) {
        resolve.push(resolve_artifact(&app, key).await?.artifact);
    }
    let candidate = resolve.split_off(body.current.len());
    let request = EvalRequest {
        eval_set: resolve_artifact(&app, &body.eval_set).await?.artifact,
        current: resolve,
        candidate,
        rollout: None,
        half: None,
    };
    let id = app.evaluations.submit(request).await?;
    Ok(Json(json!({ "job": id })))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    pub(super) limit: Option<u32>,
}

pub(super) async fn list_evals(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let limit = q.limit.unwrap_or(50).min(500);
    let jobs = app.ctx.store.call(move |s| s.eval_jobs(limit)).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub(super) async fn show_eval(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let job = app
        .ctx
        .store
        .call(move |s| s.eval_job(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no evaluation job {id}")))?;
    Ok(Json(json!(job)))
}

pub(super) async fn cancel_eval(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    if !app.evaluations.cancel(id) {
        return Err(ApiError::Conflict(format!(
            "evaluation job {id} is not queued or running"
        )));
    }
    Ok(Json(json!({ "job": id, "cancelling": true })))
}
