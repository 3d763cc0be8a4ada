//! Operator access: who may use `/admin/*` and the dashboard, in one place.
//!
//! Three ways in ([`authorize`]):
//!
//! - `Authorization: Bearer <admin_token>`: scripts and `outpost fleet`.
//!   Browsers never add it by themselves, so it needs no CSRF defence.
//! - A session cookie set by the login form (`POST /login` with the token):
//!   `outpost_session`, `HttpOnly; SameSite=Strict; Path=/`. Its value is
//!   32 random bytes; the hub keeps only their SHA-256 with the session's
//!   CSRF token and expiry, in memory (a restart logs everyone out). The
//!   token itself never goes into the cookie.
//! - No `admin_token` configured: open, which validation allows only on a
//!   loopback operator listener.
//!
//! State-changing requests (any method but GET, HEAD, OPTIONS) made with a
//! cookie must carry `X-CSRF-Token` equal to the session's (the dashboard
//! reads it from its page) and must not come from another origin (`Origin`
//! and `Sec-Fetch-Site`); without a token configured the origin check still
//! applies, so a web page the operator visits cannot drive a loopback hub.
//! [`guard`] enforces this for every `/admin/*` route, present and future;
//! handlers' own `check_admin` calls [`authorize`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{secret_matches, ApiError, App, AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "outpost_session";
/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts: a working day.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes when a new one would pass it.
pub const MAX_SESSIONS: usize = 256;
/// How long a wrong token waits for its answer: slows guessing through the
/// form (the token is compared in constant time either way).
pub const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires_ms: u64,
}

/// Logged-in dashboard sessions, keyed by the SHA-256 of the cookie value.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness for a session: {e}")))?;
    Ok(hex::encode(bytes))
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// A new session: (cookie value, CSRF token).
    fn create(&self, now_ms: u64) -> Result<(String, String), ApiError> {
        let (cookie, csrf) = (random_hex()?, random_hex()?);
        let ttl = u64::try_from(SESSION_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires_ms > now_ms);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            key(&cookie),
            Session {
                csrf: csrf.clone(),
                expires_ms: now_ms.saturating_add(ttl),
            },
        );
        Ok((cookie, csrf))
    }

    /// The CSRF token of a live session.
    fn csrf(&self, cookie: &str, now_ms: u64) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key(cookie))
            .filter(|s| s.expires_ms > now_ms)
            .map(|s| s.csrf.clone())
    }

    fn remove(&self, cookie: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key(cookie));
    }
}

/// How a request got in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The bearer token.
    Bearer,
    /// A login session, with its CSRF token.
    Session {
        /// What state-changing requests must send in `X-CSRF-Token`.
        csrf: String,
    },
    /// No token is configured (loopback only).
    Open,
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Who is asking: the bearer token, a live session cookie, or anyone when
/// no token is configured. A wrong bearer token is refused even when a
/// cookie would do.
pub fn authorize(app: &AppState, headers: &HeaderMap) -> Result<Access, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = &app.admin_token else {
        return Ok(Access::Open);
    };
    if let Some(given) = bearer {
        return if secret_matches(given.as_bytes(), token.expose().as_bytes()) {
            Ok(Access::Bearer)
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    session_cookie(headers)
        .and_then(|c| app.sessions.csrf(c, crate::now_unix_ms()))
        .map(|csrf| Access::Session { csrf })
        .ok_or(ApiError::Unauthorized)
}

/// Whether a browser says the request comes from another site: an
/// `Origin` other than this host, or `Sec-Fetch-Site` other than
/// `same-origin` / `none`. Requests without either (curl, the CLI) pass.
fn cross_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if authority.is_none() || authority != host {
            return true;
        }
    }
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks a state-changing request's CSRF defence for `access`.
fn check_csrf(access: &Access, headers: &HeaderMap) -> Result<(), ApiError> {
    match access {
        Access::Bearer => Ok(()),
        Access::Open if cross_origin(headers) => Err(ApiError::Forbidden(
            "cross-origin request to the admin API refused".into(),
        )),
        Access::Open => Ok(()),
        Access::Session { csrf } => {
            let given = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
            if cross_origin(headers) {
                Err(ApiError::Forbidden(
                    "cross-origin request to the admin API refused".into(),
                ))
            } else if given.is_some_and(|g| secret_matches(g, csrf.as_bytes())) {
                Ok(())
            } else {
                Err(ApiError::Forbidden(format!(
                    "a state-changing request with a session cookie needs the session's \
                     {CSRF_HEADER} header"
                )))
            }
        }
    }
}

/// Middleware of the operator router: every `/admin/*` request is
/// authorized here, and state-changing ones pass the CSRF defence.
pub(super) async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/admin/") {
        return next.run(request).await;
    }
    let checked = authorize(&app, request.headers()).and_then(|access| {
        if is_safe(request.method()) {
            Ok(())
        } else {
            check_csrf(&access, request.headers())
        }
    });
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn cookie_header(value: &str, max_age_s: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}"
    ))
    .map_err(|e| ApiError::Internal(format!("session cookie: {e}")))
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// `GET /login`: the form (or straight to the dashboard when no token is
/// configured).
pub(super) async fn login_page(State(app): State<App>) -> Response {
    if app.admin_token.is_none() {
        return Redirect::to("/dashboard").into_response();
    }
    super::dashboard::login_html(StatusCode::OK, false)
}

/// `POST /login`: the token → a session cookie and a redirect to the
/// dashboard; a wrong token → the form again, 401.
pub(super) async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let Some(token) = &app.admin_token else {
        return Ok(Redirect::to("/dashboard").into_response());
    };
    if cross_origin(&headers) {
        return Err(ApiError::Forbidden("cross-origin login refused".into()));
    }
    if !secret_matches(form.token.as_bytes(), token.expose().as_bytes()) {
        tracing::warn!("dashboard login with a wrong token");
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        return Ok(super::dashboard::login_html(StatusCode::UNAUTHORIZED, true));
    }
    let (cookie, _csrf) = app.sessions.create(crate::now_unix_ms())?;
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&cookie, SESSION_TTL.as_secs())?,
    );
    Ok(response)
}

/// `POST /logout`: ends the session (CSRF-checked like any state change).
pub(super) async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = authorize(&app, &headers)?;
    check_csrf(&access, &headers)?;
    if let Some(cookie) = session_cookie(&headers) {
        app.sessions.remove(cookie);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie_header("", 0)?);
    Ok(response)
}

#[cfg(test)]
mod tests;
