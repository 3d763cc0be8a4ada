//! The hub's HTTP API (axum), on two listeners so that what devices need
//! can face the LAN while the operator's API stays on loopback (or behind
//! its token).
//!
//! Device listener (`[http] device_bind`, [`device_router`]):
//!
//! ```text
//! GET  /artifacts/sha256/{hex}         artifact bytes; Range, 206/416, HEAD;
//!                                      HTTP Basic: device id + its password
//! GET  /signing-key                    the Ed25519 public key devices pin (hex)
//! GET  /health                         liveness and MQTT session state
//! ```
//!
//! Operator listener (`[http] operator_bind`, [`operator_router`]):
//!
//! ```text
//! GET  /health, /signing-key           as above
//! GET  /metrics                        Prometheus text
//! POST /admin/artifacts                publish (raw body + ?kind&name&version[&base_model],
//!                                      or multipart: those as text fields, then `file`)
//! GET  /admin/artifacts                list published artifacts
//! POST /admin/assign                   {"device"|"tag", "artifacts":[{kind,name,version}], "rollout"?,
//!                                       "rollback"?: an explicit, signed rollback to older releases}
//! PUT  /admin/devices/{device}/tags    {"tags": [...]}
//! GET  /admin/devices                  status, versions, last seen
//! GET  /admin/telemetry?device&limit   newest telemetry events
//! GET  /admin/feedback?rating&limit    rated answers (thumbs_up, thumbs_down, handover),
//!                                      newest first, each with its id and correction
//! POST /admin/feedback/corrections     {"feedback": "device/epoch/seq", "answer"}: the right
//!                                      answer to a rated question (fine-tuning data)
//! POST /admin/training                {"eval_set", "adapter", "hyperparameters"?, "rollout"?, ...}:
//!                                      a fine-tuning job (see `training`)
//! GET  /admin/training[/{id}]          jobs with phase, loss curve, adapter, lineage, evaluation
//! POST /admin/training/{id}/cancel     stop one
//! GET  /admin/bundle?device|tag        an offline bundle (zip): the stored signed desired
//!                                      states of the device(s) and their artifacts
//! GET  /dashboard, /login, /admin/dashboard/...
//!                                      the fleet dashboard (see `dashboard`)
//! ```
//!
//! Who may use `/admin/*` and the dashboard (bearer token, login cookie
//! with a CSRF token for state changes, or open on loopback without a
//! token) is decided in one place, `auth`, whose middleware guards every
//! `/admin/*` route.
//!
//! `/admin/*` is not routed on the device listener at all, so no token
//! mistake can expose it there. Every error is JSON
//! `{"error": {"kind", "message"}}`; the kind is stable and is also the
//! label of `outpost_hub_api_errors_total`. Errors become responses only in
//! [`ApiError::into_response`].

mod admin;
mod auth;
mod bundle;
mod dashboard;
mod device;
mod device_evals;
mod feedback;
mod rollouts;
mod training;

pub use auth::{Access, Sessions, CSRF_HEADER, SESSION_COOKIE};

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::artifacts::{ArtifactStore, PublishError};
use crate::config::Secret;
use crate::control::Context;
use crate::store::StoreError;

/// Shared state of every handler.
#[derive(Debug)]
pub struct AppState {
    /// Control-loop context (store, MQTT client, metrics, fleet).
    pub ctx: Context,
    /// Artifact store.
    pub artifacts: Arc<ArtifactStore>,
    /// Bearer token for `/admin/*`.
    pub admin_token: Option<Secret>,
    /// Username → password allowed to download artifacts (HTTP Basic);
    /// empty: downloads are open (a loopback-only device listener).
    pub download_credentials: BTreeMap<String, Secret>,
    /// The rollout service.
    pub rollouts: crate::rollout::service::RolloutHandle,
    /// The evaluation job queue.
    pub evaluations: crate::evaluation::EvalJobs,
    /// The training job queue.
    pub training: crate::training::TrainingJobs,
    /// Logged-in dashboard sessions.
    pub sessions: Sessions,
    /// The ROI view's defaults and window.
    pub roi: crate::config::RoiSettings,
}

type App = Arc<AppState>;

/// An API error; [`kind`](Self::kind) is its stable name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token (or no live login session).
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// Authenticated, but the request fails the CSRF defence.
    #[error("{0}")]
    Forbidden(String),
    /// A download without a known device's credentials.
    #[error("downloads need a device's credentials (HTTP Basic: device id and its password)")]
    DownloadUnauthorized,
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
            ApiError::Unauthorized | ApiError::DownloadUnauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
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
            ApiError::Unauthorized | ApiError::DownloadUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
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
        let challenge = match self {
            ApiError::Unauthorized => Some("Bearer"),
            ApiError::DownloadUnauthorized => Some("Basic realm=\"outpost artifacts\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
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

/// The device-facing router: downloads, signing key, health.
pub fn device_router(state: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/signing-key", get(signing_key))
        .route("/artifacts/sha256/{digest}", get(device::download))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_errors,
        ))
        .with_state(state)
}

/// The operator router: admin API, metrics, signing key, health.
pub fn operator_router(state: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/signing-key", get(signing_key))
        .route("/metrics", get(admin::metrics))
        .route(
            "/admin/artifacts",
            post(admin::publish_artifact)
                .get(admin::list_artifacts)
                // Uploads stream to disk with their own limit (max_upload_bytes).
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/admin/assign", post(admin::assign))
        .route("/admin/devices", get(admin::devices))
        .route("/admin/bundle", get(bundle::export))
        .route("/admin/devices/{device}/tags", put(admin::set_tags))
        .route("/admin/devices/{device}/eval", post(device_evals::run))
        .route("/admin/devices/{device}/evals", get(device_evals::list))
        .route("/admin/telemetry", get(admin::telemetry))
        // Curating rated answers into fine-tuning data (feedback.rs).
        .route("/admin/feedback", get(feedback::list))
        .route("/admin/feedback/corrections", post(feedback::correct))
        // Staged rollouts and offline evaluations (rollouts.rs).
        .route("/admin/rollouts", post(rollouts::start).get(rollouts::list))
        .route("/admin/rollouts/{id}", get(rollouts::show))
        .route("/admin/rollouts/{id}/{command}", post(rollouts::command))
        .route("/admin/labels", get(rollouts::labels))
        .route(
            "/admin/evals",
            post(rollouts::submit_eval).get(rollouts::list_evals),
        )
        .route("/admin/evals/{id}", get(rollouts::show_eval))
        .route("/admin/evals/{id}/cancel", post(rollouts::cancel_eval))
        .route(
            "/admin/training",
            post(training::submit).get(training::list),
        )
        .route("/admin/training/{id}", get(training::show))
        .route("/admin/training/{id}/cancel", post(training::cancel))
        // The dashboard and operator login (see `dashboard`, `auth`).
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/assets/{file}", get(dashboard::asset))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/admin/dashboard/devices", get(dashboard::devices))
        .route("/admin/dashboard/versions", get(dashboard::versions))
        .route("/admin/dashboard/quality", get(dashboard::quality))
        .route(
            "/admin/dashboard/roi",
            get(dashboard::roi).post(dashboard::save_roi),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // Every /admin/* request, routed or not, is authorized first.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
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

/// Whether a secret someone sent equals the expected one, in time that
/// depends on neither: both sides are hashed first, so the comparison
/// always runs over 32 bytes and reveals not even the length.
fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    let connected = app
        .ctx
        .metrics
        .mqtt_connected
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({"status": "ok", "mqtt_connected": connected, "fleet": app.ctx.fleet}))
}

async fn signing_key(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!({"algorithm": "ed25519", "public_key": app.artifacts.signer().public_key_hex()}))
}

#[cfg(test)]
mod tests {
    use super::secret_matches;

    #[test]
    fn secrets_match_only_when_equal_whatever_their_length() {
        assert!(secret_matches(b"device-secret", b"device-secret"));
        assert!(!secret_matches(b"device-secreT", b"device-secret"));
        assert!(!secret_matches(b"device", b"device-secret"));
        assert!(!secret_matches(b"", b"device-secret"));
    }
}
