//! The fleet dashboard: one self-contained page (`GET /dashboard`, its
//! script and style served by the hub under `/dashboard/assets/`, a CSP
//! allowing nothing but this origin) that polls JSON endpoints every two
//! seconds, so it updates without a reload:
//!
//! ```text
//! GET  /dashboard                    the page (login cookie, bearer, or open on loopback)
//! GET  /login, POST /login           the token form → session cookie (see `auth`)
//! POST /logout                       ends the session
//! GET  /admin/dashboard/devices      devices with presence, versions, last seen, health
//! GET  /admin/dashboard/versions     agent builds and artifact versions, device counts
//! GET  /admin/dashboard/quality?hours=24
//!                                    per version and hour: answers, escalation and
//!                                    thumbs-down rates, latency p50/p95
//! GET  /admin/dashboard/roi          inputs, measured deflection, savings, payback, ROI
//! POST /admin/dashboard/roi          save the operator's inputs
//! ```
//!
//! Rollouts are read from `/admin/rollouts` by the page itself (absent →
//! "no rollouts"). Every query reads the incremental aggregates of
//! [`crate::store::aggregates`] or per-device tables, never raw telemetry.

mod view;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::Value;

use super::auth::{authorize, Access};
use super::{ApiError, App};
use crate::roi::RoiInputs;

const PAGE: &str = include_str!("assets/page.html");
const LOGIN: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Only this origin's script, style and requests; no inline code, no
/// framing, forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";
/// The settings key the saved ROI inputs live under.
const ROI_KEY: &str = "roi_inputs";
/// Longest quality window: what the hourly aggregates are charted over.
const MAX_QUALITY_HOURS: u32 = 24 * 90;

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter, browsers send
    // `Origin: null` on the login form's post, which the login refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The login form; `failed` adds the "wrong token" line.
pub(super) fn login_html(status: StatusCode, failed: bool) -> Response {
    let error = if failed {
        "<p class=\"error\" role=\"alert\" data-testid=\"login-error\">Wrong token.</p>"
    } else {
        ""
    };
    html(status, LOGIN.replace("<!--ERROR-->", error))
}

/// `GET /dashboard`: the page, with the session's CSRF token in a meta
/// tag; without access, a redirect to the login form.
pub(super) async fn page(State(app): State<App>, headers: HeaderMap) -> Response {
    let csrf = match authorize(&app, &headers) {
        Ok(Access::Session { csrf }) => csrf,
        Ok(Access::Bearer | Access::Open) => String::new(),
        Err(_) => return Redirect::to("/login").into_response(),
    };
    let logout = if app.admin_token.is_some() {
        "true"
    } else {
        "false"
    };
    html(
        StatusCode::OK,
        PAGE.replace("{{CSRF}}", &csrf)
            .replace("{{LOGOUT}}", logout),
    )
}

/// `GET /dashboard/assets/{file}`: the page's script and style (public:
/// they hold no data, and the login form uses the style).
pub(super) async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(ApiError::NotFound(format!("no asset {file}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}

/// `GET /admin/dashboard/devices`.
pub(super) async fn devices(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let (summaries, health) = app
        .ctx
        .store
        .call(|s| Ok::<_, crate::store::StoreError>((s.devices()?, s.device_health()?)))
        .await?;
    Ok(Json(view::devices(summaries, health, crate::now_unix_ms())))
}

/// `GET /admin/dashboard/versions`.
pub(super) async fn versions(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let summaries = app.ctx.store.call(|s| s.devices()).await?;
    Ok(Json(view::versions(&summaries)))
}

fn since_hour(window_ms: u64) -> i64 {
    let now = crate::now_unix_ms().saturating_sub(window_ms);
    i64::try_from(now / 3_600_000).unwrap_or(i64::MAX)
}

/// `GET /admin/dashboard/quality?hours=24`.
pub(super) async fn quality(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let hours = match query.get("hours") {
        None => 24,
        Some(h) => h
            .parse::<u32>()
            .ok()
            .filter(|h| (1..=MAX_QUALITY_HOURS).contains(h))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("hours must be 1 to {MAX_QUALITY_HOURS}"))
            })?,
    };
    // The current hour is partial; the window covers it and `hours - 1` before.
    let since = since_hour(u64::from(hours - 1) * 3_600_000);
    let (rows, artifacts) = app
        .ctx
        .store
        .call(move |s| Ok::<_, crate::store::StoreError>((s.quality_hours(since)?, s.artifacts()?)))
        .await?;
    let labels = view::artifact_labels(&artifacts);
    Ok(Json(view::quality(&rows, &labels, hours)))
}

async fn roi_view(app: &App) -> Result<Value, ApiError> {
    let window = app.roi.window;
    let since = since_hour(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    let since_ms = u64::try_from(since).unwrap_or(0).saturating_mul(3_600_000);
    let (saved, rows, routing) = app
        .ctx
        .store
        .call(move |s| {
            Ok::<_, crate::store::StoreError>((
                s.dashboard_setting(ROI_KEY)?,
                s.quality_hours(since)?,
                s.routing_totals(since_ms)?,
            ))
        })
        .await?;
    let saved: Option<RoiInputs> = saved.and_then(|j| match serde_json::from_str(&j) {
        Ok(inputs) => Some(inputs),
        Err(e) => {
            tracing::warn!(error = %e, "saved ROI inputs do not parse; using the defaults");
            None
        }
    });
    let defaults = app.roi.defaults;
    Ok(view::roi(
        &saved.unwrap_or(defaults),
        &defaults,
        saved.is_some(),
        window.as_secs() / 86_400,
        view::deflection(&rows),
        &routing,
    ))
}

/// `GET /admin/dashboard/roi`.
pub(super) async fn roi(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    Ok(Json(roi_view(&app).await?))
}

/// `POST /admin/dashboard/roi`: saves the inputs (all four), answers like
/// `GET`.
pub(super) async fn save_roi(State(app): State<App>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let inputs: RoiInputs = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))?;
    let inputs = inputs
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let json = serde_json::to_string(&inputs)
        .map_err(|e| ApiError::Internal(format!("ROI inputs: {e}")))?;
    app.ctx
        .store
        .call(move |s| s.set_dashboard_setting(ROI_KEY, &json))
        .await?;
    Ok(Json(roi_view(&app).await?))
}
