//! The training routes of the admin API:
//!
//! - `POST /admin/training` queues a job: `{"eval_set": {kind, name,
//!   version}, "adapter": NAME, "hyperparameters"?: {...}, "rollout"?: a
//!   plan without `candidate`, "model"?, "prompt_set"?, "knowledge_base"?,
//!   "current_adapter"?, "version"?}`; what is left out is what the fleet
//!   serves (the `production` label, else what most devices run).
//! - `GET /admin/training` lists jobs, `GET /admin/training/{id}` shows one
//!   with its phase, loss curve, adapter, lineage and evaluation,
//!   `POST /admin/training/{id}/cancel` stops one.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use outpost_protocol::{ArtifactKind, ArtifactName, ArtifactRef, ArtifactVersion};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{check_admin, json_body, resolve_artifact, ArtifactKey};
use super::rollouts::{resolve_field, ListQuery};
use super::{ApiError, App};
use crate::rollout::plan::Plan;
use crate::training::{Hyperparameters, TrainError, TrainRequest};

impl From<TrainError> for ApiError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::QueueFull => ApiError::Unavailable(e.to_string()),
            TrainError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainBody {
    eval_set: ArtifactKey,
    adapter: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    model: Option<ArtifactKey>,
    #[serde(default)]
    prompt_set: Option<ArtifactKey>,
    #[serde(default)]
    knowledge_base: Option<ArtifactKey>,
    #[serde(default)]
    current_adapter: Option<ArtifactKey>,
    #[serde(default)]
    hyperparameters: Hyperparameters,
    #[serde(default)]
    rollout: Option<Value>,
}

/// `key`'s artifact when given, else what the fleet serves of `kind`.
async fn named_or_serving(
    app: &App,
    key: Option<&ArtifactKey>,
    kind: ArtifactKind,
    probe: &ArtifactRef,
) -> Result<Option<ArtifactRef>, ApiError> {
    if let Some(key) = key {
        return Ok(Some(resolve_artifact(app, key).await?.artifact));
    }
    let labels = app.ctx.store.call(|s| s.labels()).await?;
    if let Some(label) = labels
        .into_iter()
        .find(|l| l.label == "production" && l.kind == kind.as_str())
    {
        let artifact = serde_json::from_value(label.artifact)
            .map_err(|e| ApiError::Internal(format!("the production label: {e}")))?;
        return Ok(Some(artifact));
    }
    let facts = app.ctx.store.call(|s| s.fleet_facts()).await?;
    let probe = [ArtifactRef {
        kind,
        ..probe.clone()
    }];
    Ok(crate::rollout::service::most_common_baseline(
        &facts, &probe, kind,
    ))
}

/// The plan template with its artifacts resolved, checked as the job will
/// fill it (its adapter as the candidate).
async fn rollout_template(
    app: &App,
    mut plan: Value,
    probe: &ArtifactRef,
) -> Result<Value, ApiError> {
    if plan.get("candidate").is_some() {
        return Err(ApiError::BadRequest(
            "rollout.candidate: the job's adapter is the candidate; leave candidate out".into(),
        ));
    }
    if plan.pointer("/smoke/gate").is_some() {
        return Err(ApiError::BadRequest(
            "rollout.smoke.gate is derived by the hub; name smoke.eval_set and smoke.min_score only"
                .into(),
        ));
    }
    for pointer in ["/eval_set", "/smoke/eval_set"] {
        resolve_field(app, &mut plan, pointer).await?;
    }
    let mut trial = plan.clone();
    let fields = trial
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("rollout: must be a plan object".into()))?;
    fields.entry("id").or_insert_with(|| json!("tune-0"));
    let candidate = ArtifactRef {
        kind: ArtifactKind::Adapter,
        ..probe.clone()
    };
    fields.insert("candidate".into(), json!([candidate]));
    let trial: Plan =
        serde_json::from_value(trial).map_err(|e| ApiError::BadRequest(format!("rollout: {e}")))?;
    trial
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("rollout: {e}")))?;
    Ok(plan)
}

pub(super) async fn submit(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let body: TrainBody = json_body(&body)?;
    let bad = |e: outpost_protocol::IdError| ApiError::BadRequest(e.to_string());
    let adapter_name = ArtifactName::parse(&body.adapter).map_err(bad)?;
    let adapter_version = body
        .version
        .as_deref()
        .map(ArtifactVersion::parse)
        .transpose()
        .map_err(bad)?;
    let eval_set = resolve_artifact(&app, &body.eval_set).await?.artifact;
    let model = named_or_serving(&app, body.model.as_ref(), ArtifactKind::Model, &eval_set)
        .await?
        .ok_or_else(|| {
            ApiError::BadRequest(
                "no base model: name one (\"model\": {kind, name, version}) or roll a model artifact out first"
                    .into(),
            )
        })?;
    let prompt_set = named_or_serving(
        &app,
        body.prompt_set.as_ref(),
        ArtifactKind::PromptSet,
        &eval_set,
    )
    .await?;
    let knowledge_base = named_or_serving(
        &app,
        body.knowledge_base.as_ref(),
        ArtifactKind::KnowledgeBase,
        &eval_set,
    )
    .await?;
    let current_adapter = named_or_serving(
        &app,
        body.current_adapter.as_ref(),
        ArtifactKind::Adapter,
        &eval_set,
    )
    .await?
    // An adapter for another base is not this base's current adapter.
    .filter(|a| a.base_model == Some(model.sha256));
    let rollout = match body.rollout {
        Some(plan) => Some(rollout_template(&app, plan, &model).await?),
        None => None,
    };
    let request = TrainRequest {
        eval_set,
        model,
        current_adapter,
        prompt_set,
        knowledge_base,
        adapter_name,
        adapter_version,
        hyperparameters: body.hyperparameters,
        rollout,
    };
    let id = app.training.submit(request).await?;
    Ok(Json(json!({ "job": id })))
}

pub(super) async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let limit = q.limit.unwrap_or(50).min(500);
    let jobs = app.ctx.store.call(move |s| s.train_jobs(limit)).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub(super) async fn show(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let job = app
        .ctx
        .store
        .call(move |s| s.train_job(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no training job {id}")))?;
    Ok(Json(json!(job)))
}

pub(super) async fn cancel(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    if !app.training.cancel(id) {
        return Err(ApiError::Conflict(format!(
            "training job {id} is not queued or running"
        )));
    }
    Ok(Json(json!({ "job": id, "cancelling": true })))
}
