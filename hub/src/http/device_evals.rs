//! On-demand evaluation on one device: `POST /admin/devices/{device}/eval`
//! sends `cmd RunEval`; `GET /admin/devices/{device}/evals` lists the
//! scores devices reported back (telemetry events of kind `eval`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use outpost_protocol::{ArtifactName, CommandAction, DeviceId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{check_admin, json_body};
use super::{ApiError, App};

/// Most score reports one request lists.
const MAX_EVALS: u32 = 50;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunEvalBody {
    /// The set to run; absent: the device's smoke gate.
    #[serde(default)]
    eval_set: Option<String>,
}

fn device_id(text: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(super) async fn run(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let device = device_id(&device)?;
    let body: RunEvalBody = if body.is_empty() {
        RunEvalBody::default()
    } else {
        json_body(&body)?
    };
    let eval_set = body
        .eval_set
        .as_deref()
        .map(ArtifactName::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("eval_set: {e}")))?;
    let d = device.clone();
    if app
        .ctx
        .store
        .call(move |s| s.device_protocol(&d))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "device {device} has never connected; it cannot be sent a command"
        )));
    }
    let command = app
        .ctx
        .send_command(&device, CommandAction::RunEval { eval_set })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({ "device": device, "command": command.0 })))
}

pub(super) async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let device = device_id(&device)?;
    let rows = app
        .ctx
        .store
        .call(move |s| s.device_evals(&device, MAX_EVALS))
        .await?;
    Ok(Json(json!({ "evals": rows })))
}
