//! The hub's HTTP API (axum): admin routes, metrics, health, artifact
//! downloads with `Range` support.
//!
//! ```text
//! GET  /health                         liveness and MQTT session state
//! GET  /metrics                        Prometheus text
//! GET  /signing-key                    the Ed25519 public key devices pin (hex)
//! GET  /artifacts/sha256/{hex}         artifact bytes; Range, 206/416, HEAD
//! POST /admin/artifacts                publish (raw body + ?kind&name&version[&base_model],
//!                                      or multipart: those as text fields, then `file`)
//! GET  /admin/artifacts                list published artifacts
//! POST /admin/assign                   {"device"|"tag", "artifacts":[{kind,name,version}], "rollout"?}
//! PUT  /admin/devices/{device}/tags    {"tags": [...]}
//! GET  /admin/devices                  status, versions, last seen
//! GET  /admin/telemetry?device&limit   newest telemetry events
//! ```
//!
//! Every error is JSON `{"error": {"kind", "message"}}`; the kind is stable
//! and is also the label of `outpost_hub_api_errors_total`. Errors become
//! responses only in [`ApiError::into_response`].

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use outpost_protocol::{
    ArtifactDigest, ArtifactName, ArtifactRef, ArtifactVersion, DeviceId, RolloutId,
};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::artifacts::{
    parse_kind, parse_range, ArtifactStore, ByteRange, PublishError, PublishRequest,
};
use crate::assign::{next_desired, AssignError, Tag, Target};
use crate::config::Secret;
use crate::control::Context;
use crate::store::StoreError;

/// Shared state of every handler.
#[derive(Debug)]
pub struct AppState {
    /// Control-loop context (store, MQTT client, metrics, fleet).
    pub ctx: Context,
    /// Artifact store.
    pub artifacts: ArtifactStore,
    /// Bearer token for `/admin/*`.
    pub admin_token: Option<Secret>,
}

type App = Arc<AppState>;

/// An API error; [`kind`](Self::kind) is its stable name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// The assignment is inconsistent.
    #[error("{0}")]
    InvalidAssignment(String),
    /// The upload is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The range starts past the end of a file of this size.
    #[error("range not satisfiable for {size} bytes")]
    RangeNotSatisfiable {
        /// The file size.
        size: u64,
    },
    /// A dependency is down (store closed, MQTT queue full).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; details are logged, not returned.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Stable snake_case name, also the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidAssignment(_) => "invalid_assignment",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidAssignment(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Marks a response as an API error of this kind, for the metrics layer.
#[derive(Debug, Clone, Copy)]
struct ErrorKind(&'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal API error");
                "internal error; see the hub log".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (
            self.status(),
            Json(json!({"error": {"kind": kind, "message": message}})),
        )
            .into_response();
        if let ApiError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        if matches!(kind, "unauthorized") {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorKind(kind));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ApiError::Unavailable(e.to_string()),
            StoreError::OutOfRange { .. } => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            PublishError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            PublishError::Empty
            | PublishError::UnknownBaseModel(_)
            | PublishError::Invalid(_)
            | PublishError::Url(_) => ApiError::BadRequest(e.to_string()),
            PublishError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The router over `state`.
pub fn router(state: App) -> Router {
    let admin = Router::new()
        .route(
            "/admin/artifacts",
            post(publish_artifact)
                .get(list_artifacts)
                // Uploads stream to disk with their own limit (max_upload_bytes).
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/admin/assign", post(assign))
        .route("/admin/devices", get(devices))
        .route("/admin/devices/{device}/tags", put(set_tags))
        .route("/admin/telemetry", get(telemetry));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/signing-key", get(signing_key))
        .route("/artifacts/sha256/{digest}", get(download))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_errors,
        ))
        .with_state(state)
}

async fn count_errors(State(app): State<App>, response: Response) -> Response {
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        app.ctx.metrics.api_error(kind);
    }
    response
}

fn check_admin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    let connected = app
        .ctx
        .metrics
        .mqtt_connected
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({"status": "ok", "mqtt_connected": connected, "fleet": app.ctx.fleet}))
}

async fn metrics(State(app): State<App>) -> Response {
    let online = app.ctx.store.call(|s| s.online_count()).await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.ctx.metrics.render(online),
    )
        .into_response()
}

async fn signing_key(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!({"algorithm": "ed25519", "public_key": app.artifacts.signer().public_key_hex()}))
}

async fn download(
    State(app): State<App>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Parsing the digest first also keeps the path inside the store.
    let digest: ArtifactDigest = digest
        .parse()
        .map_err(|_| ApiError::NotFound("no such artifact".into()))?;
    let path = app.artifacts.path_for(&digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("no artifact {digest}")))
        }
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    }
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    response
        .body(Body::from_stream(ReaderStream::new(file.take(len))))
        .map_err(|e| ApiError::Internal(e.to_string()))
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

async fn publish_artifact(
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

async fn list_artifacts(
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactKey {
    kind: String,
    name: String,
    version: String,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))
}

async fn assign(
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
        let kind = parse_kind(&key.kind)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown kind {:?}", key.kind)))?;
        let name =
            ArtifactName::parse(&key.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let version = ArtifactVersion::parse(&key.version)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let label = format!("{kind} {name} {version}");
        let record = app
            .ctx
            .store
            .call(move |s| s.artifact(kind, &name, &version))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no artifact {label}")))?;
        refs.push(app.artifacts.artifact_ref(&record)?);
    }
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
                next_desired(previous, &refs, rollout.clone(), now)
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

async fn set_tags(
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

async fn devices(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_admin(&app, &headers)?;
    let devices = app.ctx.store.call(|s| s.devices()).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// Most telemetry rows one request returns.
const MAX_TELEMETRY_LIMIT: u32 = 1000;

async fn telemetry(
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
