//! The operator routes: `/admin/*` (behind the admin token when one is
//! set) and `/metrics`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactName, ArtifactRef, ArtifactVersion, DeviceId, RolloutId,
};
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::StreamReader;

use super::{ApiError, App, AppState};
use crate::artifacts::{parse_kind, PublishError, PublishRequest};
use crate::assign::{next_desired, AssignError, Assignment, Change, Tag, Target};
/// The bearer token or a login session (see `auth`; its middleware has
/// already applied the CSRF defence to state changes).
pub(super) fn check_admin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    super::auth::authorize(app, headers).map(|_| ())
}

pub(super) async fn metrics(State(app): State<App>) -> Response {
    let online = app.ctx.store.call(|s| s.online_count()).await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.ctx.metrics.render(online),
    )
        .into_response()
}

fn required<'a>(fields: &'a HashMap<String, String>, key: &str) -> Result<&'a str, ApiError> {
    fields
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("missing `{key}`")))
}

fn publish_request(fields: &HashMap<String, String>) -> Result<PublishRequest, ApiError> {
    let kind_text = required(fields, "kind")?;
    let kind = parse_kind(kind_text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "kind {kind_text:?} is not one of model, adapter, prompt-set, kb, config"
        ))
    })?;
    let name = ArtifactName::parse(required(fields, "name")?)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let version = ArtifactVersion::parse(required(fields, "version")?)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let base_model = fields
        .get("base_model")
        .map(|b| {
            b.parse::<ArtifactDigest>()
                .map_err(|e| ApiError::BadRequest(format!("base_model: {e}")))
        })
        .transpose()?;
    Ok(PublishRequest {
        kind,
        name,
        version,
        base_model,
    })
}

pub(super) async fn publish_artifact(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    check_admin(&app, &headers)?;
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let published = if is_multipart {
        let mut multipart = Multipart::from_request(request, &app)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut fields = query;
        let mut published = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            if name == "file" {
                // The file streams to disk, so the text fields must come first.
                let request = publish_request(&fields)?;
                let reader = StreamReader::new(field.map_err(std::io::Error::other));
                published = Some(app.artifacts.publish(request, reader).await?);
                break;
            }
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
            fields.insert(name, text);
        }
        published
            .ok_or_else(|| ApiError::BadRequest("multipart upload has no `file` field".into()))?
    } else {
        let publish = publish_request(&query)?;
        let stream = request
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        app.artifacts
            .publish(publish, StreamReader::new(stream))
            .await?
    };
    let status = if published.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(artifact_json(&published.artifact, published.created)),
    )
        .into_response())
}

fn artifact_json(a: &ArtifactRef, created: bool) -> serde_json::Value {
    json!({
        "kind": a.kind.as_str(),
        "name": a.name,
        "version": a.version,
        "sha256": a.sha256.to_string(),
        "size_bytes": a.size_bytes,
        "url": a.url.as_str(),
        "signature": hex::encode(a.signature.as_bytes()),
        "base_model": a.base_model.map(|d| d.to_string()),
        "created": created,
    })
}

pub(super) async fn list_artifacts(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let records = app.ctx.store.call(|s| s.artifacts()).await?;
    let list = records
        .iter()
        .map(|r| Ok(artifact_json(&app.artifacts.artifact_ref(r)?, false)))
        .collect::<Result<Vec<_>, PublishError>>()?;
    Ok(Json(json!({ "artifacts": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    device: Option<String>,
    tag: Option<String>,
    artifacts: Vec<ArtifactKey>,
    rollout: Option<String>,
    /// Allows older releases than the assigned ones (a deliberate rollback,
    /// signed into the desired state); without it they are refused.
    #[serde(default)]
    rollback: bool,
}

/// An artifact as an operator names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArtifactKey {
    kind: String,
    name: String,
    version: String,
}

/// The published artifact `key` names, as a ref, with its release.
pub(super) async fn resolve_artifact(
    app: &AppState,
    key: &ArtifactKey,
) -> Result<Change, ApiError> {
    let kind = parse_kind(&key.kind)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown kind {:?}", key.kind)))?;
    let name = ArtifactName::parse(&key.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let version =
        ArtifactVersion::parse(&key.version).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let label = format!("{kind} {name} {version}");
    let (record, release) = app
        .ctx
        .store
        .call(move |s| s.artifact_with_release(kind, &name, &version))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no artifact {label}")))?;
    Ok(Change {
        artifact: app.artifacts.artifact_ref(&record)?,
        release,
    })
}

pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))
}

pub(super) async fn assign(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let body: AssignBody = json_body(&body)?;
    let target = match (body.device, body.tag) {
        (Some(d), None) => {
            Target::Device(DeviceId::parse(&d).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        (None, Some(t)) => {
            Target::Tag(Tag::parse(&t).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `device` and `tag`".into(),
            ))
        }
    };
    if body.artifacts.is_empty() {
        return Err(ApiError::BadRequest("`artifacts` is empty".into()));
    }
    let rollout = body
        .rollout
        .as_deref()
        .map(RolloutId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut refs = Vec::with_capacity(body.artifacts.len());
    for key in &body.artifacts {
        let change = resolve_artifact(&app, key).await?;
        if change.artifact.kind == ArtifactKind::EvalSet {
            return Err(ApiError::BadRequest(
                "eval sets are not assigned to devices; name one in a rollout plan's eval_set"
                    .into(),
            ));
        }
        refs.push(change);
    }
    let assignment = Assignment {
        changes: refs,
        rollout,
        rollback: body.rollback,
    };
    let devices = match &target {
        Target::Device(d) => vec![d.clone()],
        Target::Tag(t) => {
            let tag = t.as_str().to_owned();
            let devices = app
                .ctx
                .store
                .call(move |s| s.devices_with_tag(&tag))
                .await?;
            if devices.is_empty() {
                return Err(ApiError::NotFound(format!("no device has tag {t}")));
            }
            devices
        }
    };
    let now = crate::now_unix_ms();
    let audit = target.to_string();
    let assigned = app
        .ctx
        .store
        .call(move |s| {
            s.assign(&devices, &audit, now, |_, previous| {
                next_desired(previous, &assignment, now)
            })
        })
        .await?
        .map_err(|e: AssignError| ApiError::InvalidAssignment(e.to_string()))?;
    let mut results = Vec::with_capacity(assigned.len());
    for (device, state) in &assigned {
        // Stored first: a device that misses this publish gets the state
        // when it next reports online or the hub reconnects.
        let published = app.ctx.publish_desired(device, state).await;
        if let Err(e) = &published {
            tracing::warn!(%device, error = %e, "desired state stored but not published yet");
        }
        results.push(json!({
            "device": device,
            "generation": state.generation.0,
            "published": published.is_ok(),
            "error": published.err().map(|e| e.to_string()),
        }));
    }
    Ok(Json(
        json!({ "target": target.to_string(), "assigned": results }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    tags: Vec<String>,
}

pub(super) async fn set_tags(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let device = DeviceId::parse(&device).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let body: TagsBody = json_body(&body)?;
    let mut tags = body
        .tags
        .iter()
        .map(|t| Tag::parse(t).map(|t| t.as_str().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tags.sort();
    tags.dedup();
    let fleet = app.ctx.fleet.clone();
    let now = crate::now_unix_ms();
    let (d, t) = (device.clone(), tags.clone());
    app.ctx
        .store
        .call(move |s| s.set_tags(&fleet, &d, &t, now))
        .await?;
    Ok(Json(json!({"device": device, "tags": tags})))
}

pub(super) async fn devices(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let devices = app.ctx.store.call(|s| s.devices()).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// Most telemetry rows one request returns.
const MAX_TELEMETRY_LIMIT: u32 = 1000;

pub(super) async fn telemetry(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let device = query
        .get("device")
        .map(|d| DeviceId::parse(d))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_TELEMETRY_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be 1 to {MAX_TELEMETRY_LIMIT}"))
            })?,
    };
    let rows = app
        .ctx
        .store
        .call(move |s| s.telemetry(device.as_ref(), limit))
        .await?;
    Ok(Json(json!({ "events": rows })))
}
